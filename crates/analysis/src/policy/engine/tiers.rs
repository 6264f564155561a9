//! The cluster-scoped tiers around NetworkPolicy, for one direction of one pod: the Admin
//! tier, then NetworkPolicy, then the Baseline tier, as [`crate::policy::clusterwide`] sets
//! out. Which cluster policies select which pod is computed when the engine is built.
use std::net::IpAddr;

use super::{
    decision::{ClusterStep, Ruling, Side},
    Connection, Engine,
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

/// Per pod, the cluster policies selecting it, in evaluation order, by `slot(tier, dir)`.
pub(super) type TierIndex = Vec<[Box<[u32]>; 4]>;

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
        return Vec::new();
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
    index
        .into_iter()
        .map(|lists| lists.map(Vec::into_boxed_slice))
        .collect()
}

impl Engine<'_> {
    fn tier_list(&self, pod: PodId, tier: Tier, dir: Direction) -> &[u32] {
        self.tiered
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
        for (at, &pi) in self.tier_list(v.pod, tier, v.dir).iter().enumerate() {
            let p = &self.cluster_policies[pi as usize];
            for (ri, rule) in p.rules(v.dir).iter().enumerate() {
                match self.cluster_rule_matches(rule, v) {
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
                .find(|r| self.cluster_rule_matches(r, v) == Match::Yes);
            if first.is_some_and(|r| r.action != step.action) {
                step.tied_with.push(o.id());
            }
        }
        step
    }

    fn cluster_rule_matches(&self, rule: &ClusterRule, v: &View) -> Match {
        let ports_ok = rule.protocols.is_empty()
            || rule
                .protocols
                .iter()
                .any(|m| self.cluster_port_matches(m, v.dst, v.c));
        if !ports_ok {
            return Match::No;
        }
        let mut maybe = false;
        for peer in &rule.peers {
            let hit = match (peer, v.remote) {
                (ClusterPeer::Namespaces(ns), AddressHolder::Pod(r)) => {
                    let pod = self.cluster.pod(r);
                    !pod.host_network && ns.matches(&self.cluster.namespace(pod.namespace).labels)
                }
                (ClusterPeer::Pods { namespaces, pods }, AddressHolder::Pod(r)) => {
                    let pod = self.cluster.pod(r);
                    !pod.host_network
                        && namespaces.matches(&self.cluster.namespace(pod.namespace).labels)
                        && pods.matches(&*pod.labels)
                }
                (ClusterPeer::Nodes(s), AddressHolder::Node(n)) => {
                    s.matches(&self.cluster.node(n).labels)
                }
                (ClusterPeer::Networks(nets), _) => nets.iter().any(|n| n.contains(&v.remote_ip)),
                (ClusterPeer::DomainNames(_), _) => {
                    maybe = true;
                    false
                }
                _ => false,
            };
            if hit {
                return Match::Yes;
            }
        }
        if maybe {
            Match::Maybe
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
