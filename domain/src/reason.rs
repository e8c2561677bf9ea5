//! Why a key was taken out of service: the reason codes of RFC 5280
//! (5.3.1), kept with a suspension, revocation or destruction.

use crate::names::named;

/// A revocation reason code of RFC 5280, 5.3.1 (`removeFromCRL` is not
/// one: lifting a suspension is `key resume`).
///
/// Text form: the RFC's names, `unspecified`, `keyCompromise`,
/// `cACompromise`, `affiliationChanged`, `superseded`,
/// `cessationOfOperation`, `certificateHold`, `privilegeWithdrawn`,
/// `aACompromise`. [`ReasonCode::parse`] also reads them in any case and
/// in kebab-case (`key-compromise`), as people type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonCode {
    /// No reason given (code 0).
    Unspecified,
    /// The key is known or suspected to be compromised (code 1).
    KeyCompromise,
    /// The issuing CA's key is compromised (code 2).
    CaCompromise,
    /// The subject's name or affiliation changed (code 3).
    AffiliationChanged,
    /// Replaced by another key (code 4).
    Superseded,
    /// No longer needed for its purpose (code 5).
    CessationOfOperation,
    /// On hold: a temporary suspension (code 6).
    CertificateHold,
    /// A privilege of the subject was withdrawn (code 9).
    PrivilegeWithdrawn,
    /// The attribute authority's key is compromised (code 10).
    AaCompromise,
}

named!(ReasonCode, "reason code", [
    Unspecified => "unspecified",
    KeyCompromise => "keyCompromise",
    CaCompromise => "cACompromise",
    AffiliationChanged => "affiliationChanged",
    Superseded => "superseded",
    CessationOfOperation => "cessationOfOperation",
    CertificateHold => "certificateHold",
    PrivilegeWithdrawn => "privilegeWithdrawn",
    AaCompromise => "aACompromise",
]);

impl ReasonCode {
    /// The code's number in RFC 5280's `CRLReason` (7 is unused, 8 is
    /// `removeFromCRL`).
    pub fn number(self) -> u8 {
        match self {
            ReasonCode::Unspecified => 0,
            ReasonCode::KeyCompromise => 1,
            ReasonCode::CaCompromise => 2,
            ReasonCode::AffiliationChanged => 3,
            ReasonCode::Superseded => 4,
            ReasonCode::CessationOfOperation => 5,
            ReasonCode::CertificateHold => 6,
            ReasonCode::PrivilegeWithdrawn => 9,
            ReasonCode::AaCompromise => 10,
        }
    }

    /// Whether the code says the state is temporary: only
    /// `certificateHold`, which a suspension carries and an irreversible
    /// change (revocation, destruction) must not.
    pub fn is_hold(self) -> bool {
        self == ReasonCode::CertificateHold
    }

    /// A code as people type it: the RFC's name in any case
    /// (`keyCompromise`, `KEYCOMPROMISE`) or kebab-case (`key-compromise`,
    /// `ca-compromise`). An unknown text is an error listing the names.
    pub fn parse(text: &str) -> Result<ReasonCode, crate::ParseError> {
        let folded = |s: &str| -> String {
            s.chars()
                .filter(|&c| c != '-')
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let wanted = folded(text.trim());
        // A '-' only between words: "-keycompromise" or "key--compromise"
        // is no name.
        let words_ok =
            !text.trim().starts_with('-') && !text.trim().ends_with('-') && !text.contains("--");
        ReasonCode::ALL
            .into_iter()
            .find(|c| words_ok && !wanted.is_empty() && folded(c.as_str()) == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
                crate::ParseError::unknown("reason code", text, &names)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let all: Vec<(&str, u8)> = ReasonCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.number()))
            .collect();
        assert_eq!(
            all,
            [
                ("unspecified", 0),
                ("keyCompromise", 1),
                ("cACompromise", 2),
                ("affiliationChanged", 3),
                ("superseded", 4),
                ("cessationOfOperation", 5),
                ("certificateHold", 6),
                ("privilegeWithdrawn", 9),
                ("aACompromise", 10),
            ]
        );
        for c in ReasonCode::ALL {
            assert_eq!(c.as_str().parse(), Ok(c));
            assert_eq!(ReasonCode::parse(c.as_str()), Ok(c));
        }
        assert_eq!(ReasonCode::ALL.iter().filter(|c| c.is_hold()).count(), 1);
    }

    #[test]
    fn people_type_them_in_any_case_and_in_kebab_case() {
        for (text, code) in [
            ("keycompromise", ReasonCode::KeyCompromise),
            ("KEYCOMPROMISE", ReasonCode::KeyCompromise),
            ("key-compromise", ReasonCode::KeyCompromise),
            ("Key-Compromise", ReasonCode::KeyCompromise),
            ("cacompromise", ReasonCode::CaCompromise),
            ("ca-compromise", ReasonCode::CaCompromise),
            ("aa-compromise", ReasonCode::AaCompromise),
            ("affiliation-changed", ReasonCode::AffiliationChanged),
            ("cessation-of-operation", ReasonCode::CessationOfOperation),
            ("certificate-hold", ReasonCode::CertificateHold),
            ("privilege-withdrawn", ReasonCode::PrivilegeWithdrawn),
            ("Superseded", ReasonCode::Superseded),
            (" unspecified ", ReasonCode::Unspecified),
        ] {
            assert_eq!(ReasonCode::parse(text), Ok(code), "{text:?}");
        }
    }

    #[test]
    fn unknown_codes_are_refused_with_the_names() {
        for bad in [
            "",
            " ",
            "-",
            "compromise",
            "removeFromCRL",
            "remove-from-crl",
            "key_compromise",
            "key compromise",
            "-keycompromise",
            "keycompromise-",
            "key--compromise",
            "1",
            "keyCompromise;x",
        ] {
            let e = ReasonCode::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("keyCompromise") && e.contains("certificateHold"),
                "{bad:?}: {e}"
            );
        }
        // The strict form is the RFC's spelling only.
        assert!("key-compromise".parse::<ReasonCode>().is_err());
    }
}
