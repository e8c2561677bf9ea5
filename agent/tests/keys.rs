//! Key lifecycle on a real SoftHSM2 token: the real agent binary, driven
//! over its admin socket with protocol messages, under a strict policy
//! written by the test. The scheduler is tested in-process (an `Agent`
//! built from the same kind of configuration), with `tick` given a future
//! time instead of a fake clock.

use std::os::unix::net::UnixStream;

use std::time::{Duration, SystemTime};

use keyward_protocol::admin::{
    AdminErrorKind, AdminRequest, AdminResponse, KeyAction, KeyInfo, KeyRequest, KeyResponse,
};
use keyward_protocol::frame::{read_message, write_message};

mod common;
use common::{softhsm, Testbed};
const BACKEND_PIN: &str = "backend-pin-k4r";

/// The strict policy of these tests: application `tester` (this uid) and
/// `other`, classes `signing`, `encryption` and `mac`.
fn policy() -> String {
    let uid = nix::unistd::getuid().as_raw();
    format!(
        r#"[settings]
mode = "strict"

[[application]]
name = "tester"
uid = {uid}

[[application]]
name = "other"
uid = {other}

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
rotation_interval = "90d"
grants = [{{ application = "tester", operations = ["sign", "verify"] }}]

[[class]]
name = "encryption"
purpose = "encryption"
algorithms = ["aes:256"]
protect_period = "30d"
process_period = "60d"
grants = [{{ application = "tester", operations = ["encrypt", "decrypt"] }}]

[[class]]
name = "mac"
purpose = "mac"
algorithms = ["hmac:256"]
protect_period = "1d"
process_period = "2d"
"#,
        other = uid + 1
    )
}

fn testbed() -> Testbed {
    Testbed::new(BACKEND_PIN, Some(&policy()))
}

/// Makes an EC key pair directly on the backend token, past keyward.
/// Makes an EC P-256 signing key pair directly on the backend token, as an
/// HSM administrator with the vendor's tools would, with the attributes a
/// signing class requires (sensitive, never extractable, signing only):
/// HSMs turn every usage on by default, and adoption refuses that.
fn shadow_key(bed: &Testbed, id: &[u8], label: &str) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    std::env::set_var("SOFTHSM2_CONF", &bed.softhsm_conf);
    let p11 = Pkcs11::new(softhsm()).expect("load SoftHSM2");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|i| i.label().trim_end() == "kw-backend")
                .unwrap_or(false)
        })
        .expect("the backend token");
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(BACKEND_PIN.into())))
        .expect("login");
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let common = |extra: Vec<Attribute>| {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        t.extend(extra);
        t
    };
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &common(vec![
            Attribute::EcParams(p256),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::VerifyRecover(false),
        ]),
        &common(vec![
            Attribute::Sign(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
        ]),
    )
    .expect("C_GenerateKeyPair on the backend");
}

struct Admin {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Admin {
    fn connect(bed: &Testbed) -> Admin {
        let mut stream = UnixStream::connect(bed.admin_socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = Vec::new();
        keyward_protocol::admin::hello(&mut stream, &mut buf).expect("admin hello");
        Admin { stream, buf }
    }

    fn call(&mut self, req: KeyRequest) -> Result<KeyResponse, (AdminErrorKind, String)> {
        write_message(&mut self.stream, &AdminRequest::Key(req), &mut self.buf).unwrap();
        match read_message(&mut self.stream, &mut self.buf).unwrap() {
            AdminResponse::Key(k) => Ok(*k),
            AdminResponse::KeyErr { kind, message } => Err((kind, message)),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn ok(&mut self, req: KeyRequest) -> KeyResponse {
        let what = format!("{req:?}");
        self.call(req)
            .unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
    }

    fn key(&mut self, req: KeyRequest) -> KeyInfo {
        match self.ok(req) {
            KeyResponse::Key(k) => *k,
            other => panic!("not a key: {other:?}"),
        }
    }

    fn show(&mut self, name: &str) -> KeyInfo {
        self.key(KeyRequest::Show {
            name: name.into(),
            token: None,
        })
    }

    fn act(&mut self, name: &str, action: KeyAction) -> KeyResponse {
        self.ok(KeyRequest::Transition {
            name: name.into(),
            token: None,
            action,
            reason: Some(format!("test {action:?}")),
            code: matches!(action, KeyAction::Revoke { .. } | KeyAction::Destroy)
                .then_some(keyward_policy::ReasonCode::KeyCompromise),
        })
    }
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

fn verify(admin: &mut Admin, name: &str) -> (u32, String) {
    match admin.ok(KeyRequest::Verify {
        name: name.into(),
        token: None,
    }) {
        KeyResponse::Verified {
            version, detail, ..
        } => (version, detail),
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_lifecycle_over_the_admin_socket() {
    let bed = testbed();
    let _agent = bed.start();
    let mut a = Admin::connect(&bed);
    let uid = nix::unistd::getuid().as_raw();

    // Create: pre-activation, owner the requester, one version.
    let k = a.key(create("sig", "signing"));
    assert_eq!(k.state.to_string(), "pre-activation");
    assert_eq!(k.algorithm.to_string(), "ec:p256");
    assert_eq!(k.purpose.to_string(), "signing");
    assert_eq!(k.owner, format!("uid:{uid}"));
    assert_eq!(k.versions.len(), 1);
    assert_eq!(k.versions[0].backend_id.len(), 16);
    assert_eq!(k.versions[0].state.to_string(), "pre-activation");

    // Conflict and unknown class, algorithm outside the class.
    assert_eq!(
        a.call(create("sig", "signing")).unwrap_err().0,
        AdminErrorKind::Conflict
    );
    assert_eq!(
        a.call(create("x", "no-such-class")).unwrap_err().0,
        AdminErrorKind::NotFound
    );
    let wrong_alg = KeyRequest::Create {
        name: "x".into(),
        class: "signing".into(),
        algorithm: Some("ec:p384".parse().unwrap()),
        token: None,
        owner: None,
    };
    assert_eq!(a.call(wrong_alg).unwrap_err().0, AdminErrorKind::Refused);
    // Illegal transition: a pre-activation key cannot be suspended.
    let e = a
        .call(KeyRequest::Transition {
            name: "sig".into(),
            token: None,
            action: KeyAction::Suspend,
            reason: Some("test".into()),
            code: None,
        })
        .unwrap_err();
    assert_eq!(e.0, AdminErrorKind::Refused, "{e:?}");

    // Activate: dates from the class.
    let KeyResponse::Key(k) = a.act("sig", KeyAction::Activate) else {
        panic!()
    };
    assert_eq!(k.state.to_string(), "active");
    assert_eq!(k.versions[0].state.to_string(), "active");
    let activated = k.activated_at.expect("activated_at");
    assert_eq!(k.protect_until, Some(activated + 365 * 86400));
    assert_eq!(k.process_until, Some(activated + 730 * 86400));
    assert_eq!(k.next_rotation, Some(activated + 90 * 86400));

    // Verify, on every class.
    let (v, detail) = verify(&mut a, "sig");
    assert_eq!(v, 1);
    assert!(detail.contains("ECDSA"), "{detail}");
    a.key(create("enc", "encryption"));
    a.act("enc", KeyAction::Activate);
    assert!(verify(&mut a, "enc").1.contains("AES"));
    let mac = a.key(create("mac", "mac"));
    assert_eq!(mac.algorithm.to_string(), "hmac:256");
    a.act("mac", KeyAction::Activate);
    assert!(verify(&mut a, "mac").1.contains("HMAC"));

    // Suspend; resume needs approval: pending, and the key stays suspended.
    a.act("sig", KeyAction::Suspend);
    assert_eq!(a.show("sig").state.to_string(), "suspended");
    let KeyResponse::Pending(req) = a.act("sig", KeyAction::Resume) else {
        panic!("not pending")
    };
    assert_eq!(req.action, "resume");
    assert_eq!(req.target, "keyward/sig");
    assert_eq!(req.status.to_string(), "pending");
    assert_eq!(req.requester, format!("uid:{uid}"));
    assert_eq!(req.expires_at - req.created_at, 24 * 3600);
    assert_eq!(req.id.len(), 32);
    assert_eq!(a.show("sig").state.to_string(), "suspended");
    // Rotation only for active keys.
    let e = a
        .call(KeyRequest::Rotate {
            name: "sig".into(),
            token: None,
        })
        .unwrap_err();
    assert_eq!(e.0, AdminErrorKind::Refused);

    // Rotate an active key: two versions, old deactivated, new active,
    // distinct CKA_ID; the new version verifies.
    let k = a.key(KeyRequest::Rotate {
        name: "enc".into(),
        token: None,
    });
    assert_eq!(k.versions.len(), 2);
    assert_eq!(k.versions[0].state.to_string(), "deactivated");
    assert_eq!(k.versions[1].state.to_string(), "active");
    assert_ne!(k.versions[0].backend_id, k.versions[1].backend_id);
    assert!(k.rotated_at.is_some());
    assert_eq!(k.state.to_string(), "active");
    assert_eq!(verify(&mut a, "enc").0, 2);

    // Emergency rotation: every old version compromised, a new one active,
    // the key active again.
    let KeyResponse::Key(k) = a.act("enc", KeyAction::Revoke { rotate: true }) else {
        panic!()
    };
    assert_eq!(k.state.to_string(), "active");
    assert_eq!(k.versions.len(), 3);
    assert_eq!(k.versions[0].state.to_string(), "compromised");
    assert_eq!(k.versions[1].state.to_string(), "compromised");
    assert_eq!(k.versions[2].state.to_string(), "active");
    assert!(k
        .history
        .iter()
        .any(|h| h.to.to_string() == "compromised" && h.version.is_none()));
    assert!(k
        .history
        .iter()
        .any(|h| h.reason.contains("emergency rotation")));
    assert_eq!(verify(&mut a, "enc").0, 3);
    // Plain revoke; destroy needs approval.
    let KeyResponse::Key(k) = a.act("mac", KeyAction::Revoke { rotate: false }) else {
        panic!()
    };
    assert_eq!(k.state.to_string(), "compromised");
    assert!(k
        .versions
        .iter()
        .all(|v| v.state.to_string() == "compromised"));
    assert!(matches!(
        a.act("mac", KeyAction::Destroy),
        KeyResponse::Pending(_)
    ));

    // Grants: add with expiry, list, remove; unknown application, wrong
    // purpose.
    let until = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    let grant = |app: &str, ops: &[&str]| KeyRequest::GrantAdd {
        key: "enc".into(),
        token: None,
        application: app.into(),
        operations: ops.iter().map(|s| s.parse().unwrap()).collect(),
        until: Some(until),
    };
    a.ok(grant("other", &["encrypt"]));
    assert_eq!(
        a.call(grant("nobody", &["encrypt"])).unwrap_err().0,
        AdminErrorKind::NotFound
    );
    assert_eq!(
        a.call(grant("other", &["sign"])).unwrap_err().0,
        AdminErrorKind::Refused
    );
    let KeyResponse::Grants(gs) = a.ok(KeyRequest::GrantList {
        key: Some("enc".into()),
        token: None,
    }) else {
        panic!()
    };
    // The class's grants come first, marked as such; then the key's own.
    assert!(
        gs.iter().all(|g| g.source == "class" || g.source == "key"),
        "{gs:?}"
    );
    let gs: Vec<_> = gs.into_iter().filter(|g| g.source == "key").collect();
    assert_eq!(gs.len(), 1);
    assert_eq!(gs[0].application, "other");
    assert_eq!(gs[0].operations, [keyward_policy::Operation::Encrypt]);
    assert_eq!(gs[0].expires_at, Some(until));
    let KeyResponse::Apps(apps) = a.ok(KeyRequest::AppList) else {
        panic!()
    };
    let other = apps.iter().find(|x| x.name == "other").unwrap();
    assert_eq!(other.keys, ["keyward/enc"]);
    let tester = apps.iter().find(|x| x.name == "tester").unwrap();
    assert!(
        tester.keys.contains(&"keyward/sig".to_string()),
        "{tester:?}"
    );
    a.ok(KeyRequest::GrantRemove {
        key: "enc".into(),
        token: None,
        application: "other".into(),
    });
    let KeyResponse::Grants(gs) = a.ok(KeyRequest::GrantList {
        key: None,
        token: None,
    }) else {
        panic!()
    };
    // Only the classes' grants are left.
    assert!(gs.iter().all(|g| g.source == "class"), "{gs:?}");

    // Discover a key made directly on the backend; adopt it.
    shadow_key(&bed, &[0xa1, 0xb2, 0xc3], "shadow");
    // SoftHSM2 shows another process's new objects once it has re-read its
    // token directory, and may show the public half before the private
    // one: ask until the private key is there (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sh = loop {
        let KeyResponse::Shadows(sh) = a.ok(KeyRequest::Discover { token: None }) else {
            panic!()
        };
        let private = sh
            .iter()
            .any(|s| s.backend_id == [0xa1, 0xb2, 0xc3] && s.class == "CKO_PRIVATE_KEY");
        if private || std::time::Instant::now() > deadline {
            break sh;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let found: Vec<_> = sh
        .iter()
        .filter(|s| s.backend_id == [0xa1, 0xb2, 0xc3])
        .collect();
    assert_eq!(found.len(), 1, "{sh:?}");
    assert_eq!(found[0].class, "CKO_PRIVATE_KEY");
    assert_eq!(found[0].key_type, "CKK_EC");
    assert_eq!(found[0].label, "shadow");
    let adopt = |name: &str, class: &str| KeyRequest::Adopt {
        token: None,
        backend_id: vec![0xa1, 0xb2, 0xc3],
        name: name.into(),
        class: class.into(),
    };
    assert_eq!(
        a.call(adopt("adopted", "encryption")).unwrap_err().0,
        AdminErrorKind::Refused
    );
    assert_eq!(
        a.call(adopt("sig", "signing")).unwrap_err().0,
        AdminErrorKind::Conflict
    );
    let k = a.key(adopt("adopted", "signing"));
    assert_eq!(k.state.to_string(), "pre-activation");
    assert_eq!(k.algorithm.to_string(), "ec:p256");
    assert_eq!(k.versions[0].backend_id, [0xa1, 0xb2, 0xc3]);
    assert_eq!(
        a.call(adopt("again", "signing")).unwrap_err().0,
        AdminErrorKind::Conflict
    );
    let KeyResponse::Shadows(sh) = a.ok(KeyRequest::Discover { token: None }) else {
        panic!()
    };
    assert!(sh.is_empty(), "managed keys are no shadows: {sh:?}");
    a.act("adopted", KeyAction::Activate);
    assert!(verify(&mut a, "adopted").1.contains("ECDSA"));

    // List, by state.
    let KeyResponse::Keys(all) = a.ok(KeyRequest::List {
        token: None,
        state: None,
    }) else {
        panic!()
    };
    assert_eq!(all.len(), 4);
    let KeyResponse::Keys(suspended) = a.ok(KeyRequest::List {
        token: None,
        state: Some("suspended".parse().unwrap()),
    }) else {
        panic!()
    };
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0].name, "sig");
    assert!(a
        .call(KeyRequest::Show {
            name: "nope".into(),
            token: None
        })
        .is_err());

    let log = bed.log();
    assert!(log.contains("needs approval"), "{log}");
    assert!(
        !log.contains(BACKEND_PIN),
        "the backend PIN leaked into the log"
    );
}

/// The scheduler, in-process: `tick` with a time past the rotation date
/// rotates; past the protect period, deactivates.
#[test]
fn scheduler_rotates_and_deactivates() {
    let bed = testbed();
    // The library reads this at load; the other test of this binary passes
    // its own value to its child processes explicitly.
    std::env::set_var("SOFTHSM2_CONF", &bed.softhsm_conf);
    let config = keyward_agent::config::Config::load(&bed.config).unwrap();
    let policy = keyward_policy::Policy::from_file(bed.dir.path().join("policy.toml")).unwrap();
    let agent = keyward_agent::agent::Agent::from_config(&config)
        .unwrap()
        .with_policy(policy);
    let peer = keyward_agent::listener::identity::Peer {
        key: keyward_agent::listener::identity::ClientKey {
            pid: std::process::id() as i32,
            start_time: 0,
        },
        uid: 0,
        gid: 0,
        exe: None,
        exe_id: None,
        foreign_mounts: false,
    };
    let call = |req: KeyRequest| match agent.lifecycle.key_request(&peer, req) {
        AdminResponse::Key(k) => *k,
        other => panic!("{other:?}"),
    };
    let show = |name: &str| match call(KeyRequest::Show {
        name: name.into(),
        token: None,
    }) {
        KeyResponse::Key(k) => *k,
        other => panic!("{other:?}"),
    };
    call(create("rot", "signing"));
    call(create("short", "encryption"));
    for name in ["rot", "short"] {
        call(KeyRequest::Transition {
            name: name.into(),
            token: None,
            action: KeyAction::Activate,
            reason: None,
            code: None,
        });
    }
    // Nothing is due now.
    agent.lifecycle.tick(SystemTime::now());
    assert_eq!(show("rot").versions.len(), 1);
    assert_eq!(show("short").state.to_string(), "active");

    // 91 days on: "rot" (rotation every 90 days) rotates; "short" (protect
    // period 30 days) is deactivated.
    let later = SystemTime::now() + Duration::from_secs(91 * 86400);
    agent.lifecycle.tick(later);
    let rot = show("rot");
    assert_eq!(rot.state.to_string(), "active");
    assert_eq!(rot.versions.len(), 2);
    assert_eq!(rot.versions[0].state.to_string(), "deactivated");
    assert_eq!(rot.versions[1].state.to_string(), "active");
    let rotated = rot.rotated_at.unwrap();
    assert_eq!(rot.next_rotation, Some(rotated + 90 * 86400));
    assert!(rot.history.iter().any(|h| h.actor == "scheduler"));
    let short = show("short");
    assert_eq!(short.state.to_string(), "deactivated");
    assert!(short
        .history
        .iter()
        .any(|h| h.actor == "scheduler" && h.to.to_string() == "deactivated"));
    // The same tick again does nothing more.
    agent.lifecycle.tick(later);
    assert_eq!(show("rot").versions.len(), 2);
}
