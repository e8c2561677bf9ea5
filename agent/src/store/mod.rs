//! Where the inventory and the audit trail live: one SQLite file in the
//! state directory (the default), or the fleet's shared PostgreSQL store
//! (`store = "postgres"` and `[postgres]`).
//!
//! With the shared store the agent's view of the keys is a cache of what
//! every agent wrote. The listener (`listen`) keeps it current from the
//! store's notifications and renews the [`Lease`]; past the lease without
//! word from the store, protect operations with managed keys and
//! administrator actions are refused, and service resumes by itself when
//! the store answers again.
//!
//! - `config`: the `[postgres]` table and `[agent] store`.
//! - `connect`: the connector (password, TLS with rustls).
//! - `lease`: [`Lease`].
//! - `listen`: the listener thread.

use std::path::Path;
use std::sync::Arc;

use keyward_inventory::postgres::PgInventory;
use keyward_inventory::{AuditLog, Inventory, SqliteInventory};

mod config;
mod connect;
mod lease;
pub mod listen;

pub use config::{PostgresConfig, StoreKind, TlsMode};
pub use lease::Lease;

/// The store the agent opened.
pub struct Opened {
    pub inventory: Arc<dyn Inventory>,
    pub trail: Arc<dyn AuditLog>,
    /// With the shared store: it, and the lease on the agent's view.
    pub shared: Option<(Arc<PgInventory>, Arc<Lease>)>,
    /// What the agent's log and `keyward status` say the store is.
    pub summary: Summary,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Where the store is, for the log and `keyward status`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// The file, or `user@host:port/database`.
    pub location: String,
    /// This agent's name in a shared trail.
    pub host: Option<String>,
    /// The lease on the view of a shared store.
    pub lease: Option<Arc<Lease>>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.location)?;
        if let Some(host) = &self.host {
            write!(f, " as host {host:?}")?;
        }
        Ok(())
    }
}

impl Summary {
    /// What `keyward status` shows.
    pub fn health(&self) -> keyward_protocol::admin::StoreHealth {
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        keyward_protocol::admin::StoreHealth {
            kind: self.kind.to_owned(),
            location: self.location.clone(),
            host: self.host.clone(),
            lease_secs: self.lease.as_ref().map(|l| l.length().as_secs()),
            silent_ms: self.lease.as_ref().map(|l| millis(l.silence())),
            in_force: self
                .lease
                .as_ref()
                .is_none_or(|l| l.silence() <= l.length()),
        }
    }
}

/// Opens the store `kind` names: the SQLite file in `state_dir`, or the
/// shared store `postgres` describes (connected, its schema brought up to
/// date).
pub fn open(
    kind: StoreKind,
    postgres: Option<&PostgresConfig>,
    state_dir: &Path,
) -> Result<Opened, String> {
    match (kind, postgres) {
        (StoreKind::Postgres, Some(pg)) => {
            let host = pg.host_name()?;
            let connector = connect::connector(pg)?;
            let store = Arc::new(
                PgInventory::open(connector, &host)
                    .map_err(|e| format!("the shared store: {e}"))?,
            );
            let lease = Arc::new(Lease::new(pg.lease()));
            Ok(Opened {
                inventory: store.clone(),
                trail: store.clone(),
                shared: Some((store, lease.clone())),
                summary: Summary {
                    kind: "postgres",
                    location: pg.connection().map(|c| describe(&c)).unwrap_or_default(),
                    host: Some(host),
                    lease: Some(lease),
                },
            })
        }
        (StoreKind::Postgres, None) => Err("store = \"postgres\" needs a [postgres] table".into()),
        (StoreKind::Sqlite, _) => {
            let path = state_dir.join("inventory.sqlite");
            let store = Arc::new(SqliteInventory::open(&path).map_err(|e| e.to_string())?);
            Ok(Opened {
                inventory: store.clone(),
                trail: store,
                shared: None,
                summary: Summary {
                    kind: "sqlite",
                    location: path.display().to_string(),
                    host: None,
                    lease: None,
                },
            })
        }
    }
}

/// `user@host:port/dbname` of `c`, for the log (never the password).
fn describe(c: &postgres::Config) -> String {
    let host = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(dir) => Path::new(dir).display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}
