//! The built `keyward` binary against a fake agent: one admin request on a
//! Unix socket, one canned answer; what a script sees (stdout, stderr,
//! exit code).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyward_protocol::admin::AdminHello;
use keyward_protocol::admin::{
    AdminErrorKind, AdminRequest, AdminResponse, ApprovalRequest, AuditAnchor, AuditProblem,
    AuditRecordInfo, AuditRequest, AuditResponse, AuditVerification, KeyAction, KeyInfo,
    KeyRequest, KeyResponse, VersionInfo,
};
use keyward_protocol::frame::{read_message, write_message};
use keyward_protocol::plan::{Plan, PlanOutcome};
use keyward_protocol::{VersionRange, VersionRefusal, ADMIN_VERSIONS};

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
    let (mut requests, out) = against_fake_agent_serving(args, vec![answer]);
    assert_eq!(requests.len(), 1);
    (requests.remove(0), out)
}

/// Runs `keyward ARGS` against a fake agent that answers one connection
/// per answer, in order, and then goes away (the socket is closed and
/// removed); returns the requests it got and what keyward printed. Each
/// connection's hello is answered with this build's admin version.
fn against_fake_agent_serving(
    args: &[&str],
    answers: Vec<AdminResponse>,
) -> (Vec<AdminRequest>, Output) {
    let hello = AdminResponse::Hello(AdminHello {
        version: ADMIN_VERSIONS.max,
        agent_version: "0.1.0".into(),
    });
    let answers = answers.into_iter().map(|a| (Some(hello.clone()), Some(a)));
    let (mut requests, out) = against_fake_agent_greeting_env(args, &[], answers.collect());
    requests.retain(|r| !matches!(r, AdminRequest::Hello { .. }));
    (requests, out)
}

/// Runs `keyward ARGS` against a fake agent that reads each connection's
/// hello and answers it with the first of a pair (`None`: hangs up, as an
/// agent from before negotiated versions does), then reads the request and
/// answers the second (`None`: reads nothing more). Returns the requests
/// it got (hellos included) and what keyward printed.
fn against_fake_agent_greeting(
    args: &[&str],
    answers: Vec<(Option<AdminResponse>, Option<AdminResponse>)>,
) -> (Vec<AdminRequest>, Output) {
    against_fake_agent_greeting_env(args, &[], answers)
}

/// [`against_fake_agent_greeting`] with `env` set for keyward.
fn against_fake_agent_greeting_env(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    answers: Vec<(Option<AdminResponse>, Option<AdminResponse>)>,
) -> (Vec<AdminRequest>, Output) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accept without blocking so that a client that dies before it
    // connects fails the test instead of hanging it.
    listener.set_nonblocking(true).unwrap();
    let mut child = keyward(&socket, args)
        .env_remove("KEYWARD_ADMIN_PIN")
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut requests = Vec::new();
    for (hello, answer) in answers {
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
        let first: AdminRequest = read_message(&mut stream, &mut buf).unwrap();
        assert_eq!(
            first,
            AdminRequest::Hello {
                versions: ADMIN_VERSIONS
            },
            "keyward did not open with its hello"
        );
        requests.push(first);
        let Some(hello) = hello else { continue };
        write_message(&mut stream, &hello, &mut buf).unwrap();
        let Some(answer) = answer else { continue };
        let request: AdminRequest = read_message(&mut stream, &mut buf).unwrap();
        write_message(&mut stream, &answer, &mut buf).unwrap();
        requests.push(request);
    }
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    let out = child.wait_with_output().unwrap();
    (requests, out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn key_info() -> KeyInfo {
    KeyInfo {
        name: "web-tls".into(),
        token: "keyward".into(),
        owner: "alice".into(),
        purpose: "signing".parse().unwrap(),
        class: "tls".into(),
        algorithm: "ec:p256".parse().unwrap(),
        state: "active".parse().unwrap(),
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
            state: "active".parse().unwrap(),
            created_at: 1_769_882_400,
            deactivated_at: None,
            destroyed_at: None,
        }],
        grants: vec![],
        history: vec![],
        recovery_until: None,
        held_by_backups: Vec::new(),
        certificates: Vec::new(),
        reason_code: None,
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
    assert_eq!(v[0]["name"], "web-tls");
    assert_eq!(v[0]["versions"][0]["backend_id"], "01ab");
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
    assert_eq!(
        operations,
        [
            keyward_policy::Operation::Sign,
            keyward_policy::Operation::Verify
        ]
    );
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
        status: "pending".parse().unwrap(),
        reason: "retired".into(),
        parameters: "{}".into(),
        needed: 2,
        decisions: Vec::new(),
        outcome: String::new(),
    };
    let (req, out) = against_fake_agent(
        &[
            "key",
            "destroy",
            "--yes",
            "web-tls",
            "--reason",
            "retired",
            "--reason-code",
            "superseded",
        ],
        AdminResponse::Key(Box::new(KeyResponse::Pending(approval.clone()))),
    );
    assert_eq!(
        req,
        AdminRequest::Key(KeyRequest::Transition {
            name: "web-tls".into(),
            token: None,
            action: KeyAction::Destroy,
            reason: Some("retired".into()),
            code: Some(keyward_policy::ReasonCode::Superseded),
        })
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("request:     req-7f3a\n"),
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
    assert_eq!(v["id"], "req-7f3a");
}

/// Test keys (`openssl genpkey`), used nowhere else.
const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPOGCGsfRU2HCAldnKdEt5V23mfsXNOIRSHUCtrKub/3
-----END PRIVATE KEY-----
";
const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQJiguAxcXLSB/uWH
Ky3mdDuPhW6zNxKugQZ+CcME+1ahRANCAARAJEsLb5pArv2cNuQPIqlxG5IIEetY
n069l2roYogmfYT4+diPUBO5AO8uwQqJ+5hatv8VuimI3LhtY53aD6c2
-----END PRIVATE KEY-----
";

/// `text` in a file of `dir` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A pending request that expires long after any test runs.
fn open_request() -> ApprovalRequest {
    ApprovalRequest {
        id: "9f0e1d2c3b4a59687766554433221100".into(),
        action: "resume".into(),
        target: "keyward/web-tls".into(),
        parameters: r#"{"rotate":false}"#.into(),
        requester: "alice".into(),
        reason: "incident closed".into(),
        created_at: 1_769_882_400,
        expires_at: 4_000_000_000,
        status: "pending".parse().unwrap(),
        needed: 2,
        decisions: Vec::new(),
        outcome: String::new(),
    }
}

fn requests(r: ApprovalRequest) -> AdminResponse {
    AdminResponse::Key(Box::new(KeyResponse::Requests(vec![r])))
}

/// `keyward admin-key show KEY`, run without any agent, parsed back.
fn admin_key(key: &Path) -> keyward_policy::AdministratorKey {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["admin-key", "show"])
        .arg(key)
        .env("KEYWARD_ADMIN_SOCKET", "/nonexistent/admin.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = text(&out.stdout);
    let value = line
        .strip_prefix("public_key = \"")
        .and_then(|l| l.strip_suffix("\"\n"))
        .unwrap_or_else(|| panic!("{line:?}"));
    keyward_policy::AdministratorKey::parse(value).unwrap()
}

#[test]
fn approve_and_deny_sign_the_digest_of_the_request_the_agent_showed() {
    use keyward_domain::Decision;
    use keyward_protocol::approval::decision_statement;
    let dir = tempfile::tempdir().unwrap();
    for (pem, verb, decision) in [
        (ED25519_PEM, "approve", Decision::Approve),
        (P256_PEM, "deny", Decision::Deny),
    ] {
        let key = secret_file(dir.path(), verb, pem, 0o600);
        let shown = open_request();
        let updated = ApprovalRequest {
            decisions: vec![keyward_protocol::admin::DecisionInfo {
                administrator: "bob".into(),
                decision,
                at: 1_769_900_000,
            }],
            ..shown.clone()
        };
        let (sent, out) = against_fake_agent_serving(
            &["request", verb, &shown.id, "--key", key.to_str().unwrap()],
            vec![requests(shown.clone()), requests(updated)],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(
            sent[0],
            AdminRequest::Key(KeyRequest::RequestShow {
                id: shown.id.clone()
            })
        );
        let AdminRequest::Key(KeyRequest::RequestDecide {
            id,
            decision: d,
            signature: Some(signature),
        }) = &sent[1]
        else {
            panic!("{:?}", sent[1])
        };
        assert_eq!((id, *d), (&shown.id, decision));
        // The roster's verifier, with the key `admin-key show` prints.
        let digest = shown.content().digest();
        let public = admin_key(&key);
        public
            .verify(&decision_statement(decision, &digest), signature)
            .unwrap();
        // Bound to this request: the same decision on a request that
        // differs in one field does not verify.
        let other = ApprovalRequest {
            target: "keyward/other".into(),
            ..shown.clone()
        };
        assert!(public
            .verify(
                &decision_statement(decision, &other.content().digest()),
                signature
            )
            .is_err());
        // The printed record: the request in full and the digest.
        let stdout = text(&out.stdout);
        for want in [
            format!("request:     {}\n", shown.id),
            "action:      resume\n".into(),
            "parameters:  {\"rotate\": false}\n".into(),
            "reason:      incident closed\n".into(),
            "needed:      2 (0 so far)\n".into(),
            format!("digest:      {}\n", hex::encode(digest)),
            format!("{verb}: sent, signed by {}", public.to_text()),
            format!("decision:    bob {verb} "),
        ] {
            assert!(stdout.contains(&want), "{want:?} missing in\n{stdout}");
        }
    }
}

#[test]
fn a_decision_without_a_usable_key_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = secret_file(dir.path(), "open.pem", ED25519_PEM, 0o640);
    let shown = open_request();
    let (sent, out) = against_fake_agent_serving(
        &[
            "request",
            "approve",
            &shown.id,
            "--key",
            open.to_str().unwrap(),
        ],
        vec![requests(shown.clone())],
    );
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("open to group or others (mode 640)"),
        "{out:?}"
    );
    // Not pending any more: refused here, exit 6.
    let done = ApprovalRequest {
        status: "executed".parse().unwrap(),
        ..shown.clone()
    };
    let key = secret_file(dir.path(), "k.pem", ED25519_PEM, 0o600);
    let (sent, out) = against_fake_agent_serving(
        &[
            "request",
            "deny",
            &shown.id,
            "--key",
            key.to_str().unwrap(),
            "--json",
        ],
        vec![requests(done)],
    );
    assert_eq!((sent.len(), out.status.code()), (1, Some(6)), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "conflict");
}

#[test]
fn an_unsigned_decision_and_a_cancel() {
    let shown = open_request();
    let (sent, out) = against_fake_agent_serving(
        &["request", "approve", &shown.id, "--json"],
        vec![
            requests(shown.clone()),
            AdminResponse::Key(Box::new(KeyResponse::Done("approved; executed".into()))),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        sent[1],
        AdminRequest::Key(KeyRequest::RequestDecide {
            id: shown.id.clone(),
            decision: keyward_domain::Decision::Approve,
            signature: None,
        })
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], hex::encode(shown.content().digest()));
    assert_eq!(v["signed_by"], serde_json::Value::Null);
    assert_eq!(v["answer"]["done"], "approved; executed");
    assert!(text(&out.stderr).contains("sent unsigned"));

    let (req, out) = against_fake_agent(
        &["request", "cancel", &shown.id, "--reason", "asked twice"],
        AdminResponse::Key(Box::new(KeyResponse::Done("cancelled".into()))),
    );
    assert_eq!(
        req,
        AdminRequest::Key(KeyRequest::RequestCancel {
            id: shown.id.clone(),
            reason: Some("asked twice".into()),
        })
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "cancelled\n".into())
    );

    // `request show` prints the digest computed here.
    let (_, out) = against_fake_agent(&["request", "show", &shown.id], requests(shown.clone()));
    assert!(text(&out.stdout).contains(&hex::encode(shown.content().digest())));
}

#[test]
fn key_recover_sends_the_windows_length_and_reason_and_waits_for_approval() {
    let approval = ApprovalRequest {
        id: "req-0b1c".into(),
        action: "recover".into(),
        target: "keyward/old".into(),
        requester: "alice".into(),
        created_at: 1_769_882_400,
        expires_at: 1_769_968_800,
        status: "pending".parse().unwrap(),
        reason: "read the archive".into(),
        parameters: r#"{"from":"compromised","operations":["decrypt"],"until":1770487200}"#.into(),
        needed: 1,
        decisions: Vec::new(),
        outcome: String::new(),
    };
    let (req, out) = against_fake_agent(
        &[
            "key",
            "recover",
            "old",
            "--for",
            "7d",
            "--reason",
            "read the archive",
        ],
        AdminResponse::Key(Box::new(KeyResponse::Pending(approval))),
    );
    assert_eq!(
        req,
        AdminRequest::Key(KeyRequest::Recover {
            name: "old".into(),
            token: None,
            seconds: 7 * 86_400,
            reason: "read the archive".into(),
        })
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains("needs approval: request req-0b1c"),
        "{out:?}"
    );
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
    assert_eq!(v["error"]["kind"], "not_found");
    assert_eq!(v["error"]["exit_code"], 4);
}

#[test]
fn status_json_still_works() {
    let status = keyward_protocol::admin::Status {
        agent_version: "0.1.0".into(),
        app_protocol: keyward_protocol::APP_VERSIONS,
        admin_protocol: keyward_protocol::ADMIN_VERSIONS,
        pid: 7,
        uptime_secs: 61,
        connections: 0,
        socket_events: Vec::new(),
        pending_requests: 0,
        socket: "/run/keyward/keyward.sock".into(),
        tokens: vec![],
        policy: Default::default(),
        keys_by_state: Vec::new(),
        audit: Default::default(),
        scheduler_last_run: None,
        scheduler_next_run: None,
        store: Default::default(),
    };
    let (req, out) = against_fake_agent(
        &["status", "--json"],
        AdminResponse::Status(Box::new(status)),
    );
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
    assert_eq!(v["error"]["kind"], "unreachable");
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
        &["audit", "tail", "-n", "0"],
        &["audit", "query", "--since", "yesterday"],
        &["audit", "query", "--result", "ok"],
        &[
            "audit",
            "query",
            "--since",
            "2026-02-01T00:00:00Z",
            "--until",
            "2026-01-01T00:00:00Z",
        ],
    ] {
        let out = keyward(&socket, args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = keyward(&socket, &["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("3  the action needs approval"));
    assert!(text(&out.stdout).contains("8  the audit trail does not verify"));
}

fn verification(first_bad: Option<AuditProblem>) -> AdminResponse {
    AdminResponse::Audit(Box::new(AuditResponse::Verified(AuditVerification {
        records: 120,
        head_seq: 120,
        checkpoints_ok: 2,
        sealed_through: 100,
        unsealed: 20,
        anchors_ok: 0,
        first_bad,
    })))
}

fn audit_record(seq: u64) -> AuditRecordInfo {
    AuditRecordInfo {
        seq,
        at: 1_769_882_400,
        micros: 123_456,
        kind: "refusal".into(),
        actor: "application".into(),
        application: Some("nginx".into()),
        uid: Some(33),
        pid: Some(4242),
        exe: Some("/usr/sbin/nginx".into()),
        token: Some("keyward".into()),
        key: Some("web-tls".into()),
        key_version: Some(2),
        operation: "C_Decrypt".into(),
        mechanism: Some(0x1), // CKM_RSA_PKCS
        result: 0x68,         // CKR_KEY_FUNCTION_NOT_PERMITTED
        reason: "no grant for decrypt".into(),
        count: 1,
        span_us: 0,
        host: None,
    }
}

fn audit_records(seqs: impl IntoIterator<Item = u64>) -> AdminResponse {
    AdminResponse::Audit(Box::new(AuditResponse::Records(
        seqs.into_iter().map(audit_record).collect(),
    )))
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn audit_verify_intact_exits_0() {
    let (req, out) = against_fake_agent(&["audit", "verify"], verification(None));
    assert_eq!(req, AdminRequest::Audit(AuditRequest::Verify));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "records checked:       120\n\
         head seq:              120\n\
         checkpoints verified:  2\n\
         sealed through:        100\n\
         unsealed:              20\n\
         intact\n"
    );
    assert_eq!(text(&out.stderr), "");

    let (_, out) = against_fake_agent(&["audit", "verify", "--json"], verification(None));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], 120);
    assert_eq!(v["first_bad"], serde_json::Value::Null);
}

#[test]
fn audit_verify_tampered_exits_8_and_names_the_record() {
    let tampered = || {
        verification(Some(AuditProblem {
            seq: 57,
            problem: "stored hash does not match the record".into(),
            anchor: false,
        }))
    };
    let (_, out) = against_fake_agent(&["audit", "verify"], tampered());
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with("FIRST BAD RECORD: 57: stored hash does not match the record\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("intact"), "{stdout}");
    assert_eq!(
        text(&out.stderr),
        "keyward: the audit trail does not verify: record 57: stored hash does not match the record\n"
    );

    let (_, out) = against_fake_agent(&["--json", "audit", "verify"], tampered());
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_bad"]["seq"], 57);
    assert_eq!(v["checkpoints_ok"], 2);
}

fn an_anchor(seq: u64) -> AuditAnchor {
    AuditAnchor {
        seq,
        head: [seq as u8; 32],
        created_at: 1_769_882_400 + seq as i64,
        signature: vec![0x30, 0x45, seq as u8],
    }
}

#[test]
fn audit_anchor_prints_one_line_that_verify_reads_back() {
    let answer = AdminResponse::Audit(Box::new(AuditResponse::Anchor(an_anchor(120))));
    let (req, out) = against_fake_agent(&["audit", "anchor"], answer.clone());
    assert_eq!(req, AdminRequest::Audit(AuditRequest::Anchor));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = text(&out.stdout);
    assert_eq!(line, format!("{}\n", an_anchor(120).to_line()));
    assert!(
        line.starts_with("keyward-anchor 1 seq=120 head=7878"),
        "{line}"
    );

    let (_, out) = against_fake_agent(&["--json", "audit", "anchor"], answer);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seq"], 120);
    assert_eq!(v["head"], "78".repeat(32));
    assert_eq!(v["signature"], "304578");
    let json = text(&out.stdout);

    // A file of both forms, with a comment: every anchor goes to the agent.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anchors");
    std::fs::write(&file, format!("# host a\n{line}\n{json}")).unwrap();
    let (req, out) = against_fake_agent(
        &["audit", "verify", "--anchor", file.to_str().unwrap()],
        verification(None),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        req,
        AdminRequest::Audit(AuditRequest::VerifyAnchored {
            anchors: vec![an_anchor(120), an_anchor(120)]
        })
    );
}

#[test]
fn audit_verify_anchor_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let _hello: AdminRequest = read_message(&mut stream, &mut buf).unwrap();
        let hello = AdminResponse::Hello(AdminHello {
            version: ADMIN_VERSIONS.max,
            agent_version: "0.1.0".into(),
        });
        write_message(&mut stream, &hello, &mut buf).unwrap();
        let request: AdminRequest = read_message(&mut stream, &mut buf).unwrap();
        write_message(&mut stream, &verification(None), &mut buf).unwrap();
        request
    });
    let mut child = keyward(&socket, &["audit", "verify", "--anchor", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "{}\n{}",
            an_anchor(40).to_line(),
            an_anchor(80).to_line()
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        server.join().unwrap(),
        AdminRequest::Audit(AuditRequest::VerifyAnchored {
            anchors: vec![an_anchor(40), an_anchor(80)]
        })
    );
}

#[test]
fn audit_verify_a_rolled_back_trail_exits_9() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anchors");
    std::fs::write(&file, an_anchor(80).to_line()).unwrap();
    let rolled_back = AdminResponse::Audit(Box::new(AuditResponse::Verified(AuditVerification {
        records: 70,
        head_seq: 70,
        checkpoints_ok: 1,
        sealed_through: 40,
        unsealed: 30,
        anchors_ok: 0,
        first_bad: Some(AuditProblem {
            seq: 71,
            problem: "missing, though an anchor kept off the host holds the head at 80".into(),
            anchor: true,
        }),
    })));
    let args = ["audit", "verify", "--anchor", file.to_str().unwrap()];
    let (_, out) = against_fake_agent(&args, rolled_back.clone());
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(text(&out.stdout).contains("anchors held:"), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "keyward: the audit trail no longer holds an anchored head: record 71: \
         missing, though an anchor kept off the host holds the head at 80\n"
    );
    let mut json = vec!["--json"];
    json.extend_from_slice(&args);
    let (_, out) = against_fake_agent(&json, rolled_back);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_bad"]["anchor"], true);
}

#[test]
fn a_bad_anchor_file_is_a_usage_error_without_asking_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    // No agent: a bad file must fail before any connection.
    let socket = dir.path().join("admin.sock");
    let line = an_anchor(80).to_line();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "no anchor in it"),
        (
            "garbage",
            b"hello\nworld\n".to_vec(),
            "line 1: not an anchor",
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x80], "not text"),
        (
            "truncated",
            line.as_bytes()[..60].to_vec(),
            "line 1: head is not 64 hex digits",
        ),
        (
            "cut-sig",
            format!("{line}\n{}", &line[..line.len() - 3]).into_bytes(),
            "line 2: sig is not a hex signature",
        ),
    ];
    for (name, bytes, want) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let out = keyward(
            &socket,
            &["audit", "verify", "--anchor", file.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("keyward: anchor file {}: ", file.display()))
                && err.contains(want),
            "{name}: {err}"
        );
        assert!(text(&out.stdout).is_empty(), "{name}: {out:?}");
    }
    let missing = dir.path().join("missing");
    let out = keyward(
        &socket,
        &[
            "--json",
            "audit",
            "verify",
            "--anchor",
            missing.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read"),
        "{v}"
    );
}

#[test]
fn audit_tail_json_is_one_record_per_line() {
    let (req, out) = against_fake_agent(
        &["audit", "tail", "-n", "3", "--json"],
        audit_records(8..=10),
    );
    assert_eq!(
        req,
        AdminRequest::Audit(AuditRequest::Tail {
            n: 3,
            after_seq: None
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for (line, seq) in lines.iter().zip(8..) {
        assert_eq!(line["seq"], seq);
        assert_eq!(line["application"], "nginx");
        assert_eq!(line["result"], "CKR_KEY_FUNCTION_NOT_PERMITTED");
        assert!(
            line["at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert_eq!(line["micros"], 123_456);
    }
    assert_eq!(text(&out.stderr), "");

    // The default count, as a table.
    let (req, out) = against_fake_agent(&["audit", "tail"], audit_records(1..=1));
    assert_eq!(
        req,
        AdminRequest::Audit(AuditRequest::Tail {
            n: 20,
            after_seq: None
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // 100 columns: the reason gives first.
    assert_eq!(
        text(&out.stdout),
        "SEQ  TIME                  ACTOR  KEY         OPERATION  RESULT                          REASON\n\
         1    2026-01-31 18:00:00Z  nginx  web-tls v2  C_Decrypt  CKR_KEY_FUNCTION_NOT_PERMITTED  no grant f…\n"
    );
    // --wide: every column, whole.
    let (_, out) = against_fake_agent(&["--wide", "audit", "tail"], audit_records(1..=1));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "SEQ  TIME                  KIND     ACTOR  KEY         OPERATION  MECHANISM     RESULT                          REASON\n\
         1    2026-01-31 18:00:00Z  refusal  nginx  web-tls v2  C_Decrypt  CKM_RSA_PKCS  CKR_KEY_FUNCTION_NOT_PERMITTED  no grant for decrypt\n"
    );
}

#[test]
fn audit_query_builds_its_request_from_the_flags() {
    let (req, out) = against_fake_agent(
        &[
            "audit",
            "query",
            "--key",
            "web-tls",
            "--app",
            "nginx",
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            "2026-01-31T20:00:00+02:00",
            "--result",
            "denied",
            "--limit",
            "50",
            "--json",
        ],
        audit_records(4..=5),
    );
    assert_eq!(
        req,
        AdminRequest::Audit(AuditRequest::Query {
            key: Some("web-tls".into()),
            application: Some("nginx".into()),
            since: Some(1_767_225_600),
            until: Some(1_769_882_400),
            denied_only: true,
            limit: 50
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_lines(&out).len(), 2);

    let (req, out) = against_fake_agent(&["audit", "query"], audit_records([]));
    assert_eq!(
        req,
        AdminRequest::Audit(AuditRequest::Query {
            key: None,
            application: None,
            since: None,
            until: None,
            denied_only: false,
            limit: 1000
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "no audit records\n");

    // The agent's errors keep their exit codes; with --json one error line.
    let (_, out) = against_fake_agent(
        &["audit", "query", "--key", "nope", "--json"],
        AdminResponse::KeyErr {
            kind: AdminErrorKind::NotFound,
            message: "no key \"nope\"".into(),
        },
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["error"]["kind"], "not_found");
    assert_eq!(text(&out.stderr), "keyward: no key \"nope\"\n");
}

#[test]
fn audit_tail_follow_polls_for_new_records() {
    // Two answers, then the agent goes away: keyward prints what it got
    // and exits 1 (unreachable) instead of polling forever.
    let (requests, out) = against_fake_agent_serving(
        &["audit", "tail", "-n", "2", "--follow", "--json"],
        vec![audit_records(5..=6), audit_records(7..=7)],
    );
    assert_eq!(
        requests,
        [
            AdminRequest::Audit(AuditRequest::Tail {
                n: 2,
                after_seq: None
            }),
            AdminRequest::Audit(AuditRequest::Tail {
                n: 1000,
                after_seq: Some(6)
            }),
        ]
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    let seqs: Vec<Option<u64>> = lines.iter().map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, [Some(5), Some(6), Some(7), None]);
    assert_eq!(lines[3]["error"]["kind"], "unreachable");
    assert!(
        text(&out.stderr).starts_with("keyward: cannot reach keyward-agent at "),
        "{out:?}"
    );
}

/// An agent that speaks only newer admin-protocol versions: keyward says
/// both sides' versions and that keyward must be upgraded, and sends no
/// request.
#[test]
fn a_newer_agent_without_a_common_admin_version_is_named() {
    let newer = VersionRange {
        min: ADMIN_VERSIONS.max + 1,
        max: ADMIN_VERSIONS.max + 2,
    };
    let refusal = AdminResponse::NoCommonVersion(VersionRefusal {
        versions: newer,
        agent_version: "9.0.0".into(),
    });
    let (requests, out) =
        against_fake_agent_greeting(&["status"], vec![(Some(refusal.clone()), None)]);
    assert_eq!(
        requests.len(),
        1,
        "a request after the refused hello: {requests:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("no admin protocol version in common"), "{err}");
    assert!(
        err.contains(&format!("this keyward speaks {ADMIN_VERSIONS}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("keyward-agent 9.0.0 speaks {newer}")),
        "{err}"
    );
    assert!(err.contains("upgrade this keyward"), "{err}");
    assert!(!err.contains("malformed"), "{err}");
    // The same for scripts.
    let (_, out) = against_fake_agent_greeting(&["status", "--json"], vec![(Some(refusal), None)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "version", "{out:?}");
    assert_eq!(v["error"]["exit_code"], 1);
}

/// An agent that speaks only older admin-protocol versions: keyward says
/// to upgrade the agent.
#[test]
fn an_older_agent_without_a_common_admin_version_is_named() {
    let older = VersionRange::only(ADMIN_VERSIONS.min - 1);
    let refusal = AdminResponse::NoCommonVersion(VersionRefusal {
        versions: older,
        agent_version: "0.0.9".into(),
    });
    let (_, out) = against_fake_agent_greeting(&["key", "list"], vec![(Some(refusal), None)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("keyward-agent 0.0.9 speaks {older}")),
        "{err}"
    );
    assert!(err.contains("upgrade keyward-agent 0.0.9"), "{err}");
}

/// An agent from before negotiated versions cannot read the hello and
/// hangs up: keyward says so and to upgrade the agent, not that a message
/// was malformed.
#[test]
fn an_agent_from_before_negotiated_versions_is_named() {
    let (_, out) = against_fake_agent_greeting(&["status"], vec![(None, None)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("without answering the admin hello"), "{err}");
    assert!(err.contains("upgrade keyward-agent"), "{err}");
}

/// A SoftHSM2 token of the administrator's own, in `dir`, with a P-256
/// key pair (`bob-p256`, id 01) and an Ed25519 one (`bob-ed25519`, id 02)
/// made by `pkcs11-tool`. Returns the library and the `SOFTHSM2_CONF`.
fn admin_token(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let lib = keyward_testbed::softhsm_lib().unwrap();
    let conf = keyward_testbed::softhsm_token(dir, "admin-bob", "1234", "5678").unwrap();
    for (kind, label, id) in [
        ("EC:prime256v1", "bob-p256", "01"),
        ("EC:edwards25519", "bob-ed25519", "02"),
    ] {
        // Throw-away test PINs only: these are arguments.
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &conf)
            .arg("--module")
            .arg(&lib)
            .args(["--token-label", "admin-bob", "--login", "--pin", "1234"])
            .args([
                "--keypairgen",
                "--key-type",
                kind,
                "--label",
                label,
                "--id",
                id,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("pkcs11-tool (apt-get install opensc)");
        assert!(out.status.success(), "pkcs11-tool {kind}: {out:?}");
    }
    (lib, conf)
}

/// `keyward admin-key show URI --module LIB`, parsed back; no PIN given.
fn token_admin_key(uri: &str, lib: &Path, conf: &Path) -> keyward_policy::AdministratorKey {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["admin-key", "show", uri, "--module"])
        .arg(lib)
        .env("SOFTHSM2_CONF", conf)
        .env_remove("KEYWARD_ADMIN_PIN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = text(&out.stdout);
    let value = line
        .strip_prefix("public_key = \"")
        .and_then(|l| l.strip_suffix("\"\n"))
        .unwrap_or_else(|| panic!("{line:?}"));
    keyward_policy::AdministratorKey::parse(value).unwrap()
}

#[test]
fn a_key_on_a_softhsm_token_signs_decisions_through_a_pkcs11_uri() {
    use keyward_domain::Decision;
    use keyward_protocol::approval::decision_statement;
    let dir = tempfile::tempdir().unwrap();
    let (lib, conf) = admin_token(dir.path());
    let pin_file = secret_file(dir.path(), "pin", "1234\n", 0o600);
    let shown = open_request();
    let digest = shown.content().digest();

    let p256 = token_admin_key("pkcs11:token=admin-bob;object=bob-p256", &lib, &conf);
    assert!(p256.to_text().starts_with("p256:04"), "{p256:?}");
    let ed25519 = token_admin_key("pkcs11:token=admin-bob;id=%02;type=public", &lib, &conf);
    assert!(ed25519.to_text().starts_with("ed25519:"), "{ed25519:?}");

    // P-256, the library by --module, the PIN from the environment.
    let conf_env = conf.as_os_str();
    let lib_text = lib.to_str().unwrap();
    let (sent, out) = against_fake_agent_greeting_env(
        &[
            "request",
            "approve",
            &shown.id,
            "--key",
            "pkcs11:token=admin-bob;id=%01",
            "--module",
            lib_text,
        ],
        &[
            ("SOFTHSM2_CONF", conf_env),
            ("KEYWARD_ADMIN_PIN", std::ffi::OsStr::new("1234")),
        ],
        vec![
            (Some(hello()), Some(requests(shown.clone()))),
            (Some(hello()), Some(requests(shown.clone()))),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let signature = decided_signature(&sent, Decision::Approve);
    p256.verify(&decision_statement(Decision::Approve, &digest), &signature)
        .unwrap();
    assert!(text(&out.stdout).contains(&format!("signed by {}", p256.to_text())));

    // Ed25519, the library and the PIN file named in the URI.
    let uri = format!(
        "pkcs11:token=admin-bob;object=bob-ed25519?module-path={}&pin-source=file:{}",
        lib_text,
        pin_file.display()
    );
    let (sent, out) = against_fake_agent_greeting_env(
        &["request", "deny", &shown.id, "--key", &uri],
        &[("SOFTHSM2_CONF", conf_env)],
        vec![
            (Some(hello()), Some(requests(shown.clone()))),
            (Some(hello()), Some(requests(shown.clone()))),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let signature = decided_signature(&sent, Decision::Deny);
    ed25519
        .verify(&decision_statement(Decision::Deny, &digest), &signature)
        .unwrap();
    assert!(p256
        .verify(&decision_statement(Decision::Deny, &digest), &signature)
        .is_err());

    // A wrong PIN, a PIN file open to others, a URI that names no key:
    // clear errors, no decision sent, no PIN repeated.
    let open_pin = secret_file(dir.path(), "open-pin", "1234\n", 0o644);
    for (uri, pin, why) in [
        (
            "pkcs11:token=admin-bob;id=%01".to_owned(),
            "9999",
            "refused the PIN",
        ),
        (
            format!(
                "pkcs11:token=admin-bob;id=%01?pin-source=file:{}",
                open_pin.display()
            ),
            "",
            "open to group or others",
        ),
        (
            "pkcs11:token=admin-bob;id=%07".to_owned(),
            "1234",
            "no private key",
        ),
        ("pkcs11:token=admin-alice".to_owned(), "1234", "no token"),
        (
            "pkcs11:token=admin-bob".to_owned(),
            "1234",
            "2 private keys",
        ),
    ] {
        let (sent, out) = against_fake_agent_greeting_env(
            &[
                "request", "approve", &shown.id, "--key", &uri, "--module", lib_text,
            ],
            &[
                ("SOFTHSM2_CONF", conf_env),
                ("KEYWARD_ADMIN_PIN", std::ffi::OsStr::new(pin)),
            ],
            vec![(Some(hello()), Some(requests(shown.clone())))],
        );
        assert_eq!(sent.len(), 2, "{uri}: {sent:?}"); // hello and show only
        assert_eq!(out.status.code(), Some(2), "{uri}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(why), "{uri}: {stderr}");
        assert!(
            !stderr.contains("1234") && !stderr.contains("9999"),
            "{stderr}"
        );
    }
}

fn hello() -> AdminResponse {
    AdminResponse::Hello(AdminHello {
        version: ADMIN_VERSIONS.max,
        agent_version: "0.1.0".into(),
    })
}

/// The signature of the `RequestDecide` among `sent`, checked to carry
/// `decision`.
fn decided_signature(sent: &[AdminRequest], decision: keyward_domain::Decision) -> Vec<u8> {
    let decides: Vec<_> = sent
        .iter()
        .filter_map(|r| match r {
            AdminRequest::Key(KeyRequest::RequestDecide {
                decision: d,
                signature,
                ..
            }) => Some((*d, signature.clone())),
            _ => None,
        })
        .collect();
    match decides.as_slice() {
        [(d, Some(sig))] if *d == decision => sig.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn irreversible_commands_without_a_terminal_need_yes_and_send_nothing() {
    for args in [
        &[
            "key",
            "revoke",
            "web-tls",
            "--reason",
            "stolen",
            "--reason-code",
            "keyCompromise",
        ][..],
        &[
            "key",
            "destroy",
            "web-tls",
            "--reason",
            "retired",
            "--reason-code",
            "superseded",
        ][..],
        &[
            "key",
            "revoke",
            "web-tls",
            "--rotate",
            "--json",
            "--reason",
            "stolen",
            "--reason-code",
            "keyCompromise",
        ][..],
    ] {
        let (requests, out) = against_fake_agent_serving(args, Vec::new());
        assert!(requests.is_empty(), "{args:?}: sent {requests:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--yes"), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot be undone"), "{args:?}: {stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.kwbackup");
    std::fs::write(&file, b"x").unwrap();
    let (requests, out) = against_fake_agent_serving(
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--reason",
            "dr",
        ],
        Vec::new(),
    );
    assert!(requests.is_empty(), "sent {requests:?}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--yes"), "{out:?}");
}

#[test]
fn dry_run_sends_the_changing_request_as_a_dry_run_and_prints_the_plan() {
    let plan = Plan {
        request: "key.suspend".into(),
        action: "suspend web-tls".into(),
        outcome: PlanOutcome::Done,
        steps: vec!["suspend keyward/web-tls: key active -> suspended".into()],
        impact: None,
        restore: None,
    };
    let (req, out) = against_fake_agent(
        &[
            "key",
            "suspend",
            "web-tls",
            "--reason",
            "audit",
            "--dry-run",
        ],
        AdminResponse::Key(Box::new(KeyResponse::Plan(Box::new(plan)))),
    );
    assert_eq!(
        req,
        AdminRequest::DryRun(KeyRequest::Transition {
            name: "web-tls".into(),
            token: None,
            action: KeyAction::Suspend,
            reason: Some("audit".into()),
            code: Some(keyward_domain::ReasonCode::CertificateHold),
        })
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("dry run: suspend web-tls"), "{stdout}");
    assert!(stdout.contains("key active -> suspended"), "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");

    // A dry run needs no confirmation: it changes nothing.
    let (req, out) = against_fake_agent(
        &[
            "--dry-run",
            "key",
            "destroy",
            "web-tls",
            "--reason",
            "retired",
            "--reason-code",
            "superseded",
        ],
        AdminResponse::KeyErr {
            kind: AdminErrorKind::Refused,
            message: "key keyward/web-tls: destroyed already".into(),
        },
    );
    assert!(matches!(req, AdminRequest::DryRun(_)), "{req:?}");
    assert_eq!(
        out.status.code(),
        Some(5),
        "the real refusal's code: {out:?}"
    );

    // Read-only commands go as they are.
    let (req, _) = against_fake_agent(
        &["--dry-run", "key", "list"],
        AdminResponse::Key(Box::new(KeyResponse::Keys(Vec::new()))),
    );
    assert!(
        matches!(req, AdminRequest::Key(KeyRequest::List { .. })),
        "{req:?}"
    );
}
