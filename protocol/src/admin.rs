//! The administrator API, spoken on the agent's admin socket with the same
//! framing as the application protocol.

use serde::{Deserialize, Serialize};

use crate::types::Version;

/// A call from the `keyward` CLI to the agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Agent version, uptime, and every virtual token with its backend.
    Status,
    /// Key lifecycle, grants, applications, PIN unlock, discovery.
    Key(KeyRequest),
    /// The audit trail.
    Audit(AuditRequest),
}

/// The agent's answer to an [`AdminRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminResponse {
    /// The request failed; the message says why.
    Err(String),
    /// Answer to [`AdminRequest::Status`].
    Status(Status),
    /// Answer to [`AdminRequest::Key`].
    Key(Box<KeyResponse>),
    /// Answer to [`AdminRequest::Audit`].
    Audit(Box<AuditResponse>),
    /// A key-management call failed.
    KeyErr {
        /// What kind of failure (the CLI's exit code).
        kind: AdminErrorKind,
        /// What went wrong, for people.
        message: String,
    },
}

/// What `keyward status` shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The agent's package version.
    pub agent_version: String,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The application socket.
    pub socket: String,
    /// One entry per configured virtual token.
    pub tokens: Vec<TokenStatus>,
}

/// One virtual token and the backend token behind it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    /// The virtual slot id applications see.
    pub slot: u64,
    /// The virtual token label.
    pub label: String,
    /// Whether the virtual user PIN is set.
    pub user_pin_initialized: bool,
    /// Whether `C_InitToken` is allowed (lab setting).
    pub allow_init_token: bool,
    /// Path of the backend PKCS#11 library.
    pub backend_library: String,
    /// The backend library's description and version.
    pub backend_library_description: String,
    /// `libraryVersion` of the backend.
    pub backend_library_version: Version,
    /// Whether the backend token was found and logged in.
    pub backend_present: bool,
    /// Backend token label, manufacturer, model, serial.
    pub backend_label: String,
    /// Backend token manufacturer.
    pub backend_manufacturer: String,
    /// Backend token model.
    pub backend_model: String,
    /// Backend token serial number.
    pub backend_serial: String,
    /// Why the backend is unavailable, when it is.
    pub backend_error: Option<String>,
}

/// Key-management calls of the `keyward` CLI (key lifecycle).
///
/// Keys are named per virtual token; `token: None` means the agent's first
/// token. Times are unix seconds (UTC).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeyRequest {
    /// Generate a managed key inside the HSM from a key class.
    Create {
        /// Unique name on the token; also the objects' `CKA_LABEL`.
        name: String,
        /// Key class of the policy.
        class: String,
        /// One of the class's algorithms (`ec:p256`, `rsa:3072`, ...);
        /// `None`: the class's first.
        algorithm: Option<String>,
        /// Virtual token label.
        token: Option<String>,
        /// Owner recorded in the inventory; `None`: the requester.
        owner: Option<String>,
    },
    /// Every managed key (optionally of one token or in one state).
    List {
        /// Only this token.
        token: Option<String>,
        /// Only this state (`active`, ...).
        state: Option<String>,
    },
    /// One key with its versions, grants and state history.
    Show {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
    },
    /// A lifecycle transition.
    Transition {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// What to do.
        action: KeyAction,
        /// Why (recorded in the history).
        reason: Option<String>,
    },
    /// A new version from the same class: it protects, older versions
    /// drop to deactivated.
    Rotate {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
    },
    /// Prove the key works inside the HSM without revealing anything.
    Verify {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
    },
    /// Give an application operations on a key, optionally until a time.
    GrantAdd {
        /// Key name.
        key: String,
        /// Virtual token label.
        token: Option<String>,
        /// Application name of the policy.
        application: String,
        /// `sign`, `verify`, `encrypt`, ...
        operations: Vec<String>,
        /// Unix seconds; `None`: no expiry.
        until: Option<i64>,
    },
    /// Take an application's grant on a key away.
    GrantRemove {
        /// Key name.
        key: String,
        /// Virtual token label.
        token: Option<String>,
        /// Application name.
        application: String,
    },
    /// Grants of one key, or of every key.
    GrantList {
        /// Key name; `None`: all keys.
        key: Option<String>,
        /// Virtual token label.
        token: Option<String>,
    },
    /// The policy's applications.
    AppList,
    /// Reset a token's wrong-PIN counter after a lockout.
    PinUnlock {
        /// Virtual token label.
        token: String,
    },
    /// Backend objects the inventory does not know (shadow keys).
    Discover {
        /// Virtual token label; `None`: every token.
        token: Option<String>,
    },
    /// Bring a shadow key under management.
    Adopt {
        /// Virtual token label.
        token: Option<String>,
        /// The shadow's `CKA_ID`.
        backend_id: Vec<u8>,
        /// Name to give it.
        name: String,
        /// Key class it joins.
        class: String,
    },
}

/// A lifecycle transition of [`KeyRequest::Transition`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// pre-activation → active.
    Activate,
    /// active → suspended.
    Suspend,
    /// suspended → active (needs approval).
    Resume,
    /// → deactivated: process only, until the process period ends.
    Deactivate,
    /// → compromised; `rotate`: and a fresh version replaces it at once.
    Revoke {
        /// Emergency rotation in the same step.
        rotate: bool,
    },
    /// Remove the backend objects, keep the metadata (needs approval).
    Destroy,
}

/// What a key-management call answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeyResponse {
    /// One key.
    Key(Box<KeyInfo>),
    /// Several keys.
    Keys(Vec<KeyInfo>),
    /// Grants.
    Grants(Vec<GrantInfo>),
    /// The policy's applications.
    Apps(Vec<AppInfo>),
    /// The action needs approval: this request was recorded instead.
    Pending(ApprovalRequest),
    /// `Verify` passed.
    Verified {
        /// Key name.
        key: String,
        /// The version tried.
        version: u32,
        /// What was done (e.g. "ECDSA signature made and verified").
        detail: String,
    },
    /// Shadow keys found by `Discover`.
    Shadows(Vec<ShadowInfo>),
    /// Done; the text says what happened.
    Done(String),
}

/// Why a key-management call failed; the CLI maps each kind to an exit code.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminErrorKind {
    /// A malformed or contradictory request (exit 2).
    Invalid,
    /// No such key, token, application or class (exit 4).
    NotFound,
    /// The policy or the lifecycle forbids it (exit 5).
    Refused,
    /// It conflicts with the current state (name taken, raced) (exit 6).
    Conflict,
    /// The HSM or the store failed (exit 7).
    Failed,
}

/// A key as `keyward key show` prints it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct KeyInfo {
    pub name: String,
    pub token: String,
    pub owner: String,
    pub purpose: String,
    pub class: String,
    pub algorithm: String,
    pub state: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub deactivated_at: Option<i64>,
    pub protect_until: Option<i64>,
    pub process_until: Option<i64>,
    pub next_rotation: Option<i64>,
    pub scope: Vec<String>,
    pub last_used_at: Option<i64>,
    pub backup_allowed: bool,
    pub versions: Vec<VersionInfo>,
    pub grants: Vec<GrantInfo>,
    pub history: Vec<HistoryEntry>,
}

/// One version of a key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VersionInfo {
    pub version: u32,
    /// `CKA_ID` on the HSM.
    pub backend_id: Vec<u8>,
    pub state: String,
    pub created_at: i64,
    pub deactivated_at: Option<i64>,
    pub destroyed_at: Option<i64>,
}

/// An application's grant on a key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GrantInfo {
    pub key: String,
    pub application: String,
    pub operations: Vec<String>,
    pub expires_at: Option<i64>,
}

/// One state change.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct HistoryEntry {
    pub at: i64,
    /// `None` for the key itself.
    pub version: Option<u32>,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub reason: String,
}

/// An application of the policy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct AppInfo {
    pub name: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    /// Keys it holds a grant on.
    pub keys: Vec<String>,
}

/// A backend key object the inventory does not know.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ShadowInfo {
    pub token: String,
    /// `CKA_ID` (empty if the object has none).
    pub backend_id: Vec<u8>,
    pub label: String,
    /// `CKO_*` name.
    pub class: String,
    /// `CKK_*` name.
    pub key_type: String,
}

/// An action waiting for approval (dual control adds the approvals).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ApprovalRequest {
    pub id: String,
    pub action: String,
    pub target: String,
    pub requester: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: String,
}

/// Reading the audit trail (`keyward audit ...`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuditRequest {
    /// Recompute the hash chain and check every checkpoint's HSM signature.
    Verify,
    /// The last `n` records, or (with `after_seq`) those after a sequence
    /// number, for `--follow`.
    Tail {
        /// How many.
        n: u32,
        /// Only records after this sequence number.
        after_seq: Option<u64>,
    },
    /// Records matching every given criterion.
    Query {
        /// Key name.
        key: Option<String>,
        /// Application name.
        application: Option<String>,
        /// From this time (unix seconds, inclusive).
        since: Option<i64>,
        /// Until this time (unix seconds, exclusive).
        until: Option<i64>,
        /// Only refused or failed operations.
        denied_only: bool,
        /// At most this many (newest last).
        limit: u32,
    },
}

/// The agent's answer to an [`AuditRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuditResponse {
    /// `Verify`'s findings.
    Verified(AuditVerification),
    /// Records, oldest first.
    Records(Vec<AuditRecordInfo>),
}

/// What `keyward audit verify` reports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Records checked.
    pub records: u64,
    /// The newest record's sequence number.
    pub head_seq: u64,
    /// Checkpoints whose signature and chain head verified.
    pub checkpoints_ok: u64,
    /// Records covered by a verified checkpoint.
    pub sealed_through: u64,
    /// Records after the last checkpoint (not yet sealed).
    pub unsealed: u64,
    /// The first bad record and what is wrong with it; `None`: intact.
    pub first_bad: Option<AuditProblem>,
}

/// The first record of a trail that does not verify.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AuditProblem {
    /// Its sequence number.
    pub seq: u64,
    /// What is wrong, for people.
    pub problem: String,
}

/// One audit record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct AuditRecordInfo {
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    pub micros: u32,
    /// `use`, `refusal`, `lifecycle`, `grant`, `policy`, `login`,
    /// `pin-lockout`, `discovery`, `admin`, `agent`.
    pub kind: String,
    /// `application`, `administrator`, `agent` or `scheduler`.
    pub actor: String,
    /// The application's name, for application actors.
    pub application: Option<String>,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub token: Option<String>,
    pub key: Option<String>,
    pub key_version: Option<u32>,
    pub operation: String,
    pub mechanism: Option<u64>,
    /// `CK_RV` (0 = success).
    pub result: u64,
    pub reason: String,
    /// How many equal uses the record stands for (1 for a single event).
    pub count: u32,
    /// Microseconds from the first of them to the last.
    pub span_us: u32,
}
