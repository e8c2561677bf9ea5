//! The request handler with the in-memory backend: each request goes
//! through the client tables, the enforcement stage and forwarding, with no
//! socket and no HSM.

use crate::agent::{Agent, LAB_APPLICATION};
use crate::backend::mock::Mock;

use std::sync::Arc;

use cryptoki_sys as ck;

use keyward_protocol::message::OpInit;
use keyward_protocol::{Attribute, Mechanism, ObjectHandle, Op, Request, Response};
use keyward_protocol::{SessionHandle, SlotId};

use crate::backend::Backend;
use crate::clients::Client;
use crate::config::TokenConfig;
use keyward_policy::Policy;

use crate::audit::Auditor;
use crate::keys::ManagedKeys;

use crate::state::{Role, StateDir};

use crate::clients::tests::peer;
use crate::config::SecretRef;
use crate::forward::MAX_RANDOM;
use crate::tokens::{virtual_serial, VirtualToken};
struct Fixture {
    _dir: tempfile::TempDir,
    agent: Agent,
    mock: Arc<Mock>,
}

fn fixture(allow_init_token: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mock = Arc::new(Mock::default());
    let config = TokenConfig {
        label: "kw".into(),
        library: "/nonexistent.so".into(),
        backend_token_label: Some("b".into()),
        backend_serial: None,
        backend_pin: SecretRef::Env("UNUSED".into()),
        backend_so_pin: None,
        allow_init_token,
    };
    let ts = state.token("kw");
    ts.set_pin(Role::User, b"1111").unwrap();
    ts.set_pin(Role::So, b"2222").unwrap();
    let token = VirtualToken::new(config, ts, Ok(mock.clone() as Arc<dyn Backend>));
    let inventory =
        keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    let inventory = Arc::new(inventory);
    let keys = ManagedKeys::open(inventory.clone()).unwrap();
    Fixture {
        _dir: dir,
        agent: Agent::new(vec![token], "/sock".into(), keys, Auditor::start(inventory)),
        mock,
    }
}

const RW: u64 = ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION;

fn call(a: &Agent, c: &Arc<Client>, r: Request) -> Response {
    a.handle(c, r)
}

fn open(a: &Agent, c: &Arc<Client>, flags: u64) -> SessionHandle {
    match call(
        a,
        c,
        Request::OpenSession {
            slot: SlotId(0),
            flags,
        },
    ) {
        Response::Handle(h) => SessionHandle(h),
        other => panic!("{other:?}"),
    }
}

/// The handle a call that makes an object answers.
fn object(r: Response) -> ObjectHandle {
    match r {
        Response::Handle(h) => ObjectHandle(h),
        other => panic!("{other:?}"),
    }
}

fn login(a: &Agent, c: &Arc<Client>, s: SessionHandle, user_type: u64, pin: &[u8]) -> Response {
    call(
        a,
        c,
        Request::Login {
            session: s,
            user_type,
            pin: Some(zeroize::Zeroizing::new(pin.to_vec())),
        },
    )
}

fn err(rv: ck::CK_RV) -> Response {
    Response::Err(rv)
}

fn state(a: &Agent, c: &Arc<Client>, s: SessionHandle) -> ck::CK_ULONG {
    match call(a, c, Request::GetSessionInfo { session: s }) {
        Response::SessionInfo(i) => i.state as ck::CK_ULONG,
        other => panic!("{other:?}"),
    }
}

#[test]
fn login_state_machine() {
    let f = fixture(false);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
    assert_eq!(
        login(a, &c, s, ck::CKU_USER, b"9999"),
        err(ck::CKR_PIN_INCORRECT)
    );
    assert_eq!(login(a, &c, s, 7, b"1111"), err(ck::CKR_USER_TYPE_INVALID));
    assert_eq!(
        login(a, &c, s, ck::CKU_CONTEXT_SPECIFIC, b"1111"),
        err(ck::CKR_USER_NOT_LOGGED_IN)
    );
    assert_eq!(login(a, &c, s, ck::CKU_USER, b"1111"), Response::Unit);
    assert_eq!(state(a, &c, s), ck::CKS_RW_USER_FUNCTIONS);
    // Shared by all the client's sessions on the token.
    let ro = open(a, &c, ck::CKF_SERIAL_SESSION);
    assert_eq!(state(a, &c, ro), ck::CKS_RO_USER_FUNCTIONS);
    assert_eq!(
        login(a, &c, ro, ck::CKU_USER, b"1111"),
        err(ck::CKR_USER_ALREADY_LOGGED_IN)
    );
    assert_eq!(
        login(a, &c, s, ck::CKU_SO, b"2222"),
        err(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
    );
    assert_eq!(
        login(a, &c, s, ck::CKU_CONTEXT_SPECIFIC, b"1111"),
        Response::Unit
    );
    assert_eq!(f.mock.st().context_logins, 1);
    // Another process is not logged in.
    let other = a.connect(peer(2), LAB_APPLICATION.into());
    let os = open(a, &other, RW);
    assert_eq!(state(a, &other, os), ck::CKS_RW_PUBLIC_SESSION);

    assert_eq!(call(a, &c, Request::Logout { session: s }), Response::Unit);
    assert_eq!(
        call(a, &c, Request::Logout { session: s }),
        err(ck::CKR_USER_NOT_LOGGED_IN)
    );
    // SO login with a read-only session open is refused.
    assert_eq!(
        login(a, &c, s, ck::CKU_SO, b"2222"),
        err(ck::CKR_SESSION_READ_ONLY_EXISTS)
    );
    call(a, &c, Request::CloseSession { session: ro });
    assert_eq!(login(a, &c, s, ck::CKU_SO, b"2222"), Response::Unit);
    assert_eq!(state(a, &c, s), ck::CKS_RW_SO_FUNCTIONS);
    assert_eq!(
        call(
            a,
            &c,
            Request::OpenSession {
                slot: SlotId(0),
                flags: ck::CKF_SERIAL_SESSION
            }
        ),
        err(ck::CKR_SESSION_READ_WRITE_SO_EXISTS)
    );
    // Closing the last session logs out.
    call(a, &c, Request::CloseSession { session: s });
    let s = open(a, &c, RW);
    assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
}

#[test]
fn pins_are_managed_virtually() {
    let f = fixture(false);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    let pin = |p: &[u8]| zeroize::Zeroizing::new(p.to_vec());
    assert_eq!(
        call(
            a,
            &c,
            Request::InitPin {
                session: s,
                pin: pin(b"3333")
            }
        ),
        err(ck::CKR_USER_NOT_LOGGED_IN)
    );
    // The user changes the user PIN.
    assert_eq!(
        call(
            a,
            &c,
            Request::SetPin {
                session: s,
                old_pin: pin(b"0000"),
                new_pin: pin(b"4444")
            }
        ),
        err(ck::CKR_PIN_INCORRECT)
    );
    assert_eq!(
        call(
            a,
            &c,
            Request::SetPin {
                session: s,
                old_pin: pin(b"1111"),
                new_pin: pin(b"44")
            }
        ),
        err(ck::CKR_PIN_LEN_RANGE)
    );
    assert_eq!(
        call(
            a,
            &c,
            Request::SetPin {
                session: s,
                old_pin: pin(b"1111"),
                new_pin: pin(b"4444")
            }
        ),
        Response::Unit
    );
    assert_eq!(
        login(a, &c, s, ck::CKU_USER, b"1111"),
        err(ck::CKR_PIN_INCORRECT)
    );
    // The SO resets it.
    assert_eq!(login(a, &c, s, ck::CKU_SO, b"2222"), Response::Unit);
    assert_eq!(
        call(
            a,
            &c,
            Request::InitPin {
                session: s,
                pin: pin(b"5555")
            }
        ),
        Response::Unit
    );
    call(a, &c, Request::Logout { session: s });
    assert_eq!(login(a, &c, s, ck::CKU_USER, b"5555"), Response::Unit);
    // Without a user PIN.
    f.agent.tokens[0].state.clear_pin(Role::User).unwrap();
    call(a, &c, Request::Logout { session: s });
    assert_eq!(
        login(a, &c, s, ck::CKU_USER, b"5555"),
        err(ck::CKR_USER_PIN_NOT_INITIALIZED)
    );
}

fn find(
    a: &Agent,
    c: &Arc<Client>,
    s: SessionHandle,
    template: Vec<Attribute>,
) -> Vec<ObjectHandle> {
    match call(
        a,
        c,
        Request::FindObjects {
            session: s,
            template,
        },
    ) {
        Response::List(v) => v.into_iter().map(ObjectHandle).collect(),
        other => panic!("{other:?}"),
    }
}

fn create(a: &Agent, c: &Arc<Client>, s: SessionHandle, template: Vec<Attribute>) -> Response {
    call(
        a,
        c,
        Request::CreateObject {
            session: s,
            template,
        },
    )
}

#[test]
fn private_objects_are_hidden_from_public_sessions() {
    let f = fixture(false);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    let token = |private| {
        vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, private),
        ]
    };
    assert_eq!(
        create(a, &c, s, token(true)),
        err(ck::CKR_USER_NOT_LOGGED_IN)
    );
    // Generated keys are private by default here: created, found
    // private, destroyed again.
    let r = call(
        a,
        &c,
        Request::GenerateKey {
            session: s,
            mechanism: Mechanism::plain(ck::CKM_AES_KEY_GEN),
            template: vec![],
        },
    );
    assert_eq!(r, err(ck::CKR_USER_NOT_LOGGED_IN));
    assert_eq!(f.mock.object_count(), 0);
    let public = object(create(a, &c, s, token(false)));

    login(a, &c, s, ck::CKU_USER, b"1111");
    let private = object(create(a, &c, s, token(true)));
    let mut all = find(a, &c, s, vec![]);
    all.sort_unstable();
    assert_eq!(all, vec![public, private]);

    call(a, &c, Request::Logout { session: s });
    assert_eq!(find(a, &c, s, vec![]), vec![public]);
    assert!(find(a, &c, s, vec![Attribute::bool(ck::CKA_PRIVATE, true)]).is_empty());
    // The handle to the private object went with the logout.
    assert_eq!(
        call(
            a,
            &c,
            Request::GetObjectSize {
                session: s,
                object: private
            }
        ),
        err(ck::CKR_OBJECT_HANDLE_INVALID)
    );
}

#[test]
fn session_objects_belong_to_their_client() {
    let f = fixture(false);
    let a = &f.agent;
    let c1 = a.connect(peer(1), LAB_APPLICATION.into());
    let c2 = a.connect(peer(2), LAB_APPLICATION.into());
    let s1 = open(a, &c1, RW);
    let s2 = open(a, &c2, RW);
    let mine = object(create(a, &c1, s1, vec![]));
    let shared = object(create(
        a,
        &c1,
        s1,
        vec![Attribute::bool(ck::CKA_TOKEN, true)],
    ));
    assert_eq!(find(a, &c1, s1, vec![]).len(), 2);
    let seen = find(a, &c2, s2, vec![]);
    assert_eq!(seen.len(), 1, "the other client sees only the token object");
    // Handles are per client: c2's number for the token object is its own,
    // and c1's handles mean nothing to c2 beyond what c2 mapped itself.
    assert_eq!(
        call(
            a,
            &c2,
            Request::DestroyObject {
                session: s2,
                object: ObjectHandle(mine.0 + 10)
            }
        ),
        err(ck::CKR_OBJECT_HANDLE_INVALID)
    );
    let s1b = open(a, &c1, RW);
    assert_eq!(s1b, SessionHandle(2));
    assert_eq!(
        call(
            a,
            &c2,
            Request::GetObjectSize {
                session: s1b,
                object: shared
            }
        ),
        err(ck::CKR_SESSION_HANDLE_INVALID)
    );
    // Key handles unknown to the client get the key-specific codes.
    let m = Mechanism::plain(ck::CKM_AES_KEY_WRAP);
    assert_eq!(
        call(
            a,
            &c2,
            Request::WrapKey {
                session: s2,
                mechanism: m.clone(),
                wrapping_key: ObjectHandle(99),
                key: seen[0]
            }
        ),
        err(ck::CKR_WRAPPING_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        call(
            a,
            &c2,
            Request::WrapKey {
                session: s2,
                mechanism: m.clone(),
                wrapping_key: seen[0],
                key: ObjectHandle(99)
            }
        ),
        err(ck::CKR_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        call(
            a,
            &c2,
            Request::UnwrapKey {
                session: s2,
                mechanism: m.clone(),
                unwrapping_key: ObjectHandle(99),
                wrapped_key: vec![],
                template: vec![]
            }
        ),
        err(ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        call(
            a,
            &c2,
            Request::OperationInit {
                session: s2,
                op: Op::Sign,
                init: OpInit {
                    mechanism: m,
                    key: Some(ObjectHandle(99))
                }
            }
        ),
        err(ck::CKR_KEY_HANDLE_INVALID)
    );
    // When c1 goes, its session objects go; the registry forgets them.
    a.disconnect(&c1);
    assert_eq!(f.mock.object_count(), 1);
    assert!(a.clients.no_session_objects());
    assert_eq!(a.tokens[0].counts().sessions, 1);
}

#[test]
fn connections_of_one_process_share_a_client() {
    let f = fixture(false);
    let a = &f.agent;
    let c1 = a.connect(peer(1), LAB_APPLICATION.into());
    let c1b = a.connect(peer(1), LAB_APPLICATION.into());
    assert!(Arc::ptr_eq(&c1, &c1b));
    let s = open(a, &c1, RW);
    assert!(matches!(
        call(a, &c1b, Request::GetSessionInfo { session: s }),
        Response::SessionInfo(_)
    ));
    a.disconnect(&c1);
    assert!(matches!(
        call(a, &c1b, Request::GetSessionInfo { session: s }),
        Response::SessionInfo(_)
    ));
    a.disconnect(&c1b);
    // A new connection of the same pid and start time after the last one
    // closed starts afresh.
    let again = a.connect(peer(1), LAB_APPLICATION.into());
    assert_eq!(
        call(a, &again, Request::GetSessionInfo { session: s }),
        err(ck::CKR_SESSION_HANDLE_INVALID)
    );
    assert!(f.mock.st().sessions.is_empty());
}

#[test]
fn init_token_rules() {
    let f = fixture(false);
    let c = f.agent.connect(peer(1), LAB_APPLICATION.into());
    let req = |pin: &[u8]| Request::InitToken {
        slot: SlotId(0),
        so_pin: zeroize::Zeroizing::new(pin.to_vec()),
        label: b"fresh".to_vec(),
    };
    assert_eq!(
        call(&f.agent, &c, req(b"2222")),
        err(ck::CKR_ACTION_PROHIBITED)
    );

    let f = fixture(true);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    create(a, &c, s, vec![Attribute::bool(ck::CKA_TOKEN, true)]);
    assert_eq!(call(a, &c, req(b"2222")), err(ck::CKR_SESSION_EXISTS));
    call(a, &c, Request::CloseSession { session: s });
    assert_eq!(call(a, &c, req(b"9999")), err(ck::CKR_PIN_INCORRECT));
    assert_eq!(call(a, &c, req(b"7777")), err(ck::CKR_PIN_INCORRECT));
    assert_eq!(call(a, &c, req(b"2222")), Response::Unit);
    assert_eq!(f.mock.object_count(), 0);
    let t = &a.tokens[0];
    assert!(!t.state.has_pin(Role::User));
    assert_eq!(t.label(), "fresh");
    let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: SlotId(0) }) else {
        panic!()
    };
    assert_eq!(info.label, "fresh");
    assert_eq!(info.flags & ck::CKF_USER_PIN_INITIALIZED, 0);
    assert_eq!(
        call(a, &c, Request::GetTokenInfo { slot: SlotId(5) }),
        err(ck::CKR_SLOT_ID_INVALID)
    );
}

/// An operation already under way passes its init's checks again on
/// every later call: a policy reloaded without its mechanism stops it.
#[test]
fn a_running_operation_is_checked_again_at_each_call() {
    let f = fixture(false);
    let a = &f.agent;
    let both = "[settings]\nmode = \"lab\"\nmechanisms = [\"CKM_SHA256\", \"CKM_ECDSA\"]\n";
    let ecdsa_only = "[settings]\nmode = \"lab\"\nmechanisms = [\"CKM_ECDSA\"]\n";
    a.set_policy(Policy::from_str(both, "test").unwrap());
    let c = a.connect(peer(1), LAB_APPLICATION.into());
    let s = open(a, &c, RW);
    let update = |init: Option<OpInit>| Request::Update {
        session: s,
        op: Op::Digest,
        init,
        data: vec![1; 8],
    };
    let init = OpInit {
        mechanism: Mechanism {
            mechanism: ck::CKM_SHA256,
            param: keyward_protocol::MechParam::None,
        },
        key: None,
    };
    assert_eq!(call(a, &c, update(Some(init))), Response::Data(vec![]));
    assert_eq!(call(a, &c, update(None)), Response::Data(vec![]));
    a.set_policy(Policy::from_str(ecdsa_only, "test").unwrap());
    assert_eq!(call(a, &c, update(None)), err(ck::CKR_MECHANISM_INVALID));
    assert_eq!(
        call(
            a,
            &c,
            Request::Final {
                session: s,
                op: Op::Digest,
                init: None,
                data: vec![],
            }
        ),
        err(ck::CKR_MECHANISM_INVALID)
    );
}

#[test]
fn token_info_and_limits() {
    let f = fixture(false);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: SlotId(0) }) else {
        panic!()
    };
    assert_eq!(info.label, "kw");
    assert_eq!(info.serial_number, virtual_serial("kw", "1234"));
    assert_eq!(info.serial_number.len(), 16);
    assert_eq!((info.session_count, info.rw_session_count), (1, 1));
    let want = ck::CKF_LOGIN_REQUIRED
        | ck::CKF_TOKEN_INITIALIZED
        | ck::CKF_USER_PIN_INITIALIZED
        | ck::CKF_RNG;
    assert_eq!(info.flags, want);
    assert_eq!(
        call(
            a,
            &c,
            Request::GenerateRandom {
                session: s,
                len: MAX_RANDOM + 1
            }
        ),
        err(ck::CKR_ARGUMENTS_BAD)
    );
    assert_eq!(
        call(
            a,
            &c,
            Request::OpenSession {
                slot: SlotId(0),
                flags: 0
            }
        ),
        err(ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED)
    );
    assert_eq!(
        call(
            a,
            &c,
            Request::GetSlotList {
                token_present: true
            }
        ),
        Response::List(vec![0])
    );
}

#[test]
fn a_concatenated_key_is_named_to_the_backend_by_its_backend_handle() {
    use keyward_protocol::MechParam;
    let f = fixture(false);
    let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
    let s = open(a, &c, RW);
    let other = object(create(a, &c, s, vec![]));
    let backend = c
        .lock()
        .object(0, other, crate::error::Error::KeyHandleInvalid)
        .unwrap()
        .backend;
    // The mock numbers sessions and objects together: the client's number
    // and the backend's differ, so a handle passed through untranslated
    // would show.
    assert_ne!(backend.get(), other.0);
    let concatenate = |h: u64| Mechanism {
        mechanism: ck::CKM_CONCATENATE_BASE_AND_KEY,
        param: MechParam::Ulong(h),
    };
    let asked = concatenate(other.0);
    let sent = a.mechanism(&c, 0, &asked).unwrap();
    assert_eq!(sent.param, MechParam::Ulong(backend.get()));
    assert_eq!(
        a.mechanism(&c, 0, &concatenate(other.0 + 10)).unwrap_err(),
        crate::error::Error::KeyHandleInvalid,
        "a handle the client does not hold names no backend object"
    );
    // Another mechanism's number is not a handle: passed as it is.
    let plain = Mechanism {
        mechanism: ck::CKM_AES_CBC_ENCRYPT_DATA,
        param: MechParam::Ulong(other.0),
    };
    assert_eq!(*a.mechanism(&c, 0, &plain).unwrap(), plain);
}
