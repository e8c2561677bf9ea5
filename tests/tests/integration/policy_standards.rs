//! `keyward policy check` against the standards, through the real binary:
//! a class with an algorithm below 112-bit security (NIST SP 800-131A) is
//! refused with its line and column unless it is marked `legacy = true`
//! (then a note, and the agent loads it and logs the note); a cryptoperiod
//! longer than NIST SP 800-57 Part 1 recommends is a note, and with
//! `--strict` an error (exit 1).

use std::path::Path;
use std::process::{Command, Output};

use keyward_tests::admin::{
    application_toml, install_policy, keyward_bin, keyward_json, keyward_ok, sign_grant_toml, uid,
    APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;

/// Runs `keyward policy check ARGS FILE` with no agent behind the socket.
fn check(tb: &Env, args: &[&str], file: &Path) -> Output {
    Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(tb.path("no-agent-here.sock"))
        .args(["policy", "check"])
        .args(args)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run keyward policy check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn expect(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
}

/// A strict policy with one signing class of `algorithm`, periods as given
/// and `extra` lines.
fn policy(algorithm: &str, protect: &str, process: &str, extra: &str) -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{}\n[[class]]\nname = \"release\"\npurpose = \"signing\"\n\
         algorithms = [\"{algorithm}\"]\nprotect_period = \"{protect}\"\nprocess_period = \"{process}\"\n{extra}\n{}\n",
        application_toml(APPLICATION, uid()),
        sign_grant_toml(APPLICATION),
    )
}

keyward_test!(fn a_weak_algorithm_is_refused_with_its_place(tb) {
    let file = tb.path("weak.toml");
    std::fs::write(&file, policy("rsa:1024", "365d", "730d", "")).unwrap();
    for args in [&[][..], &["--strict"][..]] {
        let out = check(&tb, args, &file);
        expect(&out, 1);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{}:11:15: class \"release\", algorithms: rsa:1024 is below 112-bit security (NIST SP 800-131A); mark the class legacy = true to keep it",
                file.display()
            )),
            "{stderr}"
        );
        assert!(text(&out.stdout).is_empty(), "{out:?}");
    }
});

keyward_test!(fn a_legacy_class_loads_with_a_note(tb) {
    let legacy = policy("rsa:1024", "365d", "730d", "legacy = true");
    let file = tb.path("legacy.toml");
    std::fs::write(&file, &legacy).unwrap();
    for args in [&[][..], &["--strict"][..]] {
        let out = check(&tb, args, &file);
        expect(&out, 0);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("note: class \"release\", algorithms: rsa:1024 is below 112-bit security (NIST SP 800-131A); kept because the class is marked legacy"),
            "{stdout}"
        );
    }
    // The agent loads it too, and logs the note.
    install_policy(&tb, &legacy);
    keyward_json(&tb, &["status"], 0);
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("kept because the class is marked legacy"), "{log}");
});

keyward_test!(fn a_long_cryptoperiod_is_a_note_and_strict_refuses_it(tb) {
    let file = tb.path("century.toml");
    std::fs::write(&file, policy("ec:p256", "36500d", "36500d", "")).unwrap();
    let warning = "class \"release\", protect_period: 36500d is longer than the recommended 1095d for signing keys (NIST SP 800-57 Part 1 Rev. 5, Table 1: private signature key: 1-3 years)";
    let out = check(&tb, &[], &file);
    expect(&out, 0);
    assert!(text(&out.stdout).contains(&format!("note: {warning}")), "{out:?}");
    let out = check(&tb, &["--strict"], &file);
    expect(&out, 1);
    assert!(text(&out.stdout).is_empty(), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!("keyward: {}: {warning} (refused by --strict)\n", file.display())
    );
    let out = check(&tb, &["--strict", "--json"], &file);
    expect(&out, 1);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["valid"], false, "{doc}");
    assert_eq!(doc["strict"], true, "{doc}");
    assert_eq!(doc["period_warnings"][0], warning, "{doc}");
});

keyward_test!(fn a_class_within_the_standards_is_quiet(tb) {
    let file = tb.path("quiet.toml");
    std::fs::write(&file, policy("rsa:2048", "1095d", "3650d", "")).unwrap();
    for args in [&[][..], &["--strict"][..], &["--strict", "--json"][..]] {
        let out = check(&tb, args, &file);
        expect(&out, 0);
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("note:"), "{stdout}");
        assert!(text(&out.stderr).is_empty(), "{out:?}");
    }
});

keyward_test!(fn the_report_flags_a_key_the_reloaded_policy_would_refuse(tb) {
    tb.require_agent("keyward report against the policy");
    // A real RSA-1024 key on the token, made under a legacy class.
    install_policy(&tb, &policy("rsa:1024", "365d", "730d", "legacy = true"));
    keyward_ok(&tb, &["key", "create", "old-rsa", "--class", "release"], 0);
    let doc = keyward_json(&tb, &["report"], 0);
    let key = &doc["keys"][0];
    assert_eq!(key["algorithm"], "rsa:1024", "{doc}");
    assert_eq!(key["policy_findings"], serde_json::json!([]), "{doc}");
    let shown = keyward_ok(&tb, &["report"], 0);
    assert!(
        shown.contains("keys against the policy: nothing the policy would refuse"),
        "{shown}"
    );

    // The class moves on to rsa:2048, no longer legacy: the policy now
    // refuses what the key is.
    std::fs::write(tb.path("policy.toml"), policy("rsa:2048", "365d", "730d", "")).unwrap();
    assert!(keyward_ok(&tb, &["policy", "reload"], 0).contains("policy now"));
    let doc = keyward_json(&tb, &["report"], 0);
    let findings = &doc["keys"][0]["policy_findings"];
    assert_eq!(findings[0]["kind"], "weak_algorithm", "{doc}");
    assert_eq!(findings[0]["severity"], "refused", "{doc}");
    assert_eq!(
        findings[0]["detail"],
        "rsa:1024 is below 112-bit security (NIST SP 800-131A) and class \"release\" is not marked legacy",
        "{doc}"
    );
    assert_eq!(findings[1]["kind"], "algorithm_not_allowed", "{doc}");
    let shown = keyward_ok(&tb, &["report"], 0);
    assert!(
        shown.contains(&format!(
            "keys against the policy: 1 the policy would refuse (2 refusals, 0 warnings)\n  {}/old-rsa\n    refused: rsa:1024 is below 112-bit security",
            doc["keys"][0]["token"].as_str().unwrap()
        )),
        "{shown}"
    );
    let section = shown.split("keys against the policy:").nth(1).unwrap();
    for line in section.lines() {
        assert!(line.len() <= 100, "{line:?} is wider than 100 columns");
    }

    // A century-long cryptoperiod is a warning, not a refusal.
    std::fs::write(tb.path("policy.toml"), policy("rsa:1024", "36500d", "36500d", "legacy = true")).unwrap();
    keyward_ok(&tb, &["policy", "reload"], 0);
    let doc = keyward_json(&tb, &["report"], 0);
    let findings = doc["keys"][0]["policy_findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{doc}");
    assert_eq!(findings[0]["kind"], "long_cryptoperiod", "{doc}");
    assert_eq!(findings[0]["severity"], "warning", "{doc}");
});
