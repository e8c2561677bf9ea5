//! The tests' probe processes (`tests/src/bin/*_probe`), driven from a
//! test: started on the testbed's token, their standard output read on a
//! thread of its own so that every wait is bounded, and their standard
//! input there for the test's instructions.

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
