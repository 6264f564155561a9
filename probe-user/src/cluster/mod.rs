//! The cluster model: namespaces, pods, nodes and services, as the policy engine, verify and
//! suggest need them. Built from an offline snapshot ([`snapshot`]) or, later, from watchers;
//! pure data with indexes, no I/O.
//!
//! Which pods take part: a pod that has finished (phase `Succeeded` or `Failed`) no longer
//! holds its IP, which may already belong to another pod, so it is not an endpoint. A pod
//! without an IP (still `Pending`) cannot be reached by address either. Both stay in the
//! model (policies may still select them) but are left out of address lookups and of the
//! reachability matrix. hostNetwork pods are reached at their node's address, so an address
//! they share with their node resolves to the node.
pub mod snapshot;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::record::Protocol;

pub type Labels = BTreeMap<String, String>;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: NsId,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (one per family).
    pub ips: Vec<IpAddr>,
    pub node: Option<NodeId>,
    pub host_network: bool,
    pub phase: PodPhase,
    /// Container ports of all containers (named ports resolve against these).
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// Whether the pod holds its addresses: it has them and has not finished.
    pub fn is_active(&self) -> bool {
        !self.ips.is_empty() && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
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
}

/// A port as policies and services name it: a number or a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// What an address stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Pod(PodId),
    Node(NodeId),
    External(IpAddr),
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
    by_ip: HashMap<IpAddr, Endpoint>,
    pods_by_ns: Vec<Vec<PodId>>,
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
            .find(|id| self.pod(*id).name == name)
    }

    /// What `ip` stands for: an active pod, a node (or hostNetwork pod), or an outside address.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint {
        self.by_ip
            .get(&canonical(ip))
            .copied()
            .unwrap_or(Endpoint::External(ip))
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Collects objects, then indexes them. Pods name their namespace and node by name; missing
/// namespaces are created with just their name label (a snapshot of pods only is usable).
#[derive(Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    /// Namespaces declared by a Namespace object (not just named by a pod).
    declared: std::collections::HashSet<NsId>,
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn namespace(&mut self, name: &str, mut labels: Labels) -> Result<NsId, ModelError> {
        labels
            .entry(NAMESPACE_NAME_LABEL.into())
            .or_insert_with(|| name.into());
        let id = self.ns_or_implicit(name);
        if !self.declared.insert(id) {
            return Err(ModelError::Duplicate {
                kind: "Namespace",
                name: name.into(),
            });
        }
        // An earlier pod may have created it implicitly: the real labels win.
        self.cluster.namespaces[id.0 as usize].labels = labels;
        Ok(id)
    }

    fn ns_or_implicit(&mut self, name: &str) -> NsId {
        match self.cluster.ns_by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = NsId(self.cluster.namespaces.len() as u32);
                let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]);
                self.cluster.namespaces.push(Namespace {
                    name: name.into(),
                    labels,
                });
                self.cluster.ns_by_name.insert(name.into(), id);
                self.cluster.pods_by_ns.push(Vec::new());
                id
            }
        }
    }

    pub fn node(
        &mut self,
        name: &str,
        ips: Vec<IpAddr>,
        labels: Labels,
    ) -> Result<NodeId, ModelError> {
        if self.cluster.node_by_name.contains_key(name) {
            return Err(ModelError::Duplicate {
                kind: "Node",
                name: name.into(),
            });
        }
        let id = NodeId(self.cluster.nodes.len() as u32);
        for ip in &ips {
            self.claim(*ip, Endpoint::Node(id), "Node", name)?;
        }
        self.cluster.nodes.push(Node {
            name: name.into(),
            ips,
            labels,
        });
        self.cluster.node_by_name.insert(name.into(), id);
        Ok(id)
    }

    /// Adds a pod. `node` names its node (created without addresses if unknown).
    #[allow(clippy::too_many_arguments)]
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: Labels,
        ips: Vec<IpAddr>,
        node: Option<&str>,
        host_network: bool,
        phase: PodPhase,
        ports: Vec<ContainerPort>,
    ) -> Result<PodId, ModelError> {
        let ns = self.ns_or_implicit(namespace);
        let full = format!("{namespace}/{name}");
        if self.cluster.pods_by_ns[ns.0 as usize]
            .iter()
            .any(|p| self.cluster.pods[p.0 as usize].name == name)
        {
            return Err(ModelError::Duplicate {
                kind: "Pod",
                name: full,
            });
        }
        let node = match node {
            Some(n) => Some(match self.cluster.node_by_name.get(n) {
                Some(id) => *id,
                None => self.node(n, Vec::new(), Labels::new())?,
            }),
            None => None,
        };
        let id = PodId(self.cluster.pods.len() as u32);
        let pod = Pod {
            namespace: ns,
            name: name.into(),
            labels,
            ips,
            node,
            host_network,
            phase,
            ports,
        };
        // hostNetwork pods use their node's addresses; finished pods hold none.
        if pod.is_active() && !host_network {
            for ip in &pod.ips {
                self.claim(*ip, Endpoint::Pod(id), "Pod", &full)?;
            }
        }
        self.cluster.pods.push(pod);
        self.cluster.pods_by_ns[ns.0 as usize].push(id);
        Ok(id)
    }

    pub fn service(&mut self, namespace: &str, service: impl FnOnce(NsId) -> Service) -> NsId {
        let ns = self.ns_or_implicit(namespace);
        self.cluster.services.push(service(ns));
        ns
    }

    fn claim(
        &mut self,
        ip: IpAddr,
        who: Endpoint,
        kind: &'static str,
        name: &str,
    ) -> Result<(), ModelError> {
        let ip = canonical(ip);
        if let Some(other) = self.cluster.by_ip.get(&ip) {
            let other = match *other {
                Endpoint::Pod(p) => format!("Pod {}", self.cluster.pod_name(p)),
                Endpoint::Node(n) => format!("Node {}", self.cluster.node(n).name),
                Endpoint::External(_) => String::new(),
            };
            return Err(ModelError::AddressClash {
                kind,
                name: name.into(),
                ip,
                other,
            });
        }
        self.cluster.by_ip.insert(ip, who);
        Ok(())
    }

    pub fn build(self) -> Cluster {
        self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_to_active_pods_nodes_or_outside() {
        let mut b = ClusterBuilder::new();
        b.node("n1", vec!["192.168.1.10".parse().unwrap()], Labels::new())
            .unwrap();
        let web = b
            .pod(
                "a",
                "web",
                Labels::new(),
                vec!["10.0.0.5".parse().unwrap()],
                Some("n1"),
                false,
                PodPhase::Running,
                vec![],
            )
            .unwrap();
        b.pod(
            "a",
            "agent",
            Labels::new(),
            vec!["192.168.1.10".parse().unwrap()],
            Some("n1"),
            true,
            PodPhase::Running,
            vec![],
        )
        .unwrap();
        b.pod(
            "a",
            "done",
            Labels::new(),
            vec!["10.0.0.6".parse().unwrap()],
            Some("n1"),
            false,
            PodPhase::Succeeded,
            vec![],
        )
        .unwrap();
        let c = b.build();
        assert_eq!(c.endpoint("10.0.0.5".parse().unwrap()), Endpoint::Pod(web));
        assert_eq!(
            c.endpoint("::ffff:10.0.0.5".parse().unwrap()),
            Endpoint::Pod(web)
        );
        assert_eq!(
            c.endpoint("192.168.1.10".parse().unwrap()),
            Endpoint::Node(NodeId(0)),
            "hostNetwork pod is its node"
        );
        assert!(
            matches!(
                c.endpoint("10.0.0.6".parse().unwrap()),
                Endpoint::External(_)
            ),
            "finished pods hold no address"
        );
        assert_eq!(
            c.namespace(c.namespace_id("a").unwrap())
                .labels
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn clashing_addresses_are_errors() {
        let mut b = ClusterBuilder::new();
        b.pod(
            "a",
            "x",
            Labels::new(),
            vec!["10.0.0.5".parse().unwrap()],
            None,
            false,
            PodPhase::Running,
            vec![],
        )
        .unwrap();
        let err = b
            .pod(
                "b",
                "y",
                Labels::new(),
                vec!["10.0.0.5".parse().unwrap()],
                None,
                false,
                PodPhase::Running,
                vec![],
            )
            .unwrap_err();
        assert!(err.to_string().contains("a/x"), "{err}");
    }
}
