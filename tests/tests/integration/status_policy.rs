//! What an operator sees at a glance (`keyward status`), the policy in
//! force (`keyward policy show`) and a reload without signals (`keyward
//! policy reload`), against the real agent.

use keyward_tests::admin::{
    application_toml, install_policy, keyward, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::roster::text;

fn policy(class: &str) -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml(class, "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

keyward_test!(fn status_shows_the_policy_keys_by_state_the_audit_trail_and_the_scheduler(tb) {
    tb.require_agent("keyward status");
    install_policy(&tb, &policy("signing"));
    keyward_ok(&tb, &["key", "create", "a", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "create", "b", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "b"], 0);
    // The scheduler's first pass comes a second after the start.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let shown = keyward_ok(&tb, &["status"], 0);
    let path = tb.path("policy.toml");
    assert!(
        shown.contains(&format!("policy:    {} (strict mode, sha256 ", path.display())),
        "{shown}"
    );
    assert!(shown.contains("1 application, 1 class, 0 administrators"), "{shown}");
    assert!(shown.contains("keys:      1 pre-activation, 1 active"), "{shown}");
    assert!(shown.contains("audit:     "), "{shown}");
    assert!(!shown.contains("scheduler: last run -"), "{shown}");
    let doc = keyward_json(&tb, &["status"], 0);
    assert_eq!(doc.at("policy").at("mode").as_str(), Some("strict"), "{doc}");
    assert_eq!(doc.at("policy").at("classes").as_u64(), Some(1), "{doc}");
    assert!(doc.at("audit").at("records").as_u64().unwrap() > 0, "{doc}");
    assert_eq!(doc.at("audit").at("failing").as_bool(), Some(false), "{doc}");
    let next = doc.time_at("scheduler_next_run");
    let last = doc.time_at("scheduler_last_run");
    assert_eq!(next - last, 60, "{doc}");
});

keyward_test!(fn policy_show_prints_the_policy_in_force_and_reload_puts_an_edited_file_in_force(tb) {
    tb.require_agent("keyward policy show and reload");
    install_policy(&tb, &policy("signing"));
    let path = tb.path("policy.toml");
    let shown = keyward_ok(&tb, &["policy", "show"], 0);
    assert!(shown.contains(&std::fs::read_to_string(&path).unwrap()), "{shown}");
    assert!(shown.contains("sha256: "), "{shown}");

    // A file that does not check: refused with the reason, nothing changed.
    std::fs::write(&path, "[settings]\nmode = \"strict\"\n[[class]]\nname = 3\n").unwrap();
    let out = keyward(&tb, &["policy", "reload"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("policy.toml:") && err.contains("nothing changed"), "{err}");
    keyward_ok(&tb, &["key", "create", "still", "--class", "signing"], 0);

    // An edited file that checks: in force at once, without a signal.
    std::fs::write(&path, policy("renamed")).unwrap();
    let said = keyward_ok(&tb, &["policy", "reload"], 0);
    assert!(said.contains("policy now"), "{said}");
    keyward_ok(&tb, &["key", "create", "next", "--class", "renamed"], 0);
    let out = keyward(&tb, &["key", "create", "old", "--class", "signing"]);
    assert_eq!(out.status.code(), Some(4), "the old class is gone: {out:?}");
    let shown = keyward_ok(&tb, &["policy", "show"], 0);
    assert!(shown.contains("name = \"renamed\""), "{shown}");
    // Reloading the same file again changes nothing and says so.
    assert!(keyward_ok(&tb, &["policy", "reload"], 0).contains("policy unchanged"));
});

keyward_test!(fn key_show_and_grant_list_show_the_class_grants_beside_the_keys_own(tb) {
    tb.require_agent("effective grants");
    install_policy(&tb, &policy("signing"));
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    // Before: "no grants" was shown for a key its class grants.
    let shown = keyward_ok(&tb, &["key", "show", "web"], 0);
    assert!(!shown.contains("grants:\n  none"), "{shown}");
    assert!(shown.contains("SOURCE") && shown.contains("class"), "{shown}");
    let doc = keyward_json(&tb, &["grant", "list", "web"], 0);
    let grants = doc.items();
    assert_eq!(grants.len(), 1, "{doc}");
    assert_eq!(grants[0].str_at("source"), "class");
    assert_eq!(grants[0].str_at("application"), APPLICATION);
});
