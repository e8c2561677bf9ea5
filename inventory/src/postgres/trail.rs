//! The audit trail in the shared store: one hash chain for the whole
//! fleet. Agents append under a transaction-level advisory lock
//! ([`AUDIT_LOCK`]), so each record links to the one committed before it
//! whichever agent wrote that; each record carries its agent's host
//! identity, hashed with it (the canonical format 3).
//!
//! [`AuditLog`] for [`PgInventory`] behaves as the SQLite store's: rows
//! read strictly (any value the store would not have written is an edit),
//! checkpoints judged against the stored head, and the verify walk over
//! one read-only REPEATABLE READ snapshot on the long reads' session,
//! fetched through a portal a batch at a time so that a trail of millions
//! of records is never in memory at once.

use ::postgres::types::{FromSql, ToSql};
use ::postgres::{IsolationLevel, Row, Transaction};

use super::PgInventory;
use crate::audit::{
    check_field, record_hash_on, validate_all, Actor, Anchor, AuditEvent, AuditFilter, AuditLog,
    AuditRecord, BadRecord, Checkpoint, Hash, Problem, ResultFilter, VerifyReport,
};
use crate::error::{Error, Result};
use crate::verify::{link, Seals};

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
    // One statement for the whole batch (a column of values each), so an
    // append costs the same few round trips whatever its size.
    let n = events.len();
    let mut seqs = Vec::with_capacity(n);
    let mut hashes: Vec<Hash> = Vec::with_capacity(n);
    let mut prevs: Vec<Hash> = Vec::with_capacity(n);
    for e in events {
        seq += 1;
        let hash = record_hash_on(&prev, seq, e, Some(host));
        seqs.push(to_i64(seq));
        prevs.push(prev);
        hashes.push(hash);
        prev = hash;
    }
    let mut at = Vec::with_capacity(n);
    let mut micros = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut name: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut uid: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut gid: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut pid: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut exe: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut key_version = Vec::with_capacity(n);
    let mut operation = Vec::with_capacity(n);
    let mut mechanism = Vec::with_capacity(n);
    let mut result = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut span_us = Vec::with_capacity(n);
    for e in events {
        let (n, u, g, p, x) = match &e.actor {
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
        at.push(e.at);
        micros.push(i64::from(e.micros));
        kind.push(e.kind.as_str());
        actor.push(e.actor.kind_str());
        name.push(n);
        uid.push(u);
        gid.push(g);
        pid.push(p);
        exe.push(x);
        token.push(e.token.as_deref());
        key.push(e.key.as_deref());
        key_version.push(e.key_version.map(i64::from));
        operation.push(e.operation.as_str());
        mechanism.push(e.mechanism.map(to_i64));
        result.push(to_i64(e.result));
        reason.push(e.reason.as_str());
        count.push(i64::from(e.count));
        span_us.push(i64::from(e.span_us));
    }
    let prevs: Vec<&[u8]> = prevs.iter().map(|h| &h[..]).collect();
    let hashes: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let inserted = tx.execute(
        "INSERT INTO audit (seq, at, micros, kind, actor, actor_name, uid, gid, pid, exe, token, \
         key_name, key_version, operation, mechanism, result, reason, prev_hash, hash, count, \
         span_us, host) \
         SELECT batch.*, $22::text FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], \
         $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], \
         $10::text[], $11::text[], $12::text[], $13::bigint[], $14::text[], $15::bigint[], \
         $16::bigint[], $17::text[], $18::bytea[], $19::bytea[], $20::bigint[], $21::bigint[]) \
         AS batch",
        &[
            &seqs,
            &at,
            &micros,
            &kind,
            &actor,
            &name,
            &uid,
            &gid,
            &pid,
            &exe,
            &token,
            &key,
            &key_version,
            &operation,
            &mechanism,
            &result,
            &reason,
            &prevs,
            &hashes,
            &count,
            &span_us,
            &host,
        ],
    )?;
    if inserted != n as u64 {
        return Err(Error::Data(format!(
            "{inserted} audit records stored of a batch of {n}"
        )));
    }
    Ok(seq)
}

// ---- AuditLog ------------------------------------------------------------------

/// The columns of an audit row, in [`decode`]'s order.
macro_rules! audit_cols {
    () => {
        "seq, at, micros, kind, actor, actor_name, uid, gid, pid, exe, token, key_name, \
         key_version, operation, mechanism, result, reason, prev_hash, hash, count, span_us, host"
    };
}

/// Rows the verify walk fetches at a time: the walk holds one batch in
/// memory, however long the trail.
const WALK_BATCH: i32 = 1000;

const CHECKPOINTS_SQL: &str =
    "SELECT seq, head, created_at, signature, signer FROM audit_checkpoints ORDER BY seq, id";

/// Decodes one `audit_cols!()` row strictly: any value the store would not
/// have written is an error (verify reports it as an edit).
fn decode(r: &Row) -> std::result::Result<AuditRecord, String> {
    fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> std::result::Result<T, String> {
        r.try_get(i).map_err(|e| format!("column {i}: {e}"))
    }
    fn u32_of(v: i64, what: &str) -> std::result::Result<u32, String> {
        u32::try_from(v).map_err(|_| format!("{what} {v} out of range"))
    }
    fn need<T>(v: Option<T>, what: &str) -> std::result::Result<T, String> {
        v.ok_or_else(|| format!("{what} missing"))
    }
    fn hash(bytes: Vec<u8>, what: &str) -> std::result::Result<Hash, String> {
        Hash::try_from(bytes.as_slice()).map_err(|_| format!("{what} is {} bytes", bytes.len()))
    }
    let seq: i64 = col(r, 0)?;
    let name: Option<String> = col(r, 5)?;
    let uid: Option<i64> = col(r, 6)?;
    let gid: Option<i64> = col(r, 7)?;
    let pid: Option<i64> = col(r, 8)?;
    let exe: Option<String> = col(r, 9)?;
    let actor_kind: String = col(r, 4)?;
    let actor = match actor_kind.as_str() {
        "application" => Actor::Application {
            name: need(name, "application name")?,
            uid: u32_of(need(uid, "uid")?, "uid")?,
            gid: u32_of(need(gid, "gid")?, "gid")?,
            pid: u32_of(need(pid, "pid")?, "pid")?,
            exe: need(exe, "exe")?,
        },
        "administrator" if name.is_none() && gid.is_none() => Actor::Administrator {
            uid: u32_of(need(uid, "uid")?, "uid")?,
            pid: u32_of(need(pid, "pid")?, "pid")?,
            exe: need(exe, "exe")?,
        },
        "agent" | "scheduler"
            if name.is_none()
                && uid.is_none()
                && gid.is_none()
                && pid.is_none()
                && exe.is_none() =>
        {
            if actor_kind == "agent" {
                Actor::Agent
            } else {
                Actor::Scheduler
            }
        }
        other => return Err(format!("actor {other:?} with these columns")),
    };
    let kind: String = col(r, 3)?;
    let micros = u32_of(col(r, 2)?, "micros")?;
    if micros >= 1_000_000 {
        return Err(format!("micros {micros} out of range"));
    }
    let event = AuditEvent {
        at: col(r, 1)?,
        micros,
        kind: kind.parse().map_err(|e: Error| e.to_string())?,
        actor,
        token: col(r, 10)?,
        key: col(r, 11)?,
        key_version: col::<Option<i64>>(r, 12)?
            .map(|v| u32_of(v, "key version"))
            .transpose()?,
        operation: col(r, 13)?,
        mechanism: col::<Option<i64>>(r, 14)?.map(to_u64),
        result: to_u64(col(r, 15)?),
        reason: col(r, 16)?,
        count: u32_of(col(r, 19)?, "count")?,
        span_us: u32_of(col(r, 20)?, "span_us")?,
    };
    if event.count == 0 {
        return Err("count 0".into());
    }
    let host: Option<String> = col(r, 21)?;
    if host.as_deref() == Some("") {
        return Err("host empty".into());
    }
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|_| format!("seq {seq}"))?,
        event,
        host,
        prev_hash: hash(col(r, 17)?, "prev_hash")?,
        hash: hash(col(r, 18)?, "hash")?,
    })
}

/// Decoded rows, or [`Error::Data`] for the first that does not decode.
fn records(rows: &[Row]) -> Result<Vec<AuditRecord>> {
    rows.iter()
        .map(|r| decode(r).map_err(|e| Error::Data(format!("audit record: {e}"))))
        .collect()
}

fn checkpoint_of(r: &Row) -> std::result::Result<Checkpoint, String> {
    let seq: i64 = r.try_get(0).map_err(|e| e.to_string())?;
    let head: Vec<u8> = r.try_get(1).map_err(|e| e.to_string())?;
    Ok(Checkpoint {
        seq: u64::try_from(seq).map_err(|_| format!("checkpoint seq {seq}"))?,
        head: Hash::try_from(head.as_slice())
            .map_err(|_| format!("checkpoint head is {} bytes", head.len()))?,
        created_at: r.try_get(2).map_err(|e| e.to_string())?,
        signature: r.try_get(3).map_err(|e| e.to_string())?,
        signer: r.try_get(4).map_err(|e| e.to_string())?,
    })
}

/// The genesis, when stored and 32 bytes long.
fn genesis_in(tx: &mut Transaction<'_>) -> Result<Option<Hash>> {
    let row = tx.query_opt("SELECT genesis FROM audit_meta WHERE id = 1", &[])?;
    Ok(row
        .and_then(|r| r.try_get::<_, Vec<u8>>(0).ok())
        .and_then(|b| Hash::try_from(b.as_slice()).ok()))
}

impl AuditLog for PgInventory {
    fn append(&self, events: &[AuditEvent], durable: bool) -> Result<u64> {
        validate_all(events)?;
        if events.is_empty() {
            return Ok(self.head()?.0);
        }
        self.with(|client| {
            let mut tx = client.transaction()?;
            if !durable {
                // Only this transaction: committed without waiting for the
                // WAL flush (a server crash loses whole batches, never part).
                tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            }
            let seq = chain_in(&mut tx, events, self.host())?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn head(&self) -> Result<(u64, Hash)> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let head = head_in(&mut tx)?;
            tx.commit()?;
            Ok(head)
        })
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        if cp.signature.is_empty() {
            return Err(Error::Invalid("checkpoint signature is empty".into()));
        }
        if cp.signer.is_empty() {
            return Err(Error::Invalid("checkpoint signer is empty".into()));
        }
        check_field("checkpoint signer", &cp.signer)?;
        self.with(|client| {
            let mut tx = client.transaction()?;
            // Checkpoints of the shared chain are judged one at a time, against
            // a head no append moves meanwhile.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
            let (head_seq, _) = head_in(&mut tx)?;
            if cp.seq > head_seq {
                return Err(Error::Invalid(format!(
                    "checkpoint at seq {} is past the trail's head {head_seq}",
                    cp.seq
                )));
            }
            let stored = if cp.seq == 0 {
                genesis_in(&mut tx)?
                    .ok_or_else(|| Error::Data("the audit genesis is missing".into()))?
            } else {
                let row = tx
                    .query_opt("SELECT hash FROM audit WHERE seq = $1", &[&to_i64(cp.seq)])?
                    .ok_or_else(|| Error::Data(format!("audit record {} is missing", cp.seq)))?;
                hash_of(row.try_get(0)?, "audit hash")?
            };
            if stored != cp.head {
                return Err(Error::Conflict {
                    what: format!("audit head at seq {}", cp.seq),
                    expected: hex::encode(cp.head),
                    found: hex::encode(stored),
                });
            }
            let last: Option<i64> = tx
                .query_one("SELECT max(seq) FROM audit_checkpoints", &[])?
                .try_get(0)?;
            if let Some(last) = last.filter(|&last| last > to_i64(cp.seq)) {
                return Err(Error::Conflict {
                    what: "audit checkpoint seq".into(),
                    expected: format!("at least {last}"),
                    found: cp.seq.to_string(),
                });
            }
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, head, created_at, signature, signer) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &to_i64(cp.seq),
                    &&cp.head[..],
                    &cp.created_at,
                    &cp.signature,
                    &cp.signer,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.reading(|client| {
            client
                .query(CHECKPOINTS_SQL, &[])?
                .iter()
                .map(|r| checkpoint_of(r).map_err(Error::Data))
                .collect()
        })
    }

    fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        self.reading(|client| {
            client
                .query_opt(
                    "SELECT seq, head, created_at, signature, signer FROM audit_checkpoints \
                     ORDER BY seq DESC, id DESC LIMIT 1",
                    &[],
                )?
                .map(|r| checkpoint_of(&r).map_err(Error::Data))
                .transpose()
        })
    }

    fn tail(&self, n: usize) -> Result<Vec<AuditRecord>> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.reading(|client| {
            let rows = client.query(
                concat!(
                    "SELECT * FROM (SELECT ",
                    audit_cols!(),
                    " FROM audit ORDER BY seq DESC LIMIT $1) AS last ORDER BY seq"
                ),
                &[&n],
            )?;
            records(&rows)
        })
    }

    fn query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        // Built from the conditions given, so each can use its index.
        let mut sql = String::from(concat!("SELECT ", audit_cols!(), " FROM audit WHERE TRUE"));
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut cond = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync>| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ${}", args.len()));
        };
        if let Some(k) = &f.key {
            cond(&mut sql, "key_name =", Box::new(k.clone()));
        }
        if let Some(t) = &f.token {
            cond(&mut sql, "token =", Box::new(t.clone()));
        }
        if let Some(a) = &f.application {
            cond(
                &mut sql,
                "actor = 'application' AND actor_name =",
                Box::new(a.clone()),
            );
        }
        if let Some(s) = f.since {
            cond(&mut sql, "at >=", Box::new(s));
        }
        if let Some(u) = f.until {
            cond(&mut sql, "at <", Box::new(u));
        }
        if let Some(s) = f.after_seq {
            cond(&mut sql, "seq >", Box::new(to_i64(s)));
        }
        match f.result {
            ResultFilter::Any => {}
            ResultFilter::Ok => sql.push_str(" AND result = 0"),
            ResultFilter::Denied => sql.push_str(" AND result <> 0"),
        }
        if !f.kinds.is_empty() {
            let names: Vec<&'static str> = f.kinds.iter().map(|k| k.as_str()).collect();
            args.push(Box::new(names));
            sql.push_str(&format!(" AND kind = ANY(${})", args.len()));
        }
        sql.push_str(" ORDER BY seq");
        if let Some(limit) = f.limit {
            args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ${}", args.len()));
        }
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
        self.reading(|client| records(&client.query(&sql, &params)?))
    }

    fn verify_anchored(
        &self,
        check_signature: &dyn Fn(&[u8], &[u8]) -> bool,
        anchors: &[Anchor],
    ) -> Result<VerifyReport> {
        self.reading(|client| {
            // One snapshot however long the walk, never blocking a writer.
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let report = verify_in(&mut tx, check_signature, anchors)?;
            tx.commit()?;
            Ok(report)
        })
    }
}

/// Walks the whole trail in `tx` (one snapshot) from the genesis, a batch
/// of rows at a time, checking each record as the chain's next link and
/// every checkpoint and anchor where the walk reaches it.
fn verify_in(
    tx: &mut Transaction<'_>,
    check_signature: &dyn Fn(&[u8], &[u8]) -> bool,
    anchors: &[Anchor],
) -> Result<VerifyReport> {
    let list = tx
        .query(CHECKPOINTS_SQL, &[])?
        .iter()
        .map(checkpoint_of)
        .collect();
    let mut seals = Seals::new(list, check_signature, anchors);
    let Some(genesis) = genesis_in(tx)? else {
        let bad = BadRecord {
            seq: 1,
            problem: Problem::Genesis,
        };
        return Ok(seals.report(0, 0, Some(bad)));
    };
    let last: Option<i64> = tx
        .query_one("SELECT max(seq) FROM audit", &[])?
        .try_get(0)?;
    let head_seq = last.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    let mut records = 0;
    let mut running = genesis;
    if let Some(bad) = seals.at(0, &running) {
        return Ok(seals.report(records, head_seq, Some(bad)));
    }
    let portal = tx.bind(
        concat!("SELECT ", audit_cols!(), " FROM audit ORDER BY seq"),
        &[],
    )?;
    let mut expected: u64 = 1;
    loop {
        let rows = tx.query_portal(&portal, WALK_BATCH)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            records += 1;
            let stored_seq: i64 = row.try_get(0)?;
            let (seq, hash) = match link(stored_seq, expected, &running, || decode(row)) {
                Ok(link) => link,
                Err(bad) => return Ok(seals.report(records, head_seq, Some(bad))),
            };
            running = hash;
            expected = seq + 1;
            if let Some(bad) = seals.at(seq, &running) {
                return Ok(seals.report(records, head_seq, Some(bad)));
            }
        }
    }
    let bad = seals.past_the_end(head_seq);
    Ok(seals.report(records, head_seq, bad))
}
