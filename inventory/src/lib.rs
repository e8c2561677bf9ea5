//! keyward-inventory: the key inventory — one record per managed key, its
//! versions (backend objects), its state and full state history, and the
//! applications granted operations on it — in an embedded, crash-safe store.
//!
//! Layout:
//! No file imports one that imports it back: the plain data and pure
//! logic import no SQLite code, and the SQLite implementation imports
//! them, never the reverse. This file only declares and re-exports.
//!
//! - [`store`]: [`Inventory`], the trait the agent programs against, so
//!   that another engine can replace SQLite.
//! - [`types`]: the plain data — [`KeyRecord`], [`KeyVersion`],
//!   [`StateChange`], [`Grant`], [`LifecycleChange`] and the other call
//!   arguments. Their domain values are keyward-domain's types
//!   ([`KeyState`](keyward_domain::KeyState),
//!   [`Purpose`](keyward_domain::Purpose),
//!   [`Algorithm`](keyward_domain::Algorithm),
//!   [`ApprovalStatus`](keyward_domain::ApprovalStatus)), stored as their
//!   text forms; a stored value this build does not know reads as
//!   [`Error::Data`] naming the row and the value.
//! - [`sqlite`]: [`SqliteInventory`], the store in one SQLite file (WAL,
//!   `synchronous=FULL`, mode 0600), and [`SqliteInventory::check`];
//!   `sqlite/mod.rs` holds the connections and imports none of its parts:
//!   `inventory` ([`Inventory`] and the lifecycle transaction), `trail`
//!   ([`AuditLog`]: rows, chain, checkpoints, the verify walk) and `usage`
//!   ([`UsageLog`]: the report's SQL).
//! - [`postgres`]: the schema of the fleet's shared PostgreSQL store
//!   ([`postgres::migrate`]), the SQLite steps in PostgreSQL's dialect.
//! - `schema`: the schema as ordered migration steps under
//!   `PRAGMA user_version`: step 1 keys, versions, history, grants; step 2
//!   approval requests ([`ApprovalRecord`]); step 3 the audit trail and its
//!   checkpoints; later tables are new steps.
//! - [`audit`]: the tamper-evident audit trail with no storage —
//!   [`AuditEvent`], the canonical encoding and hash chain, signed
//!   [`Checkpoint`]s, the checks an event must pass, and the [`AuditLog`]
//!   trait, with [`AuditLog::verify`].
//! - `verify`: the verify walk's judgement (checkpoints, anchors, whether
//!   a record is the chain's next link), fed records by the store.
//! - [`usage`]: the report's questions to the trail ([`UsageLog`], a
//!   supertrait of [`AuditLog`]) and their rows: uses by key, application
//!   and hour, export attempts, failures, revocations.
//! - [`error`]: the one error enum; no variant names SQLite's types.
//!
//! Conventions:
//! - Every time is unix seconds (UTC) as `i64`, passed in by the caller (the
//!   store reads the clock only to stamp grant changes).
//! - Keys are numbered by the store (`KeyRecord::id`, never reused); a key's
//!   name is unique per virtual token. Versions are numbered from 1 per key;
//!   a version's backend `CKA_ID` is unique per virtual token.
//! - A lifecycle change is one transaction ([`Inventory::apply`]): the
//!   key's and its versions' states, its dates, its history rows and its
//!   audit-trail records, durable before the call returns. History is
//!   append-only (the database refuses updates and deletes). The store
//!   judges no move: the lifecycle rules are the policy's, applied by the
//!   agent; the store checks that each stored state is the expected one.
//! - Reads of something absent return `None` or an empty list; writes to
//!   something absent return [`Error::NotFound`].
#![forbid(unsafe_code)]

#[macro_use]
mod columns;
pub mod audit;
#[cfg(test)]
mod audit_props;
mod audit_row;
mod checks;
pub mod error;
pub mod postgres;
mod schema;
pub mod sqlite;
pub mod store;
pub mod types;
pub mod usage;
mod verify;

pub use audit::{
    canonical, canonical_on, checkpoint_message, coalesce, record_hash, record_hash_on, Actor,
    Anchor, AuditEvent, AuditFilter, AuditKind, AuditLog, AuditRecord, BadRecord, Checkpoint, Hash,
    Problem, ResultFilter, VerifyReport, REQUESTED,
};
pub use error::{Error, Result};
pub use sqlite::SqliteInventory;
pub use store::Inventory;
pub use types::{
    AppliedChange, ApprovalRecord, CertificateRecord, DateUpdates, Decided, DecisionRecord, Grant,
    KeyChange, KeyFilter, KeyRecord, KeyVersion, LifecycleChange, ObjectOwner, StateChange,
    VersionChange,
};
pub use usage::{RecoveryUses, UsageLog};

/// The schema version this build writes (and the newest it opens).
pub const SCHEMA_VERSION: u32 = schema::LATEST;
