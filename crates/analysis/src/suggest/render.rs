//! The plan as NetworkPolicies (networking.k8s.io/v1), in the plan's order: per namespace a
//! default deny, then one policy per workload.
use std::collections::{BTreeMap, BTreeSet};

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

use super::{
    Group, Options, Peer, Plan, Port, WorkloadPlan, ADDRESS_NOTES, EXPLAIN_PREFIX, GENERATED_BY,
};
use crate::{
    cluster::{Workload, WorkloadKind},
    policy::Direction,
};

/// Every policy of the plan.
pub fn network_policies(plan: &Plan, options: &Options) -> Vec<NetworkPolicy> {
    let mut out = Vec::new();
    for ns in &plan.namespaces {
        out.push(default_deny(&ns.name));
        out.extend(
            ns.workloads
                .iter()
                .map(|w| workload_policy(&ns.name, w, options)),
        );
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
pub(super) fn policy_name(w: &Workload) -> String {
    let base = match &w.kind {
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => {
            w.name.clone()
        }
        kind => format!("{}-{}", kind.as_str().to_lowercase(), w.name),
    };
    crate::cluster::object_name(&format!("allow-{base}"))
}

/// A workload's policy. Its metadata (name, flowpol's labels, the flows that justify each
/// rule, the notes saying which addresses are nodes or the API server) is the Cilium
/// rendering's too.
pub(super) fn workload_policy(
    namespace: &str,
    w: &WorkloadPlan,
    options: &Options,
) -> NetworkPolicy {
    let mut annotations = BTreeMap::new();
    let ingress = rules(
        namespace,
        &w.ingress,
        options,
        Direction::Ingress,
        &mut annotations,
    );
    let egress = rules(
        namespace,
        &w.egress,
        options,
        Direction::Egress,
        &mut annotations,
    );
    let notes = notes(&[&w.ingress, &w.egress]);
    if !notes.is_empty() {
        let text = notes.into_iter().collect::<Vec<_>>().join("; ");
        annotations.insert(ADDRESS_NOTES.to_owned(), text);
    }
    let mut m = meta(namespace, &policy_name(&w.workload));
    m.annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(annotations);
    NetworkPolicy {
        metadata: m,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(w.selector.clone()),
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
pub(super) fn port_list(ports: &BTreeSet<Port>) -> Vec<NetworkPolicyPort> {
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
