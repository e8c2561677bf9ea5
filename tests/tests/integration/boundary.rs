//! The agent's boundary against hostile local peers: what a peer the policy
//! refuses costs the agent (memory, threads, descriptors, audit records),
//! what an admitted neighbour can take from others (connections), who may
//! speak on a connection (a forked child may not use its parent's), which
//! file a peer really runs, who the module sends its PINs to, and the
//! socket files themselves (mode, rebinding, the admin socket's peers).
//!
//! The attackers are `peer_probe` processes speaking raw frames, some
//! dropped to uid 65534 (nobody).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use keyward_tests::admin::keyward_ok;
use keyward_tests::p11::{ec_pair, load, os_threads, Ctx, P256_PARAMS};
use keyward_tests::probe::Probe;
use keyward_tests::{keyward_test, Env};

const PROBE: &str = env!("CARGO_BIN_EXE_peer_probe");
const NOBODY: &str = "65534";
const WAIT: Duration = Duration::from_secs(60);

fn policy(name: &str) -> &'static str {
    match name {
        "foreign-only" => concat!(env!("CARGO_MANIFEST_DIR"), "/policies/foreign-only.toml"),
        "neighbour" => concat!(env!("CARGO_MANIFEST_DIR"), "/policies/neighbour.toml"),
        _ => unreachable!(),
    }
}

/// A line of `/proc/<pid>/status`, as a number (kB for sizes).
fn status(pid: i32, field: &str) -> u64 {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the agent's status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Open descriptors of process `pid`.
fn descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the agent's descriptors")
        .count()
}

#[derive(Debug, Clone, Copy)]
struct Cost {
    rss_kb: u64,
    threads: u64,
    fds: usize,
}

fn cost(tb: &Env) -> Cost {
    let pid = tb.agent_pid();
    Cost {
        rss_kb: status(pid, "VmRSS"),
        threads: status(pid, "Threads"),
        fds: descriptors(pid),
    }
}

/// Lets other users reach the testbed's sockets: the directory searchable,
/// the sockets (and, with `admin`, the admin socket) of mode 0666.
fn open_to_everyone(tb: &Env, admin: bool, more: &[&str]) {
    std::fs::set_permissions(&tb.dir, std::fs::Permissions::from_mode(0o711))
        .expect("chmod the testbed");
    let mut opts = vec!["socket_mode = \"0666\""];
    if admin {
        opts.push("admin_socket_mode = \"0666\"");
    }
    opts.extend_from_slice(more);
    tb.set_agent_options(&opts);
}

fn probe(tb: &Env, args: &[&str]) -> Probe {
    Probe::start(tb, Path::new(PROBE), args)
}

/// A flood of `n` connections of `mode`, held; returns the probe (stdin
/// open: the connections stay) and (opened, answered).
fn flood(tb: &Env, uid: Option<&str>, n: usize, mode: &str) -> (Probe, usize, usize) {
    let n = n.to_string();
    let mut args = vec!["flood", tb.socket.as_str(), n.as_str(), mode];
    if let Some(u) = uid {
        args.extend(["--uid", u]);
    }
    let mut p = probe(tb, &args);
    let opened = p.value("opened", WAIT).parse().expect("a count");
    let answered = p.value("answered", WAIT).parse().expect("a count");
    p.value("held", WAIT);
    (p, opened, answered)
}

fn signs(ctx: &Ctx, what: &str) {
    let s = ctx.user();
    let (public, private) = ec_pair(&s, P256_PARAMS, what, false);
    let sig = s
        .sign(&Mechanism::Ecdsa, private, &[7; 32])
        .unwrap_or_else(|e| panic!("{what}: C_Sign: {e}"));
    s.verify(&Mechanism::Ecdsa, public, &[7; 32], &sig)
        .unwrap_or_else(|e| panic!("{what}: C_Verify: {e}"));
}

/// Polls `cond` for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not happen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

keyward_test!(fn a_refused_peer_costs_no_memory_threads_or_descriptors(tb) with ["--policy-file", policy("foreign-only")] {
    // This test's own uid is unknown to the policy.
    let before = cost(&tb);
    // 40 connections announcing the largest frame before any Hello (the
    // agent used to allocate 64 MiB for each), and 300 that say nothing.
    let (mut huge, opened, _) = flood(&tb, None, 40, "huge");
    assert_eq!(opened, 40);
    let (mut silent, opened, _) = flood(&tb, None, 300, "silent");
    assert_eq!(opened, 300);
    std::thread::sleep(Duration::from_millis(500));
    let during = cost(&tb);
    println!("before {before:?}, during {during:?}");
    assert!(
        during.rss_kb < before.rss_kb + 32 * 1024,
        "refused peers took {} kB of the agent's memory",
        during.rss_kb - before.rss_kb
    );
    assert!(
        during.threads <= before.threads + 4,
        "refused peers took {} threads",
        during.threads - before.threads
    );
    assert!(
        during.fds <= before.fds + 80,
        "refused peers hold {} of the agent's descriptors",
        during.fds - before.fds
    );
    // The administrator still gets in.
    keyward_ok(&tb, &["status"], 0);
    huge.close_stdin();
    assert_eq!(huge.value("closed", WAIT), "40", "every huge frame's connection is closed");
    silent.close_stdin();
    assert_eq!(silent.value("closed", WAIT), "300", "every silent connection is closed");
    huge.wait_success(WAIT);
    silent.wait_success(WAIT);
});

keyward_test!(fn refusals_of_one_peer_are_merged_in_the_trail(tb) with ["--policy-file", policy("foreign-only")] {
    let mut p = probe(&tb, &["connect-loop", &tb.socket, "2000"]);
    assert_eq!(p.value("done", WAIT), "2000");
    p.wait_success(WAIT);
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--result", "denied"], 0);
    let connects: Vec<&str> = trail.lines().filter(|l| l.contains("\"connect\"")).collect();
    assert!(
        !connects.is_empty() && connects.len() <= 3,
        "2000 refused connections wrote {} refusal records:\n{trail}",
        connects.len()
    );
    // The rest are counted, and reach the trail when the agent stops.
    tb.stop_agent();
    tb.start_agent();
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--result", "denied"], 0);
    let merged: Vec<&str> = trail.lines().filter(|l| l.contains("refusals of this peer")).collect();
    assert!(!merged.is_empty(), "no merged refusal record:\n{trail}");
    let counted: u64 = merged
        .iter()
        .filter_map(|l| l.split("no application of the policy matches this peer (").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(counted >= 1900, "the merged records count {counted} of 2000 refusals:\n{trail}");
});

keyward_test!(fn an_admitted_peer_gets_memory_only_for_what_it_sends(tb) {
    let before = cost(&tb);
    // Each says Hello, then announces the largest frame and sends nothing.
    let (mut p, opened, answered) = flood(&tb, None, 40, "hello-huge");
    assert_eq!((opened, answered), (40, 40));
    std::thread::sleep(Duration::from_millis(500));
    let during = cost(&tb);
    println!("before {before:?}, during {during:?}");
    assert!(
        during.rss_kb < before.rss_kb + 64 * 1024,
        "40 announced frames took {} kB of the agent's memory",
        during.rss_kb - before.rss_kb
    );
    p.close_stdin();
    p.wait_success(WAIT);
});

keyward_test!(fn one_uid_cannot_take_every_connection(tb) with ["--policy-file", policy("neighbour")] {
    open_to_everyone(&tb, false, &["max_connections_per_uid = 16"]);
    let before = cost(&tb);
    // The admitted neighbour opens 100 connections and keeps them idle.
    let (mut p, opened, answered) = flood(&tb, Some(NOBODY), 100, "hello");
    assert_eq!(opened, 100, "connect itself is not refused");
    assert_eq!(answered, 16, "the neighbour is served up to its cap");
    let during = cost(&tb);
    assert!(during.fds <= before.fds + 2 * 16 + 8, "{before:?} -> {during:?}");
    // Another application (root here) and the administrator are served.
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let random = s.generate_random_vec(32).expect("C_GenerateRandom beside a greedy neighbour");
    assert_eq!(random.len(), 32);
    keyward_ok(&tb, &["status"], 0);
    p.close_stdin();
    p.wait_success(WAIT);
});

keyward_test!(fn a_forked_child_cannot_speak_on_its_parents_connection(tb) {
    let mut p = probe(&tb, &["fork-send", &tb.socket]);
    assert_eq!(p.value("child", WAIT), "closed", "the agent answered a forked child on its parent's connection");
    assert_eq!(p.value("parent", WAIT), "closed", "the connection is dropped once another process used it");
    p.wait_success(WAIT);
    // The agent goes on serving everyone else.
    signs(&Ctx::new(&tb), "after the fork attempt");
});

keyward_test!(fn the_module_sends_nothing_to_a_socket_of_another_user(tb) {
    // Another user puts a socket where the module will look.
    let dir = tb.path("squat");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&tb.dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let path = dir.join("keyward.sock");
    let path_s = path.to_str().expect("utf-8 path");
    let mut squatter = probe(&tb, &["squat", path_s, "--uid", NOBODY]);
    squatter.value("listening", WAIT);
    let try_login = || {
        let (p11, _raw) = load(&tb);
        p11.initialize(os_threads()).expect("C_Initialize succeeds without an agent");
        let slots = p11.get_all_slots().expect("C_GetSlotList");
        for slot in slots {
            // No token is present: nothing to log in to.
            assert!(p11.open_ro_session(slot).is_err(), "a session on the squatter's socket");
        }
        p11.finalize().expect("C_Finalize");
    };
    std::env::set_var("KEYWARD_SOCKET", path_s);
    std::env::set_var("KEYWARD_TIMEOUT_MS", "1000");
    std::env::remove_var("KEYWARD_AGENT_UID");
    try_login();
    // One line per connection the module opened (at least one: it did try).
    let mut seen = Vec::new();
    while let Some(v) = squatter.try_value("received", Duration::from_secs(4)) {
        seen.push(v);
    }
    assert!(!seen.is_empty(), "the module never connected to the squatter's socket");
    assert!(seen.iter().all(|v| v == "0"), "the module sent bytes to another user's socket: {seen:?}");
    // The check is what stops it: trusting that user, the module talks.
    std::env::set_var("KEYWARD_AGENT_UID", NOBODY);
    try_login();
    let got: usize = squatter.value("received", WAIT).parse().expect("a count");
    assert!(got > 0, "with KEYWARD_AGENT_UID naming the squatter the module sent nothing: the test proves nothing");
    std::env::remove_var("KEYWARD_AGENT_UID");
    std::env::set_var("KEYWARD_SOCKET", &tb.socket);
    squatter.close_stdin();
    squatter.wait_success(WAIT);
});

keyward_test!(fn a_removed_or_replaced_socket_is_bound_again(tb) {
    std::fs::remove_file(&tb.socket).expect("remove the agent's socket");
    eventually("the socket coming back", || Path::new(&tb.socket).exists());
    signs(&Ctx::new(&tb), "after the socket was removed");
    let status = keyward_ok(&tb, &["status"], 0);
    assert!(status.contains("was removed; bound again"), "{status}");

    // Another user replaces it with a socket of their own.
    std::fs::set_permissions(&tb.dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::remove_file(&tb.socket).expect("remove the agent's socket");
    let mut squatter = probe(&tb, &["squat", &tb.socket, "--uid", NOBODY]);
    squatter.value("listening", WAIT);
    std::fs::set_permissions(&tb.dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    eventually("the agent taking its path back", || {
        keyward_ok(&tb, &["status"], 0).matches("bound again").count() >= 2
    });
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&tb.socket).expect("stat"));
    assert_eq!(owner, 0, "the socket at the agent's path is the squatter's");
    signs(&Ctx::new(&tb), "after the socket was replaced");
    squatter.close_stdin();
    squatter.wait_success(WAIT);
});

keyward_test!(fn the_state_directory_gets_its_mode_back_at_start(tb) {
    let state = tb.path("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    tb.stop_agent();
    tb.start_agent();
    let mode = std::fs::metadata(&state).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "state directory mode {mode:o}");
});

keyward_test!(fn the_admin_socket_serves_administrators_only(tb) {
    open_to_everyone(&tb, true, &[]);
    let admin = |uid: Option<&str>| {
        let mut args = vec!["admin", tb.admin_socket.as_str()];
        if let Some(u) = uid {
            args.extend(["--uid", u]);
        }
        let mut p = probe(&tb, &args);
        let v = p.value("admin", WAIT);
        p.wait_success(WAIT);
        v
    };
    assert_eq!(admin(None), "answered", "root is an administrator");
    // Refused with a reason, before anything was read beyond its hello.
    assert_eq!(admin(Some(NOBODY)), "refused", "a user outside the admin group used the admin socket");
    // The group setting names who else may.
    tb.set_agent_options(&["admin_socket_mode = \"0666\"", "admin_socket_group = \"65534\""]);
    assert_eq!(admin(Some(NOBODY)), "answered", "a member of admin_socket_group was refused");
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&tb.admin_socket).expect("stat"));
    assert_eq!(gid, 65534, "the admin socket's group");
});

keyward_test!(fn a_peer_is_the_file_it_runs_not_the_path_it_shows(tb) {
    // Two copies of the probe: the policy names the first.
    let allowed = tb.path("allowed-probe");
    let other = tb.path("other-probe");
    std::fs::copy(PROBE, &allowed).expect("copy the probe");
    std::fs::copy(PROBE, &other).expect("copy the probe");
    keyward_tests::admin::install_policy(
        &tb,
        &format!(
            "[settings]\nmode = \"strict\"\n\n[[application]]\nname = \"allowed\"\nuid = 0\nexe = \"{}\"\n",
            allowed.display()
        ),
    );
    let hello = |cmd: &mut Command| {
        let out = keyward_tests::tools::output(cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", keyward_tests::tools::describe(cmd, &out));
        text
    };
    let run = |exe: &Path| {
        let mut c = Command::new(exe);
        c.args(["flood", &tb.socket, "1", "hello"]).stdin(std::process::Stdio::null());
        hello(&mut c)
    };
    assert!(run(&allowed).contains("answered: 1"), "the allowed file is admitted");
    assert!(run(&other).contains("answered: 0"), "another file is not");
    // In a mount namespace of its own, the other file mounted over the
    // allowed path shows that path in /proc.
    let in_ns = |bind: bool| {
        let script = if bind {
            format!("mount --bind {} {} && exec {} flood {} 1 hello", other.display(), allowed.display(), allowed.display(), tb.socket)
        } else {
            format!("exec {} flood {} 1 hello", allowed.display(), tb.socket)
        };
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", &script]).stdin(std::process::Stdio::null());
        hello(&mut c)
    };
    assert!(in_ns(false).contains("answered: 0"), "a peer in another mount namespace is refused by default");
    tb.set_agent_options(&["foreign_mount_namespaces = true"]);
    assert!(in_ns(false).contains("answered: 1"), "foreign_mount_namespaces admits the allowed file from another namespace");
    assert!(
        in_ns(true).contains("answered: 0"),
        "another file bind-mounted over the allowed path was admitted"
    );
});
