//! What a signature waiting for the approval of its one use shares with
//! the rest of the agent: the request's action name, the operation held
//! back in the session ([`PerUse`]) and the [`Bell`] decisions ring. The
//! waiting itself is the enforce stage's (`enforce/per_use.rs`).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use keyward_protocol::Mechanism;

use crate::backend::BackendObject;
use crate::lock;

/// The action of a request for one signature.
pub const SIGN_ACTION: &str = "sign";

/// An operation whose one use waits for its approval.
#[derive(Debug, Clone)]
pub struct PerUse {
    /// The mechanism (`CKM_*`).
    pub mechanism: u64,
    /// The backend's init, held back until the approval: the mechanism
    /// (backend handles translated) and the key's backend object. `None`:
    /// the backend's operation began before the key's class asked approval
    /// of each use (a policy reload since its `C_SignInit`).
    pub init: Option<(Mechanism, BackendObject)>,
    /// How long the call waits for its approval.
    pub wait: Duration,
}

/// Rung on every decision on a request: waiting calls read theirs again.
#[derive(Debug, Default)]
pub struct Bell {
    rung: Mutex<u64>,
    ringing: Condvar,
}

impl Bell {
    /// Wakes every waiting call.
    pub(crate) fn ring(&self) {
        let mut rung = lock(&self.rung);
        *rung = rung.wrapping_add(1);
        drop(rung);
        self.ringing.notify_all();
    }

    pub(crate) fn rung(&self) -> u64 {
        *lock(&self.rung)
    }

    /// Waits until the bell rings after `seen`, at most `most`.
    pub(crate) fn wait(&self, seen: u64, most: Duration) {
        let rung = lock(&self.rung);
        drop(
            self.ringing
                .wait_timeout_while(rung, most, |r| *r == seen)
                .map(drop),
        );
    }
}
