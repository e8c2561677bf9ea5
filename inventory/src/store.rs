//! [`Inventory`]: the trait the agent programs against, so that another
//! engine can replace SQLite.

use keyward_domain::ApprovalStatus;

use crate::error::Result;
use crate::types::{
    AppliedChange, ApprovalRecord, CertificateRecord, Decided, DecisionRecord, Grant, KeyFilter,
    KeyRecord, KeyVersion, LifecycleChange, ObjectOwner, StateChange,
};

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
    /// Refused as a whole, nothing written: [`Error::Conflict`](crate::error::Error::Conflict) when a
    /// stored state is not the one the change expects or a new version is
    /// not the key's next number (another change came first);
    /// [`Error::NotFound`](crate::error::Error::NotFound) for a key or version that does not exist;
    /// [`Error::Exists`](crate::error::Error::Exists) for a taken key name or `CKA_ID` on the token;
    /// [`Error::Invalid`](crate::error::Error::Invalid) for a change that changes nothing (no state, no
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

    /// [`apply`](Self::apply) as the execution of approved request
    /// `request`: in the same transaction the request moves from
    /// `approved` to `executed` with `outcome`. When the request is not
    /// `approved` (executed already, or never approved) nothing is written:
    /// [`Error::Conflict`](crate::error::Error::Conflict). A change and its
    /// request are recorded together or not at all, so an approved change
    /// happens once, whatever stops the agent when.
    fn apply_approved(
        &self,
        change: &LifecycleChange,
        request: &str,
        outcome: &str,
    ) -> Result<AppliedChange>;

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

    /// [`grant`](Self::grant) as the execution of approved request
    /// `request`: in the same transaction the request moves from
    /// `approved` to `executed` with `outcome`; when it is not `approved`
    /// nothing is written ([`Error::Conflict`](crate::error::Error::Conflict)).
    fn grant_approved(
        &self,
        grant: &Grant,
        actor: &str,
        request: &str,
        outcome: &str,
    ) -> Result<()>;

    /// Removes an application's grant on a key ([`Error::NotFound`](crate::error::Error::NotFound) when
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

    /// Records an approval request ([`Error::Exists`](crate::error::Error::Exists)
    /// for a taken id).
    fn create_request(&self, request: &ApprovalRecord) -> Result<()>;

    /// [`create_request`](Self::create_request), and for a pending request
    /// [`Error::Exists`](crate::error::Error::Exists) too while one with the
    /// same action and target is pending and not expired (checked in the
    /// insert's transaction: of two made at once, one is recorded).
    fn create_sole_request(&self, request: &ApprovalRecord) -> Result<()>;

    /// The request `id`.
    fn request(&self, id: &str) -> Result<Option<ApprovalRecord>>;

    /// Requests, oldest first; `status: None` lists all.
    fn requests(&self, status: Option<ApprovalStatus>) -> Result<Vec<ApprovalRecord>>;

    /// Records `decision` on request `id` in one transaction, if the
    /// request is pending and not expired at `decision.at` (a pending
    /// request found expired is marked so). An approval that brings the
    /// recorded approvals to `needed` moves the request to `approved`; a
    /// denial denies it. Each administrator decides once. Concurrent
    /// decisions are serialised: exactly one gets [`Decided::Approved`].
    /// [`Error::NotFound`](crate::error::Error::NotFound) for an unknown id.
    fn decide_request(&self, id: &str, decision: &DecisionRecord, needed: u32) -> Result<Decided>;

    /// The decisions on request `id`, oldest first.
    fn decisions(&self, id: &str) -> Result<Vec<DecisionRecord>>;

    /// Moves request `id` from `from` to `to` with `outcome` at `at`;
    /// whether it was in `from` (false: nothing changed).
    fn close_request(
        &self,
        id: &str,
        from: ApprovalStatus,
        to: ApprovalStatus,
        outcome: &str,
        at: i64,
    ) -> Result<bool>;

    /// Records the fingerprint of a version recorded without one (32
    /// bytes). Written once: [`Error::Conflict`](crate::error::Error::Conflict) when the version has a
    /// different one already (the same one again is a no-op),
    /// [`Error::NotFound`](crate::error::Error::NotFound) for an unknown version.
    fn set_fingerprint(&self, key_id: i64, version: u32, fingerprint: &[u8]) -> Result<()>;

    /// Replaces the fingerprint of a version whose object was made again
    /// (a restore onto a backend that shows the same key differently, the
    /// agent having proven it is the same key): only when the stored one
    /// is `from`, else [`Error::Conflict`](crate::error::Error::Conflict).
    fn replace_fingerprint(&self, key_id: i64, version: u32, from: &[u8], to: &[u8]) -> Result<()>;

    /// The token and fingerprint recorded for the agent's own key `name`
    /// (the audit key).
    fn agent_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>>;

    /// Records the agent's own key `name` on `token` by its fingerprint, at
    /// `at`. Written once: [`Error::Exists`](crate::error::Error::Exists) when `name` is recorded.
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
    /// [`Error::NotFound`](crate::error::Error::NotFound) when the application owns no such object.
    fn remove_object_owner(&self, token: &str, identity: &[u8], application: &str) -> Result<()>;

    /// Every ownership of unmanaged objects, by token, identity and
    /// application.
    fn object_owners(&self) -> Result<Vec<ObjectOwner>>;

    /// Records `cert` as the certificate of its key version; with
    /// `replace`, the version's other certificates' rows go (they were
    /// replaced on the token). [`Error::NotFound`](crate::error::Error::NotFound)
    /// for an unknown key.
    fn record_certificate(&self, cert: &CertificateRecord, replace: bool) -> Result<()>;

    /// The certificates of key `key_id` (every key's for `None`), by key,
    /// version and `notAfter`.
    fn certificates(&self, key_id: Option<i64>) -> Result<Vec<CertificateRecord>>;

    /// Whether this agent leads the scheduled work now (rotations and
    /// deactivations whose dates have come, expiries of requests): on a
    /// store several agents share, one of them at a time, so that no key
    /// is rotated twice; the leader's place passes to another agent when
    /// its session ends. A store of one agent always says yes.
    fn leads(&self) -> Result<bool> {
        Ok(true)
    }
}
