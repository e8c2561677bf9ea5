//! The application-facing calls. One [`Request`] per PKCS#11 call that must
//! reach the agent (its variants come from the call table in
//! [`crate::calls`]), answered by exactly one [`Response`].
//!
//! Calls the module answers alone (`C_GetInfo`, `C_GetFunctionList`, the
//! find-iteration after `C_FindObjectsInit`, the length-query half of the
//! two-call convention) have no message.

use serde::{Deserialize, Serialize};

use crate::attr::AttrResult;
use crate::types::{Mechanism, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use crate::version::VersionRefusal;

pub use crate::calls::Request;

/// A virtual slot id as the agent numbers them.
pub type SlotId = u64;
/// A session handle, valid only for the client process that opened it.
pub type SessionHandle = u64;
/// An object handle, valid only for the client process that obtained it.
pub type ObjectHandle = u64;

/// A cryptographic operation kind: which `C_*Init` started it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `C_EncryptInit`.
    Encrypt,
    /// `C_DecryptInit`.
    Decrypt,
    /// `C_DigestInit`.
    Digest,
    /// `C_SignInit`.
    Sign,
    /// `C_VerifyInit`.
    Verify,
    /// `C_SignRecoverInit`.
    SignRecover,
    /// `C_VerifyRecoverInit`.
    VerifyRecover,
}

impl Op {
    /// Every kind, in [`Op::index`] order.
    pub const ALL: [Op; 7] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::Digest,
        Op::Sign,
        Op::Verify,
        Op::SignRecover,
        Op::VerifyRecover,
    ];

    /// Its place in [`Op::ALL`] (0..7): a session keeps one slot per kind.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The arguments of a `C_*Init`, carried with the first call of the
/// operation when the module defers the init (it does so only for a key and
/// mechanism shape whose init the agent already accepted in this module's
/// life, so that `C_*Init` still returns its own errors).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OpInit {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The key (`None` for digests).
    pub key: Option<ObjectHandle>,
}

/// The agent's answer to a `Hello` it accepts. Its encoding never changes
/// (a client of any version reads it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// The application-protocol version the connection speaks from now on:
    /// the highest one both sides speak.
    pub version: u16,
    /// The agent's package version.
    pub agent_version: String,
    /// Random per agent start: a changed value tells the module that the
    /// agent restarted and every session it knew is gone.
    pub instance: u64,
}

/// The agent's answer to one [`Request`]. `Err`, `Hello` and
/// `NoCommonVersion` keep their places (new answers go after them).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The call failed with this `CK_RV`.
    Err(u64),
    /// Answer to a `Hello` the agent accepts.
    Hello(HelloReply),
    /// Success with nothing to return.
    Unit,
    /// A new session or object handle.
    Handle(u64),
    /// `C_GenerateKeyPair`'s public and private key handles.
    KeyPair {
        /// Public key handle.
        public: u64,
        /// Private key handle.
        private: u64,
    },
    /// A `CK_ULONG` (object size).
    Ulong(u64),
    /// Output bytes (ciphertext, signature, digest, random, wrapped key).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Object handles found, or slot ids, or mechanism types.
    List(Vec<u64>),
    /// `C_GetSlotInfo`.
    SlotInfo(SlotInfo),
    /// `C_GetTokenInfo`.
    TokenInfo(TokenInfo),
    /// `C_GetMechanismInfo`.
    MechanismInfo(MechanismInfo),
    /// `C_GetSessionInfo`.
    SessionInfo(SessionInfo),
    /// `C_GetAttributeValue`, one result per requested type, in order.
    Attributes(Vec<AttrResult>),
    /// Answer to a `Hello` whose versions the agent does not speak; the
    /// agent closes the connection after it.
    NoCommonVersion(VersionRefusal),
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn each_op_indexes_its_own_slot() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}
