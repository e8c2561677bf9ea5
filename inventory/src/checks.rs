//! The checks of the inventory's arguments that need no store, shared by
//! both stores so that they refuse the same arguments with the same
//! words.

use crate::audit::validate_all;
use crate::error::{Error, Result};
use crate::types::{DateUpdates, KeyChange, LifecycleChange, VersionChange};
use keyward_domain::KeyState;

/// [`Error::Invalid`] when `value`, named `what`, is empty.
pub(crate) fn nonempty(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::Invalid(format!("{what} is empty")));
    }
    Ok(())
}

/// An object identity has 32 bytes.
pub(crate) fn identity_len(identity: &[u8]) -> Result<()> {
    if identity.len() != 32 {
        return Err(Error::Invalid(format!(
            "an object identity has 32 bytes, not {}",
            identity.len()
        )));
    }
    Ok(())
}

/// The checks of [`Inventory::apply`](crate::store::Inventory::apply)
/// that need no store.
pub(crate) fn check_change(c: &LifecycleChange) -> Result<()> {
    nonempty("actor", &c.actor)?;
    validate_all(&c.trail)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut added = 0;
    for v in &c.versions {
        match v {
            VersionChange::Add(v) => {
                if v.backend_id.is_empty() {
                    return Err(Error::Invalid("backend CKA_ID is empty".into()));
                }
                if v.version == 0 {
                    return Err(Error::Invalid("a new version needs its number".into()));
                }
                let restored_history = matches!(c.key, KeyChange::Create(_))
                    && c.versions.len() > 1
                    && !matches!(c.versions.last(), Some(VersionChange::Add(last)) if last.version == v.version);
                if v.state == KeyState::Destroyed && !restored_history {
                    return Err(Error::Invalid("a new version cannot be destroyed".into()));
                }
                added += 1;
                if !seen.insert(v.version) {
                    return Err(Error::Invalid(format!(
                        "version {} is changed twice in one change",
                        v.version
                    )));
                }
            }
            VersionChange::Move { version, from, to } => {
                if from == to {
                    return Err(Error::Invalid(format!(
                        "version {version} would move from {from} to itself"
                    )));
                }
                if !seen.insert(*version) {
                    return Err(Error::Invalid(format!(
                        "version {version} is changed twice in one change"
                    )));
                }
            }
        }
    }
    match &c.key {
        KeyChange::Create(key) => {
            nonempty("key name", &key.name)?;
            nonempty("token", &key.token)?;
            if key.state == KeyState::Destroyed {
                return Err(Error::Invalid("a new key cannot be destroyed".into()));
            }
            // Version 1, or (a key restored from a backup) its versions
            // 1, 2, ... in order, the older ones possibly destroyed.
            let in_order = !c.versions.is_empty()
                && c.versions.iter().enumerate().all(
                    |(i, v)| matches!(v, VersionChange::Add(v) if v.version as usize == i + 1),
                );
            if !in_order {
                return Err(Error::Invalid(
                    "a new key is created with its versions 1, 2, ... in order, and nothing else"
                        .into(),
                ));
            }
        }
        KeyChange::Update {
            expected, to, code, ..
        } => {
            if to.is_none() && code.is_some() {
                return Err(Error::Invalid(
                    "a reason code comes with a move of the key".into(),
                ));
            }
            if *to == Some(*expected) {
                return Err(Error::Invalid(format!(
                    "the key would move from {expected} to itself"
                )));
            }
            if to.is_none() && c.versions.is_empty() && c.dates == DateUpdates::default() {
                return Err(Error::Invalid("the change changes nothing".into()));
            }
            if added > 1 {
                return Err(Error::Invalid("one change adds at most one version".into()));
            }
        }
    }
    Ok(())
}

/// Checks a grant's arguments; returns its operations as the stored JSON
/// list.
pub(crate) fn check_grant(grant: &crate::types::Grant, actor: &str) -> Result<String> {
    nonempty("application", &grant.application)?;
    nonempty("actor", actor)?;
    if grant.operations.is_empty() {
        return Err(crate::error::Error::Invalid(format!(
            "grant to {:?}: operations must be a non-empty list",
            grant.application
        )));
    }
    Ok(serde_json::to_string(&grant.operations)?)
}
