//! The column lists both stores' queries name, as macros so that every
//! query stays one `concat!`ed literal (SQLite's statement cache is keyed
//! by the SQL text; building it with `format!` would cost an allocation per
//! call on the hot path). One list per table, for both engines: the
//! schemas have the same columns (`fleet_store::postgres_schema_has_the_tables_and_columns_of_sqlite`).

/// A key's columns (`keys k`), in the order the stores decode them.
macro_rules! key_cols {
    () => {
        "k.id, k.name, k.token, k.owner, k.purpose, k.class, k.algorithm, k.state, \
         k.created_at, k.activated_at, k.rotated_at, k.deactivated_at, k.protect_until, \
         k.process_until, k.next_rotation, k.scope, k.last_used_at, k.backup_allowed, \
         k.recovery_until, k.reason_code"
    };
}

/// The number of columns in `key_cols!()`.
pub(crate) const KEY_NCOLS: usize = 20;

/// A key version's columns (`key_versions v`).
macro_rules! version_cols {
    () => {
        "v.key_id, v.version, v.backend_id, v.backend_label, v.state, v.created_at, \
         v.deactivated_at, v.destroyed_at, v.fingerprint"
    };
}

/// An audit record's columns, in `AuditRow`'s order.
macro_rules! audit_cols {
    () => {
        "seq, at, micros, kind, actor, actor_name, uid, gid, pid, exe, token, key_name, \
         key_version, operation, mechanism, result, reason, prev_hash, hash, count, span_us, host"
    };
}
