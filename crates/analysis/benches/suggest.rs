//! Suggest benchmark (`cargo bench -p flowpol-analysis --bench suggest`, also run by `cargo xtask
//! bench engine`): 10,000 pods in 1,000 workloads (100 namespaces of 10 Deployments), 100,000
//! observed flow records (mostly within a namespace, some across, DNS and outside
//! addresses); attribution and suggestion timed on one thread, memory counted.
#[path = "common/synthetic.rs"]
mod synthetic;
use synthetic::{cluster_yaml, pod_ip, Rng, HELD, PEAK};

use std::{sync::atomic::Ordering, time::Instant};

use flowpol_analysis::{
    attribute,
    cluster::snapshot,
    record::{Endpoint, FlowRecord, Protocol, Verdict},
    suggest::{self, Options},
};

fn main() {
    let (pods, namespaces, flows) = (10_000, 100, 100_000);
    let yaml = cluster_yaml(namespaces, pods, 0);
    let snap = snapshot::parse("synthetic", &yaml).expect("synthetic snapshot parses");
    drop(yaml);
    let cluster = snap.cluster;
    let per_ns = pods / namespaces;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let at = chrono::Utc::now();
    let records: Vec<FlowRecord> = (0..flows)
        .map(|_| {
            let src = rng.below(pods);
            let ns = src / per_ns;
            let (dst, port, protocol) = match rng.below(20) {
                // DNS to the first namespace's app-0 pods.
                0 => (pod_ip(rng.below(10) * 10), 53, Protocol::UDP),
                // Outside, HTTPS.
                1 => (
                    format!("203.0.113.{}", 1 + rng.below(8)),
                    443,
                    Protocol::TCP,
                ),
                // Another namespace.
                2 => (pod_ip(rng.below(pods)), 9090, Protocol::TCP),
                // Same namespace.
                _ => (
                    pod_ip(ns * per_ns + rng.below(per_ns)),
                    [8080, 9090][rng.below(2)],
                    Protocol::TCP,
                ),
            };
            let mut r = FlowRecord::new(
                protocol,
                Endpoint::new(pod_ip(src).parse().unwrap(), None),
                Endpoint::new(dst.parse().unwrap(), Some(port)),
                Some(if protocol == Protocol::UDP {
                    Verdict::Answered
                } else {
                    Verdict::Established
                }),
            );
            (r.first_seen, r.last_seen) = (Some(at), Some(at));
            r
        })
        .collect();
    let mut records = records;
    let t = Instant::now();
    attribute::enrich(&cluster, &mut records);
    let enrich = t.elapsed();
    let held = HELD.load(Ordering::Relaxed);
    PEAK.store(held, Ordering::Relaxed);
    let t = Instant::now();
    let s = suggest::suggest(&cluster, &records, &Options::default());
    let took = t.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - held;
    let yaml = suggest::to_yaml(&s.policies);
    let workloads = s
        .policies
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("default-deny"))
        .count();
    println!(
        "suggest benchmark: {pods} pods, {workloads} workloads with policies, {flows} flow records"
    );
    println!(
        "  attribution (enrich)     {:>8.1} ms",
        enrich.as_secs_f64() * 1e3
    );
    println!(
        "  suggestion, one thread   {:>8.1} ms   ({} policies, {} KiB of YAML)",
        took.as_secs_f64() * 1e3,
        s.policies.len(),
        yaml.len() / 1024
    );
    println!(
        "  memory: peak {:.1} MiB above the model and records",
        peak as f64 / 1048576.0
    );
    println!(
        "{}",
        serde_json::json!({"pods": pods, "workloads": workloads, "flows": flows,
            "enrich_ms": enrich.as_secs_f64() * 1e3, "suggest_ms": took.as_secs_f64() * 1e3,
            "suggest_peak_bytes": peak, "policies": s.policies.len()})
    );
}
