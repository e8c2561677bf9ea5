//! Set-up shared by the agent's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

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
