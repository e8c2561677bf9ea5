//! The crate's one error enum.
//!
//! No variant names the storage engine's types, so that another engine can
//! implement [`crate::Inventory`] with the same errors. The conversion from
//! SQLite's errors is the SQLite store's (`sqlite/mod.rs`).

use std::path::PathBuf;

/// What the inventory's calls return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an inventory call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key name on its token, or a backend `CKA_ID` on its token, is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// The key, version or grant named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The stored state is not the one the caller expected (someone else
    /// changed it first), or a rotation raced another.
    #[error("conflict on {what}: expected {expected}, found {found}")]
    Conflict {
        what: String,
        expected: String,
        found: String,
    },
    /// An argument the store refuses (empty name, no operations, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The file's schema is newer than this build: refused, never downgraded.
    #[error(
        "inventory store {path}: schema version {found} is newer than this build knows ({known}); \
         use a newer keyward"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    /// The file is not a keyward inventory, or is damaged.
    #[error("inventory store {path} is not a usable inventory: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The file could not be created, opened or set up.
    #[error("inventory store {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    /// A stored value does not decode (a row written by something else).
    #[error("inventory data invalid: {0}")]
    Data(String),
    /// The store cannot be reached (a shared store's server is down or
    /// the network failed); the next call tries again.
    #[error("the shared inventory store cannot be reached: {0}")]
    Unavailable(String),
    /// The storage engine failed.
    #[error("inventory storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Data(e.to_string())
    }
}

/// `e` and its sources, joined with ": ".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
