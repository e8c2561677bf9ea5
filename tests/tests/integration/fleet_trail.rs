//! The audit trail and the report's queries of the fleet's shared
//! PostgreSQL store (`PgInventory`), held to the SQLite store's behaviour:
//! the same scenarios, written against `&dyn AuditLog`, run on both engines
//! and must give the same records and the same report rows. Then what only
//! a shared store meets: agents of several hosts appending at once (one
//! gap-free chain, each record carrying its writer's host), tampering by
//! the database's superuser past the append-only triggers, and the server
//! going away and coming back. No agent is needed; each scenario gets a
//! new database on a real throw-away server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_inventory::postgres::PgInventory;
use keyward_inventory::usage::{
    EventRow, Failures, HourRow, OperationRow, RecoveryUses, Span, UseRow, UsesAfter,
};
use keyward_inventory::{
    coalesce, Actor, Anchor, AuditEvent, AuditFilter, AuditKind, AuditLog, AuditRecord, Checkpoint,
    Error, Problem, ResultFilter, SqliteInventory,
};
use keyward_tests::postgres::PgServer;
use postgres::{Config, NoTls};
use sha2::{Digest, Sha256};

const T0: i64 = 1_700_000_000;

// ---- the two engines ------------------------------------------------------------

/// A SQLite store in a new temporary directory.
fn sqlite() -> (tempfile::TempDir, SqliteInventory) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).expect("open SQLite");
    (dir, inv)
}

/// The store on the database `config` names, as agent `host`.
fn pg_on(config: &Config, host: &str) -> PgInventory {
    let config = config.clone();
    PgInventory::open(Arc::new(move || config.connect(NoTls)), host)
        .unwrap_or_else(|e| panic!("open the PostgreSQL store as {host}: {e}"))
}

/// A PostgreSQL store on a new database of `pg`, as agent `host`, and the
/// database's settings.
fn pg(pg: &PgServer, host: &str) -> (Config, PgInventory) {
    let config = pg.new_database();
    let inv = pg_on(&config, host);
    (config, inv)
}

fn dbname(config: &Config) -> &str {
    config.get_dbname().expect("a database name")
}

// ---- events -----------------------------------------------------------------

fn app(name: &str, exe: &str) -> Actor {
    Actor::Application {
        name: name.into(),
        uid: 1000,
        gid: 1000,
        pid: 4242,
        exe: exe.into(),
    }
}

fn admin() -> Actor {
    Actor::Administrator {
        uid: 0,
        pid: 77,
        exe: "/usr/bin/keyward".into(),
    }
}

fn event(kind: AuditKind, at: i64, micros: u32, actor: Actor, operation: &str) -> AuditEvent {
    AuditEvent {
        at,
        micros,
        kind,
        actor,
        token: Some("prod".into()),
        key: Some("k".into()),
        key_version: Some(1),
        operation: operation.into(),
        mechanism: Some(0x1041),
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

fn sign(at: i64, micros: u32, who: &str, exe: &str, count: u32) -> AuditEvent {
    AuditEvent {
        count,
        span_us: if count > 1 { 1000 } else { 0 },
        ..event(AuditKind::Use, at, micros, app(who, exe), "sign")
    }
}

fn agent(at: i64, operation: &str) -> AuditEvent {
    AuditEvent {
        token: None,
        key: None,
        key_version: None,
        mechanism: None,
        ..event(AuditKind::Agent, at, 0, Actor::Agent, operation)
    }
}

/// The test stand-in for the HSM's audit key: a MAC with a fixed secret.
fn mac(message: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"test audit secret");
    h.update(message);
    h.finalize().to_vec()
}

fn check(message: &[u8], signature: &[u8]) -> bool {
    mac(message) == signature
}

/// A signed checkpoint of `log`'s head.
fn seal(log: &dyn AuditLog, created_at: i64) -> Checkpoint {
    let (seq, head) = log.head().expect("head");
    Checkpoint {
        seq,
        head,
        created_at,
        signature: mac(&keyward_inventory::checkpoint_message(
            seq, &head, created_at,
        )),
        signer: "audit-key".into(),
    }
}

/// Each record's place and event: what both engines must agree on (their
/// hashes differ: each trail has its own genesis, and the shared one's
/// records carry a host).
fn events_of(records: &[AuditRecord]) -> Vec<(u64, AuditEvent)> {
    records.iter().map(|r| (r.seq, r.event.clone())).collect()
}

// ---- scenarios on either engine ------------------------------------------------

/// Appends, head, tail and every query filter; returns the whole trail.
fn chain_and_queries(log: &dyn AuditLog) -> Vec<AuditRecord> {
    let (seq0, genesis) = log.head().expect("head of the empty trail");
    assert_eq!(seq0, 0);
    assert_eq!(log.append(&[], true).expect("empty append"), 0);
    assert_eq!(log.head().expect("head").1, genesis, "nothing appended");

    let mut refused = sign(T0 + 4, 0, "web", "/usr/bin/nginx", 1);
    refused.result = 0x30;
    let batch = [
        agent(T0, "start"),
        sign(T0 + 1, 10, "web", "/usr/bin/nginx", 1),
        sign(T0 + 2, 20, "batch", "/opt/batch", 1),
        AuditEvent {
            key: Some("other".into()),
            ..sign(T0 + 3, 30, "web", "/usr/bin/nginx", 1)
        },
        refused,
        AuditEvent {
            token: Some("staging".into()),
            ..event(AuditKind::Lifecycle, T0 + 5, 0, admin(), "rotate")
        },
    ];
    assert_eq!(log.append(&batch[..2], true).expect("append"), 2);
    assert_eq!(log.append(&batch[2..], false).expect("append"), 6);

    // An invalid event refuses the whole batch.
    let mut bad = agent(T0 + 6, "reload");
    bad.operation.clear();
    let err = log
        .append(&[agent(T0 + 6, "reload"), bad], true)
        .expect_err("an empty operation is refused");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let mut bad = agent(T0 + 6, "reload");
    bad.micros = 1_000_000;
    assert!(matches!(log.append(&[bad], true), Err(Error::Invalid(_))));
    let mut bad = agent(T0 + 6, "reload");
    bad.reason = "x".repeat(keyward_inventory::audit::MAX_FIELD_LEN + 1);
    assert!(matches!(log.append(&[bad], true), Err(Error::Invalid(_))));

    let (head_seq, head) = log.head().expect("head");
    assert_eq!(head_seq, 6, "nothing of a refused batch was written");
    let all = log.query(&AuditFilter::default()).expect("query all");
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].hash, head);
    assert_eq!(all[0].prev_hash, genesis);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.event, batch[i], "record {} round-trips", r.seq);
        if i > 0 {
            assert_eq!(r.prev_hash, all[i - 1].hash, "record {} is chained", r.seq);
        }
    }

    let tail = log.tail(2).expect("tail");
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(log.tail(100).expect("tail").len(), 6);
    assert!(log.tail(0).expect("tail 0").is_empty());

    let seqs = |f: AuditFilter| -> Vec<u64> {
        log.query(&f)
            .expect("query")
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    let key = |k: &str| AuditFilter {
        key: Some(k.into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(key("k")), [2, 3, 5, 6]);
    assert_eq!(seqs(key("other")), [4]);
    assert_eq!(seqs(key("none")), Vec::<u64>::new());
    assert_eq!(
        seqs(AuditFilter {
            token: Some("staging".into()),
            ..AuditFilter::default()
        }),
        [6]
    );
    assert_eq!(
        seqs(AuditFilter {
            application: Some("web".into()),
            ..AuditFilter::default()
        }),
        [2, 4, 5]
    );
    assert_eq!(
        seqs(AuditFilter {
            since: Some(T0 + 2),
            until: Some(T0 + 5),
            ..AuditFilter::default()
        }),
        [3, 4, 5]
    );
    assert_eq!(
        seqs(AuditFilter {
            result: ResultFilter::Denied,
            ..AuditFilter::default()
        }),
        [5]
    );
    assert_eq!(
        seqs(AuditFilter {
            result: ResultFilter::Ok,
            kinds: vec![AuditKind::Use],
            ..AuditFilter::default()
        }),
        [2, 3, 4]
    );
    assert_eq!(
        seqs(AuditFilter {
            kinds: vec![AuditKind::Agent, AuditKind::Lifecycle],
            ..AuditFilter::default()
        }),
        [1, 6]
    );
    assert_eq!(
        seqs(AuditFilter {
            after_seq: Some(3),
            limit: Some(2),
            ..AuditFilter::default()
        }),
        [4, 5]
    );
    assert_eq!(
        seqs(AuditFilter {
            key: Some("k".into()),
            application: Some("web".into()),
            result: ResultFilter::Ok,
            ..AuditFilter::default()
        }),
        [2]
    );

    let report = log.verify(&check).expect("verify");
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!((report.records, report.head_seq), (6, 6));
    assert_eq!((report.checkpoints_ok, report.unsealed), (0, 6));
    all
}

/// A batch of uses folded by `coalesce`: counts and spans round-trip and
/// the trail verifies.
fn coalesced_records(log: &dyn AuditLog) -> Vec<AuditRecord> {
    let uses: Vec<AuditEvent> = (0..5)
        .map(|i| sign(T0, 100 * i, "web", "/usr/bin/nginx", 1))
        .chain([sign(T0, 50, "batch", "/opt/batch", 1)])
        .collect();
    let folded = coalesce(uses);
    assert_eq!(folded.len(), 2);
    assert_eq!(log.append(&folded, false).expect("append"), 2);
    let all = log.tail(10).expect("tail");
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].event.count, all[0].event.span_us), (5, 400));
    assert_eq!((all[1].event.count, all[1].event.span_us), (1, 0));
    assert_eq!(log.verify(&check).expect("verify").first_bad, None);
    all
}

/// Checkpoints: the checks on storing one, and verify (anchored or not)
/// finding them. Returns what the walk reported, for the other engine.
fn checkpoints_and_anchors(log: &dyn AuditLog) -> Vec<String> {
    let mut seen = Vec::new();
    // The empty trail sealed at its genesis.
    let at_genesis = seal(log, T0);
    log.checkpoint(&at_genesis).expect("checkpoint at 0");
    for i in 0..4 {
        log.append(&[agent(T0 + i, "tick")], true).expect("append");
    }
    let at4 = seal(log, T0 + 10);

    let err = |cp: &Checkpoint| log.checkpoint(cp).expect_err("refused");
    let mut wrong = at4.clone();
    wrong.head[0] ^= 1;
    assert!(matches!(err(&wrong), Error::Conflict { .. }));
    let mut past = at4.clone();
    past.seq = 5;
    assert!(matches!(err(&past), Error::Invalid(_)));
    let mut unsigned = at4.clone();
    unsigned.signature.clear();
    assert!(matches!(err(&unsigned), Error::Invalid(_)));
    let mut nobody = at4.clone();
    nobody.signer.clear();
    assert!(matches!(err(&nobody), Error::Invalid(_)));
    log.checkpoint(&at4).expect("checkpoint at 4");
    // Never back: a seal below the last one is a conflict.
    let all = log.query(&AuditFilter::default()).expect("query");
    let at2 = Checkpoint {
        seq: 2,
        head: all[1].hash,
        created_at: T0 + 11,
        signature: mac(&keyward_inventory::checkpoint_message(
            2,
            &all[1].hash,
            T0 + 11,
        )),
        signer: "audit-key".into(),
    };
    assert!(matches!(err(&at2), Error::Conflict { .. }));

    log.append(&[agent(T0 + 20, "tick")], true).expect("append");
    let stored = log.checkpoints().expect("checkpoints");
    assert_eq!(stored, [at_genesis.clone(), at4.clone()]);
    assert_eq!(log.last_checkpoint().expect("last"), Some(at4.clone()));

    let report = log.verify(&check).expect("verify");
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!(report.checkpoints_ok, 2);
    assert_eq!((report.sealed_through, report.unsealed), (4, 1));
    seen.push(format!("{report:?}"));

    // A checkpoint forged without the key.
    let forged = |_: &[u8], _: &[u8]| false;
    let report = log.verify(&forged).expect("verify");
    let bad = report
        .first_bad
        .clone()
        .expect("a forged checkpoint is reported");
    assert_eq!(bad.problem, Problem::BadSignature { checkpoint: 0 });
    seen.push(format!("{report:?}"));

    // Anchors: the one kept holds; a different head, a seq past the end
    // and a bad signature do not.
    let anchor = Anchor::from(&at4);
    let report = log
        .verify_anchored(&check, std::slice::from_ref(&anchor))
        .expect("verify");
    assert_eq!((report.first_bad.clone(), report.anchors_ok), (None, 1));
    seen.push(format!("{report:?}"));
    let mut other = anchor.clone();
    other.head = all[0].hash;
    other.signature = mac(&keyward_inventory::checkpoint_message(
        4,
        &other.head,
        T0 + 10,
    ));
    let report = log.verify_anchored(&check, &[other]).expect("verify");
    let bad = report.first_bad.clone().expect("a mismatched anchor");
    assert_eq!(bad.problem, Problem::AnchorMismatch { anchor: 4 });
    seen.push(format!("{report:?}"));
    let mut beyond = anchor.clone();
    beyond.seq = 9;
    beyond.signature = mac(&keyward_inventory::checkpoint_message(
        9,
        &beyond.head,
        T0 + 10,
    ));
    let report = log.verify_anchored(&check, &[beyond]).expect("verify");
    let bad = report.first_bad.clone().expect("a missing anchor");
    assert_eq!(
        (bad.seq, bad.problem),
        (6, Problem::AnchorMissing { anchor: 9 })
    );
    seen.push(format!("{report:?}"));
    let mut unsigned = anchor;
    unsigned.signature = vec![1, 2, 3];
    let report = log.verify_anchored(&check, &[unsigned]).expect("verify");
    let bad = report.first_bad.clone().expect("an unsigned anchor");
    assert_eq!(bad.problem, Problem::AnchorBadSignature { anchor: 4 });
    seen.push(format!("{report:?}"));
    seen
}

/// Baseline `[T0, T0 + 100 s)`, window `[T0 + 100 s, T0 + 110 s)`.
const SPAN: Span = Span {
    baseline_from: T0 * 1_000_000,
    window_from: (T0 + 100) * 1_000_000,
    until: (T0 + 110) * 1_000_000,
};

/// What every report query answered.
#[derive(Debug, PartialEq)]
struct ReportRows {
    uses: Vec<UseRow>,
    uses_of_k: Vec<UseRow>,
    hours: Vec<HourRow>,
    operations: Vec<OperationRow>,
    no_operations: Vec<OperationRow>,
    admin_failures: Failures,
    use_failures: Failures,
    lifecycle: Vec<EventRow>,
    lifecycle_of_k: Vec<EventRow>,
    request: Option<EventRow>,
    no_request: Option<EventRow>,
    after: UsesAfter,
    after_v1: UsesAfter,
    after_recovery: UsesAfter,
}

/// A trail of uses (coalesced, failed, of unmanaged objects, by
/// applications whose names sort differently by byte and by language),
/// refusals, admin failures and requests, revocations and a recovery
/// window; then every report query.
fn report_rows(log: &dyn AuditLog) -> ReportRows {
    let mut events = vec![
        sign(T0 + 1, 0, "web", "/usr/bin/nginx", 5),
        // The last microsecond of the baseline and the first of the window.
        sign(T0 + 99, 999_999, "web", "/usr/bin/nginx", 1),
        sign(T0 + 100, 0, "web", "/usr/bin/nginx", 2),
        AuditEvent {
            result: 0x30,
            ..sign(T0 + 105, 7, "web", "/usr/bin/nginx", 1)
        },
        sign(T0 + 3600, 0, "Zeta", "/opt/zeta", 3),
        sign(T0 + 7200, 0, "alpha", "/opt/alpha", 1),
        AuditEvent {
            key: Some("id:ab12".into()),
            key_version: None,
            ..sign(T0 + 101, 0, "alpha", "/opt/alpha", 4)
        },
        AuditEvent {
            token: None,
            ..sign(T0 + 102, 0, "", "", 1)
        },
        // Outside the span altogether.
        sign(T0 - 50, 0, "web", "/usr/bin/nginx", 1),
        sign(T0 + 500, 0, "web", "/usr/bin/nginx", 1),
        AuditEvent {
            reason: "export refused".into(),
            result: 0x101,
            ..event(
                AuditKind::Refusal,
                T0 + 103,
                0,
                app("web", "/usr/bin/nginx"),
                "export",
            )
        },
        event(
            AuditKind::Use,
            T0 + 104,
            0,
            app("web", "/usr/bin/nginx"),
            "wrap",
        ),
        AuditEvent {
            result: 0x101,
            ..event(AuditKind::Admin, T0 + 50, 0, admin(), "grant")
        },
        AuditEvent {
            result: 0x101,
            ..event(AuditKind::Admin, T0 + 106, 0, admin(), "policy")
        },
        AuditEvent {
            result: 0x5,
            ..event(AuditKind::Admin, T0 - 10, 0, admin(), "grant")
        },
        AuditEvent {
            reason: "requested: key compromised on host 3".into(),
            ..event(AuditKind::Admin, T0 + 107, 0, admin(), "revoke")
        },
        AuditEvent {
            reason: "key compromised, not a request".into(),
            ..event(AuditKind::Admin, T0 + 107, 1, admin(), "revoke")
        },
    ];
    log.append(&events, false).expect("append the uses");
    let revoke = log
        .append(
            &[event(AuditKind::Lifecycle, T0 + 108, 0, admin(), "revoke")],
            true,
        )
        .expect("revoke");
    events.clear();
    events.extend([
        sign(T0 + 108, 5, "web", "/usr/bin/nginx", 2),
        AuditEvent {
            key_version: Some(2),
            ..sign(T0 + 108, 6, "web", "/usr/bin/nginx", 1)
        },
        event(AuditKind::Lifecycle, T0 + 108, 9, admin(), "recover"),
        event(
            AuditKind::Use,
            T0 + 108,
            10,
            app("web", "/usr/bin/nginx"),
            "verify",
        ),
        event(
            AuditKind::Use,
            T0 + 200,
            10,
            app("web", "/usr/bin/nginx"),
            "verify",
        ),
        event(AuditKind::Lifecycle, T0 + 109, 0, admin(), "backup"),
        AuditEvent {
            key: Some("other".into()),
            ..event(AuditKind::Lifecycle, T0 + 109, 1, admin(), "revoke")
        },
    ]);
    log.append(&events, true)
        .expect("append after the revocation");
    let recover = log
        .query(&AuditFilter {
            kinds: vec![AuditKind::Lifecycle],
            ..AuditFilter::default()
        })
        .expect("query")
        .into_iter()
        .find(|r| r.event.operation == "recover")
        .expect("the recover record")
        .seq;

    let rows = ReportRows {
        uses: log.use_rows(&SPAN, None).expect("use_rows"),
        uses_of_k: log.use_rows(&SPAN, Some("k")).expect("use_rows k"),
        hours: log.use_hours(&SPAN, None).expect("use_hours"),
        operations: log
            .operation_rows(&SPAN, None, &["export"], &["wrap"])
            .expect("operation_rows"),
        no_operations: log
            .operation_rows(&SPAN, Some("k"), &[], &[])
            .expect("operation_rows none"),
        admin_failures: log.failures(&SPAN, "admin", 2).expect("failures"),
        use_failures: log.failures(&SPAN, "use", 10).expect("failures"),
        lifecycle: log
            .lifecycle_rows(None, &["revoke", "backup"])
            .expect("lifecycle_rows"),
        lifecycle_of_k: log.lifecycle_rows(Some("k"), &[]).expect("lifecycle none"),
        request: log
            .request_before("prod", "k", revoke, "revoke", "compromised")
            .expect("request_before"),
        no_request: log
            .request_before("prod", "k", revoke, "revoke", "stolen")
            .expect("request_before"),
        after: log
            .uses_after("prod", "k", &[], revoke, None)
            .expect("uses_after"),
        after_v1: log
            .uses_after("prod", "k", &[1], revoke, None)
            .expect("uses_after v1"),
        after_recovery: log
            .uses_after(
                "prod",
                "k",
                &[],
                revoke,
                Some(RecoveryUses {
                    from: recover,
                    until: T0 + 150,
                }),
            )
            .expect("uses_after recovery"),
    };

    // What the trail says, on either engine.
    let web = rows
        .uses
        .iter()
        .find(|u| u.application == "web" && u.key == "k")
        .expect("web's uses of k");
    assert_eq!(
        (web.total, web.failed, web.window, web.baseline),
        // Every use of k by web (17, of them 1 failed; 2 + 1 + 1 + 2 + 1 + 1
        // in the window; 5 + 1 in the baseline).
        (17, 1, 8, 6)
    );
    assert_eq!(web.baseline_first, Some((T0 + 1) * 1_000_000));
    assert_eq!(web.last_at, T0 + 500);
    let names: Vec<&str> = rows.uses.iter().map(|u| u.application.as_str()).collect();
    assert!(
        names.contains(&"Zeta") && names.contains(&"alpha"),
        "{names:?}"
    );
    assert!(rows.uses.iter().any(|u| u.key == "id:ab12" && !u.managed));
    assert!(rows.uses.iter().any(|u| u.token.is_none()));
    assert!(rows.uses_of_k.iter().all(|u| u.key == "k"));
    assert!(!rows.hours.is_empty());
    assert!(rows.hours.iter().all(|h| h.hour < 24));
    assert_eq!(rows.operations.len(), 2, "{:?}", rows.operations);
    assert!(rows.no_operations.is_empty());
    assert_eq!(
        (
            rows.admin_failures.total,
            rows.admin_failures.period,
            rows.admin_failures.window
        ),
        (3, 2, 1)
    );
    assert_eq!(rows.admin_failures.last.len(), 2);
    assert_eq!(
        rows.admin_failures
            .last
            .iter()
            .map(|e| (e.operation.as_str(), e.at))
            .collect::<Vec<_>>(),
        [("grant", T0 - 10), ("policy", T0 + 106)],
        "newest first"
    );
    assert_eq!(rows.use_failures.total, 1);
    assert_eq!(
        rows.lifecycle
            .iter()
            .map(|e| e.operation.as_str())
            .collect::<Vec<_>>(),
        ["revoke", "backup", "revoke"]
    );
    assert!(rows.lifecycle_of_k.is_empty());
    let request = rows.request.as_ref().expect("the request");
    assert!(request.reason.starts_with("requested: "));
    assert_eq!(rows.no_request, None);
    assert_eq!(rows.after.count, 2 + 1 + 1 + 1);
    assert_eq!(rows.after.first_seq, Some(revoke + 1));
    assert_eq!(rows.after_v1.count, 2 + 1 + 1);
    assert_eq!(rows.after_recovery.count, 2 + 1 + 1);
    rows
}

#[test]
fn trail_and_report_behave_the_same_on_sqlite_and_postgresql() {
    let server = PgServer::new();

    let (_dir, lite) = sqlite();
    let (_db, shared) = pg(&server, "db-1");
    let on_lite = chain_and_queries(&lite);
    let on_pg = chain_and_queries(&shared);
    assert_eq!(events_of(&on_lite), events_of(&on_pg));
    assert!(on_lite.iter().all(|r| r.host.is_none()));
    assert!(on_pg.iter().all(|r| r.host.as_deref() == Some("db-1")));

    let (_dir, lite) = sqlite();
    let (_db, shared) = pg(&server, "db-1");
    assert_eq!(
        events_of(&coalesced_records(&lite)),
        events_of(&coalesced_records(&shared))
    );

    let (_dir, lite) = sqlite();
    let (_db, shared) = pg(&server, "db-1");
    assert_eq!(
        checkpoints_and_anchors(&lite),
        checkpoints_and_anchors(&shared)
    );

    let (_dir, lite) = sqlite();
    let (_db, shared) = pg(&server, "db-1");
    assert_eq!(report_rows(&lite), report_rows(&shared));
}

// ---- what only a shared store meets -------------------------------------------

/// Appends `batches` batches of `size` events by `writer` (its reason names
/// the writer, thread and batch); the seqs each batch returned.
fn write_batches(log: &PgInventory, thread: usize, batches: usize, size: usize) -> Vec<u64> {
    (0..batches)
        .map(|b| {
            let events: Vec<AuditEvent> = (0..size)
                .map(|i| AuditEvent {
                    reason: format!("{} {thread} {b} {i}", log.host()),
                    ..agent(T0 + b as i64, "tick")
                })
                .collect();
            log.append(&events, b % 2 == 0)
                .unwrap_or_else(|e| panic!("{} thread {thread}: append: {e}", log.host()))
        })
        .collect()
}

#[test]
fn agents_of_two_hosts_appending_at_once_make_one_gap_free_chain() {
    let server = PgServer::new();
    let (config, a) = pg(&server, "a");
    let b = pg_on(&config, "b");
    const THREADS: usize = 4;
    const BATCHES: usize = 20;
    const SIZE: usize = 5;
    // Two agents' stores (one per host), each written by 4 threads at once.
    let writers: Vec<&PgInventory> = (0..THREADS).flat_map(|_| [&a, &b]).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let ends: Vec<(String, Vec<u64>)> = std::thread::scope(|s| {
        // Meanwhile, a third store verifies: each walk sees one snapshot,
        // whole batches only, and never waits for the writers.
        let reader = pg_on(&config, "c");
        let done = &done;
        let verifier = s.spawn(move || {
            let mut walks = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || walks == 0 {
                let report = reader.verify(&check).expect("verify while appending");
                assert_eq!(report.first_bad, None, "{report:?}");
                assert_eq!(report.records, report.head_seq, "{report:?}");
                assert_eq!(
                    report.head_seq % SIZE as u64,
                    0,
                    "whole batches: {report:?}"
                );
                walks += 1;
            }
            walks
        });
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(t, &log)| {
                s.spawn(move || (log.host().to_owned(), write_batches(log, t, BATCHES, SIZE)))
            })
            .collect();
        let ends = handles
            .into_iter()
            .map(|h| h.join().expect("a writer panicked"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let walks = verifier.join().expect("the verifier panicked");
        assert!(walks >= 1);
        ends
    });

    let total = (2 * THREADS * BATCHES * SIZE) as u64;
    assert_eq!(a.head().expect("head").0, total);
    assert_eq!(b.head().expect("head").0, total, "both hosts see one chain");
    let all = b.query(&AuditFilter::default()).expect("query");
    assert_eq!(all.len() as u64, total);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "no gap and no repeat");
        if i > 0 {
            assert_eq!(r.prev_hash, all[i - 1].hash, "record {} chained", r.seq);
        }
        let writer = r.event.reason.split(' ').next().expect("a writer");
        assert_eq!(r.host.as_deref(), Some(writer), "record {}", r.seq);
    }
    // Each batch is whole and in order: its last seq ends a run of its
    // events.
    for (thread, (host, seqs)) in ends.iter().enumerate() {
        for (batch, &end) in seqs.iter().enumerate() {
            for i in 0..SIZE {
                let r = &all[(end as usize) - SIZE + i];
                assert_eq!(r.event.reason, format!("{host} {thread} {batch} {i}"));
            }
        }
    }
    for log in [&a, &b] {
        let report = log.verify(&check).expect("verify");
        assert_eq!(report.first_bad, None, "{report:?}");
        assert_eq!((report.records, report.head_seq), (total, total));
    }
    // The longest host name the store takes is stored and hashed whole.
    let long = "é".repeat(keyward_inventory::postgres::MAX_HOST_LEN);
    let (_db, log) = pg(&server, &long);
    log.append(&[agent(T0, "start")], true).expect("append");
    let rec = log.tail(1).expect("tail").pop().expect("a record");
    assert_eq!(rec.host.as_deref(), Some(long.as_str()));
    assert_eq!(log.verify(&check).expect("verify").first_bad, None);

    // A checkpoint by one host seals the chain the other wrote into too.
    b.checkpoint(&seal(&b, T0)).expect("checkpoint by b");
    let report = a.verify(&check).expect("verify");
    assert_eq!((report.checkpoints_ok, report.unsealed), (1, 0));
}

/// A trail of 8 records by host "a" on a new database, then `tamper` run
/// by the superuser with the append-only triggers bypassed; what verify
/// reports.
fn tampered(server: &PgServer, tamper: &str) -> keyward_inventory::VerifyReport {
    let (config, log) = pg(server, "a");
    let events: Vec<AuditEvent> = (0..8)
        .map(|i| AuditEvent {
            reason: format!("record {}", i + 1),
            ..sign(T0 + i, 0, "web", "/usr/bin/nginx", 1)
        })
        .collect();
    log.append(&events, true).expect("append");
    assert_eq!(log.verify(&check).expect("verify").first_bad, None);
    let mut su = server.superuser_client(dbname(&config));
    su.batch_execute(&format!("SET session_replication_role = replica; {tamper}"))
        .unwrap_or_else(|e| panic!("{tamper}: {e}"));
    log.verify(&check).expect("verify")
}

#[test]
fn records_changed_or_deleted_by_the_superuser_are_found_at_their_seq() {
    let server = PgServer::new();
    let bad = |tamper: &str| {
        let report = tampered(&server, tamper);
        let bad = report.first_bad.clone();
        bad.unwrap_or_else(|| panic!("{tamper}: not found ({report:?})"))
    };

    // Moved to another agent's name, or to none.
    let b = bad("UPDATE audit SET host = 'b' WHERE seq = 3");
    assert_eq!((b.seq, b.problem), (3, Problem::Edited));
    let b = bad("UPDATE audit SET host = NULL WHERE seq = 6");
    assert_eq!((b.seq, b.problem), (6, Problem::Edited));
    // A reason rewritten.
    let b = bad("UPDATE audit SET reason = 'nothing to see' WHERE seq = 5");
    assert_eq!((b.seq, b.problem), (5, Problem::Edited));
    // A record deleted.
    let b = bad("DELETE FROM audit WHERE seq = 4");
    assert_eq!((b.seq, b.problem), (4, Problem::Deleted { through: 4 }));
    // A value the store never writes.
    let b = bad("UPDATE audit SET micros = 1000000 WHERE seq = 2");
    assert_eq!(b.seq, 2);
    assert!(matches!(b.problem, Problem::Undecodable(_)), "{b:?}");
    // The last record cut off is a shorter, intact chain without a seal:
    // only a checkpoint or an anchor shows it.
    let report = tampered(&server, "DELETE FROM audit WHERE seq = 8");
    assert_eq!((report.first_bad, report.head_seq), (None, 7));

    // Sealed, the same cut is found; so is a checkpoint deleted with it.
    let (config, log) = pg(&server, "a");
    let events: Vec<AuditEvent> = (0..8).map(|i| agent(T0 + i, "tick")).collect();
    log.append(&events, true).expect("append");
    log.checkpoint(&seal(&log, T0 + 8)).expect("checkpoint");
    let mut su = server.superuser_client(dbname(&config));
    su.batch_execute("SET session_replication_role = replica; DELETE FROM audit WHERE seq >= 7")
        .expect("cut the tail");
    let bad = log.verify(&check).expect("verify").first_bad;
    let bad = bad.expect("a sealed tail cut off is found");
    assert_eq!(
        (bad.seq, bad.problem),
        (7, Problem::Truncated { checkpoint: 8 })
    );

    // Deep in a long trail (past the walk's first batches of rows).
    let (config, log) = pg(&server, "a");
    let events: Vec<AuditEvent> = (0..2500).map(|i| agent(T0 + i, "tick")).collect();
    log.append(&events, false).expect("append 2500");
    let report = log.verify(&check).expect("verify");
    assert_eq!((report.first_bad, report.records), (None, 2500));
    server
        .superuser_client(dbname(&config))
        .batch_execute(
            "SET session_replication_role = replica; \
             UPDATE audit SET operation = 'tock' WHERE seq = 2345",
        )
        .expect("tamper");
    let report = log.verify(&check).expect("verify");
    let bad = report.first_bad.expect("an edit deep in the trail");
    assert_eq!((bad.seq, bad.problem), (2345, Problem::Edited));
    assert_eq!((report.records, report.head_seq), (2345, 2500));

    // A record that no longer decodes is an error of the reads, not a crash.
    let (config, log) = pg(&server, "a");
    log.append(&[agent(T0, "start")], true).expect("append");
    server
        .superuser_client(dbname(&config))
        .batch_execute(
            "SET session_replication_role = replica; \
             UPDATE audit SET actor = 'nobody' WHERE seq = 1",
        )
        .expect("tamper");
    assert!(matches!(log.tail(5), Err(Error::Data(_))));
    assert!(matches!(
        log.query(&AuditFilter::default()),
        Err(Error::Data(_))
    ));
    let report = log.verify(&check).expect("verify");
    assert!(matches!(
        report.first_bad.map(|b| b.problem),
        Some(Problem::Undecodable(_))
    ));
}

#[test]
fn a_stopped_server_is_unavailable_and_the_same_store_appends_once_it_is_back() {
    let mut server = PgServer::new();
    let (_config, log) = pg(&server, "a");
    assert_eq!(log.append(&[agent(T0, "start")], true).expect("append"), 1);
    assert_eq!(
        log.tail(1).expect("tail").len(),
        1,
        "the reading session is open"
    );

    server.stop();
    for durable in [true, false] {
        let err = log
            .append(&[agent(T0 + 1, "tick")], durable)
            .expect_err("no server");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }
    assert!(matches!(log.head(), Err(Error::Unavailable(_))));
    assert!(matches!(log.verify(&check), Err(Error::Unavailable(_))));
    assert!(matches!(log.tail(1), Err(Error::Unavailable(_))));

    server.start();
    assert_eq!(
        log.append(&[agent(T0 + 2, "tick")], true).expect("append"),
        2
    );
    assert_eq!(
        log.append(&[agent(T0 + 3, "tick")], false).expect("append"),
        3
    );
    let report = log.verify(&check).expect("verify");
    assert_eq!((report.first_bad, report.head_seq), (None, 3));

    // Killed (no shutdown: the sessions just break), the same. A durable
    // append makes the batches before it durable too.
    assert_eq!(
        log.append(&[agent(T0 + 4, "tick")], false).expect("append"),
        4
    );
    assert_eq!(
        log.append(&[agent(T0 + 5, "tick")], true).expect("append"),
        5
    );
    server.kill();
    let err = log
        .append(&[agent(T0 + 6, "tick")], true)
        .expect_err("no server");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(matches!(log.verify(&check), Err(Error::Unavailable(_))));
    server.start();
    assert_eq!(
        log.append(&[agent(T0 + 7, "tick")], true).expect("append"),
        6,
        "every record through the last durable one survived the crash, \
         the refused one was never written"
    );
    let report = log.verify(&check).expect("verify");
    assert_eq!((report.first_bad, report.head_seq), (None, 6));
}

/// Records per second appended by `writers` stores at once, each writing
/// `batches` batches of `size`.
fn throughput(config: &Config, writers: usize, size: usize, batches: usize, durable: bool) -> f64 {
    let stores: Vec<PgInventory> = (0..writers)
        .map(|w| pg_on(config, &format!("w{w}")))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for log in &stores {
            s.spawn(move || {
                for b in 0..batches {
                    let events: Vec<AuditEvent> = (0..size)
                        .map(|i| sign(T0 + b as i64, i as u32, "web", "/usr/bin/nginx", 1))
                        .collect();
                    log.append(&events, durable).expect("append");
                }
            });
        }
    });
    let elapsed = start.elapsed().max(Duration::from_micros(1));
    (writers * size * batches) as f64 / elapsed.as_secs_f64()
}

#[test]
fn append_throughput_on_the_loopback_server() {
    let server = PgServer::new();
    let mut lines = Vec::new();
    for writers in [1, 2] {
        for (size, batches) in [(1, 300), (100, 20)] {
            for durable in [true, false] {
                let config = server.new_database();
                let rate = throughput(&config, writers, size, batches, durable);
                let log = pg_on(&config, "check");
                let report = log.verify(&check).expect("verify");
                let total = (writers * size * batches) as u64;
                assert_eq!((report.first_bad, report.head_seq), (None, total));
                lines.push(format!(
                    "writers {writers}, batch {size:>3}, {}: {rate:>8.0} records/s",
                    if durable {
                        "durable    "
                    } else {
                        "not durable"
                    }
                ));
            }
        }
    }
    eprintln!("append throughput:\n{}", lines.join("\n"));
}
