//! The module's local session table.
//!
//! The module numbers sessions itself (from 1, never reused while the
//! module is initialised) and maps each to the agent's handle and the agent
//! run (`instance`) that issued it. That keeps an old handle invalid after an
//! agent restart even when the new agent hands out the same numbers.
//!
//! Per session it keeps what the C ABI needs without a round trip: the
//! active operations with their init arguments (and whether the agent has
//! been told of the init yet), update input held back until the final call,
//! the output of a call whose caller asked for the length first (the
//! two-call convention), and the results of a `C_FindObjectsInit`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keyward_protocol::message::OpInit;
use keyward_protocol::{MechParam, Op, SessionHandle};
use pkcs11_sys::{CK_FLAGS, CK_SESSION_HANDLE, CK_SLOT_ID};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Locks a mutex, ignoring poisoning: a panic is caught at the C edge and
/// the data behind our locks stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An output kept for the second half of the two-call convention.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The input that produced it (`None` for `C_*Final`).
    pub(crate) input: Option<Vec<u8>>,
    /// The complete output.
    pub(crate) output: Vec<u8>,
}

/// One active cryptographic operation.
#[derive(Debug)]
pub(crate) struct Operation {
    /// What `C_*Init` was given, to re-initialise the agent when a
    /// single-part call is repeated with other input.
    pub(crate) init: OpInit,
    /// The agent has not been told of the init yet: the next request of
    /// this operation carries it (see [`InitCache`]).
    pub(crate) deferred: bool,
    /// Update input of a digest, sign or verify held back until the final
    /// call (or until it grows past [`HOLD_LIMIT`]).
    pub(crate) held: Vec<u8>,
    /// The output the caller has not collected yet.
    pub(crate) pending: Option<Pending>,
}

impl Operation {
    /// The init to send with the next request, once: `Some` while deferred.
    pub(crate) fn take_init(&mut self) -> Option<OpInit> {
        std::mem::take(&mut self.deferred).then(|| self.init.clone())
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        // Held-back input may be plaintext.
        self.held.zeroize();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Kept output may be plaintext (a decryption, an unwrapped secret).
        self.output.zeroize();
        self.input.zeroize();
    }
}

/// How much update input of one digest, sign or verify the module holds
/// back before it sends it on.
pub(crate) const HOLD_LIMIT: usize = 256 << 10;

/// The `C_*Init` shapes the agent accepted during this module's life: key,
/// mechanism type and the parameter's shape (its numbers and the lengths of
/// its byte strings, not their contents, so that a fresh GCM IV still
/// matches). A `C_*Init` of a known shape is deferred to the operation's
/// first request, saving a round trip; any other is sent at once so its
/// errors stay its own. The agent still checks every deferred init, and
/// every use of the key, when the operation runs: nothing about
/// authorisation is decided here.
#[derive(Debug, Default)]
pub(crate) struct InitCache {
    known: Mutex<HashSet<u64>>,
}

/// Forgetting everything past this many shapes bounds the cache.
const INIT_CACHE_LIMIT: usize = 4096;

impl InitCache {
    fn key(instance: u64, op: Op, init: &OpInit) -> u64 {
        let mut h = DefaultHasher::new();
        (instance, op, init.key, init.mechanism.mechanism).hash(&mut h);
        param_shape(&init.mechanism.param, &mut h);
        h.finish()
    }

    /// Whether this init was accepted before.
    pub(crate) fn knows(&self, instance: u64, op: Op, init: &OpInit) -> bool {
        lock(&self.known).contains(&Self::key(instance, op, init))
    }

    /// Records an init the agent accepted.
    pub(crate) fn learn(&self, instance: u64, op: Op, init: &OpInit) {
        let mut known = lock(&self.known);
        if known.len() >= INIT_CACHE_LIMIT {
            known.clear();
        }
        known.insert(Self::key(instance, op, init));
    }

    /// Forgets one shape (a deferred init the agent refused).
    pub(crate) fn forget(&self, instance: u64, op: Op, init: &OpInit) {
        lock(&self.known).remove(&Self::key(instance, op, init));
    }

    /// Forgets everything: login state or objects changed.
    pub(crate) fn clear(&self) {
        lock(&self.known).clear();
    }
}

fn param_shape(p: &MechParam, h: &mut DefaultHasher) {
    std::mem::discriminant(p).hash(h);
    match p {
        MechParam::None => {}
        MechParam::Bytes(b) | MechParam::DerivationString(b) => b.len().hash(h),
        MechParam::Ulong(v) => v.hash(h),
        MechParam::RsaPss {
            hash_alg,
            mgf,
            salt_len,
        } => (hash_alg, mgf, salt_len).hash(h),
        MechParam::RsaOaep {
            hash_alg,
            mgf,
            source,
            source_data,
        } => (hash_alg, mgf, source, source_data.len()).hash(h),
        MechParam::Gcm {
            iv,
            iv_bits,
            aad,
            tag_bits,
        } => (iv.len(), iv_bits, aad.len(), tag_bits).hash(h),
        MechParam::Ctr { counter_bits, .. } => counter_bits.hash(h),
        MechParam::Ecdh1Derive {
            kdf,
            shared_data,
            public_data,
        } => (kdf, shared_data.len(), public_data.len()).hash(h),
        MechParam::Eddsa { ph_flag, context } => (ph_flag, context.len()).hash(h),
        MechParam::CbcEncryptData { iv, data } => (iv.len(), data.len()).hash(h),
    }
}

/// A search started by `C_FindObjectsInit`.
#[derive(Debug, Default)]
pub(crate) struct Search {
    /// Every match, as the agent answered them.
    pub(crate) handles: Vec<u64>,
    /// How many were handed out.
    pub(crate) next: usize,
}

const OPS: usize = Op::ALL.len();

/// One open session.
#[derive(Debug)]
pub(crate) struct Session {
    /// The agent's handle for it (the application sees the module's own
    /// `CK_SESSION_HANDLE`, the key of [`Sessions`]).
    pub(crate) agent_handle: SessionHandle,
    /// The agent run that issued `agent_handle`.
    pub(crate) instance: u64,
    /// The slot it was opened on.
    pub(crate) slot: CK_SLOT_ID,
    /// `C_OpenSession` flags.
    pub(crate) flags: CK_FLAGS,
    ops: [Option<Operation>; OPS],
    /// The active search, if any.
    pub(crate) search: Option<Search>,
}

impl Session {
    /// A session without active operations.
    pub(crate) fn new(
        agent_handle: SessionHandle,
        instance: u64,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
    ) -> Self {
        Session {
            agent_handle,
            instance,
            slot,
            flags,
            ops: Default::default(),
            search: None,
        }
    }

    /// The active operation of this kind, or `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn op(&mut self, op: Op) -> Result<&mut Operation> {
        self.ops[op.index()]
            .as_mut()
            .ok_or(Error::OperationNotInitialized)
    }

    /// `CKR_OPERATION_ACTIVE` when this kind is active.
    pub(crate) fn check_idle(&self, op: Op) -> Result<()> {
        match self.ops[op.index()] {
            Some(_) => Err(Error::OperationActive),
            None => Ok(()),
        }
    }

    /// Records a `C_*Init` the agent accepted (`deferred`: or will be told
    /// of with the operation's first request).
    pub(crate) fn start(&mut self, op: Op, init: OpInit, deferred: bool) {
        self.ops[op.index()] = Some(Operation {
            init,
            deferred,
            held: Vec::new(),
            pending: None,
        });
    }

    /// Ends the operation of this kind.
    pub(crate) fn end(&mut self, op: Op) {
        self.ops[op.index()] = None;
    }

    /// The active operations whose init the agent has not been told of.
    pub(crate) fn deferred_ops(&self) -> Vec<Op> {
        Op::ALL
            .into_iter()
            .filter(|&op| self.ops[op.index()].as_ref().is_some_and(|o| o.deferred))
            .collect()
    }
}

/// A session shared between the table and the call using it.
pub(crate) type SessionRef = Arc<Mutex<Session>>;

/// All sessions of this module instance.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    last_handle: CK_SESSION_HANDLE,
    /// The slot is kept beside the session so that `C_CloseAllSessions`
    /// never waits for a session another thread is using.
    map: HashMap<CK_SESSION_HANDLE, (CK_SLOT_ID, SessionRef)>,
}

impl Sessions {
    /// Adds a session and returns its new handle.
    pub(crate) fn insert(&self, session: Session) -> CK_SESSION_HANDLE {
        let mut t = lock(&self.inner);
        t.last_handle += 1;
        let handle = t.last_handle;
        t.map
            .insert(handle, (session.slot, Arc::new(Mutex::new(session))));
        handle
    }

    /// The session behind a handle, or `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn get(&self, handle: CK_SESSION_HANDLE) -> Result<SessionRef> {
        lock(&self.inner)
            .map
            .get(&handle)
            .map(|(_, s)| Arc::clone(s))
            .ok_or(Error::SessionHandleInvalid)
    }

    /// Forgets one session.
    pub(crate) fn remove(&self, handle: CK_SESSION_HANDLE) {
        lock(&self.inner).map.remove(&handle);
    }

    /// Forgets every session on `slot`.
    pub(crate) fn remove_slot(&self, slot: CK_SLOT_ID) {
        lock(&self.inner).map.retain(|_, (s, _)| *s != slot);
    }

    /// Forgets every session (agent restart, finalize).
    pub(crate) fn clear(&self) {
        // Drop the sessions outside the table lock.
        let old = std::mem::take(&mut lock(&self.inner).map);
        drop(old);
    }

    /// Number of open sessions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::Mechanism;

    #[test]
    fn handles_are_local_and_not_reused() {
        let s = Sessions::default();
        let a = s.insert(Session::new(SessionHandle(1), 9, 0, 0));
        let b = s.insert(Session::new(SessionHandle(1), 10, 0, 0));
        assert_ne!(a, b);
        s.clear();
        let c = s.insert(Session::new(SessionHandle(1), 10, 0, 0));
        assert!(c > b);
        assert_eq!(s.get(a).err(), Some(Error::SessionHandleInvalid));
    }

    #[test]
    fn operations_are_tracked_per_kind() {
        let mut s = Session::new(SessionHandle(1), 1, 0, 0);
        assert_eq!(s.op(Op::Sign).err(), Some(Error::OperationNotInitialized));
        s.start(
            Op::Sign,
            OpInit {
                mechanism: Mechanism::plain(1),
                key: Some(keyward_protocol::ObjectHandle(2)),
            },
            false,
        );
        assert_eq!(s.check_idle(Op::Sign), Err(Error::OperationActive));
        assert_eq!(s.check_idle(Op::Digest), Ok(()));
        s.end(Op::Sign);
        assert_eq!(s.check_idle(Op::Sign), Ok(()));
    }
}
