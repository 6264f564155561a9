//! The ObservedTraffic layout at its limits, against a real kube-apiserver with flowpol's
//! CRD: the largest share an agent can hold (the longest names Kubernetes allows, edges of
//! the largest size) is written in pages, and every object, as the server returns it with
//! its managedFields, stays under the stated bound; a restart that must grow the page
//! count keeps the history and every old page's name, and counts no edge twice.
mod common;
mod k8s;

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use common::pod_endpoint;
use flowpol_analysis::{
    observed::{layout, Observed},
    record::{FlowRecord, Observer, Protocol, Side, Verdict},
};
use flowpol_kube::store::Writer;
use k8s::{run, Options};
use serde_json::Value;

const REASONS: usize = 128;

/// Names at the limits: a 63-character namespace, 253-character workload and node names.
struct Longest {
    ns: String,
    workload: String,
    node: String,
}

fn longest() -> Longest {
    Longest {
        ns: format!("n{}", "s".repeat(62)),
        workload: format!("w{}", "x".repeat(252)),
        node: format!("{}.internal", "node-".repeat(48)),
    }
}

/// The records that make edge `i` of the largest kind: drops on the client's side by
/// [`REASONS`] long-named kernel reasons, to a peer with the longest name, then one of
/// every other verdict.
fn records(l: &Longest, i: u32, at: &str) -> Vec<FlowRecord> {
    let peer_name = format!("{i:0>253}");
    let mut dst = pod_endpoint(
        "10.0.9.9",
        &"p".repeat(63),
        "StatefulSet",
        &peer_name,
        "node-c",
    );
    dst.port = Some((i % 60_000) as u16 + 1);
    let src = pod_endpoint("10.0.0.1", &l.ns, "StatefulSet", &l.workload, &l.node);
    let mut out = Vec::new();
    for v in Verdict::ALL {
        let mut r = FlowRecord::new(Protocol::TCP, src.clone(), dst.clone(), Some(v));
        r.count = i64::MAX as u64 / 4;
        r.first_seen = Some(at.parse().unwrap());
        r.last_seen = r.first_seen;
        r.observer = Some(Observer {
            side: Side::Client,
            netns: 1,
            cgroup_id: None,
            since: None,
        });
        if v == Verdict::Dropped {
            for reason in 0..REASONS {
                let mut d = r.clone();
                d.count = 1;
                d.drop_reason = Some(format!("A_LONG_KERNEL_DROP_REASON_NAME_{reason:03}"));
                out.push(d);
            }
        }
        out.push(r);
    }
    out
}

/// The share's objects as the server returns them (managedFields included), by page.
fn pages(cp: &k8s::ControlPlane, l: &Longest) -> BTreeMap<u64, Value> {
    k8s::all_observed(cp)
        .into_iter()
        .filter(|o| o["spec"]["node"] == l.node.as_str())
        .map(|o| (o["spec"]["page"].as_u64().unwrap(), o))
        .collect()
}

/// Every object within the bound, with its managedFields, and what it takes besides its
/// edges within the room kept for it. Returns (page count, edges by port).
fn check_bound(pages: &BTreeMap<u64, Value>) -> (usize, BTreeMap<u64, Value>) {
    let mut edges = BTreeMap::new();
    for (page, o) in pages {
        assert_eq!(o["metadata"]["managedFields"].as_array().unwrap().len(), 1);
        let bytes = serde_json::to_vec(o).unwrap().len();
        let edge_bytes = serde_json::to_vec(&o["spec"]["edges"]).unwrap().len();
        assert!(
            bytes <= layout::MAX_OBJECT_BYTES,
            "page {page}: {bytes} bytes"
        );
        assert!(
            bytes - edge_bytes < layout::OVERHEAD_BYTES,
            "page {page}: {} bytes besides its edges",
            bytes - edge_bytes
        );
        for e in o["spec"]["edges"].as_array().unwrap() {
            let port = e["port"].as_u64().unwrap();
            assert!(edges.insert(port, e.clone()).is_none(), "port {port} twice");
        }
    }
    let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
    let largest = pages.values().map(size).max().unwrap_or(0);
    let besides = pages
        .values()
        .map(|o| size(o) - size(&o["spec"]["edges"]))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} pages, {} edges, the largest object {largest} bytes with its managedFields, \
         at most {besides} besides its edges",
        pages.len(),
        edges.len()
    );
    (pages.len(), edges)
}

#[test]
fn the_largest_share_is_paged_under_the_bound_and_regrows_across_a_restart() {
    run(async {
        let l = longest();
        let cp = k8s::start(Options::default());
        k8s::install_crd(&cp);
        cp.kubectl_ok(&["create", "namespace", &l.ns]).unwrap();
        let client = k8s::connect(&cp.kubeconfig_path()).await.client;
        let far = || tokio::time::Instant::now() + Duration::from_secs(120);
        let writer = Writer::new(client, &l.node, 1000.0);

        // 400 edges of ~6.8 KiB: 2.6 MiB, five times what one object may hold.
        let first = Mutex::new(Observed::new(100_000));
        for i in 0..400 {
            for r in records(&l, i, "2026-12-06T10:00:00Z") {
                first.lock().unwrap().add(&l.node, &r);
            }
        }
        let f = writer.flush(&first, far(), |_| {}).await;
        assert_eq!((f.written, f.failed, f.pending), (1, 0, 0), "{f:?}");
        let before = pages(&cp, &l);
        let (count, edges) = check_bound(&before);
        assert!(count >= 8, "{count} pages");
        assert_eq!(edges.len(), 400);
        let e = &edges[&1];
        assert_eq!(
            e["dropReasons"].as_object().unwrap().len(),
            REASONS,
            "{e:#}"
        );
        for o in before.values() {
            let name = o["metadata"]["name"].as_str().unwrap();
            assert!(name.len() <= 253, "{name}");
            assert_eq!(
                o["metadata"]["labels"]["flowpol.io/node"]
                    .as_str()
                    .unwrap()
                    .len(),
                63
            );
        }

        // A restart: a new process that sees the first 100 edges again and 700 new ones,
        // more than the old page count holds.
        let restarted = Mutex::new(Observed::new(100_000));
        for i in (0..100).chain(400..1100) {
            for r in records(&l, i, "2026-12-06T11:00:00Z") {
                restarted.lock().unwrap().add(&l.node, &r);
            }
        }
        let f = writer.flush(&restarted, far(), |_| {}).await;
        assert_eq!((f.written, f.failed, f.pending), (1, 0, 0), "{f:?}");
        let after = pages(&cp, &l);
        let (regrown, edges) = check_bound(&after);
        assert!(regrown > count, "{count} pages, then {regrown}");
        for (page, o) in &before {
            assert_eq!(
                after[page]["metadata"]["name"], o["metadata"]["name"],
                "page {page} kept its name"
            );
        }
        assert_eq!(
            edges.len(),
            1100,
            "the history and the new edges, once each"
        );
        // Seen in both processes: the counts add up; seen before only: kept as they were.
        let reasons =
            |port: u64| edges[&port]["dropReasons"]["A_LONG_KERNEL_DROP_REASON_NAME_000"].as_u64();
        assert_eq!(
            (reasons(1), reasons(101), reasons(501)),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(edges[&1]["firstSeen"], "2026-12-06T10:00:00Z");
        assert_eq!(edges[&1]["lastSeen"], "2026-12-06T11:00:00Z");
        assert_eq!(edges[&101]["lastSeen"], "2026-12-06T10:00:00Z");
    });
}
