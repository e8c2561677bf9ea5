//! Webhook notifications: the events the alerting rules cover (a rotation
//! overdue, a certificate expiring or expired, an anomaly, a use after a
//! revocation, audit write failures, an approval request about to lapse),
//! and the agent's start and stop, posted as JSON to the `[webhook]` URL.
//!
//! Nothing here is on the request path. A watcher thread ([`watch`]) looks
//! at the conditions every `check_seconds` and hands each new one to the
//! [`Notifier`]: a bounded queue and one sender thread, which posts with a
//! time limit and retries with a doubling backoff. A full queue drops the
//! event and counts it; a post that fails every try is counted as failed
//! (`keyward_webhook_dropped_total`, `keyward_webhook_failed_total`).
//! Each condition fires once while it holds (by its [`Event::id`]), and
//! again only after it cleared and came back.
//!
//! An event carries names, dates and counts: never a PIN, a key's value,
//! the bearer token or an administrator's free text.

pub mod config;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

pub use config::WebhookConfig;

/// The `schema` of every event; a change that is not an addition gets a
/// new one.
pub const SCHEMA: &str = "keyward.webhook/1";

/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The longest a stop waits for queued events to be posted.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The agent started.
    AgentStart,
    /// The agent is stopping.
    AgentStop,
    /// An active key is past its rotation date or protect period (beyond
    /// the grace).
    RotationOverdue,
    /// A key version's certificate expires within the warning.
    CertificateExpiring,
    /// A key version's certificate has expired.
    CertificateExpired,
    /// An anomaly rule fired on a key's use.
    Anomaly,
    /// A use of a revoked version succeeded after its revocation.
    UseAfterRevocation,
    /// The audit trail cannot be written.
    AuditWriteFailure,
    /// A pending approval request lapses soon.
    RequestExpiring,
}

/// How urgent, as the alerting rules say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// For information.
    Info,
    /// Someone should look soon.
    Warning,
    /// Someone should look now.
    Critical,
}

/// One notification, posted as a JSON object
/// (`docs/json/webhook-event.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// The condition's identity: the same condition has the same id (a
    /// receiver may see an event twice when an answer is lost).
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// How urgent.
    pub severity: Severity,
    /// When the agent saw it, RFC 3339 UTC.
    pub at: String,
    /// The host the agent runs on.
    pub host: String,
    /// The agent's version.
    pub agent_version: &'static str,
    /// The virtual token, for events about a key.
    pub token: Option<String>,
    /// The key's name, for events about a key.
    pub key: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The event's own fields (see the schema).
    pub details: serde_json::Value,
}

impl Event {
    /// An event of `kind` at `at` (unix seconds) with this identity.
    pub fn new(kind: EventKind, severity: Severity, id: String, at: i64, summary: String) -> Event {
        Event {
            schema: SCHEMA,
            id,
            event: kind,
            severity,
            at: rfc3339(at),
            host: host_name(),
            agent_version: env!("CARGO_PKG_VERSION"),
            token: None,
            key: None,
            summary,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// The same, about key `token`/`key`.
    pub fn about(mut self, token: &str, key: &str) -> Event {
        self.token = Some(token.to_owned());
        self.key = Some(key.to_owned());
        self
    }

    /// The same, with `details`.
    pub fn with(mut self, details: serde_json::Value) -> Event {
        self.details = details;
        self
    }
}

/// `t` (unix seconds) as RFC 3339 UTC, `2026-12-05T09:00:00Z`.
pub fn rfc3339(t: i64) -> String {
    match jiff::Timestamp::from_second(t) {
        Ok(ts) => ts.to_string(),
        Err(_) => t.to_string(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// What the webhook did since the agent started.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events posted and accepted (2xx).
    pub sent: AtomicU64,
    /// Events whose every try failed.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Tries that failed (each retry counts).
    pub failed_tries: AtomicU64,
}

/// The queue and its sender thread.
pub struct Notifier {
    tx: Mutex<Option<SyncSender<Event>>>,
    stats: Arc<WebhookStats>,
    /// Told when the sender thread has posted everything queued.
    done: Mutex<Option<Receiver<()>>>,
    timeout: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// How the sender posts: the URL, the token, the client and the retries.
struct Sender {
    url: String,
    token: Option<Zeroizing<String>>,
    http: ureq::Agent,
    retries: u32,
    backoff: Duration,
}

impl Notifier {
    /// Reads the token and starts the sender thread for `config`.
    pub fn start(config: &WebhookConfig) -> Result<Arc<Notifier>, String> {
        let token = config.bearer_token()?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout()))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("keyward-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let sender = Sender {
            url: config.url.clone(),
            token,
            http,
            retries: config.retries,
            backoff: Duration::from_millis(config.backoff_ms),
        };
        let (tx, rx) = sync_channel::<Event>(config.queue);
        let (done_tx, done_rx) = sync_channel::<()>(1);
        let stats = Arc::new(WebhookStats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || {
                for event in rx {
                    sender.deliver(&event, &s);
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        log::info!("webhook: posting events to {}", config.url);
        Ok(Arc::new(Notifier {
            tx: Mutex::new(Some(tx)),
            stats,
            done: Mutex::new(Some(done_rx)),
            timeout: config.timeout(),
        }))
    }

    /// Queues `event`; never waits. A full queue drops it (counted).
    pub fn send(&self, event: Event) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => {
                let n = self.stats.dropped.fetch_add(1, Relaxed) + 1;
                log::warn!(
                    "webhook: queue full, event {} dropped ({n} dropped since start)",
                    e.id
                );
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Whether [`Notifier::stop`] ran.
    pub fn stopped(&self) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// Closes the queue and waits, at most one post's time limit and never
    /// more than `STOP_WAIT`, for the sender to post what is queued (the
    /// agent's stop event last).
    pub fn stop(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            if done.recv_timeout(self.timeout.min(STOP_WAIT)).is_err() {
                log::warn!("webhook: events still queued at stop are not posted");
            }
        }
    }
}

impl Sender {
    /// Posts `event`, trying again after a doubling backoff; counts the
    /// outcome. Logs name the event and the failure, never the token.
    fn deliver(&self, event: &Event, stats: &WebhookStats) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                log::error!("webhook: event {} cannot be encoded: {e}", event.id);
                stats.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut wait = self.backoff;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            match self.post(&body) {
                Ok(()) => {
                    stats.sent.fetch_add(1, Relaxed);
                    log::debug!("webhook: event {} posted", event.id);
                    return;
                }
                Err((why, again)) => {
                    stats.failed_tries.fetch_add(1, Relaxed);
                    log::warn!(
                        "webhook: posting event {} failed (try {} of {}): {why}",
                        event.id,
                        attempt + 1,
                        self.retries + 1
                    );
                    if !again {
                        break;
                    }
                }
            }
        }
        stats.failed.fetch_add(1, Relaxed);
        log::error!("webhook: event {} not delivered", event.id);
    }

    /// One post. `Err((why, worth another try))`.
    fn post(&self, body: &[u8]) -> Result<(), (String, bool)> {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            let value = Zeroizing::new(format!("Bearer {}", t.as_str()));
            req = req.header("Authorization", value.as_str());
        }
        match req.send(body) {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    // Server errors and "too many requests" may pass; a
                    // refusal (bad token, wrong path) will not.
                    let again = status.is_server_error() || status.as_u16() == 429;
                    Err((format!("HTTP {status}"), again))
                }
            }
            Err(e) => Err((e.to_string(), true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_their_documented_fields() {
        let e = Event::new(
            EventKind::RotationOverdue,
            Severity::Warning,
            "rotation-overdue:prod/web:v1".into(),
            1_764_925_200,
            "key prod/web is overdue for rotation".into(),
        )
        .about("prod", "web")
        .with(serde_json::json!({ "version": 1 }));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["event"], "rotation-overdue");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["at"], "2025-12-05T09:00:00Z");
        assert_eq!(v["token"], "prod");
        assert_eq!(v["key"], "web");
        assert_eq!(v["details"]["version"], 1);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "agent_version",
                "at",
                "details",
                "event",
                "host",
                "id",
                "key",
                "schema",
                "severity",
                "summary",
                "token"
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // Nothing listens on port 1 of loopback: every post fails at once,
        // but the first one is in the sender's hands while the queue of
        // one fills up.
        let config: WebhookConfig = toml::from_str(
            "url = \"http://127.0.0.1:1/\"\nqueue = 1\nretries = 2\nbackoff_ms = 200\n",
        )
        .unwrap();
        let n = Notifier::start(&config).unwrap();
        let started = std::time::Instant::now();
        for i in 0..20 {
            n.send(Event::new(
                EventKind::Anomaly,
                Severity::Warning,
                format!("e{i}"),
                0,
                String::new(),
            ));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let dropped = n.stats().dropped.load(Relaxed);
        assert!(dropped >= 18, "{dropped}");
        n.stop();
    }
}
