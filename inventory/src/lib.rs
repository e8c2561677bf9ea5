//! keyward-inventory: the key inventory — one record per managed key, its
//! versions (backend objects), its state and full state history, and the
//! applications granted operations on it — in an embedded, crash-safe store.
//!
//! Layout:
//! - [`Inventory`] (this file): the trait the agent programs against, so
//!   that another engine can replace SQLite.
//! - [`types`]: the plain data — [`KeyRecord`], [`KeyVersion`],
//!   [`StateChange`], [`Grant`], [`KeyState`] and the call arguments. No
//!   other keyward crate is a dependency; the agent maps these to its own.
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
//! - Lifecycle writes are atomic (one transaction for the state, its dates
//!   and its history row) and durable before the call returns; history is
//!   append-only (the database refuses updates and deletes).
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
    ApprovalRecord, DateUpdates, Grant, KeyFilter, KeyRecord, KeyState, KeyVersion, ObjectOwner,
    StateChange, Transition,
};
pub use usage::UsageLog;

/// The schema version this build writes (and the newest it opens).
pub const SCHEMA_VERSION: u32 = schema::LATEST;

/// The inventory store. Implementations are shared between the agent's
/// threads.
pub trait Inventory: Send + Sync {
    /// The schema version of the open store.
    fn schema_version(&self) -> Result<u32>;

    /// Records a new key and its first version (numbered 1) with a
    /// creation row in the history of each; returns the record with its `id`.
    ///
    /// [`Error::Exists`] when the name is taken on the token, or the
    /// version's `CKA_ID` is. A key or version cannot be created destroyed.
    fn create_key(
        &self,
        key: &KeyRecord,
        first_version: &KeyVersion,
        actor: &str,
    ) -> Result<KeyRecord>;

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

    /// Moves a key's state (`version: None`) or one version's, sets the
    /// dates given, and appends the history row, in one transaction.
    ///
    /// Refused with [`Error::Conflict`] when the stored state is not
    /// `expected_from`, and with [`Error::InvalidTransition`] when
    /// [`KeyState::may_become`] says no. Besides `dates`, the store stamps:
    /// a key's first activation (`activated_at`) and its deactivation
    /// (`deactivated_at`) when not given; a version's `deactivated_at` when it
    /// becomes deactivated or compromised, and `destroyed_at` when destroyed.
    fn transition(&self, t: &Transition) -> Result<StateChange>;

    /// Rotation: adds the next version, active, created at
    /// `version.created_at`; moves every older version that is less far
    /// along the lifecycle than `demote_others_to` to that state (suspended,
    /// deactivated or compromised; `None` leaves them); sets the key's
    /// `rotated_at`; appends the history rows. One transaction.
    ///
    /// The store numbers the version; a non-zero `version.version` must be
    /// the next number, else [`Error::Conflict`] (two racing rotations).
    /// `version.key_id` and `version.state` are ignored.
    fn add_version(
        &self,
        key_id: i64,
        version: &KeyVersion,
        demote_others_to: Option<KeyState>,
        actor: &str,
    ) -> Result<KeyVersion>;

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

    /// Sets key dates without a state change (after a rotation: the new
    /// cryptoperiod and the next rotation). `None` leaves a date as it is.
    /// [`Error::NotFound`] for an unknown key.
    fn set_dates(&self, key_id: i64, dates: &DateUpdates) -> Result<()>;

    /// Records an approval request ([`Error::Exists`] for a taken id).
    fn create_request(&self, request: &ApprovalRecord) -> Result<()>;

    /// The request `id`.
    fn request(&self, id: &str) -> Result<Option<ApprovalRecord>>;

    /// Requests, oldest first; `status: None` lists all.
    fn requests(&self, status: Option<&str>) -> Result<Vec<ApprovalRecord>>;

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
