//! What a command prints and how it exits ([`Output`]), and how an
//! answer of the agent that is not the one asked for becomes a
//! [`Failure`].

use keyward_protocol::admin::{
    AdminRequest, AdminResponse, AuditAnchor, AuditRecordInfo, AuditRequest, AuditResponse,
    AuditVerification, KeyRequest, KeyResponse,
};

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
                    AdminRequest::DryRun(_) => "a dry run",
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

/// What to print for the agent's answer to `req` (or for the failure to
/// get one). Any key answer is shown for what it is; an answer of the
/// wrong family (a status for a key request) is unexpected.
pub fn present(req: &AdminRequest, resp: Result<AdminResponse, Failure>, json: bool) -> Output {
    match req {
        AdminRequest::Audit(AuditRequest::Verify | AuditRequest::VerifyAnchored { .. }) => {
            return match verification_of(req, resp) {
                Ok(v) => verification(v, json),
                Err(f) => Output::failure(&f, json),
            }
        }
        AdminRequest::Audit(AuditRequest::Tail { .. } | AuditRequest::Query { .. }) => {
            return match records_of(req, resp) {
                Ok(r) if json => Output::success(render::json_lines(&r)),
                Ok(r) => Output::success(render::records(&r)),
                Err(f) => Output::failure_line(&f, json),
            }
        }
        AdminRequest::Audit(AuditRequest::Anchor) => {
            return match anchor_of(req, resp) {
                // One line, so that `keyward --json audit anchor >> FILE` keeps one
                // anchor per line.
                Ok(a) if json => Output::success(render::json_line(&render::anchor_json(&a))),
                Ok(a) => Output::success(format!("{}\n", a.to_line())),
                Err(f) => Output::failure(&f, json),
            };
        }
        AdminRequest::Hello { .. }
        | AdminRequest::Status
        | AdminRequest::Key(_)
        | AdminRequest::DryRun(_)
        | AdminRequest::Report(_) => {}
    }
    let resp = match resp {
        Ok(r) => r,
        Err(f) => return Output::failure(&f, json),
    };
    match (req, resp) {
        (AdminRequest::Status, AdminResponse::Status(s)) => Output::success(if json {
            render::json(&s)
        } else {
            render::status(&s)
        }),
        // `request show`: the one request in full, not a list of one.
        (AdminRequest::Key(KeyRequest::RequestShow { .. }), AdminResponse::Key(r)) => match *r {
            KeyResponse::Requests(rs) => match rs.as_slice() {
                [one] => Output::success(if json {
                    render::json(&crate::json::request_view(one))
                } else {
                    render::pending(one)
                }),
                _ => key_answer(KeyResponse::Requests(rs), json),
            },
            r => key_answer(r, json),
        },
        // A command that changed a key says what it is now, in brief.
        (AdminRequest::Key(req), AdminResponse::Key(r))
            if !json && !matches!(req, KeyRequest::Show { .. }) =>
        {
            match *r {
                KeyResponse::Key(k) => Output::success(render::key_changed(&k)),
                r => key_answer(r, json),
            }
        }
        (AdminRequest::Key(_) | AdminRequest::DryRun(_), AdminResponse::Key(r)) => {
            key_answer(*r, json)
        }
        (AdminRequest::Report(_), AdminResponse::Report(r)) => Output::success(if json {
            render::json(&crate::json::report_view(&r))
        } else {
            render::report(&r)
        }),
        (req, resp) => Output::failure(&answer_failure(req, resp), json),
    }
}

/// The verification in the answer to `audit verify`.
pub(crate) fn verification_of(
    req: &AdminRequest,
    resp: Result<AdminResponse, Failure>,
) -> Result<AuditVerification, Failure> {
    match resp? {
        AdminResponse::Audit(a) => match *a {
            AuditResponse::Verified(v) => Ok(v),
            a => Err(answer_failure(req, AdminResponse::Audit(Box::new(a)))),
        },
        resp => Err(answer_failure(req, resp)),
    }
}

/// The head in the answer to `audit anchor`.
pub(crate) fn anchor_of(
    req: &AdminRequest,
    resp: Result<AdminResponse, Failure>,
) -> Result<AuditAnchor, Failure> {
    match resp? {
        AdminResponse::Audit(a) => match *a {
            AuditResponse::Anchor(a) => Ok(a),
            a => Err(answer_failure(req, AdminResponse::Audit(Box::new(a)))),
        },
        resp => Err(answer_failure(req, resp)),
    }
}

/// The records in the answer to `audit tail` or `audit query`.
pub(crate) fn records_of(
    req: &AdminRequest,
    resp: Result<AdminResponse, Failure>,
) -> Result<Vec<AuditRecordInfo>, Failure> {
    match resp? {
        AdminResponse::Audit(a) => match *a {
            AuditResponse::Records(r) => Ok(r),
            a => Err(answer_failure(req, AdminResponse::Audit(Box::new(a)))),
        },
        resp => Err(answer_failure(req, resp)),
    }
}

/// `audit verify`: exit 0 when intact; exit 8 when tampering was found,
/// with the first bad record on standard error too.
pub(crate) fn verification(v: AuditVerification, json: bool) -> Output {
    let stdout = if json {
        render::json(&v)
    } else {
        render::verification(&v)
    };
    match &v.first_bad {
        None => Output::success(stdout),
        Some(bad) if bad.anchor => Output {
            stderr: format!(
                "keyward: the audit trail no longer holds an anchored head: record {}: {}\n",
                bad.seq,
                render::clean(&bad.problem)
            ),
            stdout,
            exit: Exit::AnchorBroken,
        },
        Some(bad) => Output {
            stderr: format!(
                "keyward: the audit trail does not verify: record {}: {}\n",
                bad.seq,
                render::clean(&bad.problem)
            ),
            stdout,
            exit: Exit::AuditBroken,
        },
    }
}

/// A key answer: the approval request (exit 3) or the result.
pub(crate) fn key_answer(resp: KeyResponse, json: bool) -> Output {
    match resp {
        KeyResponse::Pending(p) => Output {
            stderr: format!(
                "keyward: {} of {} needs approval: request {} was recorded; it runs once approved\n",
                render::clean(&p.action),
                render::clean(&p.target),
                render::clean(&p.id)
            ),
            stdout: if json {
                render::key_json(&KeyResponse::Pending(p))
            } else {
                render::pending(&p)
            },
            exit: Exit::Pending,
        },
        r => Output::success(if json {
            render::key_json(&r)
        } else {
            render::key_response(&r)
        }),
    }
}
