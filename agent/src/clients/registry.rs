//! The client table: which processes are connected (all connections of one
//! process share one [`Client`]), and which client session owns each
//! session object, so that no other client ever sees it.
//!
//! Its locks are held only to look up or update, never across a backend
//! call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_protocol::SessionHandle;

use crate::backend::BackendObject;
use crate::clients::{Client, Slot};
use crate::listener::identity::{ClientKey, Peer};
use crate::lock;

/// Who owns a session object: other clients never see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The client process.
    pub client: ClientKey,
    /// Its session that created the object.
    pub session: SessionHandle,
}

/// What a search on `slot` may show `client` of a backend object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A token object, or a session object of nobody's the agent knows.
    Shared,
    /// A session object of this client's, made in that session.
    Own(SessionHandle),
    /// Another client's session object: never shown.
    Foreign,
}

/// The connected clients and the owners of session objects.
#[derive(Debug, Default)]
pub struct Clients {
    /// Each process's client, with its number of open connections.
    table: Mutex<HashMap<ClientKey, (Arc<Client>, usize)>>,
    /// The owner of every session object the agent made for a client.
    session_objects: Mutex<HashMap<(Slot, BackendObject), Owner>>,
}

impl Clients {
    /// Registers a connection of `peer`, identified as `application`; all
    /// connections of one process share one client (the first connection's
    /// identity), made for a configuration of `slots` tokens.
    pub fn connect(&self, peer: Peer, application: String, slots: usize) -> Arc<Client> {
        let mut table = lock(&self.table);
        let entry = table.entry(peer.key).or_insert_with(|| {
            let client = Client::new(peer.clone(), application, slots);
            (Arc::new(client), 0)
        });
        entry.1 += 1;
        entry.0.clone()
    }

    /// Unregisters a connection of `client`; `true` when it was the
    /// process's last one (the client is gone from the table, and its
    /// sessions are the caller's to close).
    pub fn disconnect(&self, client: &Arc<Client>) -> bool {
        let mut table = lock(&self.table);
        let Some(entry) = table.get_mut(&client.peer.key) else {
            return false;
        };
        if !Arc::ptr_eq(&entry.0, client) {
            return false;
        }
        entry.1 -= 1;
        if entry.1 > 0 {
            return false;
        }
        table.remove(&client.peer.key);
        true
    }

    /// How many client processes are connected.
    pub fn count(&self) -> usize {
        lock(&self.table).len()
    }

    /// Every client, taken out of the table (at shutdown).
    pub fn drain(&self) -> Vec<Arc<Client>> {
        lock(&self.table).drain().map(|(_, (c, _))| c).collect()
    }

    /// Notes `objects` on `slot` as session objects of `owner`.
    pub fn own(&self, slot: Slot, objects: &[BackendObject], owner: Owner) {
        let mut reg = lock(&self.session_objects);
        for &o in objects {
            reg.insert((slot, o), owner);
        }
    }

    /// Forgets one session object (destroyed).
    pub fn disown(&self, slot: Slot, object: BackendObject) {
        lock(&self.session_objects).remove(&(slot, object));
    }

    /// Forgets the session objects of `client`'s `sessions` (closed: the
    /// backend destroyed them with their sessions); returns them.
    pub fn disown_sessions(
        &self,
        client: ClientKey,
        sessions: &[SessionHandle],
    ) -> Vec<(Slot, BackendObject)> {
        let mut gone = Vec::new();
        lock(&self.session_objects).retain(|k, o| {
            let keep = o.client != client || !sessions.contains(&o.session);
            if !keep {
                gone.push(*k);
            }
            keep
        });
        gone
    }

    /// What `client` may see of each of `found` on `slot`, in order, under
    /// one lock.
    pub fn seen(&self, client: ClientKey, slot: Slot, found: &[BackendObject]) -> Vec<Seen> {
        let reg = lock(&self.session_objects);
        found
            .iter()
            .map(|&h| match reg.get(&(slot, h)) {
                None => Seen::Shared,
                Some(o) if o.client == client => Seen::Own(o.session),
                Some(_) => Seen::Foreign,
            })
            .collect()
    }

    /// Whether no session object is registered.
    pub fn no_session_objects(&self) -> bool {
        lock(&self.session_objects).is_empty()
    }
}
