//! One testbed per test, one process per test.
//!
//! The parent (plain `cargo test`, tests in parallel) starts a testbed in a
//! fresh temporary directory, then runs the current test binary again with
//! `--exact <test> --test-threads=1` and the testbed's exports in its
//! environment plus [`CHILD_MARKER`]. The child runs the test body; the
//! parent asserts that the child passed, shows its output when it did not,
//! and kills the agent and removes the directory when the [`Testbed`] is
//! dropped. The testbeds come from `keyward-testbed`, which takes the
//! binaries of this build (`target/debug`, or `KEYWARD_BIN_DIR`) and builds
//! nothing: `cargo build --workspace` first.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward_testbed::{Bins, Options};

/// Set in the environment of the re-executed test binary.
pub const CHILD_MARKER: &str = "KEYWARD_TEST_CHILD";
/// `KEYWARD_TEST_DIRECT=1`: run against SoftHSM2 directly (comparison mode).
pub const DIRECT: &str = "KEYWARD_TEST_DIRECT";
/// Bound on one test's child process.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether this run compares against SoftHSM2 directly.
pub fn direct_mode() -> bool {
    std::env::var(DIRECT)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// The path of the SoftHSM2 library; panics (never skips) when missing.
pub fn softhsm_lib() -> String {
    keyward_testbed::softhsm_lib()
        .unwrap_or_else(|e| panic!("{e}; tests cannot run without it"))
        .display()
        .to_string()
}

/// What a test body gets: the testbed's exports.
#[derive(Debug, Clone)]
pub struct Env {
    /// Path of the PKCS#11 module (`KEYWARD_MODULE`).
    pub module: String,
    /// The agent's socket (`KEYWARD_SOCKET`); empty in direct mode.
    pub socket: String,
    pub admin_socket: String,
    /// Label of the (virtual) token.
    pub token: String,
    pub pin: String,
    pub so_pin: String,
    /// The testbed directory (scratch space for the test, too).
    pub dir: PathBuf,
    /// True when `module` is SoftHSM2 itself.
    pub direct: bool,
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set in the test child's environment"))
}

impl Env {
    /// The environment of a test child.
    pub fn from_env() -> Env {
        Env {
            module: var("KEYWARD_MODULE"),
            socket: std::env::var("KEYWARD_SOCKET").unwrap_or_default(),
            admin_socket: std::env::var("KEYWARD_ADMIN_SOCKET").unwrap_or_default(),
            token: var("KEYWARD_TOKEN"),
            pin: var("KEYWARD_PIN"),
            so_pin: var("KEYWARD_SO_PIN"),
            dir: PathBuf::from(var("KEYWARD_TESTBED")),
            direct: direct_mode(),
        }
    }

    /// Panics in direct mode: the test needs a real agent.
    pub fn require_agent(&self, what: &str) {
        assert!(
            !self.direct,
            "{what} needs a keyward agent; it cannot run with {DIRECT}=1"
        );
    }

    /// This test's testbed (the agent may have been started by another
    /// process: it is stopped and killed by its pid).
    fn testbed(&self, what: &str) -> keyward_testbed::Testbed {
        self.require_agent(what);
        keyward_testbed::Testbed::open(&self.dir)
            .unwrap_or_else(|e| panic!("{what}: the testbed {}: {e}", self.dir.display()))
    }

    /// SIGKILLs the agent and waits until it is gone.
    pub fn kill_agent(&self) {
        let tb = self.testbed("killing the agent");
        tb.kill()
            .unwrap_or_else(|e| panic!("killing the agent: {e}"));
    }

    /// SIGTERMs the agent and waits until it is gone.
    pub fn stop_agent(&self) {
        let tb = self.testbed("stopping the agent");
        tb.stop()
            .unwrap_or_else(|e| panic!("stopping the agent: {e}"));
    }

    /// Starts the agent again and waits until it answers.
    pub fn start_agent(&self) {
        let tb = self.testbed("starting the agent");
        tb.start()
            .unwrap_or_else(|e| panic!("starting the agent: {e}"));
    }

    /// Appends `toml` (whole tables) to the agent's configuration file and
    /// restarts the agent on it.
    pub fn configure_agent(&self, toml: &str) {
        let tb = self.testbed("an agent configuration");
        tb.append_config(toml)
            .unwrap_or_else(|e| panic!("the agent configuration: {e}"));
        self.stop_agent();
        self.start_agent();
    }

    /// Sets `key = value` lines in the configuration's `[agent]` table
    /// (replacing a key that is there already) and restarts the agent.
    pub fn set_agent_options(&self, lines: &[&str]) {
        let tb = self.testbed("agent options");
        tb.set_agent_options(lines)
            .unwrap_or_else(|e| panic!("the agent configuration: {e}"));
        self.stop_agent();
        self.start_agent();
    }

    /// Sets extra environment for the agent (replacing what was set
    /// before) and restarts the agent with it.
    pub fn set_agent_env(&self, vars: &[(&str, &str)]) {
        let tb = self.testbed("the agent's environment");
        tb.set_agent_env(vars)
            .unwrap_or_else(|e| panic!("the agent's environment: {e}"));
        self.stop_agent();
        self.start_agent();
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> i32 {
        self.require_agent("the agent's pid");
        let text = std::fs::read_to_string(self.dir.join("agent.pid")).expect("read agent.pid");
        text.trim().parse().expect("agent.pid holds a pid")
    }

    /// A scratch path inside the testbed directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A testbed in a temporary directory, made with `keyward-testbed`: the
/// agent is killed and the directory removed on drop. In direct mode, a
/// plain SoftHSM2 token in the same kind of directory.
#[derive(Debug)]
pub struct Testbed {
    /// Dropped first: the agent dies before its directory goes.
    testbed: Option<keyward_testbed::Testbed>,
    dir: tempfile::TempDir,
    exports: BTreeMap<String, String>,
}

fn opt<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

impl Testbed {
    /// A testbed made with the arguments of `testbed up DIR ARGS`.
    pub fn up(args: &[&str]) -> Testbed {
        let dir = tempfile::Builder::new()
            .prefix("kw-")
            .tempdir_in(std::env::temp_dir())
            .expect("cannot create a temporary directory");
        softhsm_lib();
        if direct_mode() {
            return Self::up_direct(dir, args);
        }
        let options =
            Options::from_args(args).unwrap_or_else(|e| panic!("testbed options {args:?}: {e}"));
        let bins = Bins::locate();
        let up = bins
            .module()
            .and_then(|_| keyward_testbed::Testbed::up(dir.path(), &options, bins));
        let testbed = up.unwrap_or_else(|e| panic!("testbed up {args:?}: {e}"));
        let mut exports: BTreeMap<String, String> = testbed.exports().iter().cloned().collect();
        if let Some(pid) = testbed.pid() {
            exports.insert("KEYWARD_AGENT_PID".into(), pid.to_string());
        }
        Testbed {
            testbed: Some(testbed),
            dir,
            exports,
        }
    }

    fn up_direct(dir: tempfile::TempDir, args: &[&str]) -> Testbed {
        let label = opt(args, "--label").unwrap_or("keyward");
        let pin = opt(args, "--pin").unwrap_or("123456");
        let so_pin = opt(args, "--so-pin").unwrap_or("12345678");
        let conf = softhsm_token(dir.path(), label, pin, so_pin);
        let mut exports = BTreeMap::new();
        exports.insert("KEYWARD_MODULE".into(), softhsm_lib());
        exports.insert("SOFTHSM2_CONF".into(), conf.display().to_string());
        exports.insert("KEYWARD_TOKEN".into(), label.into());
        exports.insert("KEYWARD_PIN".into(), pin.into());
        exports.insert("KEYWARD_SO_PIN".into(), so_pin.into());
        exports.insert("KEYWARD_TESTBED".into(), dir.path().display().to_string());
        Testbed {
            testbed: None,
            dir,
            exports,
        }
    }

    pub fn exports(&self) -> &BTreeMap<String, String> {
        &self.exports
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the agent's log, for failure messages: 60, or
    /// `KEYWARD_TEST_LOG_LINES`.
    pub fn agent_log_tail(&self) -> String {
        self.testbed
            .as_ref()
            .map(|t| {
                t.log_tail(
                    std::env::var("KEYWARD_TEST_LOG_LINES")
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(60),
                )
            })
            .unwrap_or_default()
    }
}

/// Creates a plain SoftHSM2 token under `dir` and returns its
/// `softhsm2.conf`. Used by the direct mode and by tests that compare keyward
/// with SoftHSM2 direct.
pub fn softhsm_token(dir: &Path, label: &str, pin: &str, so_pin: &str) -> PathBuf {
    keyward_testbed::softhsm_token(dir, label, pin, so_pin).unwrap_or_else(|e| panic!("{e}"))
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The entry point of every [`keyward_test!`](crate::keyward_test): in the
/// child, runs `body`; in the parent, sets up the testbed and the child.
pub fn run(path: &str, testbed_args: &[&str], body: impl FnOnce(Env)) {
    if std::env::var_os(CHILD_MARKER).is_some() {
        body(Env::from_env());
        return;
    }
    // Test names are relative to the crate root: drop the crate's segment.
    let name = path.split_once("::").map(|(_, rest)| rest).unwrap_or(path);
    let tb = Testbed::up(testbed_args);
    let exe = std::env::current_exe().expect("cannot find the current test binary");
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(tb.exports())
        .env(CHILD_MARKER, "1")
        .env("RUST_BACKTRACE", "1")
        .current_dir(tb.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the test child") {
            break Some(s);
        }
        if started.elapsed() > CHILD_TIMEOUT {
            // Stop our own child by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let ran = stdout.contains("test result: ok. 1 passed");
    match status {
        Some(s) if s.success() && ran => {}
        other => {
            let why = match other {
                None => format!("timed out after {CHILD_TIMEOUT:?}"),
                Some(s) if s.success() => {
                    "the child ran no test (name filter mismatch?)".to_string()
                }
                Some(s) => format!("failed ({s})"),
            };
            panic!(
                "test {name} {why} in its own process (testbed {}).\n--- child stdout ---\n{stdout}\n--- child \
                 stderr ---\n{stderr}\n--- agent log (tail) ---\n{}",
                tb.dir().display(),
                tb.agent_log_tail()
            );
        }
    }
}
