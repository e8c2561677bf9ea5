//! `audit query --app`: an application the policy does not name and no
//! record names is a lookup of an unknown application (exit 4, the same
//! message as `grant add`'s); one the policy named once still answers its
//! records.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use keyward_tests::admin::{
    application_toml, find, install_policy, keyward_ok, keyward_refused, signing_class_toml,
    strict_policy, APPLICATION,
};
use keyward_tests::keyward_test;
use keyward_tests::p11::Ctx;
use keyward_tests::Env;

keyward_test!(fn audit_query_for_an_unknown_application_exits_4_and_a_removed_one_keeps_its_records(tb) {
    tb.require_agent("audit queries by application");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "k", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "k"], 0);
    {
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        let key = find(&s, "k", ObjectClass::PRIVATE_KEY)[0];
        s.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).expect("a use");
    }
    let no_app = "no application \"nosuch\" in the policy";
    let stderr = keyward_refused(&tb, &["audit", "query", "--app", "nosuch"], 4);
    assert!(stderr.contains(no_app), "{stderr}");
    let records = |tb: &Env| {
        keyward_ok(tb, &["--json", "audit", "query", "--app", APPLICATION], 0)
            .lines()
            .count()
    };
    let known = records(&tb);
    assert!(known > 0, "the application's use is on record");

    // The application leaves the policy: its records still answer; an
    // application never known still exits 4, with the same message.
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"strict\"\n{}{}",
            application_toml("someone-else", 4_242_424),
            signing_class_toml("signing", "30d", "60d", "")
        ),
    );
    assert!(records(&tb) >= known, "a removed application's records still answer");
    let stderr = keyward_refused(&tb, &["audit", "query", "--app", "nosuch"], 4);
    assert!(stderr.contains(no_app), "{stderr}");
    // A known application with no records is no error.
    let out = keyward_ok(&tb, &["audit", "query", "--app", "someone-else"], 0);
    assert_eq!(out, "no audit records\n");
});
