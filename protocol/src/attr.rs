//! Typed attribute values.
//!
//! An attribute crosses the wire with a value whose shape is fixed by its
//! type ([`kind_of`]): a `CK_BBOOL`, a `CK_ULONG` (as `u64`), raw bytes, a
//! list of mechanism types, or a template. A template holds only leaf values,
//! so nesting stops at one level by construction.
//!
//! A value whose length does not fit its type's shape (say a 4-byte
//! `CKA_TOKEN`) travels as [`Value::Bytes`], unchanged, so that the backend
//! judges it exactly as it would judge the application's own call.

use serde::{Deserialize, Serialize};

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

/// One `CK_ATTRIBUTE` with its value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The `CKA_*` type.
    pub attr_type: u64,
    /// Its value.
    pub value: AttrValue,
}

impl Attribute {
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

const BOOL_ATTRS: &[u64] = &[
    cka::CKA_TOKEN,
    cka::CKA_PRIVATE,
    cka::CKA_TRUSTED,
    cka::CKA_SENSITIVE,
    cka::CKA_ENCRYPT,
    cka::CKA_DECRYPT,
    cka::CKA_WRAP,
    cka::CKA_UNWRAP,
    cka::CKA_SIGN,
    cka::CKA_SIGN_RECOVER,
    cka::CKA_VERIFY,
    cka::CKA_VERIFY_RECOVER,
    cka::CKA_DERIVE,
    cka::CKA_EXTRACTABLE,
    cka::CKA_LOCAL,
    cka::CKA_NEVER_EXTRACTABLE,
    cka::CKA_ALWAYS_SENSITIVE,
    cka::CKA_MODIFIABLE,
    cka::CKA_COPYABLE,
    cka::CKA_DESTROYABLE,
    cka::CKA_SECONDARY_AUTH,
    cka::CKA_ALWAYS_AUTHENTICATE,
    cka::CKA_WRAP_WITH_TRUSTED,
    cka::CKA_OTP_USER_FRIENDLY_MODE,
    cka::CKA_RESET_ON_INIT,
    cka::CKA_HAS_RESET,
    cka::CKA_COLOR,
    // CKA_ENCAPSULATE / CKA_DECAPSULATE (PKCS#11 3.2)
    0x633,
    0x634,
];

const ULONG_ATTRS: &[u64] = &[
    cka::CKA_CLASS,
    cka::CKA_CERTIFICATE_TYPE,
    cka::CKA_CERTIFICATE_CATEGORY,
    cka::CKA_JAVA_MIDP_SECURITY_DOMAIN,
    cka::CKA_NAME_HASH_ALGORITHM,
    cka::CKA_KEY_TYPE,
    cka::CKA_MODULUS_BITS,
    cka::CKA_PRIME_BITS,
    cka::CKA_SUBPRIME_BITS,
    cka::CKA_VALUE_BITS,
    cka::CKA_VALUE_LEN,
    cka::CKA_KEY_GEN_MECHANISM,
    cka::CKA_AUTH_PIN_FLAGS,
    cka::CKA_OTP_FORMAT,
    cka::CKA_OTP_LENGTH,
    cka::CKA_OTP_TIME_INTERVAL,
    cka::CKA_OTP_CHALLENGE_REQUIREMENT,
    cka::CKA_OTP_TIME_REQUIREMENT,
    cka::CKA_OTP_COUNTER_REQUIREMENT,
    cka::CKA_OTP_PIN_REQUIREMENT,
    cka::CKA_OTP_SERVICE_LOGO_TYPE,
    cka::CKA_HW_FEATURE_TYPE,
    cka::CKA_PIXEL_X,
    cka::CKA_PIXEL_Y,
    cka::CKA_RESOLUTION,
    cka::CKA_CHAR_ROWS,
    cka::CKA_CHAR_COLUMNS,
    cka::CKA_BITS_PER_PIXEL,
    cka::CKA_MECHANISM_TYPE,
    cka::CKA_PROFILE_ID,
    cka::CKA_HSS_LEVELS,
    cka::CKA_HSS_LMS_TYPE,
    cka::CKA_HSS_LMOTS_TYPE,
    cka::CKA_HSS_KEYS_REMAINING,
    // CKA_PARAMETER_SET (PKCS#11 3.2)
    0x61d,
];

/// The C shape of attribute type `attr_type`'s value. Unknown and vendor
/// types are bytes: they travel unchanged.
pub fn kind_of(attr_type: u64) -> AttrKind {
    if attr_type == cka::CKA_WRAP_TEMPLATE
        || attr_type == cka::CKA_UNWRAP_TEMPLATE
        || attr_type == cka::CKA_DERIVE_TEMPLATE
    {
        AttrKind::Template
    } else if attr_type == cka::CKA_ALLOWED_MECHANISMS {
        AttrKind::Mechanisms
    } else if BOOL_ATTRS.contains(&attr_type) {
        AttrKind::Bool
    } else if ULONG_ATTRS.contains(&attr_type) {
        AttrKind::Ulong
    } else {
        AttrKind::Bytes
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
}
