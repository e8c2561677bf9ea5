//! The audit trail: append-only, hash-chained with SHA-256, sealed by
//! checkpoints that the agent signs with an audit key held in the HSM.
//!
//! # What callers put in an event
//!
//! An [`AuditEvent`] is kept forever and shown to anyone who may read the
//! trail. **Callers must never put a PIN, a key's value, or any other secret
//! in any field** (not in `reason` either: describe a wrong PIN as "PIN
//! incorrect", never quote it). The store cannot tell a secret from text.
//!
//! # The chain
//!
//! Records are numbered from 1 (`seq`, no gaps). Each stores
//! `hash = SHA-256(prev_hash || seq as u64 BE || canonical(event))`, where
//! `prev_hash` is the previous record's `hash` and, for record 1, the
//! trail's *genesis*: 32 random bytes made once when the tables are created
//! (`audit_meta`). [`canonical`] is the byte encoding below. The head at seq
//! 0 (the empty trail) is the genesis.
//!
//! Why a random genesis rather than 32 zero bytes: every head hash then
//! commits to *this* trail. Two stores whose first events happen to be equal
//! (two hosts starting the same way, a store re-created after a reinstall)
//! never share a head, so a checkpoint signed for one can never seal the
//! other, even when both use the same HSM audit key. The genesis is not a
//! secret (root can read it); it is an identity that the agent can later
//! pin outside the host.
//!
//! # The canonical encoding (formats 1, 2 and 3)
//!
//! Fixed field order; `str` is a `u32` BE byte length then UTF-8 bytes;
//! integers are big-endian; `opt<T>` is `0x00` (absent) or `0x01` then `T`.
//!
//! ```text
//! u8 format (= 1)
//! i64 at, u32 micros
//! str kind                       (AuditKind::as_str)
//! str actor                      (application | administrator | agent | scheduler)
//!   application:   str name, u32 uid, u32 gid, u32 pid, str exe
//!   administrator: u32 uid, u32 pid, str exe
//!   agent, scheduler: nothing
//! opt<str> token, opt<str> key, opt<u32> key_version
//! str operation
//! opt<u64> mechanism
//! u64 result
//! str reason
//! ```
//!
//! A coalesced record (`count` > 1 or `span_us` > 0, see [`coalesce`]) is
//! format 2: the same fields after a `2`, then `u32 count, u32 span_us`.
//! A single event keeps format 1, so trails written before coalescing
//! existed verify unchanged.
//!
//! A record written into a trail several agents share (the fleet's
//! PostgreSQL store) carries its agent's host identity: format 3, format
//! 2's fields after a `3` (count and span always present), then `str host`.
//! The host is hashed with the rest, so no record can be moved to another
//! agent's name unnoticed.
//!
//! # Coalesced uses
//!
//! Uses arrive by the ten thousand per second; one record each would cost
//! the writer more than the operations. [`coalesce`] folds the uses of one
//! batch (at most a few hundred milliseconds of them) that are equal in
//! everything but time into one record with their `count` and the `span_us`
//! from the first to the last. Nothing is lost: every use is counted, by
//! process, key version, operation, mechanism and result, and the chain
//! keeps the order of batches, which are always appended before any
//! lifecycle or admin event that follows them.
//!
//! # Checkpoints
//!
//! A checkpoint seals the trail up to `seq`: the agent signs
//! [`checkpoint_message`]`(seq, head, created_at)` with the HSM audit key and
//! stores it with [`AuditLog::checkpoint`]. Because every head commits to
//! every earlier record (and to the genesis), someone with root but without
//! the HSM key can neither re-chain the records under a checkpoint nor
//! forge a new checkpoint. What no store can detect alone: the whole file
//! rolled back to an older genuine copy, or the records after the last
//! checkpoint (the unsealed tail, [`VerifyReport::unsealed`]) cut off. Nor
//! can it detect records cut off *together with* the checkpoints that
//! sealed them (a rollback past sealed checkpoints: what is left is an older
//! genuine state), or a trail re-chained and re-signed by someone who can
//! use the audit key (root holding the backend PIN).
//!
//! # Anchors
//!
//! What catches those is a witness kept off the host: an [`Anchor`], a
//! checkpoint's head (seq, head, time, signature) that the administrator
//! stored elsewhere (the agent also ships each one to syslog).
//! [`AuditLog::verify_anchored`] proves the trail still holds every anchored
//! head: the record at the anchor's seq exists, its recomputed chain head
//! is the anchored one, and the chain from there on is intact. A trail
//! rolled back past an anchor fails ([`Problem::AnchorMissing`]), and so
//! does one re-chained below it, even when re-signed with the genuine key
//! ([`Problem::AnchorMismatch`]): the anchored hash commits to every
//! record up to it, and no one can make a different chain reach it.
//!
//! # Time
//!
//! `at` is unix seconds (UTC, as everywhere in the inventory) and `micros`
//! the microseconds within that second (0..1 000 000): enough to order and
//! correlate events across logs, without claiming the clock's nanoseconds.
//! The order of the trail is `seq`, never time.
//!
//! # Layout
//!
//! This file is the trail with no storage: the event and its canonical
//! encoding, the hash chain, the checkpoint message, the checks an event
//! must pass, and the [`AuditLog`] trait. `verify` judges a walked chain;
//! [`SqliteInventory`](crate::sqlite::SqliteInventory) stores the trail,
//! and [`PgInventory`](crate::postgres::PgInventory) the fleet's shared one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::usage::UsageLog;

pub type Hash = [u8; 32];

/// How the reason of an admin record that notes a request (before the
/// action runs) begins; the outcome follows in a second record.
pub const REQUESTED: &str = "requested: ";

/// The first byte of [`canonical`] for a single event; a later format gets
/// a new number.
pub const EVENT_FORMAT: u8 = 1;
/// The first byte of [`canonical`] for a coalesced event (`count` > 1 or
/// `span_us` > 0): format 1's fields, then `count` and `span_us`.
pub const EVENT_FORMAT_COALESCED: u8 = 2;
/// The first byte of [`canonical_on`] for a record with a host: format 2's
/// fields, then the host.
pub const EVENT_FORMAT_HOSTED: u8 = 3;

/// Domain tag that opens every [`checkpoint_message`], so that a signature
/// made by the audit key for a checkpoint means nothing anywhere else.
const CHECKPOINT_DOMAIN: &[u8] = b"keyward-audit-checkpoint\0";
/// The version byte after [`CHECKPOINT_DOMAIN`].
const CHECKPOINT_FORMAT: u8 = 1;

/// The longest string field accepted (bytes): an executable path is at most
/// `PATH_MAX` (4096); reasons should be a sentence, not a dump.
pub const MAX_FIELD_LEN: usize = 8192;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// A cryptographic use of a key, successful or not.
    Use,
    /// A request refused by policy, with its reason.
    Refusal,
    /// A key or version changed lifecycle state.
    Lifecycle,
    /// A grant added, changed or removed.
    Grant,
    /// The policy loaded or changed.
    Policy,
    /// A login, successful or failed.
    Login,
    /// A token's user PIN locked (or unlocked).
    PinLockout,
    /// A discovery finding (an unmanaged key, a device).
    Discovery,
    /// An administrator's command.
    Admin,
    /// The agent started, stopped or reloaded its configuration.
    Agent,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: [AuditKind; 10] = [
        AuditKind::Use,
        AuditKind::Refusal,
        AuditKind::Lifecycle,
        AuditKind::Grant,
        AuditKind::Policy,
        AuditKind::Login,
        AuditKind::PinLockout,
        AuditKind::Discovery,
        AuditKind::Admin,
        AuditKind::Agent,
    ];

    /// The stored, hashed and displayed name: `use`, `pin-lockout`, ...
    /// Part of the canonical encoding: never rename one.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Use => "use",
            AuditKind::Refusal => "refusal",
            AuditKind::Lifecycle => "lifecycle",
            AuditKind::Grant => "grant",
            AuditKind::Policy => "policy",
            AuditKind::Login => "login",
            AuditKind::PinLockout => "pin-lockout",
            AuditKind::Discovery => "discovery",
            AuditKind::Admin => "admin",
            AuditKind::Agent => "agent",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<AuditKind> {
        AuditKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Data(format!("unknown audit event kind {s:?}")))
    }
}

/// Who caused the event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Actor {
    /// A client process. `name` is the policy's application it matched
    /// (empty when it matched none); the rest is from its peer credentials.
    Application {
        name: String,
        uid: u32,
        gid: u32,
        pid: u32,
        exe: String,
    },
    /// A person on the admin socket (the `keyward` CLI).
    Administrator { uid: u32, pid: u32, exe: String },
    /// The agent itself (start, stop, reload, checkpoints).
    Agent,
    /// The agent's scheduler (rotations, expiries).
    Scheduler,
}

impl Actor {
    /// The stored and hashed name of the variant.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Actor::Application { .. } => "application",
            Actor::Administrator { .. } => "administrator",
            Actor::Agent => "agent",
            Actor::Scheduler => "scheduler",
        }
    }
}

/// One audit event. Plain data; see the module docs for the rule that no
/// field ever holds a PIN or key material.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds (UTC).
    pub at: i64,
    /// Microseconds within `at`'s second, below 1 000 000.
    pub micros: u32,
    pub kind: AuditKind,
    pub actor: Actor,
    /// The virtual token, when the event concerns one.
    pub token: Option<String>,
    /// The key's name, when the event concerns a key.
    pub key: Option<String>,
    /// The key version, when known.
    pub key_version: Option<u32>,
    /// What was done: `C_Sign`, `rotate`, `login`, `start`, ... Not empty.
    pub operation: String,
    /// The `CKM_*` mechanism, for cryptographic operations.
    pub mechanism: Option<u64>,
    /// The `CK_RV` answered (0 = `CKR_OK`).
    pub result: u64,
    /// Why (a refusal's reason, an admin's stated reason); may be empty.
    pub reason: String,
    /// How many equal events this record stands for (see [`coalesce`]); 1
    /// for a single event, never 0.
    #[serde(default = "one")]
    pub count: u32,
    /// Microseconds from the first of them (`at`, `micros`) to the last;
    /// 0 for a single event.
    #[serde(default)]
    pub span_us: u32,
}

fn one() -> u32 {
    1
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The agent that wrote it, in a trail several agents share (`None`:
    /// a single agent's trail). Hashed with the event (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

/// A signed seal over the trail up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered (0: the empty trail).
    pub seq: u64,
    /// The chain head at `seq` (record `seq`'s hash; the genesis at 0).
    #[serde(with = "hex_hash")]
    pub head: Hash,
    /// Unix seconds; part of the signed message.
    pub created_at: i64,
    /// The audit key's signature over [`checkpoint_message`].
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// Which key signed (its label or id), so a verifier can pick it.
    pub signer: String,
}

/// A checkpoint's head kept off the host (see the module docs): what
/// [`AuditLog::verify_anchored`] proves the trail still contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The checkpoint's seq (0: the empty trail, anchored at its genesis).
    pub seq: u64,
    /// The chain head at `seq`.
    #[serde(with = "hex_hash")]
    pub head: Hash,
    /// The checkpoint's time (unix seconds), part of the signed message.
    pub created_at: i64,
    /// The audit key's signature over [`checkpoint_message`].
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl From<&Checkpoint> for Anchor {
    fn from(cp: &Checkpoint) -> Anchor {
        Anchor {
            seq: cp.seq,
            head: cp.head,
            created_at: cp.created_at,
            signature: cp.signature.clone(),
        }
    }
}

/// Which results [`AuditFilter`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultFilter {
    #[default]
    Any,
    /// `result == CKR_OK`.
    Ok,
    /// Any other result: refusals and failures.
    Denied,
}

/// What [`AuditLog::query`] selects. Every condition given must hold;
/// `None` (an empty `kinds`) does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The key's name.
    pub key: Option<String>,
    pub token: Option<String>,
    /// The application's name (administrator and agent events never match).
    pub application: Option<String>,
    /// Events at or after this unix second.
    pub since: Option<i64>,
    /// Events before this unix second.
    pub until: Option<i64>,
    pub result: ResultFilter,
    pub kinds: Vec<AuditKind>,
    /// Only records with a greater `seq` (what `tail --follow` has not seen).
    pub after_seq: Option<u64>,
    /// At most this many records (the first ones, by `seq`).
    pub limit: Option<u64>,
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read (the walk stops at the first bad one).
    pub records: u64,
    /// The highest seq stored (0: none), whether or not the walk reached it.
    pub head_seq: u64,
    /// Checkpoints that verified.
    pub checkpoints_ok: u64,
    /// The seq the last good checkpoint covers (0: none).
    pub sealed_through: u64,
    /// Records after `sealed_through`: correct as a chain, but a tail cut
    /// there would go unnoticed until the next checkpoint.
    pub unsealed: u64,
    /// Anchors given to [`AuditLog::verify_anchored`] that the trail holds.
    pub anchors_ok: u64,
    /// The first record that is not what was written, and why.
    pub first_bad: Option<BadRecord>,
}

impl VerifyReport {
    /// No bad record.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// The first bad record: its seq and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub seq: u64,
    pub problem: Problem,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.seq, self.problem)
    }
}

/// What is wrong at [`BadRecord::seq`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record's content does not hash to its stored hash.
    Edited,
    /// Records `seq..=through` are missing.
    Deleted { through: u64 },
    /// The record at `next` was written under seq `seq`: records
    /// `seq..next` were inserted (and well chained) before it, and the rest
    /// renumbered.
    Inserted { next: u64 },
    /// The record holds one written under seq `written_as` (later):
    /// reordered, or records deleted before it and the rest renumbered.
    Moved { written_as: u64 },
    /// Record `seq + 1` is intact but was chained to another record than
    /// this one: this one was replaced, or edited and re-hashed.
    Replaced,
    /// Record 1 is not chained to the trail's genesis (genesis changed, or
    /// the first record replaced), or the genesis is missing.
    Genesis,
    /// A stored value does not decode (a column edited to nonsense).
    Undecodable(String),
    /// A genuine checkpoint covers seq `checkpoint` but the trail ends
    /// before: the tail was cut.
    Truncated { checkpoint: u64 },
    /// The chain recomputed at seq `checkpoint` is not the head the
    /// checkpoint signed: records up to it were rewritten and re-chained.
    Rewritten { checkpoint: u64 },
    /// The checkpoint at seq `checkpoint` does not verify with the audit
    /// key: forged (typically to seal a re-chained trail).
    BadSignature { checkpoint: u64 },
    /// An anchor kept off the host names seq `anchor`, but the trail ends
    /// before it: rolled back (records cut off with their checkpoints).
    AnchorMissing { anchor: u64 },
    /// The chain at seq `anchor` is not the head anchored off the host: the
    /// trail up to it was rewritten and re-chained (and maybe re-signed).
    AnchorMismatch { anchor: u64 },
    /// The anchor at seq `anchor` is not signed by the audit key the
    /// verifier holds: the audit key was replaced, or the anchor belongs
    /// to another trail (or was altered).
    AnchorBadSignature { anchor: u64 },
}

impl Problem {
    /// Whether the problem is an anchor the trail no longer holds (a
    /// rollback or a rewrite that only an anchor off the host can show).
    pub fn is_anchor(&self) -> bool {
        matches!(
            self,
            Problem::AnchorMissing { .. }
                | Problem::AnchorMismatch { .. }
                | Problem::AnchorBadSignature { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited => f.write_str("content does not match its hash: edited"),
            Problem::Deleted { through } => write!(f, "missing through {through}: deleted"),
            Problem::Inserted { next } => write!(
                f,
                "inserted: the record now at {next} was written with this seq, \
                 so the records from here up to it were inserted"
            ),
            Problem::Moved { written_as } => write!(
                f,
                "holds the record written as {written_as}: reordered, or records \
                 before it deleted and the rest renumbered"
            ),
            Problem::Replaced => f.write_str(
                "the next record was chained to a different record here: \
                 replaced, or edited and re-hashed",
            ),
            Problem::Genesis => f.write_str("not chained to the trail's genesis"),
            Problem::Undecodable(what) => write!(f, "stored values do not decode ({what}): edited"),
            Problem::Truncated { checkpoint } => write!(
                f,
                "missing, though the checkpoint at {checkpoint} covers it: tail truncated"
            ),
            Problem::Rewritten { checkpoint } => write!(
                f,
                "the chain at {checkpoint} differs from the head its checkpoint signed: \
                 a record from here through {checkpoint} was rewritten and the chain recomputed"
            ),
            Problem::BadSignature { checkpoint } => write!(
                f,
                "the checkpoint at {checkpoint} is not signed by the audit key: forged; \
                 records from here through {checkpoint} are unproven"
            ),
            Problem::AnchorMissing { anchor } => write!(
                f,
                "missing, though an anchor kept off the host holds the head at {anchor}: \
                 the trail was rolled back past the anchor"
            ),
            Problem::AnchorMismatch { anchor } => write!(
                f,
                "the chain at {anchor} differs from the head anchored off the host: \
                 records through {anchor} were rewritten and the chain recomputed \
                 (re-signed or not)"
            ),
            Problem::AnchorBadSignature { anchor } => write!(
                f,
                "the anchor at {anchor} is not signed by the current audit key: \
                 the audit key was replaced, or the anchor is of another trail or altered"
            ),
        }
    }
}

/// The audit trail's store. Implemented by
/// [`SqliteInventory`](crate::sqlite::SqliteInventory) in the same database
/// file as the inventory, so the agent holds one store, and by
/// [`PgInventory`](crate::postgres::PgInventory) in the fleet's shared
/// database (one chain for every agent, each record with its host).
pub trait AuditLog: UsageLog + Send + Sync {
    /// Appends `events` in order, chained, in one transaction; returns the
    /// last seq (the head's seq when `events` is empty). `durable`: on disk
    /// before the call returns (lifecycle and admin events); otherwise
    /// committed without a sync (batches of use events), made durable by
    /// the next durable write or the engine's own flush (SQLite's WAL
    /// checkpoint, PostgreSQL's WAL writer), and never torn: a crash loses
    /// whole batches from the end, not part of one.
    ///
    /// [`Error::Invalid`] for an event with an empty operation, `micros`
    /// out of range or a field over [`MAX_FIELD_LEN`]; nothing is written.
    fn append(&self, events: &[AuditEvent], durable: bool) -> Result<u64>;

    /// The last record's seq and hash; `(0, genesis)` for an empty trail.
    /// What a checkpoint signs.
    fn head(&self) -> Result<(u64, Hash)>;

    /// Stores a signed checkpoint (durably). [`Error::Conflict`] when
    /// `head` is not the stored hash at `seq` or an earlier seq than the
    /// last checkpoint's; [`Error::Invalid`] for a seq past the head or an
    /// empty signature or signer. The signature itself is not checked here:
    /// the store holds no key.
    fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<()>;

    /// Every checkpoint, by seq.
    fn checkpoints(&self) -> Result<Vec<Checkpoint>>;

    /// The newest checkpoint, when there is one.
    fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoints()?.pop())
    }

    /// The last `n` records, oldest first.
    fn tail(&self, n: usize) -> Result<Vec<AuditRecord>>;

    /// The records that match `filter`, by seq.
    fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Recomputes the whole chain from the genesis and checks every
    /// checkpoint: `check_signature(message, signature)` must say whether
    /// the audit key signed `message` (a [`checkpoint_message`]). Reads one
    /// consistent snapshot, without blocking writers.
    ///
    /// Errors only when the store cannot be read; tampering is reported in
    /// [`VerifyReport::first_bad`].
    fn verify(&self, check_signature: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<VerifyReport> {
        self.verify_anchored(check_signature, &[])
    }

    /// [`AuditLog::verify`], and also proves that the trail holds every
    /// anchor in `anchors` (heads kept off the host, in any order): each
    /// anchor's signature verifies, the trail reaches its seq, and the
    /// recomputed head there is the anchored one. The first record that
    /// breaks any of these (in seq order) is [`VerifyReport::first_bad`];
    /// anchors past the trail's end are [`Problem::AnchorMissing`].
    fn verify_anchored(
        &self,
        check_signature: &dyn Fn(&[u8], &[u8]) -> bool,
        anchors: &[Anchor],
    ) -> Result<VerifyReport>;
}

// ---- encoding ----------------------------------------------------------------

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Fields are checked against MAX_FIELD_LEN before they are stored; a
    // longer one (only from a hand-edited row) still encodes unambiguously.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

/// The canonical bytes of `event` (format [`EVENT_FORMAT`], laid out in the
/// module docs): the input of the record hash.
pub fn canonical(event: &AuditEvent) -> Vec<u8> {
    canonical_on(event, None)
}

/// The canonical bytes of `event` written by the agent `host` (format
/// [`EVENT_FORMAT_HOSTED`] when there is one).
pub fn canonical_on(event: &AuditEvent, host: Option<&str>) -> Vec<u8> {
    let coalesced = host.is_some() || event.count != 1 || event.span_us != 0;
    let mut out = Vec::with_capacity(136 + event.reason.len());
    out.push(if host.is_some() {
        EVENT_FORMAT_HOSTED
    } else if coalesced {
        EVENT_FORMAT_COALESCED
    } else {
        EVENT_FORMAT
    });
    out.extend_from_slice(&event.at.to_be_bytes());
    out.extend_from_slice(&event.micros.to_be_bytes());
    put_str(&mut out, event.kind.as_str());
    put_str(&mut out, event.actor.kind_str());
    match &event.actor {
        Actor::Application {
            name,
            uid,
            gid,
            pid,
            exe,
        } => {
            put_str(&mut out, name);
            out.extend_from_slice(&uid.to_be_bytes());
            out.extend_from_slice(&gid.to_be_bytes());
            out.extend_from_slice(&pid.to_be_bytes());
            put_str(&mut out, exe);
        }
        Actor::Administrator { uid, pid, exe } => {
            out.extend_from_slice(&uid.to_be_bytes());
            out.extend_from_slice(&pid.to_be_bytes());
            put_str(&mut out, exe);
        }
        Actor::Agent | Actor::Scheduler => {}
    }
    put_opt(&mut out, event.token.as_deref(), put_str);
    put_opt(&mut out, event.key.as_deref(), put_str);
    put_opt(&mut out, event.key_version, |o, v| {
        o.extend_from_slice(&v.to_be_bytes())
    });
    put_str(&mut out, &event.operation);
    put_opt(&mut out, event.mechanism, |o, v| {
        o.extend_from_slice(&v.to_be_bytes())
    });
    out.extend_from_slice(&event.result.to_be_bytes());
    put_str(&mut out, &event.reason);
    if coalesced {
        out.extend_from_slice(&event.count.to_be_bytes());
        out.extend_from_slice(&event.span_us.to_be_bytes());
    }
    if let Some(host) = host {
        put_str(&mut out, host);
    }
    out
}

/// Folds equal uses in `events` (one batch, in order) into one record each:
/// [`AuditKind::Use`] events whose fields other than time are equal become
/// the first of them with `count` summed and `span_us` reaching the last.
/// Every other event stays as it is. Records keep the order of their first
/// event.
pub fn coalesce(events: Vec<AuditEvent>) -> Vec<AuditEvent> {
    use std::collections::hash_map::Entry;
    use std::collections::HashMap;
    if events.len() < 2 {
        return events;
    }
    // The identity of a use: everything but time, count and span.
    type Identity<'a> = (
        &'a Actor,
        Option<&'a str>,
        Option<&'a str>,
        Option<u32>,
        &'a str,
        Option<u64>,
        u64,
        &'a str,
    );
    fn identity(e: &AuditEvent) -> Identity<'_> {
        (
            &e.actor,
            e.token.as_deref(),
            e.key.as_deref(),
            e.key_version,
            &e.operation,
            e.mechanism,
            e.result,
            &e.reason,
        )
    }
    fn micros_of(e: &AuditEvent) -> i128 {
        i128::from(e.at) * 1_000_000 + i128::from(e.micros)
    }
    // Slot of each event in the output (by index), then the merge.
    let mut first: HashMap<Identity<'_>, usize> = HashMap::new();
    let mut into: Vec<Option<usize>> = Vec::with_capacity(events.len());
    let mut kept = 0usize;
    for e in &events {
        if e.kind != AuditKind::Use {
            into.push(None);
            kept += 1;
            continue;
        }
        match first.entry(identity(e)) {
            Entry::Occupied(o) => into.push(Some(*o.get())),
            Entry::Vacant(v) => {
                v.insert(into.len());
                into.push(None);
                kept += 1;
            }
        }
    }
    drop(first);
    if kept == events.len() {
        return events;
    }
    let mut out: Vec<Option<AuditEvent>> = events.into_iter().map(Some).collect();
    for i in 0..out.len() {
        let Some(target) = into[i] else { continue };
        let Some(e) = out[i].take() else { continue };
        if let Some(t) = out[target].as_mut() {
            t.count = t.count.saturating_add(e.count);
            let end = micros_of(&e) + i128::from(e.span_us);
            let span = (end - micros_of(t)).clamp(0, i128::from(u32::MAX));
            t.span_us = t.span_us.max(span as u32);
        }
    }
    out.into_iter().flatten().collect()
}

/// `SHA-256(prev || seq as u64 BE || canonical(event))`.
pub fn record_hash(prev: &Hash, seq: u64, event: &AuditEvent) -> Hash {
    record_hash_on(prev, seq, event, None)
}

/// [`record_hash`] of a record written by the agent `host`.
pub fn record_hash_on(prev: &Hash, seq: u64, event: &AuditEvent, host: Option<&str>) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(canonical_on(event, host));
    h.finalize().into()
}

/// The bytes the audit key signs for a checkpoint:
/// `"keyward-audit-checkpoint\0" || 0x01 || seq u64 BE || head (32) ||
/// created_at i64 BE`. Fixed length (74 bytes), so unambiguous.
pub fn checkpoint_message(seq: u64, head: &Hash, created_at: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 1 + 8 + 32 + 8);
    out.extend_from_slice(CHECKPOINT_DOMAIN);
    out.push(CHECKPOINT_FORMAT);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&created_at.to_be_bytes());
    out
}

pub(crate) fn check_field(what: &str, value: &str) -> Result<()> {
    if value.len() > MAX_FIELD_LEN {
        return Err(Error::Invalid(format!(
            "audit {what} is {} bytes (at most {MAX_FIELD_LEN})",
            value.len()
        )));
    }
    Ok(())
}

/// Checks one event as [`AuditLog::append`] does.
fn validate(e: &AuditEvent) -> Result<()> {
    if e.operation.is_empty() {
        return Err(Error::Invalid("audit operation is empty".into()));
    }
    if e.micros >= 1_000_000 {
        return Err(Error::Invalid(format!(
            "audit micros {} is not below 1000000",
            e.micros
        )));
    }
    if e.count == 0 {
        return Err(Error::Invalid("audit count is 0".into()));
    }
    check_field("operation", &e.operation)?;
    check_field("reason", &e.reason)?;
    for (what, v) in [("token", &e.token), ("key", &e.key)] {
        if let Some(v) = v {
            check_field(what, v)?;
        }
    }
    match &e.actor {
        Actor::Application { name, exe, .. } => {
            check_field("application name", name)?;
            check_field("executable", exe)
        }
        Actor::Administrator { exe, .. } => check_field("executable", exe),
        Actor::Agent | Actor::Scheduler => Ok(()),
    }
}

/// Checks `events` as [`AuditLog::append`] does.
pub(crate) fn validate_all(events: &[AuditEvent]) -> Result<()> {
    events.iter().try_for_each(validate)
}

/// `Hash` as a lowercase hex string in JSON.
mod hex_hash {
    use serde::{Deserializer, Serializer};

    use super::Hash;

    pub(super) fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let bytes = super::hex_bytes::deserialize(d)?;
        Hash::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom(format!("hash of {} bytes", bytes.len())))
    }
}

/// Bytes as a lowercase hex string in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(|e| serde::de::Error::custom(format!("invalid hex: {e}")))
    }
}
