//! Names at the CLI: a new key's name follows one rule (letters, digits,
//! `-`, `_`, `.`, 1-64 characters, starting with a letter or digit), and
//! every lookup of an unknown key, application or request exits 4 with
//! one message shape.

use cryptoki::object::{Attribute, ObjectClass};
use keyward_tests::admin::{
    backend_token, find, keyward_json, keyward_ok, keyward_refused, strict_policy,
};
use keyward_tests::keyward_test;
use keyward_tests::p11::Ctx;
use keyward_tests::Env;

/// The names of the managed keys (`key list --json`).
fn key_names(tb: &Env) -> Vec<String> {
    let doc = keyward_json(tb, &["key", "list"], 0);
    doc.as_array()
        .expect("key list: an array of keys")
        .iter()
        .map(|k| k["name"].as_str().expect("a key's name").to_owned())
        .collect()
}

/// Every object's label on the backend token, as root on the host sees it.
fn backend_labels(tb: &Env) -> Vec<Vec<u8>> {
    let (_p11, s) = backend_token(tb);
    let mut labels: Vec<Vec<u8>> = s
        .find_objects(&[])
        .expect("C_FindObjects on the backend")
        .into_iter()
        .filter_map(
            |h| match s.get_attributes(h, &[cryptoki::object::AttributeType::Label]) {
                Ok(mut a) => match a.pop() {
                    Some(Attribute::Label(l)) => Some(l),
                    _ => None,
                },
                Err(_) => None,
            },
        )
        .collect();
    labels.sort();
    labels
}

const RULE: &str =
    "use letters, digits, '-', '_' and '.', 1-64 characters, starting with a letter or digit";

keyward_test!(fn a_bad_key_name_is_refused_and_nothing_is_made(tb) {
    tb.require_agent("key names");
    strict_policy(&tb);
    let keys_before = key_names(&tb);
    let objects_before = backend_labels(&tb);

    let long = "k".repeat(65);
    for bad in ["a/b;object=x", "with space", "-lead", "", long.as_str()] {
        let stderr = keyward_refused(&tb, &["key", "create", "--class", "signing", "--", bad], 2);
        assert!(
            stderr.contains(&format!("key name {bad:?}: {RULE}")),
            "{bad:?}: {stderr}"
        );
    }
    assert_eq!(key_names(&tb), keys_before, "the inventory is unchanged");
    assert_eq!(backend_labels(&tb), objects_before, "the token is unchanged");

    // The same rule for an adoption's name.
    let stderr = keyward_refused(
        &tb,
        &["discover", "--adopt", "0a0b", "--name", "x=y", "--class", "signing"],
        2,
    );
    assert!(stderr.contains(&format!("key name \"x=y\": {RULE}")), "{stderr}");
    // And for an import's new name, before the file is even read.
    let missing = tb.path("no-such-export");
    let stderr = keyward_refused(
        &tb,
        &[
            "key", "import", missing.to_str().expect("a UTF-8 path"), "--class", "signing",
            "--name", "a?b", "--reason", "test",
        ],
        2,
    );
    assert!(stderr.contains(&format!("key name \"a?b\": {RULE}")), "{stderr}");
    assert_eq!(key_names(&tb), keys_before, "the inventory is still unchanged");
});

keyward_test!(fn a_good_key_name_is_taken_as_it_is(tb) {
    tb.require_agent("key names");
    strict_policy(&tb);
    let name = format!("db_key.v2-{}", "9".repeat(54));
    assert_eq!(name.len(), 64);
    keyward_ok(&tb, &["key", "create", &name, "--class", "signing"], 0);
    assert!(key_names(&tb).contains(&name), "the key is in the inventory");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    assert_eq!(find(&s, &name, ObjectClass::PRIVATE_KEY).len(), 1, "its CKA_LABEL is its name");
});

keyward_test!(fn every_unknown_lookup_exits_4_with_one_message(tb) {
    tb.require_agent("unknown names");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "known", "--class", "signing"], 0);
    // A known key with no matching records is no error.
    let out = keyward_ok(&tb, &["audit", "query", "--key", "known", "--result", "denied"], 0);
    assert_eq!(out, "no audit records\n");

    let no_key = format!("no key \"nosuch\" on token {:?}", tb.token);
    for args in [
        &["key", "show", "nosuch"][..],
        &["grant", "list", "nosuch"],
        &["report", "--key", "nosuch"],
        &["audit", "query", "--key", "nosuch"],
    ] {
        let stderr = keyward_refused(&tb, args, 4);
        assert!(stderr.contains(&no_key), "{args:?}: {stderr}");
    }
    let stderr = keyward_refused(&tb, &["grant", "add", "known", "nosuch", "--ops", "sign"], 4);
    assert!(stderr.contains("no application \"nosuch\" in the policy"), "{stderr}");
    let stderr = keyward_refused(&tb, &["request", "show", "nosuch"], 4);
    assert!(stderr.contains("no request \"nosuch\""), "{stderr}");

});
