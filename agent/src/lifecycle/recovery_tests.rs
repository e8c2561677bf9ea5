//! Recovery windows and sensitive grants under dual control, with the
//! in-memory backend: what a window lets a compromised key do and for how
//! long, and that neither action takes effect before its quorum.

use keyward_policy::{ApprovalStatus, Decision, Operation};
use keyward_protocol::admin::ApprovalRequest;
use keyward_protocol::approval::decision_statement;

use super::test_roster::*;
use super::*;
use crate::agent::Agent;
use crate::keys::{check_use, ManagedRef};

fn alice() -> Admin {
    ed(1001, 1)
}
fn bob() -> Admin {
    ed(1002, 2)
}
fn carol() -> Admin {
    ed(1003, 3)
}

const CLASSES: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[application]]
name = "reader"
uid = 2000

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
grants = [ { application = "app", operations = ["sign", "verify"] } ]

[[class]]
name = "enc"
purpose = "encryption"
algorithms = ["aes:256"]
protect_period = "365d"
process_period = "730d"
max_recovery_window = "2d"
grants = [ { application = "app", operations = ["encrypt", "decrypt"] } ]

[[class]]
name = "wrap"
purpose = "wrapping"
algorithms = ["aes:256"]
protect_period = "365d"
process_period = "730d"

[[class]]
name = "secret"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
sensitive = true
"#;

/// alice and bob: security officers; carol: key owner.
fn roster() -> String {
    format!(
        "{CLASSES}{}{}{}",
        entry("alice", &alice(), "\"security-officer\""),
        entry("bob", &bob(), "\"security-officer\""),
        entry("carol", &carol(), "\"key-owner\""),
    )
}

fn act(name: &str, action: KeyAction) -> KeyRequest {
    KeyRequest::Transition {
        name: name.into(),
        token: None,
        action,
        reason: Some("test".into()),
        code: matches!(action, KeyAction::Revoke { .. } | KeyAction::Destroy)
            .then_some(keyward_policy::ReasonCode::KeyCompromise),
    }
}

/// Key `name` of `class`, made and activated by alice.
fn active(a: &Agent, name: &str, class: &str) {
    let create = KeyRequest::Create {
        name: name.into(),
        class: class.into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    call(a, &alice(), create).unwrap();
    call(a, &alice(), act(name, KeyAction::Activate)).unwrap();
}

/// Key `name` of `class`, made, activated and revoked.
fn compromised(a: &Agent, name: &str, class: &str) {
    active(a, name, class);
    call(a, &alice(), act(name, KeyAction::Revoke { rotate: false })).unwrap();
}

fn recover(name: &str, seconds: u64) -> KeyRequest {
    KeyRequest::Recover {
        name: name.into(),
        token: None,
        seconds,
        reason: "read the old archive".into(),
    }
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

fn view(a: &Agent, name: &str) -> Arc<KeyView> {
    let id = a.keys.inventory().key("kw", name).unwrap().unwrap().id;
    a.keys.key(id).unwrap()
}

/// What the per-call check answers `application` for `op` with version
/// 1 of `name` at `now`.
fn use_of(
    a: &Agent,
    name: &str,
    application: &str,
    op: Operation,
    now: SystemTime,
) -> Result<(), keyward_policy::Refusal> {
    let key = view(a, name);
    let m = ManagedRef {
        key_id: key.record.id,
        version: 1,
    };
    check_use(&a.policy(), &key, m, application, op, now)
}

fn at(secs: i64) -> SystemTime {
    crate::keys::time(secs)
}

/// The trail's records of `operation`: (result, reason).
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

#[test]
fn an_approved_window_lets_a_compromised_signing_key_verify_until_it_ends_and_never_sign() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    compromised(&a, "k", "signing");
    let now = SystemTime::now();
    // Compromised: nothing, verify included.
    assert!(use_of(&a, "k", "app", Operation::Verify, now).is_err());
    let r = pending(call(&a, &alice(), recover("k", 3_600)));
    let until = secs(now) + 3_600;
    let parameters: serde_json::Value = serde_json::from_str(&r.parameters).unwrap();
    assert_eq!(parameters["from"], "compromised");
    assert_eq!(parameters["operations"], serde_json::json!(["verify"]));
    let asked = parameters["until"].as_i64().unwrap();
    assert!(
        (until - 5..=until + 5).contains(&asked),
        "{asked} vs {until}"
    );
    assert_eq!(r.needed, 1);
    // Not yet approved: still nothing.
    assert!(use_of(&a, "k", "app", Operation::Verify, now).is_err());
    assert_eq!(view(&a, "k").record.recovery_until, None);
    // The requester's own approval does not count.
    refused(
        approve(&a, &alice(), &r),
        AdminErrorKind::Refused,
        "the decision is someone else's",
    );
    assert!(use_of(&a, "k", "app", Operation::Verify, now).is_err());
    // carol (key owner) approves: the window is open.
    approve(&a, &carol(), &r).unwrap();
    assert_eq!(status(&a, &r.id).status, ApprovalStatus::Executed);
    assert_eq!(view(&a, "k").record.recovery_until, Some(asked));
    assert_eq!(view(&a, "k").record.state, KeyState::Compromised);
    assert_eq!(use_of(&a, "k", "app", Operation::Verify, now), Ok(()));
    // Never a signature, and never for an application without a grant.
    let sign = use_of(&a, "k", "app", Operation::Sign, now).unwrap_err();
    assert!(
        matches!(
            sign,
            keyward_policy::Refusal::KeyState {
                state: KeyState::Compromised,
                ..
            }
        ),
        "{sign:?}"
    );
    assert!(use_of(&a, "k", "reader", Operation::Verify, now).is_err());
    // The window's last second, and the one after it.
    assert_eq!(
        use_of(&a, "k", "app", Operation::Verify, at(asked - 1)),
        Ok(())
    );
    assert!(use_of(&a, "k", "app", Operation::Verify, at(asked)).is_err());
    // key show shows it; the trail says who opened it, for what, why.
    match call(
        &a,
        &bob(),
        KeyRequest::Show {
            name: "k".into(),
            token: None,
        },
    ) {
        Ok(KeyResponse::Key(k)) => assert_eq!(k.recovery_until, Some(asked)),
        other => panic!("{other:?}"),
    }
    let records = trail(&a, "recover");
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0].1.starts_with("recovery window until ")
            && records[0]
                .1
                .contains("(verify): read the old archive (request "),
        "{records:?}"
    );
    let executed = trail(&a, "request.execute");
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0].0, 0, "{executed:?}");
}

#[test]
fn a_window_on_an_encryption_key_decrypts_and_never_encrypts() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    compromised(&a, "e", "enc");
    let r = pending(call(&a, &alice(), recover("e", 86_400)));
    let parameters: serde_json::Value = serde_json::from_str(&r.parameters).unwrap();
    assert_eq!(parameters["operations"], serde_json::json!(["decrypt"]));
    approve(&a, &bob(), &r).unwrap();
    let now = SystemTime::now();
    assert_eq!(use_of(&a, "e", "app", Operation::Decrypt, now), Ok(()));
    assert!(use_of(&a, "e", "app", Operation::Encrypt, now).is_err());
    // After the window: refused again.
    let until = view(&a, "e").record.recovery_until.unwrap();
    assert!(use_of(&a, "e", "app", Operation::Decrypt, at(until + 60)).is_err());
}

#[test]
fn a_window_is_refused_for_a_key_that_is_not_compromised_or_too_long_or_without_use() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "live", "signing");
    refused(
        call(&a, &alice(), recover("live", 3_600)),
        AdminErrorKind::Refused,
        "is active: a recovery window is for a compromised key",
    );
    call(&a, &alice(), act("live", KeyAction::Suspend)).unwrap();
    refused(
        call(&a, &alice(), recover("live", 3_600)),
        AdminErrorKind::Refused,
        "is suspended",
    );
    // The class "enc" allows 2 days; the default is 30 days.
    compromised(&a, "e", "enc");
    refused(
        call(&a, &alice(), recover("e", 2 * 86_400 + 1)),
        AdminErrorKind::Refused,
        "lasts from 1s to 2d",
    );
    refused(
        call(&a, &alice(), recover("e", 0)),
        AdminErrorKind::Refused,
        "lasts from 1s",
    );
    compromised(&a, "k", "signing");
    refused(
        call(&a, &alice(), recover("k", 30 * 86_400 + 1)),
        AdminErrorKind::Refused,
        "to 30d",
    );
    refused(
        call(
            &a,
            &alice(),
            KeyRequest::Recover {
                name: "k".into(),
                token: None,
                seconds: 60,
                reason: " ".into(),
            },
        ),
        AdminErrorKind::Invalid,
        "needs a reason",
    );
    // A wrapping key has neither verify nor decrypt to recover.
    compromised(&a, "w", "wrap");
    refused(
        call(&a, &alice(), recover("w", 60)),
        AdminErrorKind::Refused,
        "is for wrapping",
    );
    // None of it opened a request.
    assert_eq!(
        a.keys
            .inventory()
            .requests(Some(ApprovalStatus::Pending))
            .unwrap()
            .iter()
            .filter(|r| r.action == "recover")
            .count(),
        0
    );
}

#[test]
fn a_window_approved_after_its_end_or_for_a_key_destroyed_since_opens_nothing() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    compromised(&a, "k", "signing");
    let r = pending(call(&a, &alice(), recover("k", 60)));
    let until = serde_json::from_str::<serde_json::Value>(&r.parameters).unwrap()["until"]
        .as_i64()
        .unwrap();
    // The approval arrives after the window it asked for ended.
    let statement = decision_statement(Decision::Approve, &r.content().digest());
    a.lifecycle
        .decide(
            &peer(&bob()),
            &r.id,
            Decision::Approve,
            Some(&bob().key.sign(&statement)),
            at(until + 1),
        )
        .unwrap();
    let after = status(&a, &r.id);
    assert_eq!(after.status, ApprovalStatus::Failed);
    assert!(after.outcome.contains("ended at"), "{}", after.outcome);
    assert_eq!(view(&a, "k").record.recovery_until, None);
    // A window asked for a key that is destroyed before the approval.
    compromised(&a, "d", "signing");
    let r = pending(call(&a, &alice(), recover("d", 3_600)));
    let destroy = pending(call(&a, &alice(), act("d", KeyAction::Destroy)));
    approve(&a, &alice(), &destroy).unwrap();
    approve(&a, &bob(), &destroy).unwrap();
    assert_eq!(view(&a, "d").record.state, KeyState::Destroyed);
    approve(&a, &carol(), &r).unwrap();
    let after = status(&a, &r.id);
    assert_eq!(after.status, ApprovalStatus::Failed);
    assert!(
        after.outcome.contains("is destroyed now"),
        "{}",
        after.outcome
    );
    assert_eq!(view(&a, "d").record.recovery_until, None);
    assert!(trail(&a, "recover").is_empty());
}

#[test]
fn without_a_roster_a_window_is_still_a_request_and_one_approval_opens_it() {
    let (_d, a) = crate::agent::tests::mock_agent(CLASSES);
    let root = Admin {
        uid: 0,
        key: alice().key,
    };
    let create = KeyRequest::Create {
        name: "k".into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    call(&a, &root, create).unwrap();
    call(&a, &root, act("k", KeyAction::Activate)).unwrap();
    call(&a, &root, act("k", KeyAction::Revoke { rotate: false })).unwrap();
    let r = pending(call(&a, &root, recover("k", 600)));
    assert!(use_of(&a, "k", "app", Operation::Verify, SystemTime::now()).is_err());
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
    assert_eq!(
        use_of(&a, "k", "app", Operation::Verify, SystemTime::now()),
        Ok(())
    );
}

fn grant(key: &str, application: &str, ops: &[Operation]) -> KeyRequest {
    KeyRequest::GrantAdd {
        key: key.into(),
        token: None,
        application: application.into(),
        operations: ops.to_vec(),
        until: None,
    }
}

#[test]
fn a_grant_on_a_sensitive_key_waits_for_its_quorum_and_then_is_given() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "s", "secret");
    let now = SystemTime::now();
    let r = pending(call(&a, &alice(), grant("s", "app", &[Operation::Sign])));
    assert_eq!(r.action, "grant");
    assert_eq!(
        r.parameters,
        r#"{"application":"app","operations":["sign"],"until":null}"#
    );
    // Not before approval: no grant, no use.
    assert!(view(&a, "s").grants.is_empty());
    assert!(use_of(&a, "s", "app", Operation::Sign, now).is_err());
    // The requester's own approval does not count.
    refused(
        approve(&a, &alice(), &r),
        AdminErrorKind::Refused,
        "the decision is someone else's",
    );
    assert!(use_of(&a, "s", "app", Operation::Sign, now).is_err());
    // Another grant on the key while this one waits: a conflict, not a
    // second answer of this one.
    refused(
        call(&a, &alice(), grant("s", "reader", &[Operation::Verify])),
        AdminErrorKind::Conflict,
        "for another grant on kw/s is pending",
    );
    // The same grant asked again answers the pending request.
    assert_eq!(
        pending(call(&a, &bob(), grant("s", "app", &[Operation::Sign]))).id,
        r.id
    );
    approve(&a, &bob(), &r).unwrap();
    assert_eq!(status(&a, &r.id).status, ApprovalStatus::Executed);
    assert_eq!(use_of(&a, "s", "app", Operation::Sign, now), Ok(()));
    assert!(use_of(&a, "s", "app", Operation::Verify, now).is_err());
    let records = trail(&a, "grant add");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].1,
        format!(
            "application \"app\", operations [sign], no end: request {} of alice, approved by bob",
            r.id
        ),
    );
    // Removal is never under quorum.
    call(
        &a,
        &alice(),
        KeyRequest::GrantRemove {
            key: "s".into(),
            token: None,
            application: "app".into(),
        },
    )
    .unwrap();
    assert!(use_of(&a, "s", "app", Operation::Sign, now).is_err());
}

#[test]
fn a_grant_that_cannot_be_given_is_refused_before_any_request() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "s", "secret");
    refused(
        call(&a, &alice(), grant("s", "app", &[Operation::Encrypt])),
        AdminErrorKind::Refused,
        "does not fit",
    );
    refused(
        call(&a, &alice(), grant("s", "nobody", &[Operation::Sign])),
        AdminErrorKind::NotFound,
        "no application",
    );
    assert!(a
        .keys
        .inventory()
        .requests(Some(ApprovalStatus::Pending))
        .unwrap()
        .is_empty());
}

#[test]
fn grants_on_keys_that_are_not_sensitive_or_without_a_roster_are_given_at_once() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    active(&a, "k", "signing");
    match call(&a, &alice(), grant("k", "reader", &[Operation::Verify])) {
        Ok(KeyResponse::Grants(g)) => assert_eq!(g.len(), 1),
        other => panic!("{other:?}"),
    }
    let (_d2, b) = crate::agent::tests::mock_agent(CLASSES);
    let root = Admin {
        uid: 0,
        key: alice().key,
    };
    let create = KeyRequest::Create {
        name: "s".into(),
        class: "secret".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    call(&b, &root, create).unwrap();
    call(&b, &root, act("s", KeyAction::Activate)).unwrap();
    match call(&b, &root, grant("s", "app", &[Operation::Sign])) {
        Ok(KeyResponse::Grants(g)) => assert_eq!(g.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        use_of(&b, "s", "app", Operation::Sign, SystemTime::now()),
        Ok(())
    );
}

/// A window or a grant approved in the store before the agent stopped is
/// carried out at the next start, once.
#[test]
fn an_approval_recorded_before_a_stop_opens_the_window_and_gives_the_grant_once() {
    let (_d, a) = crate::agent::tests::mock_agent(&roster());
    compromised(&a, "k", "signing");
    active(&a, "s", "secret");
    let window = pending(call(&a, &alice(), recover("k", 3_600)));
    let grant = pending(call(&a, &alice(), grant("s", "app", &[Operation::Sign])));
    for r in [&window, &grant] {
        let d = keyward_inventory::DecisionRecord {
            administrator: "bob".into(),
            decision: Decision::Approve,
            signature: None,
            at: r.created_at + 1,
        };
        a.keys.inventory().decide_request(&r.id, &d, 1).unwrap();
    }
    let now = SystemTime::now();
    assert!(use_of(&a, "k", "app", Operation::Verify, now).is_err());
    assert!(use_of(&a, "s", "app", Operation::Sign, now).is_err());
    a.lifecycle.resume_approved();
    assert_eq!(use_of(&a, "k", "app", Operation::Verify, now), Ok(()));
    assert_eq!(use_of(&a, "s", "app", Operation::Sign, now), Ok(()));
    for r in [&window, &grant] {
        assert_eq!(status(&a, &r.id).status, ApprovalStatus::Executed);
    }
    a.lifecycle.resume_approved();
    assert_eq!(trail(&a, "request.execute").len(), 2);
    assert_eq!(trail(&a, "recover").len(), 1);
    assert_eq!(trail(&a, "grant add").len(), 1);
}
