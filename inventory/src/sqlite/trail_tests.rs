//! Unit tests of the audit trail: encoding, chain, checkpoints, reads.

use sha2::{Digest, Sha256};

use super::*;
use crate::audit::*;
use crate::{Inventory, SqliteInventory};

const T0: i64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, SqliteInventory) {
    let dir = tempfile::tempdir().unwrap();
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    (dir, inv)
}

fn app(name: &str) -> Actor {
    Actor::Application {
        name: name.into(),
        uid: 1000,
        gid: 1000,
        pid: 4242,
        exe: "/usr/bin/nginx".into(),
    }
}

fn admin() -> Actor {
    Actor::Administrator {
        uid: 0,
        pid: 77,
        exe: "/usr/bin/keyward".into(),
    }
}

fn use_event(at: i64, application: &str, key: &str, result: u64) -> AuditEvent {
    AuditEvent {
        at,
        micros: 123_456,
        kind: AuditKind::Use,
        actor: app(application),
        token: Some("prod".into()),
        key: Some(key.into()),
        key_version: Some(2),
        operation: "C_Sign".into(),
        mechanism: Some(0x1041),
        result,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

fn agent_event(at: i64, operation: &str) -> AuditEvent {
    AuditEvent {
        at,
        micros: 0,
        kind: AuditKind::Agent,
        actor: Actor::Agent,
        token: None,
        key: None,
        key_version: None,
        operation: operation.into(),
        mechanism: None,
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

/// The test stand-in for the HSM's audit key: a MAC with a fixed secret.
fn sign(message: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"test audit secret");
    h.update(message);
    h.finalize().to_vec()
}

fn check(message: &[u8], signature: &[u8]) -> bool {
    sign(message) == signature
}

fn seal(inv: &SqliteInventory, created_at: i64) -> Checkpoint {
    let (seq, head) = inv.head().unwrap();
    let cp = Checkpoint {
        seq,
        head,
        created_at,
        signature: sign(&checkpoint_message(seq, &head, created_at)),
        signer: "audit-key-1".into(),
    };
    inv.checkpoint(&cp).unwrap();
    cp
}

// ---- encoding ----------------------------------------------------------------

#[test]
fn the_canonical_encoding_of_an_agent_event_is_exactly_the_documented_layout() {
    let e = agent_event(1, "start");
    let mut want = vec![EVENT_FORMAT];
    want.extend_from_slice(&1i64.to_be_bytes());
    want.extend_from_slice(&0u32.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 5]);
    want.extend_from_slice(b"agent");
    want.extend_from_slice(&[0, 0, 0, 5]);
    want.extend_from_slice(b"agent");
    want.extend_from_slice(&[0, 0, 0]); // token, key, key_version absent
    want.extend_from_slice(&[0, 0, 0, 5]);
    want.extend_from_slice(b"start");
    want.push(0); // mechanism absent
    want.extend_from_slice(&0u64.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0]); // empty reason
    assert_eq!(canonical(&e), want);
}

#[test]
fn a_coalesced_event_is_format_2_with_count_and_span_after_format_1s_fields() {
    let single = use_event(T0, "web", "k", 0);
    let mut folded = single.clone();
    folded.count = 3;
    folded.span_us = 1500;
    let (one, two) = (canonical(&single), canonical(&folded));
    assert_eq!(one[0], EVENT_FORMAT);
    assert_eq!(two[0], EVENT_FORMAT_COALESCED);
    assert_eq!(two[1..two.len() - 8], one[1..]);
    assert_eq!(two[two.len() - 8..], [0, 0, 0, 3, 0, 0, 0x05, 0xdc]);
}

#[test]
fn a_hosted_record_is_format_3_with_count_span_and_host_after_format_1s_fields() {
    let single = use_event(T0, "web", "k", 0);
    let one = canonical(&single);
    let hosted = canonical_on(&single, Some("db-1"));
    assert_eq!(hosted[0], EVENT_FORMAT_HOSTED);
    // Format 1's fields, then count and span (always), then the host.
    let tail = 8 + 4 + "db-1".len();
    assert_eq!(hosted[1..hosted.len() - tail], one[1..]);
    assert_eq!(
        hosted[hosted.len() - tail..hosted.len() - 8],
        [0, 0, 0, 1, 0, 0, 0, 0]
    );
    assert_eq!(
        hosted[hosted.len() - 8..],
        [0, 0, 0, 4, b'd', b'b', b'-', b'1']
    );
    // A coalesced record with a host is format 3 as well.
    let mut folded = single.clone();
    folded.count = 3;
    folded.span_us = 1500;
    let hosted = canonical_on(&folded, Some("db-1"));
    assert_eq!(hosted[0], EVENT_FORMAT_HOSTED);
    assert_eq!(
        hosted[hosted.len() - tail..hosted.len() - 8],
        [0, 0, 0, 3, 0, 0, 0x05, 0xdc]
    );
    // Without a host, nothing changes.
    assert_eq!(canonical_on(&single, None), one);
    assert_eq!(canonical_on(&folded, None), canonical(&folded));
}

#[test]
fn the_host_is_hashed_so_a_record_cannot_change_writer_unnoticed() {
    let e = use_event(T0, "web", "k", 0);
    let prev = [7u8; 32];
    let none = record_hash_on(&prev, 9, &e, None);
    let a = record_hash_on(&prev, 9, &e, Some("a"));
    let b = record_hash_on(&prev, 9, &e, Some("b"));
    assert_eq!(none, record_hash(&prev, 9, &e));
    assert_ne!(a, none);
    assert_ne!(a, b);
    // Host boundaries are length-prefixed: "ab" is not "a" then "b".
    assert_ne!(
        record_hash_on(&prev, 9, &e, Some("ab")),
        record_hash_on(&prev, 9, &e, Some("a"))
    );
    let mut h = Sha256::new();
    h.update(prev);
    h.update(9u64.to_be_bytes());
    h.update(canonical_on(&e, Some("a")));
    assert_eq!(a, Hash::from(h.finalize()));
}

#[test]
fn coalescing_folds_equal_uses_and_keeps_everything_else_in_order() {
    let at = |e: AuditEvent, micros: u32| AuditEvent { micros, ..e };
    let sign = use_event(T0, "web", "k", 0);
    let failed = use_event(T0, "web", "k", 0x30);
    let refusal = AuditEvent {
        kind: AuditKind::Refusal,
        ..use_event(T0, "web", "k", 0x63)
    };
    let other_pid = AuditEvent {
        actor: Actor::Application {
            name: "web".into(),
            uid: 1000,
            gid: 1000,
            pid: 4243,
            exe: "/usr/bin/nginx".into(),
        },
        ..use_event(T0, "web", "k", 0)
    };
    let events = vec![
        at(sign.clone(), 100),
        at(refusal.clone(), 150),
        at(failed.clone(), 200),
        at(sign.clone(), 300),
        at(other_pid.clone(), 350),
        agent_event(T0, "stop"),
        at(refusal.clone(), 400),
        at(sign.clone(), 900),
    ];
    let out = coalesce(events);
    let summary: Vec<_> = out
        .iter()
        .map(|e| (e.kind, e.result, e.micros, e.count, e.span_us))
        .collect();
    assert_eq!(
        summary,
        vec![
            (AuditKind::Use, 0, 100, 3, 800),
            (AuditKind::Refusal, 0x63, 150, 1, 0),
            (AuditKind::Use, 0x30, 200, 1, 0),
            (AuditKind::Use, 0, 350, 1, 0),
            (AuditKind::Agent, 0, 0, 1, 0),
            (AuditKind::Refusal, 0x63, 400, 1, 0),
        ]
    );
    // Folding folded records adds their counts and keeps the widest span.
    let again = coalesce(vec![out[0].clone(), at(sign.clone(), 999_999)]);
    assert_eq!(
        (again.len(), again[0].count, again[0].span_us),
        (1, 4, 999_899)
    );
    // Across a second boundary.
    let later = AuditEvent {
        at: T0 + 2,
        micros: 50,
        ..sign.clone()
    };
    let folded = coalesce(vec![at(sign, 100), later]);
    assert_eq!((folded[0].count, folded[0].span_us), (2, 1_999_950));
}

#[test]
fn a_coalesced_record_round_trips_verifies_and_an_edited_count_is_caught() {
    let (_d, inv) = store();
    let mut e = use_event(T0, "web", "k", 0);
    e.count = 250;
    e.span_us = 199_000;
    inv.append(&[agent_event(T0, "start"), e.clone()], true)
        .unwrap();
    assert_eq!(inv.tail(1).unwrap()[0].event, e);
    let report = inv.verify(&check).unwrap();
    assert!(report.first_bad.is_none(), "{report:?}");
    let conn = rusqlite::Connection::open(inv.path()).unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET count = 1 WHERE seq = 2;")
        .unwrap();
    let report = inv.verify(&check).unwrap();
    assert_eq!(
        report.first_bad.map(|b| b.seq),
        Some(2),
        "an edited count went unnoticed"
    );
    // A count of 0 is never written.
    e.count = 0;
    assert!(inv.append(&[e], false).is_err());
}

#[test]
fn the_encoding_keeps_field_boundaries_so_moved_text_changes_the_hash() {
    let mut a = use_event(T0, "web", "k", 0);
    let mut b = a.clone();
    a.token = Some("ab".into());
    a.key = Some("c".into());
    b.token = Some("a".into());
    b.key = Some("bc".into());
    assert_ne!(canonical(&a), canonical(&b));
    let mut c = a.clone();
    c.key = None;
    c.key_version = None;
    let mut d = c.clone();
    d.token = None;
    d.key = Some("ab".into());
    assert_ne!(canonical(&c), canonical(&d));
    let mut e = a.clone();
    e.mechanism = None;
    assert_ne!(canonical(&a), canonical(&e));
    // The actor's variant is part of the input, not just its values.
    let mut f = agent_event(T0, "x");
    let mut g = f.clone();
    f.actor = Actor::Agent;
    g.actor = Actor::Scheduler;
    assert_ne!(canonical(&f), canonical(&g));
}

#[test]
fn the_record_hash_is_sha256_of_prev_seq_and_canonical_event() {
    let e = use_event(T0, "web", "k", 0);
    let prev = [7u8; 32];
    let mut h = Sha256::new();
    h.update(prev);
    h.update(9u64.to_be_bytes());
    h.update(canonical(&e));
    let want: Hash = h.finalize().into();
    assert_eq!(record_hash(&prev, 9, &e), want);
    assert_ne!(record_hash(&prev, 10, &e), want, "seq is hashed");
}

#[test]
fn the_checkpoint_message_is_fixed_length_and_carries_every_part() {
    let head = [0xAB; 32];
    let m = checkpoint_message(258, &head, -1);
    assert_eq!(m.len(), 74);
    assert!(m.starts_with(b"keyward-audit-checkpoint\0\x01"));
    assert_eq!(&m[26..34], &258u64.to_be_bytes());
    assert_eq!(&m[34..66], &head);
    assert_eq!(&m[66..], &(-1i64).to_be_bytes());
    assert_ne!(m, checkpoint_message(258, &head, 0));
    assert_ne!(m, checkpoint_message(257, &head, -1));
}

// ---- appending ---------------------------------------------------------------

#[test]
fn appends_are_numbered_from_one_and_chained_from_a_random_genesis() {
    let (_d1, inv) = store();
    let (_d2, other) = store();
    let (s0, genesis) = inv.head().unwrap();
    assert_eq!(s0, 0);
    assert_ne!(genesis, [0; 32]);
    assert_ne!(
        genesis,
        other.head().unwrap().1,
        "each trail has its own genesis"
    );
    let events: Vec<_> = (0..5).map(|i| use_event(T0 + i, "web", "k", 0)).collect();
    assert_eq!(inv.append(&events[..2], true).unwrap(), 2);
    assert_eq!(inv.append(&events[2..], false).unwrap(), 5);
    assert_eq!(inv.append(&[], true).unwrap(), 5);
    let all = inv.tail(100).unwrap();
    assert_eq!(all.len(), 5);
    let mut prev = genesis;
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.event, events[i]);
        assert_eq!(r.prev_hash, prev);
        assert_eq!(r.hash, record_hash(&prev, r.seq, &r.event));
        prev = r.hash;
    }
    assert_eq!(inv.head().unwrap(), (5, prev));
    // The same events in another trail chain to other hashes.
    other.append(&events, true).unwrap();
    assert_ne!(other.head().unwrap().1, prev);
}

#[test]
fn every_actor_and_optional_field_round_trips_through_the_store() {
    let (_d, inv) = store();
    let mut events = vec![
        use_event(T0, "web", "k", 0),
        agent_event(T0, "start"),
        AuditEvent {
            actor: admin(),
            kind: AuditKind::Lifecycle,
            operation: "revoke".into(),
            reason: "compromise suspected".into(),
            ..use_event(T0, "", "k", 0)
        },
        AuditEvent {
            actor: Actor::Scheduler,
            kind: AuditKind::Lifecycle,
            operation: "rotate".into(),
            ..agent_event(T0, "x")
        },
    ];
    // Vendor-defined values keep their top bit.
    events[0].mechanism = Some(0x8000_0000_0000_0001);
    events[0].result = u64::MAX;
    events[0].actor = app("");
    inv.append(&events, true).unwrap();
    let back: Vec<_> = inv.tail(10).unwrap().into_iter().map(|r| r.event).collect();
    assert_eq!(back, events);
    assert!(inv.verify(&check).unwrap().is_ok());
}

#[test]
fn an_invalid_event_refuses_the_whole_batch() {
    let (_d, inv) = store();
    let good = use_event(T0, "web", "k", 0);
    let mut empty_op = good.clone();
    empty_op.operation.clear();
    let mut micros = good.clone();
    micros.micros = 1_000_000;
    let mut long = good.clone();
    long.reason = "x".repeat(MAX_FIELD_LEN + 1);
    for bad in [empty_op, micros, long] {
        let err = inv.append(&[good.clone(), bad], true).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
    assert_eq!(inv.head().unwrap().0, 0);
}

#[test]
fn a_non_durable_batch_leaves_the_connection_at_synchronous_full() {
    let (_d, inv) = store();
    inv.append(&[use_event(T0, "web", "k", 0)], false).unwrap();
    let sync: i64 = inv
        .conn()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2);
}

#[test]
fn the_database_refuses_updates_and_deletes_of_the_trail() {
    let (_d, inv) = store();
    inv.append(&[agent_event(T0, "start")], true).unwrap();
    seal(&inv, T0);
    let conn = inv.conn();
    for sql in [
        "UPDATE audit SET reason = 'x'",
        "DELETE FROM audit",
        "UPDATE audit_checkpoints SET seq = 0",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_meta SET genesis = zeroblob(32)",
        "DELETE FROM audit_meta",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(
            err.contains("append-only") || err.contains("fixed"),
            "{sql}: {err}"
        );
    }
    let err = conn
        .execute(
            "INSERT INTO audit_meta (id, genesis) VALUES (2, zeroblob(32))",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[test]
fn a_version_2_store_gains_the_audit_tables_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let old = SqliteInventory::open_with(&path, &crate::schema::MIGRATIONS[..2]).unwrap();
    assert_eq!(old.schema_version().unwrap(), 2);
    drop(old);
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.schema_version().unwrap(), crate::schema::LATEST);
    assert_eq!(inv.append(&[agent_event(T0, "start")], true).unwrap(), 1);
    assert!(inv.verify(&check).unwrap().is_ok());
}

#[test]
fn a_version_3_trail_still_verifies_after_the_coalescing_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let old = SqliteInventory::open_with(&path, &crate::schema::MIGRATIONS[..3]).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Written as a version-3 store did: no count or span columns.
    let (seq, prev) = (1u64, genesis(&conn).unwrap().unwrap());
    let e = use_event(T0, "web", "k", 0);
    let hash = record_hash(&prev, seq, &e);
    conn.execute(
        "INSERT INTO audit (seq, at, micros, kind, actor, actor_name, uid, gid, pid, exe, \
         token, key_name, key_version, operation, mechanism, result, reason, prev_hash, hash) \
         VALUES (1, ?1, ?2, 'use', 'application', 'web', 1000, 1000, 4242, '/usr/bin/nginx', \
         'prod', 'k', 2, 'C_Sign', 4161, 0, '', ?3, ?4)",
        rusqlite::params![T0, 123_456, &prev[..], &hash[..]],
    )
    .unwrap();
    drop((old, conn));
    let inv = SqliteInventory::open(&path).unwrap();
    assert_eq!(inv.tail(1).unwrap()[0].event, e);
    let report = inv.verify(&check).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 1);
}

// ---- checkpoints ---------------------------------------------------------------

#[test]
fn a_checkpoint_must_name_the_stored_head_and_never_go_back() {
    let (_d, inv) = store();
    let empty = seal(&inv, T0);
    assert_eq!(empty.seq, 0);
    inv.append(&[agent_event(T0, "start"), agent_event(T0, "reload")], true)
        .unwrap();
    let (seq, head) = inv.head().unwrap();
    let mut cp = Checkpoint {
        seq,
        head: [1; 32],
        created_at: T0,
        signature: vec![1],
        signer: "k".into(),
    };
    assert!(matches!(inv.checkpoint(&cp), Err(Error::Conflict { .. })));
    cp.head = head;
    cp.seq = 3;
    assert!(matches!(inv.checkpoint(&cp), Err(Error::Invalid(_))));
    cp.seq = seq;
    cp.signature.clear();
    assert!(matches!(inv.checkpoint(&cp), Err(Error::Invalid(_))));
    let sealed = seal(&inv, T0 + 1);
    let first = &inv.tail(2).unwrap()[0];
    let back = Checkpoint {
        seq: 1,
        head: first.hash,
        created_at: T0 + 2,
        signature: vec![1],
        signer: "k".into(),
    };
    assert!(matches!(inv.checkpoint(&back), Err(Error::Conflict { .. })));
    assert_eq!(inv.checkpoints().unwrap(), vec![empty, sealed]);
    let report = inv.verify(&check).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.checkpoints_ok, report.sealed_through), (2, 2));
}

#[test]
fn a_trail_without_checkpoints_verifies_as_a_chain_and_says_it_is_unsealed() {
    let (_d, inv) = store();
    let events: Vec<_> = (0..10).map(|i| agent_event(T0 + i, "tick")).collect();
    inv.append(&events, false).unwrap();
    let report = inv.verify(&check).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 10);
    assert_eq!(report.head_seq, 10);
    assert_eq!((report.sealed_through, report.unsealed), (0, 10));
    seal(&inv, T0 + 20);
    inv.append(&events[..3], false).unwrap();
    let report = inv.verify(&check).unwrap();
    assert_eq!((report.sealed_through, report.unsealed), (10, 3));
}

#[test]
fn verify_reads_a_snapshot_without_the_writer_lock() {
    let (_d, inv) = store();
    inv.append(&[agent_event(T0, "start")], true).unwrap();
    // Holding the writers' connection (as a long append would) does not
    // block verify, tail or query.
    let _writer = inv.conn();
    assert!(inv.verify(&check).unwrap().is_ok());
    assert_eq!(inv.tail(5).unwrap().len(), 1);
    assert_eq!(inv.query(&AuditFilter::default()).unwrap().len(), 1);
}

// ---- reading -------------------------------------------------------------------

#[test]
fn query_filters_by_key_application_time_result_kind_and_seq() {
    let (_d, inv) = store();
    let mut events = vec![
        use_event(T0, "web", "tls", 0),
        use_event(T0 + 10, "web", "tls", 0x101),
        use_event(T0 + 20, "db", "tls", 0),
        use_event(T0 + 30, "db", "backup", 0),
        agent_event(T0 + 40, "stop"),
    ];
    events[1].kind = AuditKind::Refusal;
    events[1].reason = "no grant".into();
    inv.append(&events, true).unwrap();
    let seqs =
        |f: AuditFilter| -> Vec<u64> { inv.query(&f).unwrap().iter().map(|r| r.seq).collect() };
    assert_eq!(seqs(AuditFilter::default()), vec![1, 2, 3, 4, 5]);
    let key = |k: &str| AuditFilter {
        key: Some(k.into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(key("tls")), vec![1, 2, 3]);
    assert_eq!(
        seqs(AuditFilter {
            application: Some("db".into()),
            ..key("tls")
        }),
        vec![3]
    );
    assert_eq!(
        seqs(AuditFilter {
            since: Some(T0 + 10),
            until: Some(T0 + 30),
            ..AuditFilter::default()
        }),
        vec![2, 3]
    );
    assert_eq!(
        seqs(AuditFilter {
            result: ResultFilter::Denied,
            ..AuditFilter::default()
        }),
        vec![2]
    );
    assert_eq!(
        seqs(AuditFilter {
            result: ResultFilter::Ok,
            kinds: vec![AuditKind::Use, AuditKind::Agent],
            ..AuditFilter::default()
        }),
        vec![1, 3, 4, 5]
    );
    assert_eq!(
        seqs(AuditFilter {
            after_seq: Some(2),
            limit: Some(2),
            ..AuditFilter::default()
        }),
        vec![3, 4]
    );
    assert_eq!(
        seqs(AuditFilter {
            token: Some("prod".into()),
            ..AuditFilter::default()
        }),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        inv.tail(2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(inv.tail(0).unwrap().is_empty());
}

#[test]
fn a_record_serialises_as_one_json_line_with_hex_hashes_and_back() {
    let (_d, inv) = store();
    inv.append(&[use_event(T0, "web", "tls", 0)], true).unwrap();
    let rec = inv.tail(1).unwrap().remove(0);
    let line = serde_json::to_string(&rec).unwrap();
    assert!(!line.contains('\n'));
    assert!(
        line.contains(&format!("\"hash\":\"{}\"", hex::encode(rec.hash))),
        "{line}"
    );
    assert!(line.contains("\"kind\":\"use\""), "{line}");
    assert!(line.contains("\"type\":\"application\""), "{line}");
    let back: AuditRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(back, rec);
    // Upper case reads back too; anything that is not hex of 32 bytes is
    // a clear error.
    let h = format!("\"hash\":\"{}\"", hex::encode(rec.hash));
    let upper = line.replace(&h, &h.to_uppercase().replace("\"HASH\"", "\"hash\""));
    assert_eq!(serde_json::from_str::<AuditRecord>(&upper).unwrap(), rec);
    let odd = format!("\"hash\":\"{}\"", &hex::encode(rec.hash)[1..]);
    let short = format!("\"hash\":\"{}\"", &hex::encode(rec.hash)[2..]);
    let bad = format!("\"hash\":\"zz{}\"", &hex::encode(rec.hash)[2..]);
    let wide = format!("\"hash\":\"é{}\"", &hex::encode(rec.hash)[2..]);
    for (text, want) in [
        (odd, "invalid hex: Odd number of digits"),
        (short, "hash of 31 bytes"),
        (bad, "invalid hex: Invalid character 'z'"),
        (wide, "invalid hex: Invalid character"),
    ] {
        let e = serde_json::from_str::<AuditRecord>(&line.replace(&h, &text)).unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}
