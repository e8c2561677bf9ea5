//! Re-initialising a token outside the lab setting, under dual control.
//!
//! `keyward token init LABEL --reason TEXT` is always an approval request
//! (action `token-init`, quorum `token-init`: two security officers by
//! default) on the token, with the parameters `{"token": LABEL, "keys":
//! [..]}`: the names of the managed keys on it that are not destroyed, so
//! that the approvers see what is lost. An unknown token, or no reason, is
//! refused at once, without a request.
//!
//! Approved, it runs while no new session may open on the token (its
//! `initializing` flag, as for `C_InitToken`):
//! 1. every managed key of the token that is not destroyed is destroyed
//!    (`Lifecycle::destroy_key`: the inventory keeps its record, with who
//!    asked and approved and the request's id);
//! 2. every other backend object of the token but the audit key is removed
//!    (the loop `C_InitToken` uses);
//! 3. the virtual token's user PINs are cleared (the SO PIN and the label
//!    stay: `keyward-agent set-pin` sets them again);
//! 4. what the agent knew of the token's objects is forgotten;
//! 5. the step is recorded in the trail (a lifecycle record `token init`) and the request
//!    moves to `executed` with what it did.
//!
//! It refuses to start when a key that is not destroyed is not among the
//! keys approved (made since the request): approvers approve what is lost.
//! A run cut off half-way leaves the request approved; the next start runs
//! it again and finishes it (every step is idempotent).

use std::collections::BTreeSet;
use std::time::SystemTime;

use keyward_inventory::{ApprovalRecord, KeyFilter};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};

use super::hsm::HsmSession;
use super::*;

/// The action of a token initialisation request.
pub const TOKEN_INIT: &str = "token-init";

/// Clears the token's `initializing` flag when dropped.
struct Initializing<'t>(&'t VirtualToken);

impl Drop for Initializing<'_> {
    fn drop(&mut self) {
        self.0.counts().initializing = false;
    }
}

impl Lifecycle {
    /// The names of the managed keys on `token` that are not destroyed.
    fn live_key_names(&self, token: &str) -> AResult<Vec<String>> {
        let records = self
            .keys
            .inventory()
            .keys(&KeyFilter {
                token: Some(token.to_owned()),
                state: None,
                class: None,
            })
            .map_err(inv_err)?;
        Ok(records
            .into_iter()
            .filter(|r| r.state != KeyState::Destroyed)
            .map(|r| r.name)
            .collect())
    }

    /// `keyward token init`: the approval request to re-initialise token
    /// `label`, asked by `who` for `why`. Refused at once for an unknown
    /// token or without a reason.
    pub(crate) fn request_token_init(
        &self,
        label: &str,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(Some(label))?;
        if why.trim().is_empty() {
            return fail(
                AdminErrorKind::Invalid,
                "re-initialising a token needs a reason",
            );
        }
        let label = &t.config.label;
        let parameters = serde_json::json!({
            "token": label,
            "keys": self.live_key_names(label)?,
        });
        self.record_request_on((label, None), TOKEN_INIT, parameters, (who, why), now)
    }

    /// The token of approved request `r` and its live managed keys, which
    /// must all be among those the request names (a key made since stops
    /// the initialisation before anything changes).
    fn token_init_target(&self, r: &ApprovalRecord) -> AResult<(&VirtualToken, Vec<String>)> {
        let parameters = crate::lifecycle::request_parameters(r)?;
        let Some(label) = parameters["token"].as_str() else {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: no token in its parameters", r.id),
            );
        };
        let Some(t) = self.token_labelled(label) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("request {}: token {label:?} is gone", r.id),
            );
        };
        let approved: BTreeSet<&str> = parameters["keys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let live = self.live_key_names(label)?;
        let unapproved: Vec<&str> = live
            .iter()
            .map(String::as_str)
            .filter(|k| !approved.contains(k))
            .collect();
        if !unapproved.is_empty() {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "token {label}: keys {unapproved:?} are not among the keys approved for \
                     destruction (made since the request); nothing changed: ask again"
                ),
            );
        }
        Ok((t, live))
    }

    /// Carries out approved token initialisation request `r` (by `by`,
    /// for the trail), and moves it to `executed`.
    pub(crate) fn carry_out_token_init(
        &self,
        r: &ApprovalRecord,
        by: &Actor,
        now: SystemTime,
    ) -> AResult<()> {
        let (t, live) = self.token_init_target(r)?;
        let label = t.config.label.as_str();
        let backend = self.backend(t)?.clone();
        {
            let mut c = t.counts();
            if c.initializing {
                return fail(
                    AdminErrorKind::Conflict,
                    format!("token {label} is being initialised already"),
                );
            }
            c.initializing = true;
        }
        let _initializing = Initializing(t);
        let who = self.asked_and_approved(r)?;
        let why = format!("token {label} initialised: {} (request {})", r.reason, r.id);
        // 1. The managed keys, each recorded as a destruction.
        let mut destroyed = 0;
        for name in &live {
            let key = self.target(Some(label), name)?;
            self.destroy_key(
                &key,
                (&who, by),
                (&why, Some(keyward_policy::ReasonCode::CessationOfOperation)),
                None,
                now,
            )?;
            destroyed += 1;
        }
        // 2. Every other object but the audit key.
        let cleared = {
            let s = HsmSession::open(backend.as_ref())?;
            self.clear_token_objects(t, backend.as_ref(), s.handle, "keyward token init")
                .map_err(|e| hsm_err("C_FindObjects", e))?
        };
        // 4. What the agent knew of them, whatever follows.
        let slot = self
            .tokens
            .iter()
            .position(|x| std::ptr::eq(x, t))
            .unwrap_or(usize::MAX);
        self.keys.forget_judged(label);
        self.forget_use_targets(|k| k.0 == slot);
        if cleared.refused > 0 {
            return fail(
                AdminErrorKind::Failed,
                format!(
                    "token {label}: the HSM refused to remove {} objects ({destroyed} managed \
                     keys destroyed, {} other objects removed); the user PINs are unchanged: \
                     ask again",
                    cleared.refused, cleared.removed
                ),
            );
        }
        // 3. The user PINs.
        t.state.clear_user_pins().map_err(|e| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("token {label}: the user PINs cannot be cleared: {e}"),
        })?;
        // 5. The trail, then the request.
        let outcome = format!(
            "token {label} initialised: {destroyed} managed keys destroyed, {} other objects \
             removed, user PINs cleared",
            cleared.removed
        );
        let mut e = crate::audit::event(
            keyward_inventory::AuditKind::Lifecycle,
            by.clone(),
            "token init",
        );
        e.token = Some(label.to_owned());
        e.reason = format!("{outcome}: {why}, by {who}")
            .chars()
            .take(4096)
            .collect();
        self.audit.durable(e).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("token {label}: the initialisation cannot be recorded: {why}"),
        })?;
        self.mark_executed(&r.id, &outcome, now)?;
        log::warn!("{outcome} by {who}: {}", r.reason);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
