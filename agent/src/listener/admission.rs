//! What a peer costs the agent before it is served: connection caps (in
//! total and per uid, apart for the application and the admin socket), and
//! refusals merged per peer so that a flood of refused connections writes a
//! bounded number of audit records and log lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::listener::identity::Peer;

/// What the listeners admit: connection caps, mount namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Caps of the application socket.
    pub app: Caps,
    /// Caps of the admin socket (apart, so that administrators can always
    /// reach the agent).
    pub admin: Caps,
    /// Whether peers in another mount namespace may be served.
    pub foreign_mounts: bool,
    /// The admin socket's group, whose members (with root and the agent's
    /// own user) may use the admin socket.
    pub admin_gid: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            app: Caps {
                total: 1024,
                per_uid: 256,
            },
            admin: Caps {
                total: 64,
                per_uid: 16,
            },
            foreign_mounts: false,
            admin_gid: None,
        }
    }
}

/// Connection caps of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections at once, in total.
    pub total: usize,
    /// Connections at once of one uid.
    pub per_uid: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// The open connections of one socket, counted against its [`Caps`].
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    counts: Mutex<Counts>,
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The socket's total cap.
    Total(usize),
    /// The peer's uid's cap.
    Uid(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Total(n) => write!(
                f,
                "the agent serves {} already (max_connections)",
                keyward_policy::plural(*n, "connection")
            ),
            Full::Uid(n) => write!(
                f,
                "this uid has {} already (max_connections_per_uid)",
                keyward_policy::plural(*n, "connection")
            ),
        }
    }
}

impl Admission {
    /// Counts connections against `caps`.
    pub fn new(caps: Caps) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection of `uid`, held until the ticket drops.
    pub fn enter(self: &Arc<Self>, uid: u32) -> Result<Ticket, Full> {
        let mut c = self.counts();
        if c.total >= self.caps.total {
            return Err(Full::Total(c.total));
        }
        let mine = c.per_uid.entry(uid).or_default();
        if *mine >= self.caps.per_uid {
            return Err(Full::Uid(*mine));
        }
        *mine += 1;
        c.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            uid,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

/// A connection's place; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

/// How often one peer's refusals reach the trail and the log at most.
pub const REFUSAL_EVERY: Duration = Duration::from_secs(60);
/// How many distinct peers are tracked; beyond, refusals merge into one
/// "other peers" entry, so the table itself stays bounded.
const REFUSAL_PEERS: usize = 256;

/// Who was refused, as the trail names them: uid and executable (the pid
/// changes with every attempt of a loop, and would defeat merging).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusedKey {
    uid: Option<u32>,
    exe: Option<PathBuf>,
    why: &'static str,
}

#[derive(Debug)]
struct Streak {
    /// The last peer refused, for the record.
    peer: Peer,
    /// Refusals not yet reported.
    pending: u64,
    /// The first of them.
    since: SystemTime,
    /// When this key was last reported.
    reported: Option<Instant>,
}

/// One report of merged refusals: the last peer, how many times, since when.
#[derive(Debug, Clone)]
pub struct RefusalReport {
    /// The last refused peer of the merged ones.
    pub peer: Peer,
    /// Why they were refused.
    pub why: &'static str,
    /// How many refusals this report stands for.
    pub count: u64,
    /// When the first of them happened.
    pub since: SystemTime,
}

/// Refusals merged per peer: the first refusal of a peer is reported at
/// once, later ones at most every [`REFUSAL_EVERY`] with their count.
#[derive(Debug, Default)]
pub struct Refusals {
    streaks: Mutex<HashMap<RefusedKey, Streak>>,
}

impl Refusals {
    /// Notes a refusal of `peer` for `why`; returns what to report now, if
    /// anything.
    pub fn note(&self, peer: &Peer, why: &'static str) -> Option<RefusalReport> {
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = RefusedKey {
            uid: Some(peer.uid),
            exe: peer.exe.clone(),
            why,
        };
        if !streaks.contains_key(&key) && streaks.len() >= REFUSAL_PEERS {
            key = RefusedKey {
                uid: None,
                exe: None,
                why,
            };
        }
        let now = Instant::now();
        let s = streaks.entry(key).or_insert_with(|| Streak {
            peer: peer.clone(),
            pending: 0,
            since: SystemTime::now(),
            reported: None,
        });
        if s.pending == 0 {
            s.since = SystemTime::now();
        }
        s.pending += 1;
        s.peer = peer.clone();
        let due = s
            .reported
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_EVERY);
        due.then(|| take(s, why, now))
    }

    /// Reports due now: peers whose refusals since their last report are
    /// [`REFUSAL_EVERY`] old. Quiet peers are forgotten.
    pub fn due(&self) -> Vec<RefusalReport> {
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        streaks.retain(|k, s| {
            let old = s
                .reported
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_EVERY);
            if old && s.pending > 0 {
                out.push(take(s, k.why, now));
                true
            } else {
                !old
            }
        });
        out
    }
}

impl Refusals {
    /// Every refusal not yet reported, whatever its age (at shutdown).
    pub fn drain(&self) -> Vec<RefusalReport> {
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let out = streaks
            .iter_mut()
            .filter(|(_, s)| s.pending > 0)
            .map(|(k, s)| take(s, k.why, now))
            .collect();
        streaks.clear();
        out
    }
}

fn take(s: &mut Streak, why: &'static str, now: Instant) -> RefusalReport {
    let r = RefusalReport {
        peer: s.peer.clone(),
        why,
        count: s.pending,
        since: s.since,
    };
    s.pending = 0;
    s.reported = Some(now);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::identity::ClientKey;

    fn peer(uid: u32, pid: i32) -> Peer {
        Peer {
            key: ClientKey { pid, start_time: 1 },
            uid,
            gid: uid,
            exe: Some(PathBuf::from("/usr/bin/x")),
            exe_id: None,
            foreign_mounts: false,
        }
    }

    #[test]
    fn caps_hold_per_uid_and_in_total_and_come_back() {
        let a = Admission::new(Caps {
            total: 3,
            per_uid: 2,
        });
        let t1 = a.enter(7).unwrap();
        let _t2 = a.enter(7).unwrap();
        assert_eq!(a.enter(7).unwrap_err(), Full::Uid(2));
        let _t3 = a.enter(8).unwrap();
        assert_eq!(a.enter(9).unwrap_err(), Full::Total(3));
        drop(t1);
        assert_eq!(a.open(), 2);
        assert!(a.enter(7).is_ok());
    }

    #[test]
    fn a_flood_of_refusals_is_reported_once_with_its_count() {
        let r = Refusals::default();
        let first = r
            .note(&peer(5, 100), "unknown")
            .expect("the first is reported");
        assert_eq!(first.count, 1);
        for pid in 101..10_101 {
            assert!(r.note(&peer(5, pid), "unknown").is_none());
        }
        // Not yet due: the next report waits for REFUSAL_EVERY.
        assert!(r.due().is_empty());
        // Another peer is its own streak.
        assert_eq!(r.note(&peer(6, 1), "unknown").map(|x| x.count), Some(1));
        let mut streaks = r.streaks.lock().unwrap();
        for s in streaks.values_mut() {
            s.reported = s.reported.map(|t| t - REFUSAL_EVERY);
        }
        drop(streaks);
        let due = r.due();
        assert_eq!(due.len(), 1, "only uid 5 has refusals pending");
        assert_eq!(due[0].count, 10_000);
        assert_eq!(due[0].peer.key.pid, 10_100);
    }

    #[test]
    fn the_table_of_refused_peers_is_bounded() {
        let r = Refusals::default();
        for uid in 0..10_000 {
            r.note(&peer(uid, 1), "unknown");
        }
        assert!(r.streaks.lock().unwrap().len() <= REFUSAL_PEERS + 1);
    }
}
