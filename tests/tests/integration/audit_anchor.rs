//! Anchors: a checkpoint's head kept off the host. Root can roll the trail
//! back past sealed checkpoints (records and the checkpoints that sealed
//! them deleted together): what is left is an earlier genuine state and
//! `keyward audit verify` calls it intact. With an anchor taken before,
//! `keyward audit verify --anchor FILE` does not: it exits 9. Each
//! checkpoint's head also reaches syslog as a record of its own.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use keyward_tests::admin::{keyward, keyward_json, keyward_ok};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{ec_pair, Ctx};

/// DER of the P-256 curve OID.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn sign_times(tb: &Env, label: &str, n: usize) {
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let (_, private) = ec_pair(&s, P256, label, false);
    for _ in 0..n {
        s.sign(&Mechanism::Ecdsa, private, &[3u8; 32])
            .expect("C_Sign");
    }
}

/// The seq an anchor line names.
fn seq_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("seq="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {line:?}"))
}

/// Waits for a syslog message that contains `text`.
fn syslog_with(listener: &UnixDatagram, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let Ok(n) = listener.recv(&mut buf) else {
            continue;
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains(text) {
            return m;
        }
        seen.push(m);
    }
    panic!("no syslog message with {text:?}; seen:\n{seen:#?}");
}

/// Root's rollback, straight at the SQLite file with the append-only
/// triggers dropped: every record after `seq` and every checkpoint that
/// sealed them.
fn roll_back_to(tb: &Env, seq: u64) {
    let conn =
        rusqlite::Connection::open(tb.path("state/inventory.sqlite")).expect("open the store");
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
         DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
    )
    .expect("drop the triggers");
    let cut = conn
        .execute("DELETE FROM audit WHERE seq > ?1", [seq as i64])
        .expect("delete records");
    let cps = conn
        .execute("DELETE FROM audit_checkpoints WHERE seq > ?1", [seq as i64])
        .expect("delete checkpoints");
    assert!(
        cut > 0 && cps > 0,
        "nothing rolled back: {cut} records, {cps} checkpoints"
    );
    println!("rolled back: {cut} records and {cps} checkpoints after seq {seq}");
}

keyward_test!(fn a_rollback_past_sealed_checkpoints_fails_verify_anchor_with_exit_9(tb) {
    tb.require_agent("the audit trail");
    let syslog = tb.path("syslog.sock");
    let listener = UnixDatagram::bind(&syslog).expect("bind a syslog socket");
    listener.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    tb.configure_agent(&format!(
        "[audit]\nsyslog = true\nsyslog_socket = \"{}\"\n",
        syslog.display()
    ));

    sign_times(&tb, "before-first-anchor", 20);
    // `audit anchor` seals what is unsealed and prints the head.
    let first = keyward_ok(&tb, &["audit", "anchor"], 0);
    let first = first.trim_end().to_owned();
    assert!(first.starts_with("keyward-anchor 1 seq="), "{first:?}");
    assert_eq!(first.lines().count(), 1, "{first:?}");
    let seq1 = seq_of(&first);
    // The same head reached syslog, as a message of its own.
    let m = syslog_with(&listener, &first);
    assert!(m.contains("keyward-agent["), "{m}");
    assert!(!m.contains("\"kind\""), "an anchor is not a record: {m}");

    sign_times(&tb, "after-first-anchor", 20);
    let second = keyward_json(&tb, &["audit", "anchor"], 0);
    let seq2 = second.i64_at("seq") as u64;
    assert!(seq2 > seq1, "{seq1} then {second}");
    assert_eq!(seq_of(second.str_at("anchor")), seq2);
    // An anchor file with both forms, as an administrator keeps them.
    let anchors = tb.path("anchors.txt");
    std::fs::write(&anchors, format!("# taken off the host\n{first}\n{second}\n")).unwrap();
    let anchors_arg = anchors.to_str().unwrap();
    let ok = keyward_ok(&tb, &["audit", "verify", "--anchor", anchors_arg], 0);
    assert!(ok.contains("anchors held:          2") && ok.ends_with("intact\n"), "{ok}");

    tb.stop_agent();
    roll_back_to(&tb, seq1);
    tb.start_agent();

    // Alone, the trail is an earlier genuine state: the known limit.
    let plain = keyward_ok(&tb, &["audit", "verify"], 0);
    assert!(plain.ends_with("intact\n"), "{plain}");
    // With the anchors, the rollback is plain to see.
    let out = keyward(&tb, &["audit", "verify", "--anchor", anchors_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(stderr.contains("no longer holds an anchored head"), "{stderr}");
    assert!(stderr.contains(&format!("anchor kept off the host holds the head at {seq2}"))
        || stderr.contains("differs from the head anchored off the host"),
        "{stderr}");
    println!("verify --anchor after the rollback: {}", stderr.trim());
    let json = keyward_json(&tb, &["audit", "verify", "--anchor", anchors_arg], 9);
    assert_eq!(json.at("first_bad").at("anchor").as_bool(), Some(true), "{json}");
    assert_eq!(json.i64_at("anchors_ok"), 1, "the first anchor still holds: {json}");

    // A bad anchor file is a usage error, not a crash, and asks nothing.
    let line = first.as_bytes();
    for (name, bytes) in [
        ("garbage.txt", b"\x00\xffnot an anchor\n".to_vec()),
        ("truncated.txt", line[..line.len() / 2].to_vec()),
    ] {
        let file = tb.path(name);
        std::fs::write(&file, bytes).unwrap();
        let out = keyward(&tb, &["audit", "verify", "--anchor", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("anchor file"), "{name}: {out:?}");
    }
});
