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
        count: 1,
        span_us: 0,
    }
}

/// An event of client process `client` (actor: its application).
pub fn for_client(client: &crate::client::Client, kind: AuditKind, operation: &str) -> AuditEvent {
    event(
        kind,
        application(&client.peer, &client.application),
        operation,
    )
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
    }
}

/// The `CKA_ID` of the audit key in the HSM: an EC P-256 key pair the agent
/// makes at its first start and signs checkpoints with. Applications never
/// see it.
pub const AUDIT_KEY_ID: &[u8] = b"keyward-audit-key";

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
    /// Finds the audit key on the first available backend token, making it
    /// (inside the HSM) at the first start.
    pub fn setup_audit_key(&self) {
        use cryptoki_sys as ck;
        use keyward_protocol::{Attribute, Mechanism};
        for (slot, token) in self.tokens.iter().enumerate() {
            let Ok(backend) = token.backend() else {
                continue;
            };
            let found = |class: u64| {
                backend
                    .find_objects(
                        backend.anchor_session(),
                        &[
                            Attribute::ulong(ck::CKA_CLASS, class),
                            Attribute::bytes(ck::CKA_ID, AUDIT_KEY_ID.to_vec()),
                        ],
                    )
                    .ok()
                    .and_then(|v| v.first().copied())
            };
            let pair = match (found(ck::CKO_PRIVATE_KEY), found(ck::CKO_PUBLIC_KEY)) {
                (Some(private), Some(public)) => Ok((public, private)),
                _ => {
                    let common = |private: bool| {
                        vec![
                            Attribute::bool(ck::CKA_TOKEN, true),
                            Attribute::bool(ck::CKA_PRIVATE, private),
                            Attribute::bytes(ck::CKA_LABEL, b"keyward-audit".to_vec()),
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
                    backend.generate_key_pair(
                        backend.anchor_session(),
                        &Mechanism::plain(ck::CKM_EC_KEY_PAIR_GEN),
                        &public,
                        &private,
                    )
                }
            };
            match pair {
                Ok((public, private)) => {
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
        log::error!("audit: no backend token: checkpoints cannot be signed");
    }

    /// Whether `object` on `slot` is the audit key (hidden from applications).
    pub fn is_audit_key(&self, slot: usize, object: crate::backend::BackendObject) -> bool {
        self.audit_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|k| k.slot == slot && (k.private == object || k.public == object))
    }

    /// ECDSA over SHA-256 of `message` with the audit key, on a session of
    /// its own.
    fn audit_sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        use keyward_protocol::{Mechanism, Op};
        use sha2::Digest;
        let key = (*self.audit_key.lock().unwrap_or_else(|p| p.into_inner()))?;
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
        use keyward_protocol::{Mechanism, Op};
        use sha2::Digest;
        let Some(key) = *self.audit_key.lock().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        let Ok(backend) = self.tokens[key.slot].backend() else {
            return false;
        };
        let digest = sha2::Sha256::digest(message);
        let Ok(s) = backend.open_session(false) else {
            return false;
        };
        let mech = Mechanism::plain(cryptoki_sys::CKM_ECDSA);
        let ok = backend
            .op_init(s, Op::Verify, &mech, Some(key.public))
            .and_then(|()| backend.verify(s, &digest, signature))
            .is_ok();
        let _ = backend.close_session(s);
        ok
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
