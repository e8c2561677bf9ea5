//! The canonical encoding of an approval request, its digest, and the
//! statement an administrator signs to approve or deny it.
//!
//! Both sides compute these from the request's fields: the agent when it
//! checks a signature, `keyward` when it shows a request before signing.
//! Neither trusts a digest the other sends.
//!
//! The encoding (format 1) is the magic `keyward request\0`, the format
//! as a big-endian `u16`, then each field in a fixed order — id, action,
//! target, parameters, requester, reason, each as a big-endian `u32`
//! length and its UTF-8 bytes; creation and expiry as big-endian `i64`
//! unix seconds. No field can run into the next, and no two requests
//! encode alike. The digest is SHA-256 of the encoding.
//!
//! The statement an administrator signs is the magic `keyward decision\0`,
//! the format as a `u16`, the decision's name (length-prefixed as above),
//! then the 32-byte digest: an approval is bound to one request and one
//! decision, and cannot be replayed onto another request or taken for a
//! denial. It is bound to one administrator by their key: the roster gives
//! each administrator a key of their own.

use keyward_domain::Decision;
use sha2::{Digest, Sha256};

/// The encoding's format; a new format gets a new number, never a change
/// of this one.
pub const REQUEST_FORMAT: u16 = 1;

/// The fields of a request that its digest covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContent<'a> {
    /// The request's id (hex of 16 random bytes).
    pub id: &'a str,
    /// The action under dual control (`destroy`, `resume`, `sign`, ...).
    pub action: &'a str,
    /// What it acts on (a key's `token/name`, a file, a token).
    pub target: &'a str,
    /// The action's arguments: canonical JSON (sorted keys, no spaces), as
    /// the agent stored it.
    pub parameters: &'a str,
    /// Who asked (an administrator's name, `uid:N`, or an application).
    pub requester: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; no decision counts from then on.
    pub expires_at: i64,
}

impl RequestContent<'_> {
    /// The canonical encoding (format [`REQUEST_FORMAT`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.id.len()
                + self.action.len()
                + self.target.len()
                + self.parameters.len()
                + self.requester.len()
                + self.reason.len(),
        );
        out.extend_from_slice(b"keyward request\0");
        out.extend_from_slice(&REQUEST_FORMAT.to_be_bytes());
        for field in [
            self.id,
            self.action,
            self.target,
            self.parameters,
            self.requester,
            self.reason,
        ] {
            put(&mut out, field.as_bytes());
        }
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out
    }

    /// SHA-256 of [`encode`](Self::encode).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// What an administrator signs to make `decision` on the request whose
/// digest is `digest`.
pub fn decision_statement(decision: Decision, digest: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"keyward decision\0");
    out.extend_from_slice(&REQUEST_FORMAT.to_be_bytes());
    put(&mut out, decision.as_str().as_bytes());
    out.extend_from_slice(digest);
    out
}

/// `bytes`, prefixed by their length as a big-endian `u32`. A field longer
/// than 4 GiB cannot reach here (frames are far smaller); it would be
/// cut off at the length written, and so still never encode like another.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> RequestContent<'static> {
        RequestContent {
            id: "00112233445566778899aabbccddeeff",
            action: "destroy",
            target: "kw/release",
            parameters: "{}",
            requester: "alice",
            reason: "retired",
            created_at: 1_800_000_000,
            expires_at: 1_800_086_400,
        }
    }

    #[test]
    fn the_encoding_is_fixed() {
        // A change here breaks every signature made before: make a new
        // format instead.
        assert_eq!(
            hex::encode(content().digest()),
            hex::encode(Sha256::digest(content().encode()))
        );
        let e = content().encode();
        assert!(e.starts_with(b"keyward request\0\x00\x01\x00\x00\x00\x20001122"));
        assert!(
            e.ends_with(&[0, 0, 0, 0, 0x6b, 0x49, 0xd2, 0x00, 0, 0, 0, 0, 0x6b, 0x4b, 0x23, 0x80])
        );
    }

    #[test]
    fn every_field_counts_and_none_runs_into_the_next() {
        let base = content();
        let variants = [
            RequestContent {
                id: "00112233445566778899aabbccddeefe",
                ..base
            },
            RequestContent {
                action: "resume",
                ..base
            },
            RequestContent {
                target: "kw/releas",
                ..base
            },
            RequestContent {
                parameters: "{\"a\":1}",
                ..base
            },
            RequestContent {
                requester: "bob",
                ..base
            },
            RequestContent { reason: "", ..base },
            RequestContent {
                created_at: 1_800_000_001,
                ..base
            },
            RequestContent {
                expires_at: 1_800_086_401,
                ..base
            },
            // Moving a byte from one field to the next changes the digest.
            RequestContent {
                target: "kw/release/",
                parameters: "}",
                ..base
            },
            RequestContent {
                requester: "alic",
                reason: "eretired",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.digest(), base.digest(), "{v:?}");
        }
    }

    #[test]
    fn a_statement_binds_decision_and_request() {
        let d = content().digest();
        let approve = decision_statement(Decision::Approve, &d);
        assert_ne!(approve, decision_statement(Decision::Deny, &d));
        let other = RequestContent {
            id: "ff",
            ..content()
        }
        .digest();
        assert_ne!(approve, decision_statement(Decision::Approve, &other));
        assert!(approve.starts_with(b"keyward decision\0\x00\x01\x00\x00\x00\x07approve"));
        assert!(approve.ends_with(&d));
        assert_eq!(approve.len(), 17 + 2 + 4 + 7 + 32);
    }
}
