//! A backend that fails and one that hangs, injected under a real agent by
//! `libkeyward_faultlib.so` (`tests/faultlib`): the agent's `[[token]]`
//! library is the fault library, which forwards every call to the
//! testbed's SoftHSM2 token and answers an error code, or sleeps, for the
//! calls its control file names.
//!
//! - errors (`CKR_DEVICE_ERROR`, `CKR_GENERAL_ERROR`, `CKR_DEVICE_REMOVED`,
//!   `CKR_SESSION_HANDLE_INVALID`) on sign, search, generation and the
//!   backend login: the application gets that code at once, the use is in
//!   the trail with its name, an administrator's creation fails saying so
//!   and leaves no key and no object, and with the fault gone service
//!   resumes without a restart;
//! - a `C_Sign` that hangs for one key: other keys are served meanwhile,
//!   a revocation or suspension of the hung key returns within
//!   `[agent] change_wait_ms`, and the hung signature, when it comes back
//!   after the change, is withheld (`CKR_KEY_FUNCTION_NOT_PERMITTED`,
//!   recorded after the change); the trail verifies;
//! - a `C_DeriveKey` or `C_UnwrapKey` that hangs while its key is revoked:
//!   the application gets `CKR_KEY_FUNCTION_NOT_PERMITTED`, the withheld
//!   use is recorded after the revocation, and the object the HSM made is
//!   destroyed: nothing with its label is left, neither as a session object
//!   of the agent nor as a token object on the HSM looked at directly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use keyward_tests::admin::{backend_token, find, keyward, keyward_json, keyward_ok, strict_policy};
use keyward_tests::harness::{softhsm_lib, Env};
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::p11::Ctx;
use keyward_tests::{assert_rv, keyward_test};

const DIGEST: [u8; 32] = [0x5a; 32];

/// The fault library's control file for this testbed.
struct Faults {
    control: PathBuf,
}

impl Faults {
    /// Puts the fault library between the agent and its SoftHSM2 token
    /// (with `[agent]` options `options`), installs the strict policy and
    /// restarts the agent on both.
    fn install(tb: &Env, options: &[&str]) -> Faults {
        tb.require_agent("a faulty backend");
        let control = tb.path("faults.txt");
        std::fs::write(&control, "").expect("write the control file");
        let faultlib = PathBuf::from(&tb.module).with_file_name("libkeyward_faultlib.so");
        assert!(
            faultlib.exists(),
            "{} is missing: cargo build --workspace first",
            faultlib.display()
        );
        // The agent is started from this process and inherits these.
        std::env::set_var("KEYWARD_FAULT_LIBRARY", softhsm_lib());
        std::env::set_var("KEYWARD_FAULT_CONTROL", &control);
        let config = tb.path("keyward-agent.toml");
        let text = std::fs::read_to_string(&config).expect("read the agent config");
        let real = format!("library = {:?}", softhsm_lib());
        assert!(text.contains(&real), "the testbed's library line: {text}");
        let text = text.replace(
            &real,
            &format!("library = {:?}", faultlib.display().to_string()),
        );
        std::fs::write(&config, text).expect("write the agent config");
        if !options.is_empty() {
            tb.set_agent_options(options);
        }
        strict_policy(tb);
        Faults { control }
    }

    /// Replaces the faults in force (`lines`: the control file's lines).
    fn set(&self, lines: &str) {
        // Written whole, then renamed: the library never reads half a file.
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, lines).expect("write the faults");
        std::fs::rename(&tmp, &self.control).expect("put the faults in force");
    }

    fn clear(&self) {
        self.set("");
    }
}

/// Creates and activates managed key `name` (class `signing`).
fn signing_key(tb: &Env, name: &str) {
    keyward_ok(tb, &["key", "create", name, "--class", "signing"], 0);
    keyward_ok(tb, &["key", "activate", name], 0);
}

fn sign(s: &Session, name: &str) -> Result<Vec<u8>, CkError> {
    let k = find(s, name, ObjectClass::PRIVATE_KEY);
    assert_eq!(k.len(), 1, "{name}: private keys {k:?}");
    s.sign(&Mechanism::Ecdsa, k[0], &DIGEST)
}

fn rv_of(r: &Result<Vec<u8>, CkError>) -> Option<RvError> {
    match r {
        Err(CkError::Pkcs11(rv, _)) => Some(*rv),
        _ => None,
    }
}

/// The whole trail, oldest first.
fn trail(tb: &Env) -> Vec<Json> {
    keyward_ok(tb, &["--json", "audit", "tail", "-n", "100000"], 0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn assert_trail_verifies(tb: &Env) {
    let verified = keyward_ok(tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
}

/// The faults injected, with the names the trail and `keyward` print.
const ERRORS: [(RvError, &str); 4] = [
    (RvError::DeviceError, "CKR_DEVICE_ERROR"),
    (RvError::GeneralError, "CKR_GENERAL_ERROR"),
    (RvError::DeviceRemoved, "CKR_DEVICE_REMOVED"),
    (RvError::SessionHandleInvalid, "CKR_SESSION_HANDLE_INVALID"),
];

keyward_test!(fn a_backend_error_on_sign_is_answered_recorded_and_service_resumes(tb) {
    let faults = Faults::install(&tb, &[]);
    signing_key(&tb, "err-sign");
    signing_key(&tb, "err-other");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    sign(&s, "err-sign").expect("a signature before any fault");
    for (rv, name) in ERRORS {
        faults.set(&format!("C_Sign rv={name} label=err-sign\n"));
        let t = Instant::now();
        let r = sign(&s, "err-sign");
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: the answer took {:?}", t.elapsed());
        assert_eq!(rv_of(&r), Some(rv), "{name}: the application got {r:?}");
        // Another key on the same backend is served meanwhile.
        sign(&s, "err-other").unwrap_or_else(|e| panic!("{name}: another key: {e}"));
        let recorded = trail(&tb).iter().any(|r| {
            r.str_at("kind") == "use"
                && r.str_at("operation") == "sign"
                && r.at("key").as_str() == Some("err-sign")
                && r.str_at("result") == name
        });
        assert!(recorded, "{name}: the failed use is not in the trail with its code");
        // The fault gone, the same session signs again: no restart.
        faults.clear();
        sign(&s, "err-sign").unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
    assert_trail_verifies(&tb);
});

keyward_test!(fn a_backend_error_on_search_is_answered_and_service_resumes(tb) {
    let faults = Faults::install(&tb, &[]);
    signing_key(&tb, "err-find");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let all = [Attribute::Class(ObjectClass::PRIVATE_KEY)];
    assert!(!s.find_objects(&all).expect("a search").is_empty());
    for (rv, name) in ERRORS {
        for function in ["C_FindObjectsInit", "C_FindObjects"] {
            faults.set(&format!("{function} rv={name}\n"));
            let t = Instant::now();
            match s.find_objects(&all) {
                Err(CkError::Pkcs11(got, _)) => {
                    assert_eq!(got, rv, "{function} {name}");
                }
                other => panic!("{function} {name}: the search gave {other:?}"),
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{function} {name}: {:?}", t.elapsed());
            faults.clear();
            let found = s.find_objects(&all).unwrap_or_else(|e| panic!("after {function} {name}: {e}"));
            assert!(!found.is_empty(), "after {function} {name}: nothing found");
            sign(&s, "err-find").unwrap_or_else(|e| panic!("after {function} {name}: {e}"));
        }
    }
});

keyward_test!(fn a_backend_error_on_generation_leaves_no_key_and_no_object(tb) {
    let faults = Faults::install(&tb, &[]);
    for (_, name) in ERRORS {
        let key = format!("gen-{}", name.to_lowercase().replace('_', "-"));
        faults.set(&format!("C_GenerateKeyPair rv={name}\n"));
        let out = keyward(&tb, &["key", "create", &key, "--class", "signing"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{name}: the creation succeeded: {said}");
        assert!(said.contains(name), "{name}: the message does not say what the HSM answered: {said}");
        keyward_ok(&tb, &["key", "show", &key], 4);
        let listed = keyward_ok(&tb, &["key", "list"], 0);
        assert!(!listed.contains(&key), "{name}: {listed}");
        // Nothing half-made on the HSM either.
        {
            let (_p11, backend) = backend_token(&tb);
            let objects = backend
                .find_objects(&[Attribute::Label(key.clone().into_bytes())])
                .expect("a backend search");
            assert!(objects.is_empty(), "{name}: objects left on the HSM: {objects:?}");
        }
        faults.clear();
        keyward_ok(&tb, &["key", "create", &key, "--class", "signing"], 0);
        keyward_ok(&tb, &["key", "activate", &key], 0);
        let ctx = Ctx::new(&tb);
        sign(&ctx.user(), &key).unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
    assert_trail_verifies(&tb);
});

keyward_test!(fn a_backend_login_that_fails_at_start_is_tried_again_until_it_works(tb) {
    let faults = Faults::install(&tb, &[]);
    signing_key(&tb, "err-login");
    for (_, name) in ERRORS {
        faults.set(&format!("C_Login rv={name}\n"));
        tb.stop_agent();
        tb.start_agent();
        let status = keyward_json(&tb, &["status"], 0);
        let error = status.at("tokens").as_array().and_then(|t| t.first()).map(|t| t.at("backend_error").clone());
        let error = error.unwrap_or_else(|| panic!("{name}: no token in {status}"));
        assert!(
            error.as_str().is_some_and(|e| e.contains(name)),
            "{name}: the status does not say why the backend is unavailable: {status}"
        );
        faults.clear();
        // The agent tries again after 1 s, then twice as long each time.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = keyward_json(&tb, &["status"], 0);
            let token = status.at("tokens").as_array().and_then(|t| t.first()).cloned();
            if token.is_some_and(|t| t.at("backend_error").is_null()) {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: the backend is not back 20 s after the fault went: {status}");
            std::thread::sleep(Duration::from_millis(250));
        }
        let ctx = Ctx::new(&tb);
        sign(&ctx.user(), "err-login").unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
});

keyward_test!(fn a_hung_backend_call_blocks_neither_other_keys_nor_a_revocation_and_its_result_is_withheld(tb) {
    // The hung calls sleep far longer than the bound on a change.
    const HANG_MS: u64 = 12_000;
    const BOUND_MS: u64 = 1_000;
    let faults = Faults::install(&tb, &[&format!("change_wait_ms = {BOUND_MS}")]);
    for k in ["hang-revoked", "hang-suspended", "hang-free"] {
        signing_key(&tb, k);
    }
    let ctx = Ctx::new(&tb);
    // Each key once before the fault: its object is judged genuine by then.
    // (The login holds for every session of this process.)
    let logged_in = ctx.user();
    {
        let s = &logged_in;
        for k in ["hang-revoked", "hang-suspended", "hang-free"] {
            sign(s, k).unwrap_or_else(|e| panic!("{k} before the fault: {e}"));
        }
    }
    faults.set(&format!(
        "C_Sign sleep={HANG_MS} label=hang-revoked\nC_Sign sleep={HANG_MS} label=hang-suspended\n"
    ));
    let changes = [
        ("hang-revoked", vec!["key", "revoke", "--yes", "hang-revoked", "--reason", "hung", "--reason-code", "keyCompromise"]),
        ("hang-suspended", vec!["key", "suspend", "hang-suspended", "--reason", "hung"]),
    ];
    std::thread::scope(|scope| {
        let hung: Vec<_> = ["hang-revoked", "hang-suspended"]
            .into_iter()
            .map(|k| {
                let ctx = &ctx;
                scope.spawn(move || {
                    let s = ctx.rw();
                    let t = Instant::now();
                    let r = sign(&s, k);
                    (r, t.elapsed())
                })
            })
            .collect();
        // The hung calls are in the backend.
        std::thread::sleep(Duration::from_millis(1500));

        // (a) another key is served while they hang.
        let s = ctx.rw();
        let t = Instant::now();
        sign(&s, "hang-free").expect("another key while two hang");
        assert!(t.elapsed() < Duration::from_secs(3), "another key waited {:?}", t.elapsed());

        // (b) the changes return within the bound (plus the CLI's own
        // time), and other keys are served while they wait.
        for (key, args) in &changes {
            let tb = &tb;
            let t = Instant::now();
            let change = scope.spawn(move || keyward_ok(tb, args, 0));
            std::thread::sleep(Duration::from_millis(BOUND_MS / 3));
            let during = Instant::now();
            sign(&s, "hang-free").unwrap_or_else(|e| panic!("another key during the change of {key}: {e}"));
            assert!(
                during.elapsed() < Duration::from_secs(2),
                "another key waited {:?} during the change of {key}",
                during.elapsed()
            );
            change.join().expect("the change");
            let took = t.elapsed();
            assert!(
                took < Duration::from_millis(BOUND_MS + 4_000),
                "the change of {key} took {took:?} while its C_Sign hangs for {HANG_MS} ms"
            );
            // New uses of the changed key are refused at once.
            assert_eq!(
                rv_of(&sign(&s, key)),
                Some(RvError::KeyFunctionNotPermitted),
                "{key} after its change"
            );
        }

        // The hung signatures come back after the changes: withheld.
        for (h, key) in hung.into_iter().zip(["hang-revoked", "hang-suspended"]) {
            let (r, took) = h.join().expect("the hung signer");
            assert!(took >= Duration::from_millis(HANG_MS), "{key}: the call did not hang ({took:?})");
            assert_eq!(
                rv_of(&r),
                Some(RvError::KeyFunctionNotPermitted),
                "{key}: the signature made before the change and finished after it: {r:?}"
            );
        }
        sign(&s, "hang-free").expect("another key at the end");
    });

    // (c) The trail: each withheld use recorded after its key's change,
    // and it verifies.
    let all = trail(&tb);
    for (key, op) in [("hang-revoked", "revoke"), ("hang-suspended", "suspend")] {
        let of_key = |r: &Json| r.at("key").as_str() == Some(key);
        let change = all
            .iter()
            .position(|r| of_key(r) && r.str_at("kind") == "lifecycle" && r.str_at("operation") == op)
            .unwrap_or_else(|| panic!("no {op} record of {key}"));
        let withheld: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, r)| of_key(r) && r.str_at("kind") == "refusal" && r.str_at("reason").contains("withheld"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(withheld.len(), 1, "{key}: withheld records {withheld:?}");
        assert!(withheld[0] > change, "{key}: the withheld use is recorded before the change");
        let w = &all[withheld[0]];
        assert_eq!(w.str_at("operation"), "sign", "{w}");
        assert_eq!(w.str_at("result"), "CKR_KEY_FUNCTION_NOT_PERMITTED", "{w}");
        // No successful use of the key after its change.
        let late_ok = all[change..].iter().any(|r| {
            of_key(r) && r.str_at("kind") == "use" && r.str_at("result") == "CKR_OK"
        });
        assert!(!late_ok, "{key}: a successful use recorded after the change");
    }
    assert_trail_verifies(&tb);
});

/// A strict policy for the fleet: this user is the application; class
/// `signing` grants it sign and verify.
fn fleet_policy() -> String {
    use keyward_tests::admin::{
        application_toml, sign_grant_toml, signing_class_toml, uid, APPLICATION,
    };
    format!(
        "[settings]\nmode = \"strict\"\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

// The same on the fleet's notice path: a revocation made through agent 0
// while agent 1's backend hangs in a C_Sign of that key. Agent 1 puts it in
// force within its bound, serves its other keys meanwhile, and withholds
// the hung signature when it comes back.
keyward_test!(fn fleet_a_hung_sign_on_one_agent_blocks_neither_a_revocation_from_another_nor_other_keys(tb) {
    use keyward_tests::fleet::Fleet;
    const HANG_MS: u64 = 12_000;
    const BOUND_MS: u64 = 1_000;
    tb.require_agent("a fleet");
    let control = tb.path("fleet-faults.txt");
    std::fs::write(&control, "").expect("write the control file");
    // Set before any agent starts; every agent inherits them, and only
    // agent 1 loads the fault library.
    std::env::set_var("KEYWARD_FAULT_LIBRARY", softhsm_lib());
    std::env::set_var("KEYWARD_FAULT_CONTROL", &control);
    let faults = Faults { control };
    let fleet = Fleet::start(2, &fleet_policy(), 5);
    {
        let member = &fleet.agents[1];
        member.testbed.stop().expect("stop agent 1");
        let config = member.testbed.config();
        let text = std::fs::read_to_string(&config).expect("read agent 1's config");
        let real = format!("library = {:?}", softhsm_lib());
        assert!(text.contains(&real), "agent 1's library line: {text}");
        let faultlib = PathBuf::from(&member.env.module).with_file_name("libkeyward_faultlib.so");
        let text = text.replace(&real, &format!("library = {:?}", faultlib.display().to_string()));
        std::fs::write(&config, text).expect("write agent 1's config");
        member
            .testbed
            .set_agent_options(&[&format!("change_wait_ms = {BOUND_MS}")])
            .expect("change_wait_ms");
        member.testbed.start().expect("start agent 1 on the fault library");
    }
    for k in ["fleet-hung", "fleet-free"] {
        keyward_ok(fleet.env(0), &["key", "create", k, "--class", "signing"], 0);
        keyward_ok(fleet.env(0), &["key", "activate", k], 0);
    }
    let mut hung = fleet.probe(1, "fleet-hung");
    let mut late = fleet.probe(1, "fleet-hung");
    let mut free = fleet.probe(1, "fleet-free");
    for p in [&mut hung, &mut late, &mut free] {
        p.say("sign");
        assert_eq!(p.value("sign", Duration::from_secs(10)), "ok", "{}", fleet.logs());
    }
    faults.set(&format!("C_Sign sleep={HANG_MS} label=fleet-hung\n"));
    let hung_since = Instant::now();
    hung.say("sign");
    std::thread::sleep(Duration::from_millis(1500));

    keyward_ok(
        fleet.env(0),
        &["key", "revoke", "--yes", "fleet-hung", "--reason", "hung", "--reason-code", "keyCompromise"],
        0,
    );
    let revoked = Instant::now();
    // Agent 1 serves its other key while its change waits for the hung use.
    std::thread::sleep(Duration::from_millis(BOUND_MS / 3));
    let t = Instant::now();
    free.say("sign");
    assert_eq!(free.value("sign", Duration::from_secs(30)), "ok", "{}", fleet.logs());
    assert!(t.elapsed() < Duration::from_secs(2), "agent 1's other key waited {:?}", t.elapsed());
    // And refuses a new use of the revoked key within the bound.
    let refused = loop {
        late.say("sign");
        let said = late.value("sign", Duration::from_secs(30));
        if said != "ok" {
            break said;
        }
        assert!(
            revoked.elapsed() < Duration::from_millis(BOUND_MS + 3_000),
            "agent 1 still signs with the revoked key after {:?}:\n{}",
            revoked.elapsed(),
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains("KeyFunctionNotPermitted"), "{refused}");
    assert!(
        revoked.elapsed() < Duration::from_millis(BOUND_MS + 3_000),
        "the revocation took {:?} to be in force on agent 1",
        revoked.elapsed()
    );
    // The hung signature comes back after the revocation: withheld.
    let said = hung.value("sign", Duration::from_secs(60));
    assert!(hung_since.elapsed() >= Duration::from_millis(HANG_MS), "the call did not hang");
    assert!(said.contains("KeyFunctionNotPermitted"), "the hung signature: {said}");
    faults.clear();

    // Agent 1's records reach the shared trail in its next batch.
    let of_key = |r: &Json| r.at("key").as_str() == Some("fleet-hung");
    let is_withheld = |r: &Json| of_key(r) && r.str_at("kind") == "refusal" && r.str_at("reason").contains("withheld");
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = trail(fleet.env(0));
        if all.iter().any(is_withheld) || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let change = all
        .iter()
        .position(|r| of_key(r) && r.str_at("kind") == "lifecycle" && r.str_at("operation") == "revoke")
        .expect("the revocation's record");
    let withheld: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| is_withheld(r))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(withheld.len(), 1, "withheld records: {withheld:?}");
    assert!(withheld[0] > change, "the withheld use is recorded before the revocation");
    assert_eq!(all[withheld[0]].str_at("host"), "agent-1", "{}", all[withheld[0]]);
    assert_trail_verifies(fleet.env(0));
});

/// The object a withheld derivation or unwrap would have made carries this
/// label: a search for it finds what was left.
const WITHHELD_LABEL: &str = "withheld-object";

/// Revokes `key` while a use of it (`hung`, in a thread) hangs in the
/// backend; the revocation returns within `bound_ms` (plus the CLI's own
/// time). Returns what the use answered and how long it took.
fn revoke_during<T: Send>(
    tb: &Env,
    key: &str,
    bound_ms: u64,
    hung: impl FnOnce() -> T + Send,
) -> (T, Duration) {
    std::thread::scope(|scope| {
        let use_ = scope.spawn(move || {
            let t = Instant::now();
            let r = hung();
            (r, t.elapsed())
        });
        // The hung call is in the backend.
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        keyward_ok(
            tb,
            &[
                "key",
                "revoke",
                "--yes",
                key,
                "--reason",
                "hung",
                "--reason-code",
                "keyCompromise",
            ],
            0,
        );
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(bound_ms + 4_000),
            "the revocation of {key} took {took:?} while its use hangs"
        );
        use_.join().expect("the hung use")
    })
}

/// The withheld use of `key` for `operation` is in the trail, once, after
/// the key's revocation, and no use of the key succeeded after it; the
/// trail verifies.
fn assert_withheld_after_revocation(tb: &Env, key: &str, operation: &str) {
    let all = trail(tb);
    let of_key = |r: &Json| r.at("key").as_str() == Some(key);
    let change = all
        .iter()
        .position(|r| {
            of_key(r) && r.str_at("kind") == "lifecycle" && r.str_at("operation") == "revoke"
        })
        .unwrap_or_else(|| panic!("no revoke record of {key}"));
    let withheld: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            of_key(r) && r.str_at("kind") == "refusal" && r.str_at("reason").contains("withheld")
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(withheld.len(), 1, "{key}: withheld records {withheld:?}");
    assert!(
        withheld[0] > change,
        "{key}: the withheld use is recorded before the revocation"
    );
    let w = &all[withheld[0]];
    assert_eq!(w.str_at("operation"), operation, "{w}");
    assert_eq!(w.str_at("result"), "CKR_KEY_FUNCTION_NOT_PERMITTED", "{w}");
    let late_ok = all[change..]
        .iter()
        .any(|r| of_key(r) && r.str_at("kind") == "use" && r.str_at("result") == "CKR_OK");
    assert!(
        !late_ok,
        "{key}: a successful use recorded after the revocation"
    );
    assert_trail_verifies(tb);
}

/// The objects labelled `label` that an application of this process finds
/// through the agent (in lab mode, every object the agent's backend
/// sessions can see that belongs to no other client: a derived or
/// unwrapped session object left without an owner is one of them).
fn found_by_application(s: &Session, label: &str) -> usize {
    s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("C_FindObjects through the agent")
        .len()
}

// A C_DeriveKey that hangs in the backend while the base key is revoked:
// the derived key (a session object of the agent's backend session: keys
// derived from managed keys are, in lab mode too) is withheld and
// destroyed in the HSM, so neither an application nor the scan of the HSM
// ever finds it.
keyward_test!(fn a_withheld_derivation_leaves_no_object_in_the_hsm(tb) {
    use cryptoki_sys::{
        CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL, CKA_VALUE_LEN, CKK_GENERIC_SECRET, CKM_ECDH1_DERIVE,
        CKO_SECRET_KEY, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_OK,
    };
    use cryptoki::object::AttributeType;
    use keyward_tests::admin::{install_policy, uid, APPLICATION};
    use keyward_tests::raw::{Attr, Mech, Param};
    const HANG_MS: u64 = 6_000;
    const BOUND_MS: u64 = 1_000;
    let faults = Faults::install(&tb, &[&format!("change_wait_ms = {BOUND_MS}")]);
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"lab\"\n{}\n[[class]]\nname = \"agreement\"\npurpose = \"derivation\"\n\
             algorithms = [\"ec:p256\"]\nprotect_period = \"30d\"\nprocess_period = \"60d\"\n\
             grants = [ {{ application = \"{APPLICATION}\", operations = [\"derive\"] }} ]\n",
            keyward_tests::admin::application_toml(APPLICATION, uid()),
        ),
    );
    for k in ["derive-base", "derive-peer"] {
        keyward_ok(&tb, &["key", "create", k, "--class", "agreement"], 0);
        keyward_ok(&tb, &["key", "activate", k], 0);
    }
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let base = find(&s, "derive-base", ObjectClass::PRIVATE_KEY)[0].handle();
    let peer = find(&s, "derive-peer", ObjectClass::PUBLIC_KEY)[0];
    let point = match &s.get_attributes(peer, &[AttributeType::EcPoint]).expect("CKA_EC_POINT")[..] {
        // DER OCTET STRING of an uncompressed P-256 point.
        [Attribute::EcPoint(p)] if p.len() == 67 => p[2..].to_vec(),
        other => panic!("CKA_EC_POINT: {other:?}"),
    };
    let ecdh = Mech { type_: CKM_ECDH1_DERIVE, param: Param::Ecdh1 { public: point } };
    let template = |label: &str| {
        vec![
            Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
            Attr::Ulong(CKA_VALUE_LEN, 32),
            Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec()),
        ]
    };
    // A derivation before the fault: the key is judged genuine, and a
    // derived key is found by its label (the search below can find one).
    let (rv, _) = ctx.raw.derive_key(s.handle(), &ecdh, base, &template("derived-before"));
    assert_rv!(rv, CKR_OK, "a derivation before the fault");
    assert_eq!(found_by_application(&s, "derived-before"), 1, "the derived key by its label");
    assert_eq!(found_by_application(&s, WITHHELD_LABEL), 0, "before the withheld derivation");

    // The deriving session stays open: a session object lives as long as
    // the session that made it.
    let deriving = ctx.rw();
    let h = deriving.handle();
    faults.set(&format!("C_DeriveKey sleep={HANG_MS} label=derive-base\n"));
    let ((rv, _), took) = revoke_during(&tb, "derive-base", BOUND_MS, || {
        ctx.raw.derive_key(h, &ecdh, base, &template(WITHHELD_LABEL))
    });
    faults.clear();
    assert!(took >= Duration::from_millis(HANG_MS), "the derivation did not hang ({took:?})");
    assert_rv!(rv, CKR_KEY_FUNCTION_NOT_PERMITTED, "the derivation finished after the revocation");

    // Nothing of it is left (a session object of the HSM lives in the
    // agent's process, where these searches run): the agent's backend
    // sessions find no object with its label for the application (in lab
    // mode an unmanaged key without an owner is shown to it), nor does
    // the administrators' scan of the HSM for keys outside management.
    let in_deriving = found_by_application(&deriving, WITHHELD_LABEL);
    let in_other = found_by_application(&s, WITHHELD_LABEL);
    let discovered = keyward_json(&tb, &["discover"], 0);
    let scanned = discovered.items().iter().filter(|k| k.str_at("label") == WITHHELD_LABEL).count();
    assert_eq!(
        (in_deriving, in_other, scanned),
        (0, 0, 0),
        "the withheld derivation left its key (found in the deriving session, in another \
         session, by the scan of the HSM): {discovered}"
    );
    assert_withheld_after_revocation(&tb, "derive-base", "derive");
});

// A C_UnwrapKey that hangs in the backend while the unwrapping key is
// revoked: the unwrapped key, a token object (lab mode lets an application
// keep one), is withheld and destroyed: the HSM, looked at directly, has
// no object with its label.
keyward_test!(fn a_withheld_unwrap_leaves_no_object_in_the_hsm(tb) {
    use cryptoki::object::KeyType;
    use keyward_tests::admin::{application_toml, install_policy, uid, APPLICATION};
    const HANG_MS: u64 = 6_000;
    const BOUND_MS: u64 = 1_000;
    let faults = Faults::install(&tb, &[&format!("change_wait_ms = {BOUND_MS}")]);
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"lab\"\n{}\n[[class]]\nname = \"kek\"\npurpose = \"wrapping\"\n\
             algorithms = [\"aes:256\"]\nprotect_period = \"30d\"\nprocess_period = \"60d\"\n\
             grants = [ {{ application = \"{APPLICATION}\", operations = [\"wrap\", \"unwrap\"] }} ]\n",
            application_toml(APPLICATION, uid()),
        ),
    );
    keyward_ok(&tb, &["key", "create", "unwrap-kek", "--class", "kek"], 0);
    keyward_ok(&tb, &["key", "activate", "unwrap-kek"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let kek = find(&s, "unwrap-kek", ObjectClass::SECRET_KEY)[0];
    let wrap = Mechanism::AesKeyWrapPad;
    let dek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Extractable(true),
            ],
        )
        .expect("a data key");
    let blob = s.wrap_key(&wrap, kek, dek).expect("C_WrapKey of the data key");
    let template = |label: &str| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Encrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let on_hsm = |label: &str| {
        let (_p11, backend) = backend_token(&tb);
        backend
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .expect("a backend search")
            .len()
    };
    // An unwrap before the fault: the key is judged genuine, and the
    // unwrapped token object is on the HSM (the search below can find one).
    s.unwrap_key(&wrap, kek, &blob, &template("unwrapped-before"))
        .expect("an unwrap before the fault");
    assert_eq!(on_hsm("unwrapped-before"), 1, "the unwrapped token object on the HSM");
    assert_eq!(on_hsm(WITHHELD_LABEL), 0, "before the withheld unwrap");

    faults.set(&format!("C_UnwrapKey sleep={HANG_MS} label=unwrap-kek\n"));
    let (r, took) = revoke_during(&tb, "unwrap-kek", BOUND_MS, || {
        let s = ctx.rw();
        s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &blob, &template(WITHHELD_LABEL))
    });
    faults.clear();
    assert!(took >= Duration::from_millis(HANG_MS), "the unwrap did not hang ({took:?})");
    match r {
        Err(CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _)) => {}
        other => panic!("the unwrap finished after the revocation: {other:?}"),
    }

    assert_eq!(on_hsm(WITHHELD_LABEL), 0, "the withheld unwrap left its key on the HSM");
    assert_eq!(found_by_application(&s, WITHHELD_LABEL), 0, "through the agent");
    assert_withheld_after_revocation(&tb, "unwrap-kek", "unwrap");
});
