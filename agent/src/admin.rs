//! Key management on the admin socket: the `keyward key`, `grant`, `app`,
//! `pin` and `discover` commands, and the lifecycle scheduler.
//!
//! Every change follows one order: the HSM first (generation, on a fresh
//! backend session that is closed afterwards, never the anchor), then the
//! inventory, then
//! [`ManagedKeys::refresh`](crate::keys::ManagedKeys::refresh), so that
//! enforcement sees the change on the very next use. A generation whose
//! inventory write fails destroys what it generated: no orphan objects.
//!
//! A lifecycle change (create, adopt, transition, rotation, the
//! scheduler's) is one inventory transaction (`Agent::apply_change`):
//! the key's state, its versions' states and new versions, its dates, its
//! history rows and its `lifecycle` trail records, durable before the
//! answer. A kill at any moment leaves all of it or none of it, and a
//! change whose records cannot be written does not happen. Which moves an
//! action makes is the policy's ([`transition`], [`version_transition`],
//! [`Rotation`]); the store only checks that each state is still the one
//! seen.
//!
//! Semantics chosen here (see also the doc comments of the functions):
//! - A new key and its version 1 start in pre-activation; `activate` moves
//!   both, and sets the key's cryptoperiod dates from its class.
//! - `suspend`, `resume` and `deactivate` move the key's own state; its
//!   versions keep theirs (enforcement requires both to permit a use).
//! - `revoke` moves the key and every live version to compromised.
//! - Actions that need approval (leaving suspended or compromised, and
//!   destroy) are recorded as a pending request in the inventory and not
//!   performed; dual control adds the approvals and the execution.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cryptoki_sys as ck;
use keyward_inventory::{
    Actor, AppliedChange, ApprovalRecord, AuditEvent, DateUpdates, Grant, KeyChange, KeyFilter,
    KeyRecord, KeyState as InvState, KeyVersion, LifecycleChange, StateChange, VersionChange,
};
use keyward_policy::{
    check_generation, check_key_pair_generation, needs_approval, transition, version_transition,
    Action, Algorithm, Curve, KeyClass, KeyState, Operation, Purpose, Rotation, Template,
};
use keyward_protocol::admin::{
    AdminErrorKind, AdminResponse, AppInfo, ApprovalRequest, GrantInfo, HistoryEntry, KeyAction,
    KeyInfo, KeyRequest, KeyResponse, ShadowInfo, VersionInfo,
};
use keyward_protocol::{AttrResult, AttrValue, Attribute, MechParam, Mechanism, Op, Value};

use crate::agent::Agent;
use crate::backend::{Backend, BackendObject, BackendSession};
use crate::keys::{self, inventory_state, policy_state, secs, KeyView, ManagedRef};
use crate::listener::identity::Peer;
use crate::objects::unmanaged_name;
use crate::state::Role;
use crate::template::{apply, judge};
use crate::tokens::VirtualToken;

/// How long an approval request stays open.
pub const APPROVAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The actor of the scheduler's changes.
pub const SCHEDULER: &str = "scheduler";

/// A failed key-management call: the kind the CLI maps to an exit code,
/// and the message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// What kind of failure.
    pub kind: AdminErrorKind,
    /// Why.
    pub message: String,
}

pub(crate) type AResult<T> = std::result::Result<T, AdminError>;

fn fail<T>(kind: AdminErrorKind, message: impl Into<String>) -> AResult<T> {
    Err(AdminError {
        kind,
        message: message.into(),
    })
}

fn inv_err(e: keyward_inventory::Error) -> AdminError {
    use keyward_inventory::Error as E;
    let kind = match &e {
        E::Exists(_) | E::Conflict { .. } => AdminErrorKind::Conflict,
        E::NotFound(_) => AdminErrorKind::NotFound,
        E::Invalid(_) => AdminErrorKind::Invalid,
        _ => AdminErrorKind::Failed,
    };
    AdminError {
        kind,
        message: format!("inventory: {e}"),
    }
}

fn hsm_err(what: &str, e: crate::error::Error) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("HSM: {what}: {e}"),
    }
}

use hex::encode as hex;

fn random(n: usize) -> AResult<Vec<u8>> {
    let mut v = vec![0u8; n];
    getrandom::getrandom(&mut v).map_err(|e| AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("no randomness: {e}"),
    })?;
    Ok(v)
}

/// A backend session opened for one administrative action and closed when
/// dropped (objects it made that are not token objects go with it).
pub(crate) struct HsmSession<'b> {
    backend: &'b dyn Backend,
    handle: BackendSession,
}

impl<'b> HsmSession<'b> {
    pub(crate) fn open(backend: &'b dyn Backend) -> AResult<HsmSession<'b>> {
        let handle = backend
            .open_session(true)
            .map_err(|e| hsm_err("C_OpenSession", e))?;
        Ok(HsmSession { backend, handle })
    }

    pub(crate) fn find(&self, template: &[Attribute]) -> AResult<Vec<BackendObject>> {
        self.backend
            .find_objects(self.handle, template)
            .map_err(|e| hsm_err("C_FindObjects", e))
    }

    /// The objects of class `cko` with `CKA_ID` `id`.
    pub(crate) fn by_id(&self, id: &[u8], cko: u64) -> AResult<Vec<BackendObject>> {
        self.find(&[
            Attribute::ulong(ck::CKA_CLASS, cko),
            Attribute::bytes(ck::CKA_ID, id.to_vec()),
        ])
    }

    /// The objects of class `cko` that are version `m` (`CKA_ID` `id`) of a
    /// managed key on `token`: objects planted with its `CKA_ID` are left
    /// out ([`crate::keys::ManagedKeys::is_genuine`]).
    pub(crate) fn genuine(
        &self,
        keys: &crate::keys::ManagedKeys,
        token: &str,
        id: &[u8],
        cko: u64,
        m: ManagedRef,
    ) -> AResult<Vec<BackendObject>> {
        Ok(self
            .by_id(id, cko)?
            .into_iter()
            .filter(|&o| keys.is_genuine(token, self.backend, self.handle, o, m))
            .collect())
    }

    /// Whether `object` is a certificate of `key`'s own public key.
    pub(crate) fn is_certificate_of(&self, object: BackendObject, key: &KeyView) -> bool {
        crate::keys::is_certificate_of(self.backend, self.handle, object, key)
    }

    pub(crate) fn attrs(
        &self,
        object: BackendObject,
        types: &[u64],
    ) -> AResult<Vec<Option<Value>>> {
        let results = self
            .backend
            .get_attributes(self.handle, object, types)
            .map_err(|e| hsm_err("C_GetAttributeValue", e))?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                AttrResult::Value(AttrValue::Leaf(v)) => Some(v),
                _ => None,
            })
            .collect())
    }

    fn ulong(&self, object: BackendObject, attr: u64) -> AResult<Option<u64>> {
        Ok(match self.attrs(object, &[attr])?.pop().flatten() {
            Some(Value::Ulong(v)) => Some(v),
            _ => None,
        })
    }

    pub(crate) fn bytes(&self, object: BackendObject, attr: u64) -> AResult<Option<Vec<u8>>> {
        Ok(match self.attrs(object, &[attr])?.pop().flatten() {
            Some(Value::Bytes(v)) => Some(v),
            _ => None,
        })
    }

    /// The fingerprint of the key made of `objects` (the first that shows
    /// one: the public half of a pair, the secret key).
    pub(crate) fn fingerprint(&self, objects: &[BackendObject]) -> Option<[u8; 32]> {
        let fp = objects
            .iter()
            .find_map(|&o| crate::keys::fingerprint(self.backend, self.handle, o));
        if fp.is_none() {
            log::warn!(
                "backend objects {objects:?} show no public value or check value: \
                 recognised by their CKA_ID alone"
            );
        }
        fp
    }

    fn destroy(&self, objects: &[BackendObject]) {
        for &o in objects {
            if let Err(e) = self.backend.destroy_object(self.handle, o) {
                log::error!("cannot destroy backend object {o} after a failure: {e}");
            }
        }
    }

    /// `C_*Init` then the single-part call.
    fn run(&self, op: Op, mech: &Mechanism, key: BackendObject, data: &[u8]) -> AResult<Vec<u8>> {
        let what = format!("{op:?} with {}", mech_name(mech.mechanism));
        self.backend
            .op_init(self.handle, op, mech, Some(key))
            .map_err(|e| hsm_err(&what, e))?;
        self.backend
            .single(self.handle, op, data)
            .map_err(|e| hsm_err(&what, e))
    }

    fn verify(&self, mech: &Mechanism, key: BackendObject, data: &[u8], sig: &[u8]) -> AResult<()> {
        let what = format!("verify with {}", mech_name(mech.mechanism));
        self.backend
            .op_init(self.handle, Op::Verify, mech, Some(key))
            .map_err(|e| hsm_err(&what, e))?;
        self.backend
            .verify(self.handle, data, sig)
            .map_err(|e| hsm_err(&what, e))
    }
}

impl Drop for HsmSession<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.backend.close_session(self.handle) {
            log::warn!("cannot close admin backend session {}: {e}", self.handle);
        }
    }
}

fn mech_name(m: u64) -> String {
    keyward_policy::mechanism_name(m).map_or_else(|| format!("{m:#x}"), str::to_owned)
}

/// What generates a key of `alg`: a key pair (mechanism, public-only
/// attributes) or a secret key (mechanism, `CKA_VALUE_LEN`).
enum Recipe {
    Pair(u64, Vec<Attribute>),
    Secret(u64, u64),
}

fn recipe(alg: Algorithm) -> Recipe {
    let ec = |mech, curve: Curve| {
        Recipe::Pair(
            mech,
            vec![Attribute::bytes(ck::CKA_EC_PARAMS, curve.ec_params())],
        )
    };
    match alg {
        Algorithm::Ec(curve) => ec(ck::CKM_EC_KEY_PAIR_GEN, curve),
        Algorithm::Ed25519 => ec(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, Curve::Ed25519),
        Algorithm::Ed448 => ec(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, Curve::Ed448),
        Algorithm::X25519 => ec(ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN, Curve::X25519),
        Algorithm::X448 => ec(ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN, Curve::X448),
        Algorithm::Rsa { min_bits } => Recipe::Pair(
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
            vec![
                Attribute::ulong(ck::CKA_MODULUS_BITS, u64::from(min_bits)),
                Attribute::bytes(ck::CKA_PUBLIC_EXPONENT, vec![0x01, 0x00, 0x01]),
            ],
        ),
        Algorithm::Aes { min_bits } => Recipe::Secret(ck::CKM_AES_KEY_GEN, u64::from(min_bits / 8)),
        Algorithm::Generic { min_bits } | Algorithm::Hmac { min_bits } => {
            Recipe::Secret(ck::CKM_GENERIC_SECRET_KEY_GEN, u64::from(min_bits / 8))
        }
    }
}

/// What [`first_version`] records.
struct NewKey<'a> {
    token: &'a str,
    name: &'a str,
    owner: &'a str,
    class: &'a KeyClass,
    algorithm: Algorithm,
    backend_id: &'a [u8],
    /// See [`crate::keys::fingerprint`].
    fingerprint: Option<[u8; 32]>,
    /// `None`: pre-activation (an administrator activates it); `Some`:
    /// active from then, with the class's cryptoperiod.
    active_since: Option<SystemTime>,
}

/// The inventory record of a new key of `k.class` and its version 1.
fn first_version(k: NewKey<'_>) -> (KeyRecord, KeyVersion) {
    let now = k.active_since.unwrap_or_else(SystemTime::now);
    let at = secs(now);
    let (state, dates) = match k.active_since {
        Some(since) => (InvState::Active, period_dates(Some(k.class), since)),
        None => (InvState::PreActivation, DateUpdates::default()),
    };
    let record = KeyRecord {
        id: 0,
        name: k.name.to_owned(),
        token: k.token.to_owned(),
        owner: k.owner.to_owned(),
        purpose: k.class.purpose.name().to_owned(),
        class: k.class.name.clone(),
        algorithm: k.algorithm.to_string(),
        state,
        created_at: at,
        activated_at: k.active_since.map(secs),
        rotated_at: None,
        deactivated_at: None,
        protect_until: dates.protect_until,
        process_until: dates.process_until,
        next_rotation: dates.next_rotation,
        scope: k.class.scope.clone(),
        last_used_at: None,
        backup_allowed: k.class.backup,
    };
    let version = KeyVersion {
        key_id: 0,
        version: 1,
        backend_id: k.backend_id.to_vec(),
        backend_label: k.name.to_owned(),
        state,
        created_at: at,
        deactivated_at: None,
        destroyed_at: None,
        fingerprint: k.fingerprint.map(|f| f.to_vec()),
    };
    (record, version)
}

/// The change that records a new key and its version 1 by `who`.
fn creation(record: KeyRecord, version: KeyVersion, who: &str) -> LifecycleChange {
    LifecycleChange {
        at: record.created_at,
        key: KeyChange::Create(Box::new(record)),
        versions: vec![VersionChange::Add(version)],
        dates: DateUpdates::default(),
        actor: who.to_owned(),
        reason: "created".to_owned(),
        trail: Vec::new(),
    }
}

/// The `lifecycle` records of `change` (see [`Agent::apply_change`]);
/// `None` when the key it changes is not in the view.
fn lifecycle_records(
    by: &Actor,
    operation: &str,
    why: &str,
    change: &LifecycleChange,
    keys: &crate::keys::ManagedKeys,
) -> Option<Vec<AuditEvent>> {
    let (token, name, key_move) = match &change.key {
        KeyChange::Create(k) => (k.token.clone(), k.name.clone(), Some((None, k.state))),
        KeyChange::Update {
            key_id,
            expected,
            to,
        } => {
            let k = keys.key(*key_id)?;
            let (token, name) = (k.record.token.clone(), k.record.name.clone());
            (token, name, to.map(|to| (Some(*expected), to)))
        }
    };
    let moves = change.versions.iter().map(|v| match v {
        VersionChange::Add(v) => (Some(v.version), None, v.state),
        VersionChange::Move { version, from, to } => (Some(*version), Some(*from), *to),
    });
    let state = |s: Option<InvState>| s.map_or("none", InvState::as_str);
    let records = key_move
        .map(|(from, to)| (None, from, to))
        .into_iter()
        .chain(moves)
        .map(|(version, from, to)| {
            let mut e = crate::audit::event(
                keyward_inventory::AuditKind::Lifecycle,
                by.clone(),
                operation,
            );
            e.token = Some(token.clone());
            e.key = Some(name.clone());
            e.key_version = version;
            e.reason = crate::audit::lifecycle_reason(state(from), state(Some(to)), why);
            e
        })
        .collect();
    Some(records)
}

/// The token and key a key request names, for the trail.
fn request_target(req: &KeyRequest) -> (Option<String>, Option<String>) {
    match req {
        KeyRequest::Create { name, token, .. }
        | KeyRequest::Show { name, token }
        | KeyRequest::Transition { name, token, .. }
        | KeyRequest::Rotate { name, token }
        | KeyRequest::Verify { name, token } => (token.clone(), Some(name.clone())),
        KeyRequest::GrantAdd { key, token, .. } | KeyRequest::GrantRemove { key, token, .. } => {
            (token.clone(), Some(key.clone()))
        }
        KeyRequest::GrantList { key, token } => (token.clone(), key.clone()),
        KeyRequest::Adopt { token, name, .. } => (token.clone(), Some(name.clone())),
        KeyRequest::PinUnlock { token, .. } => (Some(token.clone()), None),
        KeyRequest::List { token, .. } | KeyRequest::Discover { token } => (token.clone(), None),
        KeyRequest::AppList => (None, None),
    }
}

/// Bytes from hex, `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The parts of a managed key needed to act on it.
struct Target<'a> {
    token: &'a VirtualToken,
    key: Arc<KeyView>,
}

impl Target<'_> {
    fn label(&self) -> String {
        format!("{}/{}", self.key.record.token, self.key.record.name)
    }

    /// The version that protects: the newest that is not destroyed.
    fn current(&self) -> AResult<&KeyVersion> {
        self.key.live_version().map_or_else(
            || {
                fail(
                    AdminErrorKind::Refused,
                    format!("key {} has no live version", self.label()),
                )
            },
            Ok,
        )
    }
}

fn state_of(v: &KeyView) -> KeyState {
    policy_state(v.record.state)
}

fn action_of(a: KeyAction) -> Action {
    match a {
        KeyAction::Activate => Action::Activate,
        KeyAction::Suspend => Action::Suspend,
        KeyAction::Resume => Action::Resume,
        KeyAction::Deactivate => Action::Deactivate,
        KeyAction::Revoke { .. } => Action::Revoke,
        KeyAction::Destroy => Action::Destroy,
    }
}

/// The cryptoperiod dates of a key of `class` whose period starts at `at`.
fn period_dates(class: Option<&KeyClass>, at: SystemTime) -> DateUpdates {
    let Some(class) = class else {
        return DateUpdates::default();
    };
    let p = class.cryptoperiod(at);
    DateUpdates {
        protect_until: Some(secs(p.protect_until)),
        process_until: Some(secs(p.process_until)),
        next_rotation: p.rotate_at.map(secs),
        ..DateUpdates::default()
    }
}

/// The algorithm of a backend key, from its type and size or curve.
pub(crate) fn algorithm_of(
    s: &HsmSession<'_>,
    object: BackendObject,
    public: Option<BackendObject>,
    class: &KeyClass,
) -> AResult<Algorithm> {
    let key_type = s.ulong(object, ck::CKA_KEY_TYPE)?;
    let curve = || -> AResult<Option<Curve>> {
        let params = match s.bytes(object, ck::CKA_EC_PARAMS)? {
            Some(p) => Some(p),
            None => match public {
                Some(p) => s.bytes(p, ck::CKA_EC_PARAMS)?,
                None => None,
            },
        };
        Ok(params.as_deref().and_then(Curve::from_ec_params))
    };
    let value_bits = || -> AResult<Option<u32>> {
        Ok(s.ulong(object, ck::CKA_VALUE_LEN)?
            .map(|n| u32::try_from(n.saturating_mul(8)).unwrap_or(u32::MAX)))
    };
    let alg = match key_type {
        Some(ck::CKK_EC) => match curve()? {
            Some(c @ (Curve::P256 | Curve::P384 | Curve::P521)) => Some(Algorithm::Ec(c)),
            _ => None,
        },
        Some(ck::CKK_EC_EDWARDS) => match curve()? {
            Some(Curve::Ed25519) => Some(Algorithm::Ed25519),
            Some(Curve::Ed448) => Some(Algorithm::Ed448),
            _ => None,
        },
        Some(ck::CKK_EC_MONTGOMERY) => match curve()? {
            Some(Curve::X25519) => Some(Algorithm::X25519),
            Some(Curve::X448) => Some(Algorithm::X448),
            _ => None,
        },
        Some(ck::CKK_RSA) => {
            let modulus = match s.bytes(object, ck::CKA_MODULUS)? {
                Some(m) => Some(m),
                None => match public {
                    Some(p) => s.bytes(p, ck::CKA_MODULUS)?,
                    None => None,
                },
            };
            modulus.map(|m| {
                let m: &[u8] = &m;
                let lead = m.iter().take_while(|b| **b == 0).count();
                Algorithm::Rsa {
                    min_bits: u32::try_from((m.len() - lead) * 8).unwrap_or(u32::MAX),
                }
            })
        }
        Some(ck::CKK_AES) => value_bits()?.map(|min_bits| Algorithm::Aes { min_bits }),
        Some(
            ck::CKK_GENERIC_SECRET
            | ck::CKK_SHA256_HMAC
            | ck::CKK_SHA384_HMAC
            | ck::CKK_SHA512_HMAC,
        ) => value_bits()?.map(|bits| {
            if class
                .algorithms
                .iter()
                .any(|a| matches!(a, Algorithm::Hmac { .. }))
            {
                Algorithm::Hmac { min_bits: bits }
            } else {
                Algorithm::Generic { min_bits: bits }
            }
        }),
        _ => None,
    };
    let Some(alg) = alg else {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "the object's key type ({}) or its size or curve is not one keyward manages",
                key_type.map_or_else(|| "none".into(), key_type_name)
            ),
        );
    };
    let fits = alg.fits(class.purpose)
        && class.algorithms.iter().any(|allowed| match (allowed, alg) {
            (Algorithm::Rsa { min_bits: m }, Algorithm::Rsa { min_bits: b })
            | (Algorithm::Aes { min_bits: m }, Algorithm::Aes { min_bits: b })
            | (Algorithm::Hmac { min_bits: m }, Algorithm::Hmac { min_bits: b })
            | (Algorithm::Generic { min_bits: m }, Algorithm::Generic { min_bits: b }) => b >= *m,
            (a, b) => *a == b,
        });
    if !fits {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "a {alg} key does not fit class {:?} ({})",
                class.name, class.purpose
            ),
        );
    }
    Ok(alg)
}

fn class_name(cko: u64) -> String {
    match cko {
        ck::CKO_PRIVATE_KEY => "CKO_PRIVATE_KEY".into(),
        ck::CKO_PUBLIC_KEY => "CKO_PUBLIC_KEY".into(),
        ck::CKO_SECRET_KEY => "CKO_SECRET_KEY".into(),
        ck::CKO_DATA => "CKO_DATA".into(),
        ck::CKO_CERTIFICATE => "CKO_CERTIFICATE".into(),
        other => format!("{other:#x}"),
    }
}

fn key_type_name(ckk: u64) -> String {
    match ckk {
        ck::CKK_RSA => "CKK_RSA".into(),
        ck::CKK_EC => "CKK_EC".into(),
        ck::CKK_EC_EDWARDS => "CKK_EC_EDWARDS".into(),
        ck::CKK_EC_MONTGOMERY => "CKK_EC_MONTGOMERY".into(),
        ck::CKK_AES => "CKK_AES".into(),
        ck::CKK_GENERIC_SECRET => "CKK_GENERIC_SECRET".into(),
        ck::CKK_SHA256_HMAC => "CKK_SHA256_HMAC".into(),
        ck::CKK_DES3 => "CKK_DES3".into(),
        other => format!("{other:#x}"),
    }
}

fn state_name(s: InvState) -> String {
    s.as_str().to_owned()
}

fn grant_info(key: &str, g: &Grant) -> GrantInfo {
    GrantInfo {
        key: key.to_owned(),
        application: g.application.clone(),
        operations: g.operations.clone(),
        expires_at: g.expires_at,
    }
}

fn history_entry(c: &StateChange) -> HistoryEntry {
    HistoryEntry {
        at: c.at,
        version: c.version,
        from: c.from.map(state_name),
        to: state_name(c.to),
        actor: c.actor.clone(),
        reason: c.reason.clone(),
    }
}

fn key_info(v: &KeyView, history: Vec<HistoryEntry>) -> KeyInfo {
    let r = &v.record;
    KeyInfo {
        name: r.name.clone(),
        token: r.token.clone(),
        owner: r.owner.clone(),
        purpose: r.purpose.clone(),
        class: r.class.clone(),
        algorithm: r.algorithm.clone(),
        state: state_name(r.state),
        created_at: r.created_at,
        activated_at: r.activated_at,
        rotated_at: r.rotated_at,
        deactivated_at: r.deactivated_at,
        protect_until: r.protect_until,
        process_until: r.process_until,
        next_rotation: r.next_rotation,
        scope: r.scope.clone(),
        last_used_at: r.last_used_at,
        backup_allowed: r.backup_allowed,
        versions: v
            .versions
            .iter()
            .map(|x| VersionInfo {
                version: x.version,
                backend_id: x.backend_id.clone(),
                state: state_name(x.state),
                created_at: x.created_at,
                deactivated_at: x.deactivated_at,
                destroyed_at: x.destroyed_at,
            })
            .collect(),
        grants: v.grants.iter().map(|g| grant_info(&r.name, g)).collect(),
        history,
    }
}

fn request_info(r: &ApprovalRecord) -> ApprovalRequest {
    ApprovalRequest {
        id: r.id.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        requester: r.requester.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        status: r.status.clone(),
    }
}

/// The administrator as the inventory records them.
fn actor(admin: &Peer) -> String {
    format!("uid:{}", admin.uid)
}

impl Agent {
    /// Answers one key-management request of administrator `admin`. Every
    /// action is logged with the administrator at info, refusals at warn.
    ///
    /// What the trail keeps: a request that changes something, uses a key
    /// or reads the HSM has two admin records, named by the request
    /// (`key.suspend`, `grant.add`, ...): `requested: <what it does>`,
    /// written durably before anything is done (an action the trail cannot
    /// record is not taken), and its outcome. A read-only request
    /// ([`KeyRequest::is_read_only`]: `key.list`, `key.show`, `grant.list`,
    /// `app.list`) has none: it changes nothing and shows only what the
    /// admin socket's users may see anyway, and monitoring that polls it
    /// would bury the actions in the trail. It is logged at info.
    pub fn key_request(&self, admin: &Peer, req: KeyRequest) -> AdminResponse {
        let (operation, what) = (req.name(), req.describe());
        if req.is_read_only() {
            log::info!("admin {admin}: {operation}: {what}");
            return match self.key_call(admin, req) {
                Ok(resp) => AdminResponse::Key(Box::new(resp)),
                Err(e) => {
                    log::warn!("admin {admin}: {operation}: {what}: {}", e.message);
                    AdminResponse::KeyErr {
                        kind: e.kind,
                        message: e.message,
                    }
                }
            };
        }
        let (token, key) = request_target(&req);
        let admin_event = |result: u64, reason: &str| {
            let mut e = crate::audit::event(
                keyward_inventory::AuditKind::Admin,
                admin.as_administrator(),
                operation,
            );
            e.token = token.clone();
            e.key = key.clone();
            e.result = result;
            e.reason = reason.chars().take(4096).collect();
            e
        };
        // Fail closed: an action the trail cannot record is not taken.
        if let Err(why) = self.audit.durable(admin_event(
            0,
            &format!("{}{what}", keyward_inventory::REQUESTED),
        )) {
            return AdminResponse::KeyErr {
                kind: AdminErrorKind::Failed,
                message: format!("refused: {why}"),
            };
        }
        let (response, result, reason) = match self.key_call(admin, req) {
            Ok(resp) => {
                log::info!("admin {admin}: {operation}: {what}: done");
                let pending = matches!(resp, KeyResponse::Pending(_));
                let reason = if pending {
                    "needs approval: request recorded"
                } else {
                    "done"
                };
                (AdminResponse::Key(Box::new(resp)), 0, reason.to_owned())
            }
            Err(e) => {
                let reason = format!("{}: {}", e.kind.as_str(), e.message);
                log::warn!("admin {admin}: {operation}: {what}: {reason}");
                let response = AdminResponse::KeyErr {
                    kind: e.kind,
                    message: e.message,
                };
                (response, ck::CKR_FUNCTION_FAILED, reason)
            }
        };
        if let Err(why) = self.audit.durable(admin_event(result, &reason)) {
            log::error!(
                "admin {admin}: {operation}: {what}: the outcome could not be recorded: {why}"
            );
        }
        response
    }

    fn key_call(&self, admin: &Peer, req: KeyRequest) -> AResult<KeyResponse> {
        let who = actor(admin);
        let by = admin.as_administrator();
        match req {
            KeyRequest::Create {
                name,
                class,
                algorithm,
                token,
                owner,
            } => {
                let owner = owner.unwrap_or_else(|| who.clone());
                let info = self.create_key(
                    (&who, &by),
                    &name,
                    &class,
                    algorithm.as_deref(),
                    token.as_deref(),
                    &owner,
                )?;
                Ok(KeyResponse::Key(Box::new(info)))
            }
            KeyRequest::List { token, state } => self.list_keys(token.as_deref(), state.as_deref()),
            KeyRequest::Show { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                Ok(KeyResponse::Key(Box::new(self.info(&t.key)?)))
            }
            KeyRequest::Transition {
                name,
                token,
                action,
                reason,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                let reason = reason.unwrap_or_else(|| format!("keyward key {}", action_of(action)));
                self.transition_key(&t, action, (&who, &by), &reason, SystemTime::now())
            }
            KeyRequest::Rotate { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                self.rotate_key(&t, (&who, &by), "rotation requested", SystemTime::now())?;
                Ok(KeyResponse::Key(Box::new(self.info(&*self.reload(&t)?)?)))
            }
            KeyRequest::Verify { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                self.verify_key(&t)
            }
            KeyRequest::GrantAdd {
                key,
                token,
                application,
                operations,
                until,
            } => {
                let t = self.target(token.as_deref(), &key)?;
                let done = self.grant_add(&t, &application, &operations, until, &who)?;
                let until = until.map_or_else(
                    || "no end".to_owned(),
                    |u| format!("until {}", keyward_protocol::names::utc(u)),
                );
                let reason = format!(
                    "application {application:?}, operations [{}], {until}",
                    operations.join(", ")
                );
                self.record_grant(by, &t, "grant add", &reason);
                Ok(done)
            }
            KeyRequest::GrantRemove {
                key,
                token,
                application,
            } => {
                let t = self.target(token.as_deref(), &key)?;
                self.keys
                    .inventory()
                    .revoke_grant(t.key.record.id, &application, &who)
                    .map_err(inv_err)?;
                self.refresh(t.key.record.id)?;
                self.record_grant(
                    by,
                    &t,
                    "grant remove",
                    &format!("application {application:?}"),
                );
                Ok(KeyResponse::Done(format!(
                    "grant of {} to {application:?} removed",
                    t.label()
                )))
            }
            KeyRequest::GrantList { key, token } => {
                let keys = match key {
                    Some(k) => vec![self.target(token.as_deref(), &k)?.key],
                    None => {
                        let label = token
                            .as_deref()
                            .map(|l| self.admin_token(Some(l)))
                            .transpose()?;
                        let mut all = self.keys.all();
                        all.retain(|k| label.is_none_or(|t| t.config.label == k.record.token));
                        all.sort_by(|a, b| {
                            (&a.record.token, &a.record.name)
                                .cmp(&(&b.record.token, &b.record.name))
                        });
                        all
                    }
                };
                Ok(KeyResponse::Grants(
                    keys.iter()
                        .flat_map(|k| k.grants.iter().map(|g| grant_info(&k.record.name, g)))
                        .collect(),
                ))
            }
            KeyRequest::AppList => Ok(KeyResponse::Apps(self.app_list()?)),
            KeyRequest::PinUnlock {
                token,
                role,
                application,
            } => {
                self.admin_token(Some(&token))?;
                let role = role.map(|r| match r {
                    keyward_protocol::admin::PinRole::User => Role::User,
                    keyward_protocol::admin::PinRole::So => Role::So,
                });
                let done = self
                    .unlock_pin(&token, role, application.as_deref())
                    .map_err(|m| AdminError {
                        kind: AdminErrorKind::Failed,
                        message: m,
                    })?;
                Ok(KeyResponse::Done(done))
            }
            KeyRequest::Discover { token } => {
                let tokens: Vec<&VirtualToken> = match token.as_deref() {
                    Some(l) => vec![self.admin_token(Some(l))?],
                    None => self.tokens.iter().collect(),
                };
                let mut shadows = Vec::new();
                for t in tokens {
                    let found = self.scan(t)?;
                    let objects: Vec<BackendObject> = found.iter().map(|(o, _)| *o).collect();
                    // Recorded here: the scheduler need not record them again.
                    self.keys.note_shadows(&t.config.label, &objects);
                    shadows.extend(found.into_iter().map(|(_, f)| f));
                }
                self.record_findings(&by, &shadows);
                Ok(KeyResponse::Shadows(shadows))
            }
            KeyRequest::Adopt {
                token,
                backend_id,
                name,
                class,
            } => {
                let t = self.admin_token(token.as_deref())?;
                let info = self.adopt_key(t, &backend_id, &name, &class, (&who, &by))?;
                Ok(KeyResponse::Key(Box::new(info)))
            }
        }
    }

    /// The virtual token labelled `label`, or the first.
    pub(crate) fn admin_token(&self, label: Option<&str>) -> AResult<&VirtualToken> {
        let found = match label {
            Some(l) => self.token_labelled(l),
            None => self.tokens.first(),
        };
        found.map_or_else(
            || {
                fail(
                    AdminErrorKind::NotFound,
                    format!("no token {:?}", label.unwrap_or("(any)")),
                )
            },
            Ok,
        )
    }

    pub(crate) fn backend<'t>(&self, token: &'t VirtualToken) -> AResult<&'t Arc<dyn Backend>> {
        token.backend().map_err(|_| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("token {:?}: the backend is unavailable", token.config.label),
        })
    }

    fn target(&self, token: Option<&str>, name: &str) -> AResult<Target<'_>> {
        let t = self.admin_token(token)?;
        let record = self
            .keys
            .inventory()
            .key(&t.config.label, name)
            .map_err(inv_err)?;
        let key = record.and_then(|r| self.keys.key(r.id));
        match key {
            Some(key) => Ok(Target { token: t, key }),
            None => fail(
                AdminErrorKind::NotFound,
                format!("no key {name:?} on token {:?}", t.config.label),
            ),
        }
    }

    fn refresh(&self, key_id: i64) -> AResult<()> {
        self.keys.refresh(key_id).map_err(inv_err)
    }

    fn reload(&self, t: &Target<'_>) -> AResult<Arc<KeyView>> {
        self.refresh(t.key.record.id)?;
        self.keys.key(t.key.record.id).map_or_else(
            || {
                fail(
                    AdminErrorKind::NotFound,
                    format!("key {} is gone", t.label()),
                )
            },
            Ok,
        )
    }

    fn info(&self, key: &KeyView) -> AResult<KeyInfo> {
        let history = self
            .keys
            .inventory()
            .history(key.record.id)
            .map_err(inv_err)?;
        Ok(key_info(key, history.iter().map(history_entry).collect()))
    }

    fn list_keys(&self, token: Option<&str>, state: Option<&str>) -> AResult<KeyResponse> {
        let state = match state {
            Some(s) => Some(s.parse::<InvState>().map_err(|e| AdminError {
                kind: AdminErrorKind::Invalid,
                message: e.to_string(),
            })?),
            None => None,
        };
        let token = match token {
            Some(l) => Some(self.admin_token(Some(l))?.config.label.clone()),
            None => None,
        };
        let records = self
            .keys
            .inventory()
            .keys(&KeyFilter {
                token,
                state,
                class: None,
            })
            .map_err(inv_err)?;
        let mut out = Vec::new();
        for r in records {
            if let Some(k) = self.keys.key(r.id) {
                out.push(self.info(&k)?);
            }
        }
        Ok(KeyResponse::Keys(out))
    }

    /// Generates a key of `class` in `token`'s HSM on a fresh session, as
    /// token objects with a pending label (see [`pending_label`]) and a new
    /// random `CKA_ID`, under the class's forced attributes. Returns the
    /// `CKA_ID` and the objects.
    fn generate(
        &self,
        token: &VirtualToken,
        backend: &dyn Backend,
        class: &KeyClass,
        alg: Algorithm,
        label: &str,
    ) -> AResult<(Vec<u8>, Vec<BackendObject>)> {
        let id = random(16)?;
        // Until the inventory records the key, its CKA_ID is noted as
        // pending (durably, before the HSM makes anything): if the agent
        // dies in between, `recover_pending` destroys the objects at the
        // next start, and until then searches do not show them.
        token.state.add_pending(&hex(&id)).map_err(|e| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("state directory: {e}"),
        })?;
        self.keys.set_pending(&token.config.label, &id, true);
        let common = |private: bool| {
            vec![
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_PRIVATE, private),
                Attribute::bytes(ck::CKA_LABEL, label.as_bytes().to_vec()),
                Attribute::bytes(ck::CKA_ID, id.clone()),
            ]
        };
        let refused = |r: keyward_policy::Refusal| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("class {:?}: {r}", class.name),
        };
        let made = (|| -> AResult<Vec<BackendObject>> {
            let s = HsmSession::open(backend)?;
            Ok(match recipe(alg) {
                Recipe::Pair(mech, extra) => {
                    let mut public = common(false);
                    public.extend(extra);
                    let mut private = common(true);
                    let adj = judge(&public, |p| {
                        judge(&private, |q| check_key_pair_generation(class, mech, p, q))
                    })
                    .map_err(refused)?;
                    apply(&mut public, &adj.public);
                    apply(&mut private, &adj.private);
                    let (hpub, hpriv) = backend
                        .generate_key_pair(s.handle, &Mechanism::plain(mech), &public, &private)
                        .map_err(|e| {
                            hsm_err(&format!("C_GenerateKeyPair {}", mech_name(mech)), e)
                        })?;
                    vec![hpub, hpriv]
                }
                Recipe::Secret(mech, len) => {
                    let mut template = common(true);
                    template.push(Attribute::ulong(ck::CKA_VALUE_LEN, len));
                    let adj =
                        judge(&template, |t| check_generation(class, mech, t)).map_err(refused)?;
                    apply(&mut template, &adj);
                    let h = backend
                        .generate_key(s.handle, &Mechanism::plain(mech), &template)
                        .map_err(|e| hsm_err(&format!("C_GenerateKey {}", mech_name(mech)), e))?;
                    vec![h]
                }
            })
        })();
        match made {
            Ok(objects) => Ok((id, objects)),
            Err(e) => {
                self.end_pending(token, &id);
                Err(e)
            }
        }
    }

    /// Destroys objects generated for a change that could not be recorded.
    fn destroy_orphans(&self, backend: &dyn Backend, objects: &[BackendObject]) {
        match HsmSession::open(backend) {
            Ok(s) => s.destroy(objects),
            Err(e) => log::error!(
                "cannot destroy generated objects {objects:?} after a failure: {}",
                e.message
            ),
        }
    }

    fn create_key(
        &self,
        (who, by): (&str, &Actor),
        name: &str,
        class_name: &str,
        algorithm: Option<&str>,
        token: Option<&str>,
        owner: &str,
    ) -> AResult<KeyInfo> {
        if name.is_empty() {
            return fail(AdminErrorKind::Invalid, "a key needs a name");
        }
        let policy = self.policy();
        let Some(class) = policy.class(class_name) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("no key class {class_name:?} in the policy"),
            );
        };
        let alg = match algorithm {
            Some(text) => {
                let alg = Algorithm::parse(text).map_err(|m| AdminError {
                    kind: AdminErrorKind::Invalid,
                    message: m,
                })?;
                if !class.algorithms.iter().any(|a| a.covers(alg)) {
                    let allowed: Vec<String> =
                        class.algorithms.iter().map(|a| a.to_string()).collect();
                    return fail(
                        AdminErrorKind::Refused,
                        format!(
                            "class {class_name:?} allows {}, not {alg}",
                            allowed.join(", ")
                        ),
                    );
                }
                alg
            }
            None => match class.algorithms.first() {
                Some(a) => *a,
                None => {
                    return fail(
                        AdminErrorKind::Refused,
                        format!("class {class_name:?} has no algorithm"),
                    )
                }
            },
        };
        let t = self.admin_token(token)?;
        let label = t.config.label.clone();
        if self
            .keys
            .inventory()
            .key(&label, name)
            .map_err(inv_err)?
            .is_some()
        {
            return fail(
                AdminErrorKind::Conflict,
                format!("a key {name:?} exists on token {label:?}"),
            );
        }
        let backend = self.backend(t)?;
        let (id, objects) = self.generate(t, backend.as_ref(), class, alg, name)?;
        let fingerprint = HsmSession::open(backend.as_ref())?.fingerprint(&objects);
        let (record, version) = first_version(NewKey {
            token: &label,
            name,
            owner,
            class,
            algorithm: alg,
            backend_id: &id,
            fingerprint,
            active_since: None,
        });
        let change = creation(record, version, who);
        let created = match self.apply_change(by, "create", "created", change) {
            Ok(done) => done.key,
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t, &id);
                return Err(e);
            }
        };
        self.judged(&label, &objects, created.id, 1);
        self.refresh(created.id)?;
        self.end_pending(t, &id);
        log::info!(
            "key {label}/{name} created by {who}: class {class_name}, {alg}, CKA_ID {}",
            hex(&id)
        );
        let view = self.keys.key(created.id).map_or_else(
            || fail(AdminErrorKind::Failed, "the new key is not in the view"),
            Ok,
        )?;
        self.info(&view)
    }

    /// A lifecycle transition of key `t` by `who`.
    ///
    /// Actions that need approval are recorded (a pending request, in the
    /// inventory, expiring after [`APPROVAL_LIFETIME`]) and not performed.
    ///
    /// `Revoke { rotate: true }` is the emergency rotation, allowed on an
    /// active key only: first the key and every live version become
    /// compromised (one use later, nothing works: that part never waits);
    /// then a new version is generated, added active, and the key itself
    /// moves compromised → active with a fresh cryptoperiod from now, its
    /// history saying "emergency rotation to version N". The logical key
    /// (name, grants) stays in service; the compromised material never
    /// comes back. If generation fails, the key stays compromised and the
    /// call fails (an administrator creates a replacement).
    fn transition_key(
        &self,
        t: &Target<'_>,
        action: KeyAction,
        (who, by): (&str, &Actor),
        reason: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let act = action_of(action);
        let from = state_of(&t.key);
        let to = transition(from, act).map_err(|r| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {r}", t.label()),
        })?;
        if needs_approval(from, act) {
            return self.record_request(t, act.name(), who, now);
        }
        let rotate = matches!(action, KeyAction::Revoke { rotate: true });
        if rotate && from != KeyState::Active {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "key {} is {from}: revoke --rotate replaces an active key; revoke it alone",
                    t.label()
                ),
            );
        }
        let at = secs(now);
        let mut dates = DateUpdates::default();
        match act {
            Action::Activate => {
                dates = period_dates(self.policy().class(&t.key.record.class), now);
                dates.activated_at = Some(at);
            }
            Action::Deactivate => dates.deactivated_at = Some(at),
            _ => {}
        }
        // The versions follow as the policy says.
        let versions = t
            .key
            .versions
            .iter()
            .filter_map(|v| {
                let to = version_transition(act, policy_state(v.state))?;
                Some(VersionChange::Move {
                    version: v.version,
                    from: v.state,
                    to: inventory_state(to),
                })
            })
            .collect();
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: t.key.record.id,
                expected: t.key.record.state,
                to: Some(inventory_state(to)),
            },
            versions,
            dates,
            actor: who.to_owned(),
            reason: reason.to_owned(),
            at,
            trail: Vec::new(),
        };
        self.apply_change(by, act.name(), reason, change)?;
        log::info!("key {} {} by {who}: {reason}", t.label(), act.past_tense());
        if rotate {
            let revoked = Target {
                token: t.token,
                key: self.reload(t)?,
            };
            // Named as the revocation it completes.
            let v = self.new_version(
                &revoked,
                (who, by),
                Rotation::Emergency,
                (act.name(), reason),
                now,
            )?;
            log::info!(
                "key {}: emergency rotation to version {v} by {who}",
                t.label()
            );
        }
        Ok(KeyResponse::Key(Box::new(self.info(&*self.reload(t)?)?)))
    }

    /// Records `action` on `t` for approval; answers `Pending`.
    fn record_request(
        &self,
        t: &Target<'_>,
        action: &str,
        who: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let created_at = secs(now);
        let record = ApprovalRecord {
            id: hex(&random(16)?),
            action: action.to_owned(),
            target: t.label(),
            key_id: Some(t.key.record.id),
            parameters: "{}".to_owned(),
            requester: who.to_owned(),
            created_at,
            expires_at: created_at + APPROVAL_LIFETIME.as_secs() as i64,
            status: "pending".to_owned(),
        };
        self.keys
            .inventory()
            .create_request(&record)
            .map_err(inv_err)?;
        log::warn!(
            "key {}: {action} by {who} needs approval: request {} recorded, not performed",
            t.label(),
            record.id
        );
        Ok(KeyResponse::Pending(request_info(&record)))
    }

    /// Generates the next version of `t` and adds it (active) in one
    /// change with what `rotation` does to the key and its older versions
    /// (see [`Rotation`]) and the key's new cryptoperiod from `now`.
    /// `operation` names the trail records, `why` ends their reason.
    /// Returns the version's number.
    fn new_version(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        rotation: Rotation,
        (operation, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<u32> {
        let r = &t.key.record;
        let from = state_of(&t.key);
        let to = rotation.key_state(from).map_err(|e| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("key {}: {e}", t.label()),
        })?;
        let policy = self.policy();
        let Some(class) = policy.class(&r.class) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("key class {:?} is no longer in the policy", r.class),
            );
        };
        let alg = Algorithm::parse(&r.algorithm).map_err(|m| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("key {}: stored algorithm: {m}", t.label()),
        })?;
        let backend = self.backend(t.token)?;
        let (id, objects) = self.generate(t.token, backend.as_ref(), class, alg, &r.name)?;
        let fingerprint = match HsmSession::open(backend.as_ref()) {
            Ok(s) => s.fingerprint(&objects),
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t.token, &id);
                return Err(e);
            }
        };
        let at = secs(now);
        let next = t.key.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let mut versions: Vec<VersionChange> = t
            .key
            .versions
            .iter()
            .filter_map(|v| {
                let to = rotation.demotes(policy_state(v.state))?;
                Some(VersionChange::Move {
                    version: v.version,
                    from: v.state,
                    to: inventory_state(to),
                })
            })
            .collect();
        versions.push(VersionChange::Add(KeyVersion {
            key_id: r.id,
            version: next,
            backend_id: id.clone(),
            backend_label: r.name.clone(),
            state: InvState::Active,
            created_at: at,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: fingerprint.map(|f| f.to_vec()),
        }));
        let mut dates = period_dates(Some(class), now);
        dates.rotated_at = Some(at);
        if from != to {
            dates.activated_at = Some(at);
        }
        let reason = format!("{rotation} to version {next}");
        let change = LifecycleChange {
            key: KeyChange::Update {
                key_id: r.id,
                expected: r.state,
                to: (from != to).then_some(inventory_state(to)),
            },
            versions,
            dates,
            actor: who.to_owned(),
            reason: reason.clone(),
            at,
            trail: Vec::new(),
        };
        match self.apply_change(by, operation, &format!("{reason}: {why}"), change) {
            Ok(_) => {
                self.judged(&t.token.config.label, &objects, r.id, next);
                self.refresh(r.id)?;
                self.end_pending(t.token, &id);
                Ok(next)
            }
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t.token, &id);
                self.refresh(r.id)?;
                Err(e)
            }
        }
    }

    /// Rotation: a new version from the same class (same label, new
    /// `CKA_ID`) protects from now; older versions drop to deactivated; the
    /// key's protect and process periods and its next rotation count from
    /// now. Active keys only ([`Rotation::Planned`]).
    fn rotate_key(
        &self,
        t: &Target<'_>,
        (who, by): (&str, &Actor),
        reason: &str,
        now: SystemTime,
    ) -> AResult<u32> {
        let v = self.new_version(t, (who, by), Rotation::Planned, ("rotate", reason), now)?;
        log::info!(
            "key {} rotated to version {v} by {who}: {reason}",
            t.label()
        );
        Ok(v)
    }

    /// Proves the current version works inside the HSM: a signature made
    /// and verified, a block encrypted and decrypted, a session key wrapped
    /// and unwrapped, a MAC made and verified, or a shared secret derived
    /// on both sides. Nothing leaves the HSM but random test data and its
    /// results.
    fn verify_key(&self, t: &Target<'_>) -> AResult<KeyResponse> {
        let v = t.current()?;
        let r = &t.key.record;
        let alg = Algorithm::parse(&r.algorithm).map_err(|m| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("stored algorithm: {m}"),
        })?;
        let purpose = Purpose::from_name(&r.purpose).map_or_else(
            || {
                fail(
                    AdminErrorKind::Failed,
                    format!("stored purpose {:?}", r.purpose),
                )
            },
            Ok,
        )?;
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let m = ManagedRef {
            key_id: r.id,
            version: v.version,
        };
        let token = &t.token.config.label;
        let one = |cko: u64| -> AResult<BackendObject> {
            s.genuine(&self.keys, token, &v.backend_id, cko, m)?
                .first()
                .copied()
                .map_or_else(
                    || {
                        fail(
                            AdminErrorKind::Failed,
                            format!(
                                "version {} (CKA_ID {}): no {} on the HSM",
                                v.version,
                                hex(&v.backend_id),
                                class_name(cko)
                            ),
                        )
                    },
                    Ok,
                )
        };
        let mismatch = |what: &str| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("{what}: the results differ"),
        };
        let detail = match (purpose, alg) {
            (Purpose::Signing, _) => {
                let (mech, what) = match alg {
                    Algorithm::Ec(_) => (Mechanism::plain(ck::CKM_ECDSA), "ECDSA"),
                    Algorithm::Ed25519 | Algorithm::Ed448 => {
                        (Mechanism::plain(ck::CKM_EDDSA), "EdDSA")
                    }
                    _ => (Mechanism::plain(ck::CKM_SHA256_RSA_PKCS), "SHA256-RSA-PKCS"),
                };
                let data = random(32)?;
                let sig = s.run(Op::Sign, &mech, one(ck::CKO_PRIVATE_KEY)?, &data)?;
                s.verify(&mech, one(ck::CKO_PUBLIC_KEY)?, &data, &sig)?;
                format!("{what} signature of a random digest made and verified")
            }
            (Purpose::Encryption, Algorithm::Rsa { .. }) => {
                let mech = oaep();
                let data = random(32)?;
                let c = s.run(Op::Encrypt, &mech, one(ck::CKO_PUBLIC_KEY)?, &data)?;
                let p = s.run(Op::Decrypt, &mech, one(ck::CKO_PRIVATE_KEY)?, &c)?;
                if p != data {
                    return Err(mismatch("RSA-OAEP"));
                }
                "RSA-OAEP (SHA-1) encryption of random data made and reversed".to_owned()
            }
            (Purpose::Encryption, _) => {
                let key = one(ck::CKO_SECRET_KEY)?;
                let mech = Mechanism {
                    mechanism: ck::CKM_AES_CBC_PAD,
                    param: MechParam::Bytes(random(16)?),
                };
                let data = random(32)?;
                let c = s.run(Op::Encrypt, &mech, key, &data)?;
                let p = s.run(Op::Decrypt, &mech, key, &c)?;
                if p != data || c == data {
                    return Err(mismatch("AES-CBC-PAD"));
                }
                "AES-CBC-PAD encryption of a random block made and reversed".to_owned()
            }
            (Purpose::Wrapping, _) => {
                let (wrapper, unwrapper, mech, what) = match alg {
                    Algorithm::Rsa { .. } => (
                        one(ck::CKO_PUBLIC_KEY)?,
                        one(ck::CKO_PRIVATE_KEY)?,
                        oaep(),
                        "RSA-OAEP",
                    ),
                    _ => {
                        let k = one(ck::CKO_SECRET_KEY)?;
                        (k, k, Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD), "AES-KWP")
                    }
                };
                let session_key = backend
                    .generate_key(
                        s.handle,
                        &Mechanism::plain(ck::CKM_AES_KEY_GEN),
                        &[
                            Attribute::bool(ck::CKA_TOKEN, false),
                            Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                            Attribute::bool(ck::CKA_EXTRACTABLE, true),
                            Attribute::bool(ck::CKA_ENCRYPT, true),
                        ],
                    )
                    .map_err(|e| hsm_err("C_GenerateKey (session AES key)", e))?;
                let wrapped = backend
                    .wrap_key(s.handle, &mech, wrapper, session_key)
                    .map_err(|e| hsm_err("C_WrapKey", e))?;
                let unwrapped = backend
                    .unwrap_key(
                        s.handle,
                        &mech,
                        unwrapper,
                        &wrapped,
                        &session_aes_template(),
                    )
                    .map_err(|e| hsm_err("C_UnwrapKey", e))?;
                if kcv(&s, session_key)? != kcv(&s, unwrapped)? {
                    return Err(mismatch(what));
                }
                format!("{what}: a fresh session AES key wrapped, unwrapped, check values equal")
            }
            (Purpose::Mac, _) => {
                let key = one(ck::CKO_SECRET_KEY)?;
                let (mech, what) = match alg {
                    Algorithm::Aes { .. } => (Mechanism::plain(ck::CKM_AES_CMAC), "AES-CMAC"),
                    _ => (Mechanism::plain(ck::CKM_SHA256_HMAC), "HMAC-SHA256"),
                };
                let data = random(32)?;
                let tag = s.run(Op::Sign, &mech, key, &data)?;
                s.verify(&mech, key, &data, &tag)?;
                format!("{what} of random data made and verified")
            }
            (Purpose::Derivation, _) => {
                let private = one(ck::CKO_PRIVATE_KEY)?;
                let public = one(ck::CKO_PUBLIC_KEY)?;
                let Recipe::Pair(gen, params) = recipe(alg) else {
                    return fail(AdminErrorKind::Failed, format!("{alg} does not derive"));
                };
                let mut peer_public = vec![Attribute::bool(ck::CKA_TOKEN, false)];
                peer_public.extend(params);
                let (peer_pub, peer_priv) = backend
                    .generate_key_pair(
                        s.handle,
                        &Mechanism::plain(gen),
                        &peer_public,
                        &[
                            Attribute::bool(ck::CKA_TOKEN, false),
                            Attribute::bool(ck::CKA_DERIVE, true),
                        ],
                    )
                    .map_err(|e| hsm_err("C_GenerateKeyPair (session peer)", e))?;
                let point = |o| -> AResult<Vec<u8>> {
                    s.bytes(o, ck::CKA_EC_POINT)?
                        .map_or_else(|| fail(AdminErrorKind::Failed, "no CKA_EC_POINT"), Ok)
                };
                let derive = |base, other: Vec<u8>| -> AResult<BackendObject> {
                    backend
                        .derive_key(
                            s.handle,
                            &Mechanism {
                                mechanism: ck::CKM_ECDH1_DERIVE,
                                param: MechParam::Ecdh1Derive {
                                    kdf: ck::CKD_NULL,
                                    shared_data: Vec::new(),
                                    public_data: other,
                                },
                            },
                            base,
                            &session_aes_template(),
                        )
                        .map_err(|e| hsm_err("C_DeriveKey (ECDH)", e))
                };
                let ours = derive(private, point(peer_pub)?)?;
                let theirs = derive(peer_priv, point(public)?)?;
                if kcv(&s, ours)? != kcv(&s, theirs)? {
                    return Err(mismatch("ECDH"));
                }
                "ECDH with a fresh session key pair: both sides derived the same secret (check values equal)".to_owned()
            }
        };
        log::info!("key {} version {} verified: {detail}", t.label(), v.version);
        Ok(KeyResponse::Verified {
            key: r.name.clone(),
            version: v.version,
            detail,
        })
    }

    fn grant_add(
        &self,
        t: &Target<'_>,
        application: &str,
        operations: &[String],
        until: Option<i64>,
        who: &str,
    ) -> AResult<KeyResponse> {
        if self.policy().application(application).is_none() {
            return fail(
                AdminErrorKind::NotFound,
                format!("no application {application:?} in the policy"),
            );
        }
        if operations.is_empty() {
            return fail(
                AdminErrorKind::Invalid,
                "a grant names at least one operation",
            );
        }
        let purpose = Purpose::from_name(&t.key.record.purpose);
        let mut ops = Vec::new();
        for name in operations {
            let Some(op) = Operation::from_name(name) else {
                return fail(
                    AdminErrorKind::Refused,
                    format!("{name:?} is not an operation"),
                );
            };
            if let Some(p) = purpose.filter(|p| !p.allows(op)) {
                return fail(
                    AdminErrorKind::Refused,
                    format!("key {} is for {p}: {name} does not fit", t.label()),
                );
            }
            if !ops.contains(&op.name().to_owned()) {
                ops.push(op.name().to_owned());
            }
        }
        if let Some(u) = until {
            if u <= secs(SystemTime::now()) {
                return fail(AdminErrorKind::Invalid, "the grant's end is in the past");
            }
        }
        let grant = Grant {
            key_id: t.key.record.id,
            application: application.to_owned(),
            operations: ops,
            expires_at: until,
        };
        self.keys.inventory().grant(&grant, who).map_err(inv_err)?;
        self.refresh(t.key.record.id)?;
        log::info!(
            "key {}: {application:?} granted {:?} until {until:?} by {who}",
            t.label(),
            grant.operations
        );
        Ok(KeyResponse::Grants(vec![grant_info(
            &t.key.record.name,
            &grant,
        )]))
    }

    fn app_list(&self) -> AResult<Vec<AppInfo>> {
        let all = self.keys.all();
        let mut out = Vec::new();
        for app in &self.policy().applications {
            let mut keys: Vec<String> = Vec::new();
            for g in self
                .keys
                .inventory()
                .grants_for_application(&app.name)
                .map_err(inv_err)?
            {
                if let Some(k) = self.keys.key(g.key_id) {
                    keys.push(format!("{}/{}", k.record.token, k.record.name));
                }
            }
            for k in &all {
                let by_class = self
                    .policy()
                    .class(&k.record.class)
                    .is_some_and(|c| c.grants.iter().any(|g| g.application == app.name));
                if by_class && policy_state(k.record.state).is_visible() {
                    keys.push(format!("{}/{}", k.record.token, k.record.name));
                }
            }
            keys.sort();
            keys.dedup();
            out.push(AppInfo {
                name: app.name.clone(),
                uid: app.uid,
                gid: app.gid,
                exe: app.exe.as_ref().map(|p| p.display().to_string()),
                keys,
            });
        }
        Ok(out)
    }

    /// Key objects on `token`'s backend outside management, each with its
    /// backend object: private and secret keys, and public keys without a
    /// private half, whose `CKA_ID` is no managed version (`unmanaged`), and
    /// objects with the `CKA_ID` of a managed version or of the audit key
    /// that are not it (`plant`).
    pub(crate) fn scan(&self, token: &VirtualToken) -> AResult<Vec<(BackendObject, ShadowInfo)>> {
        let label = &token.config.label;
        let slot = self
            .tokens
            .iter()
            .position(|x| std::ptr::eq(x, token))
            .unwrap_or(usize::MAX);
        let backend = self.backend(token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let mut out = Vec::new();
        let mut private_ids = Vec::new();
        for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_SECRET_KEY, ck::CKO_PUBLIC_KEY] {
            for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                let a = s.attrs(o, &[ck::CKA_ID, ck::CKA_LABEL, ck::CKA_KEY_TYPE])?;
                let bytes = |v: &Option<Value>| match v {
                    Some(Value::Bytes(b)) => b.clone(),
                    _ => Vec::new(),
                };
                let id = bytes(&a[0]);
                let finding = if id == crate::audit::AUDIT_KEY_ID {
                    // The agent's own audit key is not a shadow key; another
                    // object with its CKA_ID is a plant.
                    if self.is_audit_key(slot, o) {
                        continue;
                    }
                    "plant: the audit key's CKA_ID, not the audit key".to_owned()
                } else {
                    match self.keys.lookup(label, &id) {
                        Some(m) => {
                            if self
                                .keys
                                .is_genuine(label, backend.as_ref(), s.handle, o, m)
                            {
                                continue;
                            }
                            let name = self
                                .keys
                                .key(m.key_id)
                                .map_or_else(String::new, |k| k.record.name.clone());
                            format!(
                                "plant: CKA_ID of key {name:?} version {}, not its fingerprint",
                                m.version
                            )
                        }
                        None => {
                            if cko == ck::CKO_PRIVATE_KEY {
                                private_ids.push(id.clone());
                            } else if cko == ck::CKO_PUBLIC_KEY
                                && !id.is_empty()
                                && private_ids.contains(&id)
                            {
                                continue;
                            }
                            "unmanaged".to_owned()
                        }
                    }
                };
                out.push((
                    o,
                    ShadowInfo {
                        token: label.clone(),
                        backend_id: id,
                        label: String::from_utf8_lossy(&bytes(&a[1])).into_owned(),
                        class: class_name(cko),
                        key_type: match a[2] {
                            Some(Value::Ulong(k)) => key_type_name(k),
                            _ => "?".into(),
                        },
                        finding,
                    },
                ));
            }
        }
        if self.policy().mode() == keyward_policy::Mode::Strict {
            self.scan_unowned(label, backend.as_ref(), &s, &mut out)?;
        }
        Ok(out)
    }

    /// In strict mode, the data objects and certificates on `token`'s
    /// backend that are in no application's namespace (made behind
    /// keyward's back, or before the strict policy): no application sees
    /// them. A managed key's own certificate is not one of them.
    fn scan_unowned(
        &self,
        token: &str,
        backend: &dyn Backend,
        s: &HsmSession<'_>,
        out: &mut Vec<(BackendObject, ShadowInfo)>,
    ) -> AResult<()> {
        for cko in [ck::CKO_DATA, ck::CKO_CERTIFICATE] {
            for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                let Ok(head) = backend.get_attributes(s.handle, o, &crate::objects::HEAD) else {
                    continue;
                };
                let bytes = |i: usize| match head.get(i) {
                    Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) => b.clone(),
                    _ => Vec::new(),
                };
                let id = bytes(0);
                let own_certificate = cko == ck::CKO_CERTIFICATE
                    && self
                        .keys
                        .lookup(token, &id)
                        .and_then(|m| self.keys.key(m.key_id))
                        .is_some_and(|k| keys::is_certificate_of(backend, s.handle, o, &k));
                let owned = crate::objects::identity(backend, s.handle, o, &head)
                    .is_some_and(|i| self.keys.owners.has_owner(token, &i));
                if own_certificate || owned {
                    continue;
                }
                out.push((
                    o,
                    ShadowInfo {
                        token: token.to_owned(),
                        backend_id: id,
                        label: String::from_utf8_lossy(&bytes(2)).into_owned(),
                        class: class_name(cko),
                        key_type: "-".into(),
                        finding: "unowned: in no application's namespace".into(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Brings the backend key with `CKA_ID` `backend_id` under management
    /// as version 1 of a new key of `class_name`, in pre-activation.
    fn adopt_key(
        &self,
        token: &VirtualToken,
        backend_id: &[u8],
        name: &str,
        class_name: &str,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyInfo> {
        let label = token.config.label.clone();
        if name.is_empty() || backend_id.is_empty() {
            return fail(
                AdminErrorKind::Invalid,
                "adoption needs a name and a non-empty CKA_ID",
            );
        }
        let policy = self.policy();
        let Some(class) = policy.class(class_name) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("no key class {class_name:?} in the policy"),
            );
        };
        if self.keys.lookup(&label, backend_id).is_some() {
            return fail(
                AdminErrorKind::Conflict,
                format!("CKA_ID {} is already managed", hex(backend_id)),
            );
        }
        if self
            .keys
            .inventory()
            .key(&label, name)
            .map_err(inv_err)?
            .is_some()
        {
            return fail(
                AdminErrorKind::Conflict,
                format!("a key {name:?} exists on token {label:?}"),
            );
        }
        if backend_id == crate::audit::AUDIT_KEY_ID {
            return fail(
                AdminErrorKind::Refused,
                "that CKA_ID is the audit key's: it is the agent's, not a key to adopt",
            );
        }
        let backend = self.backend(token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (main, public) = adoptable(&s, &label, backend_id, class)?;
        let alg = algorithm_of(&s, main, public, class)?;
        let object_label = s
            .bytes(main, ck::CKA_LABEL)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if !object_label.is_empty() && self.keys.is_managed_label(&label, object_label.as_bytes()) {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "the key's CKA_LABEL {object_label:?} names a managed key on token {label:?}: \
                     a search by that name would find both"
                ),
            );
        }
        let objects: Vec<BackendObject> = public.into_iter().chain([main]).collect();
        let fingerprint = s.fingerprint(&objects);
        drop(s);
        let now = secs(SystemTime::now());
        let record = KeyRecord {
            id: 0,
            name: name.to_owned(),
            token: label.clone(),
            owner: who.to_owned(),
            purpose: class.purpose.name().to_owned(),
            class: class.name.clone(),
            algorithm: alg.to_string(),
            state: InvState::PreActivation,
            created_at: now,
            activated_at: None,
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: class.scope.clone(),
            last_used_at: None,
            backup_allowed: class.backup,
        };
        let version = KeyVersion {
            key_id: 0,
            version: 1,
            backend_id: backend_id.to_vec(),
            backend_label: object_label,
            state: InvState::PreActivation,
            created_at: now,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: fingerprint.map(|f| f.to_vec()),
        };
        let why = format!(
            "adopted from CKA_ID {} as class {class_name}",
            hex(backend_id)
        );
        let created = self
            .apply_change(by, "adopt", &why, creation(record, version, who))?
            .key;
        self.judged(&label, &objects, created.id, 1);
        self.refresh(created.id)?;
        // Its use records name the managed key from now on.
        self.forget_use_targets(|_| true);
        log::info!(
            "key {label}/{name} adopted by {who}: CKA_ID {}, class {class_name}, {alg}",
            hex(backend_id)
        );
        let view = self.keys.key(created.id).map_or_else(
            || fail(AdminErrorKind::Failed, "the adopted key is not in the view"),
            Ok,
        )?;
        self.info(&view)
    }

    /// Notes that `objects` on `token` are version `version` of key
    /// `key_id`: the agent made or checked them itself.
    fn judged(&self, token: &str, objects: &[BackendObject], key_id: i64, version: u32) {
        for &o in objects {
            self.keys
                .set_judged(token, o, Some(ManagedRef { key_id, version }));
        }
    }

    /// Ends the pending note of a generation (recorded or undone).
    pub(crate) fn end_pending(&self, token: &VirtualToken, id: &[u8]) {
        if let Err(e) = token.state.remove_pending(&hex(id)) {
            log::error!(
                "token {:?}: cannot clear a pending generation note: {e}",
                token.config.label
            );
        }
        self.keys.set_pending(&token.config.label, id, false);
    }

    /// Finishes what a crash interrupted: a key generation noted as pending
    /// whose `CKA_ID` the inventory does not know never completed, and its
    /// objects (if the HSM made any) are destroyed; one the inventory knows
    /// completed, and only its note is cleared. Run at start, before
    /// serving.
    pub fn recover_pending(&self) {
        for token in &self.tokens {
            let pending = token.state.pending();
            if !pending.is_empty() {
                self.destroy_husks(token);
            }
            for id_hex in pending {
                let Some(id) = unhex(&id_hex) else { continue };
                if self.keys.lookup(&token.config.label, &id).is_none() {
                    if let Ok(backend) = token.backend() {
                        match HsmSession::open(backend.as_ref()).and_then(|s| {
                            let objects = s.find(&[Attribute::bytes(ck::CKA_ID, id.clone())])?;
                            s.destroy(&objects);
                            Ok(objects.len())
                        }) {
                            Ok(n) => log::warn!(
                                "token {:?}: a key generation was interrupted (CKA_ID {id_hex}); {n} objects destroyed",
                                token.config.label
                            ),
                            Err(e) => {
                                log::error!(
                                    "token {:?}: cannot undo the interrupted generation of CKA_ID {id_hex}: {}",
                                    token.config.label,
                                    e.message
                                );
                                continue;
                            }
                        }
                    }
                }
                if let Err(e) = token.state.remove_pending(&id_hex) {
                    log::error!("token {:?}: {e}", token.config.label);
                }
            }
        }
    }

    /// Destroys the husks a generation cut off by a crash can leave on
    /// `token`'s backend (at start, before anything is served): key
    /// objects the HSM had created but not yet
    /// given the template's attributes or any key material (SoftHSM2
    /// writes an object's defaults, then the template, then the key, each
    /// on its own). Such a husk has an empty `CKA_ID`, so the recovery by
    /// `CKA_ID` cannot find it, and no key (EC parameters, RSA modulus or
    /// secret length), so no one can use it: nothing of value is lost.
    fn destroy_husks(&self, token: &VirtualToken) {
        let Ok(backend) = token.backend() else { return };
        let found = HsmSession::open(backend.as_ref()).and_then(|s| {
            let mut husks = Vec::new();
            for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_PUBLIC_KEY, ck::CKO_SECRET_KEY] {
                // Not by CKA_TOKEN: a husk still has the default (false).
                // Nothing is served yet, so no session object is there.
                for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                    let a = s.attrs(o, &[ck::CKA_ID, ck::CKA_KEY_TYPE])?;
                    let empty_id = match &a[0] {
                        Some(Value::Bytes(b)) => b.is_empty(),
                        None => true,
                        Some(_) => false,
                    };
                    if !empty_id {
                        continue;
                    }
                    let material = match a[1] {
                        Some(Value::Ulong(ck::CKK_EC))
                        | Some(Value::Ulong(ck::CKK_EC_EDWARDS))
                        | Some(Value::Ulong(ck::CKK_EC_MONTGOMERY)) => ck::CKA_EC_PARAMS,
                        Some(Value::Ulong(ck::CKK_RSA)) => ck::CKA_MODULUS,
                        _ if cko == ck::CKO_SECRET_KEY => ck::CKA_VALUE_LEN,
                        _ => continue,
                    };
                    let keyless = match s.attrs(o, &[material])?.pop().flatten() {
                        Some(Value::Bytes(b)) => b.is_empty(),
                        Some(Value::Ulong(n)) => n == 0,
                        _ => false,
                    };
                    if keyless {
                        husks.push(o);
                    }
                }
            }
            s.destroy(&husks);
            Ok(husks.len())
        });
        match found {
            Ok(0) => {}
            Ok(n) => log::warn!(
                "token {:?}: {n} key objects without CKA_ID or key material (cut off in their \
                 generation) destroyed",
                token.config.label
            ),
            Err(e) => log::error!(
                "token {:?}: cannot look for objects cut off in their generation: {}",
                token.config.label,
                e.message
            ),
        }
    }

    /// Records the fingerprint of every version recorded without one (a
    /// store from before fingerprints), from the object that has its
    /// `CKA_ID` on the HSM, when exactly one fingerprint is found there;
    /// otherwise (none, or several: a plant beside the key) nothing is
    /// recorded, and the version is reported in the log and the trail and
    /// keeps being recognised by its `CKA_ID` until an administrator
    /// resolves it. Run at start, before serving.
    pub fn record_missing_fingerprints(&self) {
        for key in self.keys.all() {
            let missing: Vec<&KeyVersion> = key
                .versions
                .iter()
                .filter(|v| v.fingerprint.is_none() && v.state != InvState::Destroyed)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let Some(token) = self.token_labelled(&key.record.token) else {
                continue;
            };
            let Ok(backend) = token.backend() else {
                continue;
            };
            let Ok(s) = HsmSession::open(backend.as_ref()) else {
                continue;
            };
            for v in missing {
                let objects = match s.find(&[Attribute::bytes(ck::CKA_ID, v.backend_id.clone())]) {
                    Ok(o) => o,
                    Err(e) => {
                        log::error!("fingerprints: {}", e.message);
                        continue;
                    }
                };
                let mut found: Vec<[u8; 32]> = objects
                    .iter()
                    .filter_map(|&o| crate::keys::fingerprint(backend.as_ref(), s.handle, o))
                    .collect();
                found.sort_unstable();
                found.dedup();
                let name = format!(
                    "{}/{} version {}",
                    key.record.token, key.record.name, v.version
                );
                let problem =
                    match found.as_slice() {
                        [fp] => match self.keys.inventory().set_fingerprint(
                            key.record.id,
                            v.version,
                            fp,
                        ) {
                            Ok(()) => {
                                log::info!("key {name}: fingerprint recorded");
                                None
                            }
                            Err(e) => Some(format!("the fingerprint could not be recorded: {e}")),
                        },
                        [] => Some(format!(
                            "no object with CKA_ID {} shows a public value or check value: \
                         recognised by its CKA_ID alone",
                            hex(&v.backend_id)
                        )),
                        several => Some(format!(
                            "{} different keys have CKA_ID {} on the HSM (a planted object?): \
                         no fingerprint recorded; recognised by its CKA_ID alone until resolved",
                            several.len(),
                            hex(&v.backend_id)
                        )),
                    };
                if let Some(problem) = problem {
                    log::error!("key {name}: {problem}");
                    let mut e = crate::audit::event(
                        keyward_inventory::AuditKind::Discovery,
                        keyward_inventory::Actor::Agent,
                        "fingerprint",
                    );
                    e.token = Some(key.record.token.clone());
                    e.key = Some(key.record.name.clone());
                    e.key_version = Some(v.version);
                    e.reason = problem;
                    self.audit.record(e);
                }
            }
            if let Err(e) = self.refresh(key.record.id) {
                log::error!("fingerprints: {}", e.message);
            }
        }
    }

    /// Brings a key an application just generated (as token objects)
    /// under management as version 1 of a new key of `class`, active at
    /// once: the application made it to use it. Its name is its label (made
    /// unique with the `CKA_ID` when taken), its owner the application.
    pub(crate) fn manage_generated(
        &self,
        token: &VirtualToken,
        class: &KeyClass,
        objects: (BackendObject, Option<BackendObject>),
        label: Option<&str>,
        backend_id: &[u8],
        (owner, by): (&str, &Actor),
    ) -> AResult<ManagedRef> {
        let backend = self.backend(token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let alg = algorithm_of(&s, objects.0, objects.1, class)?;
        let both: Vec<BackendObject> = objects.1.into_iter().chain([objects.0]).collect();
        let fingerprint = s.fingerprint(&both);
        drop(s);
        let inventory = self.keys.inventory();
        let base = label.filter(|l| !l.is_empty()).unwrap_or("key");
        let mut name = base.to_owned();
        if inventory
            .key(&token.config.label, &name)
            .map_err(inv_err)?
            .is_some()
        {
            name = format!("{base}-{}", hex(backend_id));
        }
        let (record, version) = first_version(NewKey {
            token: &token.config.label,
            name: &name,
            owner,
            class,
            algorithm: alg,
            backend_id,
            fingerprint,
            active_since: Some(SystemTime::now()),
        });
        let who = format!("application {owner}");
        let created = self
            .apply_change(
                by,
                "create",
                "generated by the application",
                creation(record, version, &who),
            )?
            .key;
        self.judged(&token.config.label, &both, created.id, 1);
        self.refresh(created.id)?;
        log::info!(
            "key {}/{name} generated by {who}: class {}, {alg}, CKA_ID {}",
            token.config.label,
            class.name,
            hex(backend_id)
        );
        Ok(ManagedRef {
            key_id: created.id,
            version: 1,
        })
    }

    /// Applies one lifecycle change by `by` with its `lifecycle` trail
    /// records, in one inventory transaction (durable before it returns),
    /// and reloads the key's view: one record for the key's own move (or
    /// its creation) and one for each version that moves or is new,
    /// `operation` the action's name, reason `from <state> to <state>:
    /// <why>`. Nothing happens when the records cannot be written.
    ///
    /// A change of an existing key may take rights away: it holds
    /// [`Agent::in_flight`] (write) from before the change until the view
    /// has it, so every request that passed the old check has ended (and
    /// queued its use records, which the trail stores first), and none
    /// passes the old check after the records.
    pub(crate) fn apply_change(
        &self,
        by: &Actor,
        operation: &str,
        why: &str,
        mut change: LifecycleChange,
    ) -> AResult<AppliedChange> {
        let Some(trail) = lifecycle_records(by, operation, why, &change, &self.keys) else {
            return fail(
                AdminErrorKind::NotFound,
                "the key is not in the agent's view: nothing changed",
            );
        };
        change.trail = trail;
        let existing = match change.key {
            KeyChange::Create(_) => None,
            KeyChange::Update { key_id, .. } => Some(key_id),
        };
        let held = existing.map(|_| self.in_flight.write().unwrap_or_else(|p| p.into_inner()));
        let done = self.audit.commit(self.keys.inventory(), &change);
        let key_id = match &done {
            Ok(d) => Some(d.key.id),
            Err(_) => existing,
        };
        let refreshed = key_id.map_or(Ok(()), |id| self.refresh(id));
        drop(held);
        let done = done.map_err(|e| match e {
            crate::audit::CommitError::Trail => AdminError {
                kind: AdminErrorKind::Failed,
                message: "refused: the audit trail cannot be written; nothing changed".into(),
            },
            crate::audit::CommitError::Store(e @ keyward_inventory::Error::Storage(_)) => {
                AdminError {
                    kind: AdminErrorKind::Failed,
                    message: format!(
                        "the change and its audit records could not be written ({e}); \
                         nothing changed"
                    ),
                }
            }
            crate::audit::CommitError::Store(e) => inv_err(e),
        })?;
        refreshed?;
        Ok(done)
    }

    /// Records a grant change of key `t`, durably.
    fn record_grant(
        &self,
        by: keyward_inventory::Actor,
        t: &Target<'_>,
        operation: &str,
        reason: &str,
    ) {
        let mut e = crate::audit::event(keyward_inventory::AuditKind::Grant, by, operation);
        e.token = Some(t.token.config.label.clone());
        e.key = Some(t.key.record.name.clone());
        e.reason = reason.chars().take(4096).collect();
        if let Err(why) = self.audit.durable(e) {
            log::error!(
                "audit: the {operation} of key {} could not be recorded: {why}",
                t.label()
            );
        }
    }

    /// Records each key a discovery found outside management.
    fn record_findings(&self, by: &keyward_inventory::Actor, shadows: &[ShadowInfo]) {
        for f in shadows {
            let what = if f.finding.starts_with("unowned") {
                "unowned object"
            } else {
                "unmanaged key"
            };
            let mut e =
                crate::audit::event(keyward_inventory::AuditKind::Discovery, by.clone(), what);
            e.token = Some(f.token.clone());
            e.key = unmanaged_name(f.label.as_bytes(), &f.backend_id);
            e.reason = if f.finding == "unmanaged" {
                format!(
                    "{} {} with CKA_ID {} is on the HSM but not managed",
                    f.class,
                    f.key_type,
                    hex(&f.backend_id)
                )
            } else {
                format!(
                    "{} {} with CKA_ID {}: {}",
                    f.class,
                    f.key_type,
                    hex(&f.backend_id),
                    f.finding
                )
            };
            self.audit.record(e);
        }
    }

    /// The scheduler's discovery: every token's backend is scanned
    /// (`Agent::scan`); each key outside management (shadow key or plant)
    /// is recorded in the trail once per backend object and agent run, and
    /// the counts are kept for the metrics (`keyward_shadow_keys`).
    pub fn discover_shadows(&self) {
        for t in &self.tokens {
            if t.backend.is_err() {
                continue;
            }
            match self.scan(t) {
                Ok(found) => {
                    let objects: Vec<BackendObject> = found.iter().map(|(o, _)| *o).collect();
                    let new = self.keys.note_shadows(&t.config.label, &objects);
                    let fresh: Vec<ShadowInfo> = found
                        .into_iter()
                        .filter(|(o, _)| new.contains(o))
                        .map(|(_, f)| f)
                        .collect();
                    if !fresh.is_empty() {
                        log::warn!(
                            "scheduler: {} new key(s) outside management on token {:?} \
                             (keyward discover lists them)",
                            fresh.len(),
                            t.config.label
                        );
                        self.record_findings(&keyward_inventory::Actor::Scheduler, &fresh);
                    }
                }
                Err(e) => log::error!(
                    "scheduler: discovery on token {:?} failed: {}",
                    t.config.label,
                    e.message
                ),
            }
        }
    }

    /// One scheduler pass at `now`: active keys past their protect period
    /// are deactivated; active keys whose next rotation has come are
    /// rotated. Both are recorded with actor [`SCHEDULER`]. Failures are
    /// logged and retried at the next pass.
    pub fn tick(&self, now: SystemTime) {
        let at = secs(now);
        for key in self.keys.all() {
            if key.record.state != InvState::Active {
                continue;
            }
            let Some(token) = self.token_labelled(&key.record.token) else {
                continue;
            };
            let t = Target {
                token,
                key: key.clone(),
            };
            let by = (SCHEDULER, &Actor::Scheduler);
            if key.record.protect_until.is_some_and(|p| p <= at) {
                match self.transition_key(
                    &t,
                    KeyAction::Deactivate,
                    by,
                    "protect period ended",
                    now,
                ) {
                    Ok(_) => {
                        log::info!(
                            "scheduler: key {} deactivated (protect period ended)",
                            t.label()
                        )
                    }
                    Err(e) => log::error!(
                        "scheduler: cannot deactivate key {}: {}",
                        t.label(),
                        e.message
                    ),
                }
            } else if key.record.next_rotation.is_some_and(|r| r <= at) {
                match self.rotate_key(&t, by, "scheduled rotation", now) {
                    Ok(v) => {
                        log::info!("scheduler: key {} rotated to version {v}", t.label())
                    }
                    Err(e) => {
                        log::error!("scheduler: cannot rotate key {}: {}", t.label(), e.message)
                    }
                }
            }
        }
        self.discover_shadows();
    }

    /// Starts the scheduler thread: [`Agent::tick`] [`FIRST_PASS`] after the
    /// start and then every `every`, until the agent is dropped.
    pub fn spawn_scheduler(self: &Arc<Agent>, every: Duration) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                // A first pass soon after the start catches up with dates
                // that passed while the agent was down.
                let mut wait = FIRST_PASS.min(every);
                loop {
                    std::thread::sleep(wait);
                    wait = every;
                    match agent.upgrade() {
                        Some(a) => a.tick(SystemTime::now()),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the lifecycle scheduler: {e}");
        }
    }
}

/// When the scheduler's first pass runs after a start.
pub const FIRST_PASS: Duration = Duration::from_secs(1);

fn oaep() -> Mechanism {
    Mechanism {
        mechanism: ck::CKM_RSA_PKCS_OAEP,
        param: MechParam::RsaOaep {
            hash_alg: ck::CKM_SHA_1,
            mgf: ck::CKG_MGF1_SHA1,
            source: ck::CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        },
    }
}

/// A session AES-256 key that can encrypt (for its check value).
fn session_aes_template() -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::ulong(ck::CKA_VALUE_LEN, 32),
        Attribute::bool(ck::CKA_TOKEN, false),
        Attribute::bool(ck::CKA_ENCRYPT, true),
    ]
}

/// Key check value: a zero block encrypted under the key (AES-ECB).
fn kcv(s: &HsmSession<'_>, key: BackendObject) -> AResult<Vec<u8>> {
    s.run(
        Op::Encrypt,
        &Mechanism::plain(ck::CKM_AES_ECB),
        key,
        &[0u8; 16],
    )
}

/// The objects of the key with `CKA_ID` `backend_id` on `label`'s backend
/// (`s`), when they may become a version of a key of `class`: exactly one
/// private or secret key, at most one public key beside a private one, and
/// every attribute the class requires (`keyward_policy::adoption_problems`).
/// Returns the key and its public half.
fn adoptable(
    s: &HsmSession<'_>,
    label: &str,
    backend_id: &[u8],
    class: &KeyClass,
) -> AResult<(BackendObject, Option<BackendObject>)> {
    let class_name = &class.name;
    let publics = s.by_id(backend_id, ck::CKO_PUBLIC_KEY)?;
    let privates = s.by_id(backend_id, ck::CKO_PRIVATE_KEY)?;
    let secrets = s.by_id(backend_id, ck::CKO_SECRET_KEY)?;
    let (main, secret) = match (privates.as_slice(), secrets.as_slice()) {
        ([o], []) => (*o, false),
        ([], [o]) => (*o, true),
        ([], []) => {
            return fail(
                AdminErrorKind::NotFound,
                format!(
                    "no private or secret key with CKA_ID {} on token {label:?}",
                    hex(backend_id)
                ),
            )
        }
        _ => {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "{} keys share CKA_ID {} on token {label:?}: a version is one key; \
                     give each its own CKA_ID first",
                    privates.len() + secrets.len(),
                    hex(backend_id)
                ),
            )
        }
    };
    if publics.len() > 1 || (secret && !publics.is_empty()) {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "{} public keys share CKA_ID {} on token {label:?} with the key: \
                 which is its public half is not clear",
                publics.len(),
                hex(backend_id)
            ),
        );
    }
    let flags = [
        ck::CKA_SENSITIVE,
        ck::CKA_ALWAYS_SENSITIVE,
        ck::CKA_EXTRACTABLE,
        ck::CKA_NEVER_EXTRACTABLE,
        ck::CKA_SIGN,
        ck::CKA_VERIFY,
        ck::CKA_SIGN_RECOVER,
        ck::CKA_ENCRYPT,
        ck::CKA_DECRYPT,
        ck::CKA_WRAP,
        ck::CKA_UNWRAP,
        ck::CKA_DERIVE,
    ];
    let read = s.attrs(main, &flags)?;
    let bools: Vec<(u64, bool)> = flags
        .iter()
        .zip(read)
        .filter_map(|(&a, v)| match v {
            Some(Value::Bool(b)) => Some((a, b)),
            _ => None,
        })
        .collect();
    let problems = keyward_policy::adoption_problems(
        class,
        secret,
        &Template {
            bools: &bools,
            ulongs: &[],
            bytes: &[],
        },
    );
    if !problems.is_empty() {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "the key with CKA_ID {} does not comply with class {class_name:?}: {}",
                hex(backend_id),
                problems.join("; ")
            ),
        );
    }
    Ok((main, publics.first().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
rotation_interval = "90d"
"#;

    fn agent() -> (tempfile::TempDir, Agent) {
        crate::agent::tests::mock_agent(POLICY)
    }

    #[test]
    fn an_unmanaged_object_is_named_by_label_then_id_and_never_at_length() {
        assert_eq!(unmanaged_name(b"web", b"\x01").as_deref(), Some("web"));
        assert_eq!(unmanaged_name(b"", b"\x01\xab").as_deref(), Some("id:01ab"));
        assert_eq!(unmanaged_name(b"", b""), None);
        let long = vec![b'x'; 100_000];
        assert_eq!(
            unmanaged_name(&long, b"").map(|n| n.len()),
            Some(crate::objects::MAX_NAME)
        );
        assert_eq!(
            unmanaged_name(b"", &long).map(|n| n.len()),
            Some(3 + crate::objects::MAX_NAME)
        );
    }

    fn admin() -> Peer {
        crate::agent::tests::admin_peer()
    }

    fn call(a: &Agent, req: KeyRequest) -> AResult<KeyResponse> {
        a.key_call(&admin(), req)
    }

    fn create(name: &str, class: &str) -> KeyRequest {
        KeyRequest::Create {
            name: name.into(),
            class: class.into(),
            algorithm: None,
            token: None,
            owner: None,
        }
    }

    fn act(name: &str, action: KeyAction) -> KeyRequest {
        KeyRequest::Transition {
            name: name.into(),
            token: None,
            action,
            reason: None,
        }
    }

    #[test]
    fn create_refusals_and_approvals() {
        let (_d, a) = agent();
        let Ok(KeyResponse::Key(k)) = call(&a, create("k", "signing")) else {
            panic!()
        };
        assert_eq!(
            (k.state.as_str(), k.owner.as_str()),
            ("pre-activation", "uid:0")
        );
        assert_eq!(
            call(&a, create("k", "signing")).unwrap_err().kind,
            AdminErrorKind::Conflict
        );
        assert_eq!(
            call(&a, create("k2", "nope")).unwrap_err().kind,
            AdminErrorKind::NotFound
        );
        call(&a, act("k", KeyAction::Activate)).unwrap();
        call(&a, act("k", KeyAction::Suspend)).unwrap();
        let Ok(KeyResponse::Pending(p)) = call(&a, act("k", KeyAction::Resume)) else {
            panic!()
        };
        let stored = a.keys.inventory().request(&p.id).unwrap().unwrap();
        assert_eq!(stored.status, "pending");
        assert_eq!(stored.target, "kw/k");
        let k = a.keys.key(stored.key_id.unwrap()).unwrap();
        assert_eq!(k.record.state, InvState::Suspended);
        // revoke --rotate only from active.
        assert_eq!(
            call(&a, act("k", KeyAction::Revoke { rotate: true }))
                .unwrap_err()
                .kind,
            AdminErrorKind::Refused
        );
        // Grants: unknown application, unknown operation, wrong purpose.
        let grant = |app: &str, op: &str| KeyRequest::GrantAdd {
            key: "k".into(),
            token: None,
            application: app.into(),
            operations: vec![op.into()],
            until: None,
        };
        assert_eq!(
            call(&a, grant("x", "sign")).unwrap_err().kind,
            AdminErrorKind::NotFound
        );
        assert_eq!(
            call(&a, grant("app", "frob")).unwrap_err().kind,
            AdminErrorKind::Refused
        );
        assert_eq!(
            call(&a, grant("app", "decrypt")).unwrap_err().kind,
            AdminErrorKind::Refused
        );
        call(&a, grant("app", "sign")).unwrap();
        assert_eq!(a.keys.key(k.record.id).unwrap().grants.len(), 1);
    }

    /// Dates set in the store through the Inventory API, `tick` at now.
    #[test]
    fn tick_acts_on_dates_in_the_store() {
        let (_d, a) = agent();
        call(&a, create("rot", "signing")).unwrap();
        call(&a, create("old", "signing")).unwrap();
        call(&a, act("rot", KeyAction::Activate)).unwrap();
        call(&a, act("old", KeyAction::Activate)).unwrap();
        let now = SystemTime::now();
        let past = secs(now) - 10;
        let id = |name: &str| a.keys.inventory().key("kw", name).unwrap().unwrap().id;
        let set = |key: i64, dates: DateUpdates| {
            let state = a.keys.key(key).unwrap().record.state;
            a.keys
                .inventory()
                .apply(&LifecycleChange {
                    key: KeyChange::Update {
                        key_id: key,
                        expected: state,
                        to: None,
                    },
                    versions: Vec::new(),
                    dates,
                    actor: "test".into(),
                    reason: "dates".into(),
                    at: secs(now),
                    trail: Vec::new(),
                })
                .unwrap();
            a.keys.refresh(key).unwrap();
        };
        set(
            id("rot"),
            DateUpdates {
                next_rotation: Some(past),
                ..Default::default()
            },
        );
        set(
            id("old"),
            DateUpdates {
                protect_until: Some(past),
                ..Default::default()
            },
        );
        a.tick(now);
        let rot = a.keys.key(id("rot")).unwrap();
        assert_eq!(rot.versions.len(), 2);
        assert_eq!(rot.versions[0].state, InvState::Deactivated);
        assert_eq!(rot.versions[1].state, InvState::Active);
        assert!(rot.record.next_rotation.unwrap() > secs(now));
        let old = a.keys.key(id("old")).unwrap();
        assert_eq!(old.record.state, InvState::Deactivated);
        assert_eq!(old.versions.len(), 1);
        a.tick(now);
        assert_eq!(a.keys.key(id("rot")).unwrap().versions.len(), 2);
    }

    /// What the trail's `lifecycle` records say of every key: its state
    /// and each version's, replayed from `from X to Y` in trail order.
    fn replayed(a: &Agent) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        let records = a
            .audit
            .log()
            .query(&keyward_inventory::AuditFilter {
                kinds: vec![keyward_inventory::AuditKind::Lifecycle],
                ..Default::default()
            })
            .unwrap();
        let mut keys = std::collections::BTreeMap::new();
        for r in records {
            let e = r.event;
            let to = crate::audit::lifecycle_to(&e.reason).unwrap().to_owned();
            let entry = keys
                .entry(e.key.unwrap())
                .or_insert_with(|| (String::new(), Vec::new()));
            match e.key_version {
                None => entry.0 = to,
                Some(v) => {
                    let i = v as usize - 1;
                    if entry.1.len() <= i {
                        entry.1.resize(i + 1, "none".to_owned());
                    }
                    entry.1[i] = to;
                }
            }
        }
        keys
    }

    /// What the inventory says of every key, in the same form.
    fn stored(a: &Agent) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        let inv = a.keys.inventory();
        inv.keys(&KeyFilter::default())
            .unwrap()
            .into_iter()
            .map(|k| {
                let versions = inv.versions(k.id).unwrap();
                let states = versions.iter().map(|v| state_name(v.state)).collect();
                (k.name.clone(), (state_name(k.state), states))
            })
            .collect()
    }

    /// Every kind of lifecycle change (create, transitions, rotation,
    /// emergency rotation, the scheduler's) writes its records with it:
    /// the trail alone tells each key's state and versions, one record per
    /// history row, and the chain verifies.
    #[test]
    fn every_lifecycle_change_carries_its_records() {
        let (_d, a) = agent();
        call(&a, create("a", "signing")).unwrap();
        call(&a, act("a", KeyAction::Activate)).unwrap();
        call(
            &a,
            KeyRequest::Rotate {
                name: "a".into(),
                token: None,
            },
        )
        .unwrap();
        call(&a, act("a", KeyAction::Revoke { rotate: true })).unwrap();
        call(&a, create("b", "signing")).unwrap();
        call(&a, act("b", KeyAction::Activate)).unwrap();
        call(&a, act("b", KeyAction::Suspend)).unwrap();
        call(&a, act("b", KeyAction::Revoke { rotate: false })).unwrap();
        call(&a, create("c", "signing")).unwrap();
        call(&a, act("c", KeyAction::Activate)).unwrap();
        let id = a.keys.inventory().key("kw", "c").unwrap().unwrap().id;
        let now = SystemTime::now();
        a.keys
            .inventory()
            .apply(&LifecycleChange {
                key: KeyChange::Update {
                    key_id: id,
                    expected: InvState::Active,
                    to: None,
                },
                versions: Vec::new(),
                dates: DateUpdates {
                    next_rotation: Some(secs(now) - 1),
                    ..Default::default()
                },
                actor: "test".into(),
                reason: "due".into(),
                at: secs(now),
                trail: Vec::new(),
            })
            .unwrap();
        a.keys.refresh(id).unwrap();
        a.tick(now);

        let stored = stored(&a);
        assert_eq!(
            stored["a"],
            (
                "active".to_owned(),
                vec![
                    "compromised".to_owned(),
                    "compromised".into(),
                    "active".into()
                ]
            )
        );
        assert_eq!(
            stored["c"].1,
            ["deactivated", "active"],
            "the scheduler rotated"
        );
        assert_eq!(
            replayed(&a),
            stored,
            "the trail tells what the inventory holds"
        );
        let trail = a
            .audit
            .log()
            .query(&keyward_inventory::AuditFilter {
                kinds: vec![keyward_inventory::AuditKind::Lifecycle],
                ..Default::default()
            })
            .unwrap();
        let rows: usize = a
            .keys
            .inventory()
            .keys(&KeyFilter::default())
            .unwrap()
            .iter()
            .map(|k| a.keys.inventory().history(k.id).unwrap().len())
            .sum();
        assert_eq!(trail.len(), rows, "one record per history row");
        let scheduled: Vec<_> = trail
            .iter()
            .filter(|r| r.event.actor == Actor::Scheduler)
            .map(|r| (r.event.key.as_deref(), r.event.operation.as_str()))
            .collect();
        assert_eq!(scheduled, [(Some("c"), "rotate"), (Some("c"), "rotate")]);
        let emergency: Vec<_> = trail
            .iter()
            .filter(|r| r.event.reason.contains("emergency rotation to version 3"))
            .map(|r| (r.event.key_version, r.event.operation.as_str()))
            .collect();
        assert_eq!(emergency, [(None, "revoke"), (Some(3), "revoke")]);
        assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
        assert!(a.audit.stats().records >= trail.len() as u64);
    }

    /// A lifecycle change whose trail records cannot be written does not
    /// happen: the administrator gets a clear error and the key, its
    /// versions and its history are as before (the request itself is
    /// recorded; only lifecycle records are refused here).
    #[test]
    fn a_change_whose_records_cannot_be_written_does_not_happen() {
        let (d, a) = agent();
        call(&a, create("k", "signing")).unwrap();
        call(&a, act("k", KeyAction::Activate)).unwrap();
        let id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
        let snapshot = |a: &Agent| {
            let inv = a.keys.inventory();
            (
                inv.key_by_id(id).unwrap(),
                inv.versions(id).unwrap(),
                inv.history(id).unwrap(),
                a.keys.key(id).unwrap().record.state,
            )
        };
        let before = snapshot(&a);
        let db = rusqlite::Connection::open(d.path().join("inventory.sqlite")).unwrap();
        db.execute_batch(
            "CREATE TRIGGER jam BEFORE INSERT ON audit WHEN NEW.kind = 'lifecycle'
             BEGIN SELECT RAISE(ABORT, 'no lifecycle records'); END;",
        )
        .unwrap();
        let requests = [
            act("k", KeyAction::Suspend),
            act("k", KeyAction::Revoke { rotate: false }),
            act("k", KeyAction::Revoke { rotate: true }),
            KeyRequest::Rotate {
                name: "k".into(),
                token: None,
            },
            create("new", "signing"),
        ];
        for req in requests {
            let what = format!("{req:?}");
            match a.key_request(&admin(), req) {
                AdminResponse::KeyErr { kind, message } => {
                    assert_eq!(kind, AdminErrorKind::Failed, "{what}: {message}");
                    assert!(message.contains("audit records"), "{what}: {message}");
                    assert!(message.contains("nothing changed"), "{what}: {message}");
                }
                other => panic!("{what}: the change happened: {other:?}"),
            }
            assert_eq!(snapshot(&a), before, "{what}");
        }
        assert!(a.keys.inventory().key("kw", "new").unwrap().is_none());
        db.execute_batch("DROP TRIGGER jam;").unwrap();
        call(&a, act("k", KeyAction::Suspend)).unwrap();
        assert_eq!(replayed(&a), stored(&a));
        assert!(a.audit.log().verify(&|_, _| true).unwrap().is_ok());
    }

    /// A revocation whose last version was changed by someone else since
    /// the agent looked is refused as a whole: the key and its other
    /// versions are not left compromised with the last one behind, and no
    /// record tells of a change that did not happen.
    #[test]
    fn a_change_racing_another_is_all_or_nothing() {
        let (d, a) = agent();
        call(&a, create("k", "signing")).unwrap();
        call(&a, act("k", KeyAction::Activate)).unwrap();
        call(
            &a,
            KeyRequest::Rotate {
                name: "k".into(),
                token: None,
            },
        )
        .unwrap();
        let id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
        // Another writer moved version 2 behind the agent's view.
        let db = rusqlite::Connection::open(d.path().join("inventory.sqlite")).unwrap();
        db.execute(
            "UPDATE key_versions SET state = 'suspended' WHERE key_id = ?1 AND version = 2",
            [id],
        )
        .unwrap();
        let inv = a.keys.inventory();
        let before = (
            inv.key_by_id(id).unwrap(),
            inv.versions(id).unwrap(),
            inv.history(id).unwrap(),
        );
        let records = replayed(&a);
        let err = call(&a, act("k", KeyAction::Revoke { rotate: false })).unwrap_err();
        assert_eq!(err.kind, AdminErrorKind::Conflict, "{}", err.message);
        assert!(err.message.contains("version 2"), "{}", err.message);
        let after = (
            inv.key_by_id(id).unwrap(),
            inv.versions(id).unwrap(),
            inv.history(id).unwrap(),
        );
        assert_eq!(after, before, "nothing of the revocation is kept");
        assert_eq!(replayed(&a), records, "no record of it either");
        assert_eq!(a.keys.key(id).unwrap().record.state, InvState::Active);
    }
}
