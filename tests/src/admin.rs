//! Administering the testbed's agent as an administrator would: installing a
//! policy file (and restarting the agent on it), running the `keyward` CLI
//! against the testbed's admin socket, reading its `--json` documents, and
//! finding managed keys by label as an application would.

use std::path::Path;
use std::process::{Command, Output};

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::harness::Env;
use crate::json::{Json, JsonExt};

/// The application name the policies below give this process's user.
pub const APPLICATION: &str = "tester";

/// This process's uid (the application the policies name).
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Replaces the testbed's policy with `policy` and restarts the agent on
/// it. The file is checked with `keyward policy check` first, so a mistake
/// in a test's policy is reported with its line and column.
pub fn install_policy(tb: &Env, policy: &str) {
    tb.require_agent("a policy file");
    let path = tb.path("policy.toml");
    std::fs::write(&path, policy).expect("write the policy");
    let out = Command::new(keyward_bin(tb))
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .expect("run keyward policy check");
    assert!(
        out.status.success(),
        "the test's policy is not valid:\n{}{}\n{policy}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tb.stop_agent();
    tb.start_agent();
}

/// A policy's `[[application]]` table.
pub fn application_toml(name: &str, uid: u32) -> String {
    format!("\n[[application]]\nname = \"{name}\"\nuid = {uid}\n")
}

/// A strict policy with two applications of this process's user: this
/// process ([`APPLICATION`]) and `other`, the program at `other_exe`;
/// `settings` goes into `[settings]`, `extra` (whole tables) at the end.
pub fn two_applications_policy(
    settings: &str,
    other: &str,
    other_exe: &Path,
    extra: &str,
) -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{settings}{}\n[[application]]\nname = \"{other}\"\nuid = {}\nexe = \"{}\"\n{extra}",
        application_toml(APPLICATION, uid()),
        uid(),
        other_exe.display()
    )
}

/// A policy's `[[class]]` table of EC P-256 signing keys, protected for
/// `protect` and processed for `process` (policy durations); `extra` is
/// appended inside the table (`rotation_interval = ...`, `grants = ...`).
pub fn signing_class_toml(name: &str, protect: &str, process: &str, extra: &str) -> String {
    format!(
        "\n[[class]]\nname = \"{name}\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"{protect}\"\nprocess_period = \"{process}\"\n{extra}\n"
    )
}

/// `grants = [...]` giving `application` sign and verify.
pub fn sign_grant_toml(application: &str) -> String {
    format!(
        "grants = [ {{ application = \"{application}\", operations = [\"sign\", \"verify\"] }} ]"
    )
}

/// A strict policy in which this process's user (application
/// [`APPLICATION`]) generates keys under `default_class = "app"` (EC P-256
/// signing, granted sign and verify); `extra` is appended (more classes).
pub fn default_class_policy(extra: &str) -> String {
    format!(
        "[settings]\nmode = \"strict\"\ndefault_class = \"app\"\n{}{}{extra}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("app", "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

/// Replaces the testbed's policy with a strict one for this process's user
/// (application [`APPLICATION`]) and restarts the agent on it: class
/// `signing` (EC P-256, granted sign and verify, rotating) and class
/// `hidden` (no grants), three wrong PINs lock.
pub fn strict_policy(tb: &Env) {
    let grant = sign_grant_toml(APPLICATION);
    let policy = format!(
        "[settings]\nmode = \"strict\"\npin_max_attempts = 3\n{}{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml(
            "signing",
            "30d",
            "60d",
            &format!("rotation_interval = \"7d\"\n{grant}")
        ),
        signing_class_toml("hidden", "30d", "60d", "")
    );
    install_policy(tb, &policy);
}

/// The `keyward` CLI next to the module.
pub fn keyward_bin(tb: &Env) -> std::path::PathBuf {
    Path::new(&tb.module).with_file_name("keyward")
}

/// Runs the `keyward` CLI against this testbed's agent.
pub fn keyward(tb: &Env, args: &[&str]) -> Output {
    let bin = keyward_bin(tb);
    Command::new(&bin)
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs the CLI and requires exit code `code`; returns standard output.
#[track_caller]
pub fn keyward_ok(tb: &Env, args: &[&str], code: i32) -> String {
    let out = keyward(tb, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "keyward {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `keyward --json ARGS`, requires exit code `code`, and parses the
/// document it prints, which must keep the rules of every document
/// ([`crate::json::assert_contract`]).
#[track_caller]
pub fn keyward_json(tb: &Env, args: &[&str], code: i32) -> Json {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = keyward_ok(tb, &all, code);
    let doc = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("keyward {all:?} printed no JSON ({e}):\n{text}"));
    crate::json::assert_contract(&doc);
    // Every plan a test reads is checked against its documented shape.
    if args.contains(&"--dry-run") && doc.get("error").is_none() {
        crate::json::validate("plan.schema.json", &doc);
    }
    doc
}

/// The records `keyward --json audit query ARGS` prints (one per line).
pub fn audit_query(tb: &Env, args: &[&str]) -> Vec<Json> {
    let mut all = vec!["--json", "audit", "query", "--limit", "100000"];
    all.extend_from_slice(args);
    keyward_ok(tb, &all, 0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Uses summed over `records` (a record stands for `count` uses) of
/// `operation` that ended with `result` (a `CKR_*` name).
pub fn uses(records: &[Json], operation: &str, result: &str) -> i64 {
    records
        .iter()
        .filter(|r| r.str_at("kind") == "use" && r.str_at("operation") == operation)
        .filter(|r| r.str_at("result") == result)
        .map(|r| r.i64_at("count"))
        .sum()
}

/// Waits (at most 30 s) until the trail holds `signed` successful
/// signatures of `key` (the records held while it could not be written),
/// requires no more than that (none recorded twice), and verifies it.
#[track_caller]
pub fn wait_signatures_recorded(tb: &Env, key: &str, signed: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let recorded = || uses(&audit_query(tb, &["--key", key]), "sign", "CKR_OK");
    while recorded() < signed {
        assert!(
            std::time::Instant::now() < deadline,
            "the held records were not written: {} of {signed}",
            recorded()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(recorded(), signed, "signatures recorded twice");
    let verified = keyward_ok(tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
}

/// Waits (at most 30 s) until `keyward status` says the trail is (`true`)
/// or is no longer (`false`) failing to be written, running `meanwhile`
/// between looks.
#[track_caller]
pub fn wait_trail_failing(tb: &Env, failing: bool, mut meanwhile: impl FnMut()) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let doc = keyward_json(tb, &["status"], 0);
        if doc.at("audit").at("failing").as_bool() == Some(failing) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the trail's failing is not {failing} within 30 s: {doc}"
        );
        meanwhile();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs another keyward-agent on `config` (the testbed's own keeps
/// running) and returns its exit status and standard error: for
/// configurations it must refuse. A start that does not end within 20 s
/// fails the test.
pub fn agent_start_on(tb: &Env, config: &Path) -> (std::process::ExitStatus, String) {
    let agent = keyward_bin(tb).with_file_name("keyward-agent");
    let mut child = Command::new(&agent)
        .arg("--config")
        .arg(config)
        .env("SOFTHSM2_CONF", tb.path("softhsm2.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keyward-agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for keyward-agent") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyward-agent started with {}", config.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        child.stderr.as_mut().expect("the agent's standard error"),
        &mut stderr,
    )
    .expect("read the agent's standard error");
    (status, stderr)
}

/// Runs the CLI, requires exit `code` (a refusal) and returns its
/// standard error.
#[track_caller]
pub fn keyward_refused(tb: &Env, args: &[&str], code: i32) -> String {
    let out = keyward(tb, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "keyward {args:?}: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `keyward --json key show NAME` (exit 0): the key object.
#[track_caller]
pub fn key_show(tb: &Env, name: &str) -> Json {
    keyward_json(tb, &["key", "show", name], 0)
}

/// The objects of class `class` labelled `label`, in the order the token
/// lists them.
pub fn find(s: &Session, label: &str, class: ObjectClass) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Class(class),
    ])
    .expect("C_FindObjects")
}

/// The object's `CKA_ID`.
pub fn id_of(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(h, &[AttributeType::Id])
        .expect("CKA_ID")
        .pop()
    {
        Some(Attribute::Id(id)) => id,
        other => panic!("no CKA_ID: {other:?}"),
    }
}

/// The testbed's backend token opened directly with SoftHSM2, logged in
/// with the backend PIN, as root on the host could (the configuration
/// names the token and the PIN file): objects made here are made behind
/// keyward's back. Sets `SOFTHSM2_CONF` for this process, so it cannot be
/// combined with [`crate::p11::reference`].
pub fn backend_token(tb: &Env) -> (cryptoki::context::Pkcs11, Session) {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    tb.require_agent("the backend token");
    let config =
        std::fs::read_to_string(tb.path("keyward-agent.toml")).expect("read the agent config");
    let label = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("backend_token_label"))
        .map(|v| {
            v.trim_start_matches([' ', '='])
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .expect("backend_token_label in the testbed config");
    let pin = std::fs::read_to_string(tb.path("backend.pin")).expect("read backend.pin");
    let pin = pin.lines().next().expect("backend.pin is empty").to_owned();
    std::env::set_var("SOFTHSM2_CONF", tb.path("softhsm2.conf"));
    let p11 = cryptoki::context::Pkcs11::new(crate::harness::softhsm_lib()).expect("load SoftHSM2");
    p11.initialize(crate::p11::os_threads())
        .expect("C_Initialize of SoftHSM2");
    let slot = crate::p11::find_slot(&p11, &label);
    let s = p11
        .open_rw_session(slot)
        .expect("C_OpenSession on the backend");
    s.login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("C_Login on the backend with its PIN");
    (p11, s)
}

/// The DER of a self-signed P-256 certificate (hex), notAfter
/// 2036-11-22 21:51:03 UTC.
pub const CERT: &str = concat!(
    "3082019130820137a0030201020214364136ba10674ed6e7489693fdc959511e2c4119300a06082a8648ce3d04030230",
    "1e311c301a06035504030c136b6579776172642d7265706f72742d74657374301e170d3236313132353231353130335a",
    "170d3336313132323231353130335a301e311c301a06035504030c136b6579776172642d7265706f72742d7465737430",
    "59301306072a8648ce3d020106082a8648ce3d0301070342000416d005510aa69fa42adb196228e8e02fd946fc7de5a5",
    "265b6851e8bd5a0dc268c77cabd5cd2f58c4aa018a50793c88ec07ceef9f0d80473f679dbc987caf7c67a3533051301d",
    "0603551d0e04160414e296650d11a288931675a1352140b3b0022725a0301f0603551d23041830168014e296650d11a2",
    "88931675a1352140b3b0022725a0300f0603551d130101ff040530030101ff300a06082a8648ce3d0403020348003045",
    "02203996c5c60e1752ea6edbd27b1f85818641c93432109848ee2d8ce49abe6345420221008f5c94975307f1600b6c0c",
    "26b5924d52b79df52c2cec0d726af106f9a208e8da",
);
/// The P-256 point in [`CERT`]'s subject public key (hex).
pub const CERT_POINT: &str = "0416d005510aa69fa42adb196228e8e02fd946fc7de5a5265b6851e8bd5a0dc268c77cabd5cd2f58c4aa018a50793c88ec07ceef9f0d80473f679dbc987caf7c67";

/// [`CERT`] with the public key of `public` (a P-256 public key object)
/// in place of its own: a certificate of that key, as a CA would issue it
/// (keyward reads the key and the dates, not the issuer's signature).
pub fn certificate_of(
    s: &cryptoki::session::Session,
    public: cryptoki::object::ObjectHandle,
) -> Vec<u8> {
    let point = match s
        .get_attributes(public, &[cryptoki::object::AttributeType::EcPoint])
        .expect("CKA_EC_POINT")
        .pop()
    {
        Some(Attribute::EcPoint(p)) => p,
        other => panic!("no CKA_EC_POINT: {other:?}"),
    };
    let raw = &point[point.len() - 65..];
    assert_eq!(raw[0], 4, "an uncompressed point");
    let der = crate::p11::unhex(CERT);
    let at = der
        .windows(65)
        .position(|w| w == crate::p11::unhex(CERT_POINT).as_slice())
        .expect("the certificate's point");
    let mut out = der;
    out[at..at + 65].copy_from_slice(raw);
    out
}

/// The certificate's subject (DER), for `CKA_SUBJECT`.
pub const CERT_SUBJECT: &str = "301e311c301a06035504030c136b6579776172642d7265706f72742d74657374";
