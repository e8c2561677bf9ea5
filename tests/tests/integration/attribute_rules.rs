//! Each attribute has one accepted encoding on the wire, fixed by its
//! `CKA_*` type, so keyward reads a template as the HSM does: a `CKA_CLASS`
//! or `CKA_TOKEN` sent by a raw client as bytes, or a type given twice with
//! different values, is refused at decoding (the connection is closed) and
//! nothing reaches the backend token, so neither the strict-mode import ban
//! nor the inventory of generated token keys can be sidestepped. Through
//! the module, a C value whose length does not fit its type is
//! `CKR_ATTRIBUTE_VALUE_INVALID`, answered before anything is sent.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cryptoki::object::Attribute;
use cryptoki_sys::*;
use keyward_protocol::frame::{encode, read_message};
use keyward_protocol::{
    AttrValue, Attribute as WireAttr, Request, Response, SessionHandle, SlotId, Value, APP_VERSIONS,
};
use keyward_tests::admin::{install_policy, keyward_json, keyward_ok};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::p11::{Ctx, P256_PARAMS};
use keyward_tests::raw::{Attr, Mech};
use keyward_tests::{assert_rv, keyward_test};

/// Strict mode; applications generate P-256 signing keys (`app`).
fn strict_policy(tb: &Env) {
    install_policy(tb, &keyward_tests::admin::default_class_policy(""));
}

// ---------------------------------------------------------------------------
// A client speaking the socket protocol itself.

const CLOSE_BOUND: Duration = Duration::from_secs(5);

struct RawClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// A connection that said `Hello`, opened a read-write session on the
    /// first slot and logged in as user: `(client, session)`.
    fn logged_in(tb: &Env) -> (RawClient, SessionHandle) {
        let stream = UnixStream::connect(&tb.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", tb.socket));
        stream
            .set_read_timeout(Some(CLOSE_BOUND))
            .expect("set_read_timeout");
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        match c.call(&Request::Hello {
            versions: APP_VERSIONS,
        }) {
            Response::Hello(_) => {}
            other => panic!("Hello answered {other:?}"),
        }
        let slot = match c.call(&Request::GetSlotList {
            token_present: true,
        }) {
            Response::List(slots) if !slots.is_empty() => SlotId(slots[0]),
            other => panic!("GetSlotList answered {other:?}"),
        };
        let session = match c.call(&Request::OpenSession {
            slot,
            flags: CKF_RW_SESSION | CKF_SERIAL_SESSION,
        }) {
            Response::Handle(h) => SessionHandle(h),
            other => panic!("OpenSession answered {other:?}"),
        };
        match c.call(&Request::Login {
            session,
            user_type: CKU_USER,
            pin: Some(keyward_protocol::Secret::from(tb.pin.as_bytes().to_vec())),
        }) {
            Response::Unit => {}
            other => panic!("Login answered {other:?}"),
        }
        (c, session)
    }

    fn send(&mut self, req: &Request) {
        let mut frame = Vec::new();
        encode(req, &mut frame).expect("encode a request");
        self.stream.write_all(&frame).expect("send a request");
    }

    fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        read_message(&mut self.stream, &mut self.buf)
            .unwrap_or_else(|e| panic!("no answer to {req:?}: {e}"))
    }

    /// Sends `req` and asserts that the agent closes the connection without
    /// answering it.
    #[track_caller]
    fn refused(mut self, req: &Request, what: &str) {
        self.send(req);
        let start = Instant::now();
        let mut b = [0u8; 4096];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return,
                Ok(n) => {
                    let answer: Result<Response, _> =
                        keyward_protocol::frame::decode(b.get(8..n).unwrap_or_default());
                    panic!("{what}: the agent answered ({answer:?}) instead of refusing the frame")
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    return
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "{what}: the connection stayed open for {:?}: {e}",
                    start.elapsed()
                ),
            }
        }
    }
}

fn leaf(attr_type: u64, value: Value) -> WireAttr {
    WireAttr {
        attr_type,
        value: AttrValue::Leaf(value),
    }
}

/// The labels of the unmanaged keys on the backend token (`keyward discover`).
fn shadow_labels(tb: &Env) -> Vec<String> {
    let shadows = keyward_json(tb, &["discover"], 0);
    shadows
        .items()
        .iter()
        .map(|s| s.str_at("label").to_owned())
        .collect()
}

keyward_test!(fn typed_attributes_sent_as_bytes_are_refused_at_decoding(tb) {
    tb.require_agent("raw frames on the agent's socket");
    strict_policy(&tb);

    // The import the strict mode bans: a non-sensitive, extractable AES
    // token key with a value chosen by the client.
    let import = |class: Value, label: &str| {
        vec![
            leaf(CKA_CLASS, class),
            leaf(CKA_KEY_TYPE, Value::Ulong(CKK_AES)),
            leaf(CKA_TOKEN, Value::Bool(true)),
            leaf(CKA_SENSITIVE, Value::Bool(false)),
            leaf(CKA_EXTRACTABLE, Value::Bool(true)),
            leaf(CKA_ENCRYPT, Value::Bool(true)),
            leaf(CKA_LABEL, Value::Bytes(label.as_bytes().to_vec())),
            leaf(CKA_VALUE, Value::Bytes(vec![0x42; 32])),
        ]
    };
    let (mut c, session) = RawClient::logged_in(&tb);
    // Typed, the import is refused by the policy, and the connection lives.
    match c.call(&Request::CreateObject { session, template: import(Value::Ulong(CKO_SECRET_KEY), "typed-import") }) {
        Response::Err(rv) => assert_eq!(rv, CKR_ACTION_PROHIBITED, "a typed secret key import"),
        other => panic!("a typed secret key import in strict mode: {other:?}"),
    }
    // Without CKA_CLASS, the kind of object cannot be checked: refused too.
    let mut classless = import(Value::Ulong(CKO_SECRET_KEY), "classless-import");
    classless.remove(0);
    match c.call(&Request::CreateObject { session, template: classless }) {
        Response::Err(rv) => assert_eq!(rv, CKR_ACTION_PROHIBITED, "an import without CKA_CLASS"),
        other => panic!("an import without CKA_CLASS in strict mode: {other:?}"),
    }
    // CKA_CLASS as 8 raw bytes.
    let class_bytes = Value::Bytes(CKO_SECRET_KEY.to_ne_bytes().to_vec());
    c.refused(&Request::CreateObject { session, template: import(class_bytes, "bytes-import") }, "CKA_CLASS as bytes");
    // CKA_CLASS twice: a data object for keyward, a secret key for a
    // backend that takes the last value.
    let (c, session) = RawClient::logged_in(&tb);
    let mut twice = import(Value::Ulong(CKO_DATA), "twice-import");
    twice.push(leaf(CKA_CLASS, Value::Ulong(CKO_SECRET_KEY)));
    c.refused(&Request::CreateObject { session, template: twice }, "CKA_CLASS given twice");

    // A token key pair whose CKA_TOKEN travels as a byte: the HSM would
    // keep it, the inventory would not know it.
    let pair = |token: Value, label: &str| Request::GenerateKeyPair {
        session: SessionHandle(0),
        mechanism: keyward_protocol::Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        public_template: vec![
            leaf(CKA_TOKEN, token.clone()),
            leaf(CKA_VERIFY, Value::Bool(true)),
            leaf(CKA_EC_PARAMS, Value::Bytes(P256_PARAMS.to_vec())),
            leaf(CKA_LABEL, Value::Bytes(label.as_bytes().to_vec())),
        ],
        private_template: vec![
            leaf(CKA_TOKEN, token),
            leaf(CKA_PRIVATE, Value::Bool(true)),
            leaf(CKA_SIGN, Value::Bool(true)),
            leaf(CKA_LABEL, Value::Bytes(label.as_bytes().to_vec())),
        ],
    };
    let with_session = |mut r: Request, s: SessionHandle| {
        if let Request::GenerateKeyPair { session, .. } = &mut r {
            *session = s;
        }
        r
    };
    let (mut c, session) = RawClient::logged_in(&tb);
    // Typed, a session pair of the class is generated on the same connection.
    match c.call(&with_session(pair(Value::Bool(false), "typed-pair"), session)) {
        Response::KeyPair { .. } => {}
        other => panic!("a typed session key pair of the default class: {other:?}"),
    }
    c.refused(&with_session(pair(Value::Bytes(vec![1]), "bytes-pair"), session), "CKA_TOKEN as a byte string");

    // Nothing of it reached the backend token; the agent still serves.
    let shadows = shadow_labels(&tb);
    for label in ["bytes-import", "twice-import", "bytes-pair"] {
        assert!(!shadows.iter().any(|l| l == label), "{label} is on the backend token: {shadows:?}");
    }
    keyward_ok(&tb, &["key", "show", "bytes-pair"], 4);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    for label in ["bytes-import", "twice-import", "bytes-pair"] {
        let found = s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]).expect("C_FindObjects");
        assert!(found.is_empty(), "{label}: {found:?}");
    }
});

keyward_test!(fn values_of_the_wrong_length_are_invalid_in_the_module(tb) {
    tb.require_agent("keyward's one encoding per attribute type");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let data = |extra: Attr| {
        vec![
            Attr::Ulong(CKA_CLASS, CKO_DATA),
            Attr::Bool(CKA_TOKEN, false),
            Attr::Bytes(CKA_LABEL, b"shape".to_vec()),
            extra,
        ]
    };
    // Well-formed: created.
    let (rv, _) = ctx.raw.create_object(h, &data(Attr::Bytes(CKA_VALUE, b"v".to_vec())));
    assert_rv!(rv, CKR_OK, "a data object");
    // A 4-byte CKA_TOKEN, a 1-byte CKA_CLASS, a 4-byte CKA_CLASS.
    let bad = [
        Attr::Bytes(CKA_TOKEN, vec![1, 0, 0, 0]),
        Attr::Bytes(CKA_PRIVATE, vec![]),
        Attr::Bytes(CKA_CLASS, vec![CKO_SECRET_KEY as u8]),
        Attr::Bytes(CKA_CLASS, (CKO_SECRET_KEY as u32).to_ne_bytes().to_vec()),
    ];
    for a in bad {
        let t = vec![Attr::Bool(CKA_TOKEN, false), Attr::Bytes(CKA_LABEL, b"shape".to_vec()), a.clone()];
        let (rv, _) = ctx.raw.create_object(h, &t);
        assert_rv!(rv, CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject with {a:?}");
        let mut key = vec![
            Attr::Ulong(CKA_VALUE_LEN, 32),
            Attr::Bool(CKA_ENCRYPT, true),
        ];
        key.push(a.clone());
        assert_rv!(
            ctx.raw.generate_key(h, &Mech::plain(CKM_AES_KEY_GEN), &key).0,
            CKR_ATTRIBUTE_VALUE_INVALID,
            "C_GenerateKey with {a:?}"
        );
    }
    // A type given twice with different values.
    let (rv, _) = ctx.raw.create_object(h, &data(Attr::Bool(CKA_TOKEN, true)));
    assert_rv!(rv, CKR_TEMPLATE_INCONSISTENT, "CKA_TOKEN false then true");
});
