//! Policy engine benchmark (run by `cargo xtask bench engine`): a synthetic cluster written as
//! a kubectl-style List, read back through the snapshot reader, compiled and indexed, then
//! verdicts on random connections on one thread. Memory is measured with a counting allocator,
//! also for what the live watchers hold: the stripped objects store plus the model built
//! from it.
//!
//! `cargo bench -p probe-user --bench engine -- [--pods N] [--namespaces N] [--policies N]
//! [--flows N] [--write FILE]`: with `--write`, only writes the cluster YAML (the NCA
//! comparison reads it).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use flowpol::{
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

struct Counting;
static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pod_ip(k: usize) -> String {
    format!("10.1.{}.{}", (k + 1) >> 8, (k + 1) & 255)
}

/// Namespaces, nodes, pods and policies as a kubectl `List` in YAML.
fn cluster_yaml(namespaces: usize, pods: usize, policies: usize) -> String {
    let per_ns = pods.div_ceil(namespaces);
    let nodes = (pods / 200).max(1);
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..namespaces {
        let _ = write!(y, "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: ns-{i:03}\n    labels: {{kubernetes.io/metadata.name: ns-{i:03}, team: team-{}, env: {}}}\n", i % 25, if i % 2 == 0 { "prod" } else { "staging" });
    }
    for n in 0..nodes {
        let _ = write!(y, "- apiVersion: v1\n  kind: Node\n  metadata: {{name: node-{n}}}\n  status:\n    addresses: [{{type: InternalIP, address: 192.168.{}.{}}}]\n", n >> 8, (n & 255) + 1);
    }
    for k in 0..pods {
        let (i, j) = (k / per_ns, k % per_ns);
        let tier = ["web", "api", "db"][j % 3];
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: pod-{j}\n    namespace: ns-{i:03}\n    uid: 00000000-0000-4000-8000-{k:012}\n    labels: {{app: app-{app}, tier: {tier}, version: v{}, pod-template-hash: {hash}}}\n    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: app-{app}-{hash}, uid: 00000000-0000-4000-9000-{k:012}, controller: true}}]\n  spec:\n    nodeName: node-{}\n    containers:\n    - name: main\n      image: registry.example/app:1\n      ports: [{{name: http, containerPort: 8080}}, {{name: grpc, containerPort: 9090}}, {{name: metrics, containerPort: 9100}}, {{name: dns, containerPort: 53, protocol: UDP}}]\n  status:\n    phase: Running\n    podIP: {ip}\n    podIPs: [{{ip: {ip}}}]\n",
            j % 2,
            k % nodes,
            app = j % 10,
            // One ReplicaSet per app and namespace: pods share label sets only within it.
            hash = format!("{:x}", 0x5c7b9 + i * 10 + j % 10),
            ip = pod_ip(k)
        );
    }
    let per_ns_policies = policies.div_ceil(namespaces);
    for p in 0..policies {
        let (i, kind) = (p / per_ns_policies % namespaces, p % per_ns_policies);
        let ns = format!("ns-{i:03}");
        let spec = match kind % 4 {
            0 => "{podSelector: {}, policyTypes: [Ingress, Egress]}".to_owned(),
            1 => format!("{{podSelector: {{matchLabels: {{app: app-{}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}], ports: [{{port: http}}]}}]}}", i % 10),
            2 => format!("{{podSelector: {{matchLabels: {{tier: db}}}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: team-{}}}}}, podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [api, web]}}]}}}}], ports: [{{port: 5432}}, {{port: 9000, endPort: 9099}}]}}]}}", (i + 1) % 25),
            _ => "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-000}}, podSelector: {matchLabels: {app: app-0}}}], ports: [{protocol: UDP, port: 53}]}, {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}], ports: [{port: 443}]}, {to: [{podSelector: {}}]}]}".to_owned(),
        };
        let _ = write!(y, "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: policy-{kind}, namespace: {ns}}}\n  spec: {spec}\n");
    }
    y
}

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
