//! Managed keys: the inventory, the in-memory view of it that every call
//! reads, and the check every use of a managed key passes.
//!
//! The agent is the inventory's only writer, so the view is exact: every
//! change goes to the store first (durable before the call returns) and
//! then [`ManagedKeys::refresh`] reloads that key. A revoked key therefore
//! fails on its very next use, whatever sessions or operations are open.
//!
//! A backend object is a managed key version when its `CKA_ID` is a
//! version's `backend_id` on that token *and* it has the version's
//! [`fingerprint`], recorded when the version was made or adopted (checked
//! once per backend object and agent run, [`ManagedKeys::is_genuine`]). An
//! object with a managed `CKA_ID` and another fingerprint is a plant: never
//! the managed key. Objects the inventory does not know are unmanaged: the
//! policy's mechanism allow-list applies to them, in lab mode they behave as
//! on a plain token, and in strict mode unmanaged token keys are quarantined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cryptoki_sys as ck;
use keyward_inventory::{Grant, Inventory, KeyFilter, KeyRecord, KeyVersion};
use keyward_policy::{
    effective_state, permits, Cryptoperiod, KeyState, Operation, Policy, Refusal,
};
use keyward_protocol::admin::GrantInfo;
use keyward_protocol::{AttrResult, AttrValue, Attribute, Mechanism, Op, Value};

use crate::backend::{Backend, BackendObject, BackendSession};
use crate::fingerprint::{bytes_at, ulong_at};
pub use crate::fingerprint::{certificate_fingerprint, fingerprint};

/// One managed key as the hot path sees it.
#[derive(Debug, Clone)]
pub struct KeyView {
    /// The inventory record.
    pub record: KeyRecord,
    /// Its versions, oldest first.
    pub versions: Vec<KeyVersion>,
    /// Grants given with `keyward grant add` (the class's grants come from
    /// the policy).
    pub grants: Vec<Grant>,
}

impl KeyView {
    /// Version `v`.
    pub fn version(&self, v: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|x| x.version == v)
    }

    /// The newest active version.
    pub fn active_version(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::Active)
    }

    /// The version that protects: the newest that is not destroyed.
    pub fn live_version(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state != KeyState::Destroyed)
    }

    /// Whether the active key's rotation or the end of its protect period
    /// has come at `at` (unix seconds): the scheduler's work, overdue
    /// until it is done.
    pub fn rotation_due(&self, at: i64) -> bool {
        let r = &self.record;
        r.state == KeyState::Active
            && (r.next_rotation.is_some_and(|n| n <= at)
                || r.protect_until.is_some_and(|p| p <= at))
    }
}

/// A backend object that is a managed key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedRef {
    /// The key's inventory id.
    pub key_id: i64,
    /// The version.
    pub version: u32,
}

#[derive(Debug, Default)]
struct View {
    by_backend_id: HashMap<(String, Vec<u8>), ManagedRef>,
    keys: HashMap<i64, Arc<KeyView>>,
    /// `(token, CKA_LABEL)` of every managed key: its name and its
    /// versions' backend labels. Applications cannot give an object one of
    /// them, and a search by one finds managed objects only.
    labels: std::collections::HashSet<(String, Vec<u8>)>,
}

/// The inventory and its view.
pub struct ManagedKeys {
    inventory: Arc<dyn Inventory>,
    view: RwLock<View>,
    /// Last use per key since the last [`ManagedKeys::flush_uses`]: uses are
    /// recorded in memory on the hot path and written in batches.
    used: Mutex<HashMap<i64, i64>>,
    /// `(token, CKA_ID)` of keys being generated for the inventory and not
    /// yet recorded: searches do not show them.
    pending: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
    /// Backend objects with a managed `CKA_ID` already judged in this run
    /// ([`ManagedKeys::is_genuine`]): the version they are, or `None` for a
    /// plant. Backend handles are not reused within a library's life.
    judged: Mutex<HashMap<(String, BackendObject), Option<ManagedRef>>>,
    /// Per token, the backend objects the last discovery found outside
    /// management ([`ManagedKeys::note_shadows`]).
    shadows: Mutex<HashMap<String, std::collections::HashSet<BackendObject>>>,
    /// In strict mode, which application made which unmanaged token object
    /// (its namespace, [`crate::objects`]).
    pub(crate) owners: crate::objects::Owners,
    /// With a shared store: the lease on this view (see
    /// [`crate::store::Lease`]); unset with SQLite, whose view is never
    /// stale.
    lease: std::sync::OnceLock<Arc<crate::store::Lease>>,
}

impl std::fmt::Debug for ManagedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKeys").finish_non_exhaustive()
    }
}

/// Unix seconds to a time.
pub fn time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// A time to unix seconds.
pub fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ManagedKeys {
    /// Loads every key of `inventory` into the view.
    pub fn open(inventory: Arc<dyn Inventory>) -> keyward_inventory::Result<ManagedKeys> {
        let owners = crate::objects::Owners::load(&*inventory)?;
        let keys = ManagedKeys {
            owners,
            inventory,
            view: RwLock::new(View::default()),
            used: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::HashSet::new()),
            judged: Mutex::new(HashMap::new()),
            shadows: Mutex::new(HashMap::new()),
            lease: std::sync::OnceLock::new(),
        };
        for record in keys.inventory.keys(&KeyFilter::default())? {
            keys.refresh(record.id)?;
        }
        Ok(keys)
    }

    /// The store behind the view.
    pub fn inventory(&self) -> &dyn Inventory {
        &*self.inventory
    }

    /// Puts the view under `lease` (a shared store; once).
    pub fn set_lease(&self, lease: Arc<crate::store::Lease>) {
        let _ = self.lease.set(lease);
    }

    /// `None` while the view can be trusted; else why not (the shared
    /// store has been silent past the lease).
    pub fn stale(&self) -> Option<String> {
        self.lease.get().and_then(|l| l.lapsed())
    }

    /// Reloads every key from the store, and drops from the view those the
    /// store no longer has (after notifications may have been missed).
    pub fn refresh_all(&self) -> keyward_inventory::Result<()> {
        let ids: std::collections::HashSet<i64> = self
            .inventory
            .keys(&KeyFilter::default())?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let gone: Vec<i64> = self
            .all()
            .iter()
            .map(|k| k.record.id)
            .filter(|id| !ids.contains(id))
            .collect();
        for id in ids.iter().chain(&gone) {
            self.refresh(*id)?;
        }
        Ok(())
    }

    /// Reloads key `key_id` from the store (after every change to it).
    pub fn refresh(&self, key_id: i64) -> keyward_inventory::Result<()> {
        let record = self.inventory.key_by_id(key_id)?;
        let loaded = match record {
            Some(record) => Some(KeyView {
                versions: self.inventory.versions(key_id)?,
                grants: self.inventory.grants(key_id)?,
                record,
            }),
            None => None,
        };
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.by_backend_id.retain(|_, r| r.key_id != key_id);
        view.keys.remove(&key_id);
        if let Some(k) = loaded {
            for v in &k.versions {
                view.by_backend_id.insert(
                    (k.record.token.clone(), v.backend_id.clone()),
                    ManagedRef {
                        key_id,
                        version: v.version,
                    },
                );
            }
            view.keys.insert(key_id, Arc::new(k));
        }
        let labels = view
            .keys
            .values()
            .flat_map(|k| {
                let token = &k.record.token;
                std::iter::once((token.clone(), k.record.name.as_bytes().to_vec())).chain(
                    k.versions
                        .iter()
                        .filter(|v| !v.backend_label.is_empty())
                        .map(|v| (token.clone(), v.backend_label.as_bytes().to_vec())),
                )
            })
            .collect();
        view.labels = labels;
        Ok(())
    }

    /// Notes what a discovery found outside management on `token` now
    /// (backend objects) and answers those not found by the discovery
    /// before: each is recorded once, not at every pass.
    pub fn note_shadows(&self, token: &str, found: &[BackendObject]) -> Vec<BackendObject> {
        let mut shadows = self.shadows.lock().unwrap_or_else(|p| p.into_inner());
        let before = shadows.entry(token.to_owned()).or_default();
        let new = found
            .iter()
            .copied()
            .filter(|o| !before.contains(o))
            .collect();
        *before = found.iter().copied().collect();
        new
    }

    /// How many keys outside management the last discovery found, per token
    /// (tokens not yet scanned are absent).
    pub fn shadow_counts(&self) -> Vec<(String, usize)> {
        let shadows = self.shadows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, usize)> =
            shadows.iter().map(|(t, s)| (t.clone(), s.len())).collect();
        out.sort();
        out
    }

    /// Whether `label` is a managed key's name or a version's backend label
    /// on `token`.
    pub fn is_managed_label(&self, token: &str, label: &[u8]) -> bool {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        !view.labels.is_empty() && view.labels.contains(&(token.to_owned(), label.to_vec()))
    }

    /// The managed key on `token` whose name or a version's backend label
    /// is `label`.
    pub fn key_by_label(&self, token: &str, label: &[u8]) -> Option<Arc<KeyView>> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        view.keys
            .values()
            .find(|k| {
                k.record.token == token
                    && (k.record.name.as_bytes() == label
                        || k.versions
                            .iter()
                            .any(|v| v.backend_label.as_bytes() == label))
            })
            .cloned()
    }

    /// Notes that backend object `object` on `token` is version `m` (the
    /// agent made it) or a plant (`None`).
    pub fn set_judged(&self, token: &str, object: BackendObject, m: Option<ManagedRef>) {
        self.judged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((token.to_owned(), object), m);
    }

    /// Forgets every judgement on `token` (its objects were destroyed).
    pub fn forget_judged(&self, token: &str) {
        self.judged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(t, _), _| t != token);
    }

    /// Forgets every judgement that found an object to be a version of key
    /// `key_id` (its objects were destroyed): nothing is taken for that
    /// key again without being judged afresh.
    pub fn forget_judged_key(&self, key_id: i64) {
        self.judged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, m| m.is_none_or(|m| m.key_id != key_id));
    }

    /// Whether backend object `object` on `token`, whose `CKA_ID` is that of
    /// version `m`, is that version: its [`fingerprint`] is the one
    /// recorded for it (a private key whose public value the HSM does not
    /// show proves it holds the recorded public key's private half by a
    /// signature, see [`proves_possession`]). A version recorded without a
    /// fingerprint (before fingerprints; the agent records one at its next
    /// start) is recognised by its `CKA_ID`. Judged once per object and
    /// agent run; `session` is any open session of the token.
    pub fn is_genuine(
        &self,
        token: &str,
        backend: &dyn Backend,
        session: BackendSession,
        object: BackendObject,
        m: ManagedRef,
    ) -> bool {
        let key = (token.to_owned(), object);
        if let Some(j) = self
            .judged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *j == Some(m);
        }
        let Some(view) = self.key(m.key_id) else {
            return false;
        };
        let Some(version) = view.version(m.version) else {
            return false;
        };
        let genuine = match &version.fingerprint {
            None => return true,
            Some(recorded) => match fingerprint(backend, session, object) {
                Some(fp) => fp[..] == recorded[..],
                None => proves_possession(backend, object, &version.backend_id, recorded),
            },
        };
        if !genuine {
            log::warn!(
                "token {token:?}: backend object {object} has the CKA_ID of key {:?} version {} \
                 but not its fingerprint: a planted object, hidden and never used as the key",
                view.record.name,
                m.version
            );
        }
        self.set_judged(token, object, genuine.then_some(m));
        genuine
    }

    /// Marks (or unmarks) a `CKA_ID` as being generated for the inventory.
    pub fn set_pending(&self, token: &str, id: &[u8], pending: bool) {
        let mut set = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending {
            set.insert((token.to_owned(), id.to_vec()));
        } else {
            set.remove(&(token.to_owned(), id.to_vec()));
        }
    }

    /// Whether a `CKA_ID` is being generated for the inventory.
    pub fn is_pending(&self, token: &str, id: &[u8]) -> bool {
        let set = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.contains(&(token.to_owned(), id.to_vec()))
    }

    /// Notes a use of key `key_id` at `at` (unix seconds), for the next
    /// [`ManagedKeys::flush_uses`].
    pub fn note_use(&self, key_id: i64, at: i64) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id, at);
    }

    /// Writes the noted uses to the inventory (`last_used_at`).
    pub fn flush_uses(&self) {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        for (key_id, at) in used {
            match self.inventory.touch(key_id, at) {
                Ok(()) => {
                    let _ = self.refresh(key_id);
                }
                Err(e) => log::warn!("inventory: cannot record the last use of key {key_id}: {e}"),
            }
        }
    }

    /// Whether any key is managed at all (when none is, the hot path skips
    /// every lookup).
    pub fn is_empty(&self) -> bool {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .is_empty()
    }

    /// The managed version with this `CKA_ID` on `token`, if any.
    pub fn lookup(&self, token: &str, backend_id: &[u8]) -> Option<ManagedRef> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        // The map is keyed by owned strings; a miss is the common case for
        // unmanaged objects and costs one hash.
        view.by_backend_id
            .get(&(token.to_owned(), backend_id.to_vec()))
            .copied()
    }

    /// Key `key_id`.
    pub fn key(&self, key_id: i64) -> Option<Arc<KeyView>> {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .get(&key_id)
            .cloned()
    }

    /// Every key.
    pub fn all(&self) -> Vec<Arc<KeyView>> {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .values()
            .cloned()
            .collect()
    }
}

/// Whether backend object `object` is a certificate of `key`'s own public
/// key (of any of its versions): the key's certificate, which may carry its
/// name and `CKA_ID` and is shown beside it.
pub fn is_certificate_of(
    backend: &dyn Backend,
    session: BackendSession,
    object: BackendObject,
    key: &KeyView,
) -> bool {
    let Ok(r) = backend.get_attributes(session, object, &[ck::CKA_CLASS, ck::CKA_VALUE]) else {
        return false;
    };
    if ulong_at(&r, 0) != Some(ck::CKO_CERTIFICATE) {
        return false;
    }
    let Some(fp) = bytes_at(&r, 1).and_then(certificate_fingerprint) else {
        return false;
    };
    key.versions
        .iter()
        .any(|v| v.fingerprint.as_deref() == Some(&fp[..]))
}

/// Whether private key `object` is the private half of the public key
/// with `CKA_ID` `id` and fingerprint `recorded`: a random digest signed
/// with it verifies under that public key, inside the HSM, on a session of
/// its own. A private key that may not sign (a derivation key) proves
/// nothing this way and is accepted only as the one private key with that
/// `CKA_ID`.
pub fn proves_possession(
    backend: &dyn Backend,
    object: BackendObject,
    id: &[u8],
    recorded: &[u8],
) -> bool {
    let Ok(s) = backend.open_session(false) else {
        return false;
    };
    let result = (|| -> Option<bool> {
        let r = backend
            .get_attributes(s, object, &[ck::CKA_CLASS, ck::CKA_KEY_TYPE, ck::CKA_SIGN])
            .ok()?;
        if ulong_at(&r, 0)? != ck::CKO_PRIVATE_KEY {
            return Some(false);
        }
        let by_id = |class: u64| {
            backend.find_objects(
                s,
                &[
                    Attribute::ulong(ck::CKA_CLASS, class),
                    Attribute::bytes(ck::CKA_ID, id.to_vec()),
                ],
            )
        };
        let can_sign = matches!(
            r.get(2),
            Some(AttrResult::Value(AttrValue::Leaf(Value::Bool(true))))
        );
        if !can_sign {
            return Some(by_id(ck::CKO_PRIVATE_KEY).ok()? == [object]);
        }
        let mechanism = match ulong_at(&r, 1)? {
            ck::CKK_EC => ck::CKM_ECDSA,
            ck::CKK_EC_EDWARDS => ck::CKM_EDDSA,
            _ => return Some(false),
        };
        let public = by_id(ck::CKO_PUBLIC_KEY)
            .ok()?
            .into_iter()
            .find(|&p| fingerprint(backend, s, p).is_some_and(|fp| fp[..] == recorded[..]))?;
        let mut data = [0u8; 32];
        getrandom::getrandom(&mut data).ok()?;
        let m = Mechanism::plain(mechanism);
        backend.op_init(s, Op::Sign, &m, Some(object)).ok()?;
        let signature = backend.single(s, Op::Sign, &data).ok()?;
        backend.op_init(s, Op::Verify, &m, Some(public)).ok()?;
        Some(backend.verify(s, &data, &signature).is_ok())
    })();
    let _ = backend.close_session(s);
    result.unwrap_or(false)
}

/// The process period end of a version: the key's own date for its newest
/// version, else the version's creation plus the class's process period.
fn process_until(policy: &Policy, key: &KeyView, version: &KeyVersion) -> Option<SystemTime> {
    let newest = key.versions.iter().map(|v| v.version).max() == Some(version.version);
    if newest {
        return key.record.process_until.map(time);
    }
    let class = policy.class(&key.record.class)?;
    time(version.created_at).checked_add(class.process_period)
}

/// Whether `application` may do `op` with version `r` of a managed key at
/// `now`: the key and the version exist and are not destroyed; the
/// operation fits the key's purpose; a current grant (the class's, in the
/// policy, or the key's own) names it; and the state table allows it for
/// both the key's and the version's state, with the cryptoperiod applied
/// (an active key past its protect period is deactivated, whether or not the
/// scheduler has run). A compromised key in its recovery window verifies
/// and decrypts (see [`RECOVERY_OPERATIONS`]) for the applications granted
/// those.
pub fn check_use(
    policy: &Policy,
    key: &KeyView,
    r: ManagedRef,
    application: &str,
    op: Operation,
    now: SystemTime,
) -> Result<(), Refusal> {
    let Some(version) = key.version(r.version) else {
        return Err(Refusal::KeyDestroyed);
    };
    let key_state = key.record.state;
    let version_state = version.state;
    if !key_state.is_visible() || !version_state.is_visible() {
        return Err(Refusal::KeyDestroyed);
    }
    check_grant(policy, key, application, op, now)?;
    if recovers(key, version_state, op, now) {
        return Ok(());
    }
    let period =
        key.record
            .protect_until
            .zip(key.record.process_until)
            .map(|(protect, process)| Cryptoperiod {
                activated: key.record.activated_at.map(time).unwrap_or(UNIX_EPOCH),
                protect_until: time(protect),
                process_until: time(process),
                rotate_at: None,
            });
    let effective = effective_state(key_state, now, period.as_ref());
    let until = process_until(policy, key, version);
    permits(effective, op, now, until)?;
    permits(version_state, op, now, until)
}

/// What a recovery window lets a compromised key do: process what it
/// protected, never protect anything new.
pub const RECOVERY_OPERATIONS: [Operation; 2] = [Operation::Verify, Operation::Decrypt];

/// Whether `op` with a compromised version of compromised key `key` is a
/// use its recovery window allows at `now` (one of
/// [`RECOVERY_OPERATIONS`], before `recovery_until`). The grant and the
/// purpose are checked apart. A comparison on the view: no store read.
fn recovers(key: &KeyView, version_state: KeyState, op: Operation, now: SystemTime) -> bool {
    key.record.state == KeyState::Compromised
        && version_state == KeyState::Compromised
        && RECOVERY_OPERATIONS.contains(&op)
        && key
            .record
            .recovery_until
            .is_some_and(|until| secs(now) < until)
}

/// Purpose, then a current grant from the class or the key itself.
pub fn check_grant(
    policy: &Policy,
    key: &KeyView,
    application: &str,
    op: Operation,
    now: SystemTime,
) -> Result<(), Refusal> {
    let purpose = key.record.purpose;
    if !purpose.allows(op) {
        return Err(Refusal::PurposeMismatch {
            purpose,
            operation: op,
        });
    }
    let key_grant = key.grants.iter().any(|g| {
        g.application == application
            && g.operations.contains(&op)
            && g.expires_at.is_none_or(|t| secs(now) < t)
    });
    if key_grant {
        return Ok(());
    }
    let expired_key_grant = key
        .grants
        .iter()
        .any(|g| g.application == application && g.operations.contains(&op));
    match policy.class(&key.record.class) {
        Some(class) => match class.check_grant(application, op, now) {
            Ok(()) => Ok(()),
            Err(Refusal::NotGranted {
                application,
                class,
                operation,
            }) if expired_key_grant => Err(Refusal::GrantExpired {
                application,
                class,
                operation,
            }),
            Err(e) => Err(e),
        },
        None => Err(Refusal::NotGranted {
            application: application.to_owned(),
            class: key.record.class.clone(),
            operation: op,
        }),
    }
}

/// Whether `application` may see the key at all: some operation granted
/// now, and the key not destroyed. Keys an application has no grant for are
/// invisible to it.
pub fn visible_to(policy: &Policy, key: &KeyView, application: &str, now: SystemTime) -> bool {
    key.record.state.is_visible()
        && Operation::ALL
            .into_iter()
            .any(|op| check_grant(policy, key, application, op, now).is_ok())
}

/// A key's own grant (`keyward grant add`) as the admin protocol shows it.
pub(crate) fn grant_info(key: &str, g: &Grant) -> GrantInfo {
    GrantInfo {
        key: key.to_owned(),
        application: g.application.clone(),
        operations: g.operations.clone(),
        expires_at: g.expires_at,
        source: "key".to_owned(),
    }
}

/// Key `k`'s effective grants: its class's in the policy in force (still
/// current), then its own.
pub(crate) fn effective_grants(policy: &keyward_policy::Policy, k: &KeyView) -> Vec<GrantInfo> {
    let now = crate::clock::now();
    let name = &k.record.name;
    let class = policy
        .class(&k.record.class)
        .map(|c| c.grants.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|g| g.until.is_none_or(|u| u > now))
        .map(|g| GrantInfo {
            key: name.clone(),
            application: g.application.clone(),
            operations: g.operations.clone(),
            expires_at: g.until.map(secs),
            source: "class".to_owned(),
        });
    class
        .chain(k.grants.iter().map(|g| grant_info(name, g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, ManagedKeys) {
        let dir = tempfile::tempdir().unwrap();
        let inventory =
            keyward_inventory::SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
        (dir, ManagedKeys::open(Arc::new(inventory)).unwrap())
    }

    #[test]
    fn a_shadow_key_is_new_once_and_counted_while_it_is_there() {
        let (_dir, k) = keys();
        let obj = BackendObject::for_test;
        assert!(k.shadow_counts().is_empty(), "nothing scanned yet");
        assert_eq!(k.note_shadows("kw", &[obj(7)]), vec![obj(7)]);
        // The next passes find it again: not new.
        assert_eq!(k.note_shadows("kw", &[obj(7)]), Vec::<BackendObject>::new());
        assert_eq!(k.note_shadows("kw", &[obj(7), obj(9)]), vec![obj(9)]);
        assert_eq!(k.shadow_counts(), vec![("kw".to_owned(), 2)]);
        // Adopted or removed: no longer counted.
        assert_eq!(k.note_shadows("kw", &[obj(9)]), Vec::<BackendObject>::new());
        assert_eq!(
            k.note_shadows("other", &[obj(7)]),
            vec![obj(7)],
            "per token"
        );
        assert_eq!(
            k.shadow_counts(),
            vec![("kw".to_owned(), 1), ("other".to_owned(), 1)]
        );
    }

    /// A destroyed key's judgements go; those of other keys and of plants
    /// stay.
    #[test]
    fn forgetting_a_key_forgets_only_its_judgements() {
        let (_dir, k) = keys();
        let obj = BackendObject::for_test;
        let m = |key_id| Some(ManagedRef { key_id, version: 1 });
        k.set_judged("kw", obj(1), m(1));
        k.set_judged("kw", obj(2), m(2));
        k.set_judged("kw", obj(3), None);
        k.set_judged("other", obj(1), m(1));
        k.forget_judged_key(1);
        let judged = k.judged.lock().unwrap();
        let mut left: Vec<_> = judged
            .iter()
            .map(|((t, o), m)| (t.clone(), *o, *m))
            .collect();
        left.sort_by_key(|(t, o, _)| (t.clone(), *o));
        assert_eq!(
            left,
            vec![
                ("kw".to_owned(), obj(2), m(2)),
                ("kw".to_owned(), obj(3), None)
            ]
        );
    }

    /// Key "web" on token "kw" with version 1, in the store (not yet in
    /// the view).
    fn create_web(k: &ManagedKeys) -> KeyRecord {
        let record = KeyRecord {
            id: 0,
            name: "web".into(),
            token: "kw".into(),
            owner: "admin".into(),
            purpose: keyward_policy::Purpose::Signing,
            class: "signing".into(),
            algorithm: keyward_policy::Algorithm::Ec(keyward_policy::Curve::P256),
            state: KeyState::Active,
            created_at: 1,
            activated_at: Some(1),
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: vec![],
            last_used_at: None,
            backup_allowed: false,
            recovery_until: None,
            reason_code: None,
        };
        let version = KeyVersion {
            key_id: 0,
            version: 1,
            backend_id: vec![1, 2],
            backend_label: "web-old-label".into(),
            state: KeyState::Active,
            created_at: 1,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: Some(vec![3; 32]),
        };
        k.inventory()
            .apply(&keyward_inventory::LifecycleChange {
                key: keyward_inventory::KeyChange::Create(Box::new(record)),
                versions: vec![keyward_inventory::VersionChange::Add(version)],
                dates: Default::default(),
                actor: "admin".into(),
                reason: "created".into(),
                at: 1,
                trail: Vec::new(),
            })
            .unwrap()
            .key
    }

    #[test]
    fn a_managed_keys_name_and_backend_label_are_managed_labels_on_its_token() {
        let (_dir, k) = keys();
        let created = create_web(&k);
        assert!(!k.is_managed_label("kw", b"web"), "not yet in the view");
        k.refresh(created.id).unwrap();
        assert!(k.is_managed_label("kw", b"web"));
        assert!(k.is_managed_label("kw", b"web-old-label"));
        assert!(!k.is_managed_label("other", b"web"));
        assert!(!k.is_managed_label("kw", b"we"));
        assert_eq!(
            k.key(created.id).unwrap().versions[0].fingerprint,
            Some(vec![3; 32])
        );
    }

    /// A stored value this build does not know (written by something
    /// else) stops the agent from loading the keys with an error that
    /// names the key and the value, rather than carrying a key whose
    /// purpose nothing checks; the store keeps the row as it was.
    #[test]
    fn an_unknown_stored_purpose_is_refused_naming_the_key() {
        let (dir, k) = keys();
        let created = create_web(&k);
        k.refresh(created.id).unwrap();
        let path = dir.path().join("inventory.sqlite");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute(
            "UPDATE keys SET purpose = 'sorcery' WHERE id = ?1",
            [created.id],
        )
        .unwrap();
        let inventory = keyward_inventory::SqliteInventory::open(&path).unwrap();
        let message = match ManagedKeys::open(Arc::new(inventory)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("keys with an unknown purpose loaded"),
        };
        assert!(
            message.contains("key \"web\" on token \"kw\"") && message.contains("\"sorcery\""),
            "{message}"
        );
        // A refresh of the running view fails the same way and keeps the
        // key as it was last read.
        assert!(k.refresh(created.id).is_err());
        assert_eq!(
            k.key(created.id).unwrap().record.purpose,
            keyward_policy::Purpose::Signing
        );
        let stored: String = db
            .query_row(
                "SELECT purpose FROM keys WHERE id = ?1",
                [created.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, "sorcery");
    }
}
