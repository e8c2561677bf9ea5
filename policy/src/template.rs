//! Generation templates and attribute changes, judged against a key class.
//!
//! The view of a template is plain numbers and bytes ([`Template`]), so this
//! crate does not depend on the wire types; the agent builds the view from
//! the request.

use pkcs11_sys::*;

use crate::policy::KeyClass;
use crate::refusal::{Mechanism, Refusal};
use crate::{Algorithm, Curve, CurveParams, Purpose};

/// An attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrValue<'a> {
    /// `CK_BBOOL`.
    Bool(bool),
    /// `CK_ULONG` (and the types made of it: `CK_KEY_TYPE`, ...).
    Ulong(u64),
    /// Anything else, as bytes.
    Bytes(&'a [u8]),
}

/// A template (or an object's current attributes), split by value type.
/// An attribute should appear once; [`check_generation`] refuses one given
/// twice with different values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Template<'a> {
    /// Boolean attributes.
    pub bools: &'a [(u64, bool)],
    /// `CK_ULONG` attributes.
    pub ulongs: &'a [(u64, u64)],
    /// Byte-string attributes.
    pub bytes: &'a [(u64, &'a [u8])],
}

impl<'a> Template<'a> {
    /// A boolean attribute's value.
    pub fn bool(&self, attr: u64) -> Option<bool> {
        self.bools.iter().find(|(a, _)| *a == attr).map(|&(_, v)| v)
    }

    /// A `CK_ULONG` attribute's value.
    pub fn ulong(&self, attr: u64) -> Option<u64> {
        self.ulongs
            .iter()
            .find(|(a, _)| *a == attr)
            .map(|&(_, v)| v)
    }

    /// A byte-string attribute's value.
    pub fn bytes(&self, attr: u64) -> Option<&'a [u8]> {
        self.bytes.iter().find(|(a, _)| *a == attr).map(|&(_, v)| v)
    }

    /// An attribute's value, whatever its type.
    pub fn get(&self, attr: u64) -> Option<AttrValue<'a>> {
        self.bool(attr)
            .map(AttrValue::Bool)
            .or_else(|| self.ulong(attr).map(AttrValue::Ulong))
            .or_else(|| self.bytes(attr).map(AttrValue::Bytes))
    }

    /// The first attribute given twice with different values.
    fn conflict(&self) -> Option<u64> {
        fn first<T: PartialEq>(list: &[(u64, T)]) -> Option<u64> {
            list.iter().enumerate().find_map(|(i, (a, v))| {
                list[i + 1..]
                    .iter()
                    .any(|(b, w)| a == b && v != w)
                    .then_some(*a)
            })
        }
        first(self.bools)
            .or_else(|| first(self.ulongs))
            .or_else(|| first(self.bytes))
    }
}

/// Boolean attributes to set on the object to be generated, overriding the
/// template (the agent replaces or appends them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adjustments {
    /// `(CKA_*, value)`, each attribute once.
    pub bools: Vec<(u64, bool)>,
}

impl Adjustments {
    /// The forced value of `attr`, if any.
    pub fn get(&self, attr: u64) -> Option<bool> {
        self.bools.iter().find(|(a, _)| *a == attr).map(|&(_, v)| v)
    }

    fn set(&mut self, attr: u64, value: bool) {
        match self.bools.iter_mut().find(|(a, _)| *a == attr) {
            Some(entry) => entry.1 = value,
            None => self.bools.push((attr, value)),
        }
    }
}

/// What to force on the two halves of a generated key pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPairAdjustments {
    /// For the public key template.
    pub public: Adjustments,
    /// For the private key template.
    pub private: Adjustments,
}

/// The usage flags (`CKA_SIGN`, ...).
const USAGE_FLAGS: [u64; 9] = [
    CKA_SIGN,
    CKA_VERIFY,
    CKA_SIGN_RECOVER,
    CKA_VERIFY_RECOVER,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
];

/// The kind of object a template describes; it decides which usage flags
/// exist on it (SoftHSM2 refuses flags that do not belong to the class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectKind {
    Secret,
    Public,
    Private,
}

impl ObjectKind {
    fn usage_flags(self) -> &'static [u64] {
        match self {
            ObjectKind::Secret => &[
                CKA_SIGN,
                CKA_VERIFY,
                CKA_ENCRYPT,
                CKA_DECRYPT,
                CKA_WRAP,
                CKA_UNWRAP,
                CKA_DERIVE,
            ],
            ObjectKind::Public => &[
                CKA_VERIFY,
                CKA_VERIFY_RECOVER,
                CKA_ENCRYPT,
                CKA_WRAP,
                CKA_DERIVE,
            ],
            ObjectKind::Private => &[
                CKA_SIGN,
                CKA_SIGN_RECOVER,
                CKA_DECRYPT,
                CKA_UNWRAP,
                CKA_DERIVE,
            ],
        }
    }

    /// The flags a key of `purpose` has on, on this kind of object.
    fn purpose_flags(self, purpose: Purpose) -> &'static [u64] {
        match (purpose, self) {
            (Purpose::Signing | Purpose::Mac, ObjectKind::Secret) => &[CKA_SIGN, CKA_VERIFY],
            (Purpose::Signing | Purpose::Mac, ObjectKind::Private) => &[CKA_SIGN],
            (Purpose::Signing | Purpose::Mac, ObjectKind::Public) => &[CKA_VERIFY],
            (Purpose::Encryption, ObjectKind::Secret) => &[CKA_ENCRYPT, CKA_DECRYPT],
            (Purpose::Encryption, ObjectKind::Private) => &[CKA_DECRYPT],
            (Purpose::Encryption, ObjectKind::Public) => &[CKA_ENCRYPT],
            (Purpose::Wrapping, ObjectKind::Secret) => &[CKA_WRAP, CKA_UNWRAP],
            (Purpose::Wrapping, ObjectKind::Private) => &[CKA_UNWRAP],
            (Purpose::Wrapping, ObjectKind::Public) => &[CKA_WRAP],
            (Purpose::Derivation, ObjectKind::Secret | ObjectKind::Private) => &[CKA_DERIVE],
            (Purpose::Derivation, ObjectKind::Public) => &[],
        }
    }
}

/// The usage flags a purpose may have on, on any object. Turning on any
/// other flag weakens a key ([`is_weakening`]).
pub fn purpose_flags(purpose: Purpose) -> &'static [u64] {
    match purpose {
        Purpose::Signing | Purpose::Mac => &[CKA_SIGN, CKA_VERIFY],
        Purpose::Encryption => &[CKA_ENCRYPT, CKA_DECRYPT],
        Purpose::Wrapping => &[CKA_WRAP, CKA_UNWRAP],
        Purpose::Derivation => &[CKA_DERIVE],
    }
}

/// The purpose a usage flag asks for; sign and verify mean MAC on secret
/// keys and signing on key pairs.
fn flag_purpose(flag: u64, secret: bool) -> Purpose {
    match flag {
        CKA_ENCRYPT | CKA_DECRYPT => Purpose::Encryption,
        CKA_WRAP | CKA_UNWRAP => Purpose::Wrapping,
        CKA_DERIVE => Purpose::Derivation,
        _ if secret => Purpose::Mac,
        _ => Purpose::Signing,
    }
}

fn attr_name(attr: u64) -> &'static str {
    match attr {
        CKA_SIGN => "CKA_SIGN",
        CKA_VERIFY => "CKA_VERIFY",
        CKA_SIGN_RECOVER => "CKA_SIGN_RECOVER",
        CKA_VERIFY_RECOVER => "CKA_VERIFY_RECOVER",
        CKA_ENCRYPT => "CKA_ENCRYPT",
        CKA_DECRYPT => "CKA_DECRYPT",
        CKA_WRAP => "CKA_WRAP",
        CKA_UNWRAP => "CKA_UNWRAP",
        CKA_DERIVE => "CKA_DERIVE",
        CKA_SENSITIVE => "CKA_SENSITIVE",
        CKA_EXTRACTABLE => "CKA_EXTRACTABLE",
        CKA_WRAP_WITH_TRUSTED => "CKA_WRAP_WITH_TRUSTED",
        CKA_ALWAYS_AUTHENTICATE => "CKA_ALWAYS_AUTHENTICATE",
        CKA_PRIVATE => "CKA_PRIVATE",
        CKA_MODIFIABLE => "CKA_MODIFIABLE",
        CKA_COPYABLE => "CKA_COPYABLE",
        CKA_DESTROYABLE => "CKA_DESTROYABLE",
        CKA_TRUSTED => "CKA_TRUSTED",
        CKA_ALWAYS_SENSITIVE => "CKA_ALWAYS_SENSITIVE",
        CKA_NEVER_EXTRACTABLE => "CKA_NEVER_EXTRACTABLE",
        CKA_LOCAL => "CKA_LOCAL",
        _ => "attribute",
    }
}

/// What a generation mechanism makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Edwards,
    Montgomery,
    Aes,
    Generic,
    Hmac,
}

impl Family {
    fn of(mechanism: u64) -> Option<(Family, bool)> {
        let pair = |f| Some((f, true));
        let secret = |f| Some((f, false));
        match mechanism {
            CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN => pair(Family::Rsa),
            CKM_EC_KEY_PAIR_GEN => pair(Family::Ec),
            CKM_EC_EDWARDS_KEY_PAIR_GEN => pair(Family::Edwards),
            CKM_EC_MONTGOMERY_KEY_PAIR_GEN => pair(Family::Montgomery),
            CKM_AES_KEY_GEN => secret(Family::Aes),
            CKM_GENERIC_SECRET_KEY_GEN => secret(Family::Generic),
            CKM_SHA_1_KEY_GEN | CKM_SHA224_KEY_GEN | CKM_SHA256_KEY_GEN | CKM_SHA384_KEY_GEN
            | CKM_SHA512_KEY_GEN | CKM_SHA3_224_KEY_GEN | CKM_SHA3_256_KEY_GEN
            | CKM_SHA3_384_KEY_GEN | CKM_SHA3_512_KEY_GEN => secret(Family::Hmac),
            _ => None,
        }
    }

    /// Whether a class algorithm is of this family.
    fn admits(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            Family::Rsa => matches!(alg, A::Rsa { .. }),
            Family::Ec => matches!(alg, A::Ec(_)),
            Family::Edwards => matches!(alg, A::Ed25519 | A::Ed448),
            Family::Montgomery => matches!(alg, A::X25519 | A::X448),
            Family::Aes => matches!(alg, A::Aes { .. }),
            Family::Generic => matches!(alg, A::Generic { .. } | A::Hmac { .. }),
            Family::Hmac => matches!(alg, A::Hmac { .. }),
        }
    }
}

fn curve_algorithm(curve: Curve) -> Algorithm {
    match curve {
        Curve::Ed25519 => Algorithm::Ed25519,
        Curve::Ed448 => Algorithm::Ed448,
        Curve::X25519 => Algorithm::X25519,
        Curve::X448 => Algorithm::X448,
        Curve::P256 | Curve::P384 | Curve::P521 => Algorithm::Ec(curve),
    }
}

/// Checks a secret key generation (`C_GenerateKey`) for a key of `class`,
/// and returns the attributes to force.
///
/// Refused: a mechanism that makes keys of no algorithm the class allows
/// (`CKR_MECHANISM_INVALID`); a missing `CKA_VALUE_LEN`
/// (`CKR_TEMPLATE_INCOMPLETE`); a key below the class's minimum size
/// (`CKR_KEY_SIZE_RANGE`); usage flags of two purposes, or of a purpose
/// other than the class's, or an attribute given twice with different
/// values (`CKR_TEMPLATE_INCONSISTENT`); `CKA_SENSITIVE` false,
/// `CKA_EXTRACTABLE` true in a class without backup, `CKA_WRAP_WITH_TRUSTED`
/// false in a class with backup (`CKR_ATTRIBUTE_VALUE_INVALID`).
///
/// Forced: `CKA_SENSITIVE` true; `CKA_EXTRACTABLE` = the class's backup;
/// `CKA_WRAP_WITH_TRUSTED` true when backup; the purpose's usage flags on
/// and every other usage flag off.
pub fn check_generation(
    class: &KeyClass,
    mechanism: u64,
    template: &Template<'_>,
) -> Result<Adjustments, Refusal> {
    let family = match Family::of(mechanism) {
        Some((family, false)) => family,
        Some((_, true)) => {
            return Err(Refusal::AlgorithmNotAllowed {
                reason: format!(
                    "{} generates key pairs, not secret keys",
                    Mechanism(mechanism)
                ),
            })
        }
        None => return Err(not_allowed(class, mechanism)),
    };
    check_consistent(&[template])?;
    let bits = match template.ulong(CKA_VALUE_LEN) {
        Some(bytes) => bytes.saturating_mul(8),
        None => {
            return Err(Refusal::TemplateIncomplete {
                reason: "CKA_VALUE_LEN is needed to check the key size".to_owned(),
            })
        }
    };
    check_algorithm(class, family, |alg| match alg {
        Algorithm::Aes { min_bits }
        | Algorithm::Generic { min_bits }
        | Algorithm::Hmac { min_bits } => SizeFit::from(bits, min_bits),
        _ => SizeFit::No,
    })
    .map_err(|e| e.refusal(class, mechanism, bits))?;
    check_purpose(class, &[(template, ObjectKind::Secret)])?;
    check_protection(class, template)?;
    Ok(adjustments(class, ObjectKind::Secret))
}

/// Checks a key pair generation (`C_GenerateKeyPair`) for a key of `class`,
/// and returns the attributes to force on each half. As
/// [`check_generation`], with the size from `CKA_MODULUS_BITS` (RSA) and
/// the curve from `CKA_EC_PARAMS` (a curve the class does not allow is
/// `CKR_ATTRIBUTE_VALUE_INVALID`); usage flags of both halves count towards
/// the purpose; protection attributes are checked and forced on the private
/// half.
pub fn check_key_pair_generation(
    class: &KeyClass,
    mechanism: u64,
    public: &Template<'_>,
    private: &Template<'_>,
) -> Result<KeyPairAdjustments, Refusal> {
    let family = match Family::of(mechanism) {
        Some((family, true)) => family,
        Some((_, false)) => {
            return Err(Refusal::AlgorithmNotAllowed {
                reason: format!(
                    "{} generates secret keys, not key pairs",
                    Mechanism(mechanism)
                ),
            })
        }
        None => return Err(not_allowed(class, mechanism)),
    };
    check_consistent(&[public, private])?;
    let find_ulong = |attr| public.ulong(attr).or_else(|| private.ulong(attr));
    let find_bytes = |attr| public.bytes(attr).or_else(|| private.bytes(attr));
    match family {
        Family::Rsa => {
            let Some(bits) = find_ulong(CKA_MODULUS_BITS) else {
                return Err(Refusal::TemplateIncomplete {
                    reason: "CKA_MODULUS_BITS is needed to check the key size".to_owned(),
                });
            };
            check_algorithm(class, family, |alg| match alg {
                Algorithm::Rsa { min_bits } => SizeFit::from(bits, min_bits),
                _ => SizeFit::No,
            })
            .map_err(|e| e.refusal(class, mechanism, bits))?;
        }
        Family::Ec | Family::Edwards | Family::Montgomery => {
            let Some(params) = find_bytes(CKA_EC_PARAMS) else {
                return Err(Refusal::TemplateIncomplete {
                    reason: "CKA_EC_PARAMS is needed to check the curve".to_owned(),
                });
            };
            let curve = Curve::from_ec_params(params);
            check_algorithm(class, family, |alg| match curve {
                Some(c) if curve_algorithm(c) == alg => SizeFit::Yes,
                _ => SizeFit::No,
            })
            .map_err(|e| match (e, curve) {
                (AlgorithmError::NoFamily, _) => not_allowed(class, mechanism),
                (_, Some(c)) => Refusal::AttributeValueInvalid {
                    reason: format!("CKA_EC_PARAMS: curve {c} is not allowed in class \"{}\"", class.name),
                },
                (_, None) => Refusal::AttributeValueInvalid {
                    reason: format!(
                        "CKA_EC_PARAMS: an unknown or unsupported curve is not allowed in class \"{}\"",
                        class.name
                    ),
                },
            })?;
        }
        Family::Aes | Family::Generic | Family::Hmac => {
            unreachable!("secret key families are not pairs")
        }
    }
    check_purpose(
        class,
        &[(public, ObjectKind::Public), (private, ObjectKind::Private)],
    )?;
    check_protection(class, private)?;
    Ok(KeyPairAdjustments {
        public: adjustments(class, ObjectKind::Public),
        private: adjustments(class, ObjectKind::Private),
    })
}

fn not_allowed(class: &KeyClass, mechanism: u64) -> Refusal {
    let allowed: Vec<String> = class.algorithms.iter().map(|a| a.to_string()).collect();
    Refusal::AlgorithmNotAllowed {
        reason: format!(
            "class \"{}\" allows {}: {} does not generate such keys",
            class.name,
            allowed.join(", "),
            Mechanism(mechanism)
        ),
    }
}

enum SizeFit {
    Yes,
    TooSmall,
    No,
}

impl SizeFit {
    fn from(bits: u64, min_bits: u32) -> SizeFit {
        if bits >= u64::from(min_bits) {
            SizeFit::Yes
        } else {
            SizeFit::TooSmall
        }
    }
}

enum AlgorithmError {
    /// No algorithm of the mechanism's family in the class.
    NoFamily,
    /// Algorithms of the family, but the key is smaller than all of them.
    TooSmall,
    /// Algorithms of the family, none with this key's parameters.
    NoMatch,
}

impl AlgorithmError {
    fn refusal(self, class: &KeyClass, mechanism: u64, bits: u64) -> Refusal {
        match self {
            AlgorithmError::NoFamily => not_allowed(class, mechanism),
            AlgorithmError::TooSmall | AlgorithmError::NoMatch => Refusal::KeySizeRange {
                reason: format!(
                    "a {bits}-bit key is smaller than class \"{}\" allows",
                    class.name
                ),
            },
        }
    }
}

fn check_algorithm(
    class: &KeyClass,
    family: Family,
    fit: impl Fn(Algorithm) -> SizeFit,
) -> Result<(), AlgorithmError> {
    let mut error = AlgorithmError::NoFamily;
    for &alg in class.algorithms.iter().filter(|&&a| family.admits(a)) {
        match fit(alg) {
            SizeFit::Yes => return Ok(()),
            SizeFit::TooSmall => error = AlgorithmError::TooSmall,
            SizeFit::No => {
                if !matches!(error, AlgorithmError::TooSmall) {
                    error = AlgorithmError::NoMatch;
                }
            }
        }
    }
    Err(error)
}

fn check_consistent(templates: &[&Template<'_>]) -> Result<(), Refusal> {
    match templates.iter().find_map(|t| t.conflict()) {
        Some(attr) => Err(Refusal::TemplateInconsistent {
            reason: format!("attribute {attr:#x} is given twice with different values"),
        }),
        None => Ok(()),
    }
}

fn check_purpose(
    class: &KeyClass,
    templates: &[(&Template<'_>, ObjectKind)],
) -> Result<(), Refusal> {
    // The first flag asking for each purpose, for the message.
    let mut asked: Vec<(Purpose, u64)> = Vec::new();
    for (template, kind) in templates {
        for &flag in &USAGE_FLAGS {
            if template.bool(flag) == Some(true) {
                let purpose = flag_purpose(flag, *kind == ObjectKind::Secret);
                if !asked.iter().any(|(p, _)| *p == purpose) {
                    asked.push((purpose, flag));
                }
            }
        }
    }
    if let [(a, fa), (b, fb), ..] = asked[..] {
        return Err(Refusal::TemplateInconsistent {
            reason: format!(
                "the template asks for two purposes, {a} ({}) and {b} ({}): a key has one",
                attr_name(fa),
                attr_name(fb)
            ),
        });
    }
    if let Some(&(p, flag)) = asked.first() {
        if p != class.purpose {
            return Err(Refusal::TemplateInconsistent {
                reason: format!(
                    "{} asks for {p}, but class \"{}\" is for {}",
                    attr_name(flag),
                    class.name,
                    class.purpose
                ),
            });
        }
    }
    // Recovery flags fit signing but are never granted: their operations
    // (C_SignRecover, C_VerifyRecover) are outside the policy's operations.
    for (template, _) in templates {
        for flag in [CKA_SIGN_RECOVER, CKA_VERIFY_RECOVER] {
            if template.bool(flag) == Some(true) {
                return Err(Refusal::AttributeValueInvalid {
                    reason: format!("{} is not allowed on managed keys", attr_name(flag)),
                });
            }
        }
    }
    Ok(())
}

/// The protection attributes of the secret or private half.
fn check_protection(class: &KeyClass, template: &Template<'_>) -> Result<(), Refusal> {
    let invalid = |reason: String| Err(Refusal::AttributeValueInvalid { reason });
    if template.bool(CKA_SENSITIVE) == Some(false) {
        return invalid("CKA_SENSITIVE must be true on managed keys".to_owned());
    }
    if !class.backup && template.bool(CKA_EXTRACTABLE) == Some(true) {
        return invalid(format!(
            "CKA_EXTRACTABLE: class \"{}\" does not allow backup, so its keys cannot be extractable",
            class.name
        ));
    }
    if class.backup && template.bool(CKA_WRAP_WITH_TRUSTED) == Some(false) {
        return invalid(format!(
            "CKA_WRAP_WITH_TRUSTED: keys of class \"{}\" may be wrapped by the trusted backup key only",
            class.name
        ));
    }
    Ok(())
}

/// Checks the template of a key derived (`C_DeriveKey`) from a managed key,
/// or from any key in strict mode, and returns the attributes to force.
/// A derived key is a session object that never leaves the HSM and has one
/// purpose, whatever the application asked: it is not recorded in the
/// inventory, so it must not outlive the session, be read, or wrap other
/// keys out.
///
/// Refused (`CKR_ATTRIBUTE_VALUE_INVALID`): `CKA_TOKEN` true,
/// `CKA_SENSITIVE` false, `CKA_EXTRACTABLE` true, a wrapping usage flag
/// (`CKA_WRAP`, `CKA_UNWRAP`) unless `wrapping` (the class that governs
/// keys applications make is for wrapping), a recovery flag. Usage flags of
/// two purposes, or an attribute given twice with different values, are
/// `CKR_TEMPLATE_INCONSISTENT`.
///
/// Forced: `CKA_TOKEN` false, `CKA_SENSITIVE` true, `CKA_EXTRACTABLE`
/// false, and every usage flag of a secret key off except those the
/// template turns on (backends default some of them to true).
pub fn check_derivation(wrapping: bool, template: &Template<'_>) -> Result<Adjustments, Refusal> {
    check_consistent(&[template])?;
    let invalid = |reason: &str| {
        Err(Refusal::AttributeValueInvalid {
            reason: reason.to_owned(),
        })
    };
    if template.bool(CKA_TOKEN) == Some(true) {
        return invalid("CKA_TOKEN: keys derived from managed keys are session objects");
    }
    if template.bool(CKA_SENSITIVE) == Some(false) {
        return invalid("CKA_SENSITIVE must be true on derived keys");
    }
    if template.bool(CKA_EXTRACTABLE) == Some(true) {
        return invalid("CKA_EXTRACTABLE: derived keys cannot leave the HSM");
    }
    for flag in [CKA_SIGN_RECOVER, CKA_VERIFY_RECOVER] {
        if template.bool(flag) == Some(true) {
            return Err(Refusal::AttributeValueInvalid {
                reason: format!("{} is not allowed on derived keys", attr_name(flag)),
            });
        }
    }
    let mut asked: Option<(Purpose, u64)> = None;
    for &flag in ObjectKind::Secret.usage_flags() {
        if template.bool(flag) != Some(true) {
            continue;
        }
        let purpose = flag_purpose(flag, true);
        match asked {
            None => asked = Some((purpose, flag)),
            Some((p, first)) if p != purpose => {
                return Err(Refusal::TemplateInconsistent {
                    reason: format!(
                        "the template asks for two purposes, {p} ({}) and {purpose} ({}): a derived key has one",
                        attr_name(first),
                        attr_name(flag)
                    ),
                })
            }
            Some(_) => {}
        }
    }
    if let Some((Purpose::Wrapping, flag)) = asked {
        if !wrapping {
            return Err(Refusal::AttributeValueInvalid {
                reason: format!(
                    "{}: derived keys may wrap or unwrap only where the policy's class for application keys is for wrapping",
                    attr_name(flag)
                ),
            });
        }
    }
    let mut adj = Adjustments::default();
    adj.set(CKA_TOKEN, false);
    adj.set(CKA_SENSITIVE, true);
    adj.set(CKA_EXTRACTABLE, false);
    for &flag in ObjectKind::Secret.usage_flags() {
        adj.set(flag, template.bool(flag) == Some(true));
    }
    Ok(adj)
}

fn adjustments(class: &KeyClass, kind: ObjectKind) -> Adjustments {
    let mut adj = Adjustments::default();
    if kind != ObjectKind::Public {
        adj.set(CKA_SENSITIVE, true);
        adj.set(CKA_EXTRACTABLE, class.backup);
        if class.backup {
            adj.set(CKA_WRAP_WITH_TRUSTED, true);
        }
    }
    let on = kind.purpose_flags(class.purpose);
    for &flag in kind.usage_flags() {
        adj.set(flag, on.contains(&flag));
    }
    adj
}

/// Whether setting `attr` to `new` (`C_SetAttributeValue`, or a template of
/// `C_CopyObject`) weakens a managed key of `purpose` whose current
/// attributes are `current`. An attribute missing from `current` counts as
/// having a different value. `purpose` `None` (a key of no known purpose)
/// makes turning on any usage flag weakening.
///
/// Weakening:
/// - `CKA_SENSITIVE`, `CKA_WRAP_WITH_TRUSTED`, `CKA_ALWAYS_AUTHENTICATE`,
///   `CKA_PRIVATE` turned false;
/// - `CKA_EXTRACTABLE`, `CKA_MODIFIABLE`, `CKA_COPYABLE`,
///   `CKA_DESTROYABLE`, `CKA_TRUSTED` turned true;
/// - a usage flag turned on beyond the purpose's ([`purpose_flags`]);
/// - any change to what the token sets itself (`CKA_ALWAYS_SENSITIVE`,
///   `CKA_NEVER_EXTRACTABLE`, `CKA_LOCAL`), to what restricts use
///   (`CKA_ALLOWED_MECHANISMS`, the wrap / unwrap / derive templates,
///   `CKA_START_DATE`, `CKA_END_DATE`), or to the key material and its type.
///
/// Turning usage flags off, and labels, ids and subjects, are not
/// weakening.
pub fn is_weakening(
    purpose: Option<Purpose>,
    current: &Template<'_>,
    attr: u64,
    new: AttrValue<'_>,
) -> bool {
    let old = current.get(attr);
    if old == Some(new) {
        return false;
    }
    match (attr, new) {
        (
            CKA_SENSITIVE | CKA_WRAP_WITH_TRUSTED | CKA_ALWAYS_AUTHENTICATE | CKA_PRIVATE,
            AttrValue::Bool(v),
        ) => !v,
        (
            CKA_EXTRACTABLE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE | CKA_TRUSTED,
            AttrValue::Bool(v),
        ) => v,
        (flag, AttrValue::Bool(v)) if USAGE_FLAGS.contains(&flag) => {
            v && !purpose.is_some_and(|p| purpose_flags(p).contains(&flag))
        }
        (
            CKA_ALWAYS_SENSITIVE
            | CKA_NEVER_EXTRACTABLE
            | CKA_LOCAL
            | CKA_ALLOWED_MECHANISMS
            | CKA_WRAP_TEMPLATE
            | CKA_UNWRAP_TEMPLATE
            | CKA_DERIVE_TEMPLATE
            | CKA_START_DATE
            | CKA_END_DATE
            | CKA_CLASS
            | CKA_KEY_TYPE
            | CKA_VALUE
            | CKA_VALUE_LEN
            | CKA_MODULUS
            | CKA_MODULUS_BITS
            | CKA_PUBLIC_EXPONENT
            | CKA_PRIVATE_EXPONENT
            | CKA_EC_PARAMS
            | CKA_EC_POINT
            | CKA_KEY_GEN_MECHANISM,
            _,
        ) => true,
        // A protection attribute with a value of the wrong type: refuse.
        (
            CKA_SENSITIVE
            | CKA_WRAP_WITH_TRUSTED
            | CKA_ALWAYS_AUTHENTICATE
            | CKA_PRIVATE
            | CKA_EXTRACTABLE
            | CKA_MODIFIABLE
            | CKA_COPYABLE
            | CKA_DESTROYABLE
            | CKA_TRUSTED,
            _,
        ) => true,
        (flag, _) if USAGE_FLAGS.contains(&flag) => true,
        _ => false,
    }
}

/// [`is_weakening`] as a refusal (`CKR_ATTRIBUTE_READ_ONLY`).
pub fn check_change(
    purpose: Option<Purpose>,
    current: &Template<'_>,
    attr: u64,
    new: AttrValue<'_>,
) -> Result<(), Refusal> {
    if is_weakening(purpose, current, attr, new) {
        Err(Refusal::Weakening {
            reason: format!(
                "{} ({attr:#x}) cannot be changed that way on a managed key",
                attr_name(attr)
            ),
        })
    } else {
        Ok(())
    }
}

/// What keeps an existing key (one made outside keyward) out of `class`:
/// each attribute the class requires, read from the key's private or secret
/// object (`secret`: a secret key). Empty when it complies.
///
/// - `CKA_SENSITIVE` and `CKA_ALWAYS_SENSITIVE` on: its value never left
///   the HSM in clear;
/// - `CKA_EXTRACTABLE` off and `CKA_NEVER_EXTRACTABLE` on, unless the
///   class allows backup;
/// - no usage flag on beyond the class's purpose (one purpose).
///
/// An attribute the object does not show counts as not complying. Size,
/// curve and algorithm are the agent's to check (they need the HSM).
pub fn adoption_problems(class: &KeyClass, secret: bool, object: &Template<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = |attr: u64, name: &str, value: bool, why: &str| {
        if object.bool(attr) != Some(value) {
            let found = object
                .bool(attr)
                .map_or_else(|| "not shown".to_owned(), |b| b.to_string());
            out.push(format!("{name} is {found}, class requires {value} ({why})"));
        }
    };
    want(
        CKA_SENSITIVE,
        "CKA_SENSITIVE",
        true,
        "the value must not be readable",
    );
    want(
        CKA_ALWAYS_SENSITIVE,
        "CKA_ALWAYS_SENSITIVE",
        true,
        "the value must never have been readable",
    );
    if !class.backup {
        want(
            CKA_EXTRACTABLE,
            "CKA_EXTRACTABLE",
            false,
            "the class does not allow backup",
        );
        want(
            CKA_NEVER_EXTRACTABLE,
            "CKA_NEVER_EXTRACTABLE",
            true,
            "the class does not allow backup",
        );
    }
    let kind = if secret {
        ObjectKind::Secret
    } else {
        ObjectKind::Private
    };
    let allowed = kind.purpose_flags(class.purpose);
    for &flag in kind.usage_flags() {
        if object.bool(flag) == Some(true) && !allowed.contains(&flag) {
            out.push(format!(
                "usage {} is on, beyond the class's purpose ({})",
                flag_name(flag),
                class.purpose
            ));
        }
    }
    out
}

/// A usage flag's `CKA_*` name.
fn flag_name(flag: u64) -> &'static str {
    match flag {
        CKA_SIGN => "CKA_SIGN",
        CKA_VERIFY => "CKA_VERIFY",
        CKA_SIGN_RECOVER => "CKA_SIGN_RECOVER",
        CKA_VERIFY_RECOVER => "CKA_VERIFY_RECOVER",
        CKA_ENCRYPT => "CKA_ENCRYPT",
        CKA_DECRYPT => "CKA_DECRYPT",
        CKA_WRAP => "CKA_WRAP",
        CKA_UNWRAP => "CKA_UNWRAP",
        CKA_DERIVE => "CKA_DERIVE",
        _ => "a usage flag",
    }
}

#[cfg(test)]
mod tests;
