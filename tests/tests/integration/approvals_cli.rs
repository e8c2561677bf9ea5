//! Dual control through the `keyward` CLI against the real agent: an
//! administrator of the roster approves, denies and cancels requests with
//! `keyward request approve|deny|cancel`, signing with their own key file;
//! the agent checks each signature against the roster's `public_key`,
//! which `keyward admin-key show` printed.

use keyward_tests::admin::{
    application_toml, install_policy, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::roster::{
    as_bob, key_file, open_admin_socket_to_bob, public_key, roster_toml, text, ALICE_PEM, BOB,
    BOB_PEM,
};

/// Asks for `web-tls`'s resume (exit 3: recorded); the request's id.
fn ask_resume(tb: &Env, reason: &str) -> String {
    let doc = keyward_json(tb, &["key", "resume", "web-tls", "--reason", reason], 3);
    doc["id"].as_str().expect("a request id").to_owned()
}

keyward_test!(fn a_second_administrator_approves_denies_and_the_requester_cancels_with_signed_decisions(tb) {
    tb.require_agent("dual control");
    // Bob reaches the admin socket through its group.
    open_admin_socket_to_bob(&tb);
    let alice_key = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(&tb, "bob.pem", BOB_PEM, BOB);
    // Bob holding a copy of alice's key signs as alice: the roster names
    // bob by his uid, and his roster key does not verify it.
    let stolen = key_file(&tb, "alice-copy.pem", ALICE_PEM, BOB);
    let (alice_public, bob_public) = (public_key(&tb, &alice_key), public_key(&tb, &bob_key));
    assert!(alice_public.starts_with("ed25519:") && bob_public.starts_with("p256:04"));
    let me = uid();
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}{}{}",
        application_toml(APPLICATION, me),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
        roster_toml(me, &alice_public, &bob_public),
    );
    install_policy(&tb, &policy);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    keyward_ok(&tb, &["key", "suspend", "web-tls", "--reason", "laptop stolen"], 0);
    let id = ask_resume(&tb, "laptop found");

    // Unsigned, and signed with a key that is not bob's: refused, nothing done.
    let out = as_bob(&tb, &["request", "approve", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("needs administrator \"bob\"'s signature"), "{out:?}");
    let out = as_bob(&tb, &["request", "approve", &id, "--key", stolen.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text(&out.stderr).contains("signature is not valid"), "{out:?}");
    let shown = keyward_json(&tb, &["request", "show", &id], 0);
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["decisions"], serde_json::json!([]), "{shown}");
    let digest = shown["digest"].as_str().expect("the digest").to_owned();

    // Bob's own key: the resume is carried out.
    let out = as_bob(&tb, &["request", "approve", &id, "--key", bob_key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("digest:      {digest}\n")), "{stdout}");
    assert!(stdout.contains(&format!("approve: sent, signed by {bob_public}")), "{stdout}");
    let shown = keyward_json(&tb, &["request", "show", &id], 0);
    let r = &shown;
    assert_eq!(r["status"], "executed", "{shown}");
    assert_eq!(r["decisions"][0]["administrator"], "bob", "{shown}");
    assert_eq!(r["decisions"][0]["decision"], "approve", "{shown}");
    assert_eq!(keyward_json(&tb, &["key", "show", "web-tls"], 0)["state"], "active");
    // Decided: a second approval is refused before anything is signed.
    let out = as_bob(&tb, &["request", "approve", &id, "--key", bob_key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(text(&out.stderr).contains("not pending"), "{out:?}");

    // A denial: the key stays suspended.
    keyward_ok(&tb, &["key", "suspend", "web-tls", "--reason", "again"], 0);
    let id = ask_resume(&tb, "too early");
    let out = as_bob(&tb, &["request", "deny", &id, "--key", bob_key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = keyward_json(&tb, &["request", "show", &id], 0);
    assert_eq!(shown["status"], "denied", "{shown}");
    assert_eq!(shown["decisions"][0]["decision"], "deny", "{shown}");
    assert_eq!(keyward_json(&tb, &["key", "show", "web-tls"], 0)["state"], "suspended");

    // The requester withdraws the next one.
    let id = ask_resume(&tb, "asked by mistake");
    keyward_ok(&tb, &["request", "cancel", &id, "--reason", "by mistake"], 0);
    let shown = keyward_json(&tb, &["request", "show", &id], 0);
    assert_eq!(shown["status"], "cancelled", "{shown}");
    let out = as_bob(&tb, &["request", "approve", &id, "--key", bob_key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert_eq!(keyward_json(&tb, &["key", "show", "web-tls"], 0)["state"], "suspended");
});
