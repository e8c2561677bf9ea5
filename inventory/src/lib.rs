//! keyward-inventory: the key inventory — one record per managed key, its
//! versions (backend objects), its state and full state history, and the
//! applications granted operations on it — in an embedded, crash-safe store.
//!
//! Layout:
//! - [`Inventory`] (this file): the trait the agent programs against, so
//!   that another engine can replace SQLite.
//! - [`types`]: the plain data — [`KeyRecord`], [`KeyVersion`],
//!   [`StateChange`], [`Grant`], [`LifecycleChange`] and the other call
//!   arguments. Their domain values are keyward-domain's types
//!   ([`KeyState`](keyward_domain::KeyState), [`Purpose`](keyward_domain::Purpose),
//!   [`Algorithm`](keyward_domain::Algorithm), [`ApprovalStatus`]), stored
//!   as their text forms; a stored value this build does not know reads as
//!   [`Error::Data`] naming the row and the value.
//! - [`sqlite`]: [`SqliteInventory`], the store in one SQLite file (WAL,
//!   `synchronous=FULL`, mode 0600), and [`SqliteInventory::check`].
//! - `schema`: the schema as ordered migration steps under
//!   `PRAGMA user_version`: step 1 keys, versions, history, grants; step 2
//!   approval requests ([`ApprovalRecord`]); step 3 the audit trail and its
//!   checkpoints; later tables are new steps.
//! - [`audit`]: the tamper-evident audit trail — [`AuditEvent`], the
//!   canonical encoding and hash chain, signed [`Checkpoint`]s, and the
//!   [`AuditLog`] trait (implemented by [`SqliteInventory`] in the same
//!   file), with [`AuditLog::verify`].
//! - [`usage`]: the report's aggregations over the trail ([`UsageLog`],
//!   a supertrait of [`AuditLog`]): uses by key, application and hour,
//!   export attempts, failures, revocations; SQL sums, never a row each.
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

pub mod audit;
pub mod error;
mod schema;
pub mod sqlite;
pub mod types;
pub mod usage;

#[cfg(test)]
mod tests;

pub use audit::{
    canonical, checkpoint_message, coalesce, record_hash, Actor, Anchor, AuditEvent, AuditFilter,
    AuditKind, AuditLog, AuditRecord, BadRecord, Checkpoint, Hash, Problem, ResultFilter,
    VerifyReport, REQUESTED,
};
pub use error::{Error, Result};
pub use sqlite::SqliteInventory;
pub use types::{
    AppliedChange, ApprovalRecord, DateUpdates, Grant, KeyChange, KeyFilter, KeyRecord, KeyVersion,
    LifecycleChange, ObjectOwner, StateChange, VersionChange,
};
pub use usage::UsageLog;

use keyward_domain::ApprovalStatus;

/// The schema version this build writes (and the newest it opens).
pub const SCHEMA_VERSION: u32 = schema::LATEST;

/// The inventory store. Implementations are shared between the agent's
/// threads.
pub trait Inventory: Send + Sync {
    /// The schema version of the open store.
    fn schema_version(&self) -> Result<u32>;

    /// Applies one lifecycle change as a whole, in one transaction, durable
    /// before it returns: a new key or an existing key's state, its
    /// versions' states and new versions, its dates, a history row per
    /// state that moves, and the change's audit-trail records (chained onto
    /// the trail). A process killed at any moment leaves all of it or none.
    ///
    /// Refused as a whole, nothing written: [`Error::Conflict`] when a
    /// stored state is not the one the change expects or a new version is
    /// not the key's next number (another change came first);
    /// [`Error::NotFound`] for a key or version that does not exist;
    /// [`Error::Exists`] for a taken key name or `CKA_ID` on the token;
    /// [`Error::Invalid`] for a change that changes nothing (no state, no
    /// date), moves a state
    /// to itself, moves one version twice, creates something destroyed,
    /// creates a key without exactly its version 1, or carries an invalid
    /// trail event. The store judges no move: which moves an action makes
    /// is the caller's decision (the policy's).
    ///
    /// Besides `dates`, the store stamps a key's first activation
    /// (`activated_at`) and its deactivation (`deactivated_at`) when not
    /// given, a version's `deactivated_at` when it becomes deactivated or
    /// compromised, and its `destroyed_at` when destroyed.
    fn apply(&self, change: &LifecycleChange) -> Result<AppliedChange>;

    /// The key named `name` on virtual token `token`.
    fn key(&self, token: &str, name: &str) -> Result<Option<KeyRecord>>;

    /// The key numbered `id`.
    fn key_by_id(&self, id: i64) -> Result<Option<KeyRecord>>;

    /// The keys that match `filter`, by token then name.
    fn keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>>;

    /// A key's versions, oldest first.
    fn versions(&self, key_id: i64) -> Result<Vec<KeyVersion>>;

    /// The key and version whose backend object has `CKA_ID` `backend_id` on
    /// virtual token `token`. The agent's hot path: one indexed lookup.
    fn version_by_backend_id(
        &self,
        token: &str,
        backend_id: &[u8],
    ) -> Result<Option<(KeyRecord, KeyVersion)>>;

    /// A key's state history (its own and its versions'), oldest first.
    fn history(&self, key_id: i64) -> Result<Vec<StateChange>>;

    /// Grants an application operations on a key; replaces that
    /// application's earlier grant on the key. Recorded with `actor`.
    fn grant(&self, grant: &Grant, actor: &str) -> Result<()>;

    /// Removes an application's grant on a key ([`Error::NotFound`] when
    /// there is none). Recorded with `actor`.
    fn revoke_grant(&self, key_id: i64, application: &str, actor: &str) -> Result<()>;

    /// The grants on a key, by application. Expired grants included.
    fn grants(&self, key_id: i64) -> Result<Vec<Grant>>;

    /// An application's grants, by key. Expired grants included.
    fn grants_for_application(&self, application: &str) -> Result<Vec<Grant>>;

    /// Records a use of the key at `at` (never moves `last_used_at` back).
    /// Cheap: not synced on its own; the next lifecycle write makes it
    /// durable.
    fn touch(&self, key_id: i64, at: i64) -> Result<()>;

    /// Records an approval request ([`Error::Exists`] for a taken id).
    fn create_request(&self, request: &ApprovalRecord) -> Result<()>;

    /// The request `id`.
    fn request(&self, id: &str) -> Result<Option<ApprovalRecord>>;

    /// Requests, oldest first; `status: None` lists all.
    fn requests(&self, status: Option<ApprovalStatus>) -> Result<Vec<ApprovalRecord>>;

    /// Records the fingerprint of a version recorded without one (32
    /// bytes). Written once: [`Error::Conflict`] when the version has a
    /// different one already (the same one again is a no-op),
    /// [`Error::NotFound`] for an unknown version.
    fn set_fingerprint(&self, key_id: i64, version: u32, fingerprint: &[u8]) -> Result<()>;

    /// The token and fingerprint recorded for the agent's own key `name`
    /// (the audit key).
    fn agent_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>>;

    /// Records the agent's own key `name` on `token` by its fingerprint, at
    /// `at`. Written once: [`Error::Exists`] when `name` is recorded.
    fn set_agent_key(&self, name: &str, token: &str, fingerprint: &[u8], at: i64) -> Result<()>;

    /// Records that `application` made one more unmanaged object of
    /// `identity` (32 bytes) on `token`, at `at`. Durable before it returns.
    fn add_object_owner(
        &self,
        token: &str,
        identity: &[u8],
        application: &str,
        at: i64,
    ) -> Result<()>;

    /// Records that `application` destroyed one object of `identity` on
    /// `token`: the count goes down, and the ownership is gone at zero.
    /// [`Error::NotFound`] when the application owns no such object.
    fn remove_object_owner(&self, token: &str, identity: &[u8], application: &str) -> Result<()>;

    /// Every ownership of unmanaged objects, by token, identity and
    /// application.
    fn object_owners(&self) -> Result<Vec<ObjectOwner>>;
}
