//! Suggest: the least-privilege NetworkPolicies that allow exactly the traffic observed. Pure.
//!
//! From attributed records that got through, edges (workload, direction, peer, port) are
//! collected; then, per namespace with observed workloads, a default deny for both
//! directions, and per workload one policy selecting exactly its pods by stable labels, with
//! rules that group the peers sharing a port set. Peers are the other workload's stable
//! labels (plus its namespace's name label when it lives elsewhere), the DNS Service's
//! `spec.selector`, ipBlocks of the API server's endpoints, of nodes (with a note saying
//! which) and of outside addresses (/32, /128; wider only when asked). Flows from a pod's own
//! node (kubelet probes) need no rule. Everything is sorted: same input, same output.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::{
    cluster::{AddressHolder, Cluster, Labels, PodId, Timestamp, Workload, WorkloadKey},
    policy::Direction,
    record::{FlowRecord, Protocol},
    verify::{fate, Fate},
};

mod cilium;
mod collect;
mod proof;
mod render;
#[cfg(test)]
mod tests;

pub use cilium::CiliumNetworkPolicy;
use collect::Suggester;
pub use proof::{denied, excess, namespaces_of, prove, Diff, ProofError, Proven};
pub use render::{default_deny, network_policies, to_yaml};

/// Labels that change with every rollout or pod: never used in a selector.
pub use crate::cluster::CONTROLLER_LABELS as VOLATILE_LABELS;

/// Label sets tried, in order, for a workload's selector; the first that selects exactly
/// the workload's pods wins, else all its stable labels.
const PREFERRED: &[&[&str]] = &[
    &["app.kubernetes.io/name", "app.kubernetes.io/instance"],
    &["app.kubernetes.io/name"],
    &["app"],
    &["k8s-app"],
    &[
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    ],
];

/// Private ranges kept out of an internet-wide egress rule.
const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];
const PRIVATE_V6: &[&str] = &["fc00::/7"];

/// Annotation keys of generated policies.
pub const GENERATED_BY: &str = "flowpol.io/generated-by";
/// Why ipBlock peers are what they are (a node, the API server's endpoints).
pub const ADDRESS_NOTES: &str = "flowpol.io/address-notes";
pub const EXPLAIN_PREFIX: &str = "flowpol.io/explain-";

#[derive(Clone, Debug)]
pub struct Options {
    /// Only write policies for these namespaces (all observed when empty).
    pub namespaces: Vec<String>,
    /// Annotate each rule with the flows that justify it.
    pub explain: bool,
    /// Widen outside addresses to their /24 (IPv4) or /64 (IPv6).
    pub cidr_aggregate: bool,
    /// More distinct outside addresses than this on one port of one workload: allow the
    /// internet (0.0.0.0/0, ::/0) on that port, private ranges excepted.
    pub internet_threshold: usize,
    /// Also render CiliumNetworkPolicies ([`Suggestion::cilium`]).
    pub cilium: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            explain: false,
            cidr_aggregate: false,
            internet_threshold: 16,
            cilium: false,
        }
    }
}

/// The other end of an edge, as a policy names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// Pods by labels, in a namespace (the policy's own, or another by its name label).
    Pods {
        namespace: String,
        selector: Labels,
        /// What it stands for, for explanations: `ns/Kind/name` or `service ns/name`.
        what: String,
    },
    /// Addresses, with why (a node, the API server), if not plain outside addresses.
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
        note: Option<String>,
    },
}

/// What was seen on one edge.
#[derive(Clone, Debug, Default)]
struct Evidence {
    count: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl Evidence {
    fn add(&mut self, r: &FlowRecord) {
        self.merge(&Evidence {
            count: r.count,
            first: r.first_seen,
            last: r.last_seen.or(r.first_seen),
        });
    }

    fn merge(&mut self, other: &Evidence) {
        self.count += other.count;
        crate::record::widen_span(&mut self.first, &mut self.last, other.first, other.last);
    }
}

pub type Port = (Protocol, u16);

/// The edges of one workload, by direction, peer and port.
#[derive(Default)]
struct Edges {
    ingress: BTreeMap<Peer, BTreeMap<Port, Evidence>>,
    egress: BTreeMap<Peer, BTreeMap<Port, Evidence>>,
}

/// The suggestion: policies in output order, and what could not be made exact.
#[derive(Clone, Debug, Default)]
pub struct Suggestion {
    pub policies: Vec<NetworkPolicy>,
    /// The same as CiliumNetworkPolicies (cilium.io/v2), in the same order, when
    /// [`Options::cilium`] asked for them.
    pub cilium: Vec<CiliumNetworkPolicy>,
    /// Workloads whose pods no stable label set selects exactly (their policy selects more).
    pub inexact: Vec<String>,
    /// Records that got through, and were used.
    pub flows_used: u64,
}

fn endpoint(cluster: &Cluster, ip: IpAddr, at: Option<Timestamp>) -> AddressHolder {
    match at {
        Some(t) => cluster.endpoint_at(ip, t),
        None => cluster.endpoint(ip),
    }
}

/// The address as a /32 or /128, or its /24 or /64 when aggregating.
fn host_net(ip: IpAddr, aggregate: bool) -> IpNet {
    let net = IpNet::from(ip);
    if !aggregate {
        return net;
    }
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map(|n| n.trunc()).unwrap_or(net)
}

/// The stable labels all `pods` share, and the preferred subset of them that selects exactly
/// these pods among their namespace's pods (with whether one does).
pub fn stable_selector(cluster: &Cluster, pods: &[PodId]) -> (Labels, bool) {
    let Some(&first) = pods.first() else {
        return (Labels::new(), false);
    };
    let mut common: Labels = cluster.pod(first).labels.to_map();
    common.retain(|k, _| !VOLATILE_LABELS.contains(&k.as_str()));
    for &p in &pods[1..] {
        let labels = &cluster.pod(p).labels;
        common.retain(|k, v| labels.get(k) == Some(v.as_str()));
    }
    let ns = cluster.pod(first).namespace;
    let own: BTreeSet<PodId> = pods.iter().copied().filter(|&p| live(cluster, p)).collect();
    let exact = |sel: &Labels| -> bool {
        let chosen: BTreeSet<PodId> = cluster
            .pods_in(ns)
            .iter()
            .copied()
            .filter(|&p| live(cluster, p))
            .filter(|&p| {
                let l = &cluster.pod(p).labels;
                sel.iter().all(|(k, v)| l.get(k) == Some(v.as_str()))
            })
            .collect();
        chosen == own
    };
    for keys in PREFERRED {
        if keys.iter().all(|k| common.contains_key(*k)) {
            let sel: Labels = keys
                .iter()
                .map(|k| ((*k).to_owned(), common[*k].clone()))
                .collect();
            if exact(&sel) {
                return (sel, true);
            }
        }
    }
    let ok = !common.is_empty() && exact(&common);
    (common, ok)
}

fn live(cluster: &Cluster, p: PodId) -> bool {
    let pod = cluster.pod(p);
    pod.is_active() && !pod.host_network
}

/// Whether a record is traffic the suggestion must allow: it got through (established,
/// answered, received), or is a datagram sent without answer (one-way UDP such as syslog
/// or statsd is normal). Refusals, timeouts and drops are not.
pub fn is_traffic(r: &FlowRecord) -> bool {
    fate(r) == Fate::Passed || r.verdict == Some(crate::record::Verdict::Sent)
}

/// One rule: peers that share a port set, and the flows that justify it.
#[derive(Clone, Debug)]
pub struct Group {
    pub ports: BTreeSet<Port>,
    pub peers: Vec<Peer>,
    /// The observed flows behind the rule, for `--explain`.
    pub explain: Vec<String>,
}

/// Rules for one direction: peers grouped by identical port sets, internet-wide egress
/// where many outside addresses share a port.
fn groups(edges: &BTreeMap<Peer, BTreeMap<Port, Evidence>>, options: &Options) -> Vec<Group> {
    let mut edges = edges.clone();
    widen_to_internet(&mut edges, options.internet_threshold);
    let mut by_ports: BTreeMap<BTreeSet<Port>, Vec<&Peer>> = BTreeMap::new();
    for (peer, ports) in &edges {
        by_ports
            .entry(ports.keys().copied().collect())
            .or_default()
            .push(peer);
    }
    by_ports
        .into_iter()
        .map(|(ports, peers)| {
            let mut explain = Vec::new();
            for peer in &peers {
                for (port, ev) in &edges[*peer] {
                    let when = match (ev.first, ev.last) {
                        (Some(f), Some(l)) => format!(
                            " {} .. {}",
                            f.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            l.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ),
                        _ => String::new(),
                    };
                    explain.push(format!(
                        "{} {}/{}: {} seen{when}",
                        describe(peer),
                        port.0,
                        port.1,
                        ev.count
                    ));
                }
            }
            Group {
                ports,
                peers: peers.into_iter().cloned().collect(),
                explain,
            }
        })
        .collect()
}

/// Outside /32s and /128s on one port, more than `threshold` of them: the whole internet on
/// that port instead (private ranges excepted).
fn widen_to_internet(edges: &mut BTreeMap<Peer, BTreeMap<Port, Evidence>>, threshold: usize) {
    let mut per_port: BTreeMap<(bool, Port), Vec<Peer>> = BTreeMap::new();
    for (peer, ports) in edges.iter() {
        if let Peer::Block {
            cidr, note: None, ..
        } = peer
        {
            for port in ports.keys() {
                per_port
                    .entry((matches!(cidr, IpNet::V4(_)), *port))
                    .or_default()
                    .push(peer.clone());
            }
        }
    }
    for ((v4, port), peers) in per_port {
        if peers.len() <= threshold {
            continue;
        }
        let mut ev = Evidence::default();
        for p in &peers {
            if let Some(ports) = edges.get_mut(p) {
                if let Some(e) = ports.remove(&port) {
                    ev.merge(&e);
                }
                if ports.is_empty() {
                    edges.remove(p);
                }
            }
        }
        let (all, private) = if v4 {
            ("0.0.0.0/0", PRIVATE_V4)
        } else {
            ("::/0", PRIVATE_V6)
        };
        let internet = Peer::Block {
            cidr: all.parse().expect("valid CIDR"),
            except: private
                .iter()
                .map(|c| c.parse().expect("valid CIDR"))
                .collect(),
            note: None,
        };
        edges.entry(internet).or_default().insert(port, ev);
    }
}

/// What suggest decides, before any rendering: per namespace with observed workloads, per
/// workload, its selector and its rule groups. Namespaces and workloads are in output order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub namespaces: Vec<NamespacePlan>,
    /// Workloads whose pods no stable label set selects exactly (their policy selects more).
    pub inexact: Vec<String>,
    /// Records that got through, and were used.
    pub flows_used: u64,
}

#[derive(Clone, Debug)]
pub struct NamespacePlan {
    pub name: String,
    pub workloads: Vec<WorkloadPlan>,
}

/// One workload's policy: the pods it selects and what they may receive and send.
#[derive(Clone, Debug)]
pub struct WorkloadPlan {
    pub workload: Workload,
    pub selector: Labels,
    pub ingress: Vec<Group>,
    pub egress: Vec<Group>,
}

/// Plans the policies that allow exactly the traffic among `records` ([`is_traffic`]).
pub fn plan(cluster: &Cluster, records: &[FlowRecord], options: &Options) -> Plan {
    let mut s = Suggester::new(cluster, options);
    let mut used = 0;
    for r in records {
        if is_traffic(r) {
            s.record(r);
            used += 1;
        }
    }
    let wanted =
        |ns: &str| options.namespaces.is_empty() || options.namespaces.iter().any(|n| n == ns);
    let edges = std::mem::take(&mut s.edges);
    let mut out = Plan {
        flows_used: used,
        ..Plan::default()
    };
    let namespaces: BTreeSet<&String> = edges
        .keys()
        .map(|w| &w.namespace)
        .filter(|ns| wanted(ns))
        .collect();
    for ns in namespaces {
        let mut workloads = Vec::new();
        for (w, e) in edges.iter().filter(|(w, _)| &w.namespace == ns) {
            let (selector, exact) = s.selector(w);
            if !exact {
                out.inexact.push(w.to_string());
            }
            workloads.push(WorkloadPlan {
                workload: w.workload.clone(),
                selector,
                ingress: groups(&e.ingress, options),
                egress: groups(&e.egress, options),
            });
        }
        out.namespaces.push(NamespacePlan {
            name: ns.clone(),
            workloads,
        });
    }
    out
}

/// The suggestion: [`plan`], rendered as NetworkPolicies (and CiliumNetworkPolicies when
/// [`Options::cilium`] asks for them).
pub fn suggest(cluster: &Cluster, records: &[FlowRecord], options: &Options) -> Suggestion {
    let plan = plan(cluster, records, options);
    Suggestion {
        policies: render::network_policies(&plan, options),
        cilium: if options.cilium {
            cilium::policies(&plan, options)
        } else {
            Vec::new()
        },
        inexact: plan.inexact,
        flows_used: plan.flows_used,
    }
}

fn describe(peer: &Peer) -> String {
    match peer {
        Peer::Pods { what, .. } => what.clone(),
        Peer::Block { cidr, .. } => cidr.to_string(),
    }
}
