//! What the agent keeps and writes to the cluster: attributed flow records aggregated into
//! edges per workload (the `ObservedTraffic` custom resource, deploy/crd.yaml), bounded in
//! memory. Pure.
//!
//! Each node is authoritative for the sockets it saw: a client-side record becomes an egress
//! edge of the client's workload, a server-side record an ingress edge of the server's, a
//! drop on the path an edge of whichever end runs on this node. So the same connection seen
//! on two nodes is counted once per direction, and agents writing their own node's share
//! never overwrite each other.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    cluster::{Timestamp, Workload},
    policy::Direction,
    record::{Endpoint, EndpointKind, FlowRecord, Protocol, Side, Verdict},
};

/// API group, version and kind of the custom resource.
pub const API_VERSION: &str = "flowpol.io/v1alpha1";
pub const KIND: &str = "ObservedTraffic";

/// One edge of a workload, as the CRD's list-map keys it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeKey {
    pub node: String,
    pub direction: Direction,
    /// `namespace/Kind/name` for pods, `node/<name>`, `service/<namespace>/<name>`, or an
    /// address.
    pub peer: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    pub verdicts: BTreeMap<Verdict, u64>,
    #[serde(rename = "firstSeen", skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    #[serde(rename = "lastSeen", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

impl EdgeStats {
    fn add(
        &mut self,
        verdict: Option<Verdict>,
        count: u64,
        first: Option<Timestamp>,
        last: Option<Timestamp>,
    ) {
        if let Some(v) = verdict {
            *self.verdicts.entry(v).or_default() += count;
        }
        crate::record::widen_span(&mut self.first_seen, &mut self.last_seen, first, last);
    }
}

/// A workload: its namespace, kind and name.
pub type WorkloadKey = (String, String, String);

/// Edges per workload, at most `capacity` in all; the least recently seen go first when
/// full, and are counted.
#[derive(Clone, Debug)]
pub struct Observed {
    workloads: BTreeMap<WorkloadKey, BTreeMap<EdgeKey, EdgeStats>>,
    capacity: usize,
    len: usize,
    pub evicted: u64,
}

impl Observed {
    pub fn new(capacity: usize) -> Self {
        Self {
            workloads: BTreeMap::new(),
            capacity: capacity.max(1),
            len: 0,
            evicted: 0,
        }
    }

    /// Edges held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an attributed record seen on `node`.
    pub fn add(&mut self, node: &str, r: &FlowRecord) {
        let (src, dst) = (&r.src, responder(&r.dst));
        let mut sides = Vec::new();
        match r.observer.as_ref().map(|o| o.side) {
            Some(Side::Client) => sides.push(Direction::Egress),
            Some(Side::Server) => sides.push(Direction::Ingress),
            Some(Side::Path) => {
                if runs_on(src, node) {
                    sides.push(Direction::Egress);
                }
                if runs_on(dst, node) {
                    sides.push(Direction::Ingress);
                }
            }
            // Offline records: both ends.
            None => sides.extend([Direction::Egress, Direction::Ingress]),
        }
        let port = dst.port.or(r.dst.port).unwrap_or(0);
        for dir in sides {
            let (own, other) = match dir {
                Direction::Egress => (src, dst),
                Direction::Ingress => (dst, src),
            };
            let Some(workload) = workload_of(own) else {
                continue;
            };
            let key = EdgeKey {
                node: node.to_owned(),
                direction: dir,
                peer: peer_name(other, &r.dst),
                port,
                protocol: r.protocol,
            };
            self.insert(workload, key, |s| {
                s.add(r.verdict, r.count, r.first_seen, r.last_seen)
            });
        }
    }

    fn insert(&mut self, w: WorkloadKey, key: EdgeKey, update: impl FnOnce(&mut EdgeStats)) {
        let edges = self.workloads.entry(w).or_default();
        if !edges.contains_key(&key) {
            self.len += 1;
        }
        update(edges.entry(key).or_default());
        if self.len > self.capacity {
            self.evict();
        }
    }

    /// Makes room: the least recently seen edges go, down to 90% of the capacity, so a
    /// flood pays for one sort per tenth of the capacity rather than per edge.
    fn evict(&mut self) {
        let target = self.capacity - self.capacity / 10;
        let mut all: Vec<(Option<Timestamp>, WorkloadKey, EdgeKey)> = self
            .workloads
            .iter()
            .flat_map(|(w, edges)| {
                edges
                    .iter()
                    .map(move |(k, s)| (s.last_seen, w.clone(), k.clone()))
            })
            .collect();
        all.sort();
        for (_, w, k) in all.into_iter().take(self.len - target) {
            if let Some(edges) = self.workloads.get_mut(&w) {
                edges.remove(&k);
                if edges.is_empty() {
                    self.workloads.remove(&w);
                }
            }
            self.len -= 1;
            self.evicted += 1;
        }
    }

    /// Folds in edges read back (from the cluster after a restart): counts add up.
    pub fn merge(&mut self, w: WorkloadKey, key: EdgeKey, stats: &EdgeStats) {
        self.insert(w, key, |s| {
            for (v, n) in &stats.verdicts {
                s.add(Some(*v), *n, stats.first_seen, stats.last_seen);
            }
        });
    }

    /// The objects to apply for `node`'s share: one per workload, with only this node's
    /// edges (server-side apply under the node's field manager merges them with the other
    /// nodes' shares).
    pub fn objects(&self, node: &str) -> Vec<Value> {
        self.workloads
            .iter()
            .filter_map(|((ns, kind, name), edges)| {
                let mine: Vec<Value> = edges
                    .iter()
                    .filter(|(k, _)| k.node == node)
                    .map(|(k, s)| {
                        let mut e = serde_json::to_value(k).expect("an edge key serializes");
                        let stats = serde_json::to_value(s).expect("edge stats serialize");
                        if let (Value::Object(e), Value::Object(stats)) = (&mut e, stats) {
                            e.extend(stats);
                        }
                        e
                    })
                    .collect();
                (!mine.is_empty()).then(|| {
                    json!({
                        "apiVersion": API_VERSION,
                        "kind": KIND,
                        "metadata": {"name": object_name(kind, name), "namespace": ns},
                        "spec": {"workload": {"kind": kind, "name": name}, "edges": mine},
                    })
                })
            })
            .collect()
    }
}

/// The object name for a workload: `<kind>-<name>`, lowercased, DNS-1123.
pub fn object_name(kind: &str, name: &str) -> String {
    crate::cluster::object_name(&format!("{kind}-{name}"))
}

/// The end that answered: the one backend of a service flow when known, else the address.
fn responder(dst: &Endpoint) -> &Endpoint {
    match dst.identity.backends.as_slice() {
        [one] => one,
        _ => dst,
    }
}

fn runs_on(e: &Endpoint, node: &str) -> bool {
    e.identity.kind == Some(EndpointKind::Pod) && e.identity.node.as_deref() == Some(node)
}

fn workload_of(e: &Endpoint) -> Option<WorkloadKey> {
    let id = &e.identity;
    match (id.kind, &id.namespace, &id.workload) {
        (Some(EndpointKind::Pod), Some(ns), Some(Workload { kind, name })) => {
            Some((ns.clone(), kind.clone(), name.clone()))
        }
        _ => None,
    }
}

/// The peer as the CRD names it. `service` is the record's destination (a service address
/// whose backend is unknown is named after the service).
fn peer_name(e: &Endpoint, service: &Endpoint) -> String {
    if let Some((ns, kind, name)) = workload_of(e) {
        return format!("{ns}/{kind}/{name}");
    }
    if std::ptr::eq(e, service) {
        if let Some(svc) = &service.identity.service {
            return format!("service/{svc}");
        }
    }
    match (e.identity.kind, &e.identity.node) {
        (Some(EndpointKind::Node), Some(n)) => format!("node/{n}"),
        _ => e.ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Identity, Observer};

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
        });
        r.first_seen = Some(at.parse().unwrap());
        r
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
        let objs = a.objects("node-a");
        assert_eq!(objs.len(), 1, "only the client's workload: {objs:#?}");
        let o = &objs[0];
        assert_eq!(o["metadata"]["name"], "deployment-web");
        assert_eq!(o["metadata"]["namespace"], "shop");
        let e = &o["spec"]["edges"][0];
        assert_eq!(e["direction"], "egress");
        assert_eq!(e["peer"], "data/StatefulSet/db");
        assert_eq!(e["port"], 5432);
        assert_eq!(e["verdicts"], json!({"established": 1, "timeout": 1}));
        assert_eq!(e["firstSeen"], "2026-01-01T10:00:00Z");
        assert_eq!(e["lastSeen"], "2026-01-01T10:05:00Z");
        assert!(a.objects("node-b").is_empty());
        // The server's node writes the ingress edge of the database.
        let mut b = Observed::new(100);
        b.add(
            "node-b",
            &seen(Side::Server, Verdict::Established, "2026-01-01T10:00:00Z"),
        );
        let objs = b.objects("node-b");
        assert_eq!(objs[0]["metadata"]["name"], "statefulset-db");
        assert_eq!(objs[0]["spec"]["edges"][0]["peer"], "shop/Deployment/web");
        assert_eq!(objs[0]["spec"]["edges"][0]["direction"], "ingress");
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let mut o = Observed::new(2);
        for (i, at) in [
            "2026-01-01T10:00:00Z",
            "2026-01-01T11:00:00Z",
            "2026-01-01T12:00:00Z",
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = seen(Side::Client, Verdict::Established, at);
            r.dst.port = Some(5000 + i as u16);
            o.add("node-a", &r);
        }
        assert_eq!((o.len(), o.evicted), (2, 1));
        let ports: Vec<u64> = o.objects("node-a")[0]["spec"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["port"].as_u64().unwrap())
            .collect();
        assert_eq!(ports, vec![5001, 5002], "the least recently seen went");
    }

    #[test]
    fn edges_read_back_add_up() {
        let mut o = Observed::new(10);
        o.add(
            "node-a",
            &seen(Side::Client, Verdict::Established, "2026-01-01T10:00:00Z"),
        );
        let e = &o.objects("node-a")[0]["spec"]["edges"][0];
        let key: EdgeKey = serde_json::from_value(e.clone()).unwrap();
        let stats: EdgeStats = serde_json::from_value(e.clone()).unwrap();
        let mut restarted = Observed::new(10);
        let w = ("shop".to_owned(), "Deployment".to_owned(), "web".to_owned());
        restarted.merge(w, key, &stats);
        restarted.add(
            "node-a",
            &seen(Side::Client, Verdict::Established, "2026-01-01T11:00:00Z"),
        );
        let e = &restarted.objects("node-a")[0]["spec"]["edges"][0];
        assert_eq!(e["verdicts"]["established"], 2);
        assert_eq!(e["firstSeen"], "2026-01-01T10:00:00Z");
        assert_eq!(e["lastSeen"], "2026-01-01T11:00:00Z");
    }
}
