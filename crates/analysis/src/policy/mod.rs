//! NetworkPolicies (networking.k8s.io/v1) as the engine holds them: parsed once from the
//! k8s-openapi objects, checked as the API server would, with every default applied.
//!
//! Semantics, from the API reference: a policy selects pods in its own namespace
//! (`podSelector`, empty = all) and isolates them for each of its `policyTypes` (default:
//! Ingress, plus Egress when the policy has egress rules). An isolated pod accepts, in that
//! direction, only what some rule of some selecting policy allows. Within a rule, peers and
//! ports are ANDed; peers are ORed, ports are ORed; an empty or missing peer or port list
//! matches everything. In one peer, `podSelector` and `namespaceSelector` are ANDed.
pub mod clusterwide;
pub mod connectivity;
pub mod engine;
pub mod matrix;
mod pod_classes;
pub mod selector;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{
    record::Protocol,
    validation::{FieldError, Problem},
};
use selector::Selector;

/// A policy that breaks the API's validation rules, named with the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("NetworkPolicy {policy}: {error}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    pub error: FieldError,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Some` when the policy isolates for ingress: its ingress rules (possibly none).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates for egress: its egress rules (possibly none).
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress); empty = every peer.
    pub peers: Vec<Peer>,
    /// Empty = every port and protocol.
    pub ports: Vec<PortMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods: `pods` (None = any pod) in namespaces matching `namespaces` (None = the policy's
    /// own namespace).
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Addresses in `cidr` but in none of `except`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    pub protocol: Protocol,
    /// None = every port of `protocol`.
    pub port: Option<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// `port` through `endPort`, inclusive (one port when they are equal).
    Range(u16, u16),
    /// A container port's name, resolved against the destination pod.
    Named(String),
}

/// Compiles every policy, or reports every invalid one (as the API server would refuse them).
pub fn compile_all(nps: &[NetworkPolicy]) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for np in nps {
        match compile(np) {
            Ok(p) => policies.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// Checks and compiles a NetworkPolicy.
pub fn compile(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let err = |field: String, problem: Problem| PolicyError {
        policy: format!("{namespace}/{name}"),
        error: FieldError::new(field, problem),
    };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = Selector::compile(&spec.pod_selector.unwrap_or_default())
        .map_err(|e| err(format!("spec.podSelector.{}", e.field), e.problem))?;
    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();
    // Defaulting, as the API server does it: Ingress always, Egress if there are egress rules.
    let types = match spec.policy_types {
        Some(t) if !t.is_empty() => t,
        _ => {
            let mut t = vec!["Ingress".to_owned()];
            if !egress_rules.is_empty() {
                t.push("Egress".into());
            }
            t
        }
    };
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(err(
                format!("spec.policyTypes[{i}]"),
                Problem::UnknownPolicyType(t.clone()),
            ));
        }
    }
    let mut ingress = None;
    if types.iter().any(|t| t == "Ingress") {
        let mut rules = Vec::new();
        for (i, r) in ingress_rules.iter().enumerate() {
            let field = format!("spec.ingress[{i}]");
            rules.push(Rule {
                peers: peers(r.from.as_deref(), &format!("{field}.from"), &err)?,
                ports: ports(r.ports.as_deref(), &format!("{field}.ports"), &err)?,
            });
        }
        ingress = Some(rules);
    }
    let mut egress = None;
    if types.iter().any(|t| t == "Egress") {
        let mut rules = Vec::new();
        for (i, r) in egress_rules.iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            rules.push(Rule {
                peers: peers(r.to.as_deref(), &format!("{field}.to"), &err)?,
                ports: ports(r.ports.as_deref(), &format!("{field}.ports"), &err)?,
            });
        }
        egress = Some(rules);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress,
        egress,
    })
}

fn peers(
    list: Option<&[NetworkPolicyPeer]>,
    field: &str,
    err: &impl Fn(String, Problem) -> PolicyError,
) -> Result<Vec<Peer>, PolicyError> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}[{i}]");
        let selector =
            |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
             name: &str| {
                s.as_ref()
                    .map(Selector::compile)
                    .transpose()
                    .map_err(|e| err(format!("{field}.{name}.{}", e.field), e.problem))
            };
        let pods = selector(&p.pod_selector, "podSelector")?;
        let namespaces = selector(&p.namespace_selector, "namespaceSelector")?;
        match &p.ip_block {
            Some(block) => {
                if pods.is_some() || namespaces.is_some() {
                    return Err(err(field, Problem::IpBlockWithSelector));
                }
                let cidr = parse_cidr(&block.cidr)
                    .map_err(|problem| err(format!("{field}.ipBlock.cidr"), problem))?;
                let mut except = Vec::new();
                for (j, e) in block.except.iter().flatten().enumerate() {
                    let ef = format!("{field}.ipBlock.except[{j}]");
                    let net = parse_cidr(e).map_err(|problem| err(ef.clone(), problem))?;
                    // API validation: each except must be a strict subset of cidr.
                    if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                        return Err(err(
                            ef,
                            Problem::ExceptOutsideCidr {
                                except: e.clone(),
                                cidr: block.cidr.clone(),
                            },
                        ));
                    }
                    except.push(net);
                }
                out.push(Peer::IpBlock { cidr, except });
            }
            None if pods.is_none() && namespaces.is_none() => {
                return Err(err(field, Problem::EmptyPeer));
            }
            None => out.push(Peer::Pods { pods, namespaces }),
        }
    }
    Ok(out)
}

/// Parses a CIDR as the API server does (host bits are cleared, as `ParseCIDRSloppy` does).
fn parse_cidr(text: &str) -> Result<IpNet, Problem> {
    text.trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| Problem::NotACidr(text.to_owned()))
}

fn ports(
    list: Option<&[NetworkPolicyPort]>,
    field: &str,
    err: &impl Fn(String, Problem) -> PolicyError,
) -> Result<Vec<PortMatch>, PolicyError> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}[{i}]");
        let protocol: Protocol = p.protocol.as_deref().unwrap_or("TCP").parse().map_err(
            |e: crate::record::UnknownProtocol| err(format!("{field}.protocol"), e.into()),
        )?;
        let number = |n: i32, f: &str| {
            u16::try_from(n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| err(format!("{field}.{f}"), Problem::NotAPort(n)))
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(err(format!("{field}.endPort"), Problem::EndPortWithoutPort))
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(err(
                        format!("{field}.endPort"),
                        Problem::EndPortWithNamedPort,
                    ));
                }
                if !valid_port_name(name) {
                    return Err(err(
                        format!("{field}.port"),
                        Problem::BadPortName(name.clone()),
                    ));
                }
                Some(PortSpec::Named(name.clone()))
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = number(*n, "port")?;
                let end = match end {
                    Some(e) => {
                        let e = number(e, "endPort")?;
                        if e < start {
                            return Err(err(
                                format!("{field}.endPort"),
                                Problem::EndPortBelowPort { start, end: e },
                            ));
                        }
                        e
                    }
                    None => start,
                };
                Some(PortSpec::Range(start, end))
            }
        };
        out.push(PortMatch { protocol, port });
    }
    Ok(out)
}

/// IANA_SVC_NAME: 1-15 of [a-z0-9-], at least one letter, no leading, trailing or double '-'.
fn valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests;
