//! Typed attribute values.
//!
//! An attribute crosses the wire with a value whose shape is fixed by its
//! type ([`kind_of`]): a `CK_BBOOL`, a `CK_ULONG` (as `u64`), raw bytes, a
//! list of mechanism types, or a template. A template holds only leaf values,
//! so nesting stops at one level by construction.
//!
//! Each attribute has exactly one accepted encoding: decoding refuses an
//! [`Attribute`] whose value does not have its type's shape (a `CKA_TOKEN`
//! as bytes, a `CKA_CLASS` as a boolean, a template where a leaf belongs or
//! the reverse, a template entry of the wrong shape), and a template
//! ([`template`], [`check_template`]) that gives one type twice with
//! different values. So whatever reads a typed value (`as_bool`,
//! `as_ulong`) sees the value the backend will see, or learns that the
//! attribute is absent. The module refuses a C value whose length does not
//! fit its type (`CKR_ATTRIBUTE_VALUE_INVALID`) before anything is sent.

use serde::{Deserialize, Deserializer, Serialize};

/// A leaf attribute value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `CK_BBOOL`.
    Bool(bool),
    /// `CK_ULONG` and its aliases (class, key type, sizes, mechanism).
    Ulong(u64),
    /// Byte strings, big integers, dates, and any value of another shape.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `CK_MECHANISM_TYPE_PTR` arrays (`CKA_ALLOWED_MECHANISMS`).
    Mechanisms(Vec<u64>),
}

/// An attribute value: a leaf, or a template of leaves.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// A plain value.
    Leaf(Value),
    /// `CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`.
    Template(Vec<(u64, Value)>),
}

/// One `CK_ATTRIBUTE` with its value. Decoding checks the value's shape
/// against the type ([`Attribute::check`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(try_from = "UncheckedAttribute")]
pub struct Attribute {
    /// The `CKA_*` type.
    pub attr_type: u64,
    /// Its value.
    pub value: AttrValue,
}

/// An attribute as decoded, before its shape is checked.
#[derive(Deserialize)]
struct UncheckedAttribute {
    attr_type: u64,
    value: AttrValue,
}

impl TryFrom<UncheckedAttribute> for Attribute {
    type Error = ShapeError;

    fn try_from(a: UncheckedAttribute) -> Result<Self, ShapeError> {
        let a = Attribute {
            attr_type: a.attr_type,
            value: a.value,
        };
        a.check()?;
        Ok(a)
    }
}

/// Why an attribute or a template was refused at decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeError {
    /// The value of this `CKA_*` does not have the shape of its type.
    Shape(u64),
    /// This `CKA_*` is given twice with different values.
    Conflict(u64),
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeError::Shape(t) => {
                write!(
                    f,
                    "attribute {t:#x}: the value does not have its type's shape"
                )
            }
            ShapeError::Conflict(t) => {
                write!(f, "attribute {t:#x} is given twice with different values")
            }
        }
    }
}

impl std::error::Error for ShapeError {}

/// Whether `value` has the shape `kind` prescribes.
pub fn fits(kind: AttrKind, value: &Value) -> bool {
    matches!(
        (kind, value),
        (AttrKind::Bool, Value::Bool(_))
            | (AttrKind::Ulong, Value::Ulong(_))
            | (AttrKind::Bytes, Value::Bytes(_))
            | (AttrKind::Mechanisms, Value::Mechanisms(_))
    )
}

/// The first type given twice with different values. Templates are small:
/// up to 16 entries are compared pairwise; a larger one (only a hostile
/// peer sends those) is sorted, so the check stays `n log n`.
fn first_conflict<T, V: PartialEq>(
    items: &[T],
    key: impl Fn(&T) -> u64,
    value: impl Fn(&T) -> &V,
) -> Option<u64> {
    if items.len() <= 16 {
        return items.iter().enumerate().find_map(|(i, a)| {
            items[i + 1..]
                .iter()
                .any(|b| key(a) == key(b) && value(a) != value(b))
                .then(|| key(a))
        });
    }
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|a| key(a));
    sorted
        .windows(2)
        .find(|w| key(w[0]) == key(w[1]) && value(w[0]) != value(w[1]))
        .map(|w| key(w[0]))
}

/// Checks a template: every attribute has its type's shape (as decoding
/// already ensures) and no type is given twice with different values.
pub fn check_template(template: &[Attribute]) -> Result<(), ShapeError> {
    for a in template {
        a.check()?;
    }
    match first_conflict(template, |a| a.attr_type, |a| &a.value) {
        Some(t) => Err(ShapeError::Conflict(t)),
        None => Ok(()),
    }
}

/// Decodes a template and refuses one that gives a type twice with
/// different values (`#[serde(deserialize_with = "template")]` on every
/// template a request carries).
pub fn template<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Attribute>, D::Error> {
    let template = Vec::<Attribute>::deserialize(d)?;
    match first_conflict(&template, |a| a.attr_type, |a| &a.value) {
        Some(t) => Err(serde::de::Error::custom(ShapeError::Conflict(t))),
        None => Ok(template),
    }
}

impl Attribute {
    /// Checks that the value has the shape of the type ([`kind_of`]): a
    /// leaf that [`fits`] for a leaf type; for a template type, a template
    /// whose entries each fit their own type (never a template type) and
    /// give no type twice with different values.
    pub fn check(&self) -> Result<(), ShapeError> {
        match (kind_of(self.attr_type), &self.value) {
            (AttrKind::Template, AttrValue::Template(inner)) => {
                if let Some(&(t, _)) = inner.iter().find(|(t, v)| !fits(kind_of(*t), v)) {
                    return Err(ShapeError::Shape(t));
                }
                match first_conflict(inner, |e| e.0, |e| &e.1) {
                    Some(t) => Err(ShapeError::Conflict(t)),
                    None => Ok(()),
                }
            }
            (kind, AttrValue::Leaf(v)) if fits(kind, v) => Ok(()),
            _ => Err(ShapeError::Shape(self.attr_type)),
        }
    }

    /// A boolean attribute.
    pub fn bool(attr_type: u64, v: bool) -> Self {
        Attribute {
            attr_type,
            value: AttrValue::Leaf(Value::Bool(v)),
        }
    }
    /// A `CK_ULONG` attribute.
    pub fn ulong(attr_type: u64, v: u64) -> Self {
        Attribute {
            attr_type,
            value: AttrValue::Leaf(Value::Ulong(v)),
        }
    }
    /// A byte-string attribute.
    pub fn bytes(attr_type: u64, v: impl Into<Vec<u8>>) -> Self {
        Attribute {
            attr_type,
            value: AttrValue::Leaf(Value::Bytes(v.into())),
        }
    }
    /// The value if it is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            AttrValue::Leaf(Value::Bool(b)) => Some(b),
            _ => None,
        }
    }
    /// The value if it is a `CK_ULONG`.
    pub fn as_ulong(&self) -> Option<u64> {
        match self.value {
            AttrValue::Leaf(Value::Ulong(v)) => Some(v),
            _ => None,
        }
    }
}

/// What `C_GetAttributeValue` learnt about one requested attribute.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AttrResult {
    /// The value, in full; the module applies the caller's buffer sizes.
    Value(AttrValue),
    /// The attribute is sensitive or unextractable (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

/// The shape of an attribute's value in C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// `CK_BBOOL`, one byte.
    Bool,
    /// `CK_ULONG`.
    Ulong,
    /// A byte array.
    Bytes,
    /// An array of `CK_MECHANISM_TYPE`.
    Mechanisms,
    /// An array of `CK_ATTRIBUTE`.
    Template,
}

mod cka {
    pub use pkcs11_sys::*;
}

// CK_ULONG is `unsigned long`: 64 bits on the platforms keyward runs on
// (checked below), and u64 everywhere on the wire.
const _: () = assert!(std::mem::size_of::<pkcs11_sys::CK_ULONG>() == 8);

/// The C shape of attribute type `attr_type`'s value. Unknown and vendor
/// types are bytes: they travel unchanged.
pub fn kind_of(attr_type: u64) -> AttrKind {
    // One `match`: the compiler turns it into a few comparisons, where a
    // scan of lists took tens per attribute on every template decoded.
    match attr_type {
        cka::CKA_WRAP_TEMPLATE | cka::CKA_UNWRAP_TEMPLATE | cka::CKA_DERIVE_TEMPLATE => {
            AttrKind::Template
        }
        cka::CKA_ALLOWED_MECHANISMS => AttrKind::Mechanisms,
        cka::CKA_TOKEN
        | cka::CKA_PRIVATE
        | cka::CKA_TRUSTED
        | cka::CKA_SENSITIVE
        | cka::CKA_ENCRYPT
        | cka::CKA_DECRYPT
        | cka::CKA_WRAP
        | cka::CKA_UNWRAP
        | cka::CKA_SIGN
        | cka::CKA_SIGN_RECOVER
        | cka::CKA_VERIFY
        | cka::CKA_VERIFY_RECOVER
        | cka::CKA_DERIVE
        | cka::CKA_EXTRACTABLE
        | cka::CKA_LOCAL
        | cka::CKA_NEVER_EXTRACTABLE
        | cka::CKA_ALWAYS_SENSITIVE
        | cka::CKA_MODIFIABLE
        | cka::CKA_COPYABLE
        | cka::CKA_DESTROYABLE
        | cka::CKA_SECONDARY_AUTH
        | cka::CKA_ALWAYS_AUTHENTICATE
        | cka::CKA_WRAP_WITH_TRUSTED
        | cka::CKA_OTP_USER_FRIENDLY_MODE
        | cka::CKA_RESET_ON_INIT
        | cka::CKA_HAS_RESET
        | cka::CKA_COLOR
        // CKA_ENCAPSULATE / CKA_DECAPSULATE (PKCS#11 3.2)
        | 0x633
        | 0x634 => AttrKind::Bool,
        cka::CKA_CLASS
        | cka::CKA_CERTIFICATE_TYPE
        | cka::CKA_CERTIFICATE_CATEGORY
        | cka::CKA_JAVA_MIDP_SECURITY_DOMAIN
        | cka::CKA_NAME_HASH_ALGORITHM
        | cka::CKA_KEY_TYPE
        | cka::CKA_MODULUS_BITS
        | cka::CKA_PRIME_BITS
        | cka::CKA_SUBPRIME_BITS
        | cka::CKA_VALUE_BITS
        | cka::CKA_VALUE_LEN
        | cka::CKA_KEY_GEN_MECHANISM
        | cka::CKA_AUTH_PIN_FLAGS
        | cka::CKA_OTP_FORMAT
        | cka::CKA_OTP_LENGTH
        | cka::CKA_OTP_TIME_INTERVAL
        | cka::CKA_OTP_CHALLENGE_REQUIREMENT
        | cka::CKA_OTP_TIME_REQUIREMENT
        | cka::CKA_OTP_COUNTER_REQUIREMENT
        | cka::CKA_OTP_PIN_REQUIREMENT
        | cka::CKA_OTP_SERVICE_LOGO_TYPE
        | cka::CKA_HW_FEATURE_TYPE
        | cka::CKA_PIXEL_X
        | cka::CKA_PIXEL_Y
        | cka::CKA_RESOLUTION
        | cka::CKA_CHAR_ROWS
        | cka::CKA_CHAR_COLUMNS
        | cka::CKA_BITS_PER_PIXEL
        | cka::CKA_MECHANISM_TYPE
        | cka::CKA_PROFILE_ID
        | cka::CKA_HSS_LEVELS
        | cka::CKA_HSS_LMS_TYPE
        | cka::CKA_HSS_LMOTS_TYPE
        | cka::CKA_HSS_KEYS_REMAINING
        // CKA_PARAMETER_SET (PKCS#11 3.2)
        | 0x61d => AttrKind::Ulong,
        _ => AttrKind::Bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_specification() {
        assert_eq!(kind_of(cka::CKA_TOKEN), AttrKind::Bool);
        assert_eq!(kind_of(cka::CKA_CLASS), AttrKind::Ulong);
        assert_eq!(kind_of(cka::CKA_LABEL), AttrKind::Bytes);
        assert_eq!(kind_of(cka::CKA_WRAP_TEMPLATE), AttrKind::Template);
        assert_eq!(kind_of(cka::CKA_ALLOWED_MECHANISMS), AttrKind::Mechanisms);
        assert_eq!(kind_of(cka::CKA_VENDOR_DEFINED + 5), AttrKind::Bytes);
    }

    fn decode(a: &Attribute) -> Result<Attribute, postcard::Error> {
        postcard::from_bytes(&postcard::to_allocvec(a).unwrap())
    }

    fn leaf(attr_type: u64, v: Value) -> Attribute {
        Attribute {
            attr_type,
            value: AttrValue::Leaf(v),
        }
    }

    fn samples() -> [Value; 4] {
        [
            Value::Bool(true),
            Value::Ulong(4),
            Value::Bytes(4u64.to_ne_bytes().to_vec()),
            Value::Mechanisms(vec![1, 2]),
        ]
    }

    /// One type of each leaf kind: only the value of its own shape decodes.
    #[test]
    fn each_leaf_type_accepts_only_its_own_shape() {
        for (attr_type, kind) in [
            (cka::CKA_TOKEN, AttrKind::Bool),
            (cka::CKA_CLASS, AttrKind::Ulong),
            (cka::CKA_LABEL, AttrKind::Bytes),
            (cka::CKA_ALLOWED_MECHANISMS, AttrKind::Mechanisms),
        ] {
            for v in samples() {
                let a = leaf(attr_type, v.clone());
                let got = decode(&a);
                if fits(kind, &v) {
                    assert_eq!(got.unwrap(), a);
                } else {
                    assert!(got.is_err(), "{attr_type:#x} decoded as {v:?}");
                }
            }
            let nested = Attribute {
                attr_type,
                value: AttrValue::Template(vec![(cka::CKA_TOKEN, Value::Bool(false))]),
            };
            assert!(
                decode(&nested).is_err(),
                "{attr_type:#x} decoded as a template"
            );
        }
    }

    /// The attack's shapes: an 8-byte CKA_CLASS, a 1-byte CKA_TOKEN.
    #[test]
    fn typed_attributes_sent_as_bytes_are_refused() {
        let class = leaf(
            cka::CKA_CLASS,
            Value::Bytes(cka::CKO_SECRET_KEY.to_ne_bytes().to_vec()),
        );
        assert!(decode(&class).is_err());
        assert_eq!(class.check(), Err(ShapeError::Shape(cka::CKA_CLASS)));
        let token = leaf(cka::CKA_TOKEN, Value::Bytes(vec![1]));
        assert!(decode(&token).is_err());
    }

    #[test]
    fn template_types_take_only_templates_of_well_shaped_entries() {
        let t = |entries: Vec<(u64, Value)>| Attribute {
            attr_type: cka::CKA_UNWRAP_TEMPLATE,
            value: AttrValue::Template(entries),
        };
        let good = t(vec![
            (cka::CKA_EXTRACTABLE, Value::Bool(false)),
            (cka::CKA_KEY_TYPE, Value::Ulong(cka::CKK_AES)),
            (cka::CKA_LABEL, Value::Bytes(b"k".to_vec())),
        ]);
        assert_eq!(decode(&good).unwrap(), good);
        // A leaf where a template belongs.
        for v in samples() {
            assert!(decode(&leaf(cka::CKA_WRAP_TEMPLATE, v)).is_err());
        }
        // An entry of the wrong shape.
        let bad = t(vec![(cka::CKA_EXTRACTABLE, Value::Bytes(vec![1]))]);
        assert_eq!(bad.check(), Err(ShapeError::Shape(cka::CKA_EXTRACTABLE)));
        assert!(decode(&bad).is_err());
        // A template type inside a template has no leaf shape.
        for v in samples() {
            assert!(decode(&t(vec![(cka::CKA_DERIVE_TEMPLATE, v)])).is_err());
        }
        // One type twice with different values.
        let twice = t(vec![
            (cka::CKA_SENSITIVE, Value::Bool(true)),
            (cka::CKA_SENSITIVE, Value::Bool(false)),
        ]);
        assert_eq!(twice.check(), Err(ShapeError::Conflict(cka::CKA_SENSITIVE)));
        assert!(decode(&twice).is_err());
    }

    #[test]
    fn request_templates_refuse_a_type_given_twice_with_different_values() {
        use crate::message::Request;
        use crate::types::Mechanism;
        let request = |private_template: Vec<Attribute>| Request::GenerateKeyPair {
            session: crate::SessionHandle(1),
            mechanism: Mechanism::plain(cka::CKM_EC_KEY_PAIR_GEN),
            public_template: vec![Attribute::bool(cka::CKA_TOKEN, false)],
            private_template,
        };
        let roundtrip = |r: &Request| -> Result<Request, postcard::Error> {
            postcard::from_bytes(&postcard::to_allocvec(r).unwrap())
        };
        let same = request(vec![
            Attribute::bool(cka::CKA_TOKEN, false),
            Attribute::bool(cka::CKA_TOKEN, false),
        ]);
        assert_eq!(roundtrip(&same).unwrap(), same);
        let conflict = request(vec![
            Attribute::bool(cka::CKA_TOKEN, false),
            Attribute::bool(cka::CKA_TOKEN, true),
        ]);
        assert!(roundtrip(&conflict).is_err());
        // A large template takes the sorting path.
        let mut big: Vec<Attribute> = (0..40)
            .map(|i| Attribute::bytes(cka::CKA_VENDOR_DEFINED + i, vec![i as u8]))
            .collect();
        assert_eq!(
            roundtrip(&request(big.clone())).unwrap(),
            request(big.clone())
        );
        big.push(Attribute::bytes(cka::CKA_VENDOR_DEFINED + 7, vec![0]));
        assert_eq!(
            check_template(&big),
            Err(ShapeError::Conflict(cka::CKA_VENDOR_DEFINED + 7))
        );
        assert!(roundtrip(&request(big)).is_err());
    }
}
