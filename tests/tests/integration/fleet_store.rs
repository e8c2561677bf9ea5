//! The throw-away PostgreSQL server the fleet's shared store is tested
//! against (`keyward_tests::postgres`): it starts, admits the store's role
//! by password only (SCRAM, no `trust` line), is PostgreSQL 15 or later,
//! stops and starts again, survives a SIGKILL of its postmaster with its
//! committed rows, runs beside another one without sharing anything, and
//! leaves no process or directory behind when dropped. These tests need no
//! agent; without PostgreSQL they fail, saying how to install it.

use std::path::Path;

use keyward_testbed::alive;
use keyward_tests::postgres::{
    explain, is_bad_password, is_refused, PgBins, PgServer, DATABASE, MIN_MAJOR, USER,
};
use postgres::{Client, NoTls};

/// The single value of a one-row, one-column query.
fn one<T>(client: &mut Client, sql: &str) -> T
where
    T: for<'a> postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn starts_and_admits_the_store_role_by_password() {
    let pg = PgServer::new();
    let startup = pg.startup();
    eprintln!(
        "PostgreSQL {}: initdb {:?}, start {:?}, role and database {:?}, total {:?}",
        pg.major(),
        startup.initdb,
        startup.start,
        startup.setup,
        startup.total()
    );

    // TCP on 127.0.0.1 through the connection string.
    let mut tcp = Client::connect(&pg.connection_string(), NoTls)
        .unwrap_or_else(|e| panic!("connect with the connection string: {e}"));
    let (user, db): (String, String) = {
        let row = tcp
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .expect("who am I");
        (row.get(0), row.get(1))
    };
    assert_eq!((user.as_str(), db.as_str()), (USER, DATABASE));
    assert_eq!(
        (pg.user(), pg.database(), pg.host()),
        (USER, DATABASE, "127.0.0.1")
    );
    let addr: String = one(&mut tcp, "SELECT host(inet_server_addr())");
    assert_eq!(addr, "127.0.0.1");
    let port: i32 = one(&mut tcp, "SELECT inet_server_port()");
    assert_eq!(port, i32::from(pg.port()));
    // The role owns its database: it can make the store's tables.
    tcp.batch_execute("CREATE TABLE probe (id bigint PRIMARY KEY, v text NOT NULL)")
        .expect("the store's role creates a table");
    tcp.execute("INSERT INTO probe VALUES (1, 'one')", &[])
        .expect("insert");

    // The Unix socket in the cluster's directory, with the password too.
    let mut sock = pg
        .socket_config()
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect over the socket: {e}"));
    let v: String = one(&mut sock, "SELECT v FROM probe WHERE id = 1");
    assert_eq!(v, "one");
    let on_socket: Option<String> = one(&mut sock, "SELECT host(inet_server_addr())");
    assert_eq!(on_socket, None, "the second connection is not TCP");

    // Every login is by SCRAM password: no trust, no peer, no md5, and the
    // role's password is stored as a SCRAM verifier.
    let mut su = pg.superuser_client("postgres");
    let methods: Vec<String> = su
        .query(
            "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE error IS NULL",
            &[],
        )
        .expect("pg_hba_file_rules")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(methods, vec!["scram-sha-256".to_string()]);
    let stored: String = one(
        &mut su,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'keyward'",
    );
    assert!(
        stored.starts_with("SCRAM-SHA-256$"),
        "stored as {stored:.14}..."
    );
    assert!(!stored.contains(pg.password()));
    let superuser: bool = one(
        &mut su,
        "SELECT rolsuper FROM pg_roles WHERE rolname = 'keyward'",
    );
    assert!(!superuser, "the store's role is not a superuser");
    let listen: String = one(&mut su, "SHOW listen_addresses");
    assert_eq!(listen, "127.0.0.1");

    // The password reached no file of the cluster and no server log.
    let log = std::fs::read_to_string(pg.log_path()).expect("server log");
    assert!(!log.contains(pg.password()));
    assert!(
        !pg.dir().join("superuser.pw").exists(),
        "initdb's password file is removed"
    );
}

#[test]
fn refuses_a_wrong_or_missing_password() {
    let pg = PgServer::new();

    let mut wrong = pg.config();
    wrong.password("not-the-password");
    let err = wrong
        .connect(NoTls)
        .err()
        .expect("a wrong password is refused");
    assert!(is_bad_password(&err), "refused for the password: {err}");

    let mut wrong_socket = pg.socket_config();
    wrong_socket.password("not-the-password");
    let err = wrong_socket
        .connect(NoTls)
        .err()
        .expect("a wrong password is refused on the socket too");
    assert!(is_bad_password(&err), "refused for the password: {err}");

    let mut other_role = pg.config();
    other_role.user("postgres");
    let err = other_role
        .connect(NoTls)
        .err()
        .expect("the store's password does not open the superuser");
    assert!(is_bad_password(&err), "refused for the password: {err}");

    let mut none = postgres::Config::new();
    none.host(pg.host())
        .port(pg.port())
        .user(USER)
        .dbname(DATABASE);
    let err = none.connect(NoTls).err().expect("no password is no login");
    let why = explain(&err);
    assert!(
        why.contains("password missing"),
        "the server asked for a password: {why}"
    );

    // The right one still works after the refusals.
    let mut client = pg.client();
    let n: i32 = one(&mut client, "SELECT 1");
    assert_eq!(n, 1);
}

#[test]
fn runs_postgresql_15_or_later() {
    let pg = PgServer::new();
    let mut client = pg.client();
    let num: String = one(&mut client, "SHOW server_version_num");
    let num: u32 = num.parse().expect("server_version_num is a number");
    assert!(
        num >= MIN_MAJOR * 10_000,
        "server_version_num {num} is older than {MIN_MAJOR}"
    );
    assert_eq!(
        num / 10_000,
        pg.major(),
        "the server runs the major it was found as"
    );
    assert_eq!(
        PgBins::find().major,
        pg.major(),
        "the newest installed major"
    );
}

#[test]
fn stopped_refuses_connections_and_started_serves_the_same_data() {
    let mut pg = PgServer::new();
    let port = pg.port();
    let mut client = pg.client();
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before stop')")
        .expect("write before the stop");

    pg.stop();
    assert!(!pg.is_running());
    let err = pg.connect().err().expect("a stopped server refuses");
    assert!(is_refused(&err), "connection refused, not {err}");
    assert!(
        client.simple_query("SELECT 1").is_err(),
        "an open connection is closed by the stop"
    );

    pg.start();
    assert_eq!(pg.port(), port, "the same port after a start");
    let mut client = pg.client();
    let v: String = one(&mut client, "SELECT v FROM kept");
    assert_eq!(v, "before stop");

    // And once more, as a store that goes away twice would.
    pg.stop();
    assert!(is_refused(&pg.connect().err().expect("stopped again")));
    pg.start();
    let v: String = one(&mut pg.client(), "SELECT v FROM kept");
    assert_eq!(v, "before stop");
}

#[test]
fn killed_refuses_connections_and_recovers_committed_rows() {
    let mut pg = PgServer::new();
    let mut client = pg.client();
    client
        .batch_execute(
            "CREATE TABLE acked (n int); INSERT INTO acked SELECT generate_series(1, 100)",
        )
        .expect("write before the kill");
    let pid = pg.pid().expect("running");

    pg.kill();
    assert!(!alive(pid), "the postmaster is gone");
    assert!(!pg.is_running());
    let err = pg.connect().err().expect("a killed server refuses");
    assert!(is_refused(&err), "connection refused, not {err}");

    pg.start();
    let n: i64 = one(&mut pg.client(), "SELECT count(*) FROM acked");
    assert_eq!(n, 100, "every committed row survives the kill");
    let log = std::fs::read_to_string(pg.log_path()).expect("server log");
    assert!(
        log.contains("was interrupted") || log.contains("not properly shut down"),
        "the start after the kill ran crash recovery; log:\n{}",
        pg.log_tail(20)
    );
}

#[test]
fn two_servers_share_nothing() {
    // Made at the same time, as parallel tests make theirs.
    let (a, mut b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::new);
        let b = s.spawn(PgServer::new);
        (
            a.join().expect("server a started"),
            b.join().expect("server b started"),
        )
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.password(), b.password());

    let mut ca = a.client();
    let mut cb = b.client();
    ca.batch_execute("CREATE TABLE only_a (v int)")
        .expect("table in a");
    let in_b: i64 = one(
        &mut cb,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'only_a'",
    );
    assert_eq!(in_b, 0, "a's table is not in b");

    let mut cross = b.config();
    cross.password(a.password());
    let err = cross
        .connect(NoTls)
        .err()
        .expect("a's password does not open b");
    assert!(is_bad_password(&err), "refused for the password: {err}");

    b.stop();
    let n: i32 = one(&mut ca, "SELECT 1");
    assert_eq!(n, 1, "a serves while b is stopped");
    let n: i64 = one(&mut a.client(), "SELECT count(*) FROM only_a");
    assert_eq!(n, 0);
}

#[test]
fn dropped_leaves_no_process_and_no_directory() {
    let pg = PgServer::new();
    let dir = pg.dir().to_path_buf();
    let pid = pg.pid().expect("running");
    let config = pg.config();
    let _open = pg.client();
    assert!(dir.join("data").is_dir());

    drop(pg);
    assert!(!alive(pid), "the postmaster is stopped");
    assert!(!dir.exists(), "{} is removed", dir.display());
    let err = config
        .connect(NoTls)
        .err()
        .expect("nothing listens any more");
    assert!(is_refused(&err), "connection refused, not {err}");

    // A killed one too.
    let mut pg = PgServer::new();
    let dir = pg.dir().to_path_buf();
    pg.kill();
    drop(pg);
    assert!(!dir.exists(), "{} is removed", dir.display());
}

#[test]
#[should_panic(expected = "run softhsm-config/setup")]
fn without_postgresql_fails_saying_how_to_install_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(empty.path().join("14/bin")).expect("a major without binaries");
    PgBins::find_in(Path::new(empty.path()));
}

#[test]
#[should_panic(expected = "too old")]
fn an_older_major_fails_saying_how_to_install_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let bin = root.path().join("14/bin");
    std::fs::create_dir_all(&bin).expect("bin");
    for b in ["initdb", "postgres", "pg_ctl"] {
        std::fs::write(bin.join(b), "").expect("a stand-in binary");
    }
    PgBins::find_in(root.path());
}

// The shared store's schema (keyward_inventory::postgres::migrate) on a
// real server: every step once, the same tables and columns as SQLite's,
// one migration among agents opening it at once, and refusals that change
// nothing.

/// What a schema looks like, to see that a call changed nothing: each
/// table's columns and types, the indexes, the triggers, `keyward_meta`'s
/// row and the audit genesis.
#[derive(Debug, PartialEq, Eq)]
struct PgSnapshot {
    columns: Vec<(String, String, String)>,
    indexes: Vec<String>,
    triggers: Vec<String>,
    meta: Option<(String, i64)>,
    genesis: Option<Vec<u8>>,
}

fn pg_snapshot(client: &mut Client) -> PgSnapshot {
    let columns = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text
               FROM information_schema.columns
              WHERE table_schema = current_schema()
              ORDER BY table_name, ordinal_position",
            &[],
        )
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let indexes = client
        .query(
            "SELECT indexname::text FROM pg_indexes
              WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let triggers = pg_triggers(client);
    let has: bool = one(client, "SELECT to_regclass('keyward_meta') IS NOT NULL");
    let meta = has.then(|| {
        let row = client
            .query_one(
                "SELECT application_id, schema_version FROM keyward_meta",
                &[],
            )
            .expect("keyward_meta has one row");
        (row.get(0), row.get(1))
    });
    let has: bool = one(client, "SELECT to_regclass('audit_meta') IS NOT NULL");
    let genesis = has.then(|| one(client, "SELECT genesis FROM audit_meta"));
    PgSnapshot {
        columns,
        indexes,
        triggers,
        meta,
        genesis,
    }
}

fn pg_triggers(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT t.tgname::text FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = current_schema() AND NOT t.tgisinternal
              ORDER BY 1",
            &[],
        )
        .expect("triggers")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn schema_version(client: &mut Client) -> i64 {
    one(client, "SELECT schema_version FROM keyward_meta")
}

fn latest() -> i64 {
    i64::from(keyward_inventory::postgres::SCHEMA_VERSION)
}

#[test]
fn postgres_schema_fresh_database_gets_every_step_and_reopening_changes_nothing() {
    let pg = PgServer::new();
    let mut client = pg.client();
    assert_eq!(keyward_inventory::postgres::SCHEMA_VERSION, 11);

    let found = keyward_inventory::postgres::migrate(&mut client).expect("migrate a fresh one");
    assert_eq!(found, 0, "a fresh database starts at version 0");
    assert_eq!(schema_version(&mut client), latest());
    let app: String = one(&mut client, "SELECT application_id FROM keyward_meta");
    assert_eq!(app, "KWIN");
    let rows: i64 = one(&mut client, "SELECT count(*) FROM keyward_meta");
    assert_eq!(rows, 1);
    let genesis: Vec<u8> = one(&mut client, "SELECT genesis FROM audit_meta");
    assert_eq!(genesis.len(), 32);
    assert_ne!(genesis, vec![0; 32]);
    let before = pg_snapshot(&mut client);

    // Again, on another connection too: nothing to do, nothing changed.
    let found = keyward_inventory::postgres::migrate(&mut client).expect("reopen");
    assert_eq!(i64::from(found), latest());
    let found = keyward_inventory::postgres::migrate(&mut pg.client()).expect("reopen");
    assert_eq!(i64::from(found), latest());
    assert_eq!(pg_snapshot(&mut client), before);

    // The steps did what SQLite's do: the append-only tables refuse
    // changes, JSON columns refuse what is not JSON, step 7's statuses.
    client
        .batch_execute(
            "INSERT INTO keys (token, name, owner, purpose, class, algorithm, state, created_at)
             VALUES ('t', 'k', 'o', 'signing', 'c', 'ec:p256', 'active', 1)",
        )
        .expect("a key");
    let id: i64 = one(&mut client, "SELECT id FROM keys");
    client
        .execute(
            "INSERT INTO state_changes (key_id, to_state, at, actor, reason)
             VALUES ($1, 'active', 1, 'admin', 'made')",
            &[&id],
        )
        .expect("a history row");
    for (sql, why) in [
        (
            "UPDATE state_changes SET reason = 'x'",
            "state history is append-only",
        ),
        ("DELETE FROM state_changes", "state history is append-only"),
        ("TRUNCATE state_changes", "state history is append-only"),
        ("UPDATE audit_meta SET id = 1", "the audit genesis is fixed"),
    ] {
        let err = client.batch_execute(sql).expect_err(sql);
        assert!(explain(&err).contains(why), "{sql}: {}", explain(&err));
    }
    let err = client
        .batch_execute("UPDATE keys SET scope = 'not json'")
        .expect_err("scope must be JSON");
    assert!(
        explain(&err).contains("keys_scope_check"),
        "{}",
        explain(&err)
    );
    client
        .execute(
            "INSERT INTO requests (id, action, target, requester, created_at, expires_at, status)
             VALUES ('r1', 'destroy', 'k', 'alice', 1, 2, 'cancelled')",
            &[],
        )
        .expect("step 7's statuses");
}

#[test]
fn postgres_schema_has_the_tables_and_columns_of_sqlite() {
    let pg = PgServer::new();
    let mut client = pg.client();
    keyward_inventory::postgres::migrate(&mut client).expect("migrate");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inventory.db");
    drop(keyward_inventory::SqliteInventory::open(&path).expect("a fresh SQLite inventory"));
    let lite = rusqlite::Connection::open(&path).expect("open the SQLite file");
    let version: i64 = lite
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, latest(), "both stores have the same steps");

    // (table, column, type) in column order; SQLite's types named as
    // PostgreSQL's.
    let mut sqlite_columns: Vec<(String, String, String)> = Vec::new();
    let mut stmt = lite
        .prepare(
            "SELECT m.name, c.name, c.type
               FROM sqlite_master m, pragma_table_info(m.name) c
              WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
              ORDER BY m.name, c.cid",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .expect("columns");
    for row in rows {
        let (table, column, ty) = row.expect("row");
        let ty = match ty.as_str() {
            "INTEGER" => "bigint",
            "TEXT" => "text",
            "BLOB" => "bytea",
            other => panic!("{table}.{column}: SQLite type {other} has no PostgreSQL twin here"),
        };
        sqlite_columns.push((table, column, ty.to_owned()));
    }
    let pg_columns: Vec<(String, String, String)> = pg_snapshot(&mut client)
        .columns
        .into_iter()
        .filter(|(table, _, _)| table != "keyward_meta")
        .collect();
    assert!(sqlite_columns.len() > 50, "{sqlite_columns:?}");
    assert_eq!(pg_columns, sqlite_columns, "one schema, two dialects");

    // The explicit indexes (not those of keys and unique constraints).
    let mut stmt = lite
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL
              ORDER BY name",
        )
        .expect("prepare");
    let sqlite_indexes: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("indexes")
        .collect::<Result<_, _>>()
        .expect("index names");
    let pg_indexes: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_index x
               JOIN pg_class c ON c.oid = x.indexrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = current_schema()
                AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
              ORDER BY 1",
            &[],
        )
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pg_indexes, sqlite_indexes);

    // The same triggers, plus PostgreSQL's refusal of TRUNCATE (which
    // SQLite does not have) on each append-only table.
    let mut stmt = lite
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
        .expect("prepare");
    let sqlite_triggers: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("triggers")
        .collect::<Result<_, _>>()
        .expect("trigger names");
    let pg_triggers: Vec<String> = pg_triggers(&mut client)
        .into_iter()
        .filter(|t| !t.ends_with("_no_truncate"))
        .collect();
    assert_eq!(pg_triggers, sqlite_triggers);
}

#[test]
fn postgres_schema_four_agents_migrating_at_once_apply_each_step_once() {
    let pg = PgServer::new();
    let barrier = std::sync::Barrier::new(4);
    let found: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut client = pg.client();
                    barrier.wait();
                    keyward_inventory::postgres::migrate(&mut client)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("thread")
                    .unwrap_or_else(|e| panic!("a concurrent migration failed: {e}"))
            })
            .collect()
    });
    assert_eq!(
        found.iter().filter(|&&v| v == 0).count(),
        1,
        "one session found the database empty: {found:?}"
    );
    let mut client = pg.client();
    assert_eq!(schema_version(&mut client), latest());
    let rows: i64 = one(&mut client, "SELECT count(*) FROM keyward_meta");
    assert_eq!(rows, 1);
    let rows: i64 = one(&mut client, "SELECT count(*) FROM audit_meta");
    assert_eq!(rows, 1, "step 3 ran once");
    let cols: i64 = one(
        &mut client,
        "SELECT count(*) FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = 'keys'
            AND column_name IN ('recovery_until', 'reason_code')",
    );
    assert_eq!(cols, 2);
}

#[test]
fn postgres_schema_refuses_a_newer_database_and_changes_nothing() {
    let pg = PgServer::new();
    let mut client = pg.client();
    keyward_inventory::postgres::migrate(&mut client).expect("migrate");
    let newer = latest() + 1;
    client
        .execute("UPDATE keyward_meta SET schema_version = $1", &[&newer])
        .expect("as a newer keyward would leave it");
    let before = pg_snapshot(&mut client);

    let err = keyward_inventory::postgres::migrate(&mut client).expect_err("newer is refused");
    let text = err.to_string();
    match err {
        keyward_inventory::Error::TooNew { found, known, .. } => {
            assert_eq!((i64::from(found), i64::from(known)), (newer, latest()));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(
        text.contains(&format!("schema version {newer}"))
            && text.contains(&format!("({})", latest())),
        "names both versions: {text}"
    );
    assert!(!text.contains(pg.password()));
    assert_eq!(pg_snapshot(&mut client), before, "nothing changed");
    assert_eq!(schema_version(&mut client), newer, "never downgraded");
    // The connection is usable after the refusal.
    let n: i32 = one(&mut client, "SELECT 1");
    assert_eq!(n, 1);
}

#[test]
fn postgres_schema_refuses_a_foreign_database_and_changes_nothing() {
    let pg = PgServer::new();
    let mut client = pg.client();
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, item text NOT NULL);
             INSERT INTO orders VALUES (1, 'tea'), (2, 'cake');",
        )
        .expect("someone else's table");
    let before = pg_snapshot(&mut client);

    let err = keyward_inventory::postgres::migrate(&mut client).expect_err("foreign is refused");
    let text = err.to_string();
    assert!(
        matches!(err, keyward_inventory::Error::Corrupt { .. }),
        "expected Corrupt, got {err:?}"
    );
    assert!(
        text.contains("another application") && text.contains("keyward_meta"),
        "{text}"
    );
    assert!(text.contains("orders"), "names what it found: {text}");
    assert_eq!(pg_snapshot(&mut client), before, "nothing changed");
    assert_eq!(before.meta, None);
    let items: Vec<String> = client
        .query("SELECT item FROM orders ORDER BY id", &[])
        .expect("orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(items, ["tea", "cake"]);
    let functions: i64 = one(
        &mut client,
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'keyward%'",
    );
    assert_eq!(functions, 0, "no step was started");
}

#[test]
fn postgres_schema_a_failing_step_keeps_nothing_and_names_the_step() {
    let pg = PgServer::new();
    let mut client = pg.client();
    keyward_inventory::postgres::migrate(&mut client).expect("migrate");
    // Claim the last step is missing while its column is there: the step
    // fails.
    let previous = latest() - 1;
    client
        .execute("UPDATE keyward_meta SET schema_version = $1", &[&previous])
        .expect("back one step");
    let before = pg_snapshot(&mut client);

    let err = keyward_inventory::postgres::migrate(&mut client).expect_err("the step fails");
    let text = err.to_string();
    assert!(
        matches!(err, keyward_inventory::Error::Open { .. }),
        "expected Open, got {err:?}"
    );
    assert!(
        text.contains(&format!("schema step {}", latest())) && text.contains("host"),
        "names the step and the cause: {text}"
    );
    assert_eq!(pg_snapshot(&mut client), before, "nothing of the step kept");
    assert_eq!(schema_version(&mut client), previous);

    // With the column gone, the same call applies the step.
    client
        .batch_execute("ALTER TABLE audit DROP COLUMN host")
        .expect("drop");
    let found = keyward_inventory::postgres::migrate(&mut client).expect("migrate");
    assert_eq!(i64::from(found), previous);
    assert_eq!(schema_version(&mut client), latest());
}
