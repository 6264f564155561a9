use serde_json::{json, Value};

use super::{wire::slot, *};
use crate::{
    cluster::{Workload, WorkloadKind},
    record::{Identity, Observer, Protocol, Verdict},
};

#[test]
fn a_tally_counts_each_verdict_in_its_slot() {
    for (i, v) in Verdict::ALL.iter().enumerate() {
        assert_eq!(slot(*v), i, "{v}");
    }
    let mut t = Tally::default();
    t.add(Verdict::Answered, 2);
    t.add(Verdict::Established, 1);
    let text = serde_json::to_string(&t).unwrap();
    assert_eq!(text, r#"{"established":1,"answered":2}"#);
    assert_eq!(serde_json::from_str::<Tally>(&text).unwrap(), t);
    assert!(serde_json::from_str::<Tally>(r#"{"maybe":1}"#).is_err());
}

fn pod(ip: &str, ns: &str, workload: &str, node: &str) -> Endpoint {
    let (kind, name) = workload.split_once('/').unwrap();
    Endpoint {
        ip: ip.parse().unwrap(),
        port: None,
        identity: Identity {
            kind: Some(EndpointKind::Pod),
            namespace: Some(ns.into()),
            workload: Some(Workload {
                kind: kind.into(),
                name: name.into(),
            }),
            node: Some(node.into()),
            ..Identity::default()
        },
    }
}

fn seen(side: Side, verdict: Verdict, at: &str) -> FlowRecord {
    let mut dst = pod("10.0.1.2", "data", "StatefulSet/db", "node-b");
    dst.port = Some(5432);
    let mut r = FlowRecord::new(
        Protocol::TCP,
        pod("10.0.0.1", "shop", "Deployment/web", "node-a"),
        dst,
        Some(verdict),
    );
    r.observer = Some(Observer {
        side,
        netns: 1,
        cgroup_id: None,
        since: None,
    });
    r.first_seen = Some(at.parse().unwrap());
    r
}

/// Every object `o` would apply for `node`, as if the cluster held nothing.
fn objects(o: &Observed, node: &str) -> Vec<Value> {
    o.workloads
        .keys()
        .filter_map(|w| o.objects(node, w, &[]))
        .flat_map(|r| r.unwrap().changed)
        .map(|v| v.to_value())
        .filter(|v| !v["spec"]["edges"].as_array().unwrap().is_empty())
        .collect()
}

/// The one page `o` would apply for `node`'s share of `w`, and its generation.
fn page(
    o: &Observed,
    node: &str,
    w: &WorkloadKey,
    carried: &[(EdgeKey, EdgeStats)],
) -> (u64, TrafficObject) {
    let mut pages = o.objects(node, w, carried).unwrap().unwrap();
    assert_eq!((pages.count, pages.changed.len()), (1, 1), "{pages:#?}");
    (pages.generation, pages.changed.remove(0))
}

fn web() -> WorkloadKey {
    WorkloadKey::new("shop", WorkloadKind::Deployment, "web")
}

#[test]
fn each_node_writes_the_sides_it_saw() {
    let mut a = Observed::new(100);
    a.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    a.add(
        "node-a",
        &seen(Side::Client, Verdict::Timeout, "2026-01-01T10:05:00Z"),
    );
    let objs = objects(&a, "node-a");
    assert_eq!(objs.len(), 1, "only the client's workload: {objs:#?}");
    let o = &objs[0];
    let name = o["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("deployment-web.node-a-"), "{name}");
    assert_eq!(o["spec"]["node"], "node-a");
    assert_eq!(o["metadata"]["labels"]["flowpol.io/workload"], "web");
    assert_eq!(
        o["metadata"]["labels"]["flowpol.io/workload-kind"],
        "Deployment"
    );
    assert_eq!(o["metadata"]["labels"]["flowpol.io/node"], "node-a");
    assert_eq!(o["metadata"]["namespace"], "shop");
    let e = &o["spec"]["edges"][0];
    assert_eq!(e["direction"], "egress");
    assert_eq!(e["peer"], "data/StatefulSet/db");
    assert_eq!(e["port"], 5432);
    assert_eq!(e["verdicts"], json!({"established": 1, "timeout": 1}));
    assert_eq!(e["firstSeen"], "2026-01-01T10:00:00Z");
    assert_eq!(e["lastSeen"], "2026-01-01T10:05:00Z");
    assert!(objects(&a, "node-b").is_empty());
    // The server's node writes the ingress edge of the database.
    let mut b = Observed::new(100);
    b.add(
        "node-b",
        &seen(Side::Server, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    let objs = objects(&b, "node-b");
    let name = objs[0]["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("statefulset-db.node-b-"), "{name}");
    assert_eq!(objs[0]["spec"]["edges"][0]["peer"], "shop/Deployment/web");
    assert_eq!(objs[0]["spec"]["edges"][0]["direction"], "ingress");
}

#[test]
fn memory_is_bounded_and_written_edges_go_first() {
    let mut o = Observed::new(3);
    let add = |o: &mut Observed, port: u16, at: &str| {
        let mut r = seen(Side::Client, Verdict::Established, at);
        r.dst.port = Some(port);
        o.add("node-a", &r);
    };
    add(&mut o, 5000, "2026-01-01T10:00:00Z");
    add(&mut o, 5001, "2026-01-01T11:00:00Z");
    add(&mut o, 5002, "2026-01-01T12:00:00Z");
    assert_eq!(
        o.pending(),
        vec![Pending {
            workload: web(),
            read: true
        }]
    );
    let carried = o.read_back(&web(), Held::default());
    assert!(carried.is_empty());
    let (generation, _) = page(&o, "node-a", &web(), &[]);
    o.written(&web(), generation, std::time::Instant::now());
    assert!(o.pending().is_empty());
    // A flood of edges of another workload: the written ones make room, oldest first.
    let mut db = seen(Side::Server, Verdict::Established, "2026-01-01T09:00:00Z");
    db.dst.port = Some(6000);
    o.add("node-a", &db);
    assert_eq!((o.len(), o.evicted, o.evicted_unwritten), (3, 1, 0));
    let ports: Vec<u64> = objects(&o, "node-a")
        .iter()
        .flat_map(|obj| obj["spec"]["edges"].as_array().unwrap().clone())
        .map(|e| e["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec![6000, 5001, 5002],
        "the oldest written edge went, not the newest edge"
    );
    // The web share is no longer complete: it is read back before it is written again.
    add(&mut o, 5003, "2026-01-01T13:00:00Z");
    assert!(o.pending().contains(&Pending {
        workload: web(),
        read: true
    }));
    assert_eq!(o.evicted_unwritten, 0, "a written edge made room");
    // Once nothing written is left to evict, unwritten edges go, and are counted as such.
    add(&mut o, 5004, "2026-01-01T14:00:00Z");
    assert_eq!(o.evicted_unwritten, 0);
    add(&mut o, 5005, "2026-01-01T15:00:00Z");
    assert_eq!(o.evicted_unwritten, 1);
}

#[test]
fn a_share_read_back_adds_up_and_is_written_whole() {
    // What the cluster holds for node-a from before a restart (or an eviction).
    let mut before = Observed::new(10);
    before.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    let mut other = seen(Side::Client, Verdict::Timeout, "2026-01-01T09:00:00Z");
    other.dst.port = Some(6432);
    before.add("node-a", &other);
    let (_, stored) = page(&before, "node-a", &web(), &[]);
    // As the API server hands it back.
    let stored = TrafficObject::parse(&stored.to_value()).unwrap();
    assert_eq!(stored.workload_key(), web());
    let edges = share_of(std::slice::from_ref(&stored), &web(), "node-a");
    assert_eq!(edges.pages, 1);
    assert_eq!(share_of(&[stored], &web(), "node-b"), Held::default());

    let mut restarted = Observed::new(10);
    restarted.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T11:00:00Z"),
    );
    assert!(restarted.pending()[0].read);
    let carried = restarted.read_back(&web(), edges);
    assert_eq!(
        carried.len(),
        1,
        "the 6432 edge is not held here: {carried:?}"
    );
    let (_, obj) = page(&restarted, "node-a", &web(), &carried);
    let obj = obj.to_value();
    let edges = obj["spec"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{edges:#?}");
    let e5432 = edges.iter().find(|e| e["port"] == 5432).unwrap();
    assert_eq!(e5432["verdicts"]["established"], 2);
    assert_eq!(e5432["firstSeen"], "2026-01-01T10:00:00Z");
    assert_eq!(e5432["lastSeen"], "2026-01-01T11:00:00Z");
    let e6432 = edges.iter().find(|e| e["port"] == 6432).unwrap();
    assert_eq!(e6432["verdicts"]["timeout"], 1);
    // Read back once: reading the same share again adds nothing twice.
    let again = share_of(&[TrafficObject::parse(&obj).unwrap()], &web(), "node-a");
    restarted.read_back(&web(), again);
    let obj2 = page(&restarted, "node-a", &web(), &[]).1.to_value();
    let e = obj2["spec"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["port"] == 5432)
        .unwrap()
        .clone();
    assert_eq!(e["verdicts"]["established"], 2);
}

#[test]
fn a_spilled_store_resumes_as_it_stood() {
    let db = || WorkloadKey::new("data", WorkloadKind::StatefulSet, "db");
    // The cluster holds web's share from an earlier process.
    let mut earlier = Observed::new(10);
    earlier.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T09:00:00Z"),
    );
    let (_, stored) = page(&earlier, "node-a", &web(), &[]);
    let cluster_edges = share_of(&[stored], &web(), "node-a");

    // This process: db written once then changed, web never written (the API server
    // went away before web's share could be read back).
    let mut a = Observed::new(10);
    a.add(
        "node-a",
        &seen(Side::Server, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    assert!(a.read_back(&db(), Held::default()).is_empty());
    let (generation, _) = page(&a, "node-a", &db(), &[]);
    a.written(&db(), generation, std::time::Instant::now());
    a.add(
        "node-a",
        &seen(Side::Server, Verdict::Refused, "2026-01-01T10:01:00Z"),
    );
    a.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:02:00Z"),
    );
    let spill = a.spill("node-a");
    let text = serde_json::to_string(&spill).unwrap();
    let mut b = Observed::restore(10, serde_json::from_str(&text).unwrap());
    assert_eq!(b.pending(), a.pending());
    assert_eq!(
        b.pending(),
        vec![
            Pending {
                workload: db(),
                read: false
            },
            Pending {
                workload: web(),
                read: true
            }
        ]
    );
    assert_eq!(b.len(), a.len());
    for w in [db(), web()] {
        assert_eq!(page(&b, "node-a", &w, &[]).1, page(&a, "node-a", &w, &[]).1);
    }
    // web's edge still adds the cluster's count once read back; db holds its totals.
    assert!(b.read_back(&web(), cluster_edges).is_empty());
    let (generation, obj) = page(&b, "node-a", &web(), &[]);
    let obj = obj.to_value();
    assert_eq!(obj["spec"]["edges"][0]["verdicts"]["established"], 2);
    assert_eq!(obj["spec"]["edges"][0]["firstSeen"], "2026-01-01T09:00:00Z");
    b.written(&web(), generation, std::time::Instant::now());
    let (generation, obj) = page(&b, "node-a", &db(), &[]);
    let obj = obj.to_value();
    assert_eq!(
        obj["spec"]["edges"][0]["verdicts"],
        json!({"established": 1, "refused": 1})
    );
    b.written(&db(), generation, std::time::Instant::now());
    assert!(b.spill("node-a").workloads.is_empty());
    // Restoring more than fits evicts, counted as unwritten.
    let small = Observed::restore(1, spill);
    assert_eq!((small.len(), small.evicted_unwritten), (1, 1));
}

#[test]
fn objects_of_another_shape_are_refused_with_the_field() {
    let bad = json!({"metadata": {"namespace": "shop"}, "spec": {"workload": {"kind": "Deployment", "name": "web"},
        "node": "a", "edges": [{"direction": "sideways", "peer": "x", "port": 1, "protocol": "TCP", "verdicts": {}}]}});
    let bad = {
        let mut b = bad;
        b["metadata"]["name"] = json!("deployment-web");
        b
    };
    let err = TrafficObject::parse(&bad).unwrap_err();
    assert!(err.starts_with("spec.edges[0]: "), "{err}");
    let err = TrafficObject::parse(&json!({"metadata": {}})).unwrap_err();
    assert_eq!(err, "metadata.namespace: missing or not a string");
    let page = |page: Value, pages: Value| {
        TrafficObject::parse(&json!({"metadata": {"namespace": "shop", "name": "w"},
            "spec": {"workload": {"kind": "Deployment", "name": "web"}, "node": "a",
                "page": page, "pages": pages}}))
    };
    assert_eq!(
        page(json!(u32::MAX), Value::Null).unwrap_err(),
        "spec.page: not a page number"
    );
    assert!(page(json!(2), json!(2))
        .unwrap_err()
        .starts_with("spec.pages: "));
    assert_eq!(page(json!(1), Value::Null).unwrap().pages, 2);
}

#[test]
fn an_edge_on_two_pages_counts_once_as_the_later() {
    let mut o = Observed::new(10);
    o.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    let (_, first) = page(&o, "node-a", &web(), &[]);
    o.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T11:00:00Z"),
    );
    let (_, later) = page(&o, "node-a", &web(), &[]);
    // The same edge on page 0 (written before a re-paging) and page 1 (after).
    let mut moved = later.clone();
    moved.page = 1;
    let held = share_of(&[moved.clone(), first.clone()], &web(), "node-a");
    assert_eq!(held.pages, 2);
    assert_eq!(held.edges.len(), 1);
    assert_eq!(held.edges[0].1.verdicts.get(Verdict::Established), 2);
    // The reader counts it once too (the shop's cluster names both ends).
    let shop = include_str!("../../../../tests/fixtures/cluster-shop.yaml");
    let cluster = crate::cluster::snapshot::parse("shop", shop)
        .unwrap()
        .cluster;
    let to_postgres = |mut o: TrafficObject| {
        o.edges[0].key.peer = "data/Pod/postgres-0".into();
        o
    };
    let (records, unread) = records(&cluster, &[to_postgres(moved), to_postgres(first)], None);
    assert_eq!(unread, Unread::default());
    let counts: Vec<u64> = records.iter().map(|r| r.count).collect();
    assert_eq!(counts, vec![2], "{records:#?}");
    assert_eq!(records[0].node.as_deref(), Some("node-a"));
}

#[test]
fn counts_alone_wait_for_their_interval_and_new_edges_do_not() {
    use std::time::{Duration, Instant};
    let every = Duration::from_secs(300);
    let mut o = Observed::new(10);
    o.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:00:00Z"),
    );
    let now = Instant::now();
    // Never written by this process: due at once.
    assert_eq!(o.pending_due(now, every).len(), 1);
    o.read_back(&web(), Held::default());
    let (generation, _) = page(&o, "node-a", &web(), &[]);
    o.written(&web(), generation, now);
    // More of the same edge: changed, but not due until the interval has passed.
    o.add(
        "node-a",
        &seen(Side::Client, Verdict::Established, "2026-01-01T10:01:00Z"),
    );
    assert_eq!(o.pending().len(), 1, "changed");
    assert!(o.pending_due(now + every / 2, every).is_empty());
    assert_eq!(o.pending_due(now + every, every).len(), 1);
    // A new edge is due at the next write.
    let mut other = seen(Side::Client, Verdict::Refused, "2026-01-01T10:02:00Z");
    other.dst.port = Some(6432);
    o.add("node-a", &other);
    assert_eq!(
        o.pending_due(now + every / 2, every),
        vec![Pending {
            workload: web(),
            read: false
        }]
    );
}
