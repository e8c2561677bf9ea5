//! The administrator API, spoken on the agent's admin socket with the same
//! framing as the application protocol. Its version is negotiated apart
//! from the application protocol's ([`crate::version`]): every connection
//! opens with [`AdminRequest::Hello`].

use std::io::{Read, Write};

use keyward_domain::{
    Algorithm, ApprovalStatus, Decision, KeyState, Operation, Purpose, ReasonCode,
};
use serde::{Deserialize, Serialize};

use crate::approval::RequestContent;
use crate::frame::{read_message, write_message, FrameError};
use crate::types::Version;
use crate::version::{Mismatch, VersionRange, VersionRefusal, ADMIN_VERSIONS};

/// A call from the `keyward` CLI to the agent. `Hello` keeps its place and
/// shape for ever.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// First message on every admin connection: the admin-protocol
    /// versions the client speaks.
    Hello {
        /// The versions the client speaks.
        versions: VersionRange,
    },
    /// Agent version, uptime, and every virtual token with its backend.
    Status,
    /// Key lifecycle, grants, applications, PIN unlock, discovery.
    Key(KeyRequest),
    /// The audit trail.
    Audit(AuditRequest),
    /// `keyward report`: keys against policy, usage and its anomalies.
    Report(ReportRequest),
    /// `--dry-run`: every check of the changing request, nothing changed;
    /// answered with [`KeyResponse::Plan`] or the request's own refusal
    /// (see [`crate::plan`]).
    DryRun(KeyRequest),
}

/// Whose PIN an administrator names.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRole {
    /// The user PIN (the token's and every application's own).
    User,
    /// The security officer's PIN.
    So,
}

/// The agent's answer to an [`AdminRequest`]. `Err`, `Hello` and
/// `NoCommonVersion` keep their places for ever: a `keyward` of any version
/// reads them (one from before negotiated versions reads `Err` only).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminResponse {
    /// The request failed; the message says why.
    Err(String),
    /// Answer to a `Hello` the agent accepts.
    Hello(AdminHello),
    /// Answer to a `Hello` whose versions the agent does not speak; the
    /// agent closes the connection after it.
    NoCommonVersion(VersionRefusal),
    /// Answer to [`AdminRequest::Status`].
    Status(Box<Status>),
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
    /// Answer to [`AdminRequest::Report`].
    Report(Box<Report>),
}

/// The agent's answer to an admin `Hello` it accepts. Its encoding never
/// changes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminHello {
    /// The admin-protocol version the connection speaks from now on: the
    /// highest one both sides speak.
    pub version: u16,
    /// The agent's package version.
    pub agent_version: String,
}

/// Why an admin connection's hello did not agree on a version.
#[derive(Debug)]
pub enum HelloError {
    /// The agent speaks no version this client speaks.
    Refused {
        /// Both sides' versions.
        mismatch: Mismatch,
        /// The agent's package version.
        agent_version: String,
    },
    /// The agent answered the hello with an error text: an agent refuses
    /// so a peer it does not serve on the admin socket.
    Agent(String),
    /// The agent closed the connection without answering: an agent from
    /// before negotiated versions does so (it cannot read the hello).
    Closed,
    /// An answer that is no answer to a hello, or a version outside what
    /// this client announced.
    Unexpected(String),
    /// The transport failed.
    Frame(FrameError),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::Refused {
                mismatch,
                agent_version,
            } => f.write_str(&mismatch.explain(
                "admin",
                "this keyward",
                &format!("keyward-agent {agent_version}"),
            )),
            HelloError::Agent(message) => write!(f, "the agent refused: {message}"),
            HelloError::Closed => write!(
                f,
                "the agent closed the connection without answering the admin hello: an agent \
                 older than admin protocol {} does so (it speaks the combined protocol {}); \
                 upgrade keyward-agent",
                crate::version::ADMIN_HELLO_SINCE,
                crate::version::LEGACY_VERSION
            ),
            HelloError::Unexpected(what) => {
                write!(f, "unexpected answer to the admin hello: {what}")
            }
            HelloError::Frame(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HelloError {}

/// Opens an admin connection: sends `Hello` with [`ADMIN_VERSIONS`] and
/// reads the agent's answer. Returns the agreed version and the agent's
/// package version.
pub fn hello<S: Read + Write>(stream: &mut S, buf: &mut Vec<u8>) -> Result<AdminHello, HelloError> {
    let hello = AdminRequest::Hello {
        versions: ADMIN_VERSIONS,
    };
    write_message(stream, &hello, buf).map_err(HelloError::Frame)?;
    match read_message(stream, buf) {
        Ok(AdminResponse::Hello(h)) if ADMIN_VERSIONS.contains(h.version) => Ok(h),
        Ok(AdminResponse::Hello(h)) => Err(HelloError::Unexpected(format!(
            "version {} (this keyward speaks {ADMIN_VERSIONS})",
            h.version
        ))),
        Ok(AdminResponse::NoCommonVersion(r)) => Err(HelloError::Refused {
            mismatch: r.mismatch(ADMIN_VERSIONS),
            agent_version: r.agent_version,
        }),
        Ok(AdminResponse::Err(message)) => Err(HelloError::Agent(message)),
        Ok(other) => Err(HelloError::Unexpected(format!("{other:?}"))),
        Err(FrameError::Closed) => Err(HelloError::Closed),
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Err(HelloError::Closed)
        }
        Err(e) => Err(HelloError::Frame(e)),
    }
}

/// The agent's answer to an admin `Hello` from a client that speaks
/// `theirs`: the highest version both sides speak, or the agent's versions
/// and (`Some`) the mismatch, after which the agent closes the connection.
pub fn answer_hello(
    theirs: VersionRange,
    agent_version: &str,
) -> (AdminResponse, Option<Mismatch>) {
    let agent_version = agent_version.to_owned();
    match ADMIN_VERSIONS.pick(theirs) {
        Ok(version) => (
            AdminResponse::Hello(AdminHello {
                version,
                agent_version,
            }),
            None,
        ),
        Err(m) => (
            AdminResponse::NoCommonVersion(VersionRefusal {
                versions: ADMIN_VERSIONS,
                agent_version,
            }),
            Some(m),
        ),
    }
}

/// What the agent answers, as an `Err` text, to a first admin message that
/// is not a `Hello`: a `keyward` from before negotiated versions sends its
/// request at once, and shows this text.
pub fn hello_first(agent_version: &str) -> String {
    format!(
        "keyward-agent {agent_version} speaks admin protocol {ADMIN_VERSIONS} and expects a \
         version hello first; this keyward is older than negotiated protocol versions (it \
         speaks the combined protocol {}): upgrade keyward",
        crate::version::LEGACY_VERSION
    )
}

/// What `keyward status` shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The agent's package version.
    pub agent_version: String,
    /// The application-protocol versions it speaks.
    pub app_protocol: VersionRange,
    /// The admin-protocol versions it speaks.
    pub admin_protocol: VersionRange,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The application socket.
    pub socket: String,
    /// One entry per configured virtual token.
    pub tokens: Vec<TokenStatus>,
    /// Application connections open now.
    pub connections: u64,
    /// What happened to the socket files since the start (removed or
    /// replaced by someone, and bound again), oldest first.
    pub socket_events: Vec<String>,
    /// Approval requests waiting (pending, not yet expired).
    pub pending_requests: u64,
    /// The policy in force (without its text).
    pub policy: PolicySummary,
    /// Managed keys by state (`pre-activation` ... `destroyed`), states
    /// with none left out.
    pub keys_by_state: Vec<(KeyState, u64)>,
    /// The audit trail's health.
    pub audit: AuditHealth,
    /// The lifecycle scheduler's last pass and the next one (unix seconds).
    pub scheduler_last_run: Option<i64>,
    /// When the scheduler runs next (unix seconds).
    pub scheduler_next_run: Option<i64>,
    /// Where the inventory and the trail live, and, for a shared store,
    /// whether the agent's view of it is in force.
    pub store: StoreHealth,
}

/// The store in `keyward status`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreHealth {
    /// `sqlite` (one host) or `postgres` (a fleet's shared store).
    pub kind: String,
    /// The SQLite file, or `user@host:port/database` (never a password).
    pub location: String,
    /// This agent's name in a shared trail.
    pub host: Option<String>,
    /// The lease on the agent's view of a shared store (seconds).
    pub lease_secs: Option<u64>,
    /// How long since the shared store was last heard from (milliseconds).
    pub silent_ms: Option<u64>,
    /// Whether the agent's view is in force; `false`: the shared store has
    /// been silent past the lease, and protect operations with managed
    /// keys and administrator actions are refused until it answers.
    pub in_force: bool,
}

/// What `keyward status` says of the policy in force.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySummary {
    /// The policy file (`None`: the built-in lab policy).
    pub file: Option<String>,
    /// SHA-256 of the file's text (hex).
    pub sha256: Option<String>,
    /// `lab` or `strict`.
    pub mode: String,
    /// How many applications, key classes and administrators it names.
    pub applications: u64,
    /// Key classes.
    pub classes: u64,
    /// Administrators of the roster (0: no dual control).
    pub administrators: u64,
}

/// The policy in force, whole (`keyward policy show`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PolicyInForce {
    /// File, digest, mode and counts.
    pub summary: PolicySummary,
    /// The file's text (`None`: the built-in lab policy).
    pub text: Option<String>,
}

/// The audit trail's health in `keyward status`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditHealth {
    /// Records in the trail (its newest sequence number).
    pub records: u64,
    /// The newest signed checkpoint: the record it covers and when.
    pub last_checkpoint_seq: Option<u64>,
    /// When it was made (unix seconds).
    pub last_checkpoint_at: Option<i64>,
    /// Records after the newest checkpoint (not yet sealed by a signature).
    pub unsealed: u64,
    /// Failed appends since the agent started.
    pub write_failures: u64,
    /// Whether the trail cannot be written now.
    pub failing: bool,
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
        algorithm: Option<Algorithm>,
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
        state: Option<KeyState>,
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
        /// Why (recorded in the history). Required, and more than
        /// whitespace, for suspend, revoke and destroy.
        reason: Option<String>,
        /// The RFC 5280 reason code: required for revoke and destroy (not
        /// `certificateHold`: they are final), `certificateHold` when a
        /// suspension gives none; refused for the other actions.
        code: Option<ReasonCode>,
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
        operations: Vec<Operation>,
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
    /// Reset a token's wrong-PIN counts after a lockout: every count of
    /// the token, or only those `role` and `application` name.
    PinUnlock {
        /// Virtual token label.
        token: String,
        /// Only this role's counts; `None`: both.
        role: Option<PinRole>,
        /// Only this application's user PIN count; `None`: every one.
        application: Option<String>,
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
    /// The approval requests: the pending ones, or (`all`) every one.
    RequestList {
        /// Every status, not only pending.
        all: bool,
    },
    /// One approval request, by its id.
    RequestShow {
        /// The request's id.
        id: String,
    },
    /// An administrator's decision on a pending request: `signature` is
    /// their signature over
    /// [`decision_statement`](crate::approval::decision_statement) (the
    /// agent names the administrator by the connection's uid and checks
    /// the signature against the roster). Without a roster (no dual
    /// control) no signature is needed and one approval carries it out.
    RequestDecide {
        /// The request's id.
        id: String,
        /// Approve or deny.
        decision: Decision,
        /// The signature (Ed25519: 64 bytes; ECDSA P-256 with SHA-256:
        /// 64 bytes `r‖s`).
        signature: Option<Vec<u8>>,
    },
    /// Withdraw a pending request (its requester or a security officer).
    RequestCancel {
        /// The request's id.
        id: String,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Put a new policy file in force: with a roster, a request under the
    /// `policy-apply` quorum that carries the text and its difference to
    /// the policy in force; without one, at once.
    PolicyApply {
        /// The policy file's text (UTF-8 TOML).
        text: String,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Set up dual control on a deployment that has none yet: `text`, a
    /// policy with a roster, is written and put in force at once as the
    /// first approved policy. Refused once a policy with a roster was
    /// approved: from then on `PolicyApply` changes it, under quorum.
    Init {
        /// The policy file's text (UTF-8 TOML), with `[[administrator]]`.
        text: String,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Ask for a recovery window on a compromised key: for `seconds` from
    /// now, applications granted verify or decrypt on it may do those
    /// (nothing else), to recover data. Always an approval request (quorum
    /// `recovery-window`); bounded by the key class's
    /// `max_recovery_window`.
    Recover {
        /// Key name.
        name: String,
        /// Virtual token label.
        token: Option<String>,
        /// How long the window stays open, from the request.
        seconds: u64,
        /// Why (kept with the request).
        reason: String,
    },
    /// Ask for the re-initialisation of a token: every managed key on it
    /// is destroyed (its record kept), every other object but the audit
    /// key removed, the user PINs cleared. Always an approval request
    /// (quorum `token-init`); the SO PIN and the label stay.
    TokenInit {
        /// Virtual token label.
        token: String,
        /// Why (kept with the request).
        reason: String,
    },
    /// The policy in force: its file, digest, mode and text.
    PolicyShow,
    /// Read the agent's configuration file again and put its policy in
    /// force (what SIGHUP does); refused, with the reason, when the file
    /// does not load or dual control keeps the approved policy.
    PolicyReload,
    /// Backups: the backup key, backup files, restores and drills.
    Backup(BackupRequest),
    /// Key distribution: public keys, exports under wrap, imports.
    Distribution(crate::distribution::DistRequest),
    /// Certificates: CSRs and self-signed certificates signed in the HSM,
    /// certificate imports.
    Cert(crate::certificate::CertRequest),
}

/// `keyward backup ...`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BackupRequest {
    /// Ask for the backup key's ceremony (quorum `backup-init`): a new
    /// backup key in the HSM, split into shares for the roster's
    /// custodians, `threshold` of which rebuild it.
    Init {
        /// Virtual token label.
        token: Option<String>,
        /// How many shares rebuild the key.
        threshold: u8,
        /// Why (kept with the request).
        reason: String,
    },
    /// The backup key, its custodians and what backups were made.
    Status {
        /// Virtual token label.
        token: Option<String>,
    },
    /// A custodian's share of the backup key, still encrypted to them.
    Share {
        /// Virtual token label.
        token: Option<String>,
        /// The custodian (`None`: the caller).
        custodian: Option<String>,
    },
    /// Write a backup: every backup-eligible key version wrapped by the
    /// backup key, with its inventory record, sealed in the HSM.
    Create {
        /// Virtual token label.
        token: Option<String>,
    },
    /// Ask for a restore of a backup file (quorum `backup-restore`).
    Restore {
        /// Virtual token label.
        token: Option<String>,
        /// The backup file's bytes.
        #[serde(with = "serde_bytes")]
        file: Vec<u8>,
        /// Why (kept with the request).
        reason: String,
    },
    /// A drill: the file's keys unwrapped into session objects and each
    /// proven to work; nothing of the token or the inventory changes.
    Verify {
        /// Virtual token label.
        token: Option<String>,
        /// The backup file's bytes.
        #[serde(with = "serde_bytes")]
        file: Vec<u8>,
    },
    /// A custodian's opened share, towards rebuilding the backup key on
    /// a token that has none (disaster recovery).
    Submit {
        /// Virtual token label.
        token: Option<String>,
        /// The share record, as its custodian opened it.
        #[serde(with = "serde_bytes")]
        share: Vec<u8>,
    },
}

/// The answers to [`BackupRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BackupAnswer {
    /// `Create`: the file, and what it holds.
    File {
        /// The backup file's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// What it holds.
        contents: BackupContents,
    },
    /// `Status`.
    Status(BackupStatus),
    /// `Share`: the share, encrypted to its custodian (age, armored).
    Share {
        /// The custodian.
        custodian: String,
        /// The encrypted share.
        armored: String,
        /// SHA-256 of the share record (hex), as the ceremony recorded it.
        digest: String,
    },
    /// `Verify`: what the drill proved.
    Drill {
        /// The file's contents.
        contents: BackupContents,
        /// One line per key version tried.
        results: Vec<DrillResult>,
    },
    /// `Submit`: shares held so far, and whether the key was rebuilt.
    Submitted {
        /// Shares held (in the agent's memory only).
        have: u8,
        /// Shares needed.
        need: u8,
        /// The backup key was rebuilt in the HSM.
        rebuilt: bool,
    },
}

/// What a backup file holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackupContents {
    /// SHA-256 of the file (hex): the backup's identity.
    pub id: String,
    /// The virtual token it was made of.
    pub token: String,
    /// When (unix seconds).
    pub created_at: i64,
    /// The backup key's check value (hex).
    pub key_check: String,
    /// The keys in it.
    pub keys: Vec<BackedUpKey>,
    /// Keys not in it, and why.
    pub absent: Vec<(String, String)>,
}

/// One key of a backup.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackedUpKey {
    /// Key name.
    pub name: String,
    /// Its state when the backup was made.
    pub state: KeyState,
    /// The versions in the backup.
    pub versions: Vec<u32>,
}

/// One key version's outcome in a drill.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DrillResult {
    /// Key name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Whether it worked.
    pub ok: bool,
    /// What was done, or what failed.
    pub detail: String,
}

/// The backup key of a token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// Virtual token label.
    pub token: String,
    /// The backup key's check value (hex); `None`: no backup key.
    pub key_check: Option<String>,
    /// Whether its objects are on the token.
    pub present: bool,
    /// Shares that rebuild it.
    pub threshold: u8,
    /// (custodian, share index, share digest hex).
    pub custodians: Vec<(String, u8, String)>,
    /// When it was made (unix seconds).
    pub created_at: Option<i64>,
    /// Shares submitted towards a rebuild, held in memory.
    pub submitted: u8,
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
    /// Approval requests (`RequestList`, `RequestShow`).
    Requests(Vec<ApprovalRequest>),
    /// `PolicyShow`.
    Policy(Box<PolicyInForce>),
    /// Backups.
    Backup(Box<BackupAnswer>),
    /// Answer to a [`KeyRequest::Distribution`] request.
    Distribution(crate::distribution::DistResponse),
    /// Answer to a [`KeyRequest::Cert`] request.
    Cert(crate::certificate::CertResponse),
    /// Answer to an [`AdminRequest::DryRun`]: what the request would do.
    Plan(Box<crate::plan::Plan>),
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

/// How often the agent writes the keys' last uses to the inventory, in
/// seconds: `last_used_at` lags the last use by up to this.
pub const LAST_USE_EVERY_SECS: u64 = 5;

/// A key as `keyward key show` prints it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct KeyInfo {
    pub name: String,
    pub token: String,
    pub owner: String,
    pub purpose: Purpose,
    pub class: String,
    pub algorithm: Algorithm,
    pub state: KeyState,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub deactivated_at: Option<i64>,
    pub protect_until: Option<i64>,
    pub process_until: Option<i64>,
    pub next_rotation: Option<i64>,
    pub scope: Vec<String>,
    /// The last use the inventory holds: uses are noted in memory and
    /// written every [`LAST_USE_EVERY_SECS`], so it lags by up to that.
    pub last_used_at: Option<i64>,
    pub backup_allowed: bool,
    pub versions: Vec<VersionInfo>,
    pub grants: Vec<GrantInfo>,
    pub history: Vec<HistoryEntry>,
    /// End of the key's recovery window (verify and decrypt while it is
    /// compromised); `None`: never opened.
    pub recovery_until: Option<i64>,
    /// A destroyed key: the backups made before its destruction that hold
    /// one of its versions, oldest first (they must be retired for the
    /// destruction to be final). Empty for a key not destroyed.
    pub held_by_backups: Vec<BackupMark>,
    /// The certificates stored beside its versions (`keyward cert
    /// import`), by version and end of validity.
    #[serde(default)]
    pub certificates: Vec<KeyCertificate>,
    /// The RFC 5280 reason code of the suspension, revocation or
    /// destruction that put the key in its state; `None` for a key in
    /// service, or one that moved before codes were kept.
    #[serde(default)]
    pub reason_code: Option<ReasonCode>,
}

/// A certificate stored beside a key version, as the inventory records it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyCertificate {
    /// The version it certifies.
    pub version: u32,
    /// Its subject (RFC 4514 text).
    pub subject: String,
    /// `notBefore` (unix seconds).
    pub not_before: i64,
    /// `notAfter` (unix seconds).
    pub not_after: i64,
    /// SHA-256 of the DER certificate (hex).
    pub sha256: String,
    /// When it was stored (unix seconds).
    pub imported_at: i64,
}

/// One version of a key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VersionInfo {
    pub version: u32,
    /// `CKA_ID` on the HSM.
    pub backend_id: Vec<u8>,
    pub state: KeyState,
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
    pub operations: Vec<Operation>,
    pub expires_at: Option<i64>,
    /// Where the grant comes from: `key` (`keyward grant add`) or `class`
    /// (the key's class in the policy).
    pub source: String,
}

/// One state change.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct HistoryEntry {
    pub at: i64,
    /// `None` for the key itself.
    pub version: Option<u32>,
    pub from: Option<KeyState>,
    pub to: KeyState,
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
    /// What was found: `unmanaged` (a key the inventory does not know), or
    /// `plant: ...` (an object with the `CKA_ID` of a managed key version
    /// or of the audit key, without its fingerprint).
    pub finding: String,
}

/// An action under dual control, with the decisions made on it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ApprovalRequest {
    pub id: String,
    pub action: String,
    pub target: String,
    /// The action's arguments, canonical JSON (for a single signature: the
    /// SHA-256 of the data, the mechanism and who asks).
    pub parameters: String,
    pub requester: String,
    /// Why it was asked for.
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: ApprovalStatus,
    /// How many approvals the quorum needs (0: no roster, one approval by
    /// anyone the admin socket serves carries it out).
    pub needed: u32,
    /// The decisions recorded so far, oldest first.
    pub decisions: Vec<DecisionInfo>,
    /// What carrying it out did, or why it is final (empty while open).
    pub outcome: String,
}

impl ApprovalRequest {
    /// The fields its digest covers.
    pub fn content(&self) -> RequestContent<'_> {
        RequestContent {
            id: &self.id,
            action: &self.action,
            target: &self.target,
            parameters: &self.parameters,
            requester: &self.requester,
            reason: &self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// One administrator's decision on a request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DecisionInfo {
    /// The administrator's name in the roster (`uid:N` without one).
    pub administrator: String,
    /// Approve or deny.
    pub decision: Decision,
    /// Unix seconds.
    pub at: i64,
}

/// Reading the audit trail (`keyward audit ...`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuditRequest {
    /// Recompute the hash chain and check every checkpoint's HSM signature.
    Verify,
    /// `Verify`, and prove that the trail still holds every anchor (heads
    /// of checkpoints kept off the host): a trail rolled back past one, or
    /// re-chained below one, fails.
    VerifyAnchored {
        /// The anchors, in any order.
        anchors: Vec<AuditAnchor>,
    },
    /// The latest sealed head, sealing the records not yet sealed first:
    /// what an administrator keeps off the host.
    Anchor,
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
    /// `Anchor`'s head.
    Anchor(AuditAnchor),
}

/// A checkpoint's head as kept off the host: the sealed seq, the chain
/// head there, the checkpoint's time and the audit key's signature over
/// them. Its text form, one line ([`AuditAnchor::to_line`], read back by
/// [`parse_anchors`]):
///
/// ```text
/// keyward-anchor 1 seq=<decimal> head=<64 hex digits> time=<unix seconds> sig=<hex>
/// ```
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    /// The last record the checkpoint seals.
    pub seq: u64,
    /// The chain head at `seq` (SHA-256).
    pub head: [u8; 32],
    /// The checkpoint's time, unix seconds.
    pub created_at: i64,
    /// The audit key's signature (ECDSA P-256, raw `r || s`).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What opens an anchor's text form.
pub const ANCHOR_PREFIX: &str = "keyward-anchor 1 ";

/// The longest signature an anchor line may carry (bytes).
const MAX_ANCHOR_SIGNATURE: usize = 1024;

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

impl AuditAnchor {
    /// The one-line text form (see [`AuditAnchor`]), without a newline.
    pub fn to_line(&self) -> String {
        format!(
            "{ANCHOR_PREFIX}seq={} head={} time={} sig={}",
            self.seq,
            hex::encode(self.head),
            self.created_at,
            hex::encode(&self.signature)
        )
    }

    /// Reads one anchor from `line`: its text form, wherever it starts in
    /// the line (a syslog line carries it after its own header; a JSON
    /// document in its `"anchor"` string).
    pub fn from_line(line: &str) -> Result<AuditAnchor, String> {
        let Some(at) = line.find(ANCHOR_PREFIX) else {
            return Err(format!(
                "not an anchor (expected \"{ANCHOR_PREFIX}seq=N head=HEX time=N sig=HEX\")"
            ));
        };
        let mut fields = line[at + ANCHOR_PREFIX.len()..].split_ascii_whitespace();
        let mut field = |name: &str| -> Result<&str, String> {
            let token = fields
                .next()
                .ok_or_else(|| format!("truncated: no {name}="))?;
            let value = token
                .strip_prefix(name)
                .and_then(|t| t.strip_prefix('='))
                .ok_or_else(|| format!("expected {name}=, found {:?}", cut(token)))?;
            // The value ends where its digits end: in a JSON string, the
            // closing quote and what follows are not part of it.
            let end = value
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .unwrap_or(value.len());
            let (value, rest) = value.split_at(end);
            if !(rest.is_empty() || rest.starts_with('"')) {
                return Err(format!(
                    "{name}= is not followed by a space: {:?}",
                    cut(token)
                ));
            }
            Ok(value)
        };
        let seq = field("seq")?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("seq {:?} is not a number", cut(seq)))?;
        let head = field("head")?;
        let head: [u8; 32] = hex_bytes(head)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "head is not 64 hex digits ({} characters: truncated or altered?)",
                    head.len()
                )
            })?;
        let time = field("time")?;
        let created_at: i64 = time
            .parse()
            .map_err(|_| format!("time {:?} is not a number", cut(time)))?;
        let sig = field("sig")?;
        let signature = hex_bytes(sig)
            .filter(|s| !s.is_empty() && s.len() <= MAX_ANCHOR_SIGNATURE)
            .ok_or_else(|| format!("sig is not a hex signature ({} characters)", sig.len()))?;
        Ok(AuditAnchor {
            seq,
            head,
            created_at,
            signature,
        })
    }
}

/// At most 40 characters of `text`, for an error message.
fn cut(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Every anchor in `text`, one per line (its text form, or a line that
/// carries it: `keyward --json audit anchor`'s output, a syslog line).
/// Empty lines and lines starting with `#` are skipped. Any other line
/// that is not an anchor is an error naming its line number; so is a text
/// without any anchor.
pub fn parse_anchors(text: &str) -> Result<Vec<AuditAnchor>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(AuditAnchor::from_line(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err("no anchor in it".into());
    }
    Ok(out)
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
    /// Anchors given that the trail still holds.
    pub anchors_ok: u64,
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
    /// Whether it is an anchor the trail no longer holds (rolled back past
    /// it, or rewritten below it): `keyward` exits 9 rather than 8.
    pub anchor: bool,
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
    /// The agent that wrote it, in a fleet's shared trail.
    pub host: Option<String>,
}

/// What `keyward report` asks for. Times are unix seconds (UTC).
///
/// The report looks at two periods that end now: the *window*
/// (`window_secs`, the recent period judged) and before it the *baseline*
/// (`baseline_secs`, the history it is judged against).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// Only this key (with `token`: on that token; else on any).
    pub key: Option<String>,
    /// Only keys of this virtual token.
    pub token: Option<String>,
    /// Length of the window, in seconds (at least 1).
    pub window_secs: u64,
    /// Length of the baseline before the window, in seconds (at least 1).
    pub baseline_secs: u64,
    /// When the anomaly rules speak.
    pub thresholds: AnomalyThresholds,
}

impl Default for ReportRequest {
    /// Every key, a window of an hour judged against the week before it,
    /// the default thresholds (what `keyward report` does without options).
    fn default() -> ReportRequest {
        ReportRequest {
            key: None,
            token: None,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
        }
    }
}

/// The numbers behind the anomaly rules (see `docs/admin-guide.md`,
/// "Report").
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyThresholds {
    /// Volume spike: the window's uses exceed this many times the mean
    /// uses of a window-long slice of the baseline ...
    pub spike_factor: u64,
    /// ... and this many uses.
    pub spike_floor: u64,
    /// Unusual hours are judged only once the baseline's uses span this
    /// many seconds ...
    pub hours_min_span_secs: u64,
    /// ... and number at least this many.
    pub hours_min_uses: u64,
}

impl Default for AnomalyThresholds {
    fn default() -> AnomalyThresholds {
        AnomalyThresholds {
            spike_factor: 10,
            spike_floor: 100,
            hours_min_span_secs: 3 * 86_400,
            hours_min_uses: 100,
        }
    }
}

/// What `keyward report` shows: every managed key against its class, its
/// usage and the anomalies in it, and the figures over all keys. Also what
/// a metrics endpoint can render.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// When the report was made (unix seconds).
    pub generated_at: i64,
    /// The window's length (seconds); it ends at `generated_at`.
    pub window_secs: u64,
    /// The baseline's length (seconds); it ends where the window starts.
    pub baseline_secs: u64,
    /// The thresholds the anomalies were judged with.
    pub thresholds: AnomalyThresholds,
    /// One entry per managed key, by token then name.
    pub keys: Vec<KeyReport>,
    /// Rotation compliance over the active keys reported.
    pub rotation: RotationCompliance,
    /// Administrator actions that failed.
    pub failed_admin: FailedAdmin,
    /// The approval requests waiting (pending, not expired), oldest first.
    pub pending_requests: Vec<ApprovalRequest>,
    /// Uses of objects the inventory does not manage, busiest first.
    pub unmanaged: Vec<UnmanagedUsage>,
    /// Every key's anomalies together.
    pub anomalies: Vec<Anomaly>,
}

/// One managed key in a [`Report`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// Key name.
    pub name: String,
    /// Virtual token label.
    pub token: String,
    /// Key class.
    pub class: String,
    /// Purpose of the class (`signing`, ...).
    pub purpose: Purpose,
    /// Algorithm (`ec:p256`, ...).
    pub algorithm: Algorithm,
    /// The key's lifecycle state as stored.
    pub state: KeyState,
    /// The newest active version.
    pub active_version: Option<u32>,
    /// Seconds since that version was made.
    pub age_secs: Option<u64>,
    /// The class's protect period (seconds); `None` when the class is no
    /// longer in the policy.
    pub cryptoperiod_secs: Option<u64>,
    /// The class's rotation interval (seconds), when it rotates.
    pub rotation_interval_secs: Option<u64>,
    /// End of the key's protect period (unix seconds).
    pub protect_until: Option<i64>,
    /// When the key is due to rotate (unix seconds).
    pub next_rotation: Option<i64>,
    /// An active key past its rotation date or its protect period.
    pub overdue: bool,
    /// The certificate on the token with the active version's `CKA_ID`;
    /// `None`: there is none.
    pub certificate: Option<CertificateInfo>,
    /// How much the key was used.
    pub usage: KeyUsage,
    /// No use in the baseline: the new-application and unusual-hour
    /// rules have nothing to compare with yet.
    pub learning: bool,
    /// What the anomaly rules found in the window.
    pub anomalies: Vec<Anomaly>,
    /// Attempts to take the key out of the HSM, and wraps it made.
    pub exports: ExportAttempts,
    /// Where the key's grants or HSM attributes no longer match its class.
    pub drift: Vec<String>,
    /// Each revocation of the key: how long it took, and whether any use
    /// succeeded after it.
    pub revocations: Vec<Revocation>,
    /// Why the HSM could not be asked about the key (attributes,
    /// certificate), when it could not.
    pub hsm_error: Option<String>,
    /// The newest backup holding one of the key's versions.
    pub last_backup: Option<BackupMark>,
    /// The newest drill (`keyward backup verify`) of the key.
    pub last_drill: Option<DrillMark>,
    /// The class allows backup, the key is not destroyed, and no backup
    /// holds its current version.
    pub backup_missing: bool,
    /// A destroyed key: the backups made before its destruction that hold
    /// one of its versions, oldest first.
    pub held_by_backups: Vec<BackupMark>,
    /// What the policy in force would say of the key if it were made or
    /// adopted now: refusals (a weak algorithm in a class not marked
    /// legacy, a class gone, an algorithm or purpose the class no longer
    /// allows) and warnings (a cryptoperiod longer than NIST SP 800-57
    /// recommends).
    pub policy_findings: Vec<PolicyFinding>,
}

/// What the policy in force says of an existing key.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFindingKind {
    /// The key's class is no longer in the policy.
    ClassMissing,
    /// Below 112-bit security (NIST SP 800-131A), its class not legacy.
    WeakAlgorithm,
    /// The class no longer lists the key's algorithm or size.
    AlgorithmNotAllowed,
    /// The class now serves another purpose than the key's.
    PurposeNotAllowed,
    /// The class's cryptoperiod is longer than NIST SP 800-57 recommends.
    LongCryptoperiod,
}

/// How serious a [`PolicyFinding`] is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingSeverity {
    /// The policy would refuse such a key now.
    Refused,
    /// The policy check warns (`keyward policy check --strict` refuses).
    Warning,
}

/// One thing the policy in force says of an existing key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PolicyFinding {
    /// Which rule.
    pub kind: PolicyFindingKind,
    /// Refused or a warning.
    pub severity: FindingSeverity,
    /// What, for people.
    pub detail: String,
}

/// A backup that holds a key, from its `backup` record in the trail.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackupMark {
    /// When the backup was made (unix seconds).
    pub at: i64,
    /// The backup's id: the SHA-256 of its file (hex).
    pub id: String,
}

/// A drill of a key, from its `backup drill` records in the trail.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DrillMark {
    /// When the drill ran (unix seconds; its newest record of the key).
    pub at: i64,
    /// The id of the backup drilled.
    pub id: String,
    /// Every version of the key in that backup worked in the drill.
    pub ok: bool,
}

/// A certificate found for a key version.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// `notAfter` (unix seconds); `None` when the certificate does not parse.
    pub not_after: Option<i64>,
    /// Why it does not parse.
    pub problem: Option<String>,
    /// It expires within the class's `certificate_warning` (or has
    /// expired).
    #[serde(default)]
    pub expiring: bool,
}

/// Uses of a key: the use records' counts, summed.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// In the window.
    pub window: u64,
    /// In the baseline.
    pub baseline: u64,
    /// Since the trail began.
    pub total: u64,
    /// Of `total`, those the HSM answered with an error.
    pub failed: u64,
    /// By application and executable, busiest first.
    pub by_application: Vec<ApplicationUsage>,
}

/// Uses of a key by one application and executable.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ApplicationUsage {
    /// The policy's application name (empty when none matched).
    pub application: String,
    /// The executable's path.
    pub exe: String,
    pub window: u64,
    pub baseline: u64,
    pub total: u64,
    /// The last use (unix seconds).
    pub last_at: i64,
}

/// What an anomaly rule found.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    /// An application or executable used the key in the window, none of
    /// whose uses are in the baseline.
    NewApplication,
    /// Uses in an hour of the day (UTC) that has none in the baseline.
    UnusualHour,
    /// Far more uses in the window than the baseline's rate.
    VolumeSpike,
}

/// One anomaly.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Which rule.
    pub kind: AnomalyKind,
    /// The key's token.
    pub token: String,
    /// The key.
    pub key: String,
    /// For [`AnomalyKind::NewApplication`]: the application.
    pub application: Option<String>,
    /// For [`AnomalyKind::NewApplication`]: the executable.
    pub exe: Option<String>,
    /// For [`AnomalyKind::UnusualHour`]: the hour (UTC, 0-23).
    pub hour: Option<u8>,
    /// The uses in the window the finding is about.
    pub uses: u64,
    /// What the rule compared with, for people.
    pub detail: String,
}

/// Export and wrap attempts on a key.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportAttempts {
    /// Refused attempts by what was attempted (`wrapping out`, `a copy`,
    /// `an attribute change`, ...), since the trail began.
    pub refused: Vec<OperationCount>,
    /// Refused attempts in the window.
    pub refused_window: u64,
    /// Successful wraps made with the key (it wrapped another key out).
    pub wraps: u64,
    /// Of those, in the window.
    pub wraps_window: u64,
}

/// A count of one operation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct OperationCount {
    pub operation: String,
    pub count: u64,
}

/// One revocation of a key, from the trail.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The lifecycle record's sequence number.
    pub seq: u64,
    /// The lifecycle action (`revoke`, `compromise`).
    pub action: String,
    /// When the revocation took effect (unix seconds).
    pub effective_at: i64,
    /// When it was requested (unix seconds), if the request is in the trail.
    pub requested_at: Option<i64>,
    /// From request to effect, in microseconds.
    pub latency_us: Option<u64>,
    /// The versions it revoked (empty: every version was checked).
    pub versions: Vec<u32>,
    /// Successful uses of those versions recorded after it.
    pub uses_after: u64,
    /// The first such use's sequence number.
    pub first_use_after: Option<u64>,
    /// `uses_after == 0`: no use succeeded after the revocation.
    pub no_use_after: bool,
}

/// Rotation compliance: the share of active keys that are not overdue.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationCompliance {
    /// Active keys.
    pub active: u32,
    /// Of those, not overdue.
    pub compliant: u32,
    /// The overdue keys (`token/name`).
    pub overdue: Vec<String>,
}

/// Failed administrator actions (admin records with a non-zero result).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedAdmin {
    /// In the window.
    pub window: u64,
    /// In the baseline and the window.
    pub period: u64,
    /// Since the trail began.
    pub total: u64,
    /// The last few, newest first.
    pub last: Vec<AdminFailure>,
}

/// One failed administrator action.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct AdminFailure {
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// The request's name: `key.suspend`, `key.create`, ... (see
    /// [`crate::names`]).
    pub operation: String,
    pub key: Option<String>,
    /// The administrator's uid.
    pub uid: Option<u32>,
    /// Why it failed.
    pub reason: String,
    /// The result value in its record: keyward's own for the kind of
    /// failure (`KEYWARD_REFUSED`, ... see `keyward_policy::rv_name`).
    #[serde(default)]
    pub result: u64,
}

/// Uses of an object the inventory does not manage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UnmanagedUsage {
    pub token: String,
    /// The object's `CKA_LABEL`, or `id:<hex>`.
    pub object: String,
    pub application: String,
    pub window: u64,
    pub total: u64,
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    fn anchor() -> AuditAnchor {
        AuditAnchor {
            seq: 1234,
            head: [0xab; 32],
            created_at: 1_764_000_000,
            signature: vec![0x01, 0x02, 0xfe, 0xff],
        }
    }

    #[test]
    fn an_anchor_line_reads_back() {
        let a = anchor();
        let line = a.to_line();
        assert_eq!(
            line,
            format!(
                "keyward-anchor 1 seq=1234 head={} time=1764000000 sig=0102feff",
                "ab".repeat(32)
            )
        );
        assert_eq!(AuditAnchor::from_line(&line), Ok(a.clone()));
        // Inside a syslog line and a JSON document.
        let syslog = format!("Dec  4 22:00:00 host keyward-agent[42]: {line}");
        assert_eq!(AuditAnchor::from_line(&syslog), Ok(a.clone()));
        let json = format!("{{\"anchor\":\"{line}\",\"created_at\":1764000000,\"seq\":1234}}");
        assert_eq!(AuditAnchor::from_line(&json), Ok(a.clone()));
        let many = format!("# anchors of host a\n{line}\n\n{json}\n");
        assert_eq!(parse_anchors(&many), Ok(vec![a.clone(), a]));
    }

    #[test]
    fn garbage_and_truncated_anchors_are_clear_errors() {
        let line = anchor().to_line();
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "no anchor"),
            ("# only a comment\n".into(), "no anchor"),
            ("hello world\n".into(), "line 1: not an anchor"),
            (format!("{line}\n\u{0}\u{1}binary"), "line 2: not an anchor"),
            (line[..40].to_owned(), "line 1: head is not 64 hex digits"),
            (
                line[..line.find(" time=").unwrap()].to_owned(),
                "line 1: truncated: no time=",
            ),
            (
                line[..line.len() - 1].to_owned(),
                "line 1: sig is not a hex signature",
            ),
            (
                line.replace("seq=1234", "seq=-3"),
                "line 1: seq \"-3\" is not a number",
            ),
            (
                line.replace("seq=1234", "sequence=1234"),
                "line 1: expected seq=",
            ),
            (
                line.replace("head=ab", "head=zz"),
                "line 1: head is not 64 hex digits",
            ),
            (format!("{line}x"), "line 1: sig is not a hex signature"),
            (
                line.replace(" time=", " time=1x "),
                "line 1: time \"1x\" is not a number",
            ),
        ];
        for (text, want) in cases {
            let got = parse_anchors(&text).expect_err(&text);
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
    }
}

#[cfg(test)]
mod hello_tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Runs [`hello`] against a fake agent that reads the hello and answers
    /// `answer` (or hangs up on `None`).
    fn against(answer: Option<AdminResponse>) -> (AdminRequest, Result<AdminHello, HelloError>) {
        let (mut client, mut agent) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let req: AdminRequest = read_message(&mut agent, &mut buf).unwrap();
            if let Some(a) = answer {
                write_message(&mut agent, &a, &mut buf).unwrap();
            }
            req
        });
        let got = hello(&mut client, &mut Vec::new());
        (fake.join().unwrap(), got)
    }

    #[test]
    fn the_hello_announces_this_build_and_takes_the_agreed_version() {
        let (req, got) = against(Some(AdminResponse::Hello(AdminHello {
            version: ADMIN_VERSIONS.max,
            agent_version: "0.9.0".into(),
        })));
        assert_eq!(
            req,
            AdminRequest::Hello {
                versions: ADMIN_VERSIONS
            }
        );
        assert_eq!(got.unwrap().version, ADMIN_VERSIONS.max);
    }

    #[test]
    fn an_agent_without_a_common_version_is_named_with_what_to_upgrade() {
        let newer = VersionRange {
            min: ADMIN_VERSIONS.max + 1,
            max: ADMIN_VERSIONS.max + 2,
        };
        let (_, got) = against(Some(AdminResponse::NoCommonVersion(VersionRefusal {
            versions: newer,
            agent_version: "9.0.0".into(),
        })));
        let text = got.unwrap_err().to_string();
        assert!(text.contains("keyward-agent 9.0.0 speaks"), "{text}");
        assert!(
            text.contains(&format!("this keyward speaks {ADMIN_VERSIONS}")),
            "{text}"
        );
        assert!(text.contains("upgrade this keyward"), "{text}");
        let older = VersionRange::only(ADMIN_VERSIONS.min - 1);
        let (_, got) = against(Some(AdminResponse::NoCommonVersion(VersionRefusal {
            versions: older,
            agent_version: "0.0.1".into(),
        })));
        let text = got.unwrap_err().to_string();
        assert!(text.contains("upgrade keyward-agent 0.0.1"), "{text}");
    }

    #[test]
    fn an_agent_that_hangs_up_or_refuses_is_told_apart() {
        let (_, got) = against(None);
        let e = got.unwrap_err();
        assert!(matches!(e, HelloError::Closed), "{e:?}");
        assert!(e.to_string().contains("upgrade keyward-agent"), "{e}");
        let (_, got) = against(Some(AdminResponse::Err("not an administrator".into())));
        let e = got.unwrap_err();
        assert!(matches!(e, HelloError::Agent(_)), "{e:?}");
        assert!(e.to_string().contains("not an administrator"), "{e}");
        // A version it did not announce is no agreement.
        let (_, got) = against(Some(AdminResponse::Hello(AdminHello {
            version: ADMIN_VERSIONS.max + 1,
            agent_version: "x".into(),
        })));
        assert!(matches!(got, Err(HelloError::Unexpected(_))), "{got:?}");
    }

    #[test]
    fn the_agent_answers_the_highest_common_version_or_its_own_range() {
        let wide = VersionRange {
            min: 1,
            max: ADMIN_VERSIONS.max + 5,
        };
        let (answer, m) = answer_hello(wide, "1.2.3");
        assert!(m.is_none());
        assert_eq!(
            answer,
            AdminResponse::Hello(AdminHello {
                version: ADMIN_VERSIONS.max,
                agent_version: "1.2.3".into()
            })
        );
        let newer = VersionRange::only(ADMIN_VERSIONS.max + 1);
        let (answer, m) = answer_hello(newer, "1.2.3");
        assert_eq!(m.map(|m| m.theirs), Some(newer));
        assert_eq!(
            answer,
            AdminResponse::NoCommonVersion(VersionRefusal {
                versions: ADMIN_VERSIONS,
                agent_version: "1.2.3".into()
            })
        );
    }

    #[test]
    fn a_keyward_speaking_3_and_a_newer_agent_say_which_to_upgrade() {
        assert_eq!(ADMIN_VERSIONS, VersionRange::only(9));
        let three = VersionRange::only(3);
        // The agent refuses a keyward that speaks 3 ...
        let (answer, m) = answer_hello(three, "0.4.0");
        assert_eq!(m.map(|m| m.theirs), Some(three));
        let AdminResponse::NoCommonVersion(refusal) = answer else {
            panic!("{answer:?}");
        };
        // ... and that keyward, reading the refusal, is told to upgrade.
        let text = refusal
            .mismatch(three)
            .explain("admin", "this keyward", "keyward-agent 0.4.0");
        assert!(text.contains("upgrade this keyward"), "{text}");
        // An agent speaking 3 refuses this keyward's hello: upgrade it.
        let (_, got) = against(Some(AdminResponse::NoCommonVersion(VersionRefusal {
            versions: three,
            agent_version: "0.3.0".into(),
        })));
        let text = got.unwrap_err().to_string();
        assert!(text.contains("upgrade keyward-agent 0.3.0"), "{text}");
        // An agent older than the hello hangs up: that text names 3.
        let text = HelloError::Closed.to_string();
        assert!(text.contains("older than admin protocol 3"), "{text}");
    }

    #[test]
    fn keys_travel_typed_and_read_as_their_names_in_json() {
        let key = KeyInfo {
            name: "web-tls".into(),
            token: "prod".into(),
            owner: "alice".into(),
            purpose: Purpose::Signing,
            class: "tls-server".into(),
            algorithm: "ec:p256".parse().unwrap(),
            state: KeyState::PreActivation,
            created_at: 1,
            activated_at: None,
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: Vec::new(),
            last_used_at: None,
            backup_allowed: false,
            versions: vec![VersionInfo {
                version: 1,
                backend_id: vec![1],
                state: KeyState::Active,
                created_at: 1,
                deactivated_at: None,
                destroyed_at: None,
            }],
            grants: vec![GrantInfo {
                key: "web-tls".into(),
                application: "nginx".into(),
                operations: vec![Operation::Sign, Operation::Verify],
                expires_at: None,
                source: "key".into(),
            }],
            history: vec![HistoryEntry {
                at: 1,
                version: None,
                from: Some(KeyState::PreActivation),
                to: KeyState::Compromised,
                actor: "alice".into(),
                reason: "stolen".into(),
            }],
            recovery_until: Some(2),
            held_by_backups: Vec::new(),
            certificates: Vec::new(),
            reason_code: Some(ReasonCode::KeyCompromise),
        };
        let wire = postcard::to_allocvec(&key).unwrap();
        assert_eq!(postcard::from_bytes::<KeyInfo>(&wire).unwrap(), key);
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(json["purpose"], "signing");
        assert_eq!(json["algorithm"], "ec:p256");
        assert_eq!(json["state"], "pre-activation");
        assert_eq!(json["versions"][0]["state"], "active");
        assert_eq!(json["history"][0]["from"], "pre-activation");
        assert_eq!(json["history"][0]["to"], "compromised");
        assert_eq!(json["grants"][0]["operations"][1], "verify");
        assert_eq!(json["reason_code"], "keyCompromise");
        let request = ApprovalRequest {
            id: "00ff".into(),
            action: "resume".into(),
            target: "prod/web-tls".into(),
            requester: "alice".into(),
            created_at: 1,
            expires_at: 2,
            status: ApprovalStatus::Pending,
            reason: "laptop found".into(),
            parameters: "{}".into(),
            needed: 1,
            decisions: vec![DecisionInfo {
                administrator: "bob".into(),
                decision: Decision::Deny,
                at: 2,
            }],
            outcome: String::new(),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["status"], "pending");
        assert_eq!(json["decisions"][0]["decision"], "deny");
        let wire = postcard::to_allocvec(&request).unwrap();
        assert_eq!(
            postcard::from_bytes::<ApprovalRequest>(&wire).unwrap(),
            request
        );
        let list = AdminRequest::Key(KeyRequest::List {
            token: None,
            state: Some(KeyState::Suspended),
        });
        let wire = postcard::to_allocvec(&list).unwrap();
        assert_eq!(postcard::from_bytes::<AdminRequest>(&wire).unwrap(), list);
    }

    #[test]
    fn the_text_for_an_old_keyward_says_to_upgrade_it() {
        let text = hello_first("0.2.0");
        assert!(
            text.contains("keyward-agent 0.2.0 speaks admin protocol"),
            "{text}"
        );
        assert!(text.ends_with("upgrade keyward"), "{text}");
    }
}
