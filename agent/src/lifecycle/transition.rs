//! Transitions: activate, suspend, resume, deactivate, revoke (with
//! `--rotate`) and destroy, the moves the policy's table allows, applied as
//! one lifecycle change; what needs a second person becomes an approval
//! request instead.

use std::time::SystemTime;

use keyward_inventory::{Actor, DateUpdates, KeyChange, LifecycleChange, VersionChange};
use keyward_policy::{needs_approval, transition, version_transition, Action, KeyState, Rotation};
use keyward_protocol::admin::{AdminErrorKind, KeyAction, KeyResponse};

use crate::keys::secs;

use super::*;

impl Lifecycle {
    /// A lifecycle transition of key `t` by `who`.
    ///
    /// Actions that need approval are recorded (a pending request, in the
    /// inventory, expiring after [`APPROVAL_LIFETIME`]) and not performed.
    ///
    /// `Revoke { rotate: true }` is the emergency rotation, allowed on an
    /// active key only: first the key and every live version become
    /// compromised (one use later, nothing works: that part never waits);
    /// then a new version is generated, added active, and the key itself
    /// moves compromised → active with a fresh cryptoperiod from now, its
    /// history saying "emergency rotation to version N". The logical key
    /// (name, grants) stays in service; the compromised material never
    /// comes back. If generation fails, the key stays compromised and the
    /// call fails (an administrator creates a replacement).
    pub(crate) fn transition_key(
        &self,
        t: &Target<'_>,
        action: KeyAction,
        (who, by): (&str, &Actor),
        reason: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let act = action_of(action);
        let from = state_of(&t.key);
        transition(from, act).map_err(|r| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {r}", t.label()),
        })?;
        if needs_approval(from, act) {
            let parameters = serde_json::json!({ "from": from.as_str() });
            return self.record_request(t, act.name(), parameters, (who, reason), now);
        }
        self.apply_transition(t, action, (who, by), reason, None, now)
    }

    /// The transition of approved request `request` (whose parameters
    /// name the state the key leaves): refused when the key is no longer
    /// in that state (the approvers approved leaving that one); otherwise
    /// applied together with the request's move to `executed`.
    pub(crate) fn transition_approved(
        &self,
        t: &Target<'_>,
        action: KeyAction,
        (who, by): (&str, &Actor),
        reason: &str,
        (id, request): (&str, &keyward_inventory::ApprovalRecord),
        now: SystemTime,
    ) -> AResult<()> {
        let approved_from = serde_json::from_str::<serde_json::Value>(&request.parameters)
            .ok()
            .and_then(|p| p.get("from")?.as_str()?.parse::<KeyState>().ok());
        let from = state_of(&t.key);
        if approved_from != Some(from) {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "key {} is {from} now, not the state the request was approved for; nothing changed",
                    t.label()
                ),
            );
        }
        if action == KeyAction::Destroy {
            return self
                .destroy_key(t, (who, by), reason, Some(id), now)
                .map(|_| ());
        }
        self.apply_transition(t, action, (who, by), reason, Some(id), now)
            .map(|_| ())
    }

    /// Applies `action` to `t` (checked by the caller), as the execution of
    /// approved request `request` when given.
    fn apply_transition(
        &self,
        t: &Target<'_>,
        action: KeyAction,
        (who, by): (&str, &Actor),
        reason: &str,
        request: Option<&str>,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let act = action_of(action);
        let from = state_of(&t.key);
        let to = transition(from, act).map_err(|r| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {r}", t.label()),
        })?;
        let rotate = matches!(action, KeyAction::Revoke { rotate: true });
        if rotate && from != KeyState::Active {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "key {} is {from}: revoke --rotate replaces an active key; revoke it alone",
                    t.label()
                ),
            );
        }
        let at = secs(now);
        let mut dates = DateUpdates::default();
        match act {
            Action::Activate => {
                dates = period_dates(self.policy().class(&t.key.record.class), now);
                dates.activated_at = Some(at);
            }
            Action::Deactivate => dates.deactivated_at = Some(at),
            _ => {}
        }
        if rotate {
            super::dry_run::note(|| {
                format!(
                    "then a new version of {} is generated and the key returns to active (emergency rotation)",
                    t.label()
                )
            });
        }
        self.apply_moves(t, (act, to), dates, (who, by, reason), at, request)?;
        log::info!("key {} {} by {who}: {reason}", t.label(), act.past_tense());
        if rotate {
            let revoked = Target {
                token: t.token,
                key: self.reload(t)?,
            };
            // Named as the revocation it completes.
            let v = self.new_version(
                &revoked,
                (who, by),
                Rotation::Emergency,
                (act.name(), reason),
                now,
            )?;
            log::info!(
                "key {}: emergency rotation to version {v} by {who}",
                t.label()
            );
        }
        Ok(KeyResponse::Key(Box::new(self.info(&*self.reload(t)?)?)))
    }

    /// Applies `act`, which moves key `t` to `to`, as one lifecycle change
    /// by `who` at `at`: the key's move, each version's as
    /// [`version_transition`] says, and `dates` (the store stamps a
    /// version's `destroyed_at` or `deactivated_at` itself); with
    /// `request`, as the execution of that approved request.
    pub(crate) fn apply_moves(
        &self,
        t: &Target<'_>,
        (act, to): (Action, KeyState),
        dates: DateUpdates,
        (who, by, reason): (&str, &Actor, &str),
        at: i64,
        request: Option<&str>,
    ) -> AResult<AppliedChange> {
        // The versions follow as the policy says.
        let versions = t
            .key
            .versions
            .iter()
            .filter_map(|v| {
                let to = version_transition(act, v.state)?;
                Some(VersionChange::Move {
                    version: v.version,
                    from: v.state,
                    to,
                })
            })
            .collect();
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: t.key.record.id,
                expected: t.key.record.state,
                to: Some(to),
            },
            versions,
            dates,
            actor: who.to_owned(),
            reason: reason.to_owned(),
            at,
            trail: Vec::new(),
        };
        let outcome = format!("key {} {}", t.label(), act.past_tense());
        self.apply_change_for(
            by,
            act.name(),
            reason,
            change,
            request.map(|id| (id, outcome.as_str())),
        )
    }
}
