//! Records of the agent's own events and of administrators' requests, and
//! the answers to `keyward audit ...`.

use keyward_inventory::{Actor, AuditKind};

use crate::listener::identity::Peer;

use super::events::event;

/// `keyward audit ...` on the admin socket.
impl crate::shared::Core {
    /// Refusals of a peer at the listener (unknown to the policy, over its
    /// connection cap, another sender on its connection), merged: one
    /// record stands for `r.count` refusals.
    pub fn audit_refused_peer(&self, r: &crate::listener::admission::RefusalReport) {
        let mut e = event(AuditKind::Refusal, r.peer.as_application(""), "connect");
        e.result = cryptoki_sys::CKR_TOKEN_NOT_PRESENT;
        let since = r
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        e.reason = if r.count == 1 {
            r.why.to_owned()
        } else {
            format!(
                "{} ({} refusals of this peer since unix time {since})",
                r.why, r.count
            )
        };
        self.audit.record(e);
    }

    /// An agent event (start, stop), durable, or held until the trail can
    /// be written.
    pub fn audit_agent(&self, operation: &str, reason: &str) {
        let mut e = event(AuditKind::Agent, Actor::Agent, operation);
        e.reason = reason.to_owned();
        self.audit.durable_or_held(e);
    }

    /// A policy event (loaded at start, changed by a reload), durable.
    pub fn audit_policy(&self, operation: &str, result: u64, reason: &str) {
        let mut e = event(AuditKind::Policy, Actor::Agent, operation);
        e.result = result;
        e.reason = reason.chars().take(4096).collect();
        let _ = self.audit.durable(e);
    }

    /// A configuration reload and its outcome, durable.
    pub fn audit_reload(&self, result: u64, reason: &str) {
        let mut e = event(AuditKind::Agent, Actor::Agent, "reload");
        e.result = result;
        e.reason = reason.chars().take(4096).collect();
        let _ = self.audit.durable(e);
    }

    /// Refuses an admin request the policy's roster does not allow `admin`
    /// (see `Policy::admit_admin_request`): recorded in the trail as a
    /// refused admin action, and answered with `Refused`. `None`: allowed
    /// (always, without a roster; a hello is never refused here).
    pub fn refuse_admin(
        &self,
        admin: &Peer,
        req: &keyward_protocol::admin::AdminRequest,
    ) -> Option<keyward_protocol::admin::AdminResponse> {
        use keyward_protocol::admin::{AdminErrorKind, AdminRequest, AdminResponse};
        let read_only = match req {
            AdminRequest::Hello { .. } => return None,
            AdminRequest::Status | AdminRequest::Audit(_) | AdminRequest::Report(_) => true,
            // A dry run is admitted as the request it plans.
            AdminRequest::Key(k) | AdminRequest::DryRun(k) => k.is_read_only(),
        };
        let name = req.name();
        let why = self
            .policy()
            .admit_admin_request(admin.uid, name, read_only)
            .err()?;
        log::warn!("admin {admin}: {name}: {}: refused: {why}", req.describe());
        let mut e = event(AuditKind::Admin, admin.as_administrator(), name);
        e.result = keyward_policy::KEYWARD_REFUSED;
        e.reason = format!("refused: {why}").chars().take(4096).collect();
        if let Err(failed) = self.audit.durable(e) {
            log::error!("admin {admin}: {name}: the refusal could not be recorded: {failed}");
        }
        Some(AdminResponse::KeyErr {
            kind: AdminErrorKind::Refused,
            message: why,
        })
    }

    /// Answers one audit request of administrator `admin`, and records
    /// that the trail was read (see [`Self::audit_read`]). A tail after a
    /// record (a poll of `audit tail --follow`) is recorded only when it
    /// returned a record that is not itself such a tail's: each poll would
    /// otherwise return the record of the one before, for ever. So a follow
    /// adds one record per poll that brought it news, none while it idles,
    /// and no tail after a record reads the trail unrecorded.
    pub fn audit_request(
        &self,
        admin: &Peer,
        req: keyward_protocol::admin::AuditRequest,
    ) -> keyward_protocol::admin::AdminResponse {
        use keyward_protocol::admin::{AdminResponse, AuditRequest, AuditResponse};
        let (operation, what) = (req.name(), req.describe());
        let poll = matches!(
            req,
            AuditRequest::Tail {
                after_seq: Some(_),
                ..
            }
        );
        if poll {
            log::debug!("admin {admin}: {operation}: {what}");
        } else {
            log::info!("admin {admin}: {operation}: {what}");
        }
        let resp = self.answer_audit(req);
        let news = |records: &[keyward_protocol::admin::AuditRecordInfo]| {
            records
                .iter()
                .any(|r| !(r.kind == AuditKind::Admin.as_str() && r.operation == operation))
        };
        let record = match &resp {
            AdminResponse::Audit(a) if poll => match &**a {
                AuditResponse::Records(r) => news(r),
                _ => true,
            },
            _ => true,
        };
        if record {
            self.audit_read(admin, operation, &what, &resp);
        }
        resp
    }

    /// What the trail keeps of a read-only admin request: reads of the
    /// trail (`audit.verify`, `audit.anchor`, `audit.tail`, `audit.query`)
    /// and `report.make` have one admin record, written after the answer,
    /// with what was asked and what came of it. Whoever reads the trail or
    /// the usage report sees who used which key, and when: an auditor asks
    /// who looked. Nothing is changed, so nothing waits for the record.
    /// Reads of the inventory and the policy (`key.list`, `key.show`,
    /// `grant.list`, `app.list`) and `agent.status` have none (see
    /// [`Lifecycle::key_request`](crate::lifecycle::Lifecycle::key_request)).
    pub fn audit_read(
        &self,
        admin: &Peer,
        operation: &str,
        what: &str,
        resp: &keyward_protocol::admin::AdminResponse,
    ) {
        use keyward_protocol::admin::{AdminResponse as R, AuditResponse};
        let (result, outcome) = match resp {
            R::Err(m) => (keyward_policy::KEYWARD_FAILED, m.clone()),
            R::KeyErr { kind, message } => (crate::lifecycle::admin_result(*kind), message.clone()),
            R::Audit(a) => match &**a {
                AuditResponse::Records(r) => (0, count(r.len(), "record")),
                AuditResponse::Anchor(a) => (0, format!("sealed through record {}", a.seq)),
                AuditResponse::Verified(v) => match &v.first_bad {
                    None => (0, format!("intact, {}", count(v.records, "record"))),
                    Some(b) => (0, format!("broken at record {}: {}", b.seq, b.problem)),
                },
            },
            R::Report(r) => (0, count(r.keys.len(), "key")),
            R::Status(_) | R::Key(_) | R::Hello(_) | R::NoCommonVersion(_) => {
                (0, "done".to_owned())
            }
        };
        let mut e = event(AuditKind::Admin, admin.as_administrator(), operation);
        e.result = result;
        e.reason = format!("{what}: {outcome}").chars().take(4096).collect();
        self.audit.record(e);
    }

    /// Whether a key named `name` is in the inventory on any token (in
    /// any state); a store failure counts as known, so records are shown.
    fn key_known(&self, name: &str) -> bool {
        let inventory = self.keys.inventory();
        self.tokens
            .iter()
            .any(|t| !matches!(inventory.key(&t.config.label, name), Ok(None)))
    }

    /// `keyward audit anchor`: the trail sealed now, and its newest
    /// checkpoint as an anchor to keep off the host.
    fn answer_anchor(&self) -> keyward_protocol::admin::AdminResponse {
        use keyward_protocol::admin::{AdminErrorKind, AdminResponse, AuditResponse};
        let failed = |message: String| AdminResponse::KeyErr {
            kind: AdminErrorKind::Failed,
            message,
        };
        if let Err(e) = self.checkpoint() {
            return failed(format!("audit trail: cannot seal it for an anchor: {e}"));
        }
        match self.audit.log().last_checkpoint() {
            Ok(Some(cp)) => AdminResponse::Audit(Box::new(AuditResponse::Anchor(anchor_of(&cp)))),
            Ok(None) => failed("audit trail: no checkpoint yet".into()),
            Err(e) => failed(format!("audit trail: {e}")),
        }
    }

    pub(crate) fn answer_audit(
        &self,
        req: keyward_protocol::admin::AuditRequest,
    ) -> keyward_protocol::admin::AdminResponse {
        use keyward_inventory::{AuditFilter, ResultFilter};
        use keyward_protocol::admin::{
            AdminErrorKind, AdminResponse, AuditProblem, AuditRequest, AuditResponse,
            AuditVerification,
        };
        // What is queued belongs in what the administrator reads.
        self.audit.flush();
        let log = self.audit.log();
        let failed = |e: keyward_inventory::Error| AdminResponse::KeyErr {
            kind: AdminErrorKind::Failed,
            message: format!("audit trail: {e}"),
        };
        let records = |r: keyward_inventory::Result<Vec<keyward_inventory::AuditRecord>>| match r {
            Ok(v) => AdminResponse::Audit(Box::new(AuditResponse::Records(
                v.iter().map(record_info).collect(),
            ))),
            Err(e) => failed(e),
        };
        let verified = |anchors: &[keyward_inventory::Anchor]| {
            // Each checkpoint's and anchor's signature is checked by the
            // HSM's audit key.
            match log.verify_anchored(&|m, sig| self.audit_verify_signature(m, sig), anchors) {
                Ok(r) => {
                    AdminResponse::Audit(Box::new(AuditResponse::Verified(AuditVerification {
                        records: r.records,
                        head_seq: r.head_seq,
                        checkpoints_ok: r.checkpoints_ok,
                        sealed_through: r.sealed_through,
                        unsealed: r.unsealed,
                        anchors_ok: r.anchors_ok,
                        first_bad: r.first_bad.map(|b| AuditProblem {
                            seq: b.seq,
                            problem: b.problem.to_string(),
                            anchor: b.problem.is_anchor(),
                        }),
                    })))
                }
                Err(e) => failed(e),
            }
        };
        match req {
            AuditRequest::Verify => verified(&[]),
            AuditRequest::VerifyAnchored { anchors } => {
                let anchors: Vec<keyward_inventory::Anchor> = anchors
                    .into_iter()
                    .map(|a| keyward_inventory::Anchor {
                        seq: a.seq,
                        head: a.head,
                        created_at: a.created_at,
                        signature: a.signature,
                    })
                    .collect();
                verified(&anchors)
            }
            AuditRequest::Anchor => self.answer_anchor(),
            AuditRequest::Tail { n, after_seq: None } => records(log.tail(n as usize)),
            AuditRequest::Tail {
                n,
                after_seq: Some(after),
            } => records(log.query(&AuditFilter {
                after_seq: Some(after),
                limit: Some(u64::from(n)),
                ..AuditFilter::default()
            })),
            AuditRequest::Query {
                key,
                application,
                since,
                until,
                denied_only,
                limit,
            } => {
                let found = log.query(&AuditFilter {
                    key: key.clone(),
                    application: application.clone(),
                    since,
                    until,
                    result: if denied_only {
                        ResultFilter::Denied
                    } else {
                        ResultFilter::Any
                    },
                    limit: Some(u64::from(limit)),
                    ..AuditFilter::default()
                });
                if found.as_ref().is_ok_and(|v| v.is_empty()) {
                    if let Some(unknown) =
                        self.unknown_lookup(key.as_deref(), application.as_deref())
                    {
                        return unknown;
                    }
                }
                records(found)
            }
        }
    }

    /// The answer to a query that found nothing about a key the inventory
    /// does not know, or an application the policy does not name (one it
    /// named once still answers its records): the answer of every lookup
    /// of an unknown name (exit 4).
    fn unknown_lookup(
        &self,
        key: Option<&str>,
        application: Option<&str>,
    ) -> Option<keyward_protocol::admin::AdminResponse> {
        use keyward_protocol::admin::{AdminErrorKind, AdminResponse};
        let message = match (key, application) {
            (Some(name), _) if !self.key_known(name) => crate::lifecycle::no_key_message(
                name,
                self.tokens.iter().map(|t| t.config.label.as_str()),
            ),
            (_, Some(app)) if self.policy().application(app).is_none() => {
                crate::lifecycle::no_application_message(app)
            }
            _ => return None,
        };
        Some(AdminResponse::KeyErr {
            kind: AdminErrorKind::NotFound,
            message,
        })
    }
}

/// `1 record`, `2 records`.
pub(crate) fn count(n: impl TryInto<u64>, what: &str) -> String {
    keyward_policy::plural(n, what)
}

/// A checkpoint's head as kept off the host.
pub fn anchor_of(cp: &keyward_inventory::Checkpoint) -> keyward_protocol::admin::AuditAnchor {
    keyward_protocol::admin::AuditAnchor {
        seq: cp.seq,
        head: cp.head,
        created_at: cp.created_at,
        signature: cp.signature.clone(),
    }
}

/// A stored record as the CLI shows it.
pub(crate) fn record_info(
    r: &keyward_inventory::AuditRecord,
) -> keyward_protocol::admin::AuditRecordInfo {
    let e = &r.event;
    let (application, uid, pid, exe) = match &e.actor {
        Actor::Application {
            name,
            uid,
            pid,
            exe,
            ..
        } => (
            Some(name.clone()),
            Some(*uid),
            Some(*pid),
            Some(exe.clone()),
        ),
        Actor::Administrator { uid, pid, exe } => (None, Some(*uid), Some(*pid), Some(exe.clone())),
        Actor::Agent | Actor::Scheduler => (None, None, None, None),
    };
    keyward_protocol::admin::AuditRecordInfo {
        seq: r.seq,
        at: e.at,
        micros: e.micros,
        kind: e.kind.as_str().to_owned(),
        actor: e.actor.kind_str().to_owned(),
        application,
        uid,
        pid,
        exe,
        token: e.token.clone(),
        key: e.key.clone(),
        key_version: e.key_version,
        operation: e.operation.clone(),
        mechanism: e.mechanism,
        result: e.result,
        reason: e.reason.clone(),
        count: e.count,
        span_us: e.span_us,
        host: r.host.clone(),
    }
}
