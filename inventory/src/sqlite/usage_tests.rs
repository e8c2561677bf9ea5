//! Unit tests of the report's aggregations: sums of `count`, the window
//! and baseline cut at the microsecond, hours, failures, revocations.

use super::*;
use crate::{Actor, AuditEvent, AuditKind, AuditLog};

const T0: i64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, SqliteInventory) {
    let dir = tempfile::tempdir().unwrap();
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).unwrap();
    (dir, inv)
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
        mechanism: None,
        result: 0,
        reason: String::new(),
        count: 1,
        span_us: 0,
    }
}

fn app(name: &str, exe: &str) -> Actor {
    Actor::Application {
        name: name.into(),
        uid: 1000,
        gid: 1000,
        pid: 42,
        exe: exe.into(),
    }
}

fn admin() -> Actor {
    Actor::Administrator {
        uid: 0,
        pid: 7,
        exe: "/usr/bin/keyward".into(),
    }
}

fn sign(at: i64, micros: u32, who: &str, exe: &str, count: u32) -> AuditEvent {
    AuditEvent {
        count,
        span_us: if count > 1 { 1000 } else { 0 },
        ..event(AuditKind::Use, at, micros, app(who, exe), "sign")
    }
}

/// Baseline `[T0, T0 + 100 s)`, window `[T0 + 100 s, T0 + 110 s)`.
const SPAN: Span = Span {
    baseline_from: T0 * 1_000_000,
    window_from: (T0 + 100) * 1_000_000,
    until: (T0 + 110) * 1_000_000,
};

#[test]
fn uses_sum_counts_by_application_and_cut_at_the_microsecond() {
    let (_d, inv) = store();
    let mut unmanaged = sign(T0 + 105, 0, "web", "/bin/web", 4);
    unmanaged.key = Some("id:0102".into());
    unmanaged.key_version = None;
    let mut failed = sign(T0 + 50, 0, "web", "/bin/web", 1);
    failed.result = 0x150;
    inv.append(
        &[
            // Before the baseline: in the total only.
            sign(T0 - 10, 0, "web", "/bin/web", 5),
            sign(T0 + 10, 5, "web", "/bin/web", 7),
            failed,
            // The last microsecond of the baseline, and the first of the window.
            sign(T0 + 99, 999_999, "web", "/bin/web", 3),
            sign(T0 + 100, 0, "web", "/bin/web", 2),
            sign(T0 + 101, 0, "batch", "/bin/batch", 100),
            // After `until`: in the total only.
            sign(T0 + 110, 0, "batch", "/bin/batch", 1),
            unmanaged,
            // Not a use.
            event(
                AuditKind::Refusal,
                T0 + 102,
                0,
                app("web", "/bin/web"),
                "sign",
            ),
        ],
        false,
    )
    .unwrap();
    let mut rows = inv.use_rows(&SPAN, None).unwrap();
    rows.sort_by(|a, b| (&a.key, &a.application).cmp(&(&b.key, &b.application)));
    assert_eq!(rows.len(), 3, "{rows:?}");
    let unmanaged = &rows[0];
    assert_eq!(
        (
            unmanaged.key.as_str(),
            unmanaged.managed,
            unmanaged.window,
            unmanaged.total
        ),
        ("id:0102", false, 4, 4)
    );
    let batch = &rows[1];
    assert_eq!(
        (
            batch.application.as_str(),
            batch.exe.as_str(),
            batch.managed
        ),
        ("batch", "/bin/batch", true)
    );
    assert_eq!((batch.window, batch.baseline, batch.total), (100, 0, 101));
    assert_eq!(batch.baseline_first, None);
    assert_eq!(batch.last_at, T0 + 110);
    let web = &rows[2];
    assert_eq!(
        (web.window, web.baseline, web.total, web.failed),
        (2, 11, 18, 1)
    );
    assert_eq!(web.baseline_first, Some((T0 + 10) * 1_000_000 + 5));
    // One key only.
    assert!(inv.use_rows(&SPAN, Some("other")).unwrap().is_empty());
    assert_eq!(inv.use_rows(&SPAN, Some("k")).unwrap().len(), 2);
}

#[test]
fn hours_of_the_day_in_utc() {
    let (_d, inv) = store();
    // T0 is 2023-11-14 22:13:20 UTC.
    assert_eq!((T0 % 86_400) / 3600, 22);
    inv.append(
        &[
            sign(T0, 0, "web", "/bin/web", 3),
            sign(T0 + 3600, 0, "web", "/bin/web", 2),
            sign(T0 + 105, 0, "web", "/bin/web", 4),
        ],
        false,
    )
    .unwrap();
    let span = Span {
        until: (T0 + 7200) * 1_000_000,
        ..SPAN
    };
    let mut hours = inv.use_hours(&span, None).unwrap();
    hours.sort_by_key(|h| h.hour);
    let got: Vec<(u8, u64, u64)> = hours
        .iter()
        .map(|h| (h.hour, h.window, h.baseline))
        .collect();
    assert_eq!(got, vec![(22, 4, 3), (23, 2, 0)]);
}

#[test]
fn export_attempts_failures_and_revocations() {
    let (_d, inv) = store();
    let mut refused = event(
        AuditKind::Refusal,
        T0 + 105,
        0,
        app("web", "/bin/web"),
        "wrapping out",
    );
    refused.token = None;
    refused.result = 0x1b;
    let mut wrap_failed = sign(T0 + 106, 0, "web", "/bin/web", 1);
    wrap_failed.operation = "wrap".into();
    wrap_failed.result = 0x5;
    let mut wrap = sign(T0 + 50, 0, "web", "/bin/web", 3);
    wrap.operation = "wrap".into();
    let requested = |at: i64, reason: &str| {
        let mut e = event(AuditKind::Admin, at, 0, admin(), "key Transition");
        e.token = None;
        e.key_version = None;
        e.reason = reason.into();
        e
    };
    let mut failed_admin = requested(T0 + 107, "Failed: HSM: C_GenerateKeyPair");
    failed_admin.result = 0x6;
    let mut revoke = event(AuditKind::Lifecycle, T0 + 108, 500_000, admin(), "revoke");
    revoke.key_version = None;
    let mut after_ok = sign(T0 + 109, 0, "web", "/bin/web", 2);
    after_ok.key_version = Some(2);
    let mut after_refused = sign(T0 + 109, 0, "web", "/bin/web", 1);
    after_refused.result = 0x68;
    inv.append(
        &[
            refused,
            wrap,
            wrap_failed,
            requested(T0 + 100, "requested: Transition { action: Suspend }"),
            requested(
                T0 + 108,
                "requested: Transition { action: Revoke { rotate: true } }",
            ),
            failed_admin,
            revoke,
            after_ok,
            after_refused,
        ],
        false,
    )
    .unwrap();

    let mut ops = inv
        .operation_rows(&SPAN, Some("k"), &["wrapping out", "a copy"], &["wrap"])
        .unwrap();
    ops.sort_by(|a, b| a.kind.cmp(&b.kind));
    let got: Vec<(&str, &str, u64, u64)> = ops
        .iter()
        .map(|o| (o.kind.as_str(), o.operation.as_str(), o.total, o.window))
        .collect();
    assert_eq!(
        got,
        vec![("refusal", "wrapping out", 1, 1), ("use", "wrap", 3, 0)]
    );
    assert!(inv
        .operation_rows(&SPAN, None, &[], &[])
        .unwrap()
        .is_empty());

    let f = inv.failures(&SPAN, "admin", 5).unwrap();
    assert_eq!((f.window, f.period, f.total), (1, 1, 1));
    assert_eq!(f.last.len(), 1);
    assert_eq!(f.last[0].uid, Some(0));
    assert!(f.last[0].reason.contains("C_GenerateKeyPair"));

    let revokes = inv
        .lifecycle_rows(Some("k"), &["revoke", "compromise"])
        .unwrap();
    assert_eq!(revokes.len(), 1);
    let r = &revokes[0];
    let req = inv
        .request_before("prod", "k", r.seq, "key Transition", "Revoke")
        .unwrap()
        .expect("the revoke request");
    assert_eq!(r.at_us() - req.at_us(), 500_000);
    // Version 2 (the emergency rotation's) may sign after; version 1 may not.
    let v1 = inv.uses_after("prod", "k", &[1], r.seq, None).unwrap();
    assert_eq!(v1, UsesAfter::default());
    let any = inv.uses_after("prod", "k", &[], r.seq, None).unwrap();
    assert_eq!(any.count, 2);
    assert_eq!(any.first_seq, Some(r.seq + 1));
    assert_eq!(
        inv.uses_after("prod", "k", &[2], 0, None).unwrap().count,
        2,
        "refused and failed uses are not uses that succeeded"
    );
}

/// Uses after a revocation, without those its recovery window allowed:
/// verify and decrypt after the window's record and before its end. A
/// verify before the window opened, a sign in it, and a decrypt after its
/// end still count.
#[test]
fn uses_a_recovery_window_allowed_are_not_uses_after_the_revocation() {
    let (_dir, inv) = store();
    let op = |at: i64, operation: &str| event(AuditKind::Use, at, 0, app("web", "/w"), operation);
    inv.append(
        &[
            event(AuditKind::Lifecycle, T0, 0, admin(), "revoke"),
            op(T0 + 1, "verify"),
            event(AuditKind::Lifecycle, T0 + 2, 0, admin(), "recover"),
            op(T0 + 3, "verify"),
            op(T0 + 4, "decrypt"),
            op(T0 + 5, "sign"),
            op(T0 + 20, "decrypt"),
        ],
        true,
    )
    .unwrap();
    let revoke = inv.lifecycle_rows(Some("k"), &["revoke"]).unwrap()[0].seq;
    let recover = inv.lifecycle_rows(Some("k"), &["recover"]).unwrap()[0].seq;
    assert_eq!(
        inv.uses_after("prod", "k", &[1], revoke, None)
            .unwrap()
            .count,
        5
    );
    let window = RecoveryUses {
        from: recover,
        until: T0 + 10,
    };
    let left = inv
        .uses_after("prod", "k", &[1], revoke, Some(window))
        .unwrap();
    assert_eq!(
        left.count, 3,
        "the verify before, the sign, the decrypt after"
    );
    assert_eq!(left.first_seq, Some(revoke + 1));
    let after_opening = inv
        .uses_after("prod", "k", &[1], recover, Some(window))
        .unwrap();
    assert_eq!(after_opening.count, 2);
    assert_eq!(after_opening.first_seq, Some(recover + 3));
}
