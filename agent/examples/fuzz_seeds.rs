//! Writes the seed corpus of the fuzz targets `frame`, `admin`,
//! `backup_file`, `notice`, `agent_request` and `admin_request`
//! (`fuzz/corpus/<target>/`): real messages of the application and admin
//! protocols encoded by keyward's own encoder, a backup file laid out as
//! `keyward backup create` writes it, the fleet's change notices, and
//! whole sessions (an application's, an administrator's) as the request
//! targets read them. `cargo run -p keyward-agent --example fuzz_seeds`.

use std::fs;
use std::path::Path;

use keyward_inventory::{KeyRecord, KeyVersion};
use keyward_policy::{Algorithm, ApprovalStatus, Curve, Decision, KeyState, Operation, Purpose};
use keyward_protocol::admin::{
    AdminErrorKind, AdminHello, AdminRequest, AdminResponse, ApprovalRequest, AuditRequest,
    DecisionInfo, KeyAction, KeyRequest, KeyResponse, ReportRequest,
};
use keyward_protocol::certificate::CertRequest;
use keyward_protocol::frame;
use keyward_protocol::message::OpInit;
use keyward_protocol::version::{ADMIN_VERSIONS, APP_VERSIONS};
use keyward_protocol::{
    Attribute, HelloReply, MechParam, Mechanism, ObjectHandle, Op, Request, Response, Secret,
    SessionHandle, SlotId,
};
use serde::Serialize;

const CKA_CLASS: u64 = 0x0;
const CKA_LABEL: u64 = 0x3;
const CKA_ID: u64 = 0x102;
const CKA_SIGN: u64 = 0x108;
const CKA_EC_PARAMS: u64 = 0x180;
const CKO_DATA: u64 = 0;
const CKO_PRIVATE_KEY: u64 = 3;
const CKA_TOKEN: u64 = 0x1;
const CKM_EC_KEY_PAIR_GEN: u64 = 0x1040;
const CKM_ECDSA: u64 = 0x1041;
const CKM_RSA_PKCS_PSS: u64 = 0x0d;
const CKM_SHA256: u64 = 0x250;
const CKG_MGF1_SHA256: u64 = 2;
/// The DER of the P-256 curve's object identifier.
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("corpus file");
}

/// The input of the request targets: each message's payload after its
/// length as a little-endian `u16` (the harness frames each payload as the
/// socket would).
fn chunks_of<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let payload = postcard::to_stdvec(m).expect("encodes");
        let len = u16::try_from(payload.len()).expect("a seed message is short");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

/// An application's sessions on the fuzzed agent (user PIN `1111`, the
/// harness's): each a sequence of requests whose handles follow from the
/// ones before (sessions and objects are numbered from 1 per client).
fn app_sessions() -> Vec<(&'static str, Vec<Request>)> {
    let s = SessionHandle(1);
    let pin = || Some(Secret::new(b"1111".to_vec()));
    let open = Request::OpenSession {
        slot: SlotId(0),
        flags: 6,
    };
    let login = Request::Login {
        session: s,
        user_type: 1,
        pin: pin(),
    };
    let ecdsa = |key| OpInit {
        mechanism: Mechanism::plain(CKM_ECDSA),
        key: Some(ObjectHandle(key)),
    };
    let key_pair = Request::GenerateKeyPair {
        session: s,
        mechanism: Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        public_template: vec![
            Attribute::bytes(CKA_EC_PARAMS, P256.to_vec()),
            Attribute::bytes(CKA_ID, vec![9, 9]),
        ],
        private_template: vec![
            Attribute::bool(CKA_SIGN, true),
            Attribute::bytes(CKA_ID, vec![9, 9]),
            Attribute::bytes(CKA_LABEL, b"web-tls".to_vec()),
        ],
    };
    vec![
        (
            "sign",
            vec![
                Request::GetSlotList {
                    token_present: true,
                },
                Request::GetTokenInfo { slot: SlotId(0) },
                open.clone(),
                login.clone(),
                key_pair.clone(),
                Request::FindObjects {
                    session: s,
                    template: vec![
                        Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
                        Attribute::bytes(CKA_ID, vec![9, 9]),
                    ],
                },
                Request::OperationInit {
                    session: s,
                    op: Op::Sign,
                    init: ecdsa(2),
                },
                Request::Single {
                    session: s,
                    op: Op::Sign,
                    init: Some(ecdsa(2)),
                    data: vec![0x5a; 32],
                },
                Request::GetAttributeValue {
                    session: s,
                    object: ObjectHandle(2),
                    types: vec![CKA_CLASS, CKA_LABEL, CKA_ID, CKA_SIGN],
                },
                Request::Logout { session: s },
                Request::CloseSession { session: s },
            ],
        ),
        (
            "sign-parts",
            vec![
                open.clone(),
                login.clone(),
                key_pair,
                Request::OperationInit {
                    session: s,
                    op: Op::Sign,
                    init: ecdsa(2),
                },
                Request::Update {
                    session: s,
                    op: Op::Sign,
                    init: Some(ecdsa(2)),
                    data: b"first part".to_vec(),
                },
                Request::Final {
                    session: s,
                    op: Op::Sign,
                    init: Some(ecdsa(2)),
                    data: b"held back".to_vec(),
                },
                Request::OperationInit {
                    session: s,
                    op: Op::Verify,
                    init: ecdsa(1),
                },
                Request::Verify {
                    session: s,
                    init: Some(ecdsa(1)),
                    data: vec![0x5a; 32],
                    signature: vec![1; 64],
                },
            ],
        ),
    ]
    .into_iter()
    .chain(plain_sessions(&open, &login))
    .collect()
}

/// Sessions without keys of their own: objects, PINs and a digest.
fn plain_sessions(open: &Request, login: &Request) -> Vec<(&'static str, Vec<Request>)> {
    let s = SessionHandle(1);
    vec![
        (
            "objects",
            vec![
                open.clone(),
                login.clone(),
                Request::CreateObject {
                    session: s,
                    template: vec![
                        Attribute::ulong(CKA_CLASS, CKO_DATA),
                        Attribute::bool(CKA_TOKEN, true),
                        Attribute::bytes(CKA_LABEL, b"config".to_vec()),
                        Attribute::bytes(CKA_ID, vec![1, 2, 3, 4]),
                    ],
                },
                Request::CopyObject {
                    session: s,
                    object: ObjectHandle(1),
                    template: vec![Attribute::bool(CKA_TOKEN, false)],
                },
                Request::SetAttributeValue {
                    session: s,
                    object: ObjectHandle(2),
                    template: vec![Attribute::bytes(CKA_LABEL, b"copy".to_vec())],
                },
                Request::GetObjectSize {
                    session: s,
                    object: ObjectHandle(2),
                },
                Request::FindObjects {
                    session: s,
                    template: Vec::new(),
                },
                Request::DestroyObject {
                    session: s,
                    object: ObjectHandle(1),
                },
                Request::GenerateRandom {
                    session: s,
                    len: 32,
                },
                Request::SeedRandom {
                    session: s,
                    seed: vec![1; 16],
                },
            ],
        ),
        (
            "pins",
            vec![
                open.clone(),
                Request::Login {
                    session: s,
                    user_type: 1,
                    pin: Some(Secret::new(b"9999".to_vec())),
                },
                Request::Login {
                    session: s,
                    user_type: 0,
                    pin: Some(Secret::new(b"2222".to_vec())),
                },
                Request::InitPin {
                    session: s,
                    pin: Secret::new(b"3333".to_vec()),
                },
                Request::Logout { session: s },
                Request::GetSessionInfo { session: s },
                Request::CloseAllSessions { slot: SlotId(0) },
            ],
        ),
        (
            "digest",
            vec![
                open.clone(),
                Request::OperationInit {
                    session: s,
                    op: Op::Digest,
                    init: OpInit {
                        mechanism: Mechanism::plain(CKM_SHA256),
                        key: None,
                    },
                },
                Request::Update {
                    session: s,
                    op: Op::Digest,
                    init: None,
                    data: b"abc".to_vec(),
                },
                Request::Final {
                    session: s,
                    op: Op::Digest,
                    init: None,
                    data: Vec::new(),
                },
                Request::GetMechanismList { slot: SlotId(0) },
                Request::GetMechanismInfo {
                    slot: SlotId(0),
                    mechanism: CKM_ECDSA,
                },
            ],
        ),
    ]
}

/// An administrator's sessions on the fuzzed agent (its policy has the
/// class `signing`, ec:p256 keys, and the application `app`).
fn admin_sessions() -> Vec<(&'static str, Vec<AdminRequest>)> {
    let key = |k| AdminRequest::Key(k);
    let name = || "fz".to_owned();
    vec![
        (
            "lifecycle",
            vec![
                AdminRequest::Status,
                key(KeyRequest::Create {
                    name: name(),
                    class: "signing".into(),
                    algorithm: Some(Algorithm::Ec(Curve::P256)),
                    token: Some("kw".into()),
                    owner: None,
                }),
                key(KeyRequest::List {
                    token: None,
                    state: None,
                }),
                key(KeyRequest::Show {
                    name: name(),
                    token: None,
                }),
                key(KeyRequest::GrantAdd {
                    key: name(),
                    token: None,
                    application: "app".into(),
                    operations: vec![Operation::Sign],
                    until: None,
                }),
                key(KeyRequest::Transition {
                    name: name(),
                    token: None,
                    action: KeyAction::Suspend,
                    reason: Some("maintenance".into()),
                    code: None,
                }),
                AdminRequest::DryRun(KeyRequest::Rotate {
                    name: name(),
                    token: None,
                }),
                key(KeyRequest::Rotate {
                    name: name(),
                    token: None,
                }),
                key(KeyRequest::Verify {
                    name: name(),
                    token: None,
                }),
            ],
        ),
        (
            "audit",
            vec![
                AdminRequest::Audit(AuditRequest::Verify),
                AdminRequest::Audit(AuditRequest::Tail {
                    n: 5,
                    after_seq: None,
                }),
                AdminRequest::Audit(AuditRequest::Anchor),
                AdminRequest::Report(ReportRequest::default()),
            ],
        ),
        (
            "requests",
            admin_requests().into_iter().map(|(_, r)| r).collect(),
        ),
    ]
}

fn frame_of<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::encode(msg, &mut buf).expect("encodes");
    buf
}

fn requests() -> Vec<(&'static str, Request)> {
    let session = SessionHandle(1);
    let template = vec![
        Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
        Attribute::bytes(CKA_LABEL, b"web-tls".to_vec()),
        Attribute::bytes(CKA_ID, vec![1, 2, 3, 4]),
    ];
    vec![
        (
            "hello",
            Request::Hello {
                versions: APP_VERSIONS,
            },
        ),
        (
            "slot-list",
            Request::GetSlotList {
                token_present: true,
            },
        ),
        ("token-info", Request::GetTokenInfo { slot: SlotId(0) }),
        (
            "open-session",
            Request::OpenSession {
                slot: SlotId(0),
                flags: 6,
            },
        ),
        (
            "login",
            Request::Login {
                session,
                user_type: 1,
                pin: Some(Secret::new(b"1234".to_vec())),
            },
        ),
        (
            "find-objects",
            Request::FindObjects {
                session,
                template: template.clone(),
            },
        ),
        (
            "create-object",
            Request::CreateObject {
                session,
                template: vec![
                    Attribute::bool(CKA_SIGN, true),
                    Attribute::bytes(CKA_EC_PARAMS, P256.to_vec()),
                ],
            },
        ),
        (
            "get-attributes",
            Request::GetAttributeValue {
                session,
                object: ObjectHandle(7),
                types: vec![CKA_CLASS, CKA_LABEL, CKA_ID],
            },
        ),
        (
            "sign-init",
            Request::OperationInit {
                session,
                op: Op::Sign,
                init: OpInit {
                    mechanism: Mechanism::plain(CKM_ECDSA),
                    key: Some(ObjectHandle(7)),
                },
            },
        ),
        (
            "sign-pss",
            Request::Single {
                session,
                op: Op::Sign,
                init: Some(OpInit {
                    mechanism: Mechanism {
                        mechanism: CKM_RSA_PKCS_PSS,
                        param: MechParam::RsaPss {
                            hash_alg: CKM_SHA256,
                            mgf: CKG_MGF1_SHA256,
                            salt_len: 32,
                        },
                    },
                    key: Some(ObjectHandle(8)),
                }),
                data: vec![0x5a; 32],
            },
        ),
        ("random", Request::GenerateRandom { session, len: 32 }),
        ("logout", Request::Logout { session }),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "hello-reply",
            Response::Hello(HelloReply {
                version: APP_VERSIONS.max,
                agent_version: "0.1.0".into(),
                instance: 42,
            }),
        ),
        ("unit", Response::Unit),
        ("error", Response::Err(0x101)),
        ("handle", Response::Handle(3)),
        (
            "key-pair",
            Response::KeyPair {
                public: ObjectHandle(9),
                private: ObjectHandle(10),
            },
        ),
        (
            "data",
            Response::Data(vec![0x30, 0x44, 0x02, 0x20, 1, 2, 3]),
        ),
        ("list", Response::List(vec![1, 2, 3])),
    ]
}

fn approval() -> ApprovalRequest {
    ApprovalRequest {
        id: "00112233445566778899aabbccddeeff".into(),
        action: "destroy".into(),
        target: "kw/web-tls".into(),
        parameters: "{\"version\":1}".into(),
        requester: "alice".into(),
        reason: "retired service".into(),
        created_at: 1_790_000_000,
        expires_at: 1_790_086_400,
        status: ApprovalStatus::Pending,
        needed: 2,
        decisions: vec![DecisionInfo {
            administrator: "bob".into(),
            decision: Decision::Approve,
            at: 1_790_000_100,
        }],
        outcome: String::new(),
    }
}

fn admin_requests() -> Vec<(&'static str, AdminRequest)> {
    vec![
        (
            "hello",
            AdminRequest::Hello {
                versions: ADMIN_VERSIONS,
            },
        ),
        ("status", AdminRequest::Status),
        (
            "create",
            AdminRequest::Key(KeyRequest::Create {
                name: "web-tls".into(),
                class: "tls-server".into(),
                algorithm: Some(Algorithm::Ed25519),
                token: Some("kw".into()),
                owner: None,
            }),
        ),
        (
            "revoke",
            AdminRequest::Key(KeyRequest::Transition {
                name: "web-tls".into(),
                token: None,
                action: KeyAction::Revoke { rotate: true },
                reason: Some("compromised".into()),
                code: None,
            }),
        ),
        (
            "grant",
            AdminRequest::Key(KeyRequest::GrantAdd {
                key: "web-tls".into(),
                token: None,
                application: "nginx".into(),
                operations: vec![Operation::Sign],
                until: Some(1_800_000_000),
            }),
        ),
        (
            "decide",
            AdminRequest::Key(KeyRequest::RequestDecide {
                id: "00112233445566778899aabbccddeeff".into(),
                decision: Decision::Approve,
                signature: Some(vec![7; 64]),
            }),
        ),
        (
            "policy-apply",
            AdminRequest::Key(KeyRequest::PolicyApply {
                text: "mode = \"enforce\"\n".into(),
                reason: None,
            }),
        ),
        (
            "cert-request",
            AdminRequest::Key(KeyRequest::Cert(CertRequest::Request {
                name: "web-tls".into(),
                token: None,
                version: Some(1),
                subject: "CN=web.example.com,O=Example".into(),
                sans: vec!["DNS:web.example.com".into(), "IP:192.0.2.1".into()],
            })),
        ),
        (
            "dry-run",
            AdminRequest::DryRun(KeyRequest::Rotate {
                name: "web-tls".into(),
                token: None,
            }),
        ),
    ]
}

fn admin_responses() -> Vec<(&'static str, AdminResponse)> {
    vec![
        (
            "hello-reply",
            AdminResponse::Hello(AdminHello {
                version: ADMIN_VERSIONS.max,
                agent_version: "0.1.0".into(),
            }),
        ),
        ("error", AdminResponse::Err("no such key: web-tls".into())),
        (
            "key-error",
            AdminResponse::KeyErr {
                kind: AdminErrorKind::Invalid,
                message: "the subject is empty".into(),
            },
        ),
        (
            "pending",
            AdminResponse::Key(Box::new(KeyResponse::Pending(approval()))),
        ),
        (
            "requests",
            AdminResponse::Key(Box::new(KeyResponse::Requests(vec![approval()]))),
        ),
    ]
}

/// The body of a backup file, field for field as `keyward backup create`
/// encodes it (token, when, by whom, keys, keys left out).
#[derive(Serialize)]
struct Body {
    token: String,
    created_at: i64,
    made_by: String,
    keys: Vec<Entry>,
    absent: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Entry {
    record: KeyRecord,
    versions: Vec<VersionEntry>,
}

#[derive(Serialize)]
struct VersionEntry {
    version: KeyVersion,
    template: Vec<Attribute>,
    public: Option<Vec<Attribute>>,
    #[serde(with = "serde_bytes")]
    wrapped: Vec<u8>,
    certificates: Vec<Vec<Attribute>>,
}

fn backup_file(body: &Body) -> Vec<u8> {
    let body = postcard::to_stdvec(body).expect("encodes");
    let mut out = b"KWBACKUP".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&[0x11; 32]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0x22; 32]);
    out
}

fn backups() -> Vec<(&'static str, Vec<u8>)> {
    let record = KeyRecord {
        id: 1,
        name: "web-tls".into(),
        token: "kw".into(),
        owner: "alice".into(),
        purpose: Purpose::Signing,
        class: "tls-server".into(),
        algorithm: Algorithm::Ed25519,
        state: KeyState::Active,
        created_at: 1_790_000_000,
        activated_at: Some(1_790_000_010),
        rotated_at: None,
        deactivated_at: None,
        protect_until: None,
        process_until: Some(1_800_000_000),
        next_rotation: Some(1_800_000_000),
        scope: vec!["nginx".into()],
        last_used_at: None,
        backup_allowed: true,
        recovery_until: None,
        reason_code: None,
    };
    let version = KeyVersion {
        key_id: 1,
        version: 1,
        backend_id: vec![0xab; 16],
        backend_label: "kw:web-tls:1".into(),
        state: KeyState::Active,
        created_at: 1_790_000_000,
        deactivated_at: None,
        destroyed_at: None,
        fingerprint: Some(vec![0xcd; 32]),
    };
    let one = Body {
        token: "kw".into(),
        created_at: 1_790_000_000,
        made_by: "alice".into(),
        keys: vec![Entry {
            record,
            versions: vec![VersionEntry {
                version,
                template: vec![
                    Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
                    Attribute::bool(CKA_SIGN, true),
                ],
                public: Some(vec![Attribute::bytes(CKA_LABEL, b"kw:web-tls:1".to_vec())]),
                wrapped: vec![0x42; 40],
                certificates: vec![],
            }],
        }],
        absent: vec![],
    };
    let empty = Body {
        token: "kw".into(),
        created_at: 1_790_000_000,
        made_by: "alice".into(),
        keys: vec![],
        absent: vec![("legacy".into(), "not backup-allowed".into())],
    };
    vec![
        ("empty", backup_file(&empty)),
        ("one-key", backup_file(&one)),
    ]
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, r) in requests() {
        write(
            &corpus.join("frame"),
            &format!("request-{name}"),
            &frame_of(&r),
        );
    }
    for (name, r) in responses() {
        write(
            &corpus.join("frame"),
            &format!("response-{name}"),
            &frame_of(&r),
        );
    }
    for (name, r) in admin_requests() {
        write(
            &corpus.join("admin"),
            &format!("request-{name}"),
            &frame_of(&r),
        );
    }
    for (name, r) in admin_responses() {
        write(
            &corpus.join("admin"),
            &format!("response-{name}"),
            &frame_of(&r),
        );
    }
    write(
        &corpus.join("admin"),
        "approval-request",
        &postcard::to_stdvec(&approval()).expect("encodes"),
    );
    for (name, bytes) in backups() {
        write(&corpus.join("backup_file"), name, &bytes);
    }
    for (name, msgs) in app_sessions() {
        write(&corpus.join("agent_request"), name, &chunks_of(&msgs));
    }
    for (name, msgs) in admin_sessions() {
        write(&corpus.join("admin_request"), name, &chunks_of(&msgs));
    }
    for (name, text) in [
        ("key", "key:17"),
        ("request", "request:00112233445566778899aabbccddeeff"),
        ("owners", "owners"),
    ] {
        write(&corpus.join("notice"), name, text.as_bytes());
    }
}
