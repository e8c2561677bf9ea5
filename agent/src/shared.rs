//! What every part of the agent shares ([`Core`]): the request path
//! ([`crate::agent::Agent`]), the key lifecycle ([`crate::lifecycle`]), the
//! trail's requests and checkpoints ([`crate::audit`]) each hold it.

use std::sync::Arc;

use keyward_policy::Policy;
use keyward_protocol::SlotId;

use crate::audit::writer::Auditor;
use crate::clients::Slot;
use crate::error::{Error, Result};
use crate::keys::ManagedKeys;
use crate::tokens::VirtualToken;

/// What every part of the agent shares: the virtual tokens, the policy in
/// force, the managed keys, the trail, what use records name, and the lock
/// a lifecycle change takes against uses. The request path ([`crate::agent::Agent`]) and
/// the key lifecycle ([`crate::lifecycle::Lifecycle`]) each hold it.
pub struct Core {
    pub(crate) tokens: Vec<VirtualToken>,
    /// The policy in force; a reload swaps it whole.
    pub(crate) policy: arc_swap::ArcSwap<Policy>,
    pub(crate) keys: ManagedKeys,
    pub(crate) audit: Arc<Auditor>,
    /// What use records name each key object (see `Agent::use_target`).
    pub(crate) use_targets: crate::uses::targets::UseTargets,
    /// The gate between the uses of each managed key and its changes (see
    /// [`crate::enforce::gate`]): a change waits for the running uses of
    /// its key at most `[agent] change_wait_ms`, and a use its change
    /// refuses that ends after it is withheld.
    pub(crate) gates: crate::enforce::gate::Gates,
    /// Rung on each decision on a request: the calls waiting for the
    /// approval of one signature read theirs again.
    pub(crate) sign_decisions: crate::per_use::Bell,
    /// What `keyward policy reload` and SIGHUP run: read the configuration
    /// again and put its policy in force (set once, by the agent's start).
    pub(crate) reloader: std::sync::OnceLock<Reloader>,
    /// Where the store is (set once, by the agent's start).
    pub(crate) store: std::sync::OnceLock<crate::store::Summary>,
}

/// Reloads the configuration's policy: what changed, or why nothing did.
pub type Reloader = Box<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("tokens", &self.tokens)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Sets what `keyward policy reload` runs (once; later calls do
    /// nothing).
    pub fn set_reloader(&self, reloader: Reloader) {
        let _ = self.reloader.set(reloader);
    }

    /// Puts `policy` in force for every request from now on. Clients keep
    /// the application they were identified as when they connected.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Where the store is; an unnamed SQLite store when the start did not
    /// say (agents made by tests).
    pub fn store(&self) -> crate::store::Summary {
        self.store
            .get()
            .cloned()
            .unwrap_or_else(|| crate::store::Summary {
                kind: "sqlite",
                ..Default::default()
            })
    }

    /// This agent's name in a shared trail (`None`: a store of its own).
    pub fn host(&self) -> Option<&str> {
        self.store.get().and_then(|s| s.host.as_deref())
    }

    /// The policy in force.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The virtual token labelled `label`.
    pub(crate) fn token_labelled(&self, label: &str) -> Option<&VirtualToken> {
        self.tokens.iter().find(|t| t.config.label == label)
    }

    pub(crate) fn token(&self, slot: SlotId) -> Result<(Slot, &VirtualToken)> {
        let i = usize::try_from(slot.0).map_err(|_| Error::SlotIdInvalid)?;
        self.tokens
            .get(i)
            .map(|t| (i, t))
            .ok_or(Error::SlotIdInvalid)
    }
}
