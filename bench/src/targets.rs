//! The token stacks: SoftHSM2 loaded directly, SoftHSM2 behind keyward (a
//! testbed with the release build) twice, with and without use records in
//! the audit trail, and SoftHSM2 behind `p11-kit server` reached through
//! `p11-kit-client.so`.
//!
//! Both keyward targets live in this one process: each loads its own copy
//! of the module (a library is loaded once per file, and the module reads
//! `KEYWARD_SOCKET` at `C_Initialize`), and each has its own agent, token
//! and trail.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_testbed::{Bins, Options, Policy, Testbed};

const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// Column name of keyward with its default `[audit]` settings.
pub const KEYWARD: &str = "keyward";
/// Column name of keyward with `[audit] record_uses = false`.
pub const KEYWARD_AUDIT_OFF: &str = "kw-audit-off";

/// The policy class of the managed keys the benchmark signs with, in the
/// keyward targets' policy (lab mode, so that the unmanaged session keys of
/// the other cases behave as on a plain token).
pub const MANAGED_CLASS: &str = "bench-signing";
/// The application the keyward targets' policy makes of this process.
pub const APPLICATION: &str = "bench";

/// One loaded PKCS#11 library with a logged-in token.
pub struct Target {
    /// Column name: `direct`, `keyward`, `kw-audit-off`, `p11kit`.
    pub name: &'static str,
    /// The loaded library.
    pub pkcs11: Pkcs11,
    /// The token's slot.
    pub slot: Slot,
    /// For keyward targets: the agent's admin side.
    pub admin: Option<Admin>,
    module: PathBuf,
    token: String,
    pin: String,
    /// What the library reads from the environment (start-up probes).
    env: Vec<(String, String)>,
    testbed: Option<Testbed>,
    server: Option<Child>,
}

/// A keyward target's agent as an administrator sees it: the `keyward`
/// CLI on its admin socket, its audit store, its process.
#[derive(Debug)]
pub struct Admin {
    keyward: PathBuf,
    socket: PathBuf,
    store: PathBuf,
    pid: u32,
}

/// What a stretch of the audit trail holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trail {
    /// The newest record's seq.
    pub head: u64,
    /// Use records after the previous head.
    pub use_records: u64,
    /// The uses they stand for (a coalesced record counts its uses).
    pub use_events: u64,
}

impl Admin {
    /// Runs `keyward ARGS` on this agent; its standard output.
    pub fn keyward(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.keyward)
            .arg("--admin-socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.keyward.display()))?;
        if !out.status.success() {
            return Err(format!(
                "keyward {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The trail after `after`: `keyward audit tail` first has the agent
    /// write what it has queued (and names the head); the counts come from
    /// the store, since the CLI's records do not show a record's count.
    pub fn trail_since(&self, after: u64) -> Result<Trail, String> {
        let text = self.keyward(&["--json", "audit", "tail", "-n", "1"])?;
        let head = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("seq").and_then(serde_json::Value::as_u64))
            .max()
            .ok_or_else(|| format!("keyward audit tail printed no record: {text}"))?;
        let db = rusqlite::Connection::open_with_flags(
            &self.store,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("{}: {e}", self.store.display()))?;
        let (use_records, use_events): (i64, i64) = db
            .query_row(
                "SELECT count(*), coalesce(sum(count), 0) FROM audit \
                 WHERE kind = 'use' AND seq > ?1 AND seq <= ?2",
                [after as i64, head as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| format!("{}: {e}", self.store.display()))?;
        Ok(Trail {
            head,
            use_records: use_records as u64,
            use_events: use_events as u64,
        })
    }

    /// CPU time (user + system) the agent has used: the whole process, and
    /// its `audit-writer` thread.
    pub fn cpu(&self) -> Result<(Duration, Duration), String> {
        let whole = stat_cpu(&format!("/proc/{}/stat", self.pid))?;
        let mut writer = Duration::ZERO;
        let tasks = format!("/proc/{}/task", self.pid);
        for task in std::fs::read_dir(&tasks).map_err(|e| format!("{tasks}: {e}"))? {
            let dir = task.map_err(|e| e.to_string())?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == "audit-writer" {
                writer += stat_cpu(&dir.join("stat").display().to_string())?;
            }
        }
        Ok((whole, writer))
    }
}

/// utime + stime of a `/proc/.../stat` file (clock ticks of 10 ms).
fn stat_cpu(path: &str) -> Result<Duration, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let tick = |i: usize| -> Result<u64, String> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or(format!("{path}: no field {i}"))
    };
    Ok(Duration::from_millis((tick(14)? + tick(15)?) * 10))
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("module", &self.module)
            .finish()
    }
}

impl Target {
    /// A new read-write session, logged in as the user.
    pub fn session(&self) -> cryptoki::error::Result<Session> {
        let s = self.pkcs11.open_rw_session(self.slot)?;
        match s.login(UserType::User, Some(&AuthPin::from(self.pin.clone()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// Stops what this target started.
    pub fn stop(mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(testbed) = self.testbed.take() {
            let _ = testbed.down();
        }
    }
}

/// Creates a SoftHSM2 token with its own configuration under `dir`.
fn softhsm_token(dir: &Path, label: &str, pin: &str) -> Result<PathBuf, String> {
    keyward_testbed::softhsm_token(dir, label, pin, "87654321").map_err(|e| e.to_string())
}

/// The SoftHSM2 library.
fn softhsm() -> Result<PathBuf, String> {
    keyward_testbed::softhsm_lib().map_err(|e| e.to_string())
}

fn load(name: &'static str, module: &Path, token: &str, pin: &str) -> Result<Target, String> {
    let pkcs11 =
        Pkcs11::new(module).map_err(|e| format!("{name}: loading {}: {e}", module.display()))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("{name}: C_Initialize: {e}"))?;
    let slot = find_slot(&pkcs11, token).map_err(|e| format!("{name}: {e}"))?;
    Ok(Target {
        name,
        pkcs11,
        slot,
        admin: None,
        module: module.to_path_buf(),
        token: token.to_string(),
        pin: pin.to_string(),
        env: Vec::new(),
        testbed: None,
        server: None,
    })
}

fn find_slot(pkcs11: &Pkcs11, token: &str) -> Result<Slot, String> {
    for slot in pkcs11.get_slots_with_token().map_err(|e| e.to_string())? {
        let info = pkcs11.get_token_info(slot).map_err(|e| e.to_string())?;
        if info.label() == token {
            return Ok(slot);
        }
    }
    Err(format!("no token labelled {token}"))
}

/// SoftHSM2 loaded directly into this process.
pub fn direct(work: &Path) -> Result<Target, String> {
    let conf = softhsm_token(&work.join("direct"), "bench-direct", "1234")?;
    // This process's SoftHSM2 reads its configuration at C_Initialize; the
    // agent and the p11-kit server are other processes with their own.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    load("direct", &softhsm()?, "bench-direct", "1234")
}

/// The release build of keyward, on a testbed of its own, as column
/// `name`: with the default `[audit]` settings, or with `record_uses =
/// false` (no use records; everything else is still recorded).
pub fn keyward(work: &Path, name: &'static str, record_uses: bool) -> Result<Target, String> {
    // The binaries of this build (target/release for the release
    // benchmark), or KEYWARD_BIN_DIR.
    let bins = Bins::locate();
    bins.check_all()
        .map_err(|e| format!("{e} (for the benchmark: cargo build --release --workspace)"))?;
    let options = Options {
        label: "bench-keyward".into(),
        pin: Some("1234".into()),
        policy: Policy::Text(bench_policy(work)?),
        log: "warn".into(),
        extra_config: if record_uses {
            String::new()
        } else {
            "[audit]\nrecord_uses = false\n".into()
        },
        ..Options::default()
    };
    let dir = work.join(name);
    let testbed = Testbed::up(&dir, &options, bins).map_err(|e| format!("{name}: {e}"))?;
    // A copy of the module per keyward target: the dynamic loader shares
    // one file between every load of it in a process.
    let module = work.join(format!("{name}-module/libkeyward_pkcs11.so"));
    std::fs::create_dir_all(module.parent().unwrap_or(work)).map_err(|e| e.to_string())?;
    let built = testbed.bins().module().map_err(|e| e.to_string())?;
    std::fs::copy(built, &module).map_err(|e| format!("copying the module: {e}"))?;
    let socket = testbed.socket().display().to_string();
    std::env::set_var("KEYWARD_SOCKET", &socket);
    let mut t = load(name, &module, "bench-keyward", "1234")?;
    t.env = vec![("KEYWARD_SOCKET".into(), socket)];
    t.admin = Some(Admin {
        keyward: testbed.bins().cli().map_err(|e| e.to_string())?,
        socket: testbed.admin_socket(),
        store: testbed.dir().join("state/inventory.sqlite"),
        pid: testbed
            .pid()
            .ok_or(format!("{name}: the agent is not running"))?,
    });
    t.testbed = Some(testbed);
    Ok(t)
}

/// The keyward targets' policy: lab mode (objects outside key classes
/// behave as on a plain token), this process's user as application
/// [`APPLICATION`], and class [`MANAGED_CLASS`] granting it sign and verify.
fn bench_policy(work: &Path) -> Result<String, String> {
    // The owner of a directory this process made is its user.
    let uid = std::fs::metadata(work).map_err(|e| e.to_string())?.uid();
    Ok(format!(
        r#"# Written by keyward-bench.
[settings]
mode = "lab"
pin_max_attempts = 0

[[application]]
name = "{APPLICATION}"
uid = {uid}

[[class]]
name = "{MANAGED_CLASS}"
purpose = "signing"
algorithms = ["rsa:2048", "ec:p256"]
protect_period = "365d"
process_period = "365d"
grants = [{{ application = "{APPLICATION}", operations = ["sign", "verify"] }}]
"#
    ))
}

/// SoftHSM2 behind `p11-kit server`, if p11-kit and its client module exist.
pub fn p11kit(work: &Path) -> Result<Option<Target>, String> {
    let has_server = Command::new("p11-kit")
        .arg("server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_server || !Path::new(P11KIT_CLIENT).exists() {
        return Ok(None);
    }
    let conf = softhsm_token(&work.join("p11kit"), "bench-p11kit", "1234")?;
    let socket = work.join("p11kit/server.sock");
    let child = Command::new("p11-kit")
        .args(["server", "-f", "-n"])
        .arg(&socket)
        .arg("--provider")
        .arg(softhsm()?)
        .arg("pkcs11:token=bench-p11kit")
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("p11-kit server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            return Err("p11-kit server did not open its socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::env::set_var(
        "P11_KIT_SERVER_ADDRESS",
        format!("unix:path={}", socket.display()),
    );
    let mut t = load("p11kit", Path::new(P11KIT_CLIENT), "bench-p11kit", "1234")?;
    t.server = Some(child);
    Ok(Some(t))
}

/// In a fresh process: load, C_Initialize, open the first session; prints µs.
pub fn startup_probe(module: &str, token: &str, _pin: &str) -> f64 {
    let t0 = Instant::now();
    let pkcs11 = Pkcs11::new(module).expect("load module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = find_slot(&pkcs11, token).expect("token");
    let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    let us = t0.elapsed().as_secs_f64() * 1e6;
    drop(session);
    us
}

/// Runs [`startup_probe`] for `t` in a child process.
pub fn run_startup_probe(t: &Target) -> Result<f64, String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .envs(t.env.iter().map(|(k, v)| (k, v)))
        .arg("--startup-probe")
        .arg(&t.module)
        .arg(&t.token)
        .arg("-")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{}: startup probe failed: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("{}: startup probe output: {e}", t.name))
}
