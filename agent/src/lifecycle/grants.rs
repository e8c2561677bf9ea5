//! Grants: an application's operations on a key, added and removed by
//! administrators; the applications the policy names.

use std::time::SystemTime;

use keyward_inventory::Grant;
use keyward_policy::Operation;
use keyward_protocol::admin::{AdminErrorKind, AppInfo, GrantInfo, KeyResponse};

use crate::keys::secs;

use super::*;

pub(crate) fn grant_info(key: &str, g: &Grant) -> GrantInfo {
    GrantInfo {
        key: key.to_owned(),
        application: g.application.clone(),
        operations: g.operations.clone(),
        expires_at: g.expires_at,
    }
}

impl Lifecycle {
    /// `keyward grant add`: the grant, recorded in the trail.
    pub(crate) fn add_grant(
        &self,
        t: &Target<'_>,
        application: &str,
        operations: &[Operation],
        until: Option<i64>,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyResponse> {
        let done = self.grant_add(t, application, operations, until, who)?;
        let until = until.map_or_else(
            || "no end".to_owned(),
            |u| format!("until {}", keyward_protocol::names::utc(u)),
        );
        let names: Vec<&str> = operations.iter().map(|o| o.as_str()).collect();
        let reason = format!(
            "application {application:?}, operations [{}], {until}",
            names.join(", ")
        );
        self.record_grant(by.clone(), t, "grant add", &reason);
        Ok(done)
    }

    /// `keyward grant remove`: the grant gone, recorded in the trail.
    pub(crate) fn remove_grant(
        &self,
        t: &Target<'_>,
        application: &str,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyResponse> {
        self.keys
            .inventory()
            .revoke_grant(t.key.record.id, application, who)
            .map_err(inv_err)?;
        self.refresh(t.key.record.id)?;
        self.record_grant(
            by.clone(),
            t,
            "grant remove",
            &format!("application {application:?}"),
        );
        Ok(KeyResponse::Done(format!(
            "grant of {} to {application:?} removed",
            t.label()
        )))
    }

    /// `keyward grant list`: the grants of key `key`, or of every key (of
    /// `token`), by token and name.
    pub(crate) fn list_grants(
        &self,
        key: Option<&str>,
        token: Option<&str>,
    ) -> AResult<KeyResponse> {
        let keys = match key {
            Some(k) => vec![self.target(token, k)?.key],
            None => {
                let label = token.map(|l| self.admin_token(Some(l))).transpose()?;
                let mut all = self.keys.all();
                all.retain(|k| label.is_none_or(|t| t.config.label == k.record.token));
                all.sort_by(|a, b| {
                    (&a.record.token, &a.record.name).cmp(&(&b.record.token, &b.record.name))
                });
                all
            }
        };
        Ok(KeyResponse::Grants(
            keys.iter()
                .flat_map(|k| k.grants.iter().map(|g| grant_info(&k.record.name, g)))
                .collect(),
        ))
    }

    pub(crate) fn grant_add(
        &self,
        t: &Target<'_>,
        application: &str,
        operations: &[Operation],
        until: Option<i64>,
        who: &str,
    ) -> AResult<KeyResponse> {
        if self.policy().application(application).is_none() {
            return fail(
                AdminErrorKind::NotFound,
                format!("no application {application:?} in the policy"),
            );
        }
        if operations.is_empty() {
            return fail(
                AdminErrorKind::Invalid,
                "a grant names at least one operation",
            );
        }
        let purpose = t.key.record.purpose;
        let mut ops = Vec::new();
        for &op in operations {
            if !purpose.allows(op) {
                return fail(
                    AdminErrorKind::Refused,
                    format!("key {} is for {purpose}: {op} does not fit", t.label()),
                );
            }
            if !ops.contains(&op) {
                ops.push(op);
            }
        }
        if let Some(u) = until {
            if u <= secs(SystemTime::now()) {
                return fail(AdminErrorKind::Invalid, "the grant's end is in the past");
            }
        }
        let grant = Grant {
            key_id: t.key.record.id,
            application: application.to_owned(),
            operations: ops,
            expires_at: until,
        };
        self.keys.inventory().grant(&grant, who).map_err(inv_err)?;
        self.refresh(t.key.record.id)?;
        let names: Vec<&str> = grant.operations.iter().map(|o| o.as_str()).collect();
        log::info!(
            "key {}: {application:?} granted {} until {until:?} by {who}",
            t.label(),
            names.join(", ")
        );
        Ok(KeyResponse::Grants(vec![grant_info(
            &t.key.record.name,
            &grant,
        )]))
    }

    pub(crate) fn app_list(&self) -> AResult<Vec<AppInfo>> {
        let all = self.keys.all();
        let mut out = Vec::new();
        for app in &self.policy().applications {
            let mut keys: Vec<String> = Vec::new();
            for g in self
                .keys
                .inventory()
                .grants_for_application(&app.name)
                .map_err(inv_err)?
            {
                if let Some(k) = self.keys.key(g.key_id) {
                    keys.push(format!("{}/{}", k.record.token, k.record.name));
                }
            }
            for k in &all {
                let by_class = self
                    .policy()
                    .class(&k.record.class)
                    .is_some_and(|c| c.grants.iter().any(|g| g.application == app.name));
                if by_class && k.record.state.is_visible() {
                    keys.push(format!("{}/{}", k.record.token, k.record.name));
                }
            }
            keys.sort();
            keys.dedup();
            out.push(AppInfo {
                name: app.name.clone(),
                uid: app.uid,
                gid: app.gid,
                exe: app.exe.as_ref().map(|p| p.display().to_string()),
                keys,
            });
        }
        Ok(out)
    }

    /// Records a grant change of key `t`, durably.
    pub(crate) fn record_grant(
        &self,
        by: keyward_inventory::Actor,
        t: &Target<'_>,
        operation: &str,
        reason: &str,
    ) {
        let mut e = crate::audit::event(keyward_inventory::AuditKind::Grant, by, operation);
        e.token = Some(t.token.config.label.clone());
        e.key = Some(t.key.record.name.clone());
        e.reason = reason.chars().take(4096).collect();
        if let Err(why) = self.audit.durable(e) {
            log::error!(
                "audit: the {operation} of key {} could not be recorded: {why}",
                t.label()
            );
        }
    }
}
