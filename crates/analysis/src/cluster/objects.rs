//! The cluster's objects as flowpol keeps them: converted once from the k8s-openapi types into
//! compact, stripped structs (no managedFields, annotations, status noise), keyed for updates.
//! Snapshots and watchers both fill an [`Objects`] store; [`Objects::build`] turns it into the
//! indexed [`Cluster`] the engine, attribution, verify and suggest read.
use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1::EndpointSlice, networking::v1::NetworkPolicy},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{
    Cluster, ClusterBuilder, ContainerPort, EndpointGroup, LabelSet, Labels, ModelError, NewPod,
    OwnerRef, PodPhase, PortRef, Service, ServicePort, Timestamp,
};
use crate::record::Protocol;

/// A field that does not hold what the API reference says it must.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn ip(text: &str, field: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| invalid(field, format!("`{text}` is not an IP address")))
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    p.unwrap_or("TCP")
        .parse()
        .map_err(|e: crate::record::UnknownProtocol| invalid(field, e.to_string()))
}

fn port(n: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format!("{n} is not a port (1-65535)")))
}

pub fn name(meta: &ObjectMeta) -> Result<String, FieldError> {
    meta.name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("metadata.name", "is missing"))
}

fn namespace(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// The controller among the owner references.
fn controller(meta: &ObjectMeta) -> Option<OwnerRef> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef {
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
}

fn time(t: &k8s_openapi::jiff::Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObj {
    /// Interned by the store, like the node name.
    pub namespace: Arc<str>,
    /// Shared with the model.
    pub name: Arc<str>,
    pub uid: Arc<str>,
    /// Interned by the store: pods of one template share one copy.
    pub labels: Arc<LabelSet>,
    pub ips: Vec<IpAddr>,
    pub node: Option<Arc<str>>,
    pub host_network: bool,
    pub phase: PodPhase,
    /// Interned like the labels.
    pub ports: Arc<[ContainerPort]>,
    /// Interned like the labels.
    pub owner: Option<Arc<OwnerRef>>,
    pub created: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObj {
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceObj {
    pub cluster_ips: Vec<IpAddr>,
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceObj {
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub group: EndpointGroup,
}

/// One object, converted.
#[derive(Clone, Debug)]
pub enum Object {
    Namespace {
        name: String,
        labels: Labels,
    },
    Node {
        name: String,
        node: NodeObj,
    },
    Pod(PodObj),
    Service {
        namespace: String,
        name: String,
        service: ServiceObj,
    },
    EndpointSlice {
        namespace: String,
        name: String,
        slice: SliceObj,
    },
    /// A ReplicaSet or Job: only its controller matters (Deployment, CronJob).
    Owned {
        namespace: String,
        kind: String,
        name: String,
        owner: Option<OwnerRef>,
    },
    NetworkPolicy(Box<NetworkPolicy>),
}

pub fn namespace_obj(ns: core::Namespace) -> Result<Object, FieldError> {
    Ok(Object::Namespace {
        name: name(&ns.metadata)?,
        labels: labels(&ns.metadata),
    })
}

pub fn node_obj(node: core::Node) -> Result<Object, FieldError> {
    let mut ips = Vec::new();
    for (i, a) in node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            ips.push(ip(&a.address, &format!("status.addresses[{i}].address"))?);
        }
    }
    Ok(Object::Node {
        name: name(&node.metadata)?,
        node: NodeObj {
            ips,
            labels: labels(&node.metadata),
        },
    })
}

pub fn pod_obj(pod: core::Pod) -> Result<Object, FieldError> {
    let name = name(&pod.metadata)?;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    // `podIP` is the first of `podIPs`; both are checked, the list is used when present.
    let single = match status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(ip(text, "status.podIP")?),
        None => None,
    };
    let mut ips = Vec::new();
    for (i, p) in status.pod_ips.iter().flatten().enumerate() {
        ips.push(ip(&p.ip, &format!("status.podIPs[{i}].ip"))?);
    }
    if ips.is_empty() {
        ips.extend(single);
    }
    let phase = match status.phase.as_deref() {
        Some("Pending") => PodPhase::Pending,
        Some("Running") | None => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some(_) => PodPhase::Unknown,
    };
    let mut ports = Vec::new();
    let containers = spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    );
    for (list, c) in containers {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.{list}[{}].ports[{j}]", c.name);
            ports.push(ContainerPort {
                name: p.name.clone(),
                port: port(p.container_port, &format!("{field}.containerPort"))?,
                protocol: protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
            });
        }
    }
    Ok(Object::Pod(PodObj {
        namespace: namespace(&pod.metadata).into(),
        uid: pod.metadata.uid.as_deref().unwrap_or_default().into(),
        labels: LabelSet::shared(labels(&pod.metadata)),
        owner: controller(&pod.metadata).map(Arc::new),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| time(&t.0)),
        name: name.into(),
        ips,
        node: spec.node_name.map(Into::into),
        host_network: spec.host_network.unwrap_or(false),
        phase,
        ports: ports.into(),
    }))
}

pub fn service_obj(svc: core::Service) -> Result<Object, FieldError> {
    let name = name(&svc.metadata)?;
    let spec = svc.spec.unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let listed = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    for (i, text) in listed.iter().enumerate() {
        // Headless services have clusterIP "None".
        if text != "None" && !text.is_empty() {
            cluster_ips.push(ip(text, &format!("spec.clusterIPs[{i}]"))?);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let target = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortRef::Number(port(
                *n,
                &format!("spec.ports[{i}].targetPort"),
            )?)),
            Some(IntOrString::String(s)) => Some(PortRef::Name(s.clone())),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port: port(p.port, &format!("spec.ports[{i}].port"))?,
            protocol: protocol(p.protocol.as_deref(), &format!("spec.ports[{i}].protocol"))?,
            target,
        });
    }
    let selector = spec.selector.map(|s| s.into_iter().collect());
    Ok(Object::Service {
        namespace: namespace(&svc.metadata),
        name,
        service: ServiceObj {
            cluster_ips,
            selector,
            ports,
        },
    })
}

/// Ready (or not known to be unready) addresses and resolved ports of an EndpointSlice.
pub fn slice_obj(slice: EndpointSlice) -> Result<Object, FieldError> {
    let name = name(&slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned();
    let mut addresses = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(ip(a, &format!("endpoints[{i}].addresses[{j}]"))?);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else { continue };
        ports.push((
            p.name.clone().filter(|n| !n.is_empty()),
            port(number, &format!("ports[{i}].port"))?,
            protocol(p.protocol.as_deref(), &format!("ports[{i}].protocol"))?,
        ));
    }
    Ok(Object::EndpointSlice {
        namespace: namespace(&slice.metadata),
        name,
        slice: SliceObj {
            service,
            group: EndpointGroup { addresses, ports },
        },
    })
}

pub fn owned_obj(kind: &str, meta: &ObjectMeta) -> Result<Object, FieldError> {
    Ok(Object::Owned {
        namespace: namespace(meta),
        kind: kind.into(),
        name: name(meta)?,
        owner: controller(meta),
    })
}

/// A NetworkPolicy, kept as written (the policy module checks and compiles it), minus the
/// metadata nothing reads.
pub fn policy_obj(mut np: NetworkPolicy) -> Result<Object, FieldError> {
    let name = name(&np.metadata)?;
    let namespace = namespace(&np.metadata);
    np.metadata = ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        ..ObjectMeta::default()
    };
    Ok(Object::NetworkPolicy(Box::new(np)))
}

type Key = (String, String);
/// A pod's (namespace, name), sharing the stored pod's strings.
pub type PodKey = (Arc<str>, Arc<str>);

/// The kinds flowpol reads, one watcher each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    ReplicaSet,
    Job,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ReplicaSet,
        Kind::Job,
        Kind::NetworkPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every object of the cluster, by kind and key, plus recently deleted pods.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub namespaces: BTreeMap<String, Labels>,
    pub nodes: BTreeMap<String, NodeObj>,
    /// Boxed: the map's nodes then hold pointers, not half-empty room for whole pods.
    pub pods: BTreeMap<PodKey, Box<PodObj>>,
    pub services: BTreeMap<Key, ServiceObj>,
    pub slices: BTreeMap<Key, SliceObj>,
    /// (namespace, kind, name) of ReplicaSets and Jobs -> their controller.
    pub owners: BTreeMap<(String, String, String), OwnerRef>,
    pub policies: BTreeMap<Key, NetworkPolicy>,
    /// Deleted pods (and finished pods' running past) with the time they were seen gone,
    /// oldest first: flows seen while they held their addresses are still attributed to them.
    pub gone: VecDeque<(PodObj, Timestamp)>,
    /// One copy of each distinct label set and port list (pods of a template share them).
    label_sets: HashSet<Arc<LabelSet>>,
    port_lists: HashSet<Arc<[ContainerPort]>>,
    pod_owners: HashSet<Arc<OwnerRef>>,
    /// Namespace and node names pods refer to.
    names: HashSet<Arc<str>>,
}

/// The pooled copy of `value`, added to the pool if new.
fn intern<T: ?Sized + Eq + std::hash::Hash>(pool: &mut HashSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match pool.get(&value) {
        Some(shared) => shared.clone(),
        None => {
            pool.insert(value.clone());
            value
        }
    }
}

/// Whether a pod holds its addresses: finished pods have handed them back.
fn holds_ips(p: &PodObj) -> bool {
    !p.ips.is_empty() && !matches!(p.phase, PodPhase::Succeeded | PodPhase::Failed)
}

impl Objects {
    /// Adds or replaces an object. A pod that stops holding its addresses (it finished, or
    /// they changed) leaves its previous self among the gone, as of `at`.
    pub fn apply(&mut self, o: Object, at: Timestamp) {
        match o {
            Object::Namespace { name, labels } => {
                self.namespaces.insert(name, labels);
            }
            Object::Node { name, node } => {
                self.nodes.insert(name, node);
            }
            Object::Pod(mut p) => {
                p.labels = intern(&mut self.label_sets, p.labels);
                p.ports = intern(&mut self.port_lists, p.ports);
                p.owner = p.owner.map(|o| intern(&mut self.pod_owners, o));
                p.namespace = intern(&mut self.names, p.namespace);
                p.node = p.node.map(|n| intern(&mut self.names, n));
                let released = |old: &PodObj| {
                    holds_ips(old) && (old.uid != p.uid || !holds_ips(&p) || old.ips != p.ips)
                };
                let key = (p.namespace.clone(), p.name.clone());
                let old = self.pods.remove(&key).filter(|o| released(o));
                self.pods.insert(key, Box::new(p));
                if let Some(old) = old {
                    self.gone.push_back((*old, at));
                }
            }
            Object::Service {
                namespace,
                name,
                service,
            } => {
                self.services.insert((namespace, name), service);
            }
            Object::EndpointSlice {
                namespace,
                name,
                slice,
            } => {
                self.slices.insert((namespace, name), slice);
            }
            Object::Owned {
                namespace,
                kind,
                name,
                owner,
            } => match owner {
                Some(owner) => {
                    self.owners.insert((namespace, kind, name), owner);
                }
                None => {
                    self.owners.remove(&(namespace, kind, name));
                }
            },
            Object::NetworkPolicy(np) => {
                let key = (
                    np.metadata.namespace.clone().unwrap_or_default(),
                    np.metadata.name.clone().unwrap_or_default(),
                );
                self.policies.insert(key, *np);
            }
        }
    }

    /// Removes the object of `kind` named `namespace/name` (`name` for cluster-scoped kinds);
    /// a pod moves to the gone, as of `at`.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str, at: Timestamp) {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            Kind::Namespace => {
                self.namespaces.remove(name);
            }
            Kind::Node => {
                self.nodes.remove(name);
            }
            Kind::Pod => {
                if let Some(p) = self.pods.remove(&(namespace.into(), name.into())) {
                    if holds_ips(&p) {
                        self.gone.push_back((*p, at));
                    }
                }
            }
            Kind::Service => {
                self.services.remove(&key);
            }
            Kind::EndpointSlice => {
                self.slices.remove(&key);
            }
            Kind::ReplicaSet | Kind::Job => {
                self.owners
                    .remove(&(key.0, kind.as_str().to_owned(), key.1));
            }
            Kind::NetworkPolicy => {
                self.policies.remove(&key);
            }
        }
    }

    /// Replaces every object of `kind` with `items`, a fresh full list (after a relist):
    /// pods missing from it were deleted while nobody watched, and go to the gone as of `at`.
    pub fn replace(&mut self, kind: Kind, items: Vec<Object>, at: Timestamp) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::Pod => {
                let listed: std::collections::HashSet<PodKey> = items
                    .iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some((p.namespace.clone(), p.name.clone())),
                        _ => None,
                    })
                    .collect();
                let vanished: Vec<PodKey> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for (ns, name) in vanished {
                    self.delete(Kind::Pod, &ns, &name, at);
                }
            }
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.slices.clear(),
            Kind::ReplicaSet | Kind::Job => self.owners.retain(|(_, k, _), _| k != kind.as_str()),
            Kind::NetworkPolicy => self.policies.clear(),
        }
        for o in items {
            self.apply(o, at);
        }
    }

    /// Forgets pods gone before `before`, and label sets and port lists no pod uses.
    pub fn expire(&mut self, before: Timestamp) {
        while self.gone.front().is_some_and(|(_, at)| *at < before) {
            self.gone.pop_front();
        }
        // Held by the pool alone (models built earlier may hold more references: kept then).
        self.label_sets.retain(|l| Arc::strong_count(l) > 1);
        self.port_lists.retain(|p| Arc::strong_count(p) > 1);
        self.pod_owners.retain(|o| Arc::strong_count(o) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    /// How many objects of `kind` are held.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Node => self.nodes.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::ReplicaSet | Kind::Job => self
                .owners
                .keys()
                .filter(|(_, k, _)| k == kind.as_str())
                .count(),
            Kind::NetworkPolicy => self.policies.len(),
        }
    }

    /// The indexed model of these objects. A snapshot is one moment, so two running pods on
    /// one address contradict it; a live store (`handover`) can briefly hold both while
    /// events arrive, and the newer pod takes the address over.
    pub fn build(&self, handover: bool) -> Result<Cluster, ModelError> {
        let mut b = ClusterBuilder::new();
        b.handover(handover);
        for (name, labels) in &self.namespaces {
            b.namespace(name, labels.clone())?;
        }
        for (name, n) in &self.nodes {
            b.node(name, n.ips.clone(), n.labels.clone())?;
        }
        for ((ns, kind, name), owner) in &self.owners {
            b.owner(ns, kind, name, owner.clone());
        }
        let gone = self.gone.iter().map(|(p, at)| (p, Some(*at)));
        for (p, gone) in gone.chain(self.pods.values().map(|p| (&**p, None))) {
            b.shared_pod(
                NewPod {
                    namespace: &p.namespace,
                    name: &p.name,
                    uid: &p.uid,
                    labels: p.labels.clone(),
                    ips: p.ips.clone(),
                    node: p.node.as_deref(),
                    host_network: p.host_network,
                    phase: p.phase,
                    ports: p.ports.clone(),
                    owner: p.owner.clone(),
                    created: p.created,
                    gone,
                },
                p.name.clone(),
                p.uid.clone(),
            )?;
        }
        for ((ns, name), s) in &self.services {
            let s = s.clone();
            b.service(ns, |id| Service {
                namespace: id,
                name: name.clone(),
                cluster_ips: s.cluster_ips,
                selector: s.selector,
                ports: s.ports,
                endpoints: Vec::new(),
            });
        }
        for ((ns, _), slice) in &self.slices {
            if let Some(service) = &slice.service {
                b.endpoints(ns, service, slice.group.clone());
            }
        }
        Ok(b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Endpoint;

    const T10: &str = "2026-01-01T10:00:00Z";
    const T11: &str = "2026-01-01T11:00:00Z";
    const T1130: &str = "2026-01-01T11:30:00Z";
    const T12: &str = "2026-01-01T12:00:00Z";

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pod(name: &str, uid: &str, ip: &str, phase: PodPhase, created: &str) -> Object {
        Object::Pod(PodObj {
            namespace: "a".into(),
            name: name.into(),
            uid: uid.into(),
            labels: Arc::default(),
            ips: vec![ip.parse().unwrap()],
            node: None,
            host_network: false,
            phase,
            ports: Arc::new([]),
            owner: None,
            created: Some(at(created)),
        })
    }

    fn who(c: &Cluster, ip: &str, t: &str) -> String {
        match c.endpoint_at(ip.parse().unwrap(), at(t)) {
            Endpoint::Pod(p) => c.pod_name(p),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_relist_retires_pods_deleted_unseen() {
        let mut o = Objects::default();
        o.apply(
            pod("old", "u1", "10.0.0.1", PodPhase::Running, T10),
            at(T10),
        );
        o.apply(
            pod("kept", "u2", "10.0.0.2", PodPhase::Running, T10),
            at(T10),
        );
        let relisted = vec![pod("kept", "u2", "10.0.0.2", PodPhase::Running, T10)];
        o.replace(Kind::Pod, relisted, at(T12));
        assert_eq!(o.count(Kind::Pod), 1);
        let c = o.build(true).unwrap();
        assert_eq!(who(&c, "10.0.0.1", "2026-01-01T11:59:59Z"), "a/old");
        assert!(matches!(
            c.endpoint("10.0.0.1".parse().unwrap()),
            Endpoint::External(_)
        ));
        o.expire(at("2026-01-01T12:00:01Z"));
        assert!(o.gone.is_empty(), "forgotten after the grace period");
    }

    #[test]
    fn a_pod_that_finishes_or_is_replaced_leaves_its_past_tenure() {
        let mut o = Objects::default();
        o.apply(
            pod("job", "u1", "10.0.0.1", PodPhase::Running, T10),
            at(T10),
        );
        o.apply(
            pod("job", "u1", "10.0.0.1", PodPhase::Succeeded, T10),
            at(T11),
        );
        // A StatefulSet pod re-created under the same name, its deletion never seen.
        o.apply(
            pod("db-0", "u2", "10.0.0.2", PodPhase::Running, T10),
            at(T10),
        );
        o.apply(
            pod("db-0", "u3", "10.0.0.3", PodPhase::Running, T1130),
            at(T1130),
        );
        let c = o.build(true).unwrap();
        assert_eq!(who(&c, "10.0.0.1", "2026-01-01T10:59:59Z"), "a/job");
        assert!(who(&c, "10.0.0.1", T11).starts_with("External"));
        assert_eq!(who(&c, "10.0.0.2", T11), "a/db-0");
        assert!(who(&c, "10.0.0.2", T1130).starts_with("External"));
    }

    #[test]
    fn live_data_hands_an_address_over_a_snapshot_refuses() {
        let mut o = Objects::default();
        o.apply(
            pod("old", "u1", "10.0.0.1", PodPhase::Running, T10),
            at(T10),
        );
        // The new holder's creation arrived before the old one's deletion.
        o.apply(
            pod("new", "u2", "10.0.0.1", PodPhase::Running, T11),
            at(T11),
        );
        assert!(matches!(
            o.build(false),
            Err(ModelError::AddressClash { .. })
        ));
        let c = o.build(true).unwrap();
        assert_eq!(who(&c, "10.0.0.1", "2026-01-01T10:30:00Z"), "a/old");
        assert_eq!(who(&c, "10.0.0.1", T11), "a/new");
        match c.endpoint("10.0.0.1".parse().unwrap()) {
            Endpoint::Pod(p) => assert_eq!(c.pod_name(p), "a/new"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deleting_owners_and_policies_by_key() {
        let mut o = Objects::default();
        let now = at(T10);
        for kind in ["ReplicaSet", "Job"] {
            let meta = ObjectMeta {
                name: Some("x".into()),
                namespace: Some("a".into()),
                owner_references: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        kind: "Deployment".into(),
                        name: "d".into(),
                        controller: Some(true),
                        ..Default::default()
                    },
                ]),
                ..ObjectMeta::default()
            };
            o.apply(owned_obj(kind, &meta).unwrap(), now);
        }
        assert_eq!((o.count(Kind::ReplicaSet), o.count(Kind::Job)), (1, 1));
        o.delete(Kind::Job, "a", "x", now);
        assert_eq!((o.count(Kind::ReplicaSet), o.count(Kind::Job)), (1, 0));
        o.replace(Kind::ReplicaSet, Vec::new(), now);
        assert_eq!(o.count(Kind::ReplicaSet), 0);
    }
}
