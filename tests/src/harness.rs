//! One testbed per test, one process per test.
//!
//! The parent (plain `cargo test`, tests in parallel) starts a testbed in a
//! fresh temporary directory, then runs the current test binary again with
//! `--exact <test> --test-threads=1` and the testbed's exports in its
//! environment plus [`CHILD_MARKER`]. The child runs the test body; the
//! parent asserts that the child passed, shows its output when it did not,
//! and stops the agent by its pid (`testbed down`) when the [`Testbed`] is
//! dropped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of the re-executed test binary.
pub const CHILD_MARKER: &str = "KEYWARD_TEST_CHILD";
/// `KEYWARD_TEST_DIRECT=1`: run against SoftHSM2 directly (comparison mode).
pub const DIRECT: &str = "KEYWARD_TEST_DIRECT";
/// The SoftHSM2 library the testbed and the direct mode use.
pub const SOFTHSM_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
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
    if let Ok(p) = std::env::var("SOFTHSM2_LIB") {
        if Path::new(&p).is_file() {
            return p;
        }
    }
    SOFTHSM_CANDIDATES
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (apt-get install softhsm2); tests cannot run without it"
            )
        })
}

/// The repository's `softhsm-config/testbed` script.
pub fn testbed_script() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/testbed");
    assert!(
        p.is_file(),
        "the testbed script is missing at {}",
        p.display()
    );
    p
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

    /// Runs `testbed CMD DIR` on this test's testbed; panics when it fails.
    pub fn testbed(&self, cmd: &str) -> String {
        self.require_agent(&format!("testbed {cmd}"));
        let out = Command::new("bash")
            .arg(testbed_script())
            .arg(cmd)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash for the testbed script");
        assert!(
            out.status.success(),
            "testbed {cmd} {} failed ({}):\n{}{}",
            self.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs the agent and waits until it is gone.
    pub fn kill_agent(&self) {
        self.testbed("kill");
    }

    /// SIGTERMs the agent and waits until it is gone.
    pub fn stop_agent(&self) {
        self.testbed("stop");
    }

    /// Starts the agent again and waits until it answers.
    pub fn start_agent(&self) {
        self.testbed("start");
    }

    /// Appends `toml` (whole tables) to the agent's configuration file and
    /// restarts the agent on it.
    pub fn configure_agent(&self, toml: &str) {
        self.require_agent("an agent configuration");
        let path = self.dir.join("keyward-agent.toml");
        let mut text = std::fs::read_to_string(&path).expect("read the agent configuration");
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&path, text).expect("write the agent configuration");
        self.stop_agent();
        self.start_agent();
    }

    /// Sets `key = value` lines in the configuration's `[agent]` table
    /// (replacing a key that is there already) and restarts the agent.
    pub fn set_agent_options(&self, lines: &[&str]) {
        self.require_agent("agent options");
        let path = self.dir.join("keyward-agent.toml");
        let text = std::fs::read_to_string(&path).expect("read the agent configuration");
        let mut out: Vec<String> = Vec::new();
        let mut in_agent = false;
        let key_of = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        let keys: Vec<String> = lines.iter().map(|l| key_of(l)).collect();
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
        std::fs::write(&path, out.join("\n") + "\n").expect("write the agent configuration");
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

/// Parses the `export NAME=VALUE` lines `testbed up` prints (values quoted
/// with bash's `printf %q`).
fn parse_exports(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let Some((k, v)) = rest.split_once('=') else {
            continue;
        };
        let value = if let Some(q) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            q.to_string()
        } else {
            let mut s = String::new();
            let mut esc = false;
            for c in v.chars() {
                if esc {
                    s.push(c);
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else {
                    s.push(c);
                }
            }
            s
        };
        out.insert(k.to_string(), value);
    }
    out
}

/// A testbed in a temporary directory: `testbed up` on creation, `testbed
/// down` (agent stopped by its pid, directory removed) on drop. In direct
/// mode, a plain SoftHSM2 token in the same kind of directory.
#[derive(Debug)]
pub struct Testbed {
    dir: tempfile::TempDir,
    exports: BTreeMap<String, String>,
    direct: bool,
}

fn opt<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

impl Testbed {
    pub fn up(args: &[&str]) -> Testbed {
        let dir = tempfile::Builder::new()
            .prefix("kw-")
            .tempdir_in(std::env::temp_dir())
            .expect("cannot create a temporary directory");
        assert!(
            Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok(),
            "softhsm2-util is missing (apt-get install softhsm2); tests cannot run without it"
        );
        softhsm_lib();
        if direct_mode() {
            return Self::up_direct(dir, args);
        }
        let out = Command::new("bash")
            .arg(testbed_script())
            .arg("up")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash for the testbed script");
        assert!(
            out.status.success(),
            "`testbed up {} {}` failed ({}). Are the binaries built (cargo build -p keyward-agent -p \
             keyward-module -p keyward-provisioning) and SoftHSM2 installed?\n{}{}",
            dir.path().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = parse_exports(&String::from_utf8_lossy(&out.stdout));
        for k in [
            "KEYWARD_MODULE",
            "KEYWARD_SOCKET",
            "KEYWARD_TOKEN",
            "KEYWARD_PIN",
            "KEYWARD_SO_PIN",
            "KEYWARD_TESTBED",
        ] {
            assert!(
                exports.contains_key(k),
                "testbed up printed no {k}: {exports:?}"
            );
        }
        let module = &exports["KEYWARD_MODULE"];
        assert!(
            Path::new(module).is_file(),
            "the module {module} does not exist"
        );
        Testbed {
            dir,
            exports,
            direct: false,
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
            dir,
            exports,
            direct: true,
        }
    }

    pub fn exports(&self) -> &BTreeMap<String, String> {
        &self.exports
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn agent_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.direct {
            return;
        }
        let _ = Command::new("bash")
            .arg(testbed_script())
            .arg("down")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Creates a plain SoftHSM2 token under `dir` and returns its
/// `softhsm2.conf`. Used by the direct mode and by tests that compare keyward
/// with SoftHSM2 direct.
pub fn softhsm_token(dir: &Path, label: &str, pin: &str, so_pin: &str) -> PathBuf {
    let tokens = dir.join("softhsm/tokens");
    std::fs::create_dir_all(&tokens).expect("cannot create the SoftHSM2 token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .expect("cannot write softhsm2.conf");
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            so_pin,
        ])
        .output()
        .expect("softhsm2-util is missing (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    conf
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
