//! Crash safety: a process killed with SIGKILL at random moments while it
//! transitions and rotates keys leaves a consistent store, whose trail
//! holds one lifecycle record per history row: no change without its
//! records, no record without its change.
//!
//! The test re-runs its own binary (`--exact <this test>`) with
//! [`WORKER`] set to the store's path; that child loops over lifecycle
//! writes until it is killed. After every kill the parent reopens the store
//! and checks it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_domain::{Algorithm, Curve, KeyState, Purpose};
use keyward_inventory::{
    Actor, AuditEvent, AuditFilter, AuditKind, AuditLog, DateUpdates, Grant, Inventory, KeyChange,
    KeyFilter, KeyRecord, KeyVersion, LifecycleChange, SqliteInventory, VersionChange,
};

/// Set (to the store's path) in the worker child's environment.
const WORKER: &str = "KEYWARD_INVENTORY_CRASH_WORKER";
/// The worker prints this once its store is open.
const READY: &str = "inventory-crash-worker-ready";
const TEST: &str = "kill9_at_random_moments_leaves_a_consistent_store";
const KILLS: usize = 10;
const KEYS: usize = 6;
const TOKEN: &str = "crash";
/// A worker nobody killed stops by itself (and the parent then fails).
const WORKER_LIFETIME: Duration = Duration::from_secs(60);

/// xorshift64*: enough randomness for moments and choices, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((RandomState::new().hash_one(std::process::id()) ^ nanos) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn kill9_at_random_moments_leaves_a_consistent_store() {
    if let Ok(path) = std::env::var(WORKER) {
        worker(Path::new(&path));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    seed(&path);
    let seeded = lifecycle_rows(&path);
    let mut rng = Rng::new();
    let mut per_round = Vec::new();
    for round in 1..=KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "round {round}: the worker ended before it was ready: {:?}",
                child.wait()
            );
            if line.trim() == READY {
                break;
            }
        }
        let before = lifecycle_rows(&path);
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the worker stopped on its own ({status}), not by SIGKILL"
        );
        check(&path, round);
        per_round.push(lifecycle_rows(&path) - before);
    }
    let ops = lifecycle_rows(&path) - seeded;
    eprintln!(
        "crash test: {KILLS} SIGKILLs, {ops} lifecycle changes committed \
         (per round {per_round:?}), {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        per_round.iter().filter(|&&n| n > 0).count() >= KILLS / 2,
        "most rounds must have written something before the kill: {per_round:?}"
    );
}

/// The store the worker starts from: `KEYS` active keys, one version each.
fn seed(path: &Path) {
    let inv = SqliteInventory::open(path).unwrap();
    for i in 0..KEYS {
        let key = KeyRecord {
            id: 0,
            name: format!("key-{i}"),
            token: TOKEN.into(),
            owner: "crash".into(),
            purpose: Purpose::Signing,
            class: "test".into(),
            algorithm: Algorithm::Ec(Curve::P256),
            state: KeyState::Active,
            created_at: now(),
            activated_at: Some(now()),
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: vec!["test".into()],
            last_used_at: None,
            backup_allowed: false,
            recovery_until: None,
            reason_code: None,
        };
        let version = KeyVersion {
            key_id: 0,
            version: 1,
            backend_id: format!("k{i}-v1").into_bytes(),
            backend_label: key.name.clone(),
            state: KeyState::Active,
            created_at: now(),
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: None,
        };
        let trail = vec![
            record(&key.name, None, "created"),
            record(&key.name, Some(1), "created"),
        ];
        inv.apply(&LifecycleChange {
            key: KeyChange::Create(Box::new(key)),
            versions: vec![VersionChange::Add(version)],
            dates: DateUpdates::default(),
            actor: "seed".into(),
            reason: "created".into(),
            at: now(),
            trail,
        })
        .unwrap();
    }
}

/// A lifecycle record of the trail about `key`.
fn record(key: &str, version: Option<u32>, reason: &str) -> AuditEvent {
    AuditEvent {
        at: now(),
        micros: 0,
        kind: AuditKind::Lifecycle,
        actor: Actor::Scheduler,
        token: Some(TOKEN.into()),
        key: Some(key.into()),
        key_version: version,
        operation: "crash".into(),
        mechanism: None,
        result: 0,
        reason: reason.into(),
        count: 1,
        span_us: 0,
    }
}

/// History rows: one per committed state move.
fn lifecycle_rows(path: &Path) -> usize {
    let inv = SqliteInventory::open(path).unwrap();
    inv.keys(&KeyFilter::default())
        .unwrap()
        .iter()
        .map(|k| inv.history(k.id).unwrap().len())
        .sum()
}

/// Reopens the store after a kill and checks every invariant.
fn check(path: &Path, round: usize) {
    let inv = SqliteInventory::open(path)
        .unwrap_or_else(|e| panic!("round {round}: the store does not reopen: {e}"));
    // integrity_check, foreign_key_check (no orphan rows), every key's and
    // version's state is its last history row's `to`, history rows chain.
    let problems = inv.check().unwrap();
    assert!(problems.is_empty(), "round {round}: {problems:#?}");
    let keys = inv.keys(&KeyFilter::default()).unwrap();
    assert_eq!(keys.len(), KEYS, "round {round}");
    // The trail verifies, and holds exactly one record per history row.
    let report = inv.verify(&|_, _| true).unwrap();
    assert!(report.is_ok(), "round {round}: {report:?}");
    let records = inv
        .query(&AuditFilter {
            kinds: vec![AuditKind::Lifecycle],
            ..AuditFilter::default()
        })
        .unwrap();
    for key in &keys {
        let history = inv.history(key.id).unwrap();
        let told: Vec<(Option<u32>, String)> = records
            .iter()
            .filter(|r| r.event.key.as_deref() == Some(key.name.as_str()))
            .map(|r| (r.event.key_version, r.event.reason.clone()))
            .collect();
        let done: Vec<(Option<u32>, String)> = history
            .iter()
            .map(|c| (c.version, c.reason.clone()))
            .collect();
        assert_eq!(
            told, done,
            "round {round}: key {} trail and history",
            key.name
        );
    }
    for key in &keys {
        let versions = inv.versions(key.id).unwrap();
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(
            numbers, expected,
            "round {round}: key {} numbering",
            key.name
        );
        let active: Vec<u32> = versions
            .iter()
            .filter(|v| v.state == KeyState::Active)
            .map(|v| v.version)
            .collect();
        assert_eq!(
            active,
            [versions.len() as u32],
            "round {round}: key {} ({}) must have exactly its newest version active",
            key.name,
            key.state
        );
        assert!(
            matches!(key.state, KeyState::Active | KeyState::Suspended),
            "round {round}: key {} is {}",
            key.name,
            key.state
        );
        if versions.len() > 1 {
            assert_eq!(
                key.rotated_at,
                Some(versions.last().unwrap().created_at),
                "round {round}: key {} rotated_at",
                key.name
            );
        }
        let history = inv.history(key.id).unwrap();
        let last_key_change = history.iter().rev().find(|c| c.version.is_none()).unwrap();
        assert_eq!(last_key_change.to, key.state, "round {round}");
        for v in &versions {
            let last = history
                .iter()
                .rev()
                .find(|c| c.version == Some(v.version))
                .unwrap_or_else(|| panic!("round {round}: version {} has no history", v.version));
            assert_eq!(last.to, v.state, "round {round}: version {}", v.version);
            assert_eq!(
                v.state == KeyState::Destroyed,
                v.destroyed_at.is_some(),
                "round {round}: version {} destroyed_at",
                v.version
            );
        }
    }
}

/// The child: lifecycle writes on random keys until killed.
fn worker(path: &Path) {
    let inv = SqliteInventory::open(path).expect("the worker opens the store");
    let ids: Vec<i64> = inv
        .keys(&KeyFilter::default())
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    // On a line of its own: the harness has printed "test <name> ... "
    // without a newline.
    let mut out = std::io::stdout();
    writeln!(out, "\n{READY}")
        .and_then(|()| out.flush())
        .unwrap();
    let mut rng = Rng::new();
    let deadline = Instant::now() + WORKER_LIFETIME;
    while Instant::now() < deadline {
        let id = ids[rng.below(ids.len() as u64) as usize];
        let key = inv.key_by_id(id).unwrap().unwrap();
        let versions = inv.versions(id).unwrap();
        let at = now();
        // One change: the key (expected `from`, moving to `to`) and
        // `moves`, with one trail record per history row it writes.
        let apply = |to: Option<KeyState>, moves: Vec<VersionChange>, reason: &str| {
            let mut trail = Vec::new();
            if to.is_some() {
                trail.push(record(&key.name, None, reason));
            }
            for m in &moves {
                let v = match m {
                    VersionChange::Add(v) => v.version,
                    VersionChange::Move { version, .. } => *version,
                };
                trail.push(record(&key.name, Some(v), reason));
            }
            let rotated = moves.iter().any(|m| matches!(m, VersionChange::Add(_)));
            inv.apply(&LifecycleChange {
                key: KeyChange::Update {
                    key_id: id,
                    expected: key.state,
                    to,
                    code: None,
                },
                versions: moves,
                dates: DateUpdates {
                    next_rotation: Some(at + 3600),
                    rotated_at: rotated.then_some(at),
                    ..Default::default()
                },
                actor: "worker".into(),
                reason: reason.into(),
                at,
                trail,
            })
            .unwrap();
        };
        match (rng.below(10), key.state) {
            (0..=3, KeyState::Active) => {
                let next = versions.len() as u32 + 1;
                let demote = if rng.below(4) == 0 {
                    KeyState::Compromised
                } else {
                    KeyState::Deactivated
                };
                let mut moves: Vec<VersionChange> = versions
                    .iter()
                    .filter(|v| v.state < demote)
                    .map(|v| VersionChange::Move {
                        version: v.version,
                        from: v.state,
                        to: demote,
                    })
                    .collect();
                moves.push(VersionChange::Add(KeyVersion {
                    key_id: id,
                    version: next,
                    backend_id: format!("k{id}-v{next}").into_bytes(),
                    backend_label: key.name.clone(),
                    state: KeyState::Active,
                    created_at: at,
                    deactivated_at: None,
                    destroyed_at: None,
                    fingerprint: None,
                }));
                apply(None, moves, &format!("rotation to version {next}"));
            }
            (4..=5, KeyState::Active) => apply(Some(KeyState::Suspended), Vec::new(), "suspend"),
            (_, KeyState::Suspended) => apply(Some(KeyState::Active), Vec::new(), "resume"),
            (6, _) => inv.touch(id, at).unwrap(),
            (7, _) => {
                let grant = Grant {
                    key_id: id,
                    application: "app".into(),
                    operations: vec![keyward_domain::Operation::Sign],
                    expires_at: Some(at + 60),
                };
                if inv.grants(id).unwrap().is_empty() {
                    inv.grant(&grant, "worker").unwrap();
                } else {
                    inv.revoke_grant(id, "app", "worker").unwrap();
                }
            }
            _ => {
                // Destroy an old version that is no longer used.
                let old = versions
                    .iter()
                    .find(|v| matches!(v.state, KeyState::Deactivated | KeyState::Compromised));
                if let Some(v) = old {
                    let destroy = VersionChange::Move {
                        version: v.version,
                        from: v.state,
                        to: KeyState::Destroyed,
                    };
                    apply(None, vec![destroy], "destroy old version");
                }
            }
        }
    }
}
