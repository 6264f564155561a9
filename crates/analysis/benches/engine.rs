//! Policy engine benchmark (run by `cargo xtask bench engine`): a synthetic cluster written as
//! a kubectl-style List, read back through the snapshot reader, compiled and indexed, then
//! verdicts on random connections on one thread. Memory is measured with a counting allocator,
//! also for what the live watchers hold: the stripped objects store plus the model built
//! from it.
//!
//! `cargo bench -p flowpol-analysis --bench engine -- [--pods N] [--namespaces N] [--policies N]
//! [--flows N] [--write FILE]`: with `--write`, only writes the cluster YAML (the NCA
//! comparison reads it).
use std::{net::IpAddr, sync::atomic::Ordering, time::Instant};

#[path = "common/synthetic.rs"]
mod synthetic;
use synthetic::{cluster_yaml, pod_ip, Rng, HELD};

use flowpol_analysis::{
    cluster::{
        objects::{self, Objects},
        snapshot,
    },
    policy::{
        self,
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
    let engine = Engine::new(&cluster, compiled);
    let index = t.elapsed();
    let engine_bytes = HELD.load(Ordering::Relaxed) - held0;
    // Only now: freeing it earlier would be subtracted from the figures above.
    drop(yaml);

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
    let t = Instant::now();
    let allowed = conns.iter().filter(|c| engine.allows(c)).count();
    let fast = t.elapsed();
    let explained_n = flows / 10;
    let t = Instant::now();
    let explained = conns[..explained_n]
        .iter()
        .filter(|c| engine.evaluate(c).allowed)
        .count();
    let slow = t.elapsed();
    let per_sec = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64();
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
        "{}",
        serde_json::json!({
            "pods": pods, "namespaces": namespaces, "policies": policies,
            "parse_ms": parse.as_secs_f64() * 1e3, "compile_ms": compile.as_secs_f64() * 1e3, "index_ms": index.as_secs_f64() * 1e3,
            "model_bytes": model_bytes, "engine_bytes": engine_bytes,
            "live_store_bytes": store_bytes, "live_bytes": live_bytes, "live_policy_bytes": policy_bytes,
            "verdicts_per_s": per_sec(flows, fast), "explained_verdicts_per_s": per_sec(explained_n, slow),
        })
    );
}
