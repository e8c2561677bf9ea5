//! The lifecycle executors with the in-memory backend.

use super::*;
use crate::agent::Agent;
use crate::objects::unmanaged_name;
use keyward_inventory::KeyFilter;
use keyward_policy::ReasonCode;

const POLICY: &str = crate::agent::tests::STRICT_SIGNING;

fn agent() -> (tempfile::TempDir, Agent) {
    crate::agent::tests::mock_agent(POLICY)
}

#[test]
fn an_unmanaged_object_is_named_by_label_then_id_and_never_at_length() {
    assert_eq!(unmanaged_name(b"web", b"\x01").as_deref(), Some("web"));
    assert_eq!(unmanaged_name(b"", b"\x01\xab").as_deref(), Some("id:01ab"));
    assert_eq!(unmanaged_name(b"", b""), None);
    let long = vec![b'x'; 100_000];
    assert_eq!(
        unmanaged_name(&long, b"").map(|n| n.len()),
        Some(crate::objects::MAX_NAME)
    );
    assert_eq!(
        unmanaged_name(b"", &long).map(|n| n.len()),
        Some(3 + crate::objects::MAX_NAME)
    );
}

fn admin() -> Peer {
    crate::agent::tests::admin_peer()
}

fn call(a: &Agent, req: KeyRequest) -> AResult<KeyResponse> {
    a.lifecycle.key_call(&admin(), req)
}

fn create(name: &str, class: &str) -> KeyRequest {
    KeyRequest::Create {
        name: name.into(),
        class: class.into(),
        algorithm: None,
        token: None,
        owner: None,
    }
}

fn act(name: &str, action: KeyAction) -> KeyRequest {
    KeyRequest::Transition {
        name: name.into(),
        token: None,
        action,
        reason: matches!(
            action,
            KeyAction::Suspend | KeyAction::Revoke { .. } | KeyAction::Destroy
        )
        .then(|| "test".into()),
        code: matches!(action, KeyAction::Revoke { .. } | KeyAction::Destroy)
            .then_some(keyward_policy::ReasonCode::KeyCompromise),
    }
}

#[test]
fn create_refusals_and_approvals() {
    let (_d, a) = agent();
    let Ok(KeyResponse::Key(k)) = call(&a, create("k", "signing")) else {
        panic!()
    };
    assert_eq!(
        (k.state.as_str(), k.owner.as_str()),
        ("pre-activation", "uid:0")
    );
    assert_eq!(
        call(&a, create("k", "signing")).unwrap_err().kind,
        AdminErrorKind::Conflict
    );
    assert_eq!(
        call(&a, create("k2", "nope")).unwrap_err().kind,
        AdminErrorKind::NotFound
    );
    call(&a, act("k", KeyAction::Activate)).unwrap();
    call(&a, act("k", KeyAction::Suspend)).unwrap();
    let Ok(KeyResponse::Pending(p)) = call(&a, act("k", KeyAction::Resume)) else {
        panic!()
    };
    let stored = a.keys.inventory().request(&p.id).unwrap().unwrap();
    assert_eq!(stored.status, keyward_policy::ApprovalStatus::Pending);
    assert_eq!(stored.target, "kw/k");
    // The reason is kept with the request, and asking again while it is
    // pending answers the same request rather than a second one.
    assert_eq!(stored.reason, "keyward key resume");
    assert_eq!(stored.parameters, r#"{"from":"suspended"}"#);
    let Ok(KeyResponse::Pending(again)) = call(&a, act("k", KeyAction::Resume)) else {
        panic!()
    };
    assert_eq!(again.id, p.id);
    let open = a
        .keys
        .inventory()
        .requests(Some(keyward_policy::ApprovalStatus::Pending))
        .unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    let k = a.keys.key(stored.key_id.unwrap()).unwrap();
    assert_eq!(k.record.state, KeyState::Suspended);
    // revoke --rotate only from active.
    assert_eq!(
        call(&a, act("k", KeyAction::Revoke { rotate: true }))
            .unwrap_err()
            .kind,
        AdminErrorKind::Refused
    );
    // Grants: unknown application, wrong purpose (an unknown operation
    // does not make a request: it is not an Operation).
    let grant = |app: &str, op: &str| KeyRequest::GrantAdd {
        key: "k".into(),
        token: None,
        application: app.into(),
        operations: vec![op.parse().unwrap()],
        until: None,
    };
    assert_eq!(
        call(&a, grant("x", "sign")).unwrap_err().kind,
        AdminErrorKind::NotFound
    );
    assert!("frob".parse::<keyward_policy::Operation>().is_err());
    assert_eq!(
        call(&a, grant("app", "decrypt")).unwrap_err().kind,
        AdminErrorKind::Refused
    );
    call(&a, grant("app", "sign")).unwrap();
    assert_eq!(a.keys.key(k.record.id).unwrap().grants.len(), 1);
}

#[test]
fn a_new_key_name_follows_the_rule_in_the_agent_too() {
    let (_d, a) = agent();
    let rule =
        "use letters, digits, '-', '_' and '.', 1-64 characters, starting with a letter or digit";
    let long = "k".repeat(65);
    for bad in ["a/b;object=x", "", "-k", "a b", long.as_str()] {
        let e = call(&a, create(bad, "signing")).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid, "{bad:?}");
        assert_eq!(e.message, format!("key name {bad:?}: {rule}"));
        let adopt = KeyRequest::Adopt {
            token: None,
            backend_id: vec![1],
            name: bad.into(),
            class: "signing".into(),
        };
        let e = call(&a, adopt).unwrap_err();
        assert_eq!(
            (e.kind, e.message),
            (AdminErrorKind::Invalid, format!("key name {bad:?}: {rule}"))
        );
    }
    let keys = a.keys.inventory().keys(&KeyFilter::default()).unwrap();
    assert!(keys.is_empty(), "nothing recorded: {keys:?}");
    let Ok(KeyResponse::Key(k)) = call(&a, create("k.v2_x-1", "signing")) else {
        panic!()
    };
    assert_eq!(k.name, "k.v2_x-1");
}

#[test]
fn an_unknown_key_has_one_message() {
    assert_eq!(no_key_message("x", ["kw"]), r#"no key "x" on token "kw""#);
    assert_eq!(
        no_key_message("x", ["a", "b"]),
        r#"no key "x" on any of the tokens "a", "b""#
    );
    let (_d, a) = agent();
    let e = call(&a, act("nosuch", KeyAction::Activate)).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (AdminErrorKind::NotFound, r#"no key "nosuch" on token "kw""#)
    );
}

/// Dates set in the store through the Inventory API, `tick` at now.
#[test]
fn tick_acts_on_dates_in_the_store() {
    let (_d, a) = agent();
    call(&a, create("rot", "signing")).unwrap();
    call(&a, create("old", "signing")).unwrap();
    call(&a, act("rot", KeyAction::Activate)).unwrap();
    call(&a, act("old", KeyAction::Activate)).unwrap();
    let now = SystemTime::now();
    let past = secs(now) - 10;
    let id = |name: &str| a.keys.inventory().key("kw", name).unwrap().unwrap().id;
    let set = |key: i64, dates: DateUpdates| {
        let state = a.keys.key(key).unwrap().record.state;
        a.keys
            .inventory()
            .apply(&LifecycleChange {
                key: KeyChange::Update {
                    key_id: key,
                    expected: state,
                    to: None,
                    code: None,
                },
                versions: Vec::new(),
                dates,
                actor: "test".into(),
                reason: "dates".into(),
                at: secs(now),
                trail: Vec::new(),
            })
            .unwrap();
        a.keys.refresh(key).unwrap();
    };
    set(
        id("rot"),
        DateUpdates {
            next_rotation: Some(past),
            ..Default::default()
        },
    );
    set(
        id("old"),
        DateUpdates {
            protect_until: Some(past),
            ..Default::default()
        },
    );
    a.lifecycle.tick(now);
    let rot = a.keys.key(id("rot")).unwrap();
    assert_eq!(rot.versions.len(), 2);
    assert_eq!(rot.versions[0].state, KeyState::Deactivated);
    assert_eq!(rot.versions[1].state, KeyState::Active);
    assert!(rot.record.next_rotation.unwrap() > secs(now));
    let old = a.keys.key(id("old")).unwrap();
    assert_eq!(old.record.state, KeyState::Deactivated);
    assert_eq!(old.versions.len(), 1);
    a.lifecycle.tick(now);
    assert_eq!(a.keys.key(id("rot")).unwrap().versions.len(), 2);
}

/// The state a lifecycle record's reason (`from X to Y: why`, written
/// for people) names as reached.
fn reason_to(reason: &str) -> Option<&str> {
    let (_, rest) = reason.strip_prefix("from ")?.split_once(" to ")?;
    Some(rest.split_once(':').map_or(rest, |(to, _)| to))
}

/// What the trail's `lifecycle` records say of every key: its state
/// and each version's, replayed from `from X to Y` in trail order.
fn replayed(a: &Agent) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let records = a
        .audit
        .log()
        .query(&keyward_inventory::AuditFilter {
            kinds: vec![keyward_inventory::AuditKind::Lifecycle],
            ..Default::default()
        })
        .unwrap();
    let mut keys = std::collections::BTreeMap::new();
    for r in records {
        let e = r.event;
        let to = reason_to(&e.reason).unwrap().to_owned();
        let entry = keys
            .entry(e.key.unwrap())
            .or_insert_with(|| (String::new(), Vec::new()));
        match e.key_version {
            None => entry.0 = to,
            Some(v) => {
                let i = v as usize - 1;
                if entry.1.len() <= i {
                    entry.1.resize(i + 1, "none".to_owned());
                }
                entry.1[i] = to;
            }
        }
    }
    keys
}

/// What the inventory says of every key, in the same form.
fn stored(a: &Agent) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let inv = a.keys.inventory();
    inv.keys(&KeyFilter::default())
        .unwrap()
        .into_iter()
        .map(|k| {
            let versions = inv.versions(k.id).unwrap();
            let states = versions.iter().map(|v| v.state.to_string()).collect();
            (k.name.clone(), (k.state.to_string(), states))
        })
        .collect()
}

/// Every kind of lifecycle change (create, transitions, rotation,
/// emergency rotation, the scheduler's) writes its records with it:
/// the trail alone tells each key's state and versions, one record per
/// history row, and the chain verifies.
#[test]
fn every_lifecycle_change_carries_its_records() {
    let (_d, a) = agent();
    call(&a, create("a", "signing")).unwrap();
    call(&a, act("a", KeyAction::Activate)).unwrap();
    call(
        &a,
        KeyRequest::Rotate {
            name: "a".into(),
            token: None,
        },
    )
    .unwrap();
    call(&a, act("a", KeyAction::Revoke { rotate: true })).unwrap();
    call(&a, create("b", "signing")).unwrap();
    call(&a, act("b", KeyAction::Activate)).unwrap();
    call(&a, act("b", KeyAction::Suspend)).unwrap();
    call(&a, act("b", KeyAction::Revoke { rotate: false })).unwrap();
    call(&a, create("c", "signing")).unwrap();
    call(&a, act("c", KeyAction::Activate)).unwrap();
    let id = a.keys.inventory().key("kw", "c").unwrap().unwrap().id;
    let now = SystemTime::now();
    a.keys
        .inventory()
        .apply(&LifecycleChange {
            key: KeyChange::Update {
                key_id: id,
                expected: KeyState::Active,
                to: None,
                code: None,
            },
            versions: Vec::new(),
            dates: DateUpdates {
                next_rotation: Some(secs(now) - 1),
                ..Default::default()
            },
            actor: "test".into(),
            reason: "due".into(),
            at: secs(now),
            trail: Vec::new(),
        })
        .unwrap();
    a.keys.refresh(id).unwrap();
    a.lifecycle.tick(now);

    let stored = stored(&a);
    assert_eq!(
        stored["a"],
        (
            "active".to_owned(),
            vec![
                "compromised".to_owned(),
                "compromised".into(),
                "active".into()
            ]
        )
    );
    assert_eq!(
        stored["c"].1,
        ["deactivated", "active"],
        "the scheduler rotated"
    );
    assert_eq!(
        replayed(&a),
        stored,
        "the trail tells what the inventory holds"
    );
    let trail = a
        .audit
        .log()
        .query(&keyward_inventory::AuditFilter {
            kinds: vec![keyward_inventory::AuditKind::Lifecycle],
            ..Default::default()
        })
        .unwrap();
    let rows: usize = a
        .keys
        .inventory()
        .keys(&KeyFilter::default())
        .unwrap()
        .iter()
        .map(|k| a.keys.inventory().history(k.id).unwrap().len())
        .sum();
    assert_eq!(trail.len(), rows, "one record per history row");
    let scheduled: Vec<_> = trail
        .iter()
        .filter(|r| r.event.actor == Actor::Scheduler)
        .map(|r| (r.event.key.as_deref(), r.event.operation.as_str()))
        .collect();
    assert_eq!(scheduled, [(Some("c"), "rotate"), (Some("c"), "rotate")]);
    let emergency: Vec<_> = trail
        .iter()
        .filter(|r| r.event.reason.contains("emergency rotation to version 3"))
        .map(|r| (r.event.key_version, r.event.operation.as_str()))
        .collect();
    assert_eq!(emergency, [(None, "revoke"), (Some(3), "revoke")]);
    assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
    assert!(a.audit.stats().records >= trail.len() as u64);
}

/// A lifecycle change whose trail records cannot be written does not
/// happen: the administrator gets a clear error and the key, its
/// versions and its history are as before (the request itself is
/// recorded; only lifecycle records are refused here).
#[test]
fn a_change_whose_records_cannot_be_written_does_not_happen() {
    let (d, a) = agent();
    call(&a, create("k", "signing")).unwrap();
    call(&a, act("k", KeyAction::Activate)).unwrap();
    let id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
    let snapshot = |a: &Agent| {
        let inv = a.keys.inventory();
        (
            inv.key_by_id(id).unwrap(),
            inv.versions(id).unwrap(),
            inv.history(id).unwrap(),
            a.keys.key(id).unwrap().record.state,
        )
    };
    let before = snapshot(&a);
    let db = rusqlite::Connection::open(d.path().join("inventory.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER jam BEFORE INSERT ON audit WHEN NEW.kind = 'lifecycle'
         BEGIN SELECT RAISE(ABORT, 'no lifecycle records'); END;",
    )
    .unwrap();
    let requests = [
        act("k", KeyAction::Suspend),
        act("k", KeyAction::Revoke { rotate: false }),
        act("k", KeyAction::Revoke { rotate: true }),
        KeyRequest::Rotate {
            name: "k".into(),
            token: None,
        },
        create("new", "signing"),
    ];
    for req in requests {
        let what = format!("{req:?}");
        match a.lifecycle.key_request(&admin(), req) {
            AdminResponse::KeyErr { kind, message } => {
                assert_eq!(kind, AdminErrorKind::Failed, "{what}: {message}");
                assert!(message.contains("audit records"), "{what}: {message}");
                assert!(message.contains("nothing changed"), "{what}: {message}");
            }
            other => panic!("{what}: the change happened: {other:?}"),
        }
        assert_eq!(snapshot(&a), before, "{what}");
    }
    assert!(a.keys.inventory().key("kw", "new").unwrap().is_none());
    db.execute_batch("DROP TRIGGER jam;").unwrap();
    call(&a, act("k", KeyAction::Suspend)).unwrap();
    assert_eq!(replayed(&a), stored(&a));
    assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
}

/// A revocation whose last version was changed by someone else since
/// the agent looked is refused as a whole: the key and its other
/// versions are not left compromised with the last one behind, and no
/// record tells of a change that did not happen.
#[test]
fn a_change_racing_another_is_all_or_nothing() {
    let (d, a) = agent();
    call(&a, create("k", "signing")).unwrap();
    call(&a, act("k", KeyAction::Activate)).unwrap();
    call(
        &a,
        KeyRequest::Rotate {
            name: "k".into(),
            token: None,
        },
    )
    .unwrap();
    let id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
    // Another writer moved version 2 behind the agent's view.
    let db = rusqlite::Connection::open(d.path().join("inventory.sqlite")).unwrap();
    db.execute(
        "UPDATE key_versions SET state = 'suspended' WHERE key_id = ?1 AND version = 2",
        [id],
    )
    .unwrap();
    let inv = a.keys.inventory();
    let before = (
        inv.key_by_id(id).unwrap(),
        inv.versions(id).unwrap(),
        inv.history(id).unwrap(),
    );
    let records = replayed(&a);
    let err = call(&a, act("k", KeyAction::Revoke { rotate: false })).unwrap_err();
    assert_eq!(err.kind, AdminErrorKind::Conflict, "{}", err.message);
    assert!(err.message.contains("version 2"), "{}", err.message);
    let after = (
        inv.key_by_id(id).unwrap(),
        inv.versions(id).unwrap(),
        inv.history(id).unwrap(),
    );
    assert_eq!(after, before, "nothing of the revocation is kept");
    assert_eq!(replayed(&a), records, "no record of it either");
    assert_eq!(a.keys.key(id).unwrap().record.state, KeyState::Active);
}

fn coded(action: KeyAction, reason: Option<&str>, code: Option<ReasonCode>) -> KeyRequest {
    KeyRequest::Transition {
        name: "k".into(),
        token: None,
        action,
        reason: reason.map(Into::into),
        code,
    }
}

/// The lifecycle records of key "k" in the trail: (operation, reason).
fn trail_of_k(a: &Agent) -> Vec<(String, String)> {
    a.audit.flush();
    a.audit
        .log()
        .tail(100_000)
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.event.kind == keyward_inventory::AuditKind::Lifecycle
                && r.event.key.as_deref() == Some("k")
        })
        .map(|r| (r.event.operation, r.event.reason))
        .collect()
}

#[test]
fn suspend_revoke_and_destroy_need_a_reason_and_keep_their_code() {
    use KeyAction::{Activate, Deactivate, Destroy, Revoke, Suspend};
    let (_d, a) = agent();
    call(&a, create("k", "signing")).unwrap();
    call(&a, act("k", Activate)).unwrap();
    let history = |a: &Agent| {
        let k = a.keys.inventory().key("kw", "k").unwrap().unwrap();
        a.keys.inventory().history(k.id).unwrap()
    };
    let before = (history(&a).len(), trail_of_k(&a).len());
    let revoke = Revoke { rotate: false };
    let kc = Some(ReasonCode::KeyCompromise);
    for (req, says) in [
        (coded(Suspend, None, None), "needs a reason"),
        (coded(Suspend, Some(""), None), "needs a reason"),
        (coded(revoke, Some(" \t\n"), kc), "needs a reason"),
        (coded(Destroy, None, kc), "needs a reason"),
        (
            coded(revoke, Some("leak"), None),
            "needs an RFC 5280 reason code",
        ),
        (
            coded(Destroy, Some("old"), None),
            "needs an RFC 5280 reason code",
        ),
        (
            coded(revoke, Some("leak"), Some(ReasonCode::CertificateHold)),
            "certificateHold is a suspension's code",
        ),
        (
            coded(Deactivate, Some("done"), Some(ReasonCode::Superseded)),
            "takes no reason code",
        ),
    ] {
        let e = call(&a, req.clone()).unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Invalid, "{req:?}: {}", e.message);
        assert!(e.message.contains(says), "{req:?}: {}", e.message);
    }
    // Nothing moved, nothing was recorded.
    let k = a.keys.inventory().key("kw", "k").unwrap().unwrap();
    assert_eq!((k.state, k.reason_code), (KeyState::Active, None));
    assert_eq!((history(&a).len(), trail_of_k(&a).len()), before);

    // A suspension without a code is on hold.
    let Ok(KeyResponse::Key(info)) = call(&a, coded(Suspend, Some("holiday"), None)) else {
        panic!()
    };
    assert_eq!(info.reason_code, Some(ReasonCode::CertificateHold));
    assert_eq!(
        history(&a).last().map(|h| h.reason.as_str()),
        Some("code=certificateHold; holiday")
    );
    // A revocation keeps its code: on the key, in its history, in the trail.
    let Ok(KeyResponse::Key(info)) = call(&a, coded(revoke, Some("laptop stolen"), kc)) else {
        panic!()
    };
    assert_eq!((info.state, info.reason_code), (KeyState::Compromised, kc));
    assert_eq!(
        history(&a).last().map(|h| h.reason.as_str()),
        Some("code=keyCompromise; laptop stolen")
    );
    let trail = trail_of_k(&a);
    assert!(
        trail
            .iter()
            .any(|(op, why)| op == "revoke" && why.contains("code=keyCompromise; laptop stolen")),
        "{trail:?}"
    );
    // A destruction asks for approval: the code is part of what is approved.
    let Ok(KeyResponse::Pending(p)) = call(
        &a,
        coded(
            Destroy,
            Some("retired"),
            Some(ReasonCode::CessationOfOperation),
        ),
    ) else {
        panic!()
    };
    let stored = a.keys.inventory().request(&p.id).unwrap().unwrap();
    assert_eq!(
        stored.parameters,
        r#"{"code":"cessationOfOperation","from":"compromised"}"#
    );
    assert_eq!(stored.reason, "retired");
    // Carried out, the destruction keeps the approved code.
    call(
        &a,
        KeyRequest::RequestDecide {
            id: p.id.clone(),
            decision: keyward_policy::Decision::Approve,
            signature: None,
        },
    )
    .unwrap();
    let k = a.keys.inventory().key("kw", "k").unwrap().unwrap();
    assert_eq!(
        (k.state, k.reason_code),
        (KeyState::Destroyed, Some(ReasonCode::CessationOfOperation))
    );
    let last = history(&a).pop().unwrap();
    assert_eq!(
        last.reason,
        format!("code=cessationOfOperation; retired (request {})", p.id)
    );
}
