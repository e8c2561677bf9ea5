//! [`Inventory`] for [`PgInventory`]: the SQLite store's behaviour (its
//! checks, errors and messages) on a database several agents write at
//! once.
//!
//! Concurrency: every write is one READ COMMITTED transaction that locks
//! the rows it decides on before reading them (`SELECT ... FOR NO KEY
//! UPDATE`, or the `UPDATE` itself), so of two agents racing on one key or
//! one request the second reads what the first committed: one succeeds,
//! the other gets [`Error::Conflict`] (or its decision is counted after
//! the first). Locks are always taken in one order — the key row, then a
//! request row, then the audit chain's advisory lock
//! ([`trail::chain_in`], last) — so two writers never wait on each other
//! in a cycle. Every write that changes what agents cache sends its
//! [`Notice`] inside its transaction.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use ::postgres::error::SqlState;
use ::postgres::types::Type;
use ::postgres::{Client, IsolationLevel, Row, Transaction};
use keyward_domain::{ApprovalStatus, Decision, KeyState, Operation, ParseError, ReasonCode};

use super::{notify, trail, Notice, PgInventory};
use crate::checks::{check_change, check_grant, identity_len, nonempty};
use crate::error::{Error, Result};
use crate::store::Inventory;
use crate::types::{
    AppliedChange, ApprovalRecord, CertificateRecord, DateUpdates, Decided, DecisionRecord, Grant,
    KeyChange, KeyFilter, KeyRecord, KeyVersion, LifecycleChange, ObjectOwner, StateChange,
    VersionChange,
};

use crate::columns::KEY_NCOLS;
macro_rules! request_cols {
    () => {
        "id, action, target, key_id, parameters, requester, created_at, expires_at, status, \
         reason, outcome, closed_at"
    };
}

/// Key of the advisory lock (with the hash of a request's action and
/// target as its second half) under which a sole request is checked and
/// inserted (`KWRQ`).
const SOLE_LOCK: i32 = 0x4B57_5251;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A write's transaction: READ COMMITTED, each statement seeing what was
/// committed before it, the rows it decides on locked first.
fn begin(client: &mut Client) -> Result<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?)
}

/// `e`, or [`Error::Exists`] saying `what` when `e` is a violation of the
/// unique constraint `constraint` (another agent's insert committed first).
fn exists_or(e: ::postgres::Error, constraint: &str, what: impl FnOnce() -> String) -> Error {
    let unique = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(|db| db.constraint()) == Some(constraint);
    if unique {
        return Error::Exists(what());
    }
    e.into()
}

/// A domain value stored as its text form; [`Error::Data`] naming the row
/// (`row()`), the column and the value when this build does not know it.
fn parsed<T>(text: &str, column: &str, row: &dyn Fn() -> String) -> Result<T>
where
    T: FromStr<Err = ParseError>,
{
    text.parse()
        .map_err(|e: ParseError| Error::Data(format!("{}, stored {column}: {e}", row())))
}

/// Column `idx` as a domain value.
fn stored<T>(r: &Row, idx: usize, column: &str, row: &dyn Fn() -> String) -> Result<T>
where
    T: FromStr<Err = ParseError>,
{
    let text: String = r.try_get(idx)?;
    parsed(&text, column, row)
}

/// [`stored`] for a column that may be NULL.
fn stored_opt<T>(r: &Row, idx: usize, column: &str, row: &dyn Fn() -> String) -> Result<Option<T>>
where
    T: FromStr<Err = ParseError>,
{
    let text: Option<String> = r.try_get(idx)?;
    text.map(|t| parsed(&t, column, row)).transpose()
}

/// A version number (`BIGINT`) as the `u32` it was written from.
fn version_number(v: i64, row: &dyn Fn() -> String) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Data(format!("{}, stored version {v}", row())))
}

fn key_from_row(r: &Row) -> Result<KeyRecord> {
    let name: String = r.try_get(1)?;
    let token: String = r.try_get(2)?;
    let row = || format!("key {name:?} on token {token:?}");
    let scope: String = r.try_get(15)?;
    let backup: i64 = r.try_get(17)?;
    Ok(KeyRecord {
        id: r.try_get(0)?,
        owner: r.try_get(3)?,
        purpose: stored(r, 4, "purpose", &row)?,
        class: r.try_get(5)?,
        algorithm: stored(r, 6, "algorithm", &row)?,
        state: stored(r, 7, "state", &row)?,
        created_at: r.try_get(8)?,
        activated_at: r.try_get(9)?,
        rotated_at: r.try_get(10)?,
        deactivated_at: r.try_get(11)?,
        protect_until: r.try_get(12)?,
        process_until: r.try_get(13)?,
        next_rotation: r.try_get(14)?,
        scope: serde_json::from_str(&scope)?,
        last_used_at: r.try_get(16)?,
        backup_allowed: backup != 0,
        recovery_until: r.try_get(18)?,
        reason_code: stored_opt(r, 19, "reason code", &row)?,
        name,
        token,
    })
}

/// A version whose columns (`version_cols!()`) start at `at`.
fn version_from_row(r: &Row, at: usize) -> Result<KeyVersion> {
    let key_id: i64 = r.try_get(at)?;
    let number: i64 = r.try_get(at + 1)?;
    let row = || format!("version {number} of key {key_id}");
    Ok(KeyVersion {
        key_id,
        version: version_number(number, &row)?,
        backend_id: r.try_get(at + 2)?,
        backend_label: r.try_get(at + 3)?,
        state: stored(r, at + 4, "state", &row)?,
        created_at: r.try_get(at + 5)?,
        deactivated_at: r.try_get(at + 6)?,
        destroyed_at: r.try_get(at + 7)?,
        fingerprint: r.try_get(at + 8)?,
    })
}

fn change_from_row(r: &Row) -> Result<StateChange> {
    let seq: i64 = r.try_get(0)?;
    let key_id: i64 = r.try_get(1)?;
    let row = || format!("history row {seq} of key {key_id}");
    let version: Option<i64> = r.try_get(2)?;
    Ok(StateChange {
        seq,
        key_id,
        version: version.map(|v| version_number(v, &row)).transpose()?,
        from: stored_opt(r, 3, "from state", &row)?,
        to: stored(r, 4, "to state", &row)?,
        at: r.try_get(5)?,
        actor: r.try_get(6)?,
        reason: r.try_get(7)?,
    })
}

fn grant_from_row(r: &Row) -> Result<Grant> {
    let key_id: i64 = r.try_get(0)?;
    let application: String = r.try_get(1)?;
    let row = || format!("grant of key {key_id} to {application:?}");
    let names: Vec<String> = serde_json::from_str(&r.try_get::<_, String>(2)?)?;
    let operations = names
        .iter()
        .map(|name| parsed::<Operation>(name, "operations", &row))
        .collect::<Result<_>>()?;
    Ok(Grant {
        operations,
        expires_at: r.try_get(3)?,
        key_id,
        application,
    })
}

fn request_from_row(r: &Row) -> Result<ApprovalRecord> {
    let id: String = r.try_get(0)?;
    let row = || format!("request {id}");
    Ok(ApprovalRecord {
        status: stored(r, 8, "status", &row)?,
        action: r.try_get(1)?,
        target: r.try_get(2)?,
        key_id: r.try_get(3)?,
        parameters: r.try_get(4)?,
        requester: r.try_get(5)?,
        created_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        reason: r.try_get(9)?,
        outcome: r.try_get(10)?,
        closed_at: r.try_get(11)?,
        id,
    })
}

fn decision_from_row(r: &Row) -> Result<DecisionRecord> {
    let administrator: String = r.try_get(0)?;
    let row = || format!("decision of {administrator}");
    Ok(DecisionRecord {
        decision: stored(r, 1, "decision", &row)?,
        signature: r.try_get(2)?,
        at: r.try_get(3)?,
        administrator,
    })
}

fn certificate_from_row(r: &Row) -> Result<CertificateRecord> {
    let key_id: i64 = r.try_get(0)?;
    let version: i64 = r.try_get(1)?;
    let row = || format!("certificate of version {version} of key {key_id}");
    Ok(CertificateRecord {
        key_id,
        version: version_number(version, &row)?,
        subject: r.try_get(2)?,
        not_before: r.try_get(3)?,
        not_after: r.try_get(4)?,
        sha256: r.try_get(5)?,
        imported_at: r.try_get(6)?,
    })
}

fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Moves request `id` from `from` to `to` in `tx` (the row locked by the
/// update); whether it moved.
fn close(
    tx: &mut Transaction<'_>,
    id: &str,
    from: ApprovalStatus,
    to: ApprovalStatus,
    outcome: &str,
    at: i64,
) -> Result<bool> {
    let moved = tx.execute(
        "UPDATE requests SET status = $3, outcome = $4, closed_at = $5
          WHERE id = $1 AND status = $2",
        &[&id, &from.as_str(), &to.as_str(), &outcome, &at],
    )?;
    Ok(moved == 1)
}

/// Moves approved request `request` to `executed` in `tx`; a conflict (and
/// so nothing of `tx`) when it is not `approved`.
fn executed(tx: &mut Transaction<'_>, request: &str, outcome: &str, at: i64) -> Result<()> {
    if close(
        tx,
        request,
        ApprovalStatus::Approved,
        ApprovalStatus::Executed,
        outcome,
        at,
    )? {
        return notify(tx, &Notice::Request(request.to_owned()));
    }
    Err(Error::Conflict {
        what: format!("request {request}"),
        expected: "approved".to_owned(),
        found: "another status (executed already?); nothing changed".to_owned(),
    })
}

fn fingerprint_len(fingerprint: &[u8]) -> Result<()> {
    if fingerprint.len() != 32 {
        return Err(Error::Invalid(format!(
            "a fingerprint has 32 bytes, not {}",
            fingerprint.len()
        )));
    }
    Ok(())
}

/// Locks key `key_id`'s row until `tx` ends (every write on a key takes
/// it first); [`Error::NotFound`] when there is no such key.
fn lock_key(tx: &mut Transaction<'_>, key_id: i64) -> Result<()> {
    tx.query_opt(
        "SELECT 1 FROM keys WHERE id = $1 FOR NO KEY UPDATE",
        &[&key_id],
    )?
    .ok_or_else(|| Error::NotFound(format!("key {key_id}")))?;
    Ok(())
}

/// Appends one history row of `c` inside `tx`; returns it with its `seq`.
fn record_change(
    tx: &mut Transaction<'_>,
    key_id: i64,
    version: Option<u32>,
    from: Option<KeyState>,
    to: KeyState,
    c: &LifecycleChange,
) -> Result<StateChange> {
    let row = tx.query_typed_one(
        "INSERT INTO state_changes (key_id, version, from_state, to_state, at, actor, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        &[
            (&key_id, Type::INT8),
            (&version.map(i64::from), Type::INT8),
            (&from.map(KeyState::as_str), Type::TEXT),
            (&to.as_str(), Type::TEXT),
            (&c.at, Type::INT8),
            (&c.actor, Type::TEXT),
            (&c.reason, Type::TEXT),
        ],
    )?;
    Ok(StateChange {
        seq: row.try_get(0)?,
        key_id,
        version,
        from,
        to,
        at: c.at,
        actor: c.actor.clone(),
        reason: c.reason.clone(),
    })
}

fn backend_id_taken(tx: &mut Transaction<'_>, token: &str, backend_id: &[u8]) -> Result<()> {
    let taken = tx.query_opt(
        "SELECT 1 FROM key_versions WHERE token = $1 AND backend_id = $2",
        &[&token, &backend_id],
    )?;
    if taken.is_some() {
        return Err(taken_backend_id(token, backend_id));
    }
    Ok(())
}

fn taken_backend_id(token: &str, backend_id: &[u8]) -> Error {
    Error::Exists(taken_backend_text(token, backend_id))
}

fn taken_backend_text(token: &str, backend_id: &[u8]) -> String {
    format!(
        "a key version with CKA_ID {} on token {token:?}",
        hex::encode(backend_id)
    )
}

fn set_key_dates(tx: &mut Transaction<'_>, key_id: i64, d: &DateUpdates) -> Result<()> {
    if *d == DateUpdates::default() {
        return Ok(());
    }
    tx.execute(
        "UPDATE keys SET activated_at   = coalesce($2, activated_at),
                         rotated_at     = coalesce($3, rotated_at),
                         deactivated_at = coalesce($4, deactivated_at),
                         protect_until  = coalesce($5, protect_until),
                         process_until  = coalesce($6, process_until),
                         next_rotation  = coalesce($7, next_rotation),
                         recovery_until = coalesce($8, recovery_until)
          WHERE id = $1",
        &[
            &key_id,
            &d.activated_at,
            &d.rotated_at,
            &d.deactivated_at,
            &d.protect_until,
            &d.process_until,
            &d.next_rotation,
            &d.recovery_until,
        ],
    )?;
    Ok(())
}

/// Inserts a new key (inside `tx`); returns its id. Of two agents
/// creating one name at once, the second waits on the unique index and
/// gets [`Error::Exists`].
fn insert_key(tx: &mut Transaction<'_>, key: &KeyRecord) -> Result<i64> {
    let scope = serde_json::to_string(&key.scope)?;
    let taken_text = || format!("key {:?} on token {:?}", key.name, key.token);
    let taken = tx.query_opt(
        "SELECT 1 FROM keys WHERE token = $1 AND name = $2",
        &[&key.token, &key.name],
    )?;
    if taken.is_some() {
        return Err(Error::Exists(taken_text()));
    }
    let row = tx
        .query_one(
            "INSERT INTO keys (token, name, owner, purpose, class, algorithm, state, created_at,
                               activated_at, rotated_at, deactivated_at, protect_until,
                               process_until, next_rotation, scope, last_used_at, backup_allowed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             RETURNING id",
            &[
                &key.token,
                &key.name,
                &key.owner,
                &key.purpose.as_str(),
                &key.class,
                &key.algorithm.to_string(),
                &key.state.as_str(),
                &key.created_at,
                &key.activated_at,
                &key.rotated_at,
                &key.deactivated_at,
                &key.protect_until,
                &key.process_until,
                &key.next_rotation,
                &scope,
                &key.last_used_at,
                &i64::from(key.backup_allowed),
            ],
        )
        .map_err(|e| exists_or(e, "keys_token_name_key", taken_text))?;
    Ok(row.try_get(0)?)
}

/// Locks key `key_id`, checks that it is `expected` and moves it to `to`
/// with the move's reason `code` (stamping its first activation and its
/// deactivation); returns its token. Typed statements: one round trip
/// each.
fn move_key(
    tx: &mut Transaction<'_>,
    key_id: i64,
    expected: KeyState,
    to: Option<KeyState>,
    code: Option<ReasonCode>,
    c: &LifecycleChange,
) -> Result<String> {
    let row = tx
        .query_typed(
            "SELECT token, state, activated_at, deactivated_at FROM keys WHERE id = $1
               FOR NO KEY UPDATE",
            &[(&key_id, Type::INT8)],
        )?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("key {key_id}")))?;
    let token: String = row.try_get(0)?;
    let from: KeyState = stored(&row, 1, "state", &|| format!("key {key_id}"))?;
    let activated: Option<i64> = row.try_get(2)?;
    let deactivated: Option<i64> = row.try_get(3)?;
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
    tx.execute_typed(
        "UPDATE keys SET state = $2, reason_code = $3,
                         activated_at = coalesce(activated_at, $4),
                         deactivated_at = coalesce(deactivated_at, $5)
          WHERE id = $1",
        &[
            (&key_id, Type::INT8),
            (&to.as_str(), Type::TEXT),
            (&code.map(|c| c.as_str()), Type::TEXT),
            (&stamps.activated_at, Type::INT8),
            (&stamps.deactivated_at, Type::INT8),
        ],
    )?;
    Ok(token)
}

/// Inserts version `v` of key `key_id` (locked) on `token`: it must be
/// the key's next number, and its `CKA_ID` free on the token.
fn add_version(tx: &mut Transaction<'_>, key_id: i64, token: &str, v: &KeyVersion) -> Result<()> {
    let next: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM key_versions WHERE key_id = $1",
            &[&key_id],
        )?
        .try_get(0)?;
    if i64::from(v.version) != next {
        return Err(Error::Conflict {
            what: format!("new version of key {key_id}"),
            expected: format!("version {}", v.version),
            found: format!("next version {next}"),
        });
    }
    backend_id_taken(tx, token, &v.backend_id)?;
    tx.execute(
        "INSERT INTO key_versions (key_id, version, token, backend_id, backend_label, state,
                                   created_at, deactivated_at, destroyed_at, fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &key_id,
            &i64::from(v.version),
            &token,
            &v.backend_id,
            &v.backend_label,
            &v.state.as_str(),
            &v.created_at,
            &v.deactivated_at,
            &v.destroyed_at,
            &v.fingerprint,
        ],
    )
    .map_err(|e| {
        exists_or(e, "key_versions_token_backend_id_key", || {
            taken_backend_text(token, &v.backend_id)
        })
    })?;
    Ok(())
}

/// Checks that version `version` of key `key_id` is `from` and moves it
/// to `to`, stamping its deactivation and destruction at `at`.
fn move_version(
    tx: &mut Transaction<'_>,
    key_id: i64,
    version: u32,
    from: KeyState,
    to: KeyState,
    at: i64,
) -> Result<()> {
    let what = format!("version {version} of key {key_id}");
    let row = tx
        .query_opt(
            "SELECT state FROM key_versions WHERE key_id = $1 AND version = $2
               FOR NO KEY UPDATE",
            &[&key_id, &i64::from(version)],
        )?
        .ok_or_else(|| Error::NotFound(what.clone()))?;
    let found: KeyState = stored(&row, 0, "state", &|| what.clone())?;
    if found != from {
        return Err(Error::Conflict {
            what: format!("state of {what}"),
            expected: from.to_string(),
            found: found.to_string(),
        });
    }
    let deactivated = matches!(to, KeyState::Deactivated | KeyState::Compromised).then_some(at);
    let destroyed = (to == KeyState::Destroyed).then_some(at);
    tx.execute(
        "UPDATE key_versions
            SET state = $3,
                deactivated_at = coalesce(deactivated_at, $4),
                destroyed_at = coalesce(destroyed_at, $5)
          WHERE key_id = $1 AND version = $2",
        &[
            &key_id,
            &i64::from(version),
            &to.as_str(),
            &deactivated,
            &destroyed,
        ],
    )?;
    Ok(())
}

impl PgInventory {
    /// Checks the store's own invariants; returns the problems found
    /// (empty: consistent): every key's and version's state is the `to` of
    /// its last history row, and each history row starts where the
    /// previous one for the same key or version ended. (The server keeps
    /// its pages and foreign keys itself.)
    pub fn check(&self) -> Result<Vec<String>> {
        self.reading(|client| {
            let mut problems = Vec::new();
            for r in client.query(
                "SELECT k.id, k.state,
                        (SELECT s.to_state FROM state_changes s
                          WHERE s.key_id = k.id AND s.version IS NULL
                          ORDER BY s.seq DESC LIMIT 1)
                   FROM keys k ORDER BY k.id",
                &[],
            )? {
                let (id, state, last): (i64, String, Option<String>) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                if last.as_deref() != Some(state.as_str()) {
                    problems.push(format!(
                        "key {id} is {state} but its history ends at {last:?}"
                    ));
                }
            }
            for r in client.query(
                "SELECT v.key_id, v.version, v.state,
                        (SELECT s.to_state FROM state_changes s
                          WHERE s.key_id = v.key_id AND s.version = v.version
                          ORDER BY s.seq DESC LIMIT 1)
                   FROM key_versions v ORDER BY v.key_id, v.version",
                &[],
            )? {
                let (id, v, state, last): (i64, i64, String, Option<String>) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                if last.as_deref() != Some(state.as_str()) {
                    problems.push(format!(
                        "key {id} version {v} is {state} but its history ends at {last:?}"
                    ));
                }
            }
            for r in client.query(
                "SELECT seq, key_id, version, from_state, prev FROM (
                     SELECT seq, key_id, version, from_state,
                            lag(to_state) OVER (PARTITION BY key_id, version ORDER BY seq) AS prev
                       FROM state_changes) h
                  WHERE from_state IS DISTINCT FROM prev
                  ORDER BY seq",
                &[],
            )? {
                problems.push(format!(
                    "history row {} (key {}, version {:?}) starts at {:?} but the previous ended at {:?}",
                    r.try_get::<_, i64>(0)?,
                    r.try_get::<_, i64>(1)?,
                    r.try_get::<_, Option<i64>>(2)?,
                    r.try_get::<_, Option<String>>(3)?,
                    r.try_get::<_, Option<String>>(4)?
                ));
            }
            Ok(problems)
        })
    }

    /// [`Inventory::apply`], and with `request` the execution of that
    /// approved request, with its outcome, in the same transaction.
    fn apply_in(
        &self,
        c: &LifecycleChange,
        request: Option<(&str, &str)>,
    ) -> Result<AppliedChange> {
        check_change(c)?;
        let host = self.host();
        self.with(|client| {
            let mut tx = begin(client)?;
            let mut history = Vec::new();
            let (key_id, token) = match &c.key {
                KeyChange::Create(key) => (insert_key(&mut tx, key)?, key.token.clone()),
                KeyChange::Update {
                    key_id,
                    expected,
                    to,
                    code,
                } => {
                    // With a move, the code of the move that put the key
                    // in its state.
                    let token = move_key(&mut tx, *key_id, *expected, *to, *code, c)?;
                    if let Some(to) = to {
                        history.push(record_change(
                            &mut tx,
                            *key_id,
                            None,
                            Some(*expected),
                            *to,
                            c,
                        )?);
                    }
                    (*key_id, token)
                }
            };
            // Queued now, delivered only if the whole change commits.
            notify(&mut tx, &Notice::Key(key_id))?;
            if let KeyChange::Create(key) = &c.key {
                history.push(record_change(&mut tx, key_id, None, None, key.state, c)?);
            }
            set_key_dates(&mut tx, key_id, &c.dates)?;
            for v in &c.versions {
                let (version, from, to) = match v {
                    VersionChange::Add(v) => {
                        add_version(&mut tx, key_id, &token, v)?;
                        (v.version, None, v.state)
                    }
                    VersionChange::Move { version, from, to } => {
                        move_version(&mut tx, key_id, *version, *from, *to, c.at)?;
                        (*version, Some(*from), *to)
                    }
                };
                history.push(record_change(&mut tx, key_id, Some(version), from, to, c)?);
            }
            // The request row after the key's, the chain last.
            if let Some((request, outcome)) = request {
                executed(&mut tx, request, outcome, c.at)?;
            }
            let trail = if c.trail.is_empty() {
                None
            } else {
                let last = trail::chain_in(&mut tx, &c.trail, host)?;
                Some((last + 1 - c.trail.len() as u64, last))
            };
            let row = tx.query_typed_one(
                concat!("SELECT ", key_cols!(), " FROM keys k WHERE k.id = $1"),
                &[(&key_id, Type::INT8)],
            )?;
            let key = key_from_row(&row)?;
            tx.commit()?;
            Ok(AppliedChange {
                key,
                history,
                trail,
            })
        })
    }

    /// [`Inventory::grant`], and with `request` the execution of that
    /// approved request, with its outcome, in the same transaction.
    fn grant_in(&self, grant: &Grant, actor: &str, request: Option<(&str, &str)>) -> Result<()> {
        let operations = check_grant(grant, actor)?;
        let now = unix_now();
        self.with(|client| {
            let mut tx = begin(client)?;
            lock_key(&mut tx, grant.key_id)?;
            tx.execute(
                "INSERT INTO grants (key_id, application, operations, expires_at, granted_at,
                                     granted_by)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key_id, application) DO UPDATE
                    SET operations = excluded.operations, expires_at = excluded.expires_at,
                        granted_at = excluded.granted_at, granted_by = excluded.granted_by",
                &[
                    &grant.key_id,
                    &grant.application,
                    &operations,
                    &grant.expires_at,
                    &now,
                    &actor,
                ],
            )?;
            tx.execute(
                "INSERT INTO grant_changes (key_id, application, action, operations, expires_at,
                                            at, actor)
                 VALUES ($1, $2, 'grant', $3, $4, $5, $6)",
                &[
                    &grant.key_id,
                    &grant.application,
                    &operations,
                    &grant.expires_at,
                    &now,
                    &actor,
                ],
            )?;
            if let Some((request, outcome)) = request {
                executed(&mut tx, request, outcome, now)?;
            }
            notify(&mut tx, &Notice::Key(grant.key_id))?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Inserts request `q`; `sole`: refused while a pending request with
    /// its action and target is open, checked and inserted under an
    /// advisory lock on that action and target (of two made at once by
    /// two agents, the second sees the first).
    fn insert_request(&self, q: &ApprovalRecord, sole: bool) -> Result<()> {
        nonempty("request id", &q.id)?;
        nonempty("action", &q.action)?;
        nonempty("requester", &q.requester)?;
        self.with(|client| {
            let mut tx = begin(client)?;
            let taken = tx.query_opt("SELECT 1 FROM requests WHERE id = $1", &[&q.id])?;
            if taken.is_some() {
                return Err(Error::Exists(format!("request {}", q.id)));
            }
            if sole && q.status == ApprovalStatus::Pending {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(10) || $3))",
                    &[&SOLE_LOCK, &q.action, &q.target],
                )?;
                let open = tx.query_opt(
                    "SELECT id FROM requests
                      WHERE action = $1 AND target = $2 AND status = 'pending'
                        AND expires_at > $3
                      LIMIT 1",
                    &[&q.action, &q.target, &q.created_at],
                )?;
                if let Some(open) = open {
                    let open: String = open.try_get(0)?;
                    return Err(Error::Exists(format!(
                        "a pending {} request on {} (request {open})",
                        q.action, q.target
                    )));
                }
            }
            tx.execute(
                "INSERT INTO requests (id, action, target, key_id, parameters, requester,
                                       created_at, expires_at, status, reason, outcome, closed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &q.id,
                    &q.action,
                    &q.target,
                    &q.key_id,
                    &q.parameters,
                    &q.requester,
                    &q.created_at,
                    &q.expires_at,
                    &q.status.as_str(),
                    &q.reason,
                    &q.outcome,
                    &q.closed_at,
                ],
            )
            .map_err(|e| exists_or(e, "requests_pkey", || format!("request {}", q.id)))?;
            notify(&mut tx, &Notice::Request(q.id.clone()))?;
            tx.commit()?;
            Ok(())
        })
    }
}

impl Inventory for PgInventory {
    fn leads(&self) -> Result<bool> {
        self.leads_now()
    }

    fn schema_version(&self) -> Result<u32> {
        self.with(|client| {
            let v: i64 = client
                .query_one("SELECT schema_version FROM keyward_meta WHERE id = 1", &[])?
                .try_get(0)?;
            u32::try_from(v).map_err(|_| Error::Data(format!("keyward_meta holds version {v}")))
        })
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
        self.with(|client| {
            client
                .query_typed(
                    concat!(
                        "SELECT ",
                        key_cols!(),
                        " FROM keys k WHERE k.token = $1 AND k.name = $2"
                    ),
                    &[(&token, Type::TEXT), (&name, Type::TEXT)],
                )?
                .first()
                .map(key_from_row)
                .transpose()
        })
    }

    fn key_by_id(&self, id: i64) -> Result<Option<KeyRecord>> {
        self.with(|client| {
            client
                .query_typed(
                    concat!("SELECT ", key_cols!(), " FROM keys k WHERE k.id = $1"),
                    &[(&id, Type::INT8)],
                )?
                .first()
                .map(key_from_row)
                .transpose()
        })
    }

    fn keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let state = filter.state.map(KeyState::as_str);
        self.with(|client| {
            let found = client.query(
                concat!(
                    "SELECT ",
                    key_cols!(),
                    " FROM keys k
                      WHERE ($1::TEXT IS NULL OR k.token = $1)
                        AND ($2::TEXT IS NULL OR k.state = $2)
                        AND ($3::TEXT IS NULL OR k.class = $3)
                      ORDER BY k.token COLLATE \"C\", k.name COLLATE \"C\""
                ),
                &[&filter.token, &state, &filter.class],
            )?;
            rows(found, key_from_row)
        })
    }

    fn versions(&self, key_id: i64) -> Result<Vec<KeyVersion>> {
        self.with(|client| {
            let found = client.query(
                concat!(
                    "SELECT ",
                    version_cols!(),
                    " FROM key_versions v WHERE v.key_id = $1 ORDER BY v.version"
                ),
                &[&key_id],
            )?;
            rows(found, |r| version_from_row(r, 0))
        })
    }

    fn version_by_backend_id(
        &self,
        token: &str,
        backend_id: &[u8],
    ) -> Result<Option<(KeyRecord, KeyVersion)>> {
        // The hot path: one round trip (parameters typed, no prepare).
        self.with(|client| {
            client
                .query_typed(
                    concat!(
                        "SELECT ",
                        key_cols!(),
                        ", ",
                        version_cols!(),
                        " FROM key_versions v JOIN keys k ON k.id = v.key_id
                          WHERE v.token = $1 AND v.backend_id = $2"
                    ),
                    &[(&token, Type::TEXT), (&backend_id, Type::BYTEA)],
                )?
                .first()
                .map(|r| Ok((key_from_row(r)?, version_from_row(r, KEY_NCOLS)?)))
                .transpose()
        })
    }

    fn history(&self, key_id: i64) -> Result<Vec<StateChange>> {
        self.with(|client| {
            let found = client.query(
                "SELECT seq, key_id, version, from_state, to_state, at, actor, reason
                   FROM state_changes WHERE key_id = $1 ORDER BY seq",
                &[&key_id],
            )?;
            rows(found, change_from_row)
        })
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
        self.with(|client| {
            let mut tx = begin(client)?;
            let removed = tx.execute(
                "DELETE FROM grants WHERE key_id = $1 AND application = $2",
                &[&key_id, &application],
            )?;
            if removed == 0 {
                return Err(Error::NotFound(format!(
                    "grant of key {key_id} to {application:?}"
                )));
            }
            tx.execute(
                "INSERT INTO grant_changes (key_id, application, action, at, actor)
                 VALUES ($1, $2, 'revoke', $3, $4)",
                &[&key_id, &application, &unix_now(), &actor],
            )?;
            notify(&mut tx, &Notice::Key(key_id))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn grants(&self, key_id: i64) -> Result<Vec<Grant>> {
        self.with(|client| {
            let found = client.query(
                "SELECT key_id, application, operations, expires_at FROM grants
                  WHERE key_id = $1 ORDER BY application COLLATE \"C\"",
                &[&key_id],
            )?;
            rows(found, grant_from_row)
        })
    }

    fn grants_for_application(&self, application: &str) -> Result<Vec<Grant>> {
        self.with(|client| {
            let found = client.query(
                "SELECT key_id, application, operations, expires_at FROM grants
                  WHERE application = $1 ORDER BY key_id",
                &[&application],
            )?;
            rows(found, grant_from_row)
        })
    }

    fn touch(&self, key_id: i64, at: i64) -> Result<()> {
        // One statement, and like SQLite's `synchronous=NORMAL` not
        // flushed on its own: committed without waiting for the WAL flush
        // (the next lifecycle commit flushes past it). No notice: the last
        // use is not something agents cache.
        let updated = self.with(|client| {
            client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off")?;
            let updated = client.execute_typed(
                "UPDATE keys SET last_used_at = greatest(last_used_at, $2) WHERE id = $1",
                &[(&key_id, Type::INT8), (&at, Type::INT8)],
            );
            client.batch_execute(if updated.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            })?;
            Ok(updated?)
        })?;
        if updated == 0 {
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
        self.with(|client| {
            client
                .query_opt(
                    concat!("SELECT ", request_cols!(), " FROM requests WHERE id = $1"),
                    &[&id],
                )?
                .as_ref()
                .map(request_from_row)
                .transpose()
        })
    }

    fn requests(&self, status: Option<ApprovalStatus>) -> Result<Vec<ApprovalRecord>> {
        let status = status.map(ApprovalStatus::as_str);
        self.with(|client| {
            let found = client.query(
                concat!(
                    "SELECT ",
                    request_cols!(),
                    " FROM requests WHERE $1::TEXT IS NULL OR status = $1
                      ORDER BY created_at, id COLLATE \"C\""
                ),
                &[&status],
            )?;
            rows(found, request_from_row)
        })
    }

    fn decide_request(&self, id: &str, d: &DecisionRecord, needed: u32) -> Result<Decided> {
        nonempty("administrator", &d.administrator)?;
        self.with(|client| {
            let mut tx = begin(client)?;
            // The request's row, locked: concurrent decisions from any
            // agent are counted one after the other.
            let row = tx
                .query_opt(
                    "SELECT status, expires_at FROM requests WHERE id = $1 FOR NO KEY UPDATE",
                    &[&id],
                )?
                .ok_or_else(|| Error::NotFound(format!("request {id}")))?;
            let status: ApprovalStatus = {
                let text: String = row.try_get(0)?;
                text.parse()
                    .map_err(|e: ParseError| Error::Data(format!("request {id}: status: {e}")))?
            };
            let expires_at: i64 = row.try_get(1)?;
            if status != ApprovalStatus::Pending {
                return Ok(Decided::Closed(status));
            }
            if d.at >= expires_at {
                close(
                    &mut tx,
                    id,
                    ApprovalStatus::Pending,
                    ApprovalStatus::Expired,
                    "not approved in time",
                    d.at,
                )?;
                notify(&mut tx, &Notice::Request(id.to_owned()))?;
                tx.commit()?;
                return Ok(Decided::Closed(ApprovalStatus::Expired));
            }
            let inserted = tx.execute(
                "INSERT INTO decisions (request_id, administrator, decision, signature, at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (request_id, administrator) DO NOTHING",
                &[
                    &id,
                    &d.administrator,
                    &d.decision.as_str(),
                    &d.signature,
                    &d.at,
                ],
            )?;
            if inserted == 0 {
                return Ok(Decided::Repeated);
            }
            let decided = match d.decision {
                Decision::Deny => {
                    let why = format!("denied by {}", d.administrator);
                    close(
                        &mut tx,
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
                        .query_one(
                            "SELECT count(*) FROM decisions
                              WHERE request_id = $1 AND decision = 'approve'",
                            &[&id],
                        )?
                        .try_get(0)?;
                    let approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
                    if approvals >= needed {
                        tx.execute(
                            "UPDATE requests SET status = 'approved' WHERE id = $1",
                            &[&id],
                        )?;
                        Decided::Approved { approvals }
                    } else {
                        Decided::Counted { approvals }
                    }
                }
            };
            notify(&mut tx, &Notice::Request(id.to_owned()))?;
            tx.commit()?;
            Ok(decided)
        })
    }

    fn decisions(&self, id: &str) -> Result<Vec<DecisionRecord>> {
        self.with(|client| {
            // Decisions are never updated or deleted, so their rows' order
            // on disk is the order they were recorded in.
            let found = client.query(
                "SELECT administrator, decision, signature, at FROM decisions
                  WHERE request_id = $1 ORDER BY at, ctid",
                &[&id],
            )?;
            rows(found, decision_from_row)
        })
    }

    fn close_request(
        &self,
        id: &str,
        from: ApprovalStatus,
        to: ApprovalStatus,
        outcome: &str,
        at: i64,
    ) -> Result<bool> {
        self.with(|client| {
            let mut tx = begin(client)?;
            let moved = close(&mut tx, id, from, to, outcome, at)?;
            if moved {
                notify(&mut tx, &Notice::Request(id.to_owned()))?;
            }
            tx.commit()?;
            Ok(moved)
        })
    }

    fn set_fingerprint(&self, key_id: i64, version: u32, fingerprint: &[u8]) -> Result<()> {
        fingerprint_len(fingerprint)?;
        let number = i64::from(version);
        self.with(|client| {
            let mut tx = begin(client)?;
            // The key's row first (the order every write on a key takes),
            // then the version's.
            tx.query_opt(
                "SELECT 1 FROM keys WHERE id = $1 FOR NO KEY UPDATE",
                &[&key_id],
            )?;
            let found = tx
                .query_opt(
                    "SELECT fingerprint FROM key_versions WHERE key_id = $1 AND version = $2
                       FOR NO KEY UPDATE",
                    &[&key_id, &number],
                )?
                .map(|r| r.try_get::<_, Option<Vec<u8>>>(0))
                .transpose()?;
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
            tx.execute(
                "UPDATE key_versions SET fingerprint = $3 WHERE key_id = $1 AND version = $2",
                &[&key_id, &number, &fingerprint],
            )?;
            notify(&mut tx, &Notice::Key(key_id))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn replace_fingerprint(&self, key_id: i64, version: u32, from: &[u8], to: &[u8]) -> Result<()> {
        fingerprint_len(to)?;
        let number = i64::from(version);
        self.with(|client| {
            let mut tx = begin(client)?;
            tx.query_opt(
                "SELECT 1 FROM keys WHERE id = $1 FOR NO KEY UPDATE",
                &[&key_id],
            )?;
            let done = tx.execute(
                "UPDATE key_versions SET fingerprint = $4
                  WHERE key_id = $1 AND version = $2 AND fingerprint = $3",
                &[&key_id, &number, &from, &to],
            )?;
            if done == 0 {
                return Err(Error::Conflict {
                    what: format!("the fingerprint of version {version} of key {key_id}"),
                    expected: hex::encode(from),
                    found: "another one, or no such version".into(),
                });
            }
            notify(&mut tx, &Notice::Key(key_id))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn agent_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        self.with(|client| {
            client
                .query_opt(
                    "SELECT token, fingerprint FROM agent_keys WHERE name = $1",
                    &[&name],
                )?
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .transpose()
        })
    }

    fn set_agent_key(&self, name: &str, token: &str, fingerprint: &[u8], at: i64) -> Result<()> {
        nonempty("name", name)?;
        fingerprint_len(fingerprint)?;
        let done = self.with(|client| {
            Ok(client.execute(
                "INSERT INTO agent_keys (name, token, fingerprint, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &token, &fingerprint, &at],
            )?)
        })?;
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
        self.with(|client| {
            let mut tx = begin(client)?;
            tx.execute(
                "INSERT INTO object_owners (token, identity, application, count, created_at)
                 VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (token, identity, application)
                 DO UPDATE SET count = object_owners.count + 1",
                &[&token, &identity, &application, &at],
            )?;
            notify(&mut tx, &Notice::Owners)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn remove_object_owner(&self, token: &str, identity: &[u8], application: &str) -> Result<()> {
        identity_len(identity)?;
        self.with(|client| {
            let mut tx = begin(client)?;
            let count: Option<i64> = tx
                .query_opt(
                    "SELECT count FROM object_owners
                      WHERE token = $1 AND identity = $2 AND application = $3
                      FOR UPDATE",
                    &[&token, &identity, &application],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            match count {
                None => {
                    return Err(Error::NotFound(format!(
                        "object {} of {application:?} on {token:?}",
                        hex::encode(identity)
                    )))
                }
                Some(n) if n > 1 => tx.execute(
                    "UPDATE object_owners SET count = count - 1
                      WHERE token = $1 AND identity = $2 AND application = $3",
                    &[&token, &identity, &application],
                )?,
                Some(_) => tx.execute(
                    "DELETE FROM object_owners
                      WHERE token = $1 AND identity = $2 AND application = $3",
                    &[&token, &identity, &application],
                )?,
            };
            notify(&mut tx, &Notice::Owners)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn object_owners(&self) -> Result<Vec<ObjectOwner>> {
        self.with(|client| {
            let found = client.query(
                "SELECT token, identity, application, count FROM object_owners
                  ORDER BY token COLLATE \"C\", identity, application COLLATE \"C\"",
                &[],
            )?;
            rows(found, |r| {
                let count: i64 = r.try_get(3)?;
                Ok(ObjectOwner {
                    token: r.try_get(0)?,
                    identity: r.try_get(1)?,
                    application: r.try_get(2)?,
                    count: u32::try_from(count)
                        .map_err(|_| Error::Data(format!("object owner count {count}")))?,
                })
            })
        })
    }

    fn record_certificate(&self, cert: &CertificateRecord, replace: bool) -> Result<()> {
        if cert.sha256.len() != 32 {
            return Err(Error::Invalid(format!(
                "a certificate's SHA-256 has 32 bytes, not {}",
                cert.sha256.len()
            )));
        }
        let number = i64::from(cert.version);
        self.with(|client| {
            let mut tx = begin(client)?;
            // The key's row first: two agents replacing one version's
            // certificate at once do so one after the other.
            tx.query_opt(
                "SELECT 1 FROM keys WHERE id = $1 FOR NO KEY UPDATE",
                &[&cert.key_id],
            )?;
            let known = tx.query_opt(
                "SELECT 1 FROM key_versions WHERE key_id = $1 AND version = $2",
                &[&cert.key_id, &number],
            )?;
            if known.is_none() {
                return Err(Error::NotFound(format!(
                    "version {} of key {}",
                    cert.version, cert.key_id
                )));
            }
            if replace {
                tx.execute(
                    "DELETE FROM certificates WHERE key_id = $1 AND version = $2",
                    &[&cert.key_id, &number],
                )?;
            }
            tx.execute(
                "INSERT INTO certificates (key_id, version, subject, not_before, not_after,
                                           sha256, imported_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (key_id, version, sha256)
                 DO UPDATE SET imported_at = excluded.imported_at",
                &[
                    &cert.key_id,
                    &number,
                    &cert.subject,
                    &cert.not_before,
                    &cert.not_after,
                    &cert.sha256,
                    &cert.imported_at,
                ],
            )?;
            notify(&mut tx, &Notice::Key(cert.key_id))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn certificates(&self, key_id: Option<i64>) -> Result<Vec<CertificateRecord>> {
        self.with(|client| {
            let found = client.query(
                "SELECT key_id, version, subject, not_before, not_after, sha256, imported_at
                   FROM certificates WHERE $1::BIGINT IS NULL OR key_id = $1
                  ORDER BY key_id, version, not_after",
                &[&key_id],
            )?;
            rows(found, certificate_from_row)
        })
    }
}
