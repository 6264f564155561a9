//! The lab as a Kubernetes cluster would describe itself: a `kubectl get -o yaml`-style List
//! of its namespaces, node, pods (with both addresses and named container ports) and the
//! scenario's NetworkPolicies. The same snapshot reader as for real clusters turns it into
//! the model, so the lab is judged exactly like a cluster. Pure.
use serde_json::{json, Value};

use super::scenario::Resolved;
use flowpol_analysis::cluster::snapshot::{self, Snapshot, SnapshotError};

/// The node every lab pod runs on.
pub const NODE: &str = "lab-node";
/// The node's addresses (its InternalIPs, the pods' hostIP), outside what scenarios assign.
pub const NODE_IPV4: &str = "10.244.255.254";
pub const NODE_IPV6: &str = "fd00:10:244::fffe";
/// When every lab pod was "created": before anything the lab records.
const CREATED: &str = "2020-01-01T00:00:00Z";

/// The UID of the scenario's `index`th pod: UUID-shaped, as the kubelet's cgroup names
/// need them.
pub fn uid(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012x}")
}

/// The lab's cluster as a List (YAML), for `--cluster` of the other commands.
pub fn snapshot_yaml(resolved: &Resolved) -> String {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": snapshot_items(resolved)});
    serde_yaml::to_string(&list).expect("a JSON value serializes as YAML")
}

/// The objects of the lab's cluster: its namespaces, node, pods and declared policies.
pub fn snapshot_items(resolved: &Resolved) -> Vec<Value> {
    let mut items = cluster_items(resolved);
    items.extend(policy_items(resolved));
    items
}

/// The scenario's NetworkPolicies as objects.
pub fn policy_items(resolved: &Resolved) -> Vec<Value> {
    resolved
        .scenario
        .policies
        .iter()
        .map(|np| serde_json::to_value(np).unwrap_or(Value::Null))
        .collect()
}

/// The lab's namespaces, node and pods (with their status, as a kubelet reports it).
pub fn cluster_items(resolved: &Resolved) -> Vec<Value> {
    let s = &resolved.scenario;
    let mut items: Vec<Value> = Vec::new();
    for ns in &s.namespaces {
        let mut labels = ns.labels.clone();
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| ns.name.clone());
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": labels},
        }));
    }
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": NODE_IPV4},
                {"type": "InternalIP", "address": NODE_IPV6},
                {"type": "Hostname", "address": NODE},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": CREATED, "lastTransitionTime": CREATED}],
        },
    }));
    for (i, p) in s.pods.iter().enumerate() {
        let host = resolved
            .host(&format!("{}/{}", p.namespace, p.name))
            .expect("every scenario pod is a resolved host");
        let ports: Vec<Value> = p
            .ports
            .iter()
            .map(|port| {
                let mut v =
                    json!({"containerPort": port.port, "protocol": port.protocol.to_string()});
                if let Some(name) = &port.name {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": p.name, "namespace": p.namespace, "labels": p.labels,
                "uid": uid(i),
                "creationTimestamp": CREATED,
            },
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "lab", "ports": ports}]},
            "status": {
                "phase": "Running",
                "hostIP": NODE_IPV4,
                "hostIPs": [{"ip": NODE_IPV4}, {"ip": NODE_IPV6}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": CREATED}],
                "podIP": host.ipv4.to_string(),
                "podIPs": [{"ip": host.ipv4.to_string()}, {"ip": host.ipv6.to_string()}],
            },
        }));
    }
    items
}

/// The lab's cluster model and declared policies. A policy the API server would reject is
/// reported with its kind/namespace/name and field.
pub fn model(resolved: &Resolved) -> Result<Snapshot, SnapshotError> {
    snapshot::parse(
        &format!("scenario {} (its cluster)", resolved.scenario.name),
        &snapshot_yaml(resolved),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;
    use flowpol_analysis::cluster::AddressHolder;

    #[test]
    fn the_lab_reads_as_a_cluster() {
        let r = parse(
            "t",
            "
name: t
namespaces: [{name: a, labels: {team: x}}]
pods:
  - {name: db, namespace: a, labels: {app: db}, ports: [{port: 5432, name: pg}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny, namespace: a}
    spec: {podSelector: {}}
",
        )
        .unwrap();
        let snap = model(&r).unwrap();
        let c = &snap.cluster;
        let AddressHolder::Pod(db) = c.endpoint("10.244.0.10".parse().unwrap()) else {
            panic!("the pod's IPv4 address names it");
        };
        assert!(
            matches!(c.endpoint("fd00:10:244::a".parse().unwrap()), AddressHolder::Pod(p) if p == db)
        );
        assert_eq!(c.pod_name(db), "a/db");
        assert_eq!(c.pod(db).ports[0].name.as_deref(), Some("pg"));
        let ns = c.namespace(c.pod(db).namespace);
        assert_eq!(
            ns.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(snap.policies.len(), 1);
    }

    #[test]
    fn a_bad_policy_is_named() {
        let r = parse(
            "t",
            "
name: t
namespaces: [{name: a}]
pods: [{name: db, namespace: a}]
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: broken, namespace: a}
    spec: {podSelector: {matchLabels: 7}}
",
        )
        .unwrap_err();
        // Refused with the scenario, by the same reader `model` uses.
        let err = format!("{:#}", anyhow::Error::from(r));
        assert!(err.contains("policies: "), "{err}");
        assert!(err.contains("NetworkPolicy a/broken"), "{err}");
    }
}
