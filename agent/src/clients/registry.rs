//! The client table: which processes are connected (all connections of one
//! process share one [`Client`]), and which client session owns each
//! session object, so that no other client ever sees it. Closing a client's
//! last connection closes its backend sessions.

use std::sync::Arc;

use crate::clients::{Client, Closed};
use crate::listener::identity::{ClientKey, Peer};

use crate::agent::Agent;
use crate::lock;

/// Who owns a session object: other clients never see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) client: ClientKey,
    pub(crate) session: u64,
}

impl Agent {
    /// Registers a connection of `peer`, identified as `application`
    /// ([`Agent::application_of`]); all connections of one process share
    /// one client (the first connection's identity).
    pub fn connect(&self, peer: Peer, application: String) -> Arc<Client> {
        let mut clients = lock(&self.clients);
        let entry = clients.entry(peer.key).or_insert_with(|| {
            let client = Client::new(peer.clone(), application, self.tokens.len());
            (Arc::new(client), 0)
        });
        entry.1 += 1;
        entry.0.clone()
    }

    /// Unregisters a connection; the last one of a process closes all of
    /// that client's backend sessions (destroying its session objects) and
    /// forgets its handles.
    pub fn disconnect(&self, client: &Arc<Client>) {
        {
            let mut clients = lock(&self.clients);
            let Some(entry) = clients.get_mut(&client.peer.key) else {
                return;
            };
            if !Arc::ptr_eq(&entry.0, client) {
                return;
            }
            entry.1 -= 1;
            if entry.1 > 0 {
                return;
            }
            clients.remove(&client.peer.key);
        }
        let closed = client.lock().remove_sessions(None);
        let n = closed.sessions.len();
        self.close_backend(client, closed);
        log::debug!("client {} gone; closed {n} sessions", client.peer);
    }

    /// How many client processes are connected.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Closes every client's sessions (at shutdown).
    pub fn close_all(&self) {
        let clients: Vec<Arc<Client>> = lock(&self.clients).drain().map(|(_, (c, _))| c).collect();
        for c in clients {
            let closed = c.lock().remove_sessions(None);
            self.close_backend(&c, closed);
        }
    }

    pub(crate) fn close_backend(&self, client: &Client, closed: Closed) {
        if closed.sessions.is_empty() {
            return;
        }
        // The backend destroys a session's objects with it; forget them all,
        // mapped or not.
        let mut gone = Vec::new();
        lock(&self.session_objects).retain(|k, o| {
            let keep = o.client != client.peer.key
                || !closed.sessions.iter().any(|(h, _)| *h == o.session);
            if !keep {
                gone.push(*k);
            }
            keep
        });
        if !gone.is_empty() {
            self.forget_use_targets(|k| gone.contains(k));
        }
        for (_, s) in closed.sessions {
            if let Err(e) = s.backend.close_session(s.backend_session) {
                log::debug!("closing backend session {}: {e}", s.backend_session);
            }
            let mut counts = self.tokens[s.slot].counts();
            counts.sessions = counts.sessions.saturating_sub(1);
            if s.rw {
                counts.rw_sessions = counts.rw_sessions.saturating_sub(1);
            }
        }
    }
}
