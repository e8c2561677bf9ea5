//! Property tests of the approval request's canonical encoding
//! (`approval.rs`): a reader of the format as its documentation lays it
//! out gets every field back (so no field runs into the next, and two
//! requests never encode alike), the digest follows the encoding, a
//! decision statement is bound to its decision and digest, and the
//! request's wire form (postcard) round-trips without changing its
//! content.

use proptest::prelude::*;

use keyward_domain::{ApprovalStatus, Decision};

use crate::admin::{ApprovalRequest, DecisionInfo};
use crate::approval::{decision_statement, RequestContent, REQUEST_FORMAT};

/// The fields of a request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    id: String,
    action: String,
    target: String,
    parameters: String,
    requester: String,
    reason: String,
    created_at: i64,
    expires_at: i64,
}

impl Fields {
    fn content(&self) -> RequestContent<'_> {
        RequestContent {
            id: &self.id,
            action: &self.action,
            target: &self.target,
            parameters: &self.parameters,
            requester: &self.requester,
            reason: &self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// Reads format 1 as documented: magic, `u16` format, six length-prefixed
/// UTF-8 fields, two `i64`s, and nothing after.
fn decode(mut b: &[u8]) -> Option<Fields> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn field(b: &mut &[u8]) -> Option<String> {
        let len = u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize;
        String::from_utf8(take(b, len)?.to_vec()).ok()
    }
    fn int(b: &mut &[u8]) -> Option<i64> {
        Some(i64::from_be_bytes(take(b, 8)?.try_into().ok()?))
    }
    if take(&mut b, 16)? != b"keyward request\0" {
        return None;
    }
    if u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?) != REQUEST_FORMAT {
        return None;
    }
    let f = Fields {
        id: field(&mut b)?,
        action: field(&mut b)?,
        target: field(&mut b)?,
        parameters: field(&mut b)?,
        requester: field(&mut b)?,
        reason: field(&mut b)?,
        created_at: int(&mut b)?,
        expires_at: int(&mut b)?,
    };
    b.is_empty().then_some(f)
}

/// Short strings from a small alphabet (with separators, NUL and a
/// multi-byte character), so that neighbouring fields often share bytes.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just('/'),
            Just('\0'),
            Just('{'),
            Just('é'),
            any::<char>()
        ],
        0..12,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (text(), text(), text(), text(), text(), text()),
        any::<i64>(),
        any::<i64>(),
    )
        .prop_map(
            |((id, action, target, parameters, requester, reason), created_at, expires_at)| {
                Fields {
                    id,
                    action,
                    target,
                    parameters,
                    requester,
                    reason,
                    created_at,
                    expires_at,
                }
            },
        )
}

fn request(
    f: Fields,
    status: usize,
    needed: u32,
    decisions: Vec<(String, bool, i64)>,
) -> ApprovalRequest {
    ApprovalRequest {
        id: f.id,
        action: f.action,
        target: f.target,
        parameters: f.parameters,
        requester: f.requester,
        reason: f.reason,
        created_at: f.created_at,
        expires_at: f.expires_at,
        status: ApprovalStatus::ALL[status % ApprovalStatus::ALL.len()],
        needed,
        decisions: decisions
            .into_iter()
            .map(|(administrator, approve, at)| DecisionInfo {
                administrator,
                decision: if approve {
                    Decision::Approve
                } else {
                    Decision::Deny
                },
                at,
            })
            .collect(),
        outcome: String::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// encode -> decode -> encode is the identity.
    #[test]
    fn the_encoding_reads_back_as_the_same_request(f in fields()) {
        let bytes = f.content().encode();
        let back = decode(&bytes);
        prop_assert_eq!(back.as_ref(), Some(&f));
        prop_assert_eq!(back.map(|b| b.content().encode()), Some(bytes));
    }

    /// Two requests that differ in any field encode (and digest) apart.
    #[test]
    fn distinct_requests_encode_apart(a in fields(), b in fields()) {
        prop_assume!(a != b);
        prop_assert_ne!(a.content().encode(), b.content().encode());
        prop_assert_ne!(a.content().digest(), b.content().digest());
    }

    /// Moving bytes from one field to its neighbour changes the encoding.
    #[test]
    fn a_field_boundary_cannot_move(f in fields(), cut in 0usize..12) {
        let mut g = f.clone();
        let moved: String = g.target.chars().take(cut).collect();
        prop_assume!(!moved.is_empty());
        g.target = g.target[moved.len()..].to_owned();
        g.action.push_str(&moved);
        prop_assert_ne!(f.content().encode(), g.content().encode());
    }

    /// A decision statement names its decision and its digest, and no
    /// other pair gives the same statement.
    #[test]
    fn a_statement_is_bound_to_its_decision_and_digest(a in fields(), b in fields()) {
        let (da, db) = (a.content().digest(), b.content().digest());
        let approve = decision_statement(Decision::Approve, &da);
        prop_assert!(approve.ends_with(&da));
        prop_assert_ne!(&approve, &decision_statement(Decision::Deny, &da));
        if da != db {
            prop_assert_ne!(&approve, &decision_statement(Decision::Approve, &db));
        }
    }

    /// The request as the admin protocol carries it round-trips, and its
    /// content (what is signed) with it.
    #[test]
    fn the_wire_form_round_trips(
        f in fields(),
        status in any::<usize>(),
        needed in any::<u32>(),
        decisions in proptest::collection::vec((text(), any::<bool>(), any::<i64>()), 0..3),
    ) {
        let r = request(f, status, needed, decisions);
        let bytes = postcard::to_stdvec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: ApprovalRequest =
            postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.content().encode(), r.content().encode());
        prop_assert_eq!(&back, &r);
        let again = postcard::to_stdvec(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, bytes);
    }
}
