//! Negotiated protocol versions, against the real agent with raw frames:
//! a hello whose range the agent does not speak gets the agent's versions
//! (application and admin socket alike) and the connection is closed; a
//! module or a `keyward` from before negotiated versions gets an answer it
//! can read and show, not a decode error; the agent logs both sides'
//! versions and what to upgrade, and goes on serving. And the module against
//! an agent without a common version, as an application sees it
//! (`pkcs11-tool`): the slot without a token, and one clear log line.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use keyward_protocol::admin::{AdminRequest, AdminResponse};
use keyward_protocol::frame::{encode, read_message, MAGIC};
use keyward_protocol::{
    Request, Response, VersionRange, VersionRefusal, ADMIN_VERSIONS, APP_VERSIONS, FRAME_VERSION,
};
use keyward_tests::p11::Ctx;
use keyward_tests::tools::{output, require_tool};
use keyward_tests::{keyward_test, Env};

const BOUND: Duration = Duration::from_secs(5);

fn connect(path: &str) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {path}: {e}"));
    s.set_read_timeout(Some(BOUND)).expect("set_read_timeout");
    s
}

fn send(s: &mut UnixStream, msg: &Request) {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encode");
    s.write_all(&buf).expect("send");
}

fn send_admin(s: &mut UnixStream, msg: &AdminRequest) {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encode");
    s.write_all(&buf).expect("send");
}

/// A frame around `payload`, as any keyward frames it.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend(FRAME_VERSION.to_le_bytes());
    f.extend((payload.len() as u32).to_le_bytes());
    f.extend(payload);
    f
}

/// Asserts that the agent closes `s` within [`BOUND`] and sends nothing
/// more.
#[track_caller]
fn assert_closed(mut s: UnixStream, what: &str) {
    let start = Instant::now();
    let mut rest = [0u8; 64];
    loop {
        match s.read(&mut rest) {
            Ok(0) => return,
            Ok(n) => panic!("{what}: the agent sent {n} more bytes"),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: still open after {:?}: {e}", start.elapsed()),
        }
    }
}

fn agent_log(tb: &Env) -> String {
    std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log")
}

/// Waits (bounded) until the agent's log has a line with every one of
/// `parts`.
#[track_caller]
fn logged(tb: &Env, parts: &[&str]) {
    let deadline = Instant::now() + BOUND;
    loop {
        let log = agent_log(tb);
        if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

keyward_test!(fn an_application_hello_without_a_common_version_gets_the_agents_versions(tb) {
    tb.require_agent("talking to the agent's socket");
    let newer = VersionRange { min: APP_VERSIONS.max + 1, max: APP_VERSIONS.max + 3 };
    let mut s = connect(&tb.socket);
    send(&mut s, &Request::Hello { versions: newer });
    match read_message::<_, Response>(&mut s, &mut Vec::new()) {
        Ok(Response::NoCommonVersion(VersionRefusal { versions, agent_version })) => {
            assert_eq!(versions, APP_VERSIONS);
            assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("a hello from a newer module was answered {other:?}"),
    }
    assert_closed(s, "after refusing a newer module");
    logged(&tb, &[
        "no application protocol version in common",
        &format!("this agent speaks {APP_VERSIONS}"),
        &format!("the module speaks {newer}"),
        "upgrade this agent",
    ]);

    // An empty range (min above max) meets nothing.
    let mut s = connect(&tb.socket);
    send(&mut s, &Request::Hello { versions: VersionRange { min: 9, max: 1 } });
    assert!(
        matches!(read_message::<_, Response>(&mut s, &mut Vec::new()), Ok(Response::NoCommonVersion(_))),
        "an empty range was accepted"
    );
    assert_closed(s, "after refusing an empty range");

    // A wider range that includes the agent's: the highest common version.
    let mut s = connect(&tb.socket);
    send(&mut s, &Request::Hello { versions: VersionRange { min: 1, max: APP_VERSIONS.max + 7 } });
    match read_message::<_, Response>(&mut s, &mut Vec::new()) {
        Ok(Response::Hello(reply)) => assert_eq!(reply.version, APP_VERSIONS.max),
        other => panic!("a wider range was answered {other:?}"),
    }
    send(&mut s, &Request::GetSlotList { token_present: true });
    assert!(
        matches!(read_message::<_, Response>(&mut s, &mut Vec::new()), Ok(Response::List(l)) if !l.is_empty()),
        "the agreed connection is not served"
    );

    // The agent went on serving the module.
    let ctx = Ctx::new(&tb);
    ctx.user();
});

keyward_test!(fn a_module_from_before_negotiated_versions_reads_the_agents_version(tb) {
    tb.require_agent("talking to the agent's socket");
    // `Hello { version: 2 }` as modules of the combined protocol 2 sent it.
    let mut s = connect(&tb.socket);
    s.write_all(&raw_frame(&[0, 2])).expect("send the old hello");
    match read_message::<_, Response>(&mut s, &mut Vec::new()) {
        // The answer's form is the one such a module reads: it compares the
        // version with its own and logs the mismatch.
        Ok(Response::Hello(reply)) => {
            assert_eq!(reply.version, APP_VERSIONS.max);
            assert_eq!(reply.agent_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("an old module's hello was answered {other:?}"),
    }
    assert_closed(s, "after answering an old module");
    logged(&tb, &["the module speaks 2", "upgrade the module"]);
});

keyward_test!(fn an_admin_hello_without_a_common_version_gets_the_agents_versions(tb) {
    tb.require_agent("talking to the admin socket");
    let older = VersionRange::only(ADMIN_VERSIONS.min - 1);
    let mut s = connect(&tb.admin_socket);
    send_admin(&mut s, &AdminRequest::Hello { versions: older });
    match read_message::<_, AdminResponse>(&mut s, &mut Vec::new()) {
        Ok(AdminResponse::NoCommonVersion(r)) => assert_eq!(r.versions, ADMIN_VERSIONS),
        other => panic!("an old keyward's hello was answered {other:?}"),
    }
    assert_closed(s, "after refusing an older keyward");
    logged(&tb, &[
        "no admin protocol version in common",
        &format!("the keyward command speaks {older}"),
        "upgrade the keyward command",
    ]);
    // With a common version: the hello, then requests.
    let mut s = connect(&tb.admin_socket);
    let agreed = keyward_protocol::admin::hello(&mut s, &mut Vec::new()).expect("admin hello");
    assert_eq!(agreed.version, ADMIN_VERSIONS.max);
    send_admin(&mut s, &AdminRequest::Status);
    match read_message::<_, AdminResponse>(&mut s, &mut Vec::new()) {
        Ok(AdminResponse::Status(st)) => {
            assert_eq!((st.app_protocol, st.admin_protocol), (APP_VERSIONS, ADMIN_VERSIONS));
        }
        other => panic!("status after the hello was answered {other:?}"),
    }
});

keyward_test!(fn a_keyward_from_before_negotiated_versions_is_told_to_upgrade(tb) {
    tb.require_agent("talking to the admin socket");
    // Such a keyward sends its request at once: `Status` was variant 0
    // (one byte), `Key(..)` variant 1. The first cannot be read as a hello,
    // the second reads as something else; both get a text it shows.
    for (payload, what) in [(&[0u8][..], "an old status request"), (&[1u8, 9][..], "an old key request")] {
        let mut s = connect(&tb.admin_socket);
        s.write_all(&raw_frame(payload)).expect("send");
        match read_message::<_, AdminResponse>(&mut s, &mut Vec::new()) {
            Ok(AdminResponse::Err(text)) => {
                assert!(text.contains(&format!("speaks admin protocol {ADMIN_VERSIONS}")), "{what}: {text}");
                assert!(text.ends_with("upgrade keyward"), "{what}: {text}");
            }
            other => panic!("{what} was answered {other:?}"),
        }
        assert_closed(s, what);
    }
    logged(&tb, &["without a version hello", "older keyward"]);
    // The real keyward of this build works.
    let text = keyward_tests::admin::keyward_ok(&tb, &["status"], 0);
    assert!(
        text.contains(&format!("protocol:  application {APP_VERSIONS}, admin {ADMIN_VERSIONS}")),
        "{text}"
    );
});

/// An agent that answers every hello with a refusal: it speaks only
/// versions newer than this module's. It serves for 60 s at most (the
/// test's process ends before).
fn newer_agent(path: &std::path::Path) {
    let listener = UnixListener::bind(path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).expect("blocking");
            let mut buf = Vec::new();
            if let Ok(Request::Hello { .. }) = read_message::<_, Request>(&mut s, &mut buf) {
                let refusal = Response::NoCommonVersion(VersionRefusal {
                    versions: VersionRange {
                        min: APP_VERSIONS.max + 1,
                        max: APP_VERSIONS.max + 2,
                    },
                    agent_version: "9.0.0".into(),
                });
                let _ = keyward_protocol::frame::write_message(&mut s, &refusal, &mut buf);
            }
        }
    });
}

keyward_test!(fn the_module_against_an_agent_without_a_common_version_shows_no_token(tb) {
    let socket = tb.path("newer-agent.sock");
    newer_agent(&socket);
    let out = output(
        Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(&tb.module)
            .arg("-L")
            .env("KEYWARD_SOCKET", &socket)
            .env("KEYWARD_LOG", "error"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pkcs11-tool -L failed: {out:?}");
    assert!(stdout.contains("Slot 0"), "no slot listed:\n{stdout}");
    assert!(stdout.contains("(empty)"), "the slot is not empty:\n{stdout}");
    assert!(!stdout.contains("token label"), "a token is shown:\n{stdout}");
    // One clear line, however often the module tried.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("protocol version")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for part in [
        "no application protocol version in common",
        &format!("this module speaks {APP_VERSIONS}"),
        "keyward-agent 9.0.0 speaks",
        "upgrade this module",
        "the slot shows no token",
    ] {
        assert!(lines[0].contains(part), "{part:?} missing from: {}", lines[0]);
    }
});
