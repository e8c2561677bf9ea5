//! The PostgreSQL schema as an ordered list of migration steps: the SQLite
//! store's steps (`crate::schema`) in PostgreSQL's dialect, with the same
//! tables, columns, constraints and indexes. Blobs are `BYTEA`, unix times
//! and every SQLite `INTEGER` are `BIGINT`, numbers the store assigns are
//! identity columns, JSON is text checked by `keyward_json_valid`, and the
//! append-only tables refuse updates, deletes and truncation by triggers.
//!
//! `keyward_meta` holds the application id (`KWIN`) and the number of steps
//! applied. [`migrate`] applies the missing steps in order, each in its own
//! transaction that also bumps that number and holds a transaction-level
//! advisory lock, so that agents opening the store at once apply each step
//! once. A database past the last step is refused (never downgraded), and
//! so is one with tables but no `keyward_meta` (someone else's). To add
//! tables, append a step here and in SQLite's list; never edit a released
//! one.

use std::path::PathBuf;

use ::postgres::{Client, IsolationLevel, Transaction};

use crate::error::{Error, Result};

/// The application id stored in `keyward_meta`.
const APPLICATION_ID: &str = "KWIN";

/// Key of the advisory lock migrations take (`KWIN` as a number), so that
/// one session at a time reads the version and applies a step.
const LOCK_KEY: i64 = 0x4B57_494E;

/// Every step, oldest first; step `i` takes the version from `i` to `i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("keys, versions, state history, grants", V1),
    ("approval requests (dual control)", V2),
    ("audit trail (hash-chained) and its signed checkpoints", V3),
    ("coalesced audit records (count and span of equal uses)", V4),
    ("key fingerprints (versions and the agent's own keys)", V5),
    (
        "owners of unmanaged token objects (per-application namespaces)",
        V6,
    ),
    (
        "dual control: request reasons, outcomes and statuses, signed decisions",
        V7,
    ),
    ("recovery windows of compromised keys", V8),
    (
        "certificates of key versions (subject, validity, digest)",
        V9,
    ),
    (
        "RFC 5280 reason codes of keys' suspensions, revocations and destructions",
        V10,
    ),
    (
        "the host identity of audit records (a fleet's shared trail)",
        V11,
    ),
];

/// The schema version this build writes: the number of steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database `client` is connected to (its current schema) to
/// [`SCHEMA_VERSION`]. Returns the version found before migrating.
///
/// Errors: [`Error::TooNew`] for a database past the last step,
/// [`Error::Corrupt`] for a database with tables but no `keyward_meta` or
/// with another application id, [`Error::Open`] when a step fails (nothing
/// of that step is kept), [`Error::Storage`] when the server fails.
pub fn migrate(client: &mut Client) -> Result<u32> {
    let mut found = None;
    loop {
        let mut tx = client
            .build_transaction()
            // Each statement sees what the sessions before it committed:
            // read after the lock, the version is the one the last holder
            // left.
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        let current = current_version(&mut tx)?;
        let before = *found.get_or_insert(current);
        if current == SCHEMA_VERSION {
            tx.commit()?;
            return Ok(before);
        }
        let Some(&(description, sql)) = MIGRATIONS.get(current as usize) else {
            return Err(Error::Data(format!("no schema step {}", current + 1)));
        };
        if current == 0 {
            tx.batch_execute(META)
                .map_err(|e| step_failed(1, "keyward_meta", &e))?;
        }
        tx.batch_execute(sql)
            .map_err(|e| step_failed(current + 1, description, &e))?;
        let next = i64::from(current + 1);
        tx.execute(
            "UPDATE keyward_meta SET schema_version = $1 WHERE id = 1",
            &[&next],
        )?;
        tx.commit()?;
    }
}

/// `keyward_meta`, made with the first step.
const META: &str = "
CREATE TABLE keyward_meta (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    application_id TEXT   NOT NULL,
    schema_version BIGINT NOT NULL CHECK (schema_version >= 0)
);
INSERT INTO keyward_meta (id, application_id, schema_version) VALUES (1, 'KWIN', 0);
";

/// The database's name, for errors (never its address or credentials).
fn location(tx: &mut Transaction<'_>) -> PathBuf {
    let name = tx
        .query_one("SELECT current_database()::text", &[])
        .ok()
        .and_then(|row| row.try_get::<_, String>(0).ok())
        .unwrap_or_default();
    PathBuf::from(format!("PostgreSQL database {name:?}"))
}

/// A step that failed; its transaction is aborted (and rolled back when
/// dropped), so nothing of the step is kept.
fn step_failed(step: u32, description: &str, e: &::postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    Error::Open {
        path: PathBuf::from("PostgreSQL database"),
        detail: format!("schema step {step} ({description}) failed: {detail}"),
    }
}

/// The version of the database under the lock; refuses a database that is
/// not a keyward store, or is newer than this build.
fn current_version(tx: &mut Transaction<'_>) -> Result<u32> {
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('keyward_meta') IS NOT NULL", &[])?
        .try_get(0)?;
    if !has_meta {
        // A new store is an empty schema; anything in it is not ours.
        let objects: Vec<String> = tx
            .query(
                "SELECT c.relname::text FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = current_schema()
                  ORDER BY c.relname
                  LIMIT 5",
                &[],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        if objects.is_empty() {
            return Ok(0);
        }
        return Err(Error::Corrupt {
            path: location(tx),
            detail: format!(
                "a database of another application: it has tables ({}) but no keyward_meta",
                objects.join(", ")
            ),
        });
    }
    let rows = tx.query(
        "SELECT application_id, schema_version FROM keyward_meta WHERE id = 1",
        &[],
    )?;
    let Some(row) = rows.first() else {
        return Err(Error::Corrupt {
            path: location(tx),
            detail: "keyward_meta has no row".to_owned(),
        });
    };
    let app: String = row.try_get(0)?;
    let version: i64 = row.try_get(1)?;
    if app != APPLICATION_ID {
        return Err(Error::Corrupt {
            path: location(tx),
            detail: format!("a database of another application (application id {app:?})"),
        });
    }
    let found = u32::try_from(version).map_err(|_| Error::Corrupt {
        path: PathBuf::from("PostgreSQL database"),
        detail: format!("keyward_meta holds schema version {version}"),
    })?;
    if found > SCHEMA_VERSION {
        return Err(Error::TooNew {
            path: location(tx),
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Functions the later steps' checks and triggers use, then the keys,
/// versions, state history and grants.
const V1: &str = r"
CREATE FUNCTION keyward_json_valid(doc TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    PERFORM doc::jsonb;
    RETURN TRUE;
EXCEPTION WHEN others THEN
    RETURN FALSE;
END $$;

CREATE FUNCTION keyward_refuse() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END $$;

CREATE TABLE keys (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token          TEXT   NOT NULL CHECK (token <> ''),
    name           TEXT   NOT NULL CHECK (name <> ''),
    owner          TEXT   NOT NULL,
    purpose        TEXT   NOT NULL,
    class          TEXT   NOT NULL,
    algorithm      TEXT   NOT NULL CHECK (algorithm <> ''),
    state          TEXT   NOT NULL CHECK (state IN ('pre-activation', 'active', 'suspended',
                                                    'deactivated', 'compromised', 'destroyed')),
    created_at     BIGINT NOT NULL,
    activated_at   BIGINT,
    rotated_at     BIGINT,
    deactivated_at BIGINT,
    protect_until  BIGINT,
    process_until  BIGINT,
    next_rotation  BIGINT,
    scope          TEXT   NOT NULL DEFAULT '[]' CHECK (keyward_json_valid(scope)),
    last_used_at   BIGINT,
    backup_allowed BIGINT NOT NULL DEFAULT 0 CHECK (backup_allowed IN (0, 1)),
    UNIQUE (token, name),
    UNIQUE (id, token)
);

CREATE INDEX keys_state ON keys (state);

CREATE TABLE key_versions (
    key_id         BIGINT NOT NULL,
    version        BIGINT NOT NULL CHECK (version >= 1),
    token          TEXT   NOT NULL,
    backend_id     BYTEA  NOT NULL CHECK (octet_length(backend_id) > 0),
    backend_label  TEXT   NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('pre-activation', 'active', 'suspended',
                                                    'deactivated', 'compromised', 'destroyed')),
    created_at     BIGINT NOT NULL,
    deactivated_at BIGINT,
    destroyed_at   BIGINT,
    PRIMARY KEY (key_id, version),
    FOREIGN KEY (key_id, token) REFERENCES keys (id, token),
    UNIQUE (token, backend_id)
);

CREATE TABLE state_changes (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id     BIGINT NOT NULL REFERENCES keys (id),
    version    BIGINT,
    from_state TEXT CHECK (from_state IN ('pre-activation', 'active', 'suspended',
                                          'deactivated', 'compromised', 'destroyed')),
    to_state   TEXT   NOT NULL CHECK (to_state IN ('pre-activation', 'active', 'suspended',
                                                   'deactivated', 'compromised', 'destroyed')),
    at         BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)
);

CREATE INDEX state_changes_key ON state_changes (key_id, version, seq);

CREATE TRIGGER state_changes_no_update BEFORE UPDATE ON state_changes
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('state history is append-only');
CREATE TRIGGER state_changes_no_delete BEFORE DELETE ON state_changes
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('state history is append-only');
CREATE TRIGGER state_changes_no_truncate BEFORE TRUNCATE ON state_changes
FOR EACH STATEMENT EXECUTE FUNCTION keyward_refuse('state history is append-only');

CREATE TABLE grants (
    key_id      BIGINT NOT NULL REFERENCES keys (id),
    application TEXT   NOT NULL CHECK (application <> ''),
    operations  TEXT   NOT NULL CHECK (keyward_json_valid(operations)),
    expires_at  BIGINT,
    granted_at  BIGINT NOT NULL,
    granted_by  TEXT   NOT NULL,
    PRIMARY KEY (key_id, application)
);

CREATE INDEX grants_application ON grants (application);

CREATE TABLE grant_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      BIGINT NOT NULL REFERENCES keys (id),
    application TEXT   NOT NULL,
    action      TEXT   NOT NULL CHECK (action IN ('grant', 'revoke')),
    operations  TEXT   CHECK (operations IS NULL OR keyward_json_valid(operations)),
    expires_at  BIGINT,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL
);
";

/// Actions waiting for approval.
const V2: &str = "
CREATE TABLE requests (
    id         TEXT   PRIMARY KEY CHECK (id <> ''),
    action     TEXT   NOT NULL CHECK (action <> ''),
    target     TEXT   NOT NULL,
    key_id     BIGINT REFERENCES keys (id),
    parameters TEXT   NOT NULL DEFAULT '{}' CHECK (keyward_json_valid(parameters)),
    requester  TEXT   NOT NULL CHECK (requester <> ''),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL CHECK (expires_at > created_at),
    status     TEXT   NOT NULL CHECK (status IN ('pending', 'approved', 'executed',
                                                 'rejected', 'expired'))
);

CREATE INDEX requests_status ON requests (status, created_at);
";

/// The audit trail. The genesis is 32 bytes from the server's strong
/// random source (two random UUIDs' bytes): not a secret, only unique.
const V3: &str = "
CREATE TABLE audit_meta (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    genesis BYTEA  NOT NULL CHECK (octet_length(genesis) = 32)
);

INSERT INTO audit_meta (id, genesis)
VALUES (1, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    micros      BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    actor       TEXT   NOT NULL,
    actor_name  TEXT,
    uid         BIGINT,
    gid         BIGINT,
    pid         BIGINT,
    exe         TEXT,
    token       TEXT,
    key_name    TEXT,
    key_version BIGINT,
    operation   TEXT   NOT NULL,
    mechanism   BIGINT,
    result      BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    prev_hash   BYTEA  NOT NULL,
    hash        BYTEA  NOT NULL
);

CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_key ON audit (key_name, at);
CREATE INDEX audit_app ON audit (actor_name, at);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('the audit trail is append-only');
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('the audit trail is append-only');
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
FOR EACH STATEMENT EXECUTE FUNCTION keyward_refuse('the audit trail is append-only');

CREATE TABLE audit_checkpoints (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    head       BYTEA  NOT NULL CHECK (octet_length(head) = 32),
    created_at BIGINT NOT NULL,
    signature  BYTEA  NOT NULL,
    signer     TEXT   NOT NULL
);

CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('audit checkpoints are append-only');
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('audit checkpoints are append-only');
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
FOR EACH STATEMENT EXECUTE FUNCTION keyward_refuse('audit checkpoints are append-only');
CREATE TRIGGER audit_meta_no_update BEFORE UPDATE ON audit_meta
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('the audit genesis is fixed');
CREATE TRIGGER audit_meta_no_delete BEFORE DELETE ON audit_meta
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('the audit genesis is fixed');
CREATE TRIGGER audit_meta_no_truncate BEFORE TRUNCATE ON audit_meta
FOR EACH STATEMENT EXECUTE FUNCTION keyward_refuse('the audit genesis is fixed');
";

/// Coalesced uses (count and span of equal uses).
const V4: &str = "
ALTER TABLE audit ADD COLUMN count BIGINT NOT NULL DEFAULT 1 CHECK (count >= 1);
ALTER TABLE audit ADD COLUMN span_us BIGINT NOT NULL DEFAULT 0 CHECK (span_us >= 0);
";

/// Fingerprints of key versions and of the agent's own keys.
const V5: &str = "
ALTER TABLE key_versions ADD COLUMN fingerprint BYTEA
    CHECK (fingerprint IS NULL OR octet_length(fingerprint) = 32);

CREATE TABLE agent_keys (
    name        TEXT   NOT NULL PRIMARY KEY CHECK (name <> ''),
    token       TEXT   NOT NULL,
    fingerprint BYTEA  NOT NULL CHECK (octet_length(fingerprint) = 32),
    created_at  BIGINT NOT NULL
);

CREATE TRIGGER agent_keys_no_update BEFORE UPDATE ON agent_keys
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('an agent key fingerprint is written once');
";

/// Owners of unmanaged token objects.
const V6: &str = "
CREATE TABLE object_owners (
    token       TEXT   NOT NULL CHECK (token <> ''),
    identity    BYTEA  NOT NULL CHECK (octet_length(identity) = 32),
    application TEXT   NOT NULL CHECK (application <> ''),
    count       BIGINT NOT NULL CHECK (count >= 1),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (token, identity, application)
);
";

/// Dual control: `requests` rebuilt as SQLite's step rebuilds it (same
/// columns in the same order), the reason taken out of `parameters`;
/// `decisions`, recorded once each.
const V7: &str = "
CREATE TABLE requests_v7 (
    id         TEXT   PRIMARY KEY CHECK (id <> ''),
    action     TEXT   NOT NULL CHECK (action <> ''),
    target     TEXT   NOT NULL,
    key_id     BIGINT REFERENCES keys (id),
    parameters TEXT   NOT NULL DEFAULT '{}' CHECK (keyward_json_valid(parameters)),
    requester  TEXT   NOT NULL CHECK (requester <> ''),
    reason     TEXT   NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL CHECK (expires_at > created_at),
    status     TEXT   NOT NULL CHECK (status IN ('pending', 'approved', 'executed', 'denied',
                                                 'expired', 'cancelled', 'failed')),
    outcome    TEXT   NOT NULL DEFAULT '',
    closed_at  BIGINT
);

INSERT INTO requests_v7 (id, action, target, key_id, parameters, requester, reason,
                         created_at, expires_at, status)
SELECT id, action, target, key_id,
       (parameters::jsonb - 'reason')::text, requester,
       coalesce(parameters::jsonb ->> 'reason', ''),
       created_at, expires_at,
       CASE status WHEN 'rejected' THEN 'denied' ELSE status END
  FROM requests;

DROP TABLE requests;
ALTER TABLE requests_v7 RENAME TO requests;
ALTER INDEX requests_v7_pkey RENAME TO requests_pkey;
CREATE INDEX requests_status ON requests (status, created_at);

CREATE TABLE decisions (
    request_id    TEXT   NOT NULL REFERENCES requests (id),
    administrator TEXT   NOT NULL CHECK (administrator <> ''),
    decision      TEXT   NOT NULL CHECK (decision IN ('approve', 'deny')),
    signature     BYTEA,
    at            BIGINT NOT NULL,
    PRIMARY KEY (request_id, administrator)
);

CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('a decision is recorded once');
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
FOR EACH ROW EXECUTE FUNCTION keyward_refuse('a decision is recorded once');
CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions
FOR EACH STATEMENT EXECUTE FUNCTION keyward_refuse('a decision is recorded once');
";

/// Recovery windows of compromised keys.
const V8: &str = "
ALTER TABLE keys ADD COLUMN recovery_until BIGINT;
";

/// Certificates of key versions.
const V9: &str = "
CREATE TABLE certificates (
    key_id      BIGINT NOT NULL REFERENCES keys (id),
    version     BIGINT NOT NULL CHECK (version > 0),
    subject     TEXT   NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    sha256      BYTEA  NOT NULL CHECK (octet_length(sha256) = 32),
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, version, sha256)
);
";

/// RFC 5280 reason codes of the move that put a key in its state.
const V10: &str = "
ALTER TABLE keys ADD COLUMN reason_code TEXT;
";

/// The agent that wrote each audit record (its host identity).
const V11: &str = "
ALTER TABLE audit ADD COLUMN host TEXT CHECK (host IS NULL OR length(host) BETWEEN 1 AND 255);
";
