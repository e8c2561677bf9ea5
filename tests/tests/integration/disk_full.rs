//! A full disk under the agent's state directory (the store and the
//! trail), injected into a real agent on a real SoftHSM2 token: a small
//! tmpfs mounted over the state directory and filled while the agent
//! runs, and before it starts.
//! - admin and lifecycle actions fail closed, say that there is no space,
//!   and leave the key list and the backend token as they were;
//! - applications are served (`on_write_failure = "continue"`, their
//!   records held) or refused (`"refuse"`); the agent does not crash;
//! - once the filler is removed the agent recovers by itself: the held
//!   records are written and the trail verifies;
//! - an agent stopped on a full disk stops in time, and its next start
//!   records that the uses it held may be missing;
//! - an agent started on a full disk starts, refuses admin actions with
//!   the same cause and logins (their attempt cannot be counted towards
//!   the PIN lockout), and recovers the same way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keyward_tests::admin::{
    application_toml, audit_query, backend_token, install_policy, keyward, keyward_json,
    keyward_ok, signing_class_toml, uid, wait_signatures_recorded, wait_trail_failing,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{ec_pair, expect_err, P256_PARAMS};

/// What an admin refusal must say about the cause.
const NO_SPACE: &str = "no space left";

/// A small tmpfs mounted over the testbed's state directory (with the
/// directory's files copied onto it), unmounted when dropped, also when
/// the test panics (lazily, when the agent still holds files there).
struct SmallDisk {
    mount: PathBuf,
    filler: PathBuf,
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SmallDisk {
    /// Stops the agent, mounts a tmpfs of `size` over its state directory,
    /// copies the directory's files onto it and starts the agent again.
    fn under_state(tb: &Env, size: &str) -> SmallDisk {
        tb.stop_agent();
        let mount = tb.path("state");
        let saved = tb.path("state-before-the-small-disk");
        std::fs::rename(&mount, &saved).expect("move the state directory aside");
        std::fs::create_dir(&mount).expect("a mount point for the state directory");
        run(
            "mount -t tmpfs (tests run as root)",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                .arg("keyward-test")
                .arg(&mount),
        );
        let disk = SmallDisk {
            filler: mount.join("filler"),
            mount,
        };
        copy_dir(&saved, &disk.mount);
        tb.start_agent();
        disk
    }

    /// Fills the file system to its last byte with the filler file.
    fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("create the filler");
        let chunk = vec![0x5Au8; 64 * 1024];
        let mut small = false;
        loop {
            let data: &[u8] = if small { &chunk[..512] } else { &chunk };
            match f.write(data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                    if small {
                        break;
                    }
                    small = true;
                }
                Err(e) => panic!("filling {}: {e}", self.filler.display()),
            }
        }
        let _ = f.sync_all();
        let st = nix::sys::statvfs::statvfs(&self.mount).expect("statvfs");
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        println!("the state directory's disk is full ({free} bytes free)");
        assert!(free < 4096, "{free} bytes still free");
    }

    /// Removes the filler.
    fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            // The agent still has files open there: detach it now, the
            // file system goes when the agent does.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read the state directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("its type");
        if kind.is_dir() {
            std::fs::create_dir(&target).expect("a directory");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a state file");
        }
    }
}

fn lab_policy() -> String {
    format!(
        "[settings]\nmode = \"lab\"\n{}{}",
        application_toml("testbed", uid()),
        signing_class_toml("signing", "30d", "60d", "")
    )
}

/// The objects on the backend token (what an admin action would add).
fn backend_objects(tb: &Env) -> usize {
    let (_p11, s) = backend_token(tb);
    s.find_objects(&[])
        .expect("C_FindObjects on the backend")
        .len()
}

/// An admin action that must fail closed for want of space.
#[track_caller]
fn refused_for_space(tb: &Env, args: &[&str]) {
    let out = keyward(tb, args);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{args:?} succeeded on a full disk: {said}"
    );
    println!("{args:?} on a full disk: {said}");
    assert!(
        said.contains(NO_SPACE),
        "{args:?}: the refusal does not say there is no space: {said}"
    );
}

fn sign(s: &Session, key: ObjectHandle) -> cryptoki::error::Result<Vec<u8>> {
    s.sign(&Mechanism::Ecdsa, key, &[4u8; 32])
}

keyward_test!(fn a_full_disk_fails_admin_closed_serves_applications_and_recovers(tb) {
    tb.require_agent("a full disk");
    install_policy(&tb, &lab_policy());
    keyward_ok(&tb, &["key", "create", "steady", "--class", "signing"], 0);
    let disk = SmallDisk::under_state(&tb, "8m");
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "held", false);
    let mut signed = 0i64;
    sign(&s, private).expect("C_Sign before the fault");
    signed += 1;
    let keys_before = keyward_ok(&tb, &["--json", "key", "list"], 0);
    let objects_before = backend_objects(&tb);

    disk.fill();
    // Uses go on (on_write_failure = "continue"); the writer finds it
    // cannot write, holds their records and says so.
    wait_trail_failing(&tb, true, || {
        sign(&s, private).expect("C_Sign on a full disk");
        signed += 1;
    });
    for _ in 0..20 {
        sign(&s, private).expect("C_Sign while the trail fails");
        signed += 1;
    }
    let status = keyward_json(&tb, &["status"], 0);
    println!("status on a full disk: {status}");
    // Admin and lifecycle actions fail closed, naming the cause.
    refused_for_space(&tb, &["key", "create", "never", "--class", "signing"]);
    refused_for_space(&tb, &["key", "activate", "steady"]);
    assert_eq!(keyward_ok(&tb, &["--json", "key", "list"], 0), keys_before, "the key list changed");
    assert_eq!(backend_objects(&tb), objects_before, "objects were left on the backend token");
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains(NO_SPACE), "the log does not say there is no space");
    // A PIN change fails and loses nothing: the PIN stays the old one.
    let changed = s.set_pin(&ctx.pin(), &AuthPin::new("a-new-pin-never-stored".into()));
    assert!(changed.is_err(), "the PIN was changed on a full disk");
    println!("C_SetPIN on a full disk: {changed:?}");

    // Space again: the agent recovers by itself.
    disk.free();
    wait_trail_failing(&tb, false, || {
        sign(&s, private).expect("C_Sign once there is space");
        signed += 1;
    });
    wait_signatures_recorded(&tb, "held", signed);
    // The old PIN logs in; no half-written file is left behind.
    s.logout().expect("C_Logout");
    let again = ctx.user();
    let (_, after) = ec_pair(&again, P256_PARAMS, "after-the-fault", false);
    sign(&again, after).expect("C_Sign in a session logged in with the old PIN");
    let left: Vec<String> = std::fs::read_dir(&disk.mount)
        .expect("the state directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left in the state directory: {left:?}");
    keyward_ok(&tb, &["key", "activate", "steady"], 0);
    keyward_ok(&tb, &["key", "create", "later", "--class", "signing"], 0);
    let keys = keyward_ok(&tb, &["--json", "key", "list"], 0);
    assert!(keys.contains("\"later\"") && !keys.contains("\"never\""), "{keys}");
    // Still the agent that started: it never crashed.
    let pid_before = tb.agent_pid();
    assert!(keyward_tests::admin::keyward(&tb, &["status"]).status.success());
    assert_eq!(tb.agent_pid(), pid_before);
    drop(disk);
});

keyward_test!(fn a_full_disk_in_refuse_mode_refuses_uses_and_recovers(tb) {
    tb.require_agent("a full disk");
    tb.configure_agent("[audit]\non_write_failure = \"refuse\"\n");
    install_policy(&tb, &lab_policy());
    let disk = SmallDisk::under_state(&tb, "8m");
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "refused", false);
    sign(&s, private).expect("C_Sign before the fault");

    disk.fill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match sign(&s, private) {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "signing was never refused on a full disk");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(format!("{refused:?}").contains("FunctionFailed"), "{refused:?}");
    refused_for_space(&tb, &["key", "create", "never", "--class", "signing"]);

    disk.free();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sign(&s, private).is_err() {
        assert!(Instant::now() < deadline, "signing did not come back once there was space");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_trail_failing(&tb, false, || {});
    let refusals = audit_query(&tb, &["--result", "denied"]);
    assert!(
        refusals.iter().any(|r| r.str_at("reason").contains("audit trail cannot be written")),
        "the refusals are not in the trail"
    );
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    keyward_ok(&tb, &["key", "create", "later", "--class", "signing"], 0);
    drop(disk);
});

keyward_test!(fn an_agent_started_on_a_full_disk_refuses_admin_and_logins_and_recovers(tb) {
    tb.require_agent("a full disk");
    install_policy(&tb, &lab_policy());
    keyward_ok(&tb, &["key", "create", "steady", "--class", "signing"], 0);
    let disk = SmallDisk::under_state(&tb, "8m");
    tb.stop_agent();
    disk.fill();
    tb.start_agent();
    let pid = tb.agent_pid();
    // It starts, and says at once that the trail cannot be written.
    wait_trail_failing(&tb, true, || {});
    refused_for_space(&tb, &["key", "activate", "steady"]);
    // A login is refused: its attempt cannot be counted towards the PIN
    // lockout, so the PIN is not checked.
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.rw();
    let login = s.login(UserType::User, Some(&ctx.pin()));
    expect_err(login, RvError::DeviceError);
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("the attempt cannot be counted"), "the refused login is not logged");
    assert!(log.contains("No space left on device"), "the log does not name the cause");

    disk.free();
    wait_trail_failing(&tb, false, || {});
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "after-full", false);
    sign(&s, private).expect("C_Sign once there is space");
    wait_signatures_recorded(&tb, "after-full", 1);
    let starts = audit_query(&tb, &[])
        .iter()
        .filter(|r| r.str_at("kind") == "agent" && r.str_at("operation") == "start")
        .count();
    assert!(starts >= 4, "the start on a full disk is not in the trail ({starts} starts)");
    keyward_ok(&tb, &["key", "activate", "steady"], 0);
    assert_eq!(tb.agent_pid(), pid, "the agent restarted");
    drop(disk);
});

keyward_test!(fn an_agent_stopped_on_a_full_disk_stops_in_time_and_the_next_start_says_what_may_be_missing(tb) {
    tb.require_agent("a full disk");
    install_policy(&tb, &lab_policy());
    let disk = SmallDisk::under_state(&tb, "8m");
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "lost-at-stop", false);
    sign(&s, private).expect("C_Sign before the fault");
    let mut held = 0u64;
    disk.fill();
    wait_trail_failing(&tb, true, || {
        sign(&s, private).expect("C_Sign on a full disk");
        held += 1;
    });
    for _ in 0..5 {
        sign(&s, private).expect("C_Sign while the trail fails");
        held += 1;
    }
    drop(s);
    drop(ctx);
    // A stop (SIGTERM) while the trail cannot be written ends within the
    // testbed's bound (else stop_agent fails): the held records cannot
    // be kept.
    let stopping = Instant::now();
    tb.stop_agent();
    println!("stopped in {:?} with {held} uses held", stopping.elapsed());
    disk.free();
    tb.start_agent();
    // The next start says that uses may be missing, and how many at most.
    let gaps: Vec<keyward_tests::json::Json> = audit_query(&tb, &[])
        .into_iter()
        .filter(|r| r.str_at("kind") == "agent" && r.str_at("operation") == "crash-gap")
        .collect();
    assert_eq!(gaps.len(), 1, "no record of what may be missing: {gaps:?}");
    let reason = gaps[0].str_at("reason");
    println!("{reason}");
    let at_most: u64 = reason
        .split_once("at most ")
        .and_then(|(_, r)| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no bound in {reason}"));
    assert!(at_most >= held, "the gap says at most {at_most} uses, {held} were held");
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    drop(disk);
});
