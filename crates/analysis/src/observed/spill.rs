//! What an agent could not write before it stopped, kept for the next start.
use serde::{Deserialize, Serialize};

use super::{Edge, EdgeKey, EdgeStats, Observed};
use crate::cluster::{WorkloadKey, WorkloadKind};

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
    pub kind: WorkloadKind,
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
            .map(|(w, s)| SpilledShare {
                namespace: w.namespace.clone(),
                kind: w.workload.kind.clone(),
                name: w.workload.name.clone(),
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
                .entry(WorkloadKey::new(s.namespace, s.kind, s.name))
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
