//! Decides whether declared policy allows a connection, and why. Pure.
//!
//! A connection from S to D on port/protocol is allowed when S's egress allows it and D's
//! ingress allows it. A side that is not a pod of the cluster (a node, an outside address)
//! has no policy. A pod selected by no policy of a direction is not isolated for it. Traffic
//! between a pod and its own node is always allowed, and so is a pod's traffic to itself
//! (upstream conformance: "loopback logic follows no policy"). Which policies select which pod is
//! computed once, when the engine is built, so a verdict costs only the rules of the
//! policies that select its two ends.
use std::net::IpAddr;

mod decision;
mod flat;
mod peers;
mod tiers;

pub use decision::{ClusterStep, Decision, PolicyVerdict, RuleRef, Ruling, Side};
use tiers::View;

use super::{clusterwide::ClusterPolicy, Direction, Peer, Policy, PortMatch, PortSpec};
use crate::{
    cluster::{canonical, AddressHolder, Cluster, NsId, PodId, Timestamp},
    record::Protocol,
};

/// A connection attempt, by address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// When it happened: addresses are resolved to who held them then (now if `None`).
    pub at: Option<Timestamp>,
}

impl Connection {
    /// IPv4-mapped IPv6 addresses as IPv4, so IPv4 `ipBlock`s match them.
    fn canonical(&self) -> Self {
        Self {
            src: canonical(self.src),
            dst: canonical(self.dst),
            ..*self
        }
    }
}

/// A connection's two ends, resolved ([`Engine::ends`]).
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    src: IpAddr,
    dst: IpAddr,
    holders: (AddressHolder, AddressHolder),
}

pub struct Engine<'c> {
    cluster: &'c Cluster,
    policies: Vec<Policy>,
    /// The namespace of each policy in the model (None: no such namespace, selects nothing).
    policy_ns: Vec<Option<NsId>>,
    /// Per pod: indexes of the policies that select it for ingress, and for egress.
    selected: flat::Selected,
    /// The policies' rules, laid out for the fast path.
    flat: flat::FlatRules,
    /// Cluster-scoped policies, in evaluation order (Admin tier, then Baseline).
    cluster_policies: Vec<ClusterPolicy>,
    /// Per pod, the cluster policies selecting it (empty without any).
    tiered: tiers::TierIndex,
}

impl<'c> Engine<'c> {
    /// An engine for NetworkPolicies alone.
    pub fn new(cluster: &'c Cluster, policies: Vec<Policy>) -> Self {
        Self::with_cluster_policies(cluster, policies, Vec::new())
    }

    /// An engine for NetworkPolicies and the cluster-scoped tiers around them.
    pub fn with_cluster_policies(
        cluster: &'c Cluster,
        policies: Vec<Policy>,
        mut cluster_policies: Vec<ClusterPolicy>,
    ) -> Self {
        let tiered = tiers::index(cluster, &mut cluster_policies);
        let policy_ns: Vec<Option<NsId>> = policies
            .iter()
            .map(|p| cluster.namespace_id(&p.namespace))
            .collect();
        let mut selected = vec![[Vec::new(), Vec::new()]; cluster.pods().len()];
        for (i, (p, ns)) in policies.iter().zip(&policy_ns).enumerate() {
            let Some(ns) = ns else { continue };
            for &pod_id in cluster.pods_in(*ns) {
                let pod = cluster.pod(pod_id);
                // hostNetwork pods are never selected: policies do not apply to the host's network.
                if pod.host_network || !p.pod_selector.matches(&*pod.labels) {
                    continue;
                }
                if p.ingress.is_some() {
                    selected[pod_id.0 as usize][0].push(i as u32);
                }
                if p.egress.is_some() {
                    selected[pod_id.0 as usize][1].push(i as u32);
                }
            }
        }
        Self {
            cluster,
            flat: flat::FlatRules::new(&policies),
            policies,
            policy_ns,
            selected: flat::Selected::new(selected),
            cluster_policies,
            tiered,
        }
    }

    /// The cluster-scoped policies, in evaluation order.
    pub fn cluster_policies(&self) -> &[ClusterPolicy] {
        &self.cluster_policies
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Policies selecting `pod` for `direction`.
    pub fn selecting(&self, pod: PodId, direction: Direction) -> impl Iterator<Item = &Policy> {
        self.selected
            .get(pod, direction)
            .iter()
            .map(|&i| &self.policies[i as usize])
    }

    /// Indexes (into [`Self::policies`]) of the policies selecting `pod` for `direction`.
    pub fn selecting_indexes(&self, pod: PodId, direction: Direction) -> &[u32] {
        self.selected.get(pod, direction)
    }

    /// The pods holding addresses now that `peer` of policy `policy` (an index into
    /// [`Self::policies`]) matches; an ipBlock matches pods by address.
    pub fn peer_pods(&self, policy: usize, peer: &Peer) -> Vec<PodId> {
        self.cluster
            .pod_ids()
            .filter(|&id| {
                let pod = self.cluster.pod(id);
                pod.is_active()
                    && !pod.host_network
                    && pod
                        .ips
                        .iter()
                        .any(|ip| self.peer_matches(policy, peer, AddressHolder::Pod(id), *ip))
            })
            .collect()
    }

    pub fn describe(&self, e: AddressHolder) -> String {
        match e {
            AddressHolder::Pod(p) => format!("pod {}", self.cluster.pod_name(p)),
            AddressHolder::Node(n) => format!("node {}", self.cluster.node(n).name),
            AddressHolder::External(_) => "external".into(),
        }
    }

    pub fn evaluate(&self, c: &Connection) -> Decision {
        let c = &c.canonical();
        let (src, dst) = (self.resolve(c.src, c.at), self.resolve(c.dst, c.at));
        if let (AddressHolder::Pod(a), AddressHolder::Pod(b)) = (src, dst) {
            if a == b {
                let d = self.describe(src);
                return Decision {
                    allowed: true,
                    src: d.clone(),
                    dst: d,
                    egress: Side::of(Ruling::Loopback),
                    ingress: Side::of(Ruling::Loopback),
                };
            }
        }
        let side = |end: AddressHolder, dir: Direction, remote: AddressHolder, remote_ip| match end
        {
            AddressHolder::Pod(pod) => self.decide(&View {
                pod,
                dir,
                remote,
                remote_ip,
                dst,
                c,
            }),
            other => Side::of(Ruling::NotAPod {
                endpoint: self.describe(other),
            }),
        };
        let egress = side(src, Direction::Egress, dst, c.dst);
        let ingress = side(dst, Direction::Ingress, src, c.src);
        Decision {
            allowed: egress.allows() && ingress.allows(),
            src: self.describe(src),
            dst: self.describe(dst),
            egress,
            ingress,
        }
    }

    /// Whether connection `c` is allowed without building an explanation (the fast path).
    /// Where a rule naming domains could change it, this is the verdict for an address
    /// that is none of them; [`Self::verdict`] tells the two apart.
    pub fn allows(&self, c: &Connection) -> bool {
        self.fast(c, &mut false)
    }

    /// Allow, deny or undetermined, fast unless a rule naming domains is on the way.
    pub fn verdict(&self, c: &Connection) -> PolicyVerdict {
        let mut maybe = false;
        let allowed = self.fast(c, &mut maybe);
        if maybe {
            self.evaluate(c).verdict()
        } else {
            PolicyVerdict::of(allowed)
        }
    }

    /// The two ends of a connection resolved once, for asking one pair many verdicts
    /// ([`Self::verdict_on`]): the tables ask each pair for every port class, and resolving
    /// the addresses was most of the cost.
    pub fn ends(&self, src: IpAddr, dst: IpAddr) -> Ends {
        let (src, dst) = (canonical(src), canonical(dst));
        Ends {
            src,
            dst,
            holders: (self.resolve(src, None), self.resolve(dst, None)),
        }
    }

    /// [`Self::verdict`] between resolved ends, now, on one port.
    pub fn verdict_on(&self, ends: &Ends, port: u16, protocol: Protocol) -> PolicyVerdict {
        let c = Connection {
            src: ends.src,
            dst: ends.dst,
            port,
            protocol,
            at: None,
        };
        let mut maybe = false;
        let allowed = self.fast_between(&c, ends.holders, &mut maybe);
        if maybe {
            self.evaluate(&c).verdict()
        } else {
            PolicyVerdict::of(allowed)
        }
    }

    fn fast(&self, c: &Connection, maybe: &mut bool) -> bool {
        let c = &c.canonical();
        let holders = (self.resolve(c.src, c.at), self.resolve(c.dst, c.at));
        self.fast_between(c, holders, maybe)
    }

    /// The fast path for a canonical connection whose ends are resolved.
    fn fast_between(
        &self,
        c: &Connection,
        (src, dst): (AddressHolder, AddressHolder),
        maybe: &mut bool,
    ) -> bool {
        if matches!((src, dst), (AddressHolder::Pod(a), AddressHolder::Pod(b)) if a == b) {
            return true;
        }
        let mut side = |end: AddressHolder, dir: Direction, remote: AddressHolder, remote_ip| {
            let AddressHolder::Pod(pod) = end else {
                return true;
            };
            let v = View {
                pod,
                dir,
                remote,
                remote_ip,
                dst,
                c,
            };
            self.side_allows(&v, maybe)
        };
        side(src, Direction::Egress, dst, c.dst) && side(dst, Direction::Ingress, src, c.src)
    }

    fn decide(&self, v: &View) -> Side {
        if self.cluster_policies.is_empty() {
            Side::of(self.network_side(v))
        } else {
            self.decide_tiered(v)
        }
    }

    fn resolve(&self, ip: IpAddr, at: Option<Timestamp>) -> AddressHolder {
        match at {
            Some(t) => self.cluster.endpoint_at(ip, t),
            None => self.cluster.endpoint(ip),
        }
    }

    fn own_node(&self, pod: PodId, remote: AddressHolder) -> bool {
        matches!(remote, AddressHolder::Node(n) if self.cluster.pod(pod).node == Some(n))
    }

    /// Whether the NetworkPolicies isolating the pod allow, None when none isolates it.
    fn network_allows(&self, v: &View) -> Option<bool> {
        let sel = self.selected.get(v.pod, v.dir);
        if sel.is_empty() {
            return None;
        }
        Some(
            self.own_node(v.pod, v.remote)
                || sel.iter().any(|&pi| {
                    self.flat
                        .rules(pi as usize, v.dir)
                        .any(|(ports, peers)| self.rule_matches(pi as usize, ports, peers, v))
                }),
        )
    }

    /// The NetworkPolicy tier's ruling for one direction of a pod.
    fn network_side(&self, v: &View) -> Ruling {
        let sel = self.selected.get(v.pod, v.dir);
        if sel.is_empty() {
            return Ruling::NotIsolated;
        }
        if self.own_node(v.pod, v.remote) {
            return Ruling::OwnNode;
        }
        let mut rules = Vec::new();
        for &pi in sel {
            let p = &self.policies[pi as usize];
            for (ri, rule) in p.rules(v.dir).unwrap_or_default().iter().enumerate() {
                if self.rule_matches(pi as usize, &rule.ports, &rule.peers, v) {
                    rules.push(RuleRef {
                        policy: p.id(),
                        rule: ri,
                    });
                }
            }
        }
        if rules.is_empty() {
            Ruling::Denied {
                isolated_by: sel
                    .iter()
                    .map(|&i| self.policies[i as usize].id())
                    .collect(),
            }
        } else {
            Ruling::Allowed { rules }
        }
    }

    /// Whether a rule (its ports and peers) of `policy` matches the connection.
    fn rule_matches(&self, policy: usize, ports: &[PortMatch], peers: &[Peer], v: &View) -> bool {
        (ports.is_empty() || ports.iter().any(|m| self.port_matches(m, v.dst, v.c)))
            && (peers.is_empty()
                || peers
                    .iter()
                    .any(|peer| self.peer_matches(policy, peer, v.remote, v.remote_ip)))
    }

    fn port_matches(&self, m: &PortMatch, dst: AddressHolder, c: &Connection) -> bool {
        if m.protocol != c.protocol {
            return false;
        }
        match &m.port {
            None => true,
            Some(PortSpec::Range(a, b)) => (*a..=*b).contains(&c.port),
            // A named port means the destination pod's container port of that name and protocol.
            Some(PortSpec::Named(name)) => match dst {
                AddressHolder::Pod(p) => self.cluster.pod(p).ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name)
                        && cp.protocol == c.protocol
                        && cp.port == c.port
                }),
                _ => false,
            },
        }
    }

    fn peer_matches(
        &self,
        policy: usize,
        peer: &Peer,
        remote: AddressHolder,
        remote_ip: IpAddr,
    ) -> bool {
        match peer {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(&remote_ip) && !except.iter().any(|e| e.contains(&remote_ip))
            }
            Peer::Pods { pods, namespaces } => {
                let AddressHolder::Pod(r) = remote else {
                    return false;
                };
                let pod = self.cluster.pod(r);
                let ns_ok = match namespaces {
                    None => self.policy_ns[policy] == Some(pod.namespace),
                    Some(s) => s.matches(&self.cluster.namespace(pod.namespace).labels),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&*pod.labels))
            }
        }
    }
}
