//! The three token stacks: SoftHSM2 loaded directly, SoftHSM2 behind
//! keyward (a testbed with the release build), and SoftHSM2 behind
//! `p11-kit server` reached through `p11-kit-client.so`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// One loaded PKCS#11 library with a logged-in token.
pub struct Target {
    /// Column name: `direct`, `keyward`, `p11kit`.
    pub name: &'static str,
    /// The loaded library.
    pub pkcs11: Pkcs11,
    /// The token's slot.
    pub slot: Slot,
    module: PathBuf,
    token: String,
    pin: String,
    testbed: Option<PathBuf>,
    server: Option<Child>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("module", &self.module)
            .finish()
    }
}

impl Target {
    /// A new read-write session, logged in as the user.
    pub fn session(&self) -> cryptoki::error::Result<Session> {
        let s = self.pkcs11.open_rw_session(self.slot)?;
        match s.login(UserType::User, Some(&AuthPin::from(self.pin.clone()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// Stops what this target started.
    pub fn stop(mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.testbed.take() {
            let _ = Command::new(repo_root().join("softhsm-config/testbed"))
                .arg("down")
                .arg(dir)
                .status();
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// Creates a SoftHSM2 token with its own configuration under `dir`.
fn softhsm_token(dir: &Path, label: &str, pin: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir.join("tokens")).map_err(|e| e.to_string())?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let status = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            "87654321",
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("softhsm2-util (apt-get install softhsm2): {e}"))?;
    if !status.success() {
        return Err(format!("softhsm2-util --init-token failed for {label}"));
    }
    Ok(conf)
}

fn load(name: &'static str, module: &Path, token: &str, pin: &str) -> Result<Target, String> {
    let pkcs11 =
        Pkcs11::new(module).map_err(|e| format!("{name}: loading {}: {e}", module.display()))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("{name}: C_Initialize: {e}"))?;
    let slot = find_slot(&pkcs11, token).map_err(|e| format!("{name}: {e}"))?;
    Ok(Target {
        name,
        pkcs11,
        slot,
        module: module.to_path_buf(),
        token: token.to_string(),
        pin: pin.to_string(),
        testbed: None,
        server: None,
    })
}

fn find_slot(pkcs11: &Pkcs11, token: &str) -> Result<Slot, String> {
    for slot in pkcs11.get_slots_with_token().map_err(|e| e.to_string())? {
        let info = pkcs11.get_token_info(slot).map_err(|e| e.to_string())?;
        if info.label() == token {
            return Ok(slot);
        }
    }
    Err(format!("no token labelled {token}"))
}

/// SoftHSM2 loaded directly into this process.
pub fn direct(work: &Path) -> Result<Target, String> {
    let conf = softhsm_token(&work.join("direct"), "bench-direct", "1234")?;
    // This process's SoftHSM2 reads its configuration at C_Initialize; the
    // agent and the p11-kit server are other processes with their own.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    load("direct", Path::new(SOFTHSM), "bench-direct", "1234")
}

/// The release build of keyward, on a testbed of its own.
pub fn keyward(work: &Path) -> Result<Target, String> {
    let bins = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for needed in ["keyward-agent", "keyward", "libkeyward_pkcs11.so"] {
        if !bins.join(needed).exists() {
            return Err(format!(
                "{} is missing: build everything first with `cargo build --release --workspace`",
                bins.join(needed).display()
            ));
        }
    }
    let dir = work.join("keyward");
    let out = Command::new(repo_root().join("softhsm-config/testbed"))
        .args(["up"])
        .arg(&dir)
        .args(["--label", "bench-keyward", "--pin", "1234"])
        .env("KEYWARD_BIN_DIR", &bins)
        .env("KEYWARD_AGENT_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("testbed: {e}"))?;
    if !out.status.success() {
        return Err("testbed up failed".into());
    }
    let exports = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> Result<String, String> {
        exports
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}=")))
            .map(|v| v.replace('\\', ""))
            .ok_or(format!("testbed did not export {key}"))
    };
    std::env::set_var("KEYWARD_SOCKET", get("KEYWARD_SOCKET")?);
    let mut t = load(
        "keyward",
        Path::new(&get("KEYWARD_MODULE")?),
        "bench-keyward",
        "1234",
    )?;
    t.testbed = Some(dir);
    Ok(t)
}

/// SoftHSM2 behind `p11-kit server`, if p11-kit and its client module exist.
pub fn p11kit(work: &Path) -> Result<Option<Target>, String> {
    let has_server = Command::new("p11-kit")
        .arg("server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !has_server || !Path::new(P11KIT_CLIENT).exists() {
        return Ok(None);
    }
    let conf = softhsm_token(&work.join("p11kit"), "bench-p11kit", "1234")?;
    let socket = work.join("p11kit/server.sock");
    let child = Command::new("p11-kit")
        .args(["server", "-f", "-n"])
        .arg(&socket)
        .args(["--provider", SOFTHSM, "pkcs11:token=bench-p11kit"])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("p11-kit server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            return Err("p11-kit server did not open its socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::env::set_var(
        "P11_KIT_SERVER_ADDRESS",
        format!("unix:path={}", socket.display()),
    );
    let mut t = load("p11kit", Path::new(P11KIT_CLIENT), "bench-p11kit", "1234")?;
    t.server = Some(child);
    Ok(Some(t))
}

/// In a fresh process: load, C_Initialize, open the first session; prints µs.
pub fn startup_probe(module: &str, token: &str, _pin: &str) -> f64 {
    let t0 = Instant::now();
    let pkcs11 = Pkcs11::new(module).expect("load module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = find_slot(&pkcs11, token).expect("token");
    let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    let us = t0.elapsed().as_secs_f64() * 1e6;
    drop(session);
    us
}

/// Runs [`startup_probe`] for `t` in a child process.
pub fn run_startup_probe(t: &Target) -> Result<f64, String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--startup-probe")
        .arg(&t.module)
        .arg(&t.token)
        .arg("-")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{}: startup probe failed: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("{}: startup probe output: {e}", t.name))
}
