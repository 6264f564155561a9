//! The conformance set: upstream Kubernetes' NetworkPolicy e2e tests (the x, y, z
//! namespaces with pods a, b, c, serving 80 and 81 over TCP and UDP), translated by hand
//! from the public source into `conformance/upstream.yaml`, each case with its policies and
//! its truth table. A case becomes a lab scenario whose traffic is every ordered pair of
//! pods on every probed port, so any enforcer can be held against upstream's answers.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use flowpol_analysis::record::{Protocol, Verdict};

use crate::{
    scenario::{self, Resolved, ScenarioError},
    traffic::ClientSaw,
};

/// The set as committed.
pub const UPSTREAM: &str = include_str!("../conformance/upstream.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("the conformance set is not valid")]
    Parse(#[source] serde_yaml::Error),
    #[error("case {case}: {problem}")]
    Case { case: String, problem: String },
    #[error("case {case}: its scenario")]
    Scenario {
        case: String,
        #[source]
        source: ScenarioError,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    pub model: Model,
    pub cases: Vec<Case>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub namespaces: BTreeMap<String, Labelled>,
    pub pods: BTreeMap<String, Labelled>,
    pub ports: Vec<ModelPort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labelled {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPort {
    pub port: u16,
    pub protocol: Protocol,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The upstream test's title.
    pub upstream: String,
    pub policies: Vec<Value>,
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    /// The denied pairs, or `all`.
    #[serde(default)]
    pub denied: Pairs,
    /// With `denied: all`: the pairs allowed nonetheless.
    #[serde(default)]
    pub allowed: Vec<[String; 2]>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Pairs {
    #[default]
    None,
    All(AllWord),
    Listed(Vec<[String; 2]>),
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllWord {
    All,
}

/// One probe of a case: who, where, and what upstream expects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

pub fn parse(text: &str) -> Result<Set, ConformanceError> {
    serde_yaml::from_str(text).map_err(ConformanceError::Parse)
}

impl Set {
    /// Every pod of the model, `ns/pod`, in address order.
    pub fn pods(&self) -> Vec<String> {
        self.model
            .namespaces
            .keys()
            .flat_map(|ns| self.model.pods.keys().map(move |p| format!("{ns}/{p}")))
            .collect()
    }

    /// The IPv4 address of the model's `index`th pod.
    fn ipv4(index: usize) -> String {
        format!("10.244.0.{}", 10 + index)
    }

    /// The case's expectations, every ordered pair on every probe; self-pairs are allowed
    /// (in the lab a pod reaching its own address stays on its loopback).
    pub fn expected(&self, case: &Case) -> Result<Vec<Expected>, ConformanceError> {
        let pods = self.pods();
        let known: BTreeSet<&String> = pods.iter().collect();
        let bad = |problem: String| ConformanceError::Case {
            case: case.name.clone(),
            problem,
        };
        let mut out = Vec::new();
        for probe in &case.probes {
            if !self
                .model
                .ports
                .iter()
                .any(|p| p.port == probe.port && p.protocol == probe.protocol)
            {
                return Err(bad(format!(
                    "probes {}/{}, which the model's pods do not serve",
                    probe.protocol, probe.port
                )));
            }
            let set =
                |pairs: &[[String; 2]]| -> Result<BTreeSet<(String, String)>, ConformanceError> {
                    pairs
                        .iter()
                        .map(|[a, b]| {
                            if known.contains(a) && known.contains(b) {
                                Ok((a.clone(), b.clone()))
                            } else {
                                Err(bad(format!(
                                    "pair {a} -> {b} names a pod outside the model"
                                )))
                            }
                        })
                        .collect()
                };
            let (default_allowed, exceptions) = match &probe.denied {
                Pairs::All(AllWord::All) => (false, set(&probe.allowed)?),
                Pairs::Listed(denied) if probe.allowed.is_empty() => (true, set(denied)?),
                Pairs::None if probe.allowed.is_empty() => (true, BTreeSet::new()),
                _ => return Err(bad("`allowed` goes with `denied: all` only".into())),
            };
            for from in &pods {
                for to in &pods {
                    let listed = exceptions.contains(&(from.clone(), to.clone()));
                    out.push(Expected {
                        from: from.clone(),
                        to: to.clone(),
                        port: probe.port,
                        protocol: probe.protocol,
                        allowed: from == to || default_allowed != listed,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The lab scenario of `case`: the model's pods, the case's policies (`${ns/pod}` in a
    /// CIDR standing for the pod's IPv4 address), and one attempt per expectation.
    pub fn scenario(&self, case: &Case) -> Result<Resolved, ConformanceError> {
        let pods = self.pods();
        let expected = self.expected(case)?;
        let namespaces: Vec<Value> = self
            .model
            .namespaces
            .iter()
            .map(|(name, ns)| {
                let mut labels = ns.labels.clone();
                labels
                    .entry("kubernetes.io/metadata.name".into())
                    .or_insert_with(|| name.clone());
                json!({"name": name, "labels": labels})
            })
            .collect();
        let ports: Vec<Value> = self
            .model
            .ports
            .iter()
            .map(|p| json!({"port": p.port, "protocol": p.protocol.to_string(), "name": p.name}))
            .collect();
        let pod_objects: Vec<Value> = pods
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (ns, name) = id.split_once('/').expect("ns/pod");
                json!({"name": name, "namespace": ns, "labels": self.model.pods[name].labels,
                       "ip": Self::ipv4(i), "ports": ports})
            })
            .collect();
        let mut policies = serde_json::to_string(&case.policies).expect("JSON values serialize");
        for (i, id) in pods.iter().enumerate() {
            policies = policies.replace(&format!("${{{id}}}"), &Self::ipv4(i));
        }
        if policies.contains("${") {
            return Err(ConformanceError::Case {
                case: case.name.clone(),
                problem: "a `${...}` names no pod of the model".into(),
            });
        }
        let policies: Value = serde_json::from_str(&policies).expect("still JSON");
        let traffic: Vec<Value> = expected
            .iter()
            .map(|e| {
                json!({"from": e.from, "to": e.to, "port": e.port,
                       "protocol": e.protocol.to_string(),
                       "expect": expect_of(e).to_string()})
            })
            .collect();
        let scenario = json!({
            "name": format!("conformance-{}", case.name),
            "settings": {"timeout": "500ms", "concurrency": 16},
            "namespaces": namespaces,
            "pods": pod_objects,
            "traffic": traffic,
            "policies": policies,
        });
        let yaml = serde_yaml::to_string(&scenario).expect("a JSON value serializes as YAML");
        scenario::parse(&format!("conformance case {}", case.name), &yaml).map_err(|source| {
            ConformanceError::Scenario {
                case: case.name.clone(),
                source,
            }
        })
    }
}

/// What a client sees under faithful enforcement: an answer, or silence.
fn expect_of(e: &Expected) -> Verdict {
    match (e.protocol, e.allowed) {
        (Protocol::UDP, true) => Verdict::Answered,
        (Protocol::UDP, false) => Verdict::Sent,
        (_, true) => Verdict::Established,
        (_, false) => Verdict::Timeout,
    }
}

/// Whether a client got through: TCP established, UDP answered. Every port of the model is
/// served, so a refusal or silence is the enforcer's.
pub fn got_through(saw: &ClientSaw) -> Option<bool> {
    let through = saw
        .results
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(v, _)| matches!(v, Verdict::Established | Verdict::Answered))
        .collect::<BTreeSet<bool>>();
    match through.len() {
        1 => through.first().copied(),
        _ => None,
    }
}

/// A probe whose outcome differs from upstream's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub expected: Expected,
    /// What the client saw (`established`, `timeout`, `refused`, `answered`, `sent`).
    pub saw: String,
}

/// Upstream's answers against what the clients saw, item by item (the scenario's traffic
/// is the expectations, in order).
pub fn judge(expected: &[Expected], outcomes: &[ClientSaw]) -> Vec<Disagreement> {
    expected
        .iter()
        .zip(outcomes)
        .filter(|(e, saw)| got_through(saw) != Some(e.allowed))
        .map(|(e, saw)| Disagreement {
            expected: e.clone(),
            saw: saw
                .results
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("+"),
        })
        .collect()
}

#[cfg(test)]
mod tests;

pub mod runner;
