//! The agent's request handling: virtual tokens, client sessions and
//! handles, virtual login, and the forwarding of every call to the backend.
//!
//! Locks: the clients map and the session-object registry are held only to
//! look up or update; each client's tables ([`Client::lock`]) likewise. No
//! lock is held across a backend call, so two threads of one client using
//! different sessions, and different clients, reach the backend in parallel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use cryptoki_sys as ck;
use keyward_protocol::admin::{Status, TokenStatus};
use keyward_protocol::message::OpInit;
use keyward_protocol::{
    AttrResult, AttrValue, Attribute, HelloReply, MechParam, Mechanism, Op, Request, Response,
    SessionInfo, SlotInfo, TokenInfo, Value, VersionRange, VersionRefusal, ADMIN_VERSIONS,
    APP_VERSIONS,
};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendObject};
use crate::client::{ActiveOp, Client, Closed, Login, ObjectRef, Session, Slot, UseTarget};
use crate::config::{Config, TokenConfig};
use crate::error::{Error, Result};
use crate::identity::{ClientKey, Peer};
use keyward_policy::{Operation, Policy};

use crate::audit::{self, Auditor};
use crate::keys::{self, ManagedKeys, ManagedRef};
use crate::objects;
use crate::state::{
    pin_len_ok, PinCheck, PinRef, Role, StateDir, TokenState, MAX_PIN_LEN, MIN_PIN_LEN,
};
use keyward_inventory::AuditKind;

// CK_ULONG is the wire's u64 on the LP64 targets the agent supports (see
// the assertion in lib.rs), so constants pass through unconverted.
const CKA_TOKEN: u64 = ck::CKA_TOKEN;
const CKA_PRIVATE: u64 = ck::CKA_PRIVATE;
const CKA_ID: u64 = ck::CKA_ID;
const CKA_LABEL: u64 = ck::CKA_LABEL;
const CKU_SO: u64 = ck::CKU_SO;
const CKU_USER: u64 = ck::CKU_USER;
const CKU_CONTEXT_SPECIFIC: u64 = ck::CKU_CONTEXT_SPECIFIC;
const CKF_RW_SESSION: u64 = ck::CKF_RW_SESSION;
const CKF_SERIAL_SESSION: u64 = ck::CKF_SERIAL_SESSION;
/// Largest `C_GenerateRandom` served in one call.
pub const MAX_RANDOM: u64 = 1 << 20;

/// Session counts of one token, across all clients.
#[derive(Debug, Default)]
struct Counts {
    sessions: u64,
    rw_sessions: u64,
    /// `C_InitToken` is running: no session may open.
    initializing: bool,
}

/// A virtual token and the backend token behind it.
#[derive(Debug)]
pub struct VirtualToken {
    /// Its configuration.
    pub config: TokenConfig,
    /// Its stored PIN hashes and label.
    pub state: TokenState,
    /// The backend, or why it is unavailable.
    pub backend: std::result::Result<Arc<dyn Backend>, String>,
    counts: Mutex<Counts>,
}

impl VirtualToken {
    /// A token over `backend`.
    pub fn new(
        config: TokenConfig,
        state: TokenState,
        backend: std::result::Result<Arc<dyn Backend>, String>,
    ) -> VirtualToken {
        VirtualToken {
            config,
            state,
            backend,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn backend(&self) -> Result<&Arc<dyn Backend>> {
        self.backend.as_ref().map_err(|_| Error::TokenNotPresent)
    }

    /// The label applications see: the one `C_InitToken` set, else the
    /// configured one.
    fn label(&self) -> String {
        match self.state.label() {
            Ok(Some(l)) => l,
            _ => self.config.label.clone(),
        }
    }
}

/// Who owns a session object: other clients never see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    client: ClientKey,
    session: u64,
}

/// The agent: tokens, clients, and the session-object registry.
#[derive(Debug)]
pub struct Agent {
    pub(crate) tokens: Vec<VirtualToken>,
    /// The policy in force; a reload swaps it whole.
    policy: arc_swap::ArcSwap<Policy>,
    pub(crate) keys: ManagedKeys,
    pub(crate) audit: Arc<Auditor>,
    pub(crate) audit_key: Mutex<Option<audit::AuditKey>>,
    /// The agent's own uid: in lab mode, peers running as it are admitted.
    uid: u32,
    clients: Mutex<HashMap<ClientKey, (Arc<Client>, usize)>>,
    session_objects: Mutex<HashMap<(Slot, BackendObject), Owner>>,
    /// What use records name each key object (see [`Agent::use_target`]).
    use_targets: Mutex<HashMap<(Slot, BackendObject), Arc<UseTarget>>>,
    /// Held (read) by every cryptographic request while it checks its key
    /// and runs; a lifecycle change that takes rights away takes it (write)
    /// once after the change, so it returns only when no request that
    /// passed the old check is still running, and its record follows all
    /// their use records in the trail.
    pub(crate) in_flight: std::sync::RwLock<()>,
    instance: u64,
    started: Instant,
    socket: String,
}

/// Objects the backend just created for a client, for [`Agent::adopt`]:
/// whether they are token objects (when the templates say), and the managed
/// key version they are.
struct NewObjects<'a> {
    objects: &'a [BackendObject],
    token: Option<bool>,
    managed: Option<ManagedRef>,
}

/// A search result: the backend object, the client session owning it (a
/// session object), and the managed key version it is.
type Found = (BackendObject, Option<u64>, Option<ManagedRef>);

/// The application name of a peer the lab policy admits without listing it.
pub const LAB_APPLICATION: &str = "lab";

/// `CKU_*` for the trail.
fn user_type_name(user_type: u64) -> &'static str {
    match user_type {
        ck::CKU_SO => "CKU_SO",
        ck::CKU_USER => "CKU_USER",
        ck::CKU_CONTEXT_SPECIFIC => "CKU_CONTEXT_SPECIFIC",
        _ => "unknown user type",
    }
}

/// The policy operation of a cryptographic operation kind.
fn operation(op: Op) -> Operation {
    match op {
        Op::Encrypt => Operation::Encrypt,
        Op::Decrypt => Operation::Decrypt,
        Op::Digest => Operation::Digest,
        Op::Sign | Op::SignRecover => Operation::Sign,
        Op::Verify | Op::VerifyRecover => Operation::Verify,
    }
}

/// The `CK_RV` a call's result answers.
fn rv_of<T>(r: &Result<T>) -> u64 {
    r.as_ref().err().map_or(ck::CKR_OK, |e| e.rv())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert or remove, so the
    // data is consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value of `attr_type` in `template` if it is a boolean.
fn template_bool(template: &[Attribute], attr_type: u64) -> Option<bool> {
    template
        .iter()
        .find(|a| a.attr_type == attr_type)
        .and_then(Attribute::as_bool)
}

fn result_bool(r: Option<&AttrResult>) -> Option<bool> {
    match r {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Bool(b)))) => Some(*b),
        _ => None,
    }
}

/// `CK_TOKEN_INFO.serialNumber` of a virtual token: 16 hex characters of
/// SHA-256 over the configured label and the backend serial, stable across
/// `C_InitToken` and distinct per virtual token.
pub fn virtual_serial(label: &str, backend_serial: &str) -> String {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0]);
    h.update(backend_serial.as_bytes());
    crate::admin::hex(&h.finalize()[..8])
}

impl Agent {
    /// An agent serving `tokens` (slot ids are their positions).
    pub fn new(
        tokens: Vec<VirtualToken>,
        socket: String,
        keys: ManagedKeys,
        audit: Arc<Auditor>,
    ) -> Agent {
        let mut instance = [0u8; 8];
        if getrandom::getrandom(&mut instance).is_err() {
            // Still distinct per start in practice: nanoseconds since epoch.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            instance = (t.as_nanos() as u64).to_le_bytes();
        }
        Agent {
            tokens,
            policy: arc_swap::ArcSwap::from_pointee(Policy::lab()),
            keys,
            audit,
            audit_key: Mutex::new(None),
            uid: nix::unistd::getuid().as_raw(),
            clients: Mutex::new(HashMap::new()),
            session_objects: Mutex::new(HashMap::new()),
            use_targets: Mutex::new(HashMap::new()),
            in_flight: std::sync::RwLock::new(()),
            instance: u64::from_le_bytes(instance),
            started: Instant::now(),
            socket,
        }
    }

    /// The same agent under `policy`.
    pub fn with_policy(self, policy: Policy) -> Agent {
        self.policy.store(Arc::new(policy));
        self
    }

    /// Puts `policy` in force for every request from now on. Clients keep
    /// the application they were identified as when they connected.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The policy in force.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The application `peer` is to the policy in force: a listed
    /// application's name, or [`LAB_APPLICATION`] for a local peer running
    /// as root or as the agent's user that lab mode admits without one.
    /// `None`: an unknown peer, which gets no token.
    pub fn application_of(&self, peer: &Peer) -> Option<String> {
        match self
            .policy()
            .admit(peer.uid, peer.gid, peer.exe.as_deref(), self.uid)?
        {
            // The path /proc shows can be another file in another mount
            // namespace: the file itself must be the one the policy names.
            keyward_policy::Peer::Application(app) => match &app.exe {
                Some(exe) if !peer.runs(exe) => {
                    log::warn!(
                        "{peer}: runs another file than {} (device and inode differ): not application {:?}",
                        exe.display(),
                        app.name
                    );
                    None
                }
                _ => Some(app.name.clone()),
            },
            _ => Some(LAB_APPLICATION.to_owned()),
        }
    }

    /// Checks a use of object `o` for operation `op`: nothing for unmanaged
    /// objects; for a managed key version, [`keys::check_use`]. A refusal
    /// is logged with its reason and answered with its code.
    fn check_key_use(
        &self,
        client: &Client,
        managed: Option<ManagedRef>,
        op: Operation,
    ) -> Result<()> {
        let Some(m) = managed else { return Ok(()) };
        let Some(key) = self.keys.key(m.key_id) else {
            return Err(Error::KeyHandleInvalid);
        };
        let now = SystemTime::now();
        match keys::check_use(&self.policy(), &key, m, &client.application, op, now) {
            Ok(()) => {
                self.keys.note_use(m.key_id, keys::secs(now));
                Ok(())
            }
            Err(refusal) => {
                let rv = refusal.ckr();
                let reason = refusal.to_string();
                let key = Some((&*key, m.version));
                self.note_refusal(client, op.name(), key, None, rv, &reason);
                Err(Error::Refused(rv))
            }
        }
    }

    /// What the use records of object `o` (on `s`'s token) name: cached
    /// per backend object, read from the HSM once. `None` when uses are
    /// not recorded.
    fn use_target(&self, s: &Session, o: &ObjectRef) -> Option<Arc<UseTarget>> {
        if !self.audit.records_uses() {
            return None;
        }
        if let Some(t) = lock(&self.use_targets).get(&(o.slot, o.backend)) {
            return Some(t.clone());
        }
        let token = self.tokens.get(o.slot)?.config.label.clone();
        let target = match o.managed.and_then(|m| Some((m, self.keys.key(m.key_id)?))) {
            Some((m, key)) => UseTarget {
                token,
                key: key.record.name.clone(),
                version: Some(m.version),
            },
            None => {
                let attrs = s
                    .backend
                    .get_attributes(s.backend_session, o.backend, &[CKA_LABEL, CKA_ID])
                    .unwrap_or_default();
                let value = |i: usize| match attrs.get(i) {
                    Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(v)))) => v.as_slice(),
                    _ => &[],
                };
                let key = crate::admin::unmanaged_name(value(0), value(1))
                    .unwrap_or_else(|| format!("handle:{}", o.backend));
                UseTarget {
                    token,
                    key,
                    version: None,
                }
            }
        };
        let target = Arc::new(target);
        lock(&self.use_targets).insert((o.slot, o.backend), target.clone());
        Some(target)
    }

    /// Forgets what use records name the objects of `slot` for which
    /// `gone` holds (destroyed, relabelled, or their session closed).
    pub(crate) fn forget_use_targets(&self, mut gone: impl FnMut(&(Slot, BackendObject)) -> bool) {
        lock(&self.use_targets).retain(|k, _| !gone(k));
    }

    /// Records the end of operation `op` on `s` with `r`'s result, and
    /// ends it there, unless `r` only asked for a bigger buffer (the
    /// operation goes on, as PKCS#11 says).
    fn end_op<T>(&self, client: &Client, s: &Session, op: Op, r: Result<T>) -> Result<T> {
        let rv = rv_of(&r);
        if rv != ck::CKR_BUFFER_TOO_SMALL {
            let ended = lock(&s.active)[op.index()].take();
            if let Some(ActiveOp {
                target: Some(t),
                mechanism,
                ..
            }) = ended
            {
                self.audit
                    .record_use(client, operation(op).name(), Some(mechanism), &t, rv);
            }
        }
        r
    }

    /// The read side of [`Agent::in_flight`], for one cryptographic request.
    fn running(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.in_flight.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks of a single-call use of key `o` for `op` (wrap, unwrap,
    /// derive, digest of a key): the audit gate and the key's rights, under
    /// [`Agent::running`] (held until the call's use is recorded).
    fn begin_key_use(
        &self,
        client: &Client,
        o: &ObjectRef,
        op: Operation,
    ) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        let running = self.running();
        self.audit_gate(client, op.name())?;
        self.check_key_use(client, o.managed, op)?;
        Ok(running)
    }

    /// A single call that uses key `o` for `op` with `mechanism` (unwrap,
    /// derive): the key checks, the mechanism checks, `call`, and its use
    /// recorded with the result.
    fn call_with_key<T>(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        op: Operation,
        mechanism: &Mechanism,
        call: impl FnOnce(&Mechanism) -> Result<T>,
    ) -> Result<T> {
        let _running = self.begin_key_use(client, o, op)?;
        let m = self.mechanism(client, s.slot, mechanism)?;
        let r = call(&m);
        self.key_use(client, s, o, op.name(), Some(m.mechanism), &r);
        r
    }

    /// Records a single-call use of object `o` (wrap, unwrap, derive,
    /// digest of a key) with `r`'s result.
    fn key_use<T>(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        operation: &'static str,
        mechanism: Option<u64>,
        r: &Result<T>,
    ) {
        if let Some(t) = self.use_target(s, o) {
            self.audit
                .record_use(client, operation, mechanism, &t, rv_of(r));
        }
    }

    /// Refuses applications' operations while the trail cannot be written
    /// and `[audit] on_write_failure = "refuse"`.
    fn audit_gate(&self, client: &Client, operation: &str) -> Result<()> {
        if self.audit.refusing() {
            self.note_refusal(
                client,
                operation,
                None,
                None,
                ck::CKR_FUNCTION_FAILED,
                "the audit trail cannot be written (on_write_failure = refuse)",
            );
            return Err(Error::Refused(ck::CKR_FUNCTION_FAILED));
        }
        Ok(())
    }

    /// The policy for a key an application generates: under lab mode
    /// without a default class, none (a plain object); in strict mode
    /// without one, refused; otherwise the default class's generation rules
    /// are checked and its forced attributes applied to `templates` (one
    /// for a secret key, public then private for a pair), and the objects
    /// get a `CKA_ID` of their own if the application gave none.
    fn generation_policy(
        &self,
        client: &Client,
        mechanism: u64,
        templates: &mut [&mut Vec<Attribute>],
    ) -> Result<Option<keyward_policy::KeyClass>> {
        let refuse = |refusal| self.refuse(client, "generation", refusal);
        let policy = self.policy();
        let Some(class) = policy.class_for_generation().map_err(refuse)? else {
            return Ok(None);
        };
        match templates {
            [one] => {
                let adj = crate::admin::judge(one, |t| {
                    keyward_policy::check_generation(class, mechanism, t)
                })
                .map_err(refuse)?;
                crate::admin::apply(one, &adj);
            }
            [public, private] => {
                let adj = crate::admin::judge(public, |p| {
                    crate::admin::judge(private, |q| {
                        keyward_policy::check_key_pair_generation(class, mechanism, p, q)
                    })
                })
                .map_err(refuse)?;
                crate::admin::apply(public, &adj.public);
                crate::admin::apply(private, &adj.private);
            }
            _ => return Err(Error::ArgumentsBad),
        }
        let given = templates
            .iter()
            .find_map(|t| t.iter().find(|a| a.attr_type == CKA_ID).cloned());
        let id = match given {
            Some(a) => a,
            None => {
                let mut id = vec![0u8; 16];
                getrandom::getrandom(&mut id)
                    .map_err(|_| Error::Backend(ck::CKR_FUNCTION_FAILED))?;
                Attribute::bytes(CKA_ID, id)
            }
        };
        for t in templates.iter_mut() {
            t.retain(|a| a.attr_type != CKA_ID);
            t.push(id.clone());
        }
        Ok(Some(class.clone()))
    }

    /// The rules for a key derived from `base`: when `base` is a managed
    /// key, or in strict mode, the derived key is a sensitive,
    /// unextractable session object of one purpose, wrapping only where the
    /// class for application keys is for wrapping
    /// (`keyward_policy::check_derivation`); what the template asks against
    /// that is refused, the rest forced. A token object is refused rather
    /// than made a session object behind the application's back. Lab mode
    /// leaves keys derived from unmanaged keys as the application asked.
    fn derivation_policy(
        &self,
        client: &Client,
        base: &ObjectRef,
        template: &mut Vec<Attribute>,
    ) -> Result<()> {
        let policy = self.policy();
        if base.managed.is_none() && policy.mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let wrapping = matches!(
            policy.class_for_generation(),
            Ok(Some(c)) if c.purpose == keyward_policy::Purpose::Wrapping
        );
        let adj = crate::admin::judge(template, |t| keyward_policy::check_derivation(wrapping, t))
            .map_err(|refusal| self.refuse(client, "derivation", refusal))?;
        crate::admin::apply(template, &adj);
        Ok(())
    }

    /// Journals an application's generation under `class` that makes token
    /// objects, as an administrator's is: the `CKA_ID` that
    /// [`Agent::generation_policy`] put in the templates is noted as
    /// pending (durably) before the HSM makes anything, so that a crash
    /// before the inventory records the key leaves nothing behind: the
    /// next start destroys every object with that `CKA_ID` (a public half
    /// made without its private half too). `Some(id)`: end it with
    /// `end_pending` once the key is recorded or undone.
    fn journal_generation(
        &self,
        slot: usize,
        class: Option<&keyward_policy::KeyClass>,
        templates: &[&[Attribute]],
    ) -> Result<Option<Vec<u8>>> {
        if class.is_none()
            || !templates
                .iter()
                .any(|t| template_bool(t, CKA_TOKEN) == Some(true))
        {
            return Ok(None);
        }
        let id = templates
            .iter()
            .find_map(|t| t.iter().find(|a| a.attr_type == CKA_ID))
            .and_then(|a| match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            });
        let Some(id) = id else { return Ok(None) };
        let token = &self.tokens[slot];
        if let Err(e) = token.state.add_pending(&crate::admin::hex(&id)) {
            log::error!(
                "token {:?}: cannot note a generation as pending ({e}): refused",
                token.config.label
            );
            return Err(Error::Backend(ck::CKR_DEVICE_ERROR));
        }
        self.keys.set_pending(&token.config.label, &id, true);
        Ok(Some(id))
    }

    /// Records a key an application generated under `class` as a managed
    /// key (token objects only: a session key ends with its session). The
    /// application owns it; a failure to record it destroys the objects.
    fn manage(
        &self,
        client: &Client,
        s: &Session,
        class: Option<&keyward_policy::KeyClass>,
        template: &[Attribute],
        objects: (BackendObject, Option<BackendObject>),
    ) -> Result<Option<ManagedRef>> {
        let Some(class) = class else { return Ok(None) };
        if template_bool(template, CKA_TOKEN) != Some(true) {
            return Ok(None);
        }
        let id = match template
            .iter()
            .find(|a| a.attr_type == CKA_ID)
            .map(|a| &a.value)
        {
            Some(AttrValue::Leaf(Value::Bytes(b))) => b.clone(),
            _ => return Ok(None),
        };
        let label = template
            .iter()
            .find(|a| a.attr_type == ck::CKA_LABEL)
            .and_then(|a| match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) => String::from_utf8(b.clone()).ok(),
                _ => None,
            });
        let token = &self.tokens[s.slot];
        match self.manage_generated(
            token,
            class,
            objects,
            label.as_deref(),
            &id,
            &client.application,
        ) {
            Ok(m) => {
                if let Some(k) = self.keys.key(m.key_id) {
                    self.record_changes(
                        client.actor.clone(),
                        "create",
                        None,
                        &token.config.label,
                        &k.record.name,
                        "generated by the application",
                    );
                }
                Ok(Some(m))
            }
            Err(e) => {
                log::error!(
                    "{}: the key it generated could not be recorded ({}); destroying it",
                    client.peer,
                    e.message
                );
                let _ = s.backend.destroy_object(s.backend_session, objects.0);
                if let Some(p) = objects.1 {
                    let _ = s.backend.destroy_object(s.backend_session, p);
                }
                Err(Error::Backend(ck::CKR_DEVICE_ERROR))
            }
        }
    }

    /// Records a call that checked or set a PIN (never the PIN): a login
    /// record, or a PIN lockout record when the PIN was locked. A policy
    /// refusal is recorded where it is decided.
    fn record_pin_event(&self, client: &Client, operation: &str, r: &Result<Response>) {
        let rv = rv_of(r);
        if rv == ck::CKR_ACTION_PROHIBITED {
            return;
        }
        let kind = if rv == ck::CKR_PIN_LOCKED {
            AuditKind::PinLockout
        } else {
            AuditKind::Login
        };
        let mut e = audit::for_client(client, kind, operation);
        e.result = rv;
        self.audit.record(e);
    }

    /// Says why a call was refused, in the log and in the trail; `key` is
    /// the managed key version it concerned, if any.
    fn note_refusal(
        &self,
        client: &Client,
        operation: &str,
        key: Option<(&keys::KeyView, u32)>,
        mechanism: Option<u64>,
        rv: u64,
        reason: &str,
    ) {
        log::warn!(
            "{} (application {}): {operation}{} refused: {reason}",
            client.peer,
            client.application,
            key.map(|(k, v)| format!(" of key {:?} v{v}", k.record.name))
                .unwrap_or_default()
        );
        let mut e = audit::for_client(client, AuditKind::Refusal, operation);
        if let Some((k, v)) = key {
            e.token = Some(k.record.token.clone());
            e.key = Some(k.record.name.clone());
            e.key_version = Some(v);
        }
        e.mechanism = mechanism;
        e.result = rv;
        e.reason = reason.to_owned();
        self.audit.record(e);
    }

    /// A policy refusal of `operation`: noted, and answered with its code.
    fn refuse(&self, client: &Client, operation: &str, refusal: keyward_policy::Refusal) -> Error {
        self.note_refusal(
            client,
            operation,
            None,
            None,
            refusal.ckr(),
            &refusal.to_string(),
        );
        Error::Refused(refusal.ckr())
    }

    /// In strict mode, refuses `what` (`CKR_ACTION_PROHIBITED`) and logs
    /// why; in lab mode, allows it.
    fn strict_refusal(&self, client: &Client, what: String) -> Result<()> {
        if self.policy().mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let refusal = keyward_policy::Refusal::GenerationNotPermitted { reason: what };
        Err(self.refuse(client, "import", refusal))
    }

    /// In strict mode, refuses attribute values that weaken an object
    /// (sensitive off, extractable on, usage widened, ...:
    /// `keyward_policy::is_weakening`), with `CKR_ATTRIBUTE_READ_ONLY`.
    fn refuse_weakening(&self, client: &Client, template: &[Attribute]) -> Result<()> {
        if self.policy().mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let none = keyward_policy::Template {
            bools: &[],
            ulongs: &[],
            bytes: &[],
        };
        for a in template {
            let value = match &a.value {
                AttrValue::Leaf(Value::Bool(b)) => keyward_policy::AttrValue::Bool(*b),
                AttrValue::Leaf(Value::Ulong(u)) => keyward_policy::AttrValue::Ulong(*u),
                AttrValue::Leaf(Value::Bytes(b)) => keyward_policy::AttrValue::Bytes(b),
                _ => continue,
            };
            if keyward_policy::is_weakening(None, &none, a.attr_type, value) {
                let refusal = keyward_policy::Refusal::Weakening {
                    reason: format!("attribute {:#x} would weaken the object", a.attr_type),
                };
                return Err(self.refuse(client, "an attribute change", refusal));
            }
        }
        Ok(())
    }

    /// Refuses what would take a managed key out of management: changing
    /// its attributes, copying it, destroying it, or wrapping it out. Those
    /// are administrator actions (some need approval).
    fn refuse_managed(&self, client: &Client, o: &ObjectRef, what: &str) -> Result<()> {
        match o
            .managed
            .and_then(|m| Some((self.keys.key(m.key_id)?, m.version)))
        {
            Some((key, version)) => {
                self.note_refusal(
                    client,
                    what,
                    Some((&key, version)),
                    None,
                    ck::CKR_ACTION_PROHIBITED,
                    "a managed key: an administrator action",
                );
                Err(Error::ActionProhibited)
            }
            None => Ok(()),
        }
    }

    /// Refuses (`CKR_ACTION_PROHIBITED`, recorded) a template that would
    /// give an object on `slot`'s token a managed key's name or backend
    /// label, the `CKA_ID` of a managed key version (or one being
    /// generated), or the audit key's `CKA_ID` or label: an application
    /// cannot plant an object that other applications, or the agent, would
    /// take for a managed key. A key generated under the default class gets
    /// a name and `CKA_ID` of its own, so that path is not concerned.
    fn refuse_reserved(
        &self,
        client: &Client,
        slot: Slot,
        template: &[Attribute],
        what: &str,
    ) -> Result<()> {
        let token = &self.tokens[slot].config.label;
        // A certificate of a managed key's own public key is that key's
        // certificate: it may carry the key's name and CKA_ID.
        let certificate = template
            .iter()
            .any(|a| a.attr_type == ck::CKA_CLASS && a.as_ulong() == Some(ck::CKO_CERTIFICATE))
            .then(|| {
                template.iter().find_map(|a| match &a.value {
                    AttrValue::Leaf(Value::Bytes(v)) if a.attr_type == ck::CKA_VALUE => {
                        keys::certificate_fingerprint(v)
                    }
                    _ => None,
                })
            })
            .flatten();
        let its_own = |key: Option<Arc<keys::KeyView>>| {
            certificate.is_some_and(|fp| {
                key.is_some_and(|k| {
                    k.versions
                        .iter()
                        .any(|v| v.fingerprint.as_deref() == Some(&fp[..]))
                })
            })
        };
        for a in template {
            let AttrValue::Leaf(Value::Bytes(b)) = &a.value else {
                continue;
            };
            let why = match a.attr_type {
                CKA_LABEL
                    if b.as_slice() == audit::AUDIT_KEY_LABEL
                        || (self.keys.is_managed_label(token, b)
                            && !its_own(self.keys.key_by_label(token, b))) =>
                {
                    format!(
                        "CKA_LABEL {:?} names a managed key",
                        String::from_utf8_lossy(&b[..b.len().min(256)])
                    )
                }
                CKA_ID
                    if b.as_slice() == audit::AUDIT_KEY_ID
                        || self.keys.is_pending(token, b)
                        || self
                            .keys
                            .lookup(token, b)
                            .is_some_and(|m| !its_own(self.keys.key(m.key_id))) =>
                {
                    format!(
                        "CKA_ID {} belongs to a managed key",
                        crate::admin::hex(&b[..b.len().min(128)])
                    )
                }
                _ => continue,
            };
            self.note_refusal(client, what, None, None, ck::CKR_ACTION_PROHIBITED, &why);
            return Err(Error::ActionProhibited);
        }
        Ok(())
    }

    /// Refuses a mechanism outside the policy's allow-list
    /// (`CKR_MECHANISM_INVALID`), saying why in the log.
    fn check_mechanism(&self, client: &Client, mechanism: u64) -> Result<()> {
        self.policy().check_mechanism(mechanism).map_err(|refusal| {
            let rv = refusal.ckr();
            let reason = refusal.to_string();
            self.note_refusal(client, "mechanism use", None, Some(mechanism), rv, &reason);
            Error::Refused(rv)
        })
    }

    /// Builds the agent from `config`: loads each library once, finds and
    /// logs in to each backend token. A backend that cannot be opened is
    /// logged and its slot shows no token; the agent still starts.
    pub fn from_config(config: &Config) -> std::io::Result<Agent> {
        let state = StateDir::open(&config.agent.state_dir)?;
        let mut libs: HashMap<std::path::PathBuf, std::result::Result<_, String>> = HashMap::new();
        let mut tokens = Vec::new();
        for t in &config.tokens {
            let lib = libs
                .entry(t.library.clone())
                .or_insert_with(|| crate::backend::ffi::Library::load(&t.library))
                .clone();
            let backend = lib.and_then(|lib| {
                let pin = t
                    .backend_pin
                    .read()
                    .map_err(|e| format!("backend_pin: {e}"))?;
                crate::backend::ffi::Token::open(lib, &t.selector(), pin)
                    .map(|tok| Arc::new(tok) as Arc<dyn Backend>)
            });
            match &backend {
                Ok(_) => log::info!("token {:?}: backend {} ready", t.label, t.library.display()),
                Err(e) => log::error!("token {:?}: backend unavailable: {e}", t.label),
            }
            let token_state = state.token(&t.label);
            token_state.remove_stale_temporaries();
            tokens.push(VirtualToken::new(t.clone(), token_state, backend));
        }
        let store = config.agent.state_dir.join("inventory.sqlite");
        let inventory = Arc::new(
            keyward_inventory::SqliteInventory::open(&store)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let keys = ManagedKeys::open(inventory.clone())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", store.display())))?;
        Ok(Agent::new(
            tokens,
            config.agent.socket.display().to_string(),
            keys,
            Auditor::with_config(inventory, &config.audit),
        ))
    }

    /// The random instance id of this start.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Registers a connection of `peer`, identified as `application`
    /// ([`Agent::application_of`]); all connections of one process share
    /// one client (the first connection's identity).
    pub fn connect(&self, peer: Peer, application: String) -> Arc<Client> {
        let mut clients = lock(&self.clients);
        let entry = clients.entry(peer.key).or_insert_with(|| {
            let client = Client::new(peer.clone(), application, self.tokens.len());
            (Arc::new(client), 0)
        });
        entry.1 += 1;
        entry.0.clone()
    }

    /// Unregisters a connection; the last one of a process closes all of
    /// that client's backend sessions (destroying its session objects) and
    /// forgets its handles.
    pub fn disconnect(&self, client: &Arc<Client>) {
        {
            let mut clients = lock(&self.clients);
            let Some(entry) = clients.get_mut(&client.peer.key) else {
                return;
            };
            if !Arc::ptr_eq(&entry.0, client) {
                return;
            }
            entry.1 -= 1;
            if entry.1 > 0 {
                return;
            }
            clients.remove(&client.peer.key);
        }
        let closed = client.lock().remove_sessions(None);
        let n = closed.sessions.len();
        self.close_backend(client, closed);
        log::debug!("client {} gone; closed {n} sessions", client.peer);
    }

    /// How many client processes are connected.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Closes every client's sessions (at shutdown).
    pub fn close_all(&self) {
        let clients: Vec<Arc<Client>> = lock(&self.clients).drain().map(|(_, (c, _))| c).collect();
        for c in clients {
            let closed = c.lock().remove_sessions(None);
            self.close_backend(&c, closed);
        }
    }

    fn close_backend(&self, client: &Client, closed: Closed) {
        if closed.sessions.is_empty() {
            return;
        }
        // The backend destroys a session's objects with it; forget them all,
        // mapped or not.
        let mut gone = Vec::new();
        lock(&self.session_objects).retain(|k, o| {
            let keep = o.client != client.peer.key
                || !closed.sessions.iter().any(|(h, _)| *h == o.session);
            if !keep {
                gone.push(*k);
            }
            keep
        });
        if !gone.is_empty() {
            self.forget_use_targets(|k| gone.contains(k));
        }
        for (_, s) in closed.sessions {
            if let Err(e) = s.backend.close_session(s.backend_session) {
                log::debug!("closing backend session {}: {e}", s.backend_session);
            }
            let mut counts = self.tokens[s.slot].counts();
            counts.sessions = counts.sessions.saturating_sub(1);
            if s.rw {
                counts.rw_sessions = counts.rw_sessions.saturating_sub(1);
            }
        }
    }

    /// The virtual token labelled `label`.
    pub(crate) fn token_labelled(&self, label: &str) -> Option<&VirtualToken> {
        self.tokens.iter().find(|t| t.config.label == label)
    }

    fn token(&self, slot: u64) -> Result<(Slot, &VirtualToken)> {
        let i = usize::try_from(slot).map_err(|_| Error::SlotIdInvalid)?;
        self.tokens
            .get(i)
            .map(|t| (i, t))
            .ok_or(Error::SlotIdInvalid)
    }

    /// Answers one request of `client`.
    pub fn handle(&self, client: &Arc<Client>, req: Request) -> Response {
        match self.dispatch(client, req) {
            Ok(r) => r,
            Err(e) => Response::Err(e.rv()),
        }
    }

    /// The answer to `Hello` from a peer that speaks `theirs`: the highest
    /// application-protocol version both speak, or the agent's versions
    /// when there is none (see `keyward_protocol::version`).
    pub fn hello(&self, theirs: VersionRange) -> Response {
        match APP_VERSIONS.pick(theirs) {
            Ok(version) => Response::Hello(self.hello_reply(version)),
            Err(_) => Response::NoCommonVersion(VersionRefusal {
                versions: APP_VERSIONS,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        }
    }

    /// A `Hello` answer naming `version`.
    pub fn hello_reply(&self, version: u16) -> HelloReply {
        HelloReply {
            version,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: self.instance,
        }
    }

    fn dispatch(&self, client: &Arc<Client>, req: Request) -> Result<Response> {
        if let Some(mechanism) = req.mechanism() {
            self.check_mechanism(client, mechanism)?;
        }
        match req {
            Request::Hello { versions } => Ok(self.hello(versions)),
            Request::GetSlotList { token_present } => Ok(Response::List(
                self.tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| !token_present || t.backend.is_ok())
                    .map(|(i, _)| i as u64)
                    .collect(),
            )),
            Request::GetSlotInfo { slot } => self.slot_info(slot),
            Request::GetTokenInfo { slot } => self.token_info(client, slot),
            Request::GetMechanismList { slot } => {
                let (_, t) = self.token(slot)?;
                let mut list = t.backend()?.mechanism_list()?;
                list.retain(|&m| self.policy().mechanism_allowed(m));
                Ok(Response::List(list))
            }
            Request::GetMechanismInfo { slot, mechanism } => {
                let (_, t) = self.token(slot)?;
                if !self.policy().mechanism_allowed(mechanism) {
                    return Err(Error::Refused(ck::CKR_MECHANISM_INVALID));
                }
                Ok(Response::MechanismInfo(
                    t.backend()?.mechanism_info(mechanism)?,
                ))
            }
            Request::InitToken {
                slot,
                so_pin,
                label,
            } => {
                let r = self.init_token(client, slot, &so_pin, &label);
                self.forget_use_targets(|k| k.0 as u64 == slot);
                let mut e = audit::for_client(client, AuditKind::Lifecycle, "C_InitToken");
                e.token = self
                    .tokens
                    .get(slot as usize)
                    .map(|t| t.config.label.clone());
                e.result = r.as_ref().err().map_or(0, |e| e.rv());
                if r.is_ok() {
                    e.reason = "every object of the token destroyed, PINs reset".into();
                }
                // Durable: the token was just cleared.
                let _ = self.audit.durable(e);
                r
            }
            Request::InitPin { session, pin } => {
                let r = self.init_pin(client, session, &pin);
                self.record_pin_event(client, "C_InitPIN", &r);
                r
            }
            Request::SetPin {
                session,
                old_pin,
                new_pin,
            } => {
                let r = self.set_pin(client, session, &old_pin, &new_pin);
                self.record_pin_event(client, "C_SetPIN", &r);
                r
            }
            Request::OpenSession { slot, flags } => self.open_session(client, slot, flags),
            Request::CloseSession { session } => {
                let closed = client.lock().remove_session(session)?;
                self.close_backend(client, closed);
                Ok(Response::Unit)
            }
            Request::CloseAllSessions { slot } => {
                let (i, _) = self.token(slot)?;
                let closed = client.lock().remove_sessions(Some(i));
                self.close_backend(client, closed);
                Ok(Response::Unit)
            }
            Request::GetSessionInfo { session } => {
                let st = client.lock();
                let s = st.session(session)?;
                let state = match (st.login(s.slot), s.rw) {
                    (Login::Public, false) => ck::CKS_RO_PUBLIC_SESSION,
                    (Login::Public, true) => ck::CKS_RW_PUBLIC_SESSION,
                    (Login::User, false) => ck::CKS_RO_USER_FUNCTIONS,
                    (Login::User, true) => ck::CKS_RW_USER_FUNCTIONS,
                    (Login::So, _) => ck::CKS_RW_SO_FUNCTIONS,
                };
                Ok(Response::SessionInfo(SessionInfo {
                    slot_id: s.slot as u64,
                    state,
                    flags: CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 },
                    device_error: 0,
                }))
            }
            Request::Login {
                session,
                user_type,
                pin,
            } => {
                let r = self.login(
                    client,
                    session,
                    user_type,
                    pin.as_ref().map(|p| p.as_slice()),
                );
                let operation = format!("C_Login({})", user_type_name(user_type));
                self.record_pin_event(client, &operation, &r);
                r
            }
            Request::Logout { session } => self.logout(client, session),
            Request::CreateObject { session, template } => {
                let (s, login) = self.session(client, session)?;
                refuse_private(login, &template)?;
                self.refuse_reserved(client, s.slot, &template, "object creation")?;
                // Decoding guarantees a CKA_CLASS is a CK_ULONG, with one value.
                match template
                    .iter()
                    .find(|a| a.attr_type == ck::CKA_CLASS)
                    .and_then(Attribute::as_ulong)
                {
                    Some(class @ (ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY)) => {
                        let kind = if class == ck::CKO_PRIVATE_KEY {
                            "private"
                        } else {
                            "secret"
                        };
                        self.strict_refusal(
                            client,
                            format!("importing a {kind} key: keys are generated inside the HSM"),
                        )?;
                    }
                    Some(_) => {}
                    None => self.strict_refusal(
                        client,
                        "creating an object without CKA_CLASS: its kind cannot be checked".into(),
                    )?,
                }
                let h = s.backend.create_object(s.backend_session, &template)?;
                let hint = template_bool(&template, CKA_TOKEN).or(Some(false));
                let r = self.adopt_one(client, session, &s, login, h, hint)?;
                if let Response::Handle(handle) = r {
                    self.claim(client, &s, handle)?;
                }
                Ok(r)
            }
            Request::CopyObject {
                session,
                object,
                template,
            } => {
                let (s, login, o) =
                    self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
                refuse_private(login, &template)?;
                self.refuse_managed(client, &o[0], "a copy")?;
                self.refuse_reserved(client, s.slot, &template, "a copy")?;
                self.refuse_weakening(client, &template)?;
                let h = s
                    .backend
                    .copy_object(s.backend_session, o[0].backend, &template)?;
                let hint = template_bool(&template, CKA_TOKEN);
                let r = self.adopt_one(client, session, &s, login, h, hint)?;
                if let Response::Handle(handle) = r {
                    self.claim(client, &s, handle)?;
                }
                Ok(r)
            }
            Request::DestroyObject { session, object } => {
                let (s, _, o) =
                    self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
                self.refuse_managed(client, &o[0], "destruction")?;
                let owned = self.owned_identity(client, &s, &o[0], "destruction")?;
                s.backend.destroy_object(s.backend_session, o[0].backend)?;
                if let Some(id) = owned {
                    self.release(client, s.slot, &id);
                }
                self.forget_use_targets(|k| *k == (o[0].slot, o[0].backend));
                if let Some(o) = client.lock().unmap_object(object) {
                    if o.session.is_some() {
                        lock(&self.session_objects).remove(&(o.slot, o.backend));
                    }
                }
                Ok(Response::Unit)
            }
            Request::GetObjectSize { session, object } => {
                let (s, _, o) =
                    self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
                Ok(Response::Ulong(
                    s.backend.object_size(s.backend_session, o[0].backend)?,
                ))
            }
            Request::GetAttributeValue {
                session,
                object,
                types,
            } => {
                let (s, _, o) =
                    self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
                Ok(Response::Attributes(s.backend.get_attributes(
                    s.backend_session,
                    o[0].backend,
                    &types,
                )?))
            }
            Request::SetAttributeValue {
                session,
                object,
                template,
            } => {
                let (s, login, o) =
                    self.session_objects(client, session, &[(object, Error::ObjectHandleInvalid)])?;
                refuse_private(login, &template)?;
                self.refuse_managed(client, &o[0], "an attribute change")?;
                self.refuse_reserved(client, s.slot, &template, "an attribute change")?;
                self.refuse_weakening(client, &template)?;
                let owned = self.owned_identity(client, &s, &o[0], "an attribute change")?;
                s.backend
                    .set_attributes(s.backend_session, o[0].backend, &template)?;
                self.forget_use_targets(|k| *k == (o[0].slot, o[0].backend));
                if let Some(before) = owned {
                    // A new label or value is a new identity: recorded as
                    // the application's before the old one is let go.
                    let after =
                        objects::identify(s.backend.as_ref(), s.backend_session, o[0].backend)
                            .and_then(|(_, id)| id);
                    if after != Some(before) {
                        if let Err(e) = self.record_owner(client, &s, &o[0]) {
                            log::error!(
                                "client {}: a token object it changed is not recorded as its own \
                                 ({e}); it keeps its handle",
                                client.peer
                            );
                            return Err(Error::StateStore);
                        }
                        self.release(client, s.slot, &before);
                    }
                }
                Ok(Response::Unit)
            }
            Request::FindObjects { session, template } => {
                self.find_objects(client, session, template)
            }
            Request::OperationInit { session, op, init } => {
                let _running = self.running();
                self.op_init(client, session, op, &init)?;
                Ok(Response::Unit)
            }
            Request::Single {
                session,
                op,
                init,
                data,
            } => {
                if op == Op::Verify {
                    return Err(Error::ArgumentsBad);
                }
                let _running = self.running();
                let s = self.op_session(client, session, op, init.as_ref())?;
                let r = s.backend.single(s.backend_session, op, &data);
                Ok(Response::Data(self.end_op(client, &s, op, r)?))
            }
            Request::Verify {
                session,
                init,
                data,
                signature,
            } => {
                let _running = self.running();
                let s = self.op_session(client, session, Op::Verify, init.as_ref())?;
                let r = s.backend.verify(s.backend_session, &data, &signature);
                self.end_op(client, &s, Op::Verify, r)?;
                Ok(Response::Unit)
            }
            Request::Update {
                session,
                op,
                init,
                data,
            } => {
                let _running = self.running();
                let s = self.op_session(client, session, op, init.as_ref())?;
                match s.backend.update(s.backend_session, op, &data) {
                    Ok(out) => Ok(Response::Data(out)),
                    // A failed update ends the operation.
                    Err(e) => self.end_op(client, &s, op, Err(e)),
                }
            }
            Request::DigestKey { session, key } => {
                let (s, _, o) =
                    self.session_objects(client, session, &[(key, Error::KeyHandleInvalid)])?;
                let _running = self.begin_key_use(client, &o[0], Operation::Digest)?;
                let r = s.backend.digest_key(s.backend_session, o[0].backend);
                self.key_use(client, &s, &o[0], Operation::Digest.name(), None, &r);
                r?;
                Ok(Response::Unit)
            }
            Request::Final {
                session,
                op,
                init,
                data,
            } => {
                let _running = self.running();
                let s = self.op_session(client, session, op, init.as_ref())?;
                let r = if data.is_empty() {
                    Ok(())
                } else {
                    s.backend.update(s.backend_session, op, &data).map(drop)
                }
                .and_then(|()| s.backend.final_(s.backend_session, op));
                Ok(Response::Data(self.end_op(client, &s, op, r)?))
            }
            Request::VerifyFinal {
                session,
                init,
                data,
                signature,
            } => {
                let _running = self.running();
                let s = self.op_session(client, session, Op::Verify, init.as_ref())?;
                let r = if data.is_empty() {
                    Ok(())
                } else {
                    s.backend
                        .update(s.backend_session, Op::Verify, &data)
                        .map(drop)
                }
                .and_then(|()| s.backend.verify_final(s.backend_session, &signature));
                self.end_op(client, &s, Op::Verify, r)?;
                Ok(Response::Unit)
            }
            Request::GenerateKey {
                session,
                mechanism,
                template,
            } => {
                let (s, login) = self.session(client, session)?;
                refuse_private(login, &template)?;
                self.refuse_reserved(client, s.slot, &template, "generation")?;
                let mut template = template;
                let class =
                    self.generation_policy(client, mechanism.mechanism, &mut [&mut template])?;
                let m = self.mechanism(client, s.slot, &mechanism)?;
                let pending = self.journal_generation(s.slot, class.as_ref(), &[&template])?;
                let made = s.backend.generate_key(s.backend_session, &m, &template);
                let managed = made.and_then(|h| {
                    self.manage(client, &s, class.as_ref(), &template, (h, None))
                        .map(|m| (h, m))
                });
                if let Some(id) = &pending {
                    self.end_pending(&self.tokens[s.slot], id);
                }
                let (h, managed) = managed?;
                let hint = template_bool(&template, CKA_TOKEN).or(Some(false));
                self.adopt(
                    client,
                    session,
                    &s,
                    login,
                    NewObjects {
                        objects: &[h],
                        token: hint,
                        managed,
                    },
                )
                .map(|v| Response::Handle(v[0]))
            }
            Request::GenerateKeyPair {
                session,
                mechanism,
                public_template,
                private_template,
            } => {
                let (s, login) = self.session(client, session)?;
                refuse_private(login, &public_template)?;
                refuse_private(login, &private_template)?;
                self.refuse_reserved(client, s.slot, &public_template, "generation")?;
                self.refuse_reserved(client, s.slot, &private_template, "generation")?;
                let (mut public_template, mut private_template) =
                    (public_template, private_template);
                let class = self.generation_policy(
                    client,
                    mechanism.mechanism,
                    &mut [&mut public_template, &mut private_template],
                )?;
                let m = self.mechanism(client, s.slot, &mechanism)?;
                let pending = self.journal_generation(
                    s.slot,
                    class.as_ref(),
                    &[&public_template, &private_template],
                )?;
                let made = s.backend.generate_key_pair(
                    s.backend_session,
                    &m,
                    &public_template,
                    &private_template,
                );
                let managed = made.and_then(|(hpub, hpriv)| {
                    self.manage(
                        client,
                        &s,
                        class.as_ref(),
                        &private_template,
                        (hpriv, Some(hpub)),
                    )
                    .map(|m| (hpub, hpriv, m))
                });
                if let Some(id) = &pending {
                    self.end_pending(&self.tokens[s.slot], id);
                }
                let (hpub, hpriv, managed) = managed?;
                let hint_pub = template_bool(&public_template, CKA_TOKEN).unwrap_or(false);
                let hint_priv = template_bool(&private_template, CKA_TOKEN).unwrap_or(false);
                // One hint for both: known only when they agree.
                let hint = (hint_pub == hint_priv).then_some(hint_pub);
                let v = self.adopt(
                    client,
                    session,
                    &s,
                    login,
                    NewObjects {
                        objects: &[hpub, hpriv],
                        token: hint,
                        managed,
                    },
                )?;
                Ok(Response::KeyPair {
                    public: v[0],
                    private: v[1],
                })
            }
            Request::WrapKey {
                session,
                mechanism,
                wrapping_key,
                key,
            } => {
                let (s, _, o) = self.session_objects(
                    client,
                    session,
                    &[
                        (wrapping_key, Error::WrappingKeyHandleInvalid),
                        (key, Error::KeyHandleInvalid),
                    ],
                )?;
                let _running = self.begin_key_use(client, &o[0], Operation::Wrap)?;
                self.refuse_managed(client, &o[1], "wrapping out")?;
                let m = self.mechanism(client, s.slot, &mechanism)?;
                let r = s
                    .backend
                    .wrap_key(s.backend_session, &m, o[0].backend, o[1].backend);
                self.key_use(
                    client,
                    &s,
                    &o[0],
                    Operation::Wrap.name(),
                    Some(m.mechanism),
                    &r,
                );
                // The key that left the HSM wrapped: an export.
                self.key_use(client, &s, &o[1], "export", Some(m.mechanism), &r);
                Ok(Response::Data(r?))
            }
            Request::UnwrapKey {
                session,
                mechanism,
                unwrapping_key,
                wrapped_key,
                template,
            } => {
                let (s, login, o) = self.session_objects(
                    client,
                    session,
                    &[(unwrapping_key, Error::UnwrappingKeyHandleInvalid)],
                )?;
                refuse_private(login, &template)?;
                self.refuse_reserved(client, s.slot, &template, "unwrapping")?;
                self.strict_refusal(
                    client,
                    "unwrapping a key: keys are generated inside the HSM; restores are an administrator action".into(),
                )?;
                let h =
                    self.call_with_key(client, &s, &o[0], Operation::Unwrap, &mechanism, |m| {
                        s.backend.unwrap_key(
                            s.backend_session,
                            m,
                            o[0].backend,
                            &wrapped_key,
                            &template,
                        )
                    })?;
                let hint = template_bool(&template, CKA_TOKEN).or(Some(false));
                self.adopt_one(client, session, &s, login, h, hint)
            }
            Request::DeriveKey {
                session,
                mechanism,
                base_key,
                template,
            } => {
                let (s, login, o) =
                    self.session_objects(client, session, &[(base_key, Error::KeyHandleInvalid)])?;
                refuse_private(login, &template)?;
                self.refuse_reserved(client, s.slot, &template, "derivation")?;
                let mut template = template;
                self.derivation_policy(client, &o[0], &mut template)?;
                let h =
                    self.call_with_key(client, &s, &o[0], Operation::Derive, &mechanism, |m| {
                        s.backend
                            .derive_key(s.backend_session, m, o[0].backend, &template)
                    })?;
                let hint = template_bool(&template, CKA_TOKEN).or(Some(false));
                self.adopt_one(client, session, &s, login, h, hint)
            }
            Request::SeedRandom { session, seed } => {
                let (s, _) = self.session(client, session)?;
                s.backend.seed_random(s.backend_session, &seed)?;
                Ok(Response::Unit)
            }
            Request::GenerateRandom { session, len } => {
                let (s, _) = self.session(client, session)?;
                if len > MAX_RANDOM {
                    return Err(Error::ArgumentsBad);
                }
                Ok(Response::Data(
                    s.backend.generate_random(s.backend_session, len as usize)?,
                ))
            }
        }
    }

    /// The session and the client's login state on its token.
    fn session(&self, client: &Client, session: u64) -> Result<(Arc<Session>, Login)> {
        let st = client.lock();
        let s = st.session(session)?;
        let login = st.login(s.slot);
        Ok((s, login))
    }

    /// The session, the login state, and the backend handles of `objects`
    /// (each with the error an unknown handle gets), under one lock.
    fn session_objects(
        &self,
        client: &Client,
        session: u64,
        objects: &[(u64, Error)],
    ) -> Result<(Arc<Session>, Login, Vec<ObjectRef>)> {
        let st = client.lock();
        let s = st.session(session)?;
        let login = st.login(s.slot);
        let objects = objects
            .iter()
            .map(|&(h, err)| st.object(s.slot, h, err))
            .collect::<Result<Vec<_>>>()?;
        Ok((s, login, objects))
    }

    /// `mechanism` with object handles inside its parameter translated to
    /// backend handles (`CKM_CONCATENATE_BASE_AND_KEY` carries one).
    fn mechanism<'m>(
        &self,
        client: &Client,
        slot: Slot,
        mechanism: &'m Mechanism,
    ) -> Result<Cow<'m, Mechanism>> {
        match mechanism.param {
            MechParam::Ulong(h) if mechanism.mechanism == ck::CKM_CONCATENATE_BASE_AND_KEY => {
                let o = client.lock().object(slot, h, Error::KeyHandleInvalid)?;
                Ok(Cow::Owned(Mechanism {
                    mechanism: mechanism.mechanism,
                    param: MechParam::Ulong(o.backend),
                }))
            }
            _ => Ok(Cow::Borrowed(mechanism)),
        }
    }

    fn op_init(
        &self,
        client: &Client,
        session: u64,
        op: Op,
        init: &OpInit,
    ) -> Result<Arc<Session>> {
        let (s, key) = {
            let st = client.lock();
            let s = st.session(session)?;
            let key = match init.key {
                Some(k) => Some(st.object(s.slot, k, Error::KeyHandleInvalid)?),
                None => None,
            };
            (s, key)
        };
        self.audit_gate(client, operation(op).name())?;
        if let Some(o) = &key {
            self.check_key_use(client, o.managed, operation(op))?;
        }
        let m = self.mechanism(client, s.slot, &init.mechanism)?;
        let target = key.as_ref().and_then(|o| self.use_target(&s, o));
        if let Err(e) = s
            .backend
            .op_init(s.backend_session, op, &m, key.map(|o| o.backend))
        {
            if let Some(t) = &target {
                self.audit
                    .record_use(client, operation(op).name(), Some(m.mechanism), t, e.rv());
            }
            return Err(e);
        }
        lock(&s.active)[op.index()] = Some(ActiveOp {
            managed: key.and_then(|o| o.managed),
            mechanism: m.mechanism,
            target,
        });
        Ok(s)
    }

    /// The session of a cryptographic call, after the deferred `C_*Init`
    /// when the module sent one along.
    fn op_session(
        &self,
        client: &Client,
        session: u64,
        op: Op,
        init: Option<&OpInit>,
    ) -> Result<Arc<Session>> {
        match init {
            Some(init) => self.op_init(client, session, op, init),
            None => {
                let s = self.session(client, session)?.0;
                // The key of an operation initialised earlier is checked
                // again: a state change since the init applies now.
                let managed = lock(&s.active)[op.index()].as_ref().and_then(|a| a.managed);
                self.check_key_use(client, managed, operation(op))?;
                Ok(s)
            }
        }
    }

    /// [`Agent::adopt`] for one new unmanaged object, answered as its handle.
    fn adopt_one(
        &self,
        client: &Client,
        session: u64,
        s: &Session,
        login: Login,
        object: BackendObject,
        token: Option<bool>,
    ) -> Result<Response> {
        let new = NewObjects {
            objects: &[object],
            token,
            managed: None,
        };
        self.adopt(client, session, s, login, new)
            .map(|v| Response::Handle(v[0]))
    }

    /// Maps objects the backend just created. A client not logged in as
    /// user may not create private objects: they are destroyed again and
    /// the call fails with `CKR_USER_NOT_LOGGED_IN`. Session objects are
    /// registered so no other client ever finds them. `token_hint` is
    /// `CKA_TOKEN` when the templates fix it.
    fn adopt(
        &self,
        client: &Client,
        session: u64,
        s: &Session,
        login: Login,
        new: NewObjects<'_>,
    ) -> Result<Vec<u64>> {
        let NewObjects {
            objects: new,
            token: token_hint,
            managed,
        } = new;
        let mut on_token = vec![token_hint.unwrap_or(false); new.len()];
        if login != Login::User || token_hint.is_none() {
            let mut private = false;
            for (i, &h) in new.iter().enumerate() {
                let r = s
                    .backend
                    .get_attributes(s.backend_session, h, &[CKA_TOKEN, CKA_PRIVATE])
                    .unwrap_or_default();
                on_token[i] = result_bool(r.first()).or(token_hint).unwrap_or(false);
                // Unreadable CKA_PRIVATE counts as private: hide rather than leak.
                private |= result_bool(r.get(1)).unwrap_or(true);
            }
            if login != Login::User && private {
                for &h in new {
                    let _ = s.backend.destroy_object(s.backend_session, h);
                }
                log::info!(
                    "client {}: private object creation refused (not logged in as user)",
                    client.peer
                );
                return Err(Error::NotLoggedIn);
            }
        }
        let mut st = client.lock();
        let mut reg = None;
        let mut handles = Vec::with_capacity(new.len());
        for (&h, &token) in new.iter().zip(&on_token) {
            let owner = if token {
                None
            } else {
                reg.get_or_insert_with(|| lock(&self.session_objects))
                    .insert(
                        (s.slot, h),
                        Owner {
                            client: client.peer.key,
                            session,
                        },
                    );
                Some(session)
            };
            handles.push(st.map_object(s.slot, h, owner, managed));
        }
        Ok(handles)
    }

    /// Which of `found` are managed key versions (by their `CKA_ID` and
    /// fingerprint, read once per client and object), without those the
    /// client's application may not see, with each key's active version
    /// first; a search that does not name a `CKA_ID` (`by_id`) keeps only
    /// the active version of a key that has one (an application that signs
    /// by label gets the version that protects now, whichever match it
    /// takes).
    ///
    /// Never shown: an object with a managed `CKA_ID` that is not that
    /// version (a plant, [`ManagedKeys::is_genuine`]), an object with the
    /// audit key's `CKA_ID`, and in strict mode an unmanaged private or
    /// secret key on the token that this client did not make (a shadow key,
    /// quarantined until an administrator adopts it).
    fn classify(
        &self,
        client: &Client,
        s: &Session,
        found: Vec<(BackendObject, Option<u64>)>,
        by_id: bool,
    ) -> Result<Vec<Found>> {
        let policy = self.policy();
        let strict = policy.mode() == keyward_policy::Mode::Strict;
        if self.keys.is_empty() && !strict {
            return Ok(found.into_iter().map(|(h, o)| (h, o, None)).collect());
        }
        let now = SystemTime::now();
        // Each with whether it is a key's active version (worked out once).
        let mut out: Vec<(Found, bool)> = Vec::with_capacity(found.len());
        for (h, owner) in found {
            let known = {
                let st = client.lock();
                // Judged outside the client's namespace before: not read again.
                if strict && st.is_hidden(s.slot, h) {
                    continue;
                }
                st.mapped(s.slot, h)
                    .and_then(|ch| st.object(s.slot, ch, Error::ObjectHandleInvalid).ok())
            };
            let managed = match known {
                Some(o) => o.managed,
                None => match self.judge_unseen(client, &policy, s, h, owner, now) {
                    Some(managed) => managed,
                    None => continue,
                },
            };
            let active = match managed {
                Some(m) => match self.keys.key(m.key_id) {
                    Some(k) if keys::visible_to(&policy, &k, &client.application, now) => {
                        k.version(m.version).map(|v| v.state)
                            == Some(keyward_inventory::KeyState::Active)
                    }
                    _ => continue,
                },
                None => false,
            };
            out.push(((h, owner, managed), active));
        }
        if !by_id {
            // A search that does not name a CKA_ID finds a key's active
            // version only, when it has one. Clients differ in which of
            // several matches they take (pkcs11-tool the first, OpenSSL's
            // libp11 enumerates every key and takes the last), and "the
            // key called X" means the version that protects now. An older
            // version is found by its CKA_ID (as clients look up the public
            // key or certificate of a key they hold, or verify an old
            // signature).
            let with_active: std::collections::HashSet<i64> = out
                .iter()
                .filter(|(_, active)| *active)
                .filter_map(|((_, _, m), _)| m.map(|m| m.key_id))
                .collect();
            out.retain(|((_, _, m), active)| match m {
                Some(r) if with_active.contains(&r.key_id) => *active,
                _ => true,
            });
        }
        // Active versions first; otherwise the backend's order (stable).
        out.sort_by_key(|(_, active)| !*active);
        Ok(out.into_iter().map(|(f, _)| f).collect())
    }

    /// What a search shows of backend object `h` that the client holds no
    /// handle for: `None`, nothing (an object being generated for the
    /// inventory, the audit key, a plant, another key's certificate, and in
    /// strict mode a shadow key or an object outside the client's
    /// namespace); `Some(m)`: the object, a managed version (`m`) or not.
    fn judge_unseen(
        &self,
        client: &Client,
        policy: &Policy,
        s: &Session,
        h: BackendObject,
        owner: Option<u64>,
        now: SystemTime,
    ) -> Option<Option<ManagedRef>> {
        let strict = policy.mode() == keyward_policy::Mode::Strict;
        let token = &self.tokens[s.slot].config.label;
        // In strict mode the label too, for the object's identity.
        let head: &[u64] = if strict {
            &objects::HEAD
        } else {
            &objects::HEAD[..2]
        };
        let attrs = s
            .backend
            .get_attributes(s.backend_session, h, head)
            .unwrap_or_default();
        let id = match attrs.first() {
            Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) => Some(b),
            _ => None,
        };
        let managed = match id {
            // Being generated for the inventory: not yet a key.
            Some(id) if self.keys.is_pending(token, id) => return None,
            Some(id) if id == audit::AUDIT_KEY_ID => return None,
            Some(id) => self.keys.lookup(token, id),
            None => None,
        };
        let class = match attrs.get(1) {
            Some(AttrResult::Value(AttrValue::Leaf(Value::Ulong(c)))) => Some(*c),
            _ => None,
        };
        Some(match managed {
            // A certificate with a managed key's CKA_ID: shown
            // (as an unmanaged object) when it is that key's;
            // in strict mode to the applications that see the
            // key, or made the certificate.
            Some(m) if class == Some(ck::CKO_CERTIFICATE) => match self.keys.key(m.key_id) {
                Some(k)
                    if keys::is_certificate_of(s.backend.as_ref(), s.backend_session, h, &k)
                        && (!strict
                            || keys::visible_to(policy, &k, &client.application, now)
                            || self.owns(client, policy, s, h, &attrs)) =>
                {
                    None
                }
                _ => return None,
            },
            // A plant with a managed key's CKA_ID: never shown.
            Some(m)
                if !self
                    .keys
                    .is_genuine(token, s.backend.as_ref(), s.backend_session, h, m) =>
            {
                return None
            }
            Some(m) => Some(m),
            None => {
                let key = matches!(class, Some(ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY));
                // A shadow key: quarantined in strict mode.
                if strict && key && owner.is_none() {
                    return None;
                }
                // Another application's token object, or one
                // made behind keyward's back: not in this
                // application's namespace.
                if strict && owner.is_none() && !self.owns(client, policy, s, h, &attrs) {
                    client.lock().hide(s.slot, h);
                    return None;
                }
                None
            }
        })
    }

    /// Whether the unmanaged token object `h` (its [`objects::HEAD`]
    /// attributes `head`) is in the client's namespace in strict mode: its
    /// application made it, or an application that made it shares its
    /// objects with it (`share_objects_with`).
    fn owns(
        &self,
        client: &Client,
        policy: &Policy,
        s: &Session,
        h: BackendObject,
        head: &[AttrResult],
    ) -> bool {
        let token = &self.tokens[s.slot].config.label;
        let me = client.application.as_str();
        objects::identity(s.backend.as_ref(), s.backend_session, h, head).is_some_and(|id| {
            self.keys.owners.any_owner(token, &id, |owner| {
                owner == me
                    || policy
                        .application(owner)
                        .is_some_and(|a| a.share_objects_with.iter().any(|w| w == me))
            })
        })
    }

    /// In strict mode, records the client's application as the owner of
    /// `o` (an object it made or changed) when it is an unmanaged token
    /// object with a namespace, durably. `Err` says why it could not be.
    fn record_owner(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
    ) -> std::result::Result<(), String> {
        if self.policy().mode() != keyward_policy::Mode::Strict
            || o.session.is_some()
            || o.managed.is_some()
        {
            return Ok(());
        }
        let token = &self.tokens[s.slot].config.label;
        match objects::identify(s.backend.as_ref(), s.backend_session, o.backend) {
            Some((class, _)) if !objects::is_namespaced(class) => Ok(()),
            Some((_, Some(id))) => self
                .keys
                .owners
                .add(
                    self.keys.inventory(),
                    token,
                    &id,
                    &client.application,
                    keys::secs(SystemTime::now()),
                )
                .map_err(|e| e.to_string()),
            _ => Err("its class or content cannot be read".to_owned()),
        }
    }

    /// [`Agent::record_owner`] for an object the client just made (create,
    /// copy) with client handle `handle`, before the call answers. An
    /// object that cannot be recorded is destroyed again and the call fails
    /// (`CKR_DEVICE_ERROR`): in strict mode nobody could ever find it.
    fn claim(&self, client: &Client, s: &Session, handle: u64) -> Result<()> {
        let o = client
            .lock()
            .object(s.slot, handle, Error::ObjectHandleInvalid)?;
        if let Err(e) = self.record_owner(client, s, &o) {
            log::error!(
                "client {}: a token object it made is not recorded as its own ({e}); destroyed",
                client.peer
            );
            client.lock().unmap_object(handle);
            let _ = s.backend.destroy_object(s.backend_session, o.backend);
            return Err(Error::StateStore);
        }
        Ok(())
    }

    /// In strict mode, the identity of `o` when it is an unmanaged token
    /// object with a namespace, after checking that the client's
    /// application owns it: changing or destroying an object another
    /// application made (a managed key's certificate an administrator put
    /// on the token) is refused (`CKR_ACTION_PROHIBITED`, recorded).
    fn owned_identity(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        what: &str,
    ) -> Result<Option<objects::Identity>> {
        if self.policy().mode() != keyward_policy::Mode::Strict
            || o.session.is_some()
            || o.managed.is_some()
        {
            return Ok(None);
        }
        let token = &self.tokens[s.slot].config.label;
        match objects::identify(s.backend.as_ref(), s.backend_session, o.backend) {
            Some((class, _)) if !objects::is_namespaced(class) => Ok(None),
            Some((_, Some(id))) if self.keys.owners.owns(token, &id, &client.application) => {
                Ok(Some(id))
            }
            _ => {
                self.note_refusal(
                    client,
                    what,
                    None,
                    None,
                    ck::CKR_ACTION_PROHIBITED,
                    "a token object this application did not make",
                );
                Err(Error::ActionProhibited)
            }
        }
    }

    /// After the client's application destroyed (or changed) an object of
    /// `identity`: one object fewer in its namespace.
    fn release(&self, client: &Client, slot: Slot, identity: &objects::Identity) {
        let token = &self.tokens[slot].config.label;
        if let Err(e) =
            self.keys
                .owners
                .remove(self.keys.inventory(), token, identity, &client.application)
        {
            log::warn!(
                "client {}: the ownership of an object it destroyed is not removed: {e}",
                client.peer
            );
        }
    }

    fn find_objects(
        &self,
        client: &Client,
        session: u64,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        let mut template = template;
        if login != Login::User {
            match template_bool(&template, CKA_PRIVATE) {
                Some(true) => return Ok(Response::List(Vec::new())),
                Some(false) => {}
                None => template.push(Attribute::bool(CKA_PRIVATE, false)),
            }
        }
        let found = s.backend.find_objects(s.backend_session, &template)?;
        let audit_key = self.audit_key();
        let visible: Vec<(BackendObject, Option<u64>)> = {
            let reg = lock(&self.session_objects);
            found
                .into_iter()
                .filter(|&h| !audit_key.is_some_and(|k| k.is(s.slot, h)))
                .filter_map(|h| match reg.get(&(s.slot, h)) {
                    None => Some((h, None)),
                    Some(o) if o.client == client.peer.key => Some((h, Some(o.session))),
                    Some(_) => None,
                })
                .collect()
        };
        let by_id = template.iter().any(|a| a.attr_type == CKA_ID);
        let mut managed = self.classify(client, &s, visible, by_id)?;
        // A search by a managed key's name finds that key's objects only:
        // never an unmanaged object that carries the name (clients differ in
        // which match they take).
        let token = &self.tokens[s.slot].config.label;
        let labelled = template.iter().find_map(|a| match &a.value {
            AttrValue::Leaf(Value::Bytes(l))
                if a.attr_type == CKA_LABEL && self.keys.is_managed_label(token, l) =>
            {
                self.keys.key_by_label(token, l)
            }
            _ => None,
        });
        if let Some(key) = labelled {
            // The key's own certificate stays beside it.
            managed.retain(|(h, _, m)| {
                m.is_some()
                    || keys::is_certificate_of(s.backend.as_ref(), s.backend_session, *h, &key)
            });
        }
        let mut st = client.lock();
        Ok(Response::List(
            managed
                .into_iter()
                .map(|(h, owner, m)| st.map_object(s.slot, h, owner, m))
                .collect(),
        ))
    }

    fn open_session(&self, client: &Client, slot: u64, flags: u64) -> Result<Response> {
        let (i, t) = self.token(slot)?;
        let backend = t.backend()?.clone();
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::ParallelNotSupported);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if !rw && client.lock().login(i) == Login::So {
            return Err(Error::ReadWriteSoExists);
        }
        {
            let mut c = t.counts();
            if c.initializing {
                return Err(Error::TokenNotPresent);
            }
            c.sessions += 1;
            c.rw_sessions += u64::from(rw);
        }
        let backend_session = match backend.open_session(rw) {
            Ok(b) => b,
            Err(e) => {
                let mut c = t.counts();
                c.sessions -= 1;
                c.rw_sessions -= u64::from(rw);
                return Err(e);
            }
        };
        let h = client.lock().add_session(Session {
            active: Default::default(),
            slot: i,
            rw,
            backend_session,
            backend,
        });
        Ok(Response::Handle(h))
    }

    /// Which PIN `role` of `client` is on token `t`: the SO PIN; in
    /// strict mode, the user PIN of the client's application (its own, else
    /// the token's, with a count of its own); in lab mode, the token's user
    /// PIN (a plain token).
    fn pin_ref<'c>(&self, client: &'c Client, role: Role) -> PinRef<'c> {
        match role {
            Role::So => PinRef::from(Role::So),
            Role::User if self.policy().mode() == keyward_policy::Mode::Strict => {
                PinRef::app(&client.application)
            }
            Role::User => PinRef::from(Role::User),
        }
    }

    /// Checks a PIN. Every attempt is counted (durably, before the PIN is
    /// compared) towards the policy's lockout, the SO PIN's as well as the
    /// user PIN's: once `pin_max_attempts` wrong PINs are counted, every
    /// check of that PIN answers `CKR_PIN_LOCKED` (even a right PIN) until
    /// an administrator runs `keyward pin unlock`. An attempt that cannot
    /// be counted is not checked: `CKR_DEVICE_ERROR`.
    fn verify(
        &self,
        client: &Client,
        t: &VirtualToken,
        role: Role,
        pin: &[u8],
    ) -> Result<Option<bool>> {
        let which = self.pin_ref(client, role);
        let checked = t
            .state
            .check_pin(which, pin, |n| self.policy().check_pin_failures(n).is_err());
        match checked {
            Err(e) => {
                log::error!(
                    "token {:?}: {which}: the attempt cannot be counted, so no PIN is checked: {e}",
                    t.config.label
                );
                Err(Error::StateStore)
            }
            Ok(PinCheck::NotSet) => Ok(None),
            Ok(PinCheck::Locked(n)) => {
                let refusal = keyward_policy::Refusal::PinLocked { failures: n };
                log::warn!("token {:?}: {which} refused: {refusal}", t.config.label);
                Err(Error::Refused(refusal.ckr()))
            }
            Ok(PinCheck::Wrong(n)) => {
                log::warn!("token {:?}: wrong {which} ({n} in a row)", t.config.label);
                Ok(Some(false))
            }
            Ok(PinCheck::Right) => Ok(Some(true)),
        }
    }

    /// Writes the managed keys' last uses to the inventory every `every`,
    /// on a thread of its own (uses are noted in memory on the hot path).
    pub fn spawn_use_recorder(self: &Arc<Agent>, every: std::time::Duration) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("last-use".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match agent.upgrade() {
                    Some(a) => a.keys.flush_uses(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the last-use recorder: {e}");
        }
    }

    /// Records the noted uses now (at shutdown).
    pub fn flush_uses(&self) {
        self.keys.flush_uses();
    }

    /// `keyward pin unlock TOKEN [--role R] [--app A]`: resets the token's
    /// wrong-PIN counts: every one (user, SO, each application's), or the
    /// SO's, or every user count, or one application's. Says what it did.
    pub fn unlock_pin(
        &self,
        token: &str,
        role: Option<Role>,
        app: Option<&str>,
    ) -> std::result::Result<String, String> {
        let t = self
            .token_labelled(token)
            .ok_or_else(|| format!("no token labelled {token:?}"))?;
        let failed = |e: std::io::Error| format!("token {token:?}: {e}");
        let done = match (role, app) {
            (Some(Role::So), Some(_)) => {
                return Err("an application has no SO PIN of its own: leave out --app".into())
            }
            (Some(Role::So), None) => {
                t.state.reset_failures(Role::So).map_err(failed)?;
                format!("token {token:?}: SO PIN unlocked")
            }
            (_, Some(app)) => {
                if self.policy().application(app).is_none() {
                    return Err(format!("the policy names no application {app:?}"));
                }
                t.state.reset_failures(PinRef::app(app)).map_err(failed)?;
                format!("token {token:?}: user PIN of application {app:?} unlocked")
            }
            (Some(Role::User), None) => {
                t.state.reset_failures(Role::User).map_err(failed)?;
                for a in &self.policy().applications {
                    t.state
                        .reset_failures(PinRef::app(&a.name))
                        .map_err(failed)?;
                }
                format!("token {token:?}: user PINs unlocked")
            }
            (None, None) => {
                t.state.reset_all_failures().map_err(failed)?;
                format!("token {token:?}: user and SO PINs unlocked")
            }
        };
        log::info!("{done}");
        Ok(done)
    }

    fn login(
        &self,
        client: &Client,
        session: u64,
        user_type: u64,
        pin: Option<&[u8]>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        let t = &self.tokens[s.slot];
        let pin = pin.ok_or(Error::ArgumentsBad)?;
        let (role, new) = match user_type {
            CKU_SO => {
                match login {
                    Login::So => return Err(Error::AlreadyLoggedIn),
                    Login::User => return Err(Error::AnotherAlreadyLoggedIn),
                    Login::Public => {}
                }
                if client.lock().has_ro_session(s.slot) {
                    return Err(Error::ReadOnlyExists);
                }
                (Role::So, Login::So)
            }
            CKU_USER => {
                match login {
                    Login::User => return Err(Error::AlreadyLoggedIn),
                    Login::So => return Err(Error::AnotherAlreadyLoggedIn),
                    Login::Public => {}
                }
                (Role::User, Login::User)
            }
            CKU_CONTEXT_SPECIFIC => {
                if login != Login::User {
                    return Err(Error::NotLoggedIn);
                }
                match self.verify(client, t, Role::User, pin)? {
                    Some(true) => {}
                    Some(false) => return Err(Error::PinIncorrect),
                    None => return Err(Error::UserPinNotInitialized),
                }
                s.backend.login_context_specific(s.backend_session)?;
                return Ok(Response::Unit);
            }
            _ => return Err(Error::UserTypeInvalid),
        };
        match self.verify(client, t, role, pin)? {
            Some(true) => {}
            Some(false) => {
                log::info!(
                    "client {}: wrong {role:?} PIN for token {:?}",
                    client.peer,
                    t.config.label
                );
                return Err(Error::PinIncorrect);
            }
            None if role == Role::User => return Err(Error::UserPinNotInitialized),
            None => return Err(Error::PinIncorrect),
        }
        let mut st = client.lock();
        // The PIN check ran without the lock: re-check the state.
        match st.login(s.slot) {
            Login::Public => {}
            l if l == new => return Err(Error::AlreadyLoggedIn),
            _ => return Err(Error::AnotherAlreadyLoggedIn),
        }
        st.session(session)?;
        st.set_login(s.slot, new);
        Ok(Response::Unit)
    }

    fn logout(&self, client: &Client, session: u64) -> Result<Response> {
        let (s, objects) = {
            let mut st = client.lock();
            let s = st.session(session)?;
            let was = st.login(s.slot);
            if was == Login::Public {
                return Err(Error::NotLoggedIn);
            }
            st.set_login(s.slot, Login::Public);
            let objects = if was == Login::User {
                st.objects_on(s.slot)
            } else {
                Vec::new()
            };
            (s, objects)
        };
        // Private objects the user could see are no longer the client's to
        // use: drop the handles (one CKA_PRIVATE query per held handle).
        let private: Vec<u64> = objects
            .into_iter()
            .filter(|(_, o)| {
                let r = s
                    .backend
                    .get_attributes(s.backend_session, o.backend, &[CKA_PRIVATE])
                    .unwrap_or_default();
                result_bool(r.first()) != Some(false)
            })
            .map(|(h, _)| h)
            .collect();
        let mut st = client.lock();
        for h in private {
            st.unmap_object(h);
        }
        Ok(Response::Unit)
    }

    /// In strict mode, PINs are set by the administrator (`keyward-agent
    /// set-pin`), not by the token's SO: refuses `what` with
    /// `CKR_ACTION_PROHIBITED` and records the refusal.
    fn refuse_so_pin_management(&self, client: &Client, what: &str) -> Result<()> {
        self.policy()
            .check_pin_management_by_so()
            .map_err(|refusal| self.refuse(client, what, refusal))
    }

    fn init_pin(&self, client: &Client, session: u64, pin: &[u8]) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        if login != Login::So {
            return Err(Error::NotLoggedIn);
        }
        self.refuse_so_pin_management(client, "C_InitPIN")?;
        if !pin_len_ok(pin) {
            return Err(Error::PinLenRange);
        }
        let t = &self.tokens[s.slot];
        t.state.set_pin(Role::User, pin).map_err(|e| {
            log::error!("token {:?}: cannot store the user PIN: {e}", t.config.label);
            Error::StateStore
        })?;
        log::info!(
            "token {:?}: user PIN set by SO ({})",
            t.config.label,
            client.peer
        );
        Ok(Response::Unit)
    }

    /// `C_SetPIN`: the logged-in role changes its own PIN. In strict mode a
    /// user changes its application's own PIN (never another's, never the
    /// token's), and the SO PIN is the administrator's to change.
    fn set_pin(&self, client: &Client, session: u64, old: &[u8], new: &[u8]) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        if !s.rw {
            return Err(Error::SessionReadOnly);
        }
        let t = &self.tokens[s.slot];
        let role = if login == Login::So {
            self.refuse_so_pin_management(client, "C_SetPIN")?;
            Role::So
        } else {
            Role::User
        };
        if !pin_len_ok(new) {
            return Err(Error::PinLenRange);
        }
        match self.verify(client, t, role, old)? {
            Some(true) => {}
            Some(false) => return Err(Error::PinIncorrect),
            None if role == Role::User => return Err(Error::UserPinNotInitialized),
            None => return Err(Error::PinIncorrect),
        }
        let which = self.pin_ref(client, role);
        t.state.set_pin(which, new).map_err(|e| {
            log::error!("token {:?}: cannot store the {which}: {e}", t.config.label);
            Error::StateStore
        })?;
        log::info!(
            "token {:?}: {which} changed ({})",
            t.config.label,
            client.peer
        );
        Ok(Response::Unit)
    }

    fn init_token(
        &self,
        client: &Client,
        slot: u64,
        so_pin: &[u8],
        label: &[u8],
    ) -> Result<Response> {
        let (i, t) = self.token(slot)?;
        let backend = t.backend()?.clone();
        if !t.config.allow_init_token {
            log::warn!(
                "client {}: C_InitToken on token {:?} refused: allow_init_token is false",
                client.peer,
                t.config.label
            );
            return Err(Error::ActionProhibited);
        }
        // It resets every application's PIN: in strict mode, the
        // administrator's to do, whatever allow_init_token says.
        self.refuse_so_pin_management(client, "C_InitToken")?;
        if !pin_len_ok(so_pin) {
            return Err(Error::PinLenRange);
        }
        {
            let mut c = t.counts();
            if c.sessions > 0 || c.initializing {
                return Err(Error::SessionExists);
            }
            c.initializing = true;
        }
        let result = self.init_token_locked(client, t, &*backend, so_pin, label);
        t.counts().initializing = false;
        if result.is_ok() {
            log::warn!(
                "client {}: C_InitToken cleared token {:?} (slot {i})",
                client.peer,
                t.config.label
            );
        }
        result.map(|()| Response::Unit)
    }

    fn init_token_locked(
        &self,
        client: &Client,
        t: &VirtualToken,
        backend: &dyn Backend,
        so_pin: &[u8],
        label: &[u8],
    ) -> Result<()> {
        if self.verify(client, t, Role::So, so_pin)? == Some(false) {
            return Err(Error::PinIncorrect);
        }
        let anchor = backend.anchor_session();
        let slot = self
            .tokens
            .iter()
            .position(|x| std::ptr::eq(x, t))
            .unwrap_or(usize::MAX);
        for h in backend.find_objects(anchor, &[])? {
            // The audit key is the agent's, not the token's: it survives,
            // so that checkpoints signed before stay verifiable.
            if self.is_audit_key(slot, h) {
                continue;
            }
            if let Err(e) = backend.destroy_object(anchor, h) {
                log::warn!(
                    "token {:?}: C_InitToken could not destroy backend object {h}: {e}",
                    t.config.label
                );
            }
        }
        let store = |r: std::io::Result<()>| {
            r.map_err(|e| {
                log::error!("token {:?}: state store: {e}", t.config.label);
                Error::StateStore
            })
        };
        store(t.state.clear_user_pins())?;
        store(t.state.set_pin(Role::So, so_pin))?;
        let label = String::from_utf8_lossy(label);
        let label = label.trim_end_matches([' ', '\0']);
        store(t.state.set_label(label))
    }

    fn slot_info(&self, slot: u64) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        let mut info = SlotInfo {
            description: t.config.label.clone(),
            manufacturer: "keyward".into(),
            flags: (ck::CKF_REMOVABLE_DEVICE | ck::CKF_HW_SLOT),
            ..SlotInfo::default()
        };
        if let Ok(b) = &t.backend {
            info.flags |= ck::CKF_TOKEN_PRESENT;
            if let Ok(bi) = b.token_info() {
                info.hardware_version = bi.hardware_version;
                info.firmware_version = bi.firmware_version;
            }
        }
        Ok(Response::SlotInfo(info))
    }

    /// The `CKF_*_PIN_COUNT_LOW`, `_FINAL_TRY` and `_LOCKED` flags of
    /// `which` (`[count low, final try, locked]`); an unreadable count is
    /// locked.
    fn pin_flags(&self, t: &VirtualToken, which: PinRef<'_>, flags: [u64; 3]) -> u64 {
        let Ok(failures) = t.state.failures(which) else {
            // No PIN is checked without its count.
            return flags[0] | flags[2];
        };
        if failures == 0 {
            return 0;
        }
        let policy = self.policy();
        let max = policy.settings.pin_max_attempts;
        if policy.check_pin_failures(failures).is_err() {
            flags[0] | flags[2]
        } else if max != 0 && failures.saturating_add(1) == max {
            flags[0] | flags[1]
        } else {
            flags[0]
        }
    }

    fn token_info(&self, client: &Client, slot: u64) -> Result<Response> {
        let (_, t) = self.token(slot)?;
        let bi = t.backend()?.token_info()?;
        let mut flags = ck::CKF_LOGIN_REQUIRED | ck::CKF_TOKEN_INITIALIZED;
        let user = self.pin_ref(client, Role::User);
        if t.state.has_pin(user) {
            flags |= ck::CKF_USER_PIN_INITIALIZED;
        }
        flags |= self.pin_flags(
            t,
            user,
            [
                ck::CKF_USER_PIN_COUNT_LOW,
                ck::CKF_USER_PIN_FINAL_TRY,
                ck::CKF_USER_PIN_LOCKED,
            ],
        );
        flags |= self.pin_flags(
            t,
            Role::So.into(),
            [
                ck::CKF_SO_PIN_COUNT_LOW,
                ck::CKF_SO_PIN_FINAL_TRY,
                ck::CKF_SO_PIN_LOCKED,
            ],
        );
        if bi.flags & ck::CKF_RNG != 0 {
            flags |= ck::CKF_RNG;
        }
        if !bi.utc_time.is_empty() {
            flags |= ck::CKF_CLOCK_ON_TOKEN;
        }
        let (sessions, rw_sessions) = {
            let c = t.counts();
            (c.sessions, c.rw_sessions)
        };
        let unavailable = ck::CK_UNAVAILABLE_INFORMATION;
        Ok(Response::TokenInfo(TokenInfo {
            label: t.label(),
            manufacturer: "keyward".into(),
            model: "virtual token".into(),
            serial_number: virtual_serial(&t.config.label, &bi.serial),
            flags,
            max_session_count: ck::CK_EFFECTIVELY_INFINITE,
            session_count: sessions,
            max_rw_session_count: ck::CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw_sessions,
            max_pin_len: MAX_PIN_LEN as u64,
            min_pin_len: MIN_PIN_LEN as u64,
            total_public_memory: unavailable,
            free_public_memory: unavailable,
            total_private_memory: unavailable,
            free_private_memory: unavailable,
            hardware_version: bi.hardware_version,
            firmware_version: bi.firmware_version,
            utc_time: bi.utc_time,
        }))
    }

    /// What `keyward status` shows.
    pub fn status(&self) -> Status {
        let tokens = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = TokenStatus {
                    slot: i as u64,
                    label: t.label(),
                    user_pin_initialized: t.state.has_pin(Role::User),
                    allow_init_token: t.config.allow_init_token,
                    backend_library: t.config.library.display().to_string(),
                    backend_library_description: String::new(),
                    backend_library_version: Default::default(),
                    backend_present: false,
                    backend_label: String::new(),
                    backend_manufacturer: String::new(),
                    backend_model: String::new(),
                    backend_serial: String::new(),
                    backend_error: None,
                };
                match &t.backend {
                    Err(e) => s.backend_error = Some(e.clone()),
                    Ok(b) => {
                        if let Ok(li) = b.library_info() {
                            s.backend_library_description = li.description;
                            s.backend_library_version = li.version;
                        }
                        match b.token_info() {
                            Ok(bi) => {
                                s.backend_present = true;
                                s.backend_label = bi.label;
                                s.backend_manufacturer = bi.manufacturer;
                                s.backend_model = bi.model;
                                s.backend_serial = bi.serial;
                            }
                            Err(e) => s.backend_error = Some(format!("C_GetTokenInfo failed: {e}")),
                        }
                    }
                }
                s
            })
            .collect();
        Status {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            app_protocol: APP_VERSIONS,
            admin_protocol: ADMIN_VERSIONS,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            tokens,
            connections: 0,
            socket_events: Vec::new(),
        }
    }
}

/// A client not logged in as user may not ask for a private object.
fn refuse_private(login: Login, template: &[Attribute]) -> Result<()> {
    if login != Login::User && template_bool(template, CKA_PRIVATE) == Some(true) {
        Err(Error::NotLoggedIn)
    } else {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::{BackendSession, BackendTokenInfo, LibraryInfo};
    use crate::client::tests::peer;
    use crate::config::SecretRef;
    use keyward_protocol::MechanismInfo;
    use std::collections::HashSet;

    /// An agent on one mock token `kw` under the policy text `policy`, with
    /// its inventory and trail in a temporary directory.
    pub(crate) fn mock_agent(policy: &str) -> (tempfile::TempDir, Agent) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let config = TokenConfig {
            label: "kw".into(),
            library: "/nonexistent.so".into(),
            backend_token_label: Some("b".into()),
            backend_serial: None,
            backend_pin: SecretRef::Env("UNUSED".into()),
            allow_init_token: false,
        };
        let mock = Arc::new(Mock::default()) as Arc<dyn Backend>;
        let token = VirtualToken::new(config, state.token("kw"), Ok(mock));
        let inventory = Arc::new(
            keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap(),
        );
        let keys = ManagedKeys::open(inventory.clone()).unwrap();
        let policy = Policy::from_str(policy, "test").unwrap();
        let audit = Auditor::start(inventory);
        let agent = Agent::new(vec![token], "/sock".into(), keys, audit).with_policy(policy);
        (dir, agent)
    }

    /// An administrator (root, pid 1) on the admin socket.
    pub(crate) fn admin_peer() -> Peer {
        Peer {
            key: crate::identity::ClientKey {
                pid: 1,
                start_time: 0,
            },
            uid: 0,
            gid: 0,
            exe: None,
            exe_id: None,
            foreign_mounts: false,
        }
    }

    #[derive(Debug, Clone, Copy)]
    struct MockObject {
        private: bool,
        token: bool,
        session: BackendSession,
    }

    #[derive(Debug, Default)]
    struct MockState {
        next: u64,
        sessions: HashSet<BackendSession>,
        objects: HashMap<BackendObject, MockObject>,
        context_logins: u32,
    }

    /// A backend in memory: sessions, objects with CKA_TOKEN / CKA_PRIVATE.
    #[derive(Debug, Default)]
    pub(crate) struct Mock {
        st: Mutex<MockState>,
    }

    impl Mock {
        fn st(&self) -> MutexGuard<'_, MockState> {
            self.st.lock().unwrap()
        }
        fn add(&self, session: BackendSession, template: &[Attribute], private: bool) -> u64 {
            let mut st = self.st();
            st.next += 1;
            let h = st.next;
            let obj = MockObject {
                private: template_bool(template, CKA_PRIVATE).unwrap_or(private),
                token: template_bool(template, CKA_TOKEN).unwrap_or(false),
                session,
            };
            st.objects.insert(h, obj);
            h
        }
        fn live(&self, s: BackendSession) -> Result<()> {
            if self.st().sessions.contains(&s) || s == 0 {
                Ok(())
            } else {
                Err(Error::Backend(ck::CKR_SESSION_HANDLE_INVALID))
            }
        }
        fn object_count(&self) -> usize {
            self.st().objects.len()
        }
    }

    impl Backend for Mock {
        fn library_info(&self) -> Result<LibraryInfo> {
            Ok(LibraryInfo::default())
        }
        fn token_info(&self) -> Result<BackendTokenInfo> {
            Ok(BackendTokenInfo {
                serial: "1234".into(),
                flags: ck::CKF_RNG,
                ..Default::default()
            })
        }
        fn mechanism_list(&self) -> Result<Vec<u64>> {
            Ok(vec![ck::CKM_ECDSA])
        }
        fn mechanism_info(&self, _: u64) -> Result<MechanismInfo> {
            Ok(MechanismInfo::default())
        }
        fn open_session(&self, _: bool) -> Result<BackendSession> {
            let mut st = self.st();
            st.next += 1;
            let h = st.next;
            st.sessions.insert(h);
            Ok(h)
        }
        fn close_session(&self, s: BackendSession) -> Result<()> {
            let mut st = self.st();
            st.sessions.remove(&s);
            st.objects.retain(|_, o| o.token || o.session != s);
            Ok(())
        }
        fn anchor_session(&self) -> BackendSession {
            0
        }
        fn login_context_specific(&self, s: BackendSession) -> Result<()> {
            self.live(s)?;
            self.st().context_logins += 1;
            Ok(())
        }
        fn create_object(&self, s: BackendSession, t: &[Attribute]) -> Result<BackendObject> {
            self.live(s)?;
            Ok(self.add(s, t, false))
        }
        fn copy_object(&self, s: BackendSession, _: BackendObject, t: &[Attribute]) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, false))
        }
        fn destroy_object(&self, s: BackendSession, o: BackendObject) -> Result<()> {
            self.live(s)?;
            self.st()
                .objects
                .remove(&o)
                .map(|_| ())
                .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))
        }
        fn object_size(&self, _: BackendSession, _: BackendObject) -> Result<u64> {
            Ok(1)
        }
        fn get_attributes(
            &self,
            _: BackendSession,
            o: BackendObject,
            types: &[u64],
        ) -> Result<Vec<AttrResult>> {
            let obj = *self
                .st()
                .objects
                .get(&o)
                .ok_or(Error::Backend(ck::CKR_OBJECT_HANDLE_INVALID))?;
            Ok(types
                .iter()
                .map(|&t| match t {
                    CKA_TOKEN => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.token))),
                    CKA_PRIVATE => AttrResult::Value(AttrValue::Leaf(Value::Bool(obj.private))),
                    _ => AttrResult::Invalid,
                })
                .collect())
        }
        fn set_attributes(
            &self,
            _: BackendSession,
            _: BackendObject,
            _: &[Attribute],
        ) -> Result<()> {
            Ok(())
        }
        fn find_objects(&self, s: BackendSession, t: &[Attribute]) -> Result<Vec<BackendObject>> {
            self.live(s)?;
            let private = template_bool(t, CKA_PRIVATE);
            let mut v: Vec<u64> = self
                .st()
                .objects
                .iter()
                .filter(|(_, o)| private.is_none_or(|p| p == o.private))
                .map(|(&h, _)| h)
                .collect();
            v.sort_unstable();
            Ok(v)
        }
        fn op_init(&self, s: BackendSession, _: Op, _: &Mechanism, _: Option<u64>) -> Result<()> {
            self.live(s)
        }
        fn single(&self, s: BackendSession, _: Op, data: &[u8]) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(data.to_vec())
        }
        fn verify(&self, s: BackendSession, _: &[u8], _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn update(&self, s: BackendSession, _: Op, _: &[u8]) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(Vec::new())
        }
        fn digest_key(&self, s: BackendSession, _: BackendObject) -> Result<()> {
            self.live(s)
        }
        fn final_(&self, s: BackendSession, _: Op) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(Vec::new())
        }
        fn verify_final(&self, s: BackendSession, _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn generate_key(&self, s: BackendSession, _: &Mechanism, t: &[Attribute]) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn generate_key_pair(
            &self,
            s: BackendSession,
            _: &Mechanism,
            pubt: &[Attribute],
            privt: &[Attribute],
        ) -> Result<(u64, u64)> {
            self.live(s)?;
            Ok((self.add(s, pubt, false), self.add(s, privt, true)))
        }
        fn wrap_key(&self, s: BackendSession, _: &Mechanism, _: u64, _: u64) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(vec![1])
        }
        fn unwrap_key(
            &self,
            s: BackendSession,
            _: &Mechanism,
            _: u64,
            _: &[u8],
            t: &[Attribute],
        ) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn derive_key(
            &self,
            s: BackendSession,
            _: &Mechanism,
            _: u64,
            t: &[Attribute],
        ) -> Result<u64> {
            self.live(s)?;
            Ok(self.add(s, t, true))
        }
        fn seed_random(&self, s: BackendSession, _: &[u8]) -> Result<()> {
            self.live(s)
        }
        fn generate_random(&self, s: BackendSession, len: usize) -> Result<Vec<u8>> {
            self.live(s)?;
            Ok(vec![0; len])
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        agent: Agent,
        mock: Arc<Mock>,
    }

    fn fixture(allow_init_token: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mock = Arc::new(Mock::default());
        let config = TokenConfig {
            label: "kw".into(),
            library: "/nonexistent.so".into(),
            backend_token_label: Some("b".into()),
            backend_serial: None,
            backend_pin: SecretRef::Env("UNUSED".into()),
            allow_init_token,
        };
        let ts = state.token("kw");
        ts.set_pin(Role::User, b"1111").unwrap();
        ts.set_pin(Role::So, b"2222").unwrap();
        let token = VirtualToken::new(config, ts, Ok(mock.clone() as Arc<dyn Backend>));
        let inventory =
            keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
        let inventory = Arc::new(inventory);
        let keys = ManagedKeys::open(inventory.clone()).unwrap();
        Fixture {
            _dir: dir,
            agent: Agent::new(vec![token], "/sock".into(), keys, Auditor::start(inventory)),
            mock,
        }
    }

    const RW: u64 = CKF_SERIAL_SESSION | CKF_RW_SESSION;

    fn call(a: &Agent, c: &Arc<Client>, r: Request) -> Response {
        a.handle(c, r)
    }

    fn open(a: &Agent, c: &Arc<Client>, flags: u64) -> u64 {
        match call(a, c, Request::OpenSession { slot: 0, flags }) {
            Response::Handle(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn login(a: &Agent, c: &Arc<Client>, s: u64, user_type: u64, pin: &[u8]) -> Response {
        call(
            a,
            c,
            Request::Login {
                session: s,
                user_type,
                pin: Some(zeroize::Zeroizing::new(pin.to_vec())),
            },
        )
    }

    fn err(rv: ck::CK_RV) -> Response {
        Response::Err(rv)
    }

    fn state(a: &Agent, c: &Arc<Client>, s: u64) -> ck::CK_ULONG {
        match call(a, c, Request::GetSessionInfo { session: s }) {
            Response::SessionInfo(i) => i.state as ck::CK_ULONG,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_state_machine() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
        assert_eq!(
            login(a, &c, s, CKU_USER, b"9999"),
            err(ck::CKR_PIN_INCORRECT)
        );
        assert_eq!(login(a, &c, s, 7, b"1111"), err(ck::CKR_USER_TYPE_INVALID));
        assert_eq!(
            login(a, &c, s, CKU_CONTEXT_SPECIFIC, b"1111"),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        assert_eq!(login(a, &c, s, CKU_USER, b"1111"), Response::Unit);
        assert_eq!(state(a, &c, s), ck::CKS_RW_USER_FUNCTIONS);
        // Shared by all the client's sessions on the token.
        let ro = open(a, &c, CKF_SERIAL_SESSION);
        assert_eq!(state(a, &c, ro), ck::CKS_RO_USER_FUNCTIONS);
        assert_eq!(
            login(a, &c, ro, CKU_USER, b"1111"),
            err(ck::CKR_USER_ALREADY_LOGGED_IN)
        );
        assert_eq!(
            login(a, &c, s, CKU_SO, b"2222"),
            err(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
        );
        assert_eq!(
            login(a, &c, s, CKU_CONTEXT_SPECIFIC, b"1111"),
            Response::Unit
        );
        assert_eq!(f.mock.st().context_logins, 1);
        // Another process is not logged in.
        let other = a.connect(peer(2), LAB_APPLICATION.into());
        let os = open(a, &other, RW);
        assert_eq!(state(a, &other, os), ck::CKS_RW_PUBLIC_SESSION);

        assert_eq!(call(a, &c, Request::Logout { session: s }), Response::Unit);
        assert_eq!(
            call(a, &c, Request::Logout { session: s }),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // SO login with a read-only session open is refused.
        assert_eq!(
            login(a, &c, s, CKU_SO, b"2222"),
            err(ck::CKR_SESSION_READ_ONLY_EXISTS)
        );
        call(a, &c, Request::CloseSession { session: ro });
        assert_eq!(login(a, &c, s, CKU_SO, b"2222"), Response::Unit);
        assert_eq!(state(a, &c, s), ck::CKS_RW_SO_FUNCTIONS);
        assert_eq!(
            call(
                a,
                &c,
                Request::OpenSession {
                    slot: 0,
                    flags: CKF_SERIAL_SESSION
                }
            ),
            err(ck::CKR_SESSION_READ_WRITE_SO_EXISTS)
        );
        // Closing the last session logs out.
        call(a, &c, Request::CloseSession { session: s });
        let s = open(a, &c, RW);
        assert_eq!(state(a, &c, s), ck::CKS_RW_PUBLIC_SESSION);
    }

    #[test]
    fn pins_are_managed_virtually() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let pin = |p: &[u8]| zeroize::Zeroizing::new(p.to_vec());
        assert_eq!(
            call(
                a,
                &c,
                Request::InitPin {
                    session: s,
                    pin: pin(b"3333")
                }
            ),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // The user changes the user PIN.
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"0000"),
                    new_pin: pin(b"4444")
                }
            ),
            err(ck::CKR_PIN_INCORRECT)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"1111"),
                    new_pin: pin(b"44")
                }
            ),
            err(ck::CKR_PIN_LEN_RANGE)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::SetPin {
                    session: s,
                    old_pin: pin(b"1111"),
                    new_pin: pin(b"4444")
                }
            ),
            Response::Unit
        );
        assert_eq!(
            login(a, &c, s, CKU_USER, b"1111"),
            err(ck::CKR_PIN_INCORRECT)
        );
        // The SO resets it.
        assert_eq!(login(a, &c, s, CKU_SO, b"2222"), Response::Unit);
        assert_eq!(
            call(
                a,
                &c,
                Request::InitPin {
                    session: s,
                    pin: pin(b"5555")
                }
            ),
            Response::Unit
        );
        call(a, &c, Request::Logout { session: s });
        assert_eq!(login(a, &c, s, CKU_USER, b"5555"), Response::Unit);
        // Without a user PIN.
        f.agent.tokens[0].state.clear_pin(Role::User).unwrap();
        call(a, &c, Request::Logout { session: s });
        assert_eq!(
            login(a, &c, s, CKU_USER, b"5555"),
            err(ck::CKR_USER_PIN_NOT_INITIALIZED)
        );
    }

    fn find(a: &Agent, c: &Arc<Client>, s: u64, template: Vec<Attribute>) -> Vec<u64> {
        match call(
            a,
            c,
            Request::FindObjects {
                session: s,
                template,
            },
        ) {
            Response::List(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn create(a: &Agent, c: &Arc<Client>, s: u64, template: Vec<Attribute>) -> Response {
        call(
            a,
            c,
            Request::CreateObject {
                session: s,
                template,
            },
        )
    }

    #[test]
    fn private_objects_are_hidden_from_public_sessions() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let token = |private| {
            vec![
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_PRIVATE, private),
            ]
        };
        assert_eq!(
            create(a, &c, s, token(true)),
            err(ck::CKR_USER_NOT_LOGGED_IN)
        );
        // Generated keys are private by default here: created, found
        // private, destroyed again.
        let r = call(
            a,
            &c,
            Request::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ck::CKM_AES_KEY_GEN),
                template: vec![],
            },
        );
        assert_eq!(r, err(ck::CKR_USER_NOT_LOGGED_IN));
        assert_eq!(f.mock.object_count(), 0);
        let Response::Handle(public) = create(a, &c, s, token(false)) else {
            panic!()
        };

        login(a, &c, s, CKU_USER, b"1111");
        let Response::Handle(private) = create(a, &c, s, token(true)) else {
            panic!()
        };
        let mut all = find(a, &c, s, vec![]);
        all.sort_unstable();
        assert_eq!(all, vec![public, private]);

        call(a, &c, Request::Logout { session: s });
        assert_eq!(find(a, &c, s, vec![]), vec![public]);
        assert!(find(a, &c, s, vec![Attribute::bool(CKA_PRIVATE, true)]).is_empty());
        // The handle to the private object went with the logout.
        assert_eq!(
            call(
                a,
                &c,
                Request::GetObjectSize {
                    session: s,
                    object: private
                }
            ),
            err(ck::CKR_OBJECT_HANDLE_INVALID)
        );
    }

    #[test]
    fn session_objects_belong_to_their_client() {
        let f = fixture(false);
        let a = &f.agent;
        let c1 = a.connect(peer(1), LAB_APPLICATION.into());
        let c2 = a.connect(peer(2), LAB_APPLICATION.into());
        let s1 = open(a, &c1, RW);
        let s2 = open(a, &c2, RW);
        let Response::Handle(mine) = create(a, &c1, s1, vec![]) else {
            panic!()
        };
        let Response::Handle(shared) = create(a, &c1, s1, vec![Attribute::bool(CKA_TOKEN, true)])
        else {
            panic!()
        };
        assert_eq!(find(a, &c1, s1, vec![]).len(), 2);
        let seen = find(a, &c2, s2, vec![]);
        assert_eq!(seen.len(), 1, "the other client sees only the token object");
        // Handles are per client: c2's number for the token object is its own,
        // and c1's handles mean nothing to c2 beyond what c2 mapped itself.
        assert_eq!(
            call(
                a,
                &c2,
                Request::DestroyObject {
                    session: s2,
                    object: mine + 10
                }
            ),
            err(ck::CKR_OBJECT_HANDLE_INVALID)
        );
        let s1b = open(a, &c1, RW);
        assert_eq!(s1b, 2);
        assert_eq!(
            call(
                a,
                &c2,
                Request::GetObjectSize {
                    session: s1b,
                    object: shared
                }
            ),
            err(ck::CKR_SESSION_HANDLE_INVALID)
        );
        // Key handles unknown to the client get the key-specific codes.
        let m = Mechanism::plain(ck::CKM_AES_KEY_WRAP);
        assert_eq!(
            call(
                a,
                &c2,
                Request::WrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    wrapping_key: 99,
                    key: seen[0]
                }
            ),
            err(ck::CKR_WRAPPING_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::WrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    wrapping_key: seen[0],
                    key: 99
                }
            ),
            err(ck::CKR_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::UnwrapKey {
                    session: s2,
                    mechanism: m.clone(),
                    unwrapping_key: 99,
                    wrapped_key: vec![],
                    template: vec![]
                }
            ),
            err(ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID)
        );
        assert_eq!(
            call(
                a,
                &c2,
                Request::OperationInit {
                    session: s2,
                    op: Op::Sign,
                    init: OpInit {
                        mechanism: m,
                        key: Some(99)
                    }
                }
            ),
            err(ck::CKR_KEY_HANDLE_INVALID)
        );
        // When c1 goes, its session objects go; the registry forgets them.
        a.disconnect(&c1);
        assert_eq!(f.mock.object_count(), 1);
        assert!(lock(&a.session_objects).is_empty());
        assert_eq!(a.tokens[0].counts().sessions, 1);
    }

    #[test]
    fn connections_of_one_process_share_a_client() {
        let f = fixture(false);
        let a = &f.agent;
        let c1 = a.connect(peer(1), LAB_APPLICATION.into());
        let c1b = a.connect(peer(1), LAB_APPLICATION.into());
        assert!(Arc::ptr_eq(&c1, &c1b));
        let s = open(a, &c1, RW);
        assert!(matches!(
            call(a, &c1b, Request::GetSessionInfo { session: s }),
            Response::SessionInfo(_)
        ));
        a.disconnect(&c1);
        assert!(matches!(
            call(a, &c1b, Request::GetSessionInfo { session: s }),
            Response::SessionInfo(_)
        ));
        a.disconnect(&c1b);
        // A new connection of the same pid and start time after the last one
        // closed starts afresh.
        let again = a.connect(peer(1), LAB_APPLICATION.into());
        assert_eq!(
            call(a, &again, Request::GetSessionInfo { session: s }),
            err(ck::CKR_SESSION_HANDLE_INVALID)
        );
        assert!(f.mock.st().sessions.is_empty());
    }

    #[test]
    fn init_token_rules() {
        let f = fixture(false);
        let c = f.agent.connect(peer(1), LAB_APPLICATION.into());
        let req = |pin: &[u8]| Request::InitToken {
            slot: 0,
            so_pin: zeroize::Zeroizing::new(pin.to_vec()),
            label: b"fresh".to_vec(),
        };
        assert_eq!(
            call(&f.agent, &c, req(b"2222")),
            err(ck::CKR_ACTION_PROHIBITED)
        );

        let f = fixture(true);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        create(a, &c, s, vec![Attribute::bool(CKA_TOKEN, true)]);
        assert_eq!(call(a, &c, req(b"2222")), err(ck::CKR_SESSION_EXISTS));
        call(a, &c, Request::CloseSession { session: s });
        assert_eq!(call(a, &c, req(b"9999")), err(ck::CKR_PIN_INCORRECT));
        assert_eq!(call(a, &c, req(b"7777")), err(ck::CKR_PIN_INCORRECT));
        assert_eq!(call(a, &c, req(b"2222")), Response::Unit);
        assert_eq!(f.mock.object_count(), 0);
        let t = &a.tokens[0];
        assert!(!t.state.has_pin(Role::User));
        assert_eq!(t.label(), "fresh");
        let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: 0 }) else {
            panic!()
        };
        assert_eq!(info.label, "fresh");
        assert_eq!(info.flags & ck::CKF_USER_PIN_INITIALIZED, 0);
        assert_eq!(
            call(a, &c, Request::GetTokenInfo { slot: 5 }),
            err(ck::CKR_SLOT_ID_INVALID)
        );
    }

    #[test]
    fn token_info_and_limits() {
        let f = fixture(false);
        let (a, c) = (&f.agent, f.agent.connect(peer(1), LAB_APPLICATION.into()));
        let s = open(a, &c, RW);
        let Response::TokenInfo(info) = call(a, &c, Request::GetTokenInfo { slot: 0 }) else {
            panic!()
        };
        assert_eq!(info.label, "kw");
        assert_eq!(info.serial_number, virtual_serial("kw", "1234"));
        assert_eq!(info.serial_number.len(), 16);
        assert_eq!((info.session_count, info.rw_session_count), (1, 1));
        let want = ck::CKF_LOGIN_REQUIRED
            | ck::CKF_TOKEN_INITIALIZED
            | ck::CKF_USER_PIN_INITIALIZED
            | ck::CKF_RNG;
        assert_eq!(info.flags, want);
        assert_eq!(
            call(
                a,
                &c,
                Request::GenerateRandom {
                    session: s,
                    len: MAX_RANDOM + 1
                }
            ),
            err(ck::CKR_ARGUMENTS_BAD)
        );
        assert_eq!(
            call(a, &c, Request::OpenSession { slot: 0, flags: 0 }),
            err(ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED)
        );
        assert_eq!(
            call(
                a,
                &c,
                Request::GetSlotList {
                    token_present: true
                }
            ),
            Response::List(vec![0])
        );
    }
}
