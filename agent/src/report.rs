//! `keyward report`: every managed key against its class (age, rotation,
//! cryptoperiod, certificate expiry, drift), its usage and the anomalies
//! in it, export and wrap attempts, revocations with their latency and the
//! proof that no use succeeded after them, its backups (the last backup
//! and drill, a flag when its class wants a backup of its current version
//! and none holds it, the backups still holding a destroyed key); and over
//! all keys, rotation compliance, failed administrator actions and the use
//! of unmanaged objects.
//!
//! Where the figures come from:
//! - the inventory's view ([`crate::keys`]): states, versions, dates,
//!   grants; the policy: classes and applications;
//! - the audit trail, through the SQL aggregations of
//!   [`keyward_inventory::UsageLog`] (sums of `count`, never a record each
//!   in memory), after the queued uses are appended; the lifecycle
//!   records of revocations and backups in one query for all keys
//!   (`lifecycle::backup::marks` reads the backups');
//! - the HSM, on one admin session per token: the current version's
//!   attributes (drift) and a certificate with its `CKA_ID` (expiry).
//!
//! The anomaly rules are one pure function, [`judge`], of the aggregated
//! rows, so each rule is tested with made-up numbers. Their thresholds
//! come with the request ([`AnomalyThresholds`]; defaults in the protocol).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cryptoki_sys as ck;
use keyward_inventory::usage::{EventRow, HourRow, OperationRow, Span, UseRow};
use keyward_inventory::KeyVersion;
use keyward_policy::{purpose_flags, KeyClass, KeyFindingKind, KeyState};
use keyward_protocol::admin::{
    AdminErrorKind, AdminFailure, AdminResponse, Anomaly, AnomalyKind, AnomalyThresholds,
    ApplicationUsage, CertificateInfo, ExportAttempts, FailedAdmin, FindingSeverity, KeyReport,
    KeyUsage, OperationCount, PolicyFinding, PolicyFindingKind, Report, ReportRequest, Revocation,
    RotationCompliance, UnmanagedUsage,
};
use keyward_protocol::{Attribute, Value};

use crate::keys::{secs, KeyView};
use crate::lifecycle::backup::marks;
use crate::lifecycle::hsm::{algorithm_of, HsmSession};
use crate::lifecycle::{AResult, AdminError, Lifecycle};
use crate::listener::identity::Peer;
use hex::encode as hex;

/// Refusals that are attempts to take a managed key out of the HSM or out
/// of management (the operations `Agent::refuse_managed` records).
pub const EXPORT_REFUSALS: &[&str] = &["wrapping out", "a copy", "an attribute change"];
/// Successful uses that export another key: the key wrapped it.
pub const WRAP_USES: &[&str] = &["wrap"];
/// Lifecycle actions that revoke.
pub const REVOCATIONS: &[&str] = &["revoke", "compromise"];
/// The admin record of a revoke request: its operation, and what its
/// `requested: ...` reason contains.
const REVOKE_REQUEST: (&str, &str) = ("key.revoke", "revoke ");
/// The same, as trails written before requests had names record it.
const REVOKE_REQUEST_UNNAMED: (&str, &str) = ("key Transition", "Revoke");
/// Failed administrator actions listed.
pub const FAILED_ADMIN_SHOWN: usize = 5;
/// Unmanaged objects listed.
pub const UNMANAGED_SHOWN: usize = 20;

const MICROS: i64 = 1_000_000;

/// What the anomaly rules found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// No use in the baseline: the new-application and unusual-hour rules
    /// stay quiet.
    pub learning: bool,
    pub anomalies: Vec<Anomaly>,
}

/// The periods a key is judged over, in unix microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// The report's baseline and window.
    pub span: Span,
    /// Where this key's baseline starts: the later of the baseline's start
    /// and the key's creation (a key made yesterday has one day of
    /// history, not seven).
    pub baseline_from: i64,
}

/// The anomaly rules over one key's aggregated uses (`uses`: by
/// application and executable; `hours`: by hour of the day, UTC).
///
/// - **New application or executable**: an (application, executable) with
///   uses in the window and none in the baseline, when the key has
///   baseline uses at all (otherwise the key is *learning*).
/// - **Unusual hour**: uses in an hour of the day with none in the
///   baseline, once the baseline's uses number at least
///   `hours_min_uses` and span at least `hours_min_span_secs`.
/// - **Volume spike**: more than `spike_floor` uses in the window, and
///   more than `spike_factor` times the mean uses of a window-long slice of
///   the key's baseline. Judged once the key's baseline is at least one
///   window long, even when it holds no use (a dormant key suddenly busy).
pub fn judge(
    token: &str,
    key: &str,
    uses: &[&UseRow],
    hours: &[&HourRow],
    periods: Periods,
    t: &AnomalyThresholds,
) -> Judged {
    let baseline: u64 = uses.iter().map(|u| u.baseline).sum();
    let window: u64 = uses.iter().map(|u| u.window).sum();
    let learning = baseline == 0;
    let anomaly = |kind, uses, detail: String| Anomaly {
        kind,
        token: token.to_owned(),
        key: key.to_owned(),
        application: None,
        exe: None,
        hour: None,
        uses,
        detail,
    };
    let mut out = Vec::new();

    if !learning {
        let mut fresh: Vec<&&UseRow> = uses
            .iter()
            .filter(|u| u.window > 0 && u.baseline == 0)
            .collect();
        fresh.sort_by(|a, b| (&a.application, &a.exe).cmp(&(&b.application, &b.exe)));
        for u in fresh {
            out.push(Anomaly {
                application: Some(u.application.clone()),
                exe: Some(u.exe.clone()),
                ..anomaly(
                    AnomalyKind::NewApplication,
                    u.window,
                    format!(
                        "application {:?} ({}) used the key {} in the window and never in the baseline ({} by others)",
                        u.application,
                        if u.exe.is_empty() { "executable unknown" } else { &u.exe },
                        keyward_policy::plural(u.window, "time"),
                        keyward_policy::plural(baseline, "use")
                    ),
                )
            });
        }
    }

    let first = uses.iter().filter_map(|u| u.baseline_first).min();
    let spanned = first.map_or(0, |f| periods.span.window_from.saturating_sub(f));
    let min_span = i64::try_from(t.hours_min_span_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(MICROS);
    if baseline >= t.hours_min_uses && first.is_some() && spanned >= min_span {
        let mut odd: Vec<&&HourRow> = hours
            .iter()
            .filter(|h| h.window > 0 && h.baseline == 0)
            .collect();
        odd.sort_by_key(|h| h.hour);
        for h in odd {
            out.push(Anomaly {
                hour: Some(h.hour),
                ..anomaly(
                    AnomalyKind::UnusualHour,
                    h.window,
                    format!(
                        "{} between {:02}:00 and {:02}:59 UTC, an hour without any of the baseline's {} over {}",
                        keyward_policy::plural(h.window, "use"),
                        h.hour,
                        h.hour,
                        keyward_policy::plural(baseline, "use"),
                        human((spanned / MICROS) as u64)
                    ),
                )
            });
        }
    }

    let window_len = periods.span.until - periods.span.window_from;
    let base_len = periods.span.window_from - periods.baseline_from;
    if window_len > 0 && base_len >= window_len && window > t.spike_floor {
        // mean = baseline × window_len / base_len; fires when
        // window > factor × mean, in integers.
        let lhs = u128::from(window) * base_len as u128;
        let rhs = u128::from(t.spike_factor) * u128::from(baseline) * window_len as u128;
        if lhs > rhs {
            let mean = baseline as f64 * window_len as f64 / base_len as f64;
            out.push(anomaly(
                AnomalyKind::VolumeSpike,
                window,
                format!(
                    "{window} uses in the window ({}); the baseline ({}) averages {mean:.1} per window; threshold: more than {} × that and more than {}",
                    human((window_len / MICROS) as u64),
                    human((base_len / MICROS) as u64),
                    t.spike_factor,
                    t.spike_floor
                ),
            ));
        }
    }
    Judged {
        learning,
        anomalies: out,
    }
}

/// `90` seconds → `1m30s`.
fn human(secs: u64) -> String {
    keyward_policy::format_duration(std::time::Duration::from_secs(secs))
}

/// A certificate's `notAfter` (unix seconds), from its DER encoding.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let t = cert.tbs_certificate.validity.not_after.to_unix_duration();
    i64::try_from(t.as_secs()).map_err(|_| "notAfter out of range".to_owned())
}

/// Where a key's grants no longer match the policy: an application the
/// policy no longer has, an operation the class's purpose does not allow,
/// a class the policy no longer has. Expired grants are not drift.
pub fn grant_drift(
    policy: &keyward_policy::Policy,
    key: &KeyView,
    class: Option<&KeyClass>,
    now: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    if class.is_none() {
        out.push(format!(
            "class {:?} is no longer in the policy",
            key.record.class
        ));
    }
    for g in &key.grants {
        if g.expires_at.is_some_and(|e| e <= now) {
            continue;
        }
        if policy.application(&g.application).is_none() {
            out.push(format!(
                "grant to {:?}: the policy has no such application",
                g.application
            ));
        }
        for op in &g.operations {
            if class.is_some_and(|c| !c.purpose.allows(*op)) {
                out.push(format!(
                    "grant to {:?} for {op}: class {:?} ({}) does not allow it",
                    g.application,
                    key.record.class,
                    class.map_or("?", |c| c.purpose.as_str())
                ));
            }
        }
    }
    out
}

/// What the policy in force would say of `key` (of `class`, if the policy
/// still has it) if it were made or adopted now: the standards module's
/// judgement ([`keyward_policy::judge_key`]) of its algorithm, purpose and
/// class.
pub fn policy_findings(key: &KeyView, class: Option<&KeyClass>) -> Vec<PolicyFinding> {
    let r = &key.record;
    keyward_policy::judge_key(&r.class, class, r.purpose, r.algorithm)
        .into_iter()
        .map(|f| PolicyFinding {
            kind: match f.kind {
                KeyFindingKind::ClassMissing => PolicyFindingKind::ClassMissing,
                KeyFindingKind::WeakAlgorithm => PolicyFindingKind::WeakAlgorithm,
                KeyFindingKind::AlgorithmNotAllowed => PolicyFindingKind::AlgorithmNotAllowed,
                KeyFindingKind::PurposeNotAllowed => PolicyFindingKind::PurposeNotAllowed,
                KeyFindingKind::LongCryptoperiod => PolicyFindingKind::LongCryptoperiod,
            },
            severity: if f.refused {
                FindingSeverity::Refused
            } else {
                FindingSeverity::Warning
            },
            detail: f.detail,
        })
        .collect()
}

/// What the HSM says about a key.
#[derive(Debug, Default)]
struct HsmFacts {
    drift: Vec<String>,
    certificate: Option<CertificateInfo>,
}

const USAGE_FLAGS: [(u64, &str); 9] = [
    (ck::CKA_SIGN, "CKA_SIGN"),
    (ck::CKA_VERIFY, "CKA_VERIFY"),
    (ck::CKA_SIGN_RECOVER, "CKA_SIGN_RECOVER"),
    (ck::CKA_VERIFY_RECOVER, "CKA_VERIFY_RECOVER"),
    (ck::CKA_ENCRYPT, "CKA_ENCRYPT"),
    (ck::CKA_DECRYPT, "CKA_DECRYPT"),
    (ck::CKA_WRAP, "CKA_WRAP"),
    (ck::CKA_UNWRAP, "CKA_UNWRAP"),
    (ck::CKA_DERIVE, "CKA_DERIVE"),
];

/// The attributes of version `v`'s objects against `class`: sensitive,
/// not extractable unless the class backs up, no usage flag beyond the
/// purpose, and a type and size the class allows (the adoption check);
/// and the certificate with its `CKA_ID`.
fn hsm_facts(
    s: &HsmSession<'_>,
    (keys, token): (&crate::keys::ManagedKeys, &str),
    v: &KeyVersion,
    class: Option<&KeyClass>,
) -> AResult<HsmFacts> {
    let mut facts = HsmFacts::default();
    let id = &v.backend_id;
    // The version's own objects: never one planted with its CKA_ID.
    let m = crate::keys::ManagedRef {
        key_id: v.key_id,
        version: v.version,
    };
    let genuine = |cko| s.genuine(keys, token, id, cko, m);
    let public = genuine(ck::CKO_PUBLIC_KEY)?.first().copied();
    let main = match genuine(ck::CKO_PRIVATE_KEY)?.first() {
        Some(&o) => Some(o),
        None => genuine(ck::CKO_SECRET_KEY)?.first().copied(),
    };
    let Some(main) = main else {
        facts.drift.push(format!(
            "version {} (CKA_ID {}): no private or secret key on the HSM",
            v.version,
            hex(id)
        ));
        return Ok(facts);
    };
    let bool_at = |values: &[Option<Value>], i: usize| match values.get(i) {
        Some(Some(Value::Bool(b))) => Some(*b),
        _ => None,
    };
    let mut types = vec![ck::CKA_SENSITIVE, ck::CKA_EXTRACTABLE];
    types.extend(USAGE_FLAGS.iter().map(|(a, _)| *a));
    let values = s.attrs(main, &types)?;
    let what = format!("version {}", v.version);
    if bool_at(&values, 0) != Some(true) {
        facts.drift.push(format!("{what}: CKA_SENSITIVE is not on"));
    }
    if bool_at(&values, 1) == Some(true) && !class.is_some_and(|c| c.backup) {
        facts.drift.push(format!(
            "{what}: CKA_EXTRACTABLE is on, and the class has no backup"
        ));
    }
    if let Some(class) = class {
        let allowed = purpose_flags(class.purpose);
        let mut flags: Vec<bool> = (0..USAGE_FLAGS.len())
            .map(|i| bool_at(&values, i + 2) == Some(true))
            .collect();
        if let Some(p) = public {
            let types: Vec<u64> = USAGE_FLAGS.iter().map(|(a, _)| *a).collect();
            let pv = s.attrs(p, &types)?;
            for (i, f) in flags.iter_mut().enumerate() {
                *f |= bool_at(&pv, i) == Some(true);
            }
        }
        for (on, (attr, name)) in flags.iter().zip(USAGE_FLAGS) {
            if *on && !allowed.contains(&attr) {
                facts.drift.push(format!(
                    "{what}: {name} is on, beyond the purpose {} of class {:?}",
                    class.purpose, class.name
                ));
            }
        }
        if let Err(e) = algorithm_of(s, main, public, class) {
            facts.drift.push(format!("{what}: {}", e.message));
        }
    }
    let certs = s.find(&[
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
        Attribute::bytes(ck::CKA_ID, id.clone()),
    ])?;
    // The key's own certificate: one of another public key under its
    // CKA_ID is a plant, not its certificate.
    let own = keys.key(v.key_id);
    let cert = certs
        .iter()
        .copied()
        .find(|&c| own.as_ref().is_some_and(|k| s.is_certificate_of(c, k)));
    if let Some(cert) = cert {
        facts.certificate = Some(match s.bytes(cert, ck::CKA_VALUE)? {
            Some(der) => match not_after(&der) {
                Ok(t) => CertificateInfo {
                    not_after: Some(t),
                    problem: None,
                    expiring: false,
                },
                Err(e) => CertificateInfo {
                    not_after: None,
                    problem: Some(e),
                    expiring: false,
                },
            },
            None => CertificateInfo {
                not_after: None,
                problem: Some("the certificate's CKA_VALUE cannot be read".into()),
                expiring: false,
            },
        });
    }
    Ok(facts)
}

fn micros_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn invalid(message: String) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Invalid,
        message,
    }
}

fn trail(e: keyward_inventory::Error) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("audit trail: {e}"),
    }
}

/// Whether a record naming `token` (or none) and `key` is about `k`.
fn about(k: &KeyView, token: Option<&str>, key: &str) -> bool {
    key == k.record.name && token.is_none_or(|t| t == k.record.token)
}

/// The usage figures of one key from its rows.
fn key_usage(rows: &[&UseRow]) -> KeyUsage {
    let mut by: BTreeMap<(&str, &str), ApplicationUsage> = BTreeMap::new();
    let mut u = KeyUsage::default();
    for r in rows {
        u.window += r.window;
        u.baseline += r.baseline;
        u.total += r.total;
        u.failed += r.failed;
        let e = by
            .entry((&r.application, &r.exe))
            .or_insert_with(|| ApplicationUsage {
                application: r.application.clone(),
                exe: r.exe.clone(),
                window: 0,
                baseline: 0,
                total: 0,
                last_at: r.last_at,
            });
        e.window += r.window;
        e.baseline += r.baseline;
        e.total += r.total;
        e.last_at = e.last_at.max(r.last_at);
    }
    u.by_application = by.into_values().collect();
    u.by_application.sort_by(|a, b| {
        b.total
            .cmp(&a.total)
            .then(a.application.cmp(&b.application))
    });
    u
}

fn exports(rows: &[&OperationRow]) -> ExportAttempts {
    let mut e = ExportAttempts::default();
    let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows {
        if r.kind == "refusal" {
            *refused.entry(&r.operation).or_default() += r.total;
            e.refused_window += r.window;
        } else {
            e.wraps += r.total;
            e.wraps_window += r.window;
        }
    }
    e.refused = refused
        .into_iter()
        .map(|(operation, count)| OperationCount {
            operation: operation.to_owned(),
            count,
        })
        .collect();
    e
}

/// The trail's rows a report reads, once for every key.
struct TrailRows {
    uses: Vec<UseRow>,
    hours: Vec<HourRow>,
    ops: Vec<OperationRow>,
    revokes: Vec<keyward_inventory::usage::EventRow>,
    /// The backup and drill records, by token (empty: none named) and key.
    backups: HashMap<(String, String), Vec<EventRow>>,
}

impl TrailRows {
    /// What the backup and drill records say of `key`.
    fn backup_marks(&self, key: &KeyView) -> marks::Marks {
        let r = &key.record;
        let mut rows: Vec<&EventRow> = [r.token.clone(), String::new()]
            .into_iter()
            .filter_map(|t| self.backups.get(&(t, r.name.clone())))
            .flatten()
            .collect();
        rows.sort_by_key(|e| e.seq);
        marks::marks(rows, marks::life(key))
    }
}

/// What every key's part of one report shares.
struct KeyFacts<'r> {
    policy: &'r keyward_policy::Policy,
    rows: &'r TrailRows,
    span: Span,
    /// The report's time (unix seconds).
    at: i64,
}

/// The window and baseline a report asks for, ending at `now`.
fn report_span(req: &ReportRequest, now: SystemTime) -> AResult<Span> {
    let len = |secs: u64, what: &str| {
        i64::try_from(secs)
            .ok()
            .filter(|s| *s > 0)
            .and_then(|s| s.checked_mul(MICROS))
            .ok_or_else(|| invalid(format!("the {what} must be between 1 s and 100 years")))
    };
    let until = micros_of(now);
    let window_from = until - len(req.window_secs, "window")?;
    Ok(Span {
        until,
        window_from,
        baseline_from: window_from - len(req.baseline_secs, "baseline")?,
    })
}

/// Active keys on and past their rotation date.
fn rotation_compliance(reports: &[KeyReport]) -> RotationCompliance {
    let mut rotation = RotationCompliance::default();
    for k in reports.iter().filter(|k| k.state == KeyState::Active) {
        rotation.active += 1;
        if k.overdue {
            rotation.overdue.push(format!("{}/{}", k.token, k.name));
        } else {
            rotation.compliant += 1;
        }
    }
    rotation
}

/// Failed administrator actions, counted and the last ones shown.
fn failed_admin(failures: keyward_inventory::usage::Failures) -> FailedAdmin {
    FailedAdmin {
        window: failures.window,
        period: failures.period,
        total: failures.total,
        last: failures
            .last
            .into_iter()
            .map(|e| AdminFailure {
                seq: e.seq,
                at: e.at,
                operation: e.operation,
                key: e.key,
                uid: e.uid,
                reason: e.reason,
                result: e.result,
            })
            .collect(),
    }
}

impl Lifecycle {
    /// Answers `keyward report` for administrator `admin`.
    /// One admin record says who asked (see [`Core::audit_read`](crate::shared::Core::audit_read)).
    pub fn report_request(&self, admin: &Peer, req: ReportRequest) -> AdminResponse {
        let (operation, what) = (req.name(), req.describe());
        log::info!("admin {admin}: {operation}: {what}");
        let resp = self.make_report(admin, &req);
        self.audit_read(admin, operation, &what, &resp);
        resp
    }

    fn make_report(&self, admin: &Peer, req: &ReportRequest) -> AdminResponse {
        match self.report(req, crate::clock::now()) {
            Ok(r) => AdminResponse::Report(Box::new(r)),
            Err(e) => {
                log::warn!("admin {admin}: report: {}", e.message);
                AdminResponse::KeyErr {
                    kind: e.kind,
                    message: e.message,
                }
            }
        }
    }

    /// The report as of `now`.
    pub fn report(&self, req: &ReportRequest, now: SystemTime) -> AResult<Report> {
        let span = report_span(req, now)?;
        let at = secs(now);
        let token = match &req.token {
            Some(l) => Some(self.admin_token(Some(l))?.config.label.clone()),
            None => None,
        };
        let keys = self.report_keys(token.as_deref(), req.key.as_deref())?;

        // What is queued belongs in the report.
        self.audit.flush();
        let log = self.audit.log();
        let key_filter = req.key.as_deref();
        let mut trail_rows = TrailRows {
            uses: log.use_rows(&span, key_filter).map_err(trail)?,
            hours: log.use_hours(&span, key_filter).map_err(trail)?,
            ops: log
                .operation_rows(&span, key_filter, EXPORT_REFUSALS, WRAP_USES)
                .map_err(trail)?,
            revokes: Vec::new(),
            backups: HashMap::new(),
        };
        // One query for the revocations and the backups' records.
        let operations: Vec<&str> = REVOCATIONS
            .iter()
            .chain(marks::OPERATIONS)
            .copied()
            .collect();
        for row in log.lifecycle_rows(key_filter, &operations).map_err(trail)? {
            if REVOCATIONS.contains(&row.operation.as_str()) {
                trail_rows.revokes.push(row);
            } else if let Some(key) = row.key.clone() {
                let token = row.token.clone().unwrap_or_default();
                trail_rows
                    .backups
                    .entry((token, key))
                    .or_default()
                    .push(row);
            }
        }

        // One policy for the whole report (a reload may swap it meanwhile).
        let policy = self.policy();
        // One admin session per token, opened on first need.
        let mut sessions: HashMap<String, Result<HsmSession<'_>, String>> = HashMap::new();
        let mut reports = Vec::new();
        for key in &keys {
            let facts = KeyFacts {
                policy: &policy,
                rows: &trail_rows,
                span,
                at,
            };
            reports.push(self.key_report(key, &facts, &req.thresholds, &mut sessions)?);
        }
        drop(sessions);

        let failures = log
            .failures(&span, "admin", FAILED_ADMIN_SHOWN)
            .map_err(trail)?;
        let unmanaged = if req.key.is_some() {
            Vec::new()
        } else {
            unmanaged(&trail_rows.uses, token.as_deref())
        };
        let anomalies = reports
            .iter()
            .flat_map(|k| k.anomalies.iter().cloned())
            .collect();
        Ok(Report {
            generated_at: at,
            window_secs: req.window_secs,
            baseline_secs: req.baseline_secs,
            thresholds: req.thresholds,
            rotation: rotation_compliance(&reports),
            keys: reports,
            failed_admin: failed_admin(failures),
            pending_requests: match self.list_requests(false, now)? {
                keyward_protocol::admin::KeyResponse::Requests(r) => r,
                _ => Vec::new(),
            },
            unmanaged,
            anomalies,
        })
    }

    /// The managed keys a report covers (of `token`, or the key named
    /// `key`), by token and name.
    fn report_keys(&self, token: Option<&str>, key: Option<&str>) -> AResult<Vec<Arc<KeyView>>> {
        let mut keys: Vec<Arc<KeyView>> = self
            .keys
            .all()
            .into_iter()
            .filter(|k| token.is_none_or(|t| t == k.record.token))
            .filter(|k| key.is_none_or(|n| n == k.record.name))
            .collect();
        keys.sort_by(|a, b| {
            (&a.record.token, &a.record.name).cmp(&(&b.record.token, &b.record.name))
        });
        if let (Some(name), true) = (key, keys.is_empty()) {
            return Err(AdminError {
                kind: AdminErrorKind::NotFound,
                message: match token {
                    Some(t) => crate::lifecycle::no_key_message(name, [t]),
                    None => crate::lifecycle::no_key_message(
                        name,
                        self.tokens.iter().map(|t| t.config.label.as_str()),
                    ),
                },
            });
        }
        Ok(keys)
    }

    /// One key's part of the report: its usage judged against its
    /// baseline, what the HSM says of it (through `sessions`, one per
    /// token), its drift from policy, exports and revocations.
    fn key_report<'a>(
        &'a self,
        key: &KeyView,
        facts: &KeyFacts<'_>,
        thresholds: &keyward_protocol::admin::AnomalyThresholds,
        sessions: &mut HashMap<String, Result<HsmSession<'a>, String>>,
    ) -> AResult<KeyReport> {
        let (rows, at) = (facts.rows, facts.at);
        let r = &key.record;
        let class = facts.policy.class(&r.class);
        let mine: Vec<&UseRow> = rows
            .uses
            .iter()
            .filter(|u| u.managed && about(key, u.token.as_deref(), &u.key))
            .collect();
        let my_hours: Vec<&HourRow> = rows
            .hours
            .iter()
            .filter(|h| about(key, h.token.as_deref(), &h.key))
            .collect();
        let my_ops: Vec<&OperationRow> = rows
            .ops
            .iter()
            .filter(|o| about(key, o.token.as_deref(), &o.key))
            .collect();
        let periods = Periods {
            span: facts.span,
            baseline_from: facts
                .span
                .baseline_from
                .max(r.created_at.saturating_mul(MICROS)),
        };
        let judged = judge(&r.token, &r.name, &mine, &my_hours, periods, thresholds);
        let active = key.active_version();
        let live = active.or_else(|| key.live_version());
        let mut drift = grant_drift(facts.policy, key, class, at);
        let mut certificate = None;
        let mut hsm_error = None;
        if let Some(v) = live {
            let session = sessions.entry(r.token.clone()).or_insert_with(|| {
                let token = self.admin_token(Some(&r.token)).map_err(|e| e.message)?;
                let backend = self.backend(token).map_err(|e| e.message)?;
                HsmSession::open(backend.as_ref()).map_err(|e| e.message)
            });
            match session {
                Ok(s) => match hsm_facts(s, (&self.keys, &r.token), v, class) {
                    Ok(f) => {
                        drift.extend(f.drift);
                        certificate = f.certificate;
                    }
                    Err(e) => hsm_error = Some(e.message),
                },
                Err(e) => hsm_error = Some(e.clone()),
            }
        }
        // Expiring: within the class's warning (expired: always).
        let warning = class
            .and_then(|c| c.certificate_warning)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if let Some(c) = certificate.as_mut() {
            c.expiring = c.not_after.is_some_and(|t| t.saturating_sub(at) <= warning);
        }
        let backups = rows.backup_marks(key);
        let backup_missing =
            marks::backup_missing(r.backup_allowed, r.state, live.map(|v| v.version), &backups);
        let destroyed = r.state == KeyState::Destroyed;
        Ok(KeyReport {
            name: r.name.clone(),
            token: r.token.clone(),
            class: r.class.clone(),
            purpose: r.purpose,
            algorithm: r.algorithm,
            state: r.state,
            active_version: active.map(|v| v.version),
            age_secs: active.map(|v| u64::try_from(at - v.created_at).unwrap_or(0)),
            cryptoperiod_secs: class.map(|c| c.protect_period.as_secs()),
            rotation_interval_secs: class.and_then(|c| c.rotation_interval).map(|d| d.as_secs()),
            protect_until: r.protect_until,
            next_rotation: r.next_rotation,
            overdue: key.rotation_due(at),
            certificate,
            usage: key_usage(&mine),
            learning: judged.learning,
            anomalies: judged.anomalies,
            exports: exports(&my_ops),
            drift,
            revocations: self.revocations(key, &rows.revokes)?,
            hsm_error,
            last_backup: backups.last_backup,
            last_drill: backups.last_drill,
            backup_missing,
            held_by_backups: if destroyed {
                backups.held_by
            } else {
                Vec::new()
            },
            policy_findings: if destroyed {
                Vec::new()
            } else {
                policy_findings(key, class)
            },
        })
    }

    /// Each revocation of `key` in `rows`: the latency from the request
    /// (the last revoke request for the key before it) to its first
    /// lifecycle record, and the successful uses of the revoked versions
    /// after that record.
    ///
    /// One revocation is several lifecycle records (the key's own change,
    /// each version's; an emergency rotation's new version too): the
    /// records that follow one request are one revocation, and its
    /// versions are those the records name that the inventory's history
    /// (typed state changes, not the records' reason text) shows becoming
    /// compromised by then. The
    /// agent writes them only after every use of the key that was in
    /// flight has completed and been queued, so a successful use record
    /// after the first of them is a use that got through — except the
    /// verify and decrypt uses an approved recovery window allowed (after
    /// its `recover` record, before its end).
    fn revocations(&self, key: &KeyView, rows: &[EventRow]) -> AResult<Vec<Revocation>> {
        struct Group {
            first: EventRow,
            /// The time of its last record.
            last_at: i64,
            request: Option<EventRow>,
            /// The versions its records name.
            named: Vec<u32>,
        }
        let log = self.audit.log();
        let r = &key.record;
        let mut groups: Vec<Group> = Vec::new();
        for row in rows.iter().filter(|e| {
            e.key
                .as_deref()
                .is_some_and(|k| about(key, e.token.as_deref(), k))
        }) {
            let mut request = None;
            for (operation, contains) in [REVOKE_REQUEST, REVOKE_REQUEST_UNNAMED] {
                let found = log
                    .request_before(&r.token, &r.name, row.seq, operation, contains)
                    .map_err(trail)?;
                if found.as_ref().map(|f| f.seq) > request.as_ref().map(|q: &EventRow| q.seq) {
                    request = found;
                }
            }
            let same = |g: &Group| match (&g.request, &request) {
                (Some(a), Some(b)) => a.seq == b.seq,
                (None, None) => g.first.at == row.at,
                _ => false,
            };
            let i = match groups.iter().position(same) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        first: row.clone(),
                        last_at: row.at,
                        request,
                        named: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[i].last_at = groups[i].last_at.max(row.at);
            groups[i].named.extend(row.key_version);
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let history = self
            .keys
            .inventory()
            .history(r.id)
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("inventory: {e}"),
            })?;
        // Uses an approved recovery window allowed (verify, decrypt) are
        // not uses that got through the revocation.
        let recovery = match r.recovery_until {
            Some(until) => log
                .lifecycle_rows(Some(&r.name), &["recover"])
                .map_err(trail)?
                .into_iter()
                .find(|e| about(key, e.token.as_deref(), &r.name))
                .map(|e| keyward_inventory::RecoveryUses { from: e.seq, until }),
            None => None,
        };
        let compromised = |v: u32, until: i64| {
            history
                .iter()
                .any(|c| c.version == Some(v) && c.to == KeyState::Compromised && c.at <= until)
        };
        let mut out = Vec::new();
        for g in groups {
            let mut versions: Vec<u32> = if g.named.is_empty() {
                // Records that name no version: the versions that became
                // compromised between the request and the record.
                let from = g.request.as_ref().map_or(g.first.at, |q| q.at);
                history
                    .iter()
                    .filter(|c| c.to == KeyState::Compromised && c.at >= from && c.at <= g.first.at)
                    .filter_map(|c| c.version)
                    .collect()
            } else {
                g.named
                    .iter()
                    .copied()
                    .filter(|&v| compromised(v, g.last_at))
                    .collect()
            };
            versions.sort_unstable();
            versions.dedup();
            let after = log
                .uses_after(&r.token, &r.name, &versions, g.first.seq, recovery)
                .map_err(trail)?;
            out.push(Revocation {
                seq: g.first.seq,
                action: g.first.operation.clone(),
                effective_at: g.first.at,
                requested_at: g.request.as_ref().map(|q| q.at),
                latency_us: g
                    .request
                    .as_ref()
                    .and_then(|q| u64::try_from(g.first.at_us() - q.at_us()).ok()),
                versions,
                uses_after: after.count,
                first_use_after: after.first_seq,
                no_use_after: after.count == 0,
            });
        }
        Ok(out)
    }
}

/// Uses of unmanaged objects, by token, object and application, busiest
/// first; at most [`UNMANAGED_SHOWN`].
fn unmanaged(uses: &[UseRow], token: Option<&str>) -> Vec<UnmanagedUsage> {
    let mut by: BTreeMap<(String, &str, &str), UnmanagedUsage> = BTreeMap::new();
    for u in uses.iter().filter(|u| !u.managed) {
        let t = u.token.clone().unwrap_or_default();
        if token.is_some_and(|want| want != t) {
            continue;
        }
        let e = by
            .entry((t.clone(), &u.key, &u.application))
            .or_insert_with(|| UnmanagedUsage {
                token: t,
                object: u.key.clone(),
                application: u.application.clone(),
                window: 0,
                total: 0,
            });
        e.window += u.window;
        e.total += u.total;
    }
    let mut out: Vec<UnmanagedUsage> = by.into_values().collect();
    out.sort_by(|a, b| b.total.cmp(&a.total).then(a.object.cmp(&b.object)));
    out.truncate(UNMANAGED_SHOWN);
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
