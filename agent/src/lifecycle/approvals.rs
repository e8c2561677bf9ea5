//! Dual control: an action under a quorum is recorded as a request, named
//! administrators approve or deny it with a signature over its digest, and
//! it is carried out once, when the quorum is met.
//!
//! - `Lifecycle::record_request`: the request, its parameters and reason
//!   (one pending request per action and target).
//! - `Lifecycle::decide`: an administrator's decision, checked against
//!   the roster (who they are by the connection's uid; their signature
//!   over [`decision_statement`]; their roles against the action's
//!   quorum; the requester's own approval only where the quorum lets it
//!   count), then recorded by the inventory in one transaction that also
//!   approves the request when the quorum is met: of decisions arriving
//!   together through different connections, exactly one approves.
//! - `Lifecycle::execute`: the approved action, carried out by the
//!   decision that approved it. A lifecycle change and the request's move
//!   to `executed` are one transaction, so a kill between the approval and
//!   the execution leaves the request `approved`, and the next start
//!   ([`Lifecycle::resume_approved`]) carries it out then, once; a change
//!   applied already is not applied again.
//!
//! Without a roster there is no dual control to check: a decision needs no
//! signature and one approval carries the action out.

use std::time::SystemTime;

use keyward_inventory::{Actor, ApprovalRecord, Decided, DecisionRecord};
use keyward_policy::{Approvable, ApprovalStatus, Policy, Quorum};
use keyward_protocol::admin::{ApprovalRequest, DecisionInfo, KeyResponse};
use keyward_protocol::approval::{decision_statement, RequestContent};

use crate::keys::secs;
use crate::per_use::SIGN_ACTION;

use super::hsm::*;
use super::*;

/// The quorum action of a request's action, when it has one (`None`: an
/// action this build does not carry out).
pub(crate) fn approvable(r: &ApprovalRecord) -> Option<Approvable> {
    let from = || {
        serde_json::from_str::<serde_json::Value>(&r.parameters)
            .ok()
            .and_then(|p| p.get("from")?.as_str().map(str::to_owned))
    };
    match r.action.as_str() {
        "destroy" => Some(Approvable::Destroy),
        "resume" => Some(Approvable::Resume),
        super::governance::POLICY_APPLY => Some(Approvable::PolicyApply),
        SIGN_ACTION => Some(Approvable::SignOnce),
        "deactivate" if from().as_deref() == Some("suspended") => {
            Some(Approvable::DeactivateSuspended)
        }
        "recover" => Some(Approvable::RecoveryWindow),
        "grant" => Some(Approvable::SensitiveGrant),
        super::token_init::TOKEN_INIT => Some(Approvable::TokenInit),
        super::backup::BACKUP_INIT => Some(Approvable::BackupInit),
        super::backup::BACKUP_RESTORE => Some(Approvable::BackupRestore),
        super::distribute::KEY_EXPORT => Some(Approvable::BackupExport),
        _ => None,
    }
}

/// The fields of `r` its digest covers.
fn content(r: &ApprovalRecord) -> RequestContent<'_> {
    RequestContent {
        id: &r.id,
        action: &r.action,
        target: &r.target,
        parameters: &r.parameters,
        requester: &r.requester,
        reason: &r.reason,
        created_at: r.created_at,
        expires_at: r.expires_at,
    }
}

/// What the CLI shows of request `r` with its `decisions`: a pending
/// request past its expiry is shown as expired; `needed` is what the
/// policy asks now (0 without a roster).
pub(crate) fn request_info(
    r: &ApprovalRecord,
    decisions: &[DecisionRecord],
    policy: &Policy,
    now: i64,
) -> ApprovalRequest {
    let status = match r.status {
        ApprovalStatus::Pending if r.expires_at <= now => ApprovalStatus::Expired,
        s => s,
    };
    let needed = match (policy.dual_control(), approvable(r)) {
        (true, Some(a)) => policy.quorum(a).approvals,
        _ => 0,
    };
    ApprovalRequest {
        id: r.id.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        parameters: r.parameters.clone(),
        requester: r.requester.clone(),
        reason: r.reason.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        status,
        needed,
        decisions: decisions
            .iter()
            .map(|d| DecisionInfo {
                administrator: d.administrator.clone(),
                decision: d.decision,
                at: d.at,
            })
            .collect(),
        outcome: r.outcome.clone(),
    }
}

/// What a decision on a request did, for the trail: `approve request
/// <id>: 1 of 2 approvals`, `... approved and executed: ...`.
pub(crate) fn decision_summary(r: &ApprovalRequest) -> String {
    let approvals = r
        .decisions
        .iter()
        .filter(|d| d.decision == keyward_policy::Decision::Approve)
        .count();
    let mut s = format!("request {}: {}", r.id, r.status);
    if r.status == ApprovalStatus::Pending {
        s.push_str(&format!(", {approvals} of {} approvals", r.needed.max(1)));
    }
    if !r.outcome.is_empty() {
        s.push_str(&format!(": {}", r.outcome));
    }
    s
}

/// A refusal of a decision.
fn refuse<T>(message: String) -> AResult<T> {
    fail(AdminErrorKind::Refused, message)
}

impl Lifecycle {
    /// The name an administrator acts under: their roster name, or `uid:N`
    /// without a roster.
    pub(crate) fn actor(&self, admin: &Peer) -> String {
        self.policy()
            .administrator_for_uid(admin.uid)
            .map_or_else(|| actor(admin), |a| a.name.clone())
    }

    fn request_view(&self, r: &ApprovalRecord, now: i64) -> AResult<ApprovalRequest> {
        let decisions = self.keys.inventory().decisions(&r.id).map_err(inv_err)?;
        Ok(request_info(r, &decisions, &self.policy(), now))
    }

    fn stored_request(&self, id: &str) -> AResult<ApprovalRecord> {
        match self.keys.inventory().request(id).map_err(inv_err)? {
            Some(r) => Ok(r),
            None => fail(AdminErrorKind::NotFound, format!("no request {id:?}")),
        }
    }

    /// `keyward request list`: the pending requests (not yet expired), or
    /// (`all`) every request, oldest first.
    pub(crate) fn list_requests(&self, all: bool, now: SystemTime) -> AResult<KeyResponse> {
        let now = secs(now);
        let status = (!all).then_some(ApprovalStatus::Pending);
        let mut records = self.keys.inventory().requests(status).map_err(inv_err)?;
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut out = Vec::new();
        for r in &records {
            let info = self.request_view(r, now)?;
            if all || info.status == ApprovalStatus::Pending {
                out.push(info);
            }
        }
        Ok(KeyResponse::Requests(out))
    }

    /// How many approval requests wait (pending, not yet expired), for
    /// `keyward status` and the metrics; 0 when the store cannot say (the
    /// failure is logged).
    pub fn pending_requests(&self) -> u64 {
        let now = secs(crate::clock::now());
        match self
            .keys
            .inventory()
            .requests(Some(ApprovalStatus::Pending))
        {
            Ok(r) => r.iter().filter(|r| r.expires_at > now).count() as u64,
            Err(e) => {
                log::warn!("approval requests cannot be counted: {e}");
                0
            }
        }
    }

    /// `keyward request show ID`.
    pub(crate) fn show_request(&self, id: &str, now: SystemTime) -> AResult<KeyResponse> {
        let r = self.stored_request(id)?;
        Ok(KeyResponse::Requests(vec![
            self.request_view(&r, secs(now))?
        ]))
    }

    /// Records `action` on key `t` for approval (see
    /// [`Self::record_request_on`]).
    pub(crate) fn record_request(
        &self,
        t: &Target<'_>,
        action: &str,
        parameters: serde_json::Value,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        self.record_request_on(
            (&t.label(), Some(t.key.record.id)),
            action,
            parameters,
            (who, why),
            now,
        )
    }

    /// Records `action` on `target` (a key's `token/name` and id, or what
    /// else it acts on) for approval, with `why` (kept with the request)
    /// and `parameters` (a JSON object: what the approvers approve besides
    /// the action and the target, e.g. the state a key leaves); answers
    /// `Pending`. One pending request per action and target: asking again
    /// while one is pending answers that one. The request lives as long
    /// as the action's quorum says.
    pub(crate) fn record_request_on(
        &self,
        (target, key_id): (&str, Option<i64>),
        action: &str,
        parameters: serde_json::Value,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let created_at = secs(now);
        let inventory = self.keys.inventory();
        let pending = inventory
            .requests(Some(ApprovalStatus::Pending))
            .map_err(inv_err)?;
        if let Some(open) = pending
            .iter()
            .find(|r| r.action == action && r.target == target && r.expires_at > created_at)
        {
            super::dry_run::commit_point(
                || {
                    format!(
                        "answer request {}, pending already for {action} on {target}",
                        open.id
                    )
                },
                || {
                    let quorum = self.quorum_of(approvable(open));
                    super::dry_run::needs_approval(action, target, quorum.as_ref(), Some(&open.id))
                },
            )?;
            log::info!(
                "{target}: {action} by {who}: request {} is pending already",
                open.id
            );
            return Ok(KeyResponse::Pending(self.request_view(open, created_at)?));
        }
        let mut record = ApprovalRecord {
            id: hex::encode(random(16)?),
            action: action.to_owned(),
            target: target.to_owned(),
            key_id,
            // serde_json's maps are sorted: this is the canonical form.
            parameters: parameters.to_string(),
            requester: who.to_owned(),
            reason: why.to_owned(),
            created_at,
            expires_at: created_at,
            status: ApprovalStatus::Pending,
            outcome: String::new(),
            closed_at: None,
        };
        let lifetime = approvable(&record)
            .map(|a| self.policy().quorum(a).lifetime)
            .unwrap_or(APPROVAL_LIFETIME);
        record.expires_at = created_at.saturating_add(lifetime.as_secs().max(1) as i64);
        super::dry_run::commit_point(
            || {
                format!("record a {action} request on {target} for approval; nothing else happens until it is approved")
            },
            || {
                let quorum = self.quorum_of(approvable(&record));
                super::dry_run::needs_approval(action, target, quorum.as_ref(), None)
            },
        )?;
        match inventory.create_sole_request(&record) {
            Ok(()) => {}
            // Another asked for the same at the same moment: that one.
            Err(keyward_inventory::Error::Exists(_)) => {
                let pending = inventory
                    .requests(Some(ApprovalStatus::Pending))
                    .map_err(inv_err)?;
                if let Some(open) = pending
                    .iter()
                    .find(|r| r.action == action && r.target == target && r.expires_at > created_at)
                {
                    return Ok(KeyResponse::Pending(self.request_view(open, created_at)?));
                }
                return fail(
                    AdminErrorKind::Conflict,
                    format!("{target}: a {action} request was made at the same moment; ask again"),
                );
            }
            Err(e) => return Err(inv_err(e)),
        }
        log::warn!(
            "{target}: {action} by {who} needs approval: request {} recorded, not performed",
            record.id
        );
        Ok(KeyResponse::Pending(
            self.request_view(&record, created_at)?,
        ))
    }

    /// Who decides, and how many approvals request `r` needs: with a
    /// roster, the administrator `admin`'s uid names, whose signature over
    /// `decision` on `r` must verify and whose roles must be among the
    /// quorum's; the requester's own approval only where the quorum lets
    /// it count. Without a roster, `uid:N`, no signature, one approval.
    fn decider(
        &self,
        admin: &Peer,
        r: &ApprovalRecord,
        decision: keyward_policy::Decision,
        signature: Option<&[u8]>,
    ) -> AResult<(String, u32)> {
        let policy = self.policy();
        if !policy.dual_control() {
            if signature.is_some() {
                return fail(
                    AdminErrorKind::Invalid,
                    "the policy has no roster: there is no key to check a signature against \
                     (decide without --key)"
                        .to_owned(),
                );
            }
            return Ok((actor(admin), 1));
        }
        let Some(who) = policy.administrator_for_uid(admin.uid) else {
            return refuse(format!(
                "uid {} is no administrator of the policy's roster",
                admin.uid
            ));
        };
        let Some(action) = approvable(r) else {
            return refuse(format!(
                "request {}: action {:?} is not one this agent carries out",
                r.id, r.action
            ));
        };
        let quorum: Quorum = policy.quorum(action);
        if !who.has_any_role(&quorum.roles) {
            let roles: Vec<&str> = quorum.roles.iter().map(|r| r.as_str()).collect();
            return refuse(format!(
                "administrator {:?} holds none of the roles that decide on {action} ({})",
                who.name,
                roles.join(", ")
            ));
        }
        if who.name == r.requester && !quorum.requester_counts {
            return refuse(format!(
                "administrator {:?} asked for request {}: for {action}, the decision is someone \
                 else's (cancel it instead)",
                who.name, r.id
            ));
        }
        let Some(signature) = signature else {
            return fail(
                AdminErrorKind::Invalid,
                format!(
                    "a decision needs administrator {:?}'s signature (keyward request {decision} \
                     ID --key ...)",
                    who.name
                ),
            );
        };
        let statement = decision_statement(decision, &content(r).digest());
        if let Err(why) = who.public_key.verify(&statement, signature) {
            return refuse(format!(
                "request {}: administrator {:?}'s signature is not valid for this {decision}: \
                 {why}",
                r.id, who.name
            ));
        }
        Ok((who.name.clone(), quorum.approvals))
    }

    /// `keyward request approve|deny ID`: records the decision of `admin`
    /// on request `id` and, when it meets the quorum, carries the action
    /// out. Answers the request as it stands after.
    pub(crate) fn decide(
        &self,
        admin: &Peer,
        id: &str,
        decision: keyward_policy::Decision,
        signature: Option<&[u8]>,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let at = secs(now);
        let r = self.stored_request(id)?;
        if r.status != ApprovalStatus::Pending {
            return fail(
                AdminErrorKind::Conflict,
                format!("request {id} is {}: no decision counts now", r.status),
            );
        }
        let (who, needed) = self.decider(admin, &r, decision, signature)?;
        let record = DecisionRecord {
            administrator: who.clone(),
            decision,
            signature: signature.map(<[u8]>::to_vec),
            at,
        };
        self.plan_decision(&r, &who, decision, needed)?;
        let decided = self
            .keys
            .inventory()
            .decide_request(id, &record, needed)
            .map_err(inv_err)?;
        self.sign_decisions.ring();
        match decided {
            Decided::Counted { approvals } => {
                log::info!("request {id}: approved by {who} ({approvals} of {needed})");
            }
            Decided::Denied => log::warn!("request {id}: denied by {who}"),
            // The call waiting for a signature signs, once.
            Decided::Approved { approvals } if r.action == SIGN_ACTION => {
                log::warn!("request {id}: approved by {who} ({approvals} of {needed}): the waiting call signs");
            }
            Decided::Approved { approvals } => {
                log::warn!(
                    "request {id}: approved by {who} ({approvals} of {needed}): carrying it out"
                );
                self.execute(&self.stored_request(id)?, &admin.as_administrator(), now);
            }
            Decided::Repeated => {
                return fail(
                    AdminErrorKind::Conflict,
                    format!("{who} decided on request {id} already"),
                )
            }
            Decided::Closed(status) => {
                return fail(
                    AdminErrorKind::Conflict,
                    format!("request {id} is {status}: no decision counts now"),
                )
            }
        }
        self.show_request(id, now)
    }

    /// The commit point of `who`'s `decision` on pending request `r`
    /// under a quorum of `needed` approvals: while planning, what the
    /// decision would do (a decision of `who` given already is refused as
    /// the store refuses it).
    fn plan_decision(
        &self,
        r: &ApprovalRecord,
        who: &str,
        decision: keyward_policy::Decision,
        needed: u32,
    ) -> AResult<()> {
        if !super::dry_run::planning() {
            return Ok(());
        }
        let decisions = self.keys.inventory().decisions(&r.id).map_err(inv_err)?;
        if decisions.iter().any(|d| d.administrator == who) {
            return fail(
                AdminErrorKind::Conflict,
                format!("{who} decided on request {} already", r.id),
            );
        }
        let approvals = decisions
            .iter()
            .filter(|d| d.decision == keyward_policy::Decision::Approve)
            .count() as u32
            + u32::from(decision == keyward_policy::Decision::Approve);
        let what = format!("{} on {}", r.action, r.target);
        super::dry_run::commit_point(
            || {
                match decision {
                keyward_policy::Decision::Deny => {
                    format!("request {} ({what}) is denied by {who}; nothing of it is done", r.id)
                }
                keyward_policy::Decision::Approve if approvals >= needed.max(1) => format!(
                    "request {} is approved by {who} ({approvals} of {needed}): {what} is carried out",
                    r.id
                ),
                keyward_policy::Decision::Approve => format!(
                    "request {} gets {who}'s approval ({approvals} of {needed}): {what} waits for more",
                    r.id
                ),
            }
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )
    }

    /// `keyward request cancel ID`: withdraws a pending request; its
    /// requester's, or (with a roster) a security officer's.
    pub(crate) fn cancel(
        &self,
        admin: &Peer,
        id: &str,
        why: Option<&str>,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let r = self.stored_request(id)?;
        let who = self.actor(admin);
        let officer = self
            .policy()
            .administrator_for_uid(admin.uid)
            .is_some_and(|a| a.has_role(keyward_policy::Role::SecurityOfficer));
        if who != r.requester && !officer {
            return refuse(format!(
                "request {id} is {}'s: only they or a security officer may cancel it",
                r.requester
            ));
        }
        let outcome = match why {
            Some(why) => format!("cancelled by {who}: {why}"),
            None => format!("cancelled by {who}"),
        };
        if super::dry_run::planning() && r.status != ApprovalStatus::Pending {
            return fail(
                AdminErrorKind::Conflict,
                format!("request {id} is {}: nothing to cancel", r.status),
            );
        }
        super::dry_run::commit_point(
            || {
                format!(
                    "request {id} ({} on {}) moves to cancelled",
                    r.action, r.target
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let moved = self
            .keys
            .inventory()
            .close_request(
                id,
                ApprovalStatus::Pending,
                ApprovalStatus::Cancelled,
                &outcome,
                secs(now),
            )
            .map_err(inv_err)?;
        if !moved {
            return fail(
                AdminErrorKind::Conflict,
                format!("request {id} is {}: nothing to cancel", r.status),
            );
        }
        self.sign_decisions.ring();
        log::info!("request {id}: {outcome}");
        self.show_request(id, now)
    }

    /// Carries out approved request `r` (by `by`, for the trail): the
    /// action, and the request's move to `executed` with what it did, or
    /// to `failed` with why. The outcome is in the request; the failure is
    /// logged.
    pub(crate) fn execute(&self, r: &ApprovalRecord, by: &Actor, now: SystemTime) {
        let done = self.carry_out(r, by, now);
        let (result, outcome) = match &done {
            Ok(()) => (0, "executed".to_owned()),
            Err(e) => {
                log::error!("request {}: {} failed: {}", r.id, r.action, e.message);
                let closed = self.keys.inventory().close_request(
                    &r.id,
                    ApprovalStatus::Approved,
                    ApprovalStatus::Failed,
                    &e.message,
                    secs(now),
                );
                if let Err(e) = closed {
                    log::error!("request {}: its failure cannot be recorded: {e}", r.id);
                }
                (
                    super::admin_result(e.kind),
                    format!("failed: {}", e.message),
                )
            }
        };
        let mut e = crate::audit::event(
            keyward_inventory::AuditKind::Admin,
            by.clone(),
            "request.execute",
        );
        e.result = result;
        e.reason = format!("request {}: {} {}: {outcome}", r.id, r.action, r.target)
            .chars()
            .take(4096)
            .collect();
        if let Err(why) = self.audit.durable(e) {
            log::error!(
                "request {}: its execution could not be recorded in the trail: {why}",
                r.id
            );
        }
    }

    /// Moves approved request `id` to `executed` with `outcome`, for an
    /// action whose effect is not a lifecycle change (which records it in
    /// its own transaction); a conflict when it is no longer approved.
    pub(crate) fn mark_executed(&self, id: &str, outcome: &str, now: SystemTime) -> AResult<()> {
        let moved = self
            .keys
            .inventory()
            .close_request(
                id,
                ApprovalStatus::Approved,
                ApprovalStatus::Executed,
                outcome,
                secs(now),
            )
            .map_err(inv_err)?;
        if moved {
            Ok(())
        } else {
            fail(
                AdminErrorKind::Conflict,
                format!("request {id} is no longer approved"),
            )
        }
    }

    /// Who an approved request's action is recorded as done by: its
    /// requester and its approvers (`alice, approved by bob, carol`).
    pub(crate) fn asked_and_approved(&self, r: &ApprovalRecord) -> AResult<String> {
        let approvers: Vec<String> = self
            .keys
            .inventory()
            .decisions(&r.id)
            .map_err(inv_err)?
            .into_iter()
            .filter(|d| d.decision == keyward_policy::Decision::Approve)
            .map(|d| d.administrator)
            .collect();
        Ok(format!(
            "{}, approved by {}",
            r.requester,
            approvers.join(", ")
        ))
    }

    /// The key an approved request acts on, and its token.
    pub(crate) fn request_target_key(&self, r: &ApprovalRecord) -> AResult<Target<'_>> {
        let Some(key_id) = r.key_id else {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: no key to act on", r.id),
            );
        };
        let Some(key) = self.keys.key(key_id) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("request {}: key {} is gone", r.id, r.target),
            );
        };
        let Some(token) = self.token_labelled(&key.record.token) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("request {}: token {:?} is gone", r.id, key.record.token),
            );
        };
        Ok(Target { token, key })
    }

    /// The action of `r` and its request's move to `executed`, together.
    fn carry_out(&self, r: &ApprovalRecord, by: &Actor, now: SystemTime) -> AResult<()> {
        if r.action == super::governance::POLICY_APPLY {
            return self.carry_out_policy(r, by, now);
        }
        if r.action == super::token_init::TOKEN_INIT {
            return self.carry_out_token_init(r, by, now);
        }
        if r.action == super::backup::BACKUP_INIT {
            return self.carry_out_backup_init(r, by, now);
        }
        if r.action == super::backup::BACKUP_RESTORE {
            return self.carry_out_restore(r, by, now);
        }
        if r.action == super::distribute::KEY_EXPORT {
            return self.carry_out_export(r, now);
        }
        let t = self.request_target_key(r)?;
        let who = self.asked_and_approved(r)?;
        let why = format!("{} (request {})", r.reason, r.id);
        let action = match r.action.as_str() {
            "recover" => return self.recover_approved(&t, (&who, by), &why, r, now),
            "grant" => return self.grant_approved(&t, (&who, by), r),
            "resume" => KeyAction::Resume,
            "deactivate" => KeyAction::Deactivate,
            "destroy" => KeyAction::Destroy,
            other => {
                return fail(
                    AdminErrorKind::Invalid,
                    format!("request {}: {other:?} is not an action to carry out", r.id),
                )
            }
        };
        self.transition_approved(&t, action, (&who, by), &why, (&r.id, r), now)
    }

    /// Closes the pending requests whose expiry passed (at `at`), each
    /// recorded in the trail (`request.expire`).
    pub(crate) fn expire_requests(&self, at: i64) {
        let inventory = self.keys.inventory();
        let pending = match inventory.requests(Some(ApprovalStatus::Pending)) {
            Ok(p) => p,
            Err(e) => {
                log::error!("scheduler: pending requests cannot be read: {e}");
                return;
            }
        };
        for r in pending.iter().filter(|r| r.expires_at <= at) {
            let closed = inventory.close_request(
                &r.id,
                ApprovalStatus::Pending,
                ApprovalStatus::Expired,
                "not approved in time",
                at,
            );
            match closed {
                Ok(true) => {
                    log::warn!(
                        "request {}: {} {} expired unapproved",
                        r.id,
                        r.action,
                        r.target
                    );
                    let mut e = crate::audit::event(
                        keyward_inventory::AuditKind::Admin,
                        Actor::Scheduler,
                        "request.expire",
                    );
                    e.reason = format!(
                        "request {}: {} {}: not approved in time",
                        r.id, r.action, r.target
                    )
                    .chars()
                    .take(4096)
                    .collect();
                    if let Err(why) = self.audit.durable(e) {
                        log::error!("request {}: its expiry could not be recorded: {why}", r.id);
                    }
                }
                Ok(false) => {}
                Err(e) => log::error!("request {}: cannot mark it expired: {e}", r.id),
            }
        }
    }

    /// At start: carries out the requests that were approved when the
    /// agent stopped (before their execution was recorded). An action
    /// applied already is not applied again: the request is marked
    /// `failed` with why.
    pub fn resume_approved(&self) {
        self.end_orphan_sign_requests();
        let approved = match self
            .keys
            .inventory()
            .requests(Some(ApprovalStatus::Approved))
        {
            Ok(r) => r,
            Err(e) => {
                log::error!("approved requests cannot be read: {e}");
                return;
            }
        };
        for r in approved {
            // A signature is its waiting call's to make, and that call
            // ended with the agent: never signed here.
            if r.action == SIGN_ACTION {
                continue;
            }
            log::warn!(
                "request {}: approved before the agent stopped, not yet carried out: carrying it out now",
                r.id
            );
            self.execute(&r, &Actor::Agent, crate::clock::now());
        }
    }
}
