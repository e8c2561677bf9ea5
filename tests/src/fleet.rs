//! A fleet for the tests: several agents, each with its own state
//! directory, sockets and PINs, sharing one PostgreSQL store (a database
//! on a [`PgServer`]) and one HSM token (the SoftHSM2 token directory of
//! the first agent, as a network HSM would be shared), on one policy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_testbed::{Bins, Options, Policy, Testbed};

use crate::harness::Env;
use crate::pki::TestCa;
use crate::postgres::PgServer;
use crate::probe::Probe;

/// The virtual token's user PIN on every agent of a fleet.
pub const PIN: &str = "123456";
/// The virtual token's SO PIN.
pub const SO_PIN: &str = "12345678";

/// How [`Fleet::start_with`] makes a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How many agents.
    pub agents: usize,
    /// Each agent's lease.
    pub lease_seconds: u64,
    /// Whether the server requires TLS (a certificate for 127.0.0.1 from a
    /// test CA) and the agents check it against that CA.
    pub tls: bool,
    /// A group whose members may use every agent's admin socket too.
    pub admin_group: Option<u32>,
}

impl Default for FleetOptions {
    fn default() -> FleetOptions {
        FleetOptions {
            agents: 2,
            lease_seconds: 5,
            tls: false,
            admin_group: None,
        }
    }
}

/// One agent of a [`Fleet`].
#[derive(Debug)]
pub struct Member {
    /// Its host name in the shared trail (`agent-0`, ...).
    pub host: String,
    /// The testbed: its directory, configuration and process.
    pub testbed: Testbed,
    /// What the CLI and probes need to reach it.
    pub env: Env,
}

/// Several agents on one shared store and one HSM token.
#[derive(Debug)]
pub struct Fleet {
    /// The agents; dropped (killed) before the server.
    pub agents: Vec<Member>,
    /// The store's server.
    pub pg: PgServer,
    /// The shared database.
    pub database: postgres::Config,
    /// The CA the store's certificate comes from, with TLS.
    pub store_ca: Option<PathBuf>,
    /// Holds every agent's directory.
    dir: tempfile::TempDir,
}

impl Fleet {
    /// `n` agents on `policy` (a policy file's text), `lease_seconds` each,
    /// started and answering; the store without TLS (on loopback).
    pub fn start(n: usize, policy: &str, lease_seconds: u64) -> Fleet {
        Fleet::start_with(
            policy,
            &FleetOptions {
                agents: n,
                lease_seconds,
                ..FleetOptions::default()
            },
        )
    }

    /// A fleet as `options` say, on `policy`.
    pub fn start_with(policy: &str, options: &FleetOptions) -> Fleet {
        let (n, lease_seconds, tls) = (options.agents, options.lease_seconds, options.tls);
        assert!(n >= 1, "a fleet has at least one agent");
        let mut pg = PgServer::new();
        let database = pg.new_database();
        let dir = tempfile::Builder::new()
            .prefix("kw-fleet-")
            .tempdir()
            .expect("a directory for the fleet");
        if options.admin_group.is_some() {
            // Other administrators reach their key files and sockets.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod the fleet's directory");
        }
        let ca = tls.then(|| {
            let ca = TestCa::new(dir.path(), "store-ca");
            let (cert, key) = ca.issue("store", &["IP:127.0.0.1"], false, 2);
            pg.require_tls(&cert, &key);
            ca.cert
        });
        let policy_file = dir.path().join("policy.toml");
        std::fs::write(&policy_file, policy).expect("write the fleet's policy");
        let password = dir.path().join("store.password");
        std::fs::write(&password, format!("{}\n", pg.password()))
            .expect("write the store's password");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let backend_label = format!("fleet-{}", std::process::id() % 100_000);
        let backend_pin = "fleet-backend-pin".to_owned();
        let mut agents: Vec<Member> = Vec::new();
        for k in 0..n {
            let host = format!("agent-{k}");
            let options = Options {
                label: "keyward".into(),
                pin: Some(PIN.into()),
                so_pin: Some(SO_PIN.into()),
                policy: Policy::File(policy_file.clone()),
                backend_label: Some(backend_label.clone()),
                backend_pin: Some(backend_pin.clone()),
                admin_group: options.admin_group,
                ..Options::default()
            };
            let at = dir.path().join(&host);
            let testbed = Testbed::create(&at, &options, Bins::locate())
                .unwrap_or_else(|e| panic!("the fleet's {host}: {e}"));
            if let Some(first) = agents.first() {
                // The same HSM token as the first agent.
                std::fs::copy(first.testbed.softhsm_conf(), testbed.softhsm_conf())
                    .expect("share the first agent's token");
            }
            testbed
                .set_agent_options(&["store = \"postgres\""])
                .expect("store = postgres");
            testbed
                .append_config(&postgres_table(
                    &database,
                    &password,
                    &host,
                    lease_seconds,
                    ca.as_deref(),
                ))
                .expect("the [postgres] table");
            testbed
                .start()
                .unwrap_or_else(|e| panic!("the fleet's {host} does not start: {e}"));
            let env = env_of(&testbed);
            agents.push(Member { host, testbed, env });
        }
        Fleet {
            agents,
            pg,
            database,
            store_ca: ca,
            dir,
        }
    }

    /// Agent `k`'s environment (for the CLI helpers).
    pub fn env(&self, k: usize) -> &Env {
        &self.agents[k].env
    }

    /// The fleet's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `fleet_probe` on agent `k` signing with the key named `key`,
    /// once it says `ready`.
    pub fn probe(&self, k: usize, key: &str) -> Probe {
        let mut p = Probe::start(self.env(k), Path::new(&probe_exe()), &[key]);
        p.value("ready", Duration::from_secs(30));
        p
    }

    /// The agents' logs' last lines, for failure messages.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.host, m.testbed.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The `fleet_probe` binary beside the test binaries.
fn probe_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    dir.join("fleet_probe")
}

/// The `[postgres]` table of agent `host`: TLS checked against `ca`, or
/// none.
pub fn postgres_table(
    db: &postgres::Config,
    password: &Path,
    host: &str,
    lease: u64,
    ca: Option<&Path>,
) -> String {
    let tls = match ca {
        Some(ca) => format!("tls = \"verify-full\"\nca_file = \"{}\"", ca.display()),
        None => "tls = \"disable\"".to_owned(),
    };
    let server = match db.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("the test database is not on TCP: {other:?}"),
    };
    format!(
        "\n[postgres]\nurl = \"host={server} port={} user={} dbname={}\"\npassword = \"file:{}\"\n\
         {tls}\nhost = \"{host}\"\nlease_seconds = {lease}\n",
        db.get_ports().first().copied().unwrap_or(5432),
        db.get_user().unwrap_or_default(),
        db.get_dbname().unwrap_or_default(),
        password.display()
    )
}

/// The environment of `testbed`'s agent.
fn env_of(testbed: &Testbed) -> Env {
    let get = |name: &str| testbed.export(name).unwrap_or_default().to_owned();
    Env {
        module: get("KEYWARD_MODULE"),
        socket: get("KEYWARD_SOCKET"),
        admin_socket: get("KEYWARD_ADMIN_SOCKET"),
        token: get("KEYWARD_TOKEN"),
        pin: get("KEYWARD_PIN"),
        so_pin: get("KEYWARD_SO_PIN"),
        dir: testbed.dir().to_path_buf(),
        direct: false,
    }
}
