//! The audit trail as an administrator reads it: admin actions, key uses,
//! refusals and logins are recorded (never a PIN), and the chain verifies.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{
    find, keyward_bin, keyward_json, keyward_ok, strict_policy, APPLICATION,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};

const WRONG_PIN: &str = "wrong-pin-xyzzy";

keyward_test!(fn the_trail_records_admin_actions_uses_refusals_and_logins(tb) {
    tb.require_agent("the audit trail");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "audited", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "audited"], 0);

    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    expect_err(s.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into()))), RvError::PinIncorrect);
    s.login(UserType::User, Some(&ctx.pin())).expect("the right PIN");
    let k = find(&s, "audited", ObjectClass::PRIVATE_KEY)[0];
    s.sign(&Mechanism::Ecdsa, k, &[1u8; 32]).expect("a use");
    keyward_ok(&tb, &["key", "suspend", "audited", "--reason", "test"], 0);
    expect_err(s.sign(&Mechanism::Ecdsa, k, &[1u8; 32]), RvError::KeyFunctionNotPermitted);

    let lines = keyward_ok(&tb, &["--json", "audit", "tail", "-n", "1000"], 0);
    assert!(!lines.contains(WRONG_PIN) && !lines.contains(&tb.pin), "a PIN reached the trail:\n{lines}");
    let has = |needles: &[&str]| {
        lines.lines().any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(has(&["\"agent\"", "\"start\""]), "agent start missing:\n{lines}");
    assert!(has(&["\"admin\"", "\"key.create\"", "audited"]), "key creation missing:\n{lines}");
    assert!(has(&["\"admin\"", "\"key.suspend\"", "audited"]), "transition missing:\n{lines}");
    assert!(has(&["\"login\"", "\"result\":\"CKR_PIN_INCORRECT\""]), "the failed login (CKR_PIN_INCORRECT) missing:\n{lines}");
    assert!(has(&["\"use\"", "\"sign\"", "audited", "\"result\":\"CKR_OK\""]), "the signature missing:\n{lines}");
    assert!(has(&["\"refusal\"", "\"sign\"", "audited", "suspended"]), "the refusal and its reason missing:\n{lines}");

    let denied = keyward_ok(&tb, &["--json", "audit", "query", "--key", "audited", "--result", "denied"], 0);
    assert!(denied.lines().count() >= 1 && denied.lines().all(|l| !l.contains("\"result\":\"CKR_OK\"")), "query --result denied:\n{denied}");

    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");

    // A stop writes a checkpoint signed by the audit key in the HSM; after
    // the restart it verifies, and the key is invisible to applications.
    drop(s);
    tb.stop_agent();
    tb.start_agent();
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.i64_at("checkpoints_ok") >= 1, "no verified checkpoint after a stop: {verified}");
    assert!(verified.i64_at("sealed_through") >= 1, "{verified}");
    assert!(verified.at("first_bad").is_null(), "{verified}");
    // The module reconnects by itself; sessions from before are gone.
    let s = ctx.user();
    assert!(
        s.find_objects(&[cryptoki::object::Attribute::Id(b"keyward-audit-key".to_vec())]).expect("find").is_empty(),
        "the audit key is visible to an application"
    );
    let shadows = keyward_ok(&tb, &["--json", "discover"], 0);
    assert!(!shadows.contains("keyward-audit"), "the audit key is reported as a shadow key: {shadows}");
});

// Admin actions in the trail by their stable names, described in words
// (never the request's Rust form); reads of the inventory leave no record,
// reads of the trail and the report one each.
keyward_test!(fn admin_actions_are_recorded_in_words_and_reads_once(tb) {
    tb.require_agent("the audit trail");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "worded", "--class", "hidden"], 0);
    keyward_ok(&tb, &["key", "activate", "worded"], 0);
    keyward_ok(&tb, &["grant", "add", "worded", APPLICATION, "--ops", "sign", "--until", "2100-01-01T00:00:00Z"], 0);
    keyward_ok(&tb, &["key", "rotate", "worded"], 0);
    keyward_ok(&tb, &["key", "suspend", "worded", "--reason", "demo: investigating"], 0);
    // Reads of the inventory, the policy and the agent: no record.
    keyward_ok(&tb, &["key", "show", "worded"], 0);
    keyward_ok(&tb, &["key", "show", "no-such-key"], 4);
    keyward_ok(&tb, &["key", "list"], 0);
    keyward_ok(&tb, &["grant", "list"], 0);
    keyward_ok(&tb, &["app", "list"], 0);
    keyward_ok(&tb, &["status"], 0);
    // Reads of the usage report and the trail: one record each.
    keyward_ok(&tb, &["report", "--key", "worded"], 0);
    let queried = keyward_ok(&tb, &["--json", "audit", "query", "--key", "worded", "--limit", "50"], 0);
    let n = queried.lines().count();
    assert!(n >= 10, "{queried}");

    let lines = keyward_ok(&tb, &["--json", "audit", "tail", "-n", "1000"], 0);
    let admin: Vec<(String, String, String)> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
        .filter(|r| r.str_at("kind") == "admin")
        .map(|r| (r.str_at("operation").to_owned(), r.str_at("reason").to_owned(), r.str_at("result").to_owned()))
        .collect();
    let action = |operation: &str, what: &str| {
        [
            (operation.to_owned(), format!("requested: {what}"), "CKR_OK".to_owned()),
            (operation.to_owned(), "done".to_owned(), "CKR_OK".to_owned()),
        ]
    };
    // The grant record says until when, in words.
    assert!(
        lines.lines().any(|l| l.contains("\"grant add\"") && l.contains("until 2100-01-01 00:00:00 UTC")),
        "{lines}"
    );
    let mut want = Vec::new();
    want.extend(action("key.create", "create worded (class hidden, the class's first algorithm)"));
    want.extend(action("key.activate", "activate worded"));
    want.extend(action("grant.add", &format!("grant {APPLICATION} sign on worded until 2100-01-01 00:00:00 UTC")));
    want.extend(action("key.rotate", "rotate worded"));
    want.extend(action("key.suspend", "suspend worded: code=certificateHold; demo: investigating"));
    want.push(("report.make".into(), "report on worded: the last 1h against the 7d before: 1 key".into(), "CKR_OK".into()));
    want.push(("audit.query".into(), format!("read at most 50 audit records of key worded: {n} records"), "CKR_OK".into()));
    assert_eq!(admin, want, "{lines}");
    // A tail is recorded after its answer: the tail read above is the last
    // record now.
    let last = keyward_json(&tb, &["audit", "tail", "-n", "1"], 0);
    assert_eq!(last.str_at("operation"), "audit.tail", "{last}");
    assert_eq!(last.str_at("reason"), format!("read the last 1000 audit records: {} records", lines.lines().count()), "{last}");

    // `keyward audit` shows the names and the words.
    // (--wide: reasons whole, not cut to 100 columns.)
    let text = keyward_ok(&tb, &["--wide", "audit", "query", "--key", "worded"], 0);
    for needed in ["key.suspend", "requested: suspend worded: code=certificateHold; demo: investigating", "grant.add"] {
        assert!(text.contains(needed), "{needed:?} missing:\n{text}");
    }
    let text = keyward_ok(&tb, &["--wide", "audit", "tail", "-n", "6"], 0);
    for needed in ["report.make", "report on worded: the last 1h against the 7d before: 1 key", "audit.tail"] {
        assert!(text.contains(needed), "{needed:?} missing:\n{text}");
    }
});

// `audit tail --follow` is recorded when it starts and when a poll brings
// news, not at every poll (each poll would otherwise show the record of
// the one before it, for ever).
keyward_test!(fn a_follow_is_recorded_at_its_start_and_news_not_at_every_poll(tb) {
    tb.require_agent("the audit trail");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "followed", "--class", "signing"], 0);
    let mut follow = std::process::Command::new(keyward_bin(&tb))
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(["--wide", "audit", "tail", "-n", "5", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("keyward audit tail --follow");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("the follow's output");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(20);
    // Its first answer (the header and the last records) is printed.
    let mut printed = vec![rx.recv_timeout(wait).expect("the follow prints its first answer")];
    keyward_ok(&tb, &["key", "activate", "followed"], 0);
    while !printed.iter().any(|l| l.contains("key.activate") && l.contains("done")) {
        printed.push(rx.recv_timeout(wait).unwrap_or_else(|e| panic!("the activation is not followed ({e}): {printed:#?}")));
    }
    assert!(printed.iter().any(|l| l.contains("requested: activate followed")), "{printed:#?}");
    // Some four more polls, which find nothing new but their own records.
    std::thread::sleep(std::time::Duration::from_millis(2000));
    follow.kill().expect("stop the follow");
    follow.wait().expect("the follow ends");
    reader.join().expect("the reader");

    let lines = keyward_ok(&tb, &["--json", "audit", "tail", "-n", "1000"], 0);
    let tails: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
        .filter(|r| r.str_at("kind") == "admin" && r.str_at("operation") == "audit.tail")
        .map(|r| r.str_at("reason").to_owned())
        .collect();
    // The start, and the one or two polls that brought the activation's
    // records; not the polls that found nothing or only these records.
    assert!((2..=3).contains(&tails.len()), "{tails:#?}");
    assert!(tails[0].starts_with("read the last 5 audit records: "), "{tails:#?}");
    assert!(tails[1..].iter().all(|t| t.starts_with("read at most 1000 audit records after record ")), "{tails:#?}");
});

keyward_test!(fn init_token_is_recorded_and_keeps_the_audit_key(tb) {
    tb.require_agent("the audit trail");
    let ctx = Ctx::new(&tb);
    ctx.p11
        .init_token(ctx.slot, &ctx.so_pin(), &tb.token)
        .expect("C_InitToken on the lab testbed");
    // A stop seals the trail; after the restart the checkpoint still verifies
    // with the audit key, which C_InitToken left alone.
    tb.stop_agent();
    tb.start_agent();
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.i64_at("checkpoints_ok") >= 1, "{verified}");
    assert!(verified.at("first_bad").is_null(), "{verified}");
    let lines = keyward_ok(&tb, &["--json", "audit", "tail", "-n", "100"], 0);
    assert!(
        lines.lines().any(|l| l.contains("C_InitToken") && l.contains("\"result\":\"CKR_OK\"")),
        "C_InitToken is not in the trail:\n{lines}"
    );
});
