//! `cargo xtask bench capture`: what the probe costs, side by side in one run.
//!
//! The load is [`load`]'s: TCP connections made and reset at once on the loopback of a
//! namespace made for the run, by native client threads (the lab's generator reached half
//! this machine's rate). Rounds alternate (A B A B ...) and medians are reported:
//! - A, no tracing: the machine's connection rate;
//! - B, `flowpol record` running: rate, events, events lost, userspace CPU per 1,000 events;
//! - C, the floor for anything that records connections: bpftrace sending one line per
//!   finished handshake (both sides, as flowpol does) to a file, and nothing else;
//!
//! then, with `kernel.bpf_stats_enabled` (only then: it costs two clock reads a program run),
//! flowpol and three bpftrace programs on the same tracepoint, all attached: an empty one (the
//! price of a run itself, statistics included), a bare count, and C's. From those: the cost
//! per run of every hook, the ratios on `sock/inet_sock_set_state`, and where the overhead goes
//! (CPU per connection of each hook and of the userspace); and a loss curve: offered rate
//! against events lost, `flowpol record` running, up to the generator's limit.
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::load::{self, Namespace};
use crate::setup::cargo;

/// Connections a round.
const CONNECTIONS: u64 = 200_000;
const ROUNDS: usize = 9;
const BPFTRACE: &str = "tracepoint:sock:inet_sock_set_state { @transitions = count(); }";
const BPFTRACE_EMPTY: &str = "tracepoint:sock:inet_sock_set_state { }";
/// One line per side of every finished handshake: the same news flowpol's tracepoint sends.
const BPFTRACE_EMIT: &str = "tracepoint:sock:inet_sock_set_state \
    /args->newstate == 1 && (args->oldstate == 2 || args->oldstate == 3)/ \
    { printf(\"%d %s %d %s %d\\n\", args->oldstate, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); }";
/// Offered rates of the loss curve, and how long each is offered.
const CURVE: [f64; 6] = [10_000.0, 25_000.0, 50_000.0, 75_000.0, 100_000.0, 150_000.0];
const CURVE_SECONDS: f64 = 2.0;

/// (id -> (name, runs, ns)) of every loaded BPF program.
fn programs() -> Result<HashMap<u64, (String, u64, u64)>> {
    let out = Command::new(super::flowpol()?)
        .args(["bpf-stats", "--json"])
        .output()?;
    if !out.status.success() {
        bail!(
            "flowpol bpf-stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .context("bpf-stats prints an array")?
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["run_count"].as_u64().unwrap_or(0),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect())
}

/// Waits until programs that were not in `before` are loaded; returns their ids.
fn wait_for_new(before: &HashMap<u64, (String, u64, u64)>, child: &mut Child) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the tracer exited early ({status})");
        }
        let now = programs()?;
        let new: Vec<u64> = now
            .keys()
            .filter(|id| !before.contains_key(id))
            .copied()
            .collect();
        if !new.is_empty() {
            std::thread::sleep(Duration::from_millis(500)); // let every program of the tool attach
            return Ok(programs()?
                .keys()
                .filter(|id| !before.contains_key(id))
                .copied()
                .collect());
        }
        if Instant::now() > deadline {
            bail!("no new BPF program appeared within 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / hz)
}

fn interrupt(child: &Child) {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

fn start_record(out: &Path) -> Result<Child> {
    Ok(Command::new(super::flowpol()?)
        .arg("record")
        .arg("--output")
        .arg(out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?)
}

/// Stops `flowpol record` and returns (events, events lost) from its summary.
fn stop_record(mut child: Child) -> Result<(u64, u64)> {
    interrupt(&child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    child.wait()?;
    let events = err
        .lines()
        .find_map(|l| {
            l.split(" flow records from ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no summary in:\n{err}"))?;
    let lost = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("events lost")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no loss count in:\n{err}"))?;
    Ok((events, lost))
}

fn delta(
    before: &HashMap<u64, (String, u64, u64)>,
    after: &HashMap<u64, (String, u64, u64)>,
    id: u64,
) -> (String, u64, u64) {
    let (name, runs, ns) = after.get(&id).cloned().unwrap_or_default();
    let (_, runs0, ns0) = before.get(&id).cloned().unwrap_or_default();
    (name, runs - runs0, ns - ns0)
}

/// The program of `ids` that ran most between the two snapshots: a bpftrace script's probe.
fn busiest(
    ids: &[u64],
    before: &HashMap<u64, (String, u64, u64)>,
    after: &HashMap<u64, (String, u64, u64)>,
) -> Result<(String, u64, u64)> {
    ids.iter()
        .map(|id| delta(before, after, *id))
        .max_by_key(|(_, runs, _)| *runs)
        .context("bpftrace's program")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A `flowpol record` whose programs are attached.
struct Recording {
    child: Child,
    programs: Vec<u64>,
}

fn attach(dir: &Path, name: &str) -> Result<Recording> {
    let before = programs()?;
    let mut child = start_record(&dir.join(name))?;
    let programs = wait_for_new(&before, &mut child)?;
    Ok(Recording { child, programs })
}

/// One B round: the load with flowpol recording. (rate, events, lost, userspace CPU s).
fn recorded(
    ns: &Namespace,
    dir: &Path,
    total: u64,
    rate: Option<f64>,
) -> Result<(load::Ran, u64, u64, f64)> {
    let rec = attach(dir, "records.jsonl")?;
    let cpu0 = cpu_seconds(rec.child.id())?;
    let ran = load::run(ns, total, rate)?;
    std::thread::sleep(Duration::from_secs(1)); // let it drain
    let cpu = cpu_seconds(rec.child.id())? - cpu0;
    let (events, lost) = stop_record(rec.child)?;
    Ok((ran, events, lost, cpu))
}

/// A bpftrace program whose probes are attached, printing to a file.
struct Bpftrace {
    child: Child,
    programs: Vec<u64>,
    out: PathBuf,
}

impl Bpftrace {
    fn start(script: &str, out: &Path) -> Result<Self> {
        let before = programs()?;
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let programs = wait_for_new(&before, &mut child)?;
        Ok(Self {
            child,
            programs,
            out: out.to_owned(),
        })
    }

    /// Stops it and returns what it printed. bpftrace sometimes misses the first SIGINT (seen
    /// once in ten runs, waiting in epoll), so it is told again each second, then killed.
    fn stop(mut self) -> Result<String> {
        for _ in 0..5 {
            interrupt(&self.child);
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return self.output();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child.kill()?;
        self.child.wait()?;
        self.output()
    }

    fn output(&self) -> Result<String> {
        std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))
    }
}

/// Lines of [`BPFTRACE_EMIT`]'s output: one a side of a handshake.
fn handshake_lines(out: &str) -> u64 {
    out.lines()
        .filter(|l| l.split_whitespace().count() == 5)
        .count() as u64
}

/// One C round: the load with bpftrace sending a line a handshake. (rate, lines printed).
/// One C round: the load with bpftrace sending a line a handshake. (rate, lines printed,
/// bpftrace's userspace CPU s).
fn floor_round(ns: &Namespace, dir: &Path) -> Result<(load::Ran, u64, f64)> {
    let bt = Bpftrace::start(BPFTRACE_EMIT, &dir.join("bpftrace-emit.txt"))?;
    let cpu0 = cpu_seconds(bt.child.id())?;
    // A quarter of a round: its rate is steady, and a full round takes it seconds.
    let ran = load::run(ns, CONNECTIONS / 4, None)?;
    std::thread::sleep(Duration::from_secs(1)); // let it drain
    let cpu = cpu_seconds(bt.child.id())? - cpu0;
    Ok((ran, handshake_lines(&bt.stop()?), cpu))
}

fn complete(ran: &load::Ran) -> Result<()> {
    if ran.failed > 0 {
        bail!(
            "{} of {} connections failed",
            ran.failed,
            ran.failed + ran.connections
        );
    }
    Ok(())
}

pub(super) fn capture() -> Result<()> {
    cargo(&["build", "--release", "--package", "probe-user"])?;
    let dir = crate::paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let ns = Namespace::create()?;
    let stats_flag = "/proc/sys/kernel/bpf_stats_enabled";
    let old_flag = std::fs::read_to_string(stats_flag).unwrap_or_else(|_| "0".into());
    std::fs::write(stats_flag, "0").context("disabling kernel.bpf_stats_enabled")?;
    let result = measure(&ns, &dir, stats_flag);
    let _ = std::fs::write(stats_flag, old_flag.trim());
    result
}

fn measure(ns: &Namespace, dir: &Path, stats_flag: &str) -> Result<()> {
    // Warm up: the first round of a fresh namespace is slower.
    load::run(ns, CONNECTIONS / 4, None)?;
    let (mut bare, mut with, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_lost, mut floor_cpu_per_conn) = (Vec::new(), Vec::new());
    let (mut events, mut lost, mut cpu_per_k, mut cpu_per_conn) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = load::run(ns, CONNECTIONS, None)?;
        complete(&a)?;
        let (b, ev, lo, cpu) = recorded(ns, dir, CONNECTIONS, None)?;
        complete(&b)?;
        let (c, emitted, c_cpu) = floor_round(ns, dir)?;
        complete(&c)?;
        eprintln!(
            "xtask bench: round {round}/{ROUNDS}: {:.0} / {:.0} / {:.0} connections/s (none / flowpol / bpftrace line a handshake), {ev} events, {lo} lost; bpftrace {emitted} lines",
            a.rate(), b.rate(), c.rate()
        );
        bare.push(a.rate());
        with.push(b.rate());
        floor.push(c.rate());
        floor_lost.push((2 * c.connections).saturating_sub(emitted) as f64);
        floor_cpu_per_conn.push(c_cpu * 1e9 / c.connections.max(1) as f64);
        events.push(ev as f64);
        lost.push(lo as f64);
        cpu_per_k.push(cpu * 1000.0 / (ev.max(1) as f64 / 1000.0));
        cpu_per_conn.push(cpu * 1e9 / b.connections.max(1) as f64);
    }
    let (rate_bare, rate_flowpol, rate_floor) = (
        median(bare.clone()),
        median(with.clone()),
        median(floor.clone()),
    );
    let overhead = |r: f64| (rate_bare - r) / rate_bare * 100.0;

    // Hook costs, flowpol and bpftrace side by side, with the kernel's BPF statistics on.
    std::fs::write(stats_flag, "1").context("enabling kernel.bpf_stats_enabled")?;
    let empty = Bpftrace::start(BPFTRACE_EMPTY, &dir.join("bpftrace-empty.txt"))?;
    let count = Bpftrace::start(BPFTRACE, &dir.join("bpftrace-count.txt"))?;
    let rec = attach(dir, "records-side-by-side.jsonl")?;
    let t0 = programs()?;
    let both = load::run(ns, CONNECTIONS, None)?;
    complete(&both)?;
    std::thread::sleep(Duration::from_secs(1));
    let t1 = programs()?;
    let (events2, lost2) = stop_record(rec.child)?;
    let tracepoint_runs = |bt: &Bpftrace| busiest(&bt.programs, &t0, &t1);
    let (empty_tp, count_tp) = (tracepoint_runs(&empty)?, tracepoint_runs(&count)?);
    empty.stop()?;
    let bt_out = count.stop()?;
    // C's program alone: beside flowpol its per-run cost is flowpol's too (it takes the
    // caches both share).
    let emit = Bpftrace::start(BPFTRACE_EMIT, &dir.join("bpftrace-emit-stats.txt"))?;
    let e0 = programs()?;
    let alone = load::run(ns, CONNECTIONS, None)?;
    complete(&alone)?;
    std::thread::sleep(Duration::from_secs(1));
    let e1 = programs()?;
    let emit_tp = busiest(&emit.programs, &e0, &e1)?;
    let emitted2 = handshake_lines(&emit.stop()?);
    std::fs::write(stats_flag, "0").context("disabling kernel.bpf_stats_enabled")?;
    let bt_count: u64 = bt_out
        .lines()
        .find_map(|l| l.strip_prefix("@transitions: ")?.trim().parse().ok())
        .unwrap_or(0);
    let per_run = |(_, runs, ns): &(String, u64, u64)| {
        if *runs > 0 {
            *ns as f64 / *runs as f64
        } else {
            0.0
        }
    };
    let hooks: Vec<(String, u64, u64)> = rec
        .programs
        .iter()
        .map(|id| delta(&t0, &t1, *id))
        .filter(|(_, runs, _)| *runs > 0)
        .collect();
    let ours_tp = hooks
        .iter()
        .find(|(n, _, _)| n.starts_with("inet_sock_set_s"))
        .cloned()
        .context("flowpol's tracepoint program")?;

    // The loss curve.
    let mut curve = Vec::new();
    for offered in CURVE {
        let total = (offered * CURVE_SECONDS) as u64;
        let (ran, ev, lo, _) = recorded(ns, dir, total, Some(offered))?;
        complete(&ran)?;
        eprintln!(
            "xtask bench: offered {offered:.0}/s, reached {:.0}/s: {ev} events, {lo} lost",
            ran.rate()
        );
        curve.push(json!({"offered_per_s": offered, "achieved_per_s": ran.rate(), "connections": ran.connections, "events": ev, "events_lost": lo}));
    }
    let (events_med, lost_med) = (median(events), median(lost));
    let cpu_med = median(cpu_per_k);
    // Where the overhead goes: CPU time per connection, each hook's (runs x cost, from the
    // side-by-side round, bpf_stats' own clock reads included) and the userspace's; against
    // the CPU time a connection takes on all cores without tracing, and the extra with flowpol.
    let per_conn =
        |runs: u64, ns_per_run: f64| runs as f64 * ns_per_run / both.connections.max(1) as f64;
    let mut breakdown: Vec<(String, f64)> = hooks
        .iter()
        .map(|h| (h.0.clone(), per_conn(h.1, per_run(h))))
        .collect();
    breakdown.push(("userspace (flowpol record)".into(), median(cpu_per_conn)));
    let floor_parts = [
        (
            "bpftrace line a handshake: tracepoint",
            emit_tp.1 as f64 * per_run(&emit_tp) / alone.connections.max(1) as f64,
        ),
        (
            "bpftrace line a handshake: userspace",
            median(floor_cpu_per_conn.clone()),
        ),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_bare = cores * 1e9 / rate_bare;
    let extra = cores * 1e9 / rate_flowpol - cpu_bare;

    println!("\nflowpol capture benchmark: {CONNECTIONS} TCP connections a round (native generator, 2 client threads, RST close, loopback of one namespace); medians of {ROUNDS} alternating rounds");
    let row = |what: &str, value: String| println!("{what:<52} {value:>16}");
    row("connections/s, no tracing", format!("{rate_bare:.0}"));
    row(
        "connections/s, flowpol record",
        format!("{rate_flowpol:.0} ({:+.1}%)", -overhead(rate_flowpol)),
    );
    row(
        "connections/s, bpftrace line a handshake (floor)",
        format!("{rate_floor:.0} ({:+.1}%)", -overhead(rate_floor)),
    );
    row(
        "  its lines lost a round (of 2 a connection)",
        format!("{:.0}", median(floor_lost.clone())),
    );
    row(
        "events a round (flowpol record), lost",
        format!("{events_med:.0}, {lost_med:.0}"),
    );
    row(
        "flowpol userspace CPU per 1,000 events",
        format!("{cpu_med:.3} ms"),
    );
    println!("flowpol hooks (side by side with bpftrace's empty program and count, bpf_stats on; bpftrace's line a handshake in a round of its own):");
    for h in &hooks {
        row(
            &format!("  {} ({} runs)", h.0, h.1),
            format!("{:.0} ns/run", per_run(h)),
        );
    }
    for (what, tp) in [
        ("empty program", &empty_tp),
        ("bare count", &count_tp),
        ("line a handshake", &emit_tp),
    ] {
        row(
            &format!("  bpftrace {what}, same tracepoint"),
            format!("{:.0} ns/run", per_run(tp)),
        );
    }
    let ratio = |tp: &(String, u64, u64)| per_run(&ours_tp) / per_run(tp).max(1.0);
    row(
        "  ratio flowpol / bpftrace bare count",
        format!("{:.2}", ratio(&count_tp)),
    );
    row(
        "  ratio flowpol / bpftrace line a handshake",
        format!("{:.2}", ratio(&emit_tp)),
    );
    println!(
        "CPU per connection ({cores} cores: {cpu_bare:.0} ns without tracing, {extra:.0} ns more with flowpol):"
    );
    for (what, ns) in &breakdown {
        row(&format!("  {what}"), format!("{ns:.0} ns"));
    }
    for (what, ns) in &floor_parts {
        row(&format!("  ({what})"), format!("{ns:.0} ns"));
    }
    println!("loss curve (flowpol record running):");
    for p in &curve {
        row(
            &format!(
                "  offered {:.0}/s, reached {:.0}/s",
                p["offered_per_s"].as_f64().unwrap_or(0.0),
                p["achieved_per_s"].as_f64().unwrap_or(0.0)
            ),
            format!("{} lost of {}", p["events_lost"], p["events"]),
        );
    }
    let report = json!({
        "connections": CONNECTIONS,
        "generator": "native (xtask bench::load), loopback of one namespace",
        "rounds": ROUNDS,
        "rate_no_tracing": rate_bare, "rate_flowpol": rate_flowpol, "rate_flowpol_and_bpftrace": both.rate(),
        "rate_bpftrace_emit": rate_floor,
        "rates_by_round": {"no_tracing": bare, "flowpol": with, "bpftrace_emit": floor},
        "conn_rate_overhead_pct": overhead(rate_flowpol),
        "conn_rate_overhead_pct_bpftrace_emit": overhead(rate_floor),
        "bpftrace_emit_lines_lost": median(floor_lost),
        "cpu_ns_per_connection": {
            "without_tracing": cpu_bare,
            "extra_with_flowpol": extra,
            "by_part": breakdown.iter().map(|(what, ns)| json!({"part": what, "ns": ns})).collect::<Vec<_>>(),
            "bpftrace_emit": floor_parts.iter().map(|(what, ns)| json!({"part": what, "ns": ns})).collect::<Vec<_>>(),
        },
        "events": events_med, "events_lost": lost_med, "events_side_by_side": events2, "events_lost_side_by_side": lost2,
        "userspace_cpu_ms_per_1000_events": cpu_med,
        "hooks": hooks.iter().map(|h| json!({"program": h.0, "runs": h.1, "ns_per_run": per_run(h)})).collect::<Vec<_>>(),
        "tracepoint_ns_per_run": {
            "flowpol": per_run(&ours_tp), "bpftrace": per_run(&count_tp),
            "bpftrace_empty": per_run(&empty_tp), "bpftrace_emit": per_run(&emit_tp),
        },
        "tracepoint_ratio": ratio(&count_tp),
        "tracepoint_ratio_to_bpftrace_emit": ratio(&emit_tp),
        "bpftrace_transitions": bt_count,
        "bpftrace_emit_lines_stats_round": emitted2,
        "loss_curve": curve,
    });
    let out = dir.join("capture.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("\n(written to {})", out.display());
    Ok(())
}
