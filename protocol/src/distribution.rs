//! Key distribution on the admin socket: a key version's public key
//! (`key.pubkey`), its export under wrap for a recipient's RSA public key
//! (`key.export`, an approval request; `key.collect` fetches the file once
//! it is carried out), and the import of such a file (`key.import`).
//!
//! Keys travel only wrapped: no request or answer here carries key
//! material in the clear. An export file holds the key wrapped under a
//! one-off transport key, itself wrapped for the recipient.

use serde::{Deserialize, Serialize};

/// A distribution request ([`crate::admin::KeyRequest::Distribution`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DistRequest {
    /// A key version's public key, as a DER `SubjectPublicKeyInfo`.
    PublicKey {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// The version; `None`: the one that protects now.
        version: Option<u32>,
    },
    /// Ask for a key version wrapped for `recipient` (always an approval
    /// request, action `key-export`, quorum `backup-export`).
    Export {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// The version; `None`: the one that protects now.
        version: Option<u32>,
        /// The recipient's RSA public key (2048 bits or more), a DER
        /// `SubjectPublicKeyInfo`.
        recipient: Vec<u8>,
        /// Why (kept with the request).
        reason: String,
    },
    /// The export file of carried-out `key-export` request `id`.
    Collect {
        /// The request's id.
        id: String,
    },
    /// Unwrap an export file into the HSM as a new managed key of `class`.
    Import {
        /// The export file's bytes.
        file: Vec<u8>,
        /// Key class it joins.
        class: String,
        /// Name to give it; `None`: the name it had.
        name: Option<String>,
        /// Virtual token label.
        token: Option<String>,
        /// Why (recorded with its provenance).
        reason: String,
    },
}

/// What a distribution request answers (besides a key, a pending request).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DistResponse {
    /// Answer to [`DistRequest::PublicKey`].
    PublicKey {
        /// Key name.
        key: String,
        /// The version shown.
        version: u32,
        /// DER `SubjectPublicKeyInfo`.
        spki: Vec<u8>,
    },
    /// Answer to [`DistRequest::Collect`].
    ExportFile {
        /// The request's id.
        id: String,
        /// The export file.
        file: Vec<u8>,
    },
}

impl DistRequest {
    /// The request's stable name (see [`crate::names`]).
    pub fn name(&self) -> &'static str {
        match self {
            DistRequest::PublicKey { .. } => "key.pubkey",
            DistRequest::Export { .. } => "key.export",
            DistRequest::Collect { .. } => "key.collect",
            DistRequest::Import { .. } => "key.import",
        }
    }

    /// The token and key it names, for the trail.
    pub fn target(&self) -> (Option<String>, Option<String>) {
        match self {
            DistRequest::PublicKey { name, token, .. }
            | DistRequest::Export { name, token, .. } => (token.clone(), Some(name.clone())),
            DistRequest::Collect { .. } => (None, None),
            DistRequest::Import { name, token, .. } => (token.clone(), name.clone()),
        }
    }
}

/// SHA-256 of `bytes`, in hex (recipients and files are named by it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
