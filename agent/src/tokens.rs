//! Virtual tokens: each one a configured label, its PIN and label state,
//! and the backend token behind it, with its session counts across
//! clients. Slot ids are positions in the configuration.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use sha2::{Digest, Sha256};

use crate::backend::Backend;
use crate::config::TokenConfig;
use crate::error::{Error, Result};

use crate::state::TokenState;

/// Session counts of one token, across all clients.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) sessions: u64,
    pub(crate) rw_sessions: u64,
    /// `C_InitToken` is running: no session may open.
    pub(crate) initializing: bool,
}

/// A virtual token and the backend token behind it.
#[derive(Debug)]
pub struct VirtualToken {
    /// Its configuration.
    pub config: TokenConfig,
    /// Its stored PIN hashes and label.
    pub state: TokenState,
    /// The backend, once it is open: set once, at start or when a backend
    /// that could not be opened then comes back (`reopen`); a
    /// request reads it with one atomic load.
    backend: OnceLock<Arc<dyn Backend>>,
    /// Why the backend is unavailable, while it is.
    unavailable: Mutex<Option<String>>,
    pub(crate) counts: Mutex<Counts>,
    /// Whether the token holds objects of the agent's backup machinery
    /// (searches then never take the shortcut that shows every object).
    pub(crate) agent_objects: std::sync::atomic::AtomicBool,
}

impl VirtualToken {
    /// A token over `backend`.
    pub fn new(
        config: TokenConfig,
        state: TokenState,
        backend: std::result::Result<Arc<dyn Backend>, String>,
    ) -> VirtualToken {
        let (opened, unavailable) = match backend {
            Ok(b) => (OnceLock::from(b), None),
            Err(e) => (OnceLock::new(), Some(e)),
        };
        VirtualToken {
            config,
            state,
            backend: opened,
            unavailable: Mutex::new(unavailable),
            counts: Mutex::new(Counts::default()),
            agent_objects: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn backend(&self) -> Result<&Arc<dyn Backend>> {
        self.backend.get().ok_or(Error::TokenNotPresent)
    }

    /// The backend, or why it is unavailable (for `keyward status`).
    pub(crate) fn backend_status(&self) -> std::result::Result<&Arc<dyn Backend>, String> {
        self.backend.get().ok_or_else(|| {
            self.unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the backend is not open".into())
        })
    }

    /// Records why the backend is still unavailable.
    pub(crate) fn still_unavailable(&self, why: String) {
        *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Puts `backend` behind the token, which had none; false if it had
    /// one already (then `backend` is dropped).
    pub(crate) fn arrive(&self, backend: Arc<dyn Backend>) -> bool {
        let set = self.backend.set(backend).is_ok();
        if set {
            *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        set
    }

    /// The label applications see: the one `C_InitToken` set, else the
    /// configured one.
    pub(crate) fn label(&self) -> String {
        match self.state.label() {
            Ok(Some(l)) => l,
            _ => self.config.label.clone(),
        }
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
    hex::encode(&h.finalize()[..8])
}
