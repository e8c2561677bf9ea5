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

/// Declares a handle newtype: a `u64` on the wire (serde-transparent, so
/// postcard writes exactly the inner varint), its own type everywhere else.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

handle! {
    /// A virtual slot id as the agent numbers them (the application's
    /// `CK_SLOT_ID`).
    SlotId
}

handle! {
    /// A session handle as the agent numbers them, valid only for the
    /// client process that opened it. The module keeps its own
    /// `CK_SESSION_HANDLE` for the application and sends this one.
    ///
    /// A handle of one kind cannot stand for another: where a request
    /// wants an [`ObjectHandle`], a `SessionHandle` is a type error, and a
    /// bare `u64` must be wrapped on purpose.
    ///
    /// ```ignore
    /// use keyward_protocol::{ObjectHandle, Request, SessionHandle};
    /// let session = SessionHandle(1);
    /// // error[E0308]: expected `ObjectHandle`, found `SessionHandle`
    /// let r = Request::DestroyObject { session, object: session };
    /// ```
    SessionHandle
}

handle! {
    /// An object handle as the agent numbers them (the application's
    /// `CK_OBJECT_HANDLE`), valid only for the client process that
    /// obtained it, and only on its slot.
    ObjectHandle
}

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
    /// A new session handle (`C_OpenSession`: a [`SessionHandle`]) or
    /// object handle (an [`ObjectHandle`]); the request it answers says
    /// which. Built with [`Response::session`] and [`Response::object`].
    Handle(u64),
    /// `C_GenerateKeyPair`'s public and private key handles.
    KeyPair {
        /// Public key handle.
        public: ObjectHandle,
        /// Private key handle.
        private: ObjectHandle,
    },
    /// A `CK_ULONG` (object size).
    Ulong(u64),
    /// Output bytes (ciphertext, signature, digest, random, wrapped key).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Object handles found ([`Response::objects`]), or slot ids
    /// ([`Response::slots`]), or mechanism types.
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

impl Response {
    /// The answer to `C_OpenSession`: the new session's handle.
    pub fn session(h: SessionHandle) -> Response {
        Response::Handle(h.0)
    }

    /// The answer to a call that makes an object: its handle.
    pub fn object(h: ObjectHandle) -> Response {
        Response::Handle(h.0)
    }

    /// The answer to `C_FindObjectsInit`: the handles found.
    pub fn objects(handles: Vec<ObjectHandle>) -> Response {
        // Same size and alignment: the vector's buffer is reused.
        Response::List(handles.into_iter().map(|h| h.0).collect())
    }

    /// The answer to `C_GetSlotList`: the slot ids.
    pub fn slots(slots: impl IntoIterator<Item = SlotId>) -> Response {
        Response::List(slots.into_iter().map(|s| s.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values on both sides of postcard's varint byte boundaries.
    const VALUES: [u64; 7] = [0, 1, 127, 128, 16_384, u32::MAX as u64 + 1, u64::MAX];

    #[test]
    fn handles_travel_as_their_u64() {
        for v in VALUES {
            let plain = postcard::to_allocvec(&v).unwrap();
            assert_eq!(postcard::to_allocvec(&SlotId(v)).unwrap(), plain);
            assert_eq!(postcard::to_allocvec(&SessionHandle(v)).unwrap(), plain);
            assert_eq!(postcard::to_allocvec(&ObjectHandle(v)).unwrap(), plain);
            let back: ObjectHandle = postcard::from_bytes(&plain).unwrap();
            assert_eq!(back, ObjectHandle(v));
            assert_eq!(SessionHandle(v).to_string(), v.to_string());
        }
    }

    /// The answers that carry handles, as they were written before handles
    /// had their own types (the variants before `List` keep their places).
    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
    #[allow(dead_code)] // built by decoding only
    enum OldResponse {
        Err(u64),
        Hello(HelloReply),
        Unit,
        Handle(u64),
        KeyPair { public: u64, private: u64 },
        Ulong(u64),
        Data(#[serde(with = "serde_bytes")] Vec<u8>),
        List(Vec<u64>),
    }

    #[test]
    fn answers_with_handles_keep_their_wire_encoding() {
        for v in VALUES {
            let w = v.wrapping_add(1);
            let cases = [
                (Response::session(SessionHandle(v)), OldResponse::Handle(v)),
                (Response::object(ObjectHandle(v)), OldResponse::Handle(v)),
                (
                    Response::KeyPair {
                        public: ObjectHandle(v),
                        private: ObjectHandle(w),
                    },
                    OldResponse::KeyPair {
                        public: v,
                        private: w,
                    },
                ),
                (
                    Response::objects(vec![ObjectHandle(v), ObjectHandle(w)]),
                    OldResponse::List(vec![v, w]),
                ),
                (
                    Response::slots([SlotId(w), SlotId(v)]),
                    OldResponse::List(vec![w, v]),
                ),
            ];
            for (new, old) in cases {
                let bytes = postcard::to_allocvec(&new).unwrap();
                assert_eq!(bytes, postcard::to_allocvec(&old).unwrap(), "{new:?}");
                let back: Response = crate::frame::decode(&bytes).unwrap();
                assert_eq!(back, new);
            }
        }
    }

    #[test]
    fn each_op_indexes_its_own_slot() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}
