//! Token initialisation under dual control, with the in-memory backend:
//! nothing happens before two security officers approved; then every key
//! is destroyed (its record kept), every object but the audit key removed
//! and the user PINs cleared. Nobody else may ask or count.

use std::collections::HashSet;

use cryptoki_sys as ck;
use keyward_policy::{ApprovalStatus, Decision};
use keyward_protocol::admin::{AdminRequest, AdminResponse, ApprovalRequest};
use keyward_protocol::Attribute;

use super::super::test_roster::*;
use super::*;
use crate::agent::Agent;
use crate::audit::AuditKey;
use crate::backend::BackendObject;
use crate::state::PinRef;

fn alice() -> Admin {
    ed(1001, 1)
}
fn bob() -> Admin {
    ed(1002, 2)
}
fn carol() -> Admin {
    ed(1003, 3)
}
fn oscar() -> Admin {
    ed(1004, 4)
}
fn dave() -> Admin {
    ed(1005, 5)
}

const CLASSES: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
grants = [ { application = "app", operations = ["sign", "verify"] } ]
"#;

/// alice and bob: security officers; carol: key owner; oscar: operator;
/// dave: auditor.
fn roster() -> String {
    format!(
        "{CLASSES}{}{}{}{}{}",
        entry("alice", &alice(), "\"security-officer\""),
        entry("bob", &bob(), "\"security-officer\""),
        entry("carol", &carol(), "\"key-owner\""),
        entry("oscar", &oscar(), "\"operator\""),
        entry("dave", &dave(), "\"auditor\""),
    )
}

fn init(token: &str) -> KeyRequest {
    KeyRequest::TokenInit {
        token: token.into(),
        reason: "reuse the token for staging".into(),
    }
}

/// Key `name`, made and activated by alice.
fn active(a: &Agent, name: &str) {
    let create = KeyRequest::Create {
        name: name.into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    call(a, &alice(), create).unwrap();
    let activate = KeyRequest::Transition {
        name: name.into(),
        token: None,
        action: KeyAction::Activate,
        reason: None,
        code: None,
    };
    call(a, &alice(), activate).unwrap();
}

fn pending(r: AResult<KeyResponse>) -> ApprovalRequest {
    match r {
        Ok(KeyResponse::Pending(p)) => p,
        other => panic!("{other:?}"),
    }
}

fn status(a: &Agent, id: &str) -> ApprovalRequest {
    match call(a, &alice(), KeyRequest::RequestShow { id: id.into() }) {
        Ok(KeyResponse::Requests(mut r)) => r.remove(0),
        other => panic!("{other:?}"),
    }
}

fn state(a: &Agent, name: &str) -> KeyState {
    a.keys.inventory().key("kw", name).unwrap().unwrap().state
}

fn trail(a: &Agent, operation: &str) -> Vec<(u64, String)> {
    a.audit.flush();
    a.audit
        .log()
        .tail(100_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.operation == operation)
        .map(|r| (r.event.result, r.event.reason))
        .collect()
}

/// Every object the token's backend holds.
fn objects(a: &Agent) -> HashSet<BackendObject> {
    let b = a.tokens[0].backend().unwrap();
    b.find_objects(b.anchor_session(), &[])
        .unwrap()
        .into_iter()
        .collect()
}

/// An object of `class` with `CKA_ID` `id`, on the token's backend.
fn object(a: &Agent, class: u64, id: &[u8]) -> BackendObject {
    let b = a.tokens[0].backend().unwrap();
    let template = [
        Attribute::ulong(ck::CKA_CLASS, class),
        Attribute::bytes(ck::CKA_ID, id.to_vec()),
        Attribute::bool(ck::CKA_TOKEN, true),
    ];
    b.create_object(b.anchor_session(), &template).unwrap()
}

/// The audit key pair, on the token's backend and in use.
fn audit_key(a: &Agent) -> [BackendObject; 2] {
    let private = object(a, ck::CKO_PRIVATE_KEY, b"keyward-audit");
    let public = object(a, ck::CKO_PUBLIC_KEY, b"keyward-audit");
    a.audit.set_key(AuditKey {
        slot: 0,
        private,
        public,
    });
    [private, public]
}

fn pending_token_inits(a: &Agent) -> usize {
    a.keys
        .inventory()
        .requests(Some(ApprovalStatus::Pending))
        .unwrap()
        .iter()
        .filter(|r| r.action == TOKEN_INIT)
        .count()
}

#[test]
fn two_officers_approve_and_every_key_and_object_goes_but_the_audit_key() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    let audit = audit_key(&a);
    active(&a, "a");
    active(&a, "b");
    let own = object(&a, ck::CKO_DATA, b"the application's own");
    let t = &a.tokens[0];
    t.state.set_pin(Role::User, b"123456").unwrap();
    t.state.set_pin(PinRef::app("app"), b"654321").unwrap();
    t.state.set_pin(Role::So, b"so-pin-1").unwrap();
    let before = objects(&a);
    assert!(before.len() >= 5, "{before:?}");
    assert!(before.contains(&own));

    let r = pending(call(&a, &alice(), init("kw")));
    assert_eq!(r.action, "token-init");
    assert_eq!(r.target, "kw");
    assert_eq!(r.needed, 2);
    let parameters: serde_json::Value = serde_json::from_str(&r.parameters).unwrap();
    assert_eq!(
        parameters,
        serde_json::json!({"token": "kw", "keys": ["a", "b"]})
    );
    // Asking again answers the same request.
    assert_eq!(pending(call(&a, &bob(), init("kw"))).id, r.id);

    // The requester's own approval counts, but one is not enough.
    approve(&a, &alice(), &r).unwrap();
    assert_eq!(status(&a, &r.id).status, ApprovalStatus::Pending);
    assert_eq!(objects(&a), before);
    assert_eq!(state(&a, "a"), KeyState::Active);
    assert!(t.state.has_pin(Role::User));

    approve(&a, &bob(), &r).unwrap();
    let done = status(&a, &r.id);
    assert_eq!(done.status, ApprovalStatus::Executed, "{}", done.outcome);
    assert_eq!(
        done.outcome,
        "token kw initialised: 2 managed keys destroyed, 1 other objects removed, \
         user PINs cleared"
    );
    // The keys' records are kept, destroyed; the objects are gone but the
    // audit key's.
    assert_eq!(state(&a, "a"), KeyState::Destroyed);
    assert_eq!(state(&a, "b"), KeyState::Destroyed);
    assert_eq!(objects(&a), HashSet::from(audit));
    // The user PINs are cleared; the SO PIN stays.
    assert!(!t.state.has_pin(Role::User));
    assert!(!t.state.has_pin(PinRef::app("app")));
    assert!(t.state.has_pin(Role::So));
    // New sessions may open again.
    assert!(!t.counts().initializing);
    // The trail: each key's destruction names the request; the token's
    // initialisation once; the execution once.
    let destroyed = trail(&a, "destroy");
    assert!(
        destroyed.len() >= 2
            && destroyed
                .iter()
                .all(|(_, why)| why.contains(&format!("(request {})", r.id))),
        "{destroyed:?}"
    );
    let initialised = trail(&a, "token init");
    assert_eq!(initialised.len(), 1, "{initialised:?}");
    assert!(
        initialised[0].1.contains("alice, approved by alice, bob"),
        "{initialised:?}"
    );
    let executed = trail(&a, "request.execute");
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0].0, 0, "{executed:?}");
}

#[test]
fn only_a_security_officer_may_ask_or_count() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "a");
    let ask = AdminRequest::Key(init("kw"));
    // Key owner, operator and auditor: refused at the admin socket.
    for who in [carol(), oscar(), dave()] {
        match a.refuse_admin(&peer(&who), &ask) {
            Some(AdminResponse::KeyErr { message, .. }) => {
                assert!(message.contains("token.init"), "{message}")
            }
            other => panic!("uid {}: {other:?}", who.uid),
        }
    }
    assert!(a.refuse_admin(&peer(&alice()), &ask).is_none());
    let r = pending(call(&a, &alice(), init("kw")));
    // Their approvals do not count either.
    for who in [carol(), oscar(), dave()] {
        refused(
            approve(&a, &who, &r),
            AdminErrorKind::Refused,
            "holds none of the roles that decide on token-init",
        );
    }
    // One officer's approval is not enough.
    approve(&a, &bob(), &r).unwrap();
    let still = status(&a, &r.id);
    assert_eq!(still.status, ApprovalStatus::Pending);
    assert_eq!(still.decisions.len(), 1);
    assert_eq!(state(&a, "a"), KeyState::Active);
}

#[test]
fn an_unknown_token_or_no_reason_opens_no_request() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    refused(
        call(&a, &alice(), init("nope")),
        AdminErrorKind::NotFound,
        "no token \"nope\"",
    );
    refused(
        call(
            &a,
            &alice(),
            KeyRequest::TokenInit {
                token: "kw".into(),
                reason: " ".into(),
            },
        ),
        AdminErrorKind::Invalid,
        "needs a reason",
    );
    assert_eq!(pending_token_inits(&a), 0);
}

#[test]
fn a_key_made_after_the_request_stops_it_before_anything_changes() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "a");
    let r = pending(call(&a, &alice(), init("kw")));
    active(&a, "late");
    let before = objects(&a);
    approve(&a, &alice(), &r).unwrap();
    approve(&a, &bob(), &r).unwrap();
    let failed = status(&a, &r.id);
    assert_eq!(failed.status, ApprovalStatus::Failed);
    assert!(
        failed
            .outcome
            .contains("[\"late\"] are not among the keys approved"),
        "{}",
        failed.outcome
    );
    assert_eq!(objects(&a), before);
    assert_eq!(state(&a, "a"), KeyState::Active);
    assert!(!a.tokens[0].counts().initializing);
}

#[test]
fn an_approval_recorded_before_a_stop_or_a_run_cut_off_is_finished_once_at_the_next_start() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    let audit = audit_key(&a);
    active(&a, "a");
    active(&a, "b");
    object(&a, ck::CKO_DATA, b"own");
    let r = pending(call(&a, &alice(), init("kw")));
    // Approved in the store, then cut off after one key was destroyed.
    for who in ["alice", "bob"] {
        let d = keyward_inventory::DecisionRecord {
            administrator: who.into(),
            decision: Decision::Approve,
            signature: None,
            at: r.created_at + 1,
        };
        a.keys.inventory().decide_request(&r.id, &d, 2).unwrap();
    }
    let t = a.lifecycle.target(Some("kw"), "a").unwrap();
    a.lifecycle
        .destroy_key(
            &t,
            ("alice", &Actor::Agent),
            ("cut off", None),
            None,
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(state(&a, "a"), KeyState::Destroyed);
    a.lifecycle.resume_approved();
    let done = status(&a, &r.id);
    assert_eq!(done.status, ApprovalStatus::Executed, "{}", done.outcome);
    assert!(
        done.outcome
            .contains("1 managed keys destroyed, 1 other objects removed"),
        "{}",
        done.outcome
    );
    assert_eq!(state(&a, "b"), KeyState::Destroyed);
    assert_eq!(objects(&a), HashSet::from(audit));
    // Once.
    a.lifecycle.resume_approved();
    assert_eq!(trail(&a, "token init").len(), 1);
    assert_eq!(trail(&a, "request.execute").len(), 1);
}

#[test]
fn without_a_roster_one_unsigned_approval_carries_it_out() {
    let (_d, a) = crate::agent::tests::mock_agent(crate::agent::tests::STRICT_SIGNING);
    let root = ed(0, 9);
    let own = object(&a, ck::CKO_DATA, b"own");
    let r = pending(call(&a, &root, init("kw")));
    assert_eq!(r.needed, 0);
    assert!(objects(&a).contains(&own));
    // A signature is refused where there is no roster to check it.
    refused(
        approve(&a, &root, &r),
        AdminErrorKind::Invalid,
        "the policy has no roster",
    );
    assert!(objects(&a).contains(&own));
    call(
        &a,
        &root,
        KeyRequest::RequestDecide {
            id: r.id.clone(),
            decision: Decision::Approve,
            signature: None,
        },
    )
    .unwrap();
    let done = status(&a, &r.id);
    assert_eq!(done.status, ApprovalStatus::Executed, "{}", done.outcome);
    assert!(objects(&a).is_empty());
}
