//! From a parsed command line to what the process prints and its exit
//! code: build the admin request, exchange it, present the answer. Only
//! [`run`] and [`follow`] do I/O (the socket, the policy file; `follow`
//! also writes as it goes, for `audit tail --follow`); [`request`] and
//! [`present`] are pure and tested as such, and `follow`'s loop is tested
//! with canned answers.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use keyward_protocol::admin::{
    parse_anchors, AdminRequest, AdminResponse, AnomalyThresholds, AuditAnchor, AuditRecordInfo,
    AuditRequest, KeyAction, KeyRequest, PinRole, ReportRequest,
};

use keyward_domain::{Decision, ReasonCode};

use crate::admin::{exchange, Exit, Failure};
use crate::backup;
use crate::cli::{
    AdminKeyCommand, AppCommand, AuditCommand, AuditQueryArgs, CkaId, Command, DiscoverArgs,
    GrantCommand, KeyArgs, KeyCommand, PinCommand, PinRoleArg, PolicyCommand, ReportArgs,
    RequestCommand, ResultFilter, RotateArgs, TokenCommand, TransitionArgs,
};
use crate::decide;
pub use crate::output::Output;
use crate::output::{present, records_of};
use crate::render;
use crate::signer::KeySpec;
use crate::time;

/// How often `audit tail --follow` asks for new records.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// At most this many records per `--follow` poll.
const FOLLOW_BATCH: u32 = 1000;

/// Runs one command against the agent at `socket`.
pub fn run(command: Command, socket: &Path, json: bool) -> Output {
    let command = match command {
        Command::Backup { command } => return backup::run(command, socket, json),
        Command::Cert { command } => return crate::cert::run(command, socket, json),
        command => command,
    };
    if let Command::Policy {
        command: PolicyCommand::Check { file, strict },
    } = &command
    {
        return policy_check(file, *strict, json);
    }
    let policy_file = match &command {
        Command::Policy {
            command: PolicyCommand::Apply { file, reason },
        } => Some((file, reason, false)),
        Command::Init { policy, reason } => Some((policy, reason, true)),
        _ => None,
    };
    if let Some((file, reason, init)) = policy_file {
        let text = match std::fs::read(file).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                let f = Failure::local(
                    Exit::Usage,
                    "Usage",
                    format!("{}: not UTF-8 text", file.display()),
                );
                return Output::failure(&f, json);
            }
            Err(e) => {
                let f = Failure::local(
                    Exit::Usage,
                    "Usage",
                    format!("{}: cannot read: {e}", file.display()),
                );
                return Output::failure(&f, json);
            }
        };
        let reason = reason.clone();
        let req = AdminRequest::Key(if init {
            KeyRequest::Init { text, reason }
        } else {
            KeyRequest::PolicyApply { text, reason }
        });
        return present(&req, exchange(socket, &req), json);
    }
    if let Command::Key { command } = command {
        let command = match command {
            KeyCommand::Rotate(args @ RotateArgs { csr: Some(_), .. }) => {
                return crate::cert::rotate_with_csr(args, socket, json)
            }
            other => other,
        };
        if crate::distribute::handles(&command) {
            return crate::distribute::run(command, socket, json);
        }
        return match request(Command::Key { command }, time::now()) {
            Ok(req) => present(&req, exchange(socket, &req), json),
            Err(f) => Output::failure(&f, json),
        };
    }
    match command {
        Command::AdminKey {
            command: AdminKeyCommand::Show { key, module },
        } => {
            return decide::admin_key_show(
                &KeySpec {
                    source: key,
                    module,
                },
                json,
            )
        }
        Command::Request {
            command: RequestCommand::Approve(args),
        } => {
            return decide::decide(args, Decision::Approve, time::now(), json, |req| {
                exchange(socket, req)
            })
        }
        Command::Request {
            command: RequestCommand::Deny(args),
        } => {
            return decide::decide(args, Decision::Deny, time::now(), json, |req| {
                exchange(socket, req)
            })
        }
        _ => {}
    }
    if let Command::Audit {
        command: AuditCommand::Verify { anchor: Some(file) },
    } = &command
    {
        let anchors = match read_anchors(file) {
            Ok(a) => a,
            Err(f) => return Output::failure(&f, json),
        };
        let req = AdminRequest::Audit(AuditRequest::VerifyAnchored { anchors });
        return present(&req, exchange(socket, &req), json);
    }
    let lines = matches!(
        command,
        Command::Audit {
            command: AuditCommand::Tail { .. } | AuditCommand::Query(_)
        }
    );
    let req = match request(command, time::now()) {
        Ok(req) => req,
        Err(f) if lines => return Output::failure_line(&f, json),
        Err(f) => return Output::failure(&f, json),
    };
    present(&req, exchange(socket, &req), json)
}

/// The admin request a command sends. `now` (unix seconds) turns
/// `grant add --for` into an expiry. `policy check` sends nothing and is
/// refused here.
/// The name of a new managed key, checked here for an early clear error
/// (exit 2, kind `Invalid`, nothing sent); the agent checks it again.
pub(crate) fn new_key_name(name: &str) -> Result<(), Failure> {
    keyward_domain::check_key_name(name)
        .map_err(|e| Failure::local(Exit::Usage, "Invalid", e.to_string()))
}

pub fn request(command: Command, now: i64) -> Result<AdminRequest, Failure> {
    let key = |r: KeyRequest| Ok(AdminRequest::Key(r));
    match command {
        Command::Status => Ok(AdminRequest::Status),
        Command::Policy {
            command: PolicyCommand::Show,
        } => Ok(AdminRequest::Key(KeyRequest::PolicyShow)),
        Command::Policy {
            command: PolicyCommand::Reload,
        } => Ok(AdminRequest::Key(KeyRequest::PolicyReload)),
        Command::Policy { .. } | Command::Init { .. } => Err(Failure::local(
            Exit::Usage,
            "Usage",
            "policy check runs locally, policy apply reads its file first",
        )),
        Command::Key { command } => key_request(command),
        Command::Grant { command } => grant_request(command, now),
        Command::App {
            command: AppCommand::List,
        } => key(KeyRequest::AppList),
        Command::Request { command } => key(match command {
            RequestCommand::List { all } => KeyRequest::RequestList { all },
            RequestCommand::Show { id } => KeyRequest::RequestShow { id },
            RequestCommand::Cancel { id, reason } => KeyRequest::RequestCancel { id, reason },
            RequestCommand::Approve(_) | RequestCommand::Deny(_) => {
                return Err(Failure::local(
                    Exit::Usage,
                    "Usage",
                    "request approve and deny show the request before they send a decision",
                ))
            }
        }),
        Command::AdminKey { .. } => Err(Failure::local(
            Exit::Usage,
            "Usage",
            "admin-key show runs locally",
        )),
        Command::Backup { .. } => Err(Failure::local(
            Exit::Usage,
            "Usage",
            "backup commands are run by backup::run",
        )),
        Command::Devices | Command::Completions { .. } | Command::Man { .. } => {
            Err(Failure::local(
                Exit::Usage,
                "Usage",
                "devices, completions and man run locally",
            ))
        }
        Command::Cert { .. } => Err(Failure::local(
            Exit::Usage,
            "Usage",
            "certificate commands are run by cert::run",
        )),
        Command::Pin {
            command:
                PinCommand::Unlock {
                    token,
                    role,
                    application,
                },
        } => key(KeyRequest::PinUnlock {
            token,
            role: role.map(|r| match r {
                PinRoleArg::User => PinRole::User,
                PinRoleArg::So => PinRole::So,
            }),
            application,
        }),
        Command::Token {
            command: TokenCommand::Init { token, reason },
        } => key(KeyRequest::TokenInit { token, reason }),
        Command::Discover(DiscoverArgs {
            token,
            adopt,
            name,
            class,
        }) => match (adopt, name, class) {
            (None, None, None) => key(KeyRequest::Discover { token }),
            (Some(CkaId(backend_id)), Some(name), Some(class)) => {
                new_key_name(&name)?;
                key(KeyRequest::Adopt {
                    token,
                    backend_id,
                    name,
                    class,
                })
            }
            // clap enforces this already; kept for callers that build
            // the arguments by hand.
            _ => Err(Failure::local(
                Exit::Usage,
                "Usage",
                "--adopt, --name and --class go together",
            )),
        },
        Command::Audit { command } => audit_request(command).map(AdminRequest::Audit),
        Command::Report(ReportArgs {
            window,
            baseline,
            key,
            token,
            spike_factor,
            spike_floor,
        }) => Ok(AdminRequest::Report(ReportRequest {
            key,
            token,
            window_secs: window.as_secs(),
            baseline_secs: baseline.as_secs(),
            thresholds: AnomalyThresholds {
                spike_factor,
                spike_floor,
                ..AnomalyThresholds::default()
            },
        })),
    }
}

/// The request of a `keyward key ...` command.
fn key_request(command: KeyCommand) -> Result<AdminRequest, Failure> {
    let key = |r: KeyRequest| Ok(AdminRequest::Key(r));
    let transition = |t: TransitionArgs, action: KeyAction| {
        key(KeyRequest::Transition {
            name: t.key.name,
            token: t.key.token.token,
            action,
            reason: t.reason,
            code: None,
        })
    };
    let coded = |k: KeyArgs, action: KeyAction, (reason, code): (String, ReasonCode)| {
        key(KeyRequest::Transition {
            name: k.name,
            token: k.token.token,
            action,
            reason: Some(reason),
            code: Some(code),
        })
    };
    match command {
        KeyCommand::Create {
            name,
            class,
            algorithm,
            token,
            owner,
        } => {
            new_key_name(&name)?;
            // Not an algorithm at all: the usage error (exit 2, kind
            // `Invalid`) the agent gave before the request carried the type.
            let algorithm = algorithm
                .map(|text| text.parse::<keyward_policy::Algorithm>())
                .transpose()
                .map_err(|e| Failure::local(Exit::Usage, "Invalid", e.to_string()))?;
            key(KeyRequest::Create {
                name,
                class,
                algorithm,
                token: token.token,
                owner,
            })
        }
        KeyCommand::List { token, state } => key(KeyRequest::List {
            token: token.token,
            state,
        }),
        KeyCommand::Show(KeyArgs { name, token }) => key(KeyRequest::Show {
            name,
            token: token.token,
        }),
        KeyCommand::Activate(t) => transition(t, KeyAction::Activate),
        KeyCommand::Suspend(t) => coded(t.key, KeyAction::Suspend, (t.reason, t.code)),
        KeyCommand::Resume(t) => transition(t, KeyAction::Resume),
        KeyCommand::Deactivate(t) => transition(t, KeyAction::Deactivate),
        KeyCommand::Destroy(t) => coded(t.key, KeyAction::Destroy, (t.reason, t.code)),
        KeyCommand::Revoke {
            transition: t,
            rotate,
        } => coded(t.key, KeyAction::Revoke { rotate }, (t.reason, t.code)),
        KeyCommand::Rotate(RotateArgs {
            key: KeyArgs { name, token },
            ..
        }) => key(KeyRequest::Rotate {
            name,
            token: token.token,
        }),
        KeyCommand::Verify(KeyArgs { name, token }) => key(KeyRequest::Verify {
            name,
            token: token.token,
        }),
        KeyCommand::Recover {
            key: KeyArgs { name, token },
            for_,
            reason,
        } => key(KeyRequest::Recover {
            name,
            token: token.token,
            seconds: for_.as_secs(),
            reason,
        }),
        c @ (KeyCommand::Pubkey { .. } | KeyCommand::Export { .. } | KeyCommand::Import { .. }) => {
            crate::distribute::request(c)
        }
    }
}

/// The request of a `keyward grant ...` command; `now` (unix seconds)
/// turns `--for` into an expiry.
fn grant_request(command: GrantCommand, now: i64) -> Result<AdminRequest, Failure> {
    let key = |r: KeyRequest| Ok(AdminRequest::Key(r));
    match command {
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
                        format!("--until {} has already passed", time::format_time(at)),
                    ))
                }
                (Some(at), _) => Some(at),
                (None, Some(d)) => Some(
                    i64::try_from(d.as_secs())
                        .ok()
                        .and_then(|d| now.checked_add(d))
                        .ok_or_else(|| Failure::local(Exit::Usage, "Usage", "--for is too long"))?,
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
    }
}

/// The request of a `keyward audit ...` command.
fn audit_request(command: AuditCommand) -> Result<AuditRequest, Failure> {
    Ok(match command {
        AuditCommand::Verify { anchor: None } => AuditRequest::Verify,
        AuditCommand::Verify { anchor: Some(_) } => {
            return Err(Failure::local(
                Exit::Usage,
                "Usage",
                "the anchor file is read by run",
            ))
        }
        AuditCommand::Anchor => AuditRequest::Anchor,
        // --follow's later polls are `follow`'s business.
        AuditCommand::Tail { n, follow: _ } => AuditRequest::Tail { n, after_seq: None },
        AuditCommand::Query(AuditQueryArgs {
            key,
            application,
            since,
            until,
            result,
            limit,
        }) => {
            if let (Some(since), Some(until)) = (since, until) {
                if since >= until {
                    return Err(Failure::local(
                        Exit::Usage,
                        "Usage",
                        format!(
                            "--since {} is not before --until {}",
                            time::format_time(since),
                            time::format_time(until)
                        ),
                    ));
                }
            }
            AuditRequest::Query {
                key,
                application,
                since,
                until,
                denied_only: result == ResultFilter::Denied,
                limit,
            }
        }
    })
}

/// Most bytes read from an anchor file (a line is about 250 bytes: some
/// hundred thousand anchors).
const MAX_ANCHOR_FILE: u64 = 64 << 20;

/// The anchors in `file` (`-`: standard input). Anything that is not a
/// readable anchor file is a usage error naming the file and line.
fn read_anchors(file: &Path) -> Result<Vec<AuditAnchor>, Failure> {
    use std::io::Read;
    let name = if file == Path::new("-") {
        "standard input".to_owned()
    } else {
        file.display().to_string()
    };
    let usage =
        |m: String| Failure::local(Exit::Usage, "Usage", format!("anchor file {name}: {m}"));
    let mut bytes = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_ANCHOR_FILE + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_ANCHOR_FILE + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| usage(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_ANCHOR_FILE {
        return Err(usage(format!("larger than {MAX_ANCHOR_FILE} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        usage("not text (an anchor file holds lines as `keyward audit anchor` prints them)".into())
    })?;
    parse_anchors(&text).map_err(usage)
}

/// `audit tail --follow`: the last `n` records, then every new one, each
/// poll asking for at most [`FOLLOW_BATCH`] records after the last seen
/// and sleeping [`FOLLOW_INTERVAL`] between polls (at once again after a
/// full batch, to catch up). Runs until interrupted, standard output
/// closes (exit 1), or a poll fails (that failure's output and exit code).
pub fn follow(n: u32, socket: &Path, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    follow_with(
        n,
        json,
        |req| exchange(socket, req),
        || {
            std::thread::sleep(FOLLOW_INTERVAL);
            true
        },
        out,
        err,
    )
}

/// [`follow`] with the exchange and the wait given: `wait` returning
/// `false` ends the loop (exit 0); tests use it to stop.
fn follow_with(
    n: u32,
    json: bool,
    mut ask: impl FnMut(&AdminRequest) -> Result<AdminResponse, Failure>,
    mut wait: impl FnMut() -> bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let mut table = render::RecordTable::default();
    let mut last_seq: Option<u64> = None;
    let mut req = AdminRequest::Audit(AuditRequest::Tail { n, after_seq: None });
    loop {
        let records = match records_of(&req, ask(&req)) {
            Ok(r) => r,
            Err(f) => {
                let o = Output::failure_line(&f, json);
                let _ = out
                    .write_all(o.stdout.as_bytes())
                    .and_then(|()| out.flush());
                let _ = err.write_all(o.stderr.as_bytes());
                return o.exit;
            }
        };
        let polled = matches!(
            req,
            AdminRequest::Audit(AuditRequest::Tail {
                after_seq: Some(_),
                ..
            })
        );
        let full = polled && records.len() >= FOLLOW_BATCH as usize;
        // Defensive: never print a record twice, whatever the agent sends.
        let fresh: Vec<AuditRecordInfo> = records
            .into_iter()
            .filter(|r| last_seq.is_none_or(|last| r.seq > last))
            .collect();
        if let Some(max) = fresh.iter().map(|r| r.seq).max() {
            last_seq = Some(max);
        }
        let text = if json {
            render::json_lines(&fresh)
        } else {
            table.push(&fresh)
        };
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Exit::Error;
        }
        if !full && !wait() {
            return Exit::Success;
        }
        // Records are numbered from 1: after 0 is the whole trail, so
        // nothing written after an empty first answer is missed.
        req = AdminRequest::Audit(AuditRequest::Tail {
            n: FOLLOW_BATCH,
            after_seq: Some(last_seq.unwrap_or(0)),
        });
    }
}

/// `keyward policy check FILE`: the same parser and validation the agent
/// uses, run locally (no agent needed). Exit 1 when the file is not valid.
/// `keyward policy check [--strict] FILE`: exit 0 when valid, 1 when not;
/// with `strict`, a cryptoperiod longer than NIST SP 800-57 recommends
/// (otherwise a note) makes it invalid too.
fn policy_check(file: &Path, strict: bool, json: bool) -> Output {
    let result = keyward_policy::Policy::from_file(file);
    let mode = |p: &keyward_policy::Policy| format!("{:?}", p.mode()).to_lowercase();
    // What --strict refuses: the period warnings.
    let refused: &[String] = match &result {
        Ok(p) if strict => &p.period_warnings,
        _ => &[],
    };
    let stdout = match (&result, json) {
        (Ok(p), true) => render::json(&serde_json::json!({
            "file": file.display().to_string(), "valid": refused.is_empty(), "mode": mode(p),
            "applications": p.applications.len(), "classes": p.classes.len(),
            "administrators": p.administrators.len(), "notes": p.notes,
            "strict": strict, "period_warnings": p.period_warnings,
        })),
        (Err(e), true) => {
            let mut doc =
                crate::json::error_document("InvalidPolicy", &e.to_string(), Exit::Error.code());
            if let Some(o) = doc.as_object_mut() {
                o.insert("file".into(), file.display().to_string().into());
                o.insert("valid".into(), false.into());
            }
            render::json(&doc)
        }
        (Ok(_), false) if !refused.is_empty() => String::new(),
        (Ok(p), false) => {
            let mut text = format!(
                "{}: valid ({} mode, {}, {})\n",
                file.display(),
                mode(p),
                crate::style::plural(p.applications.len(), "application"),
                crate::style::plural(p.classes.len(), "key class")
            );
            // What strict mode would refuse, said in lab mode; weak
            // algorithms of legacy classes; periods above the standards'.
            for note in &p.notes {
                text.push_str(&format!("note: {}\n", render::clean(note)));
            }
            text
        }
        (Err(_), false) => String::new(),
    };
    let invalid = |stderr: String| Output {
        stdout: stdout.clone(),
        stderr: if json {
            // The JSON on standard output already carries the error.
            format!("keyward: {} is not valid\n", file.display())
        } else {
            stderr
        },
        exit: Exit::Error,
    };
    match result {
        Ok(_) if !refused.is_empty() => invalid(
            refused
                .iter()
                .map(|w| {
                    format!(
                        "keyward: {}: {} (refused by --strict)\n",
                        file.display(),
                        render::clean(w)
                    )
                })
                .collect(),
        ),
        Ok(_) => Output::success(stdout),
        Err(e) => invalid(format!("keyward: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::admin::{AuditResponse, AuditVerification, KeyResponse};

    /// `keyward policy check` says, in lab mode, what strict mode would
    /// refuse of the dual-control settings (here: a quorum without a
    /// roster), in text and in JSON.
    #[test]
    fn policy_check_shows_the_notes_of_a_lab_policy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(
            &file,
            "[settings]\nmode = \"lab\"\n\n[quorum.destroy]\napprovals = 2\nroles = [\"security-officer\"]\n",
        )
        .unwrap();
        let text = policy_check(&file, false, false);
        assert_eq!(text.exit, Exit::Success, "{text:?}");
        assert!(text.stdout.contains("valid (lab mode"), "{}", text.stdout);
        assert!(text.stdout.contains("\nnote: "), "{}", text.stdout);
        let json = policy_check(&file, false, true);
        let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(doc["notes"].as_array().map(Vec::len), Some(1), "{doc}");
    }

    /// A cryptoperiod above NIST SP 800-57's recommendation is a note, and
    /// an error (exit 1) with `--strict`, in text and in JSON.
    #[test]
    fn policy_check_strict_refuses_long_cryptoperiods() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(
            &file,
            "[settings]\nmode = \"lab\"\n\n[[class]]\nname = \"archive\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\nprotect_period = \"3650d\"\nprocess_period = \"3650d\"\n",
        )
        .unwrap();
        let plain = policy_check(&file, false, false);
        assert_eq!(plain.exit, Exit::Success, "{plain:?}");
        assert!(plain.stdout.contains("note: class \"archive\", protect_period: 3650d is longer than the recommended 1095d"), "{}", plain.stdout);
        let strict = policy_check(&file, true, false);
        assert_eq!(strict.exit, Exit::Error, "{strict:?}");
        assert!(strict.stdout.is_empty(), "{}", strict.stdout);
        assert!(
            strict
                .stderr
                .contains("NIST SP 800-57 Part 1 Rev. 5, Table 1"),
            "{}",
            strict.stderr
        );
        assert!(
            strict.stderr.ends_with("(refused by --strict)\n"),
            "{}",
            strict.stderr
        );
        let json = policy_check(&file, true, true);
        assert_eq!(json.exit, Exit::Error);
        let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(doc["valid"], false, "{doc}");
        assert_eq!(
            doc["period_warnings"].as_array().map(Vec::len),
            Some(1),
            "{doc}"
        );
        // A class within the recommendation passes --strict.
        std::fs::write(
            &file,
            "[settings]\nmode = \"lab\"\n\n[[class]]\nname = \"tls\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\nprotect_period = \"365d\"\nprocess_period = \"730d\"\n",
        )
        .unwrap();
        let quiet = policy_check(&file, true, false);
        assert_eq!(quiet.exit, Exit::Success, "{quiet:?}");
        assert!(!quiet.stdout.contains("note:"), "{}", quiet.stdout);
    }
    use crate::cli::Cli;
    use clap::Parser;
    use keyward_protocol::admin::{AdminErrorKind, ApprovalRequest, AuditProblem};

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
    fn a_new_key_name_is_checked_before_anything_is_sent() {
        let rule = "use letters, digits, '-', '_' and '.', 1-64 characters, starting with a \
                    letter or digit";
        for args in [
            &["key", "create", "a/b;x", "--class", "tls"][..],
            &[
                "discover", "--adopt", "0a", "--name", "a/b;x", "--class", "tls",
            ],
            &[
                "key",
                "import",
                "/nonexistent",
                "--class",
                "tls",
                "--name",
                "a/b;x",
                "--reason",
                "r",
            ],
        ] {
            let e = req(args).unwrap_err();
            assert_eq!(
                (e.exit, e.kind.as_str()),
                (Exit::Usage, "Invalid"),
                "{args:?}"
            );
            assert_eq!(e.message, format!("key name \"a/b;x\": {rule}"), "{args:?}");
        }
        assert!(matches!(
            key(&["key", "create", "web-1.v2_x", "--class", "tls"]),
            KeyRequest::Create { name, .. } if name == "web-1.v2_x"
        ));
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(req(&["status"]), Ok(AdminRequest::Status));
        assert_eq!(
            key(&["token", "init", "lab", "--reason", "reuse"]),
            KeyRequest::TokenInit {
                token: "lab".into(),
                reason: "reuse".into()
            }
        );
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
            key(&[
                "key",
                "create",
                "web",
                "--class",
                "tls",
                "--algorithm",
                "rsa:3072"
            ]),
            KeyRequest::Create {
                name: "web".into(),
                class: "tls".into(),
                algorithm: Some(keyward_policy::Algorithm::Rsa { min_bits: 3072 }),
                token: None,
                owner: None
            }
        );
        let e = req(&[
            "key",
            "create",
            "web",
            "--class",
            "tls",
            "--algorithm",
            "rsa:lots",
        ])
        .unwrap_err();
        assert_eq!((e.exit, e.kind.as_str()), (Exit::Usage, "Invalid"));
        assert!(e.message.contains("\"rsa:lots\""), "{e:?}");
        assert_eq!(
            e.to_json()["error"]["exit_code"],
            2,
            "the --json error document, as before"
        );
        assert_eq!(
            key(&["key", "list", "--state", "active", "--token", "t"]),
            KeyRequest::List {
                token: Some("t".into()),
                state: Some("active".parse().unwrap())
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
            ("resume", KeyAction::Resume),
            ("deactivate", KeyAction::Deactivate),
        ] {
            assert_eq!(
                key(&["key", cmd, "web", "--reason", "r", "--token", "t"]),
                KeyRequest::Transition {
                    name: "web".into(),
                    token: Some("t".into()),
                    action,
                    reason: Some("r".into()),
                    code: None,
                }
            );
        }
        for (cmd, action, code) in [
            ("suspend", KeyAction::Suspend, ReasonCode::CertificateHold),
            (
                "destroy",
                KeyAction::Destroy,
                ReasonCode::CessationOfOperation,
            ),
            (
                "revoke",
                KeyAction::Revoke { rotate: false },
                ReasonCode::CessationOfOperation,
            ),
        ] {
            let given: &[&str] = if cmd == "suspend" {
                &[]
            } else {
                &["--reason-code", "cessation-of-operation"]
            };
            assert_eq!(
                key(&[
                    &["key", cmd, "web", "--reason", "r", "--token", "t"][..],
                    given
                ]
                .concat()),
                KeyRequest::Transition {
                    name: "web".into(),
                    token: Some("t".into()),
                    action,
                    reason: Some("r".into()),
                    code: Some(code),
                }
            );
        }
        assert_eq!(
            key(&[
                "key",
                "revoke",
                "web",
                "--rotate",
                "--reason",
                "leak",
                "--reason-code",
                "keyCompromise"
            ]),
            KeyRequest::Transition {
                name: "web".into(),
                token: None,
                action: KeyAction::Revoke { rotate: true },
                reason: Some("leak".into()),
                code: Some(ReasonCode::KeyCompromise),
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
            KeyRequest::PinUnlock {
                token: "t".into(),
                role: None,
                application: None
            }
        );
        assert_eq!(
            key(&["pin", "unlock", "t", "--role", "so"]),
            KeyRequest::PinUnlock {
                token: "t".into(),
                role: Some(PinRole::So),
                application: None
            }
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
    fn report_becomes_a_request_and_its_answer_a_document() {
        use keyward_protocol::admin::{Report, RotationCompliance};
        let want = ReportRequest {
            key: None,
            token: None,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
        };
        assert_eq!(req(&["report"]), Ok(AdminRequest::Report(want.clone())));
        let r = req(&[
            "report",
            "--window",
            "3s",
            "--baseline",
            "30s",
            "--key",
            "k",
            "--spike-floor",
            "20",
        ]);
        assert_eq!(
            r,
            Ok(AdminRequest::Report(ReportRequest {
                key: Some("k".into()),
                window_secs: 3,
                baseline_secs: 30,
                thresholds: AnomalyThresholds {
                    spike_floor: 20,
                    ..AnomalyThresholds::default()
                },
                ..want.clone()
            }))
        );

        let report = Report {
            generated_at: NOW,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
            keys: Vec::new(),
            rotation: RotationCompliance::default(),
            failed_admin: Default::default(),
            pending_requests: Vec::new(),
            unmanaged: Vec::new(),
            anomalies: Vec::new(),
        };
        let request = AdminRequest::Report(want);
        let answer = || Ok(AdminResponse::Report(Box::new(report.clone())));
        let text = present(&request, answer(), false);
        assert_eq!(text.exit, Exit::Success);
        assert!(text.stdout.contains("no managed keys"), "{text:?}");
        let json = present(&request, answer(), true);
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(v["generated_at"], crate::json::rfc3339(NOW).unwrap());
        // Failures keep their exit codes; a wrong answer is unexpected.
        let err = present(
            &request,
            Ok(AdminResponse::KeyErr {
                kind: AdminErrorKind::NotFound,
                message: "no key \"k\"".into(),
            }),
            true,
        );
        assert_eq!(err.exit, Exit::NotFound);
        let v: serde_json::Value = serde_json::from_str(&err.stdout).unwrap();
        assert_eq!(v["error"]["exit_code"], 4);
        let odd = present(&request, Ok(AdminResponse::Err("x".into())), false);
        assert_eq!(odd.exit, Exit::Error);
        let odd = present(&key_req(), answer(), false);
        assert!(odd.stderr.contains("Report to a key request"), "{odd:?}");
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
                assert_eq!(
                    operations,
                    [
                        keyward_policy::Operation::Sign,
                        keyward_policy::Operation::Verify
                    ]
                );
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
            status: "pending".parse().unwrap(),
            reason: "retired".into(),
            parameters: "{}".into(),
            needed: 2,
            decisions: Vec::new(),
            outcome: String::new(),
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
            pending.stdout.starts_with("request:     req-1\n"),
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
        assert_eq!(v["id"], "req-1");

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
            assert_eq!(v["error"]["exit_code"], exit.code());
            assert_eq!(
                v["error"]["kind"],
                crate::json::snake_case(&format!("{kind:?}"))
            );
        }

        let out = present(&key_req(), Ok(AdminResponse::Err("busy".into())), false);
        assert_eq!(out.exit, Exit::Error);
        assert_eq!(out.stderr, "keyward: the agent refused: busy\n");

        let status = keyward_protocol::admin::Status {
            agent_version: "0.1.0".into(),
            app_protocol: keyward_protocol::APP_VERSIONS,
            admin_protocol: keyward_protocol::ADMIN_VERSIONS,
            pid: 1,
            uptime_secs: 1,
            connections: 0,
            socket_events: Vec::new(),
            pending_requests: 0,
            socket: "s".into(),
            tokens: vec![],
            policy: Default::default(),
            keys_by_state: Vec::new(),
            audit: Default::default(),
            scheduler_last_run: None,
            scheduler_next_run: None,
            store: Default::default(),
        };
        let out = present(
            &key_req(),
            Ok(AdminResponse::Status(Box::new(status.clone()))),
            true,
        );
        assert_eq!(out.exit, Exit::Error);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "unexpected");
        let out = present(
            &AdminRequest::Status,
            Ok(AdminResponse::Key(Box::new(KeyResponse::Done("x".into())))),
            false,
        );
        assert_eq!(out.exit, Exit::Error);
        assert!(out.stderr.contains("unexpected answer"), "{out:?}");
        let out = present(
            &AdminRequest::Status,
            Ok(AdminResponse::Status(Box::new(status))),
            false,
        );
        assert_eq!(out.exit, Exit::Success);
        assert!(out.stdout.starts_with("agent:     keyward-agent 0.1.0\n"));

        let unreachable = Failure::local(Exit::Error, "Unreachable", "cannot reach");
        let out = present(&key_req(), Err(unreachable), true);
        assert_eq!(out.exit, Exit::Error);
        assert_eq!(out.stderr, "keyward: cannot reach\n");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "unreachable");
    }

    fn audit(args: &[&str]) -> Result<AuditRequest, Failure> {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        req(&all).map(|r| match r {
            AdminRequest::Audit(a) => a,
            other => panic!("{args:?}: {other:?}"),
        })
    }

    #[test]
    fn audit_commands_become_requests() {
        assert_eq!(audit(&["verify"]), Ok(AuditRequest::Verify));
        assert_eq!(
            audit(&["tail"]),
            Ok(AuditRequest::Tail {
                n: 20,
                after_seq: None
            })
        );
        // --follow starts like a plain tail.
        assert_eq!(
            audit(&["tail", "-n", "3", "--follow"]),
            Ok(AuditRequest::Tail {
                n: 3,
                after_seq: None
            })
        );
        assert_eq!(
            audit(&["query"]),
            Ok(AuditRequest::Query {
                key: None,
                application: None,
                since: None,
                until: None,
                denied_only: false,
                limit: 1000
            })
        );
        assert_eq!(
            audit(&[
                "query",
                "--key",
                "web-tls",
                "--app",
                "nginx",
                "--since",
                "2026-01-01T00:00:00Z",
                "--until",
                "2026-01-31T18:00:00Z",
                "--result",
                "denied",
                "--limit",
                "10",
            ]),
            Ok(AuditRequest::Query {
                key: Some("web-tls".into()),
                application: Some("nginx".into()),
                since: Some(1_767_225_600),
                until: Some(NOW),
                denied_only: true,
                limit: 10
            })
        );
        for (since, until) in [
            ("2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ] {
            let e = audit(&["query", "--since", since, "--until", until]).unwrap_err();
            assert_eq!((e.exit, e.kind.as_str()), (Exit::Usage, "Usage"));
            assert!(e.message.contains("is not before --until"), "{e:?}");
        }
    }

    fn record(seq: u64) -> AuditRecordInfo {
        AuditRecordInfo {
            seq,
            at: NOW,
            micros: 0,
            kind: "use".into(),
            actor: "application".into(),
            application: Some("nginx".into()),
            uid: Some(33),
            pid: Some(1),
            exe: None,
            token: Some("keyward".into()),
            key: Some("web-tls".into()),
            key_version: Some(1),
            operation: "C_Sign".into(),
            mechanism: Some(0x1041),
            result: 0,
            reason: String::new(),
            count: 1,
            span_us: 0,
            host: None,
        }
    }

    fn records(seqs: impl IntoIterator<Item = u64>) -> AdminResponse {
        AdminResponse::Audit(Box::new(AuditResponse::Records(
            seqs.into_iter().map(record).collect(),
        )))
    }

    fn verified(first_bad: Option<AuditProblem>) -> AdminResponse {
        AdminResponse::Audit(Box::new(AuditResponse::Verified(AuditVerification {
            records: 10,
            head_seq: 10,
            checkpoints_ok: 1,
            sealed_through: 8,
            unsealed: 2,
            anchors_ok: 0,
            first_bad,
        })))
    }

    const VERIFY: AdminRequest = AdminRequest::Audit(AuditRequest::Verify);
    const TAIL: AdminRequest = AdminRequest::Audit(AuditRequest::Tail {
        n: 20,
        after_seq: None,
    });

    #[test]
    fn audit_verify_exits_8_when_tampered() {
        let out = present(&VERIFY, Ok(verified(None)), false);
        assert_eq!((out.exit, out.stderr.as_str()), (Exit::Success, ""));
        assert!(out.stdout.ends_with("\nintact\n"), "{out:?}");
        let out = present(&VERIFY, Ok(verified(None)), true);
        assert_eq!(out.exit, Exit::Success);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["first_bad"], serde_json::Value::Null);
        assert_eq!(v["sealed_through"], 8);

        let bad = || {
            Ok(verified(Some(AuditProblem {
                seq: 7,
                problem: "previous hash does not match record 6".into(),
                anchor: false,
            })))
        };
        let out = present(&VERIFY, bad(), false);
        assert_eq!(out.exit, Exit::AuditBroken);
        assert_eq!(out.exit.code(), 8);
        assert!(
            out.stdout
                .ends_with("FIRST BAD RECORD: 7: previous hash does not match record 6\n"),
            "{out:?}"
        );
        assert_eq!(
            out.stderr,
            "keyward: the audit trail does not verify: record 7: previous hash does not match record 6\n"
        );
        let out = present(&VERIFY, bad(), true);
        assert_eq!(out.exit, Exit::AuditBroken);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["first_bad"]["seq"], 7);

        // Records to a verify request: unexpected, not success.
        let out = present(&VERIFY, Ok(records(1..=1)), false);
        assert_eq!(out.exit, Exit::Error);
        assert_eq!(
            out.stderr,
            "keyward: unexpected answer from the agent: Audit(Records) to an audit request\n"
        );
        let out = present(
            &VERIFY,
            Ok(AdminResponse::KeyErr {
                kind: AdminErrorKind::Failed,
                message: "the audit key cannot sign".into(),
            }),
            true,
        );
        assert_eq!(out.exit, Exit::Failed);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "failed");
    }

    #[test]
    fn audit_records_are_a_table_or_json_lines() {
        let out = present(&TAIL, Ok(records(1..=2)), false);
        assert_eq!(out.exit, Exit::Success);
        assert!(out.stdout.starts_with("SEQ  TIME  "), "{out:?}");
        assert_eq!(out.stdout.lines().count(), 3);
        let out = present(&TAIL, Ok(records(1..=2)), true);
        assert_eq!(out.exit, Exit::Success);
        let seqs: Vec<u64> = out
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 2]);
        let out = present(&TAIL, Ok(records([])), false);
        assert_eq!(out.stdout, "no audit records\n");
        let out = present(&TAIL, Ok(records([])), true);
        assert_eq!(out.stdout, "");

        // Failures keep the stream JSON lines: one error line.
        let out = present(
            &TAIL,
            Ok(AdminResponse::KeyErr {
                kind: AdminErrorKind::NotFound,
                message: "no key".into(),
            }),
            true,
        );
        assert_eq!(out.exit, Exit::NotFound);
        assert_eq!(out.stdout.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["error"]["exit_code"], 4);
        assert_eq!(out.stderr, "keyward: no key\n");
        let out = present(&TAIL, Ok(verified(None)), false);
        assert_eq!(out.exit, Exit::Error);
        assert!(out.stderr.contains("Audit(Verified) to an audit request"));
        let out = present(
            &TAIL,
            Ok(AdminResponse::Key(Box::new(KeyResponse::Done("x".into())))),
            false,
        );
        assert_eq!(out.exit, Exit::Error);
    }

    /// Runs `follow_with` against canned answers; returns the requests,
    /// stdout, stderr, the exit code and how often it waited.
    fn follow_script(
        json: bool,
        answers: Vec<Result<AdminResponse, Failure>>,
    ) -> (Vec<AdminRequest>, String, String, Exit, usize) {
        let remaining = std::cell::Cell::new(answers.len());
        let mut answers = answers.into_iter();
        let mut asked = Vec::new();
        let waits = std::cell::Cell::new(0);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = follow_with(
            20,
            json,
            |req| {
                asked.push(req.clone());
                remaining.set(remaining.get().saturating_sub(1));
                answers
                    .next()
                    .unwrap_or_else(|| panic!("asked too often: {req:?}"))
            },
            || {
                waits.set(waits.get() + 1);
                // Stop once every canned answer was given.
                remaining.get() > 0
            },
            &mut out,
            &mut err,
        );
        (
            asked,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            exit,
            waits.get(),
        )
    }

    fn tail_after(seq: u64) -> AdminRequest {
        AdminRequest::Audit(AuditRequest::Tail {
            n: FOLLOW_BATCH,
            after_seq: Some(seq),
        })
    }

    #[test]
    fn follow_polls_after_the_last_record_seen() {
        let (asked, out, err, exit, waits) = follow_script(
            true,
            vec![
                Ok(records(5..=6)),
                Ok(records([])),
                // A record already printed is not printed again.
                Ok(records(6..=8)),
            ],
        );
        assert_eq!(asked, [TAIL, tail_after(6), tail_after(6)]);
        let seqs: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [5, 6, 7, 8]);
        assert_eq!((err.as_str(), exit, waits), ("", Exit::Success, 3));

        // Text: one header, then rows as they come.
        let (_, out, _, _, _) = follow_script(false, vec![Ok(records(1..=1)), Ok(records(2..=2))]);
        assert_eq!(out.matches("SEQ").count(), 1, "{out}");
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    #[test]
    fn follow_from_an_empty_trail_misses_nothing() {
        let (asked, out, _, exit, _) =
            follow_script(false, vec![Ok(records([])), Ok(records(1..=3))]);
        assert_eq!(asked, [TAIL, tail_after(0)]);
        assert_eq!(exit, Exit::Success);
        assert!(out.starts_with("SEQ  "), "{out}");
        assert_eq!(out.lines().count(), 4, "{out}");
    }

    #[test]
    fn follow_catches_up_without_waiting_after_a_full_batch() {
        let full = FOLLOW_BATCH as u64;
        let (asked, out, _, _, waits) = follow_script(
            true,
            vec![
                Ok(records(1..=1)),
                Ok(records(2..=full + 1)),
                Ok(records(full + 2..=full + 2)),
            ],
        );
        assert_eq!(asked, [TAIL, tail_after(1), tail_after(full + 1)]);
        assert_eq!(out.lines().count() as u64, full + 2);
        // Waited after the first answer and the last, not after the full one.
        assert_eq!(waits, 2);
    }

    #[test]
    fn follow_stops_when_the_agent_goes_away() {
        let gone = Failure::local(Exit::Error, "Unreachable", "cannot reach keyward-agent");
        let (asked, out, err, exit, _) =
            follow_script(true, vec![Ok(records(1..=1)), Err(gone.clone())]);
        assert_eq!(asked.len(), 2);
        assert_eq!(exit, Exit::Error);
        assert_eq!(err, "keyward: cannot reach keyward-agent\n");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["error"]["kind"], "unreachable");
        let (_, out, _, exit, _) = follow_script(false, vec![Err(gone)]);
        assert_eq!((out.as_str(), exit), ("", Exit::Error));
    }
}
