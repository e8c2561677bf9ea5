//! The Prometheus text-format metrics endpoint (`[metrics] listen`, off by
//! default).
//!
//! - Counting ([`Metrics`]) is on the hot path: one [`Metrics::record`] per
//!   application request, into fixed arrays of atomics indexed by the
//!   request's [`Call`] — no lock, no hashing, no allocation. Admin requests
//!   and connections are counted the same way, off the hot path.
//! - Rendering ([`render`]) runs on the scrape thread: the counters, the
//!   agent's in-memory key view ([`key_figures`] → [`render_keys`]), the
//!   tokens and the audit trail's head. The exposition is written by
//!   [`Exposition`], which escapes label values and help text.
//! - Serving ([`Exporter`]): a loopback TCP listener and one thread that
//!   answers scrape connections in turn, with a minimal HTTP/1 responder
//!   of its own: the request head is read with a size bound (8 KiB)
//!   and a time bound (5 s per read or write), one answer is written, and the
//!   connection closes. `GET /metrics` (or `HEAD`) answers the exposition,
//!   another path 404, another method 405, a malformed head 400.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_protocol::admin::{AdminRequest, AdminResponse, KeyResponse};
use keyward_protocol::Response;

use crate::agent::Agent;
use crate::keys::KeyView;

/// The exposition format's content type (text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The file in the state directory that holds the bound address.
pub const ADDR_FILE: &str = "metrics.addr";

/// A kind of application request, named (the `operation` label) by the
/// PKCS#11 function it serves: the call table's [`Call`]. A `C_*Init` the
/// module deferred travels with the operation's first request and is
/// counted as that request (`C_Sign`, not `C_SignInit`); requests that
/// serve no PKCS#11 function are `other`.
pub use keyward_protocol::Call;

/// How many kinds of request are counted.
const CALLS: usize = Call::ALL.len();

/// How many copies of the request counters there are: each connection
/// counts into the copy of its number modulo this, so that connections
/// served at the same time (numbered one after the other) do not bounce
/// the same cache lines between cores. A scrape adds the copies up.
const STRIPES: usize = 8;

/// Upper bounds of the latency histogram's buckets, in nanoseconds: 10 µs
/// to 1 s, about three per decade.
const BUCKETS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// [`BUCKETS_NS`] as the `le` label writes them (seconds).
const BUCKETS_LE: [&str; 16] = [
    "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025", "0.05", "0.1", "0.25", "0.5", "1",
];

/// The counters of one kind of request. Aligned to a cache line so that
/// threads serving different calls do not share lines.
#[derive(Debug)]
#[repr(align(64))]
struct CallStats {
    /// Answered without an error (`[0]`) and with one (`[1]`).
    results: [AtomicU64; 2],
    /// Requests per latency bucket, not cumulative; the last one is over
    /// the largest bound.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    /// Total time, nanoseconds.
    sum_ns: AtomicU64,
}

impl CallStats {
    const fn new() -> CallStats {
        CallStats {
            results: [const { AtomicU64::new(0) }; 2],
            buckets: [const { AtomicU64::new(0) }; BUCKETS_NS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// Outcome of an admin request (`result` label).
const ADMIN_RESULTS: [&str; 3] = ["ok", "error", "pending"];

/// The agent's counters. Created with the server and counted whether or
/// not the endpoint is on (a handful of relaxed atomic additions per
/// request).
#[derive(Debug)]
pub struct Metrics {
    started: SystemTime,
    calls: Box<[[CallStats; CALLS]; STRIPES]>,
    /// Admin requests by (request, result index); rare, so a map under a
    /// lock is fine here.
    admin: Mutex<std::collections::BTreeMap<String, [u64; ADMIN_RESULTS.len()]>>,
    connections: AtomicU64,
    peers_refused: AtomicU64,
    /// The last `keyward report` figures: a report reads the whole trail
    /// and the HSM, so scrapes reuse it (see [`Metrics::report`]).
    report: Mutex<Option<CachedReport>>,
    /// An admin request changed what the report shows since it was made.
    report_stale: AtomicBool,
    /// The webhook's counters, when `[webhook]` is configured.
    webhook: std::sync::OnceLock<Arc<crate::notify::WebhookStats>>,
}

/// A report the scrapes reuse: when it was made and how long that took.
#[derive(Debug)]
struct CachedReport {
    made: std::time::Instant,
    took: Duration,
    report: keyward_protocol::admin::Report,
}

/// A report is made again at most once per this many times its own
/// duration, so that scraping a long trail costs at most ~2 % of a core
/// (a 1-million-record trail takes about 4 s on the reference machine).
pub const REPORT_DUTY: u32 = 50;
/// Reports faster than this are made again after every admin request.
pub const REPORT_SLOW: Duration = Duration::from_millis(100);

/// How long the report figures of the metrics are reused.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Counters at zero; the start time is now.
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            calls: Box::new([const { [const { CallStats::new() }; CALLS] }; STRIPES]),
            admin: Mutex::new(Default::default()),
            connections: AtomicU64::new(0),
            peers_refused: AtomicU64::new(0),
            report: Mutex::new(None),
            report_stale: AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        }
    }

    /// Counts one application request of kind `call` on connection
    /// `conn`, answered with `resp` after `elapsed`. The hot path: three
    /// relaxed additions.
    #[inline]
    pub fn record(&self, conn: u64, call: Call, resp: &Response, elapsed: Duration) {
        let s = &self.calls[(conn % STRIPES as u64) as usize][call.index()];
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS
            .iter()
            .position(|&le| ns <= le)
            .unwrap_or(BUCKETS_NS.len());
        s.buckets[bucket].fetch_add(1, Relaxed);
        s.sum_ns.fetch_add(ns, Relaxed);
        let error = matches!(resp, Response::Err(_));
        s.results[usize::from(error)].fetch_add(1, Relaxed);
    }

    /// Counts one admin request and its answer.
    pub fn record_admin(&self, request: String, resp: &AdminResponse) {
        let result = match resp {
            AdminResponse::Err(_) | AdminResponse::KeyErr { .. } => 1,
            AdminResponse::Key(k) if matches!(**k, KeyResponse::Pending(_)) => 2,
            _ => 0,
        };
        let mut admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        admin.entry(request).or_default()[result] += 1;
        drop(admin);
        // An administrator changed something the report shows: the next
        // scrape makes it anew (within the duty bound).
        self.report_stale.store(true, Relaxed);
    }

    /// An application connection opened; closed when the guard drops.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connections.fetch_add(1, Relaxed);
        ConnectionGuard(self)
    }

    /// A peer that no application of the policy matches was refused.
    pub fn peer_refused(&self) {
        self.peers_refused.fetch_add(1, Relaxed);
    }

    /// The application request counters and latency histograms. Kinds of
    /// request never seen are left out.
    pub fn render_requests(&self, out: &mut Exposition) {
        let snapshot: Vec<(Call, [u64; 2], [u64; BUCKETS_NS.len() + 1], u64)> = Call::ALL
            .iter()
            .map(|&c| {
                let mut results = [0u64; 2];
                let mut buckets = [0u64; BUCKETS_NS.len() + 1];
                let mut sum_ns = 0u64;
                for stripe in self.calls.iter() {
                    let s = &stripe[c.index()];
                    for (total, n) in results.iter_mut().zip(&s.results) {
                        *total += n.load(Relaxed);
                    }
                    for (total, n) in buckets.iter_mut().zip(&s.buckets) {
                        *total += n.load(Relaxed);
                    }
                    sum_ns = sum_ns.wrapping_add(s.sum_ns.load(Relaxed));
                }
                (c, results, buckets, sum_ns)
            })
            .filter(|(_, r, b, _)| r.iter().any(|&n| n > 0) || b.iter().any(|&n| n > 0))
            .collect();
        out.family(
            "keyward_requests_total",
            Kind::Counter,
            "Application requests the agent answered, by PKCS#11 function and result (error: any CKR_* other than CKR_OK).",
        );
        for (call, results, _, _) in &snapshot {
            for (result, n) in ["ok", "error"].iter().zip(results) {
                out.sample(
                    "keyward_requests_total",
                    &[("operation", call.name()), ("result", result)],
                    *n as f64,
                );
            }
        }
        out.family(
            "keyward_request_duration_seconds",
            Kind::Histogram,
            "Time the agent took to answer an application request (backend call included, socket transfer excluded), by PKCS#11 function.",
        );
        for (call, _, buckets, sum_ns) in &snapshot {
            let mut cumulative = 0u64;
            for (le, n) in BUCKETS_LE.iter().zip(buckets) {
                cumulative += n;
                out.sample(
                    "keyward_request_duration_seconds_bucket",
                    &[("operation", call.name()), ("le", le)],
                    cumulative as f64,
                );
            }
            let count = cumulative + buckets[BUCKETS_NS.len()];
            out.sample(
                "keyward_request_duration_seconds_bucket",
                &[("operation", call.name()), ("le", "+Inf")],
                count as f64,
            );
            out.sample(
                "keyward_request_duration_seconds_sum",
                &[("operation", call.name())],
                *sum_ns as f64 / 1e9,
            );
            out.sample(
                "keyward_request_duration_seconds_count",
                &[("operation", call.name())],
                count as f64,
            );
        }
    }

    /// Sets the webhook's counters (once, at start).
    pub fn set_webhook(&self, stats: Arc<crate::notify::WebhookStats>) {
        let _ = self.webhook.set(stats);
    }

    /// The webhook's counters (zero without `[webhook]`, so the alerting
    /// rules name a metric every agent exports).
    pub fn render_webhook(&self, out: &mut Exposition) {
        let none = crate::notify::WebhookStats::default();
        let w = self.webhook.get().map_or(&none, |w| w.as_ref());
        for (name, help, value) in [
            (
                "keyward_webhook_events_total",
                "Webhook events posted and accepted (2xx) since the agent started.",
                &w.sent,
            ),
            (
                "keyward_webhook_failed_total",
                "Webhook events not delivered: every try failed.",
                &w.failed,
            ),
            (
                "keyward_webhook_dropped_total",
                "Webhook events dropped because the queue was full.",
                &w.dropped,
            ),
        ] {
            out.family(name, Kind::Counter, help);
            out.sample(name, &[], value.load(Relaxed) as f64);
        }
    }

    /// Admin requests, connections, refused peers, start time and uptime.
    pub fn render_agent(&self, out: &mut Exposition, now: SystemTime) {
        out.family(
            "keyward_admin_requests_total",
            Kind::Counter,
            "Requests on the admin socket (the keyward CLI), by request and result (pending: recorded for approval).",
        );
        let admin = self.admin.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (request, counts) in &admin {
            for (result, n) in ADMIN_RESULTS.iter().zip(counts) {
                out.sample(
                    "keyward_admin_requests_total",
                    &[("request", request), ("result", result)],
                    *n as f64,
                );
            }
        }
        out.family(
            "keyward_connections",
            Kind::Gauge,
            "Open application connections (the module opens one per concurrent thread).",
        );
        out.sample(
            "keyward_connections",
            &[],
            self.connections.load(Relaxed) as f64,
        );
        out.family(
            "keyward_peers_refused_total",
            Kind::Counter,
            "Connections refused because no application of the policy matches the peer.",
        );
        out.sample(
            "keyward_peers_refused_total",
            &[],
            self.peers_refused.load(Relaxed) as f64,
        );
        let started = unix_secs_f64(self.started);
        out.family(
            "keyward_start_time_seconds",
            Kind::Gauge,
            "When the agent started, unix time.",
        );
        out.sample("keyward_start_time_seconds", &[], started.floor());
        out.family(
            "keyward_uptime_seconds",
            Kind::Gauge,
            "Seconds since the agent started.",
        );
        out.sample(
            "keyward_uptime_seconds",
            &[],
            (unix_secs_f64(now) - started).max(0.0).floor(),
        );
    }
}

/// Closes a counted connection on drop (see [`Metrics::connection`]).
#[derive(Debug)]
pub struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `request` label of an admin request: its stable name
/// (`agent.status`, `key.create`, `key.suspend`, `audit.verify`; see
/// [`keyward_protocol::names`]), as the audit trail's admin records name it;
/// a dry run is counted apart from the request it plans (`key.revoke
/// dry-run`), which it does not carry out.
pub fn admin_request_name(req: &AdminRequest) -> String {
    match req {
        AdminRequest::DryRun(k) => format!("{} dry-run", k.name()),
        _ => req.name().to_owned(),
    }
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the agent restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_bucket`, `_sum` and `_count` series.
    Histogram,
}

/// A text-format exposition being written: families with `# HELP` and
/// `# TYPE`, then their samples. Metric and label names are the caller's
/// constants; label values and help text are escaped here.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        push_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// The text.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// A sample value as the format writes it (`+Inf`, `-Inf`, `NaN`, else
/// Rust's shortest exact decimal form).
fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A label value escaped for the text format: backslash, double quote and
/// line feed.
pub fn escape_label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Help text escaped for the text format: backslash and line feed.
pub fn escape_help(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\").replace('\n', "\\n").into()
}

/// What the metrics show of one managed key. [`key_figures`] builds them
/// from the agent's key view; anything that knows the same (a report of
/// the agent) can build them too and hand them to [`render_keys`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFigures {
    /// Virtual token label.
    pub token: String,
    /// Key name.
    pub key: String,
    /// Key class of the policy.
    pub class: String,
    /// Lifecycle state as stored (`active`, `pre-activation`, ...).
    pub state: String,
    /// The version that protects now (the newest active one), if any.
    pub active_version: Option<u32>,
    /// Its age in seconds.
    pub active_version_age_secs: Option<i64>,
    /// Seconds until the next scheduled rotation (negative: overdue), for
    /// active keys that rotate.
    pub next_rotation_in_secs: Option<i64>,
    /// Last use (unix seconds), as the inventory has it (written every few
    /// seconds).
    pub last_used_at: Option<i64>,
}

/// The figures of `keys` at `now` (unix seconds), sorted by token and key.
pub fn key_figures(keys: &[Arc<KeyView>], now: i64) -> Vec<KeyFigures> {
    use keyward_policy::KeyState;
    let mut out: Vec<KeyFigures> = keys
        .iter()
        .map(|k| {
            let r = &k.record;
            let active = k.active_version();
            KeyFigures {
                token: r.token.clone(),
                key: r.name.clone(),
                class: r.class.clone(),
                state: r.state.as_str().to_owned(),
                active_version: active.map(|v| v.version),
                active_version_age_secs: active.map(|v| now - v.created_at),
                next_rotation_in_secs: r
                    .next_rotation
                    .filter(|_| r.state == KeyState::Active)
                    .map(|t| t - now),
                last_used_at: r.last_used_at,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.token, &a.key).cmp(&(&b.token, &b.key)));
    out
}

/// One per-key gauge's value, when the key has one.
type KeyGauge = fn(&KeyFigures) -> Option<f64>;

/// The labels that name a key.
fn key_labels(k: &KeyFigures) -> [(&'static str, &str); 3] {
    [("token", &k.token), ("key", &k.key), ("class", &k.class)]
}

/// The per-key gauges and the count of keys per state.
pub fn render_keys(out: &mut Exposition, keys: &[KeyFigures]) {
    let states = keyward_policy::KeyState::ALL.map(|s| s.as_str());
    out.family(
        "keyward_keys",
        Kind::Gauge,
        "Managed keys in the inventory, by lifecycle state.",
    );
    for state in states {
        let n = keys.iter().filter(|k| k.state == state).count();
        out.sample("keyward_keys", &[("state", state)], n as f64);
    }
    out.family(
        "keyward_key_state",
        Kind::Gauge,
        "Lifecycle state of each managed key: 1 for its state, 0 for the others.",
    );
    for k in keys {
        for state in states {
            let [t, n, c] = key_labels(k);
            out.sample(
                "keyward_key_state",
                &[t, n, c, ("state", state)],
                f64::from(u8::from(k.state == state)),
            );
        }
    }
    let gauges: [(&str, &str, KeyGauge); 4] = [
        (
            "keyward_key_active_version",
            "The version of each managed key that protects now (its newest active version).",
            |k| k.active_version.map(f64::from),
        ),
        (
            "keyward_key_active_version_age_seconds",
            "Age of the version of each managed key that protects now.",
            |k| k.active_version_age_secs.map(|s| s as f64),
        ),
        (
            "keyward_key_next_rotation_seconds",
            "Seconds until the next scheduled rotation of each active managed key; negative when overdue.",
            |k| k.next_rotation_in_secs.map(|s| s as f64),
        ),
        (
            "keyward_key_last_used_timestamp_seconds",
            "Last use of each managed key, unix time (recorded every few seconds).",
            |k| k.last_used_at.map(|s| s as f64),
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, Kind::Gauge, help);
        for k in keys {
            if let Some(v) = value(k) {
                out.sample(name, &key_labels(k), v);
            }
        }
    }
}

/// Seconds until the certificates stored beside key versions expire
/// (negative: expired), from the inventory (no HSM access): one series per
/// version of a key that is not destroyed, its latest certificate's.
fn render_certificates(out: &mut Exposition, agent: &Agent, now: i64) {
    use keyward_policy::KeyState;
    let certificates = match agent.keys.inventory().certificates(None) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("metrics: the inventory's certificates cannot be read: {e}");
            return;
        }
    };
    let mut latest: std::collections::BTreeMap<(String, String, u32), i64> =
        std::collections::BTreeMap::new();
    for c in certificates {
        let Some(k) = agent.keys.key(c.key_id) else {
            continue;
        };
        let live = k
            .version(c.version)
            .is_some_and(|v| v.state != KeyState::Destroyed);
        if !live || k.record.state == KeyState::Destroyed {
            continue;
        }
        let at = latest
            .entry((k.record.token.clone(), k.record.name.clone(), c.version))
            .or_insert(c.not_after);
        *at = (*at).max(c.not_after);
    }
    out.family(
        "keyward_certificate_expiry_seconds",
        Kind::Gauge,
        "Seconds until the certificate stored beside each key version expires; negative once expired.",
    );
    for ((token, key, version), not_after) in latest {
        let version = version.to_string();
        out.sample(
            "keyward_certificate_expiry_seconds",
            &[("token", &token), ("key", &key), ("version", &version)],
            (not_after - now) as f64,
        );
    }
}

/// The whole exposition: `metrics`' counters, build information, the
/// agent's clients, tokens, audit trail and managed keys.
pub fn render(metrics: &Metrics, agent: &Agent) -> String {
    let now = crate::clock::now();
    let mut out = Exposition::new();
    out.family(
        "keyward_build_info",
        Kind::Gauge,
        "The agent's version and the newest application and admin protocol versions it speaks; always 1.",
    );
    let protocol = keyward_protocol::APP_VERSIONS.max.to_string();
    let admin_protocol = keyward_protocol::ADMIN_VERSIONS.max.to_string();
    out.sample(
        "keyward_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("protocol", &protocol),
            ("admin_protocol", &admin_protocol),
        ],
        1.0,
    );
    metrics.render_agent(&mut out, now);
    metrics.render_webhook(&mut out);
    out.family(
        "keyward_clients",
        Kind::Gauge,
        "Application processes connected (each with one or more connections).",
    );
    out.sample("keyward_clients", &[], agent.client_count() as f64);
    out.family(
        "keyward_approval_requests_pending",
        Kind::Gauge,
        "Approval requests waiting for a second person (pending, not yet expired).",
    );
    out.sample(
        "keyward_approval_requests_pending",
        &[],
        agent.lifecycle.pending_requests() as f64,
    );
    metrics.render_requests(&mut out);
    out.family(
        "keyward_token_backend_up",
        Kind::Gauge,
        "Whether the backend token behind each virtual token was found and logged in at start.",
    );
    for t in &agent.tokens {
        out.sample(
            "keyward_token_backend_up",
            &[("token", &t.config.label)],
            f64::from(u8::from(t.backend().is_ok())),
        );
    }
    if let Ok((seq, _)) = agent.audit.log().head() {
        out.family(
            "keyward_audit_records",
            Kind::Gauge,
            "Records in the audit trail (the sequence number of its newest record); uses are appended in batches, up to 200 ms late.",
        );
        out.sample("keyward_audit_records", &[], seq as f64);
    }
    let stats = agent.audit.stats();
    for (name, help, value) in [
        (
            "keyward_audit_records_written_total",
            "Records the agent appended to the audit trail since it started (a coalesced record counts once).",
            stats.records,
        ),
        (
            "keyward_audit_events_total",
            "Events those records stand for (a coalesced record counts its uses).",
            stats.events,
        ),
        (
            "keyward_audit_write_failures_total",
            "Appends to the audit trail that failed since the agent started.",
            stats.failures,
        ),
        (
            "keyward_audit_events_lost_total",
            "Use events dropped because the trail could not be written for too long.",
            stats.lost,
        ),
    ] {
        out.family(name, Kind::Counter, help);
        out.sample(name, &[], value as f64);
    }
    out.family(
        "keyward_audit_failing",
        Kind::Gauge,
        "1 while the audit trail cannot be written (admin and lifecycle actions are refused).",
    );
    out.sample(
        "keyward_audit_failing",
        &[],
        f64::from(u8::from(stats.failing)),
    );
    let secs = crate::keys::secs(now);
    render_keys(&mut out, &key_figures(&agent.keys.all(), secs));
    render_certificates(&mut out, agent, secs);
    out.family(
        "keyward_shadow_keys",
        Kind::Gauge,
        "Keys on each backend token outside management (shadow keys and planted objects), \
         as the scheduler's last discovery found them.",
    );
    for (token, n) in agent.keys.shadow_counts() {
        out.sample("keyward_shadow_keys", &[("token", &token)], n as f64);
    }
    if let Some(report) = metrics.report(agent, now) {
        render_report(&mut out, &report);
    }
    out.into_text()
}

impl Metrics {
    /// The report figures: made anew when older than [`REPORT_EVERY`] or
    /// after an admin request, but a report that took [`REPORT_SLOW`] or
    /// more is not made again sooner than [`REPORT_DUTY`] times its
    /// duration.
    fn report(&self, agent: &Agent, now: SystemTime) -> Option<keyward_protocol::admin::Report> {
        let mut cached = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            let age = c.made.elapsed();
            let stale = self.report_stale.load(Relaxed);
            let fresh = !stale && age < REPORT_EVERY;
            // Reports that take long are not made again too soon.
            let throttled = c.took >= REPORT_SLOW && age < c.took * REPORT_DUTY;
            if fresh || throttled {
                return Some(c.report.clone());
            }
        }
        self.report_stale.store(false, Relaxed);
        let started = std::time::Instant::now();
        let req = keyward_protocol::admin::ReportRequest::default();
        match agent.lifecycle.report(&req, now) {
            Ok(r) => {
                *cached = Some(CachedReport {
                    made: std::time::Instant::now(),
                    took: started.elapsed(),
                    report: r.clone(),
                });
                Some(r)
            }
            Err(e) => {
                log::warn!(
                    "metrics: the report figures could not be made: {}",
                    e.message
                );
                cached.as_ref().map(|c| c.report.clone())
            }
        }
    }
}

/// The figures of `keyward report` (default window and baseline) as
/// gauges: rotation compliance, per key overdue, uses, anomalies, export
/// attempts, drift, certificate expiry and revocation latency; failed
/// admin actions.
pub fn render_report(out: &mut Exposition, r: &keyward_protocol::admin::Report) {
    out.family(
        "keyward_report_generated_timestamp_seconds",
        Kind::Gauge,
        "When the report figures below were made (they are reused for 60 s).",
    );
    out.sample(
        "keyward_report_generated_timestamp_seconds",
        &[],
        r.generated_at as f64,
    );
    out.family(
        "keyward_rotation_compliance_ratio",
        Kind::Gauge,
        "Share of active keys whose rotation is not overdue (1 with no active key).",
    );
    let ratio = if r.rotation.active == 0 {
        1.0
    } else {
        f64::from(r.rotation.compliant) / f64::from(r.rotation.active)
    };
    out.sample("keyward_rotation_compliance_ratio", &[], ratio);
    out.family(
        "keyward_admin_failures",
        Kind::Gauge,
        "Failed administrator actions in the last hour (window) and since the trail began (total).",
    );
    out.sample(
        "keyward_admin_failures",
        &[("period", "window")],
        r.failed_admin.window as f64,
    );
    out.sample(
        "keyward_admin_failures",
        &[("period", "total")],
        r.failed_admin.total as f64,
    );
    type Figure = fn(&keyward_protocol::admin::KeyReport) -> Option<f64>;
    let per_key: [(&str, &str, Figure); 8] = [
        ("keyward_key_rotation_overdue", "1 when the key's rotation is overdue.", |k| {
            Some(f64::from(u8::from(k.overdue)))
        }),
        ("keyward_key_uses_window", "Uses of the key in the last hour.", |k| {
            Some(k.usage.window as f64)
        }),
        ("keyward_key_uses", "Uses of the key since the trail began.", |k| {
            Some(k.usage.total as f64)
        }),
        ("keyward_key_anomalies", "Usage anomalies of the key in the last hour (new executable, unusual hour, volume spike).", |k| {
            Some(k.anomalies.len() as f64)
        }),
        ("keyward_key_export_attempts_window", "Refused attempts to take the key out (wrap, copy, attribute change) in the last hour.", |k| {
            Some(k.exports.refused_window as f64)
        }),
        ("keyward_key_drift", "Ways the key's grants or HSM attributes no longer match its class.", |k| {
            Some(k.drift.len() as f64)
        }),
        ("keyward_key_certificate_not_after_timestamp_seconds", "When the certificate of the key's active version expires.", |k| {
            k.certificate.as_ref().and_then(|c| c.not_after).map(|t| t as f64)
        }),
        ("keyward_key_revocation_latency_seconds", "From the last revoke request to its effect.", |k| {
            k.revocations.last().and_then(|v| v.latency_us).map(|us| us as f64 / 1e6)
        }),
    ];
    for (name, help, figure) in per_key {
        out.family(name, Kind::Gauge, help);
        for k in &r.keys {
            if let Some(v) = figure(k) {
                out.sample(name, &[("token", &k.token), ("key", &k.name)], v);
            }
        }
    }
    out.family(
        "keyward_key_uses_after_revocation",
        Kind::Gauge,
        "Successful uses recorded after a revocation of the key took effect (must be 0).",
    );
    for k in &r.keys {
        if !k.revocations.is_empty() {
            let after: u64 = k.revocations.iter().map(|v| v.uses_after).sum();
            out.sample(
                "keyward_key_uses_after_revocation",
                &[("token", &k.token), ("key", &k.name)],
                after as f64,
            );
        }
    }
}

/// Longest request head (request line and headers) read from a scraper.
const MAX_HEAD: usize = 8 << 10;
/// Bound on every read and write of a scrape connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// 200 with the exposition.
    Metrics,
    /// 404.
    NotFound,
    /// 405 (the path exists).
    MethodNotAllowed,
    /// 403: a `Host` that is not a loopback address nor `localhost` — a
    /// web page that rebound its own name to 127.0.0.1 must not read the
    /// inventory's key names.
    ForeignHost,
}

fn route(method: &str, target: &str, host: Option<&str>) -> Route {
    if host.is_some_and(|h| !loopback_host(h)) {
        return Route::ForeignHost;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" | "HEAD" => Route::Metrics,
        _ => Route::MethodNotAllowed,
    }
}

/// Whether a `Host` header names this machine's loopback: `localhost` or
/// a loopback address, with or without a port.
fn loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:9466
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The parts of a request head the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    host: Option<&'a str>,
}

/// Parses a request head (up to and without the blank line): `METHOD SP
/// TARGET SP HTTP/1.x`, then header lines. `None`: not HTTP/1.
fn parse_head(head: &[u8]) -> Option<Head<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut request = lines.next()?.split(' ');
    let (method, target, version) = (request.next()?, request.next()?, request.next()?);
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if request.next().is_some()
        || !token(method)
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let mut host = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("host") {
            host = Some(value.trim());
        }
    }
    Some(Head {
        method,
        target,
        host,
    })
}

/// Why no request head could be read.
#[derive(Debug)]
enum ReadHead {
    /// Over [`MAX_HEAD`] bytes.
    TooLarge,
    /// The peer closed, timed out or failed.
    Io,
}

/// Reads a request head (through the blank line) of at most [`MAX_HEAD`]
/// bytes; what follows it is left unread.
fn read_head(r: &mut impl std::io::Read) -> Result<Vec<u8>, ReadHead> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).map_err(|_| ReadHead::Io)?;
        if n == 0 {
            return Err(ReadHead::Io);
        }
        // The blank line may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let end = (from..head.len())
            .find(|&i| head[i..].starts_with(b"\r\n\r\n") || head[i..].starts_with(b"\n\n"));
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(ReadHead::TooLarge);
        }
    }
}

/// Answers one scrape connection: reads its head (bounded in size and
/// time), writes one answer, closes.
fn answer(mut stream: std::net::TcpStream, metrics: &Metrics, agent: &Weak<Agent>) {
    use std::io::Write;
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let head = read_head(&mut stream);
    let parsed = head.as_deref().ok().and_then(parse_head);
    let (status, body, content_type, head_only) = match (&head, &parsed) {
        (Err(ReadHead::Io), _) => return,
        (Err(ReadHead::TooLarge), _) => {
            (431, "request head too large\n".into(), "text/plain", false)
        }
        (Ok(_), None) => (400, "bad request\n".into(), "text/plain", false),
        (Ok(_), Some(h)) => match route(h.method, h.target, h.host) {
            Route::Metrics => match agent.upgrade() {
                Some(a) => (200, render(metrics, &a), CONTENT_TYPE, h.method == "HEAD"),
                None => (503, "the agent is stopping\n".into(), "text/plain", false),
            },
            Route::NotFound => (
                404,
                "not found; the metrics are at /metrics\n".into(),
                "text/plain",
                false,
            ),
            Route::MethodNotAllowed => (405, "only GET and HEAD\n".into(), "text/plain", false),
            Route::ForeignHost => (
                403,
                "the Host header must name a loopback address\n".into(),
                "text/plain",
                false,
            ),
        },
    };
    if status != 200 {
        log::debug!("metrics: {status} for {:?}", parsed);
    }
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    if stream.write_all(&out).is_err() {
        return;
    }
    // Read what the client still sends (a body we did not want), briefly,
    // so that closing does not reset the connection before it has read
    // the answer.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut left = 64usize << 10;
    while left > 0 {
        match std::io::Read::read(&mut stream, &mut sink) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// The metrics endpoint: a thread that accepts scrape connections and
/// answers them one at a time. Stopped (and its `metrics.addr` removed)
/// when dropped.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    addr_file: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Removes a `metrics.addr` left by an earlier run (an agent started
/// without metrics must not point scrapers at a stale address).
pub fn clear_addr_file(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(ADDR_FILE));
}

/// Writes `addr` to `path` (mode 0600) atomically.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("addr.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{addr}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Exporter {
    /// Binds `listen`, writes the bound address to `metrics.addr` in
    /// `state_dir`, and answers scrapes on a thread of its own with
    /// `metrics` and (while it lives) `agent`.
    pub fn start(
        listen: SocketAddr,
        metrics: Arc<Metrics>,
        agent: Weak<Agent>,
        state_dir: &Path,
    ) -> Result<Exporter, String> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("[metrics] listen = \"{listen}\": cannot bind: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("[metrics] listen = \"{listen}\": {e}"))?;
        let addr_file = state_dir.join(ADDR_FILE);
        write_addr_file(&addr_file, addr)
            .map_err(|e| format!("cannot write {}: {e}", addr_file.display()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Relaxed) {
                        return;
                    }
                    match stream {
                        Ok(s) => answer(s, &metrics, &agent),
                        Err(e) => {
                            log::warn!("metrics: accept failed: {e}");
                            // Out of descriptors, for instance: do not spin.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        log::info!("metrics: serving http://{addr}/metrics");
        Ok(Exporter {
            addr,
            addr_file,
            stopping,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    /// Stops accepting (the flag, and a connection of our own to wake the
    /// accept), waits for the thread, removes `metrics.addr`.
    fn drop(&mut self) {
        self.stopping.store(true, Relaxed);
        let woke = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.thread.take() {
            if woke {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_inventory::{KeyRecord, KeyVersion};
    use keyward_policy::KeyState;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd".to_string()
        );
        assert_eq!(escape_help("x \"y\"\\\nz"), "x \"y\"\\\\\\nz".to_string());
        let mut e = Exposition::new();
        e.family("m", Kind::Gauge, "help\nline");
        e.sample("m", &[("key", "we\"ird\\\nname"), ("token", "t")], 1.5);
        e.sample("m", &[], f64::INFINITY);
        assert_eq!(
            e.into_text(),
            "# HELP m help\\nline\n# TYPE m gauge\nm{key=\"we\\\"ird\\\\\\nname\",token=\"t\"} 1.5\nm +Inf\n"
        );
    }

    #[test]
    fn every_call_of_the_table_counts_under_its_own_name() {
        let m = Metrics::new();
        for (i, &c) in Call::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.record(i as u64, c, &Response::Unit, Duration::from_micros(1));
            }
        }
        let mut e = Exposition::new();
        m.render_requests(&mut e);
        let text = e.into_text();
        for (i, c) in Call::ALL.iter().enumerate() {
            let line = format!(
                "keyward_requests_total{{operation=\"{}\",result=\"ok\"}}",
                c.name()
            );
            assert_eq!(sample_value(&text, &line), (i + 1) as f64, "{c:?}");
        }
        // A deferred init is counted as the operation it travels with.
        let sign = keyward_protocol::Request::Single {
            session: keyward_protocol::SessionHandle(1),
            op: keyward_protocol::Op::Sign,
            init: Some(keyward_protocol::message::OpInit {
                mechanism: keyward_protocol::Mechanism::plain(0),
                key: Some(keyward_protocol::ObjectHandle(1)),
            }),
            data: vec![],
        };
        assert_eq!(sign.call(), Call::Sign);
    }

    #[test]
    fn bucket_bounds_and_their_labels_agree() {
        for (ns, le) in BUCKETS_NS.iter().zip(BUCKETS_LE) {
            let secs: f64 = le.parse().unwrap();
            assert!(((secs * 1e9) - *ns as f64).abs() < 1e-3, "{le} vs {ns}");
        }
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    fn sample_value(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn requests_are_counted_with_a_cumulative_histogram() {
        let m = Metrics::new();
        // Connections 1, 2 and 9 count into two stripes; the scrape adds
        // them up.
        let data = Response::Data(vec![]);
        m.record(1, Call::Sign, &data, Duration::from_micros(5));
        m.record(
            2,
            Call::Sign,
            &Response::Err(0x91),
            Duration::from_micros(30),
        );
        m.record(9, Call::Sign, &Response::Unit, Duration::from_secs(3));
        m.record(1, Call::Login, &Response::Unit, Duration::from_millis(2));
        let mut e = Exposition::new();
        m.render_requests(&mut e);
        let text = e.into_text();
        let v = |s: &str| sample_value(&text, s);
        assert_eq!(
            v("keyward_requests_total{operation=\"C_Sign\",result=\"ok\"}"),
            2.0
        );
        assert_eq!(
            v("keyward_requests_total{operation=\"C_Sign\",result=\"error\"}"),
            1.0
        );
        assert_eq!(
            v("keyward_requests_total{operation=\"C_Login\",result=\"error\"}"),
            0.0
        );
        let b = |le: &str| {
            v(&format!(
                "keyward_request_duration_seconds_bucket{{operation=\"C_Sign\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(b("1e-05"), 1.0);
        assert_eq!(b("2.5e-05"), 1.0);
        assert_eq!(b("5e-05"), 2.0);
        assert_eq!(b("1"), 2.0);
        assert_eq!(b("+Inf"), 3.0);
        assert_eq!(
            v("keyward_request_duration_seconds_count{operation=\"C_Sign\"}"),
            3.0
        );
        let sum = v("keyward_request_duration_seconds_sum{operation=\"C_Sign\"}");
        assert!((sum - 3.000035).abs() < 1e-9, "{sum}");
        assert!(
            !text.contains("C_Encrypt\""),
            "unseen calls are left out:\n{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 2);
    }

    #[test]
    fn admin_requests_are_named_by_their_stable_names() {
        use keyward_protocol::admin::{AuditRequest, KeyAction, KeyRequest};
        assert_eq!(admin_request_name(&AdminRequest::Status), "agent.status");
        let create = AdminRequest::Key(KeyRequest::Create {
            name: "x(Y)".into(),
            class: "c".into(),
            algorithm: None,
            token: None,
            owner: None,
        });
        assert_eq!(admin_request_name(&create), "key.create");
        let grant = AdminRequest::Key(KeyRequest::GrantAdd {
            key: "k".into(),
            token: None,
            application: "a".into(),
            operations: vec![],
            until: None,
        });
        assert_eq!(admin_request_name(&grant), "grant.add");
        assert_eq!(
            admin_request_name(&AdminRequest::Key(KeyRequest::AppList)),
            "app.list"
        );
        let t = AdminRequest::Key(KeyRequest::Transition {
            name: "k".into(),
            token: None,
            action: KeyAction::Activate,
            reason: None,
            code: None,
        });
        assert_eq!(admin_request_name(&t), "key.activate");
        let AdminRequest::Key(k) = t else {
            unreachable!()
        };
        assert_eq!(
            admin_request_name(&AdminRequest::DryRun(k)),
            "key.activate dry-run"
        );
        assert_eq!(
            admin_request_name(&AdminRequest::Audit(AuditRequest::Verify)),
            "audit.verify"
        );
        let m = Metrics::new();
        m.record_admin("status".into(), &AdminResponse::Err("no".into()));
        m.record_admin("status".into(), &AdminResponse::Err("no".into()));
        let mut e = Exposition::new();
        m.render_agent(&mut e, SystemTime::now());
        let text = e.into_text();
        assert_eq!(
            sample_value(
                &text,
                "keyward_admin_requests_total{request=\"status\",result=\"error\"}"
            ),
            2.0
        );
        assert_eq!(
            sample_value(
                &text,
                "keyward_admin_requests_total{request=\"status\",result=\"ok\"}"
            ),
            0.0
        );
        let guard = m.connection();
        let mut e = Exposition::new();
        m.render_agent(&mut e, SystemTime::now());
        assert_eq!(sample_value(&e.into_text(), "keyward_connections"), 1.0);
        drop(guard);
        assert_eq!(m.connections.load(Relaxed), 0);
    }

    fn view(name: &str, state: KeyState, versions: &[(u32, KeyState, i64)]) -> Arc<KeyView> {
        Arc::new(KeyView {
            record: KeyRecord {
                id: 1,
                name: name.into(),
                token: "tok".into(),
                owner: "o".into(),
                purpose: keyward_policy::Purpose::Signing,
                class: "signing".into(),
                algorithm: keyward_policy::Algorithm::Ec(keyward_policy::Curve::P256),
                state,
                created_at: 0,
                activated_at: Some(100),
                rotated_at: None,
                deactivated_at: None,
                protect_until: None,
                process_until: None,
                next_rotation: Some(5_000),
                scope: vec![],
                last_used_at: Some(900),
                backup_allowed: false,
                recovery_until: None,
                reason_code: None,
            },
            versions: versions
                .iter()
                .map(|&(version, state, created_at)| KeyVersion {
                    key_id: 1,
                    version,
                    backend_id: vec![version as u8],
                    backend_label: name.into(),
                    state,
                    created_at,
                    deactivated_at: None,
                    destroyed_at: None,
                    fingerprint: None,
                })
                .collect(),
            grants: vec![],
        })
    }

    #[test]
    fn keys_render_state_age_and_rotation() {
        let keys = [
            view(
                "web",
                KeyState::Active,
                &[(1, KeyState::Deactivated, 10), (2, KeyState::Active, 400)],
            ),
            view(
                "new",
                KeyState::PreActivation,
                &[(1, KeyState::PreActivation, 0)],
            ),
        ];
        let figures = key_figures(&keys, 6_000);
        assert_eq!(figures[0].key, "new");
        assert_eq!(figures[1].active_version, Some(2));
        assert_eq!(figures[1].active_version_age_secs, Some(5_600));
        assert_eq!(figures[1].next_rotation_in_secs, Some(-1_000));
        assert_eq!(
            figures[0].next_rotation_in_secs, None,
            "only active keys rotate"
        );
        let mut e = Exposition::new();
        render_keys(&mut e, &figures);
        let text = e.into_text();
        let v = |s: &str| sample_value(&text, s);
        let id = "token=\"tok\",key=\"web\",class=\"signing\"";
        assert_eq!(
            v(&format!("keyward_key_state{{{id},state=\"active\"}}")),
            1.0
        );
        assert_eq!(
            v(&format!("keyward_key_state{{{id},state=\"suspended\"}}")),
            0.0
        );
        assert_eq!(
            v(&format!("keyward_key_active_version_age_seconds{{{id}}}")),
            5_600.0
        );
        assert_eq!(
            v(&format!("keyward_key_next_rotation_seconds{{{id}}}")),
            -1_000.0
        );
        assert_eq!(
            v(&format!("keyward_key_last_used_timestamp_seconds{{{id}}}")),
            900.0
        );
        assert_eq!(v("keyward_keys{state=\"active\"}"), 1.0);
        assert_eq!(v("keyward_keys{state=\"pre-activation\"}"), 1.0);
        assert_eq!(v("keyward_keys{state=\"destroyed\"}"), 0.0);
        assert!(!text.contains("keyward_key_active_version{token=\"tok\",key=\"new\""));
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/metrics", None), Route::Metrics);
        assert_eq!(
            route("HEAD", "/metrics?x=1", Some("127.0.0.1:9466")),
            Route::Metrics
        );
        assert_eq!(route("GET", "/metrics", Some("localhost")), Route::Metrics);
        assert_eq!(route("GET", "/metrics", Some("[::1]:9466")), Route::Metrics);
        assert_eq!(route("GET", "/", None), Route::NotFound);
        assert_eq!(route("GET", "/metrics/x", None), Route::NotFound);
        assert_eq!(route("POST", "/metrics", None), Route::MethodNotAllowed);
        assert_eq!(route("get", "/metrics", None), Route::MethodNotAllowed);
        assert_eq!(route("POST", "/other", None), Route::NotFound);
        assert_eq!(
            route("GET", "/metrics", Some("evil.example:9466")),
            Route::ForeignHost
        );
        assert_eq!(
            route("GET", "/metrics", Some("10.0.0.1")),
            Route::ForeignHost
        );
    }

    #[test]
    fn request_heads_are_parsed_strictly() {
        let h = parse_head(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept: */*").unwrap();
        assert_eq!(
            h,
            Head {
                method: "GET",
                target: "/metrics",
                host: Some("127.0.0.1:9")
            }
        );
        assert_eq!(parse_head(b"GET /metrics HTTP/1.0").unwrap().host, None);
        assert_eq!(
            parse_head(b"GET /m HTTP/1.1\nhOsT:x").unwrap().host,
            Some("x")
        );
        for bad in [
            &b""[..],
            b"GARBAGE",
            b"GET /metrics",
            b"GET /metrics HTTP/2",
            b"GET metrics HTTP/1.1",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"G(T /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1\r\nno colon here",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(parse_head(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn request_heads_are_read_up_to_the_blank_line_and_bounded() {
        let mut r: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(
            read_head(&mut r).unwrap(),
            b"GET /metrics HTTP/1.1\r\nHost: a"
        );
        let mut r: &[u8] = b"GET / HTTP/1.0\n\n";
        assert_eq!(read_head(&mut r).unwrap(), b"GET / HTTP/1.0");
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_head(&mut r), Err(ReadHead::Io)));
        let long = vec![b'a'; MAX_HEAD * 4];
        let mut r: &[u8] = &long;
        assert!(matches!(read_head(&mut r), Err(ReadHead::TooLarge)));
        // One byte at a time: the blank line split across reads.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let mut t = Trickle(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(read_head(&mut t).unwrap(), b"HEAD /metrics HTTP/1.1");
    }
}
