//! Tamper evidence of the audit trail, tested as an attacker with root on
//! the host would tamper: straight at the SQLite file, with the append-only
//! triggers dropped first, and with the library's own hash function (the
//! algorithm is public). What the attacker lacks is the HSM's audit key,
//! stood in for here by HMAC-SHA256 with a secret only the "HSM" knows.
//!
//! Each case names the first bad record `verify` must report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

use keyward_inventory::{
    checkpoint_message, record_hash, Actor, Anchor, AuditEvent, AuditKind, AuditLog, AuditRecord,
    BadRecord, Checkpoint, Hash, Problem, SqliteInventory, VerifyReport,
};

const T0: i64 = 1_700_000_000;
/// Records in the trail under attack; checkpoints seal 40 and 80.
const RECORDS: u64 = 100;
const SEALS: [u64; 2] = [40, 80];
const HSM_SECRET: &[u8] = b"the audit key never leaves the HSM";
const ATTACKER_SECRET: &[u8] = b"root's best guess";

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hsm_sign(message: &[u8]) -> Vec<u8> {
    hmac_sha256(HSM_SECRET, message)
}

fn hsm_check(message: &[u8], signature: &[u8]) -> bool {
    hsm_sign(message) == signature
}

fn event(i: u64) -> AuditEvent {
    let refused = i.is_multiple_of(7);
    AuditEvent {
        at: T0 + i as i64,
        micros: (i * 7_919 % 1_000_000) as u32,
        kind: if refused {
            AuditKind::Refusal
        } else {
            AuditKind::Use
        },
        actor: Actor::Application {
            name: format!("app{}", i % 3),
            uid: 1000 + (i % 3) as u32,
            gid: 1000,
            pid: 5000 + i as u32,
            exe: "/usr/bin/app".into(),
        },
        token: Some("prod".into()),
        key: Some(format!("key{}", i % 5)),
        key_version: Some(1),
        operation: "C_Sign".into(),
        mechanism: Some(0x1041),
        result: if refused { 0x63 } else { 0 },
        reason: if refused {
            "no grant".into()
        } else {
            String::new()
        },
        count: 1,
        span_us: 0,
    }
}

fn seal(inv: &SqliteInventory, sign: impl Fn(&[u8]) -> Vec<u8>) {
    let (seq, head) = inv.head().unwrap();
    let created_at = T0 + 1_000 + seq as i64;
    inv.checkpoint(&Checkpoint {
        seq,
        head,
        created_at,
        signature: sign(&checkpoint_message(seq, &head, created_at)),
        signer: "audit-key".into(),
    })
    .unwrap();
}

/// A trail of [`RECORDS`] records in batches of 10, sealed at [`SEALS`].
fn trail() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    let inv = SqliteInventory::open(&path).unwrap();
    for batch in 0..RECORDS / 10 {
        let events: Vec<_> = (batch * 10 + 1..=batch * 10 + 10).map(event).collect();
        let last = inv.append(&events, false).unwrap();
        if SEALS.contains(&last) {
            seal(&inv, hsm_sign);
        }
    }
    (dir, path)
}

/// Root's handle on the file: the append-only triggers dropped.
fn attacker(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
         DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;
         DROP TRIGGER audit_meta_no_update; DROP TRIGGER audit_meta_no_delete;",
    )
    .unwrap();
    conn
}

fn records(path: &Path) -> Vec<AuditRecord> {
    SqliteInventory::open(path)
        .unwrap()
        .tail(usize::MAX)
        .unwrap()
}

fn verify(path: &Path) -> VerifyReport {
    SqliteInventory::open(path)
        .unwrap()
        .verify(&hsm_check)
        .unwrap()
}

fn first_bad(path: &Path) -> BadRecord {
    let report = verify(path);
    let bad = report
        .first_bad
        .clone()
        .unwrap_or_else(|| panic!("tampering not detected: {report:?}"));
    println!("verify: {bad}");
    bad
}

fn bad(seq: u64, problem: Problem) -> BadRecord {
    BadRecord { seq, problem }
}

fn hash_at(conn: &Connection, seq: u64) -> Hash {
    let bytes: Vec<u8> = conn
        .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
        .unwrap();
    bytes.try_into().unwrap()
}

/// Recomputes every hash from `from` on, as an attacker who rewrote
/// history would, so the chain itself is consistent again.
fn rechain(path: &Path, from: u64) {
    let all = records(path);
    let conn = attacker_or_plain(path);
    let mut prev = if from == 1 {
        genesis(&conn)
    } else {
        hash_at(&conn, from - 1)
    };
    for r in all.iter().filter(|r| r.seq >= from) {
        let h = record_hash(&prev, r.seq, &r.event);
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![&prev[..], &h[..], r.seq],
        )
        .unwrap();
        prev = h;
    }
}

/// The triggers are already gone when a case re-chains after tampering.
fn attacker_or_plain(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    let triggers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'audit%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if triggers > 0 {
        drop(conn);
        return attacker(path);
    }
    conn
}

fn genesis(conn: &Connection) -> Hash {
    let bytes: Vec<u8> = conn
        .query_row("SELECT genesis FROM audit_meta", [], |r| r.get(0))
        .unwrap();
    bytes.try_into().unwrap()
}

/// Renumbers every record after `after` by `delta` (two steps, so the
/// primary key never collides).
fn renumber(conn: &Connection, after: u64, delta: i64) {
    conn.execute("UPDATE audit SET seq = -seq WHERE seq > ?1", [after])
        .unwrap();
    conn.execute("UPDATE audit SET seq = -seq + ?1 WHERE seq < 0", [delta])
        .unwrap();
}

/// Inserts an agent event at `seq` with the given chain values.
fn insert_agent_record(conn: &Connection, seq: u64, e: &AuditEvent, prev: &Hash, hash: &Hash) {
    assert_eq!(e.actor, Actor::Agent);
    conn.execute(
        "INSERT INTO audit (seq, at, micros, kind, actor, operation, result, reason,
                            prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, 'agent', ?5, ?6, ?7, ?8, ?9)",
        params![
            seq,
            e.at,
            e.micros,
            e.kind.to_string(),
            e.operation,
            e.result as i64,
            e.reason,
            &prev[..],
            &hash[..]
        ],
    )
    .unwrap();
}

fn forged_event() -> AuditEvent {
    AuditEvent {
        at: T0 + 50,
        micros: 1,
        kind: AuditKind::Agent,
        actor: Actor::Agent,
        token: None,
        key: None,
        key_version: None,
        operation: "reload".into(),
        mechanism: None,
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

// ---- the cases -----------------------------------------------------------------

#[test]
fn a_clean_trail_verifies_with_both_checkpoints() {
    let (_dir, path) = trail();
    let report = verify(&path);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, RECORDS);
    assert_eq!(report.head_seq, RECORDS);
    assert_eq!(report.checkpoints_ok, 2);
    assert_eq!(report.sealed_through, 80);
    assert_eq!(report.unsealed, 20);
    // Without the HSM's key, the same trail does not verify.
    let wrong = SqliteInventory::open(&path)
        .unwrap()
        .verify(&|m, s| hmac_sha256(ATTACKER_SECRET, m) == s)
        .unwrap();
    assert_eq!(
        wrong.first_bad,
        Some(bad(1, Problem::BadSignature { checkpoint: 40 }))
    );
}

#[test]
fn an_edited_record_is_named() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute(
            "UPDATE audit SET result = 0, reason = '' WHERE seq = 49",
            [],
        )
        .unwrap();
    assert_eq!(first_bad(&path), bad(49, Problem::Edited));
}

#[test]
fn an_edited_and_rehashed_record_is_named_by_its_broken_successor() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("UPDATE audit SET key_name = 'other' WHERE seq = 50", [])
        .unwrap();
    drop(conn);
    let r = records(&path).remove(49);
    let h = record_hash(&r.prev_hash, 50, &r.event);
    attacker_or_plain(&path)
        .execute("UPDATE audit SET hash = ?1 WHERE seq = 50", params![&h[..]])
        .unwrap();
    assert_eq!(first_bad(&path), bad(50, Problem::Replaced));
}

#[test]
fn a_deleted_record_is_named() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute("DELETE FROM audit WHERE seq = 50", [])
        .unwrap();
    assert_eq!(first_bad(&path), bad(50, Problem::Deleted { through: 50 }));
    let report = verify(&path);
    assert_eq!((report.records, report.head_seq), (50, RECORDS));
}

#[test]
fn a_deleted_record_with_the_rest_renumbered_is_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("DELETE FROM audit WHERE seq = 50", [])
        .unwrap();
    renumber(&conn, 50, -1);
    assert_eq!(first_bad(&path), bad(50, Problem::Moved { written_as: 51 }));
}

#[test]
fn an_inserted_well_chained_record_is_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    renumber(&conn, 50, 1);
    let prev = hash_at(&conn, 50);
    let forged = forged_event();
    insert_agent_record(&conn, 51, &forged, &prev, &record_hash(&prev, 51, &forged));
    assert_eq!(first_bad(&path), bad(51, Problem::Inserted { next: 52 }));
}

#[test]
fn an_inserted_record_with_made_up_hashes_is_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    renumber(&conn, 50, 1);
    insert_agent_record(&conn, 51, &forged_event(), &[0; 32], &[0; 32]);
    assert_eq!(first_bad(&path), bad(51, Problem::Edited));
}

#[test]
fn two_swapped_records_are_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    // Whole rows (content and chain values) trade places.
    conn.execute_batch(
        "UPDATE audit SET seq = -1 WHERE seq = 60;
         UPDATE audit SET seq = 60 WHERE seq = 61;
         UPDATE audit SET seq = 61 WHERE seq = -1;",
    )
    .unwrap();
    assert_eq!(first_bad(&path), bad(60, Problem::Moved { written_as: 61 }));
}

#[test]
fn two_records_with_swapped_events_are_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    // The events trade places; the chain columns stay.
    let cols = "at, micros, kind, actor, actor_name, uid, gid, pid, exe, token, key_name, \
                key_version, operation, mechanism, result, reason";
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE saved AS SELECT seq, {cols} FROM audit WHERE seq IN (60, 61);
         UPDATE audit SET ({cols}) = (SELECT {cols} FROM saved WHERE seq = 61) WHERE seq = 60;
         UPDATE audit SET ({cols}) = (SELECT {cols} FROM saved WHERE seq = 60) WHERE seq = 61;"
    ))
    .unwrap();
    assert_eq!(first_bad(&path), bad(60, Problem::Edited));
}

#[test]
fn a_tail_truncated_below_a_checkpoint_is_named() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute("DELETE FROM audit WHERE seq > 70", [])
        .unwrap();
    let report = verify(&path);
    assert_eq!(report.head_seq, 70);
    assert_eq!(
        report.first_bad,
        Some(bad(71, Problem::Truncated { checkpoint: 80 }))
    );
}

#[test]
fn a_tail_truncated_and_resealed_with_a_forged_checkpoint_is_named() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("DELETE FROM audit WHERE seq > 70", [])
        .unwrap();
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 70", [])
        .unwrap();
    drop(conn);
    let inv = SqliteInventory::open(&path).unwrap();
    seal(&inv, |m| hmac_sha256(ATTACKER_SECRET, m));
    drop(inv);
    assert_eq!(
        first_bad(&path),
        bad(41, Problem::BadSignature { checkpoint: 70 })
    );
}

/// The limit of any self-contained trail: cutting the tail *and* the
/// checkpoints that sealed it leaves an earlier genuine state (a rollback).
/// Verify cannot call it bad; it reports how much is sealed, and an anchor
/// outside the host (checkpoints shipped away, a counter in the HSM) is
/// what catches it.
#[test]
fn a_tail_cut_with_its_checkpoints_is_a_rollback_only_an_outside_anchor_catches() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("DELETE FROM audit WHERE seq > 70", [])
        .unwrap();
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 70", [])
        .unwrap();
    let report = verify(&path);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.sealed_through, report.unsealed), (40, 30));
}

// ---- anchors kept off the host ---------------------------------------------

/// The anchors an administrator took off the host: every checkpoint's head.
fn anchors_of(path: &Path) -> Vec<Anchor> {
    SqliteInventory::open(path)
        .unwrap()
        .checkpoints()
        .unwrap()
        .iter()
        .map(Anchor::from)
        .collect()
}

fn verify_anchored(path: &Path, anchors: &[Anchor]) -> VerifyReport {
    SqliteInventory::open(path)
        .unwrap()
        .verify_anchored(&hsm_check, anchors)
        .unwrap()
}

/// Root re-seals a re-chained trail with the genuine key (root holding the
/// backend PIN can use the HSM's audit key): the checkpoints are replaced
/// by new, validly signed ones over the new heads.
fn reseal_with_the_genuine_key(path: &Path) {
    let conn = attacker_or_plain(path);
    conn.execute("DELETE FROM audit_checkpoints", []).unwrap();
    drop(conn);
    let inv = SqliteInventory::open(path).unwrap();
    for seq in SEALS {
        let head = inv.tail(usize::MAX).unwrap()[seq as usize - 1].hash;
        let created_at = T0 + 5_000 + seq as i64;
        inv.checkpoint(&Checkpoint {
            seq,
            head,
            created_at,
            signature: hsm_sign(&checkpoint_message(seq, &head, created_at)),
            signer: "audit-key".into(),
        })
        .unwrap();
    }
}

#[test]
fn a_rollback_past_sealed_checkpoints_verifies_plain_but_fails_an_earlier_anchor() {
    let (_dir, path) = trail();
    let anchors = anchors_of(&path);
    assert_eq!(anchors.iter().map(|a| a.seq).collect::<Vec<_>>(), SEALS);
    let intact = verify_anchored(&path, &anchors);
    assert!(intact.is_ok(), "{intact:?}");
    assert_eq!(intact.anchors_ok, 2);

    // Records 71..=100 and the checkpoint at 80 that sealed them, gone.
    let conn = attacker(&path);
    conn.execute("DELETE FROM audit WHERE seq > 70", [])
        .unwrap();
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 70", [])
        .unwrap();
    drop(conn);
    // The known limit: alone, the trail is an earlier genuine state.
    assert!(verify(&path).is_ok());
    let report = verify_anchored(&path, &anchors);
    let bad_record = report.first_bad.clone().expect("the rollback is caught");
    println!("verify --anchor: {bad_record}");
    assert_eq!(bad_record, bad(71, Problem::AnchorMissing { anchor: 80 }));
    assert!(bad_record.problem.is_anchor());
    // The anchor at 40 still held.
    assert_eq!(report.anchors_ok, 1);
}

#[test]
fn a_trail_rechained_and_resealed_with_the_genuine_key_fails_its_anchor() {
    let (_dir, path) = trail();
    let anchors = anchors_of(&path);
    attacker(&path)
        .execute(
            "UPDATE audit SET result = 0, reason = '' WHERE seq = 63",
            [],
        )
        .unwrap();
    rechain(&path, 63);
    reseal_with_the_genuine_key(&path);
    // Everything the host holds agrees: the new chain and new signatures.
    let plain = verify(&path);
    assert!(plain.is_ok(), "{plain:?}");
    // The anchor at 80 does not: the re-chained record 80 has another hash.
    assert_eq!(
        verify_anchored(&path, &anchors).first_bad,
        Some(bad(41, Problem::AnchorMismatch { anchor: 80 }))
    );
    // Only anchors from before the rewrite can tell; one taken after it
    // proves the rewritten trail.
    assert!(verify_anchored(&path, &anchors_of(&path)).is_ok());
}

#[test]
fn a_rollback_and_regrowth_to_the_anchored_seq_fails_the_anchor() {
    // Root cuts back to 70 and appends new, well-chained records to 100,
    // re-sealed with the genuine key: the seq of the anchor exists again,
    // with another hash.
    let (_dir, path) = trail();
    let anchors = anchors_of(&path);
    let conn = attacker(&path);
    conn.execute("DELETE FROM audit WHERE seq > 70", [])
        .unwrap();
    conn.execute("DELETE FROM audit_checkpoints", []).unwrap();
    drop(conn);
    let inv = SqliteInventory::open(&path).unwrap();
    let mut forged = forged_event();
    forged.at = T0 + 9_999;
    inv.append(&vec![forged; 30], false).unwrap();
    drop(inv);
    reseal_with_the_genuine_key(&path);
    assert!(verify(&path).is_ok());
    assert_eq!(
        verify_anchored(&path, &anchors).first_bad,
        Some(bad(41, Problem::AnchorMismatch { anchor: 80 }))
    );
}

#[test]
fn an_anchor_not_signed_by_the_audit_key_is_named() {
    let (_dir, path) = trail();
    let mut anchors = anchors_of(&path);
    anchors[0].signature[0] ^= 1;
    assert_eq!(
        verify_anchored(&path, &anchors).first_bad,
        Some(bad(1, Problem::AnchorBadSignature { anchor: 40 }))
    );
}

#[test]
fn a_trail_rewritten_and_rechained_under_a_checkpoint_is_caught_by_it() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute("UPDATE audit SET result = 0 WHERE seq = 63", [])
        .unwrap();
    rechain(&path, 63);
    // 1..=40 is still proven by its checkpoint; the rewrite is in 41..=80.
    assert_eq!(
        first_bad(&path),
        bad(41, Problem::Rewritten { checkpoint: 80 })
    );
}

#[test]
fn a_whole_trail_rechained_and_resealed_without_the_hsm_key_is_caught() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("UPDATE audit SET reason = '' WHERE seq = 7", [])
        .unwrap();
    drop(conn);
    rechain(&path, 1);
    // The chain is consistent again; the attacker re-seals it with the
    // only key root has.
    let conn = attacker_or_plain(&path);
    conn.execute("DELETE FROM audit_checkpoints", []).unwrap();
    drop(conn);
    let inv = SqliteInventory::open(&path).unwrap();
    for seq in SEALS {
        let head = inv.tail(usize::MAX).unwrap()[seq as usize - 1].hash;
        let sig = hmac_sha256(ATTACKER_SECRET, &checkpoint_message(seq, &head, T0));
        inv.checkpoint(&Checkpoint {
            seq,
            head,
            created_at: T0,
            signature: sig,
            signer: "audit-key".into(),
        })
        .unwrap();
    }
    drop(inv);
    assert_eq!(
        first_bad(&path),
        bad(1, Problem::BadSignature { checkpoint: 40 })
    );
}

#[test]
fn checkpoint_heads_edited_to_match_a_rechained_trail_fail_their_signatures() {
    let (_dir, path) = trail();
    let conn = attacker(&path);
    conn.execute("UPDATE audit SET key_name = 'key0' WHERE seq = 7", [])
        .unwrap();
    drop(conn);
    rechain(&path, 1);
    let conn = attacker_or_plain(&path);
    for seq in SEALS {
        let head = hash_at(&conn, seq);
        conn.execute(
            "UPDATE audit_checkpoints SET head = ?1 WHERE seq = ?2",
            params![&head[..], seq],
        )
        .unwrap();
    }
    drop(conn);
    assert_eq!(
        first_bad(&path),
        bad(1, Problem::BadSignature { checkpoint: 40 })
    );
}

#[test]
fn a_replaced_genesis_is_named() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute("UPDATE audit_meta SET genesis = zeroblob(32)", [])
        .unwrap();
    assert_eq!(first_bad(&path), bad(1, Problem::Genesis));
    // Re-chained from the new genesis, the first checkpoint gives it away.
    rechain(&path, 1);
    assert_eq!(
        first_bad(&path),
        bad(1, Problem::Rewritten { checkpoint: 40 })
    );
}

#[test]
fn a_record_edited_to_values_the_store_never_writes_is_named() {
    let (_dir, path) = trail();
    attacker(&path)
        .execute("UPDATE audit SET kind = 'coffee' WHERE seq = 30", [])
        .unwrap();
    let bad = first_bad(&path);
    assert_eq!(bad.seq, 30);
    assert!(matches!(bad.problem, Problem::Undecodable(_)), "{bad:?}");
}

// ---- batches and cost ------------------------------------------------------------

fn append_timed(
    durable: bool,
    total: u64,
    batch: u64,
) -> (f64, SqliteInventory, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    let events: Vec<_> = (1..=total).map(event).collect();
    let started = Instant::now();
    for chunk in events.chunks(batch as usize) {
        inv.append(chunk, durable).unwrap();
    }
    let per_event = started.elapsed().as_secs_f64() * 1e6 / total as f64;
    (per_event, inv, dir)
}

#[test]
fn ten_thousand_events_in_batches_of_100_verify_and_report_their_cost() {
    for durable in [false, true] {
        let (per_event, inv, _dir) = append_timed(durable, 10_000, 100);
        seal(&inv, hsm_sign);
        let started = Instant::now();
        let report = inv.verify(&hsm_check).unwrap();
        let verify_us = started.elapsed().as_secs_f64() * 1e6 / 10_000.0;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.records, report.sealed_through), (10_000, 10_000));
        let records = inv.tail(usize::MAX).unwrap();
        assert_eq!(records.len(), 10_000);
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == i as u64 + 1));
        println!(
            "audit append, batches of 100, durable={durable}: {per_event:.1} µs/event; \
             verify: {verify_us:.1} µs/record"
        );
    }
    // A lifecycle or admin event alone, durable before the call returns.
    let (single, _inv, _dir) = append_timed(true, 200, 1);
    println!("audit append, one event per durable transaction: {single:.1} µs/event");
    let (single, _inv, _dir) = append_timed(false, 200, 1);
    println!("audit append, one event per non-durable transaction: {single:.1} µs/event");
}
