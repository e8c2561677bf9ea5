//! Destruction, run once a destroy request is approved: the HSM objects of
//! every version of the key are removed, then the key and its versions
//! move to destroyed in one lifecycle change. The inventory keeps the key's
//! record (name, versions, history: who, when, why); nothing can use, find
//! or bring back the key material.
//!
//! The HSM comes first, the inventory after: a crash in between leaves a
//! key the inventory still knows with fewer objects, and running the
//! destruction again removes what is left and records it. Running it on a
//! key already destroyed removes whatever is left and changes nothing else.

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_inventory::{Actor, AuditKind, DateUpdates, KeyChange, LifecycleChange, VersionChange};
use keyward_policy::{transition, version_transition, Action, KeyState, ReasonCode};
use keyward_protocol::admin::{AdminErrorKind, BackupMark, KeyResponse};

use crate::backend::BackendObject;
use crate::keys::{secs, KeyView, ManagedRef};

use super::backup::marks;

use super::hsm::{class_name, HsmSession};
use super::*;

/// The key classes of a version's objects, in the order they are removed:
/// the private half before the public half, so that a private key left by
/// an interrupted run can still prove itself against its public half (a
/// private key that shows no public value is recognised by a signature
/// its public half verifies).
const KEY_CLASSES: [u64; 3] = [ck::CKO_PRIVATE_KEY, ck::CKO_SECRET_KEY, ck::CKO_PUBLIC_KEY];

/// The operation of the lifecycle record that names, at a key's
/// destruction, the backups still holding it.
pub const DESTROY_BACKUPS: &str = "destroy backups";

impl Lifecycle {
    /// Destroys key `t` by `who` for `reason`: removes from the HSM the
    /// private, public and secret key objects of every version (found by
    /// the version's `CKA_ID` on the key's token and recognised by its
    /// fingerprint; a plant with its `CKA_ID` is left alone, and logged),
    /// whatever their state; then moves the key and every version to
    /// destroyed as one lifecycle change (the store stamps each version's
    /// `destroyed_at`); then forgets what the agent knew of the objects,
    /// so that a handle an application holds fails at its next call and no
    /// search finds the key.
    ///
    /// The destruction names the backups made before it that hold one of
    /// the key's versions (from their `backup` records in the trail): in
    /// the log, in a `destroy backups` lifecycle record written with the
    /// change, and in the approved request's outcome; `keyward key show`
    /// lists them after ([`Lifecycle::backups_holding`]).
    ///
    /// Idempotent: after a crash half-way, running it again removes what is
    /// left and succeeds; on a destroyed key it removes what may be left
    /// and records nothing more. An object the HSM refuses to remove fails
    /// the call before the inventory changes (run it again).
    ///
    /// With `request`, the destruction is that approved request's
    /// execution: the request moves to `executed` in the change's own
    /// transaction (or, on a key destroyed already, after the objects
    /// left are removed).
    pub(crate) fn destroy_key(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        (reason, code): (&str, Option<ReasonCode>),
        request: Option<&str>,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let coded = super::transition::coded_reason(code, reason);
        let reason = coded.as_str();
        // What the store holds now, not what the caller saw.
        let t = Target {
            token: t.token,
            key: self.reload(t)?,
        };
        let from = state_of(&t.key);
        let to = if from == KeyState::Destroyed {
            None
        } else {
            Some(transition(from, Action::Destroy).map_err(|r| AdminError {
                kind: AdminErrorKind::Refused,
                message: format!("key {}: {r}", t.label()),
            })?)
        };
        let removed = self.remove_key_objects(&t);
        self.forget_key_objects(&t);
        let removed = removed?;
        let held = self.held_note(&t.key);
        match to {
            Some(to) => {
                self.record_destruction(
                    &t,
                    (to, code),
                    (who, by, reason),
                    (&held, secs(now)),
                    request,
                )?;
                log::warn!(
                    "key {} destroyed by {who}: {reason} ({removed} HSM objects removed; {held})",
                    t.label()
                );
            }
            None => {
                let outcome = format!(
                    "key {} was destroyed already: {removed} HSM objects left were removed; {held}",
                    t.label()
                );
                log::info!("{outcome}");
                if let Some(id) = request {
                    self.mark_executed(id, &outcome, now)?;
                }
            }
        }
        self.forget_key_objects(&t);
        Ok(KeyResponse::Key(Box::new(self.info(&*self.reload(&t)?)?)))
    }

    /// The key and every version of `t` moved to destroyed (`to`) as one
    /// lifecycle change, with a `destroy backups` record naming the
    /// backups that hold it (`held`); with `request`, that request moves
    /// to executed with an outcome that names them too.
    fn record_destruction(
        &self,
        t: &Target<'_>,
        (to, code): (KeyState, Option<ReasonCode>),
        (who, by, reason): (&str, &Actor, &str),
        (held, at): (&str, i64),
        request: Option<&str>,
    ) -> AResult<()> {
        let versions = t
            .key
            .versions
            .iter()
            .filter_map(|v| {
                Some(VersionChange::Move {
                    version: v.version,
                    from: v.state,
                    to: version_transition(Action::Destroy, v.state)?,
                })
            })
            .collect();
        let mut note = crate::audit::event(AuditKind::Lifecycle, by.clone(), DESTROY_BACKUPS);
        note.token = Some(t.key.record.token.clone());
        note.key = Some(t.key.record.name.clone());
        note.reason = held.to_owned();
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: t.key.record.id,
                expected: t.key.record.state,
                to: Some(to),
                code,
            },
            versions,
            dates: DateUpdates::default(),
            actor: who.to_owned(),
            reason: reason.to_owned(),
            at,
            trail: vec![note],
        };
        let outcome = format!("key {} destroyed; {held}", t.label());
        self.apply_change_for(
            by,
            Action::Destroy.name(),
            reason,
            change,
            request.map(|id| (id, outcome.as_str())),
        )?;
        Ok(())
    }

    /// The backups made before now (or before its destruction) that hold
    /// one of `key`'s versions, oldest first, from their `backup` records.
    pub(crate) fn backups_holding(&self, key: &KeyView) -> AResult<Vec<BackupMark>> {
        let rows = self.backup_rows(&key.record.name)?;
        Ok(marks::holding(&rows, key))
    }

    /// The trail's `backup` records of key versions named `key`, in trail
    /// order.
    fn backup_rows(&self, key: &str) -> AResult<Vec<keyward_inventory::usage::EventRow>> {
        self.audit
            .log()
            .lifecycle_rows(Some(key), &[marks::BACKUP])
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("audit trail: {e}"),
            })
    }

    /// [`marks::held_note`] of `key`; a trail that cannot be read is said,
    /// and does not stop the destruction.
    fn held_note(&self, key: &KeyView) -> String {
        match self.backups_holding(key) {
            Ok(held) => marks::held_note(&held),
            Err(e) => format!("the backups holding it are unknown ({})", e.message),
        }
    }

    /// Removes the key objects of every version of `t` from the HSM, on a
    /// session of its own; answers how many were removed.
    fn remove_key_objects(&self, t: &Target<'_>) -> AResult<usize> {
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let token = &t.token.config.label;
        let mut removed = 0;
        for v in &t.key.versions {
            let m = ManagedRef {
                key_id: t.key.record.id,
                version: v.version,
            };
            for cko in KEY_CLASSES {
                let all = s.by_id(&v.backend_id, cko)?;
                let genuine: Vec<BackendObject> = all
                    .iter()
                    .copied()
                    .filter(|&o| self.keys.is_genuine(token, s.backend, s.handle, o, m))
                    .collect();
                if all.len() > genuine.len() {
                    log::warn!(
                        "key {} version {}: {} {} objects with its CKA_ID are not the key \
                         (planted): left in place, listed by keyward discover",
                        t.label(),
                        v.version,
                        all.len() - genuine.len(),
                        class_name(cko)
                    );
                }
                for o in genuine {
                    removed += remove(&s, o)?;
                }
            }
        }
        Ok(removed)
    }

    /// Forgets what the agent knew of `t`'s objects: the judgements that
    /// found them genuine and what their use records name.
    fn forget_key_objects(&self, t: &Target<'_>) {
        self.keys.forget_judged_key(t.key.record.id);
        self.use_targets
            .forget_key(&t.key.record.token, &t.key.record.name);
    }
}

/// Removes `o`; an object already gone counts as removed by someone else
/// (0), any other refusal of the HSM fails the destruction.
fn remove(s: &HsmSession<'_>, o: BackendObject) -> AResult<usize> {
    match s.backend.destroy_object(s.handle, o) {
        Ok(()) => Ok(1),
        Err(crate::error::Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID)) => Ok(0),
        Err(e) => Err(hsm_err("C_DestroyObject", e)),
    }
}

#[cfg(test)]
mod softhsm_tests;
#[cfg(test)]
mod tests;
