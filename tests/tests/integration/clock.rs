//! The wall clock stepped under a real agent on a real SoftHSM2 token:
//! libfaketime (`LD_PRELOAD`, a timestamp file re-read at every clock
//! read, the monotonic clock left alone, as an NTP step does) moves the
//! agent's wall clock forward and back while it runs.
//! - forward past a key's protect period, a rotation date, a grant's
//!   expiry and an approval request's expiry: protect operations and the
//!   grant are refused at once, the scheduler deactivates and rotates
//!   once (not again on later passes), the request is expired and cannot
//!   be approved;
//! - back a day, then a year, and the agent restarted on the year-old
//!   clock: nothing expired comes back (the grant stays refused, the
//!   request expired, the key deactivated, the rotation done once), each
//!   step is recorded in the trail, no record written after a step back
//!   is dated before the records of the forward step, and the trail
//!   verifies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::Session;
use keyward_tests::admin::{
    application_toml, find, install_policy, keyward, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};
use keyward_tests::roster::{
    key_file, open_admin_socket_to_bob, public_key, roster_toml, text, ALICE_PEM, BOB, BOB_PEM,
};

/// libfaketime of the Debian package `faketime` (softhsm-config/setup).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

const DAY: i64 = 86_400;

/// The agent's wall clock, offset from the real one through libfaketime's
/// timestamp file.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    /// Restarts the agent under libfaketime, at the real time.
    fn install(tb: &Env) -> FakeClock {
        assert!(
            Path::new(LIBFAKETIME).is_file(),
            "{LIBFAKETIME} is missing: install the Debian package faketime (softhsm-config/setup)"
        );
        let file = tb.path("faketime.rc");
        let clock = FakeClock { file };
        clock.write("+0");
        let file = clock.file.display().to_string();
        tb.set_agent_env(&[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &file),
            ("FAKETIME_NO_CACHE", "1"),
            // Only the wall clock steps (older releases read the first
            // name, Debian 12's the second).
            ("DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]);
        clock
    }

    /// Steps the agent's wall clock to the real time plus `offset` (a
    /// libfaketime offset: `+2d`, `-1y`).
    fn set(&self, offset: &str) {
        println!("the agent's clock steps to real time {offset}");
        self.write(offset);
    }

    fn write(&self, offset: &str) {
        // Whole at once: the agent reads the file at every clock read.
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, format!("{offset}\n")).expect("write the timestamp file");
        std::fs::rename(&tmp, &self.file).expect("put the timestamp file in place");
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
}

/// Every record of the trail, in seq order.
fn trail(tb: &Env) -> Vec<Json> {
    let mut all = keyward_tests::admin::audit_query(tb, &[]);
    all.sort_by_key(|r| r.i64_at("seq"));
    all
}

/// The trail's clock-step records.
fn steps(tb: &Env) -> Vec<Json> {
    trail(tb)
        .into_iter()
        .filter(|r| r.str_at("kind") == "agent" && r.str_at("operation") == "clock-step")
        .collect()
}

/// Waits until the trail holds `n` clock-step records saying `says`;
/// returns the last.
fn wait_steps(tb: &Env, n: usize, says: &str) -> Json {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Json> = steps(tb)
            .into_iter()
            .filter(|r| r.str_at("reason").contains(says))
            .collect();
        if found.len() >= n {
            assert_eq!(
                found.len(),
                n,
                "more clock steps ({says}) than made: {found:#?}"
            );
            println!("recorded: {}", found[n - 1].str_at("reason"));
            return found[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{n} clock-step records saying {says:?} not in the trail within 20 s; it holds {:#?}",
            steps(tb)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The scheduler's lifecycle changes of `key` with `operation` (a
/// rotation counted once, by the record of its new version).
fn scheduled(tb: &Env, key: &str, operation: &str) -> usize {
    trail(tb)
        .iter()
        .filter(|r| r.str_at("kind") == "lifecycle" && r.str_at("actor") == "scheduler")
        .filter(|r| r.at("key").as_str() == Some(key) && r.str_at("operation") == operation)
        .filter(|r| operation != "rotate" || r.str_at("reason").starts_with("from none to active"))
        .count()
}

/// Waits until `done` holds (the scheduler's work), at most 20 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the application signs with the key labelled `label` (found
/// afresh, in a new session).
fn signs(ctx: &Ctx, label: &str) -> bool {
    let s: Session = ctx.user();
    let Some(&private) = find(&s, label, ObjectClass::PRIVATE_KEY).first() else {
        return false;
    };
    s.sign(&Mechanism::Ecdsa, private, &[9u8; 32]).is_ok()
}

fn clock_policy() -> String {
    let grant = sign_grant_toml(APPLICATION);
    format!(
        "[settings]\nmode = \"strict\"\n{}{}{}{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("steady", "30d", "60d", &grant),
        signing_class_toml("short", "1d", "60d", &grant),
        signing_class_toml(
            "rotating",
            "30d",
            "60d",
            &format!("rotation_interval = \"1d\"\n{grant}")
        ),
        signing_class_toml("ungranted", "30d", "60d", ""),
    )
}

/// What must hold at every point after the forward step, whatever the
/// wall clock says later.
#[track_caller]
fn nothing_came_back(tb: &Env, ctx: &Ctx, when: &str) {
    assert!(signs(ctx, "steady"), "{when}: the steady key does not sign");
    assert!(
        !signs(ctx, "short"),
        "{when}: the key past its protect period signs"
    );
    assert!(
        !signs(ctx, "jit"),
        "{when}: the expired grant lets the application sign"
    );
    assert!(signs(ctx, "rot"), "{when}: the rotated key does not sign");
    let short = keyward_json(tb, &["key", "show", "short"], 0);
    assert_eq!(short.str_at("state"), "deactivated", "{when}: {short}");
    assert_eq!(
        scheduled(tb, "short", "deactivate"),
        1,
        "{when}: deactivations of short"
    );
    assert_eq!(
        scheduled(tb, "rot", "rotate"),
        1,
        "{when}: rotations of rot"
    );
}

keyward_test!(fn clock_steps_forward_then_back_expire_once_and_bring_nothing_back(tb) {
    tb.require_agent("a faked clock");
    install_policy(&tb, &clock_policy());
    for (key, class) in [("steady", "steady"), ("short", "short"), ("rot", "rotating"), ("jit", "ungranted")] {
        keyward_ok(&tb, &["key", "create", key, "--class", class], 0);
        keyward_ok(&tb, &["key", "activate", key], 0);
    }
    keyward_ok(&tb, &["grant", "add", "jit", APPLICATION, "--ops", "sign", "--for", "1d"], 0);
    let clock = FakeClock::install(&tb);
    let ctx = Ctx::new(&tb);
    for key in ["steady", "short", "rot", "jit"] {
        assert!(signs(&ctx, key), "{key} does not sign before any step");
    }
    assert!(steps(&tb).is_empty(), "a clock step before any: {:#?}", steps(&tb));

    // Forward two days: past short's protect period, rot's rotation date
    // and jit's grant.
    let before_forward = now_secs();
    clock.set("+2d");
    let forward = wait_steps(&tb, 1, "stepped forward");
    let forward_at = forward.time_at("at");
    assert!(
        forward_at >= before_forward + 2 * DAY - 5,
        "the forward step is dated {forward_at}, not two days on from {before_forward}"
    );
    assert!(!signs(&ctx, "short"), "the key past its protect period signs");
    assert!(!signs(&ctx, "jit"), "the expired grant lets the application sign");
    assert!(signs(&ctx, "steady"), "the steady key does not sign after the step");
    // The step makes the scheduler pass at once: deactivated and rotated.
    wait_for("the deactivation of short", || scheduled(&tb, "short", "deactivate") == 1);
    wait_for("the rotation of rot", || scheduled(&tb, "rot", "rotate") == 1);
    nothing_came_back(&tb, &ctx, "after the forward step");
    // A restart makes another pass (a second after the start): nothing
    // is done twice.
    tb.stop_agent();
    tb.start_agent();
    std::thread::sleep(Duration::from_secs(3));
    nothing_came_back(&tb, &ctx, "after a restart two days on");

    // Back one day: the agent keeps to the time it reached.
    clock.set("+1d");
    nothing_came_back(&tb, &ctx, "after a step back of a day");
    wait_steps(&tb, 1, "stepped back");

    // Back a year.
    clock.set("-1y");
    nothing_came_back(&tb, &ctx, "after a step back of a year");
    wait_steps(&tb, 2, "stepped back");

    // Restarted on the year-old clock: the trail's newest record bounds
    // the time, and the step is recorded at start.
    tb.stop_agent();
    tb.start_agent();
    wait_steps(&tb, 3, "stepped back");
    std::thread::sleep(Duration::from_secs(3));
    nothing_came_back(&tb, &ctx, "after a restart a year back");

    // Every record written since the forward step is dated no earlier
    // than it, and the trail verifies.
    let all = trail(&tb);
    let forward_seq = forward.i64_at("seq");
    let later: Vec<&Json> = all.iter().filter(|r| r.i64_at("seq") > forward_seq).collect();
    assert!(later.len() > 10, "few records after the forward step: {later:#?}");
    for r in &later {
        assert!(
            r.time_at("at") >= forward_at,
            "a record written after the forward step is dated before it: {r}"
        );
    }
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("clock: the wall clock stepped back"), "the step is not logged");
});

/// Alice (this uid) and bob, both security officers; a strict policy with
/// class `signing` granted to this process's application.
fn two_officers(tb: &Env) -> (PathBuf, PathBuf) {
    open_admin_socket_to_bob(tb);
    let alice_key = key_file(tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(tb, "bob.pem", BOB_PEM, BOB);
    let (alice_public, bob_public) = (public_key(tb, &alice_key), public_key(tb, &bob_key));
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
        roster_toml(uid(), &alice_public, &bob_public),
    );
    install_policy(tb, &policy);
    (alice_key, bob_key)
}

fn request_status(tb: &Env, id: &str) -> String {
    keyward_json(tb, &["request", "show", id], 0)
        .str_at("status")
        .to_owned()
}

keyward_test!(fn an_approval_request_past_its_expiry_stays_expired_when_the_clock_steps_back(tb) {
    tb.require_agent("a faked clock");
    let (alice_key, _bob_key) = two_officers(&tb);
    keyward_ok(&tb, &["key", "create", "doomed", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "doomed"], 0);
    let clock = FakeClock::install(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "doomed", ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1);
    // The application's destruction becomes a request (open for a day).
    expect_err(s.destroy_object(private[0]), cryptoki::error::RvError::ActionProhibited);
    let open = keyward_json(&tb, &["request", "list"], 0).items().to_vec();
    assert_eq!(open.len(), 1, "{open:?}");
    let id = open[0].str_at("id").to_owned();
    assert_eq!(request_status(&tb, &id), "pending");

    clock.set("+2d");
    wait_for("the request's expiry", || request_status(&tb, &id) == "expired");
    let expiries = || {
        trail(&tb)
            .into_iter()
            .filter(|r| r.str_at("operation") == "request.expire")
            .count()
    };
    wait_for("the expiry's record", || expiries() == 1);
    let key = alice_key.to_str().expect("a UTF-8 path");
    let out = keyward(&tb, &["request", "approve", &id, "--key", key]);
    assert_ne!(out.status.code(), Some(0), "an expired request was approved: {}", text(&out.stdout));
    println!("approving the expired request: {}", text(&out.stderr));
    wait_steps(&tb, 1, "stepped forward");

    // Back a year: still expired, still not approvable, the key still there.
    clock.set("-1y");
    assert_eq!(request_status(&tb, &id), "expired");
    assert!(keyward_json(&tb, &["request", "list"], 0).items().is_empty(), "the request is open again");
    let out = keyward(&tb, &["request", "approve", &id, "--key", key]);
    assert_ne!(out.status.code(), Some(0), "an expired request was approved after a step back: {}", text(&out.stdout));
    wait_steps(&tb, 1, "stepped back");
    let shown = keyward_json(&tb, &["key", "show", "doomed"], 0);
    assert_eq!(shown.str_at("state"), "active", "{shown}");
    assert_eq!(expiries(), 1, "the expiry is recorded once");
    assert!(keyward_ok(&tb, &["audit", "verify"], 0).contains("intact"));
});
