//! The crate's one error type. Each variant declares its `CKR_*` next to it,
//! so the mapping to C *is* the declaration; [`Error::rv`] is the only place
//! an error becomes a `CK_RV`.

use pkcs11_sys::*;

macro_rules! errors {
    ($( $(#[$doc:meta])* $name:ident => $rv:ident, )*) => {
        /// Why a PKCS#11 call failed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Error {
            $( $(#[$doc])* $name, )*
            /// The agent answered this `CK_RV` (passed through unchanged).
            Agent(CK_RV),
        }

        impl Error {
            /// The `CK_RV` the application sees.
            pub(crate) fn rv(self) -> CK_RV {
                match self {
                    $( Error::$name => $rv, )*
                    Error::Agent(rv) => rv,
                }
            }
        }
    };
}

errors! {
    /// A NULL or inconsistent pointer argument.
    ArgumentsBad => CKR_ARGUMENTS_BAD,
    /// Called before `C_Initialize`, after `C_Finalize`, or in a forked child.
    NotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
    /// `C_Initialize` twice in one process.
    AlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
    /// The application insists on its own mutexes.
    CantLock => CKR_CANT_LOCK,
    /// The session handle is not one of this process's open sessions.
    SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
    /// `C_OpenSession` without `CKF_SERIAL_SESSION`.
    SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    /// A `C_*Init` while that operation is active.
    OperationActive => CKR_OPERATION_ACTIVE,
    /// A continuation call without its `C_*Init`.
    OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
    /// A mechanism parameter the module cannot read faithfully.
    MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
    /// A template value whose length does not fit its type (a 4-byte
    /// `CKA_TOKEN`, a 1-byte `CKA_CLASS`) or a malformed nested template.
    AttributeValueInvalid => CKR_ATTRIBUTE_VALUE_INVALID,
    /// A template that gives one attribute twice with different values.
    TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
    /// The caller's buffer is too short; the needed length was written.
    BufferTooSmall => CKR_BUFFER_TOO_SMALL,
    /// Some attribute of `C_GetAttributeValue` is sensitive.
    AttributeSensitive => CKR_ATTRIBUTE_SENSITIVE,
    /// Some attribute of `C_GetAttributeValue` does not exist.
    AttributeTypeInvalid => CKR_ATTRIBUTE_TYPE_INVALID,
    /// A function keyward does not offer.
    FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
    /// `C_GetFunctionStatus` / `C_CancelFunction` (legacy parallel API).
    FunctionNotParallel => CKR_FUNCTION_NOT_PARALLEL,
    /// A slot id the module has never seen.
    SlotIdInvalid => CKR_SLOT_ID_INVALID,
    /// A slot call while the agent cannot be reached.
    TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
    /// The agent cannot be reached (connect failed).
    AgentUnreachable => CKR_DEVICE_REMOVED,
    /// The connection failed during the call (agent died, reset, timeout).
    Transport => CKR_DEVICE_REMOVED,
    /// The agent answered something that does not fit the call.
    UnexpectedAnswer => CKR_DEVICE_ERROR,
    /// `C_WaitForSlotEvent` with `CKF_DONT_BLOCK` and nothing happened.
    NoEvent => CKR_NO_EVENT,
    /// A panic caught at the C edge: never expected.
    Internal => CKR_GENERAL_ERROR,
}

impl Error {
    /// Slot and token calls report a missing agent as a missing token.
    pub(crate) fn in_slot_call(self) -> Error {
        match self {
            Error::AgentUnreachable | Error::Transport => Error::TokenNotPresent,
            other => other,
        }
    }

    /// True when the agent could not be reached or the connection broke.
    pub(crate) fn is_transport(self) -> bool {
        matches!(self, Error::AgentUnreachable | Error::Transport)
    }
}

/// Result of every call implementation.
pub(crate) type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_the_declaration() {
        assert_eq!(Error::ArgumentsBad.rv(), CKR_ARGUMENTS_BAD);
        assert_eq!(Error::Transport.rv(), CKR_DEVICE_REMOVED);
        assert_eq!(Error::Agent(CKR_PIN_INCORRECT).rv(), CKR_PIN_INCORRECT);
        assert_eq!(
            Error::AgentUnreachable.in_slot_call(),
            Error::TokenNotPresent
        );
    }
}
