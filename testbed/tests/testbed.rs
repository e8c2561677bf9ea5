//! The testbed itself, with the real agent and SoftHSM2: it starts an agent
//! that answers, stops and kills it, starts it again on the same token and
//! state (the keys are still there), kills it when dropped, shows the
//! agent's log when it fails to come up, and refuses clearly when the
//! binaries are not built. Needs the workspace built (`cargo build
//! --workspace`): the agent and the CLI are taken from this build.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use keyward_testbed::{alive, Bins, Options, Policy, Testbed, BUILD_FIRST};

/// A policy with a key class, so that the `keyward` CLI can make a key
/// inside the HSM.
const POLICY: &str = r#"
[settings]
mode = "lab"
pin_max_attempts = 0

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "90d"
process_period = "180d"
"#;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kw-tb-")
        .tempdir()
        .expect("a temporary directory")
}

fn up(dir: &Path, options: &Options) -> Testbed {
    Testbed::up(dir, options, Bins::locate()).unwrap_or_else(|e| panic!("testbed up: {e}"))
}

/// `keyward ARGS` on the testbed's admin socket: its standard output.
fn keyward(tb: &Testbed, args: &[&str]) -> String {
    let cli = tb.bins().cli().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cli)
        .arg("--admin-socket")
        .arg(tb.admin_socket())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run keyward");
    assert!(
        out.status.success(),
        "keyward {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn up_starts_an_agent_that_answers_and_keeps_its_secrets_private() {
    let dir = scratch();
    let tb = up(&dir.path().join("tb"), &Options::default());
    let pid = tb.pid().expect("the agent runs after up");
    assert!(alive(pid));
    assert!(tb.answers_hello(), "the agent answers a Hello");
    assert!(
        keyward(&tb, &["status"]).contains("keyward"),
        "the admin socket answers"
    );
    assert_eq!(tb.export("KEYWARD_TOKEN"), Some("keyward"));
    assert_eq!(tb.export("KEYWARD_PIN"), Some("123456"));
    assert_eq!(tb.socket(), tb.dir().join("keyward.sock"));
    for private in ["testbed.env", "backend.pin"] {
        let mode = std::fs::metadata(tb.dir().join(private))
            .expect(private)
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{private} is readable by others ({mode:o})"
        );
    }
    let dir_mode = std::fs::metadata(tb.dir())
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "the testbed directory is private");
    // No PIN on the agent's command line.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let backend_pin = std::fs::read_to_string(tb.dir().join("backend.pin")).expect("backend.pin");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(backend_pin.trim()) && !cmdline.contains("123456"),
        "{cmdline}"
    );
    // A second start is refused while it runs.
    let e = tb.start().expect_err("the agent already runs");
    assert!(e.message().contains("already running"), "{e}");
    assert_eq!(tb.pid(), Some(pid));
}

#[test]
fn stop_kill_and_start_again_keep_the_token_and_the_keys() {
    let dir = scratch();
    let options = Options {
        policy: Policy::Text(POLICY.into()),
        ..Options::default()
    };
    let tb = up(&dir.path().join("tb"), &options);
    keyward(&tb, &["key", "create", "kept", "--class", "signing"]);
    keyward(&tb, &["key", "verify", "kept"]);

    let first = tb.pid().expect("running");
    tb.kill().expect("kill");
    assert!(!alive(first), "SIGKILL: the agent is gone");
    assert_eq!(tb.pid(), None);
    assert!(!tb.answers_hello());

    let second = tb.start().expect("start after kill");
    assert_ne!(second, first);
    assert!(tb.answers_hello());
    // The key's record and its objects inside the HSM survived.
    assert!(keyward(&tb, &["key", "show", "kept"]).contains("kept"));
    keyward(&tb, &["key", "verify", "kept"]);

    let status = tb
        .stop()
        .expect("stop")
        .expect("an exit status of our own agent");
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(!alive(second));
    assert!(!tb.socket().exists(), "a clean stop removes the socket");

    tb.start().expect("start after stop");
    keyward(&tb, &["key", "verify", "kept"]);
}

#[test]
fn dropping_the_testbed_kills_its_agent() {
    let dir = scratch();
    let tb = up(&dir.path().join("tb"), &Options::default());
    let pid = tb.pid().expect("running");
    drop(tb);
    assert!(!alive(pid), "the agent outlived its testbed");
    // Killed and reaped: the process is gone, not a zombie.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is still there"
    );
}

#[test]
fn an_attached_testbed_leaves_the_agent_running_and_can_stop_it() {
    let dir = scratch();
    let tb = up(&dir.path().join("tb"), &Options::default());
    let pid = tb.pid().expect("running");
    let attached = Testbed::open(tb.dir()).expect("open");
    assert_eq!(attached.pid(), Some(pid));
    assert_eq!(attached.exports(), tb.exports());
    drop(attached);
    assert!(alive(pid), "dropping an attached testbed kills nothing");
    let attached = Testbed::open(tb.dir()).expect("open");
    attached.stop().expect("stop by pid");
    assert!(!alive(pid));
    assert_eq!(tb.pid(), None);
}

#[test]
fn an_agent_that_fails_to_start_shows_its_log() {
    let dir = scratch();
    let options = Options {
        policy: Policy::Text("[settings]\nmode = \"no-such-mode\"\n".into()),
        ..Options::default()
    };
    let e = Testbed::up(&dir.path().join("tb"), &options, Bins::locate())
        .expect_err("an agent with a bad policy does not come up");
    let msg = e.message();
    assert!(msg.contains("exited during start-up"), "{msg}");
    assert!(msg.contains("agent.log"), "{msg}");
    assert!(
        msg.contains("no-such-mode"),
        "the agent's own words are shown: {msg}"
    );
    assert!(!msg.contains("123456"), "no PIN in the error: {msg}");
}

#[test]
fn missing_binaries_give_a_clear_error() {
    let dir = scratch();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let e = Testbed::up(
        &dir.path().join("tb"),
        &Options::default(),
        Bins::in_dir(&empty),
    )
    .expect_err("no agent binary");
    assert!(e.message().contains(BUILD_FIRST), "{e}");
    assert!(!dir.path().join("tb").exists(), "nothing was made");

    // The script and its binary say the same.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/testbed");
    let out = Command::new("bash")
        .arg(&script)
        .args(["up"])
        .arg(dir.path().join("tb"))
        .env("KEYWARD_BIN_DIR", &empty)
        .output()
        .expect("bash");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keyward-testbed is missing") && err.contains(BUILD_FIRST),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_keyward-testbed"))
        .arg("up")
        .arg(dir.path().join("tb"))
        .env("KEYWARD_BIN_DIR", &empty)
        .output()
        .expect("keyward-testbed");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keyward-agent is missing") && err.contains(BUILD_FIRST),
        "{err}"
    );
    assert!(!dir.path().join("tb").exists(), "nothing was made");
}

/// The command line through `softhsm-config/testbed`: `up` prints the
/// exports, the agent answers, `kill`/`start`/`stop` work by the
/// directory alone, `down` removes it.
#[test]
fn the_script_drives_the_same_testbed() {
    let dir = scratch();
    let tb_dir = dir.path().join("tb");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/testbed");
    let bins = Bins::locate();
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("KEYWARD_BIN_DIR", bins.dir())
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "testbed {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let d = tb_dir.display().to_string();
    let exports = run(&[
        "up", &d, "--policy", "strict", "--label", "t b", "--pin", "9999",
    ]);
    for name in [
        "KEYWARD_MODULE",
        "KEYWARD_SOCKET",
        "KEYWARD_ADMIN_SOCKET",
        "KEYWARD_TOKEN",
        "KEYWARD_PIN",
        "KEYWARD_SO_PIN",
        "KEYWARD_TESTBED",
        "KEYWARD_AGENT_PID",
    ] {
        assert!(
            exports.contains(&format!("export {name}=")),
            "{name}:\n{exports}"
        );
    }
    assert!(
        exports.contains("export KEYWARD_TOKEN='t b'\n"),
        "{exports}"
    );
    let pid: u32 = exports
        .lines()
        .find_map(|l| l.strip_prefix("export KEYWARD_AGENT_PID="))
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    assert!(alive(pid));
    let tb = Testbed::open(&tb_dir).expect("open");
    assert!(tb.answers_hello());
    assert_eq!(tb.export("KEYWARD_TOKEN"), Some("t b"));
    let policy = std::fs::read_to_string(tb_dir.join("policy.toml")).expect("policy");
    assert!(policy.contains("mode = \"strict\""), "{policy}");

    run(&["kill", &d]);
    assert!(!alive(pid));
    let again = run(&["start", &d]);
    assert!(again.contains("export KEYWARD_AGENT_PID="), "{again}");
    let pid = tb.pid().expect("running again");
    run(&["stop", &d]);
    assert!(!alive(pid));
    run(&["start", &d]);
    let pid = tb.pid().expect("running again");
    run(&["down", &d]);
    assert!(!alive(pid));
    assert!(!tb_dir.exists(), "down removes the directory");
}
