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

use serde::Serialize;

use super::{Direction, Peer, Policy, PortMatch, PortSpec, Rule};
use crate::{
    cluster::{AddressHolder, Cluster, NsId, PodId, Timestamp},
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
        let c = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        Self {
            src: c(self.src),
            dst: c(self.dst),
            ..*self
        }
    }
}

/// The rule that allowed a connection: rule `rule` of `spec.ingress`/`spec.egress` of `policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: usize,
}

/// One direction's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ruling {
    /// This end is not a pod of the cluster: no policy applies to it.
    NotAPod { endpoint: String },
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// The other end is the pod's own node, which is always allowed.
    OwnNode,
    /// The pod talks to itself, which no policy restricts.
    Loopback,
    /// Allowed by these rules.
    Allowed { rules: Vec<RuleRef> },
    /// The pod is isolated by these policies and none of their rules matched.
    Denied { isolated_by: Vec<String> },
}

impl Ruling {
    pub fn allows(&self) -> bool {
        !matches!(self, Ruling::Denied { .. })
    }
}

impl Serialize for Ruling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            verdict: PolicyVerdict,
            reason: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            endpoint: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rules: Option<&'a [RuleRef]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            isolated_by: Option<&'a [String]>,
        }
        let (reason, endpoint, rules, isolated_by) = match self {
            Ruling::NotAPod { endpoint } => ("not_a_pod", Some(endpoint.as_str()), None, None),
            Ruling::NotIsolated => ("not_isolated", None, None, None),
            Ruling::OwnNode => ("own_node", None, None, None),
            Ruling::Loopback => ("loopback", None, None, None),
            Ruling::Allowed { rules } => ("rule", None, Some(rules.as_slice()), None),
            Ruling::Denied { isolated_by } => {
                ("no_rule_matched", None, None, Some(isolated_by.as_slice()))
            }
        };
        Json {
            verdict: PolicyVerdict::of(self.allows()),
            reason,
            endpoint,
            rules,
            isolated_by,
        }
        .serialize(s)
    }
}

/// What the declared policies say about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyVerdict {
    Allow,
    Deny,
}

impl PolicyVerdict {
    pub fn of(allowed: bool) -> Self {
        if allowed {
            Self::Allow
        } else {
            Self::Deny
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl std::fmt::Display for PolicyVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    #[serde(skip)]
    pub allowed: bool,
    /// What each end is: `pod ns/name`, `node name`, `external`.
    pub src: String,
    pub dst: String,
    pub egress: Ruling,
    pub ingress: Ruling,
}

impl Decision {
    /// Why, per direction that has a say, in words: `egress: allowed by ns/name#0`,
    /// `ingress: isolated by ns/a, ns/b, no rule matched`, `ingress: not isolated`.
    pub fn reasons(&self) -> Vec<String> {
        let why = |side: &Ruling, dir: &str| -> Option<String> {
            Some(match side {
                Ruling::NotAPod { .. } => return None,
                Ruling::NotIsolated => format!("{dir}: not isolated"),
                Ruling::OwnNode => format!("{dir}: own node"),
                Ruling::Loopback => format!("{dir}: loopback"),
                Ruling::Allowed { rules } => format!(
                    "{dir}: allowed by {}",
                    rules
                        .iter()
                        .map(|r| format!("{}#{}", r.policy, r.rule))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ruling::Denied { isolated_by } => format!(
                    "{dir}: isolated by {}, no rule matched",
                    isolated_by.join(", ")
                ),
            })
        };
        [why(&self.egress, "egress"), why(&self.ingress, "ingress")]
            .into_iter()
            .flatten()
            .collect()
    }
}

pub struct Engine<'c> {
    cluster: &'c Cluster,
    policies: Vec<Policy>,
    /// The namespace of each policy in the model (None: no such namespace, selects nothing).
    policy_ns: Vec<Option<NsId>>,
    /// Per pod: indexes of the policies that select it for ingress, and for egress.
    selected: Vec<[Vec<u32>; 2]>,
}

impl<'c> Engine<'c> {
    pub fn new(cluster: &'c Cluster, policies: Vec<Policy>) -> Self {
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
            policies,
            policy_ns,
            selected,
        }
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Policies selecting `pod` for `direction`.
    pub fn selecting(&self, pod: PodId, direction: Direction) -> impl Iterator<Item = &Policy> {
        self.selected[pod.0 as usize][direction as usize]
            .iter()
            .map(|&i| &self.policies[i as usize])
    }

    /// Indexes (into [`Self::policies`]) of the policies selecting `pod` for `direction`.
    pub fn selecting_indexes(&self, pod: PodId, direction: Direction) -> &[u32] {
        &self.selected[pod.0 as usize][direction as usize]
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
                    egress: Ruling::Loopback,
                    ingress: Ruling::Loopback,
                };
            }
        }
        let egress = match src {
            AddressHolder::Pod(p) => self.side(p, Direction::Egress, dst, c.dst, dst, c),
            other => Ruling::NotAPod {
                endpoint: self.describe(other),
            },
        };
        let ingress = match dst {
            AddressHolder::Pod(p) => self.side(p, Direction::Ingress, src, c.src, dst, c),
            other => Ruling::NotAPod {
                endpoint: self.describe(other),
            },
        };
        Decision {
            allowed: egress.allows() && ingress.allows(),
            src: self.describe(src),
            dst: self.describe(dst),
            egress,
            ingress,
        }
    }

    /// Whether connection `c` is allowed without building an explanation (the fast path).
    pub fn allows(&self, c: &Connection) -> bool {
        let c = &c.canonical();
        let (src, dst) = (self.resolve(c.src, c.at), self.resolve(c.dst, c.at));
        if matches!((src, dst), (AddressHolder::Pod(a), AddressHolder::Pod(b)) if a == b) {
            return true;
        }
        let side_allows = |pod: PodId, dir: Direction, remote: AddressHolder, remote_ip: IpAddr| {
            let sel = &self.selected[pod.0 as usize][dir as usize];
            sel.is_empty()
                || self.own_node(pod, remote)
                || sel.iter().any(|&pi| {
                    let p = &self.policies[pi as usize];
                    p.rules(dir)
                        .unwrap_or_default()
                        .iter()
                        .any(|r| self.rule_matches(pi as usize, r, remote, remote_ip, dst, c))
                })
        };
        (match src {
            AddressHolder::Pod(p) => side_allows(p, Direction::Egress, dst, c.dst),
            _ => true,
        }) && (match dst {
            AddressHolder::Pod(p) => side_allows(p, Direction::Ingress, src, c.src),
            _ => true,
        })
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

    /// The decision for `pod`'s `direction`, where the other end is `remote` at `remote_ip`
    /// and the connection's destination is `dst` (named ports resolve against it).
    fn side(
        &self,
        pod: PodId,
        direction: Direction,
        remote: AddressHolder,
        remote_ip: IpAddr,
        dst: AddressHolder,
        c: &Connection,
    ) -> Ruling {
        let sel = &self.selected[pod.0 as usize][direction as usize];
        if sel.is_empty() {
            return Ruling::NotIsolated;
        }
        if self.own_node(pod, remote) {
            return Ruling::OwnNode;
        }
        let mut rules = Vec::new();
        for &pi in sel {
            let p = &self.policies[pi as usize];
            for (ri, rule) in p.rules(direction).unwrap_or_default().iter().enumerate() {
                if self.rule_matches(pi as usize, rule, remote, remote_ip, dst, c) {
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

    fn rule_matches(
        &self,
        policy: usize,
        rule: &Rule,
        remote: AddressHolder,
        remote_ip: IpAddr,
        dst: AddressHolder,
        c: &Connection,
    ) -> bool {
        (rule.ports.is_empty() || rule.ports.iter().any(|m| self.port_matches(m, dst, c)))
            && (rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|peer| self.peer_matches(policy, peer, remote, remote_ip)))
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
