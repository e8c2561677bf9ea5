//! Several agents on one shared PostgreSQL store and one HSM token
//! (`keyward_tests::fleet`): what one agent changes is in force on the
//! others within a second, an agent that cannot reach the store fails
//! closed and recovers by itself, and an agent killed mid-work loses no
//! acknowledged record.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_tests::admin::{
    application_toml, keyward, keyward_ok, sign_grant_toml, signing_class_toml, uid, APPLICATION,
};
use keyward_tests::fleet::{Fleet, FleetOptions};

/// A strict policy: this user is the application; class `signing` grants
/// it sign and verify.
fn policy() -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Creates and activates key `name` through agent `k`.
fn active_key(fleet: &Fleet, k: usize, name: &str) {
    keyward_ok(
        fleet.env(k),
        &["key", "create", name, "--class", "signing"],
        0,
    );
    keyward_ok(fleet.env(k), &["key", "activate", name], 0);
}

/// Waits up to `within` for agent `k`'s `key show NAME` to hold `text`.
fn shows_within(fleet: &Fleet, k: usize, name: &str, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let out = keyward(fleet.env(k), &["--json", "key", "show", name]);
        let shown = String::from_utf8_lossy(&out.stdout);
        if shown.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {k} does not show {text} for {name} within {within:?}: {shown}
{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `within` for `probe` to sign (`sign: ok`).
fn signs_within(probe: &mut keyward_tests::probe::Probe, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        probe.say("sign");
        if probe.value("sign", Duration::from_secs(10)) == "ok" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Revokes `name` through agent `from` while a probe on agent `on` signs
/// in a loop; the time from just before the revoke to the probe's first
/// failure, and that failure's code.
pub fn revocation_reaches(fleet: &Fleet, from: usize, on: usize, name: &str) -> (Duration, String) {
    let mut probe = fleet.probe(on, name);
    assert!(
        signs_within(&mut probe, Duration::from_secs(5)),
        "agent {on} does not sign with {name}:\n{}",
        fleet.logs()
    );
    probe.say("watch 10000");
    std::thread::sleep(Duration::from_millis(200));
    let before = now_micros();
    keyward_ok(
        fleet.env(from),
        &[
            "key",
            "revoke",
            "--yes",
            name,
            "--reason",
            "laptop stolen",
            "--reason-code",
            "keyCompromise",
        ],
        0,
    );
    let failed = probe.value("failed", Duration::from_secs(20));
    let (at, rv) = failed.split_once(' ').unwrap_or_else(|| {
        panic!(
            "agent {on} still signs with {name} 10 s after its revocation:\n{}",
            fleet.logs()
        )
    });
    let at: u128 = at.parse().expect("micros");
    let took = Duration::from_micros(u64::try_from(at.saturating_sub(before)).unwrap_or(u64::MAX));
    (took, rv.to_owned())
}

#[test]
fn fleet_a_revocation_on_one_agent_stops_signing_on_another_within_a_second() {
    let fleet = Fleet::start(2, &policy(), 5);
    // Made through agent 0, in force on agent 1 within a second.
    active_key(&fleet, 0, "web");
    shows_within(&fleet, 1, "web", "\"active\"", Duration::from_secs(1));
    let (took, rv) = revocation_reaches(&fleet, 0, 1, "web");
    println!(
        "revocation on agent-0 -> refusal on agent-1: {} ms",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(1),
        "the revocation took {took:?} to reach agent 1:\n{}",
        fleet.logs()
    );
    assert!(
        rv.contains("KeyFunctionNotPermitted") || rv.contains("Function"),
        "{rv}"
    );
    // Agent 1 shows the key revoked, and refuses the next use too.
    let shown = keyward_ok(fleet.env(1), &["--json", "key", "show", "web"], 0);
    assert!(shown.contains("\"compromised\""), "{shown}");
}

#[test]
fn fleet_an_agent_without_its_store_fails_closed_then_recovers_by_itself() {
    let mut fleet = Fleet::start(1, &policy(), 2);
    active_key(&fleet, 0, "web");
    let mut probe = fleet.probe(0, "web");
    assert!(
        signs_within(&mut probe, Duration::from_secs(5)),
        "{}",
        fleet.logs()
    );

    fleet.pg.stop();
    let down = Instant::now();
    // Within the lease (2 s) and a little: signing is refused.
    let mut refused_after = None;
    while down.elapsed() < Duration::from_secs(15) {
        probe.say("sign");
        if probe.value("sign", Duration::from_secs(20)) != "ok" {
            refused_after = Some(down.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused_after = refused_after.unwrap_or_else(|| {
        panic!(
            "still signing 15 s after the store stopped:\n{}",
            fleet.logs()
        )
    });
    println!(
        "store stopped -> signing refused after {} ms (lease 2 s)",
        refused_after.as_millis()
    );
    // Administrator actions are refused, saying why.
    let out = keyward(
        fleet.env(0),
        &["key", "create", "other", "--class", "signing"],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("store"), "{said}");

    fleet.pg.start();
    let back = Instant::now();
    assert!(
        signs_within(&mut probe, Duration::from_secs(20)),
        "signing does not resume after the store is back:\n{}",
        fleet.logs()
    );
    println!(
        "store back -> signing again after {} ms",
        back.elapsed().as_millis()
    );
    keyward_ok(
        fleet.env(0),
        &["key", "create", "other", "--class", "signing"],
        0,
    );
    // Nothing lost: the trail verifies and holds the refusals made while
    // the store was down.
    keyward_ok(fleet.env(0), &["audit", "verify"], 0);
}

#[test]
fn fleet_an_agent_killed_mid_work_loses_no_acknowledged_record() {
    let fleet = Fleet::start(2, &policy(), 5);
    active_key(&fleet, 0, "web");
    // An application signs on agent 0 while an administrator makes keys
    // through it, until it is killed.
    let mut probe = fleet.probe(0, "web");
    probe.say("bench 4000");
    let acknowledged = std::thread::scope(|s| {
        let admin = s.spawn(|| {
            let mut made = Vec::new();
            for i in 0..500 {
                let name = format!("k{i}");
                if !keyward(
                    fleet.env(0),
                    &["key", "create", &name, "--class", "signing"],
                )
                .status
                .success()
                {
                    break;
                }
                made.push(name);
            }
            made
        });
        std::thread::sleep(Duration::from_millis(1500));
        fleet.agents[0].testbed.kill().expect("kill -9 agent 0");
        admin.join().expect("the administrator's thread")
    });
    assert!(
        !acknowledged.is_empty(),
        "no key was made before the kill:\n{}",
        fleet.logs()
    );
    // Every key the agent said it made is in the shared store, with its
    // creation in the trail, and the trail verifies.
    let list = keyward_ok(fleet.env(1), &["--json", "key", "list"], 0);
    let trail = keyward_ok(
        fleet.env(1),
        &["--json", "audit", "query", "--limit", "100000"],
        0,
    );
    for name in &acknowledged {
        assert!(
            list.contains(&format!("\"{name}\"")),
            "{name} is lost:\n{list}"
        );
        assert!(
            trail
                .lines()
                .any(|l| l.contains(&format!("\"key\":\"{name}\""))
                    && l.contains("\"operation\":\"create\"")),
            "{name}'s creation is not in the trail"
        );
    }
    println!(
        "{} acknowledged creations, every one kept",
        acknowledged.len()
    );
    keyward_ok(fleet.env(1), &["audit", "verify"], 0);
}

#[test]
fn fleet_the_store_over_tls_is_checked_against_its_ca() {
    let fleet = Fleet::start_with(
        &policy(),
        &FleetOptions {
            agents: 1,
            tls: true,
            ..FleetOptions::default()
        },
    );
    active_key(&fleet, 0, "web");
    // The agent's sessions are TLS (the server says so).
    let mut su = fleet.pg.superuser_client("postgres");
    let tls: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'keyward' AND s.ssl",
            &[],
        )
        .expect("pg_stat_ssl")
        .get(0);
    let plain: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'keyward' AND NOT s.ssl",
            &[],
        )
        .expect("pg_stat_ssl")
        .get(0);
    assert!(
        tls >= 2 && plain == 0,
        "{tls} TLS and {plain} plain sessions of the agent"
    );

    // An agent that trusts another CA does not start, and says why.
    let member = &fleet.agents[0].testbed;
    member.stop().expect("stop");
    let config = std::fs::read_to_string(member.config()).unwrap();
    let other = keyward_tests::pki::TestCa::new(fleet.dir(), "other-ca");
    let store_ca = fleet.store_ca.as_ref().unwrap().display().to_string();
    std::fs::write(
        member.config(),
        config.replace(&store_ca, &other.cert.display().to_string()),
    )
    .unwrap();
    let err = member
        .start()
        .expect_err("started with a store certificate from an unknown CA");
    assert!(err.message().contains("certificate"), "{}", err.message());
    // Nor one that would talk to it in plain text.
    std::fs::write(
        member.config(),
        config.replace(
            &format!("tls = \"verify-full\"\nca_file = \"{store_ca}\""),
            "tls = \"disable\"",
        ),
    )
    .unwrap();
    let err = member
        .start()
        .expect_err("started without TLS on a server that requires it");
    assert!(err.message().contains("shared store"), "{}", err.message());
    // Back on the right CA, it serves the same inventory.
    std::fs::write(member.config(), &config).unwrap();
    member.start().expect("start on the store's CA");
    let shown = keyward_ok(fleet.env(0), &["--json", "key", "show", "web"], 0);
    assert!(shown.contains("\"active\""), "{shown}");
}

/// Carol, a third administrator (uid 65533, in bob's group).
const CAROL: u32 = 65533;

#[test]
fn fleet_approvals_on_different_agents_count_towards_one_quorum_and_execute_once() {
    use keyward_tests::roster::{
        as_uid, key_file, public_key, roster_toml, ALICE_PEM, BOB, BOB_PEM,
    };
    let fleet = Fleet::start_with(
        &policy(),
        &FleetOptions {
            agents: 3,
            admin_group: Some(BOB),
            ..FleetOptions::default()
        },
    );
    let tb = fleet.env(0);
    let alice = key_file(tb, "alice.pem", ALICE_PEM, uid());
    let bob = key_file(tb, "bob.pem", BOB_PEM, BOB);
    let carol = tb.path("carol.pem");
    keyward_tests::tools::run_ok(
        std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&carol),
    );
    let carol = key_file(
        tb,
        "carol.pem",
        &std::fs::read_to_string(&carol).unwrap(),
        CAROL,
    );
    let (alice_pub, bob_pub, carol_pub) = (
        public_key(tb, &alice),
        public_key(tb, &bob),
        public_key(tb, &carol),
    );
    // Resuming takes two officers besides the requester.
    let with_roster = format!(
        "{}{}\n[[administrator]]\nname = \"carol\"\nuids = [{CAROL}]\nroles = [\"security-officer\"]\n\
         public_key = \"{carol_pub}\"\n\n[quorum.resume]\napprovals = 2\nroles = [\"security-officer\"]\n",
        policy(),
        roster_toml(uid(), &alice_pub, &bob_pub),
    );
    let file = fleet.dir().join("with-roster.toml");
    std::fs::write(&file, &with_roster).unwrap();
    active_key(&fleet, 0, "web");
    keyward_ok(
        tb,
        &[
            "init",
            "--policy",
            file.to_str().unwrap(),
            "--reason",
            "go live",
        ],
        0,
    );
    // Every agent follows the approved policy.
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in 0..3 {
        loop {
            let shown = keyward_ok(fleet.env(k), &["--json", "policy", "show"], 0);
            if shown.contains("carol") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent {k} does not follow the approved policy:\n{}",
                fleet.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    keyward_ok(
        tb,
        &[
            "key",
            "suspend",
            "web",
            "--reason",
            "audit",
            "--reason-code",
            "superseded",
        ],
        0,
    );
    let asked = keyward_ok(
        fleet.env(0),
        &["--json", "key", "resume", "web", "--reason", "audit done"],
        3,
    );
    let id = serde_json::from_str::<serde_json::Value>(&asked).unwrap()["id"]
        .as_str()
        .expect("a request id")
        .to_owned();
    // Bob on agent 1 and carol on agent 2 approve at the same moment.
    let (b, c) = std::thread::scope(|s| {
        let b = s.spawn(|| {
            as_uid(
                fleet.env(1),
                BOB,
                &["request", "approve", &id, "--key", bob.to_str().unwrap()],
            )
        });
        let c = s.spawn(|| {
            as_uid(
                fleet.env(2),
                CAROL,
                &["request", "approve", &id, "--key", carol.to_str().unwrap()],
            )
        });
        (b.join().unwrap(), c.join().unwrap())
    });
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    assert_eq!(c.status.code(), Some(0), "{c:?}");
    let shown = keyward_ok(fleet.env(2), &["--json", "request", "show", &id], 0);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "executed", "{shown}");
    assert_eq!(
        shown["decisions"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    for k in 0..3 {
        shows_within(&fleet, k, "web", "\"active\"", Duration::from_secs(1));
    }
    // Carried out once: one resume in the shared trail.
    let trail = keyward_ok(
        fleet.env(1),
        &["--json", "audit", "query", "--key", "web"],
        0,
    );
    let resumes = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|r| r["kind"] == "lifecycle" && r["operation"] == "resume")
        .count();
    assert_eq!(resumes, 1, "{trail}");
    keyward_ok(fleet.env(2), &["audit", "verify"], 0);
}

/// Signatures per second of one probe per agent, together, for `ms`.
fn fleet_throughput(fleet: &Fleet, key: &str, ms: u64) -> (u64, u64) {
    let mut probes: Vec<_> = (0..fleet.agents.len())
        .map(|k| fleet.probe(k, key))
        .collect();
    for p in &mut probes {
        p.say(&format!("bench {ms}"));
    }
    probes.iter_mut().fold((0, 0), |(signed, errors), p| {
        let got = p.value("bench", Duration::from_secs(60));
        let mut words = got
            .split_whitespace()
            .map(|w| w.parse::<u64>().expect("a count"));
        (
            signed + words.next().unwrap_or(0),
            errors + words.next().unwrap_or(0),
        )
    })
}

/// The figures of the fleet guide: with 1, 3 and 5 agents, signatures
/// per second across the fleet, lifecycle changes per second through the
/// shared store, and how long a revocation made on one agent takes to be
/// in force on the others (each must be under a second).
#[test]
fn fleet_limits_with_one_three_and_five_agents() {
    let mut table = vec!["agents | signatures/s (all agents) | lifecycle changes/s | revocation in force elsewhere (max)".to_owned()];
    for n in [1usize, 3, 5] {
        let fleet = Fleet::start(n, &policy(), 5);
        active_key(&fleet, 0, "web");
        let (signed, errors) = fleet_throughput(&fleet, "web", 2000);
        assert_eq!(errors, 0, "{}", fleet.logs());
        // Lifecycle changes through the store, round the agents: a key
        // made (generated in the HSM) and activated.
        let started = Instant::now();
        let changes: u32 = 10;
        for i in 0..(changes as usize) / 2 {
            active_key(&fleet, i % n, &format!("k{i}"));
        }
        let per_second = f64::from(changes) / started.elapsed().as_secs_f64();
        // Revocation: on agent 0, watched on every other agent at once
        // (on agent 0 itself when it is alone).
        active_key(&fleet, 0, "rev");
        let watchers: Vec<usize> = if n == 1 { vec![0] } else { (1..n).collect() };
        let mut probes: Vec<_> = watchers.iter().map(|&k| fleet.probe(k, "rev")).collect();
        for p in &mut probes {
            assert!(signs_within(p, Duration::from_secs(5)), "{}", fleet.logs());
            p.say("watch 10000");
        }
        std::thread::sleep(Duration::from_millis(200));
        let before = now_micros();
        keyward_ok(
            fleet.env(0),
            &[
                "key",
                "revoke",
                "--yes",
                "rev",
                "--reason",
                "drill",
                "--reason-code",
                "keyCompromise",
            ],
            0,
        );
        let slowest = probes
            .iter_mut()
            .map(|p| {
                let failed = p.value("failed", Duration::from_secs(20));
                let at: u128 = failed
                    .split_once(' ')
                    .unwrap_or_else(|| {
                        panic!("still signing after the revocation:\n{}", fleet.logs())
                    })
                    .0
                    .parse()
                    .expect("micros");
                Duration::from_micros(u64::try_from(at.saturating_sub(before)).unwrap_or(u64::MAX))
            })
            .max()
            .unwrap_or_default();
        assert!(
            slowest < Duration::from_secs(1),
            "{n} agents: {slowest:?}\n{}",
            fleet.logs()
        );
        table.push(format!(
            "{n} | {} | {per_second:.1} | {} ms",
            signed * 1000 / 2000,
            slowest.as_millis()
        ));
    }
    println!("{}", table.join("\n"));
}

#[test]
fn fleet_a_grant_removed_on_one_agent_stops_the_application_on_another_within_a_second() {
    // Class `bare` grants nothing: the application signs by its key's own
    // grant only.
    let policy = format!(
        "{}{}",
        policy(),
        signing_class_toml("bare", "30d", "60d", "")
    );
    let fleet = Fleet::start(2, &policy, 5);
    keyward_ok(
        fleet.env(0),
        &["key", "create", "web", "--class", "bare"],
        0,
    );
    keyward_ok(fleet.env(0), &["key", "activate", "web"], 0);
    keyward_ok(
        fleet.env(0),
        &["grant", "add", "web", APPLICATION, "--ops", "sign"],
        0,
    );
    let mut probe = fleet.probe(1, "web");
    assert!(
        signs_within(&mut probe, Duration::from_secs(5)),
        "{}",
        fleet.logs()
    );
    probe.say("watch 10000");
    std::thread::sleep(Duration::from_millis(200));
    let before = now_micros();
    keyward_ok(fleet.env(0), &["grant", "remove", "web", APPLICATION], 0);
    let failed = probe.value("failed", Duration::from_secs(20));
    let at: u128 = failed
        .split_once(' ')
        .unwrap_or_else(|| {
            panic!(
                "agent 1 still signs after the grant went:\n{}",
                fleet.logs()
            )
        })
        .0
        .parse()
        .expect("micros");
    let took = Duration::from_micros(u64::try_from(at.saturating_sub(before)).unwrap_or(u64::MAX));
    println!(
        "grant removed on agent-0 -> refusal on agent-1: {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "{took:?}\n{}", fleet.logs());
}
