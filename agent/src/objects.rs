//! Unmanaged token objects in strict mode: each application's namespace.
//!
//! Under a strict policy, the data objects, certificates and public keys an
//! application makes on a token through keyward (`C_CreateObject`,
//! `C_CopyObject`) are visible to that application only. Managed keys have
//! their own rules (`keys`), session objects belong to the process that
//! made them, and unmanaged private and secret token keys are quarantined.
//!
//! Backend handles do not survive an agent restart, so an object is known
//! by its [`Identity`]: SHA-256 over its class, `CKA_ID`, `CKA_LABEL` and
//! content (a data object's `CKA_VALUE`, `CKA_APPLICATION` and
//! `CKA_OBJECT_ID`; a certificate's type and `CKA_VALUE`; a public key's
//! fingerprint, [`crate::fingerprint::fingerprint`]). The inventory records, per
//! token and identity, which applications made such an object and how many
//! ([`Owners`]); the agent keeps a view of it in memory and writes the store
//! first. An object whose identity no record names for the application is
//! left out of its searches: one made on the backend directly, before the
//! strict policy, or by another application.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use cryptoki_sys as ck;
use keyward_inventory::Inventory;
use keyward_protocol::{AttrResult, AttrValue, Value};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendObject, BackendSession};

/// What an unmanaged object is known by across agent restarts.
pub type Identity = [u8; 32];

/// The attributes read in one call to judge an object found on a token in
/// strict mode: `CKA_ID`, `CKA_CLASS`, `CKA_LABEL` (in that order).
pub const HEAD: [u64; 3] = [ck::CKA_ID, ck::CKA_CLASS, ck::CKA_LABEL];

/// Whether objects of `class` have per-application namespaces in strict
/// mode: every class but private and secret keys (quarantined unless
/// managed). An object whose class cannot be read has one too (hidden
/// rather than shown).
pub fn is_namespaced(class: Option<u64>) -> bool {
    !matches!(class, Some(ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY))
}

/// The class in a [`HEAD`] read.
pub fn class_of(head: &[AttrResult]) -> Option<u64> {
    match head.get(1) {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Ulong(c)))) => Some(*c),
        _ => None,
    }
}

/// Feeds one attribute result into `h`, unambiguously (a tag, then a
/// length-prefixed value).
fn part(h: &mut Sha256, r: Option<&AttrResult>) {
    let (tag, bytes): (u8, Vec<u8>) = match r {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) => (1, b.clone()),
        Some(AttrResult::Value(AttrValue::Leaf(Value::Ulong(u)))) => (2, u.to_be_bytes().to_vec()),
        Some(AttrResult::Value(AttrValue::Leaf(Value::Bool(b)))) => (3, vec![u8::from(*b)]),
        Some(AttrResult::Value(_)) => (4, Vec::new()),
        Some(AttrResult::Sensitive) => (5, Vec::new()),
        Some(AttrResult::Invalid) | None => (0, Vec::new()),
    };
    h.update([tag]);
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(&bytes);
}

/// The identity of `object`, whose [`HEAD`] attributes are `head`: one
/// more attribute read for a data object or a certificate (the public key
/// fingerprint's reads for a public key). `None` when its class or content
/// cannot be read (such an object is never shown).
pub fn identity(
    backend: &dyn Backend,
    session: BackendSession,
    object: BackendObject,
    head: &[AttrResult],
) -> Option<Identity> {
    let class = class_of(head)?;
    let mut h = Sha256::new();
    h.update(b"keyward object identity 1\0");
    h.update(class.to_be_bytes());
    part(&mut h, head.first());
    part(&mut h, head.get(2));
    let content: &[u64] = match class {
        ck::CKO_DATA => &[ck::CKA_VALUE, ck::CKA_APPLICATION, ck::CKA_OBJECT_ID],
        ck::CKO_CERTIFICATE => &[ck::CKA_CERTIFICATE_TYPE, ck::CKA_VALUE],
        ck::CKO_PUBLIC_KEY => {
            let fp = crate::fingerprint::fingerprint(backend, session, object);
            h.update([u8::from(fp.is_some())]);
            h.update(fp.unwrap_or_default());
            &[]
        }
        _ => &[],
    };
    if !content.is_empty() {
        let r = backend.get_attributes(session, object, content).ok()?;
        for i in 0..content.len() {
            part(&mut h, r.get(i));
        }
    }
    Some(h.finalize().into())
}

/// Reads the [`HEAD`] of `object` and its identity: its class and identity.
pub fn identify(
    backend: &dyn Backend,
    session: BackendSession,
    object: BackendObject,
) -> Option<(Option<u64>, Option<Identity>)> {
    let head = backend.get_attributes(session, object, &HEAD).ok()?;
    let class = class_of(&head);
    Some((class, identity(backend, session, object, &head)))
}

/// token -> identity -> application -> how many objects it made.
type View = HashMap<String, HashMap<Identity, HashMap<String, u32>>>;

/// Which applications own unmanaged objects of which identity, per token:
/// the inventory's records and a view of them in memory (read at every
/// search of an object the client has no handle for).
#[derive(Debug, Default)]
pub struct Owners {
    view: RwLock<View>,
}

impl Owners {
    /// Loads every record of `inventory`.
    pub fn load(inventory: &dyn Inventory) -> keyward_inventory::Result<Owners> {
        Ok(Owners {
            view: RwLock::new(Self::read(inventory)?),
        })
    }

    /// Reads every record of `inventory` again (another agent of the fleet
    /// changed them).
    pub fn reload(&self, inventory: &dyn Inventory) -> keyward_inventory::Result<()> {
        let view = Self::read(inventory)?;
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
        Ok(())
    }

    fn read(inventory: &dyn Inventory) -> keyward_inventory::Result<View> {
        let mut view = View::new();
        for o in inventory.object_owners()? {
            let Ok(identity) = Identity::try_from(o.identity.as_slice()) else {
                continue;
            };
            view.entry(o.token)
                .or_default()
                .entry(identity)
                .or_default()
                .insert(o.application, o.count);
        }
        Ok(view)
    }

    /// Whether `application` made an object of `identity` on `token`.
    pub fn owns(&self, token: &str, identity: &Identity, application: &str) -> bool {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        view.get(token)
            .and_then(|t| t.get(identity))
            .is_some_and(|apps| apps.contains_key(application))
    }

    /// Whether an application for which `f` holds made an object of
    /// `identity` on `token`.
    pub fn any_owner(&self, token: &str, identity: &Identity, f: impl Fn(&str) -> bool) -> bool {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        view.get(token)
            .and_then(|t| t.get(identity))
            .is_some_and(|apps| apps.keys().any(|a| f(a)))
    }

    /// Whether any application made an object of `identity` on `token`.
    pub fn has_owner(&self, token: &str, identity: &Identity) -> bool {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        view.get(token)
            .and_then(|t| t.get(identity))
            .is_some_and(|apps| !apps.is_empty())
    }

    /// Records (durably first, then in the view) that `application` made
    /// one more object of `identity` on `token`, at `at`.
    pub fn add(
        &self,
        inventory: &dyn Inventory,
        token: &str,
        identity: &Identity,
        application: &str,
        at: i64,
    ) -> keyward_inventory::Result<()> {
        inventory.add_object_owner(token, identity, application, at)?;
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        *view
            .entry(token.to_owned())
            .or_default()
            .entry(*identity)
            .or_default()
            .entry(application.to_owned())
            .or_default() += 1;
        Ok(())
    }

    /// Records that `application` destroyed one object of `identity` on
    /// `token` (durably first, then in the view).
    pub fn remove(
        &self,
        inventory: &dyn Inventory,
        token: &str,
        identity: &Identity,
        application: &str,
    ) -> keyward_inventory::Result<()> {
        inventory.remove_object_owner(token, identity, application)?;
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(apps) = view.get_mut(token).and_then(|t| t.get_mut(identity)) {
            if let Some(n) = apps.get_mut(application) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    apps.remove(application);
                }
            }
            if apps.is_empty() {
                if let Some(t) = view.get_mut(token) {
                    t.remove(identity);
                }
            }
        }
        Ok(())
    }
}

/// How the trail names a key object the inventory does not manage: its
/// `CKA_LABEL`, else `id:` and its `CKA_ID` in hex; `None` when it has
/// neither. At most [`MAX_NAME`] bytes of either: an application chooses
/// its objects' attributes, and an oversized field would make the store
/// refuse the whole batch.
pub(crate) fn unmanaged_name(label: &[u8], id: &[u8]) -> Option<String> {
    if !label.is_empty() {
        let label = &label[..label.len().min(MAX_NAME)];
        Some(String::from_utf8_lossy(label).into_owned())
    } else if !id.is_empty() {
        Some(format!(
            "id:{}",
            hex::encode(&id[..id.len().min(MAX_NAME / 2)])
        ))
    } else {
        None
    }
}

/// The longest unmanaged object name the trail records (bytes).
pub(crate) const MAX_NAME: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_inventory::SqliteInventory;

    #[test]
    fn ownership_is_per_application_counted_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
        let owners = Owners::load(&inv).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(!owners.owns("kw", &a, "web"));
        owners.add(&inv, "kw", &a, "web", 1).unwrap();
        owners.add(&inv, "kw", &a, "web", 1).unwrap();
        owners.add(&inv, "kw", &b, "mail", 1).unwrap();
        assert!(owners.owns("kw", &a, "web"));
        assert!(owners.has_owner("kw", &a) && !owners.has_owner("kw", &[3u8; 32]));
        assert!(owners.any_owner("kw", &b, |app| app == "mail"));
        assert!(!owners.any_owner("kw", &b, |app| app == "web"));
        assert!(!owners.owns("kw", &a, "mail"), "another application");
        assert!(!owners.owns("other", &a, "web"), "another token");
        let reloaded = Owners::load(&inv).unwrap();
        assert!(reloaded.owns("kw", &a, "web") && reloaded.owns("kw", &b, "mail"));
        owners.remove(&inv, "kw", &a, "web").unwrap();
        assert!(owners.owns("kw", &a, "web"), "one of two destroyed");
        owners.remove(&inv, "kw", &a, "web").unwrap();
        assert!(!owners.owns("kw", &a, "web"));
        assert!(!owners.has_owner("kw", &a));
        assert!(owners.remove(&inv, "kw", &a, "web").is_err());
        assert!(!Owners::load(&inv).unwrap().owns("kw", &a, "web"));
    }

    #[test]
    fn private_and_secret_keys_have_no_namespace() {
        assert!(!is_namespaced(Some(ck::CKO_PRIVATE_KEY)));
        assert!(!is_namespaced(Some(ck::CKO_SECRET_KEY)));
        for class in [ck::CKO_DATA, ck::CKO_CERTIFICATE, ck::CKO_PUBLIC_KEY] {
            assert!(is_namespaced(Some(class)));
        }
        assert!(is_namespaced(None), "an unreadable class is hidden");
    }
}
