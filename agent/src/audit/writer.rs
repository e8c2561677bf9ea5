//! The trail's writer: [`Auditor`] queues uses and refusals off the hot
//! path, writes durable events and lifecycle changes, and says a failing
//! trail loudly; its thread appends batches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_inventory::{coalesce, Actor, AuditEvent, AuditKind, AuditLog};

use crate::clients::UseTarget;
use crate::config::{AuditConfig, OnWriteFailure};

use super::key::AuditKey;
use super::{events::*, queue::*, relay::*, run::*};

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

/// The agent's writer of the audit trail.
pub struct Auditor {
    pub(crate) log: Arc<dyn AuditLog>,
    pub(crate) queue: Mutex<Queue>,
    /// Held from taking a batch off the queue until it is appended, by the
    /// writer, [`Auditor::flush`] and [`Auditor::durable`]: batches reach
    /// the trail in the order they left the queue, so a durable event
    /// always follows every use queued before it, and a flush returns only
    /// when everything queued before it is stored.
    pub(crate) writing: Mutex<()>,
    pub(crate) wake: Condvar,
    pub(crate) failing: AtomicBool,
    /// Use records dropped while the trail could not be written, not yet
    /// reported in the trail.
    pub(crate) lost: AtomicU64,
    pub(crate) stats: Stats,
    pub(crate) record_uses: bool,
    pub(crate) on_write_failure: OnWriteFailure,
    pub(crate) syslog: Option<Mutex<Syslog>>,
    /// The current failure streak, when the trail cannot be written.
    pub(crate) streak: Mutex<Option<Streak>>,
    /// The run note (see [`Auditor::begin_run`]); `None` until a run
    /// begins, and after it ended.
    pub(crate) note: Mutex<Option<RunNote>>,
    /// The audit key, once found or made (see `Core::setup_audit_key`).
    pub(crate) key: Mutex<Option<AuditKey>>,
}

/// A streak of failed writes of the trail, for saying it once.
pub(crate) struct Streak {
    pub(crate) since: std::time::Instant,
    pub(crate) attempts: u64,
    pub(crate) last_said: std::time::Instant,
    /// Use events dropped during the streak (beyond [`MAX_PENDING`]).
    pub(crate) dropped: u64,
    /// Why the last attempt failed, in words ([`cause_of`]).
    pub(crate) cause: String,
}

/// Why the store refused a write, in words an administrator acts on: a
/// full disk and a read-only store are named as such.
pub fn cause_of(e: &keyward_inventory::Error) -> String {
    let said = e.to_string();
    let lower = said.to_lowercase();
    if lower.contains("disk is full") || lower.contains("no space left") {
        format!("no space left on the state directory's file system ({said})")
    } else if lower.contains("readonly") || lower.contains("read-only") {
        format!("the store is read-only ({said})")
    } else {
        said
    }
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
pub(crate) struct Stats {
    pub(crate) records: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) lost: AtomicU64,
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
    pub(crate) fn new(log: Arc<dyn AuditLog>, config: &AuditConfig) -> Arc<Auditor> {
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
            key: Mutex::new(None),
        })
    }

    /// The audit key in use, if any.
    pub fn key(&self) -> Option<AuditKey> {
        *self.key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `key` in use for checkpoints (and hides it from applications).
    pub fn set_key(&self, key: AuditKey) {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
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

    /// Why the trail cannot be written now (`None`: it can).
    pub fn failure_cause(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        streak.as_ref().map(|st| st.cause.clone())
    }

    /// The refusal of a change the trail cannot record, with its cause.
    pub fn cannot_write(&self) -> String {
        match self.failure_cause() {
            Some(cause) => format!("the audit trail cannot be written: {cause}"),
            None => "the audit trail cannot be written".to_owned(),
        }
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
        let now = crate::clock::now()
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

    pub(crate) fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
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
    pub(crate) fn take(&self) -> (Vec<AuditEvent>, u64) {
        let taken_us = now_us();
        (self.queue().take(), taken_us)
    }

    /// Appends `e` durably (after what is queued) before returning.
    /// `Err` means the trail could not be written: fail closed.
    pub fn durable(&self, e: AuditEvent) -> Result<(), String> {
        self.durable_all(vec![e])
    }

    /// [`Self::durable`], and when the trail cannot be written now the
    /// event is held with the queued ones and written once it can: for
    /// what the agent itself records (its start and stop, a step of the
    /// clock), which nothing waits on and which must not be lost.
    pub fn durable_or_held(&self, e: AuditEvent) {
        if let Err(why) = self.durable(e.clone()) {
            log::warn!(
                "audit: {} {}: {why}; held until it can be written",
                e.kind,
                e.operation
            );
            self.record(e);
        }
    }

    /// [`Self::durable`] of several events, in one append.
    pub fn durable_all(&self, events: Vec<AuditEvent>) -> Result<(), String> {
        let _writing = self.writing();
        let (mut batch, taken_us) = self.take();
        let n = events.len();
        batch.extend(events);
        match self.append(batch, true, taken_us) {
            Ok(()) => Ok(()),
            Err(mut batch) => {
                // The durable events are refused (fail closed); what was
                // queued before them is written later.
                batch.truncate(batch.len() - n);
                self.requeue(batch);
                Err(self.cannot_write())
            }
        }
    }

    /// Applies a lifecycle change whose trail records (`change.trail`) the
    /// inventory writes in the change's own transaction: what is queued is
    /// appended first (so the trail keeps the order events happened in),
    /// then the change, under the writing lock, and the records are
    /// counted, forwarded to syslog and noted as the writer's own are.
    /// [`CommitError::Trail`] when what is queued cannot be written: the
    /// change is not applied (fail closed). With `request` (an id and an
    /// outcome) the change is that approved request's execution
    /// (`Inventory::apply_approved`).
    pub fn commit(
        &self,
        inventory: &dyn keyward_inventory::Inventory,
        change: &keyward_inventory::LifecycleChange,
        request: Option<(&str, &str)>,
    ) -> Result<keyward_inventory::AppliedChange, CommitError> {
        let _writing = self.writing();
        let (batch, taken_us) = self.take();
        if let Err(batch) = self.append(batch, false, taken_us) {
            self.requeue(batch);
            return Err(CommitError::Trail);
        }
        let done = match request {
            None => inventory.apply(change),
            Some((id, outcome)) => inventory.apply_approved(change, id, outcome),
        }
        .map_err(CommitError::Store)?;
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
    pub(crate) fn requeue(&self, mut batch: Vec<AuditEvent>) {
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
    pub(crate) fn append(
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
                        cause: cause_of(&e),
                    });
                    log::error!(
                        "audit: THE TRAIL CANNOT BE WRITTEN ({}); {} records held in memory; \
                         admin and lifecycle actions are refused until it can{} (said again \
                         every {} s while it lasts, and when it ends)",
                        cause_of(&e),
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
                    st.cause = cause_of(&e);
                    if now.duration_since(st.last_said) >= FAILURE_REMINDER {
                        st.last_said = now;
                        log::error!(
                            "audit: the trail still cannot be written ({}), for {} s and {} \
                             attempts; {} records held in memory, {} use events dropped",
                            cause_of(&e),
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
pub(crate) fn writer(auditor: Weak<Auditor>) {
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

/// The run note's side of the writer (see [`super::run`]).
impl Auditor {
    /// The queue outgrew what the run note reserves: the note reserves more
    /// before the event is acknowledged. Rare (the writer reserves ahead at
    /// every batch, with room for twice the last interval's events).
    pub(crate) fn reserve(&self, q: &mut Queue) {
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

    pub(crate) fn note(&self) -> std::sync::MutexGuard<'_, Option<RunNote>> {
        self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer's note after each batch: the progress, and a reservation
    /// of twice the events of the last interval (at least
    /// [`MIN_HEADROOM`]) ahead of what is queued. Written under the queue's
    /// lock (one small write, a few times a second at most), so that the
    /// reservation can also shrink again: nothing is queued meanwhile.
    /// Nothing is written when nothing changed.
    pub(crate) fn note_progress(&self) {
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
    pub(crate) fn gap_after(&self, bytes: &[u8], now: u64) -> Option<AuditEvent> {
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

    /// The time of the newest of the trail's last records that `host`
    /// wrote (`None`: a single agent's trail; in a shared trail the other
    /// agents' clocks do not count), or `None` (an empty trail, or one that
    /// cannot be read): the clock's high-water mark at start.
    pub fn newest_record_time(&self, host: Option<&str>) -> Option<SystemTime> {
        let tail = self.log.tail(64).ok()?;
        tail.iter()
            .filter(|r| r.host.as_deref() == host)
            .map(|r| {
                crate::clock::from_us(
                    u64::try_from(r.event.at).unwrap_or(0) * 1_000_000 + u64::from(r.event.micros),
                )
            })
            .max()
    }

    /// Ends the run (after the last flush and checkpoint): the note says
    /// it ended cleanly, synced, and the next start records no gap; unless
    /// events are still held (the trail cannot be written), which the next
    /// start then records as possibly missing.
    pub fn end_run(&self) {
        self.flush();
        let mut q = self.queue();
        // What the trail could not take (a full disk, a read-only store)
        // is lost with the process: the stop is not clean, and the next
        // start records what may be missing.
        let held = q.events as u64 + self.lost.load(Ordering::Relaxed);
        if held > 0 {
            log::error!(
                "audit: {held} events could not be written before the stop ({}); the next \
                 start records that they may be missing",
                self.failure_cause()
                    .unwrap_or_else(|| "the trail cannot be written".into())
            );
        }
        let mut note = self.note();
        if let Some(mut n) = note.take() {
            let state = NoteState {
                clean: held == 0,
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
}
