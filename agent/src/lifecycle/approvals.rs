//! Approval requests: an action that needs a second person is recorded as
//! a pending request (`keyward` shows it) and not performed. Dual control
//! (named administrators, M of N approvals over signed requests) executes
//! them from here.

use std::time::SystemTime;

use keyward_inventory::ApprovalRecord;
use keyward_policy::ApprovalStatus;
use keyward_protocol::admin::{ApprovalRequest, KeyResponse};

use crate::keys::secs;

use super::hsm::*;
use super::*;

/// What the CLI shows of request `r`: its reason read from its parameters,
/// and a pending request past its expiry shown as expired.
pub(crate) fn request_info(r: &ApprovalRecord, now: i64) -> ApprovalRequest {
    let reason = serde_json::from_str::<serde_json::Value>(&r.parameters)
        .ok()
        .and_then(|p| p.get("reason")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let status = match r.status {
        ApprovalStatus::Pending if r.expires_at <= now => ApprovalStatus::Expired,
        s => s,
    };
    ApprovalRequest {
        id: r.id.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        requester: r.requester.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        status,
        reason,
        parameters: r.parameters.clone(),
        needed: 0,
        decisions: Vec::new(),
        outcome: String::new(),
    }
}

impl Lifecycle {
    /// `keyward request list`: the pending requests (not yet expired), or
    /// (`all`) every request, oldest first.
    pub(crate) fn list_requests(&self, all: bool, now: SystemTime) -> AResult<KeyResponse> {
        let now = secs(now);
        let status = (!all).then_some(ApprovalStatus::Pending);
        let mut records = self.keys.inventory().requests(status).map_err(inv_err)?;
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(KeyResponse::Requests(
            records
                .iter()
                .map(|r| request_info(r, now))
                .filter(|r| all || r.status == ApprovalStatus::Pending)
                .collect(),
        ))
    }

    /// How many approval requests wait (pending, not yet expired), for
    /// `keyward status` and the metrics; 0 when the store cannot say (the
    /// failure is logged).
    pub fn pending_requests(&self) -> u64 {
        let now = secs(SystemTime::now());
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
        match self.keys.inventory().request(id).map_err(inv_err)? {
            Some(r) => Ok(KeyResponse::Requests(vec![request_info(&r, secs(now))])),
            None => fail(AdminErrorKind::NotFound, format!("no request {id:?}")),
        }
    }

    /// Records `action` on `t` for approval, with `why` (kept with the
    /// request); answers `Pending`. One pending request per action and
    /// key: asking again while one is pending answers that one.
    pub(crate) fn record_request(
        &self,
        t: &Target<'_>,
        action: &str,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let created_at = secs(now);
        let inventory = self.keys.inventory();
        let pending = inventory
            .requests(Some(ApprovalStatus::Pending))
            .map_err(inv_err)?;
        if let Some(open) = pending.iter().find(|r| {
            r.action == action && r.key_id == Some(t.key.record.id) && r.expires_at > created_at
        }) {
            log::info!(
                "key {}: {action} by {who}: request {} is pending already",
                t.label(),
                open.id
            );
            return Ok(KeyResponse::Pending(request_info(open, created_at)));
        }
        let record = ApprovalRecord {
            id: hex::encode(&random(16)?),
            action: action.to_owned(),
            target: t.label(),
            key_id: Some(t.key.record.id),
            parameters: serde_json::json!({ "reason": why }).to_string(),
            requester: who.to_owned(),
            created_at,
            expires_at: created_at + APPROVAL_LIFETIME.as_secs() as i64,
            status: ApprovalStatus::Pending,
        };
        inventory.create_request(&record).map_err(inv_err)?;
        log::warn!(
            "key {}: {action} by {who} needs approval: request {} recorded, not performed",
            t.label(),
            record.id
        );
        Ok(KeyResponse::Pending(request_info(&record, created_at)))
    }
}
