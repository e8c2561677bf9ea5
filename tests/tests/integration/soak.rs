//! A bounded soak: several client processes (`load_probe`, mixed
//! operations with managed keys) load one agent while a driver runs key
//! lives through the CLI (create, activate, rotate, suspend, resume,
//! revoke, destroy; resumptions and destructions approved by two security
//! officers), rotates the keys the clients use, makes a backup and drills
//! it, and stops and starts the agent once in the middle. At the end:
//! - every client process exits 0 with its summary, saw only codes of the
//!   documented set, had every signature it was handed verify;
//! - the inventory and the backend agree: every version that is not
//!   destroyed has its objects, one of each class, on the SoftHSM2 token (looked at directly,
//!   as root on the host could), a destroyed one has none, and no key
//!   object on the token is outside the inventory but keyward's own;
//! - the trail verifies and holds a successful record of every action the
//!   CLI acknowledged, from that CLI process;
//! - the agent's descriptors and memory are flat: sampled after a warm-up
//!   and at the end of each phase, descriptors stay within
//!   [`FD_SLACK`] of the first sample of that agent run, and resident
//!   memory grows less than [`RSS_GROWTH_KIB`] over the second half of
//!   each run.
//!
//! `KEYWARD_SOAK_SECS` (default [`DEFAULT_SECS`]) is the time of the four
//! phases together; set-up, warm-ups and the checks come on top. A longer
//! soak for people: `KEYWARD_SOAK_SECS=1800 cargo test -p keyward-tests
//! --test integration soak::`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use keyward_tests::admin::{
    application_toml, backend_token, install_policy, keyward_bin, keyward_json, keyward_ok, uid,
    APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::load::{
    agent_usage, create_load_keys, load_classes_toml, report, Load, Tally, LOAD_KEYS, OUTAGE_CODES,
};
use keyward_tests::roster::{
    key_file, open_admin_socket_to_bob, public_key, ALICE_PEM, BOB, BOB_PEM,
};

/// Seconds of the four phases together, unless `KEYWARD_SOAK_SECS` says.
const DEFAULT_SECS: u64 = 40;
const PROBES: usize = 3;
const THREADS: usize = 3;
/// Load before the first sample of each agent run.
const WARM_UP: Duration = Duration::from_secs(4);
/// Descriptors may differ by this much from the first sample of a run.
const FD_SLACK: usize = 4;
/// Resident memory may grow this much (KiB) over the second half of a run.
const RSS_GROWTH_KIB: u64 = 8 * 1024;

/// What a CLI process did.
struct Ran {
    pid: u32,
    code: i32,
    stdout: String,
    stderr: String,
}

/// An action the agent acknowledged, and the CLI process that asked.
#[derive(Debug, Clone)]
struct Acked {
    pid: u32,
    operation: &'static str,
    what: String,
}

/// The soak's administrators and what they were told.
struct Driver {
    tb: Env,
    alice_key: PathBuf,
    bob_key: PathBuf,
    acked: Vec<Acked>,
    /// Actions whose key generation the HSM failed.
    failed: Vec<Acked>,
    executed: Vec<String>,
    actions: BTreeMap<&'static str, u64>,
    /// Expected final state of each key of the driver's.
    states: BTreeMap<String, &'static str>,
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

impl Driver {
    /// `keyward --json ARGS` as `as_uid` (else this process's user).
    fn cli(&self, as_uid: Option<u32>, args: &[&str]) -> Ran {
        let mut cmd = Command::new(keyward_bin(&self.tb));
        cmd.arg("--admin-socket")
            .arg(&self.tb.admin_socket)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(u) = as_uid {
            cmd.uid(u).gid(BOB);
        }
        let child = cmd.spawn().expect("run keyward");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for keyward");
        Ran {
            pid,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `args` (operation `operation`), which must succeed at once
    /// (exit 0) or record a request (exit 3) that the officers approve and
    /// the agent carries out. The one failure allowed: the HSM failing a
    /// key generation (exit 7, `HSM: C_Generate...`), which must change
    /// nothing and be recorded; false then.
    fn act(&mut self, operation: &'static str, args: &[&str]) -> bool {
        let r = self.cli(None, args);
        let what = args.join(" ");
        match r.code {
            0 => {}
            3 => {
                let doc: Json = serde_json::from_str(&r.stdout)
                    .unwrap_or_else(|e| panic!("keyward {what}: no JSON ({e}): {}", r.stdout));
                let id = doc.str_at("id").to_owned();
                self.approve(&id);
            }
            7 if r.stderr.contains("HSM: C_Generate") => {
                self.failed.push(Acked {
                    pid: r.pid,
                    operation,
                    what: format!("{what}: {}", r.stderr.trim()),
                });
                return false;
            }
            code => panic!("keyward {what} exited {code}: {}{}", r.stdout, r.stderr),
        }
        self.acked.push(Acked {
            pid: r.pid,
            operation,
            what,
        });
        *self.actions.entry(operation).or_default() += 1;
        true
    }

    /// Bob approves request `id`, and alice too when it needs a second
    /// officer (a requester never decides their own); it is executed.
    fn approve(&mut self, id: &str) {
        for (who, key) in [
            (Some(BOB), self.bob_key.clone()),
            (None, self.alice_key.clone()),
        ] {
            let r = self.cli(who, &["request", "approve", id, "--key", path(&key)]);
            assert_eq!(
                r.code, 0,
                "request approve {id} as {who:?}: {}{}",
                r.stdout, r.stderr
            );
            self.acked.push(Acked {
                pid: r.pid,
                operation: "request.approve",
                what: format!("request approve {id} ({who:?})"),
            });
            *self.actions.entry("request.approve").or_default() += 1;
            let shown = keyward_json(&self.tb, &["request", "show", id], 0);
            if shown.str_at("status") == "executed" {
                self.executed.push(id.to_owned());
                return;
            }
        }
        panic!("request {id} is not executed after two approvals");
    }

    /// Cycle `i`: a key's life, and a rotation of a key the clients use.
    /// A step the HSM failed ends the key's life there.
    fn cycle(&mut self, i: usize) {
        self.life(i);
        let busy = LOAD_KEYS[i % LOAD_KEYS.len()].0;
        self.act("key.rotate", &["key", "rotate", busy]);
    }

    fn life(&mut self, i: usize) {
        let name = format!("life-{i}");
        let n = name.as_str();
        let destroy = [
            "key",
            "destroy",
            "--yes",
            n,
            "--reason",
            "retired",
            "--reason-code",
            "cessationOfOperation",
        ];
        if !self.act("key.create", &["key", "create", n, "--class", "life"]) {
            return;
        }
        self.states.insert(name.clone(), "pre-activation");
        self.act("key.activate", &["key", "activate", n]);
        self.states.insert(name.clone(), "active");
        match i % 3 {
            0 => {
                if !self.act("key.rotate", &["key", "rotate", n]) {
                    return;
                }
                self.act("key.suspend", &["key", "suspend", n, "--reason", "soak"]);
                self.states.insert(name.clone(), "suspended");
                self.act("key.resume", &["key", "resume", n, "--reason", "soak over"]);
                self.states.insert(name.clone(), "active");
                self.act("key.destroy", &destroy);
                self.states.insert(name.clone(), "destroyed");
            }
            1 => {
                self.act(
                    "key.revoke",
                    &[
                        "key",
                        "revoke",
                        "--yes",
                        n,
                        "--reason",
                        "soak",
                        "--reason-code",
                        "superseded",
                    ],
                );
                self.states.insert(name.clone(), "compromised");
                self.act("key.destroy", &destroy);
                self.states.insert(name.clone(), "destroyed");
            }
            _ => {
                // Kept alive, with two versions.
                if !self.act("key.rotate", &["key", "rotate", n]) {
                    return;
                }
                self.act("key.suspend", &["key", "suspend", n, "--reason", "soak"]);
                self.states.insert(name.clone(), "suspended");
            }
        }
    }

    /// Cycles until `until`.
    fn cycles_until(&mut self, next: &mut usize, until: Instant) {
        while Instant::now() < until {
            self.cycle(*next);
            *next += 1;
        }
    }
}

/// One sample of the agent's resident memory and descriptors.
#[derive(Debug, Clone)]
struct Sample {
    when: &'static str,
    run: usize,
    rss_kib: u64,
    fds: usize,
}

fn sample(tb: &Env, when: &'static str, run: usize, samples: &mut Vec<Sample>) {
    let (rss_kib, fds) = agent_usage(tb);
    report(&format!(
        "soak sample {when} (agent run {run}): VmRSS {rss_kib} KiB, {fds} descriptors"
    ));
    samples.push(Sample {
        when,
        run,
        rss_kib,
        fds,
    });
}

/// The officers, custodians of the backup key, and the soak's policy.
fn setup(tb: &Env) -> (PathBuf, PathBuf) {
    open_admin_socket_to_bob(tb);
    let bob_dir = tb.path("bob");
    std::fs::create_dir(&bob_dir).expect("bob's directory");
    std::os::unix::fs::chown(&bob_dir, Some(BOB), Some(BOB)).expect("chown");
    std::fs::set_permissions(&bob_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let alice_key = key_file(tb, "alice.pem", ALICE_PEM, uid());
    let bob_key = key_file(tb, "bob.pem", BOB_PEM, BOB);
    let recipient = |file: &Path| {
        let out = keyward_ok(
            tb,
            &["backup", "custodian-key", "new", "--out", path(file)],
            0,
        );
        out.trim()
            .strip_prefix("share_recipient = \"")
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{out:?}"))
            .to_owned()
    };
    let alice_recipient = recipient(&tb.path("alice.age-key"));
    let bob_identity = bob_dir.join("bob.age-key");
    let bob_recipient = recipient(&bob_identity);
    std::os::unix::fs::chown(&bob_identity, Some(BOB), Some(BOB)).expect("chown");
    let me = uid();
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{app}{load}\n\
         [[class]]\nname = \"life\"\npurpose = \"signing\"\nalgorithms = [\"ec:p256\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\nbackup = true\n\
         grants = [ {{ application = \"{APPLICATION}\", operations = [\"sign\", \"verify\"] }} ]\n\n\
         [[administrator]]\nname = \"alice\"\nuids = [{me}]\n\
         roles = [\"security-officer\", \"custodian\"]\npublic_key = \"{alice}\"\n\
         share_recipient = \"{alice_recipient}\"\n\n\
         [[administrator]]\nname = \"bob\"\nuids = [{BOB}]\n\
         roles = [\"security-officer\", \"custodian\"]\npublic_key = \"{bob}\"\n\
         share_recipient = \"{bob_recipient}\"\n",
        app = application_toml(APPLICATION, me),
        load = load_classes_toml(""),
        alice = public_key(tb, &alice_key),
        bob = public_key(tb, &bob_key),
    );
    install_policy(tb, &policy);
    (alice_key, bob_key)
}

/// Every key object on the backend token: `CKA_ID` (hex) → classes and
/// labels.
fn backend_objects(tb: &Env) -> BTreeMap<String, Vec<(ObjectClass, String)>> {
    let (_p11, s) = backend_token(tb);
    let mut out: BTreeMap<String, Vec<(ObjectClass, String)>> = BTreeMap::new();
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::SECRET_KEY,
    ] {
        let found = s
            .find_objects(&[Attribute::Token(true), Attribute::Class(class)])
            .expect("C_FindObjects on the backend");
        for h in found {
            let attrs = s
                .get_attributes(h, &[AttributeType::Id, AttributeType::Label])
                .expect("CKA_ID and CKA_LABEL on the backend");
            let (mut id, mut label) = (Vec::new(), String::new());
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = v,
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    _ => {}
                }
            }
            out.entry(hex::encode(id)).or_default().push((class, label));
        }
    }
    out
}

keyward_test!(fn soak_mixed_load_lifecycle_approvals_backup_and_a_restart_leave_everything_agreeing_and_flat(tb) {
    tb.require_agent("the soak");
    let began = Instant::now();
    let secs: u64 = std::env::var("KEYWARD_SOAK_SECS")
        .ok()
        .map(|v| v.parse().expect("KEYWARD_SOAK_SECS is a number of seconds"))
        .unwrap_or(DEFAULT_SECS);
    let phase = Duration::from_secs(secs) / 4;
    let (alice_key, bob_key) = setup(&tb);
    create_load_keys(&tb);
    let mut d = Driver {
        tb: tb.clone(),
        alice_key,
        bob_key,
        acked: Vec::new(),
        failed: Vec::new(),
        executed: Vec::new(),
        actions: BTreeMap::new(),
        states: BTreeMap::new(),
    };
    // The backup key's ceremony, approved by both officers.
    assert!(d.act("backup.init", &["backup", "init", "--threshold", "2", "--reason", "soak ceremony"]));

    let exe = Path::new(env!("CARGO_BIN_EXE_load_probe"));
    let bound = Duration::from_secs(secs * 2 + 120);
    let mut probes: Vec<Load> = (0..PROBES).map(|_| Load::start(&tb, exe, THREADS, bound)).collect();
    for p in &mut probes {
        p.ready(Duration::from_secs(60));
    }
    let mut samples = Vec::new();
    let mut next = 0;

    // Agent run 1: warm-up, two phases of key lives.
    std::thread::sleep(WARM_UP);
    sample(&tb, "warm-up", 1, &mut samples);
    d.cycles_until(&mut next, Instant::now() + phase);
    sample(&tb, "phase 1", 1, &mut samples);
    d.cycles_until(&mut next, Instant::now() + phase);
    sample(&tb, "phase 2", 1, &mut samples);

    // A graceful restart under load: every client is served again.
    let before: Vec<u64> = probes.iter_mut().map(Load::count).collect();
    tb.stop_agent();
    tb.start_agent();
    for (p, from) in probes.iter_mut().zip(before) {
        p.served_beyond(from, 100, Duration::from_secs(30));
    }

    // Agent run 2: warm-up, a backup and its drill, two phases.
    std::thread::sleep(WARM_UP);
    sample(&tb, "warm-up", 2, &mut samples);
    let phase_end = Instant::now() + phase;
    let file = tb.path("soak.kwbackup");
    assert!(d.act("backup.create", &["backup", "create", path(&file)]));
    let drill = keyward_json(&tb, &["backup", "verify", path(&file)], 0);
    let drilled = drill.array_at("results");
    assert!(
        !drilled.is_empty() && drilled.iter().all(|r| r.at("ok").as_bool() == Some(true)),
        "{drill}"
    );
    d.cycles_until(&mut next, phase_end);
    sample(&tb, "phase 3", 2, &mut samples);
    d.cycles_until(&mut next, Instant::now() + phase);
    sample(&tb, "phase 4", 2, &mut samples);

    // The clients.
    let mut tally = Tally::default();
    let mut allowed = OUTAGE_CODES.to_vec();
    // A version the clients held was rotated away: it no longer protects.
    allowed.push("CKR_KEY_FUNCTION_NOT_PERMITTED");
    for p in probes {
        let summary = p.finish();
        report(&format!("soak client: {summary}"));
        tally.add(&summary, &allowed, true);
    }

    // The inventory against the backend.
    let list = keyward_json(&tb, &["key", "list"], 0);
    let keys = list.as_array().expect("keys");
    for (name, state) in &d.states {
        let k = keys
            .iter()
            .find(|k| k.str_at("name") == name)
            .unwrap_or_else(|| panic!("{name} was acknowledged and is not in the inventory"));
        assert_eq!(k.str_at("state"), *state, "{name}: {k}");
    }
    let objects = backend_objects(&tb);
    let mut live = BTreeSet::new();
    let (mut live_versions, mut destroyed_versions) = (0, 0);
    for k in keys {
        let pair = matches!(k.str_at("algorithm"), a if a.starts_with("ec") || a.starts_with("rsa"));
        for v in k.array_at("versions") {
            let id = v.str_at("backend_id");
            let on_token: Vec<ObjectClass> = objects.get(id).map(|o| o.iter().map(|x| x.0).collect()).unwrap_or_default();
            if v.str_at("state") == "destroyed" {
                destroyed_versions += 1;
                assert!(on_token.is_empty(), "{} v{}: destroyed, yet on the token: {on_token:?}", k.str_at("name"), v.at("version"));
            } else {
                live_versions += 1;
                live.insert(id.to_owned());
                let wanted: &[ObjectClass] = if pair {
                    &[ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY]
                } else {
                    &[ObjectClass::SECRET_KEY]
                };
                for c in wanted {
                    assert!(
                        on_token.iter().filter(|x| *x == c).count() == 1,
                        "{} v{} ({}): not exactly one {c:?} on the token: {on_token:?}",
                        k.str_at("name"),
                        v.at("version"),
                        v.str_at("state")
                    );
                }
            }
        }
    }
    let mut own = 0;
    for (id, found) in &objects {
        if live.contains(id) {
            continue;
        }
        for (class, label) in found {
            assert!(
                label.starts_with("keyward-"),
                "a {class:?} object on the token outside the inventory: CKA_ID {id}, label {label:?}"
            );
            own += 1;
        }
    }

    // The trail: verifies, and holds every acknowledged action.
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.at("first_bad").is_null(), "{verified}");
    let trail: Vec<Json> = keyward_ok(&tb, &["--json", "audit", "query", "--limit", "10000000"], 0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let missing: Vec<&Acked> = d
        .acked
        .iter()
        .filter(|a| {
            !trail.iter().any(|r| {
                r.at("pid").as_i64() == Some(i64::from(a.pid))
                    && r.at("operation").as_str() == Some(a.operation)
                    && r.at("result").as_str() == Some("CKR_OK")
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged actions have no record: {}",
        missing.len(),
        d.acked.len(),
        missing.iter().map(|a| format!("keyward {} (pid {}, {})", a.what, a.pid, a.operation)).collect::<Vec<_>>().join("; ")
    );
    // A generation the HSM failed is recorded as a failure.
    for f in &d.failed {
        assert!(
            trail.iter().any(|r| r.at("pid").as_i64() == Some(i64::from(f.pid))
                && r.at("operation").as_str() == Some(f.operation)
                && r.at("result").as_str() != Some("CKR_OK")),
            "keyward {} failed without a record", f.what
        );
    }
    let executions = trail
        .iter()
        .filter(|r| r.at("operation").as_str() == Some("request.execute") && r.at("result").as_str() == Some("CKR_OK"))
        .count();
    assert!(executions >= d.executed.len(), "{executions} executions recorded, {} requests executed", d.executed.len());

    // Descriptors and memory, per agent run.
    for run in [1, 2] {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.run == run).collect();
        let first = mine[0];
        for s in &mine {
            assert!(
                s.fds.abs_diff(first.fds) <= FD_SLACK,
                "agent run {run}: {} descriptors at {}, {} at {}: {samples:?}",
                s.fds, s.when, first.fds, first.when
            );
        }
        let (mid, last) = (mine[1], mine[mine.len() - 1]);
        assert!(
            last.rss_kib <= mid.rss_kib + RSS_GROWTH_KIB,
            "agent run {run}: VmRSS grew from {} KiB ({}) to {} KiB ({}): {samples:?}",
            mid.rss_kib, mid.when, last.rss_kib, last.when
        );
    }

    report(&format!(
        "soak of {secs} s ({:?} in all): {PROBES} clients x {THREADS} threads; ops {:?}; errors {:?}; \
         {} signatures, {} verified; actions {:?}; {} requests approved and executed; \
         {} keys, {live_versions} live and {destroyed_versions} destroyed versions checked against {} token ids \
         ({own} keyward objects); {} trail records verified, {} acknowledged actions found; \
         {} generations failed by the HSM ({:?}); samples {:?}",
        began.elapsed(),
        tally.ops,
        tally.errors,
        tally.signatures,
        tally.verified,
        d.actions,
        d.executed.len(),
        keys.len(),
        objects.len(),
        verified.i64_at("records"),
        d.acked.len(),
        d.failed.len(),
        d.failed.iter().map(|f| f.what.as_str()).collect::<Vec<_>>(),
        samples
            .iter()
            .map(|s| format!("run {} {}: {} KiB, {} fds", s.run, s.when, s.rss_kib, s.fds))
            .collect::<Vec<_>>()
    ));
});
