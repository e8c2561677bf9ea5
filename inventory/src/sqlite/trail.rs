//! [`AuditLog`] for [`SqliteInventory`]: the trail's rows (`audit`,
//! `audit_meta`, `audit_checkpoints`), read strictly (any value the store
//! would not have written is an edit), the chain written inside a
//! transaction ([`chain_in`], also used by the lifecycle transaction), the
//! checkpoints, and the verify walk over one snapshot (the judgement is
//! the storage-free `verify`).

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, TransactionBehavior};

use super::SqliteInventory;
use crate::audit::{
    check_field, record_hash, validate_all, Anchor, AuditEvent, AuditFilter, AuditLog, AuditRecord,
    BadRecord, Checkpoint, Hash, Problem, ResultFilter, VerifyReport,
};
use crate::audit_row::{to_i64, AuditRow};
use crate::error::{Error, Result};
use crate::verify::{link, Seals};

fn hash_of(bytes: Vec<u8>, what: &str) -> std::result::Result<Hash, String> {
    Hash::try_from(bytes.as_slice()).map_err(|_| format!("{what} is {} bytes", bytes.len()))
}

/// Decodes one `audit_cols!()` row strictly: any value the store would not
/// have written is an error (verify reports it as an edit).
fn decode(r: &Row<'_>) -> std::result::Result<AuditRecord, String> {
    fn col<T: rusqlite::types::FromSql>(r: &Row<'_>, i: usize) -> std::result::Result<T, String> {
        r.get(i).map_err(|e| format!("column {i}: {e}"))
    }
    AuditRow {
        seq: col(r, 0)?,
        at: col(r, 1)?,
        micros: col(r, 2)?,
        kind: &col::<String>(r, 3)?,
        actor: &col::<String>(r, 4)?,
        actor_name: col::<Option<String>>(r, 5)?.as_deref(),
        uid: col(r, 6)?,
        gid: col(r, 7)?,
        pid: col(r, 8)?,
        exe: col::<Option<String>>(r, 9)?.as_deref(),
        token: col::<Option<String>>(r, 10)?.as_deref(),
        key: col::<Option<String>>(r, 11)?.as_deref(),
        key_version: col(r, 12)?,
        operation: &col::<String>(r, 13)?,
        mechanism: col(r, 14)?,
        result: col(r, 15)?,
        reason: &col::<String>(r, 16)?,
        prev_hash: &col::<Vec<u8>>(r, 17)?,
        hash: &col::<Vec<u8>>(r, 18)?,
        count: col(r, 19)?,
        span_us: col(r, 20)?,
        host: col::<Option<String>>(r, 21)?.as_deref(),
    }
    .decode()
}

fn record_from_row(r: &Row<'_>) -> rusqlite::Result<std::result::Result<AuditRecord, String>> {
    Ok(decode(r))
}

fn insert(conn: &Connection, seq: u64, e: &AuditEvent, prev: &Hash, hash: &Hash) -> Result<()> {
    let r = AuditRow::of(seq, e, prev, hash, None);
    conn.prepare_cached(concat!(
        "INSERT INTO audit (",
        audit_cols!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
         ?17, ?18, ?19, ?20, ?21, ?22)"
    ))?
    .execute(params![
        r.seq,
        r.at,
        r.micros,
        r.kind,
        r.actor,
        r.actor_name,
        r.uid,
        r.gid,
        r.pid,
        r.exe,
        r.token,
        r.key,
        r.key_version,
        r.operation,
        r.mechanism,
        r.result,
        r.reason,
        r.prev_hash,
        r.hash,
        r.count,
        r.span_us,
        r.host,
    ])?;
    Ok(())
}

/// Chains `events` (validated) onto the trail inside the caller's
/// transaction `tx`; returns the last seq (the head's when `events` is
/// empty).
pub(crate) fn chain_in(tx: &Connection, events: &[AuditEvent]) -> Result<u64> {
    let (mut seq, mut prev) = head_in(tx)?;
    for e in events {
        seq += 1;
        let hash = record_hash(&prev, seq, e);
        insert(tx, seq, e, &prev, &hash)?;
        prev = hash;
    }
    Ok(seq)
}

fn genesis(conn: &Connection) -> Result<Option<Hash>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT genesis FROM audit_meta WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(bytes.and_then(|b| Hash::try_from(b.as_slice()).ok()))
}

fn head_in(conn: &Connection) -> Result<(u64, Hash)> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match last {
        Some((seq, hash)) => {
            let seq = u64::try_from(seq)
                .map_err(|_| Error::Data(format!("audit record numbered {seq}")))?;
            Ok((seq, hash_of(hash, "audit head hash").map_err(Error::Data)?))
        }
        None => Ok((
            0,
            genesis(conn)?.ok_or_else(|| Error::Data("the audit genesis is missing".into()))?,
        )),
    }
}

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<std::result::Result<Checkpoint, String>> {
    let seq: i64 = r.get(0)?;
    let head: Vec<u8> = r.get(1)?;
    Ok((|| {
        Ok(Checkpoint {
            seq: u64::try_from(seq).map_err(|_| format!("checkpoint seq {seq}"))?,
            head: hash_of(head, "checkpoint head")?,
            created_at: r.get(2).map_err(|e| e.to_string())?,
            signature: r.get(3).map_err(|e| e.to_string())?,
            signer: r.get(4).map_err(|e| e.to_string())?,
        })
    })())
}

const CHECKPOINT_COLS_SQL: &str =
    "SELECT seq, head, created_at, signature, signer FROM audit_checkpoints ORDER BY seq, id";

impl AuditLog for SqliteInventory {
    fn append(&self, events: &[AuditEvent], durable: bool) -> Result<u64> {
        validate_all(events)?;
        let mut conn = self.conn();
        if events.is_empty() {
            return Ok(head_in(&conn)?.0);
        }
        if !durable {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let appended = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq = chain_in(&tx, events)?;
            tx.commit()?;
            Ok(seq)
        })();
        if !durable {
            // Restore before anything else, so no lifecycle write runs at NORMAL.
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        appended
    }

    fn head(&self) -> Result<(u64, Hash)> {
        head_in(&self.conn())
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        if cp.signature.is_empty() {
            return Err(Error::Invalid("checkpoint signature is empty".into()));
        }
        if cp.signer.is_empty() {
            return Err(Error::Invalid("checkpoint signer is empty".into()));
        }
        check_field("checkpoint signer", &cp.signer)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (head_seq, _) = head_in(&tx)?;
        if cp.seq > head_seq {
            return Err(Error::Invalid(format!(
                "checkpoint at seq {} is past the trail's head {head_seq}",
                cp.seq
            )));
        }
        let stored = if cp.seq == 0 {
            genesis(&tx)?.ok_or_else(|| Error::Data("the audit genesis is missing".into()))?
        } else {
            let bytes: Vec<u8> = tx
                .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
                .query_row(params![to_i64(cp.seq)], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::Data(format!("audit record {} is missing", cp.seq)))?;
            hash_of(bytes, "audit hash").map_err(Error::Data)?
        };
        if stored != cp.head {
            return Err(Error::Conflict {
                what: format!("audit head at seq {}", cp.seq),
                expected: hex::encode(cp.head),
                found: hex::encode(stored),
            });
        }
        let last: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM audit_checkpoints")?
            .query_row([], |r| r.get(0))?;
        if let Some(last) = last.filter(|&last| last > to_i64(cp.seq)) {
            return Err(Error::Conflict {
                what: "audit checkpoint seq".into(),
                expected: format!("at least {last}"),
                found: cp.seq.to_string(),
            });
        }
        tx.prepare_cached(
            "INSERT INTO audit_checkpoints (seq, head, created_at, signature, signer)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            to_i64(cp.seq),
            &cp.head[..],
            cp.created_at,
            cp.signature,
            cp.signer
        ])?;
        tx.commit()?;
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(CHECKPOINT_COLS_SQL)?;
        let rows = stmt.query_map([], checkpoint_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.map_err(Error::Data)?);
        }
        Ok(out)
    }

    fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, head, created_at, signature, signer FROM audit_checkpoints \
             ORDER BY seq DESC, id DESC LIMIT 1",
        )?;
        let mut rows = stmt.query_map([], checkpoint_from_row)?;
        match rows.next() {
            Some(row) => Ok(Some(row?.map_err(Error::Data)?)),
            None => Ok(None),
        }
    }

    fn tail(&self, n: usize) -> Result<Vec<AuditRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT * FROM (SELECT ",
            audit_cols!(),
            " FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq"
        ))?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![n], record_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.map_err(Error::Data)?);
        }
        Ok(out)
    }

    fn query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        // Built from the conditions given, so each can use its index.
        let mut sql = String::from(concat!("SELECT ", audit_cols!(), " FROM audit WHERE 1"));
        let mut args: Vec<Value> = Vec::new();
        let mut cond = |sql: &mut String, clause: &str, v: Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(k) = &f.key {
            cond(&mut sql, "key_name =", Value::Text(k.clone()));
        }
        if let Some(t) = &f.token {
            cond(&mut sql, "token =", Value::Text(t.clone()));
        }
        if let Some(a) = &f.application {
            cond(
                &mut sql,
                "actor = 'application' AND actor_name =",
                Value::Text(a.clone()),
            );
        }
        if let Some(s) = f.since {
            cond(&mut sql, "at >=", Value::Integer(s));
        }
        if let Some(u) = f.until {
            cond(&mut sql, "at <", Value::Integer(u));
        }
        if let Some(s) = f.after_seq {
            cond(&mut sql, "seq >", Value::Integer(to_i64(s)));
        }
        match f.result {
            ResultFilter::Any => {}
            ResultFilter::Ok => sql.push_str(" AND result = 0"),
            ResultFilter::Denied => sql.push_str(" AND result <> 0"),
        }
        if !f.kinds.is_empty() {
            let names: Vec<String> = f
                .kinds
                .iter()
                .map(|k| format!("'{}'", k.as_str()))
                .collect();
            // The names are our own constants, never caller text.
            sql.push_str(&format!(" AND kind IN ({})", names.join(", ")));
        }
        sql.push_str(" ORDER BY seq");
        if let Some(limit) = f.limit {
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ?{}", args.len()));
        }
        let conn = self.reader();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), record_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.map_err(Error::Data)?);
        }
        Ok(out)
    }

    fn verify_anchored(
        &self,
        check_signature: &dyn Fn(&[u8], &[u8]) -> bool,
        anchors: &[Anchor],
    ) -> Result<VerifyReport> {
        let mut conn = self.reader();
        // One read transaction: a snapshot, however long the walk.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let report = verify_in(&tx, check_signature, anchors)?;
        tx.commit()?;
        Ok(report)
    }
}

/// Walks the whole trail in `conn` (one read transaction) from the
/// genesis, checking each record as the chain's next link and every
/// checkpoint and anchor where the walk reaches it.
fn verify_in(
    conn: &Connection,
    check_signature: &dyn Fn(&[u8], &[u8]) -> bool,
    anchors: &[Anchor],
) -> Result<VerifyReport> {
    let list = conn
        .prepare(CHECKPOINT_COLS_SQL)?
        .query_map([], checkpoint_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut seals = Seals::new(list, check_signature, anchors);
    let Some(genesis) = genesis(conn)? else {
        let bad = BadRecord {
            seq: 1,
            problem: Problem::Genesis,
        };
        return Ok(seals.report(0, 0, Some(bad)));
    };
    let last: Option<i64> = conn.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))?;
    let head_seq = last.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    let mut records = 0;
    let mut running = genesis;
    if let Some(bad) = seals.at(0, &running) {
        return Ok(seals.report(records, head_seq, Some(bad)));
    }
    let mut stmt = conn.prepare(concat!(
        "SELECT ",
        audit_cols!(),
        " FROM audit ORDER BY seq"
    ))?;
    let mut rows = stmt.query([])?;
    let mut expected: u64 = 1;
    while let Some(row) = rows.next()? {
        records += 1;
        let stored_seq: i64 = row.get(0)?;
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
    let bad = seals.past_the_end(head_seq);
    Ok(seals.report(records, head_seq, bad))
}

#[cfg(test)]
#[path = "trail_tests.rs"]
mod tests;
