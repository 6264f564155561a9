//! `cargo xtask bench capture`: what the probe costs, side by side in one run.
//!
//! The load is [`load`]'s: TCP connections made and reset at once on the loopback of a
//! namespace made for the run, by native client threads (the lab's generator reached half
//! this machine's rate). Rounds alternate (A B A B ...) and medians are reported:
//! - A, no tracing: the machine's connection rate;
//! - B, `flowpol record` running: rate, events, events lost, userspace CPU per 1,000 events;
//!
//! then, with `kernel.bpf_stats_enabled` (only then: it costs two clock reads a program run),
//! flowpol and a bpftrace one-liner counting the same tracepoint, both attached: the cost
//! per run of every hook and the ratio on `sock/inet_sock_set_state`, and from those where
//! the overhead goes (CPU per connection of each hook and of the userspace); and a loss
//! curve: offered rate against events lost, `flowpol record` running, up to the generator's
//! limit.
use std::{
    collections::HashMap,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::load::{self, Namespace};
use crate::setup::cargo;

/// Connections a round.
const CONNECTIONS: u64 = 200_000;
const ROUNDS: usize = 5;
const BPFTRACE: &str = "tracepoint:sock:inet_sock_set_state { @transitions = count(); }";
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
    let (mut bare, mut with) = (Vec::new(), Vec::new());
    let (mut events, mut lost, mut cpu_per_k, mut cpu_per_conn) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = load::run(ns, CONNECTIONS, None)?;
        complete(&a)?;
        let (b, ev, lo, cpu) = recorded(ns, dir, CONNECTIONS, None)?;
        complete(&b)?;
        eprintln!(
            "xtask bench: round {round}/{ROUNDS}: {:.0} / {:.0} connections/s (none / flowpol), {ev} events, {lo} lost",
            a.rate(), b.rate()
        );
        bare.push(a.rate());
        with.push(b.rate());
        events.push(ev as f64);
        lost.push(lo as f64);
        cpu_per_k.push(cpu * 1000.0 / (ev.max(1) as f64 / 1000.0));
        cpu_per_conn.push(cpu * 1e9 / b.connections.max(1) as f64);
    }
    let (rate_bare, rate_flowpol) = (median(bare.clone()), median(with.clone()));
    let overhead = |r: f64| (rate_bare - r) / rate_bare * 100.0;

    // Hook costs, flowpol and bpftrace side by side, with the kernel's BPF statistics on.
    std::fs::write(stats_flag, "1").context("enabling kernel.bpf_stats_enabled")?;
    let before = programs()?;
    let mut bt = Command::new("bpftrace")
        .args(["-e", BPFTRACE])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let theirs = wait_for_new(&before, &mut bt)?;
    let rec = attach(dir, "records-side-by-side.jsonl")?;
    let t0 = programs()?;
    let both = load::run(ns, CONNECTIONS, None)?;
    complete(&both)?;
    std::thread::sleep(Duration::from_secs(1));
    let t1 = programs()?;
    let (events2, lost2) = stop_record(rec.child)?;
    interrupt(&bt);
    let mut bt_out = String::new();
    bt.stdout
        .take()
        .context("bpftrace stdout")?
        .read_to_string(&mut bt_out)?;
    bt.wait()?;
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
    let theirs_tp = theirs
        .iter()
        .map(|id| delta(&t0, &t1, *id))
        .max_by_key(|(_, runs, _)| *runs)
        .context("bpftrace's program")?;

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
        "events a round (flowpol record), lost",
        format!("{events_med:.0}, {lost_med:.0}"),
    );
    row(
        "flowpol userspace CPU per 1,000 events",
        format!("{cpu_med:.3} ms"),
    );
    println!("flowpol hooks (side by side with bpftrace, bpf_stats on):");
    for h in &hooks {
        row(
            &format!("  {} ({} runs)", h.0, h.1),
            format!("{:.0} ns/run", per_run(h)),
        );
    }
    row(
        "  bpftrace on sock/inet_sock_set_state",
        format!("{:.0} ns/run", per_run(&theirs_tp)),
    );
    row(
        "  ratio flowpol / bpftrace",
        format!("{:.2}", per_run(&ours_tp) / per_run(&theirs_tp).max(1.0)),
    );
    println!(
        "CPU per connection ({cores} cores: {cpu_bare:.0} ns without tracing, {extra:.0} ns more with flowpol):"
    );
    for (what, ns) in &breakdown {
        row(&format!("  {what}"), format!("{ns:.0} ns"));
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
        "rates_by_round": {"no_tracing": bare, "flowpol": with},
        "conn_rate_overhead_pct": overhead(rate_flowpol),
        "cpu_ns_per_connection": {
            "without_tracing": cpu_bare,
            "extra_with_flowpol": extra,
            "by_part": breakdown.iter().map(|(what, ns)| json!({"part": what, "ns": ns})).collect::<Vec<_>>(),
        },
        "events": events_med, "events_lost": lost_med, "events_side_by_side": events2, "events_lost_side_by_side": lost2,
        "userspace_cpu_ms_per_1000_events": cpu_med,
        "hooks": hooks.iter().map(|h| json!({"program": h.0, "runs": h.1, "ns_per_run": per_run(h)})).collect::<Vec<_>>(),
        "tracepoint_ns_per_run": {"flowpol": per_run(&ours_tp), "bpftrace": per_run(&theirs_tp)},
        "tracepoint_ratio": per_run(&ours_tp) / per_run(&theirs_tp).max(1.0),
        "bpftrace_transitions": bt_count,
        "loss_curve": curve,
    });
    let out = dir.join("capture.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("\n(written to {})", out.display());
    Ok(())
}
