//! keyward-bench: the same PKCS#11 cases against SoftHSM2 loaded directly,
//! the same kind of token through keyward (with its audit trail recording
//! uses, and with `[audit] record_uses = false`), and (where installed)
//! through p11-kit's RPC forwarding, interleaved round by round in one run.
//!
//! Layout: `targets` sets up the token stacks; `cases` holds the
//! operations; this file runs rounds, collects latencies and reports, with
//! the audit cost (keyward on / off, the trail's growth, the agent's CPU
//! time) last. The floor, a 64-byte Unix-socket round trip, is measured in
//! the same run.
#![forbid(unsafe_code)]

mod cases;
mod targets;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use clap::Parser;
use cryptoki::session::Session;

use cases::{Case, Keys};
use targets::{Target, Trail, KEYWARD, KEYWARD_AUDIT_OFF};

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "keyward-bench",
    about = "keyward against SoftHSM2 direct and p11-kit, side by side"
)]
struct Args {
    /// Prove that every case runs on every target (a few operations each); no timing claims.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds (a b c a b c ...); medians are taken over rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Time spent on one case, one target, one thread count, per round (ms).
    #[arg(long, default_value_t = 400)]
    case_ms: u64,
    /// The thread count of the multi-threaded runs.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only cases whose name contains one of these (comma separated).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Leave p11-kit out even when it is installed.
    #[arg(long)]
    no_p11kit: bool,
    /// Also write JSON lines to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Internal: time module load + C_Initialize + first session of one library, then exit.
    #[arg(long, hide = true, num_args = 3, value_names = ["MODULE", "TOKEN", "PIN"])]
    startup_probe: Option<Vec<String>>,
}

/// One measured run of one case on one target.
#[derive(Debug, Clone)]
struct Sample {
    ops: u64,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() {
    let args = Args::parse();
    if let Some(probe) = &args.startup_probe {
        let us = targets::startup_probe(&probe[0], &probe[1], &probe[2]);
        println!("{us}");
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("keyward-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let work = tempfile::Builder::new()
        .prefix("kw-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let stacks = stacks(args, work.path())?;
    let selected: Vec<&Case> = cases::ALL
        .iter()
        .filter(|c| args.cases.is_empty() || args.cases.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        return Err("no case matches --cases".into());
    }

    let mut keys = Vec::new();
    let mut owners = Vec::new();
    for t in &stacks {
        let (k, owner) =
            cases::prepare(t).map_err(|e| format!("{}: preparing keys: {e}", t.name))?;
        keys.push(k);
        owners.push(owner);
    }
    // The trail's head per keyward target: each measurement's growth is
    // counted from here.
    let mut heads: Vec<u64> = Vec::new();
    for t in &stacks {
        heads.push(match &t.admin {
            Some(a) => a.trail_since(0)?.head,
            None => 0,
        });
    }
    let mut bench = Bench {
        args,
        stacks: &stacks,
        keys: &keys,
        heads,
        rounds: if args.quick { 1 } else { args.rounds.max(1) },
        failures: Vec::new(),
        audit_rows: Vec::new(),
        json_out: vec![floors(args)],
    };
    let thread_counts = if args.threads > 1 {
        vec![1, args.threads]
    } else {
        vec![1]
    };
    println!(
        "{:<28} {:>3} {:<12} {:>10} {:>9} {:>9} {:>7} {:>9}",
        "case", "thr", "target", "ops/s", "p50 µs", "p99 µs", "ratio", "+µs p50"
    );
    for case in &selected {
        for &threads in &thread_counts {
            bench.case(case, threads)?;
        }
    }
    let Bench {
        failures,
        audit_rows,
        mut json_out,
        ..
    } = bench;
    print_audit_cost(&audit_rows, &mut json_out);

    // Start-up: a fresh process per probe, since a library loads only once per process.
    let probes = if args.quick { 1 } else { 5 };
    for t in &stacks {
        let mut us = Vec::new();
        for _ in 0..probes {
            us.push(targets::run_startup_probe(t)?);
        }
        us.sort_by(f64::total_cmp);
        let p50 = us[us.len() / 2];
        println!(
            "{:<28} {:>3} {:<12} {:>10} {:>9.1}",
            "startup (load+init+session)", 1, t.name, "", p50
        );
        json_out.push(serde_json::json!({"kind": "startup", "target": t.name, "p50_us": p50}));
    }

    let text: String = json_out.iter().map(|v| format!("{v}\n")).collect();
    if let Some(path) = &args.json {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    drop(owners);
    for t in stacks {
        t.stop();
    }
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        Err(format!("{} case runs failed", failures.len()))
    }
}

/// The keyward targets' positions in the stacks: audit on, audit off.
const ON: usize = 1;
const OFF: usize = 2;

/// The targets side by side: SoftHSM2 direct, keyward with and without use
/// records, and p11-kit when it is installed.
fn stacks(args: &Args, work: &std::path::Path) -> Result<Vec<targets::Target>, String> {
    let mut stacks = vec![
        targets::direct(work)?,
        targets::keyward(work, KEYWARD, true)?,
        targets::keyward(work, KEYWARD_AUDIT_OFF, false)?,
    ];
    if !args.no_p11kit {
        match targets::p11kit(work)? {
            Some(t) => stacks.push(t),
            // The test suite runs --quick to prove every column works: a
            // missing p11-kit fails it rather than leaving a column out.
            None if args.quick => {
                return Err("p11-kit server or p11-kit-client.so is not installed (apt-get install p11-kit), or pass --no-p11kit".into())
            }
            None => eprintln!("keyward-bench: p11-kit server or p11-kit-client.so not installed; p11-kit column left out"),
        }
    }
    Ok(stacks)
}

/// The machine's socket round trips, printed and as a JSON line.
fn floors(args: &Args) -> serde_json::Value {
    let floor = socket_floor_us(if args.quick { 2_000 } else { 50_000 });
    let n = if args.quick { 20 } else { 400 };
    let floor_60us = socket_floor_with_work_us(n * 10, Duration::from_micros(60));
    let floor_1ms = socket_floor_with_work_us(n, Duration::from_millis(1));
    println!(
        "machine: {} cores; unix-socket 64-byte round trip p50 {floor:.1} µs \
         ({floor_60us:.1} µs when the peer works 60 µs first, {floor_1ms:.1} µs when it works 1 ms)",
        cores()
    );
    serde_json::json!({
        "kind": "floor", "unix_rtt_p50_us": floor,
        "unix_rtt_after_60us_work_p50_us": floor_60us, "unix_rtt_after_1ms_work_p50_us": floor_1ms,
    })
}

/// One benchmark run: its targets, their keys and trail heads, and what
/// it has found so far.
struct Bench<'a> {
    args: &'a Args,
    stacks: &'a [targets::Target],
    keys: &'a [cases::Keys],
    heads: Vec<u64>,
    rounds: usize,
    failures: Vec<String>,
    audit_rows: Vec<(&'static str, usize, Sample, Sample, Cost, Cost)>,
    json_out: Vec<serde_json::Value>,
}

impl Bench<'_> {
    /// `case` with `threads` threads on every target, in interleaved
    /// rounds; prints the medians and notes the audit cost.
    fn case(&mut self, case: &Case, threads: usize) -> Result<(), String> {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); self.stacks.len()];
        let mut cost: Vec<Cost> = vec![Cost::default(); self.stacks.len()];
        for round in 0..self.rounds {
            // The two keyward targets take turns at going first.
            let mut order: Vec<usize> = (0..self.stacks.len()).collect();
            if round % 2 == 1 {
                order.swap(ON, OFF);
            }
            for i in order {
                let t = &self.stacks[i];
                let budget = if self.args.quick {
                    Budget::Ops(case.quick_ops)
                } else {
                    Budget::Time(Duration::from_millis(self.args.case_ms * case.weight))
                };
                let cpu_before = match &t.admin {
                    Some(a) => Some(a.cpu()?),
                    None => None,
                };
                let measured = measure(t, &self.keys[i], case, threads, budget);
                // What the agent wrote for this measurement, and the
                // CPU time it spent, the final write included.
                if let (Some(a), Some(before)) = (&t.admin, cpu_before) {
                    let trail = a.trail_since(self.heads[i])?;
                    let after = a.cpu()?;
                    self.heads[i] = trail.head;
                    let ops = measured.as_ref().map_or(0, |s| s.ops);
                    cost[i].add(ops, trail, after.0 - before.0, after.1 - before.1);
                }
                match measured {
                    Ok(s) => samples[i].push(s),
                    // Only p11-kit may lack a mechanism; keyward must serve all that direct serves.
                    Err(e)
                        if t.name == "p11kit"
                            && (e.contains("Feature not supported")
                                || e.contains("invalid mechanism")) =>
                    {
                        eprintln!("keyward-bench: {} on p11kit left out: {e}", case.name);
                    }
                    Err(e) => {
                        self.failures.push(format!(
                            "{} on {} ({threads} threads): {e}",
                            case.name, t.name
                        ));
                    }
                }
            }
        }
        let medians: Vec<Option<Sample>> = samples.iter().map(|s| median(s)).collect();
        let direct = medians[0].clone();
        for (i, m) in medians.iter().enumerate() {
            let Some(m) = m else { continue };
            let (ratio, added) = match &direct {
                Some(d) => (m.ops_per_sec / d.ops_per_sec, m.p50_us - d.p50_us),
                None => (f64::NAN, f64::NAN),
            };
            println!(
                "{:<28} {:>3} {:<12} {:>10.0} {:>9.1} {:>9.1} {:>7.3} {:>9.1}",
                case.name,
                threads,
                self.stacks[i].name,
                m.ops_per_sec,
                m.p50_us,
                m.p99_us,
                ratio,
                added
            );
            self.json_out.push(serde_json::json!({
                "kind": "case", "case": case.name, "threads": threads, "target": self.stacks[i].name,
                "ops_per_sec": m.ops_per_sec, "p50_us": m.p50_us, "p99_us": m.p99_us,
                "ratio_to_direct": ratio, "added_p50_us": added, "rounds": samples[i].len(),
                "quick": self.args.quick,
            }));
        }
        check_trail(case, threads, &cost[ON], &cost[OFF], &mut self.failures);
        if let (Some(a), Some(b)) = (&medians[ON], &medians[OFF]) {
            self.audit_rows.push((
                case.name,
                threads,
                a.clone(),
                b.clone(),
                cost[ON],
                cost[OFF],
            ));
        }
        Ok(())
    }
}

enum Budget {
    Ops(u32),
    Time(Duration),
}

/// Runs `case` on `threads` threads, each with its own logged-in session.
fn measure(
    t: &Target,
    keys: &Keys,
    case: &Case,
    threads: usize,
    budget: Budget,
) -> Result<Sample, String> {
    let start = Instant::now();
    let results: Vec<Result<Vec<u32>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let budget = &budget;
                scope.spawn(move || -> Result<Vec<u32>, String> {
                    let session: Session = t.session().map_err(|e| e.to_string())?;
                    let mut lat = Vec::with_capacity(4096);
                    let begin = Instant::now();
                    loop {
                        let t0 = Instant::now();
                        (case.run)(t, &session, keys).map_err(|e| e.to_string())?;
                        lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        let done = match budget {
                            Budget::Ops(n) => lat.len() as u32 >= *n,
                            Budget::Time(d) => begin.elapsed() >= *d,
                        };
                        if done {
                            break;
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok(Sample {
        ops: all.len() as u64,
        ops_per_sec: all.len() as f64 / elapsed,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    })
}

/// The per-field median over rounds.
fn median(samples: &[Sample]) -> Option<Sample> {
    if samples.is_empty() {
        return None;
    }
    let mid = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Some(Sample {
        ops: samples.iter().map(|s| s.ops).sum(),
        ops_per_sec: mid(|s| s.ops_per_sec),
        p50_us: mid(|s| s.p50_us),
        p99_us: mid(|s| s.p99_us),
    })
}

/// What one keyward target's agent did for one case and thread count,
/// summed over rounds.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// Operations the benchmark completed.
    ops: u64,
    /// Use records added to the trail, and the uses they stand for.
    use_records: u64,
    use_events: u64,
    /// The agent's CPU time (10 ms ticks), and its audit writer's.
    agent_cpu: Duration,
    writer_cpu: Duration,
}

impl Cost {
    fn add(&mut self, ops: u64, trail: Trail, agent_cpu: Duration, writer_cpu: Duration) {
        self.ops += ops;
        self.use_records += trail.use_records;
        self.use_events += trail.use_events;
        self.agent_cpu += agent_cpu;
        self.writer_cpu += writer_cpu;
    }

    fn per_1k(&self, n: u64) -> f64 {
        n as f64 * 1000.0 / self.ops.max(1) as f64
    }

    fn cpu_us_per_op(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// Every completed signature on keyward is one use in its trail (audit on)
/// and none is recorded with `record_uses = false`: a miswired target or a
/// lost use fails the run.
fn check_trail(case: &Case, threads: usize, on: &Cost, off: &Cost, failures: &mut Vec<String>) {
    if off.use_records != 0 {
        failures.push(format!(
            "{} ({threads} threads): {} use records on {KEYWARD_AUDIT_OFF}",
            case.name, off.use_records
        ));
    }
    if case.name.contains("_sign") && on.use_events != on.ops {
        failures.push(format!(
            "{} ({threads} threads): {} signatures on {KEYWARD} but {} uses in its trail",
            case.name, on.ops, on.use_events
        ));
    }
}

/// The audit table: keyward with use records against keyward without, per
/// case and thread count (medians over rounds), with the trail's growth
/// and the agent's CPU time per operation (summed over rounds).
fn print_audit_cost(
    rows: &[(&str, usize, Sample, Sample, Cost, Cost)],
    json_out: &mut Vec<serde_json::Value>,
) {
    println!();
    println!(
        "audit cost: {KEYWARD} (every use recorded) / {KEYWARD_AUDIT_OFF} ([audit] record_uses = false)"
    );
    println!(
        "{:<28} {:>3} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "case",
        "thr",
        "on ops/s",
        "off ops/s",
        "on/off",
        "on p50",
        "off p50",
        "on/off",
        "rec/1k",
        "ev/1k",
        "cpu on",
        "cpu off",
        "writer"
    );
    for (case, threads, a, b, ca, cb) in rows {
        let ratio = a.ops_per_sec / b.ops_per_sec;
        let p50_ratio = a.p50_us / b.p50_us;
        println!(
            "{:<28} {:>3} {:>9.0} {:>9.0} {:>6.3} {:>8.1} {:>8.1} {:>6.3} {:>8.2} {:>8.0} {:>8.1} {:>8.1} {:>7.2}",
            case,
            threads,
            a.ops_per_sec,
            b.ops_per_sec,
            ratio,
            a.p50_us,
            b.p50_us,
            p50_ratio,
            ca.per_1k(ca.use_records),
            ca.per_1k(ca.use_events),
            ca.cpu_us_per_op(ca.agent_cpu),
            cb.cpu_us_per_op(cb.agent_cpu),
            ca.cpu_us_per_op(ca.writer_cpu),
        );
        json_out.push(serde_json::json!({
            "kind": "audit", "case": case, "threads": threads,
            "on_ops_per_sec": a.ops_per_sec, "off_ops_per_sec": b.ops_per_sec, "ops_ratio": ratio,
            "on_p50_us": a.p50_us, "off_p50_us": b.p50_us, "p50_ratio": p50_ratio,
            "ops": ca.ops, "use_records": ca.use_records, "use_events": ca.use_events,
            "agent_cpu_us_per_op_on": ca.cpu_us_per_op(ca.agent_cpu),
            "agent_cpu_us_per_op_off": cb.cpu_us_per_op(cb.agent_cpu),
            "writer_cpu_us_per_op": ca.cpu_us_per_op(ca.writer_cpu),
        }));
    }
    println!(
        "(ratios: medians over rounds; rec/1k, ev/1k: use records and the uses they stand for per \
         1000 operations on {KEYWARD}; cpu: the agent's CPU µs per operation, writer: its audit \
         writer thread's, on {KEYWARD}, from 10 ms ticks summed over rounds)"
    );
}

/// p50 of a 64-byte ping-pong over a Unix socket pair between two threads.
fn socket_floor_us(iterations: usize) -> f64 {
    socket_floor_with_work_us(iterations, Duration::ZERO)
}

/// The same ping-pong where the echoing side first works (spins) for
/// `work` before it answers, as the agent does while the HSM signs; the
/// result is the round trip's cost beyond `work`. A caller that sleeps
/// longer waits longer to be woken: on a virtual machine this grows with
/// `work`, and it is part of the floor for slow operations.
fn socket_floor_with_work_us(iterations: usize, work: Duration) -> f64 {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            let t0 = Instant::now();
            while t0.elapsed() < work {
                std::hint::spin_loop();
            }
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [7u8; 64];
    let mut lat = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t0 = Instant::now();
        a.write_all(&buf).expect("ping");
        a.read_exact(&mut buf).expect("pong");
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    drop(a);
    let _ = echo.join();
    lat.sort_unstable();
    lat[lat.len() / 2] as f64 / 1000.0 - work.as_secs_f64() * 1e6
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
