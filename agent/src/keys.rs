//! Managed keys: the inventory, the in-memory view of it that every call
//! reads, and the check every use of a managed key passes.
//!
//! The agent is the inventory's only writer, so the view is exact: every
//! change goes to the store first (durable before the call returns) and
//! then [`ManagedKeys::refresh`] reloads that key. A revoked key therefore
//! fails on its very next use, whatever sessions or operations are open.
//!
//! A backend object is a managed key version when its `CKA_ID` is a
//! version's `backend_id` on that token. Objects the inventory does not know
//! are unmanaged: the policy's mechanism allow-list applies to them, and in
//! lab mode they behave as on a plain token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_inventory::{Grant, Inventory, KeyFilter, KeyRecord, KeyVersion};
use keyward_policy::{
    effective_state, permits, Cryptoperiod, KeyState, Operation, Policy, Purpose, Refusal,
};

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
            .find(|v| v.state == keyward_inventory::KeyState::Active)
    }

    /// The version that protects: the newest that is not destroyed.
    pub fn live_version(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state != keyward_inventory::KeyState::Destroyed)
    }

    /// Whether the active key's rotation or the end of its protect period
    /// has come at `at` (unix seconds): the scheduler's work, overdue
    /// until it is done.
    pub fn rotation_due(&self, at: i64) -> bool {
        let r = &self.record;
        r.state == keyward_inventory::KeyState::Active
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
}

impl std::fmt::Debug for ManagedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKeys").finish_non_exhaustive()
    }
}

/// Converts the store's state to the policy's (the same six states; a
/// state added to one enum and not the other does not compile).
pub fn policy_state(s: keyward_inventory::KeyState) -> KeyState {
    use keyward_inventory::KeyState as Inv;
    match s {
        Inv::PreActivation => KeyState::PreActivation,
        Inv::Active => KeyState::Active,
        Inv::Suspended => KeyState::Suspended,
        Inv::Deactivated => KeyState::Deactivated,
        Inv::Compromised => KeyState::Compromised,
        Inv::Destroyed => KeyState::Destroyed,
    }
}

/// Converts the policy's state to the store's.
pub fn inventory_state(s: KeyState) -> keyward_inventory::KeyState {
    use keyward_inventory::KeyState as Inv;
    match s {
        KeyState::PreActivation => Inv::PreActivation,
        KeyState::Active => Inv::Active,
        KeyState::Suspended => Inv::Suspended,
        KeyState::Deactivated => Inv::Deactivated,
        KeyState::Compromised => Inv::Compromised,
        KeyState::Destroyed => Inv::Destroyed,
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
        let keys = ManagedKeys {
            inventory,
            view: RwLock::new(View::default()),
            used: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::HashSet::new()),
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
        Ok(())
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
/// scheduler has run).
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
    let key_state = policy_state(key.record.state);
    let version_state = policy_state(version.state);
    if !key_state.is_visible() || !version_state.is_visible() {
        return Err(Refusal::KeyDestroyed);
    }
    check_grant(policy, key, application, op, now)?;
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

/// Purpose, then a current grant from the class or the key itself.
pub fn check_grant(
    policy: &Policy,
    key: &KeyView,
    application: &str,
    op: Operation,
    now: SystemTime,
) -> Result<(), Refusal> {
    let purpose = Purpose::from_name(&key.record.purpose);
    if let Some(purpose) = purpose.filter(|p| !p.allows(op)) {
        return Err(Refusal::PurposeMismatch {
            purpose,
            operation: op,
        });
    }
    let key_grant = key.grants.iter().any(|g| {
        g.application == application
            && g.operations.iter().any(|o| o == op.name())
            && g.expires_at.is_none_or(|t| secs(now) < t)
    });
    if key_grant {
        return Ok(());
    }
    let expired_key_grant = key
        .grants
        .iter()
        .any(|g| g.application == application && g.operations.iter().any(|o| o == op.name()));
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
    policy_state(key.record.state).is_visible()
        && Operation::ALL
            .into_iter()
            .any(|op| check_grant(policy, key, application, op, now).is_ok())
}
