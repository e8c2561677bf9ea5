//! `keyward report` against a real agent: anomalies fire on a new
//! executable and on a volume spike and stay quiet on normal use; a
//! revocation shows its latency and that no use succeeded after it while
//! another process was signing; overdue rotation and compliance, failed
//! admin actions, grant drift and certificate expiry; `--json` is one
//! document.
//!
//! Uses come from `sign_probe`, a second process; a copy of it at another
//! path is another executable to the agent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki::object::{Attribute, CertificateType, ObjectClass};
use keyward_tests::admin::{
    application_toml, certificate_of, find, install_policy, key_show, keyward_json, keyward_ok,
    sign_grant_toml, signing_class_toml, uid, APPLICATION, CERT, CERT_SUBJECT,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{unhex, Ctx};
use keyward_tests::probe::Probe;

/// Another application of the first policy, gone from the second.
const OTHER: &str = "other";

/// The policy of this file: class `signing` (EC P-256, rotating weekly),
/// class `short` (rotating every 2 s, protecting for an hour); `other`
/// is listed when `with_other`.
fn policy(with_other: bool) -> String {
    let uid = uid();
    let grant = sign_grant_toml(APPLICATION);
    let mut policy = "[settings]\nmode = \"strict\"\n".to_owned();
    policy += &application_toml(APPLICATION, uid);
    if with_other {
        policy += &application_toml(OTHER, uid + 4242);
    }
    policy += &signing_class_toml(
        "signing",
        "30d",
        "60d",
        &format!("rotation_interval = \"7d\"\n{grant}"),
    );
    policy += &signing_class_toml(
        "short",
        "1h",
        "2h",
        &format!("rotation_interval = \"2s\"\n{grant}"),
    );
    policy
}

/// Creates and activates key `name` of `class`.
fn active_key(tb: &Env, name: &str, class: &str) {
    keyward_ok(tb, &["key", "create", name, "--class", class], 0);
    keyward_ok(tb, &["key", "activate", name], 0);
}

/// The built probe, or a copy of it at `copy` (another executable).
fn probe_exe(tb: &Env, copy: Option<&str>) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_sign_probe"));
    match copy {
        None => built,
        Some(name) => {
            let path = tb.path(name);
            std::fs::copy(&built, &path).expect("copy sign_probe");
            path
        }
    }
}

/// A running `sign_probe`.
struct Signer(Probe);

impl Signer {
    /// Starts `exe` signing with `label` `count` times (0: until stopped
    /// or refused), `interval_ms` apart; returns once it is ready.
    fn start(tb: &Env, exe: &Path, label: &str, count: u64, interval_ms: u64) -> Signer {
        let mut p = Probe::start(
            tb,
            exe,
            &[label, &count.to_string(), &interval_ms.to_string()],
        );
        p.value("ready", PROBE_WAIT);
        Signer(p)
    }

    /// Tells a probe that signs until stopped to stop.
    fn stop(&mut self) {
        self.0.say("stop");
    }

    /// Waits for the probe to end; returns how many signatures succeeded
    /// and the last answer.
    fn finish(mut self) -> (u64, String) {
        let signed: u64 = self.0.value("signed", PROBE_WAIT).parse().expect("a count");
        let last = self.0.value("last", PROBE_WAIT);
        self.0.close_stdin();
        self.0.wait_success(Duration::from_secs(30));
        (signed, last)
    }
}

/// How long a probe may take for a line.
const PROBE_WAIT: Duration = Duration::from_secs(150);

/// Signs `count` times with `label` from `exe`, all successfully.
fn sign(tb: &Env, exe: &Path, label: &str, count: u64) {
    let (signed, last) = Signer::start(tb, exe, label, count, 0).finish();
    assert_eq!(
        (signed, last.as_str()),
        (count, "CKR_OK"),
        "{} signing with {label}",
        exe.display()
    );
}

/// `keyward --json report ARGS` (exit 0).
fn report(tb: &Env, args: &[&str]) -> Json {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let r = keyward_json(tb, &all, 0);
    for member in [
        "generated_at",
        "keys",
        "rotation",
        "failed_admin",
        "unmanaged",
        "anomalies",
    ] {
        r.at(member);
    }
    r
}

/// The report's entry for key `name`.
fn key<'a>(report: &'a Json, name: &str) -> &'a Json {
    report
        .array_at("keys")
        .iter()
        .find(|k| k.str_at("name") == name)
        .unwrap_or_else(|| panic!("no key {name:?} in the report: {report}"))
}

/// The kinds of `k`'s anomalies.
fn anomaly_kinds(k: &Json) -> Vec<String> {
    k.array_at("anomalies")
        .iter()
        .map(|a| a.str_at("kind").to_owned())
        .collect()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Sleeps until `secs` (unix seconds) has passed; bounded.
fn sleep_until(secs: f64) {
    let left = secs - now_secs();
    if left > 0.0 {
        assert!(left < 30.0, "asked to sleep {left} s");
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

// A new executable using a key that has a baseline is an anomaly; the
// executable of the baseline using it again is not; a key without a
// baseline is learning.
keyward_test!(fn a_new_executable_is_an_anomaly_the_usual_one_is_not(tb) {
    install_policy(&tb, &policy(false));
    active_key(&tb, "busy", "signing");
    active_key(&tb, "fresh", "signing");
    let usual = probe_exe(&tb, None);
    let copy = probe_exe(&tb, Some("sign_probe_copy"));

    // The baseline: the usual executable, then a window (5 s) without uses.
    sign(&tb, &usual, "busy", 20);
    sleep_until(now_secs() + 5.5);
    let args = ["--window", "5s", "--baseline", "1h"];

    sign(&tb, &usual, "busy", 7);
    sign(&tb, &usual, "fresh", 3);
    let r = report(&tb, &args);
    let busy = key(&r, "busy");
    let usage = busy.at("usage");
    assert_eq!((usage.i64_at("window"), usage.i64_at("baseline"), usage.i64_at("total")), (7, 20, 27), "{busy}");
    assert_eq!(busy.at("learning"), &Json::Bool(false), "{busy}");
    assert!(anomaly_kinds(busy).is_empty(), "the usual executable is an anomaly: {busy}");
    let fresh = key(&r, "fresh");
    assert_eq!(fresh.at("learning"), &Json::Bool(true), "{fresh}");
    assert!(anomaly_kinds(fresh).is_empty(), "{fresh}");
    assert!(r.array_at("anomalies").is_empty(), "{r}");

    // The copy signs: a new executable.
    sign(&tb, &copy, "busy", 4);
    let r = report(&tb, &args);
    let busy = key(&r, "busy");
    assert_eq!(anomaly_kinds(busy), ["new_application"], "{busy}");
    let a = &busy.array_at("anomalies")[0];
    assert_eq!(a.str_at("exe"), copy.display().to_string(), "{a}");
    assert_eq!(a.str_at("application"), APPLICATION, "{a}");
    assert_eq!(a.i64_at("uses"), 4, "{a}");
    let by_app = busy.at("usage").array_at("by_application");
    let exes: Vec<&str> = by_app.iter().map(|u| u.str_at("exe")).collect();
    assert!(exes.contains(&usual.to_str().unwrap()) && exes.contains(&copy.to_str().unwrap()), "{by_app:?}");
    assert_eq!(r.array_at("anomalies").len(), 1, "{r}");
    // The text names it too.
    let text = keyward_ok(&tb, &["report", "--window", "5s", "--baseline", "1h", "--key", "busy"], 0);
    assert!(text.contains("new application") && text.contains("sign_probe_copy"), "{text}");
});

// A burst far above the key's baseline rate is an anomaly; the same
// steady rate is not (with a floor low enough that the baseline decides).
keyward_test!(fn a_volume_spike_is_an_anomaly_a_steady_rate_is_not(tb) {
    install_policy(&tb, &policy(false));
    active_key(&tb, "steady", "signing");
    let exe = probe_exe(&tb, None);
    let args = ["--window", "6s", "--baseline", "1m", "--spike-floor", "20", "--key", "steady"];

    // About ten signatures a second, for long enough that the key's
    // baseline is longer than a window.
    let mut steady = Signer::start(&tb, &exe, "steady", 0, 100);
    sleep_until(now_secs() + 14.0);
    let r = report(&tb, &args);
    let k = key(&r, "steady");
    let window = k.at("usage").i64_at("window");
    assert!(window > 20, "the steady rate should be above the floor, so that the baseline decides: {k}");
    assert_eq!(k.at("learning"), &Json::Bool(false), "{k}");
    assert!(anomaly_kinds(k).is_empty(), "a steady rate is an anomaly: {k}");

    // A burst: ten times the window's rate and more.
    sign(&tb, &exe, "steady", 1500);
    let r = report(&tb, &args);
    let k = key(&r, "steady");
    assert_eq!(anomaly_kinds(k), ["volume_spike"], "{k}");
    let a = &k.array_at("anomalies")[0];
    assert!(a.i64_at("uses") > 1500, "{a}");
    assert_eq!(r.array_at("anomalies").len(), 1, "{r}");

    steady.stop();
    let (signed, last) = steady.finish();
    assert_eq!(last, "CKR_OK");
    assert!(signed > 50, "the steady probe signed {signed} times");
});

// A revoke while another process signs in a loop: the report shows how
// long the revocation took from its request, and that no use of the key
// succeeded after it.
keyward_test!(fn revocation_latency_and_no_use_after_it(tb) {
    install_policy(&tb, &policy(false));
    active_key(&tb, "victim", "signing");
    let exe = probe_exe(&tb, None);
    let signer = Signer::start(&tb, &exe, "victim", 0, 0);
    // Wait (bounded) until its signatures are in the trail.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = report(&tb, &["--key", "victim"]);
        if key(&r, "victim").at("usage").i64_at("total") >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the probe's signatures do not reach the trail: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    keyward_ok(&tb, &["key", "revoke", "--yes", "victim", "--reason", "stolen laptop", "--reason-code", "keyCompromise"], 0);
    let (signed, last) = signer.finish();
    assert_eq!(last, "CKR_KEY_FUNCTION_NOT_PERMITTED", "after {signed} signatures");

    let r = report(&tb, &["--key", "victim"]);
    let k = key(&r, "victim");
    assert_eq!(k.str_at("state"), "compromised", "{k}");
    let usage = k.at("usage");
    assert!(usage.i64_at("total") as u64 >= signed, "{signed} signed, usage {usage}");
    let revocations = k.array_at("revocations");
    assert_eq!(revocations.len(), 1, "{k}");
    let rev = &revocations[0];
    assert_eq!(rev.str_at("action"), "revoke", "{rev}");
    let versions: Vec<i64> = rev.array_at("versions").iter().filter_map(Json::as_i64).collect();
    assert_eq!(versions, [1], "{rev}");
    let latency = rev.i64_at("latency_us");
    assert!(latency > 0 && latency < 30_000_000, "{rev}");
    rev.time_at("requested_at");
    assert_eq!(rev.at("no_use_after"), &Json::Bool(true), "{rev}");
    assert_eq!(rev.i64_at("uses_after"), 0, "{rev}");
    let text = keyward_ok(&tb, &["report", "--key", "victim"], 0);
    assert!(text.contains("no use after it: yes"), "{text}");
});

/// The notAfter of `admin::CERT`, 2036-11-22 21:51:03 UTC.
const CERT_NOT_AFTER: i64 = 2_111_003_463;

// Rotation compliance with a class that rotates every 2 s; failed admin
// actions counted; a grant to an application the policy dropped is drift;
// a certificate beside a key shows its expiry; --json is one document.
keyward_test!(fn overdue_rotation_failed_admin_drift_and_certificates(tb) {
    install_policy(&tb, &policy(true));
    keyward_ok(&tb, &["key", "create", "quick", "--class", "short"], 0);
    keyward_ok(&tb, &["key", "create", "slow", "--class", "signing"], 0);
    keyward_ok(&tb, &["grant", "add", "slow", OTHER, "--ops", "sign"], 0);
    // The policy loses `other`; the agent restarts on it.
    install_policy(&tb, &policy(false));
    keyward_ok(&tb, &["key", "activate", "quick"], 0);
    keyward_ok(&tb, &["key", "activate", "slow"], 0);

    // Two failed admin actions: an unknown class, an activation of an
    // active key.
    keyward_ok(&tb, &["key", "create", "nope", "--class", "no-such-class"], 4);
    keyward_ok(&tb, &["key", "activate", "slow"], 5);

    // slow's certificate, with the CKA_ID of slow's version 1 (a
    // certificate of another key under its name and CKA_ID is refused).
    let id = unhex(key_show(&tb, "slow").array_at("versions")[0].str_at("backend_id"));
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let cert = certificate_of(&s, find(&s, "slow", ObjectClass::PUBLIC_KEY)[0]);
    let foreign = s.create_object(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Label(b"slow".to_vec()),
        Attribute::Id(id.clone()),
        Attribute::Subject(unhex(CERT_SUBJECT)),
        Attribute::Value(unhex(CERT)),
    ]);
    keyward_tests::p11::expect_err(foreign, cryptoki::error::RvError::ActionProhibited);
    s.create_object(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Label(b"slow".to_vec()),
        Attribute::Id(id),
        Attribute::Subject(unhex(CERT_SUBJECT)),
        Attribute::Value(cert),
    ])
    .expect("C_CreateObject of the key's certificate");
    let by_label = s
        .find_objects(&[Attribute::Label(b"slow".to_vec()), Attribute::Class(ObjectClass::CERTIFICATE)])
        .expect("C_FindObjects");
    assert_eq!(by_label.len(), 1, "the key's certificate is found by its name");

    // quick is due 2 s after its activation.
    let due = key_show(&tb, "quick").time_at("next_rotation");
    sleep_until(due as f64 + 1.0);
    let text = keyward_ok(&tb, &["--json", "report"], 0);
    let r: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{text}"));

    let quick = key(&r, "quick");
    assert_eq!(quick.str_at("state"), "active", "the scheduler rotated already? {quick}");
    assert_eq!(quick.at("overdue"), &Json::Bool(true), "{quick}");
    assert_eq!(quick.i64_at("rotation_interval_secs"), 2, "{quick}");
    assert_eq!(quick.i64_at("cryptoperiod_secs"), 3600, "{quick}");
    assert_eq!(quick.i64_at("active_version"), 1, "{quick}");
    assert!(quick.at("certificate").is_null(), "{quick}");
    assert!(quick.array_at("drift").is_empty(), "{quick}");
    let slow = key(&r, "slow");
    assert_eq!(slow.at("overdue"), &Json::Bool(false), "{slow}");
    assert_eq!(slow.at("certificate").time_at("not_after"), CERT_NOT_AFTER, "{slow}");
    let drift = slow.array_at("drift");
    assert!(
        drift.len() == 1 && drift[0].as_str().is_some_and(|d| d.contains(OTHER) && d.contains("no such application")),
        "{slow}"
    );
    assert!(slow.at("hsm_error").is_null(), "{slow}");

    let rotation = r.at("rotation");
    assert_eq!((rotation.i64_at("active"), rotation.i64_at("compliant")), (2, 1), "{rotation}");
    let overdue: Vec<&str> = rotation.array_at("overdue").iter().filter_map(Json::as_str).collect();
    assert_eq!(overdue, [format!("{}/quick", tb.token)], "{rotation}");

    let failed = r.at("failed_admin");
    assert_eq!(failed.i64_at("total"), 2, "{failed}");
    assert_eq!(failed.i64_at("window"), 2, "{failed}");
    let last = failed.array_at("last");
    assert_eq!(last[0].str_at("operation"), "key.activate", "{failed}");
    assert_eq!(last[1].str_at("operation"), "key.create", "{failed}");
    assert!(last[1].str_at("reason").contains("no-such-class"), "{failed}");

    let text = keyward_ok(&tb, &["report"], 0);
    for want in ["rotation compliance: 50% (1 of 2 active keys not overdue)", "failed admin actions: 2 in the window", "drift: grant to \"other\""] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // An unknown key is not found (exit 4).
    keyward_ok(&tb, &["report", "--key", "no-such-key"], 4);
});
