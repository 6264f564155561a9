//! The cluster-scoped tiers around NetworkPolicy, for one direction of one pod: the Admin
//! tier, then NetworkPolicy, then the Baseline tier, as [`crate::policy::clusterwide`] sets
//! out. Which cluster policies select which pod is computed when the engine is built.
use std::net::IpAddr;

use super::{
    decision::{ClusterStep, Ruling, Side},
    peers, Connection, Engine,
};
use crate::{
    cluster::{AddressHolder, Cluster, PodId},
    policy::{
        clusterwide::{
            Action, ClusterPeer, ClusterPolicy, ClusterRule, ProtocolMatch, Subject, Tier,
        },
        Direction,
    },
};

/// Per pod, the cluster policies selecting it, in evaluation order, by `slot(tier, dir)`;
/// and what each policy's rules name.
#[derive(Default)]
pub(super) struct TierIndex {
    lists: Vec<[Box<[u32]>; 4]>,
    /// Per pod and slot, what kinds of remote its list can name (4 bits a slot): a tier
    /// that cannot name the other end is passed over without reading its list.
    reach: Vec<u16>,
    peers: peers::PeerIndex,
}

fn slot(tier: Tier, dir: Direction) -> usize {
    (tier as usize) * 2 + dir as usize
}

/// Whether a rule matches: a rule whose only candidate peers name domains may or may not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    Maybe,
}

/// The other end and the connection, as one direction sees them.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub pod: PodId,
    pub dir: Direction,
    pub remote: AddressHolder,
    pub remote_ip: IpAddr,
    /// The connection's destination: named ports resolve against it.
    pub dst: AddressHolder,
    pub c: &'a Connection,
}

/// Where a direction's evaluation starts: an Admin Pass continues at NetworkPolicy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Admin,
    NetworkPolicy,
}

/// Sorts the policies into evaluation order and indexes which pods each selects.
pub(super) fn index(cluster: &Cluster, policies: &mut [ClusterPolicy]) -> TierIndex {
    if policies.is_empty() {
        return TierIndex::default();
    }
    policies.sort_by(|a, b| (a.tier, a.order_key()).cmp(&(b.tier, b.order_key())));
    let mut index: Vec<[Vec<u32>; 4]> = vec![Default::default(); cluster.pods().len()];
    for (i, p) in policies.iter().enumerate() {
        // Namespace selectors are checked once per namespace, not once per pod.
        let ns_selector = match &p.subject {
            Subject::Namespaces(s) => s,
            Subject::Pods { namespaces, .. } => namespaces,
        };
        for (ns_index, ns) in cluster.namespaces().iter().enumerate() {
            if !ns_selector.matches(&ns.labels) {
                continue;
            }
            for &pod_id in cluster.pods_in(crate::cluster::NsId(ns_index as u32)) {
                let pod = cluster.pod(pod_id);
                let selected = !pod.host_network
                    && match &p.subject {
                        Subject::Namespaces(_) => true,
                        Subject::Pods { pods, .. } => pods.matches(&*pod.labels),
                    };
                if !selected {
                    continue;
                }
                for dir in [Direction::Ingress, Direction::Egress] {
                    if !p.rules(dir).is_empty() {
                        index[pod_id.0 as usize][slot(p.tier, dir)].push(i as u32);
                    }
                }
            }
        }
    }
    let peers = peers::PeerIndex::build(cluster, policies);
    let reach = index
        .iter()
        .map(|lists| {
            let mut r = 0u16;
            for (s, list) in lists.iter().enumerate() {
                let dir = if s % 2 == 0 {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let kinds = list.iter().fold(0, |k, &pi| k | peers.reach(pi, dir));
                r |= u16::from(kinds) << (s * 4);
            }
            r
        })
        .collect();
    TierIndex {
        lists: index
            .into_iter()
            .map(|lists| lists.map(Vec::into_boxed_slice))
            .collect(),
        reach,
        peers,
    }
}

impl Engine<'_> {
    /// The cluster policies of `tier` selecting `pod` for `dir` that have rules for it, in
    /// evaluation order, as indexes into [`Engine::cluster_policies`].
    pub fn tier_list(&self, pod: PodId, tier: Tier, dir: Direction) -> &[u32] {
        self.tiered
            .lists
            .get(pod.0 as usize)
            .map_or(&[], |lists| &lists[slot(tier, dir)])
    }

    /// The first rule of `tier` that matches, as (position in the pod's list, policy, rule).
    /// Rules that may match by domain name are passed over, each handed to `maybe`.
    fn tier_hit(
        &self,
        tier: Tier,
        v: &View,
        maybe: &mut impl FnMut(u32, usize),
    ) -> Option<(usize, u32, usize)> {
        let kinds = self
            .tiered
            .reach
            .get(v.pod.0 as usize)
            .map_or(0, |r| (r >> (slot(tier, v.dir) * 4)) as u8);
        if kinds & peers::reach_of(v.remote) == 0 {
            return None;
        }
        for (at, &pi) in self.tier_list(v.pod, tier, v.dir).iter().enumerate() {
            if !self.tiered.peers.may_name(pi, v.dir, v.remote) {
                continue;
            }
            let p = &self.cluster_policies[pi as usize];
            for (ri, rule) in p.rules(v.dir).iter().enumerate() {
                match self.cluster_rule_matches(pi, ri, rule, v) {
                    Match::Yes => return Some((at, pi, ri)),
                    Match::Maybe => maybe(pi, ri),
                    Match::No => {}
                }
            }
        }
        None
    }

    fn action(&self, pi: u32, dir: Direction, ri: usize) -> Action {
        self.cluster_policies[pi as usize].rules(dir)[ri].action
    }

    fn step(&self, pi: u32, dir: Direction, ri: usize) -> ClusterStep {
        let p = &self.cluster_policies[pi as usize];
        let rule = &p.rules(dir)[ri];
        ClusterStep {
            tier: p.tier,
            action: rule.action,
            policy: p.id(),
            rule: ri,
            rule_name: rule.name.clone(),
            priority: p.priority,
            tied_with: Vec::new(),
        }
    }

    /// The step for a hit, naming the policies of the same priority that would decide
    /// otherwise had the implementation ordered them first.
    fn explained(&self, tier: Tier, v: &View, (at, pi, ri): (usize, u32, usize)) -> ClusterStep {
        let mut step = self.step(pi, v.dir, ri);
        let list = self.tier_list(v.pod, tier, v.dir);
        let priority = self.cluster_policies[pi as usize].priority;
        for &other in &list[at + 1..] {
            let o = &self.cluster_policies[other as usize];
            if o.priority != priority {
                break;
            }
            let first = o
                .rules(v.dir)
                .iter()
                .enumerate()
                .find(|(ri, r)| self.cluster_rule_matches(other, *ri, r, v) == Match::Yes)
                .map(|(_, r)| r);
            if first.is_some_and(|r| r.action != step.action) {
                step.tied_with.push(o.id());
            }
        }
        step
    }

    /// Rule `ri` of policy `pi`: its peers first (bits worked out when the engine was built,
    /// then networks and domain names), then its ports.
    fn cluster_rule_matches(&self, pi: u32, ri: usize, rule: &ClusterRule, v: &View) -> Match {
        let peers = match self.tiered.peers.names(pi, v.dir, ri, v.remote) {
            Some(true) => Match::Yes,
            Some(false) => return Match::No,
            None => {
                let mut m = Match::No;
                for peer in &rule.peers {
                    match peer {
                        ClusterPeer::Networks(nets)
                            if nets.iter().any(|n| n.contains(&v.remote_ip)) =>
                        {
                            m = Match::Yes;
                            break;
                        }
                        ClusterPeer::DomainNames(_) => m = Match::Maybe,
                        _ => {}
                    }
                }
                m
            }
        };
        if peers == Match::No {
            return Match::No;
        }
        let ports_ok = rule.protocols.is_empty()
            || rule
                .protocols
                .iter()
                .any(|m| self.cluster_port_matches(m, v.dst, v.c));
        if ports_ok {
            peers
        } else {
            Match::No
        }
    }

    fn cluster_port_matches(&self, m: &ProtocolMatch, dst: AddressHolder, c: &Connection) -> bool {
        match m {
            ProtocolMatch::Ports {
                protocol,
                start,
                end,
            } => *protocol == c.protocol && (*start..=*end).contains(&c.port),
            // The destination pod's container port of that name, with its own protocol.
            ProtocolMatch::Named(name) => match dst {
                AddressHolder::Pod(p) => self.cluster.pod(p).ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol == c.protocol
                        && cp.port == c.port
                }),
                _ => false,
            },
        }
    }

    /// One direction's decision with its chain, from `start`, and the rules naming domains
    /// the evaluation went past (taken as not matching).
    fn walk(&self, start: Start, v: &View) -> (Side, Vec<ClusterStep>) {
        let mut side = Side::of(Ruling::NotIsolated);
        let mut passed_over = Vec::new();
        let decided = 'tiers: {
            let mut note = |pi: u32, ri: usize| passed_over.push((pi, ri));
            if start == Start::Admin {
                if let Some(hit) = self.tier_hit(Tier::Admin, v, &mut note) {
                    let step = self.explained(Tier::Admin, v, hit);
                    if step.action != Action::Pass {
                        break 'tiers Ruling::Cluster(step);
                    }
                    side.passed.push(step);
                }
            }
            let np = self.network_side(v);
            if np != Ruling::NotIsolated {
                break 'tiers np;
            }
            if let Some(hit) = self.tier_hit(Tier::Baseline, v, &mut note) {
                let step = self.explained(Tier::Baseline, v, hit);
                if step.action != Action::Pass {
                    break 'tiers Ruling::Cluster(step);
                }
                side.passed.push(step);
            }
            Ruling::NotIsolated
        };
        side.ruling = decided;
        let maybes = passed_over
            .into_iter()
            .map(|(pi, ri)| self.step(pi, v.dir, ri))
            .collect();
        (side, maybes)
    }

    /// Which verdicts are possible from `start`, whichever of the domain-named rules match:
    /// (can allow, can deny).
    fn possible(&self, start: Start, v: &View) -> (bool, bool, Side, Vec<ClusterStep>) {
        let (side, maybes) = self.walk(start, v);
        let (mut allow, mut deny) = (side.allows(), !side.allows());
        for m in &maybes {
            match (m.action, m.tier) {
                (Action::Accept, _) | (Action::Pass, Tier::Baseline) => allow = true,
                (Action::Deny, _) => deny = true,
                (Action::Pass, Tier::Admin) => {
                    let (a, d, ..) = self.possible(Start::NetworkPolicy, v);
                    allow |= a;
                    deny |= d;
                }
            }
        }
        (allow, deny, side, maybes)
    }

    /// The decision for one direction, with its explanation.
    pub(super) fn decide_tiered(&self, v: &View) -> Side {
        let (allow, deny, mut side, maybes) = self.possible(Start::Admin, v);
        if allow && deny {
            side.undetermined = maybes;
        }
        side
    }

    /// Whether one direction allows, fast; `maybe` is set when a domain-named rule was
    /// passed over, so the caller can tell whether the answer is certain.
    pub(super) fn side_allows(&self, v: &View, maybe: &mut bool) -> bool {
        if self.cluster_policies.is_empty() {
            return self.network_allows(v).unwrap_or(true);
        }
        let mut note = |_: u32, _: usize| *maybe = true;
        match self.tier_hit(Tier::Admin, v, &mut note) {
            Some((_, pi, ri)) if self.action(pi, v.dir, ri) != Action::Pass => {
                return self.action(pi, v.dir, ri) == Action::Accept
            }
            _ => {}
        }
        if let Some(allowed) = self.network_allows(v) {
            return allowed;
        }
        self.tier_hit(Tier::Baseline, v, &mut note)
            .is_none_or(|(_, pi, ri)| self.action(pi, v.dir, ri) != Action::Deny)
    }
}
