//! The tests' probe processes (`tests/src/bin/*_probe`): [`Probe`] drives
//! one from a test (started on the testbed's token, its standard output
//! read on a thread of its own so that every wait is bounded, its standard
//! input there for the test's instructions); [`side`] is what the probes
//! themselves share.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::Env;

/// A running probe.
#[derive(Debug)]
pub struct Probe {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    name: String,
}

impl Probe {
    /// Starts `exe ARGS` with the testbed's module, socket, token and PIN in
    /// its environment (`KEYWARD_MODULE`, `KEYWARD_SOCKET`,
    /// `KEYWARD_TOKEN`, `KEYWARD_PIN`).
    pub fn start(tb: &Env, exe: &Path, args: &[&str]) -> Probe {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("KEYWARD_MODULE", &tb.module)
            .env("KEYWARD_TOKEN", &tb.token)
            .env("KEYWARD_PIN", &tb.pin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !tb.socket.is_empty() {
            cmd.env("KEYWARD_SOCKET", &tb.socket);
        }
        let name = exe.file_name().map_or_else(
            || exe.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let out = child.stdout.take().expect("probe stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Probe {
            child,
            lines,
            seen: Vec::new(),
            name,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints, within `within`; panics naming the probe,
    /// `what` was awaited and everything it said.
    pub fn line(&mut self, what: &str, within: Duration) -> String {
        let line = self.lines.recv_timeout(within).unwrap_or_else(|e| {
            panic!(
                "{} ({}) gave no {what} line ({e}); it said:\n{}",
                self.name,
                self.child.id(),
                self.seen.join("\n")
            )
        });
        self.seen.push(line.clone());
        line
    }

    /// The value of its next `name: value` line called `name` (other lines
    /// are passed over), within `within`. A `setup FAIL` line fails the
    /// test.
    pub fn value(&mut self, name: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let prefix = format!("{name}: ");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(&format!("{name:?}"), left);
            assert!(
                !line.starts_with("setup FAIL"),
                "{}: {}",
                self.name,
                self.seen.join("\n")
            );
            if let Some(v) = line.strip_prefix(&prefix) {
                return v.to_owned();
            }
        }
    }

    /// Like [`Probe::value`], but `None` when no such line comes within
    /// `within`.
    pub fn try_value(&mut self, name: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let prefix = format!("{name}: ");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some(v) = line.strip_prefix(&prefix) {
                return Some(v.to_owned());
            }
        }
    }

    /// Writes `line` to its standard input; nothing once that is closed.
    pub fn say(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// Closes its standard input (the probes take that as "stop").
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits up to `within` for it to exit, and requires success.
    pub fn wait_success(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for the probe") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} ({}) does not exit",
                self.name,
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "{} exited with {status}; it said:\n{}",
            self.name,
            self.seen.join("\n")
        );
    }
}

/// The probe side: set-up through the module's raw function list, and the
/// `name: value` lines a [`Probe`] reads.
pub mod side {
    use std::io::Write;

    use cryptoki_sys::*;

    use crate::raw::{rv_name, Attr, InitArgs, Out, Raw};

    /// The environment variable `name`; panics when it is not set.
    pub fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    /// Ends the probe with `setup FAIL: ...` (exit 2) unless `rv` is `CKR_OK`.
    pub fn setup(what: &str, rv: CK_RV) {
        if rv != CKR_OK {
            fail(&format!("{what}: {}", rv_name(rv)));
        }
    }

    /// Prints `setup FAIL: why` and exits 2.
    pub fn fail(why: &str) -> ! {
        println!("setup FAIL: {why}");
        std::process::exit(2);
    }

    /// Prints `name: value` at once.
    pub fn report(name: &str, value: &str) {
        println!("{name}: {value}");
        std::io::stdout().flush().expect("flush stdout");
    }

    /// Loads `KEYWARD_MODULE`, initialises it (OS locking) and finds the
    /// slot of the token labelled `KEYWARD_TOKEN`.
    pub fn token_slot() -> (Raw, CK_SLOT_ID) {
        let raw = Raw::load(&env("KEYWARD_MODULE"));
        let token = env("KEYWARD_TOKEN");
        setup(
            "C_Initialize",
            raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
        );
        let list = raw.slot_list(true, Out::Cap(64));
        setup("C_GetSlotList", list.rv);
        let slot = list
            .data
            .into_iter()
            .find(|&s| String::from_utf8_lossy(&raw.token_info(s).1.label).trim_end() == token)
            .unwrap_or_else(|| fail(&format!("no token labelled {token:?}")));
        (raw, slot)
    }

    /// The one object of `class` labelled `label` that session `h` finds.
    pub fn find_one(
        raw: &Raw,
        h: CK_SESSION_HANDLE,
        label: &str,
        class: CK_OBJECT_CLASS,
    ) -> CK_OBJECT_HANDLE {
        setup(
            "C_FindObjectsInit",
            raw.find_objects_init(
                h,
                &[
                    Attr::Ulong(CKA_CLASS, class),
                    Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec()),
                ],
            ),
        );
        let (rv, found) = raw.find_objects(h, 16);
        setup("C_FindObjects", rv);
        setup("C_FindObjectsFinal", raw.find_objects_final(h));
        match found[..] {
            [one] => one,
            _ => fail(&format!(
                "{} objects of class {class} labelled {label:?}",
                found.len()
            )),
        }
    }
}
