//! Per-use approval (`approve_each_use`) at the PKCS#11 boundary: an
//! application's `C_Sign` with such a key waits while an administrator of
//! the roster (an Ed25519 key made by the test) approves the request over
//! the admin socket; the signature then verifies over exactly that data,
//! once. Too late, other data, a second signature, no grant: no signature.
//! Unmodified tools (openssl through the pkcs11 engine, osslsigncode) wait
//! for one approval per signature.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use ed25519_dalek::{Signer as _, SigningKey};
use keyward_policy::{ApprovalStatus, Decision};
use keyward_protocol::admin::{
    hello, AdminRequest, AdminResponse, ApprovalRequest, KeyRequest, KeyResponse,
};
use keyward_protocol::approval::decision_statement;
use keyward_protocol::frame::{read_message, write_message};
use keyward_tests::admin::{application_toml, find, install_policy, keyward_ok, uid, APPLICATION};
use keyward_tests::p11::{expect_err, hex, Ctx};
use keyward_tests::tools::{openssl, require_pkcs11_engine, require_tool, run_ok, uri};
use keyward_tests::{keyward_test, Env};
use sha2::{Digest, Sha256};

/// What the application signs (an ECDSA "digest": 32 bytes).
const DATA_A: [u8; 32] = [0xa1; 32];
const DATA_B: [u8; 32] = [0xb2; 32];

/// A fresh Ed25519 key from the system's randomness.
fn fresh_key() -> SigningKey {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("read /dev/urandom");
    SigningKey::from_bytes(&seed)
}

/// A strict policy: application [`APPLICATION`] signs with class `release`
/// (each use approved, waiting `wait`) and only verifies with class
/// `release-verify`; this process's user is officer `olga` (security
/// officer and key owner, signing with `officer`), a second officer under
/// another uid completes the roster.
fn policy(officer: &SigningKey, wait: &str) -> String {
    let other = fresh_key();
    format!(
        "[settings]\nmode = \"strict\"\n{app}\n\
         [[class]]\nname = \"release\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\napprove_each_use = true\napproval_wait = \"{wait}\"\n\
         grants = [ {{ application = \"{APPLICATION}\", operations = [\"sign\", \"verify\"] }} ]\n\n\
         [[class]]\nname = \"release-verify\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\napprove_each_use = true\n\
         grants = [ {{ application = \"{APPLICATION}\", operations = [\"verify\"] }} ]\n\n\
         [[administrator]]\nname = \"olga\"\nuids = [{me}]\nroles = [\"security-officer\", \"key-owner\"]\n\
         public_key = \"ed25519:{olga}\"\n\n\
         [[administrator]]\nname = \"sam\"\nuids = [{sam}]\nroles = [\"security-officer\"]\n\
         public_key = \"ed25519:{other}\"\n",
        app = application_toml(APPLICATION, uid()),
        me = uid(),
        sam = uid().wrapping_add(4242),
        olga = hex(officer.verifying_key().as_bytes()),
        other = hex(other.verifying_key().as_bytes()),
    )
}

/// Installs [`policy`] and makes the active key `name` of `class`.
fn setup(tb: &Env, officer: &SigningKey, wait: &str, keys: &[(&str, &str)]) {
    tb.require_agent("per-use approval");
    install_policy(tb, &policy(officer, wait));
    for (name, class) in keys {
        keyward_ok(tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(tb, &["key", "activate", name], 0);
    }
}

/// One key request on the admin socket, as `keyward` sends it: the
/// answer, or the agent's refusal message.
fn admin(tb: &Env, req: KeyRequest) -> Result<KeyResponse, String> {
    let mut stream = UnixStream::connect(&tb.admin_socket).expect("connect to the admin socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut buf = Vec::new();
    hello(&mut stream, &mut buf).expect("admin hello");
    write_message(&mut stream, &AdminRequest::Key(req), &mut buf).expect("send");
    match read_message::<_, AdminResponse>(&mut stream, &mut buf).expect("answer") {
        AdminResponse::Key(r) => Ok(*r),
        AdminResponse::KeyErr { message, .. } => Err(message),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Every request for a signature (`all`) or the pending ones (the agent
/// also records the first policy with a roster as an executed request).
fn requests(tb: &Env, all: bool) -> Vec<ApprovalRequest> {
    match admin(tb, KeyRequest::RequestList { all }) {
        Ok(KeyResponse::Requests(r)) => r.into_iter().filter(|r| r.action == "sign").collect(),
        other => panic!("{other:?}"),
    }
}

fn request(tb: &Env, id: &str) -> ApprovalRequest {
    match admin(tb, KeyRequest::RequestShow { id: id.into() }) {
        Ok(KeyResponse::Requests(mut r)) => r.remove(0),
        other => panic!("{other:?}"),
    }
}

/// The pending request whose data is `data`, once it is recorded.
fn pending_for(tb: &Env, data: &[u8]) -> ApprovalRequest {
    let digest = hex(&Sha256::digest(data));
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Some(r) = requests(tb, false)
            .into_iter()
            .find(|r| parameters(r)["data_sha256"] == digest.as_str())
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no pending request for data {digest}: {:?}",
        requests(tb, true)
    );
}

fn parameters(r: &ApprovalRequest) -> serde_json::Value {
    serde_json::from_str(&r.parameters).expect("parameters are JSON")
}

/// `officer`'s signature of `decision` on `r`.
fn signed(officer: &SigningKey, decision: Decision, r: &ApprovalRequest) -> Vec<u8> {
    let statement = decision_statement(decision, &r.content().digest());
    officer.sign(&statement).to_bytes().to_vec()
}

fn decide(tb: &Env, id: &str, signature: Vec<u8>) -> Result<KeyResponse, String> {
    admin(
        tb,
        KeyRequest::RequestDecide {
            id: id.into(),
            decision: Decision::Approve,
            signature: Some(signature),
        },
    )
}

fn approve(tb: &Env, officer: &SigningKey, r: &ApprovalRequest) {
    decide(tb, &r.id, signed(officer, Decision::Approve, r)).expect("the approval counts");
}

/// `C_Sign` (`CKM_ECDSA`) of `data` with the private key `label` in a
/// session of its own, on another thread (cryptoki asks the length first,
/// then the signature).
fn sign_in_background(
    ctx: &Arc<Ctx>,
    label: &str,
    data: &'static [u8],
) -> std::thread::JoinHandle<cryptoki::error::Result<Vec<u8>>> {
    let ctx = ctx.clone();
    let label = label.to_owned();
    std::thread::spawn(move || {
        let s = user(&ctx);
        let key = find(&s, &label, ObjectClass::PRIVATE_KEY)[0];
        s.sign(&Mechanism::Ecdsa, key, data)
    })
}

/// A session of the application, logged in (the login is shared by its
/// sessions: another one may have logged in already).
fn user(ctx: &Ctx) -> cryptoki::session::Session {
    let s = ctx.rw();
    match s.login(cryptoki::session::UserType::User, Some(&ctx.pin())) {
        Ok(()) => {}
        Err(e) if keyward_tests::p11::rv_error(&e) == RvError::UserAlreadyLoggedIn => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    s
}

fn verifies(ctx: &Ctx, label: &str, data: &[u8], signature: &[u8]) -> bool {
    let s = user(ctx);
    let public = find(&s, label, ObjectClass::PUBLIC_KEY)[0];
    s.verify(&Mechanism::Ecdsa, public, data, signature).is_ok()
}

keyward_test!(fn an_approved_signature_signs_that_data_once(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "30s", &[("release-key", "release")]);
    let ctx = Arc::new(Ctx::new(&tb));
    let signer = sign_in_background(&ctx, "release-key", &DATA_A);
    let r = pending_for(&tb, &DATA_A);
    // The request says what is signed, with what, and who asks.
    assert_eq!(r.action, "sign");
    assert_eq!(r.target, format!("{}/release-key", tb.token));
    assert_eq!(r.requester, APPLICATION);
    let p = parameters(&r);
    assert_eq!(p["mechanism"], "CKM_ECDSA");
    assert_eq!(p["application"], APPLICATION);
    assert_eq!(p["uid"], u64::from(uid()));
    assert_eq!(p["pid"], u64::from(std::process::id()));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(p["exe"], exe.display().to_string().as_str());
    // `keyward request list --wide` shows the digest and who asks.
    let listed = keyward_ok(&tb, &["--wide", "request", "list"], 0);
    assert!(listed.contains(&hex(&Sha256::digest(DATA_A))), "{listed}");
    assert!(listed.contains(&format!("C_Sign by {APPLICATION}")), "{listed}");
    // The call waits: nothing comes back before the approval.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!signer.is_finished(), "C_Sign answered before any approval");

    approve(&tb, &officer, &r);
    let signature = signer.join().unwrap().expect("the approved C_Sign signs");
    assert!(verifies(&ctx, "release-key", &DATA_A, &signature));
    assert!(!verifies(&ctx, "release-key", &DATA_B, &signature));
    let done = request(&tb, &r.id);
    assert_eq!(done.status, ApprovalStatus::Executed);
    assert_eq!(done.outcome, "signed 32 bytes with CKM_ECDSA");
    assert_eq!(requests(&tb, true).len(), 1, "the length query opened no request of its own");

    // The same approval again: refused, nothing signed.
    let replay = decide(&tb, &r.id, signed(&officer, Decision::Approve, &r)).unwrap_err();
    assert!(replay.contains("is executed"), "{replay}");

    // A second signature of the same data needs an approval of its own.
    let signer = sign_in_background(&ctx, "release-key", &DATA_A);
    let second = pending_for(&tb, &DATA_A);
    assert_ne!(second.id, r.id);
    // The first request's approval does not count for the second.
    let reused = decide(&tb, &second.id, signed(&officer, Decision::Approve, &r)).unwrap_err();
    assert!(reused.contains("signature is not valid"), "{reused}");
    approve(&tb, &officer, &second);
    let again = signer.join().unwrap().expect("the second approved C_Sign signs");
    assert!(verifies(&ctx, "release-key", &DATA_A, &again));
    assert_eq!(requests(&tb, true).len(), 2);
});

keyward_test!(fn without_approval_in_time_the_call_is_rejected_and_the_request_expires(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "2s", &[("release-key", "release")]);
    let ctx = Ctx::new(&tb);
    let s = user(&ctx);
    let key = find(&s, "release-key", ObjectClass::PRIVATE_KEY)[0];
    let started = Instant::now();
    expect_err(s.sign(&Mechanism::Ecdsa, key, &DATA_A), RvError::FunctionRejected);
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    let all = requests(&tb, true);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].status, ApprovalStatus::Expired);
    assert_eq!(all[0].outcome, "not approved in time");
    // An approval after the wait counts for nothing.
    let late = decide(&tb, &all[0].id, signed(&officer, Decision::Approve, &all[0])).unwrap_err();
    assert!(late.contains("expired"), "{late}");
    assert_eq!(request(&tb, &all[0].id).status, ApprovalStatus::Expired);
    // The session signs again once a new request is approved.
    let ctx = Arc::new(ctx);
    let signer = sign_in_background(&ctx, "release-key", &DATA_A);
    let next = pending_for(&tb, &DATA_A);
    approve(&tb, &officer, &next);
    let signature = signer.join().unwrap().expect("signs after approval");
    assert!(verifies(&ctx, "release-key", &DATA_A, &signature));
});

keyward_test!(fn an_approval_for_one_data_does_not_sign_another(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "4s", &[("release-key", "release")]);
    let ctx = Arc::new(Ctx::new(&tb));
    let a = sign_in_background(&ctx, "release-key", &DATA_A);
    let b = sign_in_background(&ctx, "release-key", &DATA_B);
    let ra = pending_for(&tb, &DATA_A);
    let rb = pending_for(&tb, &DATA_B);
    assert_ne!(ra.id, rb.id);
    // A's approval, offered for B's request, does not verify.
    let crossed = decide(&tb, &rb.id, signed(&officer, Decision::Approve, &ra)).unwrap_err();
    assert!(crossed.contains("signature is not valid"), "{crossed}");
    approve(&tb, &officer, &ra);
    let signature = a.join().unwrap().expect("A is signed");
    assert!(verifies(&ctx, "release-key", &DATA_A, &signature));
    assert!(!verifies(&ctx, "release-key", &DATA_B, &signature));
    // B was never approved: rejected when its wait ends.
    match b.join().unwrap() {
        Err(e) => assert_eq!(keyward_tests::p11::rv_error(&e), RvError::FunctionRejected),
        Ok(sig) => panic!("B was signed without an approval: {}", hex(&sig)),
    }
    assert_eq!(request(&tb, &ra.id).status, ApprovalStatus::Executed);
    assert_eq!(request(&tb, &rb.id).status, ApprovalStatus::Expired);
});

keyward_test!(fn an_application_without_a_sign_grant_opens_no_request(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "30s", &[("tools-key", "release-verify")]);
    let ctx = Ctx::new(&tb);
    let s = user(&ctx);
    let key = find(&s, "tools-key", ObjectClass::PRIVATE_KEY);
    assert_eq!(key.len(), 1, "a verify grant shows the key");
    let started = Instant::now();
    assert!(s.sign(&Mechanism::Ecdsa, key[0], &DATA_A).is_err(), "signed without a grant");
    assert!(started.elapsed() < Duration::from_secs(5), "a refused call does not wait");
    assert!(requests(&tb, true).is_empty(), "a refused call records no request");
});

keyward_test!(fn multi_part_signing_of_such_a_key_is_refused(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "30s", &[("release-key", "release")]);
    let ctx = Ctx::new(&tb);
    let s = user(&ctx);
    let key = find(&s, "release-key", ObjectClass::PRIVATE_KEY)[0];
    s.sign_init(&Mechanism::EcdsaSha256, key).expect("C_SignInit");
    let parts = s.sign_update(b"part one").and_then(|()| s.sign_final());
    expect_err(parts, RvError::FunctionRejected);
    assert!(requests(&tb, true).is_empty());
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("needs a single-part C_Sign"), "{log}");
});

/// Approves every pending request as `officer` until stopped; the ids
/// approved.
struct Approver {
    stop: Arc<AtomicBool>,
    approved: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Approver {
    fn start(tb: &Env, officer: &SigningKey) -> Approver {
        let stop = Arc::new(AtomicBool::new(false));
        let approved = Arc::new(Mutex::new(Vec::new()));
        let (tb, officer) = (tb.clone(), officer.clone());
        let (stop2, approved2) = (stop.clone(), approved.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                for r in requests(&tb, false) {
                    if decide(&tb, &r.id, signed(&officer, Decision::Approve, &r)).is_ok() {
                        approved2.lock().unwrap().push(r.id);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Approver {
            stop,
            approved,
            thread: Some(thread),
        }
    }

    /// How many requests it approved so far.
    fn count(&self) -> usize {
        self.approved.lock().unwrap().len()
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the approver thread");
        }
        self.count()
    }
}

/// The key's public half as PEM, read through the engine (no signature).
fn public_pem(tb: &Env, label: &str) -> std::path::PathBuf {
    let pem = tb.path(&format!("{label}.pub.pem"));
    run_ok(
        openssl(tb)
            .args([
                "pkey", "-engine", "pkcs11", "-inform", "engine", "-pubin", "-in",
            ])
            .arg(uri(tb, label, "public"))
            .args(["-pubout", "-out"])
            .arg(&pem),
    );
    pem
}

keyward_test!(fn openssl_dgst_sign_through_the_engine_waits_for_one_approval(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "5s", &[("release-key", "release")]);
    let data = tb.path("release.tar");
    std::fs::write(&data, b"a release, signed once it is approved\n").unwrap();
    let sig = tb.path("release.tar.sig");
    let approver = Approver::start(&tb, &officer);
    run_ok(
        openssl(&tb)
            .args(["dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign"])
            .arg(uri(&tb, "release-key", "private"))
            .arg("-out")
            .arg(&sig)
            .arg(&data),
    );
    assert_eq!(approver.stop(), 1, "one signature, one approval");
    let all = requests(&tb, true);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].status, ApprovalStatus::Executed);
    // The engine signs the file's SHA-256: the request names that digest's
    // own SHA-256 (the data C_Sign received).
    let file_digest = Sha256::digest(std::fs::read(&data).unwrap());
    assert_eq!(parameters(&all[0])["data_sha256"], hex(&Sha256::digest(file_digest)).as_str());
    let pem = public_pem(&tb, "release-key");
    let out = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&sig)
            .arg(&data),
    );
    assert!(out.contains("Verified OK"), "{out}");
    // Without an approver the same command fails: nothing is signed.
    let refused = tb.path("refused.sig");
    let out = keyward_tests::tools::output(
        openssl(&tb)
            .args(["dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign"])
            .arg(uri(&tb, "release-key", "private"))
            .arg("-out")
            .arg(&refused)
            .arg(&data),
    );
    assert!(!out.status.success(), "openssl signed without an approval");
    assert!(
        std::fs::read(&refused).map_or(true, |s| s.is_empty()),
        "a signature was written without an approval"
    );
    // (The engine may try again after the refusal: each try is a request
    // of its own, and each expires.)
    let all = requests(&tb, true);
    assert!(all.len() >= 2, "{all:?}");
    let executed = all.iter().filter(|r| r.status == ApprovalStatus::Executed).count();
    assert_eq!(executed, 1, "{all:?}");
    assert!(
        all.iter().all(|r| matches!(r.status, ApprovalStatus::Executed | ApprovalStatus::Expired)),
        "{all:?}"
    );
});

// osslsigncode signs a PowerShell script (a text format it signs since
// 2.8; no PE fixture needed) with the key through the pkcs11 engine: one
// approval for the certificate (self-signed through the engine, a
// signature of its own), one for the Authenticode signature.
keyward_test!(fn osslsigncode_signs_a_script_with_one_approval_per_signature(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "10s", &[("release-key", "release")]);
    let osslsigncode = require_tool("osslsigncode", "osslsigncode");
    let approver = Approver::start(&tb, &officer);
    let cert = tb.path("release.crt");
    run_ok(
        openssl(&tb)
            .args(["req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine", "-key"])
            .arg(uri(&tb, "release-key", "private"))
            .args(["-subj", "/CN=keyward release", "-days", "30", "-sha256", "-out"])
            .arg(&cert),
    );
    let after_cert = approver.count();
    assert_eq!(after_cert, 1, "the certificate's signature: one approval");
    let script = tb.path("release.ps1");
    std::fs::write(&script, "Write-Output 'released by keyward'\r\n").unwrap();
    let signed = tb.path("release-signed.ps1");
    run_ok(
        Command::new(&osslsigncode)
            .arg("sign")
            .arg("-pkcs11engine")
            .arg(require_pkcs11_engine())
            .arg("-pkcs11module")
            .arg(&tb.module)
            .arg("-key")
            .arg(uri(&tb, "release-key", "private"))
            .arg("-certs")
            .arg(&cert)
            .args(["-h", "sha256", "-in"])
            .arg(&script)
            .arg("-out")
            .arg(&signed),
    );
    assert_eq!(approver.stop(), 2, "the script's signature: one more approval");
    let all = requests(&tb, true);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|r| r.status == ApprovalStatus::Executed), "{all:?}");
    let text = std::fs::read_to_string(&signed).expect("the signed script");
    assert!(text.starts_with("Write-Output 'released by keyward'"), "{text}");
    assert!(text.contains("# SIG # Begin signature block"), "{text}");
    let out = run_ok(
        Command::new(&osslsigncode)
            .args(["verify", "-CAfile"])
            .arg(&cert)
            .arg("-in")
            .arg(&signed),
    );
    assert!(out.contains("Signature verification: ok"), "{out}");
});

keyward_test!(fn a_request_whose_call_ended_with_the_agent_is_closed_at_start(tb) {
    let officer = fresh_key();
    setup(&tb, &officer, "30s", &[("release-key", "release")]);
    let ctx = Arc::new(Ctx::new(&tb));
    let signer = sign_in_background(&ctx, "release-key", &DATA_A);
    let r = pending_for(&tb, &DATA_A);
    tb.kill_agent();
    assert!(signer.join().unwrap().is_err(), "a call cut by the agent's end signs nothing");
    tb.start_agent();
    let closed = request(&tb, &r.id);
    assert_eq!(closed.status, ApprovalStatus::Expired);
    assert_eq!(closed.outcome, "the call that waited for it ended with the agent");
    // Nothing left to approve.
    let late = decide(&tb, &r.id, signed(&officer, Decision::Approve, &r)).unwrap_err();
    assert!(late.contains("expired"), "{late}");
});
