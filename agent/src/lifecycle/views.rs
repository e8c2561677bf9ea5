//! What the CLI shows of keys: their states, versions and history.

use keyward_inventory::{KeyFilter, StateChange};
use keyward_protocol::admin::{HistoryEntry, KeyInfo, KeyResponse, VersionInfo};

use crate::keys::{effective_grants, grant_info, KeyView};

use super::*;

pub(crate) fn history_entry(c: &StateChange) -> HistoryEntry {
    HistoryEntry {
        at: c.at,
        version: c.version,
        from: c.from,
        to: c.to,
        actor: c.actor.clone(),
        reason: c.reason.clone(),
    }
}

pub(crate) fn key_info(v: &KeyView, history: Vec<HistoryEntry>) -> KeyInfo {
    let r = &v.record;
    KeyInfo {
        name: r.name.clone(),
        token: r.token.clone(),
        owner: r.owner.clone(),
        purpose: r.purpose,
        class: r.class.clone(),
        algorithm: r.algorithm,
        state: r.state,
        created_at: r.created_at,
        activated_at: r.activated_at,
        rotated_at: r.rotated_at,
        deactivated_at: r.deactivated_at,
        protect_until: r.protect_until,
        process_until: r.process_until,
        next_rotation: r.next_rotation,
        scope: r.scope.clone(),
        last_used_at: r.last_used_at,
        backup_allowed: r.backup_allowed,
        versions: v
            .versions
            .iter()
            .map(|x| VersionInfo {
                version: x.version,
                backend_id: x.backend_id.clone(),
                state: x.state,
                created_at: x.created_at,
                deactivated_at: x.deactivated_at,
                destroyed_at: x.destroyed_at,
            })
            .collect(),
        grants: v.grants.iter().map(|g| grant_info(&r.name, g)).collect(),
        history,
        recovery_until: r.recovery_until,
        held_by_backups: Vec::new(),
        certificates: Vec::new(),
        reason_code: r.reason_code,
    }
}

impl Lifecycle {
    /// Key `key` as `keyward key show` shows it; destroyed, with the
    /// backups that still hold it (read from its own records in the trail,
    /// through the trail's index by key name).
    pub(crate) fn info(&self, key: &KeyView) -> AResult<KeyInfo> {
        let history = self
            .keys
            .inventory()
            .history(key.record.id)
            .map_err(inv_err)?;
        let mut info = key_info(key, history.iter().map(history_entry).collect());
        info.grants = effective_grants(&self.policy(), key);
        info.certificates = self
            .keys
            .inventory()
            .certificates(Some(key.record.id))
            .map_err(inv_err)?
            .into_iter()
            .map(|c| keyward_protocol::admin::KeyCertificate {
                version: c.version,
                subject: c.subject,
                not_before: c.not_before,
                not_after: c.not_after,
                sha256: hex::encode(c.sha256),
                imported_at: c.imported_at,
            })
            .collect();
        if key.record.state == KeyState::Destroyed {
            info.held_by_backups = self.backups_holding(key)?;
        }
        Ok(info)
    }

    pub(crate) fn list_keys(
        &self,
        token: Option<&str>,
        state: Option<KeyState>,
    ) -> AResult<KeyResponse> {
        let token = match token {
            Some(l) => Some(self.admin_token(Some(l))?.config.label.clone()),
            None => None,
        };
        let records = self
            .keys
            .inventory()
            .keys(&KeyFilter {
                token,
                state,
                class: None,
            })
            .map_err(inv_err)?;
        let mut out = Vec::new();
        for r in records {
            if let Some(k) = self.keys.key(r.id) {
                out.push(self.info(&k)?);
            }
        }
        Ok(KeyResponse::Keys(out))
    }
}
