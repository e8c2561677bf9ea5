//! keyward-domain: the vocabulary of keyward's key lifecycle, shared by the
//! policy (`keyward-policy`, which re-exports it), the inventory
//! (`keyward-inventory`) and the admin protocol (`keyward-protocol`).
//!
//! Every type has one text form, used in the policy file, the inventory
//! store, the CLI (text and `--json`) and messages: [`KeyState`]
//! (`pre-activation`, `active`, ...), [`Purpose`] (`signing`, ...),
//! [`Operation`] (`sign`, ...), [`Algorithm`] (`rsa:3072`, `ec:p256`, ...)
//! with its [`Curve`] (`p256`, ...), [`ApprovalStatus`] (`pending`,
//! ...), [`Decision`] (`approve`, `deny`) and [`ReasonCode`] (RFC 5280's
//! `keyCompromise`, ...). Each has `as_str` (or `Display`) and [`FromStr`](std::str::FromStr);
//! an unknown name is a [`ParseError`] that says what was expected. Serde
//! writes the same text in human-readable formats (JSON); the compact
//! formats (postcard) carry the variant.
//!
//! No I/O, no state, no dependency but serde.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod algorithm;
mod approval;
mod error;
mod key_name;
mod names;
mod purpose;
mod reason;
mod state;

pub use algorithm::{Algorithm, Curve, ALGORITHM_FORMS};
pub use approval::{ApprovalStatus, Decision};
pub use error::ParseError;
pub use key_name::{check_key_name, KEY_NAME_MAX};
pub use purpose::{Operation, Purpose};
pub use reason::ReasonCode;
pub use state::KeyState;

#[cfg(test)]
mod tests;
