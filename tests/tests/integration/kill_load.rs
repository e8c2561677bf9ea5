//! SIGKILL of the agent under load from several client processes with
//! several threads each: three `load_probe` processes of four threads sign
//! (ECDSA, RSA), encrypt and decrypt (AES), MAC (HMAC), digest, draw
//! random bytes, search and read attributes with managed keys while an
//! administrator creates keys in a loop; the agent is killed twice and
//! started again. Every client process survives and says so (exit 0, its
//! summary), saw only codes of the documented set, had every signature it
//! was handed verify, and is served again after each restart; every key
//! the administrator was told was made is in the inventory and in the
//! trail, and the trail verifies.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyward_tests::admin::{
    application_toml, install_policy, keyward, keyward_json, keyward_ok, uid, APPLICATION,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::load::{create_load_keys, load_classes_toml, report, Load, Tally, OUTAGE_CODES};

const PROBES: usize = 3;
const THREADS: usize = 4;
const KILLS: usize = 2;

keyward_test!(fn kill_load_three_clients_of_four_threads_survive_two_kills_and_nothing_acknowledged_is_lost(tb) {
    tb.require_agent("killing the agent");
    let began = Instant::now();
    install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"strict\"\n{}{}",
            application_toml(APPLICATION, uid()),
            load_classes_toml("")
        ),
    );
    create_load_keys(&tb);
    let mut probes: Vec<Load> = (0..PROBES)
        .map(|_| Load::start(&tb, Path::new(env!("CARGO_BIN_EXE_load_probe")), THREADS, Duration::from_secs(240)))
        .collect();
    for p in &mut probes {
        p.ready(Duration::from_secs(60));
    }

    // An administrator makes keys meanwhile, each under a new name; the
    // ones the CLI said were made are remembered.
    let stop = AtomicBool::new(false);
    let (acknowledged, attempts) = std::thread::scope(|s| {
        let admin = s.spawn(|| {
            let (mut made, mut attempts) = (Vec::new(), 0usize);
            while !stop.load(Ordering::SeqCst) {
                let name = format!("made-{attempts}");
                attempts += 1;
                let out = keyward(&tb, &["key", "create", &name, "--class", "load-ec"]);
                match out.status.code() {
                    Some(0) => made.push(name),
                    // The agent was killed under the request or is down.
                    Some(1) => std::thread::sleep(Duration::from_millis(20)),
                    // SoftHSM2 failed the generation twice (it does, now
                    // and then, while other sessions search the token):
                    // not acknowledged, nothing made.
                    Some(7) if String::from_utf8_lossy(&out.stderr).contains("HSM: C_Generate") => {}
                    other => panic!(
                        "keyward key create {name} exited {other:?}: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                }
            }
            (made, attempts)
        });
        for kill in 0..KILLS {
            // Load and creations for a while, then the kill mid-load.
            std::thread::sleep(Duration::from_millis(1500));
            let before: Vec<u64> = probes.iter_mut().map(Load::count).collect();
            tb.kill_agent();
            std::thread::sleep(Duration::from_millis(300));
            tb.start_agent();
            // Every client is served again (a few hundred operations more
            // than before the kill, so after the restart).
            for (p, from) in probes.iter_mut().zip(before) {
                p.served_beyond(from, 200, Duration::from_secs(30));
            }
            println!("kill {}: every client served again", kill + 1);
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        admin.join().expect("the administrator's thread")
    });

    let mut tally = Tally::default();
    for p in probes {
        let summary = p.finish();
        report(&format!("kill_load client: {summary}"));
        tally.add(&summary, OUTAGE_CODES, true);
    }

    // Every key the administrator was told was made: in the inventory,
    // and its creation in the trail, which verifies.
    assert!(!acknowledged.is_empty(), "no key was made under load");
    let list = keyward_json(&tb, &["key", "list"], 0);
    let names: Vec<&str> = list.as_array().expect("keys").iter().map(|k| k.str_at("name")).collect();
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--limit", "1000000"], 0);
    let records: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for name in &acknowledged {
        assert!(names.contains(&name.as_str()), "{name} was acknowledged and is lost: {names:?}");
        assert!(
            records.iter().any(|r| r["key"] == name.as_str()
                && r["operation"] == "key.create"
                && r["result"] == "CKR_OK"),
            "{name}'s creation is not in the trail"
        );
    }
    let verified = keyward_json(&tb, &["audit", "verify"], 0);
    assert!(verified.at("first_bad").is_null(), "{verified}");
    report(&format!(
        "kill_load: {PROBES} clients x {THREADS} threads, {KILLS} kills: ops {:?}; errors {:?}; {} signatures, {} verified; \
         {} outage errors; {} of {attempts} creations acknowledged, all kept; {} trail records verified; {:?}",
        tally.ops,
        tally.errors,
        tally.signatures,
        tally.verified,
        tally.outages,
        acknowledged.len(),
        verified.i64_at("records"),
        began.elapsed()
    ));
});
