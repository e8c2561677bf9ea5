//! The built `keyward` binary against a fake agent: one admin request on a
//! Unix socket, one canned answer; what a script sees (stdout, stderr,
//! exit code).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyward_protocol::admin::{
    AdminErrorKind, AdminRequest, AdminResponse, ApprovalRequest, KeyAction, KeyInfo, KeyRequest,
    KeyResponse, VersionInfo,
};
use keyward_protocol::frame::{read_message, write_message};

fn keyward(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.arg("--admin-socket")
        .arg(socket)
        .args(args)
        .env_remove("KEYWARD_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `keyward ARGS` against a fake agent that answers its one request
/// with `answer`; returns the request it sent and what it printed.
fn against_fake_agent(args: &[&str], answer: AdminResponse) -> (AdminRequest, Output) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accept without blocking so that a client that dies before it
    // connects fails the test instead of hanging it.
    listener.set_nonblocking(true).unwrap();
    let mut child = keyward(&socket, args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait().unwrap() {
                    let out = child.wait_with_output().unwrap();
                    panic!("keyward exited ({status}) without connecting: {out:?}");
                }
                assert!(Instant::now() < deadline, "keyward never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let mut buf = Vec::new();
    let request: AdminRequest = read_message(&mut stream, &mut buf).unwrap();
    write_message(&mut stream, &answer, &mut buf).unwrap();
    let out = child.wait_with_output().unwrap();
    (request, out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn key_info() -> KeyInfo {
    KeyInfo {
        name: "web-tls".into(),
        token: "keyward".into(),
        owner: "alice".into(),
        purpose: "signing".into(),
        class: "tls".into(),
        algorithm: "ec:p256".into(),
        state: "active".into(),
        created_at: 1_769_882_400,
        activated_at: Some(1_769_882_460),
        rotated_at: None,
        deactivated_at: None,
        protect_until: None,
        process_until: None,
        next_rotation: None,
        scope: vec![],
        last_used_at: None,
        backup_allowed: false,
        versions: vec![VersionInfo {
            version: 1,
            backend_id: vec![0x01, 0xab],
            state: "active".into(),
            created_at: 1_769_882_400,
            deactivated_at: None,
            destroyed_at: None,
        }],
        grants: vec![],
        history: vec![],
    }
}

#[test]
fn success_prints_the_answer_and_exits_0() {
    let (req, out) = against_fake_agent(
        &["key", "show", "web-tls", "--token", "keyward"],
        AdminResponse::Key(Box::new(KeyResponse::Key(Box::new(key_info())))),
    );
    assert_eq!(
        req,
        AdminRequest::Key(KeyRequest::Show {
            name: "web-tls".into(),
            token: Some("keyward".into())
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("name:           web-tls"), "{stdout}");
    assert!(
        stdout.contains("created:        2026-01-31 18:00:00"),
        "{stdout}"
    );
    assert!(stdout.contains("  1        01ab    active"), "{stdout}");
    assert_eq!(text(&out.stderr), "");

    // The same with --json: one document, CKA_IDs in hex.
    let (_, out) = against_fake_agent(
        &["--json", "key", "list"],
        AdminResponse::Key(Box::new(KeyResponse::Keys(vec![key_info()]))),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Keys"][0]["name"], "web-tls");
    assert_eq!(v["Keys"][0]["versions"][0]["backend_id"], "01ab");
}

#[test]
fn a_grant_for_a_while_carries_its_expiry() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (req, out) = against_fake_agent(
        &[
            "grant",
            "add",
            "web-tls",
            "nginx",
            "--ops",
            "sign,verify",
            "--for",
            "8h",
        ],
        AdminResponse::Key(Box::new(KeyResponse::Done("granted".into()))),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "granted\n");
    let AdminRequest::Key(KeyRequest::GrantAdd {
        key,
        application,
        operations,
        until: Some(until),
        token: None,
    }) = req
    else {
        panic!("{req:?}")
    };
    assert_eq!((key.as_str(), application.as_str()), ("web-tls", "nginx"));
    assert_eq!(operations, ["sign", "verify"]);
    let eight_hours = 8 * 3600;
    assert!(
        (before + eight_hours..before + eight_hours + 60).contains(&until),
        "{until} vs {before}"
    );
}

#[test]
fn pending_approval_prints_the_request_id_and_exits_3() {
    let approval = ApprovalRequest {
        id: "req-7f3a".into(),
        action: "destroy".into(),
        target: "keyward/web-tls".into(),
        requester: "alice".into(),
        created_at: 1_769_882_400,
        expires_at: 1_769_968_800,
        status: "pending".into(),
    };
    let (req, out) = against_fake_agent(
        &["key", "destroy", "web-tls", "--reason", "retired"],
        AdminResponse::Key(Box::new(KeyResponse::Pending(approval.clone()))),
    );
    assert_eq!(
        req,
        AdminRequest::Key(KeyRequest::Transition {
            name: "web-tls".into(),
            token: None,
            action: KeyAction::Destroy,
            reason: Some("retired".into())
        })
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("request:    req-7f3a\n"),
        "{out:?}"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("keyward: "), "{stderr}");
    assert!(
        stderr.contains("needs approval: request req-7f3a"),
        "{stderr}"
    );

    let (_, out) = against_fake_agent(
        &["key", "resume", "web-tls", "--json"],
        AdminResponse::Key(Box::new(KeyResponse::Pending(approval))),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Pending"]["id"], "req-7f3a");
}

#[test]
fn not_found_exits_4() {
    let not_found = || AdminResponse::KeyErr {
        kind: AdminErrorKind::NotFound,
        message: "no key \"nope\" on token \"keyward\"".into(),
    };
    let (_, out) = against_fake_agent(&["key", "show", "nope"], not_found());
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "keyward: no key \"nope\" on token \"keyward\"\n"
    );

    let (_, out) = against_fake_agent(&["key", "show", "nope", "--json"], not_found());
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Error"]["kind"], "NotFound");
    assert_eq!(v["Error"]["exit_code"], 4);
}

#[test]
fn status_json_still_works() {
    let status = keyward_protocol::admin::Status {
        agent_version: "0.1.0".into(),
        protocol_version: keyward_protocol::PROTOCOL_VERSION,
        pid: 7,
        uptime_secs: 61,
        socket: "/run/keyward/keyward.sock".into(),
        tokens: vec![],
    };
    let (req, out) = against_fake_agent(&["status", "--json"], AdminResponse::Status(status));
    assert_eq!(req, AdminRequest::Status);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pid"], 7);
}

#[test]
fn an_unreachable_agent_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let out = keyward(&socket, &["key", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("keyward: cannot reach keyward-agent at "),
        "{stderr}"
    );

    let out = keyward(&socket, &["app", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Error"]["kind"], "Unreachable");
}

#[test]
fn usage_errors_exit_2_without_asking_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    for args in [
        &["key", "create", "web"][..],
        &["grant", "add", "k", "a", "--ops", "sing"],
        &[
            "grant", "add", "k", "a", "--ops", "sign", "--until", "tomorrow",
        ],
        &[
            "grant",
            "add",
            "k",
            "a",
            "--ops",
            "sign",
            "--until",
            "2001-01-01T00:00:00Z",
        ],
        &["discover", "--adopt", "01"],
        &["frobnicate"],
    ] {
        let out = keyward(&socket, args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = keyward(&socket, &["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("3  the action needs approval"));
}
