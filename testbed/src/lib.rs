//! keyward's testbed: a throw-away SoftHSM2 token with a keyward agent in
//! front of it, in a directory of its own. The integration tests, the
//! agent's own tests, the benchmark, the demo and people (through
//! `softhsm-config/testbed`, a wrapper around the `keyward-testbed` binary)
//! all get their token and agent here, from one implementation.
//!
//! A testbed directory holds:
//!
//! - `softhsm2.conf` and `softhsm/tokens/`: the backend token, made with
//!   `softhsm2-util` ([`softhsm_token`]); its PINs are random and the
//!   application never sees them (`backend.pin`, mode 0600, is what the
//!   agent reads);
//! - `keyward-agent.toml`, `policy.toml`, `state/`: the agent's
//!   configuration, policy and state (the virtual token's PIN hashes, the
//!   inventory);
//! - `keyward.sock`, `admin.sock`: the agent's sockets (the application
//!   socket can be placed elsewhere);
//! - `agent.pid`, `agent.log`, `agent.log-level`: the running agent's
//!   pid, its standard output and error (appended to on each start), and
//!   its `KEYWARD_LOG`;
//! - `testbed.env` (mode 0600): the `export` lines an application needs.
//! - `agent.env` (when a test sets it): extra environment of the agent's
//!   starts ([`Testbed::set_agent_env`]).
//!
//! The agent is started with [`Testbed::start`] and is ready when it answers
//! a `Hello` on its socket (bounded by [`READY_TIMEOUT`]; when it exits or
//! does not answer, the error carries the tail of its log). The testbed
//! never builds anything: the binaries come from `KEYWARD_BIN_DIR`, else the
//! target directory of the build the running program belongs to
//! ([`Bins::locate`]); a missing one is an error that says to build first.
//!
//! A testbed made by [`Testbed::create`] or [`Testbed::up`] kills its agent
//! (SIGKILL) when dropped; one attached to an existing directory with
//! [`Testbed::open`] leaves it running.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keyward_protocol::frame::{read_message, write_message};
use keyward_protocol::{Request, Response, APP_VERSIONS};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a starting agent may take to answer its first `Hello`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped agent may take to exit before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Where distributions put the SoftHSM2 library (after `SOFTHSM2_LIB`).
pub const SOFTHSM_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
/// The agent binary.
pub const AGENT: &str = "keyward-agent";
/// The admin CLI.
pub const CLI: &str = "keyward";
/// The PKCS#11 module.
pub const MODULE: &str = "libkeyward_pkcs11.so";
/// What to do when a binary is missing.
pub const BUILD_FIRST: &str = "build first: cargo build --workspace";

/// The agent's configuration file in a testbed directory.
const CONFIG: &str = "keyward-agent.toml";
/// The exports of a testbed, kept in its directory.
const ENV_FILE: &str = "testbed.env";
const PID_FILE: &str = "agent.pid";
/// Extra environment of the agent (`NAME=value` lines), when present.
const AGENT_ENV: &str = "agent.env";
const LOG_FILE: &str = "agent.log";
/// The lab policy file of the repository (the built-in lab policy, spelt
/// out), which also lets applications re-initialise the token.
const LAB_POLICY: &str = include_str!("../../policy/lab-policy.toml");

/// What went wrong, said plainly (never a PIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The testbed's results.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error(format!("{what}: {e}"))
}

/// Where the keyward binaries are. Nothing is built: a missing binary is
/// an error naming it and saying to build first.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
    agent: Option<PathBuf>,
}

impl Bins {
    /// `KEYWARD_BIN_DIR` when set, else the directory of the build the
    /// running program belongs to (a test binary in `target/debug/deps`
    /// uses `target/debug`, the release benchmark `target/release`).
    pub fn locate() -> Bins {
        Bins::locate_from(
            std::env::var_os("KEYWARD_BIN_DIR"),
            &std::env::current_exe().unwrap_or_default(),
        )
    }

    /// [`Bins::locate`] for this `KEYWARD_BIN_DIR` and running program.
    pub fn locate_from(bin_dir: Option<std::ffi::OsString>, exe: &Path) -> Bins {
        if let Some(dir) = bin_dir.filter(|d| !d.is_empty()) {
            return Bins::in_dir(dir);
        }
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Bins::in_dir(dir)
    }

    /// The binaries in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Bins {
        Bins {
            dir: dir.into(),
            agent: None,
        }
    }

    /// Uses `path` as the agent (e.g. cargo's `CARGO_BIN_EXE_keyward-agent`).
    pub fn with_agent(mut self, path: impl Into<PathBuf>) -> Bins {
        self.agent = Some(path.into());
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn need(&self, path: PathBuf) -> Result<PathBuf> {
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error(format!(
                "{} is missing; {BUILD_FIRST} (binaries come from KEYWARD_BIN_DIR, else from the \
                 build directory of the running program)",
                path.display()
            )))
        }
    }

    /// The path of the agent, which must exist.
    pub fn agent(&self) -> Result<PathBuf> {
        self.need(self.agent.clone().unwrap_or_else(|| self.dir.join(AGENT)))
    }

    /// The path of the `keyward` CLI, which must exist.
    pub fn cli(&self) -> Result<PathBuf> {
        self.need(self.dir.join(CLI))
    }

    /// The path of the PKCS#11 module, which must exist.
    pub fn module(&self) -> Result<PathBuf> {
        self.need(self.dir.join(MODULE))
    }

    /// Checks that the agent, the CLI and the module are all there.
    pub fn check_all(&self) -> Result<()> {
        self.agent()?;
        self.cli()?;
        self.module()?;
        Ok(())
    }
}

/// The path of the SoftHSM2 library: `SOFTHSM2_LIB`, else the usual places.
pub fn softhsm_lib() -> Result<PathBuf> {
    let env = std::env::var_os("SOFTHSM2_LIB").map(PathBuf::from);
    env.into_iter()
        .chain(SOFTHSM_CANDIDATES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::new("SoftHSM2 is not installed (apt-get install softhsm2)"))
}

/// Creates a SoftHSM2 token labelled `label` in `dir/softhsm/tokens`, with
/// its own `dir/softhsm2.conf`, and returns that file (what
/// `SOFTHSM2_CONF` must name). The PINs reach `softhsm2-util` as
/// arguments: use throw-away PINs only.
pub fn softhsm_token(dir: &Path, label: &str, pin: &str, so_pin: &str) -> Result<PathBuf> {
    let tokens = dir.join("softhsm/tokens");
    fs::create_dir_all(&tokens).map_err(io_err(tokens.display()))?;
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .map_err(io_err(conf.display()))?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", pin, "--so-pin", so_pin])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("softhsm2-util (apt-get install softhsm2): {e}")))?;
    if !out.status.success() {
        return Err(Error(format!(
            "softhsm2-util could not create the token {label} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(conf)
}

/// The agent's policy in a testbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The lab policy (a plain PKCS#11 token for local root and same-user
    /// peers); applications may also re-initialise the token.
    Lab,
    /// Only the current user, as application `testbed`; no re-initialising.
    Strict,
    /// A copy of this policy file.
    File(PathBuf),
    /// This policy text.
    Text(String),
    /// No policy file: the agent's built-in lab policy.
    BuiltIn,
}

/// How to make a testbed. [`Options::default`] is what `testbed up DIR`
/// makes: token `keyward`, user PIN `123456`, SO PIN `12345678`, the lab
/// policy, the agent logging at `info`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The virtual token's label (at most 32 bytes).
    pub label: String,
    /// The virtual token's user PIN; `None` leaves it unset.
    pub pin: Option<String>,
    /// The virtual token's SO PIN; `None` leaves it unset.
    pub so_pin: Option<String>,
    /// The application socket; default `DIR/keyward.sock`.
    pub socket: Option<PathBuf>,
    /// The policy.
    pub policy: Policy,
    /// The backend token's label; default a random `kw-...`.
    pub backend_label: Option<String>,
    /// The backend token's user PIN; default random.
    pub backend_pin: Option<String>,
    /// `KEYWARD_LOG` of the agent.
    pub log: String,
    /// Whole TOML tables appended to the agent's configuration.
    pub extra_config: String,
    /// A group whose members may use the admin socket too (mode 0660;
    /// the testbed directory becomes traversable, 0711): a second
    /// administrator running as another user.
    pub admin_group: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            label: "keyward".into(),
            pin: Some("123456".into()),
            so_pin: Some("12345678".into()),
            socket: None,
            policy: Policy::Lab,
            backend_label: None,
            backend_pin: None,
            admin_group: None,
            log: "info".into(),
            extra_config: String::new(),
        }
    }
}

impl Options {
    /// The options of `testbed up DIR ARGS`: `--policy lab|strict`,
    /// `--policy-file FILE`, `--label L`, `--pin P`, `--so-pin S`,
    /// `--socket PATH`. The agent's log level comes from
    /// `KEYWARD_AGENT_LOG` (default `info`).
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Options> {
        let mut o = Options::default();
        if let Ok(level) = std::env::var("KEYWARD_AGENT_LOG") {
            if !level.is_empty() {
                o.log = level;
            }
        }
        let mut policy_file = None;
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .map(str::to_owned)
                    .ok_or_else(|| Error(format!("{flag} needs a value")))
            };
            match flag {
                "--policy" => {
                    o.policy = match value()?.as_str() {
                        "lab" => Policy::Lab,
                        "strict" => Policy::Strict,
                        other => {
                            return Err(Error(format!("--policy is lab or strict, not {other}")))
                        }
                    }
                }
                "--policy-file" => policy_file = Some(PathBuf::from(value()?)),
                "--label" => o.label = value()?,
                "--pin" => o.pin = Some(value()?),
                "--so-pin" => o.so_pin = Some(value()?),
                "--socket" => o.socket = Some(PathBuf::from(value()?)),
                "--admin-group" => {
                    let v = value()?;
                    o.admin_group = Some(v.parse().map_err(|_| {
                        Error(format!("--admin-group is a numeric group id, not {v:?}"))
                    })?)
                }
                other => return Err(Error(format!("unknown option {other}"))),
            }
        }
        if let Some(file) = policy_file {
            if !file.is_file() {
                return Err(Error(format!(
                    "--policy-file {} does not exist",
                    file.display()
                )));
            }
            o.policy = Policy::File(file);
        }
        Ok(o)
    }
}

/// A testbed directory and the agent that serves it.
#[derive(Debug)]
pub struct Testbed {
    dir: PathBuf,
    bins: Bins,
    exports: Vec<(String, String)>,
    /// The agent this process started and has not yet reaped.
    child: Mutex<Option<Child>>,
    /// Kill the agent when dropped.
    owner: bool,
}

/// Whether `pid` runs: a process that has exited but is not yet reaped
/// (re-parented to init, say) counts as gone.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| Error(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` quoted for a POSIX shell (unquoted when nothing needs it).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@%=".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Reads a value [`shell_quote`] wrote.
fn shell_unquote(s: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path.display()))?;
    f.write_all(text.as_bytes()).map_err(io_err(path.display()))
}

fn lock(m: &Mutex<Option<Child>>) -> MutexGuard<'_, Option<Child>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the testbed's policy file in `dir` (none for the agent's
/// built-in policy); the configuration's `policy = ...` line for it.
fn write_policy(dir: &Path, policy: &Policy) -> Result<String> {
    let policy_file = dir.join("policy.toml");
    let policy_text = match policy {
        Policy::Lab => Some(LAB_POLICY.to_owned()),
        Policy::Strict => Some(format!(
            "# Written by keyward-testbed: only the current user, as \"testbed\".\n\
             [settings]\nmode = \"strict\"\n\n[[application]]\nname = \"testbed\"\nuid = {}\n",
            nix::unistd::getuid()
        )),
        Policy::File(f) => {
            Some(fs::read_to_string(f).map_err(io_err(format!("policy {}", f.display())))?)
        }
        Policy::Text(t) => Some(t.clone()),
        Policy::BuiltIn => None,
    };
    let line = match policy_text {
        Some(text) => {
            fs::write(&policy_file, text).map_err(io_err(policy_file.display()))?;
            format!(
                "policy = {}\n",
                toml_str(&policy_file.display().to_string())
            )
        }
        None => String::new(),
    };
    Ok(line)
}

impl Testbed {
    /// Makes a testbed in `dir` (created when missing; it must be empty)
    /// and starts its agent. The agent is killed when the value drops.
    pub fn up(dir: &Path, options: &Options, bins: Bins) -> Result<Testbed> {
        let tb = Testbed::create(dir, options, bins)?;
        tb.start()?;
        Ok(tb)
    }

    /// Makes a testbed in `dir` (created when missing; it must be empty):
    /// the backend token, the configuration, the policy and the virtual
    /// token's PINs. The agent is not started.
    pub fn create(dir: &Path, options: &Options, bins: Bins) -> Result<Testbed> {
        if options.label.is_empty() || options.label.len() > 32 {
            return Err(Error::new("the token label is 1 to 32 bytes"));
        }
        let agent = bins.agent()?;
        let lib = softhsm_lib()?;
        if dir.exists() {
            let mut entries = fs::read_dir(dir).map_err(io_err(dir.display()))?;
            if entries.next().is_some() {
                return Err(Error(format!("{} exists and is not empty", dir.display())));
            }
        }
        fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
        let dir = fs::canonicalize(dir).map_err(io_err(dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir.display()))?;

        // The backend token's PINs are random (unless given) and live only
        // in this directory: the application logs in with the virtual
        // token's PIN.
        let backend_label = match &options.backend_label {
            Some(l) => l.clone(),
            None => format!("kw-{}", random_hex(6)?),
        };
        let backend_pin = match &options.backend_pin {
            Some(p) => p.clone(),
            None => random_hex(16)?,
        };
        let backend_so_pin = random_hex(16)?;
        softhsm_token(&dir, &backend_label, &backend_pin, &backend_so_pin)?;
        write_private(&dir.join("backend.pin"), &format!("{backend_pin}\n"))?;
        write_private(&dir.join("backend.so-pin"), &format!("{backend_so_pin}\n"))?;
        fs::create_dir_all(dir.join("state")).map_err(io_err("the state directory"))?;

        let policy_line = write_policy(&dir, &options.policy)?;
        let socket = options
            .socket
            .clone()
            .unwrap_or_else(|| dir.join("keyward.sock"));
        let admin_socket = dir.join("admin.sock");
        let path = |p: &Path| toml_str(&p.display().to_string());
        let admin_access = match options.admin_group {
            Some(gid) => {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
                    .map_err(io_err(dir.display()))?;
                format!("admin_socket_mode = \"0660\"\nadmin_socket_group = \"{gid}\"")
            }
            None => "admin_socket_mode = \"0600\"".to_owned(),
        };
        let config = format!(
            "# Written by keyward-testbed.\n[agent]\nsocket = {}\nsocket_mode = \"0600\"\n\
             admin_socket = {}\n{admin_access}\nstate_dir = {}\n{policy_line}\n\
             [[token]]\nlabel = {}\nlibrary = {}\nbackend_token_label = {}\n\
             backend_pin = {}\nbackend_so_pin = {}\nallow_init_token = {}\n{}{}",
            path(&socket),
            path(&admin_socket),
            path(&dir.join("state")),
            toml_str(&options.label),
            path(&lib),
            toml_str(&backend_label),
            toml_str(&format!("file:{}", dir.join("backend.pin").display())),
            toml_str(&format!("file:{}", dir.join("backend.so-pin").display())),
            options.policy == Policy::Lab,
            if options.extra_config.is_empty() {
                ""
            } else {
                "\n"
            },
            options.extra_config,
        );
        fs::write(dir.join(CONFIG), config).map_err(io_err(CONFIG))?;

        let module = bins.dir().join(MODULE);
        let show = |p: &Path| p.display().to_string();
        let exports = vec![
            ("KEYWARD_MODULE".to_owned(), show(&module)),
            ("KEYWARD_SOCKET".to_owned(), show(&socket)),
            ("KEYWARD_ADMIN_SOCKET".to_owned(), show(&admin_socket)),
            ("KEYWARD_TOKEN".to_owned(), options.label.clone()),
            (
                "KEYWARD_PIN".to_owned(),
                options.pin.clone().unwrap_or_default(),
            ),
            (
                "KEYWARD_SO_PIN".to_owned(),
                options.so_pin.clone().unwrap_or_default(),
            ),
            ("KEYWARD_TESTBED".to_owned(), show(&dir)),
        ];
        let env: String = exports
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect();
        write_private(&dir.join(ENV_FILE), &env)?;
        fs::write(dir.join("agent.log-level"), &options.log).map_err(io_err("the log level"))?;

        let tb = Testbed {
            dir,
            bins: bins.with_agent(agent),
            exports,
            child: Mutex::new(None),
            owner: true,
        };
        if let Some(pin) = &options.pin {
            tb.set_pin("user", pin)?;
        }
        if let Some(pin) = &options.so_pin {
            tb.set_pin("so", pin)?;
        }
        Ok(tb)
    }

    /// Attaches to the testbed in `dir` (made by [`Testbed::create`], in
    /// this process or another), with the binaries of [`Bins::locate`].
    /// Dropping the value leaves the agent running.
    pub fn open(dir: &Path) -> Result<Testbed> {
        Testbed::open_with(dir, Bins::locate())
    }

    /// [`Testbed::open`] with these binaries.
    pub fn open_with(dir: &Path, bins: Bins) -> Result<Testbed> {
        let dir = fs::canonicalize(dir).map_err(io_err(dir.display()))?;
        if !dir.join(CONFIG).is_file() {
            return Err(Error(format!(
                "{} is not a testbed (no {CONFIG})",
                dir.display()
            )));
        }
        let env = fs::read_to_string(dir.join(ENV_FILE)).map_err(io_err(ENV_FILE))?;
        let exports = env
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), shell_unquote(v)))
            .collect();
        Ok(Testbed {
            dir,
            bins,
            exports,
            child: Mutex::new(None),
            owner: false,
        })
    }

    /// Leaves the agent running when the value drops.
    pub fn detach(mut self) {
        self.owner = false;
    }

    /// The testbed directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binaries this testbed uses.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// The agent's configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }

    /// The backend token's `SOFTHSM2_CONF`.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The agent's log (standard output and error).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// One of the exports (`KEYWARD_SOCKET`, ...).
    pub fn export(&self, name: &str) -> Option<&str> {
        self.exports
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// What an application needs: `KEYWARD_MODULE`, `KEYWARD_SOCKET`,
    /// `KEYWARD_ADMIN_SOCKET`, `KEYWARD_TOKEN`, `KEYWARD_PIN`,
    /// `KEYWARD_SO_PIN`, `KEYWARD_TESTBED`.
    pub fn exports(&self) -> &[(String, String)] {
        &self.exports
    }

    /// The exports as shell `export` lines, and `KEYWARD_AGENT_PID` when
    /// the agent runs.
    pub fn export_lines(&self) -> String {
        let mut out: String = self
            .exports
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect();
        if let Some(pid) = self.pid() {
            out.push_str(&format!("export KEYWARD_AGENT_PID={pid}\n"));
        }
        out
    }

    /// The application socket.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.export("KEYWARD_SOCKET").unwrap_or_default())
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        PathBuf::from(self.export("KEYWARD_ADMIN_SOCKET").unwrap_or_default())
    }

    /// Sets the virtual token's PIN of `role` (`user` or `so`) with the
    /// agent's `set-pin` (the PIN goes through a pipe, never an argument).
    pub fn set_pin(&self, role: &str, pin: &str) -> Result<()> {
        let token = self.export("KEYWARD_TOKEN").unwrap_or("keyward").to_owned();
        let mut child = self
            .agent_command()?
            .args(["set-pin", "--token", &token, "--role", role])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("keyward-agent set-pin"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{pin}\n").as_bytes())
                .map_err(io_err("keyward-agent set-pin"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err("keyward-agent set-pin"))?;
        if !out.status.success() {
            return Err(Error(format!(
                "could not set the {role} PIN ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The agent on this testbed's configuration and token, arguments to
    /// be added (`check`, `set-pin`, ...; nothing to run it).
    pub fn agent_command(&self) -> Result<Command> {
        let mut c = Command::new(self.bins.agent()?);
        c.arg("--config")
            .arg(self.config())
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .env("KEYWARD_LOG", self.log_level());
        // Extra environment for the agent (`NAME=value` lines of
        // `agent.env`; a test's fault injection, e.g. a faked clock).
        if let Ok(text) = fs::read_to_string(self.dir.join(AGENT_ENV)) {
            for (name, value) in text.lines().filter_map(|l| l.split_once('=')) {
                c.env(name, value);
            }
        }
        Ok(c)
    }

    /// Sets the extra environment of the agent's next starts (replacing
    /// what was set before; empty: none).
    pub fn set_agent_env(&self, vars: &[(&str, &str)]) -> Result<()> {
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(self.dir.join(AGENT_ENV), text).map_err(io_err(AGENT_ENV))
    }

    fn log_level(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log-level"))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|_| "info".into())
    }

    /// The running agent's pid (from `agent.pid`), if it runs.
    pub fn pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// Starts the agent (its output appended to `agent.log`) and waits
    /// until it answers a `Hello` on its socket; returns its pid. Fails
    /// when it already runs, exits, or does not answer within
    /// [`READY_TIMEOUT`], with the tail of its log.
    pub fn start(&self) -> Result<u32> {
        if let Some(pid) = self.pid() {
            return Err(Error(format!(
                "the agent of {} is already running (pid {pid})",
                self.dir.display()
            )));
        }
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(log_path.display()))?;
        let err = log.try_clone().map_err(io_err(log_path.display()))?;
        let mut child = self
            .agent_command()?
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C meant for the caller does
            // not reach the agent.
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {}", AGENT)))?;
        let pid = child.id();
        let mut guard = lock(&self.child);
        // A previous agent of ours has exited: reap it.
        if let Some(mut old) = guard.take() {
            let _ = old.try_wait();
        }
        fs::write(self.dir.join(PID_FILE), format!("{pid}\n")).map_err(io_err(PID_FILE))?;
        let ready = self.wait_ready(&mut child);
        *guard = Some(child);
        drop(guard);
        if let Err(e) = ready {
            let _ = self.kill();
            return Err(e);
        }
        Ok(pid)
    }

    fn wait_ready(&self, child: &mut Child) -> Result<()> {
        let socket = self.socket();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if hello(&socket) {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error(format!(
                    "the agent exited during start-up ({status}); its log ({}) ends:\n{}",
                    self.log_path().display(),
                    self.log_tail(20)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error(format!(
                    "the agent did not answer on {} within {READY_TIMEOUT:?}; its log ({}) ends:\n{}",
                    socket.display(),
                    self.log_path().display(),
                    self.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent answers a `Hello` on its socket now.
    pub fn answers_hello(&self) -> bool {
        hello(&self.socket())
    }

    /// Stops the agent with SIGTERM and waits until it is gone. Its exit
    /// status when this value started it. An agent that does not stop
    /// within [`STOP_TIMEOUT`] is killed, and that is an error.
    pub fn stop(&self) -> Result<Option<ExitStatus>> {
        self.signal(Signal::SIGTERM)
    }

    /// Kills the agent (SIGKILL) and waits until it is gone.
    pub fn kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL).map(|_| ())
    }

    fn signal(&self, signal: Signal) -> Result<Option<ExitStatus>> {
        let mut guard = lock(&self.child);
        let mut status = None;
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut timed_out = false;
            match guard.as_mut().filter(|c| c.id() == pid) {
                // Ours: wait for it (which also reaps it).
                Some(child) => loop {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                        break;
                    }
                    if Instant::now() > deadline {
                        timed_out = true;
                        let _ = child.kill();
                        status = child.wait().ok();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                },
                // Started by another process: watch its pid.
                None => {
                    while alive(pid) {
                        if Instant::now() > deadline {
                            timed_out = true;
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            if timed_out {
                let _ = fs::remove_file(self.dir.join(PID_FILE));
                return Err(Error(format!(
                    "the agent (pid {pid}) did not stop on {signal} within {STOP_TIMEOUT:?} and was killed"
                )));
            }
        }
        // Reap an agent of ours that exited by itself.
        if let Some(mut child) = guard.take() {
            if status.is_none() {
                status = child.try_wait().ok().flatten();
            }
        }
        let _ = fs::remove_file(self.dir.join(PID_FILE));
        Ok(status)
    }

    /// Appends `toml` (whole tables) to the agent's configuration; it is
    /// read at the next start.
    pub fn append_config(&self, toml: &str) -> Result<()> {
        let path = self.config();
        let mut text = fs::read_to_string(&path).map_err(io_err(path.display()))?;
        text.push('\n');
        text.push_str(toml);
        fs::write(&path, text).map_err(io_err(path.display()))
    }

    /// Sets `key = value` lines in the configuration's `[agent]` table
    /// (replacing a key that is there already); read at the next start.
    pub fn set_agent_options(&self, lines: &[&str]) -> Result<()> {
        let path = self.config();
        let text = fs::read_to_string(&path).map_err(io_err(path.display()))?;
        let key_of = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        let keys: Vec<String> = lines.iter().map(|l| key_of(l)).collect();
        let mut out: Vec<String> = Vec::new();
        let mut in_agent = false;
        for line in text.lines() {
            if line.trim_start().starts_with('[') {
                in_agent = line.trim() == "[agent]";
                out.push(line.to_owned());
                if in_agent {
                    out.extend(lines.iter().map(|l| l.to_string()));
                }
                continue;
            }
            if in_agent && keys.contains(&key_of(line)) {
                continue;
            }
            out.push(line.to_owned());
        }
        fs::write(&path, out.join("\n") + "\n").map_err(io_err(path.display()))
    }

    /// Stops the agent (SIGTERM) and removes the directory.
    pub fn down(self) -> Result<()> {
        self.stop()?;
        fs::remove_dir_all(&self.dir).map_err(io_err(self.dir.display()))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.kill();
        }
    }
}

/// Whether something answers a `Hello` on `socket` (a refusal, which the
/// agent sends to peers it does not serve, is an answer too).
fn hello(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let bound = Some(Duration::from_secs(2));
    if s.set_read_timeout(bound).is_err() || s.set_write_timeout(bound).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let hello = Request::Hello {
        versions: APP_VERSIONS,
    };
    write_message(&mut s, &hello, &mut buf).is_ok()
        && matches!(
            read_message::<_, Response>(&mut s, &mut buf),
            Ok(Response::Hello(_) | Response::Err(_))
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_round_trips() {
        for s in [
            "plain/path.so",
            "with space",
            "it's",
            "",
            "a'b c\\d",
            "$HOME",
        ] {
            assert_eq!(shell_unquote(&shell_quote(s)), s, "{s:?}");
        }
        assert_eq!(
            shell_quote("/tmp/kw-1/keyward.sock"),
            "/tmp/kw-1/keyward.sock"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_str("x\ny"), "\"x\\u000Ay\"");
    }

    #[test]
    fn options_from_args() {
        let o = Options::from_args(&["--policy", "strict", "--label", "t", "--pin", "1"])
            .expect("valid options");
        assert_eq!(o.policy, Policy::Strict);
        assert_eq!(o.label, "t");
        assert_eq!(o.pin.as_deref(), Some("1"));
        let e = Options::from_args(&["--policy", "loose"]).expect_err("a bad policy");
        assert!(e.message().contains("lab or strict"), "{e}");
        let e = Options::from_args(&["--label"]).expect_err("a missing value");
        assert!(e.message().contains("--label needs a value"), "{e}");
        let e = Options::from_args(&["--bogus"]).expect_err("an unknown option");
        assert!(e.message().contains("unknown option --bogus"), "{e}");
        let e = Options::from_args(&["--policy-file", "/nonexistent/p.toml"])
            .expect_err("a missing policy file");
        assert!(e.message().contains("does not exist"), "{e}");
    }

    #[test]
    fn a_missing_binary_says_to_build_first() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bins = Bins::in_dir(dir.path());
        for e in [
            bins.agent().expect_err("no agent"),
            bins.cli().expect_err("no CLI"),
            bins.module().expect_err("no module"),
        ] {
            assert!(e.message().contains(BUILD_FIRST), "{e}");
            assert!(
                e.message().contains(&dir.path().display().to_string()),
                "{e}"
            );
        }
        let e = Testbed::create(&dir.path().join("tb"), &Options::default(), bins)
            .expect_err("no testbed without an agent");
        assert!(e.message().contains("keyward-agent is missing"), "{e}");
        assert!(!dir.path().join("tb").exists(), "nothing was made");
    }

    #[test]
    fn located_binaries_are_those_of_the_build() {
        let t = Path::new("/x/target");
        let locate = |dir: Option<&str>, exe: &Path| Bins::locate_from(dir.map(Into::into), exe);
        // A test binary runs from target/<profile>/deps.
        assert_eq!(
            locate(None, &t.join("debug/deps/wire-0123")).dir(),
            t.join("debug")
        );
        assert_eq!(
            locate(None, &t.join("release/keyward-bench")).dir(),
            t.join("release")
        );
        assert_eq!(
            locate(None, &t.join("debug/keyward-testbed")).dir(),
            t.join("debug")
        );
        assert_eq!(
            locate(Some("/bins"), &t.join("debug/x")).dir(),
            Path::new("/bins")
        );
        assert_eq!(locate(Some(""), &t.join("debug/x")).dir(), t.join("debug"));
    }
}
