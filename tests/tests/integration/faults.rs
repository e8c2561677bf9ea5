//! Faults at start and in the state directory, each injected into a real
//! agent on a real SoftHSM2 token:
//! - a damaged store file (empty, cut short, overwritten with garbage, a
//!   page overwritten, a newer schema, a directory or a symbolic link in
//!   its place): the agent refuses to start, says why and names the file,
//!   and leaves the file as it was; the store put back, it starts on it
//!   with nothing lost;
//! - a backend token absent at start and restored while the agent runs:
//!   the slot shows no token, then the token appears without a restart
//!   and signs;
//! - the store's files and directory made read-only while the agent runs:
//!   admin and lifecycle actions fail closed and change nothing,
//!   applications are served (`on_write_failure = "continue"`, their
//!   records held) or refused (`"refuse"`), and once writable again the
//!   agent recovers by itself and writes what it held.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::session::UserType;
use cryptoki_sys::CKF_TOKEN_PRESENT;
use keyward_tests::admin::{
    application_toml, audit_query, install_policy, keyward, keyward_json, keyward_ok,
    signing_class_toml, uid, wait_signatures_recorded, wait_trail_failing,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::p11::{ec_pair, load, os_threads, P256_PARAMS};
use keyward_tests::{assert_rv, keyward_test};

/// The agent's store in a testbed.
fn store(tb: &Env) -> PathBuf {
    tb.path("state/inventory.sqlite")
}

/// Stops the agent and folds the store's WAL into its file, so that the
/// file alone is the whole store (as after any clean close).
fn stop_and_fold(tb: &Env) -> Vec<u8> {
    tb.stop_agent();
    let path = store(tb);
    let conn = rusqlite::Connection::open(&path).expect("open the store");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint the store");
    drop(conn);
    assert!(
        !tb.path("state/inventory.sqlite-wal").exists(),
        "the WAL is still there after the last close"
    );
    std::fs::read(&path).expect("read the store")
}

/// Starts the agent, which must refuse: returns what the start said (its
/// exit and the end of its log).
fn refused_start(tb: &Env) -> String {
    let testbed = keyward_testbed::Testbed::open(&tb.dir).expect("open the testbed");
    let log_before = testbed.log().len();
    match testbed.start() {
        Ok(pid) => panic!("the agent started (pid {pid}) on a damaged store"),
        Err(e) => {
            let said = e.to_string();
            assert!(
                said.contains("exited during start-up") && !said.contains("exit status: 0"),
                "the agent did not exit with a failure: {said}"
            );
            let log = testbed.log();
            log.get(log_before..).unwrap_or_default().to_owned()
        }
    }
}

/// Puts `bytes` back as the store and starts the agent on it; the trail
/// verifies.
fn restore_and_start(tb: &Env, bytes: &[u8]) {
    let path = store(tb);
    let meta = std::fs::symlink_metadata(&path);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(&path).expect("remove the directory");
    } else if meta.is_ok() {
        std::fs::remove_file(&path).expect("remove the damaged store");
    }
    std::fs::write(&path, bytes).expect("put the store back");
    tb.start_agent();
    let verified = keyward_ok(tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
}

/// The agent refuses the store as it is now, names it in its log with
/// `why`, and leaves it byte for byte as it was.
#[track_caller]
fn assert_refused(tb: &Env, case: &str, why: &[&str]) {
    let path = store(tb);
    let before = std::fs::read(&path).ok();
    let log = refused_start(tb);
    assert!(
        log.contains(&path.display().to_string()),
        "{case}: the log does not name the store file:\n{log}"
    );
    assert!(
        why.iter().any(|w| log.contains(w)),
        "{case}: the log does not say {why:?}:\n{log}"
    );
    assert_eq!(
        std::fs::read(&path).ok(),
        before,
        "{case}: the store file was changed"
    );
    assert!(
        !tb.path("keyward.sock").exists() || !answers(tb),
        "{case}: something answers on the socket"
    );
    println!(
        "{case}: refused: {}",
        log.lines().last().unwrap_or_default()
    );
}

fn answers(tb: &Env) -> bool {
    keyward_testbed::Testbed::open(&tb.dir)
        .map(|t| t.answers_hello())
        .unwrap_or(false)
}

/// Overwrites `len` bytes of `path` from `at` with a fixed pattern.
fn overwrite(path: &Path, at: usize, len: usize) {
    let mut bytes = std::fs::read(path).expect("read the store");
    assert!(
        bytes.len() >= at + len,
        "the store is only {} bytes",
        bytes.len()
    );
    for (i, b) in bytes[at..at + len].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8 ^ 0xA5;
    }
    std::fs::write(path, &bytes).expect("write the store");
}

keyward_test!(fn a_damaged_store_at_start_is_refused_with_its_name_and_left_as_it_was(tb) {
    tb.require_agent("damaging the store");
    // Something in the store worth keeping: the start's records.
    let records = trail_records(&tb);
    assert!(records > 0, "an empty trail");
    let good = stop_and_fold(&tb);
    let path = store(&tb);
    let page = 4096;
    assert!(good.len() >= 4 * page, "the store has only {} bytes", good.len());

    // Cut to nothing: before, taken for a new store and served empty.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    assert_refused(&tb, "empty", &["empty"]);
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // Cut in the middle of its pages.
    std::fs::write(&path, &good[..good.len() / 2 + 100]).unwrap();
    assert_refused(&tb, "cut short", &["not a usable inventory", "malformed"]);
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // Garbage from the first byte.
    std::fs::write(&path, &good).unwrap();
    overwrite(&path, 0, good.len());
    assert_refused(&tb, "garbage", &["not a usable inventory"]);
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // One page in the middle overwritten.
    std::fs::write(&path, &good).unwrap();
    let pages = good.len() / page;
    overwrite(&path, (pages / 2) * page, page);
    assert_refused(&tb, "a page overwritten", &["not a usable inventory", "malformed"]);
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // A schema from a newer build.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    assert_refused(&tb, "newer schema", &["newer than this build"]);
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // A directory in its place.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let log = refused_start(&tb);
    assert!(log.contains(&path.display().to_string()) && log.contains("directory"), "{log}");
    assert!(path.is_dir() && std::fs::read_dir(&path).unwrap().next().is_none(), "the directory was changed");
    restore_and_start(&tb, &good);
    let good = stop_and_fold(&tb);

    // A symbolic link to another file: the agent's writes would go there.
    let elsewhere = tb.path("elsewhere.sqlite");
    std::fs::write(&elsewhere, &good).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let log = refused_start(&tb);
    assert!(log.contains(&path.display().to_string()) && log.contains("symbolic link"), "{log}");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), good, "the link's target was changed");
    restore_and_start(&tb, &good);

    // Everything the store held is there, and the starts since added to it.
    let now = trail_records(&tb);
    assert!(now > records, "the trail held {records} records and holds {now}");
});

/// The records of the trail, as `keyward status` counts them.
fn trail_records(tb: &Env) -> u64 {
    let doc = keyward_json(tb, &["status"], 0);
    doc.at("audit")
        .at("records")
        .as_u64()
        .expect("audit.records")
}

/// The SoftHSM2 token directory of the testbed: `(tokens dir, the token's own dir)`.
fn token_dir(tb: &Env) -> (PathBuf, PathBuf) {
    let tokens = tb.path("softhsm/tokens");
    let mut inside: Vec<PathBuf> = std::fs::read_dir(&tokens)
        .expect("the token directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        inside.len(),
        1,
        "one token in {}: {inside:?}",
        tokens.display()
    );
    let token = inside.remove(0);
    (tokens, token)
}

keyward_test!(fn a_backend_token_absent_at_start_appears_without_a_restart_once_restored(tb) {
    tb.require_agent("removing the backend token");
    tb.stop_agent();
    let (_, token) = token_dir(&tb);
    let away = tb.path("token-away");
    std::fs::rename(&token, &away).expect("move the backend token away");
    tb.start_agent();
    let log_at_start = std::fs::read_to_string(tb.path("agent.log")).unwrap();
    assert!(log_at_start.contains("backend unavailable"), "{log_at_start}");

    let (p11, raw) = load(&tb);
    p11.initialize(os_threads()).expect("C_Initialize");
    let all = raw.slot_list(false, keyward_tests::raw::Out::Cap(16));
    assert!(!all.data.is_empty(), "no slot");
    let (rv, info) = raw.slot_info(all.data[0]);
    assert_rv!(rv, cryptoki_sys::CKR_OK, "C_GetSlotInfo");
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0, "a token is shown while the backend is absent");
    // Still absent a while later: the tries so far found nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(p11.get_slots_with_token().expect("C_GetSlotList").is_empty(), "a token with no backend");

    std::fs::rename(&away, &token).expect("restore the backend token");
    let restored = Instant::now();
    let deadline = restored + Duration::from_secs(20);
    let slot = loop {
        let present = p11.get_slots_with_token().expect("C_GetSlotList");
        let found = present.into_iter().find(|&sl| {
            p11.get_token_info(sl).map(|i| i.label().trim_end() == tb.token).unwrap_or(false)
        });
        if let Some(sl) = found {
            break sl;
        }
        assert!(Instant::now() < deadline, "the token did not appear within 20 s of its restore");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("the token appeared {:?} after its restore", restored.elapsed());
    let s = p11.open_rw_session(slot).expect("C_OpenSession");
    s.login(UserType::User, Some(&cryptoki::types::AuthPin::new(tb.pin.clone().into())))
        .expect("C_Login");
    let (_, private) = ec_pair(&s, P256_PARAMS, "after-the-outage", false);
    s.sign(&Mechanism::Ecdsa, private, &[3u8; 32]).expect("C_Sign once the backend is back");

    let log = std::fs::read_to_string(tb.path("agent.log")).unwrap();
    let outage = log.matches("backend unavailable").count();
    let back = log.matches("the token is present again").count();
    assert_eq!(outage, 1, "the outage is logged once:\n{log}");
    assert_eq!(back, 1, "the return is logged once:\n{log}");
    let status = keyward_json(&tb, &["status"], 0);
    assert!(!status.to_string().contains("backend_error\":\""), "status still shows an error: {status}");
});

/// Lab mode with this user as application `testbed` and a signing class.
fn lab_policy() -> String {
    format!(
        "[settings]\nmode = \"lab\"\n{}{}",
        application_toml("testbed", uid()),
        signing_class_toml("signing", "30d", "60d", "")
    )
}

/// The store's files and its directory made immutable (`chattr +i`: even
/// root's writes fail, also through descriptors already open) until
/// dropped.
struct ReadOnly {
    paths: Vec<PathBuf>,
}

impl ReadOnly {
    fn state_of(tb: &Env) -> ReadOnly {
        let mut paths: Vec<PathBuf> = ["state/inventory.sqlite", "state/inventory.sqlite-wal"]
            .iter()
            .map(|p| tb.path(p))
            .filter(|p| p.exists())
            .collect();
        paths.push(tb.path("state"));
        for p in &paths {
            chattr("+i", p);
        }
        ReadOnly { paths }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        for p in self.paths.iter().rev() {
            chattr("-i", p);
        }
    }
}

fn chattr(flag: &str, path: &Path) {
    let out = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .expect("run chattr (e2fsprogs)");
    assert!(
        out.status.success(),
        "chattr {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

keyward_test!(fn a_read_only_state_directory_fails_admin_closed_serves_per_setting_and_recovers(tb) {
    tb.require_agent("a read-only state directory");
    install_policy(&tb, &lab_policy());
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "held", false);
    let mut signed = 0i64;
    s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).expect("C_Sign before the fault");
    signed += 1;
    let keys_before = keyward_ok(&tb, &["--json", "key", "list"], 0);

    let read_only = ReadOnly::state_of(&tb);
    // An admin action fails closed, with a clear message, and changes nothing.
    let out = keyward(&tb, &["key", "create", "never", "--class", "signing"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "a key was created with a read-only store: {said}");
    println!("key create with a read-only store: {said}");
    assert!(said.contains("audit trail cannot be written"), "the refusal does not say why: {said}");
    // Applications are served (on_write_failure = "continue"), the writer
    // holds their records and says the trail is failing.
    wait_trail_failing(&tb, true, || {
        s.sign(&Mechanism::Ecdsa, private, &[2u8; 32]).expect("C_Sign while the store is read-only");
        signed += 1;
    });
    for _ in 0..5 {
        s.sign(&Mechanism::Ecdsa, private, &[3u8; 32]).expect("C_Sign while the trail fails");
        signed += 1;
    }
    assert_eq!(keyward_ok(&tb, &["--json", "key", "list"], 0), keys_before, "the key list changed");

    // Writable again: the agent recovers by itself and writes what it held.
    drop(read_only);
    wait_trail_failing(&tb, false, || {});
    wait_signatures_recorded(&tb, "held", signed);
    keyward_ok(&tb, &["key", "create", "later", "--class", "signing"], 0);
    let keys = keyward_ok(&tb, &["--json", "key", "list"], 0);
    assert!(keys.contains("\"later\"") && !keys.contains("\"never\""), "{keys}");
});

keyward_test!(fn a_read_only_state_directory_in_refuse_mode_refuses_uses_changes_no_key_and_recovers(tb) {
    tb.require_agent("a read-only state directory");
    tb.configure_agent("[audit]\non_write_failure = \"refuse\"\n");
    install_policy(&tb, &lab_policy());
    keyward_ok(&tb, &["key", "create", "steady", "--class", "signing"], 0);
    let ctx = keyward_tests::p11::Ctx::new(&tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256_PARAMS, "refused", false);
    s.sign(&Mechanism::Ecdsa, private, &[1u8; 32]).expect("C_Sign before the fault");

    let read_only = ReadOnly::state_of(&tb);
    // A lifecycle action on an existing key fails closed and changes nothing.
    let out = keyward(&tb, &["key", "activate", "steady"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "a key was activated with a read-only store: {said}");
    assert!(said.contains("audit trail cannot be written"), "the refusal does not say why: {said}");
    // Uses go on until the writer finds the trail unwritable, then are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match s.sign(&Mechanism::Ecdsa, private, &[2u8; 32]) {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "signing was never refused while the store was read-only");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(format!("{refused:?}").contains("FunctionFailed"), "{refused:?}");
    drop(read_only);

    // Writable again: uses are served again without a restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.sign(&Mechanism::Ecdsa, private, &[3u8; 32]).is_err() {
        assert!(Instant::now() < deadline, "signing did not come back once the store was writable");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_trail_failing(&tb, false, || {});
    let shown = keyward_json(&tb, &["key", "show", "steady"], 0);
    assert_eq!(shown.str_at("state"), "pre-activation", "the refused activation happened: {shown}");
    let refusals = audit_query(&tb, &["--result", "denied"]);
    assert!(
        refusals.iter().any(|r| r.str_at("reason").contains("audit trail cannot be written")),
        "the refusals are not in the trail"
    );
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.contains("intact"), "{verified}");
    keyward_ok(&tb, &["key", "activate", "steady"], 0);
});
