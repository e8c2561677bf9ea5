//! SIGKILL of the agent while administrators rotate and transition keys:
//! each lifecycle change is one inventory transaction with its trail
//! records, so after every restart the trail verifies and the inventory
//! and the trail agree. For every key, its state and each version's state
//! are what its `lifecycle` records say, and it has exactly one record per
//! history row: no change without its record, no record without its
//! change. (Before, a rotation was two transactions and the records came
//! after: a kill in between left a new version the trail never told of.)
//!
//! Two administrators work through keys of their own (create, activate,
//! rotate, revoke --rotate, rotate, suspend, revoke) and both rotate one
//! shared key, racing each other; the agent is killed at a different
//! moment in each round and started again.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use keyward_tests::admin::{
    application_toml, install_policy, keyward_bin, keyward_json, keyward_ok, sign_grant_toml,
    signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;

/// Kills of the agent.
const ROUNDS: u64 = 12;
/// Administrators acting at once.
const ADMINS: usize = 2;
/// The key both administrators rotate.
const SHARED: &str = "shared";

fn policy() -> String {
    format!(
        "[settings]\nmode = \"lab\"\npin_max_attempts = 0\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml(
            "signing",
            "30d",
            "60d",
            &format!(
                "rotation_interval = \"7d\"\n{}",
                sign_grant_toml(APPLICATION)
            )
        )
    )
}

/// One lifecycle action and whether it adds a version.
struct Step {
    args: Vec<String>,
    key: String,
    adds_version: bool,
}

/// Administrator `admin`'s `i`-th action in `round`: every other one
/// rotates the shared key; the others take a key of their own through
/// its life, a fresh key every seven steps.
fn step(round: u64, admin: usize, i: usize) -> Step {
    let owned = |args: &[&str], key: &str, adds_version| Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        key: key.to_owned(),
        adds_version,
    };
    if i % 2 == 1 {
        return owned(&["key", "rotate", SHARED], SHARED, true);
    }
    let n = i / 2;
    let key = format!("life-{round}-{admin}-{}", n / 7);
    let k = key.as_str();
    match n % 7 {
        0 => owned(&["key", "create", k, "--class", "signing"], k, false),
        1 => owned(&["key", "activate", k], k, false),
        2 | 4 => owned(&["key", "rotate", k], k, true),
        3 => owned(
            &[
                "key",
                "revoke",
                "--yes",
                k,
                "--rotate",
                "--reason",
                "crash test",
                "--reason-code",
                "keyCompromise",
            ],
            k,
            true,
        ),
        5 => owned(&["key", "suspend", k, "--reason", "crash test"], k, false),
        _ => owned(
            &[
                "key",
                "revoke",
                "--yes",
                k,
                "--reason",
                "crash test",
                "--reason-code",
                "superseded",
            ],
            k,
            false,
        ),
    }
}

/// Runs one action; true when the agent answered with success.
fn run(tb: &Env, s: &Step) -> bool {
    Command::new(keyward_bin(tb))
        .arg("--admin-socket")
        .arg(&tb.admin_socket)
        .args(&s.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run keyward")
        .success()
}

/// A key as the inventory holds it, or as the trail tells it: its state,
/// its versions' states (version 1 first), and how many changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Life {
    state: String,
    versions: Vec<String>,
    changes: usize,
}

fn store(tb: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        tb.path("state/inventory.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only")
}

/// Every key of the inventory.
fn inventory(db: &rusqlite::Connection) -> BTreeMap<String, Life> {
    let mut out = BTreeMap::new();
    let mut keys = db
        .prepare(
            "SELECT k.name, k.state, (SELECT count(*) FROM state_changes s WHERE s.key_id = k.id)
               FROM keys k",
        )
        .expect("prepare");
    let rows = keys
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .expect("keys");
    for row in rows {
        let (name, state, changes) = row.expect("key row");
        out.insert(
            name,
            Life {
                state,
                versions: Vec::new(),
                changes: changes as usize,
            },
        );
    }
    let mut versions = db
        .prepare(
            "SELECT k.name, v.state FROM key_versions v JOIN keys k ON k.id = v.key_id
              ORDER BY k.name, v.version",
        )
        .expect("prepare");
    let rows = versions
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("versions");
    for row in rows {
        let (name, state) = row.expect("version row");
        out.entry(name).or_default().versions.push(state);
    }
    out
}

/// Every key as its `lifecycle` records tell it, replayed in trail order
/// (`from <state> to <state>: <why>`).
fn told(db: &rusqlite::Connection) -> BTreeMap<String, Life> {
    let mut out: BTreeMap<String, Life> = BTreeMap::new();
    let mut st = db
        .prepare(
            "SELECT key_name, key_version, reason FROM audit WHERE kind = 'lifecycle' ORDER BY seq",
        )
        .expect("prepare");
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .expect("lifecycle records");
    for row in rows {
        let (name, version, reason) = row.expect("record");
        let to = reason
            .strip_prefix("from ")
            .and_then(|r| r.split_once(" to "))
            .and_then(|(_, r)| r.split(':').next())
            .unwrap_or_else(|| panic!("a lifecycle reason without its move: {reason:?}"))
            .to_owned();
        let life = out.entry(name).or_default();
        life.changes += 1;
        match version {
            None => life.state = to,
            Some(v) => {
                let i = v as usize - 1;
                if life.versions.len() <= i {
                    life.versions.resize(i + 1, "(no record)".into());
                }
                life.versions[i] = to;
            }
        }
    }
    out
}

keyward_test!(fn a_kill_during_rotations_and_transitions_leaves_inventory_and_trail_agreeing(tb) {
    tb.require_agent("lifecycle changes through the agent");
    let began = Instant::now();
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", SHARED, "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", SHARED], 0);
    // Version-adding actions the agent acknowledged, per key.
    let mut acknowledged: BTreeMap<String, usize> = BTreeMap::new();
    let mut successes = 0;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let (succeeded, successes_now) = mpsc::channel();
        let admins: Vec<_> = (0..ADMINS)
            .map(|admin| {
                let (tb, stop, succeeded) = (tb.clone(), stop.clone(), succeeded.clone());
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let s = step(round, admin, i);
                        if run(&tb, &s) {
                            let _ = succeeded.send(());
                            done.push(s);
                        }
                        i += 1;
                    }
                    done
                })
            })
            .collect();
        // Some successes first, then the kill a varying few milliseconds
        // after one returned: inside the actions in flight, at a different
        // point of them in each round.
        for n in 0..4 + round % 5 {
            successes_now
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("round {round}: action {n} does not succeed ({e})"));
        }
        std::thread::sleep(Duration::from_millis((round * 7) % 45));
        tb.kill_agent();
        stop.store(true, Ordering::SeqCst);
        for a in admins {
            for s in a.join().expect("an administrator thread") {
                successes += 1;
                if s.adds_version {
                    *acknowledged.entry(s.key).or_default() += 1;
                }
            }
        }
        tb.start_agent();

        let verified = keyward_json(&tb, &["audit", "verify"], 0);
        assert!(verified.at("first_bad").is_null(), "round {round}: {verified}");
        let db = store(&tb);
        let stored = inventory(&db);
        let told = told(&db);
        let differ: Vec<String> = stored
            .keys()
            .chain(told.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| stored.get(*k) != told.get(*k))
            .map(|k| format!("{k}: inventory {:?}, trail {:?}", stored.get(k), told.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "round {round}: the inventory and the trail disagree:\n{}",
            differ.join("\n")
        );
        let mut st = db
            .prepare(
                "SELECT k.name, k.rotated_at, (SELECT max(v.created_at) FROM key_versions v
                                                WHERE v.key_id = k.id)
                   FROM keys k WHERE (SELECT count(*) FROM key_versions v WHERE v.key_id = k.id) > 1",
            )
            .expect("prepare");
        let rotated = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, i64>(2)?))
            })
            .expect("rotated keys");
        for row in rotated {
            let (key, rotated_at, newest) = row.expect("row");
            assert_eq!(
                rotated_at,
                Some(newest),
                "round {round}: key {key}'s newest version is not under its rotation's dates"
            );
        }
        for (key, n) in &acknowledged {
            let versions = stored.get(key).map_or(0, |l| l.versions.len());
            assert!(
                versions > *n,
                "round {round}: key {key} has {versions} versions after {n} acknowledged rotations"
            );
        }
    }
    assert!(successes > ROUNDS as usize * 2, "only {successes} actions succeeded");
    println!(
        "{ROUNDS} kills, {successes} acknowledged actions, {:.1} s",
        began.elapsed().as_secs_f64()
    );
});
