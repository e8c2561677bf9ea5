//! [`UsageLog`] for [`SqliteInventory`]: the report's aggregations as SQL
//! (`GROUP BY` with `SUM(count)`) on the read-only connection, so a report
//! never holds the agent's write lock nor a row per record in memory.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension, Row};

use super::SqliteInventory;
use crate::audit::REQUESTED;
use crate::error::{Error, Result};
use crate::usage::{
    EventRow, Failures, HourRow, OperationRow, RecoveryUses, Span, UsageLog, UseRow, UsesAfter,
    RECOVERY_OPERATIONS,
};

/// A record's time in unix microseconds, as SQL.
macro_rules! at_us {
    () => {
        "(at * 1000000 + micros)"
    };
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `?` placeholders for `values`, numbered after the `args` already bound.
fn placeholders(args: &mut Vec<Value>, values: &[&str]) -> String {
    let mut out = Vec::new();
    for v in values {
        args.push(Value::Text((*v).to_owned()));
        out.push(format!("?{}", args.len()));
    }
    if out.is_empty() {
        // `IN ()` is not SQL; a list that matches nothing is.
        "NULL".to_owned()
    } else {
        out.join(", ")
    }
}

/// Binds `v` and returns its placeholder.
fn bind(args: &mut Vec<Value>, v: Value) -> String {
    args.push(v);
    format!("?{}", args.len())
}

/// ` AND key_name = ?n` when `key` is given.
fn key_clause(args: &mut Vec<Value>, key: Option<&str>) -> String {
    match key {
        Some(k) => format!(" AND key_name = {}", bind(args, Value::Text(k.to_owned()))),
        None => String::new(),
    }
}

/// `CASE` sums of `count` inside `[from, until)` microseconds.
fn sum_between(args: &mut Vec<Value>, from: i64, until: i64) -> String {
    let from = bind(args, Value::Integer(from));
    let until = bind(args, Value::Integer(until));
    format!(
        "COALESCE(SUM(CASE WHEN {at} >= {from} AND {at} < {until} THEN count ELSE 0 END), 0)",
        at = at_us!()
    )
}

const EVENT_COLS: &str =
    "seq, at, micros, token, key_name, key_version, operation, actor, uid, result, reason";

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    let version: Option<i64> = r.get(5)?;
    let uid: Option<i64> = r.get(8)?;
    let result: i64 = r.get(9)?;
    Ok(EventRow {
        seq: u64_of(r.get(0)?),
        at: r.get(1)?,
        micros: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        token: r.get(3)?,
        key: r.get(4)?,
        key_version: version.and_then(|v| u32::try_from(v).ok()),
        operation: r.get(6)?,
        actor: r.get(7)?,
        uid: uid.and_then(|v| u32::try_from(v).ok()),
        result: u64::from_ne_bytes(result.to_ne_bytes()),
        reason: r.get(10)?,
    })
}

impl SqliteInventory {
    fn collect<T>(
        &self,
        sql: &str,
        args: Vec<Value>,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.reader();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(params_from_iter(args), f)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }
}

impl UsageLog for SqliteInventory {
    fn use_rows(&self, span: &Span, key: Option<&str>) -> Result<Vec<UseRow>> {
        let mut args = Vec::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let baseline = sum_between(&mut args, span.baseline_from, span.window_from);
        let b_from = bind(&mut args, Value::Integer(span.baseline_from));
        let w_from = bind(&mut args, Value::Integer(span.window_from));
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, key_version IS NOT NULL, COALESCE(actor_name, ''),
                    COALESCE(exe, ''), SUM(count),
                    COALESCE(SUM(CASE WHEN result <> 0 THEN count ELSE 0 END), 0),
                    {window}, {baseline},
                    MIN(CASE WHEN {at} >= {b_from} AND {at} < {w_from} THEN {at} END),
                    MAX(at)
             FROM audit
             WHERE kind = 'use' AND key_name IS NOT NULL{key}
             GROUP BY 1, 2, 3, 4, 5",
            at = at_us!()
        );
        self.collect(&sql, args, |r| {
            Ok(UseRow {
                token: r.get(0)?,
                key: r.get(1)?,
                managed: r.get(2)?,
                application: r.get(3)?,
                exe: r.get(4)?,
                total: u64_of(r.get(5)?),
                failed: u64_of(r.get(6)?),
                window: u64_of(r.get(7)?),
                baseline: u64_of(r.get(8)?),
                baseline_first: r.get(9)?,
                last_at: r.get(10)?,
            })
        })
    }

    fn use_hours(&self, span: &Span, key: Option<&str>) -> Result<Vec<HourRow>> {
        let mut args = Vec::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let baseline = sum_between(&mut args, span.baseline_from, span.window_from);
        let (from_s, until_s) = span.seconds(span.baseline_from);
        let from_s = bind(&mut args, Value::Integer(from_s));
        let until_s = bind(&mut args, Value::Integer(until_s));
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, (at % 86400) / 3600 AS hour, {window}, {baseline}
             FROM audit
             WHERE kind = 'use' AND key_version IS NOT NULL AND key_name IS NOT NULL
               AND at >= {from_s} AND at < {until_s}{key}
             GROUP BY 1, 2, 3"
        );
        let rows = self.collect(&sql, args, |r| {
            Ok(HourRow {
                token: r.get(0)?,
                key: r.get(1)?,
                hour: u8::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                window: u64_of(r.get(3)?),
                baseline: u64_of(r.get(4)?),
            })
        })?;
        Ok(rows
            .into_iter()
            .filter(|h| h.window > 0 || h.baseline > 0)
            .collect())
    }

    fn operation_rows(
        &self,
        span: &Span,
        key: Option<&str>,
        refusals: &[&str],
        uses: &[&str],
    ) -> Result<Vec<OperationRow>> {
        let mut args = Vec::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let refused = placeholders(&mut args, refusals);
        let used = placeholders(&mut args, uses);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, kind, operation, SUM(count), {window}
             FROM audit
             WHERE key_name IS NOT NULL{key}
               AND ((kind = 'refusal' AND operation IN ({refused}))
                    OR (kind = 'use' AND result = 0 AND operation IN ({used})))
             GROUP BY 1, 2, 3, 4"
        );
        self.collect(&sql, args, |r| {
            Ok(OperationRow {
                token: r.get(0)?,
                key: r.get(1)?,
                kind: r.get(2)?,
                operation: r.get(3)?,
                total: u64_of(r.get(4)?),
                window: u64_of(r.get(5)?),
            })
        })
    }

    fn failures(&self, span: &Span, kind: &str, last: usize) -> Result<Failures> {
        let mut args = Vec::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let period = sum_between(&mut args, span.baseline_from, span.until);
        let kind_arg = bind(&mut args, Value::Text(kind.to_owned()));
        let sql = format!(
            "SELECT COALESCE(SUM(count), 0), {window}, {period}
             FROM audit WHERE kind = {kind_arg} AND result <> 0"
        );
        let counts = self.collect(&sql, args, |r| {
            Ok((u64_of(r.get(0)?), u64_of(r.get(1)?), u64_of(r.get(2)?)))
        })?;
        let (total, window, period) = counts.first().copied().unwrap_or_default();
        let limit = i64::try_from(last).unwrap_or(i64::MAX);
        let last = self.collect(
            &format!(
                "SELECT {EVENT_COLS} FROM audit WHERE kind = ?1 AND result <> 0
                 ORDER BY seq DESC LIMIT ?2"
            ),
            vec![Value::Text(kind.to_owned()), Value::Integer(limit)],
            event_row,
        )?;
        Ok(Failures {
            window,
            period,
            total,
            last,
        })
    }

    fn lifecycle_rows(&self, key: Option<&str>, operations: &[&str]) -> Result<Vec<EventRow>> {
        let mut args = Vec::new();
        let ops = placeholders(&mut args, operations);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT {EVENT_COLS} FROM audit
             WHERE kind = 'lifecycle' AND key_name IS NOT NULL AND operation IN ({ops}){key}
             ORDER BY seq"
        );
        self.collect(&sql, args, event_row)
    }

    fn request_before(
        &self,
        token: &str,
        key: &str,
        before: u64,
        operation: &str,
        contains: &str,
    ) -> Result<Option<EventRow>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM audit
             WHERE key_name = ?1 AND seq < ?2 AND kind = 'admin' AND operation = ?3
               AND (token IS NULL OR token = ?4)
               AND substr(reason, 1, length(?6)) = ?6 AND instr(reason, ?5) > 0
             ORDER BY seq DESC LIMIT 1"
        ))?;
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        Ok(stmt
            .query_row(
                rusqlite::params![key, before, operation, token, contains, REQUESTED],
                event_row,
            )
            .optional()?)
    }

    fn uses_after(
        &self,
        token: &str,
        key: &str,
        versions: &[u32],
        after: u64,
        recovery: Option<RecoveryUses>,
    ) -> Result<UsesAfter> {
        let mut args = vec![
            Value::Text(key.to_owned()),
            Value::Text(token.to_owned()),
            Value::Integer(i64::try_from(after).unwrap_or(i64::MAX)),
        ];
        let versions = if versions.is_empty() {
            " AND key_version IS NOT NULL".to_owned()
        } else {
            let list: Vec<String> = versions
                .iter()
                .map(|v| bind(&mut args, Value::Integer(i64::from(*v))))
                .collect();
            format!(" AND key_version IN ({})", list.join(", "))
        };
        let allowed = match recovery {
            None => String::new(),
            Some(w) => {
                let from = bind(
                    &mut args,
                    Value::Integer(i64::try_from(w.from).unwrap_or(i64::MAX)),
                );
                let until = bind(&mut args, Value::Integer(w.until));
                let ops = placeholders(&mut args, RECOVERY_OPERATIONS);
                format!(" AND NOT (seq > {from} AND at < {until} AND operation IN ({ops}))")
            }
        };
        let sql = format!(
            "SELECT COALESCE(SUM(count), 0), MIN(seq) FROM audit
             WHERE key_name = ?1 AND token = ?2 AND seq > ?3 AND kind = 'use'
               AND result = 0{versions}{allowed}"
        );
        let rows = self.collect(&sql, args, |r| {
            Ok(UsesAfter {
                count: u64_of(r.get(0)?),
                first_seq: r.get::<_, Option<i64>>(1)?.map(u64_of),
            })
        })?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Error::Data("an aggregate returned no row".into()))
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
