//! `keyward-testbed`: the command line of [`keyward_testbed`], run through
//! `softhsm-config/testbed`.

use std::path::Path;
use std::process::ExitCode;

use keyward_testbed::{Bins, Options, Testbed};

const USAGE: &str = "\
testbed: a throw-away SoftHSM2 token with a keyward agent in front of it.

  testbed up DIR [--policy lab|strict] [--policy-file FILE] [--label L] [--pin P] [--so-pin S] [--socket PATH] [--admin-group GID]
      Creates a fresh SoftHSM2 token and agent state in DIR, starts the agent
      in the background, waits until it answers, and prints `export` lines:
      KEYWARD_MODULE KEYWARD_SOCKET KEYWARD_ADMIN_SOCKET KEYWARD_TOKEN
      KEYWARD_PIN KEYWARD_SO_PIN KEYWARD_TESTBED KEYWARD_AGENT_PID
  testbed down DIR     stops that agent by its pid and removes DIR
  testbed stop DIR     stops the agent (SIGTERM), keeps DIR
  testbed kill DIR     kills the agent (SIGKILL), keeps DIR
  testbed start DIR    starts the agent again on the same token and state

Policies: `lab` (the built-in lab policy: a plain PKCS#11 token for local
root and same-user peers) also lets applications re-initialise the token
with C_InitToken (development and conformance suites). `strict` admits only
the current user as application \"testbed\" and refuses C_InitToken.
`--policy-file FILE` uses that policy file instead (C_InitToken refused).
`--admin-group GID` opens the admin socket to that group too (a second
administrator running as another user).
KEYWARD_AGENT_LOG sets the agent's log level (default info).

Binaries come from KEYWARD_BIN_DIR, else the directory of this program;
nothing is built: build first with `cargo build --workspace`.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(Some(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(Usage) => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
        Err(Failed(msg)) => {
            eprintln!("testbed: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage,
    Failed(String),
}
use Failure::{Failed, Usage};

impl From<keyward_testbed::Error> for Failure {
    fn from(e: keyward_testbed::Error) -> Failure {
        Failed(e.to_string())
    }
}

/// Runs one command; what to print on standard output.
fn run(args: &[String]) -> Result<Option<String>, Failure> {
    let (cmd, rest) = args.split_first().ok_or(Usage)?;
    let one_dir = || match rest {
        [dir] => Ok(Path::new(dir.as_str())),
        _ => Err(Usage),
    };
    match cmd.as_str() {
        "up" => {
            let (dir, opts) = rest.split_first().ok_or(Usage)?;
            let options = Options::from_args(opts)?;
            let bins = Bins::locate();
            bins.check_all()?;
            let tb = Testbed::up(Path::new(dir), &options, bins)?;
            let out = tb.export_lines();
            tb.detach();
            Ok(Some(out))
        }
        "start" => {
            let tb = Testbed::open(one_dir()?)?;
            tb.bins().check_all()?;
            tb.start()?;
            Ok(Some(tb.export_lines()))
        }
        "stop" => {
            Testbed::open(one_dir()?)?.stop()?;
            Ok(None)
        }
        "kill" => {
            Testbed::open(one_dir()?)?.kill()?;
            Ok(None)
        }
        "down" => {
            let dir = one_dir()?;
            if !dir.exists() {
                return Ok(None);
            }
            Testbed::open(dir)
                .map_err(|e| Failed(format!("{e}; refusing to remove it")))?
                .down()?;
            Ok(None)
        }
        "-h" | "--help" | "help" => Err(Usage),
        other => Err(Failed(format!(
            "unknown command {other} (up, down, start, stop, kill)"
        ))),
    }
}
