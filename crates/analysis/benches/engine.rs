//! Policy engine benchmark (run by `cargo xtask bench engine`): a synthetic cluster written as
//! a kubectl-style List, read back through the snapshot reader, compiled and indexed, then
//! verdicts on random connections on one thread. Memory is measured with a counting allocator,
//! also for what the live watchers hold: the stripped objects store plus the model built
//! from it.
//!
//! Verdicts/s are measured side by side with and without `--cluster-policies` cluster-scoped
//! policies (ClusterNetworkPolicies of both tiers) over the same cluster and connections:
//! medians of alternating runs.
//!
//! `cargo bench -p flowpol-analysis --bench engine -- [--pods N] [--namespaces N] [--policies N]
//! [--cluster-policies N] [--flows N] [--write FILE]`: with `--write`, only writes the cluster
//! YAML (the NCA comparison reads it).
use std::{net::IpAddr, sync::atomic::Ordering, time::Instant};

#[path = "common/synthetic.rs"]
mod synthetic;
#[path = "common/cluster_policies.rs"]
mod tiers;
use synthetic::{cluster_yaml, pod_ip, Rng, HELD};

use flowpol_analysis::{
    cluster::{
        objects::{self, Objects},
        snapshot,
    },
    policy::{
        self, clusterwide,
        engine::{Connection, Engine},
    },
    record::Protocol,
};

/// The objects store the watchers would fill from these objects (as the API server sends
/// them), each converted and stripped as it arrives.
fn live_store(yaml: &str) -> Objects {
    let list: serde_yaml::Value = serde_yaml::from_str(yaml).expect("synthetic YAML");
    let mut store = Objects::default();
    let at = chrono::Utc::now();
    for item in list["items"].as_sequence().expect("a List").iter().cloned() {
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        let o = match kind.as_str() {
            "Namespace" => objects::namespace_obj(serde_yaml::from_value(item).unwrap()),
            "Node" => objects::node_obj(serde_yaml::from_value(item).unwrap()),
            "Pod" => objects::pod_obj(serde_yaml::from_value(item).unwrap()),
            "NetworkPolicy" => objects::policy_obj(serde_yaml::from_value(item).unwrap()),
            other => panic!("unexpected {other}"),
        };
        store.apply(o.expect("valid object"), at);
    }
    store
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (pods, namespaces, policies, flows) = (
        arg(&args, "--pods", 10_000),
        arg(&args, "--namespaces", 500),
        arg(&args, "--policies", 2_000),
        arg(&args, "--flows", 2_000_000),
    );
    let cluster_policies = arg(&args, "--cluster-policies", 200);
    let yaml = cluster_yaml(namespaces, pods, policies);
    if let Some(i) = args.iter().position(|a| a == "--write") {
        std::fs::write(&args[i + 1], &yaml).expect("write cluster YAML");
        return;
    }
    let held0 = HELD.load(Ordering::Relaxed);
    let t = Instant::now();
    let snap = snapshot::parse("synthetic", &yaml).expect("synthetic snapshot parses");
    let parse = t.elapsed();
    let t = Instant::now();
    let compiled: Vec<_> = snap
        .policies
        .iter()
        .map(|p| policy::compile(p).expect("valid policy"))
        .collect();
    let compile = t.elapsed();
    let cluster = snap.cluster;
    drop(snap.policies);
    let model_bytes = HELD.load(Ordering::Relaxed) - held0;
    let t = Instant::now();
    let engine = Engine::new(&cluster, compiled.clone());
    let index = t.elapsed();
    let engine_bytes = HELD.load(Ordering::Relaxed) - held0;
    let tiers_snap = snapshot::parse(
        "synthetic cluster policies",
        &tiers::cluster_policies_yaml(namespaces, cluster_policies),
    )
    .expect("synthetic cluster policies parse");
    let held = HELD.load(Ordering::Relaxed);
    let t = Instant::now();
    let cps =
        clusterwide::compile_all(&tiers_snap.cluster_policies).expect("valid cluster policies");
    let tiered = Engine::with_cluster_policies(&cluster, compiled, cps);
    let tiered_build = t.elapsed();
    let tiered_bytes = HELD.load(Ordering::Relaxed) - held;
    drop(tiers_snap);
    // The same objects as `kubectl get -o json` prints them, read the same way.
    let json = {
        let list: serde_json::Value = serde_yaml::from_str(&yaml).expect("synthetic YAML");
        list.to_string()
    };
    // Only now: freeing it earlier would be subtracted from the figures above.
    drop(yaml);
    let t = Instant::now();
    let json_snap = snapshot::parse("synthetic JSON", &json).expect("synthetic JSON parses");
    let parse_json = t.elapsed();
    assert_eq!(json_snap.cluster.pods().len(), cluster.pods().len());
    assert_eq!(json_snap.policies.len(), policies);
    drop(json_snap);
    drop(json);

    let ips: Vec<IpAddr> = (0..pods).map(|k| pod_ip(k).parse().unwrap()).collect();
    let ports = [
        (53, Protocol::UDP),
        (80, Protocol::TCP),
        (443, Protocol::TCP),
        (5432, Protocol::TCP),
        (8080, Protocol::TCP),
        (9090, Protocol::TCP),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let conns: Vec<Connection> = (0..flows)
        .map(|_| {
            let (port, protocol) = ports[rng.below(ports.len())];
            let dst = if rng.below(20) == 0 {
                "203.0.113.9".parse().unwrap()
            } else {
                ips[rng.below(ips.len())]
            };
            Connection {
                src: ips[rng.below(ips.len())],
                dst,
                port,
                protocol,
                at: None,
            }
        })
        .collect();
    // Alternating runs over the same connections, each engine's median.
    let timed = |e: &Engine| {
        let t = Instant::now();
        let allowed = conns.iter().filter(|c| e.allows(c)).count();
        (t.elapsed(), allowed)
    };
    let (mut plain_runs, mut tiered_runs) = (Vec::new(), Vec::new());
    let (mut allowed, mut tiered_allowed) = (0, 0);
    for _ in 0..5 {
        let (d, n) = timed(&engine);
        plain_runs.push(d);
        allowed = n;
        let (d, n) = timed(&tiered);
        tiered_runs.push(d);
        tiered_allowed = n;
    }
    let median = |runs: &mut Vec<std::time::Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let fast = median(&mut plain_runs);
    let fast_tiered = median(&mut tiered_runs);
    let explained_n = flows / 10;
    let t = Instant::now();
    let explained = conns[..explained_n]
        .iter()
        .filter(|c| engine.evaluate(c).allowed)
        .count();
    let slow = t.elapsed();
    let t = Instant::now();
    let explained_tiered = conns[..explained_n]
        .iter()
        .filter(|c| tiered.evaluate(c).allowed)
        .count();
    let slow_tiered = t.elapsed();
    let per_sec = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64();
    drop(tiered);
    drop(engine);
    drop(cluster);
    let yaml = cluster_yaml(namespaces, pods, policies);
    let held = HELD.load(Ordering::Relaxed);
    let store = live_store(&yaml);
    let store_bytes = HELD.load(Ordering::Relaxed) - held;
    // What the policies take: the size of a copy of them.
    let policy_bytes = {
        let before = HELD.load(Ordering::Relaxed);
        let copy = store.policies.clone();
        let bytes = HELD.load(Ordering::Relaxed) - before;
        drop(copy);
        bytes
    };
    let live_model = store.build(true).expect("model builds");
    let live_bytes = HELD.load(Ordering::Relaxed) - held;
    println!("policy engine benchmark: {pods} pods, {namespaces} namespaces, {policies} policies, {} nodes", live_model.nodes().len());
    println!(
        "  parse snapshot YAML      {:>10.1} ms",
        parse.as_secs_f64() * 1e3
    );
    println!(
        "  parse snapshot JSON      {:>10.1} ms   (model build from it {:.1} ms)",
        parse_json.as_secs_f64() * 1e3,
        (parse_json + compile + index).as_secs_f64() * 1e3
    );
    println!(
        "  compile policies         {:>10.1} ms",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "  index (engine build)     {:>10.1} ms",
        index.as_secs_f64() * 1e3
    );
    println!(
        "  model build (all three)  {:>10.1} ms",
        (parse + compile + index).as_secs_f64() * 1e3
    );
    println!(
        "  memory: model and compiled policies {:.1} MiB ({} B/pod), with engine index {:.1} MiB",
        model_bytes as f64 / 1048576.0,
        model_bytes / pods.max(1),
        engine_bytes as f64 / 1048576.0
    );
    println!(
        "  memory, live: objects store {:.1} MiB (policies {:.1} MiB) + model = {:.1} MiB; {} B/pod without the policies",
        store_bytes as f64 / 1048576.0,
        policy_bytes as f64 / 1048576.0,
        live_bytes as f64 / 1048576.0,
        (live_bytes - policy_bytes) / pods.max(1)
    );
    println!(
        "  verdicts/s, one thread   {:>10.0}   ({flows} connections, {allowed} allowed)",
        per_sec(flows, fast)
    );
    println!(
        "  explained verdicts/s     {:>10.0}   ({explained_n} connections, {explained} allowed)",
        per_sec(explained_n, slow)
    );
    println!(
        "  with {cluster_policies} cluster policies: index {:.1} ms, {:.1} MiB more; verdicts/s {:.0} ({:+.1}%, {tiered_allowed} allowed), explained {:.0} ({explained_tiered} allowed)",
        tiered_build.as_secs_f64() * 1e3,
        tiered_bytes as f64 / 1048576.0,
        per_sec(flows, fast_tiered),
        (per_sec(flows, fast_tiered) / per_sec(flows, fast) - 1.0) * 100.0,
        per_sec(explained_n, slow_tiered)
    );
    println!(
        "{}",
        serde_json::json!({
            "pods": pods, "namespaces": namespaces, "policies": policies,
            "parse_ms": parse.as_secs_f64() * 1e3, "parse_json_ms": parse_json.as_secs_f64() * 1e3, "compile_ms": compile.as_secs_f64() * 1e3, "index_ms": index.as_secs_f64() * 1e3,
            "model_bytes": model_bytes, "engine_bytes": engine_bytes,
            "live_store_bytes": store_bytes, "live_bytes": live_bytes, "live_policy_bytes": policy_bytes,
            "verdicts_per_s": per_sec(flows, fast), "explained_verdicts_per_s": per_sec(explained_n, slow),
            "cluster_policies": cluster_policies, "tiered_index_ms": tiered_build.as_secs_f64() * 1e3, "tiered_bytes": tiered_bytes,
            "tiered_verdicts_per_s": per_sec(flows, fast_tiered), "tiered_explained_verdicts_per_s": per_sec(explained_n, slow_tiered),
        })
    );
}
