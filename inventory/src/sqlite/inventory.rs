//! [`Inventory`] for [`SqliteInventory`]: keys, versions, their state
//! history, grants, approval requests and object owners, and the
//! lifecycle change as one transaction ([`Inventory::apply`]), which
//! chains the change's trail records in the same transaction.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use keyward_domain::{ApprovalStatus, Decision, KeyState, ParseError};
use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::trail::chain_in;
use super::SqliteInventory;
use crate::checks::{check_change, check_grant, identity_len, nonempty};
use crate::error::{Error, Result};
use crate::schema;
use crate::store::Inventory;
use crate::types::{
    AppliedChange, ApprovalRecord, CertificateRecord, DateUpdates, Decided, DecisionRecord, Grant,
    KeyChange, KeyFilter, KeyRecord, KeyVersion, LifecycleChange, ObjectOwner, StateChange,
    VersionChange,
};

use crate::columns::KEY_NCOLS;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Column `idx`, a domain value stored as its text form. A value this
/// build does not know is [`Error::Data`] naming the row (`row()`: the key,
/// version or request), the column and the value; the caller's transaction
/// then ends without a change.
fn stored<T>(r: &Row<'_>, idx: usize, column: &str, row: &dyn Fn() -> String) -> rusqlite::Result<T>
where
    T: FromStr<Err = ParseError>,
{
    let text: String = r.get(idx)?;
    text.parse()
        .map_err(|e: ParseError| bad_row(idx, column, row, &e))
}

/// [`stored`] for a column that may be NULL.
fn stored_opt<T>(
    r: &Row<'_>,
    idx: usize,
    column: &str,
    row: &dyn Fn() -> String,
) -> rusqlite::Result<Option<T>>
where
    T: FromStr<Err = ParseError>,
{
    let text: Option<String> = r.get(idx)?;
    text.map(|t| {
        t.parse()
            .map_err(|e: ParseError| bad_row(idx, column, row, &e))
    })
    .transpose()
}

fn bad_row(idx: usize, column: &str, row: &dyn Fn() -> String, e: &ParseError) -> rusqlite::Error {
    let error = Error::Data(format!("{}, stored {column}: {e}", row()));
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(error))
}

fn json_list(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let name: String = r.get(1)?;
    let token: String = r.get(2)?;
    let row = || format!("key {name:?} on token {token:?}");
    Ok(KeyRecord {
        id: r.get(0)?,
        owner: r.get(3)?,
        purpose: stored(r, 4, "purpose", &row)?,
        class: r.get(5)?,
        algorithm: stored(r, 6, "algorithm", &row)?,
        state: stored(r, 7, "state", &row)?,
        created_at: r.get(8)?,
        activated_at: r.get(9)?,
        rotated_at: r.get(10)?,
        deactivated_at: r.get(11)?,
        protect_until: r.get(12)?,
        process_until: r.get(13)?,
        next_rotation: r.get(14)?,
        scope: json_list(r, 15)?,
        last_used_at: r.get(16)?,
        backup_allowed: r.get(17)?,
        recovery_until: r.get(18)?,
        reason_code: stored_opt(r, 19, "reason code", &row)?,
        name,
        token,
    })
}

/// A version whose columns (`version_cols!()`) start at `at`.
fn version_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<KeyVersion> {
    let key_id: i64 = r.get(at)?;
    let version: u32 = r.get(at + 1)?;
    let row = || format!("version {version} of key {key_id}");
    Ok(KeyVersion {
        key_id,
        version,
        backend_id: r.get(at + 2)?,
        backend_label: r.get(at + 3)?,
        state: stored(r, at + 4, "state", &row)?,
        created_at: r.get(at + 5)?,
        deactivated_at: r.get(at + 6)?,
        destroyed_at: r.get(at + 7)?,
        fingerprint: r.get(at + 8)?,
    })
}

fn change_from_row(r: &Row<'_>) -> rusqlite::Result<StateChange> {
    let seq: i64 = r.get(0)?;
    let key_id: i64 = r.get(1)?;
    let row = || format!("history row {seq} of key {key_id}");
    Ok(StateChange {
        seq,
        key_id,
        version: r.get(2)?,
        from: stored_opt(r, 3, "from state", &row)?,
        to: stored(r, 4, "to state", &row)?,
        at: r.get(5)?,
        actor: r.get(6)?,
        reason: r.get(7)?,
    })
}

/// Names a grant row for [`bad_row`].
fn grant_row(r: &Row<'_>) -> String {
    let key_id: i64 = r.get(0).unwrap_or_default();
    let application: String = r.get(1).unwrap_or_default();
    format!("grant of key {key_id} to {application:?}")
}

fn grant_from_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        key_id: r.get(0)?,
        application: r.get(1)?,
        operations: json_list(r, 2)?
            .iter()
            .map(|name| {
                name.parse()
                    .map_err(|e: ParseError| bad_row(2, "operations", &|| grant_row(r), &e))
            })
            .collect::<rusqlite::Result<_>>()?,
        expires_at: r.get(3)?,
    })
}

/// The columns `request_from_row` reads, in order.
const REQUEST_COLS: &str =
    "id, action, target, key_id, parameters, requester, created_at, expires_at, status, reason, outcome, closed_at";

fn request_from_row(r: &Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    let id: String = r.get(0)?;
    let row = || format!("request {id}");
    Ok(ApprovalRecord {
        status: stored(r, 8, "status", &row)?,
        id,
        action: r.get(1)?,
        target: r.get(2)?,
        key_id: r.get(3)?,
        parameters: r.get(4)?,
        requester: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        reason: r.get(9)?,
        outcome: r.get(10)?,
        closed_at: r.get(11)?,
    })
}

fn decision_from_row(r: &Row<'_>) -> rusqlite::Result<DecisionRecord> {
    let administrator: String = r.get(0)?;
    let row = || format!("decision of {administrator}");
    Ok(DecisionRecord {
        decision: stored(r, 1, "decision", &row)?,
        administrator,
        signature: r.get(2)?,
        at: r.get(3)?,
    })
}

/// Moves request `id` from `from` to `to` in `tx`; whether it moved.
fn close(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    from: ApprovalStatus,
    to: ApprovalStatus,
    outcome: &str,
    at: i64,
) -> Result<bool> {
    let moved = tx
        .prepare_cached(
            "UPDATE requests SET status = ?3, outcome = ?4, closed_at = ?5
              WHERE id = ?1 AND status = ?2",
        )?
        .execute(params![id, from.as_str(), to.as_str(), outcome, at])?;
    Ok(moved == 1)
}

/// Moves approved request `request` to `executed` in `tx`, as part of
/// carrying it out; a conflict (and so nothing of `tx`) when it is not
/// `approved` (carried out already, or never approved).
fn executed(tx: &rusqlite::Transaction<'_>, request: &str, outcome: &str, at: i64) -> Result<()> {
    if close(
        tx,
        request,
        ApprovalStatus::Approved,
        ApprovalStatus::Executed,
        outcome,
        at,
    )? {
        return Ok(());
    }
    Err(Error::Conflict {
        what: format!("request {request}"),
        expected: "approved".to_owned(),
        found: "another status (executed already?); nothing changed".to_owned(),
    })
}

/// A history row to append (its `seq` is assigned by [`record_change`]).
fn change(
    key_id: i64,
    version: Option<u32>,
    from: Option<KeyState>,
    to: KeyState,
    at: i64,
    actor: &str,
    reason: &str,
) -> StateChange {
    StateChange {
        seq: 0,
        key_id,
        version,
        from,
        to,
        at,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Appends one history row inside `tx`; returns it with its `seq`.
fn record_change(tx: &Transaction<'_>, mut c: StateChange) -> Result<StateChange> {
    tx.prepare_cached(
        "INSERT INTO state_changes (key_id, version, from_state, to_state, at, actor, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        c.key_id,
        c.version,
        c.from.map(KeyState::as_str),
        c.to.as_str(),
        c.at,
        c.actor,
        c.reason
    ])?;
    c.seq = tx.last_insert_rowid();
    Ok(c)
}

fn backend_id_taken(tx: &Transaction<'_>, token: &str, backend_id: &[u8]) -> Result<()> {
    let taken = tx
        .prepare_cached("SELECT 1 FROM key_versions WHERE token = ?1 AND backend_id = ?2")?
        .exists(params![token, backend_id])?;
    if taken {
        return Err(Error::Exists(format!(
            "a key version with CKA_ID {} on token {token:?}",
            hex::encode(backend_id)
        )));
    }
    Ok(())
}

fn set_key_dates(tx: &Transaction<'_>, key_id: i64, d: &DateUpdates) -> Result<()> {
    if *d == DateUpdates::default() {
        return Ok(());
    }
    tx.prepare_cached(
        "UPDATE keys SET activated_at   = coalesce(?2, activated_at),
                         rotated_at     = coalesce(?3, rotated_at),
                         deactivated_at = coalesce(?4, deactivated_at),
                         protect_until  = coalesce(?5, protect_until),
                         process_until  = coalesce(?6, process_until),
                         next_rotation  = coalesce(?7, next_rotation),
                         recovery_until = coalesce(?8, recovery_until)
          WHERE id = ?1",
    )?
    .execute(params![
        key_id,
        d.activated_at,
        d.rotated_at,
        d.deactivated_at,
        d.protect_until,
        d.process_until,
        d.next_rotation,
        d.recovery_until
    ])?;
    Ok(())
}

/// Inserts a new key (inside `tx`); returns its id.
fn insert_key(tx: &Transaction<'_>, key: &KeyRecord) -> Result<i64> {
    let scope = serde_json::to_string(&key.scope)?;
    let taken = tx
        .prepare_cached("SELECT 1 FROM keys WHERE token = ?1 AND name = ?2")?
        .exists(params![key.token, key.name])?;
    if taken {
        return Err(Error::Exists(format!(
            "key {:?} on token {:?}",
            key.name, key.token
        )));
    }
    tx.prepare_cached(
        "INSERT INTO keys (token, name, owner, purpose, class, algorithm, state, created_at,
                           activated_at, rotated_at, deactivated_at, protect_until,
                           process_until, next_rotation, scope, last_used_at, backup_allowed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        key.token,
        key.name,
        key.owner,
        key.purpose.as_str(),
        key.class,
        key.algorithm.to_string(),
        key.state.as_str(),
        key.created_at,
        key.activated_at,
        key.rotated_at,
        key.deactivated_at,
        key.protect_until,
        key.process_until,
        key.next_rotation,
        scope,
        key.last_used_at,
        key.backup_allowed
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Checks that key `key_id` is `expected` and moves it to `to` (stamping
/// its first activation and its deactivation); returns its token.
fn move_key(
    tx: &Transaction<'_>,
    key_id: i64,
    expected: KeyState,
    to: Option<KeyState>,
    c: &LifecycleChange,
) -> Result<String> {
    let (token, from, activated, deactivated): (String, KeyState, Option<i64>, Option<i64>) = tx
        .prepare_cached(
            "SELECT token, state, activated_at, deactivated_at FROM keys WHERE id = ?1",
        )?
        .query_row(params![key_id], |r| {
            let row = || format!("key {key_id}");
            Ok((
                r.get(0)?,
                stored(r, 1, "state", &row)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("key {key_id}")))?;
    if from != expected {
        return Err(Error::Conflict {
            what: format!("state of key {key_id}"),
            expected: expected.to_string(),
            found: from.to_string(),
        });
    }
    let Some(to) = to else { return Ok(token) };
    let mut stamps = DateUpdates::default();
    if to == KeyState::Active && activated.is_none() && c.dates.activated_at.is_none() {
        stamps.activated_at = Some(c.at);
    }
    if to == KeyState::Deactivated && deactivated.is_none() && c.dates.deactivated_at.is_none() {
        stamps.deactivated_at = Some(c.at);
    }
    tx.prepare_cached("UPDATE keys SET state = ?2 WHERE id = ?1")?
        .execute(params![key_id, to.as_str()])?;
    set_key_dates(tx, key_id, &stamps)?;
    Ok(token)
}

/// Inserts version `v` of key `key_id` on `token`: it must be the key's
/// next number, and its `CKA_ID` free on the token.
fn add_version(tx: &Transaction<'_>, key_id: i64, token: &str, v: &KeyVersion) -> Result<()> {
    let next: u32 = tx
        .prepare_cached("SELECT coalesce(max(version), 0) + 1 FROM key_versions WHERE key_id = ?1")?
        .query_row(params![key_id], |r| r.get(0))?;
    if v.version != next {
        return Err(Error::Conflict {
            what: format!("new version of key {key_id}"),
            expected: format!("version {}", v.version),
            found: format!("next version {next}"),
        });
    }
    backend_id_taken(tx, token, &v.backend_id)?;
    tx.prepare_cached(
        "INSERT INTO key_versions (key_id, version, token, backend_id, backend_label, state,
                                   created_at, deactivated_at, destroyed_at, fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        key_id,
        v.version,
        token,
        v.backend_id,
        v.backend_label,
        v.state.as_str(),
        v.created_at,
        v.deactivated_at,
        v.destroyed_at,
        v.fingerprint
    ])?;
    Ok(())
}

/// Checks that version `version` of key `key_id` is `from` and moves it
/// to `to`, stamping its deactivation and destruction at `at`.
fn move_version(
    tx: &Transaction<'_>,
    key_id: i64,
    version: u32,
    from: KeyState,
    to: KeyState,
    at: i64,
) -> Result<()> {
    let what = format!("version {version} of key {key_id}");
    let stored: KeyState = tx
        .prepare_cached("SELECT state FROM key_versions WHERE key_id = ?1 AND version = ?2")?
        .query_row(params![key_id, version], |r| {
            stored(r, 0, "state", &|| what.clone())
        })
        .optional()?
        .ok_or_else(|| Error::NotFound(what.clone()))?;
    if stored != from {
        return Err(Error::Conflict {
            what: format!("state of {what}"),
            expected: from.to_string(),
            found: stored.to_string(),
        });
    }
    let deactivated = matches!(to, KeyState::Deactivated | KeyState::Compromised).then_some(at);
    let destroyed = (to == KeyState::Destroyed).then_some(at);
    tx.prepare_cached(
        "UPDATE key_versions
            SET state = ?3,
                deactivated_at = coalesce(deactivated_at, ?4),
                destroyed_at = coalesce(destroyed_at, ?5)
          WHERE key_id = ?1 AND version = ?2",
    )?
    .execute(params![
        key_id,
        version,
        to.as_str(),
        deactivated,
        destroyed
    ])?;
    Ok(())
}

impl SqliteInventory {
    /// Inserts request `q`; `sole`: refused while a pending request with
    /// its action and target is open (checked in the insert's transaction).
    fn insert_request(&self, q: &ApprovalRecord, sole: bool) -> Result<()> {
        nonempty("request id", &q.id)?;
        nonempty("action", &q.action)?;
        nonempty("requester", &q.requester)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken = tx
            .prepare_cached("SELECT 1 FROM requests WHERE id = ?1")?
            .exists(params![q.id])?;
        if taken {
            return Err(Error::Exists(format!("request {}", q.id)));
        }
        if sole && q.status == ApprovalStatus::Pending {
            let open: Option<String> = tx
                .prepare_cached(
                    "SELECT id FROM requests
                      WHERE action = ?1 AND target = ?2 AND status = 'pending' AND expires_at > ?3",
                )?
                .query_row(params![q.action, q.target, q.created_at], |r| r.get(0))
                .optional()?;
            if let Some(open) = open {
                return Err(Error::Exists(format!(
                    "a pending {} request on {} (request {open})",
                    q.action, q.target
                )));
            }
        }
        tx.prepare_cached(
            "INSERT INTO requests (id, action, target, key_id, parameters, requester,
                                   created_at, expires_at, status, reason, outcome, closed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            q.id,
            q.action,
            q.target,
            q.key_id,
            q.parameters,
            q.requester,
            q.created_at,
            q.expires_at,
            q.status.as_str(),
            q.reason,
            q.outcome,
            q.closed_at,
        ])?;
        tx.commit()?;
        Ok(())
    }
}

impl SqliteInventory {
    /// [`Inventory::apply`], and with `request` the execution of that
    /// approved request, with its outcome, in the same transaction.
    fn apply_in(
        &self,
        c: &LifecycleChange,
        request: Option<(&str, &str)>,
    ) -> Result<AppliedChange> {
        check_change(c)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut history = Vec::new();
        let (key_id, token) = match &c.key {
            KeyChange::Create(key) => (insert_key(&tx, key)?, key.token.clone()),
            KeyChange::Update {
                key_id,
                expected,
                to,
                code,
            } => {
                let token = move_key(&tx, *key_id, *expected, *to, c)?;
                if let Some(to) = to {
                    // The code of the move that put the key in its state.
                    tx.prepare_cached("UPDATE keys SET reason_code = ?2 WHERE id = ?1")?
                        .execute(params![key_id, code.map(|c| c.as_str())])?;
                    history.push(record_change(
                        &tx,
                        change(
                            *key_id,
                            None,
                            Some(*expected),
                            *to,
                            c.at,
                            &c.actor,
                            &c.reason,
                        ),
                    )?);
                }
                (*key_id, token)
            }
        };
        if let KeyChange::Create(key) = &c.key {
            history.push(record_change(
                &tx,
                change(key_id, None, None, key.state, c.at, &c.actor, &c.reason),
            )?);
        }
        set_key_dates(&tx, key_id, &c.dates)?;
        for v in &c.versions {
            let (version, from, to) = match v {
                VersionChange::Add(v) => {
                    add_version(&tx, key_id, &token, v)?;
                    (v.version, None, v.state)
                }
                VersionChange::Move { version, from, to } => {
                    move_version(&tx, key_id, *version, *from, *to, c.at)?;
                    (*version, Some(*from), *to)
                }
            };
            history.push(record_change(
                &tx,
                change(key_id, Some(version), from, to, c.at, &c.actor, &c.reason),
            )?);
        }
        let trail = if c.trail.is_empty() {
            None
        } else {
            let last = chain_in(&tx, &c.trail)?;
            Some((last + 1 - c.trail.len() as u64, last))
        };
        let key = tx
            .prepare_cached(concat!(
                "SELECT ",
                key_cols!(),
                " FROM keys k WHERE k.id = ?1"
            ))?
            .query_row(params![key_id], key_from_row)?;
        if let Some((request, outcome)) = request {
            executed(&tx, request, outcome, c.at)?;
        }
        tx.commit()?;
        Ok(AppliedChange {
            key,
            history,
            trail,
        })
    }

    /// [`Inventory::grant`], and with `request` the execution of that
    /// approved request, with its outcome, in the same transaction.
    fn grant_in(&self, grant: &Grant, actor: &str, request: Option<(&str, &str)>) -> Result<()> {
        let operations = check_grant(grant, actor)?;
        let now = unix_now();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = tx
            .prepare_cached("SELECT 1 FROM keys WHERE id = ?1")?
            .exists(params![grant.key_id])?;
        if !known {
            return Err(Error::NotFound(format!("key {}", grant.key_id)));
        }
        tx.prepare_cached(
            "INSERT INTO grants (key_id, application, operations, expires_at, granted_at,
                                 granted_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key_id, application) DO UPDATE
                SET operations = excluded.operations, expires_at = excluded.expires_at,
                    granted_at = excluded.granted_at, granted_by = excluded.granted_by",
        )?
        .execute(params![
            grant.key_id,
            grant.application,
            operations,
            grant.expires_at,
            now,
            actor
        ])?;
        tx.prepare_cached(
            "INSERT INTO grant_changes (key_id, application, action, operations, expires_at,
                                        at, actor)
             VALUES (?1, ?2, 'grant', ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            grant.key_id,
            grant.application,
            operations,
            grant.expires_at,
            now,
            actor
        ])?;
        if let Some((request, outcome)) = request {
            executed(&tx, request, outcome, now)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Inventory for SqliteInventory {
    fn schema_version(&self) -> Result<u32> {
        Ok(schema::version(&self.conn())?)
    }

    fn apply(&self, c: &LifecycleChange) -> Result<AppliedChange> {
        self.apply_in(c, None)
    }

    fn apply_approved(
        &self,
        c: &LifecycleChange,
        request: &str,
        outcome: &str,
    ) -> Result<AppliedChange> {
        self.apply_in(c, Some((request, outcome)))
    }

    fn key(&self, token: &str, name: &str) -> Result<Option<KeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys k WHERE k.token = ?1 AND k.name = ?2"
        ))?;
        Ok(stmt
            .query_row(params![token, name], key_from_row)
            .optional()?)
    }

    fn key_by_id(&self, id: i64) -> Result<Option<KeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys k WHERE k.id = ?1"
        ))?;
        Ok(stmt.query_row(params![id], key_from_row).optional()?)
    }

    fn keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys k
              WHERE (?1 IS NULL OR k.token = ?1)
                AND (?2 IS NULL OR k.state = ?2)
                AND (?3 IS NULL OR k.class = ?3)
              ORDER BY k.token, k.name"
        ))?;
        let rows = stmt.query_map(
            params![
                filter.token,
                filter.state.map(KeyState::as_str),
                filter.class
            ],
            key_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn versions(&self, key_id: i64) -> Result<Vec<KeyVersion>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            version_cols!(),
            " FROM key_versions v WHERE v.key_id = ?1 ORDER BY v.version"
        ))?;
        let rows = stmt.query_map(params![key_id], |r| version_from_row(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn version_by_backend_id(
        &self,
        token: &str,
        backend_id: &[u8],
    ) -> Result<Option<(KeyRecord, KeyVersion)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            key_cols!(),
            ", ",
            version_cols!(),
            " FROM key_versions v JOIN keys k ON k.id = v.key_id
              WHERE v.token = ?1 AND v.backend_id = ?2"
        ))?;
        Ok(stmt
            .query_row(params![token, backend_id], |r| {
                Ok((key_from_row(r)?, version_from_row(r, KEY_NCOLS)?))
            })
            .optional()?)
    }

    fn history(&self, key_id: i64) -> Result<Vec<StateChange>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, key_id, version, from_state, to_state, at, actor, reason
               FROM state_changes WHERE key_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![key_id], change_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn grant(&self, grant: &Grant, actor: &str) -> Result<()> {
        self.grant_in(grant, actor, None)
    }

    fn grant_approved(
        &self,
        grant: &Grant,
        actor: &str,
        request: &str,
        outcome: &str,
    ) -> Result<()> {
        self.grant_in(grant, actor, Some((request, outcome)))
    }

    fn revoke_grant(&self, key_id: i64, application: &str, actor: &str) -> Result<()> {
        nonempty("actor", actor)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed = tx
            .prepare_cached("DELETE FROM grants WHERE key_id = ?1 AND application = ?2")?
            .execute(params![key_id, application])?;
        if removed == 0 {
            return Err(Error::NotFound(format!(
                "grant of key {key_id} to {application:?}"
            )));
        }
        tx.prepare_cached(
            "INSERT INTO grant_changes (key_id, application, action, at, actor)
             VALUES (?1, ?2, 'revoke', ?3, ?4)",
        )?
        .execute(params![key_id, application, unix_now(), actor])?;
        tx.commit()?;
        Ok(())
    }

    fn grants(&self, key_id: i64) -> Result<Vec<Grant>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT key_id, application, operations, expires_at FROM grants
              WHERE key_id = ?1 ORDER BY application",
        )?;
        let rows = stmt.query_map(params![key_id], grant_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn grants_for_application(&self, application: &str) -> Result<Vec<Grant>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT key_id, application, operations, expires_at FROM grants
              WHERE application = ?1 ORDER BY key_id",
        )?;
        let rows = stmt.query_map(params![application], grant_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn touch(&self, key_id: i64, at: i64) -> Result<()> {
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let updated = conn
            .prepare_cached(
                "UPDATE keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2)
                  WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![key_id, at]));
        // Restore before anything else, so no lifecycle write runs at NORMAL.
        conn.pragma_update(None, "synchronous", "FULL")?;
        if updated? == 0 {
            return Err(Error::NotFound(format!("key {key_id}")));
        }
        Ok(())
    }

    fn create_request(&self, q: &ApprovalRecord) -> Result<()> {
        self.insert_request(q, false)
    }

    fn create_sole_request(&self, q: &ApprovalRecord) -> Result<()> {
        self.insert_request(q, true)
    }

    fn request(&self, id: &str) -> Result<Option<ApprovalRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests WHERE id = ?1"
        ))?;
        Ok(stmt.query_row(params![id], request_from_row).optional()?)
    }

    fn requests(&self, status: Option<ApprovalStatus>) -> Result<Vec<ApprovalRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests
              WHERE ?1 IS NULL OR status = ?1 ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(
            params![status.map(ApprovalStatus::as_str)],
            request_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn decide_request(&self, id: &str, d: &DecisionRecord, needed: u32) -> Result<Decided> {
        nonempty("administrator", &d.administrator)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (status, expires_at): (String, i64) = tx
            .prepare_cached("SELECT status, expires_at FROM requests WHERE id = ?1")?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("request {id}")))?;
        let status: ApprovalStatus = status
            .parse()
            .map_err(|e: ParseError| Error::Data(format!("request {id}: status: {e}")))?;
        if status != ApprovalStatus::Pending {
            return Ok(Decided::Closed(status));
        }
        if d.at >= expires_at {
            close(
                &tx,
                id,
                ApprovalStatus::Pending,
                ApprovalStatus::Expired,
                "not approved in time",
                d.at,
            )?;
            tx.commit()?;
            return Ok(Decided::Closed(ApprovalStatus::Expired));
        }
        let inserted = tx
            .prepare_cached(
                "INSERT INTO decisions (request_id, administrator, decision, signature, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (request_id, administrator) DO NOTHING",
            )?
            .execute(params![
                id,
                d.administrator,
                d.decision.as_str(),
                d.signature,
                d.at
            ])?;
        if inserted == 0 {
            return Ok(Decided::Repeated);
        }
        let decided = match d.decision {
            Decision::Deny => {
                let why = format!("denied by {}", d.administrator);
                close(
                    &tx,
                    id,
                    ApprovalStatus::Pending,
                    ApprovalStatus::Denied,
                    &why,
                    d.at,
                )?;
                Decided::Denied
            }
            Decision::Approve => {
                let approvals: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM decisions WHERE request_id = ?1 AND decision = 'approve'",
                    )?
                    .query_row(params![id], |r| r.get(0))?;
                let approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
                if approvals >= needed {
                    tx.prepare_cached("UPDATE requests SET status = 'approved' WHERE id = ?1")?
                        .execute(params![id])?;
                    Decided::Approved { approvals }
                } else {
                    Decided::Counted { approvals }
                }
            }
        };
        tx.commit()?;
        Ok(decided)
    }

    fn decisions(&self, id: &str) -> Result<Vec<DecisionRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT administrator, decision, signature, at FROM decisions
              WHERE request_id = ?1 ORDER BY at, rowid",
        )?;
        let rows = stmt.query_map(params![id], decision_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn close_request(
        &self,
        id: &str,
        from: ApprovalStatus,
        to: ApprovalStatus,
        outcome: &str,
        at: i64,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = close(&tx, id, from, to, outcome, at)?;
        tx.commit()?;
        Ok(moved)
    }

    fn set_fingerprint(&self, key_id: i64, version: u32, fingerprint: &[u8]) -> Result<()> {
        if fingerprint.len() != 32 {
            return Err(Error::Invalid(format!(
                "a fingerprint has 32 bytes, not {}",
                fingerprint.len()
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<Option<Vec<u8>>> = tx
            .prepare_cached(
                "SELECT fingerprint FROM key_versions WHERE key_id = ?1 AND version = ?2",
            )?
            .query_row(params![key_id, version], |r| r.get(0))
            .optional()?;
        match found {
            None => {
                return Err(Error::NotFound(format!(
                    "version {version} of key {key_id}"
                )))
            }
            Some(Some(old)) if old == fingerprint => return Ok(()),
            Some(Some(_)) => {
                return Err(Error::Conflict {
                    what: format!("the fingerprint of version {version} of key {key_id}"),
                    expected: "none recorded".into(),
                    found: "another one".into(),
                })
            }
            Some(None) => {}
        }
        tx.prepare_cached(
            "UPDATE key_versions SET fingerprint = ?3 WHERE key_id = ?1 AND version = ?2",
        )?
        .execute(params![key_id, version, fingerprint])?;
        tx.commit()?;
        Ok(())
    }

    fn replace_fingerprint(&self, key_id: i64, version: u32, from: &[u8], to: &[u8]) -> Result<()> {
        if to.len() != 32 {
            return Err(Error::Invalid(format!(
                "a fingerprint has 32 bytes, not {}",
                to.len()
            )));
        }
        let conn = self.conn();
        let done = conn
            .prepare_cached(
                "UPDATE key_versions SET fingerprint = ?4
                 WHERE key_id = ?1 AND version = ?2 AND fingerprint = ?3",
            )?
            .execute(params![key_id, version, from, to])?;
        if done == 0 {
            return Err(Error::Conflict {
                what: format!("the fingerprint of version {version} of key {key_id}"),
                expected: hex::encode(from),
                found: "another one, or no such version".into(),
            });
        }
        Ok(())
    }

    fn agent_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT token, fingerprint FROM agent_keys WHERE name = ?1")?;
        Ok(stmt
            .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn set_agent_key(&self, name: &str, token: &str, fingerprint: &[u8], at: i64) -> Result<()> {
        nonempty("name", name)?;
        if fingerprint.len() != 32 {
            return Err(Error::Invalid(format!(
                "a fingerprint has 32 bytes, not {}",
                fingerprint.len()
            )));
        }
        let conn = self.conn();
        let done = conn
            .prepare_cached(
                "INSERT INTO agent_keys (name, token, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![name, token, fingerprint, at])?;
        if done == 0 {
            return Err(Error::Exists(format!("agent key {name:?}")));
        }
        Ok(())
    }

    fn add_object_owner(
        &self,
        token: &str,
        identity: &[u8],
        application: &str,
        at: i64,
    ) -> Result<()> {
        nonempty("token", token)?;
        nonempty("application", application)?;
        identity_len(identity)?;
        self.conn()
            .prepare_cached(
                "INSERT INTO object_owners (token, identity, application, count, created_at)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (token, identity, application) DO UPDATE SET count = count + 1",
            )?
            .execute(params![token, identity, application, at])?;
        Ok(())
    }

    fn remove_object_owner(&self, token: &str, identity: &[u8], application: &str) -> Result<()> {
        identity_len(identity)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count: Option<i64> = tx
            .prepare_cached(
                "SELECT count FROM object_owners
                  WHERE token = ?1 AND identity = ?2 AND application = ?3",
            )?
            .query_row(params![token, identity, application], |r| r.get(0))
            .optional()?;
        match count {
            None => {
                return Err(Error::NotFound(format!(
                    "object {} of {application:?} on {token:?}",
                    hex::encode(identity)
                )))
            }
            Some(n) if n > 1 => tx
                .prepare_cached(
                    "UPDATE object_owners SET count = count - 1
                      WHERE token = ?1 AND identity = ?2 AND application = ?3",
                )?
                .execute(params![token, identity, application])?,
            Some(_) => tx
                .prepare_cached(
                    "DELETE FROM object_owners
                      WHERE token = ?1 AND identity = ?2 AND application = ?3",
                )?
                .execute(params![token, identity, application])?,
        };
        tx.commit()?;
        Ok(())
    }

    fn object_owners(&self) -> Result<Vec<ObjectOwner>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT token, identity, application, count FROM object_owners
              ORDER BY token, identity, application",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ObjectOwner {
                token: r.get(0)?,
                identity: r.get(1)?,
                application: r.get(2)?,
                count: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn record_certificate(&self, cert: &CertificateRecord, replace: bool) -> Result<()> {
        if cert.sha256.len() != 32 {
            return Err(Error::Invalid(format!(
                "a certificate's SHA-256 has 32 bytes, not {}",
                cert.sha256.len()
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM key_versions WHERE key_id = ?1 AND version = ?2")?
            .query_row(params![cert.key_id, cert.version], |r| r.get(0))
            .optional()?;
        if known.is_none() {
            return Err(Error::NotFound(format!(
                "version {} of key {}",
                cert.version, cert.key_id
            )));
        }
        if replace {
            tx.prepare_cached("DELETE FROM certificates WHERE key_id = ?1 AND version = ?2")?
                .execute(params![cert.key_id, cert.version])?;
        }
        tx.prepare_cached(
            "INSERT INTO certificates (key_id, version, subject, not_before, not_after, sha256,
                                       imported_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (key_id, version, sha256) DO UPDATE SET imported_at = excluded.imported_at",
        )?
        .execute(params![
            cert.key_id,
            cert.version,
            cert.subject,
            cert.not_before,
            cert.not_after,
            cert.sha256,
            cert.imported_at
        ])?;
        tx.commit()?;
        Ok(())
    }

    fn certificates(&self, key_id: Option<i64>) -> Result<Vec<CertificateRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT key_id, version, subject, not_before, not_after, sha256, imported_at
               FROM certificates WHERE ?1 IS NULL OR key_id = ?1
              ORDER BY key_id, version, not_after",
        )?;
        let rows = stmt.query_map(params![key_id], |r| {
            Ok(CertificateRecord {
                key_id: r.get(0)?,
                version: r.get(1)?,
                subject: r.get(2)?,
                not_before: r.get(3)?,
                not_after: r.get(4)?,
                sha256: r.get(5)?,
                imported_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
