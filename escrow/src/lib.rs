//! keyward-escrow: split knowledge of the backup key. The agent splits the
//! backup key's secret, at `keyward backup init`, into one share per
//! custodian with an M-of-N threshold, each sealed to the custodian's age
//! X25519 recipient (the roster's `share_recipient`); for a restore onto a
//! new HSM, M custodians open their shares with their own identity files
//! and the agent rebuilds the secret. Pure: no I/O, no state; the secret
//! and share values live in memory that is wiped ([`Zeroizing`]), and no
//! `Debug` output or error shows them.
//!
//! Layout:
//! - `shares.rs`: [`split`] (Shamir over GF(256) by blahaj, M-of-N, M at
//!   least 2) into [`SealedShare`]s for [`Custodian`]s, and [`combine`],
//!   which refuses too few shares, duplicates, shares of another
//!   deployment or backup key, and a rebuilt secret whose [`key_check`]
//!   differs (a wrong share).
//! - `record.rs`: [`ShareRecord`], what a share holds (deployment, the
//!   backup key's check value, custodian, threshold, count, index, value),
//!   its canonical encoding (`KWESCROW` | version `u16` LE | postcard body)
//!   and digest; [`key_check`] and [`short_check`].
//! - `seal.rs`: age: [`open`] a sealed share with an identity file's text,
//!   [`new_identity`], [`parse_recipient`].
//! - `error.rs`: [`EscrowError`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod record;
mod seal;
mod shares;

pub use error::EscrowError;
pub use record::{
    key_check, short_check, ShareRecord, MAX_NAME, MAX_SECRET, RECORD_MAGIC, RECORD_VERSION,
};
pub use seal::{new_identity, open, parse_recipient, MAX_SHARE_FILE};
pub use shares::{combine, split, Custodian, SealedShare};
pub use zeroize::Zeroizing;

#[cfg(test)]
mod tests;
