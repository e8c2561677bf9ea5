//! Safety rails at the CLI, against the real agent and token: `--dry-run`
//! on every changing verb changes nothing (inventory, trail, HSM objects)
//! and refuses exactly as the real verb would; revoke and destroy show
//! their impact; revoke, destroy and restore ask for the key's name on a
//! terminal, and without one (and without `--yes`) send nothing.

use std::io::Write;
use std::process::{Command, Stdio};

use cryptoki::object::{Attribute, AttributeType};
use keyward_protocol::admin::{AdminRequest, AdminResponse, KeyAction, KeyRequest};
use keyward_tests::admin::{
    application_toml, backend_token, install_policy, key_show, keyward, keyward_bin, keyward_json,
    keyward_ok, uid, APPLICATION,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::roster::{key_file, public_key, roster_toml, ALICE_PEM, BOB, BOB_PEM};
use keyward_tests::Env;

/// Strict, without a roster: an EC signing class and an RSA encryption
/// class, both granted to this process's application.
fn policy() -> String {
    format!(
        r#"[settings]
mode = "strict"
{}
[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "{APPLICATION}", operations = ["sign", "verify"] }} ]

[[class]]
name = "encryption"
purpose = "encryption"
algorithms = ["rsa:2048"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "{APPLICATION}", operations = ["encrypt", "decrypt"] }} ]
"#,
        application_toml(APPLICATION, uid())
    )
}

/// Every object on the backend token: (class, CKA_ID, CKA_LABEL), sorted.
fn hsm_objects(tb: &Env) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let (p11, s) = backend_token(tb);
    let mut all: Vec<_> = s
        .find_objects(&[])
        .expect("C_FindObjects on the backend")
        .into_iter()
        .map(|h| {
            let attrs = s
                .get_attributes(
                    h,
                    &[
                        AttributeType::Class,
                        AttributeType::Id,
                        AttributeType::Label,
                    ],
                )
                .unwrap_or_default();
            let (mut class, mut id, mut label) = (String::new(), Vec::new(), Vec::new());
            for a in attrs {
                match a {
                    Attribute::Class(c) => class = c.to_string(),
                    Attribute::Id(i) => id = i,
                    Attribute::Label(l) => label = l,
                    _ => {}
                }
            }
            (class, id, label)
        })
        .collect();
    all.sort();
    drop(s);
    p11.finalize().expect("C_Finalize of SoftHSM2");
    all
}

/// What a dry run must leave as it was: the inventory (keys with their
/// versions, grants and history; every approval request), the trail's
/// length, and the backend token's objects.
#[derive(Debug, PartialEq)]
struct Snapshot {
    keys: String,
    requests: String,
    trail_records: u64,
    objects: Vec<(String, Vec<u8>, Vec<u8>)>,
}

fn snapshot(tb: &Env) -> Snapshot {
    let keys = keyward_json(tb, &["key", "list"], 0).to_string();
    let requests = keyward_json(tb, &["request", "list", "--all"], 0).to_string();
    let status = keyward_json(tb, &["status"], 0);
    let trail_records = status
        .get("audit")
        .and_then(|a| a.get("records"))
        .and_then(|r| r.as_u64())
        .unwrap_or_else(|| panic!("status shows the trail's records: {status}"));
    Snapshot {
        keys,
        requests,
        trail_records,
        objects: hsm_objects(tb),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `keyward --dry-run ARGS`: exit 0 with a plan on standard output.
#[track_caller]
fn planned(tb: &Env, args: &[&str]) -> String {
    let mut all = vec!["--dry-run"];
    all.extend_from_slice(args);
    let out = keyward_ok(tb, &all, 0);
    assert!(out.starts_with("dry run: "), "{args:?}: {out}");
    assert!(out.contains("nothing was changed"), "{args:?}: {out}");
    out
}

/// The id of a pending request the real `args` records (exit 3).
fn pending_id(tb: &Env, args: &[&str]) -> String {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let doc: serde_json::Value =
        serde_json::from_str(&keyward_ok(tb, &all, 3)).expect("a pending request as JSON");
    doc["id"].as_str().expect("the request's id").to_owned()
}

/// Keys in every state the verbs start from.
fn keys(tb: &Env) {
    install_policy(tb, &policy());
    for (name, class) in [
        ("web", "signing"),
        ("pre", "signing"),
        ("sus", "signing"),
        ("gone", "signing"),
        ("enc", "encryption"),
    ] {
        keyward_ok(tb, &["key", "create", name, "--class", class], 0);
        if name != "pre" {
            keyward_ok(tb, &["key", "activate", name], 0);
        }
    }
    keyward_ok(tb, &["key", "suspend", "sus", "--reason", "setup"], 0);
    keyward_ok(
        tb,
        &[
            "key",
            "revoke",
            "--yes",
            "gone",
            "--reason",
            "setup",
            "--reason-code",
            "superseded",
        ],
        0,
    );
    keyward_ok(
        tb,
        &["grant", "add", "web", APPLICATION, "--ops", "sign"],
        0,
    );
}

keyward_test!(fn every_changing_verb_dry_runs_with_nothing_changed(tb) {
    tb.require_agent("dry runs");
    keys(&tb);
    let resume = pending_id(&tb, &["key", "resume", "sus"]);
    let before = snapshot(&tb);
    assert_eq!(snapshot(&tb), before, "the snapshot itself changes nothing");

    let label = tb.token.clone();
    let next_policy = tb.path("next-policy.toml");
    std::fs::write(&next_policy, format!("{}\n# next\n", policy())).expect("write a policy");
    let next_policy = next_policy.to_str().expect("a UTF-8 path").to_owned();
    let plans = [
        (vec!["key", "create", "new", "--class", "signing"], "generate a ec:p256 key labelled \"new\""),
        (vec!["key", "create", "new-enc", "--class", "encryption", "--algorithm", "rsa:2048"], "rsa:2048"),
        (vec!["key", "activate", "pre"], "key pre-activation -> active"),
        (vec!["key", "suspend", "web", "--reason", "check"], "key active -> suspended"),
        (vec!["key", "resume", "sus"], &format!("request {resume} is pending already")),
        (vec!["key", "deactivate", "web"], "key active -> deactivated"),
        (vec!["key", "revoke", "web", "--reason", "check", "--reason-code", "superseded"], "key active -> compromised"),
        (vec!["key", "revoke", "web", "--rotate", "--reason", "check", "--reason-code", "superseded"], "then a new version of"),
        (vec!["key", "destroy", "web", "--reason", "check", "--reason-code", "superseded"], "needs approval: a destroy request on"),
        (vec!["key", "rotate", "web"], "generate a ec:p256 key labelled \"web\""),
        (vec!["key", "recover", "gone", "--for", "1h", "--reason", "old signatures"], "needs approval: a recover request"),
        (vec!["grant", "add", "web", APPLICATION, "--ops", "verify"], "grants application"),
        (vec!["grant", "remove", "web", APPLICATION], "the grant to"),
        (vec!["request", "cancel", &resume], "moves to cancelled"),
        (vec!["request", "approve", &resume], "is approved by"),
        (vec!["request", "deny", &resume], "is denied by"),
        (vec!["policy", "apply", &next_policy, "--reason", "check"], "is written and put in force"),
        (vec!["cert", "request", "web", "--subject", "CN=web"], "signs the"),
        (vec!["pin", "unlock", &label], "wrong-PIN count of every PIN"),
        (vec!["policy", "reload"], "the policy in force stays"),
        (vec!["cert", "self-sign", "web", "--subject", "CN=web", "--import"], "signs the"),
        (vec!["token", "init", &label, "--reason", "check"], "needs approval: a token-init request"),
    ];
    for (args, says) in &plans {
        let out = planned(&tb, args);
        assert!(out.contains(says), "{args:?} should say {says:?}: {out}");
        // The real verb would not be asked to confirm: a dry run is no
        // irreversible action, also without --yes and without a terminal.
    }
    // JSON: one document, the plan.
    let doc = keyward_json(&tb, &["--dry-run", "key", "suspend", "web", "--reason", "check"], 0);
    assert_eq!(doc["request"], "key.suspend", "{doc}");
    assert_eq!(doc["outcome"]["kind"], "done", "{doc}");

    // A verb a dry run does not serve is refused, nothing done.
    let out = keyward(&tb, &["--dry-run", "key", "verify", "web"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--dry-run is not available"), "{out:?}");

    assert_eq!(snapshot(&tb), before, "a dry run changed the inventory, the trail or the token");

    // The same verbs for real do change things (the snapshot can fail).
    keyward_ok(&tb, &["key", "suspend", "web", "--reason", "real"], 0);
    assert_ne!(snapshot(&tb), before);
});

keyward_test!(fn a_refused_dry_run_exits_like_the_real_verb(tb) {
    tb.require_agent("dry runs");
    keys(&tb);
    let bad_policy = tb.path("bad-policy.toml");
    std::fs::write(&bad_policy, "[settings]\nmode = \"sometimes\"\n").expect("write a policy");
    let bad_policy = bad_policy.to_str().expect("a UTF-8 path").to_owned();
    for (args, code) in [
        (vec!["key", "activate", "web"], 5),
        (vec!["key", "resume", "web"], 5),
        (vec!["key", "revoke", "--yes", "gone", "--reason", "check", "--reason-code", "superseded"], 5),
        (vec!["key", "revoke", "--yes", "sus", "--rotate", "--reason", "check", "--reason-code", "superseded"], 5),
        (vec!["key", "create", "web", "--class", "signing"], 6),
        (vec!["key", "create", "a/b", "--class", "signing"], 2),
        (vec!["key", "create", "x", "--class", "nosuch"], 4),
        (vec!["key", "suspend", "nosuch", "--reason", "check"], 4),
        (vec!["key", "destroy", "--yes", "nosuch", "--reason", "check", "--reason-code", "superseded"], 4),
        (vec!["grant", "add", "web", "nosuch", "--ops", "sign"], 4),
        (vec!["grant", "add", "web", APPLICATION, "--ops", "encrypt"], 5),
        (vec!["grant", "remove", "enc", APPLICATION], 4),
        (vec!["key", "recover", "web", "--for", "1h", "--reason", "r"], 5),
        (vec!["request", "cancel", "nosuch"], 4),
        (vec!["request", "approve", "nosuch"], 4),
        (vec!["policy", "apply", &bad_policy], 2),
        (vec!["backup", "create", &tb.path("b.kwbackup").to_string_lossy()], 4),
        (vec!["key", "import", &bad_policy, "--class", "signing", "--reason", "r"], 2),
        (vec!["cert", "import", "web", &bad_policy], 2),
        (vec!["cert", "request", "enc", "--subject", "CN=enc"], 5),
        (vec!["pin", "unlock", &tb.token, "--app", "nosuch"], 7),
        (vec!["pin", "unlock", &tb.token, "--role", "so", "--app", APPLICATION], 7),
    ] {
        let mut dry = vec!["--dry-run"];
        dry.extend_from_slice(&args);
        let dry_out = keyward(&tb, &dry);
        let real_out = keyward(&tb, &args);
        assert_eq!(real_out.status.code(), Some(code), "real {args:?}: {real_out:?}");
        assert_eq!(dry_out.status.code(), Some(code), "dry run {args:?}: {dry_out:?}");
        assert!(!text(&dry_out.stderr).is_empty(), "{args:?}: the refusal is said");
    }
    // A reload of a policy file that does not check.
    std::fs::write(tb.path("policy.toml"), "[settings]\nmode = \"sometimes\"\n").expect("break the policy");
    let dry_out = keyward(&tb, &["--dry-run", "policy", "reload"]);
    let real_out = keyward(&tb, &["policy", "reload"]);
    assert_eq!(real_out.status.code(), Some(5), "{real_out:?}");
    assert_eq!(dry_out.status.code(), Some(5), "{dry_out:?}");
});

keyward_test!(fn revoke_and_destroy_show_who_loses_what(tb) {
    tb.require_agent("impact");
    keys(&tb);
    let out = planned(&tb, &["key", "revoke", "enc", "--reason", "check", "--reason-code", "superseded"]);
    assert!(out.contains(&format!("application {APPLICATION} loses encrypt, decrypt (grant of the class)")), "{out}");
    assert!(out.contains("recovery window"), "{out}");
    assert!(out.contains("active -> compromised"), "{out}");

    let doc = keyward_json(&tb, &["--dry-run", "key", "destroy", "enc", "--reason", "check", "--reason-code", "superseded"], 0);
    let impact = &doc["impact"];
    assert_eq!(impact["action"], "destroy", "{doc}");
    assert_eq!(impact["data"], "unreadable", "{doc}");
    assert_eq!(impact["applications"][0]["application"], APPLICATION, "{doc}");
    assert_eq!(impact["applications"][0]["operations"], serde_json::json!(["encrypt", "decrypt"]), "{doc}");
    assert_eq!(doc["outcome"]["action"], "destroy", "{doc}");
    // Its approval carries the destruction out: its dry run shows the same impact.
    let id = pending_id(&tb, &["key", "destroy", "--yes", "enc", "--reason", "retired", "--reason-code", "superseded"]);
    let approve = keyward_json(&tb, &["--dry-run", "request", "approve", &id], 0);
    let (shown, asked) = (&approve["impact"], &doc["impact"]);
    for field in ["action", "key", "applications", "data", "to"] {
        assert_eq!(shown[field], asked[field], "{field}: {approve}");
    }
    assert_eq!(shown["pending_requests"][0]["id"], id.as_str(), "the request itself: {approve}");
    assert_eq!(key_show(&tb, "enc").str_at("state"), "active", "a dry-run approval destroyed the key");

    // A signing key: its own grant and the class's, and its signatures stay verifiable.
    let doc = keyward_json(&tb, &["--dry-run", "key", "revoke", "web", "--reason", "check", "--reason-code", "superseded"], 0);
    let impact = &doc["impact"];
    let sources: Vec<&str> = impact["applications"]
        .as_array()
        .expect("applications")
        .iter()
        .map(|a| a["source"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(sources, ["class", "key"], "{doc}");
    assert_eq!(impact["signatures_stay_verifiable"], true, "{doc}");
    assert_eq!(impact["data"], "not_applicable", "{doc}");

    // A suspended key loses nothing it may use now; a pending request on it is named.
    let id = pending_id(&tb, &["key", "resume", "sus"]);
    let doc = keyward_json(&tb, &["--dry-run", "key", "revoke", "sus", "--reason", "check", "--reason-code", "superseded"], 0);
    assert_eq!(doc["impact"]["applications"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["impact"]["pending_requests"][0]["id"], id.as_str(), "{doc}");
});

/// Runs `keyward ARGS` under a pseudo-terminal (`script`), typing `typed`.
pub(crate) fn on_a_terminal(tb: &Env, args: &[&str], typed: &str) -> (Option<i32>, String) {
    let mut line = format!(
        "exec {} --admin-socket {}",
        keyward_bin(tb).display(),
        tb.admin_socket
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(typed.as_bytes())
        .expect("type the answer");
    let out = child.wait_with_output().expect("script(1) ends");
    (out.status.code(), text(&out.stdout))
}

keyward_test!(fn on_a_terminal_only_the_keys_name_confirms_a_revoke(tb) {
    tb.require_agent("confirmation");
    keys(&tb);
    let before = snapshot(&tb);
    for wrong in ["y\n", "WEB\n", "enc\n", "\n"] {
        let (code, shown) = on_a_terminal(&tb, &["key", "revoke", "web", "--reason", "stolen", "--reason-code", "superseded"], wrong);
        assert_eq!(code, Some(2), "{wrong:?}: {shown}");
        assert!(shown.contains("Type the key's name to confirm:"), "{shown}");
        assert!(shown.contains(&format!("application {APPLICATION} loses sign, verify")), "the impact is shown: {shown}");
        assert!(shown.contains("not confirmed"), "{shown}");
        assert_eq!(key_show(&tb, "web").str_at("state"), "active");
    }
    assert_eq!(snapshot(&tb), before, "an unconfirmed revoke changed something");

    let (code, shown) = on_a_terminal(&tb, &["key", "revoke", "web", "--reason", "stolen", "--reason-code", "superseded"], "web\n");
    assert_eq!(code, Some(0), "{shown}");
    assert_eq!(key_show(&tb, "web").str_at("state"), "compromised");

    // Destroy asks the same way; the right name records the request.
    let (code, shown) = on_a_terminal(&tb, &["key", "destroy", "enc", "--reason", "check", "--reason-code", "superseded"], "enc\n");
    assert_eq!(code, Some(3), "{shown}");
    assert!(shown.contains("Type the key's name to confirm:"), "{shown}");

    // Without a terminal and without --yes: refused, nothing sent.
    let before = snapshot(&tb);
    let out = keyward(&tb, &["key", "revoke", "enc", "--reason", "check", "--reason-code", "superseded"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--yes"), "{out:?}");
    assert_eq!(snapshot(&tb), before);
});

fn raw_admin(tb: &Env, request: &AdminRequest) -> AdminResponse {
    use keyward_protocol::admin::hello;
    use keyward_protocol::frame::{read_message, write_message};
    let mut s = std::os::unix::net::UnixStream::connect(&tb.admin_socket).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    hello(&mut s, &mut buf).expect("admin hello");
    write_message(&mut s, request, &mut buf).expect("send");
    read_message(&mut s, &mut buf).expect("the agent's answer")
}

keyward_test!(fn a_dry_run_from_someone_the_roster_does_not_let_revoke_is_refused_like_the_revoke(tb) {
    tb.require_agent("dry runs under a roster");
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    // This process becomes an operator (may not revoke); bob and carol
    // are the officers.
    let officer = |name: &str, uid: u32, seed: u8| {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        format!(
            "\n[[administrator]]\nname = \"{name}\"\nuids = [{uid}]\nroles = [\"security-officer\"]\n\
             public_key = \"ed25519:{}\"\n",
            hex::encode(key.verifying_key().as_bytes())
        )
    };
    let alice = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let bob = key_file(&tb, "bob.pem", BOB_PEM, BOB);
    let roster = roster_toml(uid(), &public_key(&tb, &alice), &public_key(&tb, &bob))
        .replacen("roles = [\"security-officer\"]", "roles = [\"operator\"]", 1);
    assert!(roster.contains("\"operator\""), "{roster}");
    install_policy(&tb, &format!("{}{roster}{}", policy(), officer("carol", 4243, 9)));

    let revoke = KeyRequest::Transition {
        name: "web".into(),
        token: None,
        action: KeyAction::Revoke { rotate: false },
        reason: Some("attack".into()),
        code: Some(keyward_policy::ReasonCode::KeyCompromise),
    };
    let real = raw_admin(&tb, &AdminRequest::Key(revoke.clone()));
    let dry = raw_admin(&tb, &AdminRequest::DryRun(revoke));
    let AdminResponse::KeyErr { kind, message } = &real else {
        panic!("the revoke was not refused: {real:?}");
    };
    assert!(message.contains("may not key.revoke"), "{message}");
    assert_eq!(dry, AdminResponse::KeyErr { kind: *kind, message: message.clone() });
    assert_eq!(key_show(&tb, "web").str_at("state"), "active");
});
