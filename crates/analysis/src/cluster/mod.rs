//! The cluster model: namespaces, pods, nodes and services, as the policy engine, verify and
//! suggest need them. Built from an offline snapshot ([`snapshot`]) or live from kube watchers
//! (flowpol-kube); both fill one [`objects::Objects`] store. The model itself is pure data with
//! indexes, no I/O.
//!
//! Which pods take part: a pod that has finished (phase `Succeeded` or `Failed`) no longer
//! holds its IP, which may already belong to another pod, so it is not an endpoint. A pod
//! without an IP (still `Pending`) cannot be reached by address either. Both stay in the
//! model (policies may still select them) but are left out of address lookups and of the
//! reachability matrix. hostNetwork pods are reached at their node's address, so an address
//! they share with their node resolves to the node.
mod builder;
pub mod objects;
pub mod snapshot;
mod workload;

pub use builder::ClusterBuilder;
pub use workload::{OwnerRef, Workload, WorkloadKey, WorkloadKind};

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use chrono::{DateTime, Utc};

use crate::record::Protocol;

pub type Labels = BTreeMap<String, String>;

/// The labels workload controllers put on their pods, one value per rollout, revision or
/// pod (never the workload's own).
pub const CONTROLLER_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
];

/// Something labels can be looked up in: a [`Labels`] map or a pod's compact [`LabelSet`].
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A pod's labels, compact: sorted pairs in one allocation, where a map of four labels
/// takes a tree node sized for eleven. Shared (`Arc`) by pods of one template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    /// An interned-ready shared set.
    pub fn shared(labels: Labels) -> Arc<LabelSet> {
        Arc::new(LabelSet::from(labels))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn to_map(&self) -> Labels {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<Labels> for LabelSet {
    fn from(labels: Labels) -> Self {
        // BTreeMap iterates in key order: already sorted.
        LabelSet(
            labels
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl LabelLookup for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}
pub type Timestamp = DateTime<Utc>;

/// The label every namespace carries (added by the API server since 1.21); added here when a
/// snapshot lacks it, so `namespaceSelector`s on it work as they do in a cluster.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodPhase {
    Pending,
    #[default]
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: NsId,
    /// Shared with the objects store.
    pub name: Arc<str>,
    pub uid: Arc<str>,
    /// Shared with the objects store and with pods of the same template.
    pub labels: Arc<LabelSet>,
    /// Shared by the pods of one controller.
    pub owner: Option<Arc<OwnerRef>>,
    /// `metadata.creationTimestamp`: from when the pod may hold its addresses.
    pub created: Option<Timestamp>,
    /// When the pod was seen gone (watchers keep deleted pods for a while, for flows seen
    /// while it still existed); `None` while it exists.
    pub gone: Option<Timestamp>,
    /// `status.podIPs` (one per family).
    pub ips: Vec<IpAddr>,
    pub node: Option<NodeId>,
    pub host_network: bool,
    pub phase: PodPhase,
    /// Container ports of all containers (named ports resolve against these); shared like
    /// the labels.
    pub ports: Arc<[ContainerPort]>,
}

impl Pod {
    /// Whether the pod holds its addresses now: it has them, exists and has not finished.
    pub fn is_active(&self) -> bool {
        !self.ips.is_empty()
            && self.gone.is_none()
            && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// Everything the builder needs to add a pod; `..NewPod::default()` for the rest.
#[derive(Clone, Debug, Default)]
pub struct NewPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub labels: Arc<LabelSet>,
    pub ips: Vec<IpAddr>,
    pub node: Option<&'a str>,
    pub host_network: bool,
    pub phase: PodPhase,
    pub ports: Arc<[ContainerPort]>,
    /// Shared by the pods of one controller.
    pub owner: Option<Arc<OwnerRef>>,
    pub created: Option<Timestamp>,
    pub gone: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// Numeric or named target port (`None`: same as `port`).
    pub target: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: NsId,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` for services without one (endpoints managed by hand).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// From the service's EndpointSlices: addresses and the ports they serve.
    pub endpoints: Vec<EndpointGroup>,
}

/// One EndpointSlice's worth of backends: every address serves every port of the group.
/// (Named target ports can resolve to different numbers on different pods; the EndpointSlice
/// controller then writes one slice per resolution.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointGroup {
    pub addresses: Vec<IpAddr>,
    /// (port name, number, protocol): the name is the service port's name.
    pub ports: Vec<(Option<String>, u16, Protocol)>,
}

impl Service {
    /// `namespace/name`
    pub fn id(&self, cluster: &Cluster) -> String {
        format!("{}/{}", cluster.namespace(self.namespace).name, self.name)
    }

    /// The backends (address, target port) behind service port `port`/`protocol`.
    pub fn backends(&self, port: u16, protocol: Protocol) -> Vec<(IpAddr, u16)> {
        let Some(sp) = self
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for g in &self.endpoints {
            // Slices name their ports after the service ports.
            let target = g
                .ports
                .iter()
                .find(|(name, _, proto)| *proto == protocol && *name == sp.name);
            if let Some((_, number, _)) = target {
                out.extend(g.addresses.iter().map(|a| (*a, *number)));
            }
        }
        out
    }
}

/// A port as policies and services name it: a number or a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// What an address stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressHolder {
    Pod(PodId),
    Node(NodeId),
    External(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// An address held by `who` from `from` (None: since before anything we know) until `until`
/// (None: still).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tenure {
    from: Option<Timestamp>,
    until: Option<Timestamp>,
    who: AddressHolder,
}

impl Tenure {
    fn covers(&self, t: Timestamp) -> bool {
        self.from.is_none_or(|f| f <= t) && self.until.is_none_or(|u| t < u)
    }
}

/// An address's tenures, sorted by start. Most addresses have had one holder: it is kept in
/// the map's entry, with no allocation of its own to reach (two lookups per verdict).
#[derive(Clone, Debug)]
enum Tenures {
    One(Tenure),
    Many(Box<[Tenure]>),
}

impl Tenures {
    fn as_slice(&self) -> &[Tenure] {
        match self {
            Tenures::One(t) => std::slice::from_ref(t),
            Tenures::Many(ts) => ts,
        }
    }

    fn push(&mut self, tenure: Tenure) {
        let mut all = self.as_slice().to_vec();
        all.push(tenure);
        all.sort_by_key(|t| t.from);
        *self = Tenures::Many(all.into_boxed_slice());
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("{kind} {name}: address {ip} is already held by {other}")]
    AddressClash {
        kind: &'static str,
        name: String,
        ip: IpAddr,
        other: String,
    },
    #[error("{kind} {name} is declared twice")]
    Duplicate { kind: &'static str, name: String },
}

/// The model with its indexes. Build it with [`ClusterBuilder`].
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    services: Vec<Service>,
    ns_by_name: HashMap<String, NsId>,
    node_by_name: HashMap<String, NodeId>,
    /// Who held each address, and when; sorted by start.
    by_ip: HashMap<IpAddr, Tenures>,
    pods_by_ns: Vec<Vec<PodId>>,
    service_by_ip: HashMap<IpAddr, ServiceId>,
    /// Controller of each ReplicaSet and Job, by namespace and the owned object.
    owners: HashMap<(NsId, OwnerRef), OwnerRef>,
}

impl Cluster {
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn services(&self) -> &[Service] {
        &self.services
    }
    pub fn namespace(&self, id: NsId) -> &Namespace {
        &self.namespaces[id.0 as usize]
    }
    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize]
    }
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
    pub fn namespace_id(&self, name: &str) -> Option<NsId> {
        self.ns_by_name.get(name).copied()
    }
    pub fn pods_in(&self, ns: NsId) -> &[PodId] {
        &self.pods_by_ns[ns.0 as usize]
    }
    pub fn pod_ids(&self) -> impl Iterator<Item = PodId> + '_ {
        (0..self.pods.len() as u32).map(PodId)
    }
    /// `namespace/name` of a pod.
    pub fn pod_name(&self, id: PodId) -> String {
        let p = self.pod(id);
        format!("{}/{}", self.namespace(p.namespace).name, p.name)
    }
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<PodId> {
        let ns = self.namespace_id(namespace)?;
        self.pods_in(ns)
            .iter()
            .copied()
            .find(|id| &*self.pod(*id).name == name)
    }

    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[id.0 as usize]
    }

    /// What `ip` stands for now: an active pod, a node (or hostNetwork pod), or an outside
    /// address.
    pub fn endpoint(&self, ip: IpAddr) -> AddressHolder {
        self.by_ip
            .get(&canonical(ip))
            .and_then(|ts| ts.as_slice().iter().rev().find(|t| t.until.is_none()))
            .map(|t| t.who)
            .unwrap_or(AddressHolder::External(ip))
    }

    /// What `ip` stood for at `t`: the pod that held it then, also one deleted since, so a
    /// reused address is not blamed on its new holder. Of overlapping tenures the one that
    /// started last wins.
    pub fn endpoint_at(&self, ip: IpAddr, t: Timestamp) -> AddressHolder {
        self.by_ip
            .get(&canonical(ip))
            .and_then(|ts| {
                ts.as_slice()
                    .iter()
                    .filter(|x| x.covers(t))
                    .max_by_key(|x| x.from)
            })
            .map(|x| x.who)
            .unwrap_or(AddressHolder::External(ip))
    }

    /// The service whose cluster IP is `ip`.
    pub fn service_at(&self, ip: IpAddr) -> Option<ServiceId> {
        self.service_by_ip.get(&canonical(ip)).copied()
    }

    /// The pod's workload: its controller, followed from a ReplicaSet to its Deployment and
    /// from a Job to its CronJob; the pod itself when nothing owns it. Without the
    /// ReplicaSet object (a snapshot of pods only), a ReplicaSet named `<name>-<hash>` of a
    /// pod labelled `pod-template-hash: <hash>` is taken to belong to Deployment `<name>`.
    pub fn workload(&self, id: PodId) -> Workload {
        let pod = self.pod(id);
        let Some(owner) = &pod.owner else {
            return Workload {
                kind: WorkloadKind::Pod,
                name: pod.name.to_string(),
            };
        };
        if let Some(up) = self.owners.get(&(pod.namespace, OwnerRef::clone(owner))) {
            return up.clone();
        }
        if owner.kind == WorkloadKind::ReplicaSet {
            if let Some(hash) = pod.labels.get("pod-template-hash") {
                if let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}")) {
                    return Workload {
                        kind: WorkloadKind::Deployment,
                        name: deployment.into(),
                    };
                }
            }
        }
        OwnerRef::clone(owner)
    }

    /// The pod's workload with its namespace.
    pub fn workload_key(&self, id: PodId) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace(self.pod(id).namespace).name.clone(),
            workload: self.workload(id),
        }
    }
}

/// `text` as a Kubernetes object name (DNS-1123 subdomain): lowercase, characters other
/// than letters, digits, `-` and `.` as `-`, at most 253 characters.
pub fn object_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
