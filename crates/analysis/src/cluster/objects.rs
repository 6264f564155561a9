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
use crate::{
    record::Protocol,
    validation::{FieldError, Problem},
};

fn ip(text: &str, field: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| FieldError::new(field, Problem::NotAnIp(text.to_owned())))
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    p.unwrap_or("TCP")
        .parse()
        .map_err(|e: crate::record::UnknownProtocol| FieldError::new(field, e.into()))
}

fn port(n: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, Problem::NotAPort(n)))
}

pub fn name(meta: &ObjectMeta) -> Result<String, FieldError> {
    meta.name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", Problem::Missing))
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
            kind: o.kind.as_str().into(),
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
    /// A ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy, as read.
    ClusterPolicy(Box<crate::policy::clusterwide::api::Source>),
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
mod store;
#[cfg(test)]
mod tests;

pub use store::{Kind, Objects, PodKey};
