//! Agent memory under a flood (`cargo bench -p flowpol-agent --bench agent`, also run by `cargo
//! xtask bench agent`): 1,000,000 flow records, each a new edge (pods of 1,000 workloads
//! scanning outside addresses), fed in rounds of 10,000 as the agent does, into the store of
//! edges the agent writes to the cluster: bounded at the agent's default `--max-edges`
//! (200,000) and unbounded, side by side in one run. Then the cost of a full write pass (every
//! workload's object built, without the network) and of the state file kept on shutdown.
#[path = "../../analysis/benches/common/synthetic.rs"]
mod synthetic;
use synthetic::{cluster_yaml, pod_ip, Rng, HELD, PEAK};

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use flowpol_analysis::{
    attribute,
    cluster::{snapshot, Cluster},
    observed::Observed,
    record::{Endpoint, FlowRecord, Observer, Protocol, Side, Verdict},
};

const PODS: usize = 10_000;
const RECORDS: usize = 1_000_000;
const ROUND: usize = 10_000;
const BOUND: usize = 200_000;

struct Run {
    took: Duration,
    slowest_round: Duration,
    held: usize,
    peak: usize,
    observed: Observed,
}

/// Feeds the flood into a store of `capacity` edges; memory is counted above `base`.
fn flood(cluster: &Cluster, capacity: usize) -> Run {
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut observed = Observed::new(capacity);
    let start = chrono::Utc::now();
    let t = Instant::now();
    let mut slowest_round = Duration::ZERO;
    for round in 0..RECORDS / ROUND {
        let r0 = Instant::now();
        let mut records: Vec<FlowRecord> = (0..ROUND)
            .map(|i| {
                let n = (round * ROUND + i) as u32;
                let mut r = FlowRecord::new(
                    Protocol::TCP,
                    Endpoint::new(pod_ip(rng.below(PODS)).parse().unwrap(), None),
                    // A distinct outside address per record: every record a new edge.
                    Endpoint::new(IpAddr::V4(Ipv4Addr::from(0x2c00_0000 + n)), Some(443)),
                    Some(Verdict::Timeout),
                );
                r.observer = Some(Observer {
                    side: Side::Client,
                    netns: 1,
                    cgroup_id: None,
                    since: None,
                });
                let at = start + chrono::Duration::milliseconds(n as i64);
                (r.first_seen, r.last_seen) = (Some(at), Some(at));
                r
            })
            .collect();
        attribute::enrich(cluster, &mut records);
        for r in &records {
            observed.add("node-0", r);
        }
        slowest_round = slowest_round.max(r0.elapsed());
    }
    let took = t.elapsed();
    Run {
        took,
        slowest_round,
        held: HELD.load(Ordering::Relaxed) - base,
        peak: PEAK.load(Ordering::Relaxed) - base,
        observed,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

fn main() {
    let yaml = cluster_yaml(100, PODS, 0);
    let cluster = snapshot::parse("synthetic", &yaml)
        .expect("synthetic snapshot parses")
        .cluster;
    drop(yaml);
    println!(
        "agent benchmark: {RECORDS} records, each a new edge, in rounds of {ROUND}, {PODS} pods"
    );
    println!(
        "  {:<22} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "store", "edges", "evicted", "held MiB", "peak MiB", "records/s", "round ms"
    );
    let mut figures = Vec::new();
    let mut bounded = None;
    for (name, capacity) in [("bounded (--max-edges)", BOUND), ("unbounded", usize::MAX)] {
        let run = flood(&cluster, capacity);
        let rate = RECORDS as f64 / run.took.as_secs_f64();
        println!(
            "  {:<22} {:>10} {:>12} {:>12.1} {:>12.1} {:>10.0} {:>10.1}",
            name,
            run.observed.len(),
            run.observed.evicted,
            mib(run.held),
            mib(run.peak),
            rate,
            run.slowest_round.as_secs_f64() * 1e3
        );
        figures.push(
            serde_json::json!({"store": name, "edges": run.observed.len(),
            "evicted": run.observed.evicted, "evicted_unwritten": run.observed.evicted_unwritten,
            "held_bytes": run.held, "peak_bytes": run.peak, "records_per_s": rate,
            "slowest_round_ms": run.slowest_round.as_secs_f64() * 1e3}),
        );
        if capacity == BOUND {
            bounded = Some(run.observed);
        }
    }
    let observed = bounded.expect("the bounded run ran");
    // A write pass: every pending workload's object, as the writer builds them.
    let t = Instant::now();
    let pending = observed.pending();
    let objects: Vec<_> = pending
        .iter()
        .filter_map(|p| observed.objects("node-0", &p.workload, &[]))
        .flat_map(|pages| pages.expect("every share fits its pages").changed)
        .collect();
    let bytes: usize = objects
        .iter()
        .map(|o| serde_json::to_vec(&o.to_value()).expect("serializes").len())
        .sum();
    let write_pass = t.elapsed();
    // The state file kept on shutdown when the API server is away, and taken back.
    let t = Instant::now();
    let spill = serde_json::to_vec(&observed.spill("node-0")).expect("serializes");
    let spilled = t.elapsed();
    let t = Instant::now();
    let restored = Observed::restore(BOUND, serde_json::from_slice(&spill).expect("parses"));
    let restore = t.elapsed();
    assert_eq!(restored.len(), observed.len());
    println!(
        "  write pass: {} objects for {} workloads, {:.1} MiB of JSON, built in {:.1} ms",
        objects.len(),
        pending.len(),
        mib(bytes),
        write_pass.as_secs_f64() * 1e3
    );
    println!(
        "  state file: {:.1} MiB, written in {:.1} ms, restored in {:.1} ms",
        mib(spill.len()),
        spilled.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3
    );
    println!(
        "{}",
        serde_json::json!({"records": RECORDS, "round": ROUND, "pods": PODS, "runs": figures,
            "write_pass": {"objects": pending.len(), "bytes": bytes, "ms": write_pass.as_secs_f64() * 1e3},
            "state_file": {"bytes": spill.len(), "write_ms": spilled.as_secs_f64() * 1e3,
                "restore_ms": restore.as_secs_f64() * 1e3}})
    );
}
