//! Two administrators for dual-control tests: alice (this process's
//! uid) and bob (uid [`BOB`], nobody), each with a key file of their own,
//! and `keyward` run as bob.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::admin::{keyward_bin, keyward_ok};
use crate::harness::Env;

/// The second administrator's uid (nobody).
pub const BOB: u32 = 65534;

/// Test keys (`openssl genpkey`), used nowhere else: alice's Ed25519 and
/// bob's P-256.
pub const ALICE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPOGCGsfRU2HCAldnKdEt5V23mfsXNOIRSHUCtrKub/3
-----END PRIVATE KEY-----
";
pub const BOB_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQJiguAxcXLSB/uWH
Ky3mdDuPhW6zNxKugQZ+CcME+1ahRANCAARAJEsLb5pArv2cNuQPIqlxG5IIEetY
n069l2roYogmfYT4+diPUBO5AO8uwQqJ+5hatv8VuimI3LhtY53aD6c2
-----END PRIVATE KEY-----
";

/// `text` in the testbed as a key file of `owner`, mode 600.
pub fn key_file(tb: &Env, name: &str, text: &str, owner: u32) -> PathBuf {
    let path = tb.path(name);
    std::fs::write(&path, text).expect("write the key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&path, Some(owner), Some(owner)).expect("chown");
    path
}

/// `keyward admin-key show FILE`: the roster's value.
pub fn public_key(tb: &Env, file: &Path) -> String {
    let line = keyward_ok(
        tb,
        &["admin-key", "show", file.to_str().expect("a path")],
        0,
    );
    line.strip_prefix("public_key = \"")
        .and_then(|l| l.strip_suffix("\"\n"))
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned()
}

/// `keyward ARGS` as bob (uid [`BOB`]).
pub fn as_bob(tb: &Env, args: &[&str]) -> Output {
    as_uid(tb, BOB, args)
}

/// `keyward ARGS` as `uid`, in [`BOB`]'s group (the one the tests open
/// admin sockets to).
pub fn as_uid(tb: &Env, uid: u32, args: &[&str]) -> Output {
    Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(args)
        .uid(uid)
        .gid(BOB)
        .stdin(Stdio::null())
        .output()
        .expect("run keyward as another administrator")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lets bob reach the admin socket (its group is bob's, mode 0660) and
/// restarts the agent.
pub fn open_admin_socket_to_bob(tb: &Env) {
    std::fs::set_permissions(&tb.dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    tb.set_agent_options(&[
        "admin_socket_mode = \"0660\"",
        &format!("admin_socket_group = \"{BOB}\""),
    ]);
}

/// The `[[administrator]]` tables of alice (security officer, this
/// process's uid) and bob (security officer, [`BOB`]) with their keys.
pub fn roster_toml(me: u32, alice_public: &str, bob_public: &str) -> String {
    format!(
        "\n[[administrator]]\nname = \"alice\"\nuids = [{me}]\nroles = [\"security-officer\"]\npublic_key = \"{alice_public}\"\n\n\
         [[administrator]]\nname = \"bob\"\nuids = [{BOB}]\nroles = [\"security-officer\"]\npublic_key = \"{bob_public}\"\n"
    )
}
