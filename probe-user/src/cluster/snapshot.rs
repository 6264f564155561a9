//! Offline cluster snapshots: what `kubectl get namespaces,pods,services,endpointslices,
//! networkpolicies,nodes -A -o yaml` (or `-o json`) prints, a `kind: List`, or multi-document
//! YAML of the same objects.
//!
//! Objects are read with the k8s-openapi types, so field names and value types follow the API
//! reference; a malformed object fails the whole read with its kind, namespace, name and the
//! offending field. Kinds flowpol does not use (ConfigMaps, ...) are skipped and counted.
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1::EndpointSlice, networking::v1::NetworkPolicy},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::de::DeserializeOwned;

use super::{
    Cluster, ClusterBuilder, ContainerPort, EndpointGroup, Labels, ModelError, NewPod, OwnerRef,
    PodPhase, PortRef, Service, ServicePort,
};
use crate::record::Protocol;

/// Largest snapshot read (a multi-thousand-node cluster's objects stay well below it).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read cluster snapshot {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster snapshot {path} is {size} bytes; the limit is {MAX_SNAPSHOT_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("cluster snapshot {path}: document {document} is not valid YAML or JSON")]
    Syntax {
        path: String,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cluster snapshot {path}: {what}: {problem}")]
    Object {
        path: String,
        what: String,
        problem: String,
    },
    #[error("cluster snapshot {path}: {what}")]
    Decode {
        path: String,
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cluster snapshot {path}")]
    Model {
        path: String,
        #[source]
        source: ModelError,
    },
}

/// Everything read from a snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    /// NetworkPolicies as written; the policy module checks and compiles them.
    pub policies: Vec<NetworkPolicy>,
    /// Objects of kinds flowpol does not use, by kind.
    pub skipped: BTreeMap<String, usize>,
}

pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SnapshotError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge {
            path: shown,
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

/// One object's identity for messages: `Pod shop/web-0 (document 1, item 3)`.
fn describe(v: &serde_yaml::Value, document: usize, item: Option<usize>) -> String {
    let s = |key: &str| {
        v.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(|x| x.as_str())
    };
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("object without kind");
    let name = match (s("namespace"), s("name")) {
        (Some(ns), Some(n)) => format!(" {ns}/{n}"),
        (None, Some(n)) => format!(" {n}"),
        _ => String::new(),
    };
    let at = match item {
        Some(i) => format!("document {document}, item {i}"),
        None => format!("document {document}"),
    };
    format!("{kind}{name} ({at})")
}

pub fn parse(path: &str, text: &str) -> Result<Snapshot, SnapshotError> {
    let mut objects = Vec::new();
    for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde::Deserialize::deserialize(de).map_err(|source| SnapshotError::Syntax {
                path: path.into(),
                document,
                source,
            })?;
        match value {
            serde_yaml::Value::Null => {}
            v if v
                .get("kind")
                .and_then(|k| k.as_str())
                .is_some_and(|k| k.ends_with("List")) =>
            {
                let items = v
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                objects.extend(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| (describe(&item, document, Some(i)), item)),
                );
            }
            v => objects.push((describe(&v, document, None), v)),
        }
    }
    let mut snap = Snapshot::default();
    let mut b = ClusterBuilder::new();
    let model = |source| SnapshotError::Model {
        path: path.into(),
        source,
    };
    // Namespaces and nodes first (pods refer to them), EndpointSlices after their services.
    objects.sort_by_key(|(_, v)| match v.get("kind").and_then(|k| k.as_str()) {
        Some("Namespace") => 0,
        Some("Node") => 1,
        Some("EndpointSlice") => 3,
        _ => 2,
    });
    for (what, v) in objects {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let ctx = Ctx { path, what: &what };
        match kind.as_str() {
            "Namespace" => {
                let ns: core::Namespace = ctx.decode(v)?;
                b.namespace(&ctx.name(&ns.metadata)?, labels(&ns.metadata))
                    .map_err(model)?;
            }
            "Node" => {
                let node: core::Node = ctx.decode(v)?;
                let mut ips = Vec::new();
                for (i, a) in node
                    .status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .enumerate()
                {
                    if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                        ips.push(ctx.ip(&a.address, &format!("status.addresses[{i}].address"))?);
                    }
                }
                b.node(&ctx.name(&node.metadata)?, ips, labels(&node.metadata))
                    .map_err(model)?;
            }
            "Pod" => {
                let pod: core::Pod = ctx.decode(v)?;
                add_pod(&ctx, &mut b, pod)?;
            }
            "Service" => {
                let svc: core::Service = ctx.decode(v)?;
                let service = convert_service(&ctx, svc)?;
                let ns = service.0.clone();
                b.service(&ns, move |id| Service {
                    namespace: id,
                    ..service.1
                });
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = ctx.decode(v)?;
                add_endpoint_slice(&ctx, &mut b, slice)?;
            }
            "ReplicaSet" | "Job" => {
                // Only the controller matters: Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob.
                let o: MetaOnly = ctx.decode(v)?;
                let name = ctx.name(&o.metadata)?;
                if let Some(owner) = controller(&o.metadata) {
                    b.owner(
                        o.metadata.namespace.as_deref().unwrap_or("default"),
                        &kind,
                        &name,
                        owner,
                    );
                }
            }
            "NetworkPolicy" => {
                let np: NetworkPolicy = ctx.decode(v)?;
                ctx.name(&np.metadata)?;
                snap.policies.push(np);
            }
            other => {
                *snap
                    .skipped
                    .entry(if other.is_empty() {
                        "(no kind)".into()
                    } else {
                        other.into()
                    })
                    .or_default() += 1
            }
        }
    }
    snap.cluster = b.build();
    Ok(snap)
}

struct Ctx<'a> {
    path: &'a str,
    what: &'a str,
}

impl Ctx<'_> {
    fn decode<T: DeserializeOwned>(&self, v: serde_yaml::Value) -> Result<T, SnapshotError> {
        serde_yaml::from_value(v).map_err(|source| SnapshotError::Decode {
            path: self.path.into(),
            what: self.what.into(),
            source,
        })
    }
    fn invalid(&self, problem: String) -> SnapshotError {
        SnapshotError::Object {
            path: self.path.into(),
            what: self.what.into(),
            problem,
        }
    }
    fn name(&self, meta: &ObjectMeta) -> Result<String, SnapshotError> {
        meta.name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.invalid("metadata.name is missing".into()))
    }
    fn ip(&self, text: &str, field: &str) -> Result<IpAddr, SnapshotError> {
        text.parse()
            .map_err(|_| self.invalid(format!("{field}: `{text}` is not an IP address")))
    }
    fn protocol(&self, p: Option<&str>, field: &str) -> Result<Protocol, SnapshotError> {
        match p.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::TCP),
            "UDP" => Ok(Protocol::UDP),
            "SCTP" => Ok(Protocol::SCTP),
            other => Err(self.invalid(format!(
                "{field}: unknown protocol `{other}` (TCP, UDP or SCTP)"
            ))),
        }
    }
    fn port(&self, n: i32, field: &str) -> Result<u16, SnapshotError> {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.invalid(format!("{field}: {n} is not a port (1-65535)")))
    }
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// Objects read for their metadata alone.
#[derive(serde::Deserialize)]
struct MetaOnly {
    metadata: ObjectMeta,
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

fn time(t: &k8s_openapi::jiff::Timestamp) -> super::Timestamp {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// An EndpointSlice's ready (or not known to be unready) addresses and resolved ports, added
/// to its service (named by the `kubernetes.io/service-name` label).
fn add_endpoint_slice(
    ctx: &Ctx,
    b: &mut ClusterBuilder,
    slice: EndpointSlice,
) -> Result<(), SnapshotError> {
    ctx.name(&slice.metadata)?;
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned()
    else {
        return Ok(());
    };
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut addresses = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(ctx.ip(a, &format!("endpoints[{i}].addresses[{j}]"))?);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else { continue };
        ports.push((
            p.name.clone().filter(|n| !n.is_empty()),
            ctx.port(number, &format!("ports[{i}].port"))?,
            ctx.protocol(p.protocol.as_deref(), &format!("ports[{i}].protocol"))?,
        ));
    }
    b.endpoints(&namespace, &service, EndpointGroup { addresses, ports });
    Ok(())
}

fn add_pod(ctx: &Ctx, b: &mut ClusterBuilder, pod: core::Pod) -> Result<(), SnapshotError> {
    let name = ctx.name(&pod.metadata)?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    // `podIP` is the first of `podIPs`; both are checked, the list is used when present.
    let single = match status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        Some(ip) => Some(ctx.ip(ip, "status.podIP")?),
        None => None,
    };
    let mut ips = Vec::new();
    for (i, p) in status.pod_ips.iter().flatten().enumerate() {
        ips.push(ctx.ip(&p.ip, &format!("status.podIPs[{i}].ip"))?);
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
                port: ctx.port(p.container_port, &format!("{field}.containerPort"))?,
                protocol: ctx.protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
            });
        }
    }
    let host_network = spec.host_network.unwrap_or(false);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    b.pod(NewPod {
        namespace: &namespace,
        name: &name,
        uid: &uid,
        labels: labels(&pod.metadata),
        ips,
        node: spec.node_name.as_deref(),
        host_network,
        phase,
        ports,
        owner: controller(&pod.metadata),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| time(&t.0)),
        gone: None,
    })
    .map_err(|source| SnapshotError::Model {
        path: ctx.path.into(),
        source,
    })?;
    Ok(())
}

/// (namespace, service without its namespace id yet)
fn convert_service(ctx: &Ctx, svc: core::Service) -> Result<(String, Service), SnapshotError> {
    let name = ctx.name(&svc.metadata)?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = svc.spec.unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let listed = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    for (i, ip) in listed.iter().enumerate() {
        // Headless services have clusterIP "None".
        if ip != "None" && !ip.is_empty() {
            cluster_ips.push(ctx.ip(ip, &format!("spec.clusterIPs[{i}]"))?);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let target = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortRef::Number(
                ctx.port(*n, &format!("spec.ports[{i}].targetPort"))?,
            )),
            Some(IntOrString::String(s)) => Some(PortRef::Name(s.clone())),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port: ctx.port(p.port, &format!("spec.ports[{i}].port"))?,
            protocol: ctx.protocol(p.protocol.as_deref(), &format!("spec.ports[{i}].protocol"))?,
            target,
        });
    }
    let selector = spec.selector.map(|s| s.into_iter().collect());
    Ok((
        namespace,
        Service {
            namespace: super::NsId(0),
            name,
            cluster_ips,
            selector,
            ports,
            endpoints: Vec::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Endpoint;

    const MULTI: &str = "
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: prod, labels: {app: api}}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 8080, name: http}]}]
status: {phase: Running, podIPs: [{ip: 10.1.0.5}, {ip: 'fd00::5'}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: prod}
";

    #[test]
    fn reads_multi_document_yaml_in_any_order() {
        let snap = parse("multi.yaml", MULTI).expect("valid snapshot");
        let c = &snap.cluster;
        let pod = c.pod_by_name("prod", "api-0").expect("pod read");
        assert_eq!(
            c.endpoint("fd00::5".parse().unwrap()),
            Endpoint::Pod(pod),
            "IPv6 from status.podIPs"
        );
        let ns = c.namespace(c.namespace_id("prod").unwrap());
        assert_eq!(
            ns.labels.get("env").map(String::as_str),
            Some("prod"),
            "the Namespace object's labels win"
        );
        assert_eq!(
            ns.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            c.pod(pod).ports[0].protocol,
            Protocol::TCP,
            "container port protocol defaults to TCP"
        );
        assert_eq!(snap.policies.len(), 1);
        assert_eq!(snap.skipped.get("Secret"), Some(&1));
    }

    #[test]
    fn missing_names_and_duplicates_are_errors() {
        let e = parse("x.yaml", "kind: Pod\nmetadata: {namespace: a}\n").unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let dup =
            "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n";
        let e = parse("x.yaml", dup).unwrap_err();
        assert!(matches!(e, SnapshotError::Model { .. }), "{e}");
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let path = std::env::temp_dir().join(format!("flowpol-huge-{}.yaml", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_SNAPSHOT_BYTES + 1).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
