//! The audit trail in the shared store: one hash chain for the whole
//! fleet. Agents append under a transaction-level advisory lock
//! ([`AUDIT_LOCK`]), so each record links to the one committed before it
//! whichever agent wrote that; each record carries its agent's host
//! identity, hashed with it (the canonical format 3).

use ::postgres::Transaction;

use crate::audit::{record_hash_on, Actor, AuditEvent, Hash};
use crate::error::{Error, Result};

/// Key of the advisory lock that serialises appends to the chain (`KWAU`).
/// Always the last lock a transaction takes, so it is never held while
/// waiting for a row.
pub(crate) const AUDIT_LOCK: i64 = 0x4B57_4155;

/// Bits of a `u64` as PostgreSQL's `BIGINT`, and back (CKM/CKR vendor
/// values keep their bits).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// See [`to_i64`].
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A stored hash, or [`Error::Data`] naming `what`.
pub(crate) fn hash_of(bytes: Vec<u8>, what: &str) -> Result<Hash> {
    Hash::try_from(bytes.as_slice())
        .map_err(|_| Error::Data(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// The chain's head inside `tx`: the last record's seq and hash, or 0 and
/// the genesis.
pub(crate) fn head_in(tx: &mut Transaction<'_>) -> Result<(u64, Hash)> {
    if let Some(row) = tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])? {
        let seq: i64 = row.get(0);
        let seq =
            u64::try_from(seq).map_err(|_| Error::Data(format!("audit record numbered {seq}")))?;
        return Ok((seq, hash_of(row.get(1), "audit head hash")?));
    }
    let genesis = tx
        .query_opt("SELECT genesis FROM audit_meta WHERE id = 1", &[])?
        .ok_or_else(|| Error::Data("the audit genesis is missing".into()))?;
    Ok((0, hash_of(genesis.get(0), "the audit genesis")?))
}

/// Chains `events` (validated by the caller) onto the trail inside the
/// caller's transaction `tx`, as written by `host`; returns the last seq
/// (the head's when `events` is empty). Takes [`AUDIT_LOCK`] until `tx`
/// ends.
pub(crate) fn chain_in(tx: &mut Transaction<'_>, events: &[AuditEvent], host: &str) -> Result<u64> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let (mut seq, mut prev) = head_in(tx)?;
    if events.is_empty() {
        return Ok(seq);
    }
    let insert = tx.prepare(
        "INSERT INTO audit (seq, at, micros, kind, actor, actor_name, uid, gid, pid, exe, token, \
         key_name, key_version, operation, mechanism, result, reason, prev_hash, hash, count, \
         span_us, host) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20, $21, $22)",
    )?;
    for e in events {
        seq += 1;
        let hash = record_hash_on(&prev, seq, e, Some(host));
        let (name, uid, gid, pid, exe) = match &e.actor {
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
        tx.execute(
            &insert,
            &[
                &to_i64(seq),
                &e.at,
                &i64::from(e.micros),
                &e.kind.as_str(),
                &e.actor.kind_str(),
                &name,
                &uid,
                &gid,
                &pid,
                &exe,
                &e.token,
                &e.key,
                &e.key_version.map(i64::from),
                &e.operation,
                &e.mechanism.map(to_i64),
                &to_i64(e.result),
                &e.reason,
                &&prev[..],
                &&hash[..],
                &i64::from(e.count),
                &i64::from(e.span_us),
                &host,
            ],
        )?;
        prev = hash;
    }
    Ok(seq)
}
