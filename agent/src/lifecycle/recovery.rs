//! Recovery windows: a compromised key may, for a bounded time and once a
//! quorum approved it, verify and decrypt again (to recover data it
//! protected) for the applications granted those; it never signs,
//! encrypts, wraps or derives again.
//!
//! `keyward key recover NAME --for DURATION --reason TEXT` is always an
//! approval request (action `recover`, quorum `recovery-window`) with the
//! parameters `{"from":"compromised","until":<unix secs>,"operations":[..]}`:
//! the window ends at `until`, counted from the request, at most the key
//! class's `max_recovery_window` (30 days by default) later. The
//! operations are those of [`RECOVERY_OPERATIONS`] the key's purpose has:
//! `verify` for a signing or MAC key, `decrypt` for an encryption key; a
//! key of another purpose (wrapping, derivation) gets no window.
//!
//! Approved, the window is a date of the key (`recovery_until`), set by a
//! lifecycle change that moves no state, recorded in the trail (`recover`)
//! with the request's move to `executed` in one transaction. Enforcement
//! reads it from the key's view ([`crate::keys::check_use`]).

use std::time::SystemTime;

use keyward_inventory::{ApprovalRecord, DateUpdates, KeyChange, LifecycleChange};
use keyward_policy::{KeyState, Operation, Purpose, DEFAULT_MAX_RECOVERY_WINDOW};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};
use keyward_protocol::names::utc;

use crate::keys::{secs, RECOVERY_OPERATIONS};

use super::*;

/// The operations a recovery window opens on a key of `purpose`.
pub(crate) fn recovery_operations(purpose: Purpose) -> Vec<Operation> {
    RECOVERY_OPERATIONS
        .into_iter()
        .filter(|&op| purpose.allows(op))
        .collect()
}

fn names(ops: &[Operation]) -> Vec<&'static str> {
    ops.iter().map(|o| o.as_str()).collect()
}

impl Lifecycle {
    /// `keyward key recover`: the approval request of a recovery window
    /// on compromised key `t`, `seconds` long from `now`, asked by `who`
    /// for `why`. Refused for a key that is not compromised, a purpose
    /// with nothing to recover, no reason, or a window longer than the
    /// class allows.
    pub(crate) fn request_recovery(
        &self,
        t: &Target<'_>,
        seconds: u64,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let state = state_of(&t.key);
        if state != KeyState::Compromised {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "key {} is {state}: a recovery window is for a compromised key",
                    t.label()
                ),
            );
        }
        let purpose = t.key.record.purpose;
        let operations = recovery_operations(purpose);
        if operations.is_empty() {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "key {} is for {purpose}: a recovery window opens verify or decrypt, \
                     which it does not do",
                    t.label()
                ),
            );
        }
        if why.trim().is_empty() {
            return fail(AdminErrorKind::Invalid, "a recovery window needs a reason");
        }
        let max = self
            .policy()
            .class(&t.key.record.class)
            .map_or(DEFAULT_MAX_RECOVERY_WINDOW, |c| c.max_recovery_window);
        if seconds == 0 || seconds > max.as_secs() {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "a recovery window of key {} lasts from 1s to {} (class {:?}), not {seconds}s",
                    t.label(),
                    keyward_policy::format_duration(max),
                    t.key.record.class
                ),
            );
        }
        let until = secs(now).saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX));
        let parameters = serde_json::json!({
            "from": KeyState::Compromised.as_str(),
            "until": until,
            "operations": names(&operations),
        });
        self.record_request(t, "recover", parameters, (who, why), now)
    }

    /// Carries out approved request `r`, a recovery window on `t` (`who`:
    /// its requester and approvers; `why`: its reason and id): refused
    /// when the key is no longer compromised, the window approved has
    /// ended, or its operations are not those the key's purpose gets;
    /// otherwise the window is set, recorded in the trail, together with
    /// the request's move to `executed`.
    pub(crate) fn recover_approved(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        why: &str,
        r: &ApprovalRecord,
        now: SystemTime,
    ) -> AResult<()> {
        let parameters = crate::lifecycle::request_parameters(r)?;
        let state = state_of(&t.key);
        if parameters["from"].as_str() != Some(KeyState::Compromised.as_str())
            || state != KeyState::Compromised
        {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "key {} is {state} now, not the compromised key the window was approved \
                     for; nothing changed",
                    t.label()
                ),
            );
        }
        let operations = recovery_operations(t.key.record.purpose);
        let approved: Vec<&str> = parameters["operations"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
            .unwrap_or_default();
        if approved != names(&operations) {
            return fail(
                AdminErrorKind::Invalid,
                format!(
                    "request {}: operations {approved:?} are not the recovery operations of \
                     key {} ({:?}); nothing changed",
                    r.id,
                    t.label(),
                    names(&operations)
                ),
            );
        }
        let Some(until) = parameters["until"].as_i64() else {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: no end of the window", r.id),
            );
        };
        let at = secs(now);
        if until <= at {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "the recovery window approved ended at {} before it was opened; nothing \
                     changed",
                    utc(until)
                ),
            );
        }
        let words = format!(
            "recovery window until {} ({})",
            utc(until),
            names(&operations).join(", ")
        );
        let mut record = crate::audit::event(
            keyward_inventory::AuditKind::Lifecycle,
            by.clone(),
            "recover",
        );
        record.token = Some(t.key.record.token.clone());
        record.key = Some(t.key.record.name.clone());
        record.reason = format!("{words}: {why}").chars().take(4096).collect();
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: t.key.record.id,
                expected: KeyState::Compromised,
                to: None,
                code: None,
            },
            versions: Vec::new(),
            dates: DateUpdates {
                recovery_until: Some(until),
                ..DateUpdates::default()
            },
            actor: who.to_owned(),
            reason: why.to_owned(),
            at,
            trail: vec![record],
        };
        let outcome = format!("key {}: {words}", t.label());
        self.apply_change_for(by, "recover", why, change, Some((&r.id, &outcome)))?;
        log::warn!("key {}: {words} opened by {who}: {why}", t.label());
        Ok(())
    }
}
