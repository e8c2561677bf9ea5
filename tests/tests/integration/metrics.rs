//! The Prometheus metrics endpoint as a scraper sees it: off by default,
//! refused on a non-loopback address, and when on, an exposition that the
//! reference parser accepts and whose counters moved by exactly what the
//! test did.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{agent_start_on, find, keyward_ok, strict_policy};
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};
use keyward_tests::Env;

/// Adds a `[metrics]` table on port 0 to the testbed's agent configuration;
/// it takes effect at the agent's next start.
fn with_metrics(tb: &Env) {
    let path = tb.path("keyward-agent.toml");
    let mut config = std::fs::read_to_string(&path).expect("read the agent configuration");
    assert!(
        !config.contains("[metrics]"),
        "metrics are already configured"
    );
    config.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, config).expect("write the agent configuration");
}

/// The address the agent wrote to `metrics.addr` (mode 0600).
fn metrics_addr(tb: &Env) -> String {
    let path = tb.path("state/metrics.addr");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} after a start with metrics: {e}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    let addr = text.trim().to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "metrics.addr holds {addr:?}, not the bound loopback address"
    );
    addr
}

/// The agent's pid (the testbed's `agent.pid`).
fn agent_pid(tb: &Env) -> u32 {
    let text = std::fs::read_to_string(tb.path("agent.pid")).expect("agent.pid");
    text.trim().parse().expect("a pid in agent.pid")
}

/// The TCP ports process `pid` listens on: its socket descriptors matched
/// against the kernel's listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd of the agent") {
        let Ok(target) = std::fs::read_link(fd.expect("fd entry").path()) else {
            continue;
        };
        let target = target.display().to_string();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            inodes.push(inode.to_owned());
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

/// One HTTP/1.1 exchange: status, headers (lower-case names), body.
fn http(addr: &str, method: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8(raw).expect("an answer in UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Sends `bytes` as they are and returns the answer as text.
fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may answer (and close) before it has read everything.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// A scraped exposition, its samples by series (name and labels exactly
/// as the agent writes them).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// `GET /metrics`, checked: 200, the text format's content type, an
    /// exposition the reference parser accepts, `# HELP` and `# TYPE` for
    /// every family.
    fn get(addr: &str) -> Scrape {
        let (status, headers, text) = http(addr, "GET", "/metrics");
        assert_eq!(status, 200, "GET /metrics:\n{text}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        check_families(&text);
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad line {l:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}"));
                (series.to_owned(), value)
            })
            .collect();
        Scrape { text, samples }
    }

    fn get_opt(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    #[track_caller]
    fn get_value(&self, series: &str) -> f64 {
        self.get_opt(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.text))
    }

    /// A counter's value, 0 when the series is not there yet.
    fn counter(&self, series: &str) -> f64 {
        self.get_opt(series).unwrap_or(0.0)
    }

    fn requests(&self, operation: &str, result: &str) -> f64 {
        self.counter(&format!(
            "keyward_requests_total{{operation=\"{operation}\",result=\"{result}\"}}"
        ))
    }

    fn admin(&self, request: &str, result: &str) -> f64 {
        self.counter(&format!(
            "keyward_admin_requests_total{{request=\"{request}\",result=\"{result}\"}}"
        ))
    }
}

/// Every sample belongs to a family announced with one `# HELP` and one
/// `# TYPE`, before its samples; and the reference parser accepts the
/// whole text (Debian's python3-prometheus-client).
fn check_families(text: &str) {
    let mut help = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(
                help.insert(name.clone(), ()).is_none(),
                "two # HELP for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(help.contains_key(name), "# TYPE before # HELP for {name}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "two # TYPE for {name}"
            );
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| types.get(*base).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(
                types.contains_key(family),
                "{name} has no # TYPE before it:\n{text}"
            );
            assert!(
                name.starts_with("keyward_"),
                "{name} is not a keyward_ metric"
            );
        }
    }
    let parsed = reference_parse(text);
    for (family, kind) in [
        ("keyward_requests", "counter"),
        ("keyward_request_duration_seconds", "histogram"),
        ("keyward_admin_requests", "counter"),
        ("keyward_key_state", "gauge"),
        ("keyward_keys", "gauge"),
        ("keyward_build_info", "gauge"),
    ] {
        assert_eq!(
            parsed.get(family).map(String::as_str),
            Some(kind),
            "the reference parser found no {kind} {family}: {parsed:?}"
        );
    }
}

/// The reference parser's view: family name → type. Fails (never skips)
/// when python3 or its prometheus_client module is missing.
fn reference_parse(text: &str) -> BTreeMap<String, String> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in families:
        sys.exit("family %s twice" % f.name)
    if not f.documentation:
        sys.exit("family %s has no help" % f.name)
    families[f.name] = f.type
print(json.dumps(families))
"#;
    // Debian's package installs the module for the system's python3.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client.parser"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "python3 with the prometheus_client module is missing: install it with \
                 `apt-get install python3-prometheus-client` (softhsm-config/setup does)"
            )
        });
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("wait for python3");
    assert!(
        out.status.success(),
        "the reference parser rejects the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<BTreeMap<String, String>>(&out.stdout)
        .expect("the parser's JSON summary")
}

/// For every operation seen: the histogram counts exactly the requests
/// the counters count.
fn check_histograms_match_counters(s: &Scrape) {
    let mut seen = 0;
    for (series, count) in &s.samples {
        let Some(labels) = series.strip_prefix("keyward_request_duration_seconds_count{") else {
            continue;
        };
        let operation = labels
            .strip_prefix("operation=\"")
            .and_then(|r| r.strip_suffix("\"}"))
            .expect("operation label");
        let inf = s.get_value(&format!(
            "keyward_request_duration_seconds_bucket{{operation=\"{operation}\",le=\"+Inf\"}}"
        ));
        let total = s.requests(operation, "ok") + s.requests(operation, "error");
        assert_eq!(*count, total, "{operation}: histogram count vs counters");
        assert_eq!(inf, total, "{operation}: +Inf bucket vs counters");
        seen += 1;
    }
    assert!(seen > 0, "no histogram at all:\n{}", s.text);
}

keyward_test!(fn metrics_count_requests_admin_actions_and_show_keys(tb) {
    tb.require_agent("the metrics endpoint");
    with_metrics(&tb);
    strict_policy(&tb); // restarts the agent: with the policy and metrics
    let addr = metrics_addr(&tb);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listening_ports(agent_pid(&tb)), vec![port], "the agent should listen on exactly the metrics port");

    let before = Scrape::get(&addr);
    keyward_ok(&tb, &["key", "create", "measured", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "measured"], 0);
    keyward_ok(&tb, &["key", "activate", "no-such-key"], 4);

    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    expect_err(s.login(UserType::User, Some(&AuthPin::new("wrong-pin-xyzzy".into()))), RvError::PinIncorrect);
    s.login(UserType::User, Some(&ctx.pin())).expect("the right PIN");
    let k = find(&s, "measured", ObjectClass::PRIVATE_KEY)[0];
    for _ in 0..3 {
        s.sign(&Mechanism::Ecdsa, k, &[7u8; 32]).expect("a signature");
    }

    let active = Scrape::get(&addr);
    // The module sends one C_SignInit for a new key and mechanism, then
    // defers the init into each C_Sign (ARCHITECTURE.md, "The hot path").
    let delta = |op: &str, result: &str| active.requests(op, result) - before.requests(op, result);
    assert_eq!(delta("C_Login", "ok"), 1.0, "{}", active.text);
    assert_eq!(delta("C_Login", "error"), 1.0, "{}", active.text);
    assert_eq!(delta("C_SignInit", "ok"), 1.0, "{}", active.text);
    assert_eq!(delta("C_Sign", "ok"), 3.0, "{}", active.text);
    assert_eq!(delta("C_Sign", "error"), 0.0, "{}", active.text);
    assert_eq!(delta("C_FindObjectsInit", "ok"), 1.0, "{}", active.text);
    assert_eq!(active.get_value("keyward_clients"), 1.0, "this test process is the one client");
    assert_eq!(active.get_value("keyward_approval_requests_pending"), 0.0, "no request waits");
    assert!(active.get_value("keyward_connections") >= 1.0);
    check_histograms_match_counters(&active);

    // Admin requests are counted by their stable names.
    assert_eq!(active.admin("key.create", "ok") - before.admin("key.create", "ok"), 1.0);
    assert_eq!(active.admin("key.activate", "ok") - before.admin("key.activate", "ok"), 1.0);
    assert_eq!(active.admin("key.activate", "error") - before.admin("key.activate", "error"), 1.0);

    let id = format!("token=\"{}\",key=\"measured\",class=\"signing\"", tb.token);
    assert_eq!(active.get_value(&format!("keyward_key_state{{{id},state=\"active\"}}")), 1.0);
    assert_eq!(active.get_value(&format!("keyward_key_state{{{id},state=\"pre-activation\"}}")), 0.0);
    assert_eq!(active.get_value("keyward_keys{state=\"active\"}"), 1.0);
    assert_eq!(active.get_value(&format!("keyward_key_active_version{{{id}}}")), 1.0);
    let age = active.get_value(&format!("keyward_key_active_version_age_seconds{{{id}}}"));
    assert!((0.0..600.0).contains(&age), "version age {age}");
    // The class rotates every 7 days.
    let next = active.get_value(&format!("keyward_key_next_rotation_seconds{{{id}}}"));
    let week = 7.0 * 86_400.0;
    assert!(next <= week && next > week - 600.0, "next rotation in {next} s");
    assert!(active.get_value("keyward_audit_records") > 0.0);
    // The report's figures (made anew after an admin action).
    let key = format!("token=\"{}\",key=\"measured\"", tb.token);
    assert_eq!(active.get_value("keyward_rotation_compliance_ratio"), 1.0);
    assert_eq!(active.get_value(&format!("keyward_key_rotation_overdue{{{key}}}")), 0.0);
    assert_eq!(active.get_value(&format!("keyward_key_uses_window{{{key}}}")), 3.0, "{}", active.text);
    assert_eq!(active.get_value(&format!("keyward_key_anomalies{{{key}}}")), 0.0);
    assert_eq!(active.get_value("keyward_admin_failures{period=\"total\"}"), 1.0, "{}", active.text);
    assert!(active.get_value("keyward_audit_events_total") >= active.get_value("keyward_audit_records_written_total"));
    assert_eq!(active.get_value("keyward_audit_write_failures_total"), 0.0);
    assert_eq!(active.get_value("keyward_audit_failing"), 0.0);
    let started = active.get_value("keyward_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started <= now && started > now - 600.0, "start time {started}, now {now}");
    assert_eq!(
        active.get_value(&format!(
            "keyward_build_info{{version=\"{}\",protocol=\"{}\",admin_protocol=\"{}\"}}",
            env!("CARGO_PKG_VERSION"),
            keyward_protocol::APP_VERSIONS.max,
            keyward_protocol::ADMIN_VERSIONS.max
        )),
        1.0
    );

    // A refused use: counted as an error of the call that carried it.
    keyward_ok(&tb, &["key", "suspend", "measured", "--reason", "test"], 0);
    expect_err(s.sign(&Mechanism::Ecdsa, k, &[7u8; 32]), RvError::KeyFunctionNotPermitted);
    let suspended = Scrape::get(&addr);
    // Three signatures and the refusal reached the trail, counted as events.
    assert!(
        suspended.get_value("keyward_audit_events_total") >= active.get_value("keyward_audit_events_total") + 1.0,
        "{}",
        suspended.text
    );
    let delta = |op: &str, result: &str| suspended.requests(op, result) - active.requests(op, result);
    assert_eq!(delta("C_Sign", "error"), 1.0, "{}", suspended.text);
    assert_eq!(delta("C_Sign", "ok"), 0.0, "{}", suspended.text);
    check_histograms_match_counters(&suspended);
    assert_eq!(suspended.get_value(&format!("keyward_key_state{{{id},state=\"suspended\"}}")), 1.0);
    assert_eq!(suspended.get_value(&format!("keyward_key_state{{{id},state=\"active\"}}")), 0.0);
    assert_eq!(suspended.get_value("keyward_keys{state=\"suspended\"}"), 1.0);
    assert_eq!(suspended.get_value("keyward_keys{state=\"active\"}"), 0.0);
    assert!(
        suspended.get_opt(&format!("keyward_key_next_rotation_seconds{{{id}}}")).is_none(),
        "a suspended key is not rotated:\n{}",
        suspended.text
    );

    // Other paths and methods.
    let (status, _, _) = http(&addr, "GET", "/");
    assert_eq!(status, 404);
    let (status, _, _) = http(&addr, "GET", "/metricsx");
    assert_eq!(status, 404);
    let (status, headers, _) = http(&addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, _, body) = http(&addr, "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""));

    // Bad input gets a 4xx, and the endpoint keeps serving.
    assert!(raw_exchange(&addr, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 << 10));
    assert!(raw_exchange(&addr, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
    assert!(raw_exchange(&addr, b"GET /metrics HTTP/1.1\r\nHost: attacker.example\r\n\r\n").starts_with("HTTP/1.1 403 "));
    drop(TcpStream::connect(&addr).expect("connect and hang up"));
    Scrape::get(&addr);

    // A stop removes metrics.addr.
    tb.stop_agent();
    assert!(!tb.path("state/metrics.addr").exists(), "metrics.addr outlived the agent");
});

keyward_test!(fn metrics_are_off_by_default(tb) {
    tb.require_agent("the metrics endpoint");
    assert!(!tb.path("state/metrics.addr").exists(), "metrics.addr without [metrics]");
    assert_eq!(listening_ports(agent_pid(&tb)), Vec::<u16>::new(), "the agent listens on TCP without [metrics]");
    // A file left by an earlier run with metrics is removed at start.
    tb.stop_agent();
    std::fs::write(tb.path("state/metrics.addr"), "127.0.0.1:9\n").unwrap();
    tb.start_agent();
    assert!(!tb.path("state/metrics.addr").exists(), "a stale metrics.addr survived a start without [metrics]");
    assert_eq!(listening_ports(agent_pid(&tb)), Vec::<u16>::new());
});

keyward_test!(fn a_non_loopback_metrics_address_is_refused_at_start(tb) {
    tb.require_agent("the metrics endpoint");
    let config = std::fs::read_to_string(tb.path("keyward-agent.toml")).unwrap();
    let bad = tb.path("bad.toml");
    std::fs::write(&bad, format!("{config}\n[metrics]\nlisten = \"0.0.0.0:0\"\n")).unwrap();
    let (status, stderr) = agent_start_on(&tb, &bad);
    assert!(!status.success(), "keyward-agent accepted listen = 0.0.0.0:0");
    assert!(
        stderr.contains(&bad.display().to_string())
            && stderr.contains("[metrics] listen")
            && stderr.contains("not a loopback address"),
        "the refusal does not name the file, the field and the reason:\n{stderr}"
    );
    // The running agent is untouched.
    keyward_ok(&tb, &["status"], 0);
});

keyward_test!(fn the_shipped_alerting_rules_check_test_and_name_only_metrics_the_agent_exports(tb) {
    // The rules and their unit tests, with Prometheus's own tool.
    let promtool = keyward_tests::tools::require_tool("promtool", "prometheus");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/prometheus");
    for args in [
        vec!["check", "rules", "keyward-rules.yml"],
        vec!["test", "rules", "keyward-rules.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every keyward metric a rule names is one the real agent exports.
    tb.require_agent("the metrics endpoint");
    with_metrics(&tb);
    strict_policy(&tb);
    let scrape = Scrape::get(&metrics_addr(&tb));
    let rules = std::fs::read_to_string(dir.join("keyward-rules.yml")).unwrap();
    let mut named = std::collections::BTreeSet::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("keyward_") {
            named.insert(word.to_owned());
        }
    }
    assert!(named.len() >= 8, "{named:?}");
    for name in &named {
        assert!(
            scrape.text.contains(&format!("# TYPE {name} ")),
            "the rules name {name}, which the agent does not export:\n{}",
            scrape.text
        );
    }
});
