//! [`SqliteInventory`]: the inventory in one SQLite file.
//!
//! Durability: WAL journal, `synchronous=FULL`, so every lifecycle write is
//! on disk before its call returns, and a process killed at any moment
//! leaves the last committed state. Only [`touch`](crate::store::Inventory::touch) commits
//! with `synchronous=NORMAL`: it cannot break consistency, and the next
//! lifecycle commit makes it durable too.
//!
//! Connections: one `Mutex<Connection>` for everything the agent does.
//! SQLite serialises writers anyway; the hot-path read
//! ([`version_by_backend_id`](crate::store::Inventory::version_by_backend_id)) is one
//! cached prepared statement on a unique index, so a lock held for
//! microseconds costs less than a pool's bookkeeping. A second, `query_only`
//! connection serves the audit trail's long reads (verify, query, tail),
//! which under WAL read a snapshot without taking the first lock. A panic while the lock
//! is held rolls its transaction back (the guard's drop), so a poisoned lock
//! is taken over rather than propagated.
//!
//! This file holds the connections and [`SqliteInventory`] itself (open,
//! set up, [`check`](SqliteInventory::check)); it imports none of its
//! parts, which each implement one trait over it:
//! - `inventory`: [`Inventory`](crate::store::Inventory) — keys, versions,
//!   history, grants, requests, object owners, and the lifecycle
//!   transaction ([`Inventory::apply`](crate::store::Inventory::apply)).
//! - `trail`: [`AuditLog`](crate::audit::AuditLog) — the trail's rows, the
//!   chain written inside a transaction, checkpoints, and the verify walk.
//! - `usage`: [`UsageLog`](crate::usage::UsageLog) — the report's SQL
//!   aggregations over the trail.

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{Error, Result};
use crate::schema::{self, Migration};

mod inventory;
mod trail;
mod usage;

/// How long a call waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 32;

/// The inventory in `<state_dir>/inventory.sqlite` (the agent passes the
/// path).
#[derive(Debug)]
pub struct SqliteInventory {
    conn: Mutex<Connection>,
    /// A second, read-only connection for long reads (audit verify, query,
    /// tail): under WAL it reads a snapshot without holding `conn`, so
    /// walking a large trail never stalls the agent's writes or its
    /// hot-path lookups.
    reader: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteInventory {
    /// Creates (mode 0600) or opens the store at `path` and brings its
    /// schema up to date.
    ///
    /// Errors: [`Error::TooNew`] for a schema from a newer build,
    /// [`Error::Corrupt`] for a file that is not an intact keyward inventory,
    /// [`Error::Open`] when the file cannot be created or set up.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteInventory> {
        SqliteInventory::open_with(path.as_ref(), schema::MIGRATIONS)
    }

    pub(crate) fn open_with(path: &Path, steps: &[Migration]) -> Result<SqliteInventory> {
        prepare_file(path)?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        setup(&mut conn, path, steps).map_err(|e| match e {
            Error::Storage(inner) => match inner.downcast::<rusqlite::Error>() {
                Ok(sql) => open_error(path, *sql),
                Err(other) => Error::Storage(other),
            },
            other => other,
        })?;
        let reader = open_reader(path).map_err(|e| open_error(path, e))?;
        Ok(SqliteInventory {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            path: path.to_owned(),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the whole store; returns the problems found (empty: consistent).
    ///
    /// SQLite's `integrity_check` and `foreign_key_check`, then the
    /// inventory's own invariants: every key's and version's state is the
    /// `to` of its last history row, and each history row starts where the
    /// previous one for the same key or version ended.
    pub fn check(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut problems = Vec::new();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let row = row?;
            if row != "ok" {
                problems.push(format!("integrity: {row}"));
            }
        }
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        let orphans = stmt.query_map([], |r| {
            Ok(format!(
                "orphan row in {} (rowid {:?}) refers to a missing {}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?
            ))
        })?;
        for orphan in orphans {
            problems.push(orphan?);
        }
        let mut stmt = conn.prepare(
            "SELECT k.id, k.state,
                    (SELECT s.to_state FROM state_changes s
                      WHERE s.key_id = k.id AND s.version IS NULL ORDER BY s.seq DESC LIMIT 1)
               FROM keys k",
        )?;
        let keys = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for key in keys {
            let (id, state, last) = key?;
            if last.as_deref() != Some(state.as_str()) {
                problems.push(format!(
                    "key {id} is {state} but its history ends at {last:?}"
                ));
            }
        }
        let mut stmt = conn.prepare(
            "SELECT v.key_id, v.version, v.state,
                    (SELECT s.to_state FROM state_changes s
                      WHERE s.key_id = v.key_id AND s.version = v.version
                      ORDER BY s.seq DESC LIMIT 1)
               FROM key_versions v",
        )?;
        let versions = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        for version in versions {
            let (id, v, state, last) = version?;
            if last.as_deref() != Some(state.as_str()) {
                problems.push(format!(
                    "key {id} version {v} is {state} but its history ends at {last:?}"
                ));
            }
        }
        let mut stmt = conn.prepare(
            "SELECT seq, key_id, version, from_state, prev FROM (
                 SELECT seq, key_id, version, from_state,
                        lag(to_state) OVER (PARTITION BY key_id, version ORDER BY seq) AS prev
                   FROM state_changes)
              WHERE from_state IS NOT prev",
        )?;
        let breaks = stmt.query_map([], |r| {
            Ok(format!(
                "history row {} (key {}, version {:?}) starts at {:?} but the previous ended at {:?}",
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?
            ))
        })?;
        for gap in breaks {
            problems.push(gap?);
        }
        Ok(problems)
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates the file with mode 0600 (SQLite gives its `-wal` and `-shm`
/// files the same mode), and tightens an existing one.
///
/// A new store is made only where no file exists. An existing file must
/// be a regular file (not a directory, not a symbolic link that could send
/// the agent's writes elsewhere) and not empty: every store this crate
/// made holds at least SQLite's header page from its first commit on, so
/// an empty file is a truncated store, refused rather than taken for a new
/// one (which would serve an empty inventory in its place). The file is
/// left as it was for the administrator.
fn prepare_file(path: &Path) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Open {
        path: path.to_owned(),
        detail: format!("{what}: {e}"),
    };
    let refuse = |detail: &str| Error::Open {
        path: path.to_owned(),
        detail: detail.into(),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refuse(
                "is a symbolic link: the store must be a regular file, refused",
            ))
        }
        Ok(meta) if meta.is_dir() => {
            return Err(refuse("is a directory, not a store file: refused"))
        }
        _ => {}
    }
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let file = match created {
        Ok(file) => return file.sync_all().map_err(|e| io("cannot sync", e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io("cannot open", e))?,
        Err(e) => return Err(io("cannot create", e)),
    };
    let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file"));
    }
    if meta.len() == 0 {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: "the file is empty (0 bytes), a truncated store; a new store is made only \
                     where no file exists: restore the store from a backup, or remove the \
                     empty file to start with an empty inventory"
                .into(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("cannot set mode 0600", e))?;
    }
    Ok(())
}

fn setup(conn: &mut Connection, path: &Path, steps: &[Migration]) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Open {
            path: path.to_owned(),
            detail: format!("cannot use a WAL journal (journal_mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("quick_check: {check}"),
        });
    }
    schema::migrate(conn, steps, path)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// The read connection: same file (already set up and migrated), and
/// `query_only`, so that no code path can write through it.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => Error::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    }
}

/// SQLite's errors as the inventory's: a row that does not decode is the
/// inventory's own error it carries; anything else is [`Error::Storage`].
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        match e {
            // A row that does not decode says so in the inventory's words
            // (see `inventory::stored`), not as an engine error.
            rusqlite::Error::FromSqlConversionFailure(idx, ty, inner) => {
                match inner.downcast::<Error>() {
                    Ok(ours) => *ours,
                    Err(other) => Error::Storage(Box::new(
                        rusqlite::Error::FromSqlConversionFailure(idx, ty, other),
                    )),
                }
            }
            e => Error::Storage(Box::new(e)),
        }
    }
}
