//! Real clients run as processes: found or the test fails naming the Debian
//! package; output shown on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::Env;

/// The path of `tool`, or a panic naming the package that provides it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is missing: install it with `apt-get install {package}` (softhsm-config/setup does)");
}

/// The libp11 OpenSSL engine; panics naming its package when missing.
pub fn require_pkcs11_engine() -> PathBuf {
    for p in [
        "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
        "/usr/lib/x86_64-linux-gnu/engines-3/libpkcs11.so",
        "/usr/lib/engines-3/pkcs11.so",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("the OpenSSL pkcs11 engine is missing: install it with `apt-get install libengine-pkcs11-openssl`");
}

/// The text of a command and its output, for failure messages.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "{:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion (stdin closed).
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and asserts success; returns stdout + stderr as text.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{}", describe(cmd, &out));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// An openssl command configured with the pkcs11 engine on the module.
pub fn openssl(tb: &Env) -> Command {
    require_tool("openssl", "openssl");
    let engine = require_pkcs11_engine();
    let conf = tb.path("openssl.cnf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            format!(
                "openssl_conf = openssl_init\n\n[openssl_init]\nengines = engine_section\n\n[engine_section]\npkcs11 = \
                 pkcs11_section\n\n[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\ninit = 0\n\n[req]\n\
                 distinguished_name = dn\n[dn]\n",
                engine.display(),
                tb.module
            ),
        )
        .expect("write openssl.cnf");
    }
    let mut c = Command::new("openssl");
    c.env("OPENSSL_CONF", &conf);
    c
}

/// The RFC 7512 URI of object `label` of type `kind` on the testbed's
/// token, with its PIN (tests only: a PIN in a URI shows in `ps`).
pub fn uri(tb: &Env, label: &str, kind: &str) -> String {
    format!(
        "pkcs11:token={};object={label};type={kind}?pin-value={}",
        tb.token, tb.pin
    )
}
