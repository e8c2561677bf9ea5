//! Aggregations over the audit trail for `keyward report`: how much each
//! key was used, by whom and at what hours, what was attempted on it, and
//! what happened around its revocations.
//!
//! Everything here is SQL aggregation (`GROUP BY` with `SUM(count)`) on the
//! read-only connection: a snapshot under WAL that never holds the agent's
//! write lock, and never a record per row in memory. A use record may stand
//! for `count` equal uses (see [`crate::audit::coalesce`]), so every figure
//! sums `count`; none counts rows.
//!
//! Periods are given in unix **microseconds** ([`Span`]): a record's time
//! is `at * 1e6 + micros`, so a window of a few seconds is cut exactly, not
//! at whole seconds. Each query first narrows by `at` (indexed), then by the
//! microsecond time.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension, Row};

use crate::error::{Error, Result};
use crate::sqlite::SqliteInventory;

/// A record's time in unix microseconds, as SQL.
macro_rules! at_us {
    () => {
        "(at * 1000000 + micros)"
    };
}

/// The periods a report looks at, in unix microseconds:
/// baseline `[baseline_from, window_from)`, window `[window_from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub baseline_from: i64,
    pub window_from: i64,
    pub until: i64,
}

impl Span {
    /// `[from, until)` in whole seconds, widened to cover every record
    /// whose microsecond time may fall inside (for the `at` index).
    fn seconds(&self, from: i64) -> (i64, i64) {
        (
            from.div_euclid(1_000_000),
            self.until.div_euclid(1_000_000) + 1,
        )
    }
}

/// Uses of one key (or unmanaged object) by one application and
/// executable, from the `use` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseRow {
    /// The virtual token (`None` in records that name none).
    pub token: Option<String>,
    /// The key's name, or an unmanaged object's label (`id:<hex>`).
    pub key: String,
    /// A managed key version (the records carry a version).
    pub managed: bool,
    /// The policy's application (empty: none matched).
    pub application: String,
    /// The executable (empty when unknown).
    pub exe: String,
    /// Since the trail began.
    pub total: u64,
    /// Of `total`, those with a non-zero result.
    pub failed: u64,
    pub window: u64,
    pub baseline: u64,
    /// The first use in the baseline (unix microseconds).
    pub baseline_first: Option<i64>,
    /// The last use (unix seconds).
    pub last_at: i64,
}

/// Uses of one managed key in one hour of the day (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub token: Option<String>,
    pub key: String,
    /// 0..24.
    pub hour: u8,
    pub window: u64,
    pub baseline: u64,
}

/// Records of one kind and operation on one key, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    pub token: Option<String>,
    pub key: String,
    /// `use`, `refusal`, ...
    pub kind: String,
    pub operation: String,
    /// Since the trail began.
    pub total: u64,
    /// Of those, in the window.
    pub window: u64,
}

/// A record's place and time, with what a report shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: u64,
    pub at: i64,
    pub micros: u32,
    pub token: Option<String>,
    pub key: Option<String>,
    pub key_version: Option<u32>,
    pub operation: String,
    /// `application`, `administrator`, `agent`, `scheduler`.
    pub actor: String,
    pub uid: Option<u32>,
    pub result: u64,
    pub reason: String,
}

impl EventRow {
    /// Unix microseconds.
    pub fn at_us(&self) -> i64 {
        self.at * 1_000_000 + i64::from(self.micros)
    }
}

/// Failed records of one kind: counts and the last few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    pub window: u64,
    /// Baseline and window.
    pub period: u64,
    pub total: u64,
    /// Newest first.
    pub last: Vec<EventRow>,
}

/// Successful uses after a point of the trail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsesAfter {
    pub count: u64,
    pub first_seq: Option<u64>,
}

/// The report's questions to the trail. A supertrait of
/// [`AuditLog`](crate::AuditLog), so the agent asks the store it writes.
pub trait UsageLog: Send + Sync {
    /// Uses by token, key, managed or not, application and executable.
    /// `key`: only that key name.
    fn use_rows(&self, span: &Span, key: Option<&str>) -> Result<Vec<UseRow>>;

    /// Uses of managed keys in the baseline and the window, by hour of the
    /// day (UTC). Hours without uses are left out.
    fn use_hours(&self, span: &Span, key: Option<&str>) -> Result<Vec<HourRow>>;

    /// Counts of `refusal` records whose operation is in `refusals`, and of
    /// successful `use` records whose operation is in `uses`, by key.
    fn operation_rows(
        &self,
        span: &Span,
        key: Option<&str>,
        refusals: &[&str],
        uses: &[&str],
    ) -> Result<Vec<OperationRow>>;

    /// Records of `kind` whose result is not `CKR_OK`: counted, and the
    /// last `last` of them.
    fn failures(&self, span: &Span, kind: &str, last: usize) -> Result<Failures>;

    /// `lifecycle` records whose operation is in `operations`, by seq.
    fn lifecycle_rows(&self, key: Option<&str>, operations: &[&str]) -> Result<Vec<EventRow>>;

    /// The last `admin` record before seq `before` whose operation is
    /// `operation`, whose reason starts with `requested:` and contains
    /// `contains`, about key `key` (on `token`, or naming no token).
    fn request_before(
        &self,
        token: &str,
        key: &str,
        before: u64,
        operation: &str,
        contains: &str,
    ) -> Result<Option<EventRow>>;

    /// Successful `use` records of key `key` on `token` after seq `after`:
    /// of the versions in `versions`, or of any version when it is empty.
    fn uses_after(&self, token: &str, key: &str, versions: &[u32], after: u64)
        -> Result<UsesAfter>;
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
                rusqlite::params![key, before, operation, token, contains, crate::REQUESTED],
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
        let sql = format!(
            "SELECT COALESCE(SUM(count), 0), MIN(seq) FROM audit
             WHERE key_name = ?1 AND token = ?2 AND seq > ?3 AND kind = 'use'
               AND result = 0{versions}"
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
