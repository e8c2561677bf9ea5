//! Safety rails: `--dry-run` on every changing command, and the
//! confirmation of the irreversible ones (revoke, destroy, backup restore).
//!
//! Both act where every request leaves this process
//! ([`crate::admin::exchange`]), so that each command gets them without a
//! case of its own:
//! - with `--dry-run`, a request that changes something is sent as
//!   [`AdminRequest::DryRun`]: the agent runs its checks, changes nothing
//!   and answers the plan (or the request's own refusal); read-only
//!   requests go as they are;
//! - an irreversible request without `--yes` is confirmed first: on a
//!   terminal (standard input and standard error both ttys) its impact is
//!   shown (from a dry run) and the key's name (for a restore: the
//!   token's label) must be typed; without a terminal it is refused with
//!   exit 2 naming `--yes`, so that a script never waits for an answer.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::OnceLock;

use keyward_protocol::admin::{AdminRequest, AdminResponse, BackupRequest, KeyAction, KeyRequest};
use keyward_protocol::plan::{Impact, Plan, PlanOutcome, RestoreImpact};

use crate::admin::{Exit, Failure};
use crate::render::clean;
use crate::time::format_time;

/// `--dry-run` and `--yes`, set once for the process by `main`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Safety {
    /// Send changing requests as dry runs.
    pub dry_run: bool,
    /// Irreversible requests need no confirmation.
    pub yes: bool,
}

static SAFETY: OnceLock<Safety> = OnceLock::new();

/// Sets the process's [`Safety`] (once; later calls change nothing).
pub fn set(safety: Safety) {
    let _ = SAFETY.set(safety);
}

/// The process's [`Safety`] (none set: neither flag).
pub fn get() -> Safety {
    SAFETY.get().copied().unwrap_or_default()
}

/// Whether `req` cannot be undone: revoke, destroy, backup restore.
pub fn irreversible(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::Key(
            KeyRequest::Transition {
                action: KeyAction::Revoke { .. } | KeyAction::Destroy,
                ..
            } | KeyRequest::Backup(BackupRequest::Restore { .. })
        )
    )
}

/// What goes on the socket for `req` under `safety`: the dry run of a
/// changing request with `--dry-run`, else `req` itself.
pub fn outgoing(req: &AdminRequest, safety: Safety) -> Option<AdminRequest> {
    match req {
        AdminRequest::Key(k) if safety.dry_run && !k.is_read_only() => {
            Some(AdminRequest::DryRun(k.clone()))
        }
        _ => None,
    }
}

/// What must be typed to confirm `req`, once its `plan` is known: the
/// key's name, or for a restore the token's label.
pub fn confirmation_word(req: &AdminRequest, plan: &Plan) -> Option<(String, &'static str)> {
    match req {
        AdminRequest::Key(KeyRequest::Transition { name, .. }) => {
            Some((name.clone(), "Type the key's name to confirm: "))
        }
        AdminRequest::Key(KeyRequest::Backup(BackupRequest::Restore { .. })) => plan
            .restore
            .as_ref()
            .map(|r| (r.token.clone(), "Type the token's label to confirm: ")),
        _ => None,
    }
}

/// The refusal of an irreversible request without `--yes` and without a
/// terminal to ask on.
pub fn needs_yes(req: &AdminRequest) -> Failure {
    Failure::local(
        Exit::Usage,
        "Usage",
        format!(
            "{} cannot be undone and there is no terminal to confirm it on: add --yes to \
             confirm (--dry-run shows what it would do); nothing was sent",
            req.name()
        ),
    )
}

/// Whether the process can ask its user: standard input and standard
/// error are terminals.
pub fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks for the confirmation of `req`: shows `plan` (its impact) on
/// `out`, asks for the word, reads one line of `input`. `Ok` when the
/// typed line is the word; otherwise a failure that says nothing changed.
pub fn confirm(
    req: &AdminRequest,
    plan: &Plan,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let Some((word, prompt)) = confirmation_word(req, plan) else {
        return Ok(());
    };
    let _ = write!(out, "{}", plan_text(plan));
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut line = String::new();
    let read = input.read_line(&mut line);
    let typed = line.trim_end_matches(['\n', '\r']);
    if matches!(read, Ok(n) if n > 0) && typed == word {
        return Ok(());
    }
    Err(Failure::local(
        Exit::Usage,
        "NotConfirmed",
        format!(
            "not confirmed (expected {:?}): {} was not sent; nothing changed",
            clean(&word),
            req.name()
        ),
    ))
}

/// A plan as text: what the request would do, then its impact.
pub fn plan_text(p: &Plan) -> String {
    let mut s = format!("dry run: {}\n", clean(&p.action));
    match &p.outcome {
        PlanOutcome::Done => s.push_str("would be carried out at once\n"),
        PlanOutcome::NeedsApproval {
            action,
            target,
            approvals,
            roles,
            pending,
        } => {
            s.push_str(&format!(
                "needs approval: a {} request on {}",
                clean(action),
                clean(target)
            ));
            if *approvals > 0 {
                let roles: Vec<String> = roles.iter().map(|r| clean(r)).collect();
                s.push_str(&format!(
                    ", quorum {approvals} approval{} ({})",
                    if *approvals == 1 { "" } else { "s" },
                    roles.join(", ")
                ));
            } else {
                s.push_str(", one approval (no roster)");
            }
            s.push('\n');
            if let Some(id) = pending {
                s.push_str(&format!("request {} is pending already\n", clean(id)));
            }
        }
    }
    for step in &p.steps {
        s.push_str(&format!("  - {}\n", clean(step)));
    }
    if let Some(i) = &p.impact {
        s.push_str(&impact_text(i));
    }
    if let Some(r) = &p.restore {
        s.push_str(&restore_text(r));
    }
    s.push_str("nothing was changed\n");
    s
}

fn names_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items
            .iter()
            .map(|i| clean(i))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The impact of a revoke or destroy, one fact a line.
pub fn impact_text(i: &Impact) -> String {
    let mut s = format!(
        "impact: {} {}/{} ({}, {} -> {})\n",
        clean(&i.action),
        clean(&i.token),
        clean(&i.key),
        i.purpose,
        i.from,
        i.to
    );
    if i.applications.is_empty() {
        s.push_str("  applications losing operations: none\n");
    }
    for a in &i.applications {
        let ops: Vec<&str> = a.operations.iter().map(|o| o.as_str()).collect();
        s.push_str(&format!(
            "  application {} loses {} (grant of the {})\n",
            clean(&a.application),
            ops.join(", "),
            clean(&a.source)
        ));
    }
    s.push_str(&format!("  data: {}\n", i.data.describe()));
    if i.signatures_stay_verifiable == Some(true) {
        s.push_str(
            "  signatures made with it stay verifiable with its public key or certificate\n",
        );
    }
    let certs: Vec<String> = i
        .certificates
        .iter()
        .map(|c| {
            format!(
                "{} (version {}, until {})",
                c.subject,
                c.version,
                format_time(c.not_after)
            )
        })
        .collect();
    s.push_str(&format!(
        "  certificates (revoke them at their CA): {}\n",
        names_or_none(&certs)
    ));
    let backups: Vec<String> = i
        .backups
        .iter()
        .map(|b| format!("{} of {}", &b.id[..b.id.len().min(16)], format_time(b.at)))
        .collect();
    s.push_str(&format!(
        "  backups still holding it: {}\n",
        names_or_none(&backups)
    ));
    let pending: Vec<String> = i
        .pending_requests
        .iter()
        .map(|(id, action)| format!("{action} {id}"))
        .collect();
    s.push_str(&format!(
        "  pending requests on it: {}\n",
        names_or_none(&pending)
    ));
    s
}

/// What a restore would bring back.
pub fn restore_text(r: &RestoreImpact) -> String {
    format!(
        "impact: restore backup {} of {} onto token {}\n  keys restored: {}\n  keys that stay destroyed: {}\n",
        clean(&r.backup[..r.backup.len().min(16)]),
        format_time(r.created_at),
        clean(&r.token),
        names_or_none(&r.restores),
        names_or_none(&r.stays_destroyed)
    )
}

/// The plan in the answer to a dry run, or the failure the answer is.
pub fn plan_of(resp: AdminResponse) -> Result<Plan, Failure> {
    match resp {
        AdminResponse::Key(k) => match *k {
            keyward_protocol::admin::KeyResponse::Plan(p) => Ok(*p),
            other => Err(Failure::local(
                Exit::Error,
                "Unexpected",
                format!("unexpected answer to a dry run: {other:?}"),
            )),
        },
        AdminResponse::KeyErr { kind, message } => Err(Failure::from_agent(kind, message)),
        AdminResponse::Err(message) => Err(Failure::local(
            Exit::Error,
            "Agent",
            format!("the agent refused: {message}"),
        )),
        _ => Err(Failure::local(
            Exit::Error,
            "Unexpected",
            "unexpected answer to a dry run",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_domain::{KeyState, Operation, Purpose};
    use keyward_protocol::plan::{DataEffect, LostOperations};

    fn revoke(name: &str) -> AdminRequest {
        AdminRequest::Key(KeyRequest::Transition {
            name: name.into(),
            token: None,
            action: KeyAction::Revoke { rotate: false },
            reason: None,
            code: None,
        })
    }

    fn plan() -> Plan {
        Plan {
            request: "key.revoke".into(),
            action: "revoke web".into(),
            outcome: PlanOutcome::Done,
            steps: vec!["revoke lab/web: key active -> compromised".into()],
            impact: Some(Impact {
                token: "lab".into(),
                key: "web".into(),
                action: "revoke".into(),
                from: KeyState::Active,
                to: KeyState::Compromised,
                purpose: Purpose::Encryption,
                applications: vec![LostOperations {
                    application: "app".into(),
                    operations: vec![Operation::Encrypt, Operation::Decrypt],
                    source: "class".into(),
                }],
                data: DataEffect::RecoveryWindowOnly,
                signatures_stay_verifiable: None,
                certificates: vec![],
                backups: vec![],
                pending_requests: vec![],
            }),
            restore: None,
        }
    }

    #[test]
    fn dry_run_wraps_changing_requests_only() {
        let dry = Safety {
            dry_run: true,
            yes: false,
        };
        assert_eq!(
            outgoing(&revoke("web"), dry),
            Some(AdminRequest::DryRun(match revoke("web") {
                AdminRequest::Key(k) => k,
                _ => unreachable!(),
            }))
        );
        let show = AdminRequest::Key(KeyRequest::Show {
            name: "web".into(),
            token: None,
        });
        assert_eq!(outgoing(&show, dry), None);
        assert_eq!(outgoing(&AdminRequest::Status, dry), None);
        assert_eq!(outgoing(&revoke("web"), Safety::default()), None);
    }

    #[test]
    fn revoke_destroy_and_restore_are_irreversible() {
        assert!(irreversible(&revoke("web")));
        let destroy = AdminRequest::Key(KeyRequest::Transition {
            name: "web".into(),
            token: None,
            action: KeyAction::Destroy,
            reason: None,
            code: None,
        });
        assert!(irreversible(&destroy));
        let restore = AdminRequest::Key(KeyRequest::Backup(BackupRequest::Restore {
            token: None,
            file: vec![],
            reason: "r".into(),
        }));
        assert!(irreversible(&restore));
        let suspend = AdminRequest::Key(KeyRequest::Transition {
            name: "web".into(),
            token: None,
            action: KeyAction::Suspend,
            reason: None,
            code: None,
        });
        assert!(!irreversible(&suspend));
        assert_eq!(needs_yes(&destroy).exit, Exit::Usage);
        assert!(needs_yes(&destroy).message.contains("--yes"));
    }

    #[test]
    fn only_the_keys_name_confirms() {
        let p = plan();
        let mut out = Vec::new();
        assert!(confirm(&revoke("web"), &p, &mut &b"web\n"[..], &mut out).is_ok());
        let shown = String::from_utf8(out).unwrap();
        assert!(
            shown.contains("application app loses encrypt, decrypt"),
            "{shown}"
        );
        assert!(shown.contains("recovery window"), "{shown}");
        assert!(
            shown.ends_with("Type the key's name to confirm: "),
            "{shown}"
        );
        for wrong in [&b"y\n"[..], b"Web\n", b"", b"web2\n", b" web\n"] {
            let e = confirm(&revoke("web"), &p, &mut &wrong[..], &mut Vec::new()).unwrap_err();
            assert_eq!((e.exit, e.kind.as_str()), (Exit::Usage, "NotConfirmed"));
            assert!(e.message.contains("nothing changed"), "{e:?}");
        }
    }

    #[test]
    fn a_plan_reads_as_what_would_happen() {
        let mut p = plan();
        p.outcome = PlanOutcome::NeedsApproval {
            action: "destroy".into(),
            target: "lab/web".into(),
            approvals: 2,
            roles: vec!["security-officer".into()],
            pending: None,
        };
        let text = plan_text(&p);
        assert!(
            text.contains("needs approval: a destroy request on lab/web, quorum 2 approvals"),
            "{text}"
        );
        assert!(text.ends_with("nothing was changed\n"), "{text}");
    }
}
