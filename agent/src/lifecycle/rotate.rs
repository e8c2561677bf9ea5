//! Rotation: a new version generated in the HSM, the key's dates moved,
//! older versions demoted as the policy says, in one lifecycle change.

use std::time::SystemTime;

use keyward_inventory::{Actor, KeyChange, KeyVersion, LifecycleChange, VersionChange};
use keyward_policy::Rotation;
use keyward_protocol::admin::AdminErrorKind;

use crate::keys::secs;

use super::hsm::*;
use super::*;

impl Lifecycle {
    /// Generates the next version of `t` and adds it (active) in one
    /// change with what `rotation` does to the key and its older versions
    /// (see [`Rotation`]) and the key's new cryptoperiod from `now`.
    /// `operation` names the trail records, `why` ends their reason.
    /// Returns the version's number.
    pub(crate) fn new_version(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        rotation: Rotation,
        (operation, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<u32> {
        let r = &t.key.record;
        let from = state_of(&t.key);
        let to = rotation.key_state(from).map_err(|e| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {e}", t.label()),
        })?;
        let policy = self.policy();
        let Some(class) = policy.class(&r.class) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("key class {:?} is no longer in the policy", r.class),
            );
        };
        let alg = r.algorithm;
        let backend = self.backend(t.token)?;
        let (id, objects) = self.generate(t.token, backend.as_ref(), class, alg, &r.name)?;
        let fingerprint = match HsmSession::open(backend.as_ref()) {
            Ok(s) => s.fingerprint(&objects),
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t.token, &id);
                return Err(e);
            }
        };
        let at = secs(now);
        let next = t.key.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let mut versions: Vec<VersionChange> = t
            .key
            .versions
            .iter()
            .filter_map(|v| {
                let to = rotation.demotes(v.state)?;
                Some(VersionChange::Move {
                    version: v.version,
                    from: v.state,
                    to,
                })
            })
            .collect();
        versions.push(VersionChange::Add(KeyVersion {
            key_id: r.id,
            version: next,
            backend_id: id.clone(),
            backend_label: r.name.clone(),
            state: KeyState::Active,
            created_at: at,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: fingerprint.map(|f| f.to_vec()),
        }));
        let mut dates = period_dates(Some(class), now);
        dates.rotated_at = Some(at);
        if from != to {
            dates.activated_at = Some(at);
        }
        let reason = format!("{rotation} to version {next}");
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: r.id,
                expected: r.state,
                to: (from != to).then_some(to),
                code: None,
            },
            versions,
            dates,
            actor: who.to_owned(),
            reason: reason.clone(),
            at,
            trail: Vec::new(),
        };
        match self.apply_change(by, operation, &format!("{reason}: {why}"), change) {
            Ok(_) => {
                self.judged(&t.token.config.label, &objects, r.id, next);
                self.refresh(r.id)?;
                self.end_pending(t.token, &id);
                Ok(next)
            }
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t.token, &id);
                self.refresh(r.id)?;
                Err(e)
            }
        }
    }

    /// Rotation: a new version from the same class (same label, new
    /// `CKA_ID`) protects from now; older versions drop to deactivated; the
    /// key's protect and process periods and its next rotation count from
    /// now. Active keys only ([`Rotation::Planned`]).
    pub(crate) fn rotate_key(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        reason: &str,
        now: SystemTime,
    ) -> AResult<u32> {
        let v = self.new_version(t, (who, by), Rotation::Planned, ("rotate", reason), now)?;
        log::info!(
            "key {} rotated to version {v} by {who}: {reason}",
            t.label()
        );
        Ok(v)
    }
}
