//! The admin socket: one request, one response; and the exit codes a
//! script relies on, with the one mapping from the agent's error kinds.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use keyward_protocol::admin::{hello, AdminErrorKind, AdminRequest, AdminResponse, HelloError};
use keyward_protocol::frame::{read_message, write_message};
use keyward_protocol::FrameError;

/// Bound on one exchange with the agent.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request may take: backups, restores, drills and exports
/// work through every key of a token, and an approval may carry a restore
/// out, so they get an hour.
fn timeout_for(req: &AdminRequest) -> Duration {
    use keyward_protocol::admin::KeyRequest;
    match req {
        AdminRequest::Key(
            KeyRequest::Backup(_) | KeyRequest::Distribution(_) | KeyRequest::RequestDecide { .. },
        )
        | AdminRequest::DryRun(KeyRequest::Backup(_)) => Duration::from_secs(3600),
        _ => TIMEOUT,
    }
}

/// The process exit code; the table is also in `keyward --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success = 0,
    /// 1: the agent is unreachable, speaks no admin-protocol version in common, or answered something unexpected
    /// (`policy check`: the file is not valid).
    Error = 1,
    /// 2: invalid request or usage (clap's own usage errors too).
    Usage = 2,
    /// 3: the action needs approval; a request was recorded.
    Pending = 3,
    /// 4: no such key, token, application or class.
    NotFound = 4,
    /// 5: the policy or the key's lifecycle forbids it.
    Refused = 5,
    /// 6: it conflicts with the current state.
    Conflict = 6,
    /// 7: the HSM or the inventory store failed.
    Failed = 7,
    /// 8: the audit trail does not verify (`audit verify` found a record
    /// or checkpoint that was altered, removed or inserted).
    AuditBroken = 8,
    /// 9: the audit trail no longer holds a head anchored off the host
    /// (`audit verify --anchor`): rolled back past it or rewritten below it.
    AnchorBroken = 9,
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<AdminErrorKind> for Exit {
    fn from(kind: AdminErrorKind) -> Exit {
        match kind {
            AdminErrorKind::Invalid => Exit::Usage,
            AdminErrorKind::NotFound => Exit::NotFound,
            AdminErrorKind::Refused => Exit::Refused,
            AdminErrorKind::Conflict => Exit::Conflict,
            AdminErrorKind::Failed => Exit::Failed,
        }
    }
}

/// A command that did not succeed: what to tell people and scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// `kind` of the JSON error document: the agent's [`AdminErrorKind`]
    /// name, or `Unreachable`, `Unexpected`, `Agent`, `Usage`, `Version`
    /// (no admin-protocol version in common with the agent) for failures
    /// found on this side.
    pub kind: String,
    /// For people.
    pub message: String,
}

impl Failure {
    /// A failure found on this side of the socket.
    pub fn local(exit: Exit, kind: &str, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// The agent's `KeyErr`.
    pub fn from_agent(kind: AdminErrorKind, message: String) -> Failure {
        Failure {
            exit: kind.into(),
            kind: format!("{kind:?}"),
            message,
        }
    }

    /// The JSON document a failed command prints with `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        crate::json::error_document(&self.kind, &self.message, self.exit.code())
    }
}

/// One request, one response on the admin socket, with the safety rails
/// ([`crate::safety`]): with `--dry-run` a changing request goes as its
/// dry run; an irreversible one without `--yes` is confirmed first (on a
/// terminal) or refused (exit 2, nothing sent).
pub fn exchange(socket: &Path, req: &AdminRequest) -> Result<AdminResponse, Failure> {
    let safety = crate::safety::get();
    if let Some(dry) = crate::safety::outgoing(req, safety) {
        return send(socket, &dry);
    }
    if let (AdminRequest::Key(k), true) = (req, crate::safety::irreversible(req) && !safety.yes) {
        if !crate::safety::on_terminal() {
            return Err(crate::safety::needs_yes(req));
        }
        let plan = crate::safety::plan_of(send(socket, &AdminRequest::DryRun(k.clone()))?)?;
        crate::safety::confirm(
            req,
            &plan,
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
        )?;
    }
    send(socket, req)
}

/// One request, one response on the admin socket, after the hello that
/// agrees on the admin-protocol version. Every transport failure is
/// [`Exit::Error`]; an agent without a common version is named with what
/// to upgrade.
fn send(socket: &Path, req: &AdminRequest) -> Result<AdminResponse, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::local(
            Exit::Error,
            "Unreachable",
            format!(
                "cannot reach keyward-agent at {}: {e} (is the agent running? set --admin-socket or KEYWARD_ADMIN_SOCKET)",
                socket.display()
            ),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(&e))?;
    let _ = stream.set_read_timeout(Some(timeout_for(req)));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut buf = Vec::new();
    hello(&mut stream, &mut buf).map_err(|e| match e {
        HelloError::Frame(e) => unreachable(&e),
        HelloError::Agent(message) => Failure::local(Exit::Error, "Agent", message),
        e @ (HelloError::Refused { .. } | HelloError::Closed) => Failure::local(
            Exit::Error,
            "Version",
            format!("keyward-agent at {}: {e}", socket.display()),
        ),
        e @ HelloError::Unexpected(_) => Failure::local(
            Exit::Error,
            "Unexpected",
            format!("keyward-agent at {}: {e}", socket.display()),
        ),
    })?;
    write_message(&mut stream, req, &mut buf).map_err(|e| unreachable(&e))?;
    read_message(&mut stream, &mut buf).map_err(|e| match e {
        // An agent that cannot decode a request closes the connection.
        FrameError::Closed => Failure::local(
            Exit::Error,
            "Unexpected",
            format!(
                "keyward-agent at {} closed the connection without answering (an older agent that does not know this request?)",
                socket.display()
            ),
        ),
        e => unreachable(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_exit_code() {
        for (kind, code) in [
            (AdminErrorKind::Invalid, 2),
            (AdminErrorKind::NotFound, 4),
            (AdminErrorKind::Refused, 5),
            (AdminErrorKind::Conflict, 6),
            (AdminErrorKind::Failed, 7),
        ] {
            assert_eq!(Exit::from(kind).code(), code, "{kind:?}");
            let f = Failure::from_agent(kind, "why".into());
            assert_eq!(f.exit.code(), code);
            assert_eq!(f.to_json()["error"]["exit_code"], code);
            assert_eq!(
                f.to_json()["error"]["kind"],
                crate::json::snake_case(&format!("{kind:?}"))
            );
        }
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Error.code(), 1);
        assert_eq!(Exit::Pending.code(), 3);
        assert_eq!(Exit::AuditBroken.code(), 8);
        assert_eq!(Exit::AnchorBroken.code(), 9);
    }

    #[test]
    fn unreachable_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = exchange(&dir.path().join("admin.sock"), &AdminRequest::Status).unwrap_err();
        assert_eq!(e.exit, Exit::Error);
        assert_eq!(e.kind, "Unreachable");
        assert!(e.message.contains("cannot reach keyward-agent"), "{e:?}");
    }

    #[test]
    fn an_agent_that_hangs_up_is_unexpected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let _: AdminRequest = read_message(&mut s, &mut buf).unwrap();
            let hello = AdminResponse::Hello(keyward_protocol::admin::AdminHello {
                version: keyward_protocol::ADMIN_VERSIONS.max,
                agent_version: "0.1.0".into(),
            });
            write_message(&mut s, &hello, &mut buf).unwrap();
            let _: AdminRequest = read_message(&mut s, &mut buf).unwrap();
        });
        let e = exchange(&path, &AdminRequest::Status).unwrap_err();
        server.join().unwrap();
        assert_eq!((e.exit, e.kind.as_str()), (Exit::Error, "Unexpected"));
        assert!(e.message.contains("closed the connection"), "{e:?}");
    }
}
