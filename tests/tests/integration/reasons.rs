//! Why a key left service: suspend, revoke and destroy need a reason (more
//! than whitespace) and keep an RFC 5280 reason code, checked by the CLI and
//! by the agent alike; the code is on the key (`key show`, text and JSON),
//! in its history and in the trail's record of the change, and survives a
//! restart.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use keyward_policy::ReasonCode;
use keyward_protocol::admin::{
    hello, AdminErrorKind, AdminRequest, AdminResponse, KeyAction, KeyRequest,
};
use keyward_protocol::frame::{read_message, write_message};
use keyward_tests::admin::{key_show, keyward_ok, keyward_refused, strict_policy};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::Env;

/// One admin request as a raw frame on the admin socket, past the CLI.
fn admin(tb: &Env, request: KeyRequest) -> AdminResponse {
    let mut s = UnixStream::connect(&tb.admin_socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    hello(&mut s, &mut buf).expect("admin hello");
    write_message(&mut s, &AdminRequest::Key(request), &mut buf).expect("send");
    read_message(&mut s, &mut buf).expect("the agent's answer")
}

/// The trail's lifecycle records of key `name`: (operation, reason).
fn lifecycle_of(tb: &Env, name: &str) -> Vec<(String, String)> {
    keyward_ok(tb, &["--json", "audit", "query", "--key", name], 0)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
        .filter(|r| r.str_at("kind") == "lifecycle")
        .map(|r| {
            (
                r.str_at("operation").to_owned(),
                r.str_at("reason").to_owned(),
            )
        })
        .collect()
}

fn state_and_code(tb: &Env, name: &str) -> (String, Option<String>) {
    let k = key_show(tb, name);
    (
        k.str_at("state").to_owned(),
        k.at("reason_code").as_str().map(str::to_owned),
    )
}

keyward_test!(fn a_revocations_code_is_shown_recorded_and_kept_across_a_restart(tb) {
    tb.require_agent("reason codes");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "k", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "k"], 0);
    assert_eq!(state_and_code(&tb, "k"), ("active".into(), None));
    keyward_ok(
        &tb,
        &["key", "revoke", "--yes", "k", "--reason", "laptop stolen", "--reason-code", "key-compromise"],
        0,
    );
    let check = |tb: &Env| {
        assert_eq!(
            state_and_code(tb, "k"),
            ("compromised".into(), Some("keyCompromise".into()))
        );
        let text = keyward_ok(tb, &["--wide", "key", "show", "k"], 0);
        assert!(text.contains("reason code:    keyCompromise (RFC 5280 code 1)\n"), "{text}");
        assert!(text.contains("code=keyCompromise; laptop stolen"), "the history: {text}");
        let trail = lifecycle_of(tb, "k");
        assert!(
            trail.iter().any(|(op, why)| op == "revoke"
                && why.ends_with("from active to compromised: code=keyCompromise; laptop stolen")),
            "{trail:#?}"
        );
    };
    check(&tb);
    tb.stop_agent();
    tb.start_agent();
    check(&tb);
    keyward_ok(&tb, &["audit", "verify"], 0);
});

keyward_test!(fn a_suspension_is_on_hold_unless_told_and_a_missing_reason_or_code_changes_nothing(tb) {
    tb.require_agent("reason codes");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "k", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "k"], 0);
    let trail_before = lifecycle_of(&tb, "k");

    // The CLI refuses before sending anything (exit 2).
    for args in [
        &["key", "suspend", "k"][..],
        &["key", "suspend", "k", "--reason", ""],
        &["key", "suspend", "k", "--reason", "  \t"],
        &["key", "revoke", "--yes", "k", "--reason", " ", "--reason-code", "superseded"],
        &["key", "revoke", "--yes", "k", "--reason", "old"],
        &["key", "revoke", "--yes", "k", "--reason", "old", "--reason-code", "certificateHold"],
        &["key", "revoke", "--yes", "k", "--reason", "old", "--reason-code", "removeFromCRL"],
        &["key", "destroy", "--yes", "k", "--reason", "old"],
        &["key", "destroy", "--yes", "k", "--reason-code", "superseded"],
        &["key", "deactivate", "k", "--reason-code", "superseded"],
    ] {
        let stderr = keyward_refused(&tb, args, 2);
        assert!(!stderr.is_empty(), "{args:?}");
    }
    let stderr = keyward_refused(&tb, &["key", "revoke", "--yes", "k", "--reason", "x", "--reason-code", "nope"], 2);
    assert!(stderr.contains("keyCompromise") && stderr.contains("cessationOfOperation"), "{stderr}");

    // The agent refuses the same requests sent past the CLI (exit 2's kind),
    // and nothing changes.
    let raw = |action, reason: Option<&str>, code| KeyRequest::Transition {
        name: "k".into(),
        token: None,
        action,
        reason: reason.map(Into::into),
        code,
    };
    let revoke = KeyAction::Revoke { rotate: false };
    let kc = Some(ReasonCode::KeyCompromise);
    for (request, says) in [
        (raw(revoke, Some(""), kc), "needs a reason"),
        (raw(revoke, Some(" \n\t "), kc), "needs a reason"),
        (raw(revoke, None, kc), "needs a reason"),
        (raw(KeyAction::Suspend, None, None), "needs a reason"),
        (raw(KeyAction::Destroy, Some(""), Some(ReasonCode::Superseded)), "needs a reason"),
        (raw(revoke, Some("leak"), None), "needs an RFC 5280 reason code"),
        (raw(KeyAction::Destroy, Some("old"), None), "needs an RFC 5280 reason code"),
        (raw(revoke, Some("leak"), Some(ReasonCode::CertificateHold)), "certificateHold"),
        (raw(KeyAction::Deactivate, Some("done"), kc), "takes no reason code"),
    ] {
        match admin(&tb, request.clone()) {
            AdminResponse::KeyErr { kind: AdminErrorKind::Invalid, message } => {
                assert!(message.contains(says), "{request:?}: {message}")
            }
            other => panic!("{request:?} answered {other:?}"),
        }
    }
    assert_eq!(state_and_code(&tb, "k"), ("active".into(), None));
    let trail = lifecycle_of(&tb, "k");
    assert_eq!(trail, trail_before, "no lifecycle record was written");

    // A suspension without a code is on hold; with one, it keeps it.
    keyward_ok(&tb, &["key", "suspend", "k", "--reason", "holiday"], 0);
    assert_eq!(
        state_and_code(&tb, "k"),
        ("suspended".into(), Some("certificateHold".into()))
    );
    // Destroying needs approval: the code is part of what is approved.
    let out = keyward_ok(
        &tb,
        &["--json", "key", "destroy", "--yes", "k", "--reason", "retired", "--reason-code", "CESSATIONOFOPERATION"],
        3,
    );
    assert!(out.contains(r#"\"code\":\"cessationOfOperation\""#), "{out}");
});
