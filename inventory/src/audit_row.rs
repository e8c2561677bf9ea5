//! An audit record as both stores keep it: one row of the `audit` table's
//! columns, in the order of the stores' column lists (`seq, at, micros,
//! kind, actor, actor_name, uid, gid, pid, exe, token, key_name,
//! key_version, operation, mechanism, result, reason, prev_hash, hash,
//! count, span_us, host`), as plain values. Each store reads its engine's
//! row into an [`AuditRow`] and writes one out of it; the judgement of
//! what a row may hold is here, once.

use crate::audit::{Actor, AuditEvent, AuditRecord, Hash};
use crate::error::Error;

/// Bits of a `u64` as the engines' signed 64-bit integer, and back
/// (CKM/CKR vendor values keep their bits).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// See [`to_i64`].
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// The columns of one audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditRow<'a> {
    pub seq: i64,
    pub at: i64,
    pub micros: i64,
    pub kind: &'a str,
    pub actor: &'a str,
    pub actor_name: Option<&'a str>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub pid: Option<i64>,
    pub exe: Option<&'a str>,
    pub token: Option<&'a str>,
    pub key: Option<&'a str>,
    pub key_version: Option<i64>,
    pub operation: &'a str,
    pub mechanism: Option<i64>,
    pub result: i64,
    pub reason: &'a str,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub count: i64,
    pub span_us: i64,
    pub host: Option<&'a str>,
}

impl<'a> AuditRow<'a> {
    /// The row of `e` at `seq`, linked from `prev` with `hash`, written by
    /// `host`.
    pub(crate) fn of(
        seq: u64,
        e: &'a AuditEvent,
        prev: &'a Hash,
        hash: &'a Hash,
        host: Option<&'a str>,
    ) -> AuditRow<'a> {
        let (actor_name, uid, gid, pid, exe) = match &e.actor {
            Actor::Application {
                name,
                uid,
                gid,
                pid,
                exe,
            } => (
                Some(name.as_str()),
                Some(i64::from(*uid)),
                Some(i64::from(*gid)),
                Some(i64::from(*pid)),
                Some(exe.as_str()),
            ),
            Actor::Administrator { uid, pid, exe } => (
                None,
                Some(i64::from(*uid)),
                None,
                Some(i64::from(*pid)),
                Some(exe.as_str()),
            ),
            Actor::Agent | Actor::Scheduler => (None, None, None, None, None),
        };
        AuditRow {
            seq: to_i64(seq),
            at: e.at,
            micros: i64::from(e.micros),
            kind: e.kind.as_str(),
            actor: e.actor.kind_str(),
            actor_name,
            uid,
            gid,
            pid,
            exe,
            token: e.token.as_deref(),
            key: e.key.as_deref(),
            key_version: e.key_version.map(i64::from),
            operation: &e.operation,
            mechanism: e.mechanism.map(to_i64),
            result: to_i64(e.result),
            reason: &e.reason,
            prev_hash: prev,
            hash,
            count: i64::from(e.count),
            span_us: i64::from(e.span_us),
            host,
        }
    }

    /// The record, judged strictly: any value a store would not have
    /// written is an error (the verify walk reports it as an edit).
    pub(crate) fn decode(&self) -> Result<AuditRecord, String> {
        fn u32_of(v: i64, what: &str) -> Result<u32, String> {
            u32::try_from(v).map_err(|_| format!("{what} {v} out of range"))
        }
        fn need<T>(v: Option<T>, what: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("{what} missing"))
        }
        fn hash_of(bytes: &[u8], what: &str) -> Result<Hash, String> {
            Hash::try_from(bytes).map_err(|_| format!("{what} is {} bytes", bytes.len()))
        }
        let owned = |v: Option<&str>| v.map(str::to_owned);
        let actor = match self.actor {
            "application" => Actor::Application {
                name: need(owned(self.actor_name), "application name")?,
                uid: u32_of(need(self.uid, "uid")?, "uid")?,
                gid: u32_of(need(self.gid, "gid")?, "gid")?,
                pid: u32_of(need(self.pid, "pid")?, "pid")?,
                exe: need(owned(self.exe), "exe")?,
            },
            "administrator" if self.actor_name.is_none() && self.gid.is_none() => {
                Actor::Administrator {
                    uid: u32_of(need(self.uid, "uid")?, "uid")?,
                    pid: u32_of(need(self.pid, "pid")?, "pid")?,
                    exe: need(owned(self.exe), "exe")?,
                }
            }
            "agent" | "scheduler"
                if self.actor_name.is_none()
                    && self.uid.is_none()
                    && self.gid.is_none()
                    && self.pid.is_none()
                    && self.exe.is_none() =>
            {
                if self.actor == "agent" {
                    Actor::Agent
                } else {
                    Actor::Scheduler
                }
            }
            other => return Err(format!("actor {other:?} with these columns")),
        };
        let micros = u32_of(self.micros, "micros")?;
        if micros >= 1_000_000 {
            return Err(format!("micros {micros} out of range"));
        }
        let event = AuditEvent {
            at: self.at,
            micros,
            kind: self.kind.parse().map_err(|e: Error| e.to_string())?,
            actor,
            token: owned(self.token),
            key: owned(self.key),
            key_version: self
                .key_version
                .map(|v| u32_of(v, "key version"))
                .transpose()?,
            operation: self.operation.to_owned(),
            mechanism: self.mechanism.map(to_u64),
            result: to_u64(self.result),
            reason: self.reason.to_owned(),
            count: u32_of(self.count, "count")?,
            span_us: u32_of(self.span_us, "span_us")?,
        };
        if event.count == 0 {
            return Err("count 0".into());
        }
        if self.host == Some("") {
            return Err("host empty".into());
        }
        Ok(AuditRecord {
            seq: u64::try_from(self.seq).map_err(|_| format!("seq {}", self.seq))?,
            event,
            host: owned(self.host),
            prev_hash: hash_of(self.prev_hash, "prev_hash")?,
            hash: hash_of(self.hash, "hash")?,
        })
    }
}
