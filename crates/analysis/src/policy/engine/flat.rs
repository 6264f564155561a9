//! The NetworkPolicies' rules as the fast path reads them: every rule's ports and peers in
//! two arrays, each policy direction a range of rules. A verdict then reads a few small,
//! contiguous arrays instead of following each policy's own vectors through the heap (a
//! cache miss per level at 10,000 pods and 2,000 policies).
use std::ops::Range;

use crate::{
    cluster::PodId,
    policy::{Direction, Peer, Policy, PortMatch},
};

/// Per pod and direction, the policies selecting it, in one array: pod `p`'s ingress list is
/// `all[at[2p]..at[2p + 1]]`, its egress list the next range.
#[derive(Debug, Default)]
pub(super) struct Selected {
    at: Vec<u32>,
    all: Vec<u32>,
}

impl Selected {
    /// From lists per pod ([ingress, egress]).
    pub(super) fn new(lists: Vec<[Vec<u32>; 2]>) -> Self {
        let mut s = Selected {
            at: Vec::with_capacity(lists.len() * 2 + 1),
            all: Vec::with_capacity(lists.iter().map(|[i, e]| i.len() + e.len()).sum()),
        };
        s.at.push(0);
        for list in lists.iter().flatten() {
            s.all.extend_from_slice(list);
            s.at.push(s.all.len() as u32);
        }
        s
    }

    pub(super) fn get(&self, pod: PodId, dir: Direction) -> &[u32] {
        let i = pod.0 as usize * 2 + dir as usize;
        &self.all[self.at[i] as usize..self.at[i + 1] as usize]
    }
}

#[derive(Debug, Default)]
pub(super) struct FlatRules {
    /// Per policy, per direction (ingress, egress): its rules in `rules`.
    by_policy: Vec<[Range<u32>; 2]>,
    /// Per rule: its ports in `ports`, its peers in `peers`.
    rules: Vec<(Range<u32>, Range<u32>)>,
    ports: Vec<PortMatch>,
    peers: Vec<Peer>,
}

impl FlatRules {
    pub(super) fn new(policies: &[Policy]) -> Self {
        let mut f = FlatRules::default();
        for p in policies {
            let dirs = [Direction::Ingress, Direction::Egress].map(|d| {
                let start = f.rules.len() as u32;
                for r in p.rules(d).unwrap_or_default() {
                    let ports = f.ports.len() as u32..(f.ports.len() + r.ports.len()) as u32;
                    f.ports.extend(r.ports.iter().cloned());
                    let peers = f.peers.len() as u32..(f.peers.len() + r.peers.len()) as u32;
                    f.peers.extend(r.peers.iter().cloned());
                    f.rules.push((ports, peers));
                }
                start..f.rules.len() as u32
            });
            f.by_policy.push(dirs);
        }
        f
    }

    /// The rules of `policy` for `dir`, as (ports, peers); empty = every port, every peer.
    pub(super) fn rules(
        &self,
        policy: usize,
        dir: Direction,
    ) -> impl Iterator<Item = (&[PortMatch], &[Peer])> {
        let range = &self.by_policy[policy][dir as usize];
        self.rules[range.start as usize..range.end as usize]
            .iter()
            .map(|(ports, peers)| {
                (
                    &self.ports[ports.start as usize..ports.end as usize],
                    &self.peers[peers.start as usize..peers.end as usize],
                )
            })
    }
}
