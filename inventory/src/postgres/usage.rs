//! [`UsageLog`] for [`PgInventory`]: the report's aggregations as the SQLite
//! store's SQL in PostgreSQL's dialect (`GROUP BY` with `SUM(count)`, time
//! arithmetic on unix seconds as integer math) on the long reads' session,
//! so a report never holds a row per record in memory. Sums are cast back
//! to `BIGINT` (PostgreSQL sums `BIGINT` as `NUMERIC`), and grouped rows
//! come in the order of their group (text bytewise, absent first), as
//! SQLite's do.

use ::postgres::types::ToSql;
use ::postgres::Row;

use super::trail::to_u64;
use super::PgInventory;
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

/// The arguments of one statement, numbered `$1`, `$2`, ... as bound.
type Args = Vec<Box<dyn ToSql + Sync>>;

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Binds `v` and returns its placeholder.
fn bind(args: &mut Args, v: impl ToSql + Sync + 'static) -> String {
    args.push(Box::new(v));
    format!("${}", args.len())
}

/// Placeholders for `values`, numbered after the `args` already bound.
fn placeholders(args: &mut Args, values: &[&str]) -> String {
    let out: Vec<String> = values.iter().map(|v| bind(args, (*v).to_owned())).collect();
    if out.is_empty() {
        // `IN ()` is not SQL; a list that matches nothing is.
        "NULL".to_owned()
    } else {
        out.join(", ")
    }
}

/// ` AND key_name = $n` when `key` is given.
fn key_clause(args: &mut Args, key: Option<&str>) -> String {
    match key {
        Some(k) => format!(" AND key_name = {}", bind(args, k.to_owned())),
        None => String::new(),
    }
}

/// `CASE` sums of `count` inside `[from, until)` microseconds.
fn sum_between(args: &mut Args, from: i64, until: i64) -> String {
    let from = bind(args, from);
    let until = bind(args, until);
    format!(
        "COALESCE(SUM(CASE WHEN {at} >= {from} AND {at} < {until} THEN count ELSE 0 END), 0)::BIGINT",
        at = at_us!()
    )
}

const EVENT_COLS: &str =
    "seq, at, micros, token, key_name, key_version, operation, actor, uid, result, reason";

fn event_row(r: &Row) -> Result<EventRow> {
    let version: Option<i64> = r.try_get(5)?;
    let uid: Option<i64> = r.try_get(8)?;
    Ok(EventRow {
        seq: u64_of(r.try_get(0)?),
        at: r.try_get(1)?,
        micros: u32::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0),
        token: r.try_get(3)?,
        key: r.try_get(4)?,
        key_version: version.and_then(|v| u32::try_from(v).ok()),
        operation: r.try_get(6)?,
        actor: r.try_get(7)?,
        uid: uid.and_then(|v| u32::try_from(v).ok()),
        result: to_u64(r.try_get(9)?),
        reason: r.try_get(10)?,
    })
}

impl PgInventory {
    fn collect<T>(
        &self,
        sql: &str,
        args: &Args,
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
        self.reading(|client| client.query(sql, &params)?.iter().map(f).collect())
    }
}

impl UsageLog for PgInventory {
    fn use_rows(&self, span: &Span, key: Option<&str>) -> Result<Vec<UseRow>> {
        let mut args = Args::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let baseline = sum_between(&mut args, span.baseline_from, span.window_from);
        let b_from = bind(&mut args, span.baseline_from);
        let w_from = bind(&mut args, span.window_from);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, key_version IS NOT NULL, COALESCE(actor_name, ''),
                    COALESCE(exe, ''), SUM(count)::BIGINT,
                    COALESCE(SUM(CASE WHEN result <> 0 THEN count ELSE 0 END), 0)::BIGINT,
                    {window}, {baseline},
                    MIN(CASE WHEN {at} >= {b_from} AND {at} < {w_from} THEN {at} END),
                    MAX(at)
             FROM audit
             WHERE kind = 'use' AND key_name IS NOT NULL{key}
             GROUP BY 1, 2, 3, 4, 5
             ORDER BY token COLLATE \"C\" NULLS FIRST, key_name COLLATE \"C\",
                      key_version IS NOT NULL, COALESCE(actor_name, '') COLLATE \"C\",
                      COALESCE(exe, '') COLLATE \"C\"",
            at = at_us!()
        );
        self.collect(&sql, &args, |r| {
            Ok(UseRow {
                token: r.try_get(0)?,
                key: r.try_get(1)?,
                managed: r.try_get(2)?,
                application: r.try_get(3)?,
                exe: r.try_get(4)?,
                total: u64_of(r.try_get(5)?),
                failed: u64_of(r.try_get(6)?),
                window: u64_of(r.try_get(7)?),
                baseline: u64_of(r.try_get(8)?),
                baseline_first: r.try_get(9)?,
                last_at: r.try_get(10)?,
            })
        })
    }

    fn use_hours(&self, span: &Span, key: Option<&str>) -> Result<Vec<HourRow>> {
        let mut args = Args::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let baseline = sum_between(&mut args, span.baseline_from, span.window_from);
        let (from_s, until_s) = span.seconds(span.baseline_from);
        let from_s = bind(&mut args, from_s);
        let until_s = bind(&mut args, until_s);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, (at % 86400) / 3600 AS hour, {window}, {baseline}
             FROM audit
             WHERE kind = 'use' AND key_version IS NOT NULL AND key_name IS NOT NULL
               AND at >= {from_s} AND at < {until_s}{key}
             GROUP BY 1, 2, 3
             ORDER BY token COLLATE \"C\" NULLS FIRST, key_name COLLATE \"C\", 3"
        );
        let rows = self.collect(&sql, &args, |r| {
            Ok(HourRow {
                token: r.try_get(0)?,
                key: r.try_get(1)?,
                hour: u8::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0),
                window: u64_of(r.try_get(3)?),
                baseline: u64_of(r.try_get(4)?),
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
        let mut args = Args::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let refused = placeholders(&mut args, refusals);
        let used = placeholders(&mut args, uses);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT token, key_name, kind, operation, SUM(count)::BIGINT, {window}
             FROM audit
             WHERE key_name IS NOT NULL{key}
               AND ((kind = 'refusal' AND operation IN ({refused}))
                    OR (kind = 'use' AND result = 0 AND operation IN ({used})))
             GROUP BY 1, 2, 3, 4
             ORDER BY token COLLATE \"C\" NULLS FIRST, key_name COLLATE \"C\",
                      kind COLLATE \"C\", operation COLLATE \"C\""
        );
        self.collect(&sql, &args, |r| {
            Ok(OperationRow {
                token: r.try_get(0)?,
                key: r.try_get(1)?,
                kind: r.try_get(2)?,
                operation: r.try_get(3)?,
                total: u64_of(r.try_get(4)?),
                window: u64_of(r.try_get(5)?),
            })
        })
    }

    fn failures(&self, span: &Span, kind: &str, last: usize) -> Result<Failures> {
        let mut args = Args::new();
        let window = sum_between(&mut args, span.window_from, span.until);
        let period = sum_between(&mut args, span.baseline_from, span.until);
        let kind_arg = bind(&mut args, kind.to_owned());
        let sql = format!(
            "SELECT COALESCE(SUM(count), 0)::BIGINT, {window}, {period}
             FROM audit WHERE kind = {kind_arg} AND result <> 0"
        );
        let counts = self.collect(&sql, &args, |r| {
            Ok((
                u64_of(r.try_get(0)?),
                u64_of(r.try_get(1)?),
                u64_of(r.try_get(2)?),
            ))
        })?;
        let (total, window, period) = counts.first().copied().unwrap_or_default();
        let limit = i64::try_from(last).unwrap_or(i64::MAX);
        let last = self.collect(
            &format!(
                "SELECT {EVENT_COLS} FROM audit WHERE kind = $1 AND result <> 0
                 ORDER BY seq DESC LIMIT $2"
            ),
            &vec![Box::new(kind.to_owned()), Box::new(limit)],
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
        let mut args = Args::new();
        let ops = placeholders(&mut args, operations);
        let key = key_clause(&mut args, key);
        let sql = format!(
            "SELECT {EVENT_COLS} FROM audit
             WHERE kind = 'lifecycle' AND key_name IS NOT NULL AND operation IN ({ops}){key}
             ORDER BY seq"
        );
        self.collect(&sql, &args, event_row)
    }

    fn request_before(
        &self,
        token: &str,
        key: &str,
        before: u64,
        operation: &str,
        contains: &str,
    ) -> Result<Option<EventRow>> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let args: Args = vec![
            Box::new(key.to_owned()),
            Box::new(before),
            Box::new(operation.to_owned()),
            Box::new(token.to_owned()),
            Box::new(contains.to_owned()),
            Box::new(REQUESTED),
        ];
        let rows = self.collect(
            &format!(
                "SELECT {EVENT_COLS} FROM audit
                 WHERE key_name = $1 AND seq < $2 AND kind = 'admin' AND operation = $3
                   AND (token IS NULL OR token = $4)
                   AND starts_with(reason, $6) AND strpos(reason, $5) > 0
                 ORDER BY seq DESC LIMIT 1"
            ),
            &args,
            event_row,
        )?;
        Ok(rows.into_iter().next())
    }

    fn uses_after(
        &self,
        token: &str,
        key: &str,
        versions: &[u32],
        after: u64,
        recovery: Option<RecoveryUses>,
    ) -> Result<UsesAfter> {
        let mut args: Args = vec![
            Box::new(key.to_owned()),
            Box::new(token.to_owned()),
            Box::new(i64::try_from(after).unwrap_or(i64::MAX)),
        ];
        let versions = if versions.is_empty() {
            " AND key_version IS NOT NULL".to_owned()
        } else {
            let list: Vec<String> = versions
                .iter()
                .map(|v| bind(&mut args, i64::from(*v)))
                .collect();
            format!(" AND key_version IN ({})", list.join(", "))
        };
        let allowed = match recovery {
            None => String::new(),
            Some(w) => {
                let from = bind(&mut args, i64::try_from(w.from).unwrap_or(i64::MAX));
                let until = bind(&mut args, w.until);
                let ops = placeholders(&mut args, RECOVERY_OPERATIONS);
                format!(" AND NOT (seq > {from} AND at < {until} AND operation IN ({ops}))")
            }
        };
        let sql = format!(
            "SELECT COALESCE(SUM(count), 0)::BIGINT, MIN(seq) FROM audit
             WHERE key_name = $1 AND token = $2 AND seq > $3 AND kind = 'use'
               AND result = 0{versions}{allowed}"
        );
        let rows = self.collect(&sql, &args, |r| {
            Ok(UsesAfter {
                count: u64_of(r.try_get(0)?),
                first_seq: r.try_get::<_, Option<i64>>(1)?.map(u64_of),
            })
        })?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Error::Data("an aggregate returned no row".into()))
    }
}
