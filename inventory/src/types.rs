//! The inventory's plain data: what the store keeps and hands back.
//!
//! The domain values (state, purpose, algorithm, approval status) are
//! keyward-domain's types, stored as their text forms. Every time is unix
//! seconds (UTC) as `i64`.

use keyward_domain::{
    Algorithm, ApprovalStatus, Decision, KeyState, Operation, Purpose, ReasonCode,
};
use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;

/// One managed key: a logical key whose versions are backend objects.
///
/// Times are unix seconds. As a new key in [`KeyChange::Create`], `id` is
/// ignored (the store assigns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    /// Label of the virtual token the key lives on; `name` is unique per
    /// token.
    pub token: String,
    pub owner: String,
    /// One purpose: signing, encryption, wrapping, derivation, MAC.
    pub purpose: Purpose,
    /// The key class, which sets cryptoperiods and generation policy.
    pub class: String,
    /// `ec:p256`, `rsa:2048`, `aes:256`, `ed25519`, ...
    pub algorithm: Algorithm,
    pub state: KeyState,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub deactivated_at: Option<i64>,
    /// End of the protect period (sign, encrypt, wrap, derive).
    pub protect_until: Option<i64>,
    /// End of the process period (verify, decrypt, unwrap).
    pub process_until: Option<i64>,
    pub next_rotation: Option<i64>,
    /// Compliance scopes (`pci-dss`, ...).
    pub scope: Vec<String>,
    pub last_used_at: Option<i64>,
    pub backup_allowed: bool,
    /// End of the recovery window of a compromised key (unix seconds):
    /// until then, applications granted them may verify and decrypt with
    /// it, nothing else. Opened by an approved `recover` request; `None`:
    /// never opened.
    pub recovery_until: Option<i64>,
    /// The RFC 5280 reason code of the move that put the key in its state
    /// (a suspension, revocation or destruction); `None`: the move gave
    /// none (an activation, a resumption) or was stored before codes were
    /// kept. Not serialized: backup files carry key records in their
    /// postcard form of before codes (a restored key has none; its
    /// history says why it moved).
    #[serde(skip)]
    pub reason_code: Option<ReasonCode>,
}

/// One version of a managed key: one backend key object (a key pair has both
/// halves under the same `CKA_ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub key_id: i64,
    /// From 1, one more per rotation.
    pub version: u32,
    /// The backend object's `CKA_ID`; unique per virtual token.
    pub backend_id: Vec<u8>,
    /// The backend object's `CKA_LABEL`.
    pub backend_label: String,
    pub state: KeyState,
    pub created_at: i64,
    pub deactivated_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    /// What identifies the backend object besides its `CKA_ID`, recorded
    /// when the version was made or adopted: SHA-256 over the public key
    /// value (a key pair) or over the key check value (a secret key). See
    /// the agent's `keys::fingerprint`. `None`: a version recorded before
    /// fingerprints, not yet given one.
    pub fingerprint: Option<Vec<u8>>,
}

/// One row of a key's state history: the key's own state when `version` is
/// `None`, else that version's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// Store-wide order of changes (increasing, never reused).
    pub seq: i64,
    pub key_id: i64,
    pub version: Option<u32>,
    /// `None` on the row that records creation.
    pub from: Option<KeyState>,
    pub to: KeyState,
    pub at: i64,
    pub actor: String,
    pub reason: String,
}

/// An application's right to some operations on a key, optionally until a
/// time (just-in-time access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub key_id: i64,
    /// The application's name in the policy.
    pub application: String,
    /// `sign`, `verify`, `encrypt`, ... (stored as a JSON list of those
    /// names).
    pub operations: Vec<Operation>,
    /// Unix seconds; the store returns expired grants too, the agent checks.
    pub expires_at: Option<i64>,
}

/// An application's ownership of unmanaged token objects of one identity
/// (see [`Inventory::add_object_owner`](crate::Inventory::add_object_owner)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectOwner {
    /// The virtual token.
    pub token: String,
    /// The objects' identity (32 bytes, computed by the agent).
    pub identity: Vec<u8>,
    /// The application's name in the policy.
    pub application: String,
    /// How many objects of that identity the application made and has not
    /// destroyed (at least 1).
    pub count: u32,
}

/// Which keys [`keys`](crate::Inventory::keys) lists; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub token: Option<String>,
    pub state: Option<KeyState>,
    pub class: Option<String>,
}

/// Key dates a lifecycle change sets along with the states; `None` leaves a date
/// as it is (a date is never cleared).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateUpdates {
    pub activated_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub deactivated_at: Option<i64>,
    pub protect_until: Option<i64>,
    pub process_until: Option<i64>,
    pub next_rotation: Option<i64>,
    /// The end of a recovery window (see [`KeyRecord::recovery_until`]).
    pub recovery_until: Option<i64>,
}

/// The key part of a [`LifecycleChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A new key, in its record's state (`id` is ignored: the store
    /// numbers it). Its versions are the change's [`VersionChange::Add`]s.
    Create(Box<KeyRecord>),
    /// An existing key whose stored state must be `expected` (else
    /// [`Error::Conflict`](crate::Error::Conflict)); it moves to `to` (`None`: it stays).
    Update {
        key_id: i64,
        expected: KeyState,
        to: Option<KeyState>,
        /// The RFC 5280 reason code of the move, stored on the key with its
        /// new state (`None` clears the one it had); only with `to`.
        code: Option<ReasonCode>,
    },
}

/// A version part of a [`LifecycleChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionChange {
    /// A new version in `state`, numbered `version` (the key's next number,
    /// else [`Error::Conflict`](crate::Error::Conflict): two racing rotations). `key_id` is ignored.
    Add(KeyVersion),
    /// Version `version`, whose stored state must be `from` (else
    /// [`Error::Conflict`](crate::Error::Conflict)), moves to `to`.
    Move {
        version: u32,
        from: KeyState,
        to: KeyState,
    },
}

/// One lifecycle change of one key, applied as a whole by
/// [`crate::Inventory::apply`]: the key's state, its versions' states (and
/// new versions), its dates, one history row per state that moves, and the
/// audit-trail records that tell of it.
///
/// The store does not judge the moves (which move an action makes is the
/// policy's decision, taken by the caller); it checks that every stored
/// state is the one the caller expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChange {
    pub key: KeyChange,
    /// In the order their history rows are written.
    pub versions: Vec<VersionChange>,
    /// Set on the key record; `None` leaves a date as it is.
    pub dates: DateUpdates,
    /// Who made the change, as the history records it.
    pub actor: String,
    /// The history rows' reason.
    pub reason: String,
    /// When (unix seconds): every history row's time.
    pub at: i64,
    /// The audit-trail records of the change, appended to the hash chain in
    /// the same transaction (see [`crate::AuditLog::append`] for what an
    /// event may hold).
    pub trail: Vec<AuditEvent>,
}

/// What [`crate::Inventory::apply`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    /// The key as stored after the change (with its `id`).
    pub key: KeyRecord,
    /// The history rows appended, in order.
    pub history: Vec<StateChange>,
    /// The trail's records of the change: the first and the last seq
    /// (`None` when the change had none).
    pub trail: Option<(u64, u64)>,
}

/// An action under dual control: what, on what, asked by whom and why,
/// until when, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Random hex, unique.
    pub id: String,
    /// `resume`, `destroy`, ...
    pub action: String,
    /// `token/name` of the key, or what else the action acts on.
    pub target: String,
    /// The key, when the target is one.
    pub key_id: Option<i64>,
    /// Canonical JSON of the action's arguments (`{}` when none).
    pub parameters: String,
    pub requester: String,
    /// Why it was asked for.
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: ApprovalStatus,
    /// What executing it did, or why it closed (empty while open).
    pub outcome: String,
    /// When it reached a final status (`None` while open).
    pub closed_at: Option<i64>,
}

/// One administrator's decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The administrator's name (`uid:N` without a roster).
    pub administrator: String,
    pub decision: Decision,
    /// The signature it came with (checked by the agent before it is
    /// recorded); `None` without a roster.
    pub signature: Option<Vec<u8>>,
    pub at: i64,
}

/// What [`crate::Inventory::decide_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// An approval recorded; `approvals` are counted now, fewer than
    /// needed.
    Counted { approvals: u32 },
    /// An approval recorded, and with it the quorum is met: the request
    /// moved to `approved`. Exactly one decision on a request gets this.
    Approved { approvals: u32 },
    /// A denial recorded: the request is denied.
    Denied,
    /// This administrator decided on the request already; nothing changed.
    Repeated,
    /// The request is no longer pending (or expired just now): nothing
    /// recorded.
    Closed(ApprovalStatus),
}

/// A certificate stored beside a key version (`certificates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The key.
    pub key_id: i64,
    /// The version it certifies.
    pub version: u32,
    /// Its subject (RFC 4514 text).
    pub subject: String,
    /// `notBefore` (unix seconds).
    pub not_before: i64,
    /// `notAfter` (unix seconds).
    pub not_after: i64,
    /// SHA-256 of the DER certificate.
    pub sha256: Vec<u8>,
    /// When it was stored (unix seconds).
    pub imported_at: i64,
}
