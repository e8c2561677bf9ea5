//! A recovery window on a compromised key, through the real agent, module
//! and SoftHSM2: asked with `keyward key recover`, approved by an
//! administrator of the roster with a signed decision sent on the admin
//! socket, then used by an unmodified application — verify and decrypt
//! again, never sign or encrypt, and nothing once the window has ended.

use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cryptoki::error::RvError;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectClass;
use ed25519_dalek::Signer as _;
use keyward_policy::Decision;
use keyward_protocol::admin::{
    hello, AdminRequest, AdminResponse, ApprovalRequest, KeyRequest, KeyResponse,
};
use keyward_protocol::approval::decision_statement;
use keyward_protocol::frame::{read_message, write_message};
use keyward_tests::admin::{
    find, install_policy, key_show, keyward_json, keyward_ok, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};

const DIGEST: [u8; 32] = [0x5a; 32];

/// alice, who this test runs as (a security officer).
fn alice() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

/// bob, a second security officer under another uid.
fn bob() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[8; 32])
}

fn public(k: &ed25519_dalek::SigningKey) -> String {
    format!("ed25519:{}", hex::encode(k.verifying_key().as_bytes()))
}

/// Strict, with an EC signing class and an RSA encryption class granted to
/// this process, a sensitive class granted to no one, a roster of two
/// officers (alice is this process's uid), and recovery-window and
/// sensitive-grant quorums of one officer in which the requester counts:
/// alice approves her own request, with her signature.
fn policy() -> String {
    let uid = uid();
    format!(
        r#"
[settings]
mode = "strict"

[[application]]
name = "{APPLICATION}"
uid = {uid}

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "{APPLICATION}", operations = ["sign", "verify"] }} ]

[[class]]
name = "encryption"
purpose = "encryption"
algorithms = ["rsa:2048"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "{APPLICATION}", operations = ["encrypt", "decrypt"] }} ]

[[administrator]]
name = "alice"
uids = [{uid}]
roles = ["security-officer"]
public_key = "{}"

[[administrator]]
name = "bob"
uids = [4243]
roles = ["security-officer"]
public_key = "{}"

[[class]]
name = "secret"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
sensitive = true

[quorum.recovery-window]
approvals = 1
roles = ["security-officer"]
requester_counts = true

[quorum.sensitive-grant]
approvals = 1
roles = ["security-officer"]
requester_counts = true
"#,
        public(&alice()),
        public(&bob())
    )
}

/// One admin request on the testbed's admin socket, as this process.
fn admin(tb: &Env, request: KeyRequest) -> AdminResponse {
    let mut s = UnixStream::connect(&tb.admin_socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    hello(&mut s, &mut buf).expect("admin hello");
    write_message(&mut s, &AdminRequest::Key(request), &mut buf).expect("send");
    read_message(&mut s, &mut buf).expect("the agent's answer")
}

/// Request `id` as the agent shows it.
fn request(tb: &Env, id: &str) -> ApprovalRequest {
    match admin(tb, KeyRequest::RequestShow { id: id.into() }) {
        AdminResponse::Key(k) => match *k {
            KeyResponse::Requests(mut r) if r.len() == 1 => r.remove(0),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// Approves request `id` with a signature by `key` over its digest.
fn approve(tb: &Env, id: &str, key: &ed25519_dalek::SigningKey) -> AdminResponse {
    let r = request(tb, id);
    let statement = decision_statement(Decision::Approve, &r.content().digest());
    admin(
        tb,
        KeyRequest::RequestDecide {
            id: id.into(),
            decision: Decision::Approve,
            signature: Some(key.sign(&statement).to_bytes().to_vec()),
        },
    )
}

/// `keyward key recover NAME --for DURATION`: the id of the request it
/// opened (exit 3: needs approval).
fn recover(tb: &Env, name: &str, duration: &str) -> String {
    let answer = keyward_json(
        tb,
        &[
            "key",
            "recover",
            name,
            "--for",
            duration,
            "--reason",
            "read the 2025 archive",
        ],
        3,
    );
    answer.str_at("id").to_owned()
}

/// RSA-OAEP as SoftHSM2 does it (SHA-1).
fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

keyward_test!(fn a_compromised_key_verifies_and_decrypts_in_an_approved_window_and_never_signs(tb) {
    tb.require_agent("recovery windows");
    install_policy(&tb, &policy());
    for (name, class) in [("sig", "signing"), ("enc", "encryption")] {
        keyward_ok(&tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let sig_private = find(&s, "sig", ObjectClass::PRIVATE_KEY)[0];
    let sig_public = find(&s, "sig", ObjectClass::PUBLIC_KEY)[0];
    let enc_private = find(&s, "enc", ObjectClass::PRIVATE_KEY)[0];
    let enc_public = find(&s, "enc", ObjectClass::PUBLIC_KEY)[0];
    let signature = s.sign(&Mechanism::Ecdsa, sig_private, &DIGEST).expect("an active key signs");
    let secret = b"data protected before the compromise".to_vec();
    let ciphertext = s.encrypt(&oaep(), enc_public, &secret).expect("an active key encrypts");

    keyward_ok(&tb, &["key", "revoke", "--yes", "sig", "--reason", "leaked", "--reason-code", "keyCompromise"], 0);
    keyward_ok(&tb, &["key", "revoke", "--yes", "enc", "--reason", "leaked", "--reason-code", "keyCompromise"], 0);
    let refused = |what: &str| {
        expect_err(s.verify(&Mechanism::Ecdsa, sig_public, &DIGEST, &signature), RvError::KeyFunctionNotPermitted);
        expect_err(s.decrypt(&oaep(), enc_private, &ciphertext), RvError::KeyFunctionNotPermitted);
        expect_err(s.sign(&Mechanism::Ecdsa, sig_private, &DIGEST), RvError::KeyFunctionNotPermitted);
        expect_err(s.encrypt(&oaep(), enc_public, &secret), RvError::KeyFunctionNotPermitted);
        eprintln!("refused {what}");
    };
    refused("once compromised");

    // Asked for: a request, not yet a window.
    let sig_request = recover(&tb, "sig", "1h");
    let enc_request = recover(&tb, "enc", "20s");
    let r = request(&tb, &sig_request);
    assert_eq!(r.action, "recover");
    assert!(r.parameters.contains(r#""operations":["verify"]"#), "{}", r.parameters);
    assert!(request(&tb, &enc_request).parameters.contains(r#""operations":["decrypt"]"#));
    refused("before the approval");
    // A signature by another administrator's key, sent as alice: refused,
    // nothing opens.
    match approve(&tb, &sig_request, &bob()) {
        AdminResponse::KeyErr { message, .. } => {
            assert!(message.contains("signature is not valid"), "{message}")
        }
        other => panic!("a forged approval was taken: {other:?}"),
    }
    refused("after a forged approval");

    // alice's own signature: the windows open.
    for id in [&sig_request, &enc_request] {
        match approve(&tb, id, &alice()) {
            AdminResponse::Key(k) => match *k {
                KeyResponse::Requests(r) => {
                    assert_eq!(r[0].status.as_str(), "executed", "{r:?}")
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    s.verify(&Mechanism::Ecdsa, sig_public, &DIGEST, &signature)
        .expect("a compromised key verifies in its window");
    assert_eq!(
        s.decrypt(&oaep(), enc_private, &ciphertext).expect("and decrypts in its window"),
        secret
    );
    expect_err(s.sign(&Mechanism::Ecdsa, sig_private, &DIGEST), RvError::KeyFunctionNotPermitted);
    expect_err(s.encrypt(&oaep(), enc_public, &secret), RvError::KeyFunctionNotPermitted);
    let shown = key_show(&tb, "enc");
    assert_eq!(shown.str_at("state"), "compromised");
    let until = shown.time_at("recovery_until");
    let text = keyward_ok(&tb, &["key", "show", "sig"], 0);
    assert!(text.contains("recovery until:") && text.contains("(verify and decrypt only)"), "{text}");

    // After its end: refused again (sig's window is still open).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    std::thread::sleep(Duration::from_secs((until - now + 1).max(0) as u64));
    expect_err(s.decrypt(&oaep(), enc_private, &ciphertext), RvError::KeyFunctionNotPermitted);
    s.verify(&Mechanism::Ecdsa, sig_public, &DIGEST, &signature)
        .expect("the other key's window is its own");

    // The trail names what was opened and the request it came from.
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "sig"], 0);
    assert!(trail.contains("recovery window until") && trail.contains(&sig_request), "{trail}");
    // The report counts no use that got through either revocation: what
    // the windows allowed was approved.
    for name in ["sig", "enc"] {
        let r = keyward_json(&tb, &["report", "--key", name], 0);
        let k = r
            .array_at("keys")
            .iter()
            .find(|k| k.str_at("name") == name)
            .unwrap_or_else(|| panic!("no key {name} in {r}"));
        let revocations = k.array_at("revocations");
        assert_eq!(revocations.len(), 1, "{k}");
        assert_eq!(revocations[0].i64_at("uses_after"), 0, "{k}");
    }
});

keyward_test!(fn a_key_that_is_not_compromised_gets_no_recovery_window(tb) {
    tb.require_agent("recovery windows");
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "sig", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "sig"], 0);
    let out = keyward_tests::admin::keyward(
        &tb,
        &["key", "recover", "sig", "--for", "1h", "--reason", "x"],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a recovery window is for a compromised key"), "{stderr}");
    let pending = keyward_json(&tb, &["request", "list"], 0);
    assert!(pending.items().is_empty(), "{pending}");
});

keyward_test!(fn a_grant_on_a_sensitive_key_gives_nothing_until_it_is_approved(tb) {
    tb.require_agent("sensitive grants");
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "s", "--class", "secret"], 0);
    keyward_ok(&tb, &["key", "activate", "s"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    assert!(find(&s, "s", ObjectClass::PRIVATE_KEY).is_empty(), "a key without a grant is invisible");
    let answer = keyward_json(&tb, &["grant", "add", "s", APPLICATION, "--ops", "sign"], 3);
    let id = answer.str_at("id").to_owned();
    let r = request(&tb, &id);
    assert_eq!(r.action, "grant");
    assert!(r.parameters.contains(r#""operations":["sign"]"#), "{}", r.parameters);
    assert!(keyward_json(&tb, &["grant", "list", "s"], 0)
        .items()
        .iter()
        .all(|g| g.str_at("source") == "class"));
    assert!(find(&s, "s", ObjectClass::PRIVATE_KEY).is_empty(), "granted before the approval");
    match approve(&tb, &id, &bob()) {
        AdminResponse::KeyErr { message, .. } => {
            assert!(message.contains("signature is not valid"), "{message}")
        }
        other => panic!("a forged approval was taken: {other:?}"),
    }
    assert!(find(&s, "s", ObjectClass::PRIVATE_KEY).is_empty(), "granted on a forged approval");
    match approve(&tb, &id, &alice()) {
        AdminResponse::Key(_) => {}
        other => panic!("{other:?}"),
    }
    let private = find(&s, "s", ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1, "the approved grant shows the key");
    s.sign(&Mechanism::Ecdsa, private[0], &DIGEST).expect("and lets it sign");
    // Taking it away needs no one else.
    keyward_ok(&tb, &["grant", "remove", "s", APPLICATION], 0);
    expect_err(s.sign(&Mechanism::Ecdsa, private[0], &DIGEST), RvError::KeyFunctionNotPermitted);
});
