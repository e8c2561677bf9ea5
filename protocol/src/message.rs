//! The application-facing calls. One [`Request`] per PKCS#11 call that must
//! reach the agent, answered by exactly one [`Response`].
//!
//! Calls the module answers alone (`C_GetInfo`, `C_GetFunctionList`, the
//! find-iteration after `C_FindObjectsInit`, the length-query half of the
//! two-call convention) have no message.

use serde::{Deserialize, Serialize};

use crate::attr::{AttrResult, Attribute};
use crate::types::{Mechanism, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use crate::Secret;

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

/// A call from the module to the agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    /// First message on every connection.
    Hello {
        version: u16,
    },
    GetSlotList {
        token_present: bool,
    },
    GetSlotInfo {
        slot: SlotId,
    },
    GetTokenInfo {
        slot: SlotId,
    },
    GetMechanismList {
        slot: SlotId,
    },
    GetMechanismInfo {
        slot: SlotId,
        mechanism: u64,
    },
    /// `label` is the 32-byte blank-padded label as given.
    InitToken {
        slot: SlotId,
        so_pin: Secret,
        #[serde(with = "serde_bytes")]
        label: Vec<u8>,
    },
    InitPin {
        session: SessionHandle,
        pin: Secret,
    },
    SetPin {
        session: SessionHandle,
        old_pin: Secret,
        new_pin: Secret,
    },
    OpenSession {
        slot: SlotId,
        flags: u64,
    },
    CloseSession {
        session: SessionHandle,
    },
    CloseAllSessions {
        slot: SlotId,
    },
    GetSessionInfo {
        session: SessionHandle,
    },
    /// `pin` is `None` when the application passed a NULL PIN.
    Login {
        session: SessionHandle,
        user_type: u64,
        pin: Option<Secret>,
    },
    Logout {
        session: SessionHandle,
    },
    CreateObject {
        session: SessionHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    CopyObject {
        session: SessionHandle,
        object: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    DestroyObject {
        session: SessionHandle,
        object: ObjectHandle,
    },
    GetObjectSize {
        session: SessionHandle,
        object: ObjectHandle,
    },
    GetAttributeValue {
        session: SessionHandle,
        object: ObjectHandle,
        types: Vec<u64>,
    },
    SetAttributeValue {
        session: SessionHandle,
        object: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    /// `C_FindObjectsInit`: the agent runs the whole search and answers
    /// every match at once; the module iterates locally.
    FindObjects {
        session: SessionHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    /// `C_EncryptInit`, `C_SignInit`, ... (`key` is `None` for digests).
    OperationInit {
        session: SessionHandle,
        op: Op,
        init: OpInit,
    },
    /// Single-part `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`,
    /// `C_SignRecover`, `C_VerifyRecover`: answered with the whole output.
    Single {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `C_Verify`.
    Verify {
        session: SessionHandle,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// `C_*Update`: answered with the output (empty for sign, verify, digest).
    Update {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `C_DigestKey`.
    DigestKey {
        session: SessionHandle,
        key: ObjectHandle,
    },
    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`, `C_SignFinal`.
    /// `data` is update input the module held back (digest, sign): the
    /// agent feeds it to one `C_*Update` before the final call.
    Final {
        session: SessionHandle,
        op: Op,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `C_VerifyFinal`, with held-back update input as in `Final`.
    VerifyFinal {
        session: SessionHandle,
        init: Option<OpInit>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    GenerateKey {
        session: SessionHandle,
        mechanism: Mechanism,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    GenerateKeyPair {
        session: SessionHandle,
        mechanism: Mechanism,
        #[serde(deserialize_with = "crate::attr::template")]
        public_template: Vec<Attribute>,
        #[serde(deserialize_with = "crate::attr::template")]
        private_template: Vec<Attribute>,
    },
    WrapKey {
        session: SessionHandle,
        mechanism: Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
    },
    UnwrapKey {
        session: SessionHandle,
        mechanism: Mechanism,
        unwrapping_key: ObjectHandle,
        #[serde(with = "serde_bytes")]
        wrapped_key: Vec<u8>,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    DeriveKey {
        session: SessionHandle,
        mechanism: Mechanism,
        base_key: ObjectHandle,
        #[serde(deserialize_with = "crate::attr::template")]
        template: Vec<Attribute>,
    },
    SeedRandom {
        session: SessionHandle,
        #[serde(with = "serde_bytes")]
        seed: Vec<u8>,
    },
    GenerateRandom {
        session: SessionHandle,
        len: u64,
    },
}

impl Request {
    /// The mechanism type the call uses, if it carries one (a `C_*Init`,
    /// deferred or not, a key generation, wrap, unwrap or derive).
    pub fn mechanism(&self) -> Option<u64> {
        let init = match self {
            Request::OperationInit { init, .. } => Some(init),
            Request::Single { init, .. }
            | Request::Verify { init, .. }
            | Request::Update { init, .. }
            | Request::Final { init, .. }
            | Request::VerifyFinal { init, .. } => init.as_ref(),
            Request::GenerateKey { mechanism, .. }
            | Request::GenerateKeyPair { mechanism, .. }
            | Request::WrapKey { mechanism, .. }
            | Request::UnwrapKey { mechanism, .. }
            | Request::DeriveKey { mechanism, .. } => return Some(mechanism.mechanism),
            _ => None,
        };
        init.map(|i| i.mechanism.mechanism)
    }
}

/// The agent's answer to `Hello`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// The protocol version the agent speaks.
    pub version: u16,
    /// The agent's package version.
    pub agent_version: String,
    /// Random per agent start: a changed value tells the module that the
    /// agent restarted and every session it knew is gone.
    pub instance: u64,
}

/// The agent's answer to one [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The call failed with this `CK_RV`.
    Err(u64),
    /// Answer to `Hello`.
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
