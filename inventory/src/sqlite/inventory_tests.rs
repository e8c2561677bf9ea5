//! Unit tests of [`SqliteInventory`] through the [`Inventory`] trait, and of
//! the schema machinery.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use crate::schema::{Migration, MIGRATIONS};
use crate::*;
use keyward_domain::{ApprovalStatus, Decision, KeyState, Operation, Purpose};

const T0: i64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, SqliteInventory) {
    let dir = tempfile::tempdir().unwrap();
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    (dir, inv)
}

fn draft(token: &str, name: &str) -> KeyRecord {
    KeyRecord {
        id: 0,
        name: name.into(),
        token: token.into(),
        owner: "payments".into(),
        purpose: Purpose::Signing,
        class: "tls-server".into(),
        algorithm: "ec:p256".parse().unwrap(),
        state: KeyState::Active,
        created_at: T0,
        activated_at: Some(T0),
        rotated_at: None,
        deactivated_at: None,
        protect_until: Some(T0 + 86_400),
        process_until: None,
        next_rotation: Some(T0 + 3_600),
        scope: vec!["pci-dss".into(), "gdpr".into()],
        last_used_at: None,
        backup_allowed: false,
        recovery_until: None,
        reason_code: None,
    }
}

fn backend(id: &[u8]) -> KeyVersion {
    KeyVersion {
        key_id: 0,
        version: 0,
        backend_id: id.to_vec(),
        backend_label: "label".into(),
        state: KeyState::Active,
        created_at: T0,
        deactivated_at: None,
        destroyed_at: None,
        fingerprint: None,
    }
}

fn new_key(inv: &SqliteInventory, name: &str, id: &[u8]) -> KeyRecord {
    create(inv, &draft("tok", name), &backend(id), "admin").unwrap()
}

/// A new key and its version 1, as one change without trail records.
fn create(
    inv: &SqliteInventory,
    key: &KeyRecord,
    first: &KeyVersion,
    actor: &str,
) -> Result<KeyRecord> {
    let first = KeyVersion {
        version: if first.version == 0 { 1 } else { first.version },
        ..first.clone()
    };
    inv.apply(&LifecycleChange {
        key: KeyChange::Create(Box::new(key.clone())),
        versions: vec![VersionChange::Add(first)],
        dates: DateUpdates::default(),
        actor: actor.into(),
        reason: "created".into(),
        at: key.created_at,
        trail: Vec::new(),
    })
    .map(|done| done.key)
}

/// A change of key `key_id` (expected `expected`, moving to `to`) and of
/// `versions`, by alice at T0 + 100, with `trail`.
fn change(
    key_id: i64,
    expected: KeyState,
    to: Option<KeyState>,
    versions: Vec<VersionChange>,
    trail: Vec<AuditEvent>,
) -> LifecycleChange {
    LifecycleChange {
        key: KeyChange::Update {
            key_id,
            expected,
            to,
            code: None,
        },
        versions,
        dates: DateUpdates::default(),
        actor: "alice".into(),
        reason: "test".into(),
        at: T0 + 100,
        trail,
    }
}

/// The key's own move from `from` to `to`.
fn key_move(key_id: i64, from: KeyState, to: KeyState) -> LifecycleChange {
    change(key_id, from, Some(to), Vec::new(), Vec::new())
}

/// Version `version`'s move, the key staying in `key_state`.
fn version_move(
    key_id: i64,
    key_state: KeyState,
    version: u32,
    from: KeyState,
    to: KeyState,
) -> LifecycleChange {
    change(
        key_id,
        key_state,
        None,
        vec![VersionChange::Move { version, from, to }],
        Vec::new(),
    )
}

/// A lifecycle record of the trail, as the agent writes one.
fn record(key: &str, version: Option<u32>, reason: &str) -> AuditEvent {
    AuditEvent {
        at: T0 + 100,
        micros: 0,
        kind: AuditKind::Lifecycle,
        actor: Actor::Scheduler,
        token: Some("tok".into()),
        key: Some(key.into()),
        key_version: version,
        operation: "rotate".into(),
        mechanism: None,
        result: 0,
        reason: reason.into(),
        count: 1,
        span_us: 0,
    }
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn states(inv: &SqliteInventory, key_id: i64) -> Vec<KeyState> {
    inv.versions(key_id)
        .unwrap()
        .iter()
        .map(|v| v.state)
        .collect()
}

// ---- opening, schema, files ------------------------------------------------

#[test]
fn open_creates_a_private_wal_store_at_the_latest_schema() {
    let (dir, inv) = store();
    let path = dir.path().join("inventory.sqlite");
    assert_eq!(inv.path(), path);
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as u32);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    new_key(&inv, "k", b"1");
    // SQLite gives the WAL the database's mode.
    let wal = std::fs::metadata(dir.path().join("inventory.sqlite-wal")).unwrap();
    assert_eq!(wal.permissions().mode() & 0o777, 0o600);
    let conn = inv.conn();
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
}

#[test]
fn an_existing_loose_file_is_tightened_to_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    drop(SqliteInventory::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteInventory::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_new_store_is_made_where_no_file_is_and_a_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    let key = new_key(&inv, "k", b"1");
    drop(inv);
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(inv.key_by_id(key.id).unwrap(), Some(key.clone()));
    assert_eq!(inv.history(key.id).unwrap().len(), 2);
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn an_empty_file_is_a_truncated_store_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let inv = SqliteInventory::open(&path).unwrap();
    new_key(&inv, "k", b"1");
    drop(inv);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = SqliteInventory::open(&path).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("empty"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");
}

#[test]
fn a_store_path_that_is_a_directory_or_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    std::fs::create_dir(&path).unwrap();
    let err = SqliteInventory::open(&path).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
    assert!(
        std::fs::read_dir(&path).unwrap().next().is_none(),
        "left as it was"
    );
    std::fs::remove_dir(&path).unwrap();

    let other = dir.path().join("other.sqlite");
    let inv = SqliteInventory::open(&other).unwrap();
    new_key(&inv, "k", b"1");
    drop(inv);
    let before = std::fs::read(&other).unwrap();
    std::os::unix::fs::symlink(&other, &path).unwrap();
    let err = SqliteInventory::open(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("symbolic link") && text.contains(&path.display().to_string()),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&other).unwrap(),
        before,
        "the target is untouched"
    );
    // A dangling link is refused too, and nothing is created behind it.
    std::fs::remove_file(&path).unwrap();
    let gone = dir.path().join("gone.sqlite");
    std::os::unix::fs::symlink(&gone, &path).unwrap();
    assert!(SqliteInventory::open(&path).is_err());
    assert!(!gone.exists(), "nothing created through the link");
}

#[test]
fn a_later_migration_step_applies_on_reopen_and_then_old_code_refuses_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let key = new_key(&SqliteInventory::open(&path).unwrap(), "k", b"1");
    let mut steps = MIGRATIONS.to_vec();
    steps.push(Migration {
        description: "a future table",
        sql: "CREATE TABLE future (id INTEGER PRIMARY KEY, action TEXT NOT NULL) STRICT;",
    });
    let newer = SqliteInventory::open_with(&path, &steps).unwrap();
    assert_eq!(newer.schema_version().unwrap(), SCHEMA_VERSION + 1);
    assert_eq!(newer.key_by_id(key.id).unwrap(), Some(key));
    newer
        .conn()
        .execute("INSERT INTO future (action) VALUES ('destroy')", [])
        .unwrap();
    drop(newer);
    match SqliteInventory::open(&path) {
        Err(Error::TooNew { found, known, .. }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn a_failing_migration_step_leaves_the_previous_version_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    drop(SqliteInventory::open(&path).unwrap());
    let mut steps = MIGRATIONS.to_vec();
    steps.push(Migration {
        description: "broken",
        sql: "CREATE TABLE half (x INTEGER); SELECT no_such_function();",
    });
    let err = SqliteInventory::open_with(&path, &steps).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(
        text.contains("broken") && text.contains("inventory.sqlite"),
        "{text}"
    );
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    let half: i64 = inv
        .conn()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'half'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(half, 0, "the failed step's first statement was rolled back");
}

#[test]
fn a_store_from_a_newer_build_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    drop(SqliteInventory::open(&path).unwrap());
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteInventory::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::TooNew { found: 99, .. }),
        "expected TooNew, got {err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    let version: u32 = raw(&path)
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99, "untouched");
}

fn assert_corrupt(path: &PathBuf) {
    match SqliteInventory::open(path) {
        Err(e @ Error::Corrupt { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_garbage_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    assert_corrupt(&path);
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "left as it was");
}

#[test]
fn a_damaged_store_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let inv = SqliteInventory::open(&path).unwrap();
    for i in 0..50 {
        new_key(&inv, &format!("key-{i}"), format!("id-{i}").as_bytes());
    }
    drop(inv); // the last close checkpoints the WAL into the file
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 3 * page);
    for b in &mut bytes[page + 16..2 * page] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt(&path);
}

#[test]
fn another_applications_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    raw(&path)
        .execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
        .unwrap();
    assert_corrupt(&path);
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteInventory::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
}

// ---- keys ------------------------------------------------------------------

#[test]
fn create_key_stores_the_record_its_first_version_and_two_history_rows() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "web", b"\x01\x02");
    assert!(key.id > 0);
    assert_eq!(
        key,
        KeyRecord {
            id: key.id,
            ..draft("tok", "web")
        }
    );
    assert_eq!(inv.key("tok", "web").unwrap(), Some(key.clone()));
    assert_eq!(inv.key_by_id(key.id).unwrap(), Some(key.clone()));
    assert_eq!(inv.key("other", "web").unwrap(), None);
    assert_eq!(inv.key_by_id(key.id + 1).unwrap(), None);
    let versions = inv.versions(key.id).unwrap();
    assert_eq!(
        versions,
        vec![KeyVersion {
            key_id: key.id,
            version: 1,
            ..backend(b"\x01\x02")
        }]
    );
    let history = inv.history(key.id).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].version, history[0].from, history[0].to),
        (None, None, KeyState::Active)
    );
    assert_eq!(
        (history[1].version, history[1].from, history[1].to),
        (Some(1), None, KeyState::Active)
    );
    assert_eq!(history[0].actor, "admin");
    assert!(history[0].seq < history[1].seq);
}

#[test]
fn a_taken_name_or_cka_id_on_the_same_token_is_exists() {
    let (_dir, inv) = store();
    new_key(&inv, "web", b"1");
    let err = create(&inv, &draft("tok", "web"), &backend(b"2"), "admin").unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    assert!(err.to_string().contains("\"web\""), "{err}");
    let err = create(&inv, &draft("tok", "mail"), &backend(b"1"), "admin").unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    assert!(err.to_string().contains("CKA_ID 31"), "{err}");
    // Another token has its own names and CKA_IDs.
    create(&inv, &draft("other", "web"), &backend(b"1"), "admin").unwrap();
    assert_eq!(inv.keys(&KeyFilter::default()).unwrap().len(), 2);
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn create_key_refuses_bad_drafts() {
    let (_dir, inv) = store();
    let cases: Vec<(KeyRecord, KeyVersion, &str)> = vec![
        (draft("tok", ""), backend(b"1"), "admin"),
        (draft("", "k"), backend(b"1"), "admin"),
        (draft("tok", "k"), backend(b""), "admin"),
        (draft("tok", "k"), backend(b"1"), ""),
        (
            KeyRecord {
                state: KeyState::Destroyed,
                ..draft("tok", "k")
            },
            backend(b"1"),
            "admin",
        ),
        (
            draft("tok", "k"),
            KeyVersion {
                version: 2,
                ..backend(b"1")
            },
            "admin",
        ),
    ];
    for (key, version, actor) in cases {
        let err = create(&inv, &key, &version, actor).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
    assert!(inv.keys(&KeyFilter::default()).unwrap().is_empty());
}

#[test]
fn keys_filters_by_token_state_and_class() {
    let (_dir, inv) = store();
    let a = new_key(&inv, "b-key", b"1");
    let b = new_key(&inv, "a-key", b"2");
    let c = create(
        &inv,
        &KeyRecord {
            class: "code-signing".into(),
            state: KeyState::PreActivation,
            ..draft("t2", "c")
        },
        &backend(b"3"),
        "admin",
    )
    .unwrap();
    let names = |f: KeyFilter| -> Vec<String> {
        inv.keys(&f).unwrap().into_iter().map(|k| k.name).collect()
    };
    assert_eq!(
        names(KeyFilter::default()),
        ["c", "a-key", "b-key"],
        "by token, then name"
    );
    assert_eq!(
        names(KeyFilter {
            token: Some("tok".into()),
            ..Default::default()
        }),
        ["a-key", "b-key"]
    );
    assert_eq!(
        names(KeyFilter {
            state: Some(KeyState::PreActivation),
            ..Default::default()
        }),
        ["c"]
    );
    assert_eq!(
        names(KeyFilter {
            class: Some("tls-server".into()),
            state: Some(KeyState::Active),
            token: Some("tok".into()),
        }),
        ["a-key", "b-key"]
    );
    assert!(names(KeyFilter {
        class: Some("none".into()),
        ..Default::default()
    })
    .is_empty());
    assert_ne!(a.id, b.id);
    assert_ne!(b.id, c.id);
}

#[test]
fn version_by_backend_id_finds_the_key_and_version_on_its_token_only() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"v1");
    inv.apply(&rotation(
        key.id,
        2,
        b"v2",
        &[(1, KeyState::Active, KeyState::Deactivated)],
    ))
    .unwrap();
    let (k, v) = inv.version_by_backend_id("tok", b"v2").unwrap().unwrap();
    assert_eq!(v, inv.versions(key.id).unwrap()[1]);
    assert_eq!((v.version, v.key_id), (2, key.id));
    assert_eq!(k.id, key.id);
    assert_eq!(k.rotated_at, Some(T0 + 10));
    let (_, v) = inv.version_by_backend_id("tok", b"v1").unwrap().unwrap();
    assert_eq!((v.version, v.state), (1, KeyState::Deactivated));
    assert_eq!(inv.version_by_backend_id("other", b"v1").unwrap(), None);
    assert_eq!(inv.version_by_backend_id("tok", b"v3").unwrap(), None);
    // The lookup is served by the unique (token, backend_id) index.
    let conn = inv.conn();
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT * FROM key_versions v JOIN keys k ON k.id = v.key_id
              WHERE v.token = 'tok' AND v.backend_id = x'7631'",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("USING INDEX"), "{plan}");
}

// ---- lifecycle changes ---------------------------------------------------------

#[test]
fn a_key_move_stamps_dates_and_appends_history() {
    let (_dir, inv) = store();
    let key = create(
        &inv,
        &KeyRecord {
            state: KeyState::PreActivation,
            activated_at: None,
            ..draft("tok", "k")
        },
        &backend(b"1"),
        "admin",
    )
    .unwrap();
    let done = inv
        .apply(&LifecycleChange {
            dates: DateUpdates {
                protect_until: Some(T0 + 5),
                next_rotation: Some(T0 + 6),
                ..Default::default()
            },
            ..key_move(key.id, KeyState::PreActivation, KeyState::Active)
        })
        .unwrap();
    assert_eq!(done.history.len(), 1);
    let row = &done.history[0];
    assert_eq!(row.from, Some(KeyState::PreActivation));
    assert_eq!(row.to, KeyState::Active);
    assert_eq!((row.actor.as_str(), row.reason.as_str()), ("alice", "test"));
    assert_eq!(done.trail, None);
    let k = inv.key_by_id(key.id).unwrap().unwrap();
    assert_eq!(done.key, k);
    assert_eq!(k.state, KeyState::Active);
    assert_eq!(k.activated_at, Some(T0 + 100), "first activation stamped");
    assert_eq!(k.protect_until, Some(T0 + 5));
    assert_eq!(k.next_rotation, Some(T0 + 6));
    assert_eq!(k.process_until, None);

    inv.apply(&key_move(key.id, KeyState::Active, KeyState::Suspended))
        .unwrap();
    inv.apply(&LifecycleChange {
        at: T0 + 200,
        ..key_move(key.id, KeyState::Suspended, KeyState::Active)
    })
    .unwrap();
    let k = inv.key_by_id(key.id).unwrap().unwrap();
    assert_eq!(
        k.activated_at,
        Some(T0 + 100),
        "a resume keeps the first activation"
    );
    inv.apply(&key_move(key.id, KeyState::Active, KeyState::Deactivated))
        .unwrap();
    let k = inv.key_by_id(key.id).unwrap().unwrap();
    assert_eq!(k.deactivated_at, Some(T0 + 100));

    let history = inv.history(key.id).unwrap();
    let moves: Vec<_> = history
        .iter()
        .filter(|c| c.version.is_none())
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(
        moves,
        [
            (None, KeyState::PreActivation),
            (Some(KeyState::PreActivation), KeyState::Active),
            (Some(KeyState::Active), KeyState::Suspended),
            (Some(KeyState::Suspended), KeyState::Active),
            (Some(KeyState::Active), KeyState::Deactivated),
        ]
    );
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn a_stale_expected_state_is_a_conflict_and_changes_nothing() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let before = inv.history(key.id).unwrap();
    let err = inv
        .apply(&key_move(key.id, KeyState::Suspended, KeyState::Active))
        .unwrap_err();
    match &err {
        Error::Conflict {
            expected, found, ..
        } => assert_eq!((expected.as_str(), found.as_str()), ("suspended", "active")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let err = inv
        .apply(&version_move(
            key.id,
            KeyState::Active,
            1,
            KeyState::Deactivated,
            KeyState::Destroyed,
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(inv.history(key.id).unwrap(), before);
    assert_eq!(inv.key_by_id(key.id).unwrap().unwrap(), key);
}

#[test]
fn concurrent_changes_from_the_same_state_let_exactly_one_win() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let inv = Arc::new(inv);
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (inv, barrier) = (inv.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Each racer rotates to version 2 with a CKA_ID of its own.
                inv.apply(&change(
                    key.id,
                    KeyState::Active,
                    None,
                    vec![
                        VersionChange::Move {
                            version: 1,
                            from: KeyState::Active,
                            to: KeyState::Deactivated,
                        },
                        VersionChange::Add(KeyVersion {
                            version: 2,
                            ..backend(format!("racer-{i}").as_bytes())
                        }),
                    ],
                    vec![record("k", Some(2), "from none to active: racing")],
                ))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, Error::Conflict { .. })));
    assert_eq!(inv.versions(key.id).unwrap().len(), 2);
    assert_eq!(inv.head().unwrap().0, 1, "one record: the winner's");
}

#[test]
fn the_store_judges_no_move_only_refuses_what_is_no_change() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    // Which moves an action makes is the policy's: the store applies any
    // move from the expected state.
    inv.apply(&key_move(key.id, KeyState::Active, KeyState::Destroyed))
        .unwrap();
    inv.apply(&key_move(
        key.id,
        KeyState::Destroyed,
        KeyState::PreActivation,
    ))
    .unwrap();
    for bad in [
        key_move(key.id, KeyState::PreActivation, KeyState::PreActivation),
        change(
            key.id,
            KeyState::PreActivation,
            None,
            Vec::new(),
            Vec::new(),
        ),
        version_move(
            key.id,
            KeyState::PreActivation,
            1,
            KeyState::Active,
            KeyState::Active,
        ),
        change(
            key.id,
            KeyState::PreActivation,
            None,
            vec![
                VersionChange::Move {
                    version: 1,
                    from: KeyState::Active,
                    to: KeyState::Suspended,
                },
                VersionChange::Move {
                    version: 1,
                    from: KeyState::Suspended,
                    to: KeyState::Active,
                },
            ],
            Vec::new(),
        ),
        LifecycleChange {
            actor: String::new(),
            ..key_move(key.id, KeyState::PreActivation, KeyState::Active)
        },
        change(
            key.id,
            KeyState::PreActivation,
            None,
            vec![VersionChange::Add(KeyVersion {
                state: KeyState::Destroyed,
                version: 2,
                ..backend(b"2")
            })],
            Vec::new(),
        ),
    ] {
        let err = inv.apply(&bad).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{bad:?}: {err:?}");
    }
    let err = inv
        .apply(&key_move(key.id + 9, KeyState::Active, KeyState::Suspended))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = inv
        .apply(&version_move(
            key.id,
            KeyState::PreActivation,
            7,
            KeyState::Active,
            KeyState::Suspended,
        ))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn version_moves_stamp_the_versions_dates() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let done = inv
        .apply(&LifecycleChange {
            dates: DateUpdates {
                process_until: Some(T0 + 9),
                ..Default::default()
            },
            ..version_move(
                key.id,
                KeyState::Active,
                1,
                KeyState::Active,
                KeyState::Deactivated,
            )
        })
        .unwrap();
    assert_eq!(done.history[0].version, Some(1));
    inv.apply(&LifecycleChange {
        at: T0 + 300,
        ..version_move(
            key.id,
            KeyState::Active,
            1,
            KeyState::Deactivated,
            KeyState::Destroyed,
        )
    })
    .unwrap();
    let v = &inv.versions(key.id).unwrap()[0];
    assert_eq!(v.state, KeyState::Destroyed);
    assert_eq!(v.deactivated_at, Some(T0 + 100));
    assert_eq!(v.destroyed_at, Some(T0 + 300));
    let k = inv.key_by_id(key.id).unwrap().unwrap();
    assert_eq!(k.state, KeyState::Active, "the key's own state is separate");
    assert_eq!(k.process_until, Some(T0 + 9), "dates apply to the key");
    assert!(inv.check().unwrap().is_empty());
}

// ---- rotation ----------------------------------------------------------------

/// A rotation of key `key_id` (active) to version `next` with CKA_ID
/// `id`: the given older versions demoted, `rotated_at` set.
fn rotation(
    key_id: i64,
    next: u32,
    id: &[u8],
    demote: &[(u32, KeyState, KeyState)],
) -> LifecycleChange {
    let mut versions: Vec<VersionChange> = demote
        .iter()
        .map(|&(version, from, to)| VersionChange::Move { version, from, to })
        .collect();
    versions.push(VersionChange::Add(KeyVersion {
        version: next,
        created_at: T0 + 10,
        ..backend(id)
    }));
    LifecycleChange {
        dates: DateUpdates {
            rotated_at: Some(T0 + 10),
            next_rotation: Some(T0 + 20),
            ..Default::default()
        },
        reason: format!("rotation to version {next}"),
        ..change(key_id, KeyState::Active, None, versions, Vec::new())
    }
}

#[test]
fn a_rotation_adds_the_new_version_and_demotes_older_ones_in_one_go() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let done = inv
        .apply(&rotation(
            key.id,
            2,
            b"2",
            &[(1, KeyState::Active, KeyState::Deactivated)],
        ))
        .unwrap();
    assert_eq!(done.history.len(), 2);
    assert_eq!(
        states(&inv, key.id),
        [KeyState::Deactivated, KeyState::Active]
    );
    let versions = inv.versions(key.id).unwrap();
    assert_eq!(versions[0].deactivated_at, Some(T0 + 100));
    assert_eq!((versions[1].key_id, versions[1].version), (key.id, 2));
    let k = inv.key_by_id(key.id).unwrap().unwrap();
    assert_eq!(
        (k.rotated_at, k.next_rotation),
        (Some(T0 + 10), Some(T0 + 20))
    );
    inv.apply(&rotation(
        key.id,
        3,
        b"3",
        &[
            (1, KeyState::Deactivated, KeyState::Compromised),
            (2, KeyState::Active, KeyState::Compromised),
        ],
    ))
    .unwrap();
    assert_eq!(
        states(&inv, key.id),
        [
            KeyState::Compromised,
            KeyState::Compromised,
            KeyState::Active
        ]
    );
    let rows = inv
        .history(key.id)
        .unwrap()
        .into_iter()
        .filter(|c| c.reason == "rotation to version 3")
        .count();
    assert_eq!(rows, 3, "two demotions and the new version");
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn rotation_refusals() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    new_key(&inv, "other", b"x");
    let err = inv.apply(&rotation(key.id, 5, b"2", &[])).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }),
        "not the next number: {err:?}"
    );
    let err = inv.apply(&rotation(key.id, 2, b"x", &[])).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    let err = inv.apply(&rotation(key.id, 0, b"2", &[])).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let err = inv.apply(&rotation(999, 2, b"2", &[])).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    inv.apply(&key_move(key.id, KeyState::Active, KeyState::Suspended))
        .unwrap();
    let err = inv.apply(&rotation(key.id, 2, b"2", &[])).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }),
        "the key moved: {err:?}"
    );
    let mut two = rotation(key.id, 2, b"2", &[]);
    two.versions.push(VersionChange::Add(KeyVersion {
        version: 3,
        ..backend(b"3")
    }));
    assert!(matches!(inv.apply(&two), Err(Error::Invalid(_))));
    assert_eq!(inv.versions(key.id).unwrap().len(), 1);
    assert_eq!(inv.history(key.id).unwrap().len(), 3);
}

// ---- one transaction: state, history and trail -----------------------------------

/// A key with versions 1 and 2 deactivated and 3 active, and one record
/// in the trail.
fn three_versions(inv: &SqliteInventory) -> KeyRecord {
    let key = new_key(inv, "k", b"1");
    for (next, id) in [(2u32, b"2"), (3, b"3")] {
        inv.apply(&rotation(
            key.id,
            next,
            id,
            &[(next - 1, KeyState::Active, KeyState::Deactivated)],
        ))
        .unwrap();
    }
    inv.append(&[record("k", None, "before")], true).unwrap();
    inv.key_by_id(key.id).unwrap().unwrap()
}

/// Everything a lifecycle change could touch.
fn snapshot(
    inv: &SqliteInventory,
    key_id: i64,
) -> (KeyRecord, Vec<KeyVersion>, Vec<StateChange>, (u64, Hash)) {
    (
        inv.key_by_id(key_id).unwrap().unwrap(),
        inv.versions(key_id).unwrap(),
        inv.history(key_id).unwrap(),
        inv.head().unwrap(),
    )
}

/// A revocation: the key and every version compromised, one trail record
/// per move.
fn revocation(key_id: i64, last_from: KeyState) -> LifecycleChange {
    let moves = [
        (1, KeyState::Deactivated),
        (2, KeyState::Deactivated),
        (3, last_from),
    ];
    let mut trail = vec![record("k", None, "from active to compromised: leaked")];
    trail.extend(
        moves
            .iter()
            .map(|&(v, from)| record("k", Some(v), &format!("from {from} to compromised: leaked"))),
    );
    change(
        key_id,
        KeyState::Active,
        Some(KeyState::Compromised),
        moves
            .iter()
            .map(|&(version, from)| VersionChange::Move {
                version,
                from,
                to: KeyState::Compromised,
            })
            .collect(),
        trail,
    )
}

#[test]
fn a_conflict_in_the_last_version_leaves_key_versions_history_and_trail_untouched() {
    let (_dir, inv) = store();
    let key = three_versions(&inv);
    let before = snapshot(&inv, key.id);
    // Version 3 is active, not suspended: the last part of the change is
    // stale, after the key and two versions were already moved inside
    // the transaction.
    let err = inv
        .apply(&revocation(key.id, KeyState::Suspended))
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("version 3"), "{err}");
    assert_eq!(
        snapshot(&inv, key.id),
        before,
        "nothing of the change is kept"
    );
    assert!(inv.check().unwrap().is_empty());
    let report = inv.verify(&|_, _| true).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 1);

    // The same change, right this time: all of it, trail included.
    let done = inv.apply(&revocation(key.id, KeyState::Active)).unwrap();
    assert_eq!(done.history.len(), 4);
    assert_eq!(done.trail, Some((2, 5)));
    assert_eq!(inv.head().unwrap().0, 5);
    assert_eq!(done.key.state, KeyState::Compromised);
    assert_eq!(states(&inv, key.id), [KeyState::Compromised; 3]);
    let records = inv.tail(4).unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.event.key_version)
            .collect::<Vec<_>>(),
        [None, Some(1), Some(2), Some(3)]
    );
    let report = inv.verify(&|_, _| true).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 5);
    assert!(inv.check().unwrap().is_empty());
}

#[test]
fn a_trail_record_the_store_refuses_refuses_the_whole_change() {
    let (_dir, inv) = store();
    let key = three_versions(&inv);
    let before = snapshot(&inv, key.id);
    let mut bad = revocation(key.id, KeyState::Active);
    bad.trail[3].operation = String::new();
    assert!(matches!(inv.apply(&bad), Err(Error::Invalid(_))));
    let mut long = revocation(key.id, KeyState::Active);
    long.trail[0].reason = "x".repeat(audit::MAX_FIELD_LEN + 1);
    assert!(matches!(inv.apply(&long), Err(Error::Invalid(_))));
    assert_eq!(snapshot(&inv, key.id), before);
}

#[test]
fn a_trail_that_cannot_be_written_leaves_the_key_unchanged() {
    let (dir, inv) = store();
    let key = three_versions(&inv);
    let before = snapshot(&inv, key.id);
    // Another process holds the trail's table hostage: the trail's insert
    // fails inside the change's transaction.
    raw(&dir.path().join("inventory.sqlite"))
        .execute_batch(
            "CREATE TRIGGER audit_jam BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'the trail is jammed'); END;",
        )
        .unwrap();
    let err = inv
        .apply(&revocation(key.id, KeyState::Active))
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert_eq!(snapshot(&inv, key.id), before);
    raw(&dir.path().join("inventory.sqlite"))
        .execute_batch("DROP TRIGGER audit_jam;")
        .unwrap();
    inv.apply(&revocation(key.id, KeyState::Active)).unwrap();
    assert!(inv.verify(&|_, _| true).unwrap().is_ok());
}

#[test]
fn a_new_key_is_created_with_its_version_and_its_records_or_not_at_all() {
    let (_dir, inv) = store();
    let create_with = |name: &str, id: &[u8], trail: Vec<AuditEvent>| LifecycleChange {
        key: KeyChange::Create(Box::new(draft("tok", name))),
        versions: vec![VersionChange::Add(KeyVersion {
            version: 1,
            ..backend(id)
        })],
        dates: DateUpdates::default(),
        actor: "admin".into(),
        reason: "created".into(),
        at: T0,
        trail,
    };
    let done = inv
        .apply(&create_with(
            "a",
            b"1",
            vec![
                record("a", None, "from none to active: created"),
                record("a", Some(1), "from none to active: created"),
            ],
        ))
        .unwrap();
    assert_eq!(done.trail, Some((1, 2)));
    assert_eq!(done.history.len(), 2);
    // The CKA_ID is taken: no key, no record.
    let err = inv
        .apply(&create_with(
            "b",
            b"1",
            vec![record("b", None, "from none to active: created")],
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    assert_eq!(inv.key("tok", "b").unwrap(), None);
    assert_eq!(inv.head().unwrap().0, 2);
    // A new key comes with its versions 1, 2, ... in order, and nothing else.
    let mut two = create_with("c", b"3", Vec::new());
    two.versions.push(VersionChange::Add(KeyVersion {
        version: 3,
        ..backend(b"4")
    }));
    assert!(matches!(inv.apply(&two), Err(Error::Invalid(_))));
    let mut none = create_with("c", b"3", Vec::new());
    none.versions.clear();
    assert!(matches!(inv.apply(&none), Err(Error::Invalid(_))));
    assert_eq!(inv.keys(&KeyFilter::default()).unwrap().len(), 1);
}

// ---- grants, use, history ------------------------------------------------------

#[test]
fn grants_are_added_replaced_listed_and_revoked() {
    let (_dir, inv) = store();
    let a = new_key(&inv, "a", b"1");
    let b = new_key(&inv, "b", b"2");
    let grant = |key_id, app: &str, ops: &[&str], exp| Grant {
        key_id,
        application: app.into(),
        operations: ops.iter().map(|s| s.parse().unwrap()).collect(),
        expires_at: exp,
    };
    inv.grant(&grant(a.id, "nginx", &["sign"], None), "alice")
        .unwrap();
    inv.grant(&grant(a.id, "backup", &["wrap"], Some(T0)), "alice")
        .unwrap();
    inv.grant(&grant(b.id, "nginx", &["sign", "verify"], None), "bob")
        .unwrap();
    // Replaces nginx's grant on a.
    inv.grant(
        &grant(a.id, "nginx", &["sign", "verify"], Some(T0 + 1)),
        "bob",
    )
    .unwrap();
    assert_eq!(
        inv.grants(a.id).unwrap(),
        [
            grant(a.id, "backup", &["wrap"], Some(T0)),
            grant(a.id, "nginx", &["sign", "verify"], Some(T0 + 1)),
        ]
    );
    assert_eq!(
        inv.grants_for_application("nginx").unwrap(),
        [
            grant(a.id, "nginx", &["sign", "verify"], Some(T0 + 1)),
            grant(b.id, "nginx", &["sign", "verify"], None),
        ]
    );
    inv.revoke_grant(a.id, "nginx", "carol").unwrap();
    assert_eq!(inv.grants_for_application("nginx").unwrap().len(), 1);
    let err = inv.revoke_grant(a.id, "nginx", "carol").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = inv
        .grant(&grant(999, "nginx", &["sign"], None), "alice")
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = inv
        .grant(&grant(a.id, "nginx", &[], None), "alice")
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let err = inv
        .grant(&grant(a.id, "", &["sign"], None), "alice")
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let log: Vec<(String, String)> = inv
        .conn()
        .prepare("SELECT action, actor FROM grant_changes ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let log: Vec<(&str, &str)> = log.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        log,
        [
            ("grant", "alice"),
            ("grant", "alice"),
            ("grant", "bob"),
            ("grant", "bob"),
            ("revoke", "carol")
        ]
    );
}

#[test]
fn touch_records_the_latest_use_without_a_full_sync() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    inv.touch(key.id, T0 + 50).unwrap();
    inv.touch(key.id, T0 + 40).unwrap();
    assert_eq!(
        inv.key_by_id(key.id).unwrap().unwrap().last_used_at,
        Some(T0 + 50)
    );
    let err = inv.touch(key.id + 1, T0).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let sync: i64 = inv
        .conn()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "lifecycle writes are back at synchronous=FULL");
}

#[test]
fn history_is_append_only_and_check_sees_tampering() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    assert_eq!(inv.history(key.id + 1).unwrap(), []);
    assert_eq!(inv.versions(key.id + 1).unwrap(), []);
    assert_eq!(inv.grants(key.id + 1).unwrap(), []);
    {
        let conn = inv.conn();
        for sql in [
            "UPDATE state_changes SET to_state = 'destroyed'",
            "DELETE FROM state_changes",
        ] {
            let err = conn.execute(sql, []).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        conn.execute("UPDATE keys SET state = 'suspended'", [])
            .unwrap();
    }
    let problems = inv.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("is suspended but its history ends at"),
        "{problems:?}"
    );
}

#[test]
fn the_store_refuses_invalid_state_strings() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let err = inv
        .conn()
        .execute("UPDATE keys SET state = 'asleep'", [])
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
    assert!(inv.key_by_id(key.id).unwrap().is_some());
}

// ---- Stored domain values ---------------------------------------------------------

/// The `Error::Data` message of a read, which must name the row and the value.
fn data_error<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(Error::Data(message)) => message,
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn the_domain_values_are_stored_as_their_text_forms() {
    let (dir, inv) = store();
    let key = new_key(&inv, "signer", b"id-1");
    let db = raw(&dir.path().join("inventory.sqlite"));
    let row: (String, String, String) = db
        .query_row(
            "SELECT purpose, algorithm, state FROM keys WHERE id = ?1",
            [key.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(row, ("signing".into(), "ec:p256".into(), "active".into()));
    let version: String = db
        .query_row(
            "SELECT state FROM key_versions WHERE key_id = ?1",
            [key.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "active");
}

#[test]
fn an_unknown_stored_value_is_a_clear_error_naming_the_key_and_changes_nothing() {
    let (dir, inv) = store();
    let key = new_key(&inv, "signer", b"id-1");
    new_key(&inv, "other", b"id-2");
    let history = inv.history(key.id).unwrap().len();
    let db = raw(&dir.path().join("inventory.sqlite"));
    // Values written by something else (a newer build, a hand edit); the
    // state columns' CHECK has to be switched off to write one.
    db.execute_batch(
        "PRAGMA ignore_check_constraints = ON;
         UPDATE keys SET purpose = 'sorcery' WHERE name = 'signer';",
    )
    .unwrap();
    let message = data_error(inv.key("tok", "signer"));
    assert!(
        message.contains("key \"signer\" on token \"tok\"")
            && message.contains("purpose")
            && message.contains("\"sorcery\""),
        "{message}"
    );
    data_error(inv.keys(&KeyFilter::default()));
    // The other key reads as before.
    assert_eq!(
        inv.key("tok", "other").unwrap().unwrap().purpose,
        Purpose::Signing
    );

    db.execute_batch(
        "UPDATE keys SET purpose = 'signing', algorithm = 'ec:p999' WHERE name = 'signer';",
    )
    .unwrap();
    let message = data_error(inv.key("tok", "signer"));
    assert!(
        message.contains("algorithm") && message.contains("ec:p999"),
        "{message}"
    );

    db.execute_batch(
        "UPDATE keys SET algorithm = 'ec:p256', state = 'retired' WHERE name = 'signer';",
    )
    .unwrap();
    let message = data_error(inv.key("tok", "signer"));
    assert!(
        message.contains("signer") && message.contains("state") && message.contains("\"retired\""),
        "{message}"
    );
    // A change of that key is refused with the same kind of error, and
    // leaves the stored value and the history as they were.
    let message = data_error(inv.apply(&key_move(key.id, KeyState::Active, KeyState::Suspended)));
    assert!(message.contains("retired"), "{message}");
    let stored: String = db
        .query_row("SELECT state FROM keys WHERE id = ?1", [key.id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, "retired");
    assert_eq!(inv.history(key.id).unwrap().len(), history);

    db.execute_batch(
        "UPDATE keys SET state = 'active' WHERE name = 'signer';
         UPDATE key_versions SET state = 'lost' WHERE backend_id = CAST('id-1' AS BLOB);",
    )
    .unwrap();
    let message = data_error(inv.versions(key.id));
    assert!(
        message.contains(&format!("version 1 of key {}", key.id)) && message.contains("\"lost\""),
        "{message}"
    );
    let message = data_error(inv.apply(&version_move(
        key.id,
        KeyState::Active,
        1,
        KeyState::Active,
        KeyState::Suspended,
    )));
    assert!(message.contains("lost"), "{message}");
    assert_eq!(inv.history(key.id).unwrap().len(), history);
    // Put right, the key reads and changes again.
    db.execute_batch("UPDATE key_versions SET state = 'active' WHERE key_id = 1;")
        .unwrap();
    inv.apply(&key_move(key.id, KeyState::Active, KeyState::Suspended))
        .unwrap();
}

#[test]
fn an_unknown_stored_operation_is_a_clear_error_naming_the_grant() {
    let (_dir, inv) = store();
    let key = new_key(&inv, "k", b"1");
    let grant = Grant {
        key_id: key.id,
        application: "nginx".into(),
        operations: vec![Operation::Sign, Operation::Verify],
        expires_at: None,
    };
    inv.grant(&grant, "alice").unwrap();
    let stored: String = inv
        .conn()
        .query_row("SELECT operations FROM grants", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, r#"["sign","verify"]"#);
    assert_eq!(inv.grants(key.id).unwrap(), vec![grant]);
    inv.conn()
        .execute("UPDATE grants SET operations = '[\"sign\",\"steal\"]'", [])
        .unwrap();
    let message = data_error(inv.grants(key.id));
    assert!(
        message.contains(&format!("grant of key {} to \"nginx\"", key.id))
            && message.contains("\"steal\""),
        "{message}"
    );
}

#[test]
fn approval_requests_are_recorded_listed_and_unique() {
    let (dir, inv) = store();
    let key = new_key(&inv, "k", b"id-1");
    let req = ApprovalRecord {
        id: "00ff".into(),
        action: "resume".into(),
        target: "tok/k".into(),
        key_id: Some(key.id),
        parameters: "{}".into(),
        requester: "uid:0".into(),
        reason: "found again".into(),
        created_at: T0,
        expires_at: T0 + 86_400,
        status: ApprovalStatus::Pending,
        outcome: String::new(),
        closed_at: None,
    };
    inv.create_request(&req).unwrap();
    assert!(matches!(inv.create_request(&req), Err(Error::Exists(_))));
    assert_eq!(inv.request("00ff").unwrap(), Some(req.clone()));
    assert_eq!(
        inv.requests(Some(ApprovalStatus::Pending)).unwrap(),
        vec![req.clone()]
    );
    assert!(inv
        .requests(Some(ApprovalStatus::Executed))
        .unwrap()
        .is_empty());
    assert!(inv.request("nope").unwrap().is_none());
    // A status this build does not know, written by something else.
    let db = raw(&dir.path().join("inventory.sqlite"));
    db.execute_batch(
        "PRAGMA ignore_check_constraints = ON;
         UPDATE requests SET status = 'whatever' WHERE id = '00ff';",
    )
    .unwrap();
    let message = data_error(inv.request("00ff"));
    assert!(
        message.contains("request 00ff") && message.contains("\"whatever\""),
        "{message}"
    );
    data_error(inv.requests(None));
}

#[test]
fn a_fingerprint_is_replaced_only_from_the_one_stored() {
    let (_dir, inv) = store();
    let k = new_key(&inv, "fp", b"\x01");
    let err = inv
        .replace_fingerprint(k.id, 1, &[7u8; 32], &[8u8; 32])
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }),
        "none stored: {err:?}"
    );
    inv.set_fingerprint(k.id, 1, &[7u8; 32]).unwrap();
    let err = inv
        .replace_fingerprint(k.id, 1, &[6u8; 32], &[8u8; 32])
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let err = inv
        .replace_fingerprint(k.id, 1, &[7u8; 32], &[8u8; 3])
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    inv.replace_fingerprint(k.id, 1, &[7u8; 32], &[8u8; 32])
        .unwrap();
    assert_eq!(
        inv.versions(k.id).unwrap()[0].fingerprint,
        Some(vec![8u8; 32])
    );
}

#[test]
fn a_fingerprint_is_recorded_once_and_survives_a_reopen() {
    let (dir, inv) = store();
    let k = new_key(&inv, "fp", b"\x01");
    assert_eq!(inv.versions(k.id).unwrap()[0].fingerprint, None);
    let fp = [7u8; 32];
    inv.set_fingerprint(k.id, 1, &fp).unwrap();
    inv.set_fingerprint(k.id, 1, &fp).unwrap();
    let err = inv.set_fingerprint(k.id, 1, &[8u8; 32]).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let err = inv.set_fingerprint(k.id, 1, &[8u8; 3]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let err = inv.set_fingerprint(k.id, 2, &fp).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    // A rotation records the new version's fingerprint with it.
    let next = KeyVersion {
        fingerprint: Some(vec![9u8; 32]),
        ..backend(b"\x02")
    };
    inv.apply(&LifecycleChange {
        versions: vec![VersionChange::Add(KeyVersion { version: 2, ..next })],
        ..change(k.id, KeyState::Active, None, Vec::new(), Vec::new())
    })
    .unwrap();
    drop(inv);
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    let v = inv.versions(k.id).unwrap();
    assert_eq!(v[0].fingerprint.as_deref(), Some(&fp[..]));
    assert_eq!(v[1].fingerprint.as_deref(), Some(&[9u8; 32][..]));
}

#[test]
fn an_agent_key_is_recorded_once() {
    let (_dir, inv) = store();
    assert_eq!(inv.agent_key("audit").unwrap(), None);
    inv.set_agent_key("audit", "kw", &[1u8; 32], T0).unwrap();
    let err = inv
        .set_agent_key("audit", "kw", &[2u8; 32], T0)
        .unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    assert_eq!(
        inv.agent_key("audit").unwrap(),
        Some(("kw".to_owned(), vec![1u8; 32]))
    );
}

#[test]
fn object_owners_are_counted_per_application_and_survive_a_reopen() {
    let (dir, inv) = store();
    let (a, b) = ([1u8; 32], [2u8; 32]);
    inv.add_object_owner("kw", &a, "web", T0).unwrap();
    inv.add_object_owner("kw", &a, "web", T0).unwrap();
    inv.add_object_owner("kw", &a, "mail", T0).unwrap();
    inv.add_object_owner("kw", &b, "web", T0).unwrap();
    let err = inv
        .add_object_owner("kw", &[3u8; 31], "web", T0)
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let err = inv.add_object_owner("kw", &a, "", T0).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    drop(inv);
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    let owner = |identity: [u8; 32], application: &str, count: u32| ObjectOwner {
        token: "kw".into(),
        identity: identity.to_vec(),
        application: application.into(),
        count,
    };
    assert_eq!(
        inv.object_owners().unwrap(),
        vec![owner(a, "mail", 1), owner(a, "web", 2), owner(b, "web", 1)]
    );
    // Destroying goes down one object at a time; the last one ends it.
    inv.remove_object_owner("kw", &a, "web").unwrap();
    inv.remove_object_owner("kw", &b, "web").unwrap();
    assert_eq!(
        inv.object_owners().unwrap(),
        vec![owner(a, "mail", 1), owner(a, "web", 1)]
    );
    inv.remove_object_owner("kw", &a, "web").unwrap();
    let err = inv.remove_object_owner("kw", &a, "web").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = inv.remove_object_owner("other", &a, "mail").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(inv.object_owners().unwrap(), vec![owner(a, "mail", 1)]);
}

// ---- dual control: decisions and execution ---------------------------------

fn pending(inv: &SqliteInventory, id: &str, key_id: Option<i64>) -> ApprovalRecord {
    let req = ApprovalRecord {
        id: id.into(),
        action: "resume".into(),
        target: "tok/k".into(),
        key_id,
        parameters: "{}".into(),
        requester: "alice".into(),
        reason: "found again".into(),
        created_at: T0,
        expires_at: T0 + 1000,
        status: ApprovalStatus::Pending,
        outcome: String::new(),
        closed_at: None,
    };
    inv.create_request(&req).unwrap();
    req
}

fn decision(who: &str, decision: Decision, at: i64) -> DecisionRecord {
    DecisionRecord {
        administrator: who.into(),
        decision,
        signature: Some(vec![1, 2, 3]),
        at,
    }
}

fn status(inv: &SqliteInventory, id: &str) -> ApprovalStatus {
    inv.request(id).unwrap().unwrap().status
}

#[test]
fn approvals_count_once_each_and_the_quorum_approves_once() {
    let (_dir, inv) = store();
    pending(&inv, "r1", None);
    let approve =
        |who: &str| inv.decide_request("r1", &decision(who, Decision::Approve, T0 + 5), 2);
    assert_eq!(approve("bob").unwrap(), Decided::Counted { approvals: 1 });
    // The same administrator again changes nothing.
    assert_eq!(approve("bob").unwrap(), Decided::Repeated);
    assert_eq!(status(&inv, "r1"), ApprovalStatus::Pending);
    assert_eq!(
        approve("carol").unwrap(),
        Decided::Approved { approvals: 2 }
    );
    assert_eq!(status(&inv, "r1"), ApprovalStatus::Approved);
    // Once approved, further decisions are not recorded.
    assert_eq!(
        approve("dave").unwrap(),
        Decided::Closed(ApprovalStatus::Approved)
    );
    let who: Vec<_> = inv
        .decisions("r1")
        .unwrap()
        .into_iter()
        .map(|d| d.administrator)
        .collect();
    assert_eq!(who, ["bob", "carol"]);
    assert!(matches!(
        inv.decide_request("nope", &decision("bob", Decision::Approve, T0), 1),
        Err(Error::NotFound(_))
    ));
    // Decisions cannot be rewritten behind the store's back.
    let db = raw(inv.path());
    assert!(db
        .execute("UPDATE decisions SET decision = 'deny'", [])
        .is_err());
    assert!(db.execute("DELETE FROM decisions", []).is_err());
}

#[test]
fn a_denial_closes_the_request_and_expiry_is_enforced_at_decision_time() {
    let (_dir, inv) = store();
    pending(&inv, "r1", None);
    assert_eq!(
        inv.decide_request("r1", &decision("bob", Decision::Deny, T0 + 1), 1)
            .unwrap(),
        Decided::Denied
    );
    let r = inv.request("r1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.outcome.as_str()),
        (ApprovalStatus::Denied, "denied by bob")
    );
    pending(&inv, "r2", None);
    // At the expiry time the request is expired: nothing recorded.
    assert_eq!(
        inv.decide_request("r2", &decision("bob", Decision::Approve, T0 + 1000), 1)
            .unwrap(),
        Decided::Closed(ApprovalStatus::Expired)
    );
    assert_eq!(status(&inv, "r2"), ApprovalStatus::Expired);
    assert!(inv.decisions("r2").unwrap().is_empty());
    // Cancel: only from pending.
    pending(&inv, "r3", None);
    assert!(inv
        .close_request(
            "r3",
            ApprovalStatus::Pending,
            ApprovalStatus::Cancelled,
            "withdrawn",
            T0 + 2
        )
        .unwrap());
    assert!(!inv
        .close_request(
            "r3",
            ApprovalStatus::Pending,
            ApprovalStatus::Cancelled,
            "again",
            T0 + 3
        )
        .unwrap());
    let r = inv.request("r3").unwrap().unwrap();
    assert_eq!(
        (r.status, r.outcome.as_str()),
        (ApprovalStatus::Cancelled, "withdrawn")
    );
}

#[test]
fn concurrent_approvals_through_separate_connections_approve_exactly_once() {
    let (dir, inv) = store();
    for round in 0..8 {
        let id = format!("r{round}");
        pending(&inv, &id, None);
        let path = dir.path().join("inventory.sqlite");
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (path, barrier, id) = (path.clone(), barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    let inv = SqliteInventory::open(&path).unwrap();
                    barrier.wait();
                    inv.decide_request(
                        &id,
                        &decision(&format!("admin{i}"), Decision::Approve, T0 + 1),
                        2,
                    )
                    .unwrap()
                })
            })
            .collect();
        let results: Vec<Decided> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let approved = results
            .iter()
            .filter(|d| matches!(d, Decided::Approved { .. }))
            .count();
        assert_eq!(approved, 1, "{results:?}");
        assert_eq!(status(&inv, &id), ApprovalStatus::Approved);
    }
}

#[test]
fn an_approved_change_is_applied_with_its_request_once() {
    let (_dir, inv) = store();
    let k = new_key(&inv, "k", b"id-1");
    assert_eq!(k.state, KeyState::Active);
    inv.apply(&key_move(k.id, KeyState::Active, KeyState::Suspended))
        .unwrap();
    pending(&inv, "r1", Some(k.id));
    let resume = key_move(k.id, KeyState::Suspended, KeyState::Active);
    // Not approved yet: nothing happens.
    let e = inv.apply_approved(&resume, "r1", "resumed").unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().state,
        KeyState::Suspended
    );
    inv.decide_request("r1", &decision("bob", Decision::Approve, T0 + 1), 1)
        .unwrap();
    inv.apply_approved(&resume, "r1", "resumed").unwrap();
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().state,
        KeyState::Active
    );
    let r = inv.request("r1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.outcome.as_str()),
        (ApprovalStatus::Executed, "resumed")
    );
    // A second execution (a restart that tries again) changes nothing.
    inv.apply(&key_move(k.id, KeyState::Active, KeyState::Suspended))
        .unwrap();
    let e = inv.apply_approved(&resume, "r1", "resumed").unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().state,
        KeyState::Suspended
    );
    // The request's own update fails when the key's does: neither is kept.
    pending(&inv, "r2", Some(k.id));
    inv.decide_request("r2", &decision("bob", Decision::Approve, T0 + 1), 1)
        .unwrap();
    let stale = key_move(k.id, KeyState::Active, KeyState::Suspended);
    assert!(inv.apply_approved(&stale, "r2", "x").is_err());
    assert_eq!(status(&inv, "r2"), ApprovalStatus::Approved);
}

#[test]
fn step_7_keeps_old_requests_moving_the_reason_and_renaming_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let old = SqliteInventory::open_with(&path, &MIGRATIONS[..6]).unwrap();
    drop(old);
    let db = raw(&path);
    db.execute_batch(
        "INSERT INTO requests (id, action, target, parameters, requester, created_at, expires_at, status)
         VALUES ('a', 'resume', 'tok/k', '{\"reason\":\"laptop found\"}', 'uid:0', 1, 2, 'pending'),
                ('b', 'destroy', 'tok/j', '{}', 'uid:0', 1, 2, 'rejected');",
    )
    .unwrap();
    drop(db);
    let inv = SqliteInventory::open(&path).unwrap();
    let a = inv.request("a").unwrap().unwrap();
    assert_eq!(
        (a.reason.as_str(), a.parameters.as_str()),
        ("laptop found", "{}")
    );
    assert_eq!(a.status, ApprovalStatus::Pending);
    let b = inv.request("b").unwrap().unwrap();
    assert_eq!((b.reason.as_str(), b.status), ("", ApprovalStatus::Denied));
}

#[test]
fn one_pending_request_per_action_and_target_even_when_asked_at_once() {
    let (dir, inv) = store();
    let path = dir.path().join("inventory.sqlite");
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let inv = SqliteInventory::open(&path).unwrap();
                let req = ApprovalRecord {
                    id: format!("r{i}"),
                    action: "destroy".into(),
                    target: "tok/k".into(),
                    key_id: None,
                    parameters: "{}".into(),
                    requester: "alice".into(),
                    reason: String::new(),
                    created_at: T0,
                    expires_at: T0 + 10,
                    status: ApprovalStatus::Pending,
                    outcome: String::new(),
                    closed_at: None,
                };
                barrier.wait();
                inv.create_sole_request(&req)
            })
        })
        .collect();
    let made = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(Result::is_ok)
        .count();
    assert_eq!(made, 1);
    assert_eq!(
        inv.requests(Some(ApprovalStatus::Pending)).unwrap().len(),
        1
    );
    // Another action, or another target, is another request; an expired
    // one no longer blocks.
    let mut other = pending(&inv, "x1", None);
    assert_eq!(other.action, "resume");
    other.id = "x2".into();
    other.target = "tok/j".into();
    inv.create_sole_request(&other).unwrap();
    other.id = "x3".into();
    other.action = "destroy".into();
    other.target = "tok/k".into();
    other.created_at = T0 + 10;
    other.expires_at = T0 + 20;
    inv.create_sole_request(&other).unwrap();
    // Without the rule (one signature's request each), two at once.
    other.id = "x4".into();
    inv.create_request(&other).unwrap();
    assert!(matches!(
        inv.create_sole_request(&ApprovalRecord {
            id: "x5".into(),
            ..other
        }),
        Err(Error::Exists(_))
    ));
}

#[test]
fn step_8_adds_an_empty_recovery_window_to_the_keys_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let old = SqliteInventory::open_with(&path, &MIGRATIONS[..7]).unwrap();
    drop(old);
    raw(&path)
        .execute_batch(
            "INSERT INTO keys (token, name, owner, purpose, class, algorithm, state, created_at,
                               scope, backup_allowed)
             VALUES ('tok', 'old', 'admin', 'signing', 'c', 'ec:p256', 'compromised', 1, '[]', 0);",
        )
        .unwrap();
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    let old = inv.key("tok", "old").unwrap().unwrap();
    assert_eq!(
        (old.state, old.recovery_until),
        (KeyState::Compromised, None)
    );
}

/// A recovery window is a date of a change that moves no state: it is
/// set (and set again, later or earlier) without a history row, and a
/// change that gives no window keeps the one there.
#[test]
fn a_recovery_window_is_set_by_a_change_and_kept_by_the_next() {
    let (_dir, inv) = store();
    let k = new_key(&inv, "k", b"1");
    inv.apply(&key_move(k.id, KeyState::Active, KeyState::Compromised))
        .unwrap();
    let rows = inv.history(k.id).unwrap().len();
    let window = |until: i64| LifecycleChange {
        dates: DateUpdates {
            recovery_until: Some(until),
            ..DateUpdates::default()
        },
        ..change(k.id, KeyState::Compromised, None, Vec::new(), Vec::new())
    };
    let applied = inv.apply(&window(T0 + 600)).unwrap();
    assert_eq!(applied.key.recovery_until, Some(T0 + 600));
    assert!(applied.history.is_empty());
    assert_eq!(inv.history(k.id).unwrap().len(), rows);
    inv.apply(&window(T0 + 60)).unwrap();
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().recovery_until,
        Some(T0 + 60)
    );
    // A move that gives no window leaves it (enforcement reads it in the
    // compromised state only).
    inv.apply(&key_move(k.id, KeyState::Compromised, KeyState::Destroyed))
        .unwrap();
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().recovery_until,
        Some(T0 + 60)
    );
}

#[test]
fn an_approved_grant_is_recorded_with_its_requests_execution_once() {
    let (_dir, inv) = store();
    let k = new_key(&inv, "k", b"1");
    let grant = Grant {
        key_id: k.id,
        application: "web".into(),
        operations: vec![Operation::Sign],
        expires_at: None,
    };
    // Not approved: nothing is written.
    pending(&inv, "g1", Some(k.id));
    let e = inv
        .grant_approved(&grant, "alice", "g1", "granted")
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert!(inv.grants(k.id).unwrap().is_empty());
    assert_eq!(status(&inv, "g1"), ApprovalStatus::Pending);
    inv.decide_request("g1", &decision("bob", Decision::Approve, T0 + 1), 1)
        .unwrap();
    inv.grant_approved(&grant, "alice", "g1", "granted")
        .unwrap();
    assert_eq!(inv.grants(k.id).unwrap(), vec![grant.clone()]);
    let r = inv.request("g1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.outcome.as_str()),
        (ApprovalStatus::Executed, "granted")
    );
    // Carried out once: a second execution writes nothing.
    inv.revoke_grant(k.id, "web", "alice").unwrap();
    let e = inv
        .grant_approved(&grant, "alice", "g1", "granted")
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert!(inv.grants(k.id).unwrap().is_empty());
}

#[test]
fn a_restored_key_is_created_with_its_versions_in_order_older_ones_destroyed() {
    let (_dir, inv) = store();
    let v = |n: u32, id: &[u8], state: KeyState| {
        VersionChange::Add(KeyVersion {
            version: n,
            state,
            destroyed_at: (state == KeyState::Destroyed).then_some(T0),
            ..backend(id)
        })
    };
    let with = |name: &str, versions: Vec<VersionChange>| LifecycleChange {
        key: KeyChange::Create(Box::new(draft("tok", name))),
        versions,
        dates: DateUpdates::default(),
        actor: "admin".into(),
        reason: "restored".into(),
        at: T0,
        trail: Vec::new(),
    };
    for (versions, what) in [
        (vec![v(2, b"\x01", KeyState::Active)], "not from 1"),
        (
            vec![
                v(1, b"\x01", KeyState::Active),
                v(3, b"\x02", KeyState::Active),
            ],
            "a gap",
        ),
        (
            vec![
                v(1, b"\x01", KeyState::Active),
                v(2, b"\x02", KeyState::Destroyed),
            ],
            "newest destroyed",
        ),
        (
            vec![v(1, b"\x01", KeyState::Destroyed)],
            "a single destroyed version",
        ),
    ] {
        let err = inv.apply(&with("bad", versions)).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{what}: {err:?}");
    }
    assert!(inv.key("tok", "bad").unwrap().is_none());
    let done = inv
        .apply(&with(
            "restored",
            vec![
                v(1, b"\x01", KeyState::Destroyed),
                v(2, b"\x02", KeyState::Active),
            ],
        ))
        .unwrap();
    let versions = inv.versions(done.key.id).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].state, KeyState::Destroyed);
    assert_eq!(versions[0].destroyed_at, Some(T0));
    assert_eq!(versions[1].state, KeyState::Active);
}

fn certificate(key_id: i64, version: u32, digest: u8, not_after: i64) -> CertificateRecord {
    CertificateRecord {
        key_id,
        version,
        subject: "CN=web,O=Example".into(),
        not_before: 1_000,
        not_after,
        sha256: vec![digest; 32],
        imported_at: 2_000,
    }
}

/// Step 9 keeps what a version's certificates say: recorded, listed per
/// key, replaced only when told; unknown versions and bad digests refused.
#[test]
fn certificates_are_recorded_per_version_and_replaced_when_told() {
    let (_dir, inv) = store();
    assert!(inv.schema_version().unwrap() >= 9);
    let k = new_key(&inv, "k", b"1");
    let other = new_key(&inv, "other", b"2");
    inv.record_certificate(&certificate(k.id, 1, 1, 5_000), false)
        .unwrap();
    inv.record_certificate(&certificate(k.id, 1, 2, 4_000), false)
        .unwrap();
    inv.record_certificate(&certificate(other.id, 1, 3, 9_000), false)
        .unwrap();
    let mine = inv.certificates(Some(k.id)).unwrap();
    assert_eq!(
        mine.iter().map(|c| c.not_after).collect::<Vec<_>>(),
        [4_000, 5_000]
    );
    assert_eq!(inv.certificates(None).unwrap().len(), 3);
    inv.record_certificate(&certificate(k.id, 1, 4, 6_000), true)
        .unwrap();
    assert_eq!(
        inv.certificates(Some(k.id)).unwrap(),
        [certificate(k.id, 1, 4, 6_000)]
    );
    assert!(matches!(
        inv.record_certificate(&certificate(k.id, 7, 5, 1), false),
        Err(Error::NotFound(_))
    ));
    let mut short = certificate(k.id, 1, 6, 1);
    short.sha256.pop();
    assert!(matches!(
        inv.record_certificate(&short, false),
        Err(Error::Invalid(_))
    ));
    assert_eq!(inv.certificates(Some(other.id)).unwrap().len(), 1);
}

/// Step 10: the reason code of the move that put a key in its state is
/// kept with it; the next move replaces it (a move without one clears
/// it); a code without a move is refused; rows from before the step read
/// as none.
#[test]
fn a_moves_reason_code_is_kept_until_the_next_move() {
    use keyward_domain::ReasonCode;
    let (_dir, inv) = store();
    let k = new_key(&inv, "k", b"1");
    assert_eq!(k.reason_code, None);
    let with = |from, to, code| {
        let mut c = key_move(k.id, from, to);
        if let KeyChange::Update { code: c, .. } = &mut c.key {
            *c = code;
        }
        c
    };
    let hold = Some(ReasonCode::CertificateHold);
    let moved = inv
        .apply(&with(KeyState::Active, KeyState::Suspended, hold))
        .unwrap();
    assert_eq!(moved.key.reason_code, hold);
    assert_eq!(inv.key_by_id(k.id).unwrap().unwrap().reason_code, hold);
    inv.apply(&with(KeyState::Suspended, KeyState::Active, None))
        .unwrap();
    assert_eq!(inv.key_by_id(k.id).unwrap().unwrap().reason_code, None);
    let compromise = Some(ReasonCode::KeyCompromise);
    inv.apply(&with(KeyState::Active, KeyState::Compromised, compromise))
        .unwrap();
    let stored = inv.key("tok", "k").unwrap().unwrap();
    assert_eq!(stored.reason_code, compromise);
    // Stored as the RFC's name.
    let text: String = inv
        .conn()
        .query_row("SELECT reason_code FROM keys WHERE id = ?1", [k.id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(text, "keyCompromise");
    // A code alone changes nothing: refused.
    let mut alone = version_move(
        k.id,
        KeyState::Compromised,
        1,
        KeyState::Compromised,
        KeyState::Destroyed,
    );
    if let KeyChange::Update { code, .. } = &mut alone.key {
        *code = Some(ReasonCode::Superseded);
    }
    assert!(matches!(inv.apply(&alone), Err(Error::Invalid(_))));
    assert_eq!(
        inv.key_by_id(k.id).unwrap().unwrap().reason_code,
        compromise
    );
}

#[test]
fn keys_stored_before_reason_codes_read_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let old = SqliteInventory::open_with(&path, &MIGRATIONS[..9]).unwrap();
    old.conn()
        .execute(
            "INSERT INTO keys (token, name, owner, purpose, class, algorithm, state, created_at)
             VALUES ('t1', 'old', 'o', 'signing', 'c', 'ec:p256', 'compromised', 1)",
            [],
        )
        .unwrap();
    drop(old);
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), SCHEMA_VERSION);
    let key = inv.key("t1", "old").unwrap().unwrap();
    assert_eq!((key.state, key.reason_code), (KeyState::Compromised, None));
}
