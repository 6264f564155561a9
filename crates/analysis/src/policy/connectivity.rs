//! The connectivity map: for each ordered pair of distinct pods, every protocol and port the
//! policies let the first open to the second, over all ports (what network-config-analyzer
//! calls the connectivity map). Ports are taken by classes: the ranges that no policy's port,
//! port range or resolved named port splits, so one verdict decides each class exactly; and
//! pods by classes too ([`PodClasses`]), so the work grows with classes, not pods.
use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    clusterwide::ProtocolMatch,
    engine::{Engine, PolicyVerdict},
    matrix::{self, Family},
    pod_classes::PodClasses,
    Direction, PortSpec,
};
use crate::record::Protocol;

/// `start..=end` of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Ports {
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{} {}", self.protocol, self.start)
        } else {
            write!(f, "{} {}-{}", self.protocol, self.start, self.end)
        }
    }
}

const PROTOCOLS: [Protocol; 3] = [Protocol::TCP, Protocol::UDP, Protocol::SCTP];

/// Every port 1-65535 of every protocol, cut into the classes the policies cannot tell
/// apart: a class starts at 1, at every port or range start any rule names, one past every
/// range end, and at every container port whose name a rule names (on any pod, since a named
/// port resolves against the destination).
pub fn port_classes(engine: &Engine) -> Vec<Ports> {
    let mut cuts: [BTreeSet<u32>; 3] = std::array::from_fn(|_| BTreeSet::from([1]));
    let slot = |p: Protocol| PROTOCOLS.iter().position(|&q| q == p).expect("a protocol");
    let mut cut = |p: Protocol, start: u16, end: u16| {
        cuts[slot(p)].insert(u32::from(start));
        cuts[slot(p)].insert(u32::from(end) + 1);
    };
    let mut names = BTreeSet::new();
    for policy in engine.policies() {
        for direction in [Direction::Ingress, Direction::Egress] {
            for m in policy
                .rules(direction)
                .into_iter()
                .flatten()
                .flat_map(|r| &r.ports)
            {
                match &m.port {
                    None => {}
                    Some(PortSpec::Range(a, b)) => cut(m.protocol, *a, *b),
                    Some(PortSpec::Named(n)) => {
                        names.insert(n.as_str());
                    }
                }
            }
        }
    }
    for policy in engine.cluster_policies() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for m in &rule.protocols {
                match m {
                    ProtocolMatch::Ports {
                        protocol,
                        start,
                        end,
                    } => cut(*protocol, *start, *end),
                    ProtocolMatch::Named(n) => {
                        names.insert(n.as_str());
                    }
                }
            }
        }
    }
    let cluster = engine.cluster();
    for id in cluster.pod_ids() {
        for cp in cluster.pod(id).ports.iter() {
            if cp.name.as_deref().is_some_and(|n| names.contains(n)) {
                cut(cp.protocol, cp.port, cp.port);
            }
        }
    }
    let mut classes = Vec::new();
    for (protocol, cuts) in PROTOCOLS.into_iter().zip(cuts) {
        let starts: Vec<u32> = cuts.into_iter().filter(|&c| c <= 65535).collect();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(65535, |next| next - 1);
            classes.push(Ports {
                protocol,
                start: start as u16,
                end: end as u16,
            });
        }
    }
    classes
}

/// What one pod may open to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reach {
    /// `namespace/name`.
    pub src: String,
    pub dst: String,
    /// Adjacent classes merged.
    pub allowed: Vec<Ports>,
    /// Ports whose verdict depends on whether an address is one of a rule's domain names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undetermined: Vec<Ports>,
}

impl Reach {
    /// Every port of every protocol.
    pub fn is_all(&self) -> bool {
        self.undetermined.is_empty()
            && PROTOCOLS.iter().all(|&protocol| {
                self.allowed.contains(&Ports {
                    protocol,
                    start: 1,
                    end: 65535,
                })
            })
    }
}

/// The pairs of distinct pods (of the matrix's pods: active, not hostNetwork, with an
/// address of the family) between which something is allowed or undetermined, sorted.
/// Worked out once per pair of pod classes, then given to each pair of their pods.
pub fn compute(engine: &Engine, family: Family) -> Vec<Reach> {
    let ports = port_classes(engine);
    let pods = matrix::pods(engine, family);
    let classes = PodClasses::new(engine, &pods);
    // (allowed, undetermined) per pair of classes that reaches something.
    let mut answers = Vec::new();
    let mut pairs = Vec::new();
    for (a, b, s, d) in classes.pairs() {
        let answer = between(engine, &ports, pods[s].2, pods[d].2);
        if answer.0.is_empty() && answer.1.is_empty() {
            continue;
        }
        pairs.extend(classes.pods(a, b).map(|(s, d)| (s, d, answers.len())));
        answers.push(answer);
    }
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(s, d, i)| Reach {
            src: pods[s].0.clone(),
            dst: pods[d].0.clone(),
            allowed: answers[i].0.clone(),
            undetermined: answers[i].1.clone(),
        })
        .collect()
}

/// What `src` may open to `dst`: allowed and undetermined ranges, one verdict per class.
pub(super) fn between(
    engine: &Engine,
    ports: &[Ports],
    src: IpAddr,
    dst: IpAddr,
) -> (Vec<Ports>, Vec<Ports>) {
    let (mut allowed, mut undetermined) = (Vec::new(), Vec::new());
    let ends = engine.ends(src, dst);
    for class in ports {
        match engine.verdict_on(&ends, class.start, class.protocol) {
            PolicyVerdict::Allow => extend(&mut allowed, *class),
            PolicyVerdict::Undetermined => extend(&mut undetermined, *class),
            PolicyVerdict::Deny => {}
        }
    }
    (allowed, undetermined)
}

/// Appends a class, merged into the last range when it continues it.
fn extend(ranges: &mut Vec<Ports>, class: Ports) {
    match ranges.last_mut() {
        Some(last)
            if last.protocol == class.protocol
                && u32::from(last.end) + 1 == u32::from(class.start) =>
        {
            last.end = class.end
        }
        _ => ranges.push(class),
    }
}

/// One line per pair: `src => dst : TCP 8080, UDP 53`, or `: all` for every port.
pub fn render(pairs: &[Reach]) -> String {
    let mut out = String::new();
    for r in pairs {
        let list = |ps: &[Ports]| {
            ps.iter()
                .map(Ports::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let what = if r.is_all() {
            "all".to_owned()
        } else if r.allowed.is_empty() {
            "none".to_owned()
        } else {
            list(&r.allowed)
        };
        out.push_str(&format!("{} => {} : {what}", r.src, r.dst));
        if !r.undetermined.is_empty() {
            out.push_str(&format!(" (undetermined: {})", list(&r.undetermined)));
        }
        out.push('\n');
    }
    out
}
