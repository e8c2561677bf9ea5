//! Why the policy says no, and the `CK_RV` the application gets for it.
//!
//! Each variant is declared next to its code: the mapping *is* the
//! declaration.

use std::fmt;

use crate::lifecycle::{Action, Rotation};
use crate::mechanisms::mechanism_name;
use crate::{KeyState, Operation, Purpose};

/// A mechanism number shown by its `CKM_*` name, or in hex when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mechanism(pub u64);

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match mechanism_name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

macro_rules! refusals {
    ($(
        $(#[$meta:meta])*
        $variant:ident $({ $($field:ident : $ty:ty),* $(,)? })? => $ckr:ident,
    )*) => {
        /// A policy refusal. [`Refusal::ckr`] is the code the application
        /// gets; the message (`Display`) is the reason, for the audit log
        /// and the agent's log.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum Refusal {
            $(
                $(#[$meta])*
                #[doc = concat!("`", stringify!($ckr), "`")]
                // The fields are named in the message; a doc line each
                // would repeat it.
                $variant $({ $(#[allow(missing_docs)] $field: $ty),* })?,
            )*
        }

        impl Refusal {
            /// The `CK_RV` for this refusal.
            pub fn ckr(&self) -> u64 {
                match self {
                    $( Refusal::$variant { .. } => pkcs11_sys::$ckr, )*
                }
            }
        }
    };
}

refusals! {
    /// The key's state forbids the operation.
    #[error("key is {state}: {operation} is not permitted")]
    KeyState { state: KeyState, operation: Operation } => CKR_KEY_FUNCTION_NOT_PERMITTED,
    /// A deactivated key's process period has ended (or is unknown).
    #[error("key is deactivated and its process period has ended: {operation} is not permitted")]
    ProcessPeriodEnded { operation: Operation } => CKR_KEY_FUNCTION_NOT_PERMITTED,
    /// The key is destroyed: for applications it does not exist.
    #[error("key is destroyed")]
    KeyDestroyed => CKR_KEY_HANDLE_INVALID,
    /// The operation does not fit the key's purpose.
    #[error("a {purpose} key cannot be used to {operation}")]
    PurposeMismatch { purpose: Purpose, operation: Operation } => CKR_KEY_FUNCTION_NOT_PERMITTED,
    /// The application has no grant for this operation on this key.
    #[error("application \"{application}\" has no grant to {operation} with keys of class \"{class}\"")]
    NotGranted { application: String, class: String, operation: Operation } => CKR_KEY_FUNCTION_NOT_PERMITTED,
    /// The application's grant has expired.
    #[error("the grant of application \"{application}\" to {operation} with keys of class \"{class}\" has expired")]
    GrantExpired { application: String, class: String, operation: Operation } => CKR_KEY_FUNCTION_NOT_PERMITTED,
    /// The mechanism is outside the policy's allow-list.
    #[error("mechanism {mechanism} is not allowed by the policy")]
    MechanismNotAllowed { mechanism: Mechanism } => CKR_MECHANISM_INVALID,
    /// The generation mechanism makes keys of an algorithm the class does
    /// not allow.
    #[error("{reason}")]
    AlgorithmNotAllowed { reason: String } => CKR_MECHANISM_INVALID,
    /// The template contradicts itself or the class (two purposes, a purpose
    /// other than the class's).
    #[error("{reason}")]
    TemplateInconsistent { reason: String } => CKR_TEMPLATE_INCONSISTENT,
    /// The template lacks an attribute the policy needs to decide.
    #[error("{reason}")]
    TemplateIncomplete { reason: String } => CKR_TEMPLATE_INCOMPLETE,
    /// An attribute value the class forbids (a curve, `CKA_EXTRACTABLE`,
    /// `CKA_SENSITIVE` false, ...).
    #[error("{reason}")]
    AttributeValueInvalid { reason: String } => CKR_ATTRIBUTE_VALUE_INVALID,
    /// A key size below the class's minimum.
    #[error("{reason}")]
    KeySizeRange { reason: String } => CKR_KEY_SIZE_RANGE,
    /// `C_SetAttributeValue` or `C_CopyObject` would weaken a managed key.
    #[error("{reason}")]
    Weakening { reason: String } => CKR_ATTRIBUTE_READ_ONLY,
    /// The action needs approval (dual control) that has not been given.
    #[error("{action} of a {from} key needs approval")]
    NeedsApproval { from: KeyState, action: Action } => CKR_ACTION_PROHIBITED,
    /// The action is no transition from the key's state.
    #[error("a {from} key cannot be {}", .action.past_tense())]
    InvalidTransition { from: KeyState, action: Action } => CKR_ACTION_PROHIBITED,
    /// The key is in no state this rotation is for.
    #[error("a {from} key cannot rotate: {rotation} is for {} keys only", .rotation.rotates())]
    CannotRotate { from: KeyState, rotation: Rotation } => CKR_ACTION_PROHIBITED,
    /// The policy lets no application generate keys itself (strict mode
    /// without a default class).
    #[error("{reason}")]
    GenerationNotPermitted { reason: String } => CKR_ACTION_PROHIBITED,
    /// Too many wrong PINs.
    #[error("the PIN is locked after {failures} wrong attempts")]
    PinLocked { failures: u32 } => CKR_PIN_LOCKED,
    /// In strict mode PINs are set by the administrator, not the token's SO.
    #[error("in strict mode PINs are set by the administrator (keyward-agent set-pin), not the token's SO")]
    PinsAdministered => CKR_ACTION_PROHIBITED,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes() {
        let r = Refusal::MechanismNotAllowed {
            mechanism: Mechanism(pkcs11_sys::CKM_ECDSA),
        };
        assert_eq!(
            r.to_string(),
            "mechanism CKM_ECDSA is not allowed by the policy"
        );
        assert_eq!(r.ckr(), pkcs11_sys::CKR_MECHANISM_INVALID);
        assert_eq!(Mechanism(0x8000_0001).to_string(), "0x80000001");
        let r = Refusal::InvalidTransition {
            from: KeyState::Destroyed,
            action: Action::Destroy,
        };
        assert_eq!(r.to_string(), "a destroyed key cannot be destroyed");
        assert_eq!(
            Refusal::PinLocked { failures: 5 }.ckr(),
            pkcs11_sys::CKR_PIN_LOCKED
        );
        assert_eq!(
            Refusal::Weakening {
                reason: String::new()
            }
            .ckr(),
            pkcs11_sys::CKR_ATTRIBUTE_READ_ONLY
        );
    }
}
