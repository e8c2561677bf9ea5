//! The export file of `keyward key export`: a magic string, a format
//! version (`u16`, big-endian), then one postcard-encoded [`Sealed`]: the
//! [`Body`] (as bytes) and its seal, an AES-CMAC over the magic, the
//! version and the body made inside the HSM with the transport key. The
//! transport key travels in the body, wrapped for the recipient
//! (RSA-OAEP), so the seal can be checked only by the recipient's HSM,
//! and only after it unwrapped the transport key. Parsing is strict:
//! another magic, an unknown version, a truncated file and trailing bytes
//! are refused, each with its own message.

use keyward_policy::{Algorithm, KeyState, Purpose};
use serde::{Deserialize, Serialize};

/// The first bytes of every export file.
pub(crate) const MAGIC: &[u8] = b"keyward key export\n";

/// The format version this build writes and reads.
pub(crate) const VERSION: u16 = 1;

/// The largest export file read (a key, its record, two wrapped keys).
pub(crate) const MAX_FILE: usize = 1 << 20;

/// The exported key version's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) class: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) purpose: Purpose,
    pub(crate) version: u32,
    pub(crate) backend_id: Vec<u8>,
    /// DER `SubjectPublicKeyInfo` of a key pair; `None` for a secret key.
    pub(crate) public_key: Option<Vec<u8>>,
    pub(crate) created_at: i64,
    pub(crate) activated_at: Option<i64>,
    pub(crate) state: KeyState,
    pub(crate) version_state: KeyState,
}

/// Where the file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Source {
    pub(crate) token: String,
    pub(crate) host: String,
    pub(crate) request_id: String,
    pub(crate) requester: String,
    pub(crate) approvers: Vec<String>,
    pub(crate) exported_at: i64,
}

/// What the seal covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Body {
    pub(crate) record: Record,
    pub(crate) source: Source,
    /// SHA-256 of the recipient's DER `SubjectPublicKeyInfo`.
    pub(crate) recipient_sha256: Vec<u8>,
    /// The hash of RSA-OAEP (and of its MGF1): `CKM_SHA256`, or
    /// `CKM_SHA_1` where the exporting HSM has no other (SoftHSM2 2.6).
    pub(crate) oaep_hash: u64,
    /// The transport key (AES-256), RSA-OAEP wrapped for the recipient.
    pub(crate) wrapped_transport: Vec<u8>,
    /// The key (secret key, or private key as PKCS#8), AES key wrap with
    /// padding (RFC 5649) under the transport key.
    pub(crate) wrapped_key: Vec<u8>,
}

/// The body's bytes and their seal.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    body: Vec<u8>,
    seal: Vec<u8>,
}

/// A parsed file: the body, and the bytes its seal is over.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) body: Body,
    pub(crate) sealed_bytes: Vec<u8>,
    pub(crate) seal: Vec<u8>,
}

/// The bytes the seal covers: magic, version, body.
pub(crate) fn sealed_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body's bytes (the seal is made over [`sealed_bytes`] of them).
pub(crate) fn body_bytes(body: &Body) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(body).map_err(|e| format!("export file: {e}"))
}

/// The whole file.
pub(crate) fn write(body: Vec<u8>, seal: Vec<u8>) -> Result<Vec<u8>, String> {
    let sealed =
        postcard::to_stdvec(&Sealed { body, seal }).map_err(|e| format!("export file: {e}"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// One postcard value taking all of `bytes`.
fn exactly<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!(
            "not a valid export file: {} trailing bytes after the {what}",
            rest.len()
        )),
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            Err(format!("not a valid export file: the {what} is truncated"))
        }
        Err(e) => Err(format!(
            "not a valid export file: the {what} is malformed ({e})"
        )),
    }
}

/// Reads a file (its seal is checked later, in the HSM).
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    if bytes.len() > MAX_FILE {
        return Err(format!(
            "not a valid export file: {} bytes, more than the {MAX_FILE} an export file may have",
            bytes.len()
        ));
    }
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err(
            "not a keyward export file (its first bytes are not \"keyward key export\")".to_owned(),
        );
    };
    let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
        return Err("not a valid export file: it ends before its format version".to_owned());
    };
    let version = u16::from_be_bytes([hi, lo]);
    if version != VERSION {
        return Err(format!(
            "export file format version {version} is not one this agent reads (it reads {VERSION})"
        ));
    }
    let sealed: Sealed = exactly(&rest[2..], "file")?;
    let body: Body = exactly(&sealed.body, "body")?;
    Ok(Parsed {
        body,
        sealed_bytes: sealed_bytes(&sealed.body),
        seal: sealed.seal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        Body {
            record: Record {
                name: "web".into(),
                class: "tls".into(),
                algorithm: "ec:p256".parse().unwrap(),
                purpose: Purpose::Signing,
                version: 2,
                backend_id: vec![1, 2],
                public_key: Some(vec![3; 91]),
                created_at: 1,
                activated_at: Some(2),
                state: KeyState::Active,
                version_state: KeyState::Active,
            },
            source: Source {
                token: "a".into(),
                host: "h".into(),
                request_id: "00ff".into(),
                requester: "alice".into(),
                approvers: vec!["bob".into(), "carol".into()],
                exported_at: 3,
            },
            recipient_sha256: vec![9; 32],
            oaep_hash: 0x250,
            wrapped_transport: vec![4; 256],
            wrapped_key: vec![5; 150],
        }
    }

    fn file() -> Vec<u8> {
        write(body_bytes(&body()).unwrap(), vec![6; 16]).unwrap()
    }

    #[test]
    fn a_file_reads_back_with_the_bytes_its_seal_covers() {
        let p = parse(&file()).unwrap();
        assert_eq!(p.body, body());
        assert_eq!(p.seal, vec![6; 16]);
        assert_eq!(p.sealed_bytes, sealed_bytes(&body_bytes(&body()).unwrap()));
        assert!(p.sealed_bytes.starts_with(MAGIC));
    }

    #[test]
    fn every_truncation_trailing_bytes_another_magic_or_version_is_refused() {
        let f = file();
        for n in 0..f.len() {
            let e = parse(&f[..n]).unwrap_err();
            assert!(e.contains("export file"), "{n}: {e}");
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(parse(&longer).unwrap_err().contains("trailing bytes"));
        let mut other = f.clone();
        other[0] ^= 0x20;
        assert!(parse(&other)
            .unwrap_err()
            .contains("not a keyward export file"));
        let mut newer = f.clone();
        newer[MAGIC.len() + 1] = 2;
        assert!(parse(&newer).unwrap_err().contains("version 2"));
    }
}
