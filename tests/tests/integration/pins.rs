//! PIN lockout under attack: a burst of parallel wrong PINs checks no more
//! PINs than the policy allows, an attempt that cannot be counted is no
//! check at all, the SO PIN locks too, and applications sharing a token
//! have their own PIN and their own count.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{
    install_policy, keyward_ok, strict_policy, two_applications_policy, APPLICATION,
};
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, rv_error, Ctx};
use keyward_tests::probe::Probe;

/// How the answers of a burst of logins came out.
#[derive(Debug, Default)]
struct Burst {
    ok: usize,
    incorrect: usize,
    locked: usize,
    other: Vec<String>,
}

impl Burst {
    /// PINs the agent actually compared: every answer but a lockout.
    fn checked(&self) -> usize {
        self.ok + self.incorrect
    }
}

/// `n` threads, each on a session of its own (so a connection of its own),
/// log in as `user` with `pin` at the same moment.
fn burst(ctx: &Ctx, n: usize, user: UserType, pin: &str) -> Burst {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let p11 = ctx.p11.clone();
            let slot = ctx.slot;
            let barrier = barrier.clone();
            let pin = pin.to_owned();
            std::thread::spawn(move || {
                let s = p11.open_rw_session(slot).expect("C_OpenSession");
                barrier.wait();
                let r = s.login(user, Some(&AuthPin::new(pin.into())));
                r.map_err(|e| rv_error(&e))
            })
        })
        .collect();
    let mut b = Burst::default();
    for t in threads {
        match t.join().expect("a login thread panicked") {
            Ok(()) => b.ok += 1,
            Err(RvError::PinIncorrect) => b.incorrect += 1,
            Err(RvError::PinLocked) => b.locked += 1,
            Err(e) => b.other.push(format!("{e:?}")),
        }
    }
    b
}

/// Says `line` on standard error, and appends it to the file
/// `KEYWARD_TEST_NOTES` names, if any (a passing test's output is not
/// shown).
fn note(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("KEYWARD_TEST_NOTES") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open KEYWARD_TEST_NOTES");
        writeln!(f, "{line}").expect("write KEYWARD_TEST_NOTES");
    }
}

/// The agent's peak resident memory (`VmHWM`), in KiB.
fn agent_peak_kib(tb: &keyward_tests::Env) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", tb.agent_pid()))
        .expect("read the agent's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in the agent's status")
}

// 200 wrong user PINs at once against a policy that locks after 3: no
// more than 3 are compared, every other answer is CKR_PIN_LOCKED (none a
// device error), the right PIN is locked out afterwards, and the agent's
// memory stays bounded (argon2 takes 19 MiB per check).
keyward_test!(fn a_burst_of_wrong_user_pins_checks_at_most_the_limit(tb) {
    tb.require_agent("PIN lockout");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    let before = agent_peak_kib(&tb);
    let b = burst(&ctx, 200, UserType::User, "wrong-pin");
    let after = agent_peak_kib(&tb);
    note(&format!(
        "burst of 200 wrong user PINs: {} checked, {} locked, other {:?}; agent VmHWM {before} -> {after} KiB",
        b.checked(),
        b.locked,
        b.other
    ));
    assert!(b.other.is_empty(), "unexpected answers: {:?}", b.other);
    assert_eq!(b.ok, 0);
    assert!(b.checked() <= 3, "{} PINs were checked, the policy allows 3: {b:?}", b.checked());
    assert_eq!(b.checked() + b.locked, 200, "{b:?}");
    let s = ctx.rw();
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinLocked);
    assert!(
        after.saturating_sub(before) < 200 * 1024,
        "the agent's peak memory grew by {} KiB in the burst",
        after.saturating_sub(before)
    );
});

// Without a lockout (the lab policy), every PIN is compared, but no more
// than a few at once: 200 parallel wrong PINs do not take the agent's
// memory up by 200 argon2 computations (19 MiB each).
keyward_test!(fn a_burst_without_lockout_keeps_the_agent_s_memory_bounded(tb) {
    tb.require_agent("PIN checks");
    let ctx = Ctx::new(&tb);
    let before = agent_peak_kib(&tb);
    let b = burst(&ctx, 200, UserType::User, "wrong-pin");
    let after = agent_peak_kib(&tb);
    note(&format!(
        "lab burst of 200 wrong user PINs: {} checked, other {:?}; agent VmHWM {before} -> {after} KiB",
        b.checked(),
        b.other
    ));
    assert!(b.other.is_empty(), "unexpected answers: {:?}", b.other);
    assert_eq!(b.incorrect, 200, "{b:?}");
    assert!(
        after.saturating_sub(before) < 160 * 1024,
        "the agent's peak memory grew by {} KiB in the burst",
        after.saturating_sub(before)
    );
    ctx.user();
});

/// The directory of the testbed token's state.
fn token_state_dir(tb: &keyward_tests::Env) -> std::path::PathBuf {
    let dir = tb.path("state").join(format!("token-{}", tb.token));
    assert!(dir.is_dir(), "no token state at {}", dir.display());
    dir
}

/// Makes the wrong-PIN count `name` of the testbed token impossible to
/// read or write, for root too (a non-empty directory in its place; file
/// modes do not stop root); the returned path undoes it.
fn break_count(tb: &keyward_tests::Env, name: &str) -> std::path::PathBuf {
    let path = token_state_dir(tb).join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir(&path).expect("a directory in the count's place");
    std::fs::write(path.join("keep"), b"").expect("a file in it");
    path
}

/// With the count `name` broken, neither a wrong nor the right user PIN
/// is checked (`CKR_DEVICE_ERROR`); repaired, the right PIN logs in.
fn uncountable_attempts_check_nothing(tb: &keyward_tests::Env, name: &str) {
    let ctx = Ctx::new(tb);
    let s = ctx.rw();
    let broken = break_count(tb, name);
    expect_err(
        s.login(UserType::User, Some(&AuthPin::new("wrong-pin".into()))),
        RvError::DeviceError,
    );
    expect_err(
        s.login(UserType::User, Some(&ctx.pin())),
        RvError::DeviceError,
    );
    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert!(
        info.user_pin_locked(),
        "an unreadable count shows as locked"
    );
    std::fs::remove_dir_all(&broken).expect("repair the count");
    s.login(UserType::User, Some(&ctx.pin()))
        .expect("the right PIN once the count can be written");
}

// The state directory cannot take the count: no PIN is compared, so the
// right PIN does not log in either (fail closed).
keyward_test!(fn an_attempt_that_cannot_be_counted_checks_no_pin(tb) {
    tb.require_agent("PIN state");
    uncountable_attempts_check_nothing(&tb, "user-pin-failures");
});

keyward_test!(fn strict_an_attempt_that_cannot_be_counted_checks_no_pin(tb) {
    strict_policy(&tb);
    uncountable_attempts_check_nothing(&tb, "app-tester-user-pin-failures");
});

// The SO PIN locks like the user PIN, with a count of its own; `keyward
// pin unlock --role` unlocks one role.
keyward_test!(fn the_so_pin_locks_and_an_administrator_unlocks_it(tb) {
    tb.require_agent("SO PIN lockout");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    let wrong = AuthPin::new("wrong-so-pin".into());
    for _ in 0..3 {
        expect_err(s.login(UserType::So, Some(&wrong)), RvError::PinIncorrect);
    }
    expect_err(s.login(UserType::So, Some(&ctx.so_pin())), RvError::PinLocked);
    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert!(info.so_pin_locked(), "CKF_SO_PIN_LOCKED is set");
    assert!(!info.user_pin_locked(), "the user PIN has its own count");
    s.login(UserType::User, Some(&ctx.pin())).expect("the user PIN is not locked");
    s.logout().expect("C_Logout");
    keyward_ok(&tb, &["pin", "unlock", &tb.token, "--role", "user"], 0);
    expect_err(s.login(UserType::So, Some(&ctx.so_pin())), RvError::PinLocked);
    keyward_ok(&tb, &["pin", "unlock", &tb.token, "--role", "so"], 0);
    s.login(UserType::So, Some(&ctx.so_pin())).expect("the SO PIN after the unlock");
});

// A burst of parallel wrong SO PINs compares no more than the limit.
keyward_test!(fn a_burst_of_wrong_so_pins_checks_at_most_the_limit(tb) {
    tb.require_agent("SO PIN lockout");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    let b = burst(&ctx, 60, UserType::So, "wrong-so-pin");
    note(&format!("burst of 60 wrong SO PINs: {} checked, {} locked, other {:?}", b.checked(), b.locked, b.other));
    assert!(b.other.is_empty(), "unexpected answers: {:?}", b.other);
    assert!(b.checked() <= 3, "{} SO PINs were checked, the policy allows 3: {b:?}", b.checked());
    assert_eq!(b.locked, 60 - b.checked());
    let s = ctx.rw();
    expect_err(s.login(UserType::So, Some(&ctx.so_pin())), RvError::PinLocked);
});

/// The refusals in the trail (`keyward --json audit query --result
/// denied`), waiting up to 10 s for one whose reason contains `reason`.
fn refusal_recorded(tb: &keyward_tests::Env, reason: &str) -> Json {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = keyward_ok(
            tb,
            &[
                "--json", "audit", "query", "--result", "denied", "--limit", "100000",
            ],
            0,
        );
        let found = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Json>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .find(|r| r.str_at("reason").contains(reason));
        if let Some(r) = found {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal \"{reason}\" in the trail:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Strict mode: the token's SO can neither reset the user PIN (C_InitPIN)
// nor change the SO PIN; PINs are the administrator's. Each refusal is in
// the trail, and the user PIN still works.
keyward_test!(fn in_strict_mode_the_so_cannot_set_or_reset_pins(tb) {
    tb.require_agent("PIN administration");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    s.login(UserType::So, Some(&ctx.so_pin())).expect("C_Login(CKU_SO)");
    expect_err(s.init_pin(&AuthPin::new("reset-by-so".into())), RvError::ActionProhibited);
    expect_err(
        s.set_pin(&ctx.so_pin(), &AuthPin::new("new-so-pin".into())),
        RvError::ActionProhibited,
    );
    s.logout().expect("C_Logout");
    s.login(UserType::User, Some(&ctx.pin())).expect("the user PIN is unchanged");
    s.logout().expect("C_Logout");
    expect_err(s.login(UserType::User, Some(&AuthPin::new("reset-by-so".into()))), RvError::PinIncorrect);
    s.login(UserType::So, Some(&ctx.so_pin())).expect("the SO PIN is unchanged");
    let r = refusal_recorded(&tb, "set by the administrator");
    assert_eq!(r.str_at("result"), "CKR_ACTION_PROHIBITED", "CKR_ACTION_PROHIBITED: {r}");
});

// Lab mode keeps a plain token: the SO resets the user PIN.
keyward_test!(fn in_lab_mode_the_so_resets_the_user_pin(tb) {
    tb.require_agent("PIN administration");
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    s.login(UserType::So, Some(&ctx.so_pin())).expect("C_Login(CKU_SO)");
    s.init_pin(&AuthPin::new("reset-by-so".into())).expect("C_InitPIN in lab mode");
    s.logout().expect("C_Logout");
    s.login(UserType::User, Some(&AuthPin::new("reset-by-so".into()))).expect("the new user PIN");
});

/// Application `other`: this user running `pin_probe`.
const OTHER: &str = "other";

/// The `pin_probe` binary, by the path the agent sees.
fn probe_exe() -> std::path::PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_pin_probe")).expect("pin_probe is built")
}

/// Strict mode, three wrong PINs lock; this process is application
/// `tester`, `pin_probe` run by the same user is application `other`.
fn two_applications(tb: &keyward_tests::Env) {
    install_policy(
        tb,
        &two_applications_policy("pin_max_attempts = 3\n", OTHER, &probe_exe(), ""),
    );
}

/// A running `pin_probe`: application `other` under [`two_applications`],
/// this process's application under [`strict_policy`].
struct Other(Probe);

impl Other {
    fn start(tb: &keyward_tests::Env) -> Other {
        let mut p = Probe::start(tb, &probe_exe(), &[]);
        p.value("ready", PROBE_WAIT);
        Other(p)
    }

    /// Sends `line`, returns the answer named `name`.
    fn ask(&mut self, line: &str, name: &str) -> String {
        self.0.say(line);
        self.0.value(name, PROBE_WAIT)
    }

    fn finish(mut self) {
        self.0.close_stdin();
        self.0.wait_success(PROBE_WAIT);
    }
}

const PROBE_WAIT: Duration = Duration::from_secs(60);

// Strict mode on a shared token: application `tester` locks its own user
// PIN with wrong PINs; application `other` still logs in with the same
// PIN; the administrator unlocks one application.
keyward_test!(fn one_application_cannot_lock_out_another(tb) {
    tb.require_agent("per-application PINs");
    two_applications(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    let wrong = AuthPin::new("wrong-pin".into());
    for _ in 0..3 {
        expect_err(s.login(UserType::User, Some(&wrong)), RvError::PinIncorrect);
    }
    for _ in 0..2 {
        expect_err(s.login(UserType::User, Some(&wrong)), RvError::PinLocked);
    }
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinLocked);
    let mut other = Other::start(&tb);
    assert_eq!(other.ask(&format!("login {}", tb.pin), "login"), "CKR_OK", "application other is locked out too");
    // Its count is its own: its wrong PINs do not add to tester's.
    other.ask("logout", "logout");
    assert_eq!(other.ask("login wrong-pin", "login"), "CKR_PIN_INCORRECT");
    assert_eq!(other.ask(&format!("login {}", tb.pin), "login"), "CKR_OK");
    keyward_ok(&tb, &["pin", "unlock", &tb.token, "--app", OTHER], 0);
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinLocked);
    keyward_ok(&tb, &["pin", "unlock", &tb.token, "--app", APPLICATION], 0);
    s.login(UserType::User, Some(&ctx.pin())).expect("tester after its unlock");
    other.finish();
});

/// `keyward-agent set-pin --token T --role user --app APP` with `pin` on
/// standard input; its exit status and standard error.
fn admin_set_pin(tb: &keyward_tests::Env, app: &str, pin: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let agent = std::path::Path::new(&tb.module).with_file_name("keyward-agent");
    let mut child = Command::new(agent)
        .arg("--config")
        .arg(tb.path("keyward-agent.toml"))
        .args([
            "set-pin", "--token", &tb.token, "--role", "user", "--app", app,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keyward-agent set-pin");
    // A refusal (an unknown application) may come before the PIN is read:
    // the pipe is then closed, and the exit status says why.
    if let Err(e) = writeln!(child.stdin.take().expect("stdin"), "{pin}") {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the PIN: {e}"
        );
    }
    let out = child
        .wait_with_output()
        .expect("wait for keyward-agent set-pin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Strict mode on a shared token: C_SetPIN changes the caller's own
// application PIN only; the administrator sets one application's PIN.
keyward_test!(fn one_application_cannot_change_another_s_pin(tb) {
    tb.require_agent("per-application PINs");
    two_applications(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    s.login(UserType::User, Some(&ctx.pin())).expect("tester logs in with the token's PIN");
    let mine = AuthPin::new("tester-own-pin".into());
    s.set_pin(&ctx.pin(), &mine).expect("C_SetPIN by tester");
    s.logout().expect("C_Logout");
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinIncorrect);
    s.login(UserType::User, Some(&mine)).expect("tester's new PIN");
    s.logout().expect("C_Logout");

    let mut other = Other::start(&tb);
    assert_eq!(other.ask(&format!("login {}", tb.pin), "login"), "CKR_OK", "tester's C_SetPIN changed other's PIN");
    assert_eq!(other.ask("login tester-own-pin", "login"), "CKR_USER_ALREADY_LOGGED_IN");
    other.ask("logout", "logout");
    assert_eq!(other.ask("login tester-own-pin", "login"), "CKR_PIN_INCORRECT");
    assert_eq!(other.ask(&format!("login {}", tb.pin), "login"), "CKR_OK");
    assert_eq!(other.ask(&format!("setpin {} other-own-pin", tb.pin), "setpin"), "CKR_OK");
    s.login(UserType::User, Some(&mine)).expect("other's C_SetPIN left tester's PIN alone");
    s.logout().expect("C_Logout");

    // The administrator sets other's PIN; tester's is untouched.
    let (ok, err) = admin_set_pin(&tb, OTHER, "set-by-admin");
    assert!(ok, "keyward-agent set-pin --app {OTHER}: {err}");
    other.ask("logout", "logout");
    assert_eq!(other.ask("login other-own-pin", "login"), "CKR_PIN_INCORRECT");
    assert_eq!(other.ask("login set-by-admin", "login"), "CKR_OK");
    s.login(UserType::User, Some(&mine)).expect("tester's PIN after the administrator set other's");
    let (ok, err) = admin_set_pin(&tb, "nobody", "set-by-admin");
    assert!(!ok && err.contains("no application"), "an unknown application: {err}");
    other.finish();
});

// Processes too: twenty processes of one application, five wrong PINs
// each, all at once, compare no more than the limit between them.
keyward_test!(fn parallel_processes_check_at_most_the_limit(tb) {
    tb.require_agent("PIN lockout");
    strict_policy(&tb);
    let mut probes: Vec<Other> = (0..20).map(|_| Other::start(&tb)).collect();
    for p in &mut probes {
        for _ in 0..5 {
            p.0.say("login wrong-pin");
        }
    }
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for p in &mut probes {
        for _ in 0..5 {
            *answers.entry(p.0.value("login", PROBE_WAIT)).or_default() += 1;
        }
    }
    note(&format!("20 processes x 5 wrong user PINs: {answers:?}"));
    let incorrect = answers.get("CKR_PIN_INCORRECT").copied().unwrap_or(0);
    let locked = answers.get("CKR_PIN_LOCKED").copied().unwrap_or(0);
    assert_eq!(incorrect + locked, 100, "only CKR_PIN_INCORRECT and CKR_PIN_LOCKED: {answers:?}");
    assert!(incorrect <= 3, "{incorrect} PINs were checked, the policy allows 3");
    let mut last = probes.pop().expect("a probe");
    assert_eq!(last.ask(&format!("login {}", tb.pin), "login"), "CKR_PIN_LOCKED");
    for p in probes {
        p.finish();
    }
    last.finish();
});

// Strict mode: C_InitToken would reset every application's PIN, so it is
// the administrator's even where the configuration allows it.
keyward_test!(fn in_strict_mode_the_so_cannot_initialise_the_token(tb) {
    tb.require_agent("PIN administration");
    let config = tb.path("keyward-agent.toml");
    let text = std::fs::read_to_string(&config).expect("read the agent configuration");
    let text = text.replace("allow_init_token = false", "allow_init_token = true");
    assert!(text.contains("allow_init_token = true"), "{text}");
    std::fs::write(&config, text).expect("write the agent configuration");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    expect_err(ctx.p11.init_token(ctx.slot, &ctx.so_pin(), &tb.token), RvError::ActionProhibited);
    let s = ctx.rw();
    s.login(UserType::User, Some(&ctx.pin())).expect("the user PIN is unchanged");
    let r = refusal_recorded(&tb, "set by the administrator");
    assert_eq!(r.str_at("operation"), "C_InitToken", "{r}");
});
