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

/// Counts by verdict, held inline: a map of their own cost each edge ~57 of its ~390 bytes
/// (`cargo xtask bench agent`). Written as a map of the non-zero ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally([u64; Verdict::ALL.len()]);

/// Where a verdict counts in a [`Tally`] (a new verdict does not compile until it has one).
fn slot(v: Verdict) -> usize {
    match v {
        Verdict::Established => 0,
        Verdict::Refused => 1,
        Verdict::Timeout => 2,
        Verdict::Dropped => 3,
        Verdict::Sent => 4,
        Verdict::Received => 5,
        Verdict::Answered => 6,
    }
}

impl Tally {
    pub fn get(&self, v: Verdict) -> u64 {
        self.0[slot(v)]
    }

    pub fn add(&mut self, v: Verdict, n: u64) {
        self.0[slot(v)] += n;
    }

    /// The non-zero counts, in the verdicts' order.
    pub fn iter(&self) -> impl Iterator<Item = (Verdict, u64)> + '_ {
        Verdict::ALL
            .iter()
            .map(|&v| (v, self.get(v)))
            .filter(|&(_, n)| n > 0)
    }
}

impl Serialize for Tally {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Verdict, u64>::deserialize(d)?;
        let mut t = Tally::default();
        for (v, n) in map {
            t.add(v, n);
        }
        Ok(t)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    pub verdicts: Tally,
    /// Dropped packets by drop reason.
    #[serde(
        rename = "dropReasons",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub drop_reasons: BTreeMap<String, u64>,
    #[serde(rename = "firstSeen", skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    #[serde(rename = "lastSeen", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

impl EdgeStats {
    fn add_record(&mut self, r: &FlowRecord) {
        if let Some(v) = r.verdict {
            self.verdicts.add(v, r.count);
        }
        if let Some(reason) = &r.drop_reason {
            *self.drop_reasons.entry(reason.clone()).or_default() += r.count;
        }
        crate::record::widen_span(
            &mut self.first_seen,
            &mut self.last_seen,
            r.first_seen,
            r.last_seen,
        );
    }

    /// Adds another tally of the same edge.
    fn add(&mut self, other: &EdgeStats) {
        for (v, n) in other.verdicts.iter() {
            self.verdicts.add(v, n);
        }
        for (reason, n) in &other.drop_reasons {
            *self.drop_reasons.entry(reason.clone()).or_default() += n;
        }
        crate::record::widen_span(
            &mut self.first_seen,
            &mut self.last_seen,
            other.first_seen,
            other.last_seen,
        );
    }
}

/// A workload: its namespace, kind and name.
pub type WorkloadKey = (String, String, String);

#[derive(Clone, Debug, Default)]
struct Edge {
    stats: EdgeStats,
    /// Created while the workload's share in the cluster was not known: what the cluster
    /// holds for it must be added before it is written.
    fresh: bool,
    /// The share's generation at its last change.
    changed: u64,
}

/// One workload's edges on this node, and how they stand against the cluster.
#[derive(Clone, Debug, Default)]
struct Share {
    edges: BTreeMap<EdgeKey, Edge>,
    /// Bumped on every change.
    generation: u64,
    /// The generation last written to the cluster.
    written: u64,
    /// Every edge the cluster holds for this node's share is held here too. False for a
    /// workload new to this process (after a restart the cluster may hold history) and
    /// after an eviction, until the share is read back.
    complete: bool,
}

impl Share {
    fn dirty(&self) -> bool {
        self.generation != self.written
    }
}

/// Edges per workload, at most `capacity` in all. When full, the least recently seen go,
/// those already written to the cluster first (the cluster keeps them; they are read back
/// before the workload is written again); evictions are counted, and those of edges not yet
/// written are counted apart (that traffic is lost).
#[derive(Clone, Debug)]
pub struct Observed {
    workloads: BTreeMap<WorkloadKey, Share>,
    capacity: usize,
    len: usize,
    pub evicted: u64,
    /// Evicted before they were written.
    pub evicted_unwritten: u64,
}

/// A workload waiting to be written: `read` when its share in the cluster must be read back
/// first ([`Observed::read_back`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub workload: WorkloadKey,
    pub read: bool,
}

impl Observed {
    pub fn new(capacity: usize) -> Self {
        Self {
            workloads: BTreeMap::new(),
            capacity: capacity.max(1),
            len: 0,
            evicted: 0,
            evicted_unwritten: 0,
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
            self.insert(workload, key, |s| s.add_record(r));
        }
    }

    fn insert(&mut self, w: WorkloadKey, key: EdgeKey, update: impl FnOnce(&mut EdgeStats)) {
        let share = self.workloads.entry(w).or_default();
        let complete = share.complete;
        let edge = share.edges.entry(key).or_insert_with(|| {
            self.len += 1;
            Edge {
                stats: EdgeStats::default(),
                fresh: !complete,
                changed: 0,
            }
        });
        update(&mut edge.stats);
        share.generation += 1;
        edge.changed = share.generation;
        if self.len > self.capacity {
            self.evict();
        }
    }

    /// Makes room: down to 90% of the capacity, so a flood pays for one pass per tenth of
    /// the capacity rather than per edge. Edges unchanged since written go first, then the
    /// least recently seen. The victims are selected by reference (no full sort, no copies
    /// of every key) so making room does not double the memory it is meant to bound.
    fn evict(&mut self) {
        let target = self.capacity - self.capacity / 10;
        let n = self.len - target;
        let victims: Vec<(bool, WorkloadKey, EdgeKey)> = {
            let mut all: Vec<(bool, Option<Timestamp>, &WorkloadKey, &EdgeKey)> = self
                .workloads
                .iter()
                .flat_map(|(w, share)| {
                    share
                        .edges
                        .iter()
                        .map(move |(k, e)| (e.changed > share.written, e.stats.last_seen, w, k))
                })
                .collect();
            if n < all.len() {
                all.select_nth_unstable(n);
                all.truncate(n);
            }
            all.into_iter()
                .map(|(unwritten, _, w, k)| (unwritten, w.clone(), k.clone()))
                .collect()
        };
        for (unwritten, w, k) in victims {
            if let Some(share) = self.workloads.get_mut(&w) {
                share.edges.remove(&k);
                share.complete = false;
                if share.edges.is_empty() && !share.dirty() {
                    self.workloads.remove(&w);
                }
            }
            self.len -= 1;
            self.evicted += 1;
            if unwritten {
                self.evicted_unwritten += 1;
            }
        }
    }

    /// Workloads changed since they were last written, by name.
    pub fn pending(&self) -> Vec<Pending> {
        self.workloads
            .iter()
            .filter(|(_, s)| s.dirty())
            .map(|(w, s)| Pending {
                workload: w.clone(),
                read: !s.complete,
            })
            .collect()
    }

    /// Workloads waiting to be written.
    pub fn dirty(&self) -> usize {
        self.workloads.values().filter(|s| s.dirty()).count()
    }

    /// Folds in this node's share of `w` as the cluster holds it (`edges`, read with
    /// [`share_of`]): edges created here since the share was last known add the cluster's
    /// counts. Returns the cluster's edges not held here, to be written along (dropping them
    /// from what this node applies would delete them).
    pub fn read_back(
        &mut self,
        w: &WorkloadKey,
        edges: Vec<(EdgeKey, EdgeStats)>,
    ) -> Vec<(EdgeKey, EdgeStats)> {
        let Some(share) = self.workloads.get_mut(w) else {
            return edges;
        };
        let mut carried = Vec::new();
        for (key, stats) in edges {
            match share.edges.get_mut(&key) {
                Some(e) if e.fresh => {
                    e.stats.add(&stats);
                    e.fresh = false;
                }
                Some(_) => {}
                None => carried.push((key, stats)),
            }
        }
        for e in share.edges.values_mut() {
            e.fresh = false;
        }
        share.complete = carried.is_empty();
        carried
    }

    /// The object to apply for `node`'s share of `w` (with `carried` edges: see
    /// [`Observed::read_back`]) and the generation it holds, for [`Observed::written`].
    /// Server-side apply under the node's field manager merges it with the other nodes'
    /// shares.
    pub fn object(
        &self,
        node: &str,
        w: &WorkloadKey,
        carried: &[(EdgeKey, EdgeStats)],
    ) -> Option<(u64, Value)> {
        let share = self.workloads.get(w)?;
        let mut edges: Vec<(&EdgeKey, &EdgeStats)> = share
            .edges
            .iter()
            .filter(|(k, _)| k.node == node)
            .map(|(k, e)| (k, &e.stats))
            .chain(carried.iter().map(|(k, s)| (k, s)))
            .collect();
        edges.sort_by(|a, b| a.0.cmp(b.0));
        let (ns, kind, name) = w;
        let edges: Vec<Value> = edges
            .into_iter()
            .map(|(k, s)| {
                let mut e = serde_json::to_value(k).expect("an edge key serializes");
                let stats = serde_json::to_value(s).expect("edge stats serialize");
                if let (Value::Object(e), Value::Object(stats)) = (&mut e, stats) {
                    e.extend(stats);
                }
                e
            })
            .collect();
        let object = json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": object_name(kind, name), "namespace": ns},
            "spec": {"workload": {"kind": kind, "name": name}, "edges": edges},
        });
        Some((share.generation, object))
    }

    /// Records that `w` was written as of `generation`; a workload that changed meanwhile
    /// stays pending.
    pub fn written(&mut self, w: &WorkloadKey, generation: u64) {
        if let Some(share) = self.workloads.get_mut(w) {
            share.written = share.written.max(generation);
            if share.edges.is_empty() && !share.dirty() {
                self.workloads.remove(w);
            }
        }
    }
}

/// The workloads an agent could not write before it stopped (the API server was away), kept
/// in its state directory so the next start writes them: each share as it stood in memory,
/// with what is known of the cluster's copy, so nothing is counted twice or lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spill {
    pub version: u32,
    pub node: String,
    pub workloads: Vec<SpilledShare>,
}

/// The one [`Spill::version`] this build reads and writes.
pub const SPILL_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpilledShare {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// The share held every edge the cluster has for it (see [`Share`]).
    pub complete: bool,
    pub edges: Vec<SpilledEdge>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpilledEdge {
    pub key: EdgeKey,
    pub stats: EdgeStats,
    /// The cluster's counts are still to be added (see [`Observed::read_back`]).
    pub fresh: bool,
}

impl Observed {
    /// The workloads waiting to be written, for [`Observed::restore`] in the next process.
    pub fn spill(&self, node: &str) -> Spill {
        let workloads = self
            .workloads
            .iter()
            .filter(|(_, s)| s.dirty())
            .map(|((namespace, kind, name), s)| SpilledShare {
                namespace: namespace.clone(),
                kind: kind.clone(),
                name: name.clone(),
                complete: s.complete,
                edges: s
                    .edges
                    .iter()
                    .map(|(k, e)| SpilledEdge {
                        key: k.clone(),
                        stats: e.stats.clone(),
                        fresh: e.fresh,
                    })
                    .collect(),
            })
            .collect();
        Spill {
            version: SPILL_VERSION,
            node: node.to_owned(),
            workloads,
        }
    }

    /// A new store holding what `spill` kept, every workload pending; edges past the
    /// capacity are evicted and counted as usual.
    pub fn restore(capacity: usize, spill: Spill) -> Self {
        let mut o = Self::new(capacity);
        for s in spill.workloads {
            let share = o
                .workloads
                .entry((s.namespace, s.kind, s.name))
                .or_default();
            share.complete = s.complete;
            share.generation += 1;
            for e in s.edges {
                let before = share.edges.len();
                share.edges.insert(
                    e.key,
                    Edge {
                        stats: e.stats,
                        fresh: e.fresh,
                        changed: share.generation,
                    },
                );
                o.len += share.edges.len() - before;
            }
        }
        if o.len > o.capacity {
            o.evict();
        }
        o
    }
}

/// The workload an `ObservedTraffic` object is about, and its edges (those of `node` only,
/// when given). Refuses objects that do not have the CRD's shape, naming the field.
pub fn share_of(
    object: &Value,
    node: Option<&str>,
) -> Result<(WorkloadKey, Vec<(EdgeKey, EdgeStats)>), String> {
    let text = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{what}: missing or not a string"))
    };
    let workload = (
        text(&object["metadata"]["namespace"], "metadata.namespace")?,
        text(&object["spec"]["workload"]["kind"], "spec.workload.kind")?,
        text(&object["spec"]["workload"]["name"], "spec.workload.name")?,
    );
    let mut edges = Vec::new();
    let listed = match &object["spec"]["edges"] {
        Value::Null => &[][..],
        Value::Array(a) => a.as_slice(),
        _ => return Err("spec.edges: not a list".into()),
    };
    for (i, e) in listed.iter().enumerate() {
        let key: EdgeKey =
            serde_json::from_value(e.clone()).map_err(|err| format!("spec.edges[{i}]: {err}"))?;
        if node.is_some_and(|n| n != key.node) {
            continue;
        }
        let stats: EdgeStats =
            serde_json::from_value(e.clone()).map_err(|err| format!("spec.edges[{i}]: {err}"))?;
        edges.push((key, stats));
    }
    Ok((workload, edges))
}

/// What [`records`] could not turn back into records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unread {
    /// Objects without the CRD's shape: `namespace/name: field: cause`.
    pub invalid: Vec<String>,
    /// Edges whose workload (or peer workload) has no pod in the model any more.
    pub gone: u64,
    /// Edges last seen before the window.
    pub older: u64,
}

/// The traffic the `ObservedTraffic` objects hold, as attributed flow records, for verify
/// and suggest: an egress edge becomes a client-side record from one of the workload's pods
/// to the peer, an ingress edge a server-side one from the peer; one record per verdict
/// (drops per reason). Edges last seen before `since` are left out. Both ends are named from
/// `cluster` as it is now (a workload's pod stands for the workload).
pub fn records(
    cluster: &crate::cluster::Cluster,
    objects: &[Value],
    since: Option<Timestamp>,
) -> (Vec<FlowRecord>, Unread) {
    use crate::{
        attribute,
        cluster::PodId,
        record::{Identity, Observer},
    };
    use std::collections::HashMap;
    // A pod per workload, active ones preferred.
    let mut pods: HashMap<WorkloadKey, PodId> = HashMap::new();
    for id in cluster.pod_ids() {
        let p = cluster.pod(id);
        if p.ips.is_empty() {
            continue;
        }
        let w = cluster.workload(id);
        let key = (cluster.namespace(p.namespace).name.clone(), w.kind, w.name);
        match pods.get(&key) {
            Some(held) if cluster.pod(*held).is_active() || !p.is_active() => {}
            _ => {
                pods.insert(key, id);
            }
        }
    }
    let pod_end = |w: &WorkloadKey| {
        pods.get(w).map(|&id| Endpoint {
            ip: cluster.pod(id).ips[0],
            port: None,
            identity: attribute::pod_identity(cluster, id),
        })
    };
    let peer_end = |peer: &str| -> Option<Endpoint> {
        let parts: Vec<&str> = peer.splitn(3, '/').collect();
        match parts.as_slice() {
            // Kinds are capitalized; namespaces (even one called "service") are not.
            [ns, kind, name] if kind.starts_with(|c: char| c.is_ascii_uppercase()) => {
                pod_end(&(ns.to_string(), kind.to_string(), name.to_string()))
            }
            ["service", ns, name] => {
                let svc = cluster
                    .services()
                    .iter()
                    .find(|s| s.name == *name && cluster.namespace(s.namespace).name == *ns)?;
                Some(Endpoint {
                    ip: *svc.cluster_ips.first()?,
                    port: None,
                    identity: Identity {
                        kind: Some(EndpointKind::Service),
                        namespace: Some(ns.to_string()),
                        service: Some(format!("{ns}/{name}")),
                        ..Identity::default()
                    },
                })
            }
            ["node", name] => {
                let n = cluster.nodes().iter().find(|n| n.name == *name)?;
                Some(Endpoint {
                    ip: *n.ips.first()?,
                    port: None,
                    identity: Identity {
                        kind: Some(EndpointKind::Node),
                        node: Some(n.name.clone()),
                        ..Identity::default()
                    },
                })
            }
            _ => {
                let ip = peer.parse().ok()?;
                Some(Endpoint {
                    ip,
                    port: None,
                    identity: attribute::identify(cluster, ip, None),
                })
            }
        }
    };
    let mut out = Vec::new();
    let mut unread = Unread::default();
    for o in objects {
        let (w, edges) = match share_of(o, None) {
            Ok(share) => share,
            Err(e) => {
                unread.invalid.push(format!(
                    "{}/{}: {e}",
                    o["metadata"]["namespace"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                ));
                continue;
            }
        };
        for (key, stats) in edges {
            if since.is_some() && stats.last_seen.is_none_or(|t| Some(t) < since) {
                unread.older += 1;
                continue;
            }
            let (Some(own), Some(peer)) = (pod_end(&w), peer_end(&key.peer)) else {
                unread.gone += 1;
                continue;
            };
            let (mut src, mut dst, side) = match key.direction {
                Direction::Egress => (own, peer, Side::Client),
                Direction::Ingress => (peer, own, Side::Server),
            };
            src.port = None;
            dst.port = Some(key.port);
            let mut tallies: Vec<(Verdict, Option<String>, u64)> = Vec::new();
            for (v, n) in stats.verdicts.iter() {
                if v == Verdict::Dropped {
                    let mut left = n;
                    for (reason, &m) in &stats.drop_reasons {
                        tallies.push((v, Some(reason.clone()), m.min(left)));
                        left = left.saturating_sub(m);
                    }
                    if left > 0 {
                        tallies.push((v, None, left));
                    }
                } else {
                    tallies.push((v, None, n));
                }
            }
            for (verdict, drop_reason, count) in tallies.into_iter().filter(|t| t.2 > 0) {
                let mut r = FlowRecord::new(key.protocol, src.clone(), dst.clone(), Some(verdict));
                r.count = count;
                r.drop_reason = drop_reason;
                r.first_seen = stats.first_seen;
                r.last_seen = stats.last_seen;
                r.node = Some(key.node.clone());
                r.observer = Some(Observer {
                    side: if verdict == Verdict::Dropped {
                        Side::Path
                    } else {
                        side
                    },
                    netns: 0,
                    cgroup_id: None,
                });
                out.push(r);
            }
        }
    }
    (out, unread)
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
        });
        r.first_seen = Some(at.parse().unwrap());
        r
    }

    /// Every object `o` would apply for `node`, as if the cluster held nothing.
    fn objects(o: &Observed, node: &str) -> Vec<Value> {
        o.workloads
            .keys()
            .filter_map(|w| o.object(node, w, &[]))
            .map(|(_, v)| v)
            .filter(|v| !v["spec"]["edges"].as_array().unwrap().is_empty())
            .collect()
    }

    fn web() -> WorkloadKey {
        ("shop".to_owned(), "Deployment".to_owned(), "web".to_owned())
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
        assert_eq!(o["metadata"]["name"], "deployment-web");
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
        assert_eq!(objs[0]["metadata"]["name"], "statefulset-db");
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
        let carried = o.read_back(&web(), vec![]);
        assert!(carried.is_empty());
        let (generation, _) = o.object("node-a", &web(), &[]).unwrap();
        o.written(&web(), generation);
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
        let (_, stored) = before.object("node-a", &web(), &[]).unwrap();
        let (w, edges) = share_of(&stored, Some("node-a")).unwrap();
        assert_eq!(w, web());
        assert_eq!(share_of(&stored, Some("node-b")).unwrap().1, vec![]);

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
        let (_, obj) = restarted.object("node-a", &web(), &carried).unwrap();
        let edges = obj["spec"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 2, "{edges:#?}");
        let e5432 = edges.iter().find(|e| e["port"] == 5432).unwrap();
        assert_eq!(e5432["verdicts"]["established"], 2);
        assert_eq!(e5432["firstSeen"], "2026-01-01T10:00:00Z");
        assert_eq!(e5432["lastSeen"], "2026-01-01T11:00:00Z");
        let e6432 = edges.iter().find(|e| e["port"] == 6432).unwrap();
        assert_eq!(e6432["verdicts"]["timeout"], 1);
        // Read back once: reading the same share again adds nothing twice.
        let (_, again) = share_of(&obj, Some("node-a")).unwrap();
        restarted.read_back(&web(), again);
        let (_, obj2) = restarted.object("node-a", &web(), &[]).unwrap();
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
        let db = || ("data".to_owned(), "StatefulSet".to_owned(), "db".to_owned());
        // The cluster holds web's share from an earlier process.
        let mut earlier = Observed::new(10);
        earlier.add(
            "node-a",
            &seen(Side::Client, Verdict::Established, "2026-01-01T09:00:00Z"),
        );
        let (_, stored) = earlier.object("node-a", &web(), &[]).unwrap();
        let (_, cluster_edges) = share_of(&stored, Some("node-a")).unwrap();

        // This process: db written once then changed, web never written (the API server
        // went away before web's share could be read back).
        let mut a = Observed::new(10);
        a.add(
            "node-a",
            &seen(Side::Server, Verdict::Established, "2026-01-01T10:00:00Z"),
        );
        assert!(a.read_back(&db(), vec![]).is_empty());
        let (generation, _) = a.object("node-a", &db(), &[]).unwrap();
        a.written(&db(), generation);
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
            assert_eq!(
                b.object("node-a", &w, &[]).unwrap().1,
                a.object("node-a", &w, &[]).unwrap().1
            );
        }
        // web's edge still adds the cluster's count once read back; db holds its totals.
        assert!(b.read_back(&web(), cluster_edges).is_empty());
        let (generation, obj) = b.object("node-a", &web(), &[]).unwrap();
        assert_eq!(obj["spec"]["edges"][0]["verdicts"]["established"], 2);
        assert_eq!(obj["spec"]["edges"][0]["firstSeen"], "2026-01-01T09:00:00Z");
        b.written(&web(), generation);
        let (generation, obj) = b.object("node-a", &db(), &[]).unwrap();
        assert_eq!(
            obj["spec"]["edges"][0]["verdicts"],
            json!({"established": 1, "refused": 1})
        );
        b.written(&db(), generation);
        assert!(b.spill("node-a").workloads.is_empty());
        // Restoring more than fits evicts, counted as unwritten.
        let small = Observed::restore(1, spill);
        assert_eq!((small.len(), small.evicted_unwritten), (1, 1));
    }

    #[test]
    fn objects_of_another_shape_are_refused_with_the_field() {
        let bad = json!({"metadata": {"namespace": "shop"}, "spec": {"workload": {"kind": "Deployment", "name": "web"},
            "edges": [{"node": "a", "direction": "sideways", "peer": "x", "port": 1, "protocol": "TCP", "verdicts": {}}]}});
        let err = share_of(&bad, None).unwrap_err();
        assert!(err.starts_with("spec.edges[0]: "), "{err}");
        let err = share_of(&json!({"metadata": {}}), None).unwrap_err();
        assert_eq!(err, "metadata.namespace: missing or not a string");
    }
}
