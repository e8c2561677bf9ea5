//! The `[webhook]` notifications against a real agent and a real HTTP
//! receiver (`keyward_tests::webhook`): an overdue rotation is posted once
//! with the documented fields and the bearer token, and no PIN or secret
//! in any event; a trail that cannot be written is posted once; every
//! event and the documented example follow the JSON Schema in
//! `docs/json/`; a receiver that is down is tried again and then counted
//! as failed while the agent serves on; a receiver that never answers does
//! not hold up PKCS#11 signing; a bad `[webhook]` table stops the agent at
//! start with a message naming the file and the field.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use keyward_tests::admin::{
    agent_start_on, application_toml, find, install_policy, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::p11::Ctx;
use keyward_tests::webhook::{Answer, Receiver};

/// The bearer token the tests give the agent.
const TOKEN: &str = "wh-T0KEN-never-in-an-event";

/// A strict policy: class `quick` rotates 2 s after activation, class
/// `signing` weekly; both granted to this process.
fn policy() -> String {
    let grant = sign_grant_toml(APPLICATION);
    format!(
        "[settings]\nmode = \"strict\"\n{}{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml(
            "quick",
            "1h",
            "2h",
            &format!("rotation_interval = \"2s\"\n{grant}")
        ),
        signing_class_toml(
            "signing",
            "30d",
            "60d",
            &format!("rotation_interval = \"7d\"\n{grant}")
        ),
    )
}

/// Writes the token file (mode 0600) and returns the `[webhook]` table
/// for `url` with `extra` lines.
fn webhook_toml(tb: &Env, url: &str, extra: &str) -> String {
    let token = tb.path("webhook.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "\n[webhook]\nurl = \"{url}\"\nbearer_token_file = \"{}\"\n{extra}\n",
        token.display()
    )
}

/// Appends `toml` to the agent's configuration; the next start reads it.
fn append_config(tb: &Env, toml: &str) {
    let path = tb.path("keyward-agent.toml");
    let mut config = std::fs::read_to_string(&path).expect("read the agent configuration");
    config.push_str(toml);
    std::fs::write(&path, config).expect("write the agent configuration");
}

/// `GET /metrics` from the agent's endpoint: the value of `name`.
fn metric(tb: &Env, name: &str) -> f64 {
    let addr = std::fs::read_to_string(tb.path("state/metrics.addr")).expect("metrics.addr");
    let mut s = TcpStream::connect(addr.trim()).expect("connect to the metrics endpoint");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.trim()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in the exposition:\n{text}"))
}

/// The event schema of `docs/json/`.
fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json/webhook-event.schema.json");
    let text = std::fs::read_to_string(&path).expect("the webhook event schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Panics with every reason when `event` does not follow the schema.
#[track_caller]
fn assert_valid(schema: &jsonschema::Validator, event: &serde_json::Value) {
    let errors: Vec<String> = schema.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{event} does not follow the schema: {errors:?}"
    );
}

/// Whether `at` is an RFC 3339 UTC time as the events write it.
fn rfc3339_utc(at: &str) -> bool {
    let b = at.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}

keyward_test!(fn an_overdue_rotation_is_posted_once_with_the_documented_fields(tb) {
    tb.require_agent("the webhook");
    let receiver = Receiver::start(Answer::Status(204));
    append_config(
        &tb,
        &webhook_toml(&tb, &receiver.url(), "check_seconds = 1\noverdue_grace_seconds = 0"),
    );
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "fast", "--class", "quick"], 0);
    keyward_ok(&tb, &["key", "activate", "fast"], 0);

    // The agent's start, first.
    let start = receiver
        .wait_for(Duration::from_secs(20), |e| e["event"] == "agent-start")
        .expect("no agent-start event");
    assert_eq!(start.json()["severity"], "info");

    // fast is due 2 s after its activation; the scheduler's next pass is a
    // minute after the start, so it stays overdue meanwhile.
    let posted = receiver
        .wait_for(Duration::from_secs(30), |e| e["event"] == "rotation-overdue")
        .expect("no rotation-overdue event");
    assert!(posted.head.starts_with("POST /hook HTTP/1.1\r\n"), "{}", posted.head);
    assert_eq!(posted.header("authorization").as_deref(), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(posted.header("content-type").as_deref(), Some("application/json"));
    let e = posted.json();
    assert_eq!(e["schema"], "keyward.webhook/1", "{e}");
    assert_eq!(e["id"], format!("rotation-overdue:{}/fast:v1", tb.token), "{e}");
    assert_eq!(e["severity"], "warning", "{e}");
    assert_eq!(e["token"], tb.token.as_str(), "{e}");
    assert_eq!(e["key"], "fast", "{e}");
    assert!(rfc3339_utc(e["at"].as_str().unwrap()), "{e}");
    assert!(!e["host"].as_str().unwrap().is_empty(), "{e}");
    assert!(e["agent_version"].is_string(), "{e}");
    assert_eq!(e["summary"], format!("key {}/fast is overdue for rotation", tb.token), "{e}");
    let d = &e["details"];
    assert_eq!(d["class"], "quick", "{e}");
    assert_eq!(d["active_version"], 1, "{e}");
    assert!(rfc3339_utc(d["due_at"].as_str().unwrap()), "{e}");
    assert_eq!(d["due_at"], d["next_rotation"], "{e}");
    assert!(d["overdue_seconds"].as_i64().unwrap() >= 0, "{e}");

    // A reload with another [webhook] table says it waits for a restart.
    let path = tb.path("keyward-agent.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace("check_seconds = 1", "check_seconds = 2")).unwrap();
    let said = keyward_ok(&tb, &["policy", "reload"], 0);
    assert!(said.contains("[webhook] changed: they take effect at the next start"), "{said}");

    // Still overdue three passes later: posted once.
    std::thread::sleep(Duration::from_secs(3));
    let overdue = receiver
        .received()
        .iter()
        .filter(|r| r.json()["event"] == "rotation-overdue")
        .count();
    assert_eq!(overdue, 1, "the condition fired more than once");

    // The stop is posted too; no event carries a PIN or the token.
    tb.stop_agent();
    receiver
        .wait_for(Duration::from_secs(10), |e| e["event"] == "agent-stop")
        .expect("no agent-stop event");
    for r in receiver.received() {
        let body = String::from_utf8_lossy(&r.body);
        for secret in [TOKEN, tb.pin.as_str(), tb.so_pin.as_str()] {
            assert!(!body.contains(secret), "an event carries a secret: {body}");
        }
    }
    let log = std::fs::read_to_string(tb.path("agent.log")).unwrap_or_default();
    assert!(!log.contains(TOKEN), "the agent logged the bearer token");
    // Every event follows the documented schema.
    let schema = schema();
    for r in receiver.received() {
        assert_valid(&schema, &r.json());
    }
});

keyward_test!(fn the_documented_event_example_follows_the_schema(_tb) {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-guide.md")).unwrap();
    let section = guide.split("### Webhook").nth(1).expect("the admin guide's Webhook section");
    let example = section.split("```json\n").nth(1).and_then(|r| r.split("```").next()).expect("its JSON example");
    let event: serde_json::Value = serde_json::from_str(example).expect("the example is JSON");
    let schema = schema();
    assert_valid(&schema, &event);
    // The schema is strict enough to refuse what is not an event.
    let mut wrong = event.clone();
    wrong["event"] = "rotation-late".into();
    assert!(!schema.is_valid(&wrong));
    let mut wrong = event.clone();
    wrong["details"].as_object_mut().unwrap().remove("due_at");
    assert!(!schema.is_valid(&wrong));
    let mut wrong = event;
    wrong["pin"] = "1234".into();
    assert!(!schema.is_valid(&wrong));
});

keyward_test!(fn a_receiver_that_is_down_is_retried_then_counted_as_failed(tb) {
    tb.require_agent("the webhook");
    append_config(
        &tb,
        &format!(
            "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            webhook_toml(&tb, &Receiver::nowhere(), "retries = 2\nbackoff_ms = 50\ncheck_seconds = 1")
        ),
    );
    install_policy(&tb, &policy());
    // The start event: three tries, then failed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&tb, "keyward_webhook_failed_total") < 1.0 {
        assert!(Instant::now() < deadline, "the start event was never counted as failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&tb, "keyward_webhook_events_total"), 0.0);
    assert_eq!(metric(&tb, "keyward_webhook_dropped_total"), 0.0);
    let log = std::fs::read_to_string(tb.path("agent.log")).unwrap_or_default();
    assert!(log.contains("(try 3 of 3)"), "the retries are not logged:\n{log}");
    assert!(!log.contains(TOKEN), "the agent logged the bearer token");
    // The agent serves on.
    keyward_ok(&tb, &["status"], 0);
    keyward_ok(&tb, &["key", "create", "still", "--class", "signing"], 0);
});

keyward_test!(fn a_receiver_that_never_answers_does_not_hold_up_signing(tb) {
    tb.require_agent("the webhook");
    let receiver = Receiver::start(Answer::Never);
    append_config(
        &tb,
        &webhook_toml(&tb, &receiver.url(), "timeout_seconds = 120\nretries = 0\nqueue = 2\ncheck_seconds = 1"),
    );
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    // The start event's post is held open by the receiver.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.connections() == 0 {
        assert!(Instant::now() < deadline, "the agent never posted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Meanwhile, applications sign. The bound only detects a hang: each
    // signature takes milliseconds.
    let started = Instant::now();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let key = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];
    for _ in 0..50 {
        let sig = s.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).expect("C_Sign while the webhook hangs");
        assert_eq!(sig.len(), 64);
    }
    assert!(started.elapsed() < Duration::from_secs(30), "signing waited for the webhook");
    assert_eq!(receiver.received().iter().filter(|r| !r.body.is_empty()).count(), 1);
    keyward_ok(&tb, &["status"], 0);
    drop(s);
    drop(ctx);
    // Nor does it hold up a stop: the testbed gives SIGTERM 10 s, far less
    // than the post's time limit.
    tb.stop_agent();
});

keyward_test!(fn a_bad_webhook_table_stops_the_agent_at_start(tb) {
    tb.require_agent("the webhook");
    let config = std::fs::read_to_string(tb.path("keyward-agent.toml")).unwrap();
    let good = webhook_toml(&tb, "http://127.0.0.1:9/hook", "");
    let open_token = tb.path("open.token");
    std::fs::write(&open_token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&open_token, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (table, says) in [
        (good.replace("http://127.0.0.1:9/hook", "ftp://127.0.0.1/hook"), "[webhook] url: "),
        (good.replace("http://127.0.0.1:9/hook", "http://admin:pw@127.0.0.1/"), "user or password"),
        (format!("{good}retry = 3\n"), "unknown field `retry`"),
        (format!("{good}timeout_seconds = 0\n"), "[webhook] timeout_seconds = 0"),
        (
            good.replace(&tb.path("webhook.token").display().to_string(), &open_token.display().to_string()),
            "mode 0644",
        ),
    ] {
        let bad = tb.path("bad.toml");
        std::fs::write(&bad, format!("{config}{table}")).unwrap();
        let (status, stderr) = agent_start_on(&tb, &bad);
        assert!(!status.success(), "keyward-agent accepted:\n{table}");
        assert!(
            stderr.contains(&bad.display().to_string()) && stderr.contains(says),
            "the refusal does not say {says:?} with the file:\n{stderr}"
        );
        assert!(!stderr.contains(TOKEN) && !stderr.contains(":pw@"), "{stderr}");
    }
    // The running agent is untouched.
    keyward_ok(&tb, &["status"], 0);
});

keyward_test!(fn a_trail_that_cannot_be_written_is_posted_once(tb) {
    tb.require_agent("the webhook");
    let receiver = Receiver::start(Answer::Status(200));
    append_config(&tb, &webhook_toml(&tb, &receiver.url(), "check_seconds = 1"));
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let key = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];

    // Another process holds the store's write lock: the uses cannot be
    // recorded (the default on_write_failure = "continue" serves on).
    let lock = rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the store");
    lock.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let posted = (0..600).find_map(|_| {
        let _ = s.sign(&Mechanism::Ecdsa, key, &[1u8; 32]);
        std::thread::sleep(Duration::from_millis(50));
        receiver
            .received()
            .into_iter()
            .find(|r| r.json()["event"] == "audit-write-failure")
    });
    let e = posted.expect("no audit-write-failure event while the trail was locked").json();
    assert_eq!(e["severity"], "critical", "{e}");
    assert_eq!(e["id"], "audit-write-failure", "{e}");
    assert!(e["details"]["write_failures"].as_u64().unwrap() >= 1, "{e}");
    assert!(e["token"].is_null() && e["key"].is_null(), "{e}");
    assert_valid(&schema(), &e);
    // Still failing: not posted again.
    std::thread::sleep(Duration::from_secs(3));
    let count = |r: &Receiver| {
        r.received()
            .iter()
            .filter(|r| r.json()["event"] == "audit-write-failure")
            .count()
    };
    assert_eq!(count(&receiver), 1);
    drop(lock);
});

keyward_test!(fn a_certificate_about_to_expire_is_posted_with_its_dates(tb) {
    tb.require_agent("the webhook");
    let receiver = Receiver::start(Answer::Status(200));
    append_config(&tb, &webhook_toml(&tb, &receiver.url(), "check_seconds = 1"));
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    // Ten days of validity: within the default warning of 30 days (the
    // class names no certificate_warning).
    let pem = tb.path("web.pem");
    keyward_ok(
        &tb,
        &["cert", "self-sign", "web", "--subject", "CN=web.example.com", "--days", "10", "--import", "--out", pem.to_str().unwrap()],
        0,
    );
    let e = receiver
        .wait_for(Duration::from_secs(30), |e| e["event"] == "certificate-expiring")
        .expect("no certificate-expiring event")
        .json();
    assert_valid(&schema(), &e);
    assert_eq!(e["severity"], "warning", "{e}");
    assert_eq!((e["token"].as_str(), e["key"].as_str()), (Some(tb.token.as_str()), Some("web")), "{e}");
    let d = &e["details"];
    assert_eq!(d["version"], 1, "{e}");
    assert!(d["subject"].as_str().unwrap().contains("web.example.com"), "{e}");
    assert!(rfc3339_utc(d["not_after"].as_str().unwrap()), "{e}");
    let left = d["expires_in_seconds"].as_i64().unwrap();
    assert!(left > 9 * 86_400 && left <= 10 * 86_400, "{e}");
    assert!(
        e["id"].as_str().unwrap().starts_with(&format!("certificate-expiring:{}/web:v1:", tb.token)),
        "{e}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let posted = receiver
        .received()
        .iter()
        .filter(|r| r.json()["event"] == "certificate-expiring")
        .count();
    assert_eq!(posted, 1, "the condition fired more than once");
});
