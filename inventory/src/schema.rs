//! The SQLite schema as an ordered list of migration steps.
//!
//! `PRAGMA user_version` holds the number of steps applied. Opening a store
//! applies the missing steps in order, each in its own `BEGIN IMMEDIATE`
//! transaction that also bumps `user_version`, so a crash leaves the file
//! at a whole step, never between two. A file whose `user_version` is past
//! the last step is refused (never downgraded). To add tables, append a
//! step; never edit a released one.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// `PRAGMA application_id` of a keyward inventory (`KWIN`), so that another
/// SQLite file handed to us by mistake is refused instead of migrated.
pub(crate) const APPLICATION_ID: i32 = 0x4B57_494E;

/// One step of the schema's history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// What the step adds, for errors and logs.
    pub description: &'static str,
    /// SQL run inside the step's transaction.
    pub sql: &'static str,
}

/// Every step, oldest first; step `i` takes `user_version` from `i` to
/// `i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "keys, versions, state history, grants",
        sql: V1,
    },
    Migration {
        description: "approval requests (dual control)",
        sql: V2,
    },
    Migration {
        description: "audit trail (hash-chained) and its signed checkpoints",
        sql: V3,
    },
    Migration {
        description: "coalesced audit records (count and span of equal uses)",
        sql: V4,
    },
    Migration {
        description: "key fingerprints (versions and the agent's own keys)",
        sql: V5,
    },
    Migration {
        description: "owners of unmanaged token objects (per-application namespaces)",
        sql: V6,
    },
    Migration {
        description: "dual control: request reasons, outcomes and statuses, signed decisions",
        sql: V7,
    },
    Migration {
        description: "recovery windows of compromised keys",
        sql: V8,
    },
    Migration {
        description: "certificates of key versions (subject, validity, digest)",
        sql: V9,
    },
    Migration {
        description: "RFC 5280 reason codes of keys' suspensions, revocations and destructions",
        sql: V10,
    },
    Migration {
        description: "the host identity of audit records (a fleet's shared trail)",
        sql: V11,
    },
];

/// The schema version this build writes.
pub(crate) const LATEST: u32 = MIGRATIONS.len() as u32;

const V1: &str = "
CREATE TABLE keys (
    id             INTEGER PRIMARY KEY,
    token          TEXT    NOT NULL CHECK (token <> ''),
    name           TEXT    NOT NULL CHECK (name <> ''),
    owner          TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    class          TEXT    NOT NULL,
    algorithm      TEXT    NOT NULL CHECK (algorithm <> ''),
    state          TEXT    NOT NULL CHECK (state IN ('pre-activation', 'active', 'suspended',
                                                     'deactivated', 'compromised', 'destroyed')),
    created_at     INTEGER NOT NULL,
    activated_at   INTEGER,
    rotated_at     INTEGER,
    deactivated_at INTEGER,
    protect_until  INTEGER,
    process_until  INTEGER,
    next_rotation  INTEGER,
    scope          TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(scope)),
    last_used_at   INTEGER,
    backup_allowed INTEGER NOT NULL DEFAULT 0 CHECK (backup_allowed IN (0, 1)),
    UNIQUE (token, name),
    -- target of key_versions' (key_id, token) reference
    UNIQUE (id, token)
) STRICT;

CREATE INDEX keys_state ON keys (state);

-- token is repeated from the key (and tied to it by the foreign key) so that
-- one unique index both enforces a CKA_ID per token and serves the hot-path
-- lookup by (token, CKA_ID).
CREATE TABLE key_versions (
    key_id         INTEGER NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    token          TEXT    NOT NULL,
    backend_id     BLOB    NOT NULL CHECK (length(backend_id) > 0),
    backend_label  TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pre-activation', 'active', 'suspended',
                                                     'deactivated', 'compromised', 'destroyed')),
    created_at     INTEGER NOT NULL,
    deactivated_at INTEGER,
    destroyed_at   INTEGER,
    PRIMARY KEY (key_id, version),
    FOREIGN KEY (key_id, token) REFERENCES keys (id, token),
    UNIQUE (token, backend_id)
) STRICT, WITHOUT ROWID;

-- version NULL: the key's own state; else that version's.
CREATE TABLE state_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id     INTEGER NOT NULL REFERENCES keys (id),
    version    INTEGER,
    from_state TEXT CHECK (from_state IN ('pre-activation', 'active', 'suspended',
                                          'deactivated', 'compromised', 'destroyed')),
    to_state   TEXT    NOT NULL CHECK (to_state IN ('pre-activation', 'active', 'suspended',
                                                    'deactivated', 'compromised', 'destroyed')),
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)
) STRICT;

CREATE INDEX state_changes_key ON state_changes (key_id, version, seq);

CREATE TRIGGER state_changes_no_update BEFORE UPDATE ON state_changes
BEGIN SELECT RAISE(ABORT, 'state history is append-only'); END;
CREATE TRIGGER state_changes_no_delete BEFORE DELETE ON state_changes
BEGIN SELECT RAISE(ABORT, 'state history is append-only'); END;

CREATE TABLE grants (
    key_id      INTEGER NOT NULL REFERENCES keys (id),
    application TEXT    NOT NULL CHECK (application <> ''),
    operations  TEXT    NOT NULL CHECK (json_valid(operations)),
    expires_at  INTEGER,
    granted_at  INTEGER NOT NULL,
    granted_by  TEXT    NOT NULL,
    PRIMARY KEY (key_id, application)
) STRICT, WITHOUT ROWID;

CREATE INDEX grants_application ON grants (application);

-- who granted and revoked what, and when (the audit trail comes later)
CREATE TABLE grant_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      INTEGER NOT NULL REFERENCES keys (id),
    application TEXT    NOT NULL,
    action      TEXT    NOT NULL CHECK (action IN ('grant', 'revoke')),
    operations  TEXT    CHECK (operations IS NULL OR json_valid(operations)),
    expires_at  INTEGER,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL
) STRICT;
";

/// Actions waiting for approval. `parameters` is the canonical JSON of the
/// action's arguments; approvals themselves arrive with dual control.
const V2: &str = "
CREATE TABLE requests (
    id         TEXT    PRIMARY KEY CHECK (id <> ''),
    action     TEXT    NOT NULL CHECK (action <> ''),
    target     TEXT    NOT NULL,
    key_id     INTEGER REFERENCES keys (id),
    parameters TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(parameters)),
    requester  TEXT    NOT NULL CHECK (requester <> ''),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at > created_at),
    status     TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'executed',
                                                  'rejected', 'expired'))
) STRICT, WITHOUT ROWID;

CREATE INDEX requests_status ON requests (status, created_at);
";

/// The audit trail (see `audit.rs` for the chain and the encoding).
///
/// `audit_meta` holds the trail's genesis value (32 random bytes made here,
/// once): the first record's `prev_hash`. SQLite's `randomblob` is seeded
/// from the operating system; the value is not a secret, only unique.
/// Every table is append-only: the database refuses updates and deletes
/// (an attacker with root can drop the triggers; the chain and the signed
/// checkpoints are what detect that).
///
/// `audit` columns: the event flattened, NULL where the event has no value;
/// `mechanism` and `result` are the `u64` values' bits as `i64`.
const V3: &str = "
CREATE TABLE audit_meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    genesis BLOB    NOT NULL CHECK (length(genesis) = 32)
) STRICT;

INSERT INTO audit_meta (id, genesis) VALUES (1, randomblob(32));

CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    micros      INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    actor_name  TEXT,
    uid         INTEGER,
    gid         INTEGER,
    pid         INTEGER,
    exe         TEXT,
    token       TEXT,
    key_name    TEXT,
    key_version INTEGER,
    operation   TEXT    NOT NULL,
    mechanism   INTEGER,
    result      INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL
) STRICT;

CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_key ON audit (key_name, at);
CREATE INDEX audit_app ON audit (actor_name, at);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;

-- seq: the last record covered (0: the empty trail, head = genesis).
CREATE TABLE audit_checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    head       BLOB    NOT NULL CHECK (length(head) = 32),
    created_at INTEGER NOT NULL,
    signature  BLOB    NOT NULL,
    signer     TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_meta_no_update BEFORE UPDATE ON audit_meta
BEGIN SELECT RAISE(ABORT, 'the audit genesis is fixed'); END;
CREATE TRIGGER audit_meta_no_delete BEFORE DELETE ON audit_meta
BEGIN SELECT RAISE(ABORT, 'the audit genesis is fixed'); END;
";

/// Reads `PRAGMA user_version`.
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings `conn` to the last of `steps`; `path` is for errors.
///
/// Returns the version found before migrating.
pub(crate) fn migrate(
    conn: &mut Connection,
    steps: &[Migration],
    path: &std::path::Path,
) -> Result<u32> {
    let known = steps.len() as u32;
    let found = version(conn)?;
    check_identity(conn, found, known, path)?;
    if found == known {
        // The common case takes no write lock.
        return Ok(found);
    }
    loop {
        // Re-read under the write lock: another process may have migrated.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = version(&tx)?;
        check_identity(&tx, current, known, path)?;
        if current == known {
            tx.commit()?;
            return Ok(found);
        }
        let step = &steps[current as usize];
        tx.execute_batch(step.sql).map_err(|e| Error::Open {
            path: path.to_owned(),
            detail: format!(
                "schema step {} ({}) failed: {e}",
                current + 1,
                step.description
            ),
        })?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}

/// Refuses a file of the future, and a SQLite file that is not ours.
fn check_identity(conn: &Connection, found: u32, known: u32, path: &std::path::Path) -> Result<()> {
    if found > known {
        return Err(Error::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    let app: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let foreign = if found == 0 {
        // A new inventory is an empty file; anything with tables is not ours.
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        app != 0 || tables != 0
    } else {
        app != APPLICATION_ID
    };
    if foreign {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "a SQLite database of another application (application_id {app:#x}, \
                 user_version {found})"
            ),
        });
    }
    Ok(())
}

/// Coalesced uses: a record stands for `count` equal events over `span_us`
/// microseconds (see `audit::coalesce`). Records written before keep
/// `count` 1 and `span_us` 0, which hash as they did (format 1).
const V4: &str = "
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1);
ALTER TABLE audit ADD COLUMN span_us INTEGER NOT NULL DEFAULT 0 CHECK (span_us >= 0);
";

/// Fingerprints: a managed key version is recognised by its `CKA_ID` and by
/// what was recorded when it was made (the public key, or a key check
/// value); `NULL` for versions recorded before, until the agent records one
/// at its next start. `agent_keys` holds the fingerprint of the agent's own
/// keys (the audit key), by name: written once, never changed.
const V5: &str = "
ALTER TABLE key_versions ADD COLUMN fingerprint BLOB CHECK (fingerprint IS NULL OR length(fingerprint) = 32);

CREATE TABLE agent_keys (
    name        TEXT NOT NULL PRIMARY KEY CHECK (name <> ''),
    token       TEXT NOT NULL,
    fingerprint BLOB NOT NULL CHECK (length(fingerprint) = 32),
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TRIGGER agent_keys_no_update BEFORE UPDATE ON agent_keys
BEGIN SELECT RAISE(ABORT, 'an agent key fingerprint is written once'); END;
";

/// Owners of unmanaged token objects: in strict mode an object an
/// application makes on a token through keyward (a data object, a
/// certificate, a public key) is visible to that application only. An
/// object is known by its identity (SHA-256 over its class, `CKA_ID`,
/// `CKA_LABEL` and content, as the agent computes it), which survives agent
/// restarts where backend handles do not. `count` is how many objects of
/// that identity the application made and has not destroyed.
const V6: &str = "
CREATE TABLE object_owners (
    token       TEXT    NOT NULL CHECK (token <> ''),
    identity    BLOB    NOT NULL CHECK (length(identity) = 32),
    application TEXT    NOT NULL CHECK (application <> ''),
    count       INTEGER NOT NULL CHECK (count >= 1),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (token, identity, application)
) STRICT;
";

/// Dual control. `requests` is rebuilt (SQLite cannot change a `CHECK`):
/// the statuses `denied` (was `rejected`), `cancelled` and `failed`; the
/// reason in a column of its own (taken out of `parameters`, where it was
/// kept before); the outcome (what executing did, or why the request is
/// closed) and when it was closed. `decisions` holds each administrator's
/// decision on a request, once per administrator, with the signature it
/// came with (`NULL` without a roster); rows are never changed or removed.
const V7: &str = "
CREATE TABLE requests_v7 (
    id         TEXT    PRIMARY KEY CHECK (id <> ''),
    action     TEXT    NOT NULL CHECK (action <> ''),
    target     TEXT    NOT NULL,
    key_id     INTEGER REFERENCES keys (id),
    parameters TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(parameters)),
    requester  TEXT    NOT NULL CHECK (requester <> ''),
    reason     TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at > created_at),
    status     TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'executed', 'denied',
                                                  'expired', 'cancelled', 'failed')),
    outcome    TEXT    NOT NULL DEFAULT '',
    closed_at  INTEGER
) STRICT, WITHOUT ROWID;

INSERT INTO requests_v7 (id, action, target, key_id, parameters, requester, reason,
                         created_at, expires_at, status)
SELECT id, action, target, key_id,
       json_remove(parameters, '$.reason'), requester,
       coalesce(json_extract(parameters, '$.reason'), ''),
       created_at, expires_at,
       CASE status WHEN 'rejected' THEN 'denied' ELSE status END
  FROM requests;

DROP TABLE requests;
ALTER TABLE requests_v7 RENAME TO requests;
CREATE INDEX requests_status ON requests (status, created_at);

CREATE TABLE decisions (
    request_id    TEXT    NOT NULL REFERENCES requests (id),
    administrator TEXT    NOT NULL CHECK (administrator <> ''),
    decision      TEXT    NOT NULL CHECK (decision IN ('approve', 'deny')),
    signature     BLOB,
    at            INTEGER NOT NULL,
    PRIMARY KEY (request_id, administrator)
) STRICT;

CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'a decision is recorded once'); END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'a decision is recorded once'); END;
";

/// Recovery windows: until `recovery_until` (unix seconds), a compromised
/// key verifies and decrypts for the applications granted those, and does
/// nothing else. `NULL`: no window was ever opened.
const V8: &str = "
ALTER TABLE keys ADD COLUMN recovery_until INTEGER;
";

/// Certificates of key versions stored beside them on the token (`keyward
/// cert import`, `cert self-sign --import`): the subject as text, the
/// validity (unix seconds), the SHA-256 of the DER certificate and when it
/// was stored. One row per certificate a version has; a replaced
/// certificate's row goes with it.
const V9: &str = "
CREATE TABLE certificates (
    key_id      INTEGER NOT NULL REFERENCES keys (id),
    version     INTEGER NOT NULL CHECK (version > 0),
    subject     TEXT    NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    sha256      BLOB    NOT NULL CHECK (length(sha256) = 32),
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, version, sha256)
) STRICT;
";

/// The RFC 5280 reason code (its name, `keyCompromise`, ...) of the move
/// that put a key in its state. `NULL`: none given, or a move stored
/// before codes were kept.
const V10: &str = "
ALTER TABLE keys ADD COLUMN reason_code TEXT;
";

/// The agent that wrote each audit record, in a trail several agents
/// share (the fleet's PostgreSQL store). `NULL`: a single agent's trail.
/// Part of the record's hash when present (the canonical format 3).
const V11: &str = "
ALTER TABLE audit ADD COLUMN host TEXT CHECK (host IS NULL OR length(host) BETWEEN 1 AND 255);
";
