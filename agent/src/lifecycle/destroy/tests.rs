//! Destruction with the in-memory backend: the HSM objects of every version
//! go, the inventory keeps the record, held handles and searches stop
//! working; an application's `C_DestroyObject` opens a request instead.

use std::sync::Arc;

use keyward_inventory::AuditFilter;
use keyward_policy::ApprovalStatus;
use keyward_protocol::message::OpInit;
use keyward_protocol::SessionHandle;
use keyward_protocol::{Attribute, Mechanism, ObjectHandle, Op, Request, Response, SlotId};

use super::*;
use crate::agent::Agent;
use crate::backend::BackendObject;
use crate::clients::Client;
use crate::state::Role;

/// `app` may sign with keys of class `signing` and with no key of class
/// `hidden`; `other` with none.
const POLICY: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[application]]
name = "other"
uid = 1001

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
rotation_interval = "90d"
grants = [ { application = "app", operations = ["sign", "verify"] } ]

[[class]]
name = "hidden"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
"#;

const PIN: &[u8] = b"1111";

fn agent() -> (tempfile::TempDir, Agent) {
    let (d, a) = crate::agent::tests::mock_agent(POLICY);
    a.tokens[0].state.set_pin(Role::User, PIN).unwrap();
    (d, a)
}

fn admin() -> Peer {
    crate::agent::tests::admin_peer()
}

fn call(a: &Agent, req: KeyRequest) -> KeyResponse {
    a.lifecycle.key_call(&admin(), req).unwrap()
}

/// Key `name` of `class`, active, with `versions` versions.
fn active_key<'a>(a: &'a Agent, name: &str, class: &str, versions: u32) -> Target<'a> {
    call(
        a,
        KeyRequest::Create {
            name: name.into(),
            class: class.into(),
            algorithm: None,
            token: None,
            owner: None,
        },
    );
    call(
        a,
        KeyRequest::Transition {
            name: name.into(),
            token: None,
            action: KeyAction::Activate,
            reason: None,
            code: None,
        },
    );
    for _ in 1..versions {
        call(
            a,
            KeyRequest::Rotate {
                name: name.into(),
                token: None,
            },
        );
    }
    target(a, name)
}

/// Key `name` as the executor gets it.
fn target<'a>(a: &'a Agent, name: &str) -> Target<'a> {
    a.lifecycle.target(None, name).unwrap()
}

/// The HSM objects with `id`, of any class.
fn objects_with_id(a: &Agent, id: &[u8]) -> Vec<BackendObject> {
    let b = a.tokens[0].backend().unwrap();
    b.find_objects(
        b.anchor_session(),
        &[Attribute::bytes(cryptoki_sys::CKA_ID, id.to_vec())],
    )
    .unwrap()
}

fn ids(t: &Target<'_>) -> Vec<Vec<u8>> {
    t.key
        .versions
        .iter()
        .map(|v| v.backend_id.clone())
        .collect()
}

fn destroy(a: &Agent, t: &Target<'_>, reason: &str) -> AResult<KeyResponse> {
    let by = admin().as_administrator();
    a.lifecycle
        .destroy_key(t, ("uid:0", &by), (reason, None), None, SystemTime::now())
}

fn lifecycle_records(a: &Agent, key: &str) -> Vec<keyward_inventory::AuditEvent> {
    a.audit
        .log()
        .query(&AuditFilter {
            kinds: vec![keyward_inventory::AuditKind::Lifecycle],
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .filter(|e| e.key.as_deref() == Some(key))
        .collect()
}

#[test]
fn destroying_removes_every_versions_objects_and_keeps_the_record() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 2);
    let kept = active_key(&a, "kept", "signing", 1);
    assert_eq!(t.key.versions.len(), 2);
    for id in ids(&t) {
        assert_eq!(objects_with_id(&a, &id).len(), 2, "a key pair per version");
    }
    let Ok(KeyResponse::Key(info)) = destroy(&a, &t, "end of service") else {
        panic!("destroy failed")
    };
    assert_eq!(info.state, KeyState::Destroyed);
    for id in ids(&t) {
        assert!(
            objects_with_id(&a, &id).is_empty(),
            "objects of a version left"
        );
    }
    assert_eq!(
        objects_with_id(&a, &ids(&kept)[0]).len(),
        2,
        "another key's objects stay"
    );
    // The inventory keeps the key: destroyed, each version with its date,
    // and who and why in its history and the trail.
    let inv = a.keys.inventory();
    let id = t.key.record.id;
    assert_eq!(
        inv.key_by_id(id).unwrap().unwrap().state,
        KeyState::Destroyed
    );
    let versions = inv.versions(id).unwrap();
    assert!(versions
        .iter()
        .all(|v| v.state == KeyState::Destroyed && v.destroyed_at.is_some()));
    let history = inv.history(id).unwrap();
    let destroyed: Vec<_> = history
        .iter()
        .filter(|h| h.to == KeyState::Destroyed)
        .collect();
    assert_eq!(
        destroyed.len(),
        3,
        "the key and its two versions: {history:?}"
    );
    assert!(destroyed
        .iter()
        .all(|h| h.actor == "uid:0" && h.reason == "end of service"));
    let records = lifecycle_records(&a, "k");
    let of_destroy: Vec<_> = records
        .iter()
        .filter(|e| e.operation == "destroy")
        .collect();
    assert_eq!(of_destroy.len(), 3);
    assert!(of_destroy
        .iter()
        .all(|e| e.reason.ends_with("to destroyed: end of service")));
    assert_eq!(
        inv.key_by_id(kept.key.record.id).unwrap().unwrap().state,
        KeyState::Active
    );

    // Again: nothing left to remove, nothing more recorded, success.
    let before = (inv.history(id).unwrap(), lifecycle_records(&a, "k"));
    let Ok(KeyResponse::Key(again)) = destroy(&a, &t, "again") else {
        panic!("a second destruction failed")
    };
    assert_eq!(again.state, KeyState::Destroyed);
    assert_eq!(
        (inv.history(id).unwrap(), lifecycle_records(&a, "k")),
        before
    );
    assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
}

/// A destruction cut off after the HSM removed part of the objects (or all
/// of them) but before the inventory changed: running it again removes
/// what is left and records the destruction once.
#[test]
fn a_destruction_cut_off_half_way_is_finished_by_running_it_again() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 2);
    let b = a.tokens[0].backend().unwrap();
    let first = objects_with_id(&a, &ids(&t)[0]);
    b.destroy_object(b.anchor_session(), first[0]).unwrap();
    assert_eq!(
        a.keys.key(t.key.record.id).unwrap().record.state,
        KeyState::Active
    );
    destroy(&a, &t, "retired").unwrap();
    for id in ids(&t) {
        assert!(objects_with_id(&a, &id).is_empty());
    }
    let history = a.keys.inventory().history(t.key.record.id).unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|h| h.to == KeyState::Destroyed)
            .count(),
        3
    );

    // Every object gone already, the inventory still active.
    let u = active_key(&a, "u", "signing", 1);
    for o in objects_with_id(&a, &ids(&u)[0]) {
        b.destroy_object(b.anchor_session(), o).unwrap();
    }
    let Ok(KeyResponse::Key(info)) = destroy(&a, &u, "retired") else {
        panic!()
    };
    assert_eq!(info.state, KeyState::Destroyed);
}

fn request(a: &Agent, c: &Arc<Client>, r: Request) -> Response {
    a.handle(c, r)
}

/// An RW session of application `app_name`'s client, logged in as user.
fn app_session(a: &Agent, app_name: &str, pid: i32) -> (Arc<Client>, SessionHandle) {
    let c = a.connect(crate::clients::tests::peer(pid), app_name.into());
    let Response::Handle(s) = request(
        a,
        &c,
        Request::OpenSession {
            slot: SlotId(0),
            flags: cryptoki_sys::CKF_SERIAL_SESSION | cryptoki_sys::CKF_RW_SESSION,
        },
    ) else {
        panic!("no session")
    };
    let s = SessionHandle(s);
    let login = request(
        a,
        &c,
        Request::Login {
            session: s,
            user_type: cryptoki_sys::CKU_USER,
            pin: Some(zeroize::Zeroizing::new(PIN.to_vec())),
        },
    );
    assert_eq!(login, Response::Unit);
    (c, s)
}

/// The private keys a search by class finds.
fn private_keys(a: &Agent, c: &Arc<Client>, s: SessionHandle) -> Vec<ObjectHandle> {
    match request(
        a,
        c,
        Request::FindObjects {
            session: s,
            template: vec![Attribute::ulong(
                cryptoki_sys::CKA_CLASS,
                cryptoki_sys::CKO_PRIVATE_KEY,
            )],
        },
    ) {
        Response::List(v) => v.into_iter().map(ObjectHandle).collect(),
        other => panic!("{other:?}"),
    }
}

fn sign_init(a: &Agent, c: &Arc<Client>, s: SessionHandle, key: ObjectHandle) -> Response {
    request(
        a,
        c,
        Request::OperationInit {
            session: s,
            op: Op::Sign,
            init: OpInit {
                mechanism: Mechanism::plain(cryptoki_sys::CKM_ECDSA),
                key: Some(key),
            },
        },
    )
}

fn sign(a: &Agent, c: &Arc<Client>, s: SessionHandle) -> Response {
    request(
        a,
        c,
        Request::Single {
            session: s,
            op: Op::Sign,
            init: None,
            data: vec![7; 32],
        },
    )
}

fn destroy_object(a: &Agent, c: &Arc<Client>, s: SessionHandle, o: ObjectHandle) -> Response {
    request(
        a,
        c,
        Request::DestroyObject {
            session: s,
            object: o,
        },
    )
}

/// A handle an application found before the destruction fails at its next
/// call, an operation under way stops, and searches find nothing of the
/// key; what the agent cached of its objects is forgotten.
#[test]
fn after_a_destruction_held_handles_fail_and_searches_find_nothing() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 1);
    let (c, s) = app_session(&a, "app", 7);
    let found = private_keys(&a, &c, s);
    assert_eq!(found.len(), 1, "the key before");
    let k = found[0];
    assert_eq!(sign_init(&a, &c, s, k), Response::Unit);
    assert!(matches!(sign(&a, &c, s), Response::Data(_)));
    let slot_object = c
        .lock()
        .object(0, k, crate::error::Error::ObjectHandleInvalid);
    let backend = slot_object.unwrap().backend;
    assert!(
        a.use_targets.get(0, backend).is_some(),
        "named for its uses"
    );
    // An operation under way when the key goes.
    let (c2, s2) = app_session(&a, "app", 8);
    let k2 = private_keys(&a, &c2, s2)[0];
    assert_eq!(sign_init(&a, &c2, s2, k2), Response::Unit);

    destroy(&a, &t, "retired").unwrap();

    assert_eq!(
        sign_init(&a, &c, s, k),
        Response::Err(cryptoki_sys::CKR_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        sign(&a, &c2, s2),
        Response::Err(cryptoki_sys::CKR_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        request(
            &a,
            &c,
            Request::GetAttributeValue {
                session: s,
                object: k,
                types: vec![cryptoki_sys::CKA_ID],
            }
        ),
        Response::Err(cryptoki_sys::CKR_OBJECT_HANDLE_INVALID)
    );
    assert!(private_keys(&a, &c, s).is_empty(), "a search finds it");
    let (c3, s3) = app_session(&a, "app", 9);
    assert!(
        private_keys(&a, &c3, s3).is_empty(),
        "a new client finds it"
    );
    assert!(a.use_targets.get(0, backend).is_none(), "use name kept");
}

fn pending(a: &Agent) -> Vec<keyward_inventory::ApprovalRecord> {
    a.keys
        .inventory()
        .requests(Some(ApprovalStatus::Pending))
        .unwrap()
}

/// An application's `C_DestroyObject` on a managed key it may use answers
/// `CKR_ACTION_PROHIBITED` and opens one pending destroy request, named
/// for the application; the key stays and signs.
#[test]
fn an_applications_destroy_object_opens_one_destroy_request() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 1);
    let (c, s) = app_session(&a, "app", 7);
    let k = private_keys(&a, &c, s)[0];
    let prohibited = Response::Err(cryptoki_sys::CKR_ACTION_PROHIBITED);
    assert_eq!(destroy_object(&a, &c, s, k), prohibited);
    let open = pending(&a);
    assert_eq!(open.len(), 1, "{open:?}");
    let r = &open[0];
    assert_eq!(
        (r.action.as_str(), r.target.as_str(), r.key_id),
        ("destroy", "kw/k", Some(t.key.record.id))
    );
    assert_eq!(r.requester, "application app");
    assert_eq!(r.reason, "C_DestroyObject by application app");
    assert_eq!(r.parameters, r#"{"from":"active"}"#);
    // Again, and from another handle of the key: the same request.
    assert_eq!(destroy_object(&a, &c, s, k), prohibited);
    let (c2, s2) = app_session(&a, "app", 8);
    let k2 = private_keys(&a, &c2, s2)[0];
    assert_eq!(destroy_object(&a, &c2, s2, k2), prohibited);
    assert_eq!(pending(&a), open);
    // The object stays, and signs.
    assert_eq!(objects_with_id(&a, &ids(&t)[0]).len(), 2);
    assert_eq!(sign_init(&a, &c, s, k), Response::Unit);
    assert!(matches!(sign(&a, &c, s), Response::Data(_)));
    assert_eq!(
        a.keys.key(t.key.record.id).unwrap().record.state,
        KeyState::Active
    );
    // The trail says why it was refused and names the request.
    let named = format!("destroy request {} pending approval", r.id);
    a.audit.flush();
    let refusals = a
        .audit
        .log()
        .query(&AuditFilter {
            kinds: vec![keyward_inventory::AuditKind::Refusal],
            ..Default::default()
        })
        .unwrap();
    assert!(
        refusals.iter().any(|r| r.event.reason.contains(&named)),
        "{refusals:?}"
    );
}

/// Attack: an application that cannot see another application's key (no
/// grant) finds no handle to it, and every handle it guesses is invalid;
/// one whose grant was taken away after it found the key gets the bare
/// refusal it got before; a client not logged in too. None of them opens
/// a request, and the key stays.
#[test]
fn an_application_without_a_grant_cannot_open_a_destroy_request() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 1);
    let (other, so) = app_session(&a, "other", 7);
    assert!(
        private_keys(&a, &other, so).is_empty(),
        "other sees the key"
    );
    for h in 1..64 {
        assert_eq!(
            destroy_object(&a, &other, so, ObjectHandle(h)),
            Response::Err(cryptoki_sys::CKR_OBJECT_HANDLE_INVALID),
            "handle {h}"
        );
    }
    // A grant of its own, found, then taken away.
    let h = active_key(&a, "h", "hidden", 1);
    let (c, s) = app_session(&a, "app", 8);
    assert!(private_keys(&a, &c, s).iter().all(|&o| {
        let m = c
            .lock()
            .object(0, o, crate::error::Error::ObjectHandleInvalid);
        m.unwrap().managed.map(|m| m.key_id) != Some(h.key.record.id)
    }));
    call(
        &a,
        KeyRequest::GrantAdd {
            key: "h".into(),
            token: None,
            application: "app".into(),
            operations: vec![keyward_policy::Operation::Sign],
            until: None,
        },
    );
    let held: Vec<ObjectHandle> = private_keys(&a, &c, s)
        .into_iter()
        .filter(|&o| {
            let m = c
                .lock()
                .object(0, o, crate::error::Error::ObjectHandleInvalid);
            m.unwrap().managed.map(|m| m.key_id) == Some(h.key.record.id)
        })
        .collect();
    assert_eq!(held.len(), 1, "the granted key is found");
    call(
        &a,
        KeyRequest::GrantRemove {
            key: "h".into(),
            token: None,
            application: "app".into(),
        },
    );
    assert_eq!(
        destroy_object(&a, &c, s, held[0]),
        Response::Err(cryptoki_sys::CKR_ACTION_PROHIBITED)
    );
    // Not logged in: a session of a client that never logged in, with a
    // handle to the key's public half.
    let anon = a.connect(crate::clients::tests::peer(9), "app".into());
    let Response::Handle(sa) = request(
        &a,
        &anon,
        Request::OpenSession {
            slot: SlotId(0),
            flags: cryptoki_sys::CKF_SERIAL_SESSION | cryptoki_sys::CKF_RW_SESSION,
        },
    ) else {
        panic!()
    };
    let sa = SessionHandle(sa);
    let Response::List(public) = request(
        &a,
        &anon,
        Request::FindObjects {
            session: sa,
            template: vec![
                Attribute::ulong(cryptoki_sys::CKA_CLASS, cryptoki_sys::CKO_PUBLIC_KEY),
                Attribute::bytes(cryptoki_sys::CKA_ID, ids(&t)[0].clone()),
            ],
        },
    ) else {
        panic!()
    };
    assert_eq!(public.len(), 1, "the public half is found without login");
    assert_eq!(
        destroy_object(&a, &anon, sa, ObjectHandle(public[0])),
        Response::Err(cryptoki_sys::CKR_ACTION_PROHIBITED)
    );
    assert!(pending(&a).is_empty(), "{:?}", pending(&a));
    assert_eq!(objects_with_id(&a, &ids(&t)[0]).len(), 2);
    assert_eq!(objects_with_id(&a, &ids(&h)[0]).len(), 2);
}

/// An object planted with a version's `CKA_ID` (not the key: another
/// fingerprint) is not the key's to remove: it stays, and the key's own
/// objects go.
#[test]
fn a_plant_with_the_keys_cka_id_is_left_alone() {
    let (_d, a) = agent();
    let t = active_key(&a, "k", "signing", 1);
    let b = a.tokens[0].backend().unwrap();
    let id = ids(&t)[0].clone();
    let plant = b
        .create_object(
            b.anchor_session(),
            &[
                Attribute::ulong(cryptoki_sys::CKA_CLASS, cryptoki_sys::CKO_PRIVATE_KEY),
                Attribute::bool(cryptoki_sys::CKA_TOKEN, true),
                Attribute::bytes(cryptoki_sys::CKA_ID, id.clone()),
            ],
        )
        .unwrap();
    // What the fingerprint check finds of it (the mock shows none).
    a.keys.set_judged("kw", plant, None);
    assert_eq!(objects_with_id(&a, &id).len(), 3);
    destroy(&a, &t, "retired").unwrap();
    assert_eq!(objects_with_id(&a, &id), vec![plant]);
}

/// The `backup` record `keyward backup create` writes for version
/// `version` of key `key` on `token` in backup `id`.
fn backup_record(a: &Agent, token: &str, key: &str, version: u32, id: &str) {
    let by = admin().as_administrator();
    let mut ev = crate::audit::event(keyward_inventory::AuditKind::Lifecycle, by, marks::BACKUP);
    ev.token = Some(token.into());
    ev.key = Some(key.into());
    ev.key_version = Some(version);
    ev.reason = format!("in backup {id}");
    a.audit.durable_all(vec![ev]).unwrap();
}

#[test]
fn a_destruction_names_the_backups_that_still_hold_the_key() {
    let (_d, a) = agent();
    let label = a.tokens[0].config.label.clone();
    let held = "aa".repeat(32);
    let elsewhere = "bb".repeat(32);
    let t = active_key(&a, "k", "signing", 2);
    let bare = active_key(&a, "bare", "signing", 1);
    backup_record(&a, &label, "k", 1, &held);
    backup_record(&a, &label, "k", 2, &held);
    // A key of the same name on another token is another key.
    backup_record(&a, "another-token", "k", 1, &elsewhere);

    let Ok(KeyResponse::Key(info)) = destroy(&a, &t, "end of service") else {
        panic!("destroy failed")
    };
    assert_eq!(info.held_by_backups.len(), 1, "{:?}", info.held_by_backups);
    assert_eq!(info.held_by_backups[0].id, held);
    let notes: Vec<_> = lifecycle_records(&a, "k")
        .into_iter()
        .filter(|e| e.operation == DESTROY_BACKUPS)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .reason
            .starts_with("held by backups: aaaaaaaaaaaaaaaa ("),
        "{}",
        notes[0].reason
    );
    assert!(!notes[0].reason.contains("bbbb"), "{}", notes[0].reason);
    // The history keeps the administrator's reason as given.
    let history = a.keys.inventory().history(t.key.record.id).unwrap();
    assert!(history
        .iter()
        .filter(|h| h.to == KeyState::Destroyed)
        .all(|h| h.reason == "end of service"));
    // Shown again later: the same backups.
    let again = a.lifecycle.target(None, "k").unwrap();
    let shown = a.lifecycle.info(&again.key).unwrap();
    assert_eq!(shown.held_by_backups, info.held_by_backups);

    // A key in no backup: said so.
    let Ok(KeyResponse::Key(info)) = destroy(&a, &bare, "end of service") else {
        panic!("destroy failed")
    };
    assert!(info.held_by_backups.is_empty());
    let notes: Vec<_> = lifecycle_records(&a, "bare")
        .into_iter()
        .filter(|e| e.operation == DESTROY_BACKUPS)
        .map(|e| e.reason)
        .collect();
    assert_eq!(notes, vec!["held by no backup".to_owned()]);
    // A live key shows no backups held.
    let live = active_key(&a, "live", "signing", 1);
    backup_record(&a, &label, "live", 1, &held);
    assert!(a
        .lifecycle
        .info(&live.key)
        .unwrap()
        .held_by_backups
        .is_empty());
    // The list shows the same.
    let Ok(KeyResponse::Keys(all)) = a.lifecycle.list_keys(None, None) else {
        panic!("no list")
    };
    let held = |name: &str| {
        all.iter()
            .find(|k| k.name == name)
            .map(|k| k.held_by_backups.clone())
            .unwrap()
    };
    assert_eq!(held("k"), shown.held_by_backups);
    assert!(held("bare").is_empty() && held("live").is_empty());
    assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
}
