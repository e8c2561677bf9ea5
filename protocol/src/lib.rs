//! keyward's wire protocol, shared by the module (client side) and the agent
//! (server side). No I/O policy lives here: only types, their encoding and
//! the framing that carries them.
//!
//! Layout:
//! - [`frame`]: the 8-byte header (magic, version, length), the hard size
//!   limit, and reading / writing one message over any `Read` / `Write`.
//! - [`attr`]: typed attribute values and the table that says which
//!   `CKA_*` holds a bool, a `CK_ULONG`, bytes, a mechanism list or a template.
//! - [`types`]: mechanisms with typed parameters, slot / token / session info.
//! - [`calls`]: the call table, written once: [`Request`], the fieldless
//!   [`Call`] (the stable `C_*` names of logs, metrics and the trail, and
//!   each call's [`Chapter`]), the [`Handler`] trait and [`dispatch`].
//! - [`message`]: the answers ([`Response`]), what requests carry, and the
//!   handle types ([`SlotId`], [`SessionHandle`], [`ObjectHandle`]).
//! - [`admin`]: the administrator API spoken on the agent's admin socket.
//! - [`version`]: the application- and admin-protocol versions, and how a
//!   connection's hello agrees on one (or says which side to upgrade).
//! - [`names`]: each admin request's stable name and what it does in words.
//!
//! Every `CK_ULONG` travels as `u64`; output buffers never travel (the agent
//! returns the whole result and the module applies the caller's buffer-size
//! convention); template nesting is limited to one level by the types
//! themselves, so a decoder cannot be driven into deep recursion.
#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
#[cfg(test)]
mod approval_props;
pub mod attr;
pub mod calls;
pub mod certificate;
pub mod distribution;
pub mod frame;
pub mod message;
pub mod names;
pub mod plan;
pub mod types;
pub mod version;

pub use attr::{AttrKind, AttrResult, AttrValue, Attribute, ShapeError, Value};
pub use calls::{dispatch, Call, Chapter, Handler};
pub use frame::{FrameError, HEADER_LEN, MAX_FRAME_LEN};
pub use message::{HelloReply, ObjectHandle, Op, Request, Response, SessionHandle, SlotId};
pub use types::{MechParam, Mechanism, MechanismInfo, SessionInfo, SlotInfo, TokenInfo, Version};
pub use version::{
    Mismatch, VersionRange, VersionRefusal, ADMIN_VERSIONS, APP_VERSIONS, FRAME_VERSION,
};

/// Where the module looks for the agent when `KEYWARD_SOCKET` is not set.
pub const DEFAULT_SOCKET: &str = "/run/keyward/keyward.sock";

/// A PIN or other secret on the wire; zeroised when dropped.
pub type Secret = zeroize::Zeroizing<Vec<u8>>;
