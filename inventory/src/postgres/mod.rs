//! The fleet's shared store in PostgreSQL: [`PgInventory`], the same
//! traits as the SQLite store's ([`Inventory`](crate::store::Inventory),
//! [`AuditLog`](crate::audit::AuditLog), [`UsageLog`](crate::usage::UsageLog))
//! over the schema of `schema` ([`migrate`] brings a database to
//! [`SCHEMA_VERSION`]: the SQLite steps in PostgreSQL's dialect).
//!
//! Connections: like the SQLite store, one session for everything the
//! agent does and a second for long reads of the trail, each behind a
//! mutex. A session whose connection broke (the server restarted, the
//! network failed) is dropped and made again by the next call, so the
//! store recovers by itself; while it cannot be made, every call returns
//! [`Error::Unavailable`] at once, without waiting on a lock held by a
//! call that is itself waiting on the network longer than the connect
//! timeout.
//!
//! Every write that changes what agents cache (a key, its versions or
//! grants, a request, an object owner) sends a notification on
//! [`CHANNEL`] inside its transaction, delivered to the listening agents
//! when it commits (see [`Notice`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ::postgres::types::Type;
use ::postgres::Client;

use crate::error::{Error, Result};

mod inventory;
mod schema;
pub(crate) mod trail;
mod usage;

pub use schema::{migrate, SCHEMA_VERSION};

/// Key of the session-level advisory lock the leading agent holds
/// (`KWLD`), see [`PgInventory::leads_now`].
pub const LEADER_LOCK: i64 = 0x4B57_4C44;

/// The longest host identity an agent may carry (characters; the
/// schema's limit on `audit.host`).
pub const MAX_HOST_LEN: usize = 255;

/// The channel of the store's notifications (`LISTEN keyward`).
pub const CHANNEL: &str = "keyward";

/// Makes a new session to the store: the agent's connection settings
/// (server, role, password, TLS) in one function, so that this crate does
/// not choose a TLS stack.
pub type Connector = Arc<dyn Fn() -> std::result::Result<Client, ::postgres::Error> + Send + Sync>;

/// What a notification on [`CHANNEL`] says changed; its payload is the
/// text form ([`Notice::payload`], [`Notice::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Key `id`: its record, versions or grants (`key:ID`).
    Key(i64),
    /// Approval request `id`: created, decided or closed (`request:ID`).
    Request(String),
    /// The owners of unmanaged token objects (`owners`).
    Owners,
}

impl Notice {
    /// The notification's payload.
    pub fn payload(&self) -> String {
        match self {
            Notice::Key(id) => format!("key:{id}"),
            Notice::Request(id) => format!("request:{id}"),
            Notice::Owners => "owners".into(),
        }
    }

    /// A payload back into a notice; `None` for one this build does not
    /// know (a newer agent's), which the listener treats as "reload all".
    pub fn parse(payload: &str) -> Option<Notice> {
        match payload.split_once(':') {
            Some(("key", id)) => id.parse().ok().map(Notice::Key),
            Some(("request", id)) if !id.is_empty() => Some(Notice::Request(id.to_owned())),
            None if payload == "owners" => Some(Notice::Owners),
            _ => None,
        }
    }
}

/// Sends `notice` inside the transaction `tx` (delivered when it commits).
pub(crate) fn notify(tx: &mut ::postgres::Transaction<'_>, notice: &Notice) -> Result<()> {
    // Typed: one round trip, no prepare.
    tx.execute_typed(
        "SELECT pg_notify($1, $2)",
        &[(&CHANNEL, Type::TEXT), (&notice.payload(), Type::TEXT)],
    )?;
    Ok(())
}

/// One session: connected, or to be connected by the next call.
struct Session {
    client: Option<Client>,
}

/// The inventory and the audit trail in a PostgreSQL database shared by
/// the fleet's agents.
pub struct PgInventory {
    connect: Connector,
    conn: Mutex<Session>,
    /// The long reads' session (audit verify, query, tail, the report).
    reader: Mutex<Session>,
    /// This agent's host identity, carried by the trail records it writes.
    host: String,
}

impl std::fmt::Debug for PgInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInventory")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl PgInventory {
    /// Connects with `connect`, brings the schema up to date ([`migrate`])
    /// and returns the store; `host` names this agent in the trail.
    ///
    /// Errors: those of [`migrate`]; [`Error::Unavailable`] when the server
    /// cannot be reached; [`Error::Invalid`] for an empty `host` or one
    /// longer than [`MAX_HOST_LEN`] characters.
    pub fn open(connect: Connector, host: &str) -> Result<PgInventory> {
        if host.is_empty() {
            return Err(Error::Invalid("the agent's host name is empty".into()));
        }
        let chars = host.chars().count();
        if chars > MAX_HOST_LEN {
            return Err(Error::Invalid(format!(
                "the agent's host name is {chars} characters (at most {MAX_HOST_LEN})"
            )));
        }
        let mut client = connect().map_err(unavailable)?;
        migrate(&mut client)?;
        Ok(PgInventory {
            connect,
            conn: Mutex::new(Session {
                client: Some(client),
            }),
            reader: Mutex::new(Session { client: None }),
            host: host.to_owned(),
        })
    }

    /// This agent's host identity.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A new session with the store's settings, for a caller that needs
    /// its own (the agent's `LISTEN` session).
    pub fn connect(&self) -> Result<Client> {
        (self.connect)().map_err(unavailable)
    }

    /// Whether this agent holds the leader's place (a session-level
    /// advisory lock on the main session, [`LEADER_LOCK`]): taken when
    /// free, kept while the session lives, free again when it ends (the
    /// agent stopped, died or lost the server).
    pub fn leads_now(&self) -> Result<bool> {
        self.with(|c| {
            // The lock's key as pg_locks shows it: high and low 32 bits.
            let (high, low) = ((LEADER_LOCK >> 32) as u32, LEADER_LOCK as u32);
            let row = c.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'                  AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND objsubid = 1)                  OR pg_try_advisory_lock($3)",
                &[&high, &low, &LEADER_LOCK],
            )?;
            Ok(row.get(0))
        })
    }

    /// Runs `f` on the main session, connecting first when it is down. A
    /// session that broke during `f` is dropped, to be made again next
    /// time.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.on(&self.conn, f)
    }

    /// [`PgInventory::with`] on the long reads' session.
    pub(crate) fn reading<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.on(&self.reader, f)
    }

    fn on<T>(
        &self,
        session: &Mutex<Session>,
        f: impl FnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let mut guard: MutexGuard<'_, Session> =
            session.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.client.as_ref().is_none_or(Client::is_closed) {
            guard.client = None;
            guard.client = Some(self.connect()?);
        }
        let Some(client) = guard.client.as_mut() else {
            return Err(Error::Unavailable("no session".into()));
        };
        let out = f(client);
        if client.is_closed() || matches!(out, Err(Error::Unavailable(_))) {
            guard.client = None;
        }
        out
    }
}

/// A failure to reach the server, in the store's words.
fn unavailable(e: ::postgres::Error) -> Error {
    Error::Unavailable(crate::error::chain(&e))
}

impl From<::postgres::Error> for Error {
    fn from(e: ::postgres::Error) -> Error {
        // An error the server answered is the engine's; one without an
        // answer (a closed or failed connection, a timeout) means the
        // store is out of reach.
        if e.as_db_error().is_none() && is_io(&e) {
            return unavailable(e);
        }
        // So is a server that answered only to say it is going away or
        // not yet there (stopped, crashed, starting up, the session
        // terminated): the session is gone, and the next call makes
        // another.
        if e.code().is_some_and(is_gone) {
            return unavailable(e);
        }
        Error::Storage(Box::new(e))
    }
}

/// Whether the server's answer `code` means the store is out of reach
/// for now: a connection exception (class 08), or the server shutting
/// down, crashed, starting, or ending the session itself (57P01 to 57P05:
/// an administrator's command, a dropped database, an idle timeout).
fn is_gone(code: &::postgres::error::SqlState) -> bool {
    code.code().starts_with("08") || code.code().starts_with("57P")
}

/// Whether `e` comes from the connection rather than the server.
fn is_io(e: &::postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use ::postgres::error::SqlState;

    use super::{is_gone, Notice};

    #[test]
    fn a_host_name_empty_or_over_the_schemas_limit_is_refused_before_connecting() {
        let never: super::Connector = std::sync::Arc::new(|| panic!("connected"));
        for (host, said) in [("", "empty"), (&*"é".repeat(256), "256 characters")] {
            match super::PgInventory::open(never.clone(), host) {
                Err(crate::Error::Invalid(e)) => assert!(e.contains(said), "{e}"),
                other => panic!("{host:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_server_going_away_or_not_yet_there_is_out_of_reach() {
        for gone in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
        ] {
            assert!(is_gone(&gone), "{gone:?}");
        }
        for answered in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::QUERY_CANCELED,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::T_R_SERIALIZATION_FAILURE,
        ] {
            assert!(!is_gone(&answered), "{answered:?}");
        }
    }

    #[test]
    fn notices_round_trip_and_unknown_payloads_are_none() {
        for n in [
            Notice::Key(42),
            Notice::Request("r-1".into()),
            Notice::Owners,
        ] {
            assert_eq!(Notice::parse(&n.payload()), Some(n));
        }
        for bad in [
            "", "key:", "key:x", "request:", "policy", "owners:1", "key:1:2",
        ] {
            assert_eq!(Notice::parse(bad), None, "{bad:?}");
        }
    }
}
