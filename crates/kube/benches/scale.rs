//! The ObservedTraffic store at cluster scale, against a real kube-apiserver (run by `cargo
//! xtask bench scale`, which starts the control plane, passes its kubeconfig and adds the
//! server's memory and the CLI's timings to the figures).
//!
//! A synthetic cluster is written to the API server (namespaces, and pods with their
//! status as a kubelet would write it: `--pods` in `--workloads` Deployments, each workload's
//! pods on distinct nodes), then `--nodes` simulated agents, each a task with its own client
//! (its own connection) and field manager, hold what a real agent of that node would: every
//! pod on it talks to the pods of `--peers` other workloads (client side) and is talked to
//! by as many (server side). Each agent writes with the agent's own writer
//! (flowpol_kube::store::Writer) at the agent's defaults (5 requests/s; a share whose counts
//! alone changed written every `--counts-every` seconds, 300). First the initial write of
//! every share, then `--rounds` steady rounds of `--round` seconds (the agent's
//! --flush-every, 30) in which every edge carries traffic again, as on a busy cluster.
//!
//! `cargo bench -p flowpol-kube --bench scale -- --kubeconfig FILE [--nodes N] [--pods N]
//! [--workloads N] [--namespaces N] [--peers N] [--rounds N] [--round SECONDS]
//! [--counts-every SECONDS]`; the last
//! line printed is the figures as JSON.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use serde_json::{json, Value};

use flowpol_analysis::{
    cluster::Workload,
    observed::Observed,
    record::{Endpoint, EndpointKind, FlowRecord, Identity, Observer, Protocol, Side, Verdict},
};
use flowpol_kube::{crd::ObservedTraffic, store::Writer};

struct Args {
    kubeconfig: PathBuf,
    nodes: usize,
    pods: usize,
    workloads: usize,
    namespaces: usize,
    peers: usize,
    rounds: usize,
    round: Duration,
    counts_every: Duration,
}

fn args() -> Args {
    let all: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .cloned()
    };
    let n = |name: &str, default: usize| {
        value(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a count: {v}"))
        })
    };
    Args {
        kubeconfig: value("--kubeconfig")
            .expect("--kubeconfig: the control plane to measure")
            .into(),
        nodes: n("--nodes", 1000),
        pods: n("--pods", 100_000),
        workloads: n("--workloads", 10_000),
        namespaces: n("--namespaces", 100),
        peers: n("--peers", 5),
        rounds: n("--rounds", 12),
        round: Duration::from_secs(n("--round", 30) as u64),
        counts_every: Duration::from_secs(n("--counts-every", 300) as u64),
    }
}

/// The synthetic cluster's layout: pure arithmetic, shared by the objects and the agents.
struct Layout {
    nodes: usize,
    pods: usize,
    workloads: usize,
    namespaces: usize,
}

impl Layout {
    fn per_workload(&self) -> usize {
        self.pods / self.workloads
    }
    fn namespace(&self, w: usize) -> String {
        format!("ns-{}", w % self.namespaces)
    }
    fn workload(&self, w: usize) -> String {
        format!("w{w}")
    }
    fn pod_name(&self, w: usize, j: usize) -> String {
        format!("w{w}-5d8f7c9b4-p{j}")
    }
    /// Pod `j` of workload `w`: consecutive pods of a workload are spread over the nodes.
    fn node(&self, w: usize, j: usize) -> usize {
        (w + j * (self.nodes / self.per_workload()).max(1)) % self.nodes
    }
    fn ip(&self, w: usize, j: usize) -> IpAddr {
        let i = (w * self.per_workload() + j + 1) as u32;
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
    }
    fn endpoint(&self, w: usize, j: usize) -> Endpoint {
        Endpoint {
            ip: self.ip(w, j),
            port: None,
            identity: Identity {
                kind: Some(EndpointKind::Pod),
                namespace: Some(self.namespace(w)),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: self.workload(w),
                }),
                node: Some(format!("node-{}", self.node(w, j))),
                ..Identity::default()
            },
        }
    }
}

fn pod_object(l: &Layout, w: usize, j: usize) -> Value {
    let rs = format!("w{w}-5d8f7c9b4");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": l.pod_name(w, j), "namespace": l.namespace(w),
            "labels": {"app": l.workload(w), "pod-template-hash": "5d8f7c9b4"},
            // No ReplicaSet object: the model names the Deployment from the owner's name
            // and the pod-template-hash, and no controller runs to collect the pod.
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": format!("00000000-0000-4000-8000-{w:012}"), "controller": true}],
        },
        "spec": {
            "nodeName": format!("node-{}", l.node(w, j)),
            "containers": [{"name": "main", "image": "registry.example/app:1.0",
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}],
        },
    })
}

/// Writes the namespaces and pods (with their status), 64 requests in flight.
async fn publish(client: &Client, l: &Layout) -> Duration {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..l.namespaces {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("ns-{n}")}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        // What the serviceaccount controller would make (no controller manager runs): pods
        // are admitted only with their ServiceAccount.
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &format!("ns-{n}"))
            .create(&PostParams::default(), &sa)
            .await
            .expect("service account created");
    }
    let all: Vec<(usize, usize)> = (0..l.workloads)
        .flat_map(|w| (0..l.per_workload()).map(move |j| (w, j)))
        .collect();
    let done = AtomicU64::new(0);
    stream::iter(all)
        .for_each_concurrent(64, |(w, j)| {
            let client = client.clone();
            let done = &done;
            async move {
                let pods: Api<Pod> = Api::namespaced(client, &l.namespace(w));
                let pod: Pod = serde_json::from_value(pod_object(l, w, j)).unwrap();
                pods.create(&PostParams::default(), &pod)
                    .await
                    .expect("pod created");
                let ip = l.ip(w, j).to_string();
                let status = json!({"status": {"phase": "Running", "podIP": ip,
                    "podIPs": [{"ip": ip}], "hostIP": "192.0.2.10",
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                pods.patch_status(
                    &l.pod_name(w, j),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await
                .expect("pod status written");
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(20_000) {
                    eprintln!("  {n} pods written");
                }
            }
        })
        .await;
    started.elapsed()
}

/// What node `node`'s agent sees in one round: each of its pods to and from its peers.
fn records(l: &Layout, peers: usize, node: usize, at: &str) -> Vec<FlowRecord> {
    let at = Some(at.parse().expect("a timestamp"));
    let mut out = Vec::new();
    let record = |src: Endpoint, mut dst: Endpoint, side: Side| {
        dst.port = Some(8080);
        let mut r = FlowRecord::new(Protocol::TCP, src, dst, Some(Verdict::Established));
        r.first_seen = at;
        r.last_seen = at;
        r.observer = Some(Observer {
            side,
            netns: 1,
            cgroup_id: None,
            since: None,
        });
        r
    };
    for w in 0..l.workloads {
        for j in (0..l.per_workload()).filter(|&j| l.node(w, j) == node) {
            for p in 1..=peers {
                // Client side: to a pod of the p-th next workload.
                let to = (w + p) % l.workloads;
                out.push(record(
                    l.endpoint(w, j),
                    l.endpoint(to, j % l.per_workload()),
                    Side::Client,
                ));
                // Server side: from a pod of the p-th previous one.
                let from = (w + l.workloads - p) % l.workloads;
                out.push(record(
                    l.endpoint(from, j % l.per_workload()),
                    l.endpoint(w, j),
                    Side::Server,
                ));
            }
        }
    }
    out
}

struct Agent {
    node: String,
    writer: Writer,
    observed: Mutex<Observed>,
    records: Vec<FlowRecord>,
}

/// Totals over every agent.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    pending: AtomicU64,
}

impl Agent {
    fn see(&mut self, at: &str) {
        for r in &mut self.records {
            r.last_seen = Some(at.parse().expect("a timestamp"));
        }
        let mut o = self.observed.lock().unwrap();
        for r in &self.records {
            o.add(&self.node, r);
        }
    }

    async fn flush(&self, within: Duration, counts_every: Duration, tally: &Tally) {
        let deadline = tokio::time::Instant::now() + within;
        let f = self
            .writer
            .flush_due(&self.observed, deadline, counts_every, |ok| {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        tally.reads.fetch_add(f.reads as u64, Ordering::Relaxed);
        tally.requests.fetch_add(f.reads as u64, Ordering::Relaxed);
        tally.bytes.fetch_add(f.bytes as u64, Ordering::Relaxed);
        tally.pending.fetch_add(f.pending as u64, Ordering::Relaxed);
        if let Some(e) = f.last_error {
            eprintln!("  {}: {e}", self.node);
        }
    }
}

async fn round(agents: &[Agent], within: Duration, counts_every: Duration) -> (Tally, Duration) {
    let tally = Tally::default();
    let started = Instant::now();
    futures::future::join_all(agents.iter().map(|a| a.flush(within, counts_every, &tally))).await;
    (tally, started.elapsed())
}

/// Every ObservedTraffic object as the server returns it: (count, largest with
/// managedFields, total bytes).
async fn objects(client: &Client) -> (usize, usize, usize) {
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<ObservedTraffic>(&()),
    );
    let (mut count, mut largest, mut total) = (0, 0, 0);
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.expect("listing ObservedTraffic");
        for o in &page.items {
            let bytes = serde_json::to_vec(o).unwrap().len();
            count += 1;
            largest = largest.max(bytes);
            total += bytes;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return (count, largest, total),
        }
    }
}

fn main() {
    let a = args();
    let l = Layout {
        nodes: a.nodes,
        pods: a.pods,
        workloads: a.workloads,
        namespaces: a.namespaces,
    };
    assert!(
        l.pods.is_multiple_of(l.workloads) && l.per_workload() <= l.nodes,
        "pods must be a multiple of workloads, at most one per node each"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let file = Kubeconfig::read_from(&a.kubeconfig).expect("reading the kubeconfig");
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .expect("a kubeconfig");
        let admin = Client::try_from(config.clone()).expect("a client");
        eprintln!(
            "scale: {} pods in {} workloads on {} nodes",
            l.pods, l.workloads, l.nodes
        );
        let published = publish(&admin, &l).await;
        eprintln!("  cluster written in {:.1} s", published.as_secs_f64());

        // Now: what the pods' addresses name is looked up as of when a flow was seen, and
        // the pods were created a moment ago.
        let at = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut agents: Vec<Agent> = (0..l.nodes)
            .map(|n| {
                let node = format!("node-{n}");
                let client = Client::try_from(config.clone()).expect("a client");
                Agent {
                    writer: Writer::new(client, &node, 5.0),
                    observed: Mutex::new(Observed::new(200_000)),
                    records: records(&l, a.peers, n, &at()),
                    node,
                }
            })
            .collect();
        for agent in &mut agents {
            agent.see(&at());
        }
        let edges: usize = agents.iter().map(|a| a.observed.lock().unwrap().len()).sum();
        // The first write of every share: as long as it takes (an agent whose write fails,
        // say refused by the server's flow control, retries in the next pass, as its next
        // round would).
        let first = Tally::default();
        let started = Instant::now();
        for _ in 0..20 {
            let (t, _) = round(&agents, Duration::from_secs(3600), a.counts_every).await;
            for (total, v) in [
                (&first.requests, &t.requests),
                (&first.reads, &t.reads),
                (&first.failed, &t.failed),
            ] {
                total.fetch_add(v.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            first.pending.store(t.pending.load(Ordering::Relaxed), Ordering::Relaxed);
            if t.pending.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
        let took = started.elapsed();
        let initial_requests = first.requests.load(Ordering::Relaxed);
        eprintln!(
            "  initial write: {initial_requests} requests ({} reads, {} failed) in {:.1} s, {} left pending",
            first.reads.load(Ordering::Relaxed),
            first.failed.load(Ordering::Relaxed),
            took.as_secs_f64(),
            first.pending.load(Ordering::Relaxed)
        );
        // Steady rounds: every edge carries traffic again; a round starts every `round`, as
        // the agent's do, and has that long to write.
        let steady = Tally::default();
        let window = Instant::now();
        let mut most_pending = 0;
        for r in 0..a.rounds {
            for agent in &mut agents {
                agent.see(&at());
            }
            let started = Instant::now();
            let (t, _) = round(&agents, a.round, a.counts_every).await;
            if let Some(rest) = a.round.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
            let requests = t.requests.load(Ordering::Relaxed);
            let pending = t.pending.load(Ordering::Relaxed);
            eprintln!(
                "  steady round {r}: {requests} requests ({} failed) in {:.1} s, {pending} shares changed but not yet due or written",
                t.failed.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
            for (total, v) in [
                (&steady.requests, &t.requests),
                (&steady.failed, &t.failed),
                (&steady.bytes, &t.bytes),
            ] {
                total.fetch_add(v.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            most_pending = most_pending.max(pending);
        }
        let seconds = window.elapsed().as_secs_f64();
        let per_agent = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / seconds / l.nodes as f64;
        eprintln!(
            "  steady state: {:.3} requests/s and {:.0} bytes/s per agent over {seconds:.0} s",
            per_agent(&steady.requests),
            per_agent(&steady.bytes)
        );
        let (count, largest, total) = objects(&admin).await;
        eprintln!("  {count} objects, {total} bytes, the largest {largest} bytes with managedFields");
        println!(
            "{}",
            json!({
                "nodes": l.nodes, "pods": l.pods, "workloads": l.workloads, "edges": edges,
                "publish_s": published.as_secs_f64(),
                "initial_write_s": took.as_secs_f64(), "initial_requests": initial_requests,
                "initial_reads": first.reads.load(Ordering::Relaxed),
                "initial_failed": first.failed.load(Ordering::Relaxed),
                "initial_pending": first.pending.load(Ordering::Relaxed),
                "objects": count, "objects_bytes": total, "largest_object_bytes": largest,
                "round_s": a.round.as_secs_f64(), "rounds": a.rounds,
                "counts_every_s": a.counts_every.as_secs_f64(), "steady_s": seconds,
                "requests_per_s_per_agent": per_agent(&steady.requests),
                "bytes_per_s_per_agent": per_agent(&steady.bytes),
                "steady_failed": steady.failed.load(Ordering::Relaxed),
                "steady_most_pending": most_pending,
            })
        );
    });
}
