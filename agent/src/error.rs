//! The agent's one error enum for application calls, and its one mapping to
//! `CK_RV`.
//!
//! The backend's own return value passes through unchanged
//! ([`Error::Backend`]); every refusal the agent decides itself has its own
//! variant, and the variant's documentation names its code, so the mapping
//! *is* the declaration.

use cryptoki_sys as ck;

/// A `CK_RV` as it travels on the wire.
pub type Rv = u64;

/// Why an application call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The backend library answered this `CK_RV`; passed on unchanged.
    #[error("backend returned {}", rv_text(*.0))]
    Backend(Rv),
    /// The policy refused the call with this `CK_RV` (the code of a
    /// `keyward_policy::Refusal`, whose reason the agent logs where it
    /// refuses).
    #[error("refused by policy ({})", rv_text(*.0))]
    Refused(Rv),
    /// `CKR_SLOT_ID_INVALID`: no virtual token has this slot id.
    #[error("unknown slot")]
    SlotIdInvalid,
    /// `CKR_TOKEN_NOT_PRESENT`: the backend token is unavailable.
    #[error("backend token unavailable")]
    TokenNotPresent,
    /// `CKR_SESSION_HANDLE_INVALID`: not a session of this client.
    #[error("unknown session handle")]
    SessionHandleInvalid,
    /// `CKR_OBJECT_HANDLE_INVALID`: not an object handle of this client.
    #[error("unknown object handle")]
    ObjectHandleInvalid,
    /// `CKR_KEY_HANDLE_INVALID`: the key of an operation is unknown.
    #[error("unknown key handle")]
    KeyHandleInvalid,
    /// `CKR_WRAPPING_KEY_HANDLE_INVALID`.
    #[error("unknown wrapping key handle")]
    WrappingKeyHandleInvalid,
    /// `CKR_UNWRAPPING_KEY_HANDLE_INVALID`.
    #[error("unknown unwrapping key handle")]
    UnwrappingKeyHandleInvalid,
    /// `CKR_ARGUMENTS_BAD`.
    #[error("bad arguments")]
    ArgumentsBad,
    /// `CKR_SESSION_PARALLEL_NOT_SUPPORTED`: `CKF_SERIAL_SESSION` missing.
    #[error("parallel sessions are not supported")]
    ParallelNotSupported,
    /// `CKR_SESSION_READ_WRITE_SO_EXISTS`: a read-only session while the
    /// client is logged in as SO.
    #[error("SO is logged in; read-only sessions are not allowed")]
    ReadWriteSoExists,
    /// `CKR_SESSION_READ_ONLY_EXISTS`: SO login with a read-only session open.
    #[error("a read-only session exists")]
    ReadOnlyExists,
    /// `CKR_SESSION_READ_ONLY`: the call needs a read-write session.
    #[error("read-only session")]
    SessionReadOnly,
    /// `CKR_SESSION_EXISTS`: `C_InitToken` while sessions are open.
    #[error("sessions are open on the token")]
    SessionExists,
    /// `CKR_USER_TYPE_INVALID`.
    #[error("invalid user type")]
    UserTypeInvalid,
    /// `CKR_USER_ALREADY_LOGGED_IN`.
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// `CKR_USER_ANOTHER_ALREADY_LOGGED_IN`.
    #[error("another user type is logged in")]
    AnotherAlreadyLoggedIn,
    /// `CKR_USER_NOT_LOGGED_IN`.
    #[error("not logged in")]
    NotLoggedIn,
    /// `CKR_USER_PIN_NOT_INITIALIZED`.
    #[error("user PIN not set")]
    UserPinNotInitialized,
    /// `CKR_PIN_INCORRECT`.
    #[error("wrong PIN")]
    PinIncorrect,
    /// `CKR_PIN_LEN_RANGE`.
    #[error("PIN length out of range")]
    PinLenRange,
    /// `CKR_ACTION_PROHIBITED`: a configuration setting forbids the call.
    #[error("prohibited by configuration")]
    ActionProhibited,
    /// `CKR_DEVICE_ERROR`: the agent's own state store failed.
    #[error("state store failure")]
    StateStore,
}

impl Error {
    /// The `CK_RV` the application sees.
    pub fn rv(self) -> Rv {
        match self {
            Error::Backend(rv) | Error::Refused(rv) => rv,
            Error::SlotIdInvalid => ck::CKR_SLOT_ID_INVALID,
            Error::TokenNotPresent => ck::CKR_TOKEN_NOT_PRESENT,
            Error::SessionHandleInvalid => ck::CKR_SESSION_HANDLE_INVALID,
            Error::ObjectHandleInvalid => ck::CKR_OBJECT_HANDLE_INVALID,
            Error::KeyHandleInvalid => ck::CKR_KEY_HANDLE_INVALID,
            Error::WrappingKeyHandleInvalid => ck::CKR_WRAPPING_KEY_HANDLE_INVALID,
            Error::UnwrappingKeyHandleInvalid => ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            Error::ArgumentsBad => ck::CKR_ARGUMENTS_BAD,
            Error::ParallelNotSupported => ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            Error::ReadWriteSoExists => ck::CKR_SESSION_READ_WRITE_SO_EXISTS,
            Error::ReadOnlyExists => ck::CKR_SESSION_READ_ONLY_EXISTS,
            Error::SessionReadOnly => ck::CKR_SESSION_READ_ONLY,
            Error::SessionExists => ck::CKR_SESSION_EXISTS,
            Error::UserTypeInvalid => ck::CKR_USER_TYPE_INVALID,
            Error::AlreadyLoggedIn => ck::CKR_USER_ALREADY_LOGGED_IN,
            Error::AnotherAlreadyLoggedIn => ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            Error::NotLoggedIn => ck::CKR_USER_NOT_LOGGED_IN,
            Error::UserPinNotInitialized => ck::CKR_USER_PIN_NOT_INITIALIZED,
            Error::PinIncorrect => ck::CKR_PIN_INCORRECT,
            Error::PinLenRange => ck::CKR_PIN_LEN_RANGE,
            Error::ActionProhibited => ck::CKR_ACTION_PROHIBITED,
            Error::StateStore => ck::CKR_DEVICE_ERROR,
        }
    }
}

/// `rv` as an administrator reads it: its `CKR_*` name and code
/// (`CKR_ATTRIBUTE_READ_ONLY (0x10)`), or the bare code where PKCS#11 names
/// none (a vendor's code).
pub fn rv_text(rv: Rv) -> String {
    match keyward_policy::rv_name(rv) {
        Some(name) => format!("{name} ({rv:#x})"),
        None => format!("{rv:#x}"),
    }
}

/// Result of an application call.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_policy_codes_are_named() {
        assert_eq!(
            Error::Backend(ck::CKR_ATTRIBUTE_READ_ONLY).to_string(),
            "backend returned CKR_ATTRIBUTE_READ_ONLY (0x10)"
        );
        assert_eq!(
            Error::Refused(ck::CKR_KEY_FUNCTION_NOT_PERMITTED).to_string(),
            "refused by policy (CKR_KEY_FUNCTION_NOT_PERMITTED (0x68))"
        );
        assert_eq!(
            Error::Backend(0x8000_0001).to_string(),
            "backend returned 0x80000001"
        );
    }

    #[test]
    fn an_admin_error_from_the_hsm_names_the_code() {
        let e =
            crate::lifecycle::hsm_err("C_UnwrapKey", Error::Backend(ck::CKR_ATTRIBUTE_READ_ONLY));
        assert_eq!(
            e.message,
            "HSM: C_UnwrapKey: backend returned CKR_ATTRIBUTE_READ_ONLY (0x10)"
        );
    }
}
