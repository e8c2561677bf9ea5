//! Dual control end to end, with the real agent, SoftHSM2, the module and
//! two administrators running `keyward` under their own uids: an
//! application's `C_DestroyObject` leads to a request that two security
//! officers approve at the same moment, and the key's objects are gone
//! once; an approval the agent recorded before a kill is carried out once
//! after the restart; a policy change waits for its quorum, and a policy
//! file edited by hand does not take effect.

use std::path::PathBuf;
use std::process::Output;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
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

/// Alice (this uid) and bob ([`BOB`]), both security officers with key
/// files; a strict policy with class `signing` granted to this process's
/// application. Answers the policy text and the two key files.
fn two_officers(tb: &Env) -> (String, PathBuf, PathBuf) {
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
    (policy, alice_key, bob_key)
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The trail's records of `operation`, as `keyward --json audit query`
/// prints them (one per line).
fn trail(tb: &Env, operation: &str) -> Vec<serde_json::Value> {
    keyward_ok(tb, &["--json", "audit", "query", "--limit", "100000"], 0)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
        .filter(|r| r["operation"] == operation)
        .collect()
}

fn request(tb: &Env, id: &str) -> serde_json::Value {
    keyward_json(tb, &["request", "show", id], 0)
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

keyward_test!(fn destroy_object_leads_to_a_destruction_two_officers_approve_at_once(tb) {
    tb.require_agent("dual control");
    let (_, alice_key, bob_key) = two_officers(&tb);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1);
    // The application may not destroy it; its attempt is a request.
    expect_err(s.destroy_object(private[0]), RvError::ActionProhibited);
    let open = keyward_json(&tb, &["request", "list"], 0).items().to_vec();
    assert_eq!(open.len(), 1, "{open:?}");
    let id = open[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(open[0]["needed"], 2, "{open:?}");
    // Both officers approve at the same moment, each as themselves.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| keyward(&tb, &["request", "approve", &id, "--key", path(&alice_key)]));
        let b = scope.spawn(|| as_bob(&tb, &["request", "approve", &id, "--key", path(&bob_key)]));
        (a.join().expect("alice"), b.join().expect("bob"))
    });
    succeeded(&a);
    succeeded(&b);
    let r = request(&tb, &id);
    assert_eq!(r["status"], "executed", "{r}");
    assert_eq!(r["decisions"].as_array().map(Vec::len), Some(2), "{r}");
    // Carried out once.
    let executions = trail(&tb, "request.execute");
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert!(executions[0]["reason"].as_str().unwrap_or("").contains("executed"));
    // The key is gone from the token: the handle the application held
    // fails, and searches find nothing.
    let signed = s.sign(&Mechanism::Ecdsa, private[0], &[7u8; 32]);
    assert!(signed.is_err(), "a destroyed key signed");
    assert!(find(&s, "web-tls", ObjectClass::PRIVATE_KEY).is_empty());
    assert!(find(&s, "web-tls", ObjectClass::PUBLIC_KEY).is_empty());
    // The inventory keeps who, when and why.
    let key = keyward_json(&tb, &["key", "show", "web-tls"], 0);
    assert_eq!(key["state"], "destroyed", "{key}");
    let last = key["history"]
        .as_array()
        .and_then(|h| h.last().cloned())
        .expect("a history");
    assert!(last["actor"].as_str().unwrap_or("").contains("approved by"), "{last}");
    assert!(last["reason"].as_str().unwrap_or("").contains(&id), "{last}");
});

keyward_test!(fn an_approval_recorded_before_a_kill_is_carried_out_once_after_the_restart(tb) {
    tb.require_agent("dual control across a restart");
    let (_, _, _) = two_officers(&tb);
    keyward_ok(&tb, &["key", "create", "k", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "k"], 0);
    keyward_ok(&tb, &["key", "suspend", "k", "--reason", "stolen"], 0);
    let doc = keyward_json(&tb, &["key", "resume", "k", "--reason", "found"], 3);
    let id = doc["id"].as_str().expect("an id").to_owned();
    // The approval that meets the quorum is one store transaction (the
    // decision and the request's move to approved); a kill right after it
    // leaves exactly this, which the test writes with the agent down.
    tb.kill_agent();
    {
        let db = rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open");
        db.execute(
            "INSERT INTO decisions (request_id, administrator, decision, signature, at)
             VALUES (?1, 'bob', 'approve', NULL, strftime('%s', 'now'))",
            [&id],
        )
        .expect("the decision");
        let moved = db
            .execute("UPDATE requests SET status = 'approved' WHERE id = ?1", [&id])
            .expect("approved");
        assert_eq!(moved, 1);
    }
    tb.start_agent();
    assert_eq!(request(&tb, &id)["status"], "executed");
    assert_eq!(keyward_json(&tb, &["key", "show", "k"], 0)["state"], "active");
    let executions = trail(&tb, "request.execute");
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0]["actor"], "agent", "{executions:?}");
    // Another restart does not do it again.
    tb.stop_agent();
    tb.start_agent();
    assert_eq!(trail(&tb, "request.execute").len(), 1);
    let history = keyward_json(&tb, &["key", "show", "k"], 0)["history"].clone();
    let resumed = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["to"] == "active" && h["from"] == "suspended" && h["version"].is_null())
        .count();
    assert_eq!(resumed, 1, "{history}");
});

keyward_test!(fn a_policy_change_waits_for_two_officers_and_a_hand_edit_does_not_take_effect(tb) {
    tb.require_agent("the policy under dual control");
    let (policy, alice_key, bob_key) = two_officers(&tb);
    let next = format!("{policy}{}", signing_class_toml("extra", "30d", "60d", &sign_grant_toml(APPLICATION)));
    let file = tb.path("next-policy.toml");
    std::fs::write(&file, &next).expect("write");
    let doc = keyward_json(&tb, &["policy", "apply", path(&file), "--reason", "a class for the build"], 3);
    let id = doc["id"].as_str().expect("an id").to_owned();
    let shown = keyward_ok(&tb, &["request", "show", &id], 0);
    assert!(shown.contains("+name = \\\"extra\\\"") || shown.contains("+name = \"extra\""), "{shown}");
    // Not yet: the class does not exist.
    let out = keyward(&tb, &["key", "create", "e", "--class", "extra"]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");

    // root edits the policy file by hand and reloads: refused.
    let edited = format!("{policy}{}", signing_class_toml("sneaky", "30d", "60d", &sign_grant_toml(APPLICATION)));
    std::fs::write(tb.path("policy.toml"), &edited).expect("edit");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tb.agent_pid()), nix::sys::signal::SIGHUP)
        .expect("SIGHUP");
    let refused = (0..100)
        .find_map(|_| {
            let r = trail(&tb, "refuse");
            if r.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            } else {
                Some(r)
            }
        })
        .expect("the refusal in the trail");
    assert!(
        refused[0]["reason"].as_str().unwrap_or("").contains("changed outside `keyward policy apply`"),
        "{refused:?}"
    );
    let out = keyward(&tb, &["key", "create", "s", "--class", "sneaky"]);
    assert_ne!(out.status.code(), Some(0), "the hand-edited class took effect: {out:?}");
    // Nor at a restart.
    tb.stop_agent();
    tb.start_agent();
    let out = keyward(&tb, &["key", "create", "s", "--class", "sneaky"]);
    assert_ne!(out.status.code(), Some(0), "the hand-edited class took effect at start: {out:?}");

    // The two officers approve: the approved text is written and in force.
    succeeded(&keyward(&tb, &["request", "approve", &id, "--key", path(&alice_key)]));
    assert_eq!(request(&tb, &id)["status"], "pending");
    succeeded(&as_bob(&tb, &["request", "approve", &id, "--key", path(&bob_key)]));
    let r = request(&tb, &id);
    assert_eq!(r["status"], "executed", "{r}");
    assert_eq!(std::fs::read_to_string(tb.path("policy.toml")).expect("read"), next);
    keyward_ok(&tb, &["key", "create", "e", "--class", "extra"], 0);
    // It survives a restart as the approved policy.
    tb.stop_agent();
    tb.start_agent();
    keyward_ok(&tb, &["key", "create", "e2", "--class", "extra"], 0);
});

keyward_test!(fn init_sets_up_dual_control_once(tb) {
    tb.require_agent("keyward init");
    let without = format!(
        "[settings]\nmode = \"strict\"\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
    );
    install_policy(&tb, &without);
    let alice_key = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(&tb, "bob.pem", BOB_PEM, BOB);
    let with = format!(
        "{without}{}",
        roster_toml(uid(), &public_key(&tb, &alice_key), &public_key(&tb, &bob_key))
    );
    let file = tb.path("first-policy.toml");
    std::fs::write(&file, &with).expect("write");
    // A policy without a roster sets up nothing.
    let plain = tb.path("plain.toml");
    std::fs::write(&plain, &without).expect("write");
    let out = keyward(&tb, &["init", "--policy", path(&plain)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    keyward_ok(&tb, &["init", "--policy", path(&file), "--reason", "go live"], 0);
    assert_eq!(std::fs::read_to_string(tb.path("policy.toml")).expect("read"), with);
    // Once: again is a conflict; a change is a request now.
    let out = keyward(&tb, &["init", "--policy", path(&file)]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let next = tb.path("next.toml");
    std::fs::write(&next, format!("{with}\n# reviewed\n")).expect("write");
    keyward_json(&tb, &["policy", "apply", path(&next)], 3);
    // The roster holds across a restart.
    tb.stop_agent();
    tb.start_agent();
    let out = keyward(&tb, &["init", "--policy", path(&file)]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
});
