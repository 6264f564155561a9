//! What the agent keeps and writes to the cluster: attributed flow records aggregated into
//! edges per workload (the `ObservedTraffic` custom resource: [`wire`] is its shape, flowpol-kube derives
//! deploy/crd.yaml from it), bounded in
//! memory. Pure.
//!
//! Each node is authoritative for the sockets it saw: a client-side record becomes an egress
//! edge of the client's workload, a server-side record an ingress edge of the server's, a
//! drop on the path an edge of whichever end runs on this node. So the same connection seen
//! on two nodes is counted once per direction, and agents writing their own node's share
//! never overwrite each other.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    cluster::{Timestamp, WorkloadKey},
    policy::Direction,
    record::{Endpoint, EndpointKind, FlowRecord, Side},
};

pub mod layout;
mod records;
mod spill;
#[cfg(test)]
mod tests;
mod wire;

pub use layout::Oversized;
pub use records::{records, Unread};
pub use spill::{Spill, SpilledEdge, SpilledShare, SPILL_VERSION};
pub use wire::{EdgeKey, EdgeStats, Tally, TrafficObject, WireEdge, WireKey, API_VERSION, KIND};

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
    /// The generation at which the share last gained an edge.
    grown: u64,
    /// When this process last wrote it.
    written_at: Option<Instant>,
    /// Every edge the cluster holds for this node's share is held here too. False for a
    /// workload new to this process (after a restart the cluster may hold history) and
    /// after an eviction, until the share is read back.
    complete: bool,
    /// Pages the cluster holds (or will once written): a share never has fewer.
    pages: u32,
    /// The digest of each page as last written ([`layout::digest`]), while the page count
    /// is `pages`: unchanged pages are not written again.
    digests: BTreeMap<u32, u64>,
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
        let mut grew = false;
        let edge = share.edges.entry(key).or_insert_with(|| {
            grew = true;
            Edge {
                stats: EdgeStats::default(),
                fresh: !complete,
                changed: 0,
            }
        });
        update(&mut edge.stats);
        share.generation += 1;
        edge.changed = share.generation;
        if grew {
            self.len += 1;
            share.grown = share.generation;
        }
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
        self.pending_due(Instant::now(), Duration::ZERO)
    }

    /// Workloads due to be written at `now`: those with an edge new since they were last
    /// written (or never written by this process), and those whose counts alone changed
    /// once `counts_every` has passed since their last write. Counts change on every busy
    /// edge all the time; writing them less often than new edges is what keeps a large
    /// cluster's API server load down.
    pub fn pending_due(&self, now: Instant, counts_every: Duration) -> Vec<Pending> {
        let due = |s: &Share| {
            s.grown > s.written
                || s.written_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= counts_every)
        };
        self.workloads
            .iter()
            .filter(|(_, s)| s.dirty() && due(s))
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

    /// Folds in this node's share of `w` as the cluster holds it (read with [`share_of`]):
    /// edges created here since the share was last known add the cluster's counts. Returns
    /// the cluster's edges not held here, to be written along (dropping them from what this
    /// node applies would delete them).
    pub fn read_back(&mut self, w: &WorkloadKey, held: Held) -> Vec<(EdgeKey, EdgeStats)> {
        let Held { edges, pages } = held;
        let Some(share) = self.workloads.get_mut(w) else {
            return edges;
        };
        if pages > share.pages {
            share.pages = pages;
            share.digests.clear();
        }
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

    /// The objects to apply for `node`'s share of `w` (with `carried` edges: see
    /// [`Observed::read_back`]): the pages that changed since last written. Each replaces
    /// its object whole.
    pub fn objects(
        &self,
        node: &str,
        w: &WorkloadKey,
        carried: &[(EdgeKey, EdgeStats)],
    ) -> Option<Result<Pages, Oversized>> {
        let share = self.workloads.get(w)?;
        let edges: Vec<WireEdge> = share
            .edges
            .iter()
            .filter(|(k, _)| k.node == node)
            .map(|(k, e)| (k, &e.stats))
            .chain(carried.iter().map(|(k, s)| (k, s)))
            .map(|(k, stats)| WireEdge {
                key: k.into(),
                stats: stats.clone(),
            })
            .collect();
        let pages = match layout::paginate(&w.namespace, &w.workload, node, edges, share.pages) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let count = pages.len() as u32;
        let changed = pages
            .into_iter()
            .filter(|o| {
                count != share.pages || share.digests.get(&o.page) != Some(&layout::digest(o))
            })
            .collect();
        Some(Ok(Pages {
            generation: share.generation,
            count,
            changed,
        }))
    }

    /// Records that page `o` of its share was written (it is not written again until it
    /// changes).
    pub fn page_written(&mut self, w: &WorkloadKey, o: &TrafficObject, pages: u32) {
        if let Some(share) = self.workloads.get_mut(w) {
            if pages != share.pages {
                share.pages = pages;
                share.digests.clear();
            }
            share.digests.insert(o.page, layout::digest(o));
        }
    }

    /// Records that `w` was written as of `generation`, at `now` (the clock
    /// [`Self::pending_due`] is asked with); a workload that changed meanwhile stays pending.
    pub fn written(&mut self, w: &WorkloadKey, generation: u64, now: Instant) {
        if let Some(share) = self.workloads.get_mut(w) {
            share.written = share.written.max(generation);
            share.written_at = Some(now);
            if share.edges.is_empty() && !share.dirty() {
                self.workloads.remove(w);
            }
        }
    }
}

/// The pages of a share to write ([`Observed::objects`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pages {
    /// The share's generation they hold, for [`Observed::written`].
    pub generation: u64,
    /// How many pages the share has, for [`Observed::page_written`].
    pub count: u32,
    /// Those that changed since last written.
    pub changed: Vec<TrafficObject>,
}

/// What the cluster holds for one node's share of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub edges: Vec<(EdgeKey, EdgeStats)>,
    /// Its page count.
    pub pages: u32,
}

/// `node`'s share of `w` among `objects` (its pages). An edge found on two pages (a write of a new page count cut short) counts once,
/// as the later of the two.
pub fn share_of(objects: &[TrafficObject], w: &WorkloadKey, node: &str) -> Held {
    let mut edges: BTreeMap<EdgeKey, EdgeStats> = BTreeMap::new();
    let mut pages = 0;
    for o in objects
        .iter()
        .filter(|o| o.node == node && o.namespace == w.namespace && o.workload == w.workload)
    {
        pages = pages.max(o.pages).max(o.page.saturating_add(1));
        for e in &o.edges {
            keep_later(&mut edges, e.key.on(node), &e.stats);
        }
    }
    Held {
        edges: edges.into_iter().collect(),
        pages,
    }
}

/// Keeps the later of two copies of one edge: totals only grow, so the later copy holds
/// the earlier one's counts.
pub(crate) fn keep_later<K: Ord>(edges: &mut BTreeMap<K, EdgeStats>, key: K, stats: &EdgeStats) {
    let total = |s: &EdgeStats| s.verdicts.iter().map(|(_, n)| n).sum::<u64>();
    match edges.entry(key) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(stats.clone());
        }
        std::collections::btree_map::Entry::Occupied(mut o) => {
            let held = o.get();
            if (stats.last_seen, total(stats)) > (held.last_seen, total(held)) {
                o.insert(stats.clone());
            }
        }
    }
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
        (Some(EndpointKind::Pod), Some(ns), Some(workload)) => Some(WorkloadKey {
            namespace: ns.clone(),
            workload: workload.clone(),
        }),
        _ => None,
    }
}

/// The peer as the CRD names it. `service` is the record's destination (a service address
/// whose backend is unknown is named after the service).
fn peer_name(e: &Endpoint, service: &Endpoint) -> String {
    if let Some(w) = workload_of(e) {
        return w.to_string();
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
