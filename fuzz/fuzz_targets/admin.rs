//! The admin protocol as the agent and `keyward` read it: `AdminRequest`
//! and `AdminResponse` frames (key, backup, certificate, audit and report
//! calls), and an approval request on its own with its canonical encoding
//! and digest. Invariants: no panic; a decoded message encodes, and
//! decodes again to the same message.
#![no_main]

#[path = "common/frames.rs"]
mod frames;

use frames::{round_trip, stream};

use keyward_domain::Decision;
use keyward_protocol::admin::{AdminRequest, AdminResponse, ApprovalRequest, KeyResponse};
use keyward_protocol::approval::decision_statement;
use libfuzzer_sys::fuzz_target;

/// What `keyward` and the agent compute of an approval request: its
/// canonical encoding, its digest and the statements signed on it.
fn approval(r: &ApprovalRequest) {
    let content = r.content();
    let encoded = content.encode();
    assert!(encoded.starts_with(b"keyward request\0"));
    let digest = content.digest();
    assert_eq!(digest, r.content().digest(), "the digest is not stable");
    for d in [Decision::Approve, Decision::Deny] {
        let _ = decision_statement(d, &digest);
    }
    round_trip(r);
}

fn approvals(resp: &AdminResponse) {
    if let AdminResponse::Key(k) = resp {
        match k.as_ref() {
            KeyResponse::Pending(r) => approval(r),
            KeyResponse::Requests(rs) => rs.iter().for_each(approval),
            _ => {}
        }
    }
    if let AdminResponse::Report(r) = resp {
        r.pending_requests.iter().for_each(approval);
    }
}

fuzz_target!(|data: &[u8]| {
    stream::<AdminRequest>(data, |_| {});
    stream::<AdminResponse>(data, approvals);
    if let Ok(r) = postcard::from_bytes::<ApprovalRequest>(data) {
        approval(&r);
    }
});
