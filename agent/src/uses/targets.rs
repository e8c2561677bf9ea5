//! What each use record names, per backend object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::BackendObject;
use crate::clients::{Slot, UseTarget};
use crate::lock;

/// What the use records of each key object name, read from the HSM once
/// per backend object and kept until the object is destroyed, changed, its
/// session closes or its token is initialised.
#[derive(Debug, Default)]
pub struct UseTargets(Mutex<HashMap<(Slot, BackendObject), Arc<UseTarget>>>);

impl UseTargets {
    pub(crate) fn get(&self, slot: Slot, object: BackendObject) -> Option<Arc<UseTarget>> {
        lock(&self.0).get(&(slot, object)).cloned()
    }

    pub(crate) fn insert(&self, slot: Slot, object: BackendObject, target: Arc<UseTarget>) {
        lock(&self.0).insert((slot, object), target);
    }

    pub(crate) fn forget(&self, gone: &mut impl FnMut(&(Slot, BackendObject)) -> bool) {
        lock(&self.0).retain(|k, _| !gone(k));
    }

    /// Forgets the objects named as versions of managed key `key` on
    /// `token` (the key was destroyed).
    pub(crate) fn forget_key(&self, token: &str, key: &str) {
        lock(&self.0).retain(|_, t| t.version.is_none() || t.token != token || t.key != key);
    }
}
