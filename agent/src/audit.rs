//! The audit trail as the agent writes it.
//!
//! - Uses and refusals (the hot path) are queued in memory and appended in
//!   batches by a writer thread, at most [`BATCH`] events or [`LINGER`]
//!   apart: a use costs a lock and a push, never a disk write.
//! - Lifecycle, admin, login and agent events are durable before the call
//!   returns: [`Auditor::durable`] first appends what is queued (so the
//!   trail keeps the order events happened in), then the event, with
//!   `synchronous=FULL`. When that fails the caller fails closed.
//! - A trail that cannot be written is said loudly, once per failure
//!   streak, at error level.
//!
//! No PIN and no key material ever goes into an event: callers pass names,
//! operations, codes and reasons.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_inventory::{coalesce, Actor, AuditEvent, AuditKind, AuditLog};

use crate::client::UseTarget;
use crate::config::{AuditConfig, OnWriteFailure};
use crate::identity::Peer;

/// Queued events that wake the writer before [`LINGER`] is up. Equal uses
/// are folded into one record per batch, so a batch costs little more
/// than its distinct records.
pub const BATCH: usize = 4096;
/// Longest a queued event waits for its batch.
pub const LINGER: Duration = Duration::from_millis(200);
/// Most events kept in memory while the trail cannot be written; beyond
/// that uses are dropped and counted (never lifecycle or admin events,
/// which are refused instead).
pub const MAX_PENDING: usize = 1 << 16;

/// What is queued for the next batch, in the order it happened: events,
/// and uses folded by [`UseKey`] (a use's place is its first occurrence).
#[derive(Default)]
struct Queue {
    order: Vec<Queued>,
    others: Vec<AuditEvent>,
    uses: Vec<PendingUse>,
    index: std::collections::HashMap<UseKey, usize>,
    /// Events queued, uses counted one by one (what [`BATCH`] counts).
    events: usize,
}

#[derive(Clone, Copy)]
enum Queued {
    /// Index into [`Queue::others`].
    Event(usize),
    /// Index into [`Queue::uses`].
    Use(usize),
}

/// What makes two uses equal within a batch: the client process, the key
/// object (its cached [`UseTarget`]), the operation, mechanism and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UseKey {
    client: crate::identity::ClientKey,
    target: usize,
    operation: &'static str,
    mechanism: Option<u64>,
    result: u64,
}

/// The uses of one [`UseKey`] in the batch.
struct PendingUse {
    actor: Actor,
    target: Arc<UseTarget>,
    operation: &'static str,
    mechanism: Option<u64>,
    result: u64,
    /// The first use's time, as events have it.
    at: i64,
    micros: u32,
    /// The first and the last use, microseconds since the epoch.
    first_us: u64,
    last_us: u64,
    count: u32,
}

impl Queue {
    /// Everything queued, as events in order (uses as one record each),
    /// leaving the queue empty.
    fn take(&mut self) -> Vec<AuditEvent> {
        let order = std::mem::take(&mut self.order);
        let mut others: Vec<Option<AuditEvent>> = std::mem::take(&mut self.others)
            .into_iter()
            .map(Some)
            .collect();
        let mut uses: Vec<Option<PendingUse>> = std::mem::take(&mut self.uses)
            .into_iter()
            .map(Some)
            .collect();
        self.index.clear();
        self.events = 0;
        order
            .into_iter()
            .filter_map(|q| match q {
                Queued::Event(i) => others.get_mut(i).and_then(Option::take),
                Queued::Use(i) => uses.get_mut(i).and_then(Option::take).map(|u| AuditEvent {
                    at: u.at,
                    micros: u.micros,
                    kind: AuditKind::Use,
                    actor: u.actor,
                    token: Some(u.target.token.clone()),
                    key: Some(u.target.key.clone()),
                    key_version: u.target.version,
                    operation: u.operation.to_owned(),
                    mechanism: u.mechanism,
                    result: u.result,
                    reason: String::new(),
                    count: u.count,
                    span_us: u32::try_from(u.last_us - u.first_us).unwrap_or(u32::MAX),
                }),
            })
            .collect()
    }
}

/// The agent's writer of the audit trail.
pub struct Auditor {
    log: Arc<dyn AuditLog>,
    queue: Mutex<Queue>,
    /// Held from taking a batch off the queue until it is appended, by the
    /// writer, [`Auditor::flush`] and [`Auditor::durable`]: batches reach
    /// the trail in the order they left the queue, so a durable event
    /// always follows every use queued before it, and a flush returns only
    /// when everything queued before it is stored.
    writing: Mutex<()>,
    wake: Condvar,
    failing: AtomicBool,
    /// Use records dropped while the trail could not be written, not yet
    /// reported in the trail.
    lost: AtomicU64,
    stats: Stats,
    record_uses: bool,
    on_write_failure: OnWriteFailure,
    syslog: Option<Mutex<Syslog>>,
}

/// What the writer has done since the agent started.
#[derive(Debug, Default)]
struct Stats {
    records: AtomicU64,
    events: AtomicU64,
    failures: AtomicU64,
    lost: AtomicU64,
}

/// A snapshot of the writer's counters (for metrics and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Records appended.
    pub records: u64,
    /// Events they stand for (a coalesced record counts its uses).
    pub events: u64,
    /// Appends that failed.
    pub failures: u64,
    /// Use events dropped because the trail could not be written.
    pub lost: u64,
    /// Whether the last append failed.
    pub failing: bool,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").finish_non_exhaustive()
    }
}

/// An event at the current time.
pub fn event(kind: AuditKind, actor: Actor, operation: &str) -> AuditEvent {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    AuditEvent {
        at: now.as_secs() as i64,
        micros: now.subsec_micros(),
        kind,
        actor,
        token: None,
        key: None,
        key_version: None,
        operation: operation.to_owned(),
        mechanism: None,
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

/// The reason of a `lifecycle` record: `from <state> to <state>: <why>`
/// (at most 4096 characters). [`lifecycle_to`] reads it back.
pub fn lifecycle_reason(from: &str, to: &str, why: &str) -> String {
    format!("from {from} to {to}: {why}")
        .chars()
        .take(4096)
        .collect()
}

/// The state a [`lifecycle_reason`] says the key or version went to.
pub fn lifecycle_to(reason: &str) -> Option<&str> {
    let (_, rest) = reason.strip_prefix("from ")?.split_once(" to ")?;
    Some(rest.split_once(':').map_or(rest, |(to, _)| to))
}

/// An event of client process `client` (actor: its application).
pub fn for_client(client: &crate::client::Client, kind: AuditKind, operation: &str) -> AuditEvent {
    event(kind, client.actor.clone(), operation)
}

/// The actor of a client process, named as the policy matched it.
pub fn application(peer: &Peer, application: &str) -> Actor {
    Actor::Application {
        name: application.to_owned(),
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.key.pid.unsigned_abs(),
        exe: exe(peer),
    }
}

/// The actor of an administrator on the admin socket.
pub fn administrator(peer: &Peer) -> Actor {
    Actor::Administrator {
        uid: peer.uid,
        pid: peer.key.pid.unsigned_abs(),
        exe: exe(peer),
    }
}

fn exe(peer: &Peer) -> String {
    peer.exe
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

impl Auditor {
    /// An auditor over `log` with the default settings.
    pub fn start(log: Arc<dyn AuditLog>) -> Arc<Auditor> {
        Auditor::with_config(log, &AuditConfig::default())
    }

    /// An auditor over `log` as `config` says, with its writer thread.
    pub fn with_config(log: Arc<dyn AuditLog>, config: &AuditConfig) -> Arc<Auditor> {
        if !config.record_uses {
            log::warn!("audit: [audit] record_uses = false: cryptographic uses are NOT recorded");
        }
        let syslog = config
            .syslog
            .then(|| Mutex::new(Syslog::new(&config.syslog_socket)));
        let auditor = Arc::new(Auditor {
            log,
            queue: Mutex::new(Queue::default()),
            writing: Mutex::new(()),
            wake: Condvar::new(),
            failing: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            stats: Stats::default(),
            record_uses: config.record_uses,
            on_write_failure: config.on_write_failure,
            syslog,
        });
        let weak = Arc::downgrade(&auditor);
        if let Err(e) = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(weak))
        {
            log::error!(
                "audit: cannot start the writer thread ({e}); events are written by their callers"
            );
        }
        auditor
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether cryptographic uses are recorded (`[audit] record_uses`).
    pub fn records_uses(&self) -> bool {
        self.record_uses
    }

    /// Whether applications' operations must be refused now: the trail
    /// cannot be written and `[audit] on_write_failure = "refuse"`.
    pub fn refusing(&self) -> bool {
        self.on_write_failure == OnWriteFailure::Refuse && self.failing.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            records: self.stats.records.load(Ordering::Relaxed),
            events: self.stats.events.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            lost: self.stats.lost.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
        }
    }

    /// Queues a refusal or another event for the next batch.
    pub fn record(&self, e: AuditEvent) {
        let mut q = self.queue();
        let i = q.others.len();
        q.others.push(e);
        q.order.push(Queued::Event(i));
        q.events += 1;
        if q.events == BATCH {
            self.wake.notify_one();
        }
    }

    /// Queues a use of `target` by `client` (its end, with result `rv`):
    /// counted into the batch's record of equal uses, so that a use costs a
    /// clock read, a lock and a lookup, and a string copy only when it is
    /// the first of its kind in the batch.
    pub fn record_use(
        &self,
        client: &crate::client::Client,
        operation: &'static str,
        mechanism: Option<u64>,
        target: &Arc<UseTarget>,
        rv: u64,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at_us = now.as_micros() as u64;
        let key = UseKey {
            client: client.peer.key,
            target: Arc::as_ptr(target) as usize,
            operation,
            mechanism,
            result: rv,
        };
        let mut q = self.queue();
        q.events += 1;
        if let Some(&i) = q.index.get(&key) {
            let u = &mut q.uses[i];
            u.count = u.count.saturating_add(1);
            u.last_us = u.last_us.max(at_us);
        } else {
            let i = q.uses.len();
            q.uses.push(PendingUse {
                actor: client.actor.clone(),
                target: target.clone(),
                operation,
                mechanism,
                result: rv,
                at: now.as_secs() as i64,
                micros: now.subsec_micros(),
                first_us: at_us,
                last_us: at_us,
                count: 1,
            });
            q.index.insert(key, i);
            q.order.push(Queued::Use(i));
        }
        if q.events == BATCH {
            self.wake.notify_one();
        }
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends everything queued now.
    pub fn flush(&self) {
        let _writing = self.writing();
        let batch = self.queue().take();
        if let Err(batch) = self.append(batch, false) {
            self.requeue(batch);
        }
    }

    /// Appends `e` durably (after what is queued) before returning.
    /// `Err` means the trail could not be written: fail closed.
    pub fn durable(&self, e: AuditEvent) -> Result<(), String> {
        let _writing = self.writing();
        let mut batch = self.queue().take();
        batch.push(e);
        match self.append(batch, true) {
            Ok(()) => Ok(()),
            Err(mut batch) => {
                // The durable event is refused (fail closed); what was
                // queued before it is written later.
                batch.pop();
                self.requeue(batch);
                Err("the audit trail cannot be written".into())
            }
        }
    }

    /// Puts a batch that could not be written back in front of the queue,
    /// dropping (and counting) the oldest uses beyond [`MAX_PENDING`].
    fn requeue(&self, mut batch: Vec<AuditEvent>) {
        let mut q = self.queue();
        batch.append(&mut q.take());
        if batch.len() > MAX_PENDING {
            let excess = batch.len() - MAX_PENDING;
            let dropped: u64 = batch[..excess].iter().map(|e| u64::from(e.count)).sum();
            batch.drain(..excess);
            self.lost.fetch_add(dropped, Ordering::Relaxed);
            self.stats.lost.fetch_add(dropped, Ordering::Relaxed);
            log::error!("audit: {dropped} events dropped: the trail still cannot be written");
        }
        q.events = batch.len();
        q.order = (0..batch.len()).map(Queued::Event).collect();
        q.others = batch;
    }

    /// Appends `events` (coalesced; the last event stays last), first
    /// noting any events lost since the last write. Says loudly when the
    /// trail cannot be written and when it can again. `Err` gives the batch
    /// back (coalesced) to be kept for the next attempt.
    fn append(&self, events: Vec<AuditEvent>, durable: bool) -> Result<(), Vec<AuditEvent>> {
        if events.is_empty() {
            return Ok(());
        }
        let mut batch = coalesce(events);
        let lost = self.lost.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let mut gap = event(AuditKind::Agent, Actor::Agent, "audit-gap");
            gap.result = cryptoki_sys::CKR_FUNCTION_FAILED;
            gap.reason =
                format!("{lost} use events were dropped while the trail could not be written");
            batch.insert(0, gap);
        }
        match self.log.append(&batch, durable) {
            Ok(head) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::error!("audit: the trail is written again");
                }
                let events: u64 = batch.iter().map(|e| u64::from(e.count)).sum();
                self.stats
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats.events.fetch_add(events, Ordering::Relaxed);
                if let Some(s) = &self.syslog {
                    let first = head + 1 - batch.len() as u64;
                    s.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(first, &batch);
                }
                Ok(())
            }
            Err(e) => {
                self.lost.fetch_add(lost, Ordering::Relaxed);
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "audit: THE TRAIL CANNOT BE WRITTEN ({e}); {} records held in memory; \
                         admin and lifecycle actions are refused until it can{}",
                        batch.len(),
                        if self.on_write_failure == OnWriteFailure::Refuse {
                            ", and so are applications' operations"
                        } else {
                            ""
                        }
                    );
                } else {
                    log::error!("audit: the trail still cannot be written ({e})");
                }
                if lost > 0 {
                    batch.remove(0);
                }
                Err(batch)
            }
        }
    }

    /// The store (for reading it).
    pub fn log(&self) -> &dyn AuditLog {
        &*self.log
    }
}

/// Appends queued events every [`LINGER`], or sooner when a batch is full.
fn writer(auditor: Weak<Auditor>) {
    loop {
        let Some(a) = auditor.upgrade() else { return };
        {
            let q = a.queue();
            let _ = a
                .wake
                .wait_timeout_while(q, LINGER, |q| q.events < BATCH)
                .unwrap_or_else(|p| p.into_inner());
        }
        let writing = a.writing();
        let batch = a.queue().take();
        let failed = a.append(batch, false).err();
        if let Some(batch) = failed {
            a.requeue(batch);
            drop(writing);
            drop(a);
            // Try again after a pause, not in a loop on a full queue.
            std::thread::sleep(LINGER);
            continue;
        }
        drop(writing);
        drop(a);
    }
}

/// Forwards stored records to the local syslog socket, one JSON object per
/// message (facility authpriv, severity notice; refusals and failures at
/// warning). A socket that is missing or refuses is logged once per
/// failure streak and tried again with the next batch; the trail itself
/// never depends on it.
struct Syslog {
    path: std::path::PathBuf,
    logger: Option<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
    failing: bool,
}

impl Syslog {
    fn new(path: &std::path::Path) -> Syslog {
        Syslog {
            path: path.to_owned(),
            logger: None,
            failing: false,
        }
    }

    fn send(&mut self, first_seq: u64, records: &[AuditEvent]) {
        for (i, e) in records.iter().enumerate() {
            let line = syslog_line(first_seq + i as u64, e);
            let sent = self.connect().and_then(|l| {
                let r = if e.result == 0 {
                    l.notice(&line)
                } else {
                    l.warning(&line)
                };
                r.map_err(|err| err.to_string())
            });
            match sent {
                Ok(()) if self.failing => {
                    self.failing = false;
                    log::warn!("audit: syslog {} works again", self.path.display());
                }
                Ok(()) => {}
                Err(err) => {
                    self.logger = None;
                    if !self.failing {
                        self.failing = true;
                        log::warn!(
                            "audit: cannot forward to syslog {}: {err}; the trail is unaffected",
                            self.path.display()
                        );
                    }
                    return;
                }
            }
        }
    }

    fn connect(
        &mut self,
    ) -> Result<&mut syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>, String> {
        if self.logger.is_none() {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_AUTHPRIV,
                hostname: None,
                process: "keyward-agent".into(),
                pid: std::process::id(),
            };
            self.logger =
                Some(syslog::unix_custom(formatter, &self.path).map_err(|e| e.to_string())?);
        }
        self.logger.as_mut().ok_or_else(|| "not connected".into())
    }
}

/// One record as the JSON object forwarded to syslog: its seq and the
/// event's fields, as `keyward --json audit tail` shows them.
fn syslog_line(seq: u64, e: &AuditEvent) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
    }
    v.to_string()
}

/// `keyward audit ...` on the admin socket.
impl crate::agent::Agent {
    /// A peer no application of the policy matches was refused.
    pub fn audit_unknown_peer(&self, peer: &Peer) {
        let mut e = event(AuditKind::Refusal, application(peer, ""), "connect");
        e.result = cryptoki_sys::CKR_TOKEN_NOT_PRESENT;
        e.reason = "no application of the policy matches this peer".into();
        self.audit.record(e);
    }

    /// An agent event (start, stop), durable.
    pub fn audit_agent(&self, operation: &str, reason: &str) {
        let mut e = event(AuditKind::Agent, Actor::Agent, operation);
        e.reason = reason.to_owned();
        let _ = self.audit.durable(e);
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

    /// Answers one audit request of administrator `admin`.
    pub fn audit_request(
        &self,
        admin: &Peer,
        req: keyward_protocol::admin::AuditRequest,
    ) -> keyward_protocol::admin::AdminResponse {
        use keyward_inventory::{AuditFilter, ResultFilter};
        use keyward_protocol::admin::{
            AdminErrorKind, AdminResponse, AuditProblem, AuditRequest, AuditResponse,
            AuditVerification,
        };
        log::info!("admin {admin}: audit {req:?}");
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
        match req {
            AuditRequest::Verify => {
                // Each checkpoint's signature is checked by the HSM's audit key.
                match log.verify(&|m, sig| self.audit_verify_signature(m, sig)) {
                    Ok(r) => {
                        AdminResponse::Audit(Box::new(AuditResponse::Verified(AuditVerification {
                            records: r.records,
                            head_seq: r.head_seq,
                            checkpoints_ok: r.checkpoints_ok,
                            sealed_through: r.sealed_through,
                            unsealed: r.unsealed,
                            first_bad: r.first_bad.map(|b| AuditProblem {
                                seq: b.seq,
                                problem: b.problem.to_string(),
                            }),
                        })))
                    }
                    Err(e) => failed(e),
                }
            }
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
            } => records(log.query(&AuditFilter {
                key,
                application,
                since,
                until,
                result: if denied_only {
                    ResultFilter::Denied
                } else {
                    ResultFilter::Any
                },
                limit: Some(u64::from(limit)),
                ..AuditFilter::default()
            })),
        }
    }
}

/// A stored record as the CLI shows it.
fn record_info(r: &keyward_inventory::AuditRecord) -> keyward_protocol::admin::AuditRecordInfo {
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
    }
}

/// The `CKA_ID` of the audit key in the HSM: an EC P-256 key pair the agent
/// makes at its first start and signs checkpoints with. Applications never
/// see it.
pub const AUDIT_KEY_ID: &[u8] = b"keyward-audit-key";
/// The audit key's `CKA_LABEL`.
pub const AUDIT_KEY_LABEL: &[u8] = b"keyward-audit";
/// The name under which the inventory records the audit key's fingerprint.
pub const AUDIT_KEY_NAME: &str = "audit";

/// Whether `signature` over SHA-256 of `message` verifies under public key
/// `public` (ECDSA), on a session of its own.
fn verify_with(
    backend: &dyn crate::backend::Backend,
    public: crate::backend::BackendObject,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use keyward_protocol::{Mechanism, Op};
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message);
    let Ok(s) = backend.open_session(false) else {
        return false;
    };
    let mech = Mechanism::plain(cryptoki_sys::CKM_ECDSA);
    let ok = backend
        .op_init(s, Op::Verify, &mech, Some(public))
        .and_then(|()| backend.verify(s, &digest, signature))
        .is_ok();
    let _ = backend.close_session(s);
    ok
}

/// The audit key on a backend token.
#[derive(Debug, Clone, Copy)]
pub struct AuditKey {
    /// The virtual slot whose backend holds it.
    pub slot: usize,
    /// Its private half.
    pub private: crate::backend::BackendObject,
    /// Its public half.
    pub public: crate::backend::BackendObject,
}

impl AuditKey {
    /// Whether `object` on `slot` is one of its halves.
    pub fn is(&self, slot: usize, object: crate::backend::BackendObject) -> bool {
        self.slot == slot && (self.private == object || self.public == object)
    }
}

/// How often checkpoints are written: after this many events, or this
/// long after the last one when events came since, and at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointEvery {
    /// Events.
    pub events: u64,
    /// Time.
    pub interval: Duration,
}

impl crate::agent::Agent {
    /// Finds the audit key on the first available backend token (the token
    /// recorded for it, once recorded), making it (inside the HSM) at the
    /// first start.
    ///
    /// The audit key is recognised by the fingerprint of its public key
    /// recorded in the inventory when it was made ([`AUDIT_KEY_NAME`]),
    /// never by its `CKA_ID` alone: another object with that `CKA_ID` (a
    /// planted public key) is not used to verify checkpoints, and a private
    /// key is used only after proving it is the recorded public key's other
    /// half (a signature made and verified). A store from before
    /// fingerprints records the one key pair that proves itself and, when
    /// several do, the one whose public key verifies the last checkpoint.
    pub fn setup_audit_key(&self) {
        use cryptoki_sys as ck;
        use keyward_protocol::{Attribute, Mechanism};
        let inventory = self.keys.inventory();
        let recorded = match inventory.agent_key(AUDIT_KEY_NAME) {
            Ok(r) => r,
            Err(e) => {
                log::error!("audit: cannot read the audit key's record: {e}");
                return;
            }
        };
        for (slot, token) in self.tokens.iter().enumerate() {
            if recorded
                .as_ref()
                .is_some_and(|(t, _)| *t != token.config.label)
            {
                continue;
            }
            let Ok(backend) = token.backend() else {
                continue;
            };
            let anchor = backend.anchor_session();
            let found = |class: u64| {
                backend
                    .find_objects(
                        anchor,
                        &[
                            Attribute::ulong(ck::CKA_CLASS, class),
                            Attribute::bytes(ck::CKA_ID, AUDIT_KEY_ID.to_vec()),
                        ],
                    )
                    .unwrap_or_default()
            };
            let (publics, privates) = (found(ck::CKO_PUBLIC_KEY), found(ck::CKO_PRIVATE_KEY));
            // Every (public, private) pair that proves itself, with the
            // public key's fingerprint.
            let pairs = || -> Vec<([u8; 32], (u64, u64))> {
                let mut out = Vec::new();
                for &public in &publics {
                    let Some(fp) = crate::keys::fingerprint(backend.as_ref(), anchor, public)
                    else {
                        continue;
                    };
                    if recorded.as_ref().is_some_and(|(_, r)| r[..] != fp[..]) {
                        continue;
                    }
                    for &private in &privates {
                        if crate::keys::proves_possession(
                            backend.as_ref(),
                            private,
                            AUDIT_KEY_ID,
                            &fp,
                        ) {
                            out.push((fp, (public, private)));
                        }
                    }
                }
                out
            };
            let pair = if publics.is_empty() && privates.is_empty() && recorded.is_none() {
                let common = |private: bool| {
                    vec![
                        Attribute::bool(ck::CKA_TOKEN, true),
                        Attribute::bool(ck::CKA_PRIVATE, private),
                        Attribute::bytes(ck::CKA_LABEL, AUDIT_KEY_LABEL.to_vec()),
                        Attribute::bytes(ck::CKA_ID, AUDIT_KEY_ID.to_vec()),
                    ]
                };
                let mut public = common(false);
                public.push(Attribute::bytes(
                    ck::CKA_EC_PARAMS,
                    vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                ));
                public.push(Attribute::bool(ck::CKA_VERIFY, true));
                let mut private = common(true);
                private.extend([
                    Attribute::bool(ck::CKA_SIGN, true),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::bool(ck::CKA_EXTRACTABLE, false),
                ]);
                backend
                    .generate_key_pair(
                        anchor,
                        &Mechanism::plain(ck::CKM_EC_KEY_PAIR_GEN),
                        &public,
                        &private,
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|(public, private)| {
                        let fp = crate::keys::fingerprint(backend.as_ref(), anchor, public)
                            .ok_or_else(|| "the new audit key shows no public value".to_owned())?;
                        Ok((Some(fp), (public, private)))
                    })
            } else {
                let mut found = pairs();
                if found.len() > 1 {
                    // Several pairs prove themselves (a store from before
                    // fingerprints, with a planted key pair): the one that
                    // signed the last checkpoint is the audit key.
                    let last = self
                        .audit
                        .log()
                        .checkpoints()
                        .ok()
                        .and_then(|c| c.last().cloned());
                    if let Some(cp) = last {
                        let message =
                            keyward_inventory::checkpoint_message(cp.seq, &cp.head, cp.created_at);
                        found.retain(|(_, (public, _))| {
                            verify_with(backend.as_ref(), *public, &message, &cp.signature)
                        });
                    }
                }
                match found.as_slice() {
                    [(fp, pair)] => Ok((recorded.is_none().then_some(*fp), *pair)),
                    [] => Err(format!(
                        "no key pair with CKA_ID {:?} proves to be the audit key \
                         ({} public, {} private objects with that CKA_ID)",
                        String::from_utf8_lossy(AUDIT_KEY_ID),
                        publics.len(),
                        privates.len()
                    )),
                    several => Err(format!(
                        "{} key pairs with CKA_ID {:?} could be the audit key and none is recorded: \
                         remove the planted ones",
                        several.len(),
                        String::from_utf8_lossy(AUDIT_KEY_ID)
                    )),
                }
            };
            match pair {
                Ok((to_record, (public, private))) => {
                    if let Some(fp) = to_record {
                        let at = crate::keys::secs(SystemTime::now());
                        if let Err(e) =
                            inventory.set_agent_key(AUDIT_KEY_NAME, &token.config.label, &fp, at)
                        {
                            log::error!("audit: cannot record the audit key's fingerprint: {e}");
                            return;
                        }
                    }
                    if publics.len() + privates.len() > 2 {
                        log::warn!(
                            "audit: token {:?} holds other objects with the audit key's CKA_ID: \
                             planted, ignored (keyward discover lists them)",
                            token.config.label
                        );
                    }
                    log::info!(
                        "audit: checkpoints are signed by the audit key on token {:?}",
                        token.config.label
                    );
                    *self.audit_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(AuditKey {
                        slot,
                        private,
                        public,
                    });
                }
                Err(e) => log::error!("audit: no audit key on token {:?}: {e}", token.config.label),
            }
            return;
        }
        match recorded {
            Some((t, _)) => log::error!(
                "audit: the audit key is recorded on token {t:?}, which is not available: \
                 checkpoints cannot be signed"
            ),
            None => log::error!("audit: no backend token: checkpoints cannot be signed"),
        }
    }

    /// Whether `object` on `slot` is the audit key (hidden from applications).
    pub fn is_audit_key(&self, slot: usize, object: crate::backend::BackendObject) -> bool {
        self.audit_key().is_some_and(|k| k.is(slot, object))
    }

    /// The audit key, when the agent has one.
    pub fn audit_key(&self) -> Option<AuditKey> {
        *self.audit_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// ECDSA over SHA-256 of `message` with the audit key, on a session of
    /// its own.
    fn audit_sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        use keyward_protocol::{Mechanism, Op};
        use sha2::Digest;
        let key = self.audit_key()?;
        let backend = self.tokens[key.slot].backend().ok()?;
        let digest = sha2::Sha256::digest(message);
        let s = backend.open_session(false).ok()?;
        let mech = Mechanism::plain(cryptoki_sys::CKM_ECDSA);
        let sig = backend
            .op_init(s, Op::Sign, &mech, Some(key.private))
            .and_then(|()| backend.single(s, Op::Sign, &digest));
        let _ = backend.close_session(s);
        sig.ok()
    }

    /// Checks an audit-key signature over `message`.
    pub fn audit_verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.audit_key() else {
            return false;
        };
        let Ok(backend) = self.tokens[key.slot].backend() else {
            return false;
        };
        verify_with(backend.as_ref(), key.public, message, signature)
    }

    /// Seals the trail up to its head with a checkpoint signed by the audit
    /// key, when anything came since the last one.
    pub fn checkpoint(&self) {
        self.audit.flush();
        let log = self.audit.log();
        let last = log
            .checkpoints()
            .ok()
            .and_then(|c| c.last().map(|c| c.seq))
            .unwrap_or(0);
        let Ok((seq, head)) = log.head() else { return };
        if seq == 0 || seq <= last {
            return;
        }
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let message = keyward_inventory::checkpoint_message(seq, &head, created_at);
        let Some(signature) = self.audit_sign(&message) else {
            log::error!("audit: the checkpoint at {seq} could not be signed by the HSM");
            return;
        };
        let cp = keyward_inventory::Checkpoint {
            seq,
            head,
            created_at,
            signature,
            signer: "keyward-audit (HSM, ECDSA P-256)".into(),
        };
        match log.checkpoint(&cp) {
            Ok(()) => log::debug!("audit: checkpoint at {seq}"),
            Err(e) => log::error!("audit: checkpoint at {seq}: {e}"),
        }
    }

    /// Writes checkpoints every `every.events` events or `every.interval`,
    /// on a thread of its own.
    pub fn spawn_checkpoints(self: &Arc<crate::agent::Agent>, every: CheckpointEvery) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("audit-checkpoints".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(a) = agent.upgrade() else { return };
                    let sealed = a
                        .audit
                        .log()
                        .checkpoints()
                        .ok()
                        .and_then(|c| c.last().map(|c| c.seq))
                        .unwrap_or(0);
                    let head = a.audit.log().head().map_or(0, |(s, _)| s);
                    if head.saturating_sub(sealed) >= every.events
                        || (head > sealed && last.elapsed() >= every.interval)
                    {
                        a.checkpoint();
                        last = std::time::Instant::now();
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("audit: cannot start the checkpoint thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::peer;
    use crate::client::Client;

    fn target(key: &str) -> Arc<UseTarget> {
        Arc::new(UseTarget {
            token: "kw".into(),
            key: key.into(),
            version: Some(1),
        })
    }

    #[test]
    fn equal_uses_are_folded_as_they_are_queued_and_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap();
        let auditor = Auditor::start(Arc::new(store));
        let (a, b) = (
            Client::new(peer(10), "web".into(), 1),
            Client::new(peer(11), "web".into(), 1),
        );
        let (k, other) = (target("k"), target("other"));
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        auditor.record(event(AuditKind::Refusal, a.actor.clone(), "decrypt"));
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        auditor.record_use(&b, "sign", Some(0x1041), &k, 0); // another process
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0x30); // another result
        auditor.record_use(&a, "sign", Some(0x1041), &other, 0); // another key
        auditor.record_use(&a, "verify", Some(0x1041), &k, 0); // another operation
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        auditor.flush();
        let got: Vec<_> = auditor
            .log()
            .tail(100)
            .unwrap()
            .into_iter()
            .map(|r| {
                let e = r.event;
                let pid = match e.actor {
                    Actor::Application { pid, .. } => pid,
                    _ => 0,
                };
                (
                    e.kind,
                    pid,
                    e.key.unwrap_or_default(),
                    e.operation,
                    e.result,
                    e.count,
                )
            })
            .collect();
        let row = |kind, pid, key: &str, op: &str, result, count| {
            (kind, pid, key.to_owned(), op.to_owned(), result, count)
        };
        assert_eq!(
            got,
            vec![
                row(AuditKind::Use, 10, "k", "sign", 0, 3),
                row(AuditKind::Refusal, 10, "", "decrypt", 0, 1),
                row(AuditKind::Use, 11, "k", "sign", 0, 1),
                row(AuditKind::Use, 10, "k", "sign", 0x30, 1),
                row(AuditKind::Use, 10, "other", "sign", 0, 1),
                row(AuditKind::Use, 10, "k", "verify", 0, 1),
            ]
        );
        assert_eq!(auditor.stats().events, 8);
        assert_eq!(auditor.stats().records, 6);
    }
}
