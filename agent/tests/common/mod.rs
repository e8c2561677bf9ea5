//! Set-up shared by the agent's integration tests (each test binary uses
//! part of it).
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keyward_protocol::frame::{read_message, write_message};
use keyward_protocol::{Request, Response, APP_VERSIONS};

/// Where Debian's softhsm2 package puts the library.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token labelled `kw-backend` with user PIN `pin`, kept
/// in `dir/tokens`; writes `dir/backend.pin` (for the agent's
/// `backend_pin = "file:..."`) and returns the `SOFTHSM2_CONF` to use.
/// Fails loudly when SoftHSM2 is not installed.
pub fn softhsm_token(dir: &Path, pin: &str) -> PathBuf {
    assert!(
        Path::new(SOFTHSM).exists(),
        "SoftHSM2 is required for this test and is not installed at {SOFTHSM} \
         (apt-get install softhsm2)"
    );
    std::fs::create_dir(dir.join("tokens")).unwrap();
    let softhsm_conf = dir.join("softhsm2.conf");
    std::fs::write(
        &softhsm_conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &softhsm_conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "kw-backend",
            "--pin",
            pin,
            "--so-pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util must be installed");
    assert!(out.status.success(), "softhsm2-util: {out:?}");
    std::fs::write(dir.join("backend.pin"), format!("{pin}\n")).unwrap();
    softhsm_conf
}

/// A throw-away SoftHSM2 token (user PIN `backend_pin`), state directory
/// and agent configuration, with `policy` (TOML) as the agent's policy
/// file when given.
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub softhsm_conf: PathBuf,
    pub config: PathBuf,
}

impl Testbed {
    pub fn new(backend_pin: &str, policy: Option<&str>) -> Testbed {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let softhsm_conf = softhsm_token(d, backend_pin);
        let policy_line = match policy {
            Some(text) => {
                std::fs::write(d.join("policy.toml"), text).unwrap();
                format!("policy = \"{}/policy.toml\"\n", d.display())
            }
            None => String::new(),
        };
        let config = d.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"[agent]
socket = "{d}/run/keyward.sock"
socket_mode = "0600"
admin_socket = "{d}/run/admin.sock"
admin_socket_mode = "0600"
state_dir = "{d}/state"
{policy_line}
[[token]]
label = "keyward"
library = "{SOFTHSM}"
backend_token_label = "kw-backend"
backend_pin = "file:{d}/backend.pin"
allow_init_token = false
"#,
                d = d.display()
            ),
        )
        .unwrap();
        Testbed {
            dir,
            softhsm_conf,
            config,
        }
    }

    /// The agent binary on this configuration (debug log).
    pub fn agent(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyward-agent"));
        c.arg("--config")
            .arg(&self.config)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("KEYWARD_LOG", "debug");
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/keyward.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("run/admin.sock")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Starts the agent and waits until it answers `Hello`; it is killed
    /// when the returned value drops.
    pub fn start(&self) -> RunningAgent {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = self.agent().stderr(log).spawn().unwrap();
        let mut agent = RunningAgent { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = UnixStream::connect(self.socket()) {
                let mut buf = Vec::new();
                let hello = Request::Hello {
                    versions: APP_VERSIONS,
                };
                if write_message(&mut s, &hello, &mut buf).is_ok()
                    && matches!(
                        read_message::<_, Response>(&mut s, &mut buf),
                        Ok(Response::Hello(_))
                    )
                {
                    return agent;
                }
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The running agent; killed by its pid when it drops (a test that fails
/// midway leaves no agent behind).
pub struct RunningAgent {
    pub child: Option<Child>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
