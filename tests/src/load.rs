//! Load from several client processes (`load_probe`), as the kill and soak
//! tests drive it: the managed keys it uses and their policy classes, the
//! probes started and stopped, their summaries read and judged, and the
//! agent's memory and descriptors sampled from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::admin::{keyward_ok, APPLICATION};
use crate::harness::Env;
use crate::json::Json;
use crate::probe::Probe;

/// The load's keys: (name, class, algorithm, purpose, operations granted).
pub const LOAD_KEYS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "load-ec",
        "load-ec",
        "ec:p256",
        "signing",
        "\"sign\", \"verify\"",
    ),
    (
        "load-rsa",
        "load-rsa",
        "rsa:2048",
        "signing",
        "\"sign\", \"verify\"",
    ),
    (
        "load-aes",
        "load-aes",
        "aes:256",
        "encryption",
        "\"encrypt\", \"decrypt\"",
    ),
    (
        "load-mac",
        "load-mac",
        "hmac:256",
        "mac",
        "\"sign\", \"verify\"",
    ),
];

/// Codes a client may see while the agent is killed, stopped or starting:
/// the agent or its session gone (`CKR_DEVICE_REMOVED` during a call,
/// `CKR_TOKEN_NOT_PRESENT` for the slot, `CKR_SESSION_HANDLE_INVALID` /
/// `CKR_SESSION_CLOSED` for a session of the agent's previous run,
/// `CKR_DEVICE_ERROR`, `CKR_USER_NOT_LOGGED_IN` for a session opened as
/// the agent came back), and a handle of the previous run
/// (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`).
pub const OUTAGE_CODES: &[&str] = &[
    "CKR_DEVICE_REMOVED",
    "CKR_DEVICE_ERROR",
    "CKR_TOKEN_NOT_PRESENT",
    "CKR_SESSION_HANDLE_INVALID",
    "CKR_SESSION_CLOSED",
    "CKR_USER_NOT_LOGGED_IN",
    "CKR_CRYPTOKI_NOT_INITIALIZED",
    "CKR_OBJECT_HANDLE_INVALID",
    "CKR_KEY_HANDLE_INVALID",
];

/// The policy's `[[class]]` tables of the load's keys, each granted to
/// [`APPLICATION`]; `extra` goes into every table.
pub fn load_classes_toml(extra: &str) -> String {
    LOAD_KEYS
        .iter()
        .map(|(_, class, alg, purpose, ops)| {
            format!(
                "\n[[class]]\nname = \"{class}\"\npurpose = \"{purpose}\"\nalgorithms = [\"{alg}\"]\n\
                 protect_period = \"30d\"\nprocess_period = \"60d\"\n{extra}\n\
                 grants = [ {{ application = \"{APPLICATION}\", operations = [{ops}] }} ]\n"
            )
        })
        .collect()
}

/// Creates and activates the load's keys.
pub fn create_load_keys(tb: &Env) {
    for (name, class, ..) in LOAD_KEYS {
        keyward_ok(tb, &["key", "create", name, "--class", class], 0);
        keyward_ok(tb, &["key", "activate", name], 0);
    }
}

/// A running `load_probe`.
#[derive(Debug)]
pub struct Load(Probe);

impl Load {
    /// Starts `exe` (the test's `CARGO_BIN_EXE_load_probe`) with `threads`
    /// threads on the load's keys, bounded at `bound` (it is normally
    /// stopped before).
    pub fn start(tb: &Env, exe: &Path, threads: usize, bound: Duration) -> Load {
        let (threads, secs) = (threads.to_string(), bound.as_secs().to_string());
        let mut args = vec![threads.as_str(), secs.as_str()];
        args.extend(LOAD_KEYS.iter().map(|k| k.0));
        Load(Probe::start(tb, exe, &args))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Waits for `ready` (every thread has done every kind of operation).
    pub fn ready(&mut self, within: Duration) {
        let line = self.0.line("ready", within);
        assert_eq!(line, "ready", "load_probe {}", self.pid());
    }

    /// The operations that have succeeded so far.
    pub fn count(&mut self) -> u64 {
        self.0.say("count");
        self.0
            .value("count", Duration::from_secs(10))
            .parse()
            .expect("a count")
    }

    /// Waits until it has been served `more` operations beyond `from`.
    pub fn served_beyond(&mut self, from: u64, more: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let now = self.count();
            if now >= from + more {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "load_probe {} is not served again: {now} operations, {from} before",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it; it must exit 0 with its summary.
    pub fn finish(mut self) -> Json {
        self.0.close_stdin();
        let text = self.0.value("summary", Duration::from_secs(60));
        self.0.wait_success(Duration::from_secs(30));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a summary that is not JSON ({e}): {text}"))
    }
}

/// Sums of several probes' summaries: operations by kind, errors by code,
/// and the totals.
#[derive(Debug, Default)]
pub struct Tally {
    pub ops: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub signatures: u64,
    pub verified: u64,
    pub outages: u64,
}

impl Tally {
    /// Checks one probe's summary and adds it: it ran, no signature it was
    /// handed fails to verify or stays unchecked, no result is wrong, no
    /// thread panicked, every error is one of `allowed`, it saw an outage
    /// when `outage` and was served again after it.
    pub fn add(&mut self, s: &Json, allowed: &[&str], outage: bool) {
        let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
        assert_eq!(n("panics"), 0, "a thread of the probe panicked: {s}");
        assert_eq!(n("bad_signatures"), 0, "signatures that do not verify: {s}");
        assert_eq!(n("unverified"), 0, "signatures left unverified: {s}");
        assert_eq!(n("bad_results"), 0, "wrong results: {s}");
        assert_eq!(
            n("signatures"),
            n("verified"),
            "every signature handed out is verified: {s}"
        );
        assert!(n("ok") > 0, "the probe was never served: {s}");
        if outage {
            assert!(n("outages") > 0, "the probe saw no outage: {s}");
        }
        assert!(
            n("served_after_last_outage") > 0,
            "a thread was not served after its last outage: {s}"
        );
        let errors = s["errors"].as_object().expect("errors");
        for (code, count) in errors {
            assert!(
                allowed.contains(&code.as_str()),
                "the probe saw {count} × {code}, outside the documented set {allowed:?}: {s}"
            );
            *self.errors.entry(code.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
        for (op, count) in s["ops"].as_object().expect("ops") {
            *self.ops.entry(op.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
        self.signatures += n("signatures");
        self.verified += n("verified");
        self.outages += n("outages");
    }
}

/// The agent's resident memory (`VmRSS`, KiB) and open descriptors.
pub fn agent_usage(tb: &Env) -> (u64, usize) {
    let pid = tb.agent_pid();
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's descriptors")
        .count();
    (rss, fds)
}

/// Prints a test's figures; with `KEYWARD_LOAD_REPORT=FILE` in the
/// environment of `cargo test`, also appends them to FILE (the harness
/// shows a passing test's output nowhere).
pub fn report(line: &str) {
    println!("{line}");
    if let Some(file) = std::env::var_os("KEYWARD_LOAD_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap_or_else(|e| panic!("open {}: {e}", Path::new(&file).display()));
        writeln!(f, "{line}").expect("write the report");
    }
}
