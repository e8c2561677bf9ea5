//! A throw-away PostgreSQL server per test: a cluster made with `initdb` in
//! a temporary directory, its postmaster a child of the test, reached over
//! TCP on 127.0.0.1 and over a Unix socket in that directory.
//!
//! - The binaries are Debian's (`postgresql`), the newest major installed
//!   under `/usr/lib/postgresql/*/bin` (15 or later). None there is a
//!   failure that says to run `softhsm-config/setup`, never a skip.
//! - PostgreSQL refuses to run as root: when the test runs as root, `initdb`,
//!   `postgres` and `pg_ctl` run as the `postgres` user (made by the
//!   package; supplementary groups dropped), which owns the directory.
//! - Every connection authenticates with SCRAM-SHA-256 (`pg_hba.conf` has no
//!   `trust` line, for the socket either). Two roles have random passwords:
//!   the superuser `postgres` (given to `initdb` in a 0600 file that is
//!   removed afterwards) and `keyward`, which owns the database `keyward`
//!   (created with its SCRAM verifier, computed here, so the password itself
//!   reaches neither a command line nor the server).
//! - Ready means a password login answers (bounded by [`READY_TIMEOUT`]; a
//!   server that exits or does not answer is a panic carrying the tail of
//!   its log). [`PgServer::stop`], [`PgServer::start`] and
//!   [`PgServer::kill`] (SIGKILL of the postmaster) take the store away and
//!   bring it back on the same port with the same data.
//! - Dropped, the server is stopped (`pg_ctl stop -m immediate`) and its
//!   directory removed.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use tempfile::TempDir;

use crate::tools::{describe, free_port};

/// Where Debian installs the server binaries, one directory per major.
pub const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The oldest major the tests accept.
pub const MIN_MAJOR: u32 = 15;
/// How long a starting server may take to accept a password login.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping server may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The loopback address the server listens on.
pub const HOST: &str = "127.0.0.1";
/// The role and database the store uses.
pub const USER: &str = "keyward";
/// The database the store uses, owned by [`USER`].
pub const DATABASE: &str = "keyward";
/// The bootstrap superuser (for what the store's role may not do).
pub const SUPERUSER: &str = "postgres";
/// What to do when PostgreSQL is missing.
pub const INSTALL_FIRST: &str =
    "run softhsm-config/setup (it installs Debian's postgresql package)";

const DATA: &str = "data";
const LOG: &str = "server.log";
const PWFILE: &str = "superuser.pw";
/// The settings of a test cluster, included from `postgresql.conf`.
const SETTINGS: &str = "keyward-test.conf";
/// How often a fresh cluster tries another port when its port was taken.
const PORT_TRIES: usize = 5;

/// The server binaries of one installed major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBins {
    /// The major version (the name of its directory).
    pub major: u32,
    /// The directory holding `initdb`, `postgres` and `pg_ctl`.
    pub dir: PathBuf,
}

impl PgBins {
    /// The newest major installed under [`DEBIAN_ROOT`]; panics saying to
    /// run `softhsm-config/setup` when there is none, or none new enough.
    pub fn find() -> PgBins {
        PgBins::find_in(Path::new(DEBIAN_ROOT))
    }

    /// The newest major under `root` (`root/<major>/bin`) that has
    /// `initdb`, `postgres` and `pg_ctl`; panics when there is none of at
    /// least [`MIN_MAJOR`].
    pub fn find_in(root: &Path) -> PgBins {
        let mut found: Option<PgBins> = None;
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                let Some(major) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let dir = entry.path().join("bin");
                let complete = ["initdb", "postgres", "pg_ctl"]
                    .iter()
                    .all(|b| dir.join(b).is_file());
                if complete && found.as_ref().is_none_or(|f| major > f.major) {
                    found = Some(PgBins { major, dir });
                }
            }
        }
        match found {
            Some(bins) if bins.major >= MIN_MAJOR => bins,
            Some(bins) => panic!(
                "PostgreSQL {} in {} is too old (the tests need {MIN_MAJOR} or later): {INSTALL_FIRST}",
                bins.major,
                bins.dir.display()
            ),
            None => panic!(
                "no PostgreSQL server under {}/<major>/bin (initdb, postgres, pg_ctl): {INSTALL_FIRST}",
                root.display()
            ),
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// How long a fresh cluster took to become ready.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// `initdb`.
    pub initdb: Duration,
    /// From starting the postmaster to its first password login.
    pub start: Duration,
    /// Making the `keyward` role and database.
    pub setup: Duration,
}

impl Startup {
    /// The whole time, from `initdb` to the `keyward` database.
    pub fn total(&self) -> Duration {
        self.initdb + self.start + self.setup
    }
}

/// A running (or stopped) throw-away PostgreSQL server.
pub struct PgServer {
    bins: PgBins,
    /// Removed when dropped (after the server is stopped).
    dir: Option<TempDir>,
    path: PathBuf,
    port: u16,
    password: String,
    superuser_password: String,
    /// Whom the server runs as, when the test runs as root.
    owner: Option<(Uid, Gid)>,
    postmaster: Option<Child>,
    startup: Startup,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("major", &self.bins.major)
            .field("dir", &self.path)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// A new cluster, started and ready, with the `keyward` role and
    /// database. Panics (with what went wrong) when it cannot be.
    pub fn new() -> PgServer {
        let bins = PgBins::find();
        let owner = server_owner();
        let dir = tempfile::Builder::new()
            .prefix("keyward-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a directory for PostgreSQL: {e}"));
        let path = dir.path().to_path_buf();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw())).unwrap_or_else(
                |e| panic!("cannot give {} to the postgres user: {e}", path.display()),
            );
        }
        let mut server = PgServer {
            bins,
            dir: Some(dir),
            path,
            port: 0,
            password: random_hex(24),
            superuser_password: random_hex(24),
            owner,
            postmaster: None,
            startup: Startup {
                initdb: Duration::ZERO,
                start: Duration::ZERO,
                setup: Duration::ZERO,
            },
        };
        let t = Instant::now();
        server.initdb();
        server.startup.initdb = t.elapsed();

        let t = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            server.port = free_port();
            server.write_settings();
            match server.spawn_and_wait() {
                Ok(()) => break,
                Err(Failed {
                    port_taken: true, ..
                }) if tries < PORT_TRIES => continue,
                Err(failed) => panic!("{}", failed.message),
            }
        }
        server.startup.start = t.elapsed();

        let t = Instant::now();
        server.create_store_role();
        server.startup.setup = t.elapsed();
        server
    }

    /// The address the server listens on (always [`HOST`]).
    pub fn host(&self) -> &str {
        HOST
    }

    /// Its TCP port (the same across [`stop`](Self::stop) and
    /// [`start`](Self::start)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store's role.
    pub fn user(&self) -> &str {
        USER
    }

    /// The store's role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The store's database.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The cluster's directory (data, log, Unix socket).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The directory of the Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.path
    }

    /// The server's log (standard output and error, appended to on each
    /// start).
    pub fn log_path(&self) -> PathBuf {
        self.path.join(LOG)
    }

    /// The installed major the server runs.
    pub fn major(&self) -> u32 {
        self.bins.major
    }

    /// How long this cluster took to become ready when it was made.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// Whether the postmaster runs (started here and not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// The store's connection string (libpq's `key=value` form, which
    /// rust-postgres reads too): TCP on [`HOST`], role, password, database.
    pub fn connection_string(&self) -> String {
        format!(
            "host={HOST} port={} user={USER} password={} dbname={DATABASE}",
            self.port, self.password
        )
    }

    /// The store's connection settings (TCP, password, no TLS).
    pub fn config(&self) -> Config {
        self.tcp_config(USER, &self.password, DATABASE)
    }

    /// The store's role over the Unix socket (with its password too).
    pub fn socket_config(&self) -> Config {
        let mut config = Config::new();
        config
            .host_path(&self.path)
            .port(self.port)
            .user(USER)
            .password(&self.password)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// A connection as the store's role, or why there is none.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        self.config().connect(NoTls)
    }

    /// A connection as the store's role; panics when there is none.
    pub fn client(&self) -> Client {
        self.connect().unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL on {HOST}:{}: {}; its log ({}) ends:\n{}",
                self.port,
                explain(&e),
                self.log_path().display(),
                self.log_tail(20)
            )
        })
    }

    /// A new, empty database owned by the store's role, and the settings
    /// to reach it as that role: one server serves many independent
    /// stores (a database costs a fraction of a server's start).
    pub fn new_database(&self) -> Config {
        let name = format!("keyward_{}", random_hex(8));
        self.superuser_client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {USER}"))
            .unwrap_or_else(|e| panic!("cannot create the database {name}: {}", explain(&e)));
        self.tcp_config(USER, &self.password, &name)
    }

    /// A connection as the superuser to `dbname`; panics when there is none.
    pub fn superuser_client(&self, dbname: &str) -> Client {
        self.superuser_config(dbname)
            .connect(NoTls)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to PostgreSQL on {HOST}:{} as {SUPERUSER}: {}; its log ({}) ends:\n{}",
                    self.port,
                    explain(&e),
                    self.log_path().display(),
                    self.log_tail(20)
                )
            })
    }

    fn superuser_config(&self, dbname: &str) -> Config {
        self.tcp_config(SUPERUSER, &self.superuser_password, dbname)
    }

    /// Over TCP to this server, as `user` with `password`.
    fn tcp_config(&self, user: &str, password: &str, dbname: &str) -> Config {
        let mut config = Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Requires TLS of the store's role on TCP from now on: the server
    /// presents `cert` (PEM chain) with `key`, and refuses the role's
    /// plain-text TCP logins ([`PgServer::client`] no longer works); restarts
    /// the server. The superuser and the Unix socket stay as they were.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        let data = self.path.join(DATA);
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = data.join(to);
            fs::copy(from, &dest).unwrap_or_else(|e| {
                panic!("cannot copy {} to {}: {e}", from.display(), dest.display())
            });
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dest.display()));
            self.give(&dest);
        }
        let hba = data.join("pg_hba.conf");
        fs::write(
            &hba,
            format!(
                "# keyward test cluster: every login by password (SCRAM); the store's role\n\
                 # over TCP only with TLS (the superuser, which runs the tests' set-up, without)\n\
                 local    all  all                         scram-sha-256\n\
                 hostssl  all  {USER}        127.0.0.1/32  scram-sha-256\n\
                 host     all  {SUPERUSER}   127.0.0.1/32  scram-sha-256\n"
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", hba.display()));
        let settings = data.join(SETTINGS);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&settings)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", settings.display()));
        writeln!(
            f,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", settings.display()));
        self.stop();
        self.start();
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts the stopped (or killed) server on its port and waits until it
    /// accepts a password login (after a kill, once crash recovery is done).
    pub fn start(&mut self) {
        assert!(
            self.postmaster.is_none(),
            "PostgreSQL on port {} is already running",
            self.port
        );
        if let Err(failed) = self.spawn_and_wait() {
            panic!("{}", failed.message);
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`: open connections are
    /// closed) and waits until the postmaster has exited.
    pub fn stop(&mut self) {
        let child = self.postmaster.take();
        assert!(
            child.is_some(),
            "PostgreSQL on port {} is not running",
            self.port
        );
        let out = self.pg_ctl_stop("fast");
        if let Some(mut child) = child {
            if !out.status.success() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}\n--- server log ---\n{}",
                    describe(&self.pg_ctl_command("fast"), &out),
                    self.log_tail(20)
                );
            }
            if !wait_exit(&mut child, STOP_TIMEOUT) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "PostgreSQL on port {} did not exit within {STOP_TIMEOUT:?} of pg_ctl stop; its log ends:\n{}",
                    self.port,
                    self.log_tail(20)
                );
            }
        }
    }

    /// Kills the postmaster with SIGKILL (no shutdown; its backends notice
    /// and exit) and reaps it. [`start`](Self::start) brings the server
    /// back through crash recovery.
    pub fn kill(&mut self) {
        let mut child = self
            .postmaster
            .take()
            .unwrap_or_else(|| panic!("PostgreSQL on port {} is not running", self.port));
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
        let _ = child.wait();
    }

    fn initdb(&self) {
        let pwfile = self.path.join(PWFILE);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", pwfile.display()));
            f.write_all(self.superuser_password.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", pwfile.display()));
        }
        self.give(&pwfile);
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.path.join(DATA))
            .arg("--username")
            .arg(SUPERUSER)
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--auth=scram-sha-256")
            .args([
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let _ = fs::remove_file(&pwfile);
        assert!(out.status.success(), "{}", describe(&cmd, &out));

        // Password logins only: over the socket and on 127.0.0.1, nothing
        // else (initdb's file also admits ::1 and replication).
        let hba = self.path.join(DATA).join("pg_hba.conf");
        fs::write(
            &hba,
            "# keyward test cluster: every login by password (SCRAM), loopback only\n\
             local  all  all                scram-sha-256\n\
             host   all  all  127.0.0.1/32  scram-sha-256\n",
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", hba.display()));
        let conf = self.path.join(DATA).join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", conf.display()));
        writeln!(f, "\ninclude '{SETTINGS}'")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
    }

    /// The test cluster's settings: where it listens, small, and shared
    /// memory that goes with its directory (nothing left in /dev/shm).
    fn write_settings(&self) {
        let settings = self.path.join(DATA).join(SETTINGS);
        let text = format!(
            "listen_addresses = '{HOST}'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 40\n\
             shared_buffers = 16MB\n\
             dynamic_shared_memory_type = mmap\n",
            self.port,
            conf_str(&self.path.display().to_string()),
        );
        fs::write(&settings, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", settings.display()));
        self.give(&settings);
    }

    /// Starts the postmaster and waits until it accepts a password login.
    /// Retries, within [`READY_TIMEOUT`], a start refused because the
    /// backends of a killed postmaster still hold its shared memory.
    fn spawn_and_wait(&mut self) -> Result<(), Failed> {
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        loop {
            let log = self.log_path();
            let mut log_file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
            let offset = log_file.seek(SeekFrom::End(0)).unwrap_or(0);
            let err_file = log_file
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot share {}: {e}", log.display()));
            let mut cmd = self.command("postgres");
            cmd.arg("-D")
                .arg(self.path.join(DATA))
                .stdout(Stdio::from(log_file))
                .stderr(Stdio::from(err_file));
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
            self.postmaster = Some(child);
            match self.wait_ready(deadline) {
                Ok(()) => return Ok(()),
                Err(exited) => {
                    self.postmaster = None;
                    let since = log_since(&log, offset);
                    let message = format!(
                        "PostgreSQL {} on {HOST}:{} {exited}; its log ({}) ends:\n{}",
                        self.bins.major,
                        self.port,
                        log.display(),
                        self.log_tail(20)
                    );
                    if since.contains("is still in use") && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    return Err(Failed {
                        port_taken: since.contains("Address already in use"),
                        message,
                    });
                }
            }
        }
    }

    /// Waits for the first password login as the superuser. On failure,
    /// the postmaster is gone (killed when it did not answer in time) and
    /// the error says how it ended.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let mut config = self.superuser_config("postgres");
        config.connect_timeout(Duration::from_secs(1));
        loop {
            let last = match config.connect(NoTls) {
                Ok(_client) => return Ok(()),
                Err(e) => explain(&e),
            };
            let Some(child) = self.postmaster.as_mut() else {
                return Err("has no postmaster".into());
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited during start-up ({status})"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not accept a login within {READY_TIMEOUT:?} (last: {last})"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `keyward` role (password as its SCRAM verifier) and its database.
    fn create_store_role(&self) {
        let verifier = postgres_protocol::password::scram_sha_256(self.password.as_bytes());
        let mut su = self.superuser_client("postgres");
        su.batch_execute(&format!(
            "CREATE ROLE {USER} LOGIN PASSWORD {}",
            sql_literal(&verifier)
        ))
        .unwrap_or_else(|e| panic!("cannot create the role {USER}: {}", explain(&e)));
        su.batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))
            .unwrap_or_else(|e| panic!("cannot create the database {DATABASE}: {}", explain(&e)));
    }

    /// A command for one of the server's binaries, run as the server's
    /// owner, in its directory, with a plain environment.
    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.bins.bin(bin));
        cmd.current_dir(&self.path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("HOME", &self.path)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            // std drops the supplementary groups when root sets a uid.
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    fn pg_ctl_command(&self, mode: &str) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.path.join(DATA))
            .args(["-m", mode, "-w", "-t"])
            .arg(STOP_TIMEOUT.as_secs().to_string());
        cmd
    }

    fn pg_ctl_stop(&self, mode: &str) -> std::process::Output {
        let mut cmd = self.pg_ctl_command(mode);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Gives a file made here to the server's owner.
    fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw())).unwrap_or_else(
                |e| panic!("cannot give {} to the postgres user: {e}", path.display()),
            );
        }
    }

    /// The System V segment a killed postmaster left behind (its id is in
    /// `postmaster.pid`), removed so that a dropped cluster leaves nothing.
    fn remove_stale_segment(&self) {
        let pidfile = self.path.join(DATA).join("postmaster.pid");
        let Ok(text) = fs::read_to_string(pidfile) else {
            return;
        };
        let Some(shmid) = text
            .lines()
            .nth(6)
            .and_then(|l| l.split_whitespace().nth(1))
            .filter(|id| id.parse::<u64>().is_ok())
        else {
            return;
        };
        let _ = Command::new("ipcrm")
            .args(["-m", shmid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Default for PgServer {
    fn default() -> Self {
        PgServer::new()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            let _ = self.pg_ctl_stop("immediate");
            if !wait_exit(&mut child, STOP_TIMEOUT) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.remove_stale_segment();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A start that failed: its message, and whether the port was taken.
#[derive(Debug)]
struct Failed {
    port_taken: bool,
    message: String,
}

/// Whom the server runs as: the `postgres` user when this process is
/// root (PostgreSQL refuses root), else this process's own user.
fn server_owner() -> Option<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return None;
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Some((user.uid, user.gid)),
        Ok(None) => panic!(
            "PostgreSQL does not run as root and there is no `{SUPERUSER}` user to run it as: {INSTALL_FIRST}"
        ),
        Err(e) => panic!("cannot look up the `{SUPERUSER}` user: {e}"),
    }
}

/// Waits up to `timeout` for `child` to exit; whether it did.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// What the log gained after `offset`.
fn log_since(log: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(log) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A string in `postgresql.conf`'s quotes.
fn conf_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "''")
}

/// An SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `err` is a refused connection (nothing listens on the port).
pub fn is_refused(err: &postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// `err` with its causes, for assertions and failure messages.
pub fn explain(err: &postgres::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Whether `err` is the server refusing a password.
pub fn is_bad_password(err: &postgres::Error) -> bool {
    err.code() == Some(&SqlState::INVALID_PASSWORD)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).unwrap_or_else(|e| panic!("no randomness: {e}"));
    hex::encode(buf)
}
