//! Per-client state: one client is one process (all its connections share
//! this). Its sessions, its object handles and its login state per token.
//!
//! Handles are numbered per client from 1 and never reused during the
//! client's life. A client's handles ([`SessionHandle`], [`ObjectHandle`])
//! and the backend's ([`BackendSession`], [`BackendObject`]) are different
//! types: the tables here are the only place that turns one into the other. The tables here are plain data, held under the client's
//! mutex only to look up or update; backend calls happen outside it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use keyward_protocol::{ObjectHandle, SessionHandle};

use crate::backend::{Backend, BackendObject, BackendSession};
use crate::error::{Error, Result};
use crate::keys::ManagedRef;
use crate::listener::identity::Peer;

pub mod registry;

/// A virtual slot index (position in the configuration).
pub type Slot = usize;

/// The virtual login state of a client on one token. PKCS#11 shares it
/// among all the client's sessions on that token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Login {
    /// Not logged in.
    #[default]
    Public,
    /// Logged in as `CKU_USER`.
    User,
    /// Logged in as `CKU_SO`.
    So,
}

/// One client session: one backend session opened with the same flags.
#[derive(Debug)]
pub struct Session {
    /// Each active operation (by `Op` index): its managed key is checked
    /// again on every request of the operation (a key suspended after its
    /// `C_*Init` is refused at the next call), and its end is recorded.
    pub active: Mutex<[Option<ActiveOp>; keyward_protocol::Op::ALL.len()]>,
    /// The virtual slot.
    pub slot: Slot,
    /// Opened read-write.
    pub rw: bool,
    /// The backend session behind it.
    pub backend_session: BackendSession,
    /// The backend token.
    pub backend: Arc<dyn Backend>,
}

/// An operation in progress on a session.
#[derive(Debug, Clone)]
pub struct ActiveOp {
    /// The managed key version it uses, if any.
    pub managed: Option<ManagedRef>,
    /// Its mechanism, for the use record.
    pub mechanism: u64,
    /// The key its use record names; `None` for an operation without a
    /// key (a digest) or when uses are not recorded.
    pub target: Option<Arc<UseTarget>>,
    /// A signature that waits for the approval of its one use: the
    /// backend's init is held back until then.
    pub per_use: Option<crate::per_use::PerUse>,
}

/// The key a use record names: the virtual token, the key's name (a
/// managed key's name; an unmanaged object's `CKA_LABEL`, else `id:` and
/// its `CKA_ID` in hex, else `handle:` and its backend handle) and, for a
/// managed key, the version.
#[derive(Debug, PartialEq, Eq)]
pub struct UseTarget {
    /// The virtual token's label.
    pub token: String,
    /// The key's name.
    pub key: String,
    /// The managed key version.
    pub version: Option<u32>,
}

/// What a client object handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef {
    /// The virtual slot.
    pub slot: Slot,
    /// The backend handle.
    pub backend: BackendObject,
    /// For a session object: the client session that created it.
    pub session: Option<SessionHandle>,
    /// The managed key version it is, if the inventory knows it.
    pub managed: Option<ManagedRef>,
}

/// A client process's state.
#[derive(Debug)]
pub struct Client {
    /// Who it is.
    pub peer: Peer,
    /// The policy's name for it: its application, or `lab` for a peer the
    /// lab policy admits without one.
    pub application: String,
    /// Who it is in the audit trail.
    pub actor: keyward_inventory::Actor,
    state: Mutex<ClientState>,
}

impl Client {
    /// A fresh client with no sessions, for a configuration of `slots` tokens.
    pub fn new(peer: Peer, application: String, slots: usize) -> Client {
        Client {
            actor: peer.as_application(&application),
            peer,
            application,
            state: Mutex::new(ClientState::new(slots)),
        }
    }

    /// The tables, locked. Hold the guard only to look up or update.
    pub fn lock(&self) -> MutexGuard<'_, ClientState> {
        // A panic while holding the lock leaves consistent tables (every
        // update is a single insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tables of one client.
#[derive(Debug)]
pub struct ClientState {
    next_session: u64,
    next_object: u64,
    sessions: HashMap<SessionHandle, Arc<Session>>,
    objects: HashMap<ObjectHandle, ObjectRef>,
    by_backend: HashMap<(Slot, BackendObject), ObjectHandle>,
    /// Token objects outside the client's namespace (strict mode), judged
    /// once per client: later searches pass them over without reading them.
    hidden: HashSet<(Slot, BackendObject)>,
    login: Vec<Login>,
}

/// What closing sessions leaves for the caller to do outside the lock.
#[derive(Debug, Default)]
pub struct Closed {
    /// The sessions to close on the backend, with their client handles.
    pub sessions: Vec<(SessionHandle, Arc<Session>)>,
    /// The session objects that went with them (slot, backend handle).
    pub session_objects: Vec<(Slot, BackendObject)>,
}

impl ClientState {
    fn new(slots: usize) -> ClientState {
        ClientState {
            next_session: 1,
            next_object: 1,
            sessions: HashMap::new(),
            objects: HashMap::new(),
            by_backend: HashMap::new(),
            hidden: HashSet::new(),
            login: vec![Login::Public; slots],
        }
    }

    /// Adds a session and returns its new handle.
    pub fn add_session(&mut self, session: Session) -> SessionHandle {
        let h = SessionHandle(self.next_session);
        self.next_session += 1;
        self.sessions.insert(h, Arc::new(session));
        h
    }

    /// The session `h`.
    pub fn session(&self, h: SessionHandle) -> Result<Arc<Session>> {
        self.sessions
            .get(&h)
            .cloned()
            .ok_or(Error::SessionHandleInvalid)
    }

    /// Login state on `slot`.
    pub fn login(&self, slot: Slot) -> Login {
        self.login.get(slot).copied().unwrap_or_default()
    }

    /// Sets the login state on `slot`.
    pub fn set_login(&mut self, slot: Slot, login: Login) {
        if let Some(l) = self.login.get_mut(slot) {
            *l = login;
        }
    }

    /// Whether the client has a read-only session on `slot`.
    pub fn has_ro_session(&self, slot: Slot) -> bool {
        self.sessions.values().any(|s| s.slot == slot && !s.rw)
    }

    /// Number of sessions on `slot`.
    pub fn session_count(&self, slot: Slot) -> usize {
        self.sessions.values().filter(|s| s.slot == slot).count()
    }

    /// Removes session `h`; when it was the last on its slot, the client is
    /// logged out there (PKCS#11: closing the last session logs out).
    pub fn remove_session(&mut self, h: SessionHandle) -> Result<Closed> {
        let s = self
            .sessions
            .remove(&h)
            .ok_or(Error::SessionHandleInvalid)?;
        let mut closed = Closed::default();
        self.forget_session_objects(h, &mut closed);
        if self.session_count(s.slot) == 0 {
            self.set_login(s.slot, Login::Public);
        }
        closed.sessions.push((h, s));
        Ok(closed)
    }

    /// Removes every session on `slot`, or on every slot when `None`.
    pub fn remove_sessions(&mut self, slot: Option<Slot>) -> Closed {
        let handles: Vec<SessionHandle> = self
            .sessions
            .iter()
            .filter(|(_, s)| slot.is_none_or(|slot| s.slot == slot))
            .map(|(&h, _)| h)
            .collect();
        let mut closed = Closed::default();
        for h in handles {
            if let Ok(c) = self.remove_session(h) {
                closed.sessions.extend(c.sessions);
                closed.session_objects.extend(c.session_objects);
            }
        }
        closed
    }

    fn forget_session_objects(&mut self, session: SessionHandle, closed: &mut Closed) {
        let gone: Vec<ObjectHandle> = self
            .objects
            .iter()
            .filter(|(_, o)| o.session == Some(session))
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            if let Some(o) = self.objects.remove(&h) {
                self.by_backend.remove(&(o.slot, o.backend));
                closed.session_objects.push((o.slot, o.backend));
            }
        }
    }

    /// The client handle for a backend object, mapping it if new.
    pub fn map_object(
        &mut self,
        slot: Slot,
        backend: BackendObject,
        session: Option<SessionHandle>,
        managed: Option<ManagedRef>,
    ) -> ObjectHandle {
        if let Some(&h) = self.by_backend.get(&(slot, backend)) {
            return h;
        }
        let h = ObjectHandle(self.next_object);
        self.next_object += 1;
        self.objects.insert(
            h,
            ObjectRef {
                slot,
                backend,
                session,
                managed,
            },
        );
        self.by_backend.insert((slot, backend), h);
        h
    }

    /// The backend handle of client object `h` on `slot`; `err` when the
    /// client has no such handle there.
    pub fn object(&self, slot: Slot, h: ObjectHandle, err: Error) -> Result<ObjectRef> {
        match self.objects.get(&h) {
            Some(o) if o.slot == slot => Ok(*o),
            _ => Err(err),
        }
    }

    /// The client handle of backend object `backend` on `slot`, if mapped.
    pub fn mapped(&self, slot: Slot, backend: BackendObject) -> Option<ObjectHandle> {
        self.by_backend.get(&(slot, backend)).copied()
    }

    /// Whether backend object `backend` on `slot` was judged outside the
    /// client's namespace.
    pub fn is_hidden(&self, slot: Slot, backend: BackendObject) -> bool {
        self.hidden.contains(&(slot, backend))
    }

    /// Notes that backend object `backend` on `slot` is outside the
    /// client's namespace.
    pub fn hide(&mut self, slot: Slot, backend: BackendObject) {
        self.hidden.insert((slot, backend));
    }

    /// Forgets client object `h`.
    pub fn unmap_object(&mut self, h: ObjectHandle) -> Option<ObjectRef> {
        let o = self.objects.remove(&h)?;
        self.by_backend.remove(&(o.slot, o.backend));
        Some(o)
    }

    /// Every object handle the client holds on `slot`.
    pub fn objects_on(&self, slot: Slot) -> Vec<(ObjectHandle, ObjectRef)> {
        self.objects
            .iter()
            .filter(|(_, o)| o.slot == slot)
            .map(|(&h, o)| (h, *o))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::listener::identity::ClientKey;

    pub(crate) fn peer(pid: i32) -> Peer {
        Peer {
            key: ClientKey { pid, start_time: 1 },
            uid: 0,
            gid: 0,
            exe: None,
            exe_id: None,
            foreign_mounts: false,
        }
    }

    /// Backend object `n` (the tables only compare handles).
    fn obj(n: u64) -> BackendObject {
        BackendObject::for_test(n)
    }

    fn session(slot: Slot, rw: bool, backend_session: u64) -> Session {
        Session {
            active: Default::default(),
            slot,
            rw,
            backend_session: BackendSession::for_test(backend_session),
            backend: Arc::new(crate::backend::mock::Mock::default()),
        }
    }

    #[test]
    fn handles_count_from_one_and_are_never_reused() {
        let c = Client::new(peer(1), "lab".into(), 2);
        let mut st = c.lock();
        let s1 = st.add_session(session(0, true, 100));
        let s2 = st.add_session(session(0, false, 101));
        assert_eq!((s1, s2), (SessionHandle(1), SessionHandle(2)));
        st.remove_session(s1).unwrap();
        assert_eq!(st.add_session(session(0, true, 102)), SessionHandle(3));
        assert_eq!(st.session(s1).unwrap_err(), Error::SessionHandleInvalid);

        let o1 = st.map_object(0, obj(500), None, None);
        assert_eq!(o1, ObjectHandle(1));
        assert_eq!(
            st.map_object(0, obj(500), None, None),
            o1,
            "same backend object, same handle"
        );
        assert_eq!(
            st.map_object(1, obj(500), None, None),
            ObjectHandle(2),
            "other slot, other object"
        );
        st.unmap_object(o1);
        assert_eq!(st.map_object(0, obj(500), None, None), ObjectHandle(3));
        assert_eq!(
            st.object(0, o1, Error::KeyHandleInvalid).unwrap_err(),
            Error::KeyHandleInvalid
        );
        // A handle of another slot is not valid on this one.
        assert_eq!(
            st.object(0, ObjectHandle(2), Error::ObjectHandleInvalid)
                .unwrap_err(),
            Error::ObjectHandleInvalid
        );
    }

    #[test]
    fn two_clients_never_share_handles() {
        let a = Client::new(peer(1), "lab".into(), 1);
        let b = Client::new(peer(2), "lab".into(), 1);
        let sa = a.lock().add_session(session(0, true, 100));
        let oa = a.lock().map_object(0, obj(7), None, None);
        // b has its own numbering and knows nothing of a's handles.
        assert_eq!(
            b.lock().session(sa).unwrap_err(),
            Error::SessionHandleInvalid
        );
        assert_eq!(
            b.lock()
                .object(0, oa, Error::ObjectHandleInvalid)
                .unwrap_err(),
            Error::ObjectHandleInvalid
        );
    }

    #[test]
    fn closing_a_session_drops_its_objects_and_the_last_one_logs_out() {
        let c = Client::new(peer(1), "lab".into(), 1);
        let mut st = c.lock();
        let s1 = st.add_session(session(0, true, 100));
        let s2 = st.add_session(session(0, true, 101));
        st.set_login(0, Login::User);
        let sess_obj = st.map_object(0, obj(9), Some(s1), None);
        let token_obj = st.map_object(0, obj(10), None, None);
        let closed = st.remove_session(s1).unwrap();
        assert_eq!(closed.session_objects, vec![(0, obj(9))]);
        assert!(st.object(0, sess_obj, Error::ObjectHandleInvalid).is_err());
        assert!(st.object(0, token_obj, Error::ObjectHandleInvalid).is_ok());
        assert_eq!(st.login(0), Login::User, "another session is still open");
        st.remove_session(s2).unwrap();
        assert_eq!(st.login(0), Login::Public);
    }

    #[test]
    fn hidden_objects_are_noted_per_client_and_slot() {
        let a = Client::new(peer(1), "lab".into(), 2);
        let b = Client::new(peer(2), "lab".into(), 2);
        a.lock().hide(0, obj(7));
        assert!(a.lock().is_hidden(0, obj(7)));
        assert!(!a.lock().is_hidden(1, obj(7)), "another slot");
        assert!(!b.lock().is_hidden(0, obj(7)), "another client");
    }

    #[test]
    fn read_only_sessions_are_tracked_per_slot() {
        let c = Client::new(peer(1), "lab".into(), 2);
        let mut st = c.lock();
        st.add_session(session(1, false, 100));
        assert!(st.has_ro_session(1));
        assert!(!st.has_ro_session(0));
        let closed = st.remove_sessions(Some(1));
        assert_eq!(closed.sessions.len(), 1);
        assert!(!st.has_ro_session(1));
    }
}
