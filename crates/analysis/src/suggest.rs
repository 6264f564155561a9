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
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::{
    cluster::{Cluster, Endpoint as ModelEndpoint, Labels, PodId, Timestamp, Workload},
    policy::Direction,
    record::{FlowRecord, Protocol},
    verify::{fate, Fate},
};

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

/// A workload: its namespace and controller.
type WorkloadKey = (String, Workload);

/// The other end of an edge, as a policy names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
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

type Port = (Protocol, u16);

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
    pub cilium: Vec<serde_json::Value>,
    /// Workloads whose pods no stable label set selects exactly (their policy selects more).
    pub inexact: Vec<String>,
    /// Records that got through, and were used.
    pub flows_used: u64,
}

struct Suggester<'a> {
    cluster: &'a Cluster,
    options: &'a Options,
    /// Workload -> its pods (all the model knows of, deleted ones included).
    pods: BTreeMap<WorkloadKey, Vec<PodId>>,
    selectors: BTreeMap<WorkloadKey, (Labels, bool)>,
    edges: BTreeMap<WorkloadKey, Edges>,
}

impl<'a> Suggester<'a> {
    fn new(cluster: &'a Cluster, options: &'a Options) -> Self {
        let mut pods: BTreeMap<WorkloadKey, Vec<PodId>> = BTreeMap::new();
        for id in cluster.pod_ids() {
            let p = cluster.pod(id);
            if p.host_network {
                continue;
            }
            let ns = cluster.namespace(p.namespace).name.clone();
            pods.entry((ns, cluster.workload(id))).or_default().push(id);
        }
        Self {
            cluster,
            options,
            pods,
            selectors: BTreeMap::new(),
            edges: BTreeMap::new(),
        }
    }

    fn key(&self, pod: PodId) -> WorkloadKey {
        let p = self.cluster.pod(pod);
        (
            self.cluster.namespace(p.namespace).name.clone(),
            self.cluster.workload(pod),
        )
    }

    /// The workload's selector, and whether it selects exactly its pods.
    fn selector(&mut self, w: &WorkloadKey) -> (Labels, bool) {
        if let Some(s) = self.selectors.get(w) {
            return s.clone();
        }
        let s = stable_selector(self.cluster, &self.pods[w]);
        self.selectors.insert(w.clone(), s.clone());
        s
    }

    fn pod_peer(&mut self, pod: PodId) -> Peer {
        let w = self.key(pod);
        let (selector, _) = self.selector(&w);
        Peer::Pods {
            what: format!("{}/{}/{}", w.0, w.1.kind, w.1.name),
            namespace: w.0,
            selector,
        }
    }

    /// The peer an address stands for, seen from `local` (a pod of the workload getting
    /// the rule); `None` when no rule is needed (the pod's own node).
    fn peer(&mut self, ip: IpAddr, at: Option<Timestamp>, local: PodId) -> Option<Peer> {
        match endpoint(self.cluster, ip, at) {
            ModelEndpoint::Pod(p) if !self.cluster.pod(p).host_network => Some(self.pod_peer(p)),
            ModelEndpoint::Pod(p) => self.node_peer(ip, self.cluster.pod(p).node, local),
            ModelEndpoint::Node(n) => self.node_peer(ip, Some(n), local),
            ModelEndpoint::External(_) => Some(Peer::Block {
                cidr: host_net(ip, self.options.cidr_aggregate),
                except: Vec::new(),
                note: None,
            }),
        }
    }

    fn node_peer(
        &self,
        ip: IpAddr,
        node: Option<crate::cluster::NodeId>,
        local: PodId,
    ) -> Option<Peer> {
        if node.is_some() && self.cluster.pod(local).node == node {
            return None;
        }
        let name = node.map(|n| self.cluster.node(n).name.clone());
        Some(Peer::Block {
            cidr: IpNet::from(ip),
            except: Vec::new(),
            note: Some(match name {
                Some(n) => format!("{ip} is node {n} (host network: kubelet, hostNetwork pods)"),
                None => format!("{ip} is a node address"),
            }),
        })
    }

    fn add(&mut self, w: WorkloadKey, dir: Direction, peer: Peer, port: Port, r: &FlowRecord) {
        let edges = self.edges.entry(w).or_default();
        let side = match dir {
            Direction::Ingress => &mut edges.ingress,
            Direction::Egress => &mut edges.egress,
        };
        side.entry(peer)
            .or_default()
            .entry(port)
            .or_default()
            .add(r);
    }

    /// One record that got through: an ingress edge for the responder's workload and an
    /// egress edge for the initiator's.
    fn record(&mut self, r: &FlowRecord) {
        let at = r.first_seen;
        let dst_port = r.dst.port.unwrap_or(0);
        // The responders: backends behind a service address, else the address itself.
        let targets: Vec<(IpAddr, u16)> = if r.dst.identity.backends.is_empty() {
            vec![(r.dst.ip, dst_port)]
        } else {
            r.dst
                .identity
                .backends
                .iter()
                .map(|b| (b.ip, b.port.unwrap_or(dst_port)))
                .collect()
        };
        let src = match endpoint(self.cluster, r.src.ip, at) {
            ModelEndpoint::Pod(p) if !self.cluster.pod(p).host_network => Some(p),
            _ => None,
        };
        let service = r.dst.identity.service.clone();
        for (ip, port) in targets {
            let dst = match endpoint(self.cluster, ip, at) {
                ModelEndpoint::Pod(p) if !self.cluster.pod(p).host_network => Some(p),
                _ => None,
            };
            if let (Some(s), Some(d)) = (src, dst) {
                if s == d {
                    continue;
                }
            }
            if let Some(d) = dst {
                if let Some(peer) = self.peer(r.src.ip, at, d) {
                    let key = self.key(d);
                    self.add(key, Direction::Ingress, peer, (r.protocol, port), r);
                }
            }
            if let Some(s) = src {
                let peer = match (&service, dst) {
                    // DNS: the service's own selector, which is what the DNS pods carry.
                    (Some(svc), Some(_)) if port == 53 || dst_port == 53 => {
                        self.service_peer(svc).or_else(|| self.peer(ip, at, s))
                    }
                    // Services without pods (the API server): their endpoints' addresses.
                    (Some(svc), None) => Some(Peer::Block {
                        cidr: IpNet::from(ip),
                        except: Vec::new(),
                        note: Some(format!("{ip} is an endpoint of service {svc}")),
                    }),
                    _ => self.peer(ip, at, s),
                };
                if let Some(peer) = peer {
                    let key = self.key(s);
                    self.add(key, Direction::Egress, peer, (r.protocol, port), r);
                }
            }
        }
    }

    /// `namespace/name`'s pods by the service's `spec.selector`.
    fn service_peer(&self, svc: &str) -> Option<Peer> {
        let (ns, name) = svc.split_once('/')?;
        let s = self
            .cluster
            .services()
            .iter()
            .find(|s| s.name == name && self.cluster.namespace(s.namespace).name == ns)?;
        let selector = s.selector.clone().filter(|sel| !sel.is_empty())?;
        Some(Peer::Pods {
            namespace: ns.to_owned(),
            selector,
            what: format!("service {svc}"),
        })
    }
}

fn endpoint(cluster: &Cluster, ip: IpAddr, at: Option<Timestamp>) -> ModelEndpoint {
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

/// Suggests policies for the observed `records` (attributed, so service flows carry their
/// backends): every record [`is_traffic`].
pub fn suggest(cluster: &Cluster, records: &[FlowRecord], options: &Options) -> Suggestion {
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
    let mut out = Suggestion {
        flows_used: used,
        ..Suggestion::default()
    };
    let namespaces: BTreeSet<&String> = edges
        .keys()
        .map(|(ns, _)| ns)
        .filter(|ns| wanted(ns))
        .collect();
    for ns in namespaces {
        out.policies.push(default_deny(ns));
        if options.cilium {
            out.cilium.push(cilium::default_deny(ns));
        }
        for (w, e) in edges.iter().filter(|((n, _), _)| n == ns) {
            let (selector, exact) = s.selector(w);
            if !exact {
                out.inexact
                    .push(format!("{}/{}/{}", w.0, w.1.kind, w.1.name));
            }
            let (ingress, egress) = (groups(&e.ingress, options), groups(&e.egress, options));
            let mut np = workload_policy(w, selector.clone(), &ingress, &egress, options);
            let notes = notes(&[&ingress, &egress]);
            if !notes.is_empty() {
                let text = notes.into_iter().collect::<Vec<_>>().join("; ");
                np.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ADDRESS_NOTES.to_owned(), text);
            }
            if options.cilium {
                out.cilium.push(cilium::policy(
                    &w.0,
                    &np.metadata,
                    &selector,
                    &ingress,
                    &egress,
                ));
            }
            out.policies.push(np);
        }
    }
    out
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            "flowpol".to_owned(),
        )])),
        annotations: Some(BTreeMap::from([(
            GENERATED_BY.to_owned(),
            "flowpol suggest".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

/// `default-deny` in `namespace`: every pod isolated for both directions.
pub fn default_deny(namespace: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(namespace, "default-deny"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// A DNS-1123 name for the workload's policy: `<name>` for Deployments, StatefulSets and
/// DaemonSets, `<kind>-<name>` for the rest (a bare pod, a CronJob).
fn policy_name(w: &Workload) -> String {
    let base = match w.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" => w.name.clone(),
        kind => format!("{}-{}", kind.to_lowercase(), w.name),
    };
    crate::cluster::object_name(&format!("allow-{base}"))
}

fn workload_policy(
    w: &WorkloadKey,
    selector: Labels,
    ingress: &[Group],
    egress: &[Group],
    options: &Options,
) -> NetworkPolicy {
    let mut annotations = BTreeMap::new();
    let ingress = rules(&w.0, ingress, options, Direction::Ingress, &mut annotations);
    let egress = rules(&w.0, egress, options, Direction::Egress, &mut annotations);
    let mut m = meta(&w.0, &policy_name(&w.1));
    m.annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(annotations);
    NetworkPolicy {
        metadata: m,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(
                ingress
                    .into_iter()
                    .map(|(peers, ports)| NetworkPolicyIngressRule { from: peers, ports })
                    .collect(),
            ),
            egress: Some(
                egress
                    .into_iter()
                    .map(|(peers, ports)| NetworkPolicyEgressRule { to: peers, ports })
                    .collect(),
            ),
        }),
    }
}

/// One rule: peers that share a port set, and the flows that justify it.
struct Group {
    ports: BTreeSet<Port>,
    peers: Vec<Peer>,
    explain: Vec<String>,
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

/// Rules as NetworkPolicy parts; explanations and address notes go to `annotations`.
fn rules(
    own_ns: &str,
    groups: &[Group],
    options: &Options,
    dir: Direction,
    annotations: &mut BTreeMap<String, String>,
) -> Vec<RuleParts> {
    let dir_name = match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if options.explain {
                annotations.insert(
                    format!("{EXPLAIN_PREFIX}{dir_name}-{i}"),
                    g.explain.join("; "),
                );
            }
            let peers = g.peers.iter().map(|p| to_peer(own_ns, p)).collect();
            (Some(peers), Some(port_list(&g.ports)))
        })
        .collect()
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// The notes of a workload's address peers (nodes, API server endpoints).
fn notes(groups: &[&[Group]]) -> BTreeSet<String> {
    groups
        .iter()
        .flat_map(|g| g.iter())
        .flat_map(|g| &g.peers)
        .filter_map(|p| match p {
            Peer::Block { note: Some(n), .. } => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn describe(peer: &Peer) -> String {
    match peer {
        Peer::Pods { what, .. } => what.clone(),
        Peer::Block { cidr, .. } => cidr.to_string(),
    }
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

fn to_peer(own_ns: &str, peer: &Peer) -> NetworkPolicyPeer {
    match peer {
        Peer::Pods {
            namespace,
            selector,
            ..
        } => NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            namespace_selector: (namespace != own_ns).then(|| LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    namespace.clone(),
                )])),
                ..LabelSelector::default()
            }),
            ip_block: None,
        },
        Peer::Block { cidr, except, .. } => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_string(),
                except: (!except.is_empty())
                    .then(|| except.iter().map(|e| e.to_string()).collect()),
            }),
            ..NetworkPolicyPeer::default()
        },
    }
}

/// Ports as NetworkPolicyPorts; runs of three or more consecutive ports become one range.
fn port_list(ports: &BTreeSet<Port>) -> Vec<NetworkPolicyPort> {
    let mut out = Vec::new();
    let mut iter = ports.iter().peekable();
    while let Some(&(proto, start)) = iter.next() {
        let mut end = start;
        while let Some(&&(p, n)) = iter.peek() {
            if p == proto && end.checked_add(1) == Some(n) {
                end = n;
                iter.next();
            } else {
                break;
            }
        }
        let one = |n: u16| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(n))),
            protocol: Some(proto.to_string()),
            end_port: None,
        };
        if end - start >= 2 {
            out.push(NetworkPolicyPort {
                end_port: Some(i32::from(end)),
                ..one(start)
            });
        } else {
            out.extend((start..=end).map(one));
        }
    }
    out
}

/// Objects as kubectl-appliable multi-document YAML.
pub fn to_yaml<T: serde::Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(|p| serde_yaml::to_string(p).expect("a policy serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// CiliumNetworkPolicy rendering of the same rules.
mod cilium {
    use serde_json::{json, Map, Value};

    use super::{Group, Labels, Peer};
    use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};

    const NS_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

    fn meta(m: &ObjectMeta) -> Value {
        serde_json::to_value(m).expect("metadata serializes")
    }

    /// Every endpoint of the namespace: an empty rule turns default deny on.
    pub fn default_deny(ns: &str) -> Value {
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "flowpol"}},
            "spec": {"endpointSelector": {}, "ingress": [{}], "egress": [{}]},
        })
    }

    pub fn policy(
        ns: &str,
        m: &ObjectMeta,
        selector: &Labels,
        ingress: &[Group],
        egress: &[Group],
    ) -> Value {
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": meta(m),
            "spec": {
                "endpointSelector": {"matchLabels": selector},
                "ingress": rules(ns, ingress, "from"),
                "egress": rules(ns, egress, "to"),
            },
        })
    }

    /// One Cilium rule per kind of peer in a group (endpoints, entities, CIDRs), each with
    /// the group's ports.
    pub(super) fn rules(ns: &str, groups: &[Group], dir: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for g in groups {
            // The same runs as the NetworkPolicy: three or more consecutive ports, one range.
            let ports: Vec<Value> = super::port_list(&g.ports)
                .into_iter()
                .map(|p| {
                    let number = match p.port {
                        Some(IntOrString::Int(n)) => n.to_string(),
                        Some(IntOrString::String(s)) => s,
                        None => "0".into(),
                    };
                    let mut v = json!({"port": number, "protocol": p.protocol});
                    if let Some(end) = p.end_port {
                        v["endPort"] = json!(end);
                    }
                    v
                })
                .collect();
            let dns = g.ports.iter().any(|(_, p)| *p == 53);
            let (mut endpoints, mut entities, mut cidrs) = (Vec::new(), Vec::new(), Vec::new());
            for p in &g.peers {
                match p {
                    Peer::Pods {
                        namespace,
                        selector,
                        ..
                    } => {
                        let mut labels: Map<String, Value> = selector
                            .iter()
                            .map(|(k, v)| (k.clone(), json!(v)))
                            .collect();
                        if namespace != ns {
                            labels.insert(NS_LABEL.into(), json!(namespace));
                        }
                        endpoints.push(json!({"matchLabels": labels}));
                    }
                    Peer::Block { note: Some(n), .. } if n.contains("default/kubernetes") => {
                        entities.push(json!("kube-apiserver"))
                    }
                    Peer::Block { note: Some(_), .. } => {
                        entities.push(json!("host"));
                        entities.push(json!("remote-node"));
                    }
                    Peer::Block { cidr, except, .. } => {
                        let mut c = json!({"cidr": cidr.to_string()});
                        if !except.is_empty() {
                            c["except"] =
                                json!(except.iter().map(|e| e.to_string()).collect::<Vec<_>>());
                        }
                        cidrs.push(c);
                    }
                }
            }
            entities.dedup();
            for (key, peers) in [
                ("Endpoints", endpoints),
                ("Entities", entities),
                ("CIDRSet", cidrs),
            ] {
                if peers.is_empty() {
                    continue;
                }
                let mut to_ports = json!([{"ports": ports}]);
                if key == "Endpoints" && dns && dir == "to" {
                    // DNS through Cilium's proxy, so later rules can name domains.
                    to_ports[0]["rules"] = json!({"dns": [{"matchPattern": "*"}]});
                }
                out.push(json!({format!("{dir}{key}"): peers, "toPorts": to_ports}));
            }
        }
        out
    }
}

/// Which of `records` that are traffic ([`is_traffic`]) a policy set denies.
pub fn denied<'r>(
    engine: &crate::policy::engine::Engine,
    records: &'r [FlowRecord],
) -> Vec<&'r FlowRecord> {
    let traffic: Vec<&FlowRecord> = records.iter().filter(|r| is_traffic(r)).collect();
    let judged = crate::eval::evaluate(engine, traffic.iter().map(|r| (*r).clone()).collect());
    traffic
        .into_iter()
        .zip(judged)
        .filter(|(_, e)| e.policy_verdict == "deny")
        .map(|(r, _)| r)
        .collect()
}

/// Combinations (source workload, destination workload, port, protocol) that the policies
/// allow between the workloads of `namespaces` but that were not observed: the excess of a
/// suggestion. Ports are those the destination listens on or was reached on. In order of
/// destination, then source.
pub fn excess(
    engine: &crate::policy::engine::Engine,
    records: &[FlowRecord],
    namespaces: &BTreeSet<String>,
) -> Vec<(String, String, u16, Protocol)> {
    let cluster = engine.cluster();
    let mut reps: BTreeMap<WorkloadKey, PodId> = BTreeMap::new();
    for id in cluster.pod_ids() {
        let p = cluster.pod(id);
        let ns = &cluster.namespace(p.namespace).name;
        if live(cluster, id) && namespaces.contains(ns) {
            reps.entry((ns.clone(), cluster.workload(id))).or_insert(id);
        }
    }
    let name = |w: &WorkloadKey| format!("{}/{}/{}", w.0, w.1.kind, w.1.name);
    let key_of = |ip: IpAddr, at: Option<Timestamp>| match endpoint(cluster, ip, at) {
        ModelEndpoint::Pod(p) => Some((
            cluster.namespace(cluster.pod(p).namespace).name.clone(),
            cluster.workload(p),
        )),
        _ => None,
    };
    let mut observed: BTreeSet<(WorkloadKey, WorkloadKey, u16, Protocol)> = BTreeSet::new();
    let mut reached: BTreeMap<WorkloadKey, BTreeSet<Port>> = BTreeMap::new();
    for r in records.iter().filter(|r| is_traffic(r)) {
        let targets: Vec<(IpAddr, u16)> = if r.dst.identity.backends.is_empty() {
            vec![(r.dst.ip, r.dst.port.unwrap_or(0))]
        } else {
            r.dst
                .identity
                .backends
                .iter()
                .map(|b| (b.ip, b.port.unwrap_or(0)))
                .collect()
        };
        for (ip, port) in targets {
            if let (Some(s), Some(d)) = (key_of(r.src.ip, r.first_seen), key_of(ip, r.first_seen)) {
                reached
                    .entry(d.clone())
                    .or_default()
                    .insert((r.protocol, port));
                observed.insert((s, d, port, r.protocol));
            }
        }
    }
    let mut out = Vec::new();
    for (dw, &d) in &reps {
        let mut ports: BTreeSet<Port> = cluster
            .pod(d)
            .ports
            .iter()
            .map(|c| (c.protocol, c.port))
            .collect();
        ports.extend(reached.get(dw).into_iter().flatten().copied());
        for (sw, &s) in &reps {
            if sw == dw {
                continue;
            }
            let (Some(&src), Some(&dst)) = (cluster.pod(s).ips.first(), cluster.pod(d).ips.first())
            else {
                continue;
            };
            for &(protocol, port) in &ports {
                let c = crate::policy::engine::Connection {
                    src,
                    dst,
                    port,
                    protocol,
                    at: None,
                };
                if engine.allows(&c)
                    && !observed.contains(&(sw.clone(), dw.clone(), port, protocol))
                {
                    out.push((name(sw), name(dw), port, protocol));
                }
            }
        }
    }
    out
}

/// Namespaces the suggestion writes policies for.
pub fn namespaces_of(s: &Suggestion) -> BTreeSet<String> {
    s.policies
        .iter()
        .filter_map(|p| p.metadata.namespace.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::snapshot;

    fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
        )
    }

    fn cluster(pods: &[String]) -> Cluster {
        snapshot::parse("t", &pods.concat()).unwrap().cluster
    }

    fn selector_of(c: &Cluster, names: &[&str]) -> (Labels, bool) {
        let ids: Vec<PodId> = names
            .iter()
            .map(|n| c.pod_by_name("a", n).unwrap())
            .collect();
        stable_selector(c, &ids)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_use_stable_labels_that_select_exactly_the_workload() {
        let c = cluster(&[
            pod("a", "prod-1", "10.0.0.1", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: prod, pod-template-hash: h1}"),
            pod("a", "prod-2", "10.0.0.2", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: prod, pod-template-hash: h2}"),
            pod("a", "canary", "10.0.0.3", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: canary}"),
            pod("a", "old", "10.0.0.4", "{app: legacy, pod-template-hash: h3, tier: x}"),
        ]);
        assert_eq!(
            selector_of(&c, &["prod-1", "prod-2"]),
            (
                labels(&[
                    ("app.kubernetes.io/instance", "prod"),
                    ("app.kubernetes.io/name", "api")
                ]),
                true
            ),
            "name alone would also select the canary"
        );
        assert_eq!(
            selector_of(&c, &["old"]),
            (labels(&[("app", "legacy")]), true)
        );
    }

    #[test]
    fn twins_cannot_be_told_apart_and_say_so() {
        let c = cluster(&[
            pod("a", "one", "10.0.0.1", "{app: same}"),
            pod("a", "two", "10.0.0.2", "{app: same}"),
        ]);
        assert_eq!(
            selector_of(&c, &["one"]),
            (labels(&[("app", "same")]), false)
        );
    }

    #[test]
    fn three_or_more_consecutive_ports_become_a_range() {
        let ports: BTreeSet<Port> = [80, 81, 82, 90, 91]
            .into_iter()
            .map(|p| (Protocol::TCP, p))
            .chain([(Protocol::UDP, 83)])
            .collect();
        let got: Vec<(Option<i32>, Option<i32>, String)> = port_list(&ports)
            .into_iter()
            .map(|p| {
                let n = match p.port {
                    Some(IntOrString::Int(n)) => Some(n),
                    _ => None,
                };
                (n, p.end_port, p.protocol.unwrap())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(80), Some(82), "TCP".into()),
                (Some(90), None, "TCP".into()),
                (Some(91), None, "TCP".into()),
                (Some(83), None, "UDP".into()),
            ]
        );
    }

    #[test]
    fn many_outside_addresses_on_one_port_become_the_internet_without_private_ranges() {
        let mut edges: BTreeMap<Peer, BTreeMap<Port, Evidence>> = BTreeMap::new();
        for i in 1..=5u8 {
            let peer = Peer::Block {
                cidr: IpNet::from(IpAddr::from([198, 51, 100, i])),
                except: Vec::new(),
                note: None,
            };
            let ev = Evidence {
                count: 1,
                first: None,
                last: None,
            };
            edges
                .entry(peer)
                .or_default()
                .insert((Protocol::TCP, 443), ev);
        }
        let mut few = edges.clone();
        widen_to_internet(&mut few, 5);
        assert_eq!(few.len(), 5, "at the threshold: still one /32 each");
        widen_to_internet(&mut edges, 4);
        let (peer, ports) = edges.iter().next().unwrap();
        assert_eq!(edges.len(), 1);
        assert!(matches!(peer, Peer::Block { cidr, except, .. }
            if cidr.to_string() == "0.0.0.0/0" && except.iter().any(|e| e.to_string() == "10.0.0.0/8")));
        assert_eq!(ports[&(Protocol::TCP, 443)].count, 5);
    }

    fn with_port(ns: &str, name: &str, ip: &str, labels: &str, port: u16) -> String {
        pod(ns, name, ip, labels).replace(
            "containers: [{name: c}]",
            &format!("containers: [{{name: c, ports: [{{containerPort: {port}}}]}}]"),
        )
    }

    fn flow(src: &str, dst: &str, port: u16) -> FlowRecord {
        FlowRecord::new(
            Protocol::TCP,
            crate::record::Endpoint::new(src.parse().unwrap(), None),
            crate::record::Endpoint::new(dst.parse().unwrap(), Some(port)),
            Some(crate::record::Verdict::Established),
        )
    }

    fn engine_of<'c>(c: &'c Cluster, s: &Suggestion) -> crate::policy::engine::Engine<'c> {
        let compiled = crate::policy::compile_all(&s.policies).unwrap();
        crate::policy::engine::Engine::new(c, compiled)
    }

    /// The excess, computed by hand: a canary shares its labels with the observed api pod,
    /// so whatever the api pod may do, the canary may too.
    #[test]
    fn excess_is_what_shared_labels_open_beyond_the_observed() {
        let c = cluster(&[
            with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
            with_port("a", "api-1", "10.0.0.2", "{app: api}", 8080),
            with_port("a", "api-canary", "10.0.0.3", "{app: api}", 8080),
            with_port("a", "db-1", "10.0.0.4", "{app: db}", 5432),
        ]);
        let flows = [
            flow("10.0.0.1", "10.0.0.2", 8080),
            flow("10.0.0.2", "10.0.0.4", 5432),
        ];
        let s = suggest(&c, &flows, &Options::default());
        assert_eq!(s.inexact, vec!["a/Pod/api-1".to_owned()]);
        let engine = engine_of(&c, &s);
        assert!(denied(&engine, &flows).is_empty());
        let got = excess(&engine, &flows, &namespaces_of(&s));
        assert_eq!(
            got,
            vec![
                (
                    "a/Pod/web-1".into(),
                    "a/Pod/api-canary".into(),
                    8080,
                    Protocol::TCP
                ),
                (
                    "a/Pod/api-canary".into(),
                    "a/Pod/db-1".into(),
                    5432,
                    Protocol::TCP
                ),
            ]
        );
        // With workload-granular labels there is none.
        let c = cluster(&[
            with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
            with_port("a", "api-1", "10.0.0.2", "{app: api, track: stable}", 8080),
            with_port(
                "a",
                "api-canary",
                "10.0.0.3",
                "{app: api, track: canary}",
                8080,
            ),
            with_port("a", "db-1", "10.0.0.4", "{app: db}", 5432),
        ]);
        let s = suggest(&c, &flows, &Options::default());
        let engine = engine_of(&c, &s);
        assert_eq!(excess(&engine, &flows, &namespaces_of(&s)), Vec::new());
    }

    #[test]
    fn cilium_rules_keep_port_ranges() {
        let g = Group {
            ports: [80, 81, 82, 443]
                .into_iter()
                .map(|p| (Protocol::TCP, p))
                .collect(),
            peers: vec![Peer::Block {
                cidr: "198.51.100.7/32".parse().unwrap(),
                except: Vec::new(),
                note: None,
            }],
            explain: Vec::new(),
        };
        let rules = cilium::rules("a", &[g], "to");
        assert_eq!(
            rules,
            vec![serde_json::json!({
                "toCIDRSet": [{"cidr": "198.51.100.7/32"}],
                "toPorts": [{"ports": [
                    {"port": "80", "endPort": 82, "protocol": "TCP"},
                    {"port": "443", "protocol": "TCP"},
                ]}],
            })]
        );
    }

    #[test]
    fn policy_names_are_dns_labels() {
        let w = |kind: &str, name: &str| Workload {
            kind: kind.into(),
            name: name.into(),
        };
        assert_eq!(policy_name(&w("Deployment", "web")), "allow-web");
        assert_eq!(
            policy_name(&w("CronJob", "Nightly_Report")),
            "allow-cronjob-nightly-report"
        );
    }
}
