//! The reachability truth table between all pods, the way conformance tools print one.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    engine::{Connection, Engine, PolicyVerdict},
    pod_classes::PodClasses,
};
use crate::{
    cluster::{PodId, PortRef},
    record::Protocol,
};

/// Which address family the matrix connects over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    /// A number, or a container port name resolved per destination pod.
    pub port: String,
    pub protocol: Protocol,
    /// `allowed[src][dst]`; `None` when the destination has no such named port, or when
    /// the verdict is undetermined.
    pub allowed: Vec<Vec<Option<bool>>>,
    /// `[src, dst]` of the cells whose verdict depends on whether an address is one of a
    /// rule's domain names (`None` in `allowed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undetermined: Vec<[usize; 2]>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// `namespace/name` of every pod in the table (active, not hostNetwork, with an address
    /// of the family), sorted.
    pub pods: Vec<String>,
    pub cases: Vec<Case>,
}

/// The pods a table covers (active, not hostNetwork, with an address of the family), by
/// `namespace/name`, sorted.
pub(super) fn pods(engine: &Engine, family: Family) -> Vec<(String, PodId, IpAddr)> {
    let cluster = engine.cluster();
    let mut pods: Vec<_> = cluster
        .pod_ids()
        .filter_map(|id| {
            let p = cluster.pod(id);
            let ip = p
                .ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == (family == Family::Ipv4))?;
            (p.is_active() && !p.host_network).then(|| (cluster.pod_name(id), id, ip))
        })
        .collect();
    pods.sort();
    pods
}

/// The grid, worked out once per pair of pod classes ([`PodClasses`]) and given to each pair
/// of their pods; a pod to itself is always allowed, where it has the port.
pub fn compute(
    engine: &Engine,
    ports: &[PortRef],
    protocols: &[Protocol],
    family: Family,
) -> Matrix {
    let cluster = engine.cluster();
    let pods = pods(engine, family);
    let classes = PodClasses::new(engine, &pods);
    let mut cases = Vec::new();
    for port in ports {
        for &protocol in protocols {
            // The port's number on a destination: a name resolves against its container
            // ports (the same for every pod of a class).
            let number = |dst: PodId| match port {
                PortRef::Number(n) => Some(*n),
                PortRef::Name(name) => cluster
                    .pod(dst)
                    .ports
                    .iter()
                    .find(|cp| cp.name.as_deref() == Some(name) && cp.protocol == protocol)
                    .map(|cp| cp.port),
            };
            // None: no such port; Some(None): undetermined.
            let cell = |s: usize, d: usize| {
                number(pods[d].1).map(|number| {
                    match engine.verdict(&Connection {
                        src: pods[s].2,
                        dst: pods[d].2,
                        port: number,
                        protocol,
                        at: None,
                    }) {
                        PolicyVerdict::Allow => Some(true),
                        PolicyVerdict::Deny => Some(false),
                        PolicyVerdict::Undetermined => None,
                    }
                })
            };
            let mut allowed = vec![vec![None; pods.len()]; pods.len()];
            let mut undetermined = Vec::new();
            let mut put = |s: usize, d: usize, c: Option<Option<bool>>| {
                allowed[s][d] = c.flatten();
                if c == Some(None) {
                    undetermined.push([s, d]);
                }
            };
            for (a, b, s, d) in classes.pairs() {
                let c = cell(s, d);
                for (s, d) in classes.pods(a, b) {
                    put(s, d, c);
                }
            }
            for i in 0..pods.len() {
                put(i, i, cell(i, i));
            }
            undetermined.sort_unstable();
            let port = match port {
                PortRef::Number(n) => n.to_string(),
                PortRef::Name(s) => s.clone(),
            };
            cases.push(Case {
                port,
                protocol,
                allowed,
                undetermined,
            });
        }
    }
    Matrix {
        pods: pods.into_iter().map(|(n, _, _)| n).collect(),
        cases,
    }
}

impl Matrix {
    /// One grid per case: rows are sources, columns destinations; `.` allowed, `X` denied,
    /// `-` the destination has no such port, `?` undetermined (a rule names domains).
    pub fn render(&self) -> String {
        let width = self.pods.iter().map(String::len).max().unwrap_or(0);
        let mut out = String::new();
        for case in &self.cases {
            out.push_str(&format!("{}/{}\n", case.protocol, case.port));
            out.push_str(&format!("{:width$}", ""));
            for i in 0..self.pods.len() {
                out.push_str(&format!(" {:>3}", i));
            }
            out.push('\n');
            for (i, (name, row)) in self.pods.iter().zip(&case.allowed).enumerate() {
                out.push_str(&format!("{name:width$}"));
                for (j, cell) in row.iter().enumerate() {
                    out.push_str(match cell {
                        Some(true) => "   .",
                        Some(false) => "   X",
                        None if case.undetermined.contains(&[i, j]) => "   ?",
                        None => "   -",
                    });
                }
                out.push_str(&format!("   ({i})\n"));
            }
            out.push('\n');
        }
        out
    }
}
