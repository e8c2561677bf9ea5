//! [`ShareRecord`]: what a sealed share holds once opened, and its
//! canonical encoding (`KWESCROW` | version `u16` LE | postcard body, no
//! trailing bytes), whose SHA-256 is the share's digest.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::EscrowError;

/// The first bytes of every encoded share record.
pub const RECORD_MAGIC: &[u8; 8] = b"KWESCROW";

/// The encoding's version: the only one written and read.
pub const RECORD_VERSION: u16 = 1;

/// The longest secret split (bytes). The backup key's secret is 64.
pub const MAX_SECRET: usize = 1024;

/// The longest deployment or custodian name (bytes).
pub const MAX_NAME: usize = 128;

/// The domain of [`key_check`]: the check value of a backup key is never
/// the hash of anything else keyward hashes.
const KEY_CHECK_DOMAIN: &[u8] = b"keyward backup key check v1\0";

/// The check value of a backup key's secret: SHA-256 over a fixed domain
/// string and the secret. It names the backup key (in the ceremony's
/// record, in every share) and tells a rebuilt secret from a wrong one; it
/// reveals nothing of the secret.
pub fn key_check(secret: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(KEY_CHECK_DOMAIN);
    hash.update(secret);
    hash.finalize().into()
}

/// A check value's short form in messages and listings: its first 8 bytes
/// in hex.
pub fn short_check(check: &[u8; 32]) -> String {
    hex::encode(&check[..8])
}

/// One custodian's share, opened: which ceremony it belongs to (the
/// deployment and the backup key's check value), whose it is, the
/// threshold, and the share value itself. The value is wiped when the
/// record is dropped and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ShareRecord {
    pub(crate) version: u16,
    pub(crate) deployment: String,
    pub(crate) key_check: [u8; 32],
    pub(crate) custodian: String,
    pub(crate) threshold: u8,
    pub(crate) count: u8,
    pub(crate) index: u8,
    pub(crate) share: Zeroizing<Vec<u8>>,
}

/// The record's body as postcard writes and reads it (version 1).
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    deployment: &'a str,
    key_check: [u8; 32],
    custodian: &'a str,
    threshold: u8,
    count: u8,
    index: u8,
    #[serde(with = "serde_bytes_borrowed")]
    share: &'a [u8],
}

/// A borrowed byte string as postcard's bytes (length, then the bytes):
/// read without copying, so the share value is copied once, into memory
/// that is wiped.
mod serde_bytes_borrowed {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        <&'de [u8] as serde::Deserialize<'de>>::deserialize(d)
    }
}

impl ShareRecord {
    /// A record, checked like a decoded one.
    pub(crate) fn new(
        deployment: &str,
        key_check: [u8; 32],
        custodian: &str,
        threshold: u8,
        count: u8,
        index: u8,
        share: Zeroizing<Vec<u8>>,
    ) -> Result<ShareRecord, EscrowError> {
        let record = ShareRecord {
            version: RECORD_VERSION,
            deployment: deployment.to_owned(),
            key_check,
            custodian: custodian.to_owned(),
            threshold,
            count,
            index,
            share,
        };
        record.check()?;
        Ok(record)
    }

    /// The canonical encoding: `KWESCROW`, the version (`u16` LE), the
    /// postcard body. The buffer is wiped when dropped.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let body = Body {
            deployment: &self.deployment,
            key_check: self.key_check,
            custodian: &self.custodian,
            threshold: self.threshold,
            count: self.count,
            index: self.index,
            share: &self.share,
        };
        // Room for everything up front: the buffer never grows, so no copy
        // of the share value is left behind in freed memory. Each length
        // prefix is a varint of at most 10 bytes.
        let room = RECORD_MAGIC.len()
            + 2
            + 3 * 10
            + self.deployment.len()
            + 32
            + self.custodian.len()
            + 3
            + self.share.len();
        let mut out = Zeroizing::new(vec![0u8; room]);
        out[..RECORD_MAGIC.len()].copy_from_slice(RECORD_MAGIC);
        out[RECORD_MAGIC.len()..RECORD_MAGIC.len() + 2]
            .copy_from_slice(&self.version.to_le_bytes());
        let header = RECORD_MAGIC.len() + 2;
        let written = postcard::to_slice(&body, &mut out[header..])
            .map(|b| b.len())
            // The room counted above always suffices; an empty encoding
            // would never decode.
            .unwrap_or(0);
        out.truncate(header + written);
        out
    }

    /// Reads an encoded record: magic, version, body, nothing after it,
    /// and every field within its bounds.
    pub fn decode(bytes: &[u8]) -> Result<ShareRecord, EscrowError> {
        let rest = bytes
            .strip_prefix(RECORD_MAGIC.as_slice())
            .ok_or_else(|| EscrowError::Format("it does not start with KWESCROW".to_owned()))?;
        let (version, body) = match rest {
            [a, b, body @ ..] => (u16::from_le_bytes([*a, *b]), body),
            _ => return Err(EscrowError::Format("it ends before its version".to_owned())),
        };
        if version != RECORD_VERSION {
            return Err(EscrowError::Version {
                found: version,
                supported: RECORD_VERSION,
            });
        }
        let (body, trailing): (Body<'_>, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| EscrowError::Format(format!("its body does not decode ({e})")))?;
        if !trailing.is_empty() {
            return Err(EscrowError::Format(format!(
                "{} bytes follow its body",
                trailing.len()
            )));
        }
        let record = ShareRecord {
            version,
            deployment: body.deployment.to_owned(),
            key_check: body.key_check,
            custodian: body.custodian.to_owned(),
            threshold: body.threshold,
            count: body.count,
            index: body.index,
            share: Zeroizing::new(body.share.to_vec()),
        };
        record.check()?;
        Ok(record)
    }

    /// Every field within its bounds.
    fn check(&self) -> Result<(), EscrowError> {
        check_name(&self.deployment).map_err(EscrowError::Deployment)?;
        check_name(&self.custodian).map_err(EscrowError::CustodianName)?;
        if self.threshold < 2 {
            return Err(EscrowError::Format(format!(
                "threshold {} (at least 2)",
                self.threshold
            )));
        }
        if self.count < self.threshold {
            return Err(EscrowError::Format(format!(
                "{} shares with a threshold of {}",
                self.count, self.threshold
            )));
        }
        if self.index == 0 || self.index > self.count {
            return Err(EscrowError::Format(format!(
                "index {} of {} shares (1 to {})",
                self.index, self.count, self.count
            )));
        }
        if self.share.is_empty() || self.share.len() > MAX_SECRET {
            return Err(EscrowError::Format(format!(
                "a share value of {} bytes (1 to {MAX_SECRET})",
                self.share.len()
            )));
        }
        Ok(())
    }

    /// SHA-256 of the canonical encoding: matches a share to the
    /// ceremony's record without opening it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode().as_slice()).into()
    }

    /// The encoding's version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The deployment the backup key belongs to.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The backup key's check value ([`key_check`] of its secret).
    pub fn key_check(&self) -> &[u8; 32] {
        &self.key_check
    }

    /// The custodian the share was sealed to.
    pub fn custodian(&self) -> &str {
        &self.custodian
    }

    /// How many shares rebuild the secret.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// How many shares were made.
    pub fn count(&self) -> u8 {
        self.count
    }

    /// The share's index, 1 to `count`.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The share value (one byte per byte of the secret).
    pub fn share(&self) -> &[u8] {
        &self.share
    }
}

impl fmt::Debug for ShareRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareRecord")
            .field("version", &self.version)
            .field("deployment", &self.deployment)
            .field("key_check", &short_check(&self.key_check))
            .field("custodian", &self.custodian)
            .field("threshold", &self.threshold)
            .field("count", &self.count)
            .field("index", &self.index)
            .field("share", &format_args!("<{} bytes>", self.share.len()))
            .finish()
    }
}

/// A deployment's or custodian's name: 1 to [`MAX_NAME`] bytes, no control
/// characters (names are printed in messages and listings).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "it is {} bytes long (at most {MAX_NAME})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("it holds a control character".to_owned());
    }
    Ok(())
}
