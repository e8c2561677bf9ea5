//! Approval requests: an action that needs a second person is recorded as
//! a pending request (`keyward` shows it) and not performed. Dual control
//! (named administrators, M of N approvals over signed requests) executes
//! them from here.

use std::time::SystemTime;

use keyward_inventory::ApprovalRecord;
use keyward_protocol::admin::{ApprovalRequest, KeyResponse};

use crate::keys::secs;

use super::hsm::*;
use super::*;

pub(crate) fn request_info(r: &ApprovalRecord) -> ApprovalRequest {
    ApprovalRequest {
        id: r.id.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        requester: r.requester.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        status: r.status,
    }
}

impl Lifecycle {
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
            .requests(Some(keyward_policy::ApprovalStatus::Pending))
            .map_err(inv_err)?;
        if let Some(open) = pending.iter().find(|r| {
            r.action == action && r.key_id == Some(t.key.record.id) && r.expires_at > created_at
        }) {
            log::info!(
                "key {}: {action} by {who}: request {} is pending already",
                t.label(),
                open.id
            );
            return Ok(KeyResponse::Pending(request_info(open)));
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
            status: keyward_policy::ApprovalStatus::Pending,
        };
        inventory.create_request(&record).map_err(inv_err)?;
        log::warn!(
            "key {}: {action} by {who} needs approval: request {} recorded, not performed",
            t.label(),
            record.id
        );
        Ok(KeyResponse::Pending(request_info(&record)))
    }
}
