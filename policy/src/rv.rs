//! `CKR_*` names, for messages, logs and the audit trail's tables.
//!
//! Every return value `pkcs11-sys` defines (PKCS#11 3.0), and keyward's
//! own result values for administrator actions ([`KEYWARD_INVALID`] ...),
//! in PKCS#11's vendor-defined range.

/// `(name, value)` for every standard return value, in `pkcs11.h` order.
const RETURN_VALUES: &[(&str, u64)] = &[
    ("CKR_OK", pkcs11_sys::CKR_OK),
    ("CKR_CANCEL", pkcs11_sys::CKR_CANCEL),
    ("CKR_HOST_MEMORY", pkcs11_sys::CKR_HOST_MEMORY),
    ("CKR_SLOT_ID_INVALID", pkcs11_sys::CKR_SLOT_ID_INVALID),
    ("CKR_GENERAL_ERROR", pkcs11_sys::CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", pkcs11_sys::CKR_FUNCTION_FAILED),
    ("CKR_ARGUMENTS_BAD", pkcs11_sys::CKR_ARGUMENTS_BAD),
    ("CKR_NO_EVENT", pkcs11_sys::CKR_NO_EVENT),
    (
        "CKR_NEED_TO_CREATE_THREADS",
        pkcs11_sys::CKR_NEED_TO_CREATE_THREADS,
    ),
    ("CKR_CANT_LOCK", pkcs11_sys::CKR_CANT_LOCK),
    (
        "CKR_ATTRIBUTE_READ_ONLY",
        pkcs11_sys::CKR_ATTRIBUTE_READ_ONLY,
    ),
    (
        "CKR_ATTRIBUTE_SENSITIVE",
        pkcs11_sys::CKR_ATTRIBUTE_SENSITIVE,
    ),
    (
        "CKR_ATTRIBUTE_TYPE_INVALID",
        pkcs11_sys::CKR_ATTRIBUTE_TYPE_INVALID,
    ),
    (
        "CKR_ATTRIBUTE_VALUE_INVALID",
        pkcs11_sys::CKR_ATTRIBUTE_VALUE_INVALID,
    ),
    ("CKR_ACTION_PROHIBITED", pkcs11_sys::CKR_ACTION_PROHIBITED),
    ("CKR_DATA_INVALID", pkcs11_sys::CKR_DATA_INVALID),
    ("CKR_DATA_LEN_RANGE", pkcs11_sys::CKR_DATA_LEN_RANGE),
    ("CKR_DEVICE_ERROR", pkcs11_sys::CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", pkcs11_sys::CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", pkcs11_sys::CKR_DEVICE_REMOVED),
    (
        "CKR_ENCRYPTED_DATA_INVALID",
        pkcs11_sys::CKR_ENCRYPTED_DATA_INVALID,
    ),
    (
        "CKR_ENCRYPTED_DATA_LEN_RANGE",
        pkcs11_sys::CKR_ENCRYPTED_DATA_LEN_RANGE,
    ),
    (
        "CKR_AEAD_DECRYPT_FAILED",
        pkcs11_sys::CKR_AEAD_DECRYPT_FAILED,
    ),
    ("CKR_FUNCTION_CANCELED", pkcs11_sys::CKR_FUNCTION_CANCELED),
    (
        "CKR_FUNCTION_NOT_PARALLEL",
        pkcs11_sys::CKR_FUNCTION_NOT_PARALLEL,
    ),
    (
        "CKR_FUNCTION_NOT_SUPPORTED",
        pkcs11_sys::CKR_FUNCTION_NOT_SUPPORTED,
    ),
    ("CKR_KEY_HANDLE_INVALID", pkcs11_sys::CKR_KEY_HANDLE_INVALID),
    ("CKR_KEY_SIZE_RANGE", pkcs11_sys::CKR_KEY_SIZE_RANGE),
    (
        "CKR_KEY_TYPE_INCONSISTENT",
        pkcs11_sys::CKR_KEY_TYPE_INCONSISTENT,
    ),
    ("CKR_KEY_NOT_NEEDED", pkcs11_sys::CKR_KEY_NOT_NEEDED),
    ("CKR_KEY_CHANGED", pkcs11_sys::CKR_KEY_CHANGED),
    ("CKR_KEY_NEEDED", pkcs11_sys::CKR_KEY_NEEDED),
    ("CKR_KEY_INDIGESTIBLE", pkcs11_sys::CKR_KEY_INDIGESTIBLE),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        pkcs11_sys::CKR_KEY_FUNCTION_NOT_PERMITTED,
    ),
    ("CKR_KEY_NOT_WRAPPABLE", pkcs11_sys::CKR_KEY_NOT_WRAPPABLE),
    ("CKR_KEY_UNEXTRACTABLE", pkcs11_sys::CKR_KEY_UNEXTRACTABLE),
    ("CKR_MECHANISM_INVALID", pkcs11_sys::CKR_MECHANISM_INVALID),
    (
        "CKR_MECHANISM_PARAM_INVALID",
        pkcs11_sys::CKR_MECHANISM_PARAM_INVALID,
    ),
    (
        "CKR_OBJECT_HANDLE_INVALID",
        pkcs11_sys::CKR_OBJECT_HANDLE_INVALID,
    ),
    ("CKR_OPERATION_ACTIVE", pkcs11_sys::CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        pkcs11_sys::CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", pkcs11_sys::CKR_PIN_INCORRECT),
    ("CKR_PIN_INVALID", pkcs11_sys::CKR_PIN_INVALID),
    ("CKR_PIN_LEN_RANGE", pkcs11_sys::CKR_PIN_LEN_RANGE),
    ("CKR_PIN_EXPIRED", pkcs11_sys::CKR_PIN_EXPIRED),
    ("CKR_PIN_LOCKED", pkcs11_sys::CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", pkcs11_sys::CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", pkcs11_sys::CKR_SESSION_COUNT),
    (
        "CKR_SESSION_HANDLE_INVALID",
        pkcs11_sys::CKR_SESSION_HANDLE_INVALID,
    ),
    (
        "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        pkcs11_sys::CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    ),
    ("CKR_SESSION_READ_ONLY", pkcs11_sys::CKR_SESSION_READ_ONLY),
    ("CKR_SESSION_EXISTS", pkcs11_sys::CKR_SESSION_EXISTS),
    (
        "CKR_SESSION_READ_ONLY_EXISTS",
        pkcs11_sys::CKR_SESSION_READ_ONLY_EXISTS,
    ),
    (
        "CKR_SESSION_READ_WRITE_SO_EXISTS",
        pkcs11_sys::CKR_SESSION_READ_WRITE_SO_EXISTS,
    ),
    ("CKR_SIGNATURE_INVALID", pkcs11_sys::CKR_SIGNATURE_INVALID),
    (
        "CKR_SIGNATURE_LEN_RANGE",
        pkcs11_sys::CKR_SIGNATURE_LEN_RANGE,
    ),
    (
        "CKR_TEMPLATE_INCOMPLETE",
        pkcs11_sys::CKR_TEMPLATE_INCOMPLETE,
    ),
    (
        "CKR_TEMPLATE_INCONSISTENT",
        pkcs11_sys::CKR_TEMPLATE_INCONSISTENT,
    ),
    ("CKR_TOKEN_NOT_PRESENT", pkcs11_sys::CKR_TOKEN_NOT_PRESENT),
    (
        "CKR_TOKEN_NOT_RECOGNIZED",
        pkcs11_sys::CKR_TOKEN_NOT_RECOGNIZED,
    ),
    (
        "CKR_TOKEN_WRITE_PROTECTED",
        pkcs11_sys::CKR_TOKEN_WRITE_PROTECTED,
    ),
    (
        "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        pkcs11_sys::CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    ),
    (
        "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        pkcs11_sys::CKR_UNWRAPPING_KEY_SIZE_RANGE,
    ),
    (
        "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        pkcs11_sys::CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    (
        "CKR_USER_ALREADY_LOGGED_IN",
        pkcs11_sys::CKR_USER_ALREADY_LOGGED_IN,
    ),
    ("CKR_USER_NOT_LOGGED_IN", pkcs11_sys::CKR_USER_NOT_LOGGED_IN),
    (
        "CKR_USER_PIN_NOT_INITIALIZED",
        pkcs11_sys::CKR_USER_PIN_NOT_INITIALIZED,
    ),
    ("CKR_USER_TYPE_INVALID", pkcs11_sys::CKR_USER_TYPE_INVALID),
    (
        "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        pkcs11_sys::CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    ),
    (
        "CKR_USER_TOO_MANY_TYPES",
        pkcs11_sys::CKR_USER_TOO_MANY_TYPES,
    ),
    (
        "CKR_WRAPPED_KEY_INVALID",
        pkcs11_sys::CKR_WRAPPED_KEY_INVALID,
    ),
    (
        "CKR_WRAPPED_KEY_LEN_RANGE",
        pkcs11_sys::CKR_WRAPPED_KEY_LEN_RANGE,
    ),
    (
        "CKR_WRAPPING_KEY_HANDLE_INVALID",
        pkcs11_sys::CKR_WRAPPING_KEY_HANDLE_INVALID,
    ),
    (
        "CKR_WRAPPING_KEY_SIZE_RANGE",
        pkcs11_sys::CKR_WRAPPING_KEY_SIZE_RANGE,
    ),
    (
        "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        pkcs11_sys::CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    (
        "CKR_RANDOM_SEED_NOT_SUPPORTED",
        pkcs11_sys::CKR_RANDOM_SEED_NOT_SUPPORTED,
    ),
    ("CKR_RANDOM_NO_RNG", pkcs11_sys::CKR_RANDOM_NO_RNG),
    (
        "CKR_DOMAIN_PARAMS_INVALID",
        pkcs11_sys::CKR_DOMAIN_PARAMS_INVALID,
    ),
    (
        "CKR_CURVE_NOT_SUPPORTED",
        pkcs11_sys::CKR_CURVE_NOT_SUPPORTED,
    ),
    ("CKR_BUFFER_TOO_SMALL", pkcs11_sys::CKR_BUFFER_TOO_SMALL),
    (
        "CKR_SAVED_STATE_INVALID",
        pkcs11_sys::CKR_SAVED_STATE_INVALID,
    ),
    (
        "CKR_INFORMATION_SENSITIVE",
        pkcs11_sys::CKR_INFORMATION_SENSITIVE,
    ),
    ("CKR_STATE_UNSAVEABLE", pkcs11_sys::CKR_STATE_UNSAVEABLE),
    (
        "CKR_CRYPTOKI_NOT_INITIALIZED",
        pkcs11_sys::CKR_CRYPTOKI_NOT_INITIALIZED,
    ),
    (
        "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        pkcs11_sys::CKR_CRYPTOKI_ALREADY_INITIALIZED,
    ),
    ("CKR_MUTEX_BAD", pkcs11_sys::CKR_MUTEX_BAD),
    ("CKR_MUTEX_NOT_LOCKED", pkcs11_sys::CKR_MUTEX_NOT_LOCKED),
    ("CKR_NEW_PIN_MODE", pkcs11_sys::CKR_NEW_PIN_MODE),
    ("CKR_NEXT_OTP", pkcs11_sys::CKR_NEXT_OTP),
    (
        "CKR_EXCEEDED_MAX_ITERATIONS",
        pkcs11_sys::CKR_EXCEEDED_MAX_ITERATIONS,
    ),
    (
        "CKR_FIPS_SELF_TEST_FAILED",
        pkcs11_sys::CKR_FIPS_SELF_TEST_FAILED,
    ),
    (
        "CKR_LIBRARY_LOAD_FAILED",
        pkcs11_sys::CKR_LIBRARY_LOAD_FAILED,
    ),
    ("CKR_PIN_TOO_WEAK", pkcs11_sys::CKR_PIN_TOO_WEAK),
    ("CKR_PUBLIC_KEY_INVALID", pkcs11_sys::CKR_PUBLIC_KEY_INVALID),
    ("CKR_FUNCTION_REJECTED", pkcs11_sys::CKR_FUNCTION_REJECTED),
    (
        "CKR_TOKEN_RESOURCE_EXCEEDED",
        pkcs11_sys::CKR_TOKEN_RESOURCE_EXCEEDED,
    ),
    (
        "CKR_OPERATION_CANCEL_FAILED",
        pkcs11_sys::CKR_OPERATION_CANCEL_FAILED,
    ),
    ("CKR_KEY_EXHAUSTED", pkcs11_sys::CKR_KEY_EXHAUSTED),
];

/// The base of keyward's own result values: `CKR_VENDOR_DEFINED` with
/// `KW` (0x4b57) in the high half, so that a vendor's small code returned
/// by an HSM (`0x80000001`) is never taken for one of them.
const KEYWARD_BASE: u64 = pkcs11_sys::CKR_VENDOR_DEFINED | 0x4b57_0000;

/// An administrator's request was malformed or contradictory (exit 2).
pub const KEYWARD_INVALID: u64 = KEYWARD_BASE | 1;
/// An administrator's request named no such key, token, application,
/// class or request (exit 4).
pub const KEYWARD_NOT_FOUND: u64 = KEYWARD_BASE | 2;
/// The policy, the roster or the key's lifecycle refused an
/// administrator's request (exit 5).
pub const KEYWARD_REFUSED: u64 = KEYWARD_BASE | 3;
/// An administrator's request conflicted with the current state: a name
/// taken, a request already decided, a race (exit 6).
pub const KEYWARD_CONFLICT: u64 = KEYWARD_BASE | 4;
/// The HSM or the inventory store failed an administrator's request
/// (exit 7).
pub const KEYWARD_FAILED: u64 = KEYWARD_BASE | 5;

/// keyward's own result values with their names.
const KEYWARD_VALUES: &[(&str, u64)] = &[
    ("KEYWARD_INVALID", KEYWARD_INVALID),
    ("KEYWARD_NOT_FOUND", KEYWARD_NOT_FOUND),
    ("KEYWARD_REFUSED", KEYWARD_REFUSED),
    ("KEYWARD_CONFLICT", KEYWARD_CONFLICT),
    ("KEYWARD_FAILED", KEYWARD_FAILED),
];

/// The name of `rv`: its `CKR_*` name if it is a standard one, its
/// `KEYWARD_*` name if it is one of keyward's own.
pub fn rv_name(rv: u64) -> Option<&'static str> {
    RETURN_VALUES
        .iter()
        .chain(KEYWARD_VALUES)
        .find(|&&(_, v)| v == rv)
        .map(|&(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pkcs11() {
        assert_eq!(rv_name(0), Some("CKR_OK"));
        assert_eq!(rv_name(0x68), Some("CKR_KEY_FUNCTION_NOT_PERMITTED"));
        assert_eq!(rv_name(0x1b), Some("CKR_ACTION_PROHIBITED"));
        assert_eq!(rv_name(0xa4), Some("CKR_PIN_LOCKED"));
        assert_eq!(rv_name(0x4), None);
    }

    #[test]
    fn keyward_values_are_vendor_defined_and_named() {
        assert_eq!(KEYWARD_INVALID, 0xcb57_0001);
        assert_eq!(KEYWARD_FAILED, 0xcb57_0005);
        for &(name, v) in KEYWARD_VALUES {
            assert_eq!(rv_name(v), Some(name));
            assert!(name.starts_with("KEYWARD_"), "{name}");
            assert_eq!(
                v & pkcs11_sys::CKR_VENDOR_DEFINED,
                pkcs11_sys::CKR_VENDOR_DEFINED
            );
            // No standard value shares it, and it fits a 32-bit CK_ULONG.
            assert!(RETURN_VALUES.iter().all(|&(_, s)| s != v), "{name}");
            assert!(u32::try_from(v).is_ok(), "{name}");
        }
        assert_eq!(rv_name(KEYWARD_REFUSED), Some("KEYWARD_REFUSED"));
        assert_eq!(rv_name(KEYWARD_NOT_FOUND), Some("KEYWARD_NOT_FOUND"));
        // A vendor's own code stays unnamed.
        assert_eq!(rv_name(0x8000_0001), None);
        assert_eq!(rv_name(0xcb57_0000), None);
        assert_eq!(rv_name(0xcb57_0006), None);
    }
}
