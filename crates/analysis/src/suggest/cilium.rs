//! The plan as CiliumNetworkPolicies (cilium.io/v2), policy for policy in the order of the
//! NetworkPolicies. Fields are declared in alphabetical order: that is the order the YAML
//! shows, as `kubectl get -o yaml` would.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};
use serde::Serialize;

use super::{render, Group, Options, Peer, Plan};
use crate::cluster::Labels;

const NS_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub egress: Vec<Rule>,
    pub endpoint_selector: EndpointSelector,
    pub ingress: Vec<Rule>,
}

/// An empty selector selects every endpoint of the namespace.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<Labels>,
}

/// One rule: peers of one kind and the ports they may use. An empty rule turns default
/// deny on for its direction.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rule {
    #[serde(rename = "fromCIDRSet", skip_serializing_if = "Option::is_none")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(rename = "fromEndpoints", skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(rename = "fromEntities", skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(rename = "toEndpoints", skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(rename = "toEntities", skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toPorts", skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CidrRule {
    pub cidr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRule {
    pub ports: Vec<PortProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    pub port: String,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct L7Rules {
    pub dns: Vec<DnsRule>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRule {
    pub match_pattern: String,
}

/// Every policy of the plan.
pub(super) fn policies(plan: &Plan, options: &Options) -> Vec<CiliumNetworkPolicy> {
    let mut out = Vec::new();
    for ns in &plan.namespaces {
        out.push(default_deny(&ns.name));
        for w in &ns.workloads {
            out.push(policy(
                &ns.name,
                render::workload_policy(&ns.name, w, options).metadata,
                &w.selector,
                &w.ingress,
                &w.egress,
            ));
        }
    }
    out
}

fn object(metadata: ObjectMeta, spec: Spec) -> CiliumNetworkPolicy {
    CiliumNetworkPolicy {
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        metadata,
        spec,
    }
}

/// Every endpoint of the namespace: an empty rule turns default deny on.
fn default_deny(ns: &str) -> CiliumNetworkPolicy {
    let metadata = ObjectMeta {
        name: Some("default-deny".into()),
        namespace: Some(ns.into()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".into(),
            "flowpol".into(),
        )])),
        ..ObjectMeta::default()
    };
    object(
        metadata,
        Spec {
            egress: vec![Rule::default()],
            endpoint_selector: EndpointSelector::default(),
            ingress: vec![Rule::default()],
        },
    )
}

fn policy(
    ns: &str,
    metadata: ObjectMeta,
    selector: &Labels,
    ingress: &[Group],
    egress: &[Group],
) -> CiliumNetworkPolicy {
    object(
        metadata,
        Spec {
            egress: rules(ns, egress, Way::To),
            endpoint_selector: EndpointSelector {
                match_labels: Some(selector.clone()),
            },
            ingress: rules(ns, ingress, Way::From),
        },
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    From,
    To,
}

/// One Cilium rule per kind of peer in a group (endpoints, entities, CIDRs), each with the
/// group's ports.
pub(super) fn rules(ns: &str, groups: &[Group], way: Way) -> Vec<Rule> {
    let mut out = Vec::new();
    for g in groups {
        // The same runs as the NetworkPolicy: three or more consecutive ports, one range.
        let ports: Vec<PortProtocol> = render::port_list(&g.ports)
            .into_iter()
            .map(|p| PortProtocol {
                end_port: p.end_port,
                port: match p.port {
                    Some(IntOrString::Int(n)) => n.to_string(),
                    Some(IntOrString::String(s)) => s,
                    None => "0".into(),
                },
                protocol: p.protocol,
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
                    let mut labels = selector.clone();
                    if namespace != ns {
                        labels.insert(NS_LABEL.into(), namespace.clone());
                    }
                    endpoints.push(EndpointSelector {
                        match_labels: Some(labels),
                    });
                }
                Peer::Block { note: Some(n), .. } if n.contains("default/kubernetes") => {
                    entities.push("kube-apiserver".to_owned())
                }
                Peer::Block { note: Some(_), .. } => {
                    entities.push("host".to_owned());
                    entities.push("remote-node".to_owned());
                }
                Peer::Block { cidr, except, .. } => cidrs.push(CidrRule {
                    cidr: cidr.to_string(),
                    except: (!except.is_empty())
                        .then(|| except.iter().map(|e| e.to_string()).collect()),
                }),
            }
        }
        entities.dedup();
        let to_ports = |proxy_dns: bool| {
            Some(vec![PortRule {
                ports: ports.clone(),
                // DNS through Cilium's proxy, so later rules can name domains.
                rules: proxy_dns.then(|| L7Rules {
                    dns: vec![DnsRule {
                        match_pattern: "*".into(),
                    }],
                }),
            }])
        };
        for peers in [
            Peers::Endpoints(endpoints),
            Peers::Entities(entities),
            Peers::Cidrs(cidrs),
        ] {
            if peers.is_empty() {
                continue;
            }
            let proxy_dns = matches!(peers, Peers::Endpoints(_)) && dns && way == Way::To;
            out.push(rule(way, peers, to_ports(proxy_dns)));
        }
    }
    out
}

/// The peers of one rule, all of one kind.
enum Peers {
    Endpoints(Vec<EndpointSelector>),
    Entities(Vec<String>),
    Cidrs(Vec<CidrRule>),
}

impl Peers {
    fn is_empty(&self) -> bool {
        match self {
            Self::Endpoints(v) => v.is_empty(),
            Self::Entities(v) => v.is_empty(),
            Self::Cidrs(v) => v.is_empty(),
        }
    }
}

fn rule(way: Way, peers: Peers, to_ports: Option<Vec<PortRule>>) -> Rule {
    let mut r = Rule {
        to_ports,
        ..Rule::default()
    };
    match (way, peers) {
        (Way::From, Peers::Endpoints(p)) => r.from_endpoints = Some(p),
        (Way::From, Peers::Entities(p)) => r.from_entities = Some(p),
        (Way::From, Peers::Cidrs(p)) => r.from_cidr_set = Some(p),
        (Way::To, Peers::Endpoints(p)) => r.to_endpoints = Some(p),
        (Way::To, Peers::Entities(p)) => r.to_entities = Some(p),
        (Way::To, Peers::Cidrs(p)) => r.to_cidr_set = Some(p),
    }
    r
}
