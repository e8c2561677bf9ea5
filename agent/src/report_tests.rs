//! Unit tests of the report's pure parts: each anomaly rule and its quiet
//! cases, over made-up aggregated rows; durations for people; certificate
//! expiry; grant drift.

use super::*;

const H: i64 = 3600 * MICROS;
const D: i64 = 24 * H;
/// 2024-01-01 00:00:00 UTC, in microseconds.
const NOW: i64 = 1_704_067_200 * MICROS;

/// A report at [`NOW`] with a window of `window` and a baseline of
/// `baseline` before it, for a key older than both.
fn periods(window: i64, baseline: i64) -> Periods {
    let span = Span {
        until: NOW,
        window_from: NOW - window,
        baseline_from: NOW - window - baseline,
    };
    Periods {
        span,
        baseline_from: span.baseline_from,
    }
}

fn uses(app: &str, exe: &str, window: u64, baseline: u64, baseline_first: Option<i64>) -> UseRow {
    UseRow {
        token: Some("prod".into()),
        key: "k".into(),
        managed: true,
        application: app.into(),
        exe: exe.into(),
        total: window + baseline,
        failed: 0,
        window,
        baseline,
        baseline_first,
        last_at: NOW / MICROS,
    }
}

fn hour(hour: u8, window: u64, baseline: u64) -> HourRow {
    HourRow {
        token: Some("prod".into()),
        key: "k".into(),
        hour,
        window,
        baseline,
    }
}

fn run(rows: &[UseRow], hours: &[HourRow], p: Periods) -> Judged {
    let rows: Vec<&UseRow> = rows.iter().collect();
    let hours: Vec<&HourRow> = hours.iter().collect();
    judge("prod", "k", &rows, &hours, p, &AnomalyThresholds::default())
}

fn kinds(j: &Judged) -> Vec<AnomalyKind> {
    j.anomalies.iter().map(|a| a.kind).collect()
}

#[test]
fn a_new_executable_is_an_anomaly_once_the_key_has_a_baseline() {
    let p = periods(H, 7 * D);
    let first = Some(NOW - 2 * D);
    let j = run(
        &[
            uses("web", "/usr/bin/web", 5, 40, first),
            uses("web", "/tmp/copy-of-web", 3, 0, None),
        ],
        &[],
        p,
    );
    assert!(!j.learning);
    assert_eq!(kinds(&j), vec![AnomalyKind::NewApplication]);
    let a = &j.anomalies[0];
    assert_eq!(a.exe.as_deref(), Some("/tmp/copy-of-web"));
    assert_eq!(a.application.as_deref(), Some("web"));
    assert_eq!((a.uses, a.token.as_str(), a.key.as_str()), (3, "prod", "k"));

    // Quiet: the same executable keeps using it.
    let j = run(&[uses("web", "/usr/bin/web", 5, 40, first)], &[], p);
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    // Quiet: a known executable that is idle in the window.
    let j = run(
        &[
            uses("web", "/usr/bin/web", 5, 40, first),
            uses("batch", "/usr/bin/batch", 0, 7, first),
        ],
        &[],
        p,
    );
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
}

#[test]
fn without_a_baseline_the_key_is_learning() {
    let j = run(
        &[
            uses("web", "/usr/bin/web", 5, 0, None),
            uses("batch", "/usr/bin/batch", 2, 0, None),
        ],
        &[hour(3, 7, 0)],
        periods(H, 7 * D),
    );
    assert!(j.learning);
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
}

/// 24 hours a day is not what a baseline looks like; office hours are.
fn office_hours(window_hour: u8, window: u64) -> Vec<HourRow> {
    let mut h: Vec<HourRow> = (9..17).map(|x| hour(x, 0, 50)).collect();
    if let Some(seen) = h.iter_mut().find(|x| x.hour == window_hour) {
        seen.window = window;
    } else {
        h.push(hour(window_hour, window, 0));
    }
    h
}

#[test]
fn use_outside_the_usual_hours_is_an_anomaly_once_the_baseline_is_long_enough() {
    let p = periods(H, 7 * D);
    let row = |first| [uses("web", "/usr/bin/web", 12, 400, Some(first))];
    // Four days of office hours; then uses at 03:00 UTC.
    let j = run(&row(NOW - 4 * D), &office_hours(3, 12), p);
    assert_eq!(kinds(&j), vec![AnomalyKind::UnusualHour]);
    assert_eq!((j.anomalies[0].hour, j.anomalies[0].uses), (Some(3), 12));
    assert!(
        j.anomalies[0].detail.contains("03:00"),
        "{}",
        j.anomalies[0].detail
    );

    // Quiet: the same uses at 10:00, an hour the baseline knows.
    let j = run(&row(NOW - 4 * D), &office_hours(10, 12), p);
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    // Quiet: the baseline spans two days only (under 3).
    let j = run(&row(NOW - 2 * D), &office_hours(3, 12), p);
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    // Quiet: four days but only 99 uses.
    let j = run(
        &[uses("web", "/usr/bin/web", 12, 99, Some(NOW - 4 * D))],
        &office_hours(3, 12),
        p,
    );
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    // Exactly at the thresholds: 100 uses over 3 days (to the window's start).
    let j = run(
        &[uses("web", "/usr/bin/web", 12, 100, Some(NOW - H - 3 * D))],
        &office_hours(3, 12),
        p,
    );
    assert_eq!(kinds(&j), vec![AnomalyKind::UnusualHour]);
}

#[test]
fn a_volume_spike_is_an_anomaly_and_a_steady_rate_is_not() {
    // Window 3 s, baseline 30 s: ten slices.
    let s = MICROS;
    let p = periods(3 * s, 30 * s);
    let first = Some(NOW - 30 * s);
    // Steady: 150 per 3 s all along (over the floor: the baseline decides).
    let steady = run(&[uses("web", "/usr/bin/web", 150, 1500, first)], &[], p);
    assert!(steady.anomalies.is_empty(), "{:?}", steady.anomalies);
    // Ten times the mean is the edge: 1500 is quiet, 1501 fires.
    let edge = run(&[uses("web", "/usr/bin/web", 1500, 1500, first)], &[], p);
    assert!(edge.anomalies.is_empty(), "{:?}", edge.anomalies);
    let spike = run(&[uses("web", "/usr/bin/web", 1501, 1500, first)], &[], p);
    assert_eq!(kinds(&spike), vec![AnomalyKind::VolumeSpike]);
    assert_eq!(spike.anomalies[0].uses, 1501);
    assert!(
        spike.anomalies[0].detail.contains("150.0 per window"),
        "{}",
        spike.anomalies[0].detail
    );

    // Under the floor: 11 times a tiny baseline is still quiet.
    let low = run(&[uses("web", "/usr/bin/web", 99, 30, first)], &[], p);
    assert!(low.anomalies.is_empty(), "{:?}", low.anomalies);
    // A dormant key (no baseline use, but a whole baseline) suddenly busy.
    let dormant = run(&[uses("web", "/usr/bin/web", 101, 0, None)], &[], p);
    assert!(dormant.learning);
    assert_eq!(kinds(&dormant), vec![AnomalyKind::VolumeSpike]);
    // A key younger than one window has no baseline to compare with.
    let young = Periods {
        baseline_from: NOW - 5 * s,
        ..p
    };
    let j = run(
        &[uses("web", "/usr/bin/web", 500, 1, Some(NOW - 4 * s))],
        &[],
        young,
    );
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    // The key's own baseline counts, not the nominal one: 6 s of history
    // with 100 uses is a mean of 50 per 3 s.
    let six = Periods {
        baseline_from: NOW - 9 * s,
        ..p
    };
    let j = run(
        &[uses("web", "/usr/bin/web", 500, 100, Some(NOW - 9 * s))],
        &[],
        six,
    );
    assert!(j.anomalies.is_empty(), "{:?}", j.anomalies);
    let j = run(
        &[uses("web", "/usr/bin/web", 501, 100, Some(NOW - 9 * s))],
        &[],
        six,
    );
    assert_eq!(kinds(&j), vec![AnomalyKind::VolumeSpike]);
}

#[test]
fn thresholds_come_from_the_request() {
    let s = MICROS;
    let p = periods(3 * s, 30 * s);
    let rows = [uses("web", "/usr/bin/web", 40, 100, Some(NOW - 30 * s))];
    let r: Vec<&UseRow> = rows.iter().collect();
    let t = AnomalyThresholds {
        spike_factor: 3,
        spike_floor: 20,
        ..AnomalyThresholds::default()
    };
    // Mean 10 per window: 40 > 3 × 10 and > 20.
    assert_eq!(
        kinds(&judge("prod", "k", &r, &[], p, &t)),
        vec![AnomalyKind::VolumeSpike]
    );
    assert!(run(&rows, &[], p).anomalies.is_empty());
}

/// A self-signed P-256 certificate, notAfter 2036-11-22 21:51:03 UTC.
const CERT_HEX: &[&str] = &[
    "3082019130820137a0030201020214364136ba10674ed6e7489693fdc959511e2c4119300a06082a8648ce3d",
    "040302301e311c301a06035504030c136b6579776172642d7265706f72742d74657374301e170d3236313132",
    "353231353130335a170d3336313132323231353130335a301e311c301a06035504030c136b6579776172642d",
    "7265706f72742d746573743059301306072a8648ce3d020106082a8648ce3d0301070342000416d005510aa6",
    "9fa42adb196228e8e02fd946fc7de5a5265b6851e8bd5a0dc268c77cabd5cd2f58c4aa018a50793c88ec07ce",
    "ef9f0d80473f679dbc987caf7c67a3533051301d0603551d0e04160414e296650d11a288931675a1352140b3",
    "b0022725a0301f0603551d23041830168014e296650d11a288931675a1352140b3b0022725a0300f0603551d",
    "130101ff040530030101ff300a06082a8648ce3d040302034800304502203996c5c60e1752ea6edbd27b1f85",
    "818641c93432109848ee2d8ce49abe6345420221008f5c94975307f1600b6c0c26b5924d52b79df52c2cec0d",
    "726af106f9a208e8da",
];

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn certificate_expiry() {
    let der = unhex(&CERT_HEX.concat());
    assert_eq!(not_after(&der), Ok(2_111_003_463));
    assert!(not_after(&der[..100]).is_err());
    assert!(not_after(b"not a certificate")
        .unwrap_err()
        .contains("X.509"));
}

#[test]
fn grants_that_no_longer_match_the_policy_are_drift() {
    let policy = keyward_policy::Policy::from_str(
        r#"
[settings]
mode = "strict"

[[application]]
name = "web"
uid = 1000

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
"#,
        "test",
    )
    .unwrap();
    let grant = |app: &str, ops: &[&str], expires_at| keyward_inventory::Grant {
        key_id: 1,
        application: app.into(),
        operations: ops.iter().map(|o| o.parse().unwrap()).collect(),
        expires_at,
    };
    let key = KeyView {
        record: keyward_inventory::KeyRecord {
            id: 1,
            name: "k".into(),
            token: "prod".into(),
            owner: "uid:0".into(),
            purpose: keyward_policy::Purpose::Signing,
            class: "signing".into(),
            algorithm: keyward_policy::Algorithm::Ec(keyward_policy::Curve::P256),
            state: KeyState::Active,
            created_at: 0,
            activated_at: None,
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: Vec::new(),
            last_used_at: None,
            backup_allowed: false,
            recovery_until: None,
            reason_code: None,
        },
        versions: Vec::new(),
        grants: vec![
            grant("web", &["sign", "verify"], None),
            grant("web", &["decrypt"], None),
            grant("gone", &["sign"], None),
            grant("gone-too", &["decrypt"], Some(10)),
        ],
    };
    let class = policy.class("signing");
    let drift = grant_drift(&policy, &key, class, 100);
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(
        drift[0].contains("decrypt") && drift[0].contains("does not allow"),
        "{drift:?}"
    );
    assert!(
        drift[1].contains("\"gone\"") && drift[1].contains("no such application"),
        "{drift:?}"
    );
    let drift = grant_drift(&policy, &key, None, 100);
    assert!(drift[0].contains("no longer in the policy"), "{drift:?}");
}

mod agent {
    //! `Lifecycle::report` over the mock backend and a trail written here: the
    //! figures that come from the trail, a use after a revocation included
    //! (which a real agent never lets happen).

    use std::time::{Duration, SystemTime};

    use keyward_inventory::{
        Actor, AuditEvent, AuditKind, KeyChange, LifecycleChange, VersionChange,
    };
    use keyward_policy::KeyState;
    use keyward_protocol::admin::{
        AdminResponse, AnomalyThresholds, KeyAction, KeyRequest, ReportRequest,
    };

    use crate::agent::Agent;
    use crate::keys::secs;
    use crate::listener::identity::Peer;

    const POLICY: &str = crate::agent::tests::STRICT_SIGNING;

    fn agent() -> (tempfile::TempDir, Agent) {
        crate::agent::tests::mock_agent(POLICY)
    }

    fn admin() -> Peer {
        crate::agent::tests::admin_peer()
    }

    fn ok(a: &Agent, req: KeyRequest) {
        match a.lifecycle.key_request(&admin(), req) {
            AdminResponse::Key(_) => {}
            other => panic!("{other:?}"),
        }
    }

    fn event(kind: AuditKind, at: i64, operation: &str, version: Option<u32>) -> AuditEvent {
        AuditEvent {
            at,
            micros: 0,
            kind,
            actor: Actor::Application {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                pid: 9,
                exe: "/usr/bin/app".into(),
            },
            token: Some("kw".into()),
            key: Some("k".into()),
            key_version: version,
            operation: operation.into(),
            mechanism: Some(0x1041),
            result: 0,
            reason: String::new(),
            count: 1,
            span_us: 0,
        }
    }

    /// The lifecycle records' reasons, as the agent writes them.
    const REASONS: [&str; 3] = [
        "from active to compromised: stolen",
        "from active to compromised: stolen",
        "from none to active: stolen",
    ];

    #[test]
    fn figures_from_the_trail() {
        figures_from_the_trail_with("key.revoke", "requested: revoke k: stolen", REASONS);
    }

    /// The revoked versions are the inventory's typed history's: the
    /// records' reasons are for people, and whatever their wording (here
    /// version 2's claims what the history does not show, version 1's
    /// names no state) the report does not read them.
    #[test]
    fn revoked_versions_come_from_the_history_not_the_reasons() {
        figures_from_the_trail_with(
            "key.revoke",
            "requested: revoke k: stolen",
            [
                "revoked: stolen",
                "version revoked",
                "from active to compromised: stolen",
            ],
        );
    }

    /// Trails written before admin requests had names keep their
    /// revocation latency.
    #[test]
    fn revocation_latency_from_a_trail_without_request_names() {
        figures_from_the_trail_with(
            "key Transition",
            "requested: Transition { action: Revoke { rotate: false } }",
            REASONS,
        );
    }

    fn figures_from_the_trail_with(
        request_operation: &str,
        request_reason: &str,
        reasons: [&str; 3],
    ) {
        let (_d, a) = agent();
        ok(
            &a,
            KeyRequest::Create {
                name: "k".into(),
                class: "signing".into(),
                algorithm: None,
                token: None,
                owner: None,
            },
        );
        let activate = KeyRequest::Transition {
            name: "k".into(),
            token: None,
            action: KeyAction::Activate,
            reason: None,
            code: None,
        };
        ok(&a, activate.clone());
        // A failed admin action: activating an active key.
        assert!(matches!(
            a.lifecycle.key_request(&admin(), activate),
            AdminResponse::KeyErr { .. }
        ));

        let now = SystemTime::now() + Duration::from_secs(600);
        let t = secs(now);
        let uses = |at: i64, n: u32| AuditEvent {
            count: n,
            span_us: 10,
            ..event(AuditKind::Use, at, "sign", Some(1))
        };
        let mut requested = event(AuditKind::Admin, t - 20, request_operation, None);
        requested.actor = Actor::Administrator {
            uid: 0,
            pid: 1,
            exe: String::new(),
        };
        requested.token = None;
        requested.reason = request_reason.into();
        // One revocation, as the agent records it: the key's change, each
        // version's (an emergency rotation's new version too).
        let lifecycle = |version: Option<u32>, reason: &str| {
            let mut e = event(AuditKind::Lifecycle, t - 20, "revoke", version);
            e.actor = requested.actor.clone();
            e.micros = 2500;
            e.reason = reason.into();
            e
        };
        let revoke = [
            lifecycle(None, reasons[0]),
            lifecycle(Some(1), reasons[1]),
            lifecycle(Some(2), reasons[2]),
        ];
        // The inventory's side of that revocation: the report takes the
        // revoked versions from the typed history, not from the records'
        // reasons (version 2, which the records name too, did not become
        // compromised; it is not made here, having no backend object).
        let key_id = a.keys.inventory().key("kw", "k").unwrap().unwrap().id;
        a.keys
            .inventory()
            .apply(&LifecycleChange {
                key: KeyChange::Update {
                    key_id,
                    expected: KeyState::Active,
                    to: Some(KeyState::Compromised),
                    code: None,
                },
                versions: vec![VersionChange::Move {
                    version: 1,
                    from: KeyState::Active,
                    to: KeyState::Compromised,
                }],
                dates: Default::default(),
                actor: "uid:0".into(),
                reason: "stolen".into(),
                at: t - 20,
                trail: Vec::new(),
            })
            .unwrap();
        a.keys.refresh(key_id).unwrap();
        let mut v2 = uses(t - 9, 3);
        v2.key_version = Some(2);
        let mut wrap_out = event(AuditKind::Refusal, t - 30, "wrapping out", None);
        wrap_out.token = None;
        wrap_out.result = 0x1b;
        let mut unmanaged = uses(t - 5, 6);
        unmanaged.key = Some("id:abcd".into());
        unmanaged.key_version = None;
        a.audit
            .log()
            .append(
                &[
                    uses(t - 7200, 40),
                    uses(t - 60, 5),
                    wrap_out,
                    event(AuditKind::Use, t - 25, "wrap", Some(1)),
                    requested,
                    revoke[0].clone(),
                    revoke[1].clone(),
                    revoke[2].clone(),
                    uses(t - 10, 2),
                    v2,
                    unmanaged,
                ],
                true,
            )
            .unwrap();

        let req = ReportRequest {
            key: None,
            token: None,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
        };
        let r = a.lifecycle.report(&req, now).unwrap();
        assert_eq!(r.keys.len(), 1);
        let k = &r.keys[0];
        assert_eq!(
            (k.name.as_str(), k.token.as_str(), k.state.as_str()),
            ("k", "kw", "compromised")
        );
        assert_eq!(k.active_version, None);
        assert_eq!(
            (k.usage.window, k.usage.baseline, k.usage.total),
            (11, 40, 51)
        );
        assert_eq!(k.usage.by_application.len(), 1);
        assert_eq!(k.usage.by_application[0].exe, "/usr/bin/app");
        assert!(!k.learning);
        assert!(k.anomalies.is_empty(), "{:?}", k.anomalies);
        assert_eq!(k.exports.refused.len(), 1);
        assert_eq!(k.exports.refused[0].operation, "wrapping out");
        assert_eq!((k.exports.refused_window, k.exports.wraps), (1, 1));
        assert_eq!(k.revocations.len(), 1);
        let rev = &k.revocations[0];
        assert_eq!(rev.latency_us, Some(2500));
        assert_eq!(rev.versions, vec![1]);
        assert_eq!((rev.uses_after, rev.no_use_after), (2, false));
        assert!(rev.first_use_after.is_some());
        assert_eq!(rev.action, "revoke");
        assert!(!k.overdue);
        // A compromised key is not counted in rotation compliance.
        assert_eq!((r.rotation.active, r.rotation.compliant), (0, 0));
        assert_eq!(r.failed_admin.total, 1);
        assert_eq!(r.failed_admin.last[0].operation, "key.activate");
        assert_eq!(
            r.failed_admin.last[0].reason,
            "refused: key kw/k: a active key cannot be activated"
        );
        // The lifecycle's refusal, by its own result value.
        assert_eq!(
            r.failed_admin.last[0].result,
            keyward_policy::KEYWARD_REFUSED
        );
        assert_eq!(r.unmanaged.len(), 1);
        assert_eq!(
            (r.unmanaged[0].object.as_str(), r.unmanaged[0].window),
            ("id:abcd", 6)
        );

        // One key; an unknown key or token is not found; no empty window.
        let one = a
            .lifecycle
            .report(
                &ReportRequest {
                    key: Some("k".into()),
                    ..req.clone()
                },
                now,
            )
            .unwrap();
        assert_eq!(one.keys.len(), 1);
        assert!(one.unmanaged.is_empty());
        let err = |r: ReportRequest| a.lifecycle.report(&r, now).unwrap_err().kind;
        use keyward_protocol::admin::AdminErrorKind as K;
        assert_eq!(
            err(ReportRequest {
                key: Some("nope".into()),
                ..req.clone()
            }),
            K::NotFound
        );
        assert_eq!(
            err(ReportRequest {
                token: Some("nope".into()),
                ..req.clone()
            }),
            K::NotFound
        );
        assert_eq!(
            err(ReportRequest {
                window_secs: 0,
                ..req.clone()
            }),
            K::Invalid
        );
        match a.lifecycle.report_request(&admin(), req) {
            AdminResponse::Report(r) => assert_eq!(r.keys.len(), 1),
            other => panic!("{other:?}"),
        }
        // The report is one admin record: who asked, what, what came of it.
        a.audit.flush();
        let last = a.audit.log().tail(1).unwrap();
        let e = &last[0].event;
        assert_eq!(
            (e.kind, e.operation.as_str()),
            (AuditKind::Admin, "report.make")
        );
        assert_eq!(
            e.reason,
            "report on every key: the last 1h against the 7d before: 1 key"
        );
    }

    /// The backups' records come with the revocations' in one query: each
    /// key gets its own, and a revocation beside them is still one.
    #[test]
    fn backups_and_drills_from_the_trail_beside_a_revocation() {
        let policy = format!(
            "{POLICY}\n[[class]]\nname = \"kept\"\npurpose = \"signing\"\n\
             algorithms = [\"ec:p256\"]\nprotect_period = \"365d\"\n\
             process_period = \"730d\"\nbackup = true\n"
        );
        let (_d, a) = crate::agent::tests::mock_agent(&policy);
        for (name, class) in [("b", "kept"), ("k", "signing")] {
            ok(
                &a,
                KeyRequest::Create {
                    name: name.into(),
                    class: class.into(),
                    algorithm: None,
                    token: None,
                    owner: None,
                },
            );
            ok(
                &a,
                KeyRequest::Transition {
                    name: name.into(),
                    token: None,
                    action: KeyAction::Activate,
                    reason: None,
                    code: None,
                },
            );
        }
        let now = SystemTime::now() + Duration::from_secs(600);
        let t = secs(now);
        let req = ReportRequest {
            key: None,
            token: None,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
        };
        let by_name = |r: &keyward_protocol::admin::Report, n: &str| {
            r.keys.iter().find(|k| k.name == n).cloned().unwrap()
        };
        let r = a.lifecycle.report(&req, now).unwrap();
        assert!(by_name(&r, "b").backup_missing);
        assert!(!by_name(&r, "k").backup_missing, "its class has no backup");

        let id = "ab".repeat(32);
        let record = |key: &str, at: i64, operation: &str, reason: String, result: u64| {
            let mut e = event(AuditKind::Lifecycle, at, operation, Some(1));
            e.key = Some(key.into());
            e.reason = reason;
            e.result = result;
            e
        };
        let mut elsewhere = record("k", t - 95, "backup", format!("in backup {id}"), 0);
        elsewhere.token = Some("another".into());
        a.audit
            .log()
            .append(
                &[
                    record("b", t - 100, "backup", format!("in backup {id}"), 0),
                    elsewhere,
                    record("b", t - 90, "backup drill", format!("backup {id}: no"), 6),
                    record("b", t - 80, "backup drill", format!("backup {id}: ok"), 0),
                    record(
                        "k",
                        t - 50,
                        "revoke",
                        "from active to compromised: x".into(),
                        0,
                    ),
                ],
                true,
            )
            .unwrap();
        let r = a.lifecycle.report(&req, now).unwrap();
        let b = by_name(&r, "b");
        assert!(!b.backup_missing);
        let last = b.last_backup.unwrap();
        assert_eq!((last.at, last.id.as_str()), (t - 100, id.as_str()));
        let drill = b.last_drill.unwrap();
        assert_eq!((drill.at, drill.ok), (t - 80, true));
        assert!(b.revocations.is_empty());
        let k = by_name(&r, "k");
        assert_eq!(k.last_backup, None, "another token's key of its name");
        assert_eq!(k.revocations.len(), 1);
        assert!(k.held_by_backups.is_empty());
        // One key asked for: its own records still found.
        let one = a
            .lifecycle
            .report(
                &ReportRequest {
                    key: Some("b".into()),
                    ..req
                },
                now,
            )
            .unwrap();
        assert_eq!(
            one.keys[0].last_backup.as_ref().map(|m| m.at),
            Some(t - 100)
        );
    }
}

mod policy_findings {
    //! The report's judgement of existing keys against the policy in force,
    //! over the mock backend: a key made under one policy, then the policy
    //! replaced.

    use keyward_protocol::admin::{
        AdminResponse, AnomalyThresholds, FindingSeverity, KeyRequest, PolicyFindingKind,
        ReportRequest,
    };

    use crate::agent::Agent;

    const LEGACY: &str = r#"
[settings]
mode = "strict"

[[application]]
name = "app"
uid = 1000

[[class]]
name = "old-sign"
purpose = "signing"
algorithms = ["rsa:1024"]
legacy = true
protect_period = "365d"
process_period = "730d"

[[class]]
name = "signing"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "365d"
process_period = "730d"
"#;

    fn create(a: &Agent, name: &str, class: &str) {
        let req = KeyRequest::Create {
            name: name.into(),
            class: class.into(),
            algorithm: None,
            token: None,
            owner: None,
        };
        match a
            .lifecycle
            .key_request(&crate::agent::tests::admin_peer(), req)
        {
            AdminResponse::Key(_) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Each key's findings: (kind, severity), by key name.
    fn findings(a: &Agent) -> Vec<(String, Vec<(PolicyFindingKind, FindingSeverity)>)> {
        let req = ReportRequest {
            key: None,
            token: None,
            window_secs: 3600,
            baseline_secs: 86_400,
            thresholds: AnomalyThresholds::default(),
        };
        let r = a
            .lifecycle
            .report(&req, std::time::SystemTime::now())
            .unwrap();
        r.keys
            .iter()
            .map(|k| {
                (
                    k.name.clone(),
                    k.policy_findings
                        .iter()
                        .map(|f| (f.kind, f.severity))
                        .collect(),
                )
            })
            .collect()
    }

    fn set(a: &Agent, text: &str) {
        a.set_policy(keyward_policy::Policy::from_str(text, "test").unwrap());
    }

    #[test]
    fn keys_the_policy_in_force_would_refuse_are_flagged() {
        let (_d, a) = crate::agent::tests::mock_agent(LEGACY);
        create(&a, "old", "old-sign");
        create(&a, "new", "signing");
        // Under the policy they were made with: nothing to say.
        assert_eq!(
            findings(&a),
            [("new".into(), vec![]), ("old".into(), vec![])]
        );

        // The legacy class moves on to rsa:2048 without legacy, and the
        // signing class's cryptoperiod grows to a century.
        set(
            &a,
            &LEGACY
                .replace("algorithms = [\"rsa:1024\"]\nlegacy = true", "algorithms = [\"rsa:2048\"]")
                .replace(
                    "algorithms = [\"ec:p256\"]\nprotect_period = \"365d\"\nprocess_period = \"730d\"",
                    "algorithms = [\"ec:p256\"]\nprotect_period = \"36500d\"\nprocess_period = \"36500d\"",
                ),
        );
        use FindingSeverity::{Refused, Warning};
        use PolicyFindingKind::*;
        assert_eq!(
            findings(&a),
            [
                ("new".into(), vec![(LongCryptoperiod, Warning)]),
                (
                    "old".into(),
                    vec![(WeakAlgorithm, Refused), (AlgorithmNotAllowed, Refused)]
                ),
            ]
        );

        // The legacy class gone; the signing class now encrypts.
        set(
            &a,
            r#"
[settings]
mode = "strict"

[[class]]
name = "signing"
purpose = "encryption"
algorithms = ["aes:256"]
protect_period = "365d"
process_period = "730d"
"#,
        );
        assert_eq!(
            findings(&a),
            [
                (
                    "new".into(),
                    vec![(PurposeNotAllowed, Refused), (AlgorithmNotAllowed, Refused)]
                ),
                (
                    "old".into(),
                    vec![(ClassMissing, Refused), (WeakAlgorithm, Refused)]
                ),
            ]
        );
    }
}
