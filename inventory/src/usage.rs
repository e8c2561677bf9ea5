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
//!
//! This file holds the questions ([`UsageLog`]) and the rows they answer
//! with; [`SqliteInventory`](crate::sqlite::SqliteInventory) answers them
//! in SQL.

use crate::error::Result;

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
    pub(crate) fn seconds(&self, from: i64) -> (i64, i64) {
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

/// The uses a recovery window allowed (see
/// [`UsageLog::uses_after`]): `verify` and `decrypt` recorded after seq
/// `from` (the window's first `recover` record) and before `until` (unix
/// seconds, the window's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryUses {
    pub from: u64,
    pub until: i64,
}

/// The operations a recovery window allows.
pub const RECOVERY_OPERATIONS: &[&str] = &["verify", "decrypt"];

/// The report's questions to the trail. A supertrait of
/// [`AuditLog`](crate::audit::AuditLog), so the agent asks the store it writes.
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
    /// of the versions in `versions`, or of any version when it is empty;
    /// without those `recovery` allowed.
    fn uses_after(
        &self,
        token: &str,
        key: &str,
        versions: &[u32],
        after: u64,
        recovery: Option<RecoveryUses>,
    ) -> Result<UsesAfter>;
}
