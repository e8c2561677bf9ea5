//! What a command prints and how it exits ([`Output`]), and how an
//! answer of the agent that is not the one asked for becomes a
//! [`Failure`].

use keyward_protocol::admin::{AdminRequest, AdminResponse, AuditResponse};

use crate::admin::{Exit, Failure};
use crate::render;

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// For standard output: text or one JSON document.
    pub stdout: String,
    /// For standard error: `keyward: ...` lines.
    pub stderr: String,
    /// The exit code.
    pub exit: Exit,
}

impl Output {
    pub(crate) fn success(stdout: String) -> Output {
        Output {
            stdout,
            stderr: String::new(),
            exit: Exit::Success,
        }
    }

    pub(crate) fn failure(f: &Failure, json: bool) -> Output {
        Output {
            stdout: if json {
                render::json(&f.to_json())
            } else {
                String::new()
            },
            stderr: format!("keyward: {}\n", render::clean(&f.message)),
            exit: f.exit,
        }
    }

    /// [`Output::failure`] for the JSON-lines commands (`audit tail`,
    /// `audit query`): the error document on one line.
    pub(crate) fn failure_line(f: &Failure, json: bool) -> Output {
        Output {
            stdout: if json {
                render::json_line(&f.to_json())
            } else {
                String::new()
            },
            ..Output::failure(f, false)
        }
    }
}

/// Why `resp` is not the answer `req` wants: the agent's error (with its
/// exit code), its refusal, or an answer of the wrong kind.
pub(crate) fn answer_failure(req: &AdminRequest, resp: AdminResponse) -> Failure {
    match resp {
        AdminResponse::KeyErr { kind, message } => Failure::from_agent(kind, message),
        AdminResponse::Err(message) => Failure::local(
            Exit::Error,
            "Agent",
            format!("the agent refused: {message}"),
        ),
        resp => Failure::local(
            Exit::Error,
            "Unexpected",
            format!(
                "unexpected answer from the agent: {} to {}",
                variant(&resp),
                match req {
                    AdminRequest::Hello { .. } => "a hello",
                    AdminRequest::Status => "a status request",
                    AdminRequest::Key(_) => "a key request",
                    AdminRequest::Audit(_) => "an audit request",
                    AdminRequest::Report(_) => "a report request",
                }
            ),
        ),
    }
}

/// The name of a response's variant, for the "unexpected answer" message.
fn variant(resp: &AdminResponse) -> &'static str {
    match resp {
        AdminResponse::Err(_) => "Err",
        AdminResponse::Hello(_) => "Hello",
        AdminResponse::NoCommonVersion(_) => "NoCommonVersion",
        AdminResponse::Status(_) => "Status",
        AdminResponse::Key(_) => "Key",
        AdminResponse::Audit(a) => match **a {
            AuditResponse::Verified(_) => "Audit(Verified)",
            AuditResponse::Records(_) => "Audit(Records)",
            AuditResponse::Anchor(_) => "Audit(Anchor)",
        },
        AdminResponse::KeyErr { .. } => "KeyErr",
        AdminResponse::Report(_) => "Report",
    }
}
