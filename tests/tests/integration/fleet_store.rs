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
