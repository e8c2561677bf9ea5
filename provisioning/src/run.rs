//! From a parsed command line to what the process prints and its exit
//! code: build the admin request, exchange it, present the answer. Only
//! [`run`] does I/O (the socket, the policy file); [`request`] and
//! [`present`] are pure and tested as such.

use std::path::Path;

use keyward_protocol::admin::{AdminRequest, AdminResponse, KeyAction, KeyRequest, KeyResponse};

use crate::admin::{exchange, Exit, Failure};
use crate::cli::{
    AppCommand, CkaId, Command, DiscoverArgs, GrantCommand, KeyArgs, KeyCommand, PinCommand,
    PolicyCommand, TransitionArgs,
};
use crate::render;
use crate::time;

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
    fn success(stdout: String) -> Output {
        Output {
            stdout,
            stderr: String::new(),
            exit: Exit::Success,
        }
    }

    fn failure(f: &Failure, json: bool) -> Output {
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
}

/// Runs one command against the agent at `socket`.
pub fn run(command: Command, socket: &Path, json: bool) -> Output {
    if let Command::Policy {
        command: PolicyCommand::Check { file },
    } = &command
    {
        return policy_check(file, json);
    }
    let req = match request(command, time::now()) {
        Ok(req) => req,
        Err(f) => return Output::failure(&f, json),
    };
    present(&req, exchange(socket, &req), json)
}

/// The admin request a command sends. `now` (unix seconds) turns
/// `grant add --for` into an expiry. `policy check` sends nothing and is
/// refused here.
pub fn request(command: Command, now: i64) -> Result<AdminRequest, Failure> {
    let key = |r: KeyRequest| Ok(AdminRequest::Key(r));
    let transition = |t: TransitionArgs, action: KeyAction| {
        key(KeyRequest::Transition {
            name: t.key.name,
            token: t.key.token.token,
            action,
            reason: t.reason,
        })
    };
    match command {
        Command::Status => Ok(AdminRequest::Status),
        Command::Policy { .. } => Err(Failure::local(
            Exit::Usage,
            "Usage",
            "policy check runs locally",
        )),
        Command::Key { command } => match command {
            KeyCommand::Create {
                name,
                class,
                algorithm,
                token,
                owner,
            } => key(KeyRequest::Create {
                name,
                class,
                algorithm,
                token: token.token,
                owner,
            }),
            KeyCommand::List { token, state } => key(KeyRequest::List {
                token: token.token,
                state,
            }),
            KeyCommand::Show(KeyArgs { name, token }) => key(KeyRequest::Show {
                name,
                token: token.token,
            }),
            KeyCommand::Activate(t) => transition(t, KeyAction::Activate),
            KeyCommand::Suspend(t) => transition(t, KeyAction::Suspend),
            KeyCommand::Resume(t) => transition(t, KeyAction::Resume),
            KeyCommand::Deactivate(t) => transition(t, KeyAction::Deactivate),
            KeyCommand::Destroy(t) => transition(t, KeyAction::Destroy),
            KeyCommand::Revoke {
                transition: t,
                rotate,
            } => transition(t, KeyAction::Revoke { rotate }),
            KeyCommand::Rotate(KeyArgs { name, token }) => key(KeyRequest::Rotate {
                name,
                token: token.token,
            }),
            KeyCommand::Verify(KeyArgs { name, token }) => key(KeyRequest::Verify {
                name,
                token: token.token,
            }),
        },
        Command::Grant { command } => match command {
            GrantCommand::Add {
                key: name,
                application,
                ops,
                until,
                for_,
                token,
            } => {
                let until = match (until, for_) {
                    (Some(at), _) if at <= now => {
                        return Err(Failure::local(
                            Exit::Usage,
                            "Usage",
                            format!("--until {} has already passed", time::format_utc(at)),
                        ))
                    }
                    (Some(at), _) => Some(at),
                    (None, Some(d)) => Some(
                        i64::try_from(d.as_secs())
                            .ok()
                            .and_then(|d| now.checked_add(d))
                            .ok_or_else(|| {
                                Failure::local(Exit::Usage, "Usage", "--for is too long")
                            })?,
                    ),
                    (None, None) => None,
                };
                key(KeyRequest::GrantAdd {
                    key: name,
                    token: token.token,
                    application,
                    operations: ops,
                    until,
                })
            }
            GrantCommand::Remove {
                key: name,
                application,
                token,
            } => key(KeyRequest::GrantRemove {
                key: name,
                token: token.token,
                application,
            }),
            GrantCommand::List { key: name, token } => key(KeyRequest::GrantList {
                key: name,
                token: token.token,
            }),
        },
        Command::App {
            command: AppCommand::List,
        } => key(KeyRequest::AppList),
        Command::Pin {
            command: PinCommand::Unlock { token },
        } => key(KeyRequest::PinUnlock { token }),
        Command::Discover(DiscoverArgs {
            token,
            adopt,
            name,
            class,
        }) => match (adopt, name, class) {
            (None, None, None) => key(KeyRequest::Discover { token }),
            (Some(CkaId(backend_id)), Some(name), Some(class)) => key(KeyRequest::Adopt {
                token,
                backend_id,
                name,
                class,
            }),
            // clap enforces this already; kept for callers that build
            // the arguments by hand.
            _ => Err(Failure::local(
                Exit::Usage,
                "Usage",
                "--adopt, --name and --class go together",
            )),
        },
    }
}

/// What to print for the agent's answer to `req` (or for the failure to
/// get one). Any key answer is shown for what it is; an answer of the
/// wrong family (a status for a key request) is unexpected.
pub fn present(req: &AdminRequest, resp: Result<AdminResponse, Failure>, json: bool) -> Output {
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
        (AdminRequest::Key(_), AdminResponse::Key(r)) => key_answer(*r, json),
        (_, AdminResponse::KeyErr { kind, message }) => {
            Output::failure(&Failure::from_agent(kind, message), json)
        }
        (_, AdminResponse::Err(message)) => Output::failure(
            &Failure::local(
                Exit::Error,
                "Agent",
                format!("the agent refused: {message}"),
            ),
            json,
        ),
        (req, resp) => Output::failure(
            &Failure::local(
                Exit::Error,
                "Unexpected",
                format!(
                    "unexpected answer from the agent: {} to {}",
                    variant(&resp),
                    match req {
                        AdminRequest::Status => "a status request",
                        AdminRequest::Key(_) => "a key request",
                    }
                ),
            ),
            json,
        ),
    }
}

/// A key answer: the approval request (exit 3) or the result.
fn key_answer(resp: KeyResponse, json: bool) -> Output {
    match resp {
        KeyResponse::Pending(p) => Output {
            stderr: format!(
                "keyward: {} of {} needs approval: request {} was recorded; it runs once approved\n",
                render::clean(&p.action),
                render::clean(&p.target),
                render::clean(&p.id)
            ),
            stdout: if json {
                render::json(&KeyResponse::Pending(p))
            } else {
                render::pending(&p)
            },
            exit: Exit::Pending,
        },
        r => Output::success(if json {
            render::json(&r)
        } else {
            render::key_response(&r)
        }),
    }
}

/// The name of a response's variant, for the "unexpected answer" message.
fn variant(resp: &AdminResponse) -> &'static str {
    match resp {
        AdminResponse::Err(_) => "Err",
        AdminResponse::Status(_) => "Status",
        AdminResponse::Key(_) => "Key",
        AdminResponse::KeyErr { .. } => "KeyErr",
    }
}

/// `keyward policy check FILE`: the same parser and validation the agent
/// uses, run locally (no agent needed). Exit 1 when the file is not valid.
fn policy_check(file: &Path, json: bool) -> Output {
    let result = keyward_policy::Policy::from_file(file);
    let mode = |p: &keyward_policy::Policy| format!("{:?}", p.mode()).to_lowercase();
    let stdout = match (&result, json) {
        (Ok(p), true) => render::json(&serde_json::json!({
            "file": file.display().to_string(), "valid": true, "mode": mode(p),
            "applications": p.applications.len(), "classes": p.classes.len(),
        })),
        (Err(e), true) => render::json(&serde_json::json!({
            "file": file.display().to_string(), "valid": false, "error": e.to_string(),
        })),
        (Ok(p), false) => format!(
            "{}: valid ({} mode, {} applications, {} key classes)\n",
            file.display(),
            mode(p),
            p.applications.len(),
            p.classes.len()
        ),
        (Err(_), false) => String::new(),
    };
    match result {
        Ok(_) => Output::success(stdout),
        Err(e) => Output {
            stdout,
            stderr: if json {
                // The JSON on standard output already carries the error.
                format!("keyward: {} is not valid\n", file.display())
            } else {
                format!("keyward: {e}\n")
            },
            exit: Exit::Error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use keyward_protocol::admin::{AdminErrorKind, ApprovalRequest};

    const NOW: i64 = 1_769_882_400;

    fn req(args: &[&str]) -> Result<AdminRequest, Failure> {
        let cli = Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        request(cli.command, NOW)
    }

    fn key(args: &[&str]) -> KeyRequest {
        match req(args) {
            Ok(AdminRequest::Key(k)) => k,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(req(&["status"]), Ok(AdminRequest::Status));
        assert_eq!(
            key(&["key", "create", "web", "--class", "tls", "--owner", "bob"]),
            KeyRequest::Create {
                name: "web".into(),
                class: "tls".into(),
                algorithm: None,
                token: None,
                owner: Some("bob".into())
            }
        );
        assert_eq!(
            key(&["key", "list", "--state", "active", "--token", "t"]),
            KeyRequest::List {
                token: Some("t".into()),
                state: Some("active".into())
            }
        );
        assert_eq!(
            key(&["key", "show", "web"]),
            KeyRequest::Show {
                name: "web".into(),
                token: None
            }
        );
        for (cmd, action) in [
            ("activate", KeyAction::Activate),
            ("suspend", KeyAction::Suspend),
            ("resume", KeyAction::Resume),
            ("deactivate", KeyAction::Deactivate),
            ("destroy", KeyAction::Destroy),
            ("revoke", KeyAction::Revoke { rotate: false }),
        ] {
            assert_eq!(
                key(&["key", cmd, "web", "--reason", "r", "--token", "t"]),
                KeyRequest::Transition {
                    name: "web".into(),
                    token: Some("t".into()),
                    action,
                    reason: Some("r".into())
                }
            );
        }
        assert_eq!(
            key(&["key", "revoke", "web", "--rotate"]),
            KeyRequest::Transition {
                name: "web".into(),
                token: None,
                action: KeyAction::Revoke { rotate: true },
                reason: None
            }
        );
        assert_eq!(
            key(&["key", "rotate", "web"]),
            KeyRequest::Rotate {
                name: "web".into(),
                token: None
            }
        );
        assert_eq!(
            key(&["key", "verify", "web"]),
            KeyRequest::Verify {
                name: "web".into(),
                token: None
            }
        );
        assert_eq!(
            key(&["grant", "remove", "web", "nginx"]),
            KeyRequest::GrantRemove {
                key: "web".into(),
                token: None,
                application: "nginx".into()
            }
        );
        assert_eq!(
            key(&["grant", "list"]),
            KeyRequest::GrantList {
                key: None,
                token: None
            }
        );
        assert_eq!(key(&["app", "list"]), KeyRequest::AppList);
        assert_eq!(
            key(&["pin", "unlock", "t"]),
            KeyRequest::PinUnlock { token: "t".into() }
        );
        assert_eq!(
            key(&["discover", "--token", "t"]),
            KeyRequest::Discover {
                token: Some("t".into())
            }
        );
        assert_eq!(
            key(&["discover", "--adopt", "beef", "--name", "n", "--class", "c"]),
            KeyRequest::Adopt {
                token: None,
                backend_id: vec![0xbe, 0xef],
                name: "n".into(),
                class: "c".into()
            }
        );
    }

    #[test]
    fn grant_expiry() {
        let add = |extra: &[&str]| {
            let mut args = vec!["grant", "add", "web", "nginx", "--ops", "sign,verify"];
            args.extend_from_slice(extra);
            req(&args)
        };
        let until = |r: Result<AdminRequest, Failure>| match r {
            Ok(AdminRequest::Key(KeyRequest::GrantAdd {
                until, operations, ..
            })) => {
                assert_eq!(operations, ["sign", "verify"]);
                until
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(until(add(&[])), None);
        assert_eq!(until(add(&["--for", "8h"])), Some(NOW + 8 * 3600));
        assert_eq!(until(add(&["--for", "1w1d"])), Some(NOW + 8 * 86_400));
        assert_eq!(
            until(add(&["--until", "2026-12-01T00:00:00Z"])),
            Some(1_796_083_200)
        );
        let e = add(&["--until", "2026-01-31T18:00:00Z"]).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("already passed"), "{e:?}");
    }

    fn approval() -> ApprovalRequest {
        ApprovalRequest {
            id: "req-1".into(),
            action: "destroy".into(),
            target: "web".into(),
            requester: "alice".into(),
            created_at: NOW,
            expires_at: NOW + 3600,
            status: "pending".into(),
        }
    }

    fn key_req() -> AdminRequest {
        AdminRequest::Key(KeyRequest::AppList)
    }

    #[test]
    fn answers_become_exit_codes() {
        let done = present(
            &key_req(),
            Ok(AdminResponse::Key(Box::new(KeyResponse::Done("ok".into())))),
            false,
        );
        assert_eq!(
            done,
            Output {
                stdout: "ok\n".into(),
                stderr: String::new(),
                exit: Exit::Success
            }
        );

        let pending = present(
            &key_req(),
            Ok(AdminResponse::Key(Box::new(KeyResponse::Pending(
                approval(),
            )))),
            false,
        );
        assert_eq!(pending.exit, Exit::Pending);
        assert!(
            pending.stdout.starts_with("request:    req-1\n"),
            "{pending:?}"
        );
        assert!(pending.stderr.contains("request req-1 was recorded"));
        let pending = present(
            &key_req(),
            Ok(AdminResponse::Key(Box::new(KeyResponse::Pending(
                approval(),
            )))),
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&pending.stdout).unwrap();
        assert_eq!(v["Pending"]["id"], "req-1");

        for (kind, exit) in [
            (AdminErrorKind::Invalid, Exit::Usage),
            (AdminErrorKind::NotFound, Exit::NotFound),
            (AdminErrorKind::Refused, Exit::Refused),
            (AdminErrorKind::Conflict, Exit::Conflict),
            (AdminErrorKind::Failed, Exit::Failed),
        ] {
            let resp = || {
                Ok(AdminResponse::KeyErr {
                    kind,
                    message: "no key \"web\"\n".into(),
                })
            };
            let out = present(&key_req(), resp(), false);
            assert_eq!(out.exit, exit);
            assert_eq!(out.stdout, "");
            assert_eq!(out.stderr, "keyward: no key \"web\"\\n\n");
            let out = present(&key_req(), resp(), true);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["Error"]["exit_code"], exit.code());
            assert_eq!(v["Error"]["kind"], format!("{kind:?}"));
        }

        let out = present(&key_req(), Ok(AdminResponse::Err("busy".into())), false);
        assert_eq!(out.exit, Exit::Error);
        assert_eq!(out.stderr, "keyward: the agent refused: busy\n");

        let status = keyward_protocol::admin::Status {
            agent_version: "0.1.0".into(),
            protocol_version: 2,
            pid: 1,
            uptime_secs: 1,
            socket: "s".into(),
            tokens: vec![],
        };
        let out = present(&key_req(), Ok(AdminResponse::Status(status.clone())), true);
        assert_eq!(out.exit, Exit::Error);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["Error"]["kind"], "Unexpected");
        let out = present(
            &AdminRequest::Status,
            Ok(AdminResponse::Key(Box::new(KeyResponse::Done("x".into())))),
            false,
        );
        assert_eq!(out.exit, Exit::Error);
        assert!(out.stderr.contains("unexpected answer"), "{out:?}");
        let out = present(
            &AdminRequest::Status,
            Ok(AdminResponse::Status(status)),
            false,
        );
        assert_eq!(out.exit, Exit::Success);
        assert!(out.stdout.starts_with("agent:     keyward-agent 0.1.0\n"));

        let unreachable = Failure::local(Exit::Error, "Unreachable", "cannot reach");
        let out = present(&key_req(), Err(unreachable), true);
        assert_eq!(out.exit, Exit::Error);
        assert_eq!(out.stderr, "keyward: cannot reach\n");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["Error"]["kind"], "Unreachable");
    }
}
