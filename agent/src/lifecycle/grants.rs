//! Grants: an application's operations on a key, added and removed by
//! administrators; the applications the policy names.

use std::time::SystemTime;

use keyward_inventory::Grant;
use keyward_policy::Operation;
use keyward_protocol::admin::{AdminErrorKind, AppInfo, KeyResponse};

use crate::keys::{effective_grants, grant_info, secs};

use super::*;

/// A grant in words, for the trail: `application "web", operations
/// [sign], until 2026-12-01 00:00:00 UTC`.
fn grant_words(application: &str, operations: &[Operation], until: Option<i64>) -> String {
    let until = until.map_or_else(
        || "no end".to_owned(),
        |u| format!("until {}", keyward_protocol::names::utc(u)),
    );
    let names: Vec<&str> = operations.iter().map(|o| o.as_str()).collect();
    format!(
        "application {application:?}, operations [{}], {until}",
        names.join(", ")
    )
}

impl Lifecycle {
    /// `keyward grant add`: the grant, recorded in the trail. On a key of
    /// a class marked `sensitive`, with a roster, an approval request
    /// under the `sensitive-grant` quorum instead (the grant checked as
    /// it would be given); the grant is given when it is approved
    /// ([`Self::grant_approved`]).
    pub(crate) fn add_grant(
        &self,
        t: &Target<'_>,
        application: &str,
        operations: &[Operation],
        until: Option<i64>,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyResponse> {
        let policy = self.policy();
        let sensitive = policy
            .class(&t.key.record.class)
            .is_some_and(|c| c.sensitive);
        if sensitive && policy.dual_control() {
            let grant = self.checked_grant(t, application, operations, until)?;
            return self.request_grant(t, &grant, who, crate::clock::now());
        }
        let done = self.grant_add(t, application, operations, until, who)?;
        self.record_grant(
            by.clone(),
            t,
            "grant add",
            &grant_words(application, operations, until),
        );
        Ok(done)
    }

    /// The approval request of `grant` on sensitive key `t`: its
    /// parameters are the application, the operations and the end. A
    /// pending request for another grant on the key is answered with a
    /// conflict (decide on it or cancel it first); the same grant asked
    /// again answers its pending request.
    fn request_grant(
        &self,
        t: &Target<'_>,
        grant: &Grant,
        who: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let parameters = serde_json::json!({
            "application": grant.application,
            "operations": grant.operations.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
            "until": grant.expires_at,
        });
        let pending = self
            .keys
            .inventory()
            .requests(Some(keyward_policy::ApprovalStatus::Pending))
            .map_err(inv_err)?;
        let at = secs(now);
        let canonical = parameters.to_string();
        if let Some(other) = pending.iter().find(|r| {
            r.action == "grant"
                && r.key_id == Some(t.key.record.id)
                && r.expires_at > at
                && r.parameters != canonical
        }) {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "request {} for another grant on {} is pending ({}): decide on it or cancel \
                     it first",
                    other.id,
                    t.label(),
                    other.parameters
                ),
            );
        }
        let why = format!(
            "grant on a sensitive key: {}",
            grant_words(&grant.application, &grant.operations, grant.expires_at)
        );
        self.record_request(t, "grant", parameters, (who, &why), now)
    }

    /// Carries out approved request `r`, a grant on sensitive key `t`
    /// (`who`: its requester and approvers):
    /// checked again as it would be given now (the application still in
    /// the policy, the operations fit, the end not passed), then recorded
    /// together with the request's move to `executed`, and in the trail.
    pub(crate) fn grant_approved(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        r: &keyward_inventory::ApprovalRecord,
    ) -> AResult<()> {
        let parameters = crate::lifecycle::request_parameters(r)?;
        let application = parameters["application"].as_str().unwrap_or_default();
        let operations = parameters["operations"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .map(|o| o.as_str().and_then(|o| o.parse::<Operation>().ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or_default();
        let Some(operations) = operations else {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: operations it does not name", r.id),
            );
        };
        let until = parameters["until"].as_i64();
        let grant = self.checked_grant(t, application, &operations, until)?;
        let outcome = format!(
            "{} granted {}",
            t.label(),
            grant_words(application, &grant.operations, until)
        );
        self.keys
            .inventory()
            .grant_approved(&grant, who, &r.id, &outcome)
            .map_err(inv_err)?;
        self.refresh(t.key.record.id)?;
        log::info!("key {}: {outcome} by {who}", t.label());
        self.record_grant(
            by.clone(),
            t,
            "grant add",
            &format!(
                "{}: request {} of {who}",
                grant_words(application, &grant.operations, until),
                r.id
            ),
        );
        Ok(())
    }

    /// `keyward grant remove`: the grant gone, recorded in the trail.
    pub(crate) fn remove_grant(
        &self,
        t: &Target<'_>,
        application: &str,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyResponse> {
        if super::dry_run::planning() && !t.key.grants.iter().any(|g| g.application == application)
        {
            // The store's own refusal of a grant it does not have.
            return Err(inv_err(keyward_inventory::Error::NotFound(format!(
                "grant of key {} to {application:?}",
                t.key.record.id
            ))));
        }
        super::dry_run::commit_point(
            || format!("key {}: the grant to {application:?} is removed", t.label()),
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
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
        let policy = self.policy();
        Ok(KeyResponse::Grants(
            keys.iter()
                .flat_map(|k| effective_grants(&policy, k))
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
        let grant = self.checked_grant(t, application, operations, until)?;
        super::dry_run::commit_point(
            || {
                format!(
                    "key {} grants {}",
                    t.label(),
                    grant_words(application, &grant.operations, until)
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
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

    /// The grant of `operations` on `t` to `application` until `until`,
    /// when it can be given now: the application is the policy's, the
    /// operations (at least one; each once) fit the key's purpose, the end
    /// is not past.
    fn checked_grant(
        &self,
        t: &Target<'_>,
        application: &str,
        operations: &[Operation],
        until: Option<i64>,
    ) -> AResult<Grant> {
        if self.policy().application(application).is_none() {
            return fail(
                AdminErrorKind::NotFound,
                no_application_message(application),
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
            if u <= secs(crate::clock::now()) {
                return fail(AdminErrorKind::Invalid, "the grant's end is in the past");
            }
        }
        Ok(Grant {
            key_id: t.key.record.id,
            application: application.to_owned(),
            operations: ops,
            expires_at: until,
        })
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
