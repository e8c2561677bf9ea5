//! What the policy check knows of the standards: algorithms below 112-bit
//! security (NIST SP 800-131A Rev. 2) are refused unless the class is
//! marked `legacy = true`, and cryptoperiods longer than NIST SP 800-57
//! Part 1 Rev. 5, Table 1 recommends for the class's purpose are warned.

use std::time::Duration;

use super::{KeyClass, RawClass, Validator};
use crate::error::PolicyError;
use crate::{Algorithm, Purpose};

/// The security strength below which SP 800-131A Rev. 2 disallows keys.
const MIN_STRENGTH: u32 = 112;

/// One year of the cryptoperiod tables: 365 days.
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Whether `alg` gives less than 112-bit security (SP 800-131A Rev. 2):
/// RSA under 2048 bits, secret keys (HMAC, generic) under 112 bits. Every
/// curve keyward names is 256 bits or more, and AES starts at 128 bits.
fn below_112_bits(alg: Algorithm) -> bool {
    match alg {
        Algorithm::Rsa { min_bits } => min_bits < 2048,
        Algorithm::Hmac { min_bits } | Algorithm::Generic { min_bits } => min_bits < MIN_STRENGTH,
        Algorithm::Aes { min_bits } => min_bits < 128,
        Algorithm::Ec(_)
        | Algorithm::Ed25519
        | Algorithm::Ed448
        | Algorithm::X25519
        | Algorithm::X448 => false,
    }
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(
        alg,
        Algorithm::Aes { .. } | Algorithm::Hmac { .. } | Algorithm::Generic { .. }
    )
}

/// The longest periods SP 800-57 Part 1 Rev. 5, Table 1 recommends for a
/// class: its protect period (originator usage period), its process period
/// (`None`: no recommendation), and the key type the table names.
fn recommended(class: &KeyClass) -> (Duration, Option<Duration>, &'static str) {
    let asym = class.algorithms.iter().any(|a| asymmetric(*a));
    let symmetric_process = class.protect_period.saturating_add(3 * YEAR);
    match class.purpose {
        // Private signature key: 1-3 years; the public key verifies for
        // "several years" (no fixed bound).
        Purpose::Signing => (3 * YEAR, None, "private signature key: 1-3 years"),
        Purpose::Encryption if asym => (
            2 * YEAR,
            Some(2 * YEAR),
            "private key-transport key: up to 2 years",
        ),
        Purpose::Encryption => (
            2 * YEAR,
            Some(symmetric_process),
            "symmetric data-encryption key: up to 2 years, processing up to 3 years after that",
        ),
        Purpose::Wrapping if asym => (
            2 * YEAR,
            Some(2 * YEAR),
            "private key-transport key: up to 2 years",
        ),
        Purpose::Wrapping => (
            2 * YEAR,
            Some(symmetric_process),
            "symmetric key-wrapping key: up to 2 years, processing up to 3 years after that",
        ),
        Purpose::Derivation => (
            2 * YEAR,
            Some(2 * YEAR),
            "private static key-agreement key: 1-2 years",
        ),
        Purpose::Mac => (
            2 * YEAR,
            Some(symmetric_process),
            "symmetric authentication key: up to 2 years, processing up to 3 years after that",
        ),
    }
}

/// A period of a class longer than SP 800-57 recommends.
struct LongPeriod {
    /// `protect_period` or `process_period`.
    field: &'static str,
    /// The class's period.
    period: Duration,
    limit: Duration,
    table: &'static str,
}

impl LongPeriod {
    /// "is longer than the recommended ...", citing the table.
    fn says(&self, class: &KeyClass) -> String {
        format!(
            "is longer than the recommended {} for {} keys (NIST SP 800-57 Part 1 Rev. 5, Table 1: {})",
            days(self.limit),
            class.purpose,
            self.table
        )
    }
}

/// The periods of `class` longer than SP 800-57 recommends for its purpose.
fn long_periods(class: &KeyClass) -> Vec<LongPeriod> {
    let (protect, process, table) = recommended(class);
    let mut out = Vec::new();
    if class.protect_period > protect {
        out.push(LongPeriod {
            field: "protect_period",
            period: class.protect_period,
            limit: protect,
            table,
        });
    }
    if let Some(process) = process.filter(|p| class.process_period > *p) {
        out.push(LongPeriod {
            field: "process_period",
            period: class.process_period,
            limit: process,
            table,
        });
    }
    out
}

/// What kind of thing the policy in force says of an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFindingKind {
    /// The key's class is no longer in the policy.
    ClassMissing,
    /// The key's algorithm gives less than 112-bit security (NIST SP
    /// 800-131A) and its class is not marked `legacy`.
    WeakAlgorithm,
    /// The class no longer lists the key's algorithm or size.
    AlgorithmNotAllowed,
    /// The class now serves another purpose than the key's.
    PurposeNotAllowed,
    /// The class's cryptoperiod is longer than NIST SP 800-57 recommends
    /// (a warning: the policy check notes it, `--strict` refuses it).
    LongCryptoperiod,
}

/// One thing the policy in force says of an existing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFinding {
    /// Which rule.
    pub kind: KeyFindingKind,
    /// The policy would refuse to make or adopt such a key now (`false`:
    /// a warning).
    pub refused: bool,
    /// For people.
    pub detail: String,
}

/// What the policy in force would say of an existing key of class
/// `class_name` (`class`: that class in the policy, if it still has it),
/// serving `purpose` with `algorithm`: the same judgement the policy
/// check makes of a class, applied to the key.
pub fn judge_key(
    class_name: &str,
    class: Option<&KeyClass>,
    purpose: Purpose,
    algorithm: Algorithm,
) -> Vec<KeyFinding> {
    let mut out = Vec::new();
    let mut push = |kind, refused, detail| {
        out.push(KeyFinding {
            kind,
            refused,
            detail,
        })
    };
    let weak = below_112_bits(algorithm);
    match class {
        None => {
            push(
                KeyFindingKind::ClassMissing,
                true,
                format!("class \"{class_name}\" is no longer in the policy"),
            );
            if weak {
                push(
                    KeyFindingKind::WeakAlgorithm,
                    true,
                    format!("{algorithm} is below {MIN_STRENGTH}-bit security (NIST SP 800-131A)"),
                );
            }
        }
        Some(c) => {
            if weak && !c.legacy {
                push(
                    KeyFindingKind::WeakAlgorithm,
                    true,
                    format!(
                        "{algorithm} is below {MIN_STRENGTH}-bit security (NIST SP 800-131A) and class \"{class_name}\" is not marked legacy"
                    ),
                );
            }
            if c.purpose != purpose {
                push(
                    KeyFindingKind::PurposeNotAllowed,
                    true,
                    format!(
                        "the key serves {purpose}; class \"{class_name}\" now serves {}",
                        c.purpose
                    ),
                );
            }
            if !c.algorithms.iter().any(|a| a.covers(algorithm)) {
                let listed: Vec<String> = c.algorithms.iter().map(ToString::to_string).collect();
                push(
                    KeyFindingKind::AlgorithmNotAllowed,
                    true,
                    format!(
                        "class \"{class_name}\" no longer allows {algorithm} (it lists {})",
                        listed.join(", ")
                    ),
                );
            }
            for long in long_periods(c) {
                push(
                    KeyFindingKind::LongCryptoperiod,
                    false,
                    format!(
                        "class \"{class_name}\", {}: {} {}",
                        long.field,
                        days(long.period),
                        long.says(c)
                    ),
                );
            }
        }
    }
    out
}

/// `d` in days, as the messages say it.
fn days(d: Duration) -> String {
    format!("{}d", d.as_secs().div_ceil(86_400))
}

impl Validator<'_> {
    /// Checks `class` (read from `raw`) against the standards: a weak
    /// algorithm is an error unless the class is `legacy` (then a note);
    /// a cryptoperiod above SP 800-57's recommendation is a warning,
    /// pushed to both `notes` and `warnings`.
    pub(super) fn standards(
        &self,
        raw: &RawClass,
        class: &KeyClass,
        notes: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Result<(), PolicyError> {
        let what = format!("class \"{}\"", class.name);
        let legacy = raw.legacy.as_ref().is_some_and(|l| *l.get_ref());
        for (alg, text) in class.algorithms.iter().zip(raw.algorithms.get_ref()) {
            if !below_112_bits(*alg) {
                continue;
            }
            let message = format!("{alg} is below {MIN_STRENGTH}-bit security (NIST SP 800-131A)");
            if legacy {
                notes.push(format!(
                    "{what}, algorithms: {message}; kept because the class is marked legacy"
                ));
            } else {
                return Err(self.err(
                    text.span(),
                    format!("{what}, algorithms"),
                    format!("{message}; mark the class legacy = true to keep it"),
                ));
            }
        }
        for long in long_periods(class) {
            let written = match long.field {
                "protect_period" => raw.protect_period.get_ref(),
                _ => raw.process_period.get_ref(),
            };
            let w = format!("{what}, {}: {written} {}", long.field, long.says(class));
            notes.push(w.clone());
            warnings.push(w);
        }
        Ok(())
    }
}
