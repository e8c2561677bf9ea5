//! What the audit trail records beyond admin requests: every use of any
//! key (managed or not) with its mechanism, result and count; lifecycle,
//! grant, discovery and policy events from their own call sites; a
//! configuration reload; forwarding to syslog; and what happens while the
//! trail cannot be written.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use keyward_tests::admin::{
    application_toml, audit_query, find, install_policy, keyward, keyward_ok, signing_class_toml,
    uid, uses,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{ec_pair, expect_err, Ctx};

/// DER of the P-256 curve OID.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const CKM_ECDSA: &str = "CKM_ECDSA";
const CKR_OK: &str = "CKR_OK";
const CKR_SIGNATURE_INVALID: &str = "CKR_SIGNATURE_INVALID";
const CKR_FUNCTION_FAILED: &str = "CKR_FUNCTION_FAILED";

/// Every record of the trail.
fn trail(tb: &Env) -> Vec<Json> {
    audit_query(tb, &[])
}

/// Lab mode with one listed application (this user, `testbed`) and a
/// signing class without grants of its own.
fn lab_policy(extra: &str) -> String {
    format!(
        "[settings]\nmode = \"lab\"\n{}{}",
        application_toml("testbed", uid()),
        signing_class_toml("signing", "30d", "60d", extra)
    )
}

keyward_test!(fn every_use_of_an_unmanaged_key_is_recorded_with_mechanism_result_and_count(tb) {
    tb.require_agent("the audit trail");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = ec_pair(&s, P256, "plain-key", false);
    let digest = [7u8; 32];
    let mut signature = Vec::new();
    for _ in 0..50 {
        signature = s.sign(&Mechanism::Ecdsa, private, &digest).expect("C_Sign");
    }
    s.verify(&Mechanism::Ecdsa, public, &digest, &signature).expect("a good signature");
    signature[5] ^= 0x55;
    expect_err(s.verify(&Mechanism::Ecdsa, public, &digest, &signature), RvError::SignatureInvalid);
    // A public key cannot sign: the failed init is a use with its result.
    assert!(s.sign(&Mechanism::Ecdsa, public, &digest).is_err(), "a public key signed");

    let records = audit_query(&tb, &["--key", "plain-key"]);
    assert_eq!(uses(&records, "sign", CKR_OK), 50, "50 signatures, counted:\n{records:#?}");
    assert!(
        records.iter().filter(|r| r.str_at("operation") == "sign").count() < 50,
        "equal uses were not coalesced into fewer records:\n{records:#?}"
    );
    assert_eq!(uses(&records, "verify", CKR_OK), 1);
    assert_eq!(uses(&records, "verify", CKR_SIGNATURE_INVALID), 1, "{records:#?}");
    assert!(
        records.iter().any(|r| r.str_at("operation") == "sign" && r.str_at("result") != CKR_OK),
        "the refused signing init is missing:\n{records:#?}"
    );
    for r in &records {
        assert_eq!(r.str_at("mechanism"), CKM_ECDSA, "{r}");
        assert!(r.at("key_version").is_null(), "an unmanaged key has no version: {r}");
        assert_eq!(r.str_at("token"), tb.token);
        assert_eq!(r.i64_at("pid"), i64::from(std::process::id()), "{r}");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(r.str_at("exe"), exe.display().to_string(), "{r}");
        let span = r.i64_at("span_us");
        assert!(r.i64_at("count") >= 1 && (0..=1_000_000).contains(&span), "{r}");
    }
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
});

keyward_test!(fn lifecycle_grant_discovery_and_policy_events_come_from_their_call_sites(tb) {
    tb.require_agent("the audit trail");
    install_policy(&tb, &lab_policy(""));
    keyward_ok(&tb, &["key", "create", "lc", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "lc", "--reason", "go live"], 0);
    keyward_ok(&tb, &["grant", "add", "lc", "testbed", "--ops", "sign", "--for", "1h"], 0);
    keyward_ok(&tb, &["key", "rotate", "lc"], 0);
    keyward_ok(&tb, &["grant", "remove", "lc", "testbed"], 0);
    keyward_ok(&tb, &["key", "suspend", "lc", "--reason", "audit"], 0);
    keyward_ok(&tb, &["key", "revoke", "--yes", "lc", "--reason", "laptop stolen", "--reason-code", "keyCompromise"], 0);
    // An unmanaged key for discovery to find.
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    ec_pair(&s, P256, "stray-key", true);
    keyward_ok(&tb, &["discover"], 0);

    let all = trail(&tb);
    let lifecycle: Vec<(String, Option<i64>, String)> = all
        .iter()
        .filter(|r| r.str_at("kind") == "lifecycle" && r.at("key").as_str() == Some("lc"))
        .map(|r| {
            assert_eq!(r.str_at("actor"), "administrator", "{r}");
            (r.str_at("operation").to_owned(), r.at("key_version").as_i64(), r.str_at("reason").to_owned())
        })
        .collect();
    let has = |op: &str, version: Option<i64>, reason: &str| {
        lifecycle.iter().any(|(o, v, r)| o == op && *v == version && r.starts_with(reason))
    };
    assert!(has("create", None, "from none to pre-activation"), "{lifecycle:#?}");
    assert!(has("create", Some(1), "from none to pre-activation"), "{lifecycle:#?}");
    assert!(has("activate", None, "from pre-activation to active: go live"), "{lifecycle:#?}");
    assert!(has("rotate", Some(2), "from none to active"), "{lifecycle:#?}");
    assert!(has("rotate", Some(1), "from active to deactivated"), "{lifecycle:#?}");
    assert!(has("suspend", None, "from active to suspended: code=certificateHold; audit"), "{lifecycle:#?}");
    assert!(has("revoke", None, "from suspended to compromised: code=keyCompromise; laptop stolen"), "{lifecycle:#?}");

    let grants: Vec<&Json> = all.iter().filter(|r| r.str_at("kind") == "grant").collect();
    assert!(
        grants.iter().any(|r| r.str_at("operation") == "grant add"
            && r.str_at("reason").contains("\"testbed\"")
            && r.str_at("reason").contains("sign")),
        "{grants:#?}"
    );
    assert!(grants.iter().any(|r| r.str_at("operation") == "grant remove"), "{grants:#?}");
    assert!(
        all.iter().any(|r| r.str_at("kind") == "discovery"
            && r.at("key").as_str() == Some("stray-key")
            && r.str_at("reason").contains("not managed")),
        "the discovery finding is missing"
    );
    let policy: Vec<&Json> = all.iter().filter(|r| r.str_at("kind") == "policy").collect();
    assert!(
        policy.iter().any(|r| r.str_at("operation") == "load" && r.str_at("reason").contains("sha256")),
        "{policy:#?}"
    );
    // The order is the order things happened in.
    let seq_of = |kind: &str, op: &str| {
        all.iter()
            .find(|r| r.str_at("kind") == kind && r.str_at("operation") == op)
            .map(|r| r.i64_at("seq"))
            .unwrap_or_else(|| panic!("no {kind} {op}"))
    };
    assert!(seq_of("lifecycle", "create") < seq_of("lifecycle", "activate"));
    assert!(seq_of("grant", "grant add") < seq_of("lifecycle", "rotate"));
    assert!(seq_of("lifecycle", "suspend") < seq_of("lifecycle", "revoke"));
});

keyward_test!(fn the_scheduler_is_the_actor_of_a_scheduled_rotation(tb) {
    tb.require_agent("the audit trail");
    install_policy(&tb, &lab_policy("rotation_interval = \"2s\""));
    keyward_ok(&tb, &["key", "create", "sched", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "sched"], 0);
    // The scheduler makes a pass soon after a start (then every minute):
    // a restart after the rotation date catches up with it.
    std::thread::sleep(Duration::from_secs(3));
    tb.stop_agent();
    tb.start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = audit_query(&tb, &["--key", "sched"]).into_iter().any(|r| {
            r.str_at("kind") == "lifecycle" && r.str_at("actor") == "scheduler"
                && r.str_at("operation") == "rotate"
                && r.str_at("reason").contains("scheduled rotation")
        });
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled rotation recorded within 20 s of a start");
        std::thread::sleep(Duration::from_millis(500));
    }
});

keyward_test!(fn a_reload_puts_a_new_policy_in_force_and_a_broken_one_changes_nothing(tb) {
    tb.require_agent("a reload");
    install_policy(&tb, &lab_policy(""));
    let reload = |expect: &str| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tb.agent_pid()), nix::sys::signal::SIGHUP)
            .expect("SIGHUP the agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = trail(&tb);
            if let Some(r) = records.iter().rev().find(|r| {
                r.str_at("kind") == "agent" && r.str_at("operation") == "reload"
                    && r.str_at("reason").contains(expect)
            }) {
                return (r.clone(), records);
            }
            assert!(Instant::now() < deadline, "no reload record saying {expect:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Unknown class before the reload.
    keyward_ok(&tb, &["key", "create", "later", "--class", "added"], 4);

    let added = "\n[[class]]\nname = \"added\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
                 protect_period = \"1d\"\nprocess_period = \"2d\"\n";
    std::fs::write(tb.path("policy.toml"), lab_policy(added)).unwrap();
    let (r, records) = reload("policy now");
    assert_eq!(r.str_at("result"), CKR_OK, "{r}");
    assert!(
        records.iter().any(|p| p.str_at("kind") == "policy" && p.str_at("operation") == "change"
            && p.str_at("reason").contains("from ") && p.str_at("reason").contains(" to ")),
        "no policy change record"
    );
    keyward_ok(&tb, &["key", "create", "later", "--class", "added"], 0);

    // A policy with a mistake: the reload says where, and the policy in force stays.
    std::fs::write(tb.path("policy.toml"), lab_policy(&added.replace("\"1d\"", "\"one day\""))).unwrap();
    let (r, _) = reload("nothing changed");
    assert_eq!(r.str_at("result"), CKR_FUNCTION_FAILED, "{r}");
    assert!(r.str_at("reason").contains("policy.toml:"), "the reason names no place: {r}");
    keyward_ok(&tb, &["key", "create", "later2", "--class", "added"], 0);

    // Settings that need a restart are named.
    std::fs::write(tb.path("policy.toml"), lab_policy(added)).unwrap();
    let config = tb.path("keyward-agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[audit]\ncheckpoint_events = 7\n")).unwrap();
    let (r, _) = reload("next start");
    assert!(r.str_at("reason").contains("[audit]"), "{r}");
});

keyward_test!(fn records_are_forwarded_to_syslog_as_json(tb) {
    tb.require_agent("syslog forwarding");
    let path = tb.path("syslog.sock");
    let listener = UnixDatagram::bind(&path).expect("bind a syslog socket");
    listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tb.configure_agent(&format!("[audit]\nsyslog = true\nsyslog_socket = \"{}\"\n", path.display()));
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256, "logged-key", false);
    s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).expect("C_Sign");
    keyward_ok(&tb, &["audit", "tail", "-n", "1"], 0); // writes what is queued

    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let n = listener.recv(&mut buf).expect("a syslog message within 5 s");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = m.contains("logged-key") && m.contains("\"use\"");
        messages.push(m);
        if done {
            break;
        }
    }
    let m = messages.iter().find(|m| m.contains("logged-key") && m.contains("\"use\"")).unwrap_or_else(|| {
        panic!("no use record reached syslog:\n{messages:#?}")
    });
    // authpriv (10) * 8 + notice (5)
    assert!(m.starts_with("<85>"), "priority: {m}");
    assert!(m.contains("keyward-agent["), "{m}");
    let json: Json = serde_json::from_str(&m[m.find('{').expect("a JSON object")..]).expect("JSON");
    assert_eq!(json.str_at("operation"), "sign");
    assert_eq!(json.i64_at("count"), 1);
    assert!(json.i64_at("seq") > 0, "{json}");
    let start = messages.iter().any(|m| m.contains("\"start\""));
    assert!(start || messages.len() > 1, "{messages:#?}");
});

// A syslog that stops reading (its queue full) does not stall the trail:
// records are still written, admin requests still answered, and the
// forwarding failure is said in the agent's log.
keyward_test!(fn a_syslog_that_stops_reading_does_not_stall_the_trail(tb) {
    tb.require_agent("syslog forwarding");
    let path = tb.path("syslog.sock");
    // Bound, never read.
    let _listener = UnixDatagram::bind(&path).expect("bind a syslog socket");
    tb.configure_agent(&format!("[audit]\nsyslog = true\nsyslog_socket = \"{}\"\n", path.display()));
    // Each tail is answered after the writer wrote what was queued, and
    // adds its own record: far more than a datagram queue holds.
    let started = Instant::now();
    for _ in 0..40 {
        keyward_ok(&tb, &["audit", "tail", "-n", "1"], 0);
    }
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("cannot forward to syslog"), "{log}");
});

/// Holds the inventory's write lock, as another process could, until dropped.
fn lock_the_trail(tb: &Env) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the store");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    conn
}

keyward_test!(fn while_the_trail_cannot_be_written_refuse_mode_refuses_and_admin_fails_closed(tb) {
    tb.require_agent("audit failure handling");
    tb.configure_agent("[audit]\non_write_failure = \"refuse\"\n");
    install_policy(&tb, &lab_policy(""));
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256, "guarded", false);
    s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).expect("C_Sign before");

    let lock = lock_the_trail(&tb);
    // Admin actions are refused (fail closed) while the trail is locked.
    let out = keyward(&tb, &["key", "create", "never", "--class", "signing"]);
    assert_ne!(out.status.code(), Some(0), "an admin action succeeded without a trail");
    // Uses go on until the writer finds the trail unwritable, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]) {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "signing was never refused while the trail was locked");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(format!("{refused:?}").contains("FunctionFailed"), "{refused:?}");
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).is_err() {
        assert!(Instant::now() < deadline, "signing did not come back after the trail was unlocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    let records = audit_query(&tb, &["--key", "guarded"]);
    assert!(uses(&records, "sign", CKR_OK) >= 2, "{records:#?}");
    let refusals = audit_query(&tb, &["--result", "denied"]);
    assert!(
        refusals.iter().any(|r| r.str_at("reason").contains("audit trail cannot be written")),
        "the refusals are not in the trail"
    );
    let keys = keyward_ok(&tb, &["--json", "key", "list"], 0);
    assert!(!keys.contains("\"never\""), "the refused creation happened: {keys}");
});

keyward_test!(fn an_operation_begun_before_the_trail_failed_is_refused_at_its_next_call(tb) {
    tb.require_agent("audit failure handling");
    tb.configure_agent("[audit]\non_write_failure = \"refuse\"\n");
    install_policy(&tb, &lab_policy(""));
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let probe = ctx.rw();
    let (_, private) = ec_pair(&s, P256, "multi-part", false);
    // A multi-part digest begun while the trail is written: a part larger
    // than the module holds back reaches the agent with the deferred init.
    s.digest_init(&Mechanism::Sha256).expect("C_DigestInit");
    s.digest_update(&vec![7u8; 1 << 20]).expect("C_DigestUpdate before");

    let lock = lock_the_trail(&tb);
    // Wait until the agent refuses new operations: the trail has failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).is_ok() {
        assert!(Instant::now() < deadline, "signing was never refused while the trail was locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The operation begun before goes no further either.
    s.digest_update(b"after the trail failed").expect("held back by the module");
    let refused = s
        .digest_final()
        .expect_err("an operation begun before the trail failed went on without it");
    assert!(format!("{refused:?}").contains("FunctionFailed"), "{refused:?}");
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let refusals = audit_query(&tb, &["--result", "denied"]);
        if refusals
            .iter()
            .filter(|r| r.str_at("reason").contains("audit trail cannot be written"))
            .count()
            >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "the refusals are not in the trail: {refusals:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
});

keyward_test!(fn while_the_trail_cannot_be_written_continue_mode_serves_and_keeps_every_use(tb) {
    tb.require_agent("audit failure handling");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256, "kept", false);
    let lock = lock_the_trail(&tb);
    let started = Instant::now();
    let mut n = 0;
    // Long enough for the writer to fail at least once (its lock wait is 5 s).
    while started.elapsed() < Duration::from_secs(7) {
        s.sign(&Mechanism::Ecdsa, private, &[2u8; 32]).expect("C_Sign goes on");
        n += 1;
    }
    drop(lock);
    let records = audit_query(&tb, &["--key", "kept"]);
    assert_eq!(uses(&records, "sign", CKR_OK), n, "uses made while the trail was locked were lost");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("THE TRAIL CANNOT BE WRITTEN"), "the failure was not said loudly:\n{log}");
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    // The key is still there and usable after the trail came back.
    assert_eq!(find(&s, "kept", ObjectClass::PRIVATE_KEY), vec![private]);
    s.sign(&Mechanism::Ecdsa, private, &[2u8; 32]).expect("C_Sign after the trail came back");
});

keyward_test!(fn a_trail_that_cannot_be_written_is_said_once_per_streak_and_at_its_end(tb) {
    tb.require_agent("audit failure handling");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256, "streak", false);
    let log_path = tb.path("agent.log");
    let before = std::fs::read_to_string(&log_path).expect("the agent's log").len();
    let lock = lock_the_trail(&tb);
    let started = Instant::now();
    // Each write waits 5 s for the lock: long enough for several failed
    // attempts in one streak.
    while started.elapsed() < Duration::from_secs(12) {
        s.sign(&Mechanism::Ecdsa, private, &[4u8; 32]).expect("C_Sign goes on");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(lock);
    keyward_ok(&tb, &["audit", "tail", "-n", "1"], 0); // writes what is held
    let log = std::fs::read_to_string(&log_path).expect("the agent's log");
    let streak: Vec<&str> = log[before..]
        .lines()
        .filter(|l| l.contains("audit:") && l.to_lowercase().contains("written"))
        .collect();
    let count = |text: &str| streak.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("THE TRAIL CANNOT BE WRITTEN"), 1, "{streak:#?}");
    assert_eq!(count("still cannot be written"), 0, "repeated within a streak: {streak:#?}");
    let end: Vec<&&str> = streak.iter().filter(|l| l.contains("is written again")).collect();
    assert_eq!(end.len(), 1, "{streak:#?}");
    let attempts: u64 = end[0]
        .split_once(" s and ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count in {:?}", end[0]));
    assert!(attempts >= 2, "one attempt only: the streak did not repeat: {streak:#?}");
    println!("one streak of {attempts} failed attempts: {} log lines", streak.len());
});
