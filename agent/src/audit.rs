//! The audit trail as the agent writes it.
//!
//! - Uses and refusals (the hot path) are queued in memory and appended in
//!   batches by a writer thread, at most [`BATCH`] events or [`LINGER`]
//!   apart: a use costs a lock and a push, never a disk write.
//! - Lifecycle, admin, login and agent events are durable before the call
//!   returns: [`Auditor::durable`] first appends what is queued (so the
//!   trail keeps the order events happened in), then the event, with
//!   `synchronous=FULL`. When that fails the caller fails closed. The
//!   records of a lifecycle change are written by the inventory in the
//!   change's own transaction, through [`Auditor::commit`].
//! - A trail that cannot be written is said loudly at error level once at
//!   the start of a failure streak, as a reminder every
//!   [`FAILURE_REMINDER`] while it lasts, and once at its end.
//! - Uses acknowledged but not yet stored are lost if the agent dies
//!   (SIGKILL, a crash): a *run note* in the state directory
//!   ([`RUN_NOTE`]), which the writer keeps ahead of the queue, bounds
//!   them without a write per use, and the next start records a
//!   `crash-gap` record with that bound (see [`Auditor::begin_run`]).
//!
//! No PIN and no key material ever goes into an event: callers pass names,
//! operations, codes and reasons.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_inventory::{coalesce, Actor, AuditEvent, AuditKind, AuditLog};

use crate::backend::{Backend, BackendSession};
use crate::clients::UseTarget;
use crate::config::{AuditConfig, OnWriteFailure};
use crate::listener::identity::Peer;

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
/// While the trail cannot be written, how often the failure is said again.
pub const FAILURE_REMINDER: Duration = Duration::from_secs(60);
/// The run note's file name in the state directory.
pub const RUN_NOTE: &str = "audit-run";
/// The least number of queued events the run note reserves ahead.
const MIN_HEADROOM: u64 = 1024;
/// Bytes the run note is padded to: one write of one block replaces it.
const NOTE_SIZE: usize = 512;

/// What is queued for the next batch, in the order it happened: events,
/// and uses folded by [`UseKey`] (a use's place is its first occurrence).
struct Queue {
    order: Vec<Queued>,
    others: Vec<AuditEvent>,
    uses: Vec<PendingUse>,
    index: std::collections::HashMap<UseKey, usize>,
    /// Events queued, uses counted one by one (what [`BATCH`] counts).
    events: usize,
    /// Events queued since the agent started (uses one by one, refusals).
    total: u64,
    /// How many `total` may reach before the run note must say more
    /// (never more than the note on disk says; `u64::MAX`: no note).
    reserved: u64,
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
    client: crate::listener::identity::ClientKey,
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

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            order: Vec::new(),
            others: Vec::new(),
            uses: Vec::new(),
            index: std::collections::HashMap::new(),
            events: 0,
            total: 0,
            reserved: u64::MAX,
        }
    }
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
    /// The current failure streak, when the trail cannot be written.
    streak: Mutex<Option<Streak>>,
    /// The run note (see [`Auditor::begin_run`]); `None` until a run
    /// begins, and after it ended.
    note: Mutex<Option<RunNote>>,
}

/// A streak of failed writes of the trail, for saying it once.
struct Streak {
    since: std::time::Instant,
    attempts: u64,
    last_said: std::time::Instant,
    /// Use events dropped during the streak (beyond [`MAX_PENDING`]).
    dropped: u64,
}

/// What the run note says (format 1), as JSON padded to [`NOTE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
struct NoteState {
    /// The agent's process.
    pid: u32,
    /// When the run began (microseconds since the epoch).
    started_us: u64,
    /// The run ended with a clean stop: everything queued was stored.
    clean: bool,
    /// Events queued in this run that the trail now holds (or that an
    /// `audit-gap` record accounts for).
    accounted: u64,
    /// The trail's head seq when `accounted` was counted.
    seq: u64,
    /// Every event queued before this time is in the trail.
    stored_until_us: u64,
    /// No more events than this were queued in this run.
    reserved: u64,
    /// When the note was written.
    noted_us: u64,
}

/// The run note's file and what it last said.
struct RunNote {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// What is on disk.
    disk: NoteState,
    /// Progress not yet on disk: `accounted`, `seq`, `stored_until_us`.
    progress: NoteState,
    /// `Queue::total` at the writer's last note, and the headroom it gave.
    last_total: u64,
    headroom: u64,
    /// The last write failed (said once).
    failing: bool,
}

impl RunNote {
    /// Writes `state` over the note (one write of [`NOTE_SIZE`] bytes; no
    /// sync: what a process crash must not lose is in the page cache).
    fn write(&mut self, state: NoteState) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        if bytes.len() >= NOTE_SIZE {
            return Err(std::io::Error::other("the run note is too long"));
        }
        bytes.resize(NOTE_SIZE - 1, b' ');
        bytes.push(b'\n');
        let written = self.file.write_all_at(&bytes, 0);
        match &written {
            Ok(()) => {
                self.disk = state;
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "audit: the run note {} is written again",
                        self.path.display()
                    );
                }
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::error!(
                    "audit: cannot write the run note {} ({e}): after a crash, the count of \
                     uses that may be missing will be too low",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
        written
    }

    /// The note with the progress so far and `reserved`; `Some(reserved)`
    /// when written. Called with the queue locked, and `reserved` at least
    /// its total: the note never says fewer events than were queued.
    fn note(&mut self, reserved: u64) -> Option<u64> {
        let state = NoteState {
            reserved,
            noted_us: now_us(),
            ..self.progress
        };
        self.write(state).ok().map(|()| self.disk.reserved)
    }
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `2026-12-04T22:01:02.123456Z` for microseconds since the epoch.
pub fn format_us(us: u64) -> String {
    i64::try_from(us)
        .ok()
        .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        .map_or_else(
            || format!("unix_us {us}"),
            |t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        )
}

/// The operation of the record a start after a crash writes.
pub const CRASH_GAP: &str = "crash-gap";

/// The reason of a [`CRASH_GAP`] record; [`crash_gap_of`] reads it back.
pub fn crash_gap_reason(from_us: u64, to_us: u64, at_most: u64, pid: u32, noted_us: u64) -> String {
    format!(
        "the agent (pid {pid}) did not stop cleanly: at most {at_most} uses and refusals \
         acknowledged between {} and {} may be missing from the trail \
         [unix_us {from_us}..{to_us}]; its last note was at {}",
        format_us(from_us),
        format_us(to_us),
        format_us(noted_us)
    )
}

/// The interval (microseconds since the epoch) and the bound a
/// [`crash_gap_reason`] says.
pub fn crash_gap_of(reason: &str) -> Option<(u64, u64, u64)> {
    let at_most = reason
        .split_once("at most ")?
        .1
        .split_once(' ')?
        .0
        .parse()
        .ok()?;
    let range = reason.split_once("[unix_us ")?.1.split_once(']')?.0;
    let (from, to) = range.split_once("..")?;
    Some((from.parse().ok()?, to.parse().ok()?, at_most))
}

/// Why [`Auditor::commit`] applied nothing.
#[derive(Debug)]
pub enum CommitError {
    /// The trail cannot be written (what was queued before the change).
    Trail,
    /// The store refused the change or failed, its records with it.
    Store(keyward_inventory::Error),
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
pub fn for_client(client: &crate::clients::Client, kind: AuditKind, operation: &str) -> AuditEvent {
    event(kind, client.actor.clone(), operation)
}

impl Auditor {
    /// An auditor over `log` with the default settings.
    pub fn start(log: Arc<dyn AuditLog>) -> Arc<Auditor> {
        Auditor::with_config(log, &AuditConfig::default())
    }

    /// An auditor over `log` as `config` says, with its writer thread.
    pub fn with_config(log: Arc<dyn AuditLog>, config: &AuditConfig) -> Arc<Auditor> {
        let auditor = Auditor::new(log, config);
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

    /// An auditor without its writer thread: events are written by
    /// [`Auditor::flush`] and [`Auditor::durable`] only.
    fn new(log: Arc<dyn AuditLog>, config: &AuditConfig) -> Arc<Auditor> {
        if !config.record_uses {
            log::warn!("audit: [audit] record_uses = false: cryptographic uses are NOT recorded");
        }
        let syslog = config
            .syslog
            .then(|| Mutex::new(Syslog::new(&config.syslog_socket)));
        Arc::new(Auditor {
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
            streak: Mutex::new(None),
            note: Mutex::new(None),
        })
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
        q.total += 1;
        if q.total > q.reserved {
            self.reserve(&mut q);
        }
        if q.events == BATCH {
            self.wake.notify_one();
        }
    }

    /// The queue outgrew what the run note reserves: the note reserves more
    /// before the event is acknowledged. Rare (the writer reserves ahead at
    /// every batch, with room for twice the last interval's events).
    fn reserve(&self, q: &mut Queue) {
        let mut note = self.note();
        q.reserved = match note.as_mut() {
            Some(n) => {
                let want = q.total.saturating_add(n.headroom);
                // A note that cannot be written is said once; then events
                // are no longer held up by it.
                n.note(want).unwrap_or(u64::MAX)
            }
            None => u64::MAX,
        };
    }

    fn note(&self) -> std::sync::MutexGuard<'_, Option<RunNote>> {
        self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a use of `target` by `client` (its end, with result `rv`):
    /// counted into the batch's record of equal uses, so that a use costs a
    /// clock read, a lock and a lookup, and a string copy only when it is
    /// the first of its kind in the batch.
    pub fn record_use(
        &self,
        client: &crate::clients::Client,
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
        q.total += 1;
        if q.total > q.reserved {
            self.reserve(&mut q);
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
        let (batch, taken_us) = self.take();
        if let Err(batch) = self.append(batch, false, taken_us) {
            self.requeue(batch);
        }
    }

    /// Everything queued, and the time before it was taken: every event
    /// queued earlier is in the batch.
    fn take(&self) -> (Vec<AuditEvent>, u64) {
        let taken_us = now_us();
        (self.queue().take(), taken_us)
    }

    /// Appends `e` durably (after what is queued) before returning.
    /// `Err` means the trail could not be written: fail closed.
    pub fn durable(&self, e: AuditEvent) -> Result<(), String> {
        let _writing = self.writing();
        let (mut batch, taken_us) = self.take();
        batch.push(e);
        match self.append(batch, true, taken_us) {
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

    /// Applies a lifecycle change whose trail records (`change.trail`) the
    /// inventory writes in the change's own transaction: what is queued is
    /// appended first (so the trail keeps the order events happened in),
    /// then the change, under the writing lock, and the records are
    /// counted, forwarded to syslog and noted as the writer's own are.
    /// [`CommitError::Trail`] when what is queued cannot be written: the
    /// change is not applied (fail closed).
    pub fn commit(
        &self,
        inventory: &dyn keyward_inventory::Inventory,
        change: &keyward_inventory::LifecycleChange,
    ) -> Result<keyward_inventory::AppliedChange, CommitError> {
        let _writing = self.writing();
        let (batch, taken_us) = self.take();
        if let Err(batch) = self.append(batch, false, taken_us) {
            self.requeue(batch);
            return Err(CommitError::Trail);
        }
        let done = inventory.apply(change).map_err(CommitError::Store)?;
        if let Some((first, last)) = done.trail {
            let events: u64 = change.trail.iter().map(|e| u64::from(e.count)).sum();
            self.stats
                .records
                .fetch_add(change.trail.len() as u64, Ordering::Relaxed);
            self.stats.events.fetch_add(events, Ordering::Relaxed);
            if let Some(n) = self.note().as_mut() {
                n.progress.seq = last;
            }
            if let Some(s) = &self.syslog {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(first, &change.trail);
            }
        }
        Ok(done)
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
            // Said with the streak (its reminders and its end), not each time.
            let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
            match streak.as_mut() {
                Some(st) if st.dropped > 0 => st.dropped += dropped,
                Some(st) => {
                    st.dropped = dropped;
                    log::error!(
                        "audit: {MAX_PENDING} records held in memory: the oldest uses are now \
                         dropped and counted"
                    );
                }
                None => log::error!("audit: {dropped} events dropped"),
            }
        }
        q.events = batch.len();
        q.order = (0..batch.len()).map(Queued::Event).collect();
        q.others = batch;
    }

    /// Appends `events` (coalesced; the last event stays last), first
    /// noting any events lost since the last write. Says loudly when the
    /// trail cannot be written and when it can again. `Err` gives the batch
    /// back (coalesced) to be kept for the next attempt.
    fn append(
        &self,
        events: Vec<AuditEvent>,
        durable: bool,
        taken_us: u64,
    ) -> Result<(), Vec<AuditEvent>> {
        if events.is_empty() {
            return Ok(());
        }
        // Events that came from the queue (a durable event is the last and
        // was never queued).
        let queued: u64 = events
            .iter()
            .take(events.len() - usize::from(durable))
            .map(|e| u64::from(e.count))
            .sum();
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
                    let streak = self.streak.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match streak {
                        Some(st) => log::error!(
                            "audit: the trail is written again, after {} s and {} failed \
                             attempts{}",
                            st.since.elapsed().as_secs(),
                            st.attempts,
                            if st.dropped > 0 {
                                format!(
                                    "; {} use events were dropped (an audit-gap record says so)",
                                    st.dropped
                                )
                            } else {
                                String::new()
                            }
                        ),
                        None => log::error!("audit: the trail is written again"),
                    }
                }
                if let Some(n) = self.note().as_mut() {
                    n.progress.accounted += queued + lost;
                    n.progress.seq = head;
                    n.progress.stored_until_us = n.progress.stored_until_us.max(taken_us);
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
                let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                if !self.failing.swap(true, Ordering::Relaxed) || streak.is_none() {
                    *streak = Some(Streak {
                        since: now,
                        attempts: 1,
                        last_said: now,
                        dropped: 0,
                    });
                    log::error!(
                        "audit: THE TRAIL CANNOT BE WRITTEN ({e}); {} records held in memory; \
                         admin and lifecycle actions are refused until it can{} (said again \
                         every {} s while it lasts, and when it ends)",
                        batch.len(),
                        if self.on_write_failure == OnWriteFailure::Refuse {
                            ", and so are applications' operations"
                        } else {
                            ""
                        },
                        FAILURE_REMINDER.as_secs()
                    );
                } else if let Some(st) = streak.as_mut() {
                    st.attempts += 1;
                    if now.duration_since(st.last_said) >= FAILURE_REMINDER {
                        st.last_said = now;
                        log::error!(
                            "audit: the trail still cannot be written ({e}), for {} s and {} \
                             attempts; {} records held in memory, {} use events dropped",
                            st.since.elapsed().as_secs(),
                            st.attempts,
                            batch.len(),
                            st.dropped
                        );
                    }
                }
                drop(streak);
                if lost > 0 {
                    batch.remove(0);
                }
                Err(batch)
            }
        }
    }

    /// The writer's note after each batch: the progress, and a reservation
    /// of twice the events of the last interval (at least
    /// [`MIN_HEADROOM`]) ahead of what is queued. Written under the queue's
    /// lock (one small write, a few times a second at most), so that the
    /// reservation can also shrink again: nothing is queued meanwhile.
    /// Nothing is written when nothing changed.
    fn note_progress(&self) {
        let mut q = self.queue();
        let mut note = self.note();
        let Some(n) = note.as_mut() else { return };
        let total = q.total;
        let interval = total.saturating_sub(n.last_total);
        n.last_total = total;
        n.headroom = interval.saturating_mul(2).max(MIN_HEADROOM);
        let same = n.progress.accounted == n.disk.accounted
            && n.progress.stored_until_us == n.disk.stored_until_us;
        if same && interval == 0 && n.disk.reserved >= total {
            return;
        }
        if let Some(reserved) = n.note(total.saturating_add(n.headroom)) {
            q.reserved = reserved;
        }
    }

    /// Begins a run of the agent: reads the run note the last run left in
    /// `state_dir` and, when that run did not stop cleanly, returns the
    /// `crash-gap` event to record (before anything else): the uses and
    /// refusals it acknowledged that may be missing from the trail, at
    /// most how many, and between when and when. Then notes this run.
    ///
    /// The bound holds without any write per use: the queue counts the
    /// events it takes (under the lock it already holds), and the note on
    /// disk always reserves at least as many as were queued (the writer
    /// reserves ahead; an event past the reservation writes a new note
    /// before it is acknowledged). The note is not synced: it bounds what
    /// a process crash (SIGKILL, abort) loses; after a power loss it may
    /// be stale.
    pub fn begin_run(&self, state_dir: &std::path::Path) -> Option<AuditEvent> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(RUN_NOTE);
        let now = now_us();
        let gap = match std::fs::read(&path) {
            Ok(bytes) => self.gap_after(&bytes, now),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                log::error!("audit: cannot read the run note {}: {e}", path.display());
                None
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                log::error!(
                    "audit: cannot open the run note {} ({e}): a crash of this run will not be \
                     recorded in the trail",
                    path.display()
                );
                return gap;
            }
        };
        let seq = self.log.head().map_or(0, |(s, _)| s);
        let start = NoteState {
            pid: std::process::id(),
            started_us: now,
            clean: false,
            accounted: 0,
            seq,
            stored_until_us: now,
            reserved: 0,
            noted_us: now,
        };
        let mut note = RunNote {
            file,
            path,
            disk: start,
            progress: start,
            last_total: 0,
            headroom: MIN_HEADROOM,
            failing: false,
        };
        let mut q = self.queue();
        if let Some(r) = note.note(q.total + MIN_HEADROOM) {
            q.reserved = r;
        }
        *self.note() = Some(note);
        gap
    }

    /// The `crash-gap` event for the last run's note `bytes`, if that run
    /// did not stop cleanly; `now`: this start (the latest the crash can
    /// have been).
    fn gap_after(&self, bytes: &[u8], now: u64) -> Option<AuditEvent> {
        let mut e = event(AuditKind::Agent, Actor::Agent, CRASH_GAP);
        e.result = cryptoki_sys::CKR_FUNCTION_FAILED;
        let text = String::from_utf8_lossy(bytes);
        let Ok(last) = serde_json::from_str::<NoteState>(text.trim()) else {
            // Torn or altered: nothing is known but that the run ended
            // without a clean stop.
            e.reason = "the last run's note is unreadable: uses and refusals it acknowledged \
                        may be missing from the trail (how many is unknown)"
                .into();
            return Some(e);
        };
        if last.clean {
            return None;
        }
        // Uses the trail holds beyond what the note counted.
        let stored_after: u64 = self
            .log
            .query(&keyward_inventory::AuditFilter {
                after_seq: Some(last.seq),
                kinds: vec![AuditKind::Use],
                ..keyward_inventory::AuditFilter::default()
            })
            .map(|r| r.iter().map(|r| u64::from(r.event.count)).sum())
            .unwrap_or(0);
        // Every event queued before the last stored record was stored.
        let last_record_us = self
            .log
            .tail(1)
            .ok()
            .and_then(|t| {
                t.last()
                    .map(|r| r.event.at.max(0) as u64 * 1_000_000 + u64::from(r.event.micros))
            })
            .unwrap_or(0);
        let from = last.stored_until_us.max(last_record_us).min(now);
        let at_most = last
            .reserved
            .saturating_sub(last.accounted)
            .saturating_sub(stored_after);
        e.reason = crash_gap_reason(from, now, at_most, last.pid, last.noted_us);
        log::warn!("audit: {}", e.reason);
        Some(e)
    }

    /// Ends the run cleanly (after the last flush and checkpoint): the
    /// note says so, synced, and the next start records no gap.
    pub fn end_run(&self) {
        self.flush();
        let mut q = self.queue();
        let mut note = self.note();
        if let Some(mut n) = note.take() {
            let state = NoteState {
                clean: true,
                noted_us: now_us(),
                reserved: n.disk.reserved,
                ..n.progress
            };
            if n.write(state).is_ok() {
                if let Err(e) = n.file.sync_all() {
                    log::error!("audit: cannot sync the run note {}: {e}", n.path.display());
                }
            }
        }
        q.reserved = u64::MAX;
    }

    /// Ships a checkpoint's head to syslog (when forwarding is on), in its
    /// one-line text form, as a record of its own: a witness off the host
    /// that `keyward audit verify --anchor` reads back.
    pub fn forward_anchor(&self, anchor: &keyward_protocol::admin::AuditAnchor) {
        if let Some(s) = &self.syslog {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .send_line(&anchor.to_line(), false);
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
        let (batch, taken_us) = a.take();
        let failed = a.append(batch, false, taken_us).err();
        a.note_progress();
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

/// How long one message to syslog may wait for room in its socket.
const SYSLOG_SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// Forwards stored records to the local syslog socket, one JSON object per
/// message (facility authpriv, severity notice; refusals and failures at
/// warning). A socket that is missing, refuses, or is full for
/// [`SYSLOG_SEND_TIMEOUT`] is logged once per failure streak and tried
/// again with the next batch; the trail itself never depends on it.
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
            if !self.send_line(&line, e.result != 0) {
                return;
            }
        }
    }

    /// Sends one message (at warning, else notice); false when syslog is
    /// away (said once per failure streak).
    fn send_line(&mut self, line: &str, warning: bool) -> bool {
        let sent = self.connect().and_then(|l| {
            let r = if warning {
                l.warning(line)
            } else {
                l.notice(line)
            };
            r.map_err(|err| err.to_string())
        });
        match sent {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::warn!("audit: syslog {} works again", self.path.display());
                }
                true
            }
            Err(err) => {
                self.logger = None;
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "audit: cannot forward to syslog {}: {err}; the trail is unaffected",
                        self.path.display()
                    );
                }
                false
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
            let logger = syslog::unix_custom(formatter, &self.path).map_err(|e| e.to_string())?;
            // A syslog that stops reading fills its queue; a send then
            // waits at most this long instead of stalling the trail's writer.
            match &logger.backend {
                syslog::LoggerBackend::Unix(s) => s.set_write_timeout(Some(SYSLOG_SEND_TIMEOUT)),
                syslog::LoggerBackend::UnixStream(s) => {
                    s.get_ref().set_write_timeout(Some(SYSLOG_SEND_TIMEOUT))
                }
                _ => Ok(()),
            }
            .map_err(|e| e.to_string())?;
            self.logger = Some(logger);
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
    /// [`Self::key_request`]).
    pub fn audit_read(
        &self,
        admin: &Peer,
        operation: &str,
        what: &str,
        resp: &keyward_protocol::admin::AdminResponse,
    ) {
        use keyward_protocol::admin::{AdminResponse as R, AuditResponse};
        let (result, outcome) = match resp {
            R::Err(m) | R::KeyErr { message: m, .. } => {
                (cryptoki_sys::CKR_FUNCTION_FAILED, m.clone())
            }
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

    fn answer_audit(
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
            AuditRequest::Anchor => {
                if let Err(e) = self.checkpoint() {
                    return AdminResponse::KeyErr {
                        kind: AdminErrorKind::Failed,
                        message: format!("audit trail: cannot seal it for an anchor: {e}"),
                    };
                }
                match log.checkpoints() {
                    Ok(c) => match c.last() {
                        Some(cp) => {
                            AdminResponse::Audit(Box::new(AuditResponse::Anchor(anchor_of(cp))))
                        }
                        None => AdminResponse::KeyErr {
                            kind: AdminErrorKind::Failed,
                            message: "audit trail: no checkpoint yet".into(),
                        },
                    },
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

/// `1 record`, `2 records`.
fn count(n: impl TryInto<u64>, what: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
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

/// The audit key's (public, private) backend objects.
type AuditPair = (u64, u64);

/// Generates the audit key pair in the HSM on `anchor`; its public key's
/// fingerprint and its (public, private) handles.
fn generate_audit_key(
    backend: &dyn Backend,
    anchor: BackendSession,
) -> Result<([u8; 32], AuditPair), String> {
    use cryptoki_sys as ck;
    use keyward_protocol::{Attribute, Mechanism};
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
            let fp = crate::keys::fingerprint(backend, anchor, public)
                .ok_or_else(|| "the new audit key shows no public value".to_owned())?;
            Ok((fp, (public, private)))
        })
}

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
        use keyward_protocol::Attribute;
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
            let pair = if publics.is_empty() && privates.is_empty() && recorded.is_none() {
                generate_audit_key(backend.as_ref(), anchor).map(|(fp, pair)| (Some(fp), pair))
            } else {
                self.pick_audit_key(
                    backend.as_ref(),
                    anchor,
                    &publics,
                    &privates,
                    recorded.as_ref(),
                )
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

    /// Which of the objects with the audit key's `CKA_ID` on `anchor` are
    /// the audit key: the pair that proves itself (its public key with the
    /// `recorded` fingerprint, when there is one); among several, the one
    /// that signed the last checkpoint. With the fingerprint to record when
    /// none was.
    fn pick_audit_key(
        &self,
        backend: &dyn Backend,
        anchor: BackendSession,
        publics: &[u64],
        privates: &[u64],
        recorded: Option<&(String, Vec<u8>)>,
    ) -> Result<(Option<[u8; 32]>, AuditPair), String> {
        // Every (public, private) pair that proves itself, with the
        // public key's fingerprint.
        let pairs = || -> Vec<([u8; 32], AuditPair)> {
            let mut out = Vec::new();
            for &public in publics {
                let Some(fp) = crate::keys::fingerprint(backend, anchor, public) else {
                    continue;
                };
                if recorded.is_some_and(|(_, r)| r[..] != fp[..]) {
                    continue;
                }
                for &private in privates {
                    if crate::keys::proves_possession(backend, private, AUDIT_KEY_ID, &fp) {
                        out.push((fp, (public, private)));
                    }
                }
            }
            out
        };
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
                    verify_with(backend, *public, &message, &cp.signature)
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
    /// key, when anything came since the last one, and ships its head (an
    /// anchor) to syslog when forwarding is on. `Err` (also logged): the
    /// records after the last checkpoint could not be sealed.
    pub fn checkpoint(&self) -> Result<(), String> {
        self.audit.flush();
        let log = self.audit.log();
        let last = log
            .checkpoints()
            .map_err(|e| format!("cannot read the checkpoints: {e}"))?
            .last()
            .map_or(0, |c| c.seq);
        let (seq, head) = log
            .head()
            .map_err(|e| format!("cannot read the trail's head: {e}"))?;
        if seq == 0 || seq <= last {
            return Ok(());
        }
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let message = keyward_inventory::checkpoint_message(seq, &head, created_at);
        let Some(signature) = self.audit_sign(&message) else {
            log::error!("audit: the checkpoint at {seq} could not be signed by the HSM");
            return Err(format!(
                "the checkpoint at {seq} could not be signed by the HSM's audit key"
            ));
        };
        let cp = keyward_inventory::Checkpoint {
            seq,
            head,
            created_at,
            signature,
            signer: "keyward-audit (HSM, ECDSA P-256)".into(),
        };
        match log.checkpoint(&cp) {
            Ok(()) => {
                log::debug!("audit: checkpoint at {seq}");
                self.audit.forward_anchor(&anchor_of(&cp));
                Ok(())
            }
            Err(e) => {
                log::error!("audit: checkpoint at {seq}: {e}");
                Err(format!("the checkpoint at {seq} could not be stored: {e}"))
            }
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
                        // A failure is logged; the next round tries again.
                        let _ = a.checkpoint();
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
    use crate::clients::tests::peer;
    use crate::clients::Client;

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

    fn read_note(dir: &std::path::Path) -> NoteState {
        let text = std::fs::read_to_string(dir.join(RUN_NOTE)).unwrap();
        assert_eq!(text.len(), NOTE_SIZE, "{text:?}");
        serde_json::from_str(text.trim()).unwrap()
    }

    #[test]
    fn the_run_note_always_reserves_at_least_every_queued_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap();
        let auditor = Auditor::new(Arc::new(store), &AuditConfig::default());
        assert!(
            auditor.begin_run(dir.path()).is_none(),
            "a first start is no crash"
        );
        let note = read_note(dir.path());
        assert!(!note.clean);
        assert_eq!(note.reserved, MIN_HEADROOM);
        let a = Client::new(peer(10), "web".into(), 1);
        let k = target("k");
        // Faster than the writer reserves ahead: the queue reserves itself.
        for i in 1..=5 * MIN_HEADROOM {
            auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
            if i % 97 == 0 {
                let note = read_note(dir.path());
                assert!(
                    note.reserved >= i,
                    "{i} uses queued, {} reserved",
                    note.reserved
                );
            }
        }
        auditor.flush();
        auditor.note_progress();
        let note = read_note(dir.path());
        assert_eq!(note.accounted, 5 * MIN_HEADROOM);
        assert!(note.reserved >= note.accounted);
        auditor.end_run();
        let note = read_note(dir.path());
        assert!(note.clean);
        assert_eq!(note.accounted, 5 * MIN_HEADROOM);
        // A clean stop: the next start records nothing.
        assert!(auditor.begin_run(dir.path()).is_none());
    }

    #[test]
    fn a_run_that_did_not_stop_cleanly_leaves_a_gap_record_with_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap(),
        );
        let auditor = Auditor::new(store.clone(), &AuditConfig::default());
        auditor.begin_run(dir.path());
        let a = Client::new(peer(10), "web".into(), 1);
        let k = target("k");
        for _ in 0..300 {
            auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        }
        auditor.flush();
        auditor.note_progress();
        let noted = read_note(dir.path());
        let before = now_us();
        // Acknowledged, then the process dies before they are stored: as
        // a SIGKILL would, the queue is gone and the note stays unclean.
        for _ in 0..200 {
            auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        }
        let _ = auditor.queue().take();
        assert_eq!(read_note(dir.path()), noted, "the hot path wrote the note");

        let restarted = Auditor::new(store, &AuditConfig::default());
        let gap = restarted.begin_run(dir.path()).expect("a gap record");
        assert_eq!(
            (gap.kind, gap.operation.as_str()),
            (AuditKind::Agent, CRASH_GAP)
        );
        let (from, to, at_most) = crash_gap_of(&gap.reason).expect(&gap.reason);
        assert!(at_most >= 200, "{}", gap.reason);
        assert_eq!(at_most, noted.reserved - 300, "{}", gap.reason);
        assert!(from <= before && before <= to, "{}", gap.reason);
        assert!(
            gap.reason.contains("did not stop cleanly"),
            "{}",
            gap.reason
        );

        // Records stored after the last note are not counted as missing.
        let mut torn = noted;
        torn.accounted = 100;
        torn.seq = 0;
        let gap = restarted
            .gap_after(&serde_json::to_vec(&torn).unwrap(), now_us())
            .unwrap();
        assert_eq!(
            crash_gap_of(&gap.reason).unwrap().2,
            noted.reserved - 100 - 300
        );

        // A note that does not read is a gap of unknown size, not a crash.
        let gap = restarted
            .gap_after(b"{\"pid\": 1, garbage", now_us())
            .unwrap();
        assert!(gap.reason.contains("unreadable"), "{}", gap.reason);
        assert_eq!(crash_gap_of(&gap.reason), None);
    }

    #[test]
    fn times_in_gap_records_are_utc() {
        assert_eq!(format_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_us(1_764_892_862_123_456),
            "2025-12-05T00:01:02.123456Z"
        );
        let reason = crash_gap_reason(5, 7, 9, 42, 6);
        assert_eq!(crash_gap_of(&reason), Some((5, 7, 9)));
    }
}
