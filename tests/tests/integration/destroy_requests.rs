//! An application's `C_DestroyObject` on a managed key, through the module
//! and a real agent on SoftHSM2: refused with `CKR_ACTION_PROHIBITED`, it
//! opens one pending destroy request (shown by `keyward request list`) and
//! the key stays in service; an application that may not use the key
//! opens nothing.

use std::time::Duration;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use keyward_tests::admin::{
    find, install_policy, keyward_json, keyward_ok, sign_grant_toml, signing_class_toml,
    two_applications_policy, APPLICATION,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};
use keyward_tests::probe::Probe;

const DIGEST: [u8; 32] = [0x5a; 32];
/// Application `other`: this user running `object_probe`.
const OTHER: &str = "other";
const PROBE_WAIT: Duration = Duration::from_secs(60);

/// The `object_probe` binary, by the path the agent sees.
fn probe_exe() -> std::path::PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_object_probe")).expect("object_probe is built")
}

/// Strict mode: this process is application `tester`, granted sign and
/// verify on class `signing`; `object_probe` is application `other`, with
/// no grant; class `hidden` grants nobody.
fn policy(tb: &keyward_tests::Env) {
    let probe = probe_exe();
    let classes = format!(
        "{}{}",
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
        signing_class_toml("hidden", "30d", "60d", "")
    );
    install_policy(tb, &two_applications_policy("", OTHER, &probe, &classes));
}

/// The pending approval requests, as `keyward --json request list` shows
/// them.
fn pending(tb: &keyward_tests::Env) -> Vec<serde_json::Value> {
    keyward_json(tb, &["request", "list"], 0).items().to_vec()
}

keyward_test!(fn destroy_object_on_a_managed_key_opens_one_destroy_request_and_the_key_stays(tb) {
    tb.require_agent("destroy requests");
    policy(&tb);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let k = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    assert_eq!(k.len(), 1, "the key is visible to its application");
    expect_err(s.destroy_object(k[0]), RvError::ActionProhibited);

    let requests = pending(&tb);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r["action"], "destroy", "{r}");
    assert_eq!(r["target"], format!("{}/web-tls", tb.token).as_str(), "{r}");
    assert_eq!(r["status"], "pending", "{r}");
    assert_eq!(r["requester"], format!("application {APPLICATION}").as_str(), "{r}");
    assert_eq!(
        r["reason"],
        format!("C_DestroyObject by application {APPLICATION}").as_str(),
        "{r}"
    );
    let text = keyward_ok(&tb, &["request", "list"], 0);
    assert!(text.contains("destroy") && text.contains("web-tls"), "{text}");

    // Asking again, also through the public half: the same answer, the
    // same one request.
    expect_err(s.destroy_object(k[0]), RvError::ActionProhibited);
    let public = find(&s, "web-tls", ObjectClass::PUBLIC_KEY);
    expect_err(s.destroy_object(public[0]), RvError::ActionProhibited);
    let again = pending(&tb);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["id"], r["id"]);

    // The object stays and signs; the key is still active.
    assert_eq!(find(&s, "web-tls", ObjectClass::PRIVATE_KEY), k);
    let signature = s.sign(&Mechanism::Ecdsa, k[0], &DIGEST).expect("the key still signs");
    s.verify(&Mechanism::Ecdsa, public[0], &DIGEST, &signature).expect("and verifies");
    let shown = keyward_json(&tb, &["key", "show", "web-tls"], 0);
    assert_eq!(shown.at("state").as_str(), Some("active"), "{shown}");
    // The trail names the request in the refusal.
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "web-tls"], 0);
    let id = r["id"].as_str().unwrap_or_default();
    assert!(
        trail.contains(&format!("destroy request {id} pending approval")),
        "{trail}"
    );
});

// Attack: application `other` has no grant on `tester`'s key, so it finds
// no handle to it and every handle it guesses is invalid; `tester`, whose
// own grant on a key was taken away after it found it, gets the refusal it
// got before. Neither opens a request, and both keys stay.
keyward_test!(fn an_application_without_a_grant_cannot_open_a_destroy_request(tb) {
    tb.require_agent("destroy requests");
    policy(&tb);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    keyward_ok(&tb, &["key", "create", "vault", "--class", "hidden"], 0);
    keyward_ok(&tb, &["key", "activate", "vault"], 0);

    let mut other = Probe::start(&tb, &probe_exe(), &[]);
    other.value("ready", PROBE_WAIT);
    other.say(&format!("login {}", tb.pin));
    assert_eq!(other.value("login", PROBE_WAIT), "CKR_OK");
    other.say("destroy web-tls");
    assert_eq!(other.value("destroy", PROBE_WAIT), "0", "other destroyed tester's key");
    other.say("guess 256");
    let guessed = other.value("guess", PROBE_WAIT);
    assert!(guessed.ends_with(";0") && !guessed.contains("web-tls"), "other guessed: {guessed}");
    other.close_stdin();
    other.wait_success(PROBE_WAIT);

    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    assert!(find(&s, "vault", ObjectClass::PRIVATE_KEY).is_empty(), "no grant, no key");
    keyward_ok(&tb, &["grant", "add", "vault", APPLICATION, "--ops", "sign"], 0);
    let held = find(&s, "vault", ObjectClass::PRIVATE_KEY);
    assert_eq!(held.len(), 1, "granted, found");
    keyward_ok(&tb, &["grant", "remove", "vault", APPLICATION], 0);
    expect_err(s.destroy_object(held[0]), RvError::ActionProhibited);

    assert!(pending(&tb).is_empty(), "{:?}", pending(&tb));
    let k = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    s.sign(&Mechanism::Ecdsa, k[0], &DIGEST).expect("tester's key still signs");
    for name in ["web-tls", "vault"] {
        let shown = keyward_json(&tb, &["key", "show", name], 0);
        assert_eq!(shown.at("state").as_str(), Some("active"), "{name}: {shown}");
    }
});
