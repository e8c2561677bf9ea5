//! Dual control with the in-memory backend: who may decide, what a
//! signature must cover, and that an approved action runs once.

use keyward_inventory::{Decided, DecisionRecord};
use keyward_policy::{ApprovalStatus, Decision};
use keyward_protocol::admin::ApprovalRequest;
use keyward_protocol::approval::decision_statement;

use super::test_roster::*;
use super::*;
use crate::agent::Agent;

fn alice() -> Admin {
    ed(1001, 1)
}
fn bob() -> Admin {
    ed(1002, 2)
}
fn carol() -> Admin {
    Admin {
        uid: 1003,
        key: Signer::P256(p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap()),
    }
}
fn dave() -> Admin {
    ed(1004, 4)
}
fn oscar() -> Admin {
    ed(1005, 5)
}

/// alice and bob: security officers; carol: key owner (P-256); dave:
/// auditor; oscar: operator.
fn roster_policy() -> String {
    format!(
        "{}{}{}{}{}{}",
        crate::agent::tests::STRICT_SIGNING,
        entry("alice", &alice(), "\"security-officer\""),
        entry("bob", &bob(), "\"security-officer\""),
        entry("carol", &carol(), "\"key-owner\""),
        entry("dave", &dave(), "\"auditor\""),
        entry("oscar", &oscar(), "\"operator\""),
    )
}

fn act(action: KeyAction, reason: &str) -> KeyRequest {
    KeyRequest::Transition {
        name: "k".into(),
        token: None,
        action,
        reason: Some(reason.into()),
        code: matches!(action, KeyAction::Revoke { .. } | KeyAction::Destroy)
            .then_some(keyward_policy::ReasonCode::KeyCompromise),
    }
}

/// An agent with the roster and an active key `k` made by alice.
fn agent() -> (tempfile::TempDir, Agent) {
    let (d, a) = crate::agent::tests::mock_agent(&roster_policy());
    let create = KeyRequest::Create {
        name: "k".into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    call(&a, &alice(), create).unwrap();
    call(&a, &alice(), act(KeyAction::Activate, "go")).unwrap();
    (d, a)
}

/// The request `req` opened (by `who`).
fn pending(a: &Agent, who: &Admin, req: KeyRequest) -> ApprovalRequest {
    match call(a, who, req) {
        Ok(KeyResponse::Pending(p)) => p,
        other => panic!("{other:?}"),
    }
}

fn request(a: &Agent, id: &str) -> ApprovalRequest {
    match call(a, &alice(), KeyRequest::RequestShow { id: id.into() }) {
        Ok(KeyResponse::Requests(mut r)) => r.remove(0),
        other => panic!("{other:?}"),
    }
}

fn state(a: &Agent) -> KeyState {
    a.keys.inventory().key("kw", "k").unwrap().unwrap().state
}

/// The trail's `request.execute` records: (result, reason).
fn executions(a: &Agent) -> Vec<(u64, String)> {
    a.audit.flush();
    a.audit
        .log()
        .tail(100_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.operation == "request.execute")
        .map(|r| (r.event.result, r.event.reason))
        .collect()
}

#[test]
fn a_resume_waits_for_a_signed_approval_by_someone_else_in_the_right_role() {
    let (_d, a) = agent();
    call(&a, &alice(), act(KeyAction::Suspend, "laptop stolen")).unwrap();
    let r = pending(&a, &alice(), act(KeyAction::Resume, "laptop found"));
    assert_eq!((r.requester.as_str(), r.needed), ("alice", 1));
    assert_eq!(r.parameters, r#"{"from":"suspended"}"#);
    // A forged signature: bob's name (uid), dave's key.
    let forged = dave().key.sign(&decision_statement(
        Decision::Approve,
        &r.content().digest(),
    ));
    refused(
        decide(&a, &bob(), &r.id, Decision::Approve, forged),
        AdminErrorKind::Refused,
        "signature is not valid",
    );
    // Bytes that are no signature at all.
    refused(
        decide(&a, &bob(), &r.id, Decision::Approve, vec![0; 64]),
        AdminErrorKind::Refused,
        "signature is not valid",
    );
    // bob's signature of a denial does not approve.
    refused(
        decide(
            &a,
            &bob(),
            &r.id,
            Decision::Approve,
            signed(&bob(), Decision::Deny, &r),
        ),
        AdminErrorKind::Refused,
        "signature is not valid",
    );
    // No signature with a roster.
    refused(
        call(
            &a,
            &bob(),
            KeyRequest::RequestDecide {
                id: r.id.clone(),
                decision: Decision::Approve,
                signature: None,
            },
        ),
        AdminErrorKind::Invalid,
        "needs administrator \"bob\"'s signature",
    );
    // Someone the roster does not know, even with a good signature.
    let stranger = Admin {
        uid: 4242,
        key: bob().key,
    };
    refused(
        approve(&a, &stranger, &r),
        AdminErrorKind::Refused,
        "uid 4242 is no administrator",
    );
    // The requester approving their own resume.
    refused(
        approve(&a, &alice(), &r),
        AdminErrorKind::Refused,
        "the decision is someone else's",
    );
    // Wrong roles: an operator; an auditor.
    refused(
        approve(&a, &oscar(), &r),
        AdminErrorKind::Refused,
        "holds none of the roles that decide on resume",
    );
    refused(
        approve(&a, &dave(), &r),
        AdminErrorKind::Refused,
        "holds none of the roles",
    );
    // None of that counted or changed anything.
    assert!(request(&a, &r.id).decisions.is_empty());
    assert_eq!(state(&a), KeyState::Suspended);
    assert!(executions(&a).is_empty());
    // carol, a key owner, approves with her P-256 key: done.
    let after = match approve(&a, &carol(), &r) {
        Ok(KeyResponse::Requests(mut v)) => v.remove(0),
        other => panic!("{other:?}"),
    };
    assert_eq!(after.status, ApprovalStatus::Executed, "{after:?}");
    assert_eq!(after.decisions.len(), 1);
    assert_eq!(after.decisions[0].administrator, "carol");
    assert_eq!(state(&a), KeyState::Active);
    let history = a
        .keys
        .inventory()
        .history(a.keys.inventory().key("kw", "k").unwrap().unwrap().id)
        .unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.actor, "alice, approved by carol");
    assert!(
        last.reason
            .contains(&format!("laptop found (request {})", r.id)),
        "{last:?}"
    );
    let ex = executions(&a);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].0, 0);
    assert!(
        ex[0]
            .1
            .starts_with(&format!("request {}: resume kw/k: executed", r.id)),
        "{ex:?}"
    );
    // Once executed, no decision counts; the same approval again neither.
    refused(
        approve(&a, &carol(), &r),
        AdminErrorKind::Conflict,
        "is executed",
    );
    refused(
        approve(&a, &bob(), &r),
        AdminErrorKind::Conflict,
        "is executed",
    );
    assert_eq!(executions(&a).len(), 1);
}

#[test]
fn an_approval_cannot_be_replayed_onto_another_request() {
    let (_d, a) = agent();
    call(&a, &alice(), act(KeyAction::Suspend, "stolen")).unwrap();
    let first = pending(&a, &alice(), act(KeyAction::Resume, "found"));
    let bobs = signed(&bob(), Decision::Approve, &first);
    // The first request goes away; a second, like it, is opened.
    call(
        &a,
        &alice(),
        KeyRequest::RequestCancel {
            id: first.id.clone(),
            reason: Some("typo".into()),
        },
    )
    .unwrap();
    let second = pending(&a, &alice(), act(KeyAction::Resume, "found"));
    assert_ne!(first.id, second.id);
    refused(
        decide(&a, &bob(), &second.id, Decision::Approve, bobs.clone()),
        AdminErrorKind::Refused,
        "signature is not valid",
    );
    refused(
        decide(&a, &bob(), &first.id, Decision::Approve, bobs),
        AdminErrorKind::Conflict,
        "is cancelled",
    );
    assert_eq!(state(&a), KeyState::Suspended);
    let first = request(&a, &first.id);
    assert_eq!(first.status, ApprovalStatus::Cancelled);
    assert_eq!(first.outcome, "cancelled by alice: typo");
}

#[test]
fn a_destroy_takes_two_officers_and_the_requester_may_be_one() {
    let (_d, a) = agent();
    let r = pending(&a, &alice(), act(KeyAction::Destroy, "retired"));
    assert_eq!(r.needed, 2);
    // A key owner holds no role that decides on a destroy.
    refused(
        approve(&a, &carol(), &r),
        AdminErrorKind::Refused,
        "holds none",
    );
    // alice (the requester) counts here; one approval is not two.
    match approve(&a, &alice(), &r) {
        Ok(KeyResponse::Requests(v)) => assert_eq!(v[0].status, ApprovalStatus::Pending),
        other => panic!("{other:?}"),
    }
    // alice again: counted once.
    refused(
        approve(&a, &alice(), &r),
        AdminErrorKind::Conflict,
        "decided on request",
    );
    assert_eq!(state(&a), KeyState::Active);
    approve(&a, &bob(), &r).unwrap();
    assert_eq!(state(&a), KeyState::Destroyed);
    let r = request(&a, &r.id);
    assert_eq!(r.status, ApprovalStatus::Executed);
    let who: Vec<_> = r
        .decisions
        .iter()
        .map(|d| d.administrator.as_str())
        .collect();
    assert_eq!(who, ["alice", "bob"]);
}

#[test]
fn a_denial_ends_the_request_and_cancel_is_the_requesters_or_an_officers() {
    let (_d, a) = agent();
    call(&a, &alice(), act(KeyAction::Suspend, "stolen")).unwrap();
    let r = pending(&a, &alice(), act(KeyAction::Resume, "found"));
    // carol may not cancel alice's request; bob (an officer) could.
    refused(
        call(
            &a,
            &carol(),
            KeyRequest::RequestCancel {
                id: r.id.clone(),
                reason: None,
            },
        ),
        AdminErrorKind::Refused,
        "only they or a security officer",
    );
    let deny = signed(&carol(), Decision::Deny, &r);
    match decide(&a, &carol(), &r.id, Decision::Deny, deny) {
        Ok(KeyResponse::Requests(v)) => {
            assert_eq!(v[0].status, ApprovalStatus::Denied);
            assert_eq!(v[0].outcome, "denied by carol");
        }
        other => panic!("{other:?}"),
    }
    refused(
        approve(&a, &bob(), &r),
        AdminErrorKind::Conflict,
        "is denied",
    );
    assert_eq!(state(&a), KeyState::Suspended);
    // A new request may be opened after a denial.
    let again = pending(&a, &alice(), act(KeyAction::Resume, "found, really"));
    assert_ne!(again.id, r.id);
    call(
        &a,
        &bob(),
        KeyRequest::RequestCancel {
            id: again.id.clone(),
            reason: None,
        },
    )
    .unwrap();
    assert_eq!(request(&a, &again.id).outcome, "cancelled by bob");
}

#[test]
fn an_expired_request_takes_no_decision() {
    let (_d, a) = agent();
    call(&a, &alice(), act(KeyAction::Suspend, "stolen")).unwrap();
    let r = pending(&a, &alice(), act(KeyAction::Resume, "found"));
    let late = std::time::UNIX_EPOCH + Duration::from_secs(r.expires_at as u64 + 1);
    let e = a
        .lifecycle
        .decide(
            &peer(&bob()),
            &r.id,
            Decision::Approve,
            Some(&signed(&bob(), Decision::Approve, &r)),
            late,
        )
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::Conflict, "{}", e.message);
    assert!(e.message.contains("is expired"), "{}", e.message);
    assert_eq!(request(&a, &r.id).status, ApprovalStatus::Expired);
    assert_eq!(state(&a), KeyState::Suspended);
    // The scheduler closes what expires unapproved, and says so.
    let r2 = pending(&a, &alice(), act(KeyAction::Resume, "found again"));
    a.lifecycle
        .tick(std::time::UNIX_EPOCH + Duration::from_secs(r2.expires_at as u64 - 1));
    assert_eq!(request(&a, &r2.id).status, ApprovalStatus::Pending);
    a.lifecycle
        .tick(std::time::UNIX_EPOCH + Duration::from_secs(r2.expires_at as u64));
    let r2 = request(&a, &r2.id);
    assert_eq!(
        (r2.status, r2.outcome.as_str()),
        (ApprovalStatus::Expired, "not approved in time")
    );
    a.audit.flush();
    let expiries = a
        .audit
        .log()
        .tail(1000)
        .unwrap()
        .into_iter()
        .filter(|x| x.event.operation == "request.expire")
        .count();
    assert_eq!(expiries, 1);
}

#[test]
fn concurrent_approvals_carry_the_action_out_once() {
    for _ in 0..4 {
        let (_d, a) = agent();
        let r = pending(&a, &alice(), act(KeyAction::Destroy, "retired"));
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<AResult<KeyResponse>> = std::thread::scope(|s| {
            let handles: Vec<_> = [alice(), bob()]
                .into_iter()
                .map(|who| {
                    let (a, r, barrier) = (&a, &r, &barrier);
                    s.spawn(move || {
                        let sig = signed(&who, Decision::Approve, r);
                        barrier.wait();
                        decide(a, &who, &r.id, Decision::Approve, sig)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(state(&a), KeyState::Destroyed);
        assert_eq!(request(&a, &r.id).status, ApprovalStatus::Executed);
        assert_eq!(executions(&a).len(), 1, "{:?}", executions(&a));
    }
}

#[test]
fn an_approval_recorded_before_a_stop_is_carried_out_once_at_the_next_start() {
    let (_d, a) = agent();
    call(&a, &alice(), act(KeyAction::Suspend, "stolen")).unwrap();
    let r = pending(&a, &alice(), act(KeyAction::Resume, "found"));
    // The quorum is met in the store, and the agent stops before it acts.
    let d = DecisionRecord {
        administrator: "bob".into(),
        decision: Decision::Approve,
        signature: Some(signed(&bob(), Decision::Approve, &r)),
        at: r.created_at + 1,
    };
    assert_eq!(
        a.keys.inventory().decide_request(&r.id, &d, 1).unwrap(),
        Decided::Approved { approvals: 1 }
    );
    assert_eq!(state(&a), KeyState::Suspended);
    a.lifecycle.resume_approved();
    assert_eq!(state(&a), KeyState::Active);
    assert_eq!(request(&a, &r.id).status, ApprovalStatus::Executed);
    a.lifecycle.resume_approved();
    let ex = executions(&a);
    assert_eq!(ex.len(), 1, "{ex:?}");
    // An approved request whose action can no longer be taken as approved
    // (the key left the state since) fails, and says so.
    call(&a, &alice(), act(KeyAction::Suspend, "stolen again")).unwrap();
    let r2 = pending(&a, &alice(), act(KeyAction::Resume, "found again"));
    let d2 = DecisionRecord {
        signature: Some(signed(&bob(), Decision::Approve, &r2)),
        ..d
    };
    a.keys.inventory().decide_request(&r2.id, &d2, 1).unwrap();
    call(
        &a,
        &alice(),
        act(KeyAction::Revoke { rotate: false }, "gone"),
    )
    .unwrap();
    a.lifecycle.resume_approved();
    let r2 = request(&a, &r2.id);
    assert_eq!(r2.status, ApprovalStatus::Failed);
    assert!(r2.outcome.contains("is compromised now"), "{}", r2.outcome);
    assert_eq!(state(&a), KeyState::Compromised);
    let ex = executions(&a);
    assert_eq!(ex.len(), 2);
    assert_ne!(ex[1].0, 0);
    assert!(ex[1].1.contains("failed"), "{ex:?}");
}

#[test]
fn without_a_roster_one_unsigned_approval_carries_the_action_out() {
    let (_d, a) = crate::agent::tests::mock_agent(crate::agent::tests::STRICT_SIGNING);
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
    call(&a, &root, act(KeyAction::Activate, "go")).unwrap();
    call(&a, &root, act(KeyAction::Suspend, "x")).unwrap();
    let r = pending(&a, &root, act(KeyAction::Resume, "y"));
    assert_eq!((r.requester.as_str(), r.needed), ("uid:0", 0));
    // A signature means nothing without a roster: said, not ignored.
    refused(
        approve(&a, &root, &r),
        AdminErrorKind::Invalid,
        "the policy has no roster",
    );
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
    assert_eq!(state(&a), KeyState::Active);
}

// ---- the policy under dual control -----------------------------------------

use super::governance::{Admission, PolicyFile};

/// An agent whose policy in force is the roster policy, read from a file
/// in its state directory; the file's path.
fn agent_with_policy_file() -> (tempfile::TempDir, Agent, std::path::PathBuf) {
    let (d, a) = agent();
    let path = d.path().join("policy.toml");
    std::fs::write(&path, roster_policy()).unwrap();
    let file = PolicyFile::new(&path, roster_policy());
    let policy = file.parse().unwrap();
    assert!(matches!(
        a.lifecycle
            .admit_policy_file(&file, &policy, SystemTime::now()),
        Admission::Admitted
    ));
    a.lifecycle.policy_in_force(file);
    (d, a, path)
}

fn apply(a: &Agent, who: &Admin, text: &str) -> AResult<KeyResponse> {
    call(
        a,
        who,
        KeyRequest::PolicyApply {
            text: text.into(),
            reason: Some("add a class".into()),
        },
    )
}

/// The roster policy with one more key class.
fn next_policy() -> String {
    format!(
        "{}\n[[class]]\nname = \"extra\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\nprotect_period = \"30d\"\nprocess_period = \"60d\"\n",
        roster_policy()
    )
}

#[test]
fn a_policy_change_waits_for_its_quorum_and_shows_its_difference() {
    let (_d, a, path) = agent_with_policy_file();
    // Not valid: refused with the policy's own error, nothing recorded.
    refused(
        apply(&a, &alice(), "[settings]\nmode = \"sloppy\"\n"),
        AdminErrorKind::Invalid,
        "the new policy is not valid",
    );
    refused(
        apply(&a, &alice(), &roster_policy()),
        AdminErrorKind::Conflict,
        "in force already",
    );
    let r = match apply(&a, &alice(), &next_policy()) {
        Ok(KeyResponse::Pending(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((r.action.as_str(), r.needed), ("policy-apply", 2));
    let p: serde_json::Value = serde_json::from_str(&r.parameters).unwrap();
    let diff = p["diff"].as_str().unwrap();
    assert!(diff.contains("+name = \"extra\""), "{diff}");
    assert_eq!(p["text"], next_policy());
    // Nothing changed yet.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), roster_policy());
    assert!(a.policy().class("extra").is_none());
    // A key owner holds no role for policy-apply; the requester counts.
    refused(
        approve(&a, &carol(), &r),
        AdminErrorKind::Refused,
        "holds none",
    );
    approve(&a, &alice(), &r).unwrap();
    assert!(a.policy().class("extra").is_none());
    approve(&a, &bob(), &r).unwrap();
    assert!(a.policy().class("extra").is_some());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), next_policy());
    let done = request(&a, &r.id);
    assert_eq!(done.status, ApprovalStatus::Executed, "{done:?}");
    assert!(done.outcome.contains("now sha256"), "{}", done.outcome);
    // The new policy is the approved one now: the same file passes, an
    // edit made outside keyward does not.
    let now = PolicyFile::new(&path, next_policy());
    assert!(matches!(
        a.lifecycle
            .admit_policy_file(&now, &now.parse().unwrap(), SystemTime::now()),
        Admission::Admitted
    ));
}

#[test]
fn a_policy_file_edited_outside_keyward_does_not_take_effect() {
    let (_d, a, path) = agent_with_policy_file();
    // root edits the file: the roster loses bob and gains mallory's key.
    let edited = roster_policy().replace("name = \"bob\"", "name = \"mallory\"");
    std::fs::write(&path, &edited).unwrap();
    let file = PolicyFile::new(&path, edited);
    let policy = file.parse().unwrap();
    match a
        .lifecycle
        .admit_policy_file(&file, &policy, SystemTime::now())
    {
        Admission::Refused(kept) => {
            let (kept, p) = *kept;
            assert_eq!(kept.text, roster_policy());
            assert!(p.administrator("bob").is_some());
        }
        other => panic!("{other:?}"),
    }
    a.audit.flush();
    let refusals: Vec<String> = a
        .audit
        .log()
        .tail(1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.operation == "refuse")
        .map(|r| r.event.reason)
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("changed outside `keyward policy apply`"),
        "{refusals:?}"
    );
}

#[test]
fn a_policy_without_a_roster_changes_at_once_and_does_not_guard_its_file() {
    let (d, a) = crate::agent::tests::mock_agent(crate::agent::tests::STRICT_SIGNING);
    let path = d.path().join("policy.toml");
    std::fs::write(&path, crate::agent::tests::STRICT_SIGNING).unwrap();
    let file = PolicyFile::new(&path, crate::agent::tests::STRICT_SIGNING.to_owned());
    let policy = file.parse().unwrap();
    assert!(matches!(
        a.lifecycle
            .admit_policy_file(&file, &policy, SystemTime::now()),
        Admission::Admitted
    ));
    a.lifecycle.policy_in_force(file);
    let root = Admin {
        uid: 0,
        key: alice().key,
    };
    // Adding a roster: at once (there is nobody yet to approve).
    let with_roster = roster_policy();
    match apply(&a, &root, &with_roster) {
        Ok(KeyResponse::Done(text)) => assert!(text.contains("now sha256"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(a.policy().dual_control());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), with_roster);
    // From now on, root (no administrator) may not even ask: the admin
    // socket refuses it before the request reaches the lifecycle.
    let ask = keyward_protocol::admin::AdminRequest::Key(KeyRequest::PolicyApply {
        text: next_policy(),
        reason: None,
    });
    match a.refuse_admin(&peer(&root), &ask) {
        Some(keyward_protocol::admin::AdminResponse::KeyErr { message, .. }) => {
            assert!(message.contains("uid 0 is no administrator"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // An operator may not ask for a policy change either.
    assert!(a.refuse_admin(&peer(&oscar()), &ask).is_some());
    assert!(a.refuse_admin(&peer(&alice()), &ask).is_none());
}

#[test]
fn init_sets_up_dual_control_once() {
    let (d, a) = crate::agent::tests::mock_agent(crate::agent::tests::STRICT_SIGNING);
    let path = d.path().join("policy.toml");
    std::fs::write(&path, crate::agent::tests::STRICT_SIGNING).unwrap();
    let file = PolicyFile::new(&path, crate::agent::tests::STRICT_SIGNING.to_owned());
    let policy = file.parse().unwrap();
    a.lifecycle
        .admit_policy_file(&file, &policy, SystemTime::now());
    a.lifecycle.policy_in_force(file);
    let root = Admin {
        uid: 0,
        key: alice().key,
    };
    let init = |text: &str| {
        call(
            &a,
            &root,
            KeyRequest::Init {
                text: text.into(),
                reason: Some("go live".into()),
            },
        )
    };
    // A policy without a roster sets up nothing.
    refused(
        init(crate::agent::tests::STRICT_SIGNING),
        AdminErrorKind::Invalid,
        "needs its [[administrator]] roster",
    );
    match init(&roster_policy()) {
        Ok(KeyResponse::Done(text)) => assert!(text.contains("now sha256"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(a.policy().dual_control());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), roster_policy());
    // Once: a second init (even by an administrator) is refused.
    refused(
        call(
            &a,
            &alice(),
            KeyRequest::Init {
                text: next_policy(),
                reason: None,
            },
        ),
        AdminErrorKind::Conflict,
        "dual control is set up already",
    );
    assert!(a.policy().class("extra").is_none());
    // And the file it wrote is the approved one: a hand edit is refused.
    let edited = PolicyFile::new(&path, next_policy());
    assert!(matches!(
        a.lifecycle
            .admit_policy_file(&edited, &edited.parse().unwrap(), SystemTime::now()),
        Admission::Refused(_)
    ));
}
