//! Transitions: activate, suspend, resume, deactivate, revoke (with
//! `--rotate`) and destroy, the moves the policy's table allows, applied as
//! one lifecycle change; what needs a second person becomes an approval
//! request instead.

use std::time::SystemTime;

use keyward_inventory::{Actor, DateUpdates, KeyChange, LifecycleChange, VersionChange};
use keyward_policy::ReasonCode;
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
        (reason, code): (&str, Option<ReasonCode>),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let act = action_of(action);
        let from = state_of(&t.key);
        transition(from, act).map_err(|r| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {r}", t.label()),
        })?;
        if needs_approval(from, act) {
            // The code is part of what the approvers approve.
            let parameters = match code {
                Some(c) => serde_json::json!({ "from": from.as_str(), "code": c.as_str() }),
                None => serde_json::json!({ "from": from.as_str() }),
            };
            return self.record_request(t, act.name(), parameters, (who, reason), now);
        }
        self.apply_transition(t, action, (who, by), (reason, code), None, now)
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
        let parameters = serde_json::from_str::<serde_json::Value>(&request.parameters).ok();
        let approved_from = parameters
            .as_ref()
            .and_then(|p| p.get("from")?.as_str()?.parse::<KeyState>().ok());
        // A request from before codes were kept has none.
        let code = parameters
            .as_ref()
            .and_then(|p| p.get("code")?.as_str()?.parse::<ReasonCode>().ok());
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
                .destroy_key(t, (who, by), (reason, code), Some(id), now)
                .map(|_| ());
        }
        self.apply_transition(t, action, (who, by), (reason, code), Some(id), now)
            .map(|_| ())
    }

    /// Applies `action` to `t` (checked by the caller), as the execution of
    /// approved request `request` when given.
    fn apply_transition(
        &self,
        t: &Target<'_>,
        action: KeyAction,
        (who, by): (&str, &Actor),
        (reason, code): (&str, Option<ReasonCode>),
        request: Option<&str>,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let act = action_of(action);
        let coded = coded_reason(code, reason);
        let reason = coded.as_str();
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
        self.apply_moves(t, (act, to, code), dates, (who, by, reason), at, request)?;
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
    /// `request`, as the execution of that approved request. The key
    /// keeps `code` with its new state.
    pub(crate) fn apply_moves(
        &self,
        t: &Target<'_>,
        (act, to, code): (Action, KeyState, Option<ReasonCode>),
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
                code,
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

/// The reason a change records in the key's history and the trail: with a
/// code, in the fixed form `code=keyCompromise; TEXT`, which the trail's
/// readers can take apart (the record format stays as it was).
pub(crate) fn coded_reason(code: Option<ReasonCode>, text: &str) -> String {
    match code {
        Some(c) => format!("code={c}; {text}"),
        None => text.to_owned(),
    }
}

/// The reason and the RFC 5280 code of an administrator's transition, as
/// the request gave them, checked: suspend, revoke and destroy need a
/// reason that is more than whitespace; revoke and destroy a code that is
/// not `certificateHold` (they are final), a suspension one that defaults
/// to `certificateHold`; the other actions take no code. Answers the
/// reason (the action's name when an optional one is missing) and the
/// code.
pub(crate) fn checked_reason(
    action: KeyAction,
    reason: Option<String>,
    code: Option<ReasonCode>,
) -> AResult<(String, Option<ReasonCode>)> {
    let act = action_of(action);
    let verb = format!("keyward key {act}");
    let invalid = |message: String| AdminError {
        kind: AdminErrorKind::Invalid,
        message,
    };
    let names = || {
        ReasonCode::ALL
            .iter()
            .filter(|c| !c.is_hold())
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let needs_reason = matches!(
        action,
        KeyAction::Suspend | KeyAction::Revoke { .. } | KeyAction::Destroy
    );
    let reason = match reason {
        Some(r) if !r.trim().is_empty() => r,
        _ if needs_reason => {
            return Err(invalid(format!(
                "{verb} needs a reason (--reason), more than whitespace: it is kept in the key's \
                 history and the audit trail"
            )))
        }
        _ => verb.clone(),
    };
    let code = match (action, code) {
        (KeyAction::Suspend, None) => Some(ReasonCode::CertificateHold),
        (KeyAction::Suspend, c) => c,
        (KeyAction::Revoke { .. } | KeyAction::Destroy, None) => {
            return Err(invalid(format!(
                "{verb} needs an RFC 5280 reason code (--reason-code): one of {}",
                names()
            )))
        }
        (KeyAction::Revoke { .. } | KeyAction::Destroy, Some(c)) if c.is_hold() => {
            return Err(invalid(format!(
                "{verb} is final: certificateHold is a suspension's code (keyward key suspend); \
                 one of {}",
                names()
            )))
        }
        (KeyAction::Revoke { .. } | KeyAction::Destroy, c) => c,
        (_, Some(c)) => {
            return Err(invalid(format!(
                "{verb} takes no reason code ({c}): codes go with suspend, revoke and destroy"
            )))
        }
        (_, None) => None,
    };
    Ok((reason, code))
}
