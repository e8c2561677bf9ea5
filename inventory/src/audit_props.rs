//! Property tests of the audit record's canonical forms: the row both
//! stores keep ([`AuditRow`]: record -> row -> record -> row is the
//! identity) and the canonical encoding the chain hashes
//! ([`canonical_on`]: a reader of the format as `audit.rs` documents it
//! gets the event and host back, so two different records never encode,
//! nor hash, alike).

use proptest::prelude::*;

use crate::audit::{
    canonical_on, record_hash_on, Actor, AuditEvent, AuditKind, AuditRecord, Hash, EVENT_FORMAT,
    EVENT_FORMAT_COALESCED, EVENT_FORMAT_HOSTED,
};
use crate::audit_row::AuditRow;

/// Short strings from a small alphabet (NUL, separators, a multi-byte
/// character), so that neighbouring fields often share bytes.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just('\0'),
            Just('/'),
            Just('é'),
            any::<char>()
        ],
        0..10,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        (text(), any::<u32>(), any::<u32>(), any::<u32>(), text()).prop_map(
            |(name, uid, gid, pid, exe)| Actor::Application {
                name,
                uid,
                gid,
                pid,
                exe
            }
        ),
        (any::<u32>(), any::<u32>(), text()).prop_map(|(uid, pid, exe)| Actor::Administrator {
            uid,
            pid,
            exe
        }),
        Just(Actor::Agent),
        Just(Actor::Scheduler),
    ]
}

fn event() -> impl Strategy<Value = AuditEvent> {
    (
        (
            any::<i64>(),
            0u32..1_000_000,
            0usize..AuditKind::ALL.len(),
            actor(),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(any::<u32>()),
        ),
        (
            text(),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
            text(),
        ),
        (
            prop_oneof![3 => Just(1u32), 1 => 1u32..],
            prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
        ),
    )
        .prop_map(
            |(
                (at, micros, kind, actor),
                (token, key, key_version),
                (operation, mechanism, result, reason),
                (count, span_us),
            )| AuditEvent {
                at,
                micros,
                kind: AuditKind::ALL[kind],
                actor,
                token,
                key,
                key_version,
                operation,
                mechanism,
                result,
                reason,
                count,
                span_us,
            },
        )
}

fn host() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text().prop_filter("a host is never empty", |h| !h.is_empty()))
}

/// Reads a canonical encoding as `audit.rs` documents it (formats 1, 2, 3).
fn decode(mut b: &[u8]) -> Option<(AuditEvent, Option<String>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn u32_(b: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?))
    }
    fn u64_(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(take(b, 8)?.try_into().ok()?))
    }
    fn str_(b: &mut &[u8]) -> Option<String> {
        let len = u32_(b)? as usize;
        String::from_utf8(take(b, len)?.to_vec()).ok()
    }
    fn opt<T>(b: &mut &[u8], read: impl FnOnce(&mut &[u8]) -> Option<T>) -> Option<Option<T>> {
        match take(b, 1)?[0] {
            0 => Some(None),
            1 => read(b).map(Some),
            _ => None,
        }
    }
    let format = take(&mut b, 1)?[0];
    if ![EVENT_FORMAT, EVENT_FORMAT_COALESCED, EVENT_FORMAT_HOSTED].contains(&format) {
        return None;
    }
    let at = u64_(&mut b)? as i64;
    let micros = u32_(&mut b)?;
    let kind = str_(&mut b)?.parse().ok()?;
    let actor = match str_(&mut b)?.as_str() {
        "application" => Actor::Application {
            name: str_(&mut b)?,
            uid: u32_(&mut b)?,
            gid: u32_(&mut b)?,
            pid: u32_(&mut b)?,
            exe: str_(&mut b)?,
        },
        "administrator" => Actor::Administrator {
            uid: u32_(&mut b)?,
            pid: u32_(&mut b)?,
            exe: str_(&mut b)?,
        },
        "agent" => Actor::Agent,
        "scheduler" => Actor::Scheduler,
        _ => return None,
    };
    let token = opt(&mut b, str_)?;
    let key = opt(&mut b, str_)?;
    let key_version = opt(&mut b, u32_)?;
    let operation = str_(&mut b)?;
    let mechanism = opt(&mut b, u64_)?;
    let result = u64_(&mut b)?;
    let reason = str_(&mut b)?;
    let (count, span_us) = if format == EVENT_FORMAT {
        (1, 0)
    } else {
        (u32_(&mut b)?, u32_(&mut b)?)
    };
    let host = if format == EVENT_FORMAT_HOSTED {
        Some(str_(&mut b)?)
    } else {
        None
    };
    let e = AuditEvent {
        at,
        micros,
        kind,
        actor,
        token,
        key,
        key_version,
        operation,
        mechanism,
        result,
        reason,
        count,
        span_us,
    };
    b.is_empty().then_some((e, host))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Record -> row -> record -> row is the identity: what a store
    /// writes, it reads back as the same record.
    #[test]
    fn a_row_reads_back_as_its_record(
        e in event(),
        seq in 0u64..=i64::MAX as u64,
        prev in any::<Hash>(),
        hash in any::<Hash>(),
        host in host(),
    ) {
        let row = AuditRow::of(seq, &e, &prev, &hash, host.as_deref());
        let record = row.decode().map_err(TestCaseError::fail)?;
        let want = AuditRecord {
            seq,
            event: e.clone(),
            host: host.clone(),
            prev_hash: prev,
            hash,
        };
        prop_assert_eq!(&record, &want);
        let again = AuditRow::of(
            record.seq,
            &record.event,
            &record.prev_hash,
            &record.hash,
            record.host.as_deref(),
        );
        prop_assert_eq!(again, row);
    }

    /// encode -> decode -> encode is the identity for the hashed form.
    #[test]
    fn the_canonical_form_reads_back(e in event(), host in host()) {
        let bytes = canonical_on(&e, host.as_deref());
        let back = decode(&bytes);
        prop_assert_eq!(back.as_ref(), Some(&(e.clone(), host.clone())));
        let (e2, h2) = back.ok_or_else(|| TestCaseError::fail("unreadable"))?;
        prop_assert_eq!(canonical_on(&e2, h2.as_deref()), bytes);
    }

    /// Two different records never encode alike, nor hash alike at the
    /// same place in the chain; the place (seq, previous hash) counts too.
    #[test]
    fn distinct_records_encode_and_hash_apart(
        a in event(),
        b in event(),
        ha in host(),
        hb in host(),
        prev in any::<Hash>(),
        seq in any::<u64>(),
    ) {
        prop_assume!((&a, &ha) != (&b, &hb));
        prop_assert_ne!(canonical_on(&a, ha.as_deref()), canonical_on(&b, hb.as_deref()));
        prop_assert_ne!(
            record_hash_on(&prev, seq, &a, ha.as_deref()),
            record_hash_on(&prev, seq, &b, hb.as_deref())
        );
        prop_assert_ne!(
            record_hash_on(&prev, seq, &a, ha.as_deref()),
            record_hash_on(&prev, seq.wrapping_add(1), &a, ha.as_deref())
        );
    }
}
