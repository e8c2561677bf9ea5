//! Dry runs (`keyward ... --dry-run`): one mechanism for every changing
//! request it serves.
//!
//! [`Lifecycle::dry_run`] runs the request's own code on this thread with
//! planning on. Every check runs as for the real request (the name, the
//! policy, the state transition, the quorum); each place where a request
//! would change something first calls `commit_point`, which, while
//! planning, records what the change would be and stops the request there
//! with nothing changed: no inventory write, no HSM object, no approval
//! request, no trail record. The commit points are the lifecycle change
//! (`Lifecycle::apply_change_for`), the recording of an approval request
//! (`Lifecycle::record_request_on`), a generation in the HSM
//! (`Lifecycle::generate`), an unwrap into it (key import), a signature
//! in it (certificates and their requests), a certificate stored, a backup
//! recorded, a share held, the grant, decision, cancel and PIN-count
//! writes, and a policy written or put in force (apply, init, reload); the
//! few writes made on the way to one of them (the file a restore keeps
//! until its approval, the trail records of a policy the reload refuses)
//! are skipped while `planning`.
//!
//! Only the requests whose every write is behind a commit point are
//! planned ([`plannable`]); any other is refused with nothing done. A
//! refusal is the request's own (same kind, same message, same exit code).
//! A dry run writes no trail record: it is logged at info.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_policy::Purpose;
use keyward_policy::{permits, Approvable, Operation};
use keyward_protocol::admin::{BackupRequest, KeyAction, KeyRequest};
use keyward_protocol::plan::{
    DataEffect, Impact, LostOperations, Plan, PlanOutcome, RestoreImpact,
};

use super::*;
use crate::keys::effective_grants;

/// What a planned request would do, gathered on its thread.
#[derive(Default)]
struct Planning {
    steps: Vec<String>,
    outcome: Option<PlanOutcome>,
    restore: Option<RestoreImpact>,
}

thread_local! {
    static PLANNING: RefCell<Option<Planning>> = const { RefCell::new(None) };
}

/// Planning on this thread while it lives; off again when dropped (also
/// on a panic).
struct Scope;

impl Scope {
    fn enter() -> Scope {
        PLANNING.with(|p| *p.borrow_mut() = Some(Planning::default()));
        Scope
    }

    fn finish(self) -> Planning {
        PLANNING.with(|p| p.borrow_mut().take()).unwrap_or_default()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        PLANNING.with(|p| p.borrow_mut().take());
    }
}

/// Whether this thread plans a dry run (a write on the way to a commit
/// point is skipped then).
pub(crate) fn planning() -> bool {
    PLANNING.with(|p| p.borrow().is_some())
}

/// Notes a step of the plan (nothing when not planning).
pub(crate) fn note(step: impl FnOnce() -> String) {
    PLANNING.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.steps.push(step());
        }
    });
}

/// Notes what a restore would bring back (nothing when not planning).
pub(crate) fn note_restore(restore: impl FnOnce() -> RestoreImpact) {
    PLANNING.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.restore = Some(restore());
        }
    });
}

/// The point where a request changes something. Not planning: `Ok`, and
/// the caller goes on. Planning: `step` and `outcome` are recorded and the
/// request stops here with nothing changed (an error the dry run turns
/// into its plan).
pub(crate) fn commit_point(
    step: impl FnOnce() -> String,
    outcome: impl FnOnce() -> PlanOutcome,
) -> AResult<()> {
    PLANNING.with(|p| match p.borrow_mut().as_mut() {
        None => Ok(()),
        Some(p) => {
            p.steps.push(step());
            p.outcome = Some(outcome());
            fail(
                AdminErrorKind::Failed,
                "dry run: stopped before the change; nothing changed",
            )
        }
    })
}

/// Whether a dry run of `req` is served: every write it makes is behind a
/// commit point.
pub fn plannable(req: &KeyRequest) -> bool {
    match req {
        KeyRequest::Create { .. }
        | KeyRequest::Transition { .. }
        | KeyRequest::Rotate { .. }
        | KeyRequest::GrantAdd { .. }
        | KeyRequest::GrantRemove { .. }
        | KeyRequest::Adopt { .. }
        | KeyRequest::Recover { .. }
        | KeyRequest::TokenInit { .. }
        | KeyRequest::RequestCancel { .. }
        | KeyRequest::RequestDecide { .. }
        | KeyRequest::PolicyApply { .. }
        | KeyRequest::Init { .. }
        | KeyRequest::PinUnlock { .. }
        | KeyRequest::PolicyReload => true,
        KeyRequest::Distribution(d) => {
            matches!(
                d,
                keyward_protocol::distribution::DistRequest::Export { .. }
                    | keyward_protocol::distribution::DistRequest::Import { .. }
            )
        }
        KeyRequest::Backup(b) => matches!(
            b,
            BackupRequest::Init { .. }
                | BackupRequest::Restore { .. }
                | BackupRequest::Create { .. }
                | BackupRequest::Submit { .. }
        ),
        KeyRequest::Cert(_) => true,
        _ => false,
    }
}

/// The outcome of recording an approval request for `action` on `target`
/// under `quorum` (`None`: no roster), with the id of one pending already.
pub(crate) fn needs_approval(
    action: &str,
    target: &str,
    quorum: Option<&keyward_policy::Quorum>,
    pending: Option<&str>,
) -> PlanOutcome {
    PlanOutcome::NeedsApproval {
        action: action.to_owned(),
        target: target.to_owned(),
        approvals: quorum.map_or(0, |q| q.approvals),
        roles: quorum.map_or_else(Vec::new, |q| {
            q.roles.iter().map(|r| r.as_str().to_owned()).collect()
        }),
        pending: pending.map(str::to_owned),
    }
}

/// The data effect of moving a key of `purpose` to compromised
/// (`destroy`: false) or destroyed.
pub(crate) fn data_effect(purpose: Purpose, destroy: bool) -> DataEffect {
    match (purpose, destroy) {
        (Purpose::Encryption | Purpose::Wrapping, false) => DataEffect::RecoveryWindowOnly,
        (Purpose::Encryption | Purpose::Wrapping, true) => DataEffect::Unreadable,
        _ => DataEffect::NotApplicable,
    }
}

/// Of `granted` operations, those a key in `state` (process period ending
/// at `process_until`, unix seconds) permits at `now`: what is lost when
/// the key permits nothing any more.
pub(crate) fn usable_now(
    granted: &[Operation],
    state: KeyState,
    process_until: Option<i64>,
    now: SystemTime,
) -> Vec<Operation> {
    let until = process_until
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    granted
        .iter()
        .copied()
        .filter(|&op| permits(state, op, now, until).is_ok())
        .collect()
}

impl Lifecycle {
    /// Answers a dry run of `req` by `admin`: the plan, or the refusal the
    /// request would get. Logged; nothing recorded, nothing changed.
    pub fn dry_run(&self, admin: &Peer, req: KeyRequest) -> AdminResponse {
        let (operation, what) = (req.name(), req.describe());
        match self.plan_request(admin, req) {
            Ok(plan) => {
                log::info!("admin {admin}: dry run: {operation}: {what}: planned");
                AdminResponse::Key(Box::new(KeyResponse::Plan(Box::new(plan))))
            }
            Err(e) => {
                log::info!(
                    "admin {admin}: dry run: {operation}: {what}: {}: {}",
                    e.kind.as_str(),
                    e.message
                );
                AdminResponse::KeyErr {
                    kind: e.kind,
                    message: e.message,
                }
            }
        }
    }

    fn plan_request(&self, admin: &Peer, req: KeyRequest) -> AResult<Plan> {
        let (request, action) = (req.name().to_owned(), req.describe());
        if req.is_read_only() || !plannable(&req) {
            return fail(
                AdminErrorKind::Invalid,
                format!("{request}: --dry-run is not available for this request; nothing was done"),
            );
        }
        let irreversible = self.irreversible_target(&req);
        let scope = Scope::enter();
        let result = self.key_call(admin, req);
        let planned = scope.finish();
        let outcome = match (result, planned.outcome) {
            (_, Some(outcome)) => outcome,
            (Err(e), None) => return Err(e),
            (Ok(_), None) => {
                // Every plannable request changes something behind a commit
                // point; one that ended without reaching one changed nothing.
                log::warn!("dry run: {request}: reached no change");
                PlanOutcome::Done
            }
        };
        let impact = match irreversible {
            Some((name, token, a)) => Some(self.impact(token.as_deref(), &name, a)?),
            None => None,
        };
        Ok(Plan {
            request,
            action,
            outcome,
            steps: planned.steps,
            impact,
            restore: planned.restore,
        })
    }

    /// The key and action whose impact a plan of `req` shows: a revoke or
    /// destroy, or the approval of a destroy request (which carries it out).
    fn irreversible_target(&self, req: &KeyRequest) -> Option<(String, Option<String>, KeyAction)> {
        match req {
            KeyRequest::Transition {
                name,
                token,
                action: a @ (KeyAction::Revoke { .. } | KeyAction::Destroy),
                ..
            } => Some((name.clone(), token.clone(), *a)),
            KeyRequest::RequestDecide {
                id,
                decision: keyward_policy::Decision::Approve,
                ..
            } => {
                let r = self.keys.inventory().request(id).ok().flatten()?;
                let key = self.keys.key(r.key_id?)?;
                (r.action == "destroy").then(|| {
                    (
                        key.record.name.clone(),
                        Some(key.record.token.clone()),
                        KeyAction::Destroy,
                    )
                })
            }
            _ => None,
        }
    }

    /// What revoking or destroying (`action`) key `name` means now.
    pub(crate) fn impact(
        &self,
        token: Option<&str>,
        name: &str,
        action: KeyAction,
    ) -> AResult<Impact> {
        let t = self.target(token, name)?;
        let destroy = action == KeyAction::Destroy;
        let from = state_of(&t.key);
        let to = keyward_policy::transition(from, action_of(action)).map_err(|r| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {r}", t.label()),
        })?;
        let now = crate::clock::now();
        let record = &t.key.record;
        let mut applications: Vec<LostOperations> = Vec::new();
        for g in effective_grants(&self.policy(), &t.key) {
            let lost = usable_now(&g.operations, from, record.process_until, now);
            if lost.is_empty() {
                continue;
            }
            match applications
                .iter_mut()
                .find(|a| a.application == g.application && a.source == g.source)
            {
                Some(a) => {
                    for op in lost {
                        if !a.operations.contains(&op) {
                            a.operations.push(op);
                        }
                    }
                }
                None => applications.push(LostOperations {
                    application: g.application,
                    operations: lost,
                    source: g.source,
                }),
            }
        }
        let info = self.info(&t.key)?;
        let pending_requests = self
            .keys
            .inventory()
            .requests(Some(keyward_policy::ApprovalStatus::Pending))
            .map_err(inv_err)?
            .into_iter()
            .filter(|r| r.key_id == Some(record.id) && r.expires_at > crate::keys::secs(now))
            .map(|r| (r.id, r.action))
            .collect();
        Ok(Impact {
            token: record.token.clone(),
            key: record.name.clone(),
            action: action_of(action).name().to_owned(),
            from,
            to,
            purpose: record.purpose,
            applications,
            data: data_effect(record.purpose, destroy),
            signatures_stay_verifiable: matches!(record.purpose, Purpose::Signing).then_some(true),
            certificates: info.certificates,
            backups: self.backups_holding(&t.key)?,
            pending_requests,
        })
    }

    /// The quorum of `approvable` under the policy in force (`None`: no
    /// roster).
    pub(crate) fn quorum_of(
        &self,
        approvable: Option<Approvable>,
    ) -> Option<keyward_policy::Quorum> {
        let policy = self.policy();
        match (policy.dual_control(), approvable) {
            (true, Some(a)) => Some(policy.quorum(a)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_point_passes_unless_planning_and_stops_when_planning() {
        assert!(!planning());
        assert!(commit_point(|| "x".into(), || PlanOutcome::Done).is_ok());
        let scope = Scope::enter();
        assert!(planning());
        note(|| "first".into());
        let stopped = commit_point(|| "second".into(), || PlanOutcome::Done);
        assert!(stopped.is_err());
        let p = scope.finish();
        assert_eq!(p.steps, vec!["first".to_owned(), "second".to_owned()]);
        assert_eq!(p.outcome, Some(PlanOutcome::Done));
        assert!(!planning());
    }

    #[test]
    fn planning_ends_with_its_scope_even_when_unfinished() {
        {
            let _scope = Scope::enter();
            assert!(planning());
        }
        assert!(!planning());
        assert!(commit_point(|| "x".into(), || PlanOutcome::Done).is_ok());
    }

    #[test]
    fn what_is_lost_depends_on_the_state_now() {
        let now = crate::clock::now();
        let ops = [Operation::Encrypt, Operation::Decrypt];
        assert_eq!(usable_now(&ops, KeyState::Active, None, now), ops.to_vec());
        assert!(usable_now(&ops, KeyState::PreActivation, None, now).is_empty());
        assert!(usable_now(&ops, KeyState::Suspended, None, now).is_empty());
        let later = crate::keys::secs(now) + 3600;
        assert_eq!(
            usable_now(&ops, KeyState::Deactivated, Some(later), now),
            vec![Operation::Decrypt]
        );
    }

    fn agent() -> (tempfile::TempDir, crate::agent::Agent) {
        crate::agent::tests::mock_agent(crate::agent::tests::STRICT_SIGNING)
    }

    /// A transition as the CLI sends it: suspend, revoke and destroy with
    /// a reason (and revoke and destroy with a final code).
    fn transition(name: &str, action: KeyAction) -> KeyRequest {
        let (reason, code) = match action {
            KeyAction::Suspend => (Some("test".to_owned()), None),
            KeyAction::Revoke { .. } | KeyAction::Destroy => (
                Some("test".to_owned()),
                Some(keyward_policy::ReasonCode::Superseded),
            ),
            _ => (None, None),
        };
        KeyRequest::Transition {
            name: name.into(),
            token: None,
            action,
            reason,
            code,
        }
    }

    /// Keys, versions, history, grants and requests, and the trail's length.
    fn state(a: &crate::agent::Agent) -> (String, u64) {
        let inv = a.keys.inventory();
        let keys = inv.keys(&keyward_inventory::KeyFilter::default()).unwrap();
        let mut all = format!("{keys:?}");
        for k in &keys {
            all.push_str(&format!(
                "{:?}{:?}",
                inv.versions(k.id).unwrap(),
                inv.history(k.id).unwrap()
            ));
        }
        all.push_str(&format!("{:?}", inv.requests(None).unwrap()));
        (all, a.audit.log().head().unwrap().0)
    }

    #[test]
    fn a_dry_run_plans_and_changes_nothing() {
        let (_d, a) = agent();
        let admin = crate::agent::tests::admin_peer();
        let create = KeyRequest::Create {
            name: "k".into(),
            class: "signing".into(),
            algorithm: None,
            token: None,
            owner: None,
        };
        a.lifecycle.key_call(&admin, create).unwrap();
        a.lifecycle
            .key_call(&admin, transition("k", KeyAction::Activate))
            .unwrap();
        let before = state(&a);
        let objects = a.keys.all().len();
        for (req, done) in [
            (
                KeyRequest::Create {
                    name: "k2".into(),
                    class: "signing".into(),
                    algorithm: None,
                    token: None,
                    owner: None,
                },
                true,
            ),
            (transition("k", KeyAction::Suspend), true),
            (transition("k", KeyAction::Revoke { rotate: false }), true),
            (transition("k", KeyAction::Revoke { rotate: true }), true),
            (transition("k", KeyAction::Destroy), false),
            (
                KeyRequest::Rotate {
                    name: "k".into(),
                    token: None,
                },
                true,
            ),
        ] {
            let name = req.name();
            let AdminResponse::Key(answer) = a.lifecycle.dry_run(&admin, req) else {
                panic!("{name}: no plan");
            };
            let KeyResponse::Plan(plan) = *answer else {
                panic!("{name}: {answer:?}");
            };
            assert_eq!(plan.request, name);
            assert_eq!(plan.outcome == PlanOutcome::Done, done, "{name}: {plan:?}");
            assert!(!plan.steps.is_empty(), "{name}");
            assert_eq!(state(&a), before, "{name} changed something");
            assert_eq!(a.keys.all().len(), objects);
        }
        // The same refusal as the real request.
        let real = a
            .lifecycle
            .key_call(&admin, transition("k", KeyAction::Activate))
            .unwrap_err();
        let dry = a
            .lifecycle
            .dry_run(&admin, transition("k", KeyAction::Activate));
        assert_eq!(
            dry,
            AdminResponse::KeyErr {
                kind: real.kind,
                message: real.message
            }
        );
        assert!(!planning(), "planning ends with the dry run");
    }

    #[test]
    fn encrypted_data_after_revoke_and_destroy() {
        assert_eq!(
            data_effect(Purpose::Encryption, false),
            DataEffect::RecoveryWindowOnly
        );
        assert_eq!(data_effect(Purpose::Wrapping, true), DataEffect::Unreadable);
        assert_eq!(
            data_effect(Purpose::Signing, true),
            DataEffect::NotApplicable
        );
        assert_eq!(data_effect(Purpose::Mac, false), DataEffect::NotApplicable);
    }
}
