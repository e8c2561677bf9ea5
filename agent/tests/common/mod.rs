//! Set-up shared by the agent's integration tests (each test binary uses
//! part of it): a testbed of `keyward-testbed` running the agent cargo
//! built for these tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use keyward_testbed::{Bins, Options, Policy};

/// The SoftHSM2 library; fails loudly when it is not installed.
pub fn softhsm() -> PathBuf {
    keyward_testbed::softhsm_lib().unwrap_or_else(|e| panic!("{e}: this test needs it"))
}

/// A throw-away SoftHSM2 token (backend label `kw-backend`, user PIN
/// `backend_pin`), state directory and agent configuration, with `policy`
/// (TOML) as the agent's policy file when given, else the built-in lab
/// policy. The virtual token `keyward` has no PINs yet.
pub struct Testbed {
    /// Dropped first: the agent is killed before its directory goes.
    pub testbed: keyward_testbed::Testbed,
    pub dir: tempfile::TempDir,
    pub softhsm_conf: PathBuf,
    pub config: PathBuf,
}

impl Testbed {
    pub fn new(backend_pin: &str, policy: Option<&str>) -> Testbed {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = Options {
            pin: None,
            so_pin: None,
            policy: policy.map_or(Policy::BuiltIn, |p| Policy::Text(p.into())),
            backend_label: Some("kw-backend".into()),
            backend_pin: Some(backend_pin.into()),
            log: "debug".into(),
            ..Options::default()
        };
        let bins = Bins::locate().with_agent(env!("CARGO_BIN_EXE_keyward-agent"));
        let testbed = keyward_testbed::Testbed::create(dir.path(), &options, bins)
            .unwrap_or_else(|e| panic!("testbed: {e}"));
        Testbed {
            softhsm_conf: testbed.softhsm_conf(),
            config: testbed.config(),
            testbed,
            dir,
        }
    }

    /// The agent binary on this configuration (debug log), to be given a
    /// subcommand.
    pub fn agent(&self) -> Command {
        self.testbed
            .agent_command()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn socket(&self) -> PathBuf {
        self.testbed.socket()
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.testbed.admin_socket()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.testbed.log()
    }

    /// Starts the agent and waits until it answers `Hello`; returns its
    /// pid. It is killed when the testbed drops (a test that fails midway
    /// leaves no agent behind).
    pub fn start(&self) -> u32 {
        self.testbed
            .start()
            .unwrap_or_else(|e| panic!("starting the agent: {e}"))
    }

    /// Stops the agent with SIGTERM; its exit status.
    pub fn stop(&self) -> std::process::ExitStatus {
        self.testbed
            .stop()
            .unwrap_or_else(|e| panic!("stopping the agent: {e}\n{}", self.log()))
            .expect("the agent this test started")
    }
}
