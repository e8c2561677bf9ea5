//! Sealing shares to custodians with age (X25519 recipients `age1...`,
//! armored files) and opening them with a custodian's identity file; new
//! custodian identities.

use std::io::Read;
use std::iter;
use std::str::FromStr;

use age::armor::ArmoredReader;
use age::secrecy::ExposeSecret;
use age::x25519;
use zeroize::Zeroizing;

use crate::error::EscrowError;
use crate::record::ShareRecord;

/// The largest share file read (armored), bytes: a share record is a few
/// hundred bytes; anything much larger is not a share file.
pub const MAX_SHARE_FILE: usize = 64 * 1024;

/// The largest opened record read, bytes.
const MAX_PLAINTEXT: usize = 4096;

/// Checks that `text` is an age X25519 recipient (`age1...`) and returns
/// its canonical form (lower case), which compares equal for the same key.
/// The error says what is wrong; a recipient is public, yet only its start
/// is repeated.
pub fn parse_recipient(text: &str) -> Result<String, EscrowError> {
    recipient(text).map(|r| r.to_string())
}

pub(crate) fn recipient(text: &str) -> Result<x25519::Recipient, EscrowError> {
    let text = text.trim();
    if text.starts_with("AGE-SECRET-KEY-") {
        return Err(EscrowError::Recipient(
            "this is an age identity (a secret key), not a recipient: give the `age1...` line \
             `keyward backup custodian-key new` printed, and keep the identity secret"
                .to_owned(),
        ));
    }
    if !text.to_ascii_lowercase().starts_with("age1") {
        return Err(EscrowError::Recipient(
            "a share recipient is an age X25519 recipient starting with \"age1\"".to_owned(),
        ));
    }
    x25519::Recipient::from_str(text).map_err(|e| {
        EscrowError::Recipient(format!(
            "\"{}...\" is not a valid age X25519 recipient ({e})",
            text.chars().take(12).collect::<String>()
        ))
    })
}

/// A new custodian identity: the identity file's text (secret: to be
/// written to a file only its custodian can read) and its recipient
/// (`age1...`, public: the roster's `share_recipient`).
pub fn new_identity() -> (Zeroizing<String>, String) {
    let identity = x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = identity.to_string();
    let mut text = Zeroizing::new(String::with_capacity(200));
    text.push_str("# keyward backup custodian identity (age X25519): keep it secret\n");
    text.push_str("# public key: ");
    text.push_str(&recipient);
    text.push('\n');
    text.push_str(secret.expose_secret());
    text.push('\n');
    (text, recipient)
}

/// Reads an identity file's text: comment lines (`#`) and blank lines, and
/// exactly one `AGE-SECRET-KEY-1...` line. The error never repeats the
/// text.
fn identity(text: &str) -> Result<x25519::Identity, EscrowError> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(key) = keys.next() else {
        return Err(EscrowError::Identity(
            "it holds no age identity (an `AGE-SECRET-KEY-1...` line)".to_owned(),
        ));
    };
    if keys.next().is_some() {
        return Err(EscrowError::Identity(
            "it holds more than one line besides comments: a custodian's identity file holds one `AGE-SECRET-KEY-1...` line".to_owned(),
        ));
    }
    if !key
        .get(..16)
        .is_some_and(|p| p.eq_ignore_ascii_case("AGE-SECRET-KEY-1"))
    {
        return Err(EscrowError::Identity(
            "it is not an age X25519 identity (an `AGE-SECRET-KEY-1...` line)".to_owned(),
        ));
    }
    x25519::Identity::from_str(key).map_err(|e| {
        EscrowError::Identity(format!("the `AGE-SECRET-KEY-1...` line is invalid ({e})"))
    })
}

/// Seals `record` to `recipient`: an armored age file.
pub(crate) fn seal(
    record: &ShareRecord,
    recipient: &x25519::Recipient,
) -> Result<String, EscrowError> {
    let encoded = record.encode();
    age::encrypt_and_armor(recipient, &encoded).map_err(|e| EscrowError::Seal {
        custodian: record.custodian().to_owned(),
        reason: e.to_string(),
    })
}

/// Opens an armored share file with a custodian's identity file text: the
/// share record, checked. Another custodian's identity, a damaged or
/// truncated file and a malformed record are each refused with an error of
/// their own.
pub fn open(armored: &str, identity_text: &str) -> Result<ShareRecord, EscrowError> {
    let identity = identity(identity_text)?;
    if armored.len() > MAX_SHARE_FILE {
        return Err(EscrowError::Damaged(format!(
            "it is {} bytes long; a share file is at most {MAX_SHARE_FILE}",
            armored.len()
        )));
    }
    if !armored
        .trim_start()
        .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
    {
        return Err(EscrowError::Damaged(
            "it does not start with -----BEGIN AGE ENCRYPTED FILE-----".to_owned(),
        ));
    }
    let decryptor =
        age::Decryptor::new_buffered(ArmoredReader::new(armored.as_bytes())).map_err(damaged)?;
    let reader = decryptor
        .decrypt(iter::once(&identity as &dyn age::Identity))
        .map_err(damaged)?;
    // Room for the largest record up front, so reading never moves the
    // plaintext (a moved buffer would leave a copy behind).
    let mut plain = Zeroizing::new(Vec::with_capacity(MAX_PLAINTEXT + 64));
    reader
        .take(MAX_PLAINTEXT as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| EscrowError::Damaged(format!("its payload does not decrypt ({e})")))?;
    if plain.len() > MAX_PLAINTEXT {
        return Err(EscrowError::Format(format!(
            "it is over {MAX_PLAINTEXT} bytes"
        )));
    }
    ShareRecord::decode(&plain)
}

fn damaged(e: age::DecryptError) -> EscrowError {
    match e {
        age::DecryptError::NoMatchingKeys => EscrowError::NotForIdentity,
        e => EscrowError::Damaged(e.to_string()),
    }
}
