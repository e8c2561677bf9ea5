//! The writer, its queue and its run note.

use super::events::event;
use super::run::*;
use super::writer::*;
use std::sync::Arc;

use keyward_inventory::{Actor, AuditKind};

use crate::clients::tests::peer;
use crate::clients::Client;
use crate::clients::UseTarget;
use crate::config::AuditConfig;

fn target(key: &str) -> Arc<UseTarget> {
    Arc::new(UseTarget {
        token: "kw".into(),
        key: key.into(),
        version: Some(1),
    })
}

#[test]
fn equal_uses_are_folded_as_they_are_queued_and_keep_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap();
    let auditor = Auditor::start(Arc::new(store));
    let (a, b) = (
        Client::new(peer(10), "web".into(), 1),
        Client::new(peer(11), "web".into(), 1),
    );
    let (k, other) = (target("k"), target("other"));
    auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
    auditor.record(event(AuditKind::Refusal, a.actor.clone(), "decrypt"));
    auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
    auditor.record_use(&b, "sign", Some(0x1041), &k, 0); // another process
    auditor.record_use(&a, "sign", Some(0x1041), &k, 0x30); // another result
    auditor.record_use(&a, "sign", Some(0x1041), &other, 0); // another key
    auditor.record_use(&a, "verify", Some(0x1041), &k, 0); // another operation
    auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
    auditor.flush();
    let got: Vec<_> = auditor
        .log()
        .tail(100)
        .unwrap()
        .into_iter()
        .map(|r| {
            let e = r.event;
            let pid = match e.actor {
                Actor::Application { pid, .. } => pid,
                _ => 0,
            };
            (
                e.kind,
                pid,
                e.key.unwrap_or_default(),
                e.operation,
                e.result,
                e.count,
            )
        })
        .collect();
    let row = |kind, pid, key: &str, op: &str, result, count| {
        (kind, pid, key.to_owned(), op.to_owned(), result, count)
    };
    assert_eq!(
        got,
        vec![
            row(AuditKind::Use, 10, "k", "sign", 0, 3),
            row(AuditKind::Refusal, 10, "", "decrypt", 0, 1),
            row(AuditKind::Use, 11, "k", "sign", 0, 1),
            row(AuditKind::Use, 10, "k", "sign", 0x30, 1),
            row(AuditKind::Use, 10, "other", "sign", 0, 1),
            row(AuditKind::Use, 10, "k", "verify", 0, 1),
        ]
    );
    assert_eq!(auditor.stats().events, 8);
    assert_eq!(auditor.stats().records, 6);
}

fn read_note(dir: &std::path::Path) -> NoteState {
    let text = std::fs::read_to_string(dir.join(RUN_NOTE)).unwrap();
    assert_eq!(text.len(), NOTE_SIZE, "{text:?}");
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn the_run_note_always_reserves_at_least_every_queued_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap();
    let auditor = Auditor::new(Arc::new(store), &AuditConfig::default());
    assert!(
        auditor.begin_run(dir.path()).is_none(),
        "a first start is no crash"
    );
    let note = read_note(dir.path());
    assert!(!note.clean);
    assert_eq!(note.reserved, MIN_HEADROOM);
    let a = Client::new(peer(10), "web".into(), 1);
    let k = target("k");
    // Faster than the writer reserves ahead: the queue reserves itself.
    for i in 1..=5 * MIN_HEADROOM {
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
        if i % 97 == 0 {
            let note = read_note(dir.path());
            assert!(
                note.reserved >= i,
                "{i} uses queued, {} reserved",
                note.reserved
            );
        }
    }
    auditor.flush();
    auditor.note_progress();
    let note = read_note(dir.path());
    assert_eq!(note.accounted, 5 * MIN_HEADROOM);
    assert!(note.reserved >= note.accounted);
    auditor.end_run();
    let note = read_note(dir.path());
    assert!(note.clean);
    assert_eq!(note.accounted, 5 * MIN_HEADROOM);
    // A clean stop: the next start records nothing.
    assert!(auditor.begin_run(dir.path()).is_none());
}

#[test]
fn a_run_that_did_not_stop_cleanly_leaves_a_gap_record_with_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap());
    let auditor = Auditor::new(store.clone(), &AuditConfig::default());
    auditor.begin_run(dir.path());
    let a = Client::new(peer(10), "web".into(), 1);
    let k = target("k");
    for _ in 0..300 {
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
    }
    auditor.flush();
    auditor.note_progress();
    let noted = read_note(dir.path());
    let before = now_us();
    // Acknowledged, then the process dies before they are stored: as
    // a SIGKILL would, the queue is gone and the note stays unclean.
    for _ in 0..200 {
        auditor.record_use(&a, "sign", Some(0x1041), &k, 0);
    }
    let _ = auditor.queue().take();
    assert_eq!(read_note(dir.path()), noted, "the hot path wrote the note");

    let restarted = Auditor::new(store, &AuditConfig::default());
    let gap = restarted.begin_run(dir.path()).expect("a gap record");
    assert_eq!(
        (gap.kind, gap.operation.as_str()),
        (AuditKind::Agent, CRASH_GAP)
    );
    let (from, to, at_most) = crash_gap_of(&gap.reason).expect(&gap.reason);
    assert!(at_most >= 200, "{}", gap.reason);
    assert_eq!(at_most, noted.reserved - 300, "{}", gap.reason);
    assert!(from <= before && before <= to, "{}", gap.reason);
    assert!(
        gap.reason.contains("did not stop cleanly"),
        "{}",
        gap.reason
    );

    // Records stored after the last note are not counted as missing.
    let mut torn = noted;
    torn.accounted = 100;
    torn.seq = 0;
    let gap = restarted
        .gap_after(&serde_json::to_vec(&torn).unwrap(), now_us())
        .unwrap();
    assert_eq!(
        crash_gap_of(&gap.reason).unwrap().2,
        noted.reserved - 100 - 300
    );

    // A note that does not read is a gap of unknown size, not a crash.
    let gap = restarted
        .gap_after(b"{\"pid\": 1, garbage", now_us())
        .unwrap();
    assert!(gap.reason.contains("unreadable"), "{}", gap.reason);
    assert_eq!(crash_gap_of(&gap.reason), None);
}

#[test]
fn times_in_gap_records_are_utc() {
    assert_eq!(format_us(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        format_us(1_764_892_862_123_456),
        "2025-12-05T00:01:02.123456Z"
    );
    let reason = crash_gap_reason(5, 7, 9, 42, 6);
    assert_eq!(crash_gap_of(&reason), Some((5, 7, 9)));
}

#[test]
fn a_full_disk_and_a_read_only_store_are_named_as_the_cause() {
    let storage = |text: &str| {
        keyward_inventory::Error::Storage(Box::new(std::io::Error::other(text.to_owned())))
    };
    let full = cause_of(&storage("database or disk is full"));
    assert!(full.starts_with("no space left"), "{full}");
    assert!(full.contains("database or disk is full"), "{full}");
    let enospc = cause_of(&storage("No space left on device (os error 28)"));
    assert!(enospc.starts_with("no space left"), "{enospc}");
    let read_only = cause_of(&storage("attempt to write a readonly database"));
    assert!(
        read_only.starts_with("the store is read-only"),
        "{read_only}"
    );
    let other = cause_of(&storage("disk I/O error"));
    assert_eq!(other, "inventory storage: disk I/O error");
}

#[test]
fn the_newest_record_of_this_agent_bounds_the_clock_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = keyward_inventory::SqliteInventory::open(dir.path().join("i.sqlite")).unwrap();
    let auditor = Auditor::new(Arc::new(store), &AuditConfig::default());
    assert_eq!(auditor.newest_record_time(None), None, "an empty trail");
    let at = |secs: i64, micros: u32| {
        let mut e = event(AuditKind::Agent, Actor::Agent, "start");
        e.at = secs;
        e.micros = micros;
        e
    };
    // Not in time order: the newest counts, not the last.
    let newest = 1_900_000_000;
    for e in [
        at(newest - 50, 0),
        at(newest, 250),
        at(newest - 10, 999_999),
    ] {
        auditor.durable(e).unwrap();
    }
    let expected = std::time::UNIX_EPOCH + std::time::Duration::new(newest as u64, 250_000);
    assert_eq!(auditor.newest_record_time(None), Some(expected));
    // A single agent's records carry no host: another host's bound is none.
    assert_eq!(auditor.newest_record_time(Some("elsewhere")), None);
}
