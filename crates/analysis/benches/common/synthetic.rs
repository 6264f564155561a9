//! The synthetic cluster the benchmarks share, and a counting allocator for their memory
//! figures.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
};

pub(crate) struct Counting;
pub(crate) static HELD: AtomicUsize = AtomicUsize::new(0);
/// The most ever held at once (reset by storing the current `HELD`).
pub(crate) static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = HELD.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
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
pub(crate) struct Rng(pub u64);
impl Rng {
    pub(crate) fn step(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.step() % n as u64) as usize
    }
}

pub(crate) fn pod_ip(k: usize) -> String {
    let k = k + 1;
    format!("10.{}.{}.{}", 1 + (k >> 16), (k >> 8) & 255, k & 255)
}

/// Namespaces, nodes, pods and policies as a kubectl `List` in YAML.
pub(crate) fn cluster_yaml(namespaces: usize, pods: usize, policies: usize) -> String {
    let per_ns = pods.div_ceil(namespaces);
    let nodes = (pods / 200).max(1);
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..namespaces {
        let _ = write!(y, "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: ns-{i:03}\n    labels: {{kubernetes.io/metadata.name: ns-{i:03}, team: team-{}, env: {}}}\n", i % 25, if i % 2 == 0 { "prod" } else { "staging" });
    }
    for n in 0..nodes {
        let _ = write!(y, "- apiVersion: v1\n  kind: Node\n  metadata: {{name: node-{n}}}\n  status:\n    addresses: [{{type: InternalIP, address: 192.168.{}.{}}}]\n", (n + 1) >> 8, (n + 1) & 255);
    }
    for k in 0..pods {
        let (i, j) = (k / per_ns, k % per_ns);
        let tier = ["web", "api", "db"][j % 3];
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: pod-{j}\n    namespace: ns-{i:03}\n    uid: 00000000-0000-4000-8000-{k:012}\n    labels: {{app: app-{app}, tier: {tier}, version: v{}, pod-template-hash: '{hash}'}}\n    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: app-{app}-{hash}, uid: 00000000-0000-4000-9000-{k:012}, controller: true}}]\n  spec:\n    nodeName: node-{}\n    containers:\n    - name: main\n      image: registry.example/app:1\n      ports: [{{name: http, containerPort: 8080}}, {{name: grpc, containerPort: 9090}}, {{name: metrics, containerPort: 9100}}, {{name: dns, containerPort: 53, protocol: UDP}}]\n  status:\n    phase: Running\n    podIP: {ip}\n    podIPs: [{{ip: {ip}}}]\n",
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
