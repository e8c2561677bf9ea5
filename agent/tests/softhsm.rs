//! The real agent binary on a real SoftHSM2 token, spoken to over its socket
//! with the wire protocol directly (no module in between).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cryptoki_sys as ck;
use keyward_protocol::admin::{AdminRequest, AdminResponse};
use keyward_protocol::frame::{read_message, write_message};
use keyward_protocol::message::OpInit;
use keyward_protocol::{
    AttrResult, AttrValue, Attribute, Mechanism, ObjectHandle, Op, Request, Response,
    SessionHandle, SlotId, Value, ADMIN_VERSIONS, APP_VERSIONS,
};
use zeroize::Zeroizing;

mod common;
use common::Testbed;
/// Distinctive, so that a search of the log for them cannot hit a pid.
const BACKEND_PIN: &str = "backend-pin-q7z";
const USER_PIN: &str = "user-pin-x9w";
/// DER of the P-256 curve OID.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn u(v: ck::CK_ULONG) -> u64 {
    v
}

/// Stores `pin` as the `role` PIN of token `keyward` (`set-pin`).
fn set_pin(bed: &Testbed, role: &str, pin: &str) {
    let mut child = bed
        .agent()
        .args(["set-pin", "--token", "keyward", "--role", role])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pin}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "set-pin {role} failed");
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(path: &Path) -> Conn {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn call(&mut self, req: Request) -> Response {
        write_message(&mut self.stream, &req, &mut self.buf).unwrap();
        read_message(&mut self.stream, &mut self.buf).unwrap()
    }

    fn hello(path: &Path) -> Conn {
        let mut c = Conn::open(path);
        match c.call(Request::Hello {
            versions: APP_VERSIONS,
        }) {
            Response::Hello(h) => assert_eq!(h.version, APP_VERSIONS.max),
            other => panic!("{other:?}"),
        }
        c
    }
}

fn pin(p: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(p.as_bytes().to_vec())
}

fn session_handle(r: Response) -> SessionHandle {
    match r {
        Response::Handle(h) => SessionHandle(h),
        other => panic!("expected a handle, got {other:?}"),
    }
}

fn objects(r: Response) -> Vec<ObjectHandle> {
    match r {
        Response::List(v) => {
            let mut v: Vec<ObjectHandle> = v.into_iter().map(ObjectHandle).collect();
            v.sort_unstable();
            v
        }
        other => panic!("expected a list, got {other:?}"),
    }
}

fn list(r: Response) -> Vec<u64> {
    match r {
        Response::List(mut v) => {
            v.sort_unstable();
            v
        }
        other => panic!("expected a list, got {other:?}"),
    }
}

#[test]
fn agent_serves_a_softhsm_token() {
    let bed = Testbed::new(BACKEND_PIN, None);
    set_pin(&bed, "user", USER_PIN);
    set_pin(&bed, "so", "2222");
    let pid = bed.start();
    let mut c = Conn::hello(&bed.socket());

    // Slots and token.
    assert_eq!(
        c.call(Request::GetSlotList {
            token_present: true
        }),
        Response::List(vec![0])
    );
    let Response::TokenInfo(info) = c.call(Request::GetTokenInfo { slot: SlotId(0) }) else {
        panic!("no token info")
    };
    assert_eq!(info.label, "keyward");
    assert_eq!(info.manufacturer, "keyward");
    assert_eq!(info.serial_number.len(), 16);
    assert_ne!(info.flags & u(ck::CKF_USER_PIN_INITIALIZED), 0);
    assert_ne!(info.flags & u(ck::CKF_LOGIN_REQUIRED), 0);
    let mechs = list(c.call(Request::GetMechanismList { slot: SlotId(0) }));
    assert!(mechs.contains(&u(ck::CKM_ECDSA)));
    let Response::SlotInfo(slot) = c.call(Request::GetSlotInfo { slot: SlotId(0) }) else {
        panic!("no slot info")
    };
    assert_ne!(slot.flags & u(ck::CKF_TOKEN_PRESENT), 0);

    // Session and login.
    let s = session_handle(c.call(Request::OpenSession {
        slot: SlotId(0),
        flags: u(ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION),
    }));
    assert_eq!(s, SessionHandle(1));
    let login = |c: &mut Conn, p: &str| {
        c.call(Request::Login {
            session: s,
            user_type: u(ck::CKU_USER),
            pin: Some(pin(p)),
        })
    };
    assert_eq!(
        login(&mut c, "9999"),
        Response::Err(u(ck::CKR_PIN_INCORRECT))
    );
    assert_eq!(login(&mut c, USER_PIN), Response::Unit);

    // An EC P-256 key pair, a signature and its verification.
    let label = b"kw-test".to_vec();
    let r = c.call(Request::GenerateKeyPair {
        session: s,
        mechanism: Mechanism::plain(u(ck::CKM_EC_KEY_PAIR_GEN)),
        public_template: vec![
            Attribute::bytes(u(ck::CKA_EC_PARAMS), P256),
            Attribute::bool(u(ck::CKA_TOKEN), true),
            Attribute::bool(u(ck::CKA_VERIFY), true),
            Attribute::bytes(u(ck::CKA_LABEL), label.clone()),
        ],
        private_template: vec![
            Attribute::bool(u(ck::CKA_TOKEN), true),
            Attribute::bool(u(ck::CKA_PRIVATE), true),
            Attribute::bool(u(ck::CKA_SENSITIVE), true),
            Attribute::bool(u(ck::CKA_SIGN), true),
            Attribute::bytes(u(ck::CKA_LABEL), label.clone()),
        ],
    });
    let Response::KeyPair { public, private } = r else {
        panic!("key pair generation failed: {r:?}\n{}", bed.log())
    };
    let digest = [0x5au8; 32];
    let ecdsa = |key| {
        Some(OpInit {
            mechanism: Mechanism::plain(u(ck::CKM_ECDSA)),
            key: Some(key),
        })
    };
    let Response::Data(sig) = c.call(Request::Single {
        session: s,
        op: Op::Sign,
        init: ecdsa(private),
        data: digest.to_vec(),
    }) else {
        panic!("sign failed")
    };
    assert_eq!(sig.len(), 64);
    assert_eq!(
        c.call(Request::Verify {
            session: s,
            init: ecdsa(public),
            data: digest.to_vec(),
            signature: sig.clone(),
        }),
        Response::Unit
    );
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert_eq!(
        c.call(Request::Verify {
            session: s,
            init: ecdsa(public),
            data: digest.to_vec(),
            signature: bad,
        }),
        Response::Err(u(ck::CKR_SIGNATURE_INVALID))
    );

    // Find by label: the same handles.
    let by_label = vec![Attribute::bytes(u(ck::CKA_LABEL), label.clone())];
    let mut both = vec![public, private];
    both.sort_unstable();
    assert_eq!(
        objects(c.call(Request::FindObjects {
            session: s,
            template: by_label.clone()
        })),
        both
    );

    // Attribute values: a value, a sensitive one, an invalid one, a bool.
    let Response::Attributes(attrs) = c.call(Request::GetAttributeValue {
        session: s,
        object: private,
        types: vec![
            u(ck::CKA_KEY_TYPE),
            u(ck::CKA_VALUE),
            u(ck::CKA_LABEL),
            u(ck::CKA_MODULUS),
            u(ck::CKA_SIGN),
        ],
    }) else {
        panic!("no attributes")
    };
    assert_eq!(
        attrs,
        vec![
            AttrResult::Value(AttrValue::Leaf(Value::Ulong(u(ck::CKK_EC)))),
            AttrResult::Sensitive,
            AttrResult::Value(AttrValue::Leaf(Value::Bytes(label.clone()))),
            AttrResult::Invalid,
            AttrResult::Value(AttrValue::Leaf(Value::Bool(true))),
        ]
    );

    // A second connection of the same process shares sessions, login and
    // handles.
    let mut c2 = Conn::hello(&bed.socket());
    let Response::SessionInfo(si) = c2.call(Request::GetSessionInfo { session: s }) else {
        panic!("session not shared")
    };
    assert_eq!(si.state, u(ck::CKS_RW_USER_FUNCTIONS));
    assert!(matches!(
        c2.call(Request::Single {
            session: s,
            op: Op::Sign,
            init: ecdsa(private),
            data: digest.to_vec(),
        }),
        Response::Data(_)
    ));
    drop(c2);

    // Another process (this test binary, re-run as a helper) cannot use the
    // session or the key handle: it is another client.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "other_process_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_SOCKET, bed.socket())
        .env(HELPER_HANDLES, format!("{s} {private}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helper failed: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{out:?}"
    );

    // Bad frames close only their own connection.
    for garbage in [
        b"XXXXXXXXXXXX".to_vec(),
        b"KW\x09\x00\x00\x00\x00\x00".to_vec(),
        b"KW\x01\x00\xff\xff\xff\x7f".to_vec(),
        b"KW\x01\x00\x03\x00\x00\x00\xff\xff\xff".to_vec(),
    ] {
        let mut bad = Conn::open(&bed.socket());
        bad.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        bad.stream.write_all(&garbage).unwrap();
        let mut rest = Vec::new();
        match bad.stream.read_to_end(&mut rest) {
            Ok(n) => assert_eq!(n, 0, "the agent answers nothing to garbage and closes"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the agent did not close a connection that sent garbage: {e}"),
        }
    }
    // A request before Hello is refused the same way.
    let mut early = Conn::open(&bed.socket());
    write_message(
        &mut early.stream,
        &Request::GetSlotList {
            token_present: false,
        },
        &mut early.buf,
    )
    .unwrap();
    assert!(read_message::<_, Response>(&mut early.stream, &mut early.buf).is_err());
    assert!(matches!(
        c.call(Request::GetSessionInfo { session: s }),
        Response::SessionInfo(_)
    ));

    // Logged out, private objects are gone from view.
    assert_eq!(c.call(Request::Logout { session: s }), Response::Unit);
    assert_eq!(
        objects(c.call(Request::FindObjects {
            session: s,
            template: by_label
        })),
        vec![public]
    );
    assert_eq!(
        c.call(Request::Single {
            session: s,
            op: Op::Sign,
            init: ecdsa(private),
            data: digest.to_vec(),
        }),
        Response::Err(u(ck::CKR_KEY_HANDLE_INVALID))
    );
    // C_InitToken is off in this configuration.
    assert_eq!(
        c.call(Request::InitToken {
            slot: SlotId(0),
            so_pin: pin("2222"),
            label: b"x".to_vec()
        }),
        Response::Err(u(ck::CKR_ACTION_PROHIBITED))
    );

    // The admin socket.
    let mut admin = UnixStream::connect(bed.admin_socket()).unwrap();
    let mut buf = Vec::new();
    let agreed = keyward_protocol::admin::hello(&mut admin, &mut buf).unwrap();
    assert_eq!(agreed.version, ADMIN_VERSIONS.max);
    write_message(&mut admin, &AdminRequest::Status, &mut buf).unwrap();
    let AdminResponse::Status(st) = read_message(&mut admin, &mut buf).unwrap() else {
        panic!("no status")
    };
    assert_eq!(
        (st.app_protocol, st.admin_protocol),
        (APP_VERSIONS, ADMIN_VERSIONS)
    );
    assert_eq!(st.pid, pid);
    assert_eq!(st.tokens.len(), 1);
    let t = &st.tokens[0];
    assert!(t.backend_present, "{t:?}");
    assert_eq!(t.backend_label, "kw-backend");
    assert!(t.user_pin_initialized);
    assert!(t.backend_error.is_none());
    drop(admin);
    drop(c);

    // SIGTERM: a clean stop that removes the sockets.
    let status = bed.stop();
    assert!(status.success(), "{status}:\n{}", bed.log());
    assert!(!bed.socket().exists());
    assert!(!bed.admin_socket().exists());
    let log = bed.log();
    assert!(
        !log.contains(BACKEND_PIN),
        "the backend PIN leaked into the log"
    );
    assert!(!log.contains(USER_PIN), "the user PIN leaked into the log");
}

const HELPER_SOCKET: &str = "KEYWARD_TEST_HELPER_SOCKET";
const HELPER_HANDLES: &str = "KEYWARD_TEST_HELPER_HANDLES";

/// Run by `agent_serves_a_softhsm_token` in a child process; not on its own.
#[test]
#[ignore = "a helper process of agent_serves_a_softhsm_token"]
fn other_process_helper() {
    let socket = std::env::var_os(HELPER_SOCKET)
        .expect("run by agent_serves_a_softhsm_token, which sets the socket");
    let handles = std::env::var(HELPER_HANDLES).unwrap();
    let (s, key) = handles.split_once(' ').unwrap();
    let (s, key) = (
        SessionHandle(s.parse().unwrap()),
        ObjectHandle(key.parse().unwrap()),
    );
    let mut c = Conn::hello(Path::new(&socket));
    assert_eq!(
        c.call(Request::GetSessionInfo { session: s }),
        Response::Err(u(ck::CKR_SESSION_HANDLE_INVALID))
    );
    let mine = session_handle(c.call(Request::OpenSession {
        slot: SlotId(0),
        flags: u(ck::CKF_SERIAL_SESSION),
    }));
    assert_eq!(mine, SessionHandle(1), "handles are numbered per client");
    assert_eq!(
        c.call(Request::Single {
            session: mine,
            op: Op::Sign,
            init: Some(OpInit {
                mechanism: Mechanism::plain(u(ck::CKM_ECDSA)),
                key: Some(key),
            }),
            data: vec![0; 32],
        }),
        Response::Err(u(ck::CKR_KEY_HANDLE_INVALID))
    );
}

#[test]
fn check_and_bad_configs_fail_clearly() {
    let bed = Testbed::new(BACKEND_PIN, None);
    let out = bed.agent().arg("check").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, text.replace("allow_init_token", "allow_init")).unwrap();
    let out = bed.agent().arg("check").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml") && err.contains("allow_init"),
        "{err}"
    );
}
