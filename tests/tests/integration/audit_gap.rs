//! A SIGKILL of the agent loses the uses it acknowledged but had not yet
//! stored (the trail writes uses in batches, 200 ms apart). The next start
//! says so: a `crash-gap` record whose interval covers the kill and whose
//! bound is at least the number of acknowledged uses the trail lacks,
//! counted here from the probes' own successful signatures.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_tests::admin::{
    application_toml, install_policy, keyward_ok, sign_grant_toml, signing_class_toml, uid,
    APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::probe::Probe;

/// The managed key the probes sign with.
const BUSY: &str = "busy";
const PROBES: usize = 2;
/// Kills in the test (each one must leave its own gap record).
const KILLS: usize = 2;

fn policy() -> String {
    let grant = sign_grant_toml(APPLICATION);
    format!(
        "[settings]\nmode = \"lab\"\npin_max_attempts = 0\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &grant)
    )
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

/// Starts a `sign_loop_probe` and waits until it signs.
fn probe(tb: &Env) -> Probe {
    let mut p = Probe::start(
        tb,
        Path::new(env!("CARGO_BIN_EXE_sign_loop_probe")),
        &[BUSY],
    );
    assert_eq!(p.line("ready", Duration::from_secs(30)), "ready");
    p
}

/// Stops a probe: its pid and the signatures that returned `CKR_OK`.
fn finish(mut p: Probe) -> (u32, u64) {
    p.close_stdin();
    let line = p.line("final", Duration::from_secs(30));
    p.wait_success(Duration::from_secs(30));
    let value = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("sign_loop_probe said {line:?}"))
    };
    (p.pid(), value("managed") + value("unmanaged"))
}

/// Successful uses the store holds, per application pid.
fn recorded(tb: &Env) -> BTreeMap<u32, u64> {
    let db = rusqlite::Connection::open_with_flags(
        tb.path("state/inventory.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only");
    let mut st = db
        .prepare("SELECT pid, sum(count) FROM audit WHERE kind = 'use' AND result = 0 GROUP BY pid")
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .expect("query");
    rows.map(|r| {
        let (pid, n) = r.expect("row");
        (pid as u32, n as u64)
    })
    .collect()
}

/// The `crash-gap` records: (seq, from_us, to_us, at most, reason).
fn gaps(tb: &Env) -> Vec<(i64, u64, u64, u64, String)> {
    let db = rusqlite::Connection::open_with_flags(
        tb.path("state/inventory.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only");
    let mut st = db
        .prepare(
            "SELECT seq, reason FROM audit WHERE kind = 'agent' AND operation = 'crash-gap' \
             ORDER BY seq",
        )
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .expect("query");
    rows.map(|r| {
        let (seq, reason) = r.expect("row");
        let at_most = reason
            .split_once("at most ")
            .and_then(|(_, rest)| rest.split_once(' '))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no bound in {reason:?}"));
        let (from, to) = reason
            .split_once("[unix_us ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(range, _)| range.split_once(".."))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| panic!("no interval in {reason:?}"));
        (seq, from, to, at_most, reason)
    })
    .collect()
}

keyward_test!(fn a_kill_leaves_a_gap_record_that_bounds_the_lost_uses(tb) {
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", BUSY, "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", BUSY], 0);
    // A clean stop leaves no gap.
    tb.stop_agent();
    tb.start_agent();
    assert!(gaps(&tb).is_empty(), "a clean stop left a gap: {:?}", gaps(&tb));

    let mut report = Vec::new();
    for kill in 0..KILLS {
        let before = recorded(&tb);
        let probes: Vec<Probe> = (0..PROBES).map(|_| probe(&tb)).collect();
        std::thread::sleep(Duration::from_millis(1500));
        // The kill lands somewhere between these two instants (the testbed
        // script takes a few milliseconds to send it and see the agent go).
        let killed_at = now_us();
        tb.kill_agent();
        let dead_at = now_us();
        // Every signature the probes count was acknowledged before the kill.
        let counts: Vec<(u32, u64)> = probes.into_iter().map(finish).collect();
        tb.start_agent();

        let after = recorded(&tb);
        let acknowledged: u64 = counts.iter().map(|(_, n)| n).sum();
        let stored: u64 = counts
            .iter()
            .map(|(pid, _)| after.get(pid).copied().unwrap_or(0) - before.get(pid).copied().unwrap_or(0))
            .sum();
        let missing = acknowledged.saturating_sub(stored);
        let all = gaps(&tb);
        assert_eq!(all.len(), kill + 1, "one gap record per kill: {all:#?}");
        let (seq, from, to, at_most, reason) = all.last().cloned().expect("a gap record");
        println!(
            "kill {kill}: acknowledged {acknowledged}, recorded {stored}, missing {missing}; \
             gap record {seq}: at most {at_most}, window {:.3} s before the kill to {:.3} s after\n  {reason}",
            (killed_at.saturating_sub(from)) as f64 / 1e6,
            (to.saturating_sub(killed_at)) as f64 / 1e6,
        );
        assert!(
            from <= dead_at && killed_at <= to,
            "the gap does not cover the kill between {killed_at} and {dead_at}: {reason}"
        );
        assert!(at_most >= missing, "{missing} uses missing, the gap says at most {at_most}: {reason}");
        assert!(stored <= acknowledged + 2 * PROBES as u64, "more uses recorded than made");
        report.push((acknowledged, stored, missing, at_most));
    }
    // The trail with its gap records still verifies.
    let verified = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(verified.ends_with("intact\n"), "{verified}");
    println!("(acknowledged, recorded, missing, gap bound) per kill: {report:?}");
});
