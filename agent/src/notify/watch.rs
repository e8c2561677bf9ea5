//! The watcher: every `check_seconds`, the conditions the alerting rules
//! cover, each turned into an [`Event`] with an id that names the
//! condition; an id fires once while it holds.
//!
//! Cheap conditions (rotation, certificates, approval requests, the audit
//! trail) come from the inventory's view and the trail's counters every
//! pass. Anomalies and uses after a revocation come from the report
//! (`Lifecycle::report`, default window and baseline), made at most once
//! per pass and, when it took 100 ms or more, not again sooner than 50
//! times its duration (the metrics endpoint's rule).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use keyward_policy::KeyState;
use keyward_protocol::admin::{AnomalyKind, Report, ReportRequest};
use serde_json::json;

use super::{Event, EventKind, Notifier, Severity, WebhookConfig};
use crate::keys::{secs, KeyView};
use crate::lifecycle::Lifecycle;

/// A report that took this long or more is not made again sooner than
/// [`REPORT_DUTY`] times its duration.
const REPORT_SLOW: Duration = Duration::from_millis(100);
const REPORT_DUTY: u32 = 50;

/// The thresholds of the conditions, from `[webhook]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Past due this long before `rotation-overdue` (seconds).
    pub overdue_grace: i64,
    /// `request-expiring` this long before expiry (seconds).
    pub request_warning: i64,
    /// `certificate-expiring` this long before notAfter, when the class
    /// names no `certificate_warning` (seconds).
    pub certificate_warning: i64,
}

impl Limits {
    /// From the configuration.
    pub fn of(c: &WebhookConfig) -> Limits {
        let s = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Limits {
            overdue_grace: s(c.overdue_grace_seconds),
            request_warning: s(c.request_warning_seconds),
            certificate_warning: s(c.certificate_warning_seconds),
        }
    }
}

/// The conditions one watcher thread checks. The trail's needs no store
/// and has a thread of its own: when the store is what fails, a pass over
/// the others waits on it, and the trail's event must not wait with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The audit trail's writer.
    Trail,
    /// Rotation, certificates, requests and the report.
    Store,
}

/// What has fired, by id, and when the report may be made again.
#[derive(Debug, Default)]
pub struct Watch {
    fired: HashSet<String>,
    fired_audit: HashSet<String>,
    fired_from_report: HashSet<String>,
    report_after: Option<Instant>,
    audit_failures: u64,
}

impl Watch {
    /// The new events among `current`: ids not in `fired`. `fired` becomes
    /// `current`'s ids, so a condition that cleared fires again when it
    /// comes back.
    fn new_among(fired: &mut HashSet<String>, current: Vec<Event>) -> Vec<Event> {
        let ids: HashSet<String> = current.iter().map(|e| e.id.clone()).collect();
        let fresh = current
            .into_iter()
            .filter(|e| !fired.contains(&e.id))
            .collect();
        *fired = ids;
        fresh
    }

    /// One pass at `now` over the conditions of `part`, each new event
    /// handed to `emit` as soon as it is known.
    pub fn pass(
        &mut self,
        part: Part,
        life: &Lifecycle,
        limits: &Limits,
        now: SystemTime,
        emit: &mut dyn FnMut(Event),
    ) {
        match part {
            Part::Trail => self.trail(life, now, emit),
            Part::Store => self.store(life, limits, now, emit),
        }
    }

    /// The audit trail's condition, from the writer's counters.
    fn trail(&mut self, life: &Lifecycle, now: SystemTime, emit: &mut dyn FnMut(Event)) {
        let at = secs(now);
        let stats = life.audit.stats();
        let mut audit = Vec::new();
        if stats.failing || stats.failures > self.audit_failures {
            audit.push(
                Event::new(
                    EventKind::AuditWriteFailure,
                    Severity::Critical,
                    "audit-write-failure".into(),
                    at,
                    "keyward's audit trail cannot be written: administrator and lifecycle actions are refused".into(),
                )
                .with(json!({
                    "failing": stats.failing,
                    "write_failures": stats.failures,
                    "events_lost": stats.lost,
                })),
            );
        }
        self.audit_failures = stats.failures;
        Self::new_among(&mut self.fired_audit, audit)
            .into_iter()
            .for_each(&mut *emit);
    }

    /// The conditions read from the inventory and the report.
    fn store(
        &mut self,
        life: &Lifecycle,
        limits: &Limits,
        now: SystemTime,
        emit: &mut dyn FnMut(Event),
    ) {
        // The inventory is the fleet's: its conditions are posted by the
        // agent that leads (see `Inventory::leads`), once.
        if !life.keys.inventory().leads().unwrap_or(false) {
            return;
        }
        let at = secs(now);
        let keys = life.keys.all();
        let mut current = overdue(&keys, at, limits);
        current.extend(certificates(life, &keys, at, limits));
        current.extend(requests(life, at, limits));
        Self::new_among(&mut self.fired, current)
            .into_iter()
            .for_each(&mut *emit);

        if self.report_after.is_none_or(|t| Instant::now() >= t) {
            let started = Instant::now();
            match life.report(&ReportRequest::default(), now) {
                Ok(r) => {
                    let took = started.elapsed();
                    self.report_after = (took >= REPORT_SLOW).then(|| started + took * REPORT_DUTY);
                    let current = from_report(&r, at);
                    Self::new_among(&mut self.fired_from_report, current)
                        .into_iter()
                        .for_each(&mut *emit);
                }
                Err(e) => log::warn!("webhook: the report could not be made: {}", e.message),
            }
        }
    }

    /// [`Watch::pass`] over both parts, its events collected.
    #[cfg(test)]
    fn collect(&mut self, life: &Lifecycle, limits: &Limits, now: SystemTime) -> Vec<Event> {
        let mut out = Vec::new();
        for part in [Part::Trail, Part::Store] {
            self.pass(part, life, limits, now, &mut |e| out.push(e));
        }
        out
    }
}

/// Active keys past their rotation date or protect period by more than
/// the grace.
fn overdue(keys: &[Arc<KeyView>], at: i64, limits: &Limits) -> Vec<Event> {
    let mut out = Vec::new();
    for k in keys {
        let r = &k.record;
        if r.state != KeyState::Active {
            continue;
        }
        let due = [r.next_rotation, r.protect_until]
            .into_iter()
            .flatten()
            .min();
        let Some(due) = due.filter(|d| at.saturating_sub(*d) >= limits.overdue_grace) else {
            continue;
        };
        let version = k.active_version().map(|v| v.version);
        let label = format!("{}/{}", r.token, r.name);
        out.push(
            Event::new(
                EventKind::RotationOverdue,
                Severity::Warning,
                format!(
                    "rotation-overdue:{label}:v{}",
                    version.map_or_else(|| "-".to_owned(), |v| v.to_string())
                ),
                at,
                format!("key {label} is overdue for rotation"),
            )
            .about(&r.token, &r.name)
            .with(json!({
                "class": r.class,
                "active_version": version,
                "due_at": super::rfc3339(due),
                "next_rotation": r.next_rotation.map(super::rfc3339),
                "protect_until": r.protect_until.map(super::rfc3339),
                "overdue_seconds": at.saturating_sub(due),
            })),
        );
    }
    out
}

/// Certificates beside live key versions that expire within the class's
/// `certificate_warning` (else the configured default), or have expired.
fn certificates(life: &Lifecycle, keys: &[Arc<KeyView>], at: i64, limits: &Limits) -> Vec<Event> {
    let certs = match life.keys.inventory().certificates(None) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("webhook: the inventory's certificates cannot be read: {e}");
            return Vec::new();
        }
    };
    let policy = life.policy();
    let mut out = Vec::new();
    for c in certs {
        let Some(k) = keys.iter().find(|k| k.record.id == c.key_id) else {
            continue;
        };
        let live = k
            .version(c.version)
            .is_some_and(|v| v.state != KeyState::Destroyed);
        if !live || k.record.state == KeyState::Destroyed {
            continue;
        }
        let warning = policy
            .class(&k.record.class)
            .and_then(|c| c.certificate_warning)
            .map_or(limits.certificate_warning, |d| {
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
            });
        let left = c.not_after.saturating_sub(at);
        let label = format!("{}/{}", k.record.token, k.record.name);
        let (kind, severity, word, summary) = if left <= 0 {
            (
                EventKind::CertificateExpired,
                Severity::Critical,
                "certificate-expired",
                format!(
                    "the certificate of {label} version {} has expired",
                    c.version
                ),
            )
        } else if left <= warning {
            (
                EventKind::CertificateExpiring,
                Severity::Warning,
                "certificate-expiring",
                format!(
                    "the certificate of {label} version {} expires on {}",
                    c.version,
                    super::rfc3339(c.not_after)
                ),
            )
        } else {
            continue;
        };
        out.push(
            Event::new(
                kind,
                severity,
                format!("{word}:{label}:v{}:{}", c.version, c.not_after),
                at,
                summary,
            )
            .about(&k.record.token, &k.record.name)
            .with(json!({
                "version": c.version,
                "subject": c.subject,
                "not_after": super::rfc3339(c.not_after),
                "expires_in_seconds": left,
            })),
        );
    }
    out
}

/// Pending approval requests that lapse within the warning.
fn requests(life: &Lifecycle, at: i64, limits: &Limits) -> Vec<Event> {
    let pending = match life
        .keys
        .inventory()
        .requests(Some(keyward_policy::ApprovalStatus::Pending))
    {
        Ok(r) => r,
        Err(e) => {
            log::warn!("webhook: the approval requests cannot be read: {e}");
            return Vec::new();
        }
    };
    pending
        .into_iter()
        .filter(|r| r.expires_at > at && r.expires_at - at <= limits.request_warning)
        .map(|r| {
            Event::new(
                EventKind::RequestExpiring,
                Severity::Info,
                format!("request-expiring:{}", r.id),
                at,
                format!(
                    "approval request {} ({} {}) lapses on {} unless decided",
                    r.id,
                    r.action,
                    r.target,
                    super::rfc3339(r.expires_at)
                ),
            )
            .with(json!({
                "request": r.id,
                "action": r.action,
                "target": r.target,
                "requester": r.requester,
                "created_at": super::rfc3339(r.created_at),
                "expires_at": super::rfc3339(r.expires_at),
            }))
        })
        .collect()
}

/// Anomalies and uses after a revocation, from a report.
pub fn from_report(r: &Report, at: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for a in &r.anomalies {
        let label = format!("{}/{}", a.token, a.key);
        let kind = match a.kind {
            AnomalyKind::NewApplication => "new-application",
            AnomalyKind::UnusualHour => "unusual-hour",
            AnomalyKind::VolumeSpike => "volume-spike",
        };
        out.push(
            Event::new(
                EventKind::Anomaly,
                Severity::Warning,
                format!(
                    "anomaly:{label}:{kind}:{}:{}:{}",
                    a.application.as_deref().unwrap_or("-"),
                    a.exe.as_deref().unwrap_or("-"),
                    a.hour.map_or_else(|| "-".to_owned(), |h| h.to_string())
                ),
                at,
                format!("unusual use of key {label}: {}", a.detail),
            )
            .about(&a.token, &a.key)
            .with(json!({
                "rule": kind,
                "application": a.application,
                "exe": a.exe,
                "hour": a.hour,
                "uses": a.uses,
                "window_seconds": r.window_secs,
            })),
        );
    }
    for k in &r.keys {
        let label = format!("{}/{}", k.token, k.name);
        for rev in k.revocations.iter().filter(|v| v.uses_after > 0) {
            out.push(
                Event::new(
                    EventKind::UseAfterRevocation,
                    Severity::Critical,
                    format!("use-after-revocation:{label}:{}", rev.seq),
                    at,
                    format!(
                        "key {label} was used {} times after its revocation took effect",
                        rev.uses_after
                    ),
                )
                .about(&k.token, &k.name)
                .with(json!({
                    "revocation_record": rev.seq,
                    "effective_at": super::rfc3339(rev.effective_at),
                    "versions": rev.versions,
                    "uses_after": rev.uses_after,
                    "first_use_after_record": rev.first_use_after,
                })),
            );
        }
    }
    out
}

/// Starts the watcher threads, one per [`Part`]: a pass every
/// `check_seconds` (the first one a second after the start) until the
/// lifecycle is gone or `notifier` is stopped.
pub fn spawn(
    life: Weak<Lifecycle>,
    notifier: Arc<Notifier>,
    config: &WebhookConfig,
) -> Result<(), String> {
    let limits = Limits::of(config);
    let every = Duration::from_secs(config.check_seconds);
    for (part, name) in [
        (Part::Trail, "webhook-trail"),
        (Part::Store, "webhook-watch"),
    ] {
        let (life, notifier) = (life.clone(), Arc::clone(&notifier));
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut watch = Watch::default();
                let mut wait = Duration::from_secs(1).min(every);
                loop {
                    std::thread::sleep(wait);
                    wait = every;
                    let Some(life) = life.upgrade() else {
                        return;
                    };
                    if notifier.stopped() {
                        return;
                    }
                    watch.pass(part, &life, &limits, crate::clock::now(), &mut |e| {
                        notifier.send(e)
                    });
                }
            })
            .map_err(|e| format!("cannot start the webhook watcher: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::admin::{AdminResponse, KeyAction, KeyRequest};

    const POLICY: &str = r#"
[settings]
mode = "strict"

[[class]]
name = "quick"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "1h"
process_period = "2h"
rotation_interval = "2s"
"#;

    fn ok(a: &crate::agent::Agent, req: KeyRequest) {
        match a
            .lifecycle
            .key_request(&crate::agent::tests::admin_peer(), req)
        {
            AdminResponse::Key(_) => {}
            other => panic!("{other:?}"),
        }
    }

    fn create(a: &crate::agent::Agent) {
        ok(
            a,
            KeyRequest::Create {
                name: "k".into(),
                class: "quick".into(),
                algorithm: None,
                token: None,
                owner: None,
            },
        );
    }

    #[test]
    fn an_overdue_key_fires_once_per_condition() {
        let (_d, a) = crate::agent::tests::mock_agent(POLICY);
        create(&a);
        ok(
            &a,
            KeyRequest::Transition {
                name: "k".into(),
                token: None,
                action: KeyAction::Activate,
                reason: None,
                code: None,
            },
        );
        let limits = Limits {
            overdue_grace: 60,
            request_warning: 3600,
            certificate_warning: 86_400,
        };
        let mut w = Watch::default();
        let now = crate::clock::now();
        // Due in 2 s: not yet, and not within the grace a minute later.
        assert!(w.collect(&a.lifecycle, &limits, now).is_empty());
        let later = now + Duration::from_secs(30);
        assert!(w.collect(&a.lifecycle, &limits, later).is_empty());
        // Past the grace: one event with the key's names and dates.
        let late = now + Duration::from_secs(120);
        let events = w.collect(&a.lifecycle, &limits, late);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e.event, EventKind::RotationOverdue);
        assert_eq!(e.id, "rotation-overdue:kw/k:v1");
        assert_eq!(
            (e.token.as_deref(), e.key.as_deref()),
            (Some("kw"), Some("k"))
        );
        assert_eq!(e.details["class"], "quick");
        assert_eq!(e.details["active_version"], 1);
        assert!(e.details["overdue_seconds"].as_i64().unwrap() >= 60);
        // Still overdue: nothing new.
        assert!(w
            .collect(&a.lifecycle, &limits, late + Duration::from_secs(5))
            .is_empty());
        // Cleared (not yet due again), then overdue again: fires again.
        assert!(w.collect(&a.lifecycle, &limits, now).is_empty());
        assert_eq!(w.collect(&a.lifecycle, &limits, late).len(), 1);
    }

    #[test]
    fn a_request_about_to_lapse_fires_once_without_its_reason() {
        let (_d, a) = crate::agent::tests::mock_agent(POLICY);
        let now = crate::clock::now();
        let at = secs(now);
        let request = |id: &str, expires_at| keyward_inventory::ApprovalRecord {
            id: id.into(),
            action: "destroy".into(),
            target: "kw/k".into(),
            key_id: None,
            parameters: "{}".into(),
            requester: "alice".into(),
            reason: "private words".into(),
            created_at: at - 3600,
            expires_at,
            status: keyward_policy::ApprovalStatus::Pending,
            outcome: String::new(),
            closed_at: None,
        };
        let inventory = a.keys.inventory();
        inventory
            .create_request(&request("soon", at + 600))
            .unwrap();
        inventory
            .create_request(&request("later", at + 86_400))
            .unwrap();
        inventory.create_request(&request("gone", at - 1)).unwrap();
        let limits = Limits {
            overdue_grace: 60,
            request_warning: 3600,
            certificate_warning: 86_400,
        };
        let mut w = Watch::default();
        let events = w.collect(&a.lifecycle, &limits, now);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["request-expiring:soon"]);
        let e = &events[0];
        assert_eq!(e.severity, Severity::Info);
        assert_eq!(e.details["action"], "destroy");
        assert_eq!(e.details["target"], "kw/k");
        assert_eq!(e.details["expires_at"], super::super::rfc3339(at + 600));
        let body = serde_json::to_string(e).unwrap();
        assert!(!body.contains("private words"), "{body}");
        assert!(w.collect(&a.lifecycle, &limits, now).is_empty());
    }

    #[test]
    fn uses_after_a_revocation_and_anomalies_come_from_the_report() {
        use keyward_protocol::admin::{Anomaly, Revocation};
        let mut r = Report {
            generated_at: 0,
            window_secs: 3600,
            baseline_secs: 0,
            thresholds: Default::default(),
            keys: Vec::new(),
            rotation: Default::default(),
            failed_admin: Default::default(),
            pending_requests: Vec::new(),
            unmanaged: Vec::new(),
            anomalies: vec![Anomaly {
                kind: AnomalyKind::VolumeSpike,
                token: "kw".into(),
                key: "k".into(),
                application: None,
                exe: None,
                hour: None,
                uses: 900,
                detail: "900 uses in the window".into(),
            }],
        };
        // A key's entry as a real report makes it, given a revocation
        // that a use got past.
        let (_d, a) = crate::agent::tests::mock_agent(POLICY);
        create(&a);
        let made = a
            .lifecycle
            .report(&ReportRequest::default(), crate::clock::now())
            .unwrap();
        let mut key = made.keys[0].clone();
        key.revocations.push(Revocation {
            seq: 42,
            action: "revoke".into(),
            effective_at: 10,
            requested_at: None,
            latency_us: None,
            versions: vec![1],
            uses_after: 3,
            first_use_after: Some(50),
            no_use_after: false,
        });
        r.keys.push(key);
        let events = from_report(&r, 100);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "anomaly:kw/k:volume-spike:-:-:-",
                "use-after-revocation:kw/k:42"
            ]
        );
        assert_eq!(events[1].severity, Severity::Critical);
        assert_eq!(events[1].details["uses_after"], 3);
        let mut fired = HashSet::new();
        assert_eq!(Watch::new_among(&mut fired, events.clone()).len(), 2);
        assert!(Watch::new_among(&mut fired, events).is_empty());
    }
}
