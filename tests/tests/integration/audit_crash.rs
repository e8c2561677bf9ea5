//! SIGKILL of the agent during heavy use: no admin or lifecycle action that
//! returned success is missing from the trail, and the trail verifies.
//!
//! Three probe processes sign in tight loops with a managed key and with
//! unmanaged session keys of their own, while a thread runs admin and
//! lifecycle actions through the CLI (create, activate, grant add and
//! remove, suspend, resume (a recorded approval request), rotate of the
//! key the probes sign with), remembering each action the agent answered
//! with success and the CLI process that asked (the trail names it). The
//! agent is killed right after an action returned, while the probes sign,
//! and started again; three times. Uses queued in memory when the agent
//! dies may be lost (the trail batches them); durable events may not: an
//! admin event that were only queued would be missing after the kill that
//! follows its success by a few milliseconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_tests::admin::{
    application_toml, install_policy, keyward_bin, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::probe::Probe;

/// Kills of the agent in the test.
const CYCLES: usize = 3;
/// Least time of signing and actions before each kill.
const CYCLE_LOAD: Duration = Duration::from_secs(1);
/// Probe processes signing meanwhile.
const PROBES: usize = 3;
/// The managed key the probes sign with (and the actions rotate).
const BUSY: &str = "busy";
/// A second application of the policy, for grants to add and remove.
const OTHER_APP: &str = "auditor";

/// Lab mode, so that the probes' own session keys are plain unmanaged
/// objects; this user is application `tester`, signing with class
/// `signing`; `auditor` (uid 65534) only receives grants.
fn policy() -> String {
    let grant = sign_grant_toml(APPLICATION);
    format!(
        "[settings]\nmode = \"lab\"\npin_max_attempts = 0\n{}{}{}",
        application_toml(APPLICATION, uid()),
        application_toml(OTHER_APP, 65534),
        signing_class_toml(
            "signing",
            "30d",
            "60d",
            &format!("rotation_interval = \"7d\"\n{grant}")
        )
    )
}

/// Microseconds since the epoch, as the trail's `at` and `micros`.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

fn record_us(r: &Json) -> i64 {
    r.time_at("at") * 1_000_000 + r.i64_at("micros")
}

/// One admin or lifecycle action and what the trail must show for it.
#[derive(Debug, Clone)]
struct Action {
    args: Vec<String>,
    /// The key it names.
    key: String,
    /// The record's `operation`.
    operation: &'static str,
    /// In the "requested: ..." record's reason.
    detail: String,
    /// The exit code of success (3: an approval request was recorded).
    success: i32,
}

/// Per key of a cycle: its life so far, then a rotation of the busy key.
const STEPS: usize = 7;

/// The `i`-th action of cycle `cycle`: each cycle starts with fresh keys,
/// so that an action the kill cut off leaves nothing the next one needs.
fn action(cycle: usize, i: usize) -> Action {
    let key = format!("life-{cycle}-{}", i / STEPS);
    let reason = format!("crash test {cycle}/{}", i / STEPS);
    let a = |args: &[&str], operation, detail: &str, success| Action {
        args: args.iter().map(|s| s.to_string()).collect(),
        key: key.clone(),
        operation,
        detail: detail.to_string(),
        success,
    };
    match i % STEPS {
        0 => a(
            &["key", "create", &key, "--class", "signing"],
            "key.create",
            &format!("create {key} (class signing"),
            0,
        ),
        1 => a(
            &["key", "activate", &key],
            "key.activate",
            &format!("activate {key}"),
            0,
        ),
        2 => a(
            &["grant", "add", &key, OTHER_APP, "--ops", "verify"],
            "grant.add",
            &format!("grant {OTHER_APP} verify on {key}"),
            0,
        ),
        3 => a(
            &["grant", "remove", &key, OTHER_APP],
            "grant.remove",
            &format!("remove {OTHER_APP}'s grant on {key}"),
            0,
        ),
        4 => a(
            &["key", "suspend", &key, "--reason", &reason],
            "key.suspend",
            &format!("suspend {key}: code=certificateHold; {reason}"),
            0,
        ),
        5 => a(
            &["key", "resume", &key],
            "key.resume",
            &format!("resume {key}"),
            3,
        ),
        _ => Action {
            args: vec!["key".into(), "rotate".into(), BUSY.into()],
            key: BUSY.into(),
            operation: "key.rotate",
            detail: format!("rotate {BUSY}"),
            success: 0,
        },
    }
}

/// An action as it ran: the CLI's pid (the trail's administrator pid)
/// and its exit code.
#[derive(Debug)]
struct Ran {
    action: Action,
    pid: u32,
    code: i32,
    output: String,
}

fn run(tb: &Env, action: Action) -> Ran {
    let child = Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(&action.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keyward");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for keyward");
    Ran {
        action,
        pid,
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A running `sign_loop_probe`.
struct Signer(Probe);

impl Signer {
    fn start(tb: &Env) -> Signer {
        Signer(Probe::start(
            tb,
            Path::new(env!("CARGO_BIN_EXE_sign_loop_probe")),
            &[BUSY],
        ))
    }

    fn line(&mut self, what: &str) -> String {
        self.0.line(what, Duration::from_secs(30))
    }

    /// Stops the probe; its counts: signed with the managed key, with its
    /// own keys, and failed calls.
    fn finish(mut self) -> (u32, u64, u64, u64) {
        self.0.close_stdin();
        let line = self.line("final");
        self.0.wait_success(Duration::from_secs(30));
        let value = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("sign_loop_probe said {line:?}"))
        };
        (
            self.0.pid(),
            value("managed"),
            value("unmanaged"),
            value("errors"),
        )
    }
}

/// Runs actions of `cycle` until `stop`; each success is announced on
/// `succeeded` as it returns.
fn actions_until(
    tb: Env,
    cycle: usize,
    stop: Arc<AtomicBool>,
    succeeded: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<Ran>> {
    std::thread::spawn(move || {
        let mut ran = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let r = run(&tb, action(cycle, i));
            if r.code == r.action.success {
                let _ = succeeded.send(());
            }
            ran.push(r);
            i += 1;
        }
        ran
    })
}

/// Sums of the store's use records (successful uses, counts included) per
/// application pid: with the managed key, with anything else.
fn recorded_uses(tb: &Env) -> BTreeMap<u32, (u64, u64)> {
    let db = rusqlite::Connection::open_with_flags(
        tb.path("state/inventory.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only");
    let mut st = db
        .prepare(
            "SELECT pid, key_name = ?1, sum(count) FROM audit \
             WHERE kind = 'use' AND result = 0 GROUP BY pid, key_name = ?1",
        )
        .expect("prepare");
    let mut out: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let rows = st
        .query_map([BUSY], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .expect("query");
    for row in rows {
        let (pid, managed, n) = row.expect("row");
        let e = out.entry(pid as u32).or_default();
        if managed {
            e.0 += n as u64;
        } else {
            e.1 += n as u64;
        }
    }
    out
}

keyward_test!(fn a_kill_during_heavy_use_loses_no_admin_event_and_the_trail_verifies(tb) {
    let began = Instant::now();
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", BUSY, "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", BUSY], 0);
    let mut probes: Vec<Signer> = (0..PROBES).map(|_| Signer::start(&tb)).collect();
    for p in &mut probes {
        assert_eq!(p.line("ready"), "ready");
    }

    let mut succeeded: Vec<Ran> = Vec::new();
    let mut windows = Vec::new();
    for cycle in 0..CYCLES {
        let start = now_us();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let worker = actions_until(tb.clone(), cycle, stop.clone(), tx);
        // A second of load and a full key life and rotation at least,
        // more in later cycles; then the kill, a few milliseconds after
        // the last success returned (well inside the writer's 200 ms
        // batch), while the next action is likely in flight.
        let cycle_start = Instant::now();
        let mut n = 0;
        while n < STEPS + 3 * cycle || cycle_start.elapsed() < CYCLE_LOAD {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("cycle {cycle}: action {n} does not succeed ({e})"));
            n += 1;
        }
        let kill = now_us();
        tb.kill_agent();
        stop.store(true, Ordering::SeqCst);
        let ran = worker.join().expect("the action thread");
        for r in ran {
            if r.code == r.action.success {
                succeeded.push(r);
            } else {
                // 1: the agent went away under it or was down.
                assert_eq!(
                    r.code, 1,
                    "cycle {cycle}: keyward {:?} exited {}: {}",
                    r.action.args, r.code, r.output
                );
            }
        }
        windows.push((start, kill));
        tb.start_agent();
    }
    let counts: Vec<(u32, u64, u64, u64)> = probes.into_iter().map(Signer::finish).collect();

    // The whole trail, as the administrator reads it (the request also
    // writes what the agent has queued).
    let text = keyward_ok(&tb, &["--json", "audit", "tail", "-n", "1000000"], 0);
    let trail: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let seqs: Vec<i64> = trail.iter().map(|r| r.i64_at("seq")).collect();
    assert_eq!(
        seqs,
        (1..=trail.len() as i64).collect::<Vec<_>>(),
        "the trail's seqs are not 1, 2, ... {}",
        trail.len()
    );
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.at("first_bad").is_null(), "{verified}");
    // And the record of that tail, written after its answer.
    assert_eq!(verified.i64_at("records"), trail.len() as i64 + 1, "{verified}");

    // Every action the agent answered with success: its request and its
    // outcome, from that CLI process, for that key.
    let mut missing = Vec::new();
    for r in &succeeded {
        let a = &r.action;
        let mine: Vec<&Json> = trail
            .iter()
            .filter(|x| {
                x.at("pid").as_i64() == Some(i64::from(r.pid))
                    && x.at("kind").as_str() == Some("admin")
                    && x.at("key").as_str() == Some(a.key.as_str())
                    && x.str_at("operation") == a.operation
            })
            .collect();
        let requested = mine.iter().any(|x| {
            x.str_at("reason").starts_with("requested: ") && x.str_at("reason").contains(&a.detail)
        });
        let outcome = if a.success == 3 {
            "needs approval: request "
        } else {
            "done"
        };
        let done = mine.iter().any(|x| {
            x.str_at("result") == "CKR_OK"
                && if a.success == 3 {
                    x.str_at("reason").starts_with(outcome)
                } else {
                    x.str_at("reason") == outcome
                }
        });
        if !requested || !done {
            missing.push(format!(
                "keyward {} (pid {}): requested {requested}, {outcome:?} {done}; records of that pid: {mine:?}",
                a.args.join(" "),
                r.pid
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} successful actions are missing from the trail:\n{}",
        missing.len(),
        succeeded.len(),
        missing.join("\n")
    );
    let starts = trail
        .iter()
        .filter(|x| x.str_at("kind") == "agent" && x.str_at("operation") == "start")
        .count();
    assert!(starts > CYCLES, "{starts} agent starts recorded around {CYCLES} kills");

    // Uses from before each kill are there, of the managed key and of the
    // probes' own keys.
    for (cycle, (start, kill)) in windows.iter().enumerate() {
        let uses = |managed: bool| {
            trail
                .iter()
                .filter(|x| {
                    x.str_at("kind") == "use"
                        && (x.at("key").as_str() == Some(BUSY)) == managed
                        && (*start..*kill).contains(&record_us(x))
                })
                .count()
        };
        assert!(
            uses(true) > 0 && uses(false) > 0,
            "cycle {cycle}: use records before the kill: managed {}, unmanaged {}",
            uses(true),
            uses(false)
        );
    }

    // What the kills cost in use events: the probes' signatures against
    // the uses the trail holds for them. None recorded that was not made
    // (a call cut off by the kill may be recorded but not answered).
    let recorded = recorded_uses(&tb);
    let (mut signed_all, mut recorded_all) = (0, 0);
    for (pid, managed, unmanaged, errors) in &counts {
        let (rm, ru) = recorded.get(pid).copied().unwrap_or_default();
        println!(
            "probe {pid}: signed {managed} managed + {unmanaged} unmanaged ({errors} failed calls); \
             recorded {rm} + {ru}"
        );
        assert!(
            rm <= managed + errors && ru <= unmanaged + errors,
            "probe {pid}: more uses recorded than made"
        );
        assert!(rm > 0 && ru > 0, "probe {pid}: no uses recorded");
        signed_all += managed + unmanaged;
        recorded_all += rm + ru;
    }
    println!(
        "{} successful admin actions, all in the trail; {CYCLES} kills; {} records, {} unsealed; \
         uses: {signed_all} signed, {recorded_all} recorded, {} lost in the kills ({:.2} %); {:.1} s",
        succeeded.len(),
        trail.len(),
        verified.i64_at("unsealed"),
        signed_all.saturating_sub(recorded_all),
        100.0 * signed_all.saturating_sub(recorded_all) as f64 / signed_all.max(1) as f64,
        began.elapsed().as_secs_f64()
    );
});
