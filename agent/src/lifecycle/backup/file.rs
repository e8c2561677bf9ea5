//! The backup file: what `keyward backup create` writes and `restore` and
//! `verify` read.
//!
//! ```text
//! "KWBACKUP" | format u16 LE (1) | key check [32] | body length u32 LE | body | seal [32]
//! ```
//!
//! The body is postcard: the token, when, by whom, each backed-up key's
//! inventory record with its versions — each version's wrapped secret (AES
//! key wrap with padding under the backup key), the template of the object
//! it unwraps into, the public half's attributes for a key pair, and its
//! certificates on the token — and
//! the keys left out with why. The key check names the backup key (its
//! check value, see `keyward_escrow::key_check`), so a file of another
//! deployment is told apart before anything else. The seal is an
//! HMAC-SHA256 made in the HSM with the backup key's sealing half over
//! everything before it. Parsing is strict: a wrong magic, an unknown
//! format, a short or long file, trailing bytes in the body are refused,
//! each with its own message.

use keyward_inventory::{KeyRecord, KeyVersion};
use keyward_protocol::Attribute;
use serde::{Deserialize, Serialize};

/// The file's first bytes.
pub(crate) const MAGIC: &[u8; 8] = b"KWBACKUP";
/// The format this build writes and reads.
pub(crate) const FORMAT: u16 = 1;
/// The seal's length (HMAC-SHA256).
pub(crate) const SEAL_LEN: usize = 32;
/// Magic, format, key check, body length.
const HEAD_LEN: usize = 8 + 2 + 32 + 4;

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Body {
    /// The virtual token the keys are on.
    pub token: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Who asked for it.
    pub made_by: String,
    /// The keys in it.
    pub keys: Vec<Entry>,
    /// The keys left out: (name, why).
    pub absent: Vec<(String, String)>,
}

/// One key: its record and the versions in the backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub record: KeyRecord,
    pub versions: Vec<VersionEntry>,
}

/// One key version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct VersionEntry {
    pub version: KeyVersion,
    /// The template of the private or secret object (no value).
    pub template: Vec<Attribute>,
    /// The public object's attributes (key pairs).
    pub public: Option<Vec<Attribute>>,
    /// The private or secret key, wrapped by the backup key.
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
    /// The version's certificates on the token (their attributes, value
    /// included).
    pub certificates: Vec<Vec<Attribute>>,
}

/// A backup file split into its parts, the seal not yet checked.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// The backup key's check value.
    pub key_check: [u8; 32],
    /// Everything the seal covers.
    pub sealed: &'a [u8],
    /// The body's bytes.
    pub body: &'a [u8],
    /// The seal.
    pub seal: &'a [u8],
}

/// The file's bytes before the seal.
pub(crate) fn unsealed(key_check: &[u8; 32], body: &Body) -> Result<Vec<u8>, String> {
    let body = postcard::to_stdvec(body).map_err(|e| format!("backup: encoding: {e}"))?;
    let len = u32::try_from(body.len()).map_err(|_| "backup: the body is over 4 GiB".to_owned())?;
    let mut out = Vec::with_capacity(HEAD_LEN + body.len() + SEAL_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(key_check);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits `file` into its parts; refuses anything but a whole file of this
/// format.
pub(crate) fn parse(file: &[u8]) -> Result<Parsed<'_>, String> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err("not a keyward backup file".into());
    }
    if file.len() < HEAD_LEN {
        return Err(format!(
            "the backup file is truncated: {} bytes, its header alone has {HEAD_LEN}",
            file.len()
        ));
    }
    let format = u16::from_le_bytes([file[8], file[9]]);
    if format != FORMAT {
        return Err(format!(
            "backup format {format}: this keyward reads format {FORMAT}"
        ));
    }
    let mut key_check = [0u8; 32];
    key_check.copy_from_slice(&file[10..42]);
    let len = u32::from_le_bytes([file[42], file[43], file[44], file[45]]) as usize;
    let want = HEAD_LEN
        .checked_add(len)
        .and_then(|n| n.checked_add(SEAL_LEN))
        .ok_or_else(|| "the backup file's length field is impossible".to_owned())?;
    if file.len() < want {
        return Err(format!(
            "the backup file is truncated: {} bytes of {want}",
            file.len()
        ));
    }
    if file.len() > want {
        return Err(format!(
            "the backup file has {} bytes after its end",
            file.len() - want
        ));
    }
    let sealed = &file[..HEAD_LEN + len];
    Ok(Parsed {
        key_check,
        sealed,
        body: &file[HEAD_LEN..HEAD_LEN + len],
        seal: &file[HEAD_LEN + len..],
    })
}

/// The body of a file whose seal was checked.
pub(crate) fn body(parsed: &Parsed<'_>) -> Result<Body, String> {
    let (body, rest): (Body, &[u8]) = postcard::take_from_bytes(parsed.body)
        .map_err(|e| format!("the backup file's contents are malformed: {e}"))?;
    if !rest.is_empty() {
        return Err("the backup file's contents are followed by stray bytes".into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Body {
        Body {
            token: "kw".into(),
            created_at: 1_700_000_000,
            made_by: "alice".into(),
            keys: Vec::new(),
            absent: vec![("web".into(), "class tls does not allow backup".into())],
        }
    }

    fn file() -> Vec<u8> {
        let mut f = unsealed(&[7; 32], &sample()).unwrap();
        f.extend_from_slice(&[9; SEAL_LEN]);
        f
    }

    #[test]
    fn a_whole_file_parses_into_its_parts() {
        let f = file();
        let p = parse(&f).unwrap();
        assert_eq!(p.key_check, [7; 32]);
        assert_eq!(p.seal, &[9; SEAL_LEN]);
        assert_eq!(p.sealed.len() + SEAL_LEN, f.len());
        assert_eq!(body(&p).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let f = file();
        for n in 0..f.len() {
            let e = parse(&f[..n]).unwrap_err();
            assert!(
                e.contains("truncated") || e.contains("not a keyward backup"),
                "{n}: {e}"
            );
        }
    }

    #[test]
    fn trailing_bytes_another_format_and_other_files_are_refused() {
        let mut f = file();
        f.push(0);
        assert!(parse(&f).unwrap_err().contains("after its end"));
        let mut f = file();
        f[8] = 2;
        assert!(parse(&f).unwrap_err().contains("backup format 2"));
        assert!(parse(b"-----BEGIN AGE ENCRYPTED FILE-----")
            .unwrap_err()
            .contains("not a keyward backup"));
        let mut f = file();
        f[42..46].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&f).unwrap_err().contains("truncated"));
    }

    #[test]
    fn a_malformed_body_is_refused_with_a_message() {
        let mut f = unsealed(&[7; 32], &sample()).unwrap();
        let n = f.len();
        f[n - 3] = 0xff;
        f[n - 2] = 0xff;
        f.extend_from_slice(&[0; SEAL_LEN]);
        let p = parse(&f).unwrap();
        let e = body(&p).unwrap_err();
        assert!(e.contains("malformed") || e.contains("stray"), "{e}");
    }

    #[test]
    fn the_fuzz_entry_reads_a_file_as_restore_does() {
        let f = file();
        assert_eq!(super::super::decode_backup_file(&f).unwrap(), f);
        let e = super::super::decode_backup_file(&f[..f.len() - 1]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = unsealed(&[7; 32], &sample()).unwrap();
        bad.push(0);
        let len = (bad.len() - HEAD_LEN) as u32;
        bad[42..46].copy_from_slice(&len.to_le_bytes());
        bad.extend_from_slice(&[0; SEAL_LEN]);
        let e = super::super::decode_backup_file(&bad).unwrap_err();
        assert!(e.contains("stray"), "{e}");
    }
}
