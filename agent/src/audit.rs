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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_inventory::{Actor, AuditEvent, AuditKind, AuditLog};

use crate::identity::Peer;

/// Most events one batch appends.
pub const BATCH: usize = 256;
/// Longest a queued event waits for its batch.
pub const LINGER: Duration = Duration::from_millis(200);

/// The agent's writer of the audit trail.
pub struct Auditor {
    log: Arc<dyn AuditLog>,
    queue: Mutex<Vec<AuditEvent>>,
    wake: Condvar,
    failing: AtomicBool,
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
    }
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
    /// An auditor over `log`, with its writer thread.
    pub fn start(log: Arc<dyn AuditLog>) -> Arc<Auditor> {
        let auditor = Arc::new(Auditor {
            log,
            queue: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            failing: AtomicBool::new(false),
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

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<AuditEvent>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a use or refusal for the next batch.
    pub fn record(&self, e: AuditEvent) {
        let mut q = self.queue();
        q.push(e);
        if q.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    /// Appends everything queued now.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.queue());
        self.append(&batch, false);
    }

    /// Appends `e` durably (after what is queued) before returning.
    /// `Err` means the trail could not be written: fail closed.
    pub fn durable(&self, e: AuditEvent) -> Result<(), String> {
        let mut batch = std::mem::take(&mut *self.queue());
        batch.push(e);
        if self.append(&batch, true) {
            Ok(())
        } else {
            Err("the audit trail cannot be written".into())
        }
    }

    fn append(&self, batch: &[AuditEvent], durable: bool) -> bool {
        if batch.is_empty() {
            return true;
        }
        match self.log.append(batch, durable) {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::error!("audit: the trail is written again");
                }
                true
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "audit: THE TRAIL CANNOT BE WRITTEN ({e}); {} events lost; admin and lifecycle actions are refused until it can",
                        batch.len()
                    );
                } else {
                    log::error!("audit: {} more events lost ({e})", batch.len());
                }
                false
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
        let batch = {
            let q = a.queue();
            let (mut q, _) = a
                .wake
                .wait_timeout_while(q, LINGER, |q| q.len() < BATCH)
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *q)
        };
        a.append(&batch, false);
        drop(a);
    }
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
                // No checkpoint is signed yet (the HSM audit key comes with
                // checkpoints): a checkpoint that claims a signature fails.
                match log.verify(&|_, _| false) {
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
    }
}
