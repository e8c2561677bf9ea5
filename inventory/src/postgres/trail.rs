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
    check_field, record_hash_on, validate_all, Anchor, AuditEvent, AuditFilter, AuditLog,
    AuditRecord, BadRecord, Checkpoint, Hash, Problem, ResultFilter, VerifyReport,
};
use crate::audit_row::AuditRow;
pub(crate) use crate::audit_row::{to_i64, to_u64};
use crate::error::{Error, Result};
use crate::verify::{link, Seals};

/// Key of the advisory lock that serialises appends to the chain (`KWAU`).
/// Always the last lock a transaction takes, so it is never held while
/// waiting for a row.
pub(crate) const AUDIT_LOCK: i64 = 0x4B57_4155;

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
    let mut links: Vec<(u64, Hash, Hash)> = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let hash = record_hash_on(&prev, seq, e, Some(host));
        links.push((seq, prev, hash));
        prev = hash;
    }
    let rows: Vec<AuditRow<'_>> = events
        .iter()
        .zip(&links)
        .map(|(e, (seq, prev, hash))| AuditRow::of(*seq, e, prev, hash, Some(host)))
        .collect();
    insert_batch(tx, &rows)?;
    Ok(seq)
}

/// Stores `rows` with one statement (a column of values each), so an
/// append costs the same few round trips whatever its size.
fn insert_batch(tx: &mut Transaction<'_>, rows: &[AuditRow<'_>]) -> Result<()> {
    fn column<'r, T>(rows: &'r [AuditRow<'r>], f: impl Fn(&'r AuditRow<'r>) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let host = rows.first().and_then(|r| r.host);
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
            &column(rows, |r| r.seq),
            &column(rows, |r| r.at),
            &column(rows, |r| r.micros),
            &column(rows, |r| r.kind),
            &column(rows, |r| r.actor),
            &column(rows, |r| r.actor_name),
            &column(rows, |r| r.uid),
            &column(rows, |r| r.gid),
            &column(rows, |r| r.pid),
            &column(rows, |r| r.exe),
            &column(rows, |r| r.token),
            &column(rows, |r| r.key),
            &column(rows, |r| r.key_version),
            &column(rows, |r| r.operation),
            &column(rows, |r| r.mechanism),
            &column(rows, |r| r.result),
            &column(rows, |r| r.reason),
            &column(rows, |r| r.prev_hash),
            &column(rows, |r| r.hash),
            &column(rows, |r| r.count),
            &column(rows, |r| r.span_us),
            &host,
        ],
    )?;
    if inserted != rows.len() as u64 {
        return Err(Error::Data(format!(
            "{inserted} audit records stored of a batch of {}",
            rows.len()
        )));
    }
    Ok(())
}

// ---- AuditLog ------------------------------------------------------------------

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
    AuditRow {
        seq: col(r, 0)?,
        at: col(r, 1)?,
        micros: col(r, 2)?,
        kind: col(r, 3)?,
        actor: col(r, 4)?,
        actor_name: col(r, 5)?,
        uid: col(r, 6)?,
        gid: col(r, 7)?,
        pid: col(r, 8)?,
        exe: col(r, 9)?,
        token: col(r, 10)?,
        key: col(r, 11)?,
        key_version: col(r, 12)?,
        operation: col(r, 13)?,
        mechanism: col(r, 14)?,
        result: col(r, 15)?,
        reason: col(r, 16)?,
        prev_hash: col(r, 17)?,
        hash: col(r, 18)?,
        count: col(r, 19)?,
        span_us: col(r, 20)?,
        host: col(r, 21)?,
    }
    .decode()
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
