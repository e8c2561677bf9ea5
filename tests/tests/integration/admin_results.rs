//! An administrator's failed request leaves a record in the audit trail
//! whose result is keyward's own value for the kind of failure
//! (`KEYWARD_INVALID`, `KEYWARD_NOT_FOUND`, `KEYWARD_REFUSED`,
//! `KEYWARD_CONFLICT`, in PKCS#11's vendor-defined range), shown by name in
//! `keyward audit query` and in the report's failed admin actions. And the
//! text the CLI prints: 100 columns by default, times labelled `Z`, or in
//! the system's zone with their offset under `--local`.

use keyward_tests::admin::{
    application_toml, install_policy, keyward_bin, keyward_ok, signing_class_toml, uid,
};
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;

const KEYWARD_INVALID: u64 = 0xcb57_0001;
const KEYWARD_NOT_FOUND: u64 = 0xcb57_0002;
const KEYWARD_REFUSED: u64 = 0xcb57_0003;
const KEYWARD_CONFLICT: u64 = 0xcb57_0004;

/// The admin records of the trail (`keyward --json audit query`).
fn admin_records(tb: &keyward_tests::Env) -> Vec<Json> {
    keyward_ok(tb, &["--json", "audit", "query", "--limit", "100000"], 0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|r: &Json| r.str_at("kind") == "admin")
        .collect()
}

/// The result of the last admin record of `operation` that is not its
/// `requested:` record.
fn outcome(records: &[Json], operation: &str) -> (String, String) {
    let r = records
        .iter()
        .rev()
        .find(|r| {
            r.str_at("operation") == operation && !r.str_at("reason").starts_with("requested:")
        })
        .unwrap_or_else(|| panic!("no outcome of {operation} in the trail:\n{records:#?}"));
    (r.str_at("result").to_owned(), r.str_at("reason").to_owned())
}

keyward_test!(fn admin_failures_are_recorded_with_their_own_result_kinds(tb) {
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"lab\"\n{}{}",
            application_toml("testbed", uid()),
            signing_class_toml("signing", "30d", "60d", "")
        ),
    );
    keyward_ok(&tb, &["key", "create", "demo", "--class", "signing"], 0);
    // Refused by the lifecycle: a pre-activation key cannot be suspended.
    keyward_ok(&tb, &["key", "suspend", "demo", "--reason", "investigating"], 5);
    // Conflict: the name is taken.
    keyward_ok(&tb, &["key", "create", "demo", "--class", "signing"], 6);
    // Not found: no such key.
    keyward_ok(&tb, &["key", "activate", "nosuch", "--reason", "go live"], 4);
    // Invalid: `init` wants a roster of administrators.
    let file = tb.path("no-roster.toml");
    std::fs::write(&file, "[settings]\nmode = \"lab\"\n").expect("write the policy");
    let file = file.to_str().expect("a UTF-8 path");
    keyward_ok(&tb, &["init", "--policy", file, "--reason", "set up"], 2);

    let records = admin_records(&tb);
    for (operation, want) in [
        ("key.suspend", KEYWARD_REFUSED),
        ("key.create", KEYWARD_CONFLICT),
        ("key.activate", KEYWARD_NOT_FOUND),
        ("policy.init", KEYWARD_INVALID),
    ] {
        let (result, reason) = outcome(&records, operation);
        // In JSON, by the name the value has.
        assert_eq!(Some(result.as_str()), keyward_policy::rv_name(want), "{operation}: {reason}");
    }
    // Nothing failed is recorded as the generic CKR_FUNCTION_FAILED.
    assert!(
        records.iter().all(|r| r.str_at("result") != "CKR_FUNCTION_FAILED"),
        "{records:#?}"
    );
    // The creation that worked is recorded as done, with 0.
    assert!(records.iter().any(|r| r.str_at("operation") == "key.create"
        && r.str_at("reason") == "done"
        && r.str_at("result") == "CKR_OK"));

    // The text shows the names.
    let text = keyward_ok(&tb, &["--wide", "audit", "query", "--limit", "100000"], 0);
    for (operation, name) in [
        ("key.suspend", "KEYWARD_REFUSED"),
        ("key.create", "KEYWARD_CONFLICT"),
        ("key.activate", "KEYWARD_NOT_FOUND"),
        ("policy.init", "KEYWARD_INVALID"),
    ] {
        assert!(
            text.lines().any(|l| l.contains(operation) && l.contains(name)),
            "no {operation} line with {name}:\n{text}"
        );
    }
    assert!(!text.contains("0xcb57"), "a keyward result shown as hex:\n{text}");
    let report = keyward_ok(&tb, &["--wide", "report"], 0);
    for name in ["KEYWARD_REFUSED", "KEYWARD_CONFLICT", "KEYWARD_NOT_FOUND", "KEYWARD_INVALID"] {
        assert!(report.contains(name), "the report's failed admin actions miss {name}:\n{report}");
    }
});

/// `keyward ARGS` with `TZ` set to `tz`: its standard output (exit 0).
fn keyward_in_zone(tb: &keyward_tests::Env, tz: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(args)
        .env("TZ", tz)
        .output()
        .expect("run keyward");
    assert!(
        out.status.success(),
        "keyward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

keyward_test!(fn text_times_are_utc_by_default_and_local_with_their_offset(tb) {
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"lab\"\n{}{}",
            application_toml("testbed", uid()),
            signing_class_toml("signing", "30d", "60d", "")
        ),
    );
    let long = format!("k{}", "x".repeat(63));
    keyward_ok(&tb, &["key", "create", &long, "--class", "signing"], 0);
    // A zone five and a half hours east of UTC, without summer time.
    let tz = "IST-5:30";
    let utc = keyward_in_zone(&tb, tz, &["key", "show", &long]);
    let created = utc.lines().find(|l| l.starts_with("created:")).expect("a created line");
    assert!(created.ends_with('Z'), "{created}");
    let local = keyward_in_zone(&tb, tz, &["--local", "key", "show", &long]);
    let created_local = local.lines().find(|l| l.starts_with("created:")).expect("a created line");
    assert!(created_local.ends_with("+05:30"), "{created_local}");
    assert!(local.contains("last used:"), "{local}");
    assert!(local.contains("(updated every 5 s)"), "{local}");
    // The same instant: the local time of day is 5:30 later.
    let minutes = |line: &str| -> u32 {
        let time = line.split_whitespace().nth(2).expect("a time of day");
        let h: u32 = time[0..2].parse().expect("hours");
        let m: u32 = time[3..5].parse().expect("minutes");
        h * 60 + m
    };
    assert_eq!((minutes(created) + 330) % 1440, minutes(created_local), "{created} / {created_local}");

    // 100 columns by default, whole with --wide.
    for args in [&["key", "list"][..], &["key", "show", &long], &["audit", "tail", "-n", "20"], &["report"]] {
        let text = keyward_ok(&tb, args, 0);
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "keyward {args:?}: a line of {}:\n{text}", line.chars().count());
        }
    }
    let wide = keyward_ok(&tb, &["--wide", "key", "list"], 0);
    assert!(wide.contains(&long) && wide.contains("OWNER"), "{wide}");
});
