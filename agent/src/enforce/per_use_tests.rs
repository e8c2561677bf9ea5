//! Per-use approval with the in-memory backend (whose "signature" is the
//! data itself): a `C_Sign` waits for the approval of its request, signs
//! that data once, and is refused when the approval does not come.

use std::sync::Arc;
use std::time::Duration;

use cryptoki_sys as ck;
use ed25519_dalek::Signer as _;
use keyward_policy::{ApprovalStatus, Decision};
use keyward_protocol::admin::{ApprovalRequest, KeyRequest, KeyResponse};
use keyward_protocol::approval::decision_statement;
use keyward_protocol::message::OpInit;
use keyward_protocol::{Attribute, MechParam, Mechanism, ObjectHandle, Op, Request, Response};
use keyward_protocol::{SessionHandle, SlotId};

use crate::agent::Agent;
use crate::clients::Client;
use crate::listener::identity::Peer;
use crate::state::Role;

fn officer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

/// Class "signing" asks approval of each use (waiting `wait`); alice (uid
/// 1001) is a security officer.
fn policy(wait: &str) -> String {
    let class = crate::agent::tests::STRICT_SIGNING.replace(
        "grants = [ { application = \"app\", operations = [\"sign\", \"verify\"] } ]",
        &format!(
            "grants = [ {{ application = \"app\", operations = [\"sign\", \"verify\"] }} ]\napprove_each_use = true\napproval_wait = \"{wait}\""
        ),
    );
    assert_ne!(class, crate::agent::tests::STRICT_SIGNING);
    // Lab mode: one officer is roster enough here.
    let class = class.replace("mode = \"strict\"", "mode = \"lab\"");
    format!(
        "{class}\n[[administrator]]\nname = \"alice\"\nuids = [1001]\nroles = [\"security-officer\"]\npublic_key = \"ed25519:{}\"\n",
        hex::encode(officer().verifying_key().as_bytes())
    )
}

fn alice() -> Peer {
    let mut p = crate::agent::tests::admin_peer();
    p.uid = 1001;
    p
}

fn admin(a: &Agent, req: KeyRequest) -> Result<KeyResponse, crate::lifecycle::AdminError> {
    a.lifecycle.key_call(&alice(), req)
}

/// An agent with an active key `k` of the class, and application `app`
/// logged in with the key's handle.
fn agent(
    wait: &str,
) -> (
    tempfile::TempDir,
    Arc<Agent>,
    Arc<Client>,
    SessionHandle,
    ObjectHandle,
) {
    let (d, a) = crate::agent::tests::mock_agent(&policy(wait));
    a.tokens[0].state.set_pin(Role::User, b"1111").unwrap();
    let create = KeyRequest::Create {
        name: "k".into(),
        class: "signing".into(),
        algorithm: None,
        token: None,
        owner: None,
    };
    admin(&a, create).unwrap();
    admin(
        &a,
        KeyRequest::Transition {
            name: "k".into(),
            token: None,
            action: keyward_protocol::admin::KeyAction::Activate,
            reason: Some("go".into()),
            code: None,
        },
    )
    .unwrap();
    let mut peer = crate::clients::tests::peer(4242);
    peer.uid = 1000;
    peer.exe = Some("/usr/bin/signer".into());
    let c = a.connect(peer, "app".into());
    let s = match a.handle(
        &c,
        Request::OpenSession {
            slot: SlotId(0),
            flags: ck::CKF_SERIAL_SESSION,
        },
    ) {
        Response::Handle(h) => SessionHandle(h),
        other => panic!("{other:?}"),
    };
    let login = Request::Login {
        session: s,
        user_type: ck::CKU_USER,
        pin: Some(zeroize::Zeroizing::new(b"1111".to_vec())),
    };
    assert_eq!(a.handle(&c, login), Response::Unit);
    // The mock keeps no CKA_ID, so a search would not tell the managed
    // key: its private half (the newest private object) is mapped as the
    // search maps it on an HSM.
    let backend = a.tokens[0].backend().unwrap();
    let private = backend
        .find_objects(
            backend.anchor_session(),
            &[Attribute::bool(ck::CKA_PRIVATE, true)],
        )
        .unwrap();
    let key_id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
    let key = c.lock().map_object(
        0,
        *private.iter().max().unwrap(),
        None,
        Some(crate::keys::ManagedRef { key_id, version: 1 }),
    );
    (d, Arc::new(a), c, s, key)
}

fn ecdsa() -> OpInit {
    OpInit {
        mechanism: Mechanism {
            mechanism: ck::CKM_ECDSA,
            param: MechParam::None,
        },
        key: None,
    }
}

fn sign(a: &Agent, c: &Arc<Client>, s: SessionHandle, key: ObjectHandle, data: &[u8]) -> Response {
    let mut init = ecdsa();
    init.key = Some(key);
    a.handle(
        c,
        Request::Single {
            session: s,
            op: Op::Sign,
            init: Some(init),
            data: data.to_vec(),
        },
    )
}

/// The requests the agent holds, oldest first.
fn requests(a: &Agent) -> Vec<ApprovalRequest> {
    match admin(a, KeyRequest::RequestList { all: true }) {
        Ok(KeyResponse::Requests(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// Waits until `n` requests are recorded; the pending one, else the
/// last listed.
fn nth_request(a: &Agent, n: usize) -> ApprovalRequest {
    for _ in 0..500 {
        let mut r = requests(a);
        if r.len() >= n {
            let pending = r.iter().position(|r| r.status == ApprovalStatus::Pending);
            return r.remove(pending.unwrap_or(n - 1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no request {n}");
}

fn approve(a: &Agent, r: &ApprovalRequest) -> Result<KeyResponse, crate::lifecycle::AdminError> {
    let statement = decision_statement(Decision::Approve, &r.content().digest());
    admin(
        a,
        KeyRequest::RequestDecide {
            id: r.id.clone(),
            decision: Decision::Approve,
            signature: Some(officer().sign(&statement).to_bytes().to_vec()),
        },
    )
}

fn status(a: &Agent, id: &str) -> (ApprovalStatus, String) {
    let r = requests(a).into_iter().find(|r| r.id == id).unwrap();
    (r.status, r.outcome)
}

#[test]
fn an_approved_use_signs_that_data_once() {
    let (_d, a, c, s, key) = agent("5s");
    let (a2, c2) = (a.clone(), c.clone());
    let signer = std::thread::spawn(move || sign(&a2, &c2, s, key, b"release 1.0"));
    let r = nth_request(&a, 1);
    assert_eq!(r.action, "sign");
    assert_eq!(r.target, "kw/k");
    assert_eq!(r.requester, "app");
    assert_eq!(
        r.reason,
        format!(
            "C_Sign by app (uid 1000, pid 4242, /usr/bin/signer): CKM_ECDSA of 11 bytes, SHA-256 {}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"release 1.0"))
        )
    );
    assert_eq!(r.status, ApprovalStatus::Pending);
    let p: serde_json::Value = serde_json::from_str(&r.parameters).unwrap();
    assert_eq!(
        p,
        serde_json::json!({
            "application": "app",
            "data_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"release 1.0")),
            "exe": "/usr/bin/signer",
            "mechanism": "CKM_ECDSA",
            "pid": 4242,
            "uid": 1000,
        })
    );
    approve(&a, &r).unwrap();
    // The mock's signature is the data.
    assert_eq!(
        signer.join().unwrap(),
        Response::Data(b"release 1.0".to_vec())
    );
    assert_eq!(
        status(&a, &r.id),
        (
            ApprovalStatus::Executed,
            "signed 11 bytes with CKM_ECDSA".into()
        )
    );
    // The approval is spent: approving again is refused, nothing is signed.
    let again = approve(&a, &r).unwrap_err();
    assert!(again.message.contains("is executed"), "{}", again.message);
    // A second signature, even of the same data, opens its own request.
    let (a2, c2) = (a.clone(), c.clone());
    let signer = std::thread::spawn(move || sign(&a2, &c2, s, key, b"release 1.0"));
    let second = nth_request(&a, 2);
    assert_ne!(second.id, r.id);
    assert_eq!(second.status, ApprovalStatus::Pending);
    approve(&a, &second).unwrap();
    assert_eq!(
        signer.join().unwrap(),
        Response::Data(b"release 1.0".to_vec())
    );
}

#[test]
fn without_approval_in_time_the_call_is_rejected_and_the_request_expires() {
    let (_d, a, c, s, key) = agent("1s");
    let started = std::time::Instant::now();
    assert_eq!(
        sign(&a, &c, s, key, b"data"),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let r = nth_request(&a, 1);
    assert_eq!(
        status(&a, &r.id),
        (ApprovalStatus::Expired, "not approved in time".into())
    );
    // Too late: the approval is refused and signs nothing.
    let late = approve(&a, &r).unwrap_err();
    assert!(late.message.contains("expired"), "{}", late.message);
    // The session is usable again: the backend's operation never started.
    let (a2, c2) = (a.clone(), c.clone());
    let signer = std::thread::spawn(move || sign(&a2, &c2, s, key, b"data"));
    let next = nth_request(&a, 2);
    approve(&a, &next).unwrap();
    assert_eq!(signer.join().unwrap(), Response::Data(b"data".to_vec()));
}

#[test]
fn a_denied_use_is_rejected_at_once() {
    let (_d, a, c, s, key) = agent("30s");
    let (a2, c2) = (a.clone(), c.clone());
    let started = std::time::Instant::now();
    let signer = std::thread::spawn(move || sign(&a2, &c2, s, key, b"data"));
    let r = nth_request(&a, 1);
    let statement = decision_statement(Decision::Deny, &r.content().digest());
    admin(
        &a,
        KeyRequest::RequestDecide {
            id: r.id.clone(),
            decision: Decision::Deny,
            signature: Some(officer().sign(&statement).to_bytes().to_vec()),
        },
    )
    .unwrap();
    assert_eq!(
        signer.join().unwrap(),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status(&a, &r.id).0, ApprovalStatus::Denied);
}

#[test]
fn multi_part_signing_of_such_a_key_is_refused() {
    let (_d, a, c, s, key) = agent("5s");
    let mut init = ecdsa();
    init.key = Some(key);
    assert_eq!(
        a.handle(
            &c,
            Request::Update {
                session: s,
                op: Op::Sign,
                init: Some(init.clone()),
                data: b"part".to_vec(),
            }
        ),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    assert_eq!(
        a.handle(
            &c,
            Request::Final {
                session: s,
                op: Op::Sign,
                init: Some(init),
                data: b"all".to_vec(),
            }
        ),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    assert!(requests(&a).is_empty(), "no request for a refused call");
}

#[test]
fn a_pending_request_left_by_a_stopped_agent_expires_at_start() {
    let (_d, a, c, s, key) = agent("1s");
    assert_eq!(
        sign(&a, &c, s, key, b"data"),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    let r = nth_request(&a, 1);
    // As a kill during the wait leaves it.
    let inventory = a.keys.inventory();
    assert!(inventory
        .close_request(
            &r.id,
            ApprovalStatus::Expired,
            ApprovalStatus::Pending,
            "",
            0
        )
        .unwrap());
    a.lifecycle.resume_approved();
    assert_eq!(
        status(&a, &r.id),
        (
            ApprovalStatus::Expired,
            "the call that waited for it ended with the agent".into()
        )
    );
}

#[test]
fn an_approval_left_by_a_stopped_agent_signs_nothing() {
    let (_d, a, c, s, key) = agent("1s");
    // Recorded and approved, but the call that waited is gone (here: it
    // timed out just as the approval came; the store is set by hand).
    assert_eq!(
        sign(&a, &c, s, key, b"data"),
        Response::Err(ck::CKR_FUNCTION_REJECTED)
    );
    let r = nth_request(&a, 1);
    let inventory = a.keys.inventory();
    assert!(inventory
        .close_request(
            &r.id,
            ApprovalStatus::Expired,
            ApprovalStatus::Approved,
            "",
            0
        )
        .unwrap());
    a.lifecycle.resume_approved();
    assert_eq!(
        status(&a, &r.id),
        (
            ApprovalStatus::Failed,
            "the call that waited for it ended with the agent".into()
        )
    );
}

#[test]
fn a_waiting_call_holds_no_lock_and_its_key_is_checked_again() {
    let (_d, a, c, s, key) = agent("10s");
    let (a2, c2) = (a.clone(), c.clone());
    let signer = std::thread::spawn(move || sign(&a2, &c2, s, key, b"data"));
    let r = nth_request(&a, 1);
    // A key change takes the lock every call holds while it runs: it goes
    // through while the call waits.
    let (done, changed) = std::sync::mpsc::channel();
    let a3 = a.clone();
    std::thread::spawn(move || {
        let suspend = KeyRequest::Transition {
            name: "k".into(),
            token: None,
            action: keyward_protocol::admin::KeyAction::Suspend,
            reason: Some("incident".into()),
            code: None,
        };
        done.send(admin(&a3, suspend).map(drop)).unwrap();
    });
    changed
        .recv_timeout(Duration::from_secs(5))
        .expect("the key change waited for the signing call")
        .unwrap();
    // Approved after the suspension: the checks run again, nothing signed.
    approve(&a, &r).unwrap();
    assert!(matches!(signer.join().unwrap(), Response::Err(rv) if rv != ck::CKR_OK));
    assert_eq!(
        status(&a, &r.id),
        (
            ApprovalStatus::Failed,
            "the key's use was refused after the approval".into()
        )
    );
}

#[test]
fn an_operation_begun_before_the_class_asked_approval_waits_all_the_same() {
    let (_d, a, c, s, key) = agent("5s");
    let with = policy("5s");
    let without = with.replace("approve_each_use = true\napproval_wait = \"5s\"", "");
    assert_ne!(with, without);
    // C_SignInit under a policy without per-use approval: the backend's
    // operation begins.
    a.set_policy(keyward_policy::Policy::from_str(&without, "test").unwrap());
    let mut init = ecdsa();
    init.key = Some(key);
    let begin = Request::OperationInit {
        session: s,
        op: Op::Sign,
        init,
    };
    assert_eq!(a.handle(&c, begin), Response::Unit);
    // The class asks it now: the C_Sign waits for its approval.
    a.set_policy(keyward_policy::Policy::from_str(&with, "test").unwrap());
    let (a2, c2) = (a.clone(), c.clone());
    let signer = std::thread::spawn(move || {
        a2.handle(
            &c2,
            Request::Single {
                session: s,
                op: Op::Sign,
                init: None,
                data: b"late".to_vec(),
            },
        )
    });
    let r = nth_request(&a, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!signer.is_finished(), "signed before the approval");
    approve(&a, &r).unwrap();
    assert_eq!(signer.join().unwrap(), Response::Data(b"late".to_vec()));
    assert_eq!(status(&a, &r.id).0, ApprovalStatus::Executed);
}
