//! Re-initialising a token outside the lab setting, with the real agent,
//! SoftHSM2, the module and two security officers under their own uids:
//! `keyward token init` is a request; once alice and bob approved, the
//! managed keys are destroyed (their records kept), the application's own
//! objects are gone, the old user PIN logs in no more, and the audit trail
//! still verifies with the audit key that survived.

use std::path::Path;
use std::process::Output;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use keyward_tests::admin::{
    application_toml, find, install_policy, keyward, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};
use keyward_tests::roster::{
    as_bob, key_file, open_admin_socket_to_bob, public_key, roster_toml, text, ALICE_PEM, BOB,
    BOB_PEM,
};

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[track_caller]
fn succeeded(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn request(tb: &Env, id: &str) -> serde_json::Value {
    keyward_json(tb, &["request", "show", id], 0)
}

keyward_test!(fn two_officers_approve_a_token_init_and_keys_objects_and_user_pin_are_gone(tb) {
    tb.require_agent("keyward token init under dual control");
    open_admin_socket_to_bob(&tb);
    let alice_key = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(&tb, "bob.pem", BOB_PEM, BOB);
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
        roster_toml(uid(), &public_key(&tb, &alice_key), &public_key(&tb, &bob_key)),
    );
    install_policy(&tb, &policy);
    for name in ["web-tls", "code-sign"] {
        keyward_ok(&tb, &["key", "create", name, "--class", "signing"], 0);
        keyward_ok(&tb, &["key", "activate", name], 0);
    }
    // The application's own object, beside the managed keys.
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let own = s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(b"own-data".to_vec()),
        Attribute::Value(b"the application's".to_vec()),
    ])
    .expect("C_CreateObject");
    assert_eq!(find(&s, "own-data", ObjectClass::DATA).len(), 1);
    assert_eq!(find(&s, "web-tls", ObjectClass::PRIVATE_KEY).len(), 1);
    let web_tls = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    assert_eq!(find(&s, "code-sign", ObjectClass::PRIVATE_KEY).len(), 1);

    // An unknown token: refused at once (exit 4), no request.
    let out = keyward(&tb, &["token", "init", "no-such-token", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(keyward_json(&tb, &["request", "list"], 0).items().is_empty());

    // The request: exit 3, the keys lost in its parameters.
    let doc = keyward_json(&tb, &["token", "init", &tb.token, "--reason", "reuse for staging"], 3);
    let id = doc["id"].as_str().expect("an id").to_owned();
    assert_eq!(doc["action"], "token-init", "{doc}");
    assert_eq!(doc["needed"], 2, "{doc}");
    let parameters: serde_json::Value =
        serde_json::from_str(doc["parameters"].as_str().expect("parameters"))
            .expect("JSON parameters");
    assert_eq!(
        parameters,
        serde_json::json!({"token": tb.token, "keys": ["code-sign", "web-tls"]}),
        "{doc}"
    );

    // alice's approval counts (the requester's own, for token-init) but is
    // not enough: nothing has changed.
    succeeded(&keyward(&tb, &["request", "approve", &id, "--key", path(&alice_key)]));
    assert_eq!(request(&tb, &id)["status"], "pending");
    assert_eq!(find(&s, "own-data", ObjectClass::DATA).len(), 1);
    // bob's carries it out.
    succeeded(&as_bob(&tb, &["request", "approve", &id, "--key", path(&bob_key)]));
    let r = request(&tb, &id);
    assert_eq!(r["status"], "executed", "{r}");
    assert!(
        r["outcome"].as_str().unwrap_or("").contains("2 managed keys destroyed"),
        "{r}"
    );

    // The handles the application held fail.
    assert!(s.get_attributes(own, &[AttributeType::Value]).is_err(), "its own object is still there");
    assert!(s.sign(&Mechanism::Ecdsa, web_tls[0], &[7u8; 32]).is_err(), "a destroyed key signed");
    // A new session finds nothing of what was there.
    let after = ctx.rw();
    for (label, class) in [
        ("own-data", ObjectClass::DATA),
        ("web-tls", ObjectClass::PRIVATE_KEY),
        ("web-tls", ObjectClass::PUBLIC_KEY),
        ("code-sign", ObjectClass::PRIVATE_KEY),
    ] {
        assert!(find(&after, label, class).is_empty(), "{label} {class:?} is still found");
    }
    // The old user PIN logs in no more: the user PINs were cleared.
    s.logout().expect("C_Logout");
    expect_err(after.login(UserType::User, Some(&ctx.pin())), RvError::UserPinNotInitialized);
    drop((s, after));

    // The inventory keeps both keys, destroyed.
    let keys = keyward_json(&tb, &["key", "list"], 0);
    let keys = keys.items();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k["state"] == "destroyed"), "{keys:?}");

    // The audit key survived: a checkpoint signed at the stop verifies
    // after the restart, and the trail is intact.
    tb.stop_agent();
    tb.start_agent();
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.i64_at("checkpoints_ok") >= 1, "{verified}");
    assert!(verified.at("first_bad").is_null(), "{verified}");
    assert!(keyward_ok(&tb, &["audit", "verify"], 0).contains("intact"));
});
