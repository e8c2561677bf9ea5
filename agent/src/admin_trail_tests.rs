//! What the audit trail keeps of admin requests, over the mock backend:
//! actions by their names and in words, reads of the inventory not at
//! all, reads of the trail once (a `--follow` poll not at all).

use keyward_inventory::{AuditKind, AuditRecord};
use keyward_protocol::admin::{AdminResponse, AuditRequest, KeyAction, KeyRequest};

use crate::agent::tests::{admin_peer, mock_agent};
use crate::agent::Agent;

const POLICY: &str = crate::agent::tests::STRICT_SIGNING;

/// Every admin record, oldest first, as (operation, reason, result).
fn admin_records(a: &Agent) -> Vec<(String, String, u64)> {
    a.audit.flush();
    let all: Vec<AuditRecord> = a.audit.log().tail(100_000).unwrap();
    all.into_iter()
        .filter(|r| r.event.kind == AuditKind::Admin)
        .map(|r| (r.event.operation, r.event.reason, r.event.result))
        .collect()
}

fn key(a: &Agent, req: KeyRequest) -> AdminResponse {
    a.lifecycle.key_request(&admin_peer(), req)
}

#[test]
fn actions_are_named_and_described_reads_are_not_recorded() {
    let (_d, a) = mock_agent(POLICY);
    key(
        &a,
        KeyRequest::Create {
            name: "demo-key".into(),
            class: "signing".into(),
            algorithm: None,
            token: None,
            owner: None,
        },
    );
    key(
        &a,
        KeyRequest::Transition {
            name: "demo-key".into(),
            token: None,
            action: KeyAction::Suspend,
            reason: Some("demo: investigating".into()),
            code: None,
        },
    );
    let before = admin_records(&a);
    for read in [
        KeyRequest::List {
            token: None,
            state: None,
        },
        KeyRequest::Show {
            name: "demo-key".into(),
            token: None,
        },
        KeyRequest::Show {
            name: "no-such-key".into(),
            token: None,
        },
        KeyRequest::GrantList {
            key: None,
            token: None,
        },
        KeyRequest::AppList,
    ] {
        key(&a, read);
    }
    let after = admin_records(&a);
    assert_eq!(before, after, "a read of the inventory was recorded");
    let s = |x: &str| x.to_owned();
    assert_eq!(
        after,
        [
            (
                s("key.create"),
                s("requested: create demo-key (class signing, the class's first algorithm)"),
                0
            ),
            (s("key.create"), s("done"), 0),
            (
                s("key.suspend"),
                s("requested: suspend demo-key: demo: investigating"),
                0
            ),
            // Pre-activation keys are not suspended: the refusal in words.
            (
                s("key.suspend"),
                s("refused: key kw/demo-key: a pre-activation key cannot be suspended"),
                keyward_policy::KEYWARD_REFUSED
            ),
        ]
    );
}

#[test]
fn a_trail_read_is_one_record_and_a_follow_poll_only_with_news() {
    let (_d, a) = mock_agent(POLICY);
    let admin = admin_peer();
    key(
        &a,
        KeyRequest::Create {
            name: "k".into(),
            class: "signing".into(),
            algorithm: None,
            token: None,
            owner: None,
        },
    );
    let start = admin_records(&a).len();
    let resp = a.audit_request(
        &admin,
        AuditRequest::Tail {
            n: 5,
            after_seq: None,
        },
    );
    assert!(matches!(resp, AdminResponse::Audit(_)), "{resp:?}");
    let records = admin_records(&a);
    assert_eq!(records.len(), start + 1);
    let (operation, reason, result) = records.last().unwrap();
    assert_eq!(operation, "audit.tail");
    assert!(
        reason.starts_with("read the last 5 audit records: "),
        "{reason}"
    );
    assert_eq!(*result, 0);
    // A poll of `audit tail --follow` that brings news is recorded; the
    // next one returns only that record and is not (else each poll would
    // return the record of the one before, for ever); an empty one is not.
    let poll = |after: u64| {
        a.audit_request(
            &admin,
            AuditRequest::Tail {
                n: 1000,
                after_seq: Some(after),
            },
        )
    };
    let head = |resp: &AdminResponse| match resp {
        AdminResponse::Audit(r) => match &**r {
            keyward_protocol::admin::AuditResponse::Records(r) => r.iter().map(|r| r.seq).max(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let all = poll(0);
    let last = head(&all).expect("the trail has records");
    let records = admin_records(&a);
    assert_eq!(records.len(), start + 2, "a poll that read the trail");
    let (operation, reason, _) = records.last().unwrap();
    assert_eq!(operation, "audit.tail");
    assert!(
        reason.starts_with("read at most 1000 audit records after record 0: "),
        "{reason}"
    );
    let only_its_record = poll(last);
    let last = head(&only_its_record).expect("the poll's own record");
    assert_eq!(admin_records(&a).len(), start + 2);
    assert_eq!(head(&poll(last)), None);
    assert_eq!(admin_records(&a).len(), start + 2);
    a.audit_request(&admin, AuditRequest::Verify);
    let records = admin_records(&a);
    let (operation, reason, _) = records.last().unwrap();
    assert_eq!(operation, "audit.verify");
    assert!(
        reason.starts_with("verify the audit trail: intact, "),
        "{reason}"
    );
}

/// A request for approval names its id in the trail, keeps its reason, and
/// a second ask while it is pending answers the same request.
#[test]
fn a_request_for_approval_is_named_in_the_trail_and_asked_once() {
    let (_d, a) = mock_agent(POLICY);
    let create = KeyRequest::Create {
        name: "k".into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    let act = |action, reason: &str| KeyRequest::Transition {
        name: "k".into(),
        token: None,
        action,
        reason: Some(reason.into()),
        code: matches!(action, KeyAction::Revoke { .. } | KeyAction::Destroy)
            .then_some(keyward_policy::ReasonCode::KeyCompromise),
    };
    key(&a, create);
    key(&a, act(KeyAction::Activate, "go"));
    key(&a, act(KeyAction::Suspend, "laptop stolen"));
    let ids: Vec<String> = (0..2)
        .map(|_| match key(&a, act(KeyAction::Resume, "laptop found")) {
            AdminResponse::Key(k) => match *k {
                keyward_protocol::admin::KeyResponse::Pending(p) => p.id,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids[0], ids[1], "a second request while one is pending");
    let outcomes: Vec<String> = admin_records(&a)
        .into_iter()
        .filter(|(op, reason, _)| op == "key.resume" && !reason.starts_with("requested: "))
        .map(|(_, reason, _)| reason)
        .collect();
    let expected = format!("needs approval: request {}", ids[0]);
    assert_eq!(outcomes, [expected.clone(), expected]);
    let stored = a.keys.inventory().request(&ids[0]).unwrap().unwrap();
    assert_eq!(stored.reason, "laptop found", "{stored:?}");
    assert_eq!(stored.parameters, r#"{"from":"suspended"}"#);
}

/// With a roster, the agent refuses an admin request the administrator's
/// roles do not allow, and a peer outside the roster, and records the
/// refusal; reads stay open to every administrator.
#[test]
fn the_roster_decides_who_may_ask_for_what() {
    use keyward_protocol::admin::{AdminErrorKind, AdminRequest};
    let policy = format!(
        "{POLICY}
[[administrator]]
name = \"alice\"
uids = [1001]
roles = [\"security-officer\"]
public_key = \"ed25519:{k}\"

[[administrator]]
name = \"bob\"
uids = [1002]
roles = [\"security-officer\"]
public_key = \"ed25519:{k2}\"

[[administrator]]
name = \"zed\"
uids = [0]
roles = [\"auditor\"]
public_key = \"ed25519:{k3}\"
",
        k = "11".repeat(32),
        k2 = "22".repeat(32),
        k3 = "33".repeat(32)
    );
    let (_d, a) = mock_agent(&policy);
    let zed = admin_peer();
    let create = AdminRequest::Key(KeyRequest::Create {
        name: "k".into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    });
    match a.refuse_admin(&zed, &create) {
        Some(AdminResponse::KeyErr { kind, message }) => {
            assert_eq!(kind, AdminErrorKind::Refused);
            assert_eq!(
                message,
                "administrator \"zed\" (auditor) may not key.create"
            );
        }
        other => panic!("{other:?}"),
    }
    let records = admin_records(&a);
    assert!(
        records.iter().any(|(op, reason, result)| op == "key.create"
            && reason.starts_with("refused: administrator \"zed\"")
            && *result == keyward_policy::KEYWARD_REFUSED),
        "{records:?}"
    );
    // Reads are every administrator's.
    let list = AdminRequest::Key(KeyRequest::List {
        token: None,
        state: None,
    });
    assert!(a.refuse_admin(&zed, &list).is_none());
    assert!(a.refuse_admin(&zed, &AdminRequest::Status).is_none());
    // A uid outside the roster gets nothing, not even the status.
    let mut stranger = admin_peer();
    stranger.uid = 4242;
    assert!(a.refuse_admin(&stranger, &AdminRequest::Status).is_some());
}
