//! Pods the policies cannot tell apart, so a table between pods is worked out once per pair
//! of classes rather than once per pair of pods (a workload's replicas usually share one).
use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

use super::{clusterwide::ClusterPeer, engine::Engine, Direction, Peer};
use crate::cluster::{canonical, PodId};

pub(super) struct PodClasses {
    /// The pods of each class, in table order.
    pub(super) members: Vec<Vec<usize>>,
}

impl PodClasses {
    /// Two pods share a class when they have the same namespace, labels and container
    /// ports, and every address block a rule names (an ipBlock's cidr or except, a cluster
    /// policy's networks) holds the table's address of both or of neither, and some address
    /// of both or of neither. A verdict between two pods reads nothing else of them (a pod's
    /// node counts only when the other end is a node).
    pub(super) fn new(engine: &Engine, pods: &[(String, PodId, IpAddr)]) -> Self {
        let blocks = blocks(engine);
        let cluster = engine.cluster();
        let mut index = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, (_, id, ip)) in pods.iter().enumerate() {
            let pod = cluster.pod(*id);
            let holds: Vec<bool> = blocks
                .iter()
                .flat_map(|b| {
                    [
                        b.contains(&canonical(*ip)),
                        pod.ips.iter().any(|a| b.contains(&canonical(*a))),
                    ]
                })
                .collect();
            let next = members.len();
            let class = *index
                .entry((pod.namespace, &*pod.labels, &*pod.ports, holds))
                .or_insert(next);
            if class == next {
                members.push(Vec::new());
            }
            members[class].push(i);
        }
        Self { members }
    }

    /// Every pair of classes (a, b) that has two distinct pods, with two standing for it:
    /// `(a, b, src, dst)`. A class of one pod has no pair with itself.
    pub(super) fn pairs(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let k = self.members.len();
        (0..k).flat_map(move |a| {
            (0..k).filter_map(move |b| {
                let src = self.members[a][0];
                let dst = if a == b {
                    *self.members[b].get(1)?
                } else {
                    self.members[b][0]
                };
                Some((a, b, src, dst))
            })
        })
    }

    /// The pairs of distinct pods from class `a` to class `b`.
    pub(super) fn pods(&self, a: usize, b: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.members[a].iter().flat_map(move |&s| {
            self.members[b]
                .iter()
                .filter(move |&&d| d != s)
                .map(move |&d| (s, d))
        })
    }
}

/// Every address block any rule names.
fn blocks(engine: &Engine) -> Vec<IpNet> {
    let mut out = Vec::new();
    for p in engine.policies() {
        for d in [Direction::Ingress, Direction::Egress] {
            for peer in p.rules(d).into_iter().flatten().flat_map(|r| &r.peers) {
                if let Peer::IpBlock { cidr, except } = peer {
                    out.push(*cidr);
                    out.extend(except.iter().copied());
                }
            }
        }
    }
    for p in engine.cluster_policies() {
        for peer in p.ingress.iter().chain(&p.egress).flat_map(|r| &r.peers) {
            if let ClusterPeer::Networks(nets) = peer {
                out.extend(nets.iter().copied());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
