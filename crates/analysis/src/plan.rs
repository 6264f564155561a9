//! The probe plan: connection attempts derived from the declared policies that tell whether
//! they are enforced. For every policy and direction it isolates, and each pod it selects
//! (one per label set), on each port its rules name:
//! - the peers its rules allow (one pod per label set and namespace, outside addresses in
//!   an ipBlock), which must get through;
//! - "inverted" peers whose labels or namespace just miss a selector, addresses in an
//!   ipBlock's `except`, and, for policies without rules, any other pod, which must not.
//!
//! Cluster-scoped policies get attempts of their own, rule by rule ([`tiers`]).
//!
//! Each attempt carries the engine's expectation and the reason it was planned; the attempts
//! run from inside the source's network namespace and their records are judged by `verify`
//! like any traffic. Pure.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use crate::{
    cluster::{Cluster, PodId},
    policy::{
        engine::{Connection, Engine},
        Direction, Peer, PortMatch, PortSpec, Rule,
    },
    record::Protocol,
};

mod tiers;

/// How long an attempt waits for an answer: denied attempts cost this much each.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts run at once.
pub const ATTEMPT_CONCURRENCY: u32 = 8;

/// An address outside the cluster that can answer probes (a lab external host).
#[derive(Clone, Debug)]
pub struct Outside {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// Who an attempt runs from or goes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum Host {
    /// `namespace/name` of a pod.
    Pod(String),
    /// An outside host, by name.
    Outside(String),
}

impl Host {
    pub fn name(&self) -> &str {
        match self {
            Host::Pod(n) | Host::Outside(n) => n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub from: Host,
    pub to: Host,
    /// The destination address probed (IPv4 when the destination has one).
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// What the declared policies say.
    pub expect_allowed: bool,
    /// Why it is in the plan: `policy ns/name ingress#0: allowed peer`, `... inverted peer`
    /// (every policy rule that called for it).
    pub reasons: Vec<String>,
}

/// One pod per (namespace, label set): pods of one template behave alike.
fn representatives(cluster: &Cluster, pods: impl Iterator<Item = PodId>) -> Vec<PodId> {
    let mut seen = BTreeSet::new();
    pods.filter(|&p| {
        let pod = cluster.pod(p);
        pod.is_active() && !pod.host_network && seen.insert((pod.namespace.0, pod.labels.to_map()))
    })
    .collect()
}

/// A port a rule names, NetworkPolicy's or a cluster-scoped policy's.
enum Wanted<'a> {
    /// Every port of the protocol.
    Any(Protocol),
    /// `start..=end` of the protocol.
    Range(Protocol, u16, u16),
    /// The destination's container port of that name (of that protocol, when given).
    Named(&'a str, Option<Protocol>),
}

/// The concrete ports `wanted` names on destination `dst`: a range's listening ports (else
/// its start), named ports resolved there; every container port of `dst` when it names none.
fn ports_on(cluster: &Cluster, wanted: &[Wanted], dst: Option<PodId>) -> Vec<(u16, Protocol)> {
    let own: Vec<(Option<&str>, u16, Protocol)> = dst
        .map(|d| {
            cluster
                .pod(d)
                .ports
                .iter()
                .map(|c| (c.name.as_deref(), c.port, c.protocol))
                .collect()
        })
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    if wanted.is_empty() {
        out.extend(own.iter().map(|&(_, n, p)| (n, p)));
    }
    for w in wanted {
        match *w {
            Wanted::Any(protocol) => out.extend(
                own.iter()
                    .filter(|(_, _, p)| *p == protocol)
                    .map(|&(_, n, p)| (n, p)),
            ),
            Wanted::Range(protocol, a, b) => {
                let listening: Vec<u16> = own
                    .iter()
                    .filter(|(_, n, p)| *p == protocol && (a..=b).contains(n))
                    .map(|&(_, n, _)| n)
                    .collect();
                if listening.is_empty() {
                    out.insert((a, protocol));
                }
                out.extend(listening.into_iter().map(|n| (n, protocol)));
            }
            Wanted::Named(name, protocol) => out.extend(
                own.iter()
                    .filter(|(n, _, p)| *n == Some(name) && protocol.is_none_or(|q| q == *p))
                    .map(|&(_, n, p)| (n, p)),
            ),
        }
    }
    out.into_iter().collect()
}

/// The concrete ports a NetworkPolicy rule's port list names on destination `dst`.
fn ports(cluster: &Cluster, rule_ports: &[PortMatch], dst: Option<PodId>) -> Vec<(u16, Protocol)> {
    let wanted: Vec<Wanted> = rule_ports
        .iter()
        .map(|m| match &m.port {
            None => Wanted::Any(m.protocol),
            Some(PortSpec::Range(a, b)) => Wanted::Range(m.protocol, *a, *b),
            Some(PortSpec::Named(name)) => Wanted::Named(name, Some(m.protocol)),
        })
        .collect();
    ports_on(cluster, &wanted, dst)
}

/// Pods a peer allows, and pods that just miss it: right namespace but labels off, or
/// right labels in another namespace.
fn peer_pods(engine: &Engine, policy: usize, peer: &Peer) -> (Vec<PodId>, Vec<PodId>) {
    let cluster = engine.cluster();
    let allowed = engine.peer_pods(policy, peer);
    let Peer::Pods { pods, namespaces } = peer else {
        return (allowed, Vec::new());
    };
    let own_ns = cluster.namespace_id(&engine.policies()[policy].namespace);
    let ns_ok = |p: PodId| {
        let pod = cluster.pod(p);
        match namespaces {
            None => Some(pod.namespace) == own_ns,
            Some(s) => s.matches(&cluster.namespace(pod.namespace).labels),
        }
    };
    let labels_ok = |p: PodId| {
        pods.as_ref()
            .is_none_or(|s| s.matches(&*cluster.pod(p).labels))
    };
    let near = cluster
        .pod_ids()
        .filter(|&p| ns_ok(p) != labels_ok(p))
        .collect();
    (allowed, near)
}

/// Outside hosts an ipBlock allows, and those in its `except` (or outside it) that it does not.
fn block_hosts<'a>(outside: &'a [Outside], peer: &Peer) -> (Vec<&'a Outside>, Vec<&'a Outside>) {
    let Peer::IpBlock { cidr, except } = peer else {
        return (Vec::new(), Vec::new());
    };
    let inside = |ip: &IpAddr| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for o in outside {
        let fam: Vec<&IpAddr> = o
            .ips
            .iter()
            .filter(|ip| ip.is_ipv4() == matches!(cidr, ipnet::IpNet::V4(_)))
            .collect();
        if fam.iter().any(|ip| inside(ip)) {
            yes.push(o);
        } else if fam.iter().any(|ip| except.iter().any(|e| e.contains(*ip))) {
            no.push(o);
        }
    }
    (yes, no)
}

/// A host and its addresses.
type Addressed = (Host, Vec<IpAddr>);

/// A peer considered for one rule: whether the rule's peer list allows it, and its pod.
struct Candidate {
    host: Addressed,
    allowed: bool,
    pod: Option<PodId>,
}

struct Planner<'e, 'c> {
    engine: &'e Engine<'c>,
    outside: &'e [Outside],
    attempts: BTreeMap<(Host, Host, u16, Protocol), Attempt>,
}

impl Planner<'_, '_> {
    fn pod_host(&self, p: PodId) -> Addressed {
        let c = self.engine.cluster();
        (Host::Pod(c.pod_name(p)), c.pod(p).ips.clone())
    }

    /// Adds an attempt, or another reason for one already planned.
    fn add(
        &mut self,
        from: (Host, Vec<IpAddr>),
        to: (Host, Vec<IpAddr>),
        port: (u16, Protocol),
        reason: String,
    ) {
        if from.0 == to.0 {
            return;
        }
        // Same family on both ends, IPv4 first.
        let pair = [true, false].into_iter().find_map(|v4| {
            let s = from.1.iter().find(|ip| ip.is_ipv4() == v4)?;
            let d = to.1.iter().find(|ip| ip.is_ipv4() == v4)?;
            Some((*s, *d))
        });
        let Some((src, dst)) = pair else { return };
        let expect_allowed = self.engine.allows(&Connection {
            src,
            dst,
            port: port.0,
            protocol: port.1,
            at: None,
        });
        let a = self
            .attempts
            .entry((from.0.clone(), to.0.clone(), port.0, port.1))
            .or_insert(Attempt {
                from: from.0,
                to: to.0,
                address: dst,
                port: port.0,
                protocol: port.1,
                expect_allowed,
                reasons: Vec::new(),
            });
        if !a.reasons.contains(&reason) {
            a.reasons.push(reason);
        }
    }

    fn outside_host(o: &Outside) -> Addressed {
        (Host::Outside(o.name.clone()), o.ips.clone())
    }

    fn rule(
        &mut self,
        policy: usize,
        dir: Direction,
        index: Option<usize>,
        rule: &Rule,
        target: PodId,
    ) {
        let id = self.engine.policies()[policy].id();
        let label = match index {
            Some(i) => format!("policy {id} {}#{i}", dir_name(dir)),
            None => format!("policy {id} {} (no rules)", dir_name(dir)),
        };
        let cluster = self.engine.cluster();
        let mut peers: Vec<Candidate> = Vec::new();
        let mut push = |host: Addressed, allowed: bool, pod: Option<PodId>| {
            peers.push(Candidate { host, allowed, pod })
        };
        if index.is_none() {
            // A policy without rules for this direction: nobody may pass; try one of each.
            for p in representatives(cluster, cluster.pod_ids()) {
                push(self.pod_host(p), false, Some(p));
            }
        } else if rule.peers.is_empty() {
            for p in representatives(cluster, cluster.pod_ids()) {
                push(self.pod_host(p), true, Some(p));
            }
            for o in self.outside {
                push(Self::outside_host(o), true, None);
            }
        }
        for peer in &rule.peers {
            let (yes, near) = peer_pods(self.engine, policy, peer);
            for p in representatives(cluster, yes.into_iter()) {
                push(self.pod_host(p), true, Some(p));
            }
            for p in representatives(cluster, near.into_iter()) {
                push(self.pod_host(p), false, Some(p));
            }
            let (yes, no) = block_hosts(self.outside, peer);
            for o in yes {
                push(Self::outside_host(o), true, None);
            }
            for o in no {
                push(Self::outside_host(o), false, None);
            }
        }
        let target_host = self.pod_host(target);
        for Candidate {
            host: peer,
            allowed: allowed_peer,
            pod: peer_pod,
        } in peers
        {
            let what = if allowed_peer {
                "allowed peer"
            } else {
                "inverted peer"
            };
            let reason = format!("{label}: {what}");
            match dir {
                Direction::Ingress => {
                    for port in ports(cluster, &rule.ports, Some(target)) {
                        self.add(peer.clone(), target_host.clone(), port, reason.clone());
                    }
                }
                Direction::Egress => {
                    let listed = ports(cluster, &rule.ports, peer_pod);
                    // Outside hosts: the rule's numeric ports (they have no container ports).
                    let listed = if peer_pod.is_none() {
                        numeric(&rule.ports)
                    } else {
                        listed
                    };
                    for port in listed {
                        self.add(target_host.clone(), peer.clone(), port, reason.clone());
                    }
                }
            }
        }
    }
}

/// The numeric ports of a rule (the first of each range).
fn numeric(rule_ports: &[PortMatch]) -> Vec<(u16, Protocol)> {
    rule_ports
        .iter()
        .filter_map(|m| match m.port {
            Some(PortSpec::Range(a, _)) => Some((a, m.protocol)),
            _ => None,
        })
        .collect()
}

fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The probe plan of the engine's policies, in a stable order.
pub fn plan(engine: &Engine, outside: &[Outside]) -> Vec<Attempt> {
    let cluster = engine.cluster();
    let mut planner = Planner {
        engine,
        outside,
        attempts: BTreeMap::new(),
    };
    let empty = Rule {
        peers: Vec::new(),
        ports: Vec::new(),
    };
    for (pi, policy) in engine.policies().iter().enumerate() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let Some(rules) = policy.rules(dir) else {
                continue;
            };
            let selected = cluster
                .pod_ids()
                .filter(|&p| engine.selecting_indexes(p, dir).contains(&(pi as u32)));
            for target in representatives(cluster, selected) {
                if rules.is_empty() {
                    planner.rule(pi, dir, None, &empty, target);
                }
                for (ri, rule) in rules.iter().enumerate() {
                    planner.rule(pi, dir, Some(ri), rule, target);
                }
            }
        }
    }
    planner.cluster_policies();
    planner.attempts.into_values().collect()
}
