//! The lab scenario file: pods, their ports, external hosts, a traffic plan and drop rules.
//!
//! Parsing is strict (unknown fields are errors) and validation names the offending place
//! (`traffic[2].to`), so a typo never silently changes what the lab does.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use flowpol_analysis::{
    cluster::snapshot::{self, SnapshotError},
    record::{Protocol, Verdict},
};
pub use flowpol_node::client::Close;

/// Largest scenario file read, so a wrong path (a disk image, a log) fails fast.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path} is {size} bytes; the limit is {MAX_SCENARIO_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("cannot parse scenario {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("scenario {path}: {place}: {problem}")]
    Invalid {
        path: String,
        place: String,
        problem: Problem,
    },
}

/// What is wrong at a place in a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("namespace `{0}` is not declared under `namespaces`")]
    UndeclaredNamespace(String),
    #[error("external names may not contain `/`")]
    SlashInName,
    #[error("the lab holds at most 240 hosts")]
    TooManyHosts,
    #[error("address {address} is already used by `{by}`")]
    AddressTaken { address: IpAddr, by: String },
    #[error("port {port} {protocol} is zero or repeated")]
    BadPort { port: u16, protocol: Protocol },
    #[error("the lab serves TCP and UDP only")]
    ServesTcpUdpOnly,
    #[error("`{0}` is declared twice")]
    DeclaredTwice(String),
    #[error("unknown pod or external `{0}`")]
    UnknownHost(String),
    #[error("unknown pod, external or IP `{0}`")]
    UnknownPeer(String),
    #[error("count must be >= 1 and parallel 1..=64")]
    BadCount,
    #[error("the lab sends TCP and UDP only")]
    SendsTcpUdpOnly,
    #[error("only TCP connections can be held open")]
    HeldTcpOnly,
    #[error("`{expect}` cannot be expected of a {protocol} client")]
    Unexpected { expect: String, protocol: Protocol },
    #[error("a port needs a protocol")]
    PortWithoutProtocol,
    /// What the cluster would refuse (a policy of another apiVersion, an invalid selector or
    /// CIDR), with its causes.
    #[error("{}", causes(.0))]
    Refused(Box<crate::enforce::EnforceError>),
}

/// An error and its sources, on one line.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    /// Hosts outside the cluster (an "internet" server, a database VM, ...).
    #[serde(default)]
    pub externals: Vec<External>,
    #[serde(default)]
    pub traffic: Vec<Traffic>,
    #[serde(default)]
    pub drops: Vec<DropRule>,
    /// NetworkPolicy objects, and cluster-scoped ones (ClusterNetworkPolicy,
    /// AdminNetworkPolicy, BaselineAdminNetworkPolicy), as `kubectl apply` takes them: what
    /// the lab's cluster declares (and enforces when `flowpol lab --enforce` is given).
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub settings: Settings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long a client waits for a TCP handshake or a UDP answer.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Traffic items run at once (each in its own threads); 1 runs the plan in order.
    #[serde(default = "one")]
    pub concurrency: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            concurrency: 1,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `"1s"`-style durations in YAML.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// IPv4 address; assigned from 10.244.0.0/24 when absent.
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address; assigned from fd00:10:244::/64 when absent.
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    pub name: Option<String>,
    /// UDP only: answer each datagram (default true).
    #[serde(default = "yes")]
    pub reply: bool,
}

fn tcp() -> Protocol {
    Protocol::TCP
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// `namespace/pod` or an external's name.
    pub from: String,
    /// `namespace/pod`, an external's name, or a literal IP address.
    pub to: String,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub family: Family,
    /// Client threads sharing the `count` attempts.
    #[serde(default = "one")]
    pub parallel: u32,
    #[serde(default)]
    pub close: Close,
    /// Opened before the recording starts and kept open until it ends, sending nothing:
    /// a connection pool's or a stream's (TCP only).
    #[serde(default)]
    pub held: bool,
    /// What the client side must observe; checked by `flowpol lab --check`.
    pub expect: Option<Verdict>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// Packets matching this rule are dropped by nftables inside `pod`'s network namespace.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRule {
    pub pod: String,
    pub direction: Direction,
    /// The other end: `namespace/pod`, an external's name or an IP; any peer when absent.
    pub peer: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
}

/// A host of the lab (pod or external) with its resolved addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `namespace/name` for pods, the name for externals.
    pub id: String,
    pub is_pod: bool,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ports: Vec<(u16, Protocol, bool)>,
}

/// A scenario checked and with every address assigned.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub scenario: Scenario,
    pub hosts: Vec<Host>,
    index: HashMap<String, usize>,
    /// The policy enforcer's nftables script per host id (empty: policies not enforced);
    /// see [`super::enforce`].
    pub enforced: HashMap<String, String>,
}

impl Resolved {
    pub fn host(&self, id: &str) -> Option<&Host> {
        self.index.get(id).map(|&i| &self.hosts[i])
    }

    /// The address a reference (`ns/pod`, external name, literal IP) stands for.
    pub fn address(&self, reference: &str, family: Family) -> Option<IpAddr> {
        if let Ok(ip) = reference.parse::<IpAddr>() {
            return Some(ip);
        }
        self.host(reference).map(|h| match family {
            Family::Ipv4 => IpAddr::V4(h.ipv4),
            Family::Ipv6 => IpAddr::V6(h.ipv6),
        })
    }
}

pub fn load(path: &Path) -> Result<Resolved, ScenarioError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| ScenarioError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge {
            path: shown,
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

pub fn parse(path: &str, text: &str) -> Result<Resolved, ScenarioError> {
    let scenario: Scenario = serde_yaml::from_str(text).map_err(|source| ScenarioError::Parse {
        path: path.into(),
        source,
    })?;
    resolve(path, scenario)
}

fn resolve(path: &str, scenario: Scenario) -> Result<Resolved, ScenarioError> {
    let invalid = |place: String, problem: Problem| ScenarioError::Invalid {
        path: path.into(),
        place,
        problem,
    };
    let namespaces: HashMap<&str, usize> = scenario
        .namespaces
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut hosts = Vec::new();
    let mut index = HashMap::new();
    let mut used: HashMap<IpAddr, String> = HashMap::new();
    let all = scenario
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("pods[{i}]"),
                format!("{}/{}", p.namespace, p.name),
                true,
                p.ip,
                p.ipv6,
                &p.ports,
            )
        })
        .chain(scenario.externals.iter().enumerate().map(|(i, e)| {
            (
                format!("externals[{i}]"),
                e.name.clone(),
                false,
                e.ip,
                e.ipv6,
                &e.ports,
            )
        }));
    for (n, (place, id, is_pod, ip, ipv6, ports)) in all.enumerate() {
        if is_pod {
            let ns = id.split('/').next().unwrap_or_default();
            if !namespaces.contains_key(ns) {
                return Err(invalid(
                    format!("{place}.namespace"),
                    Problem::UndeclaredNamespace(ns.to_owned()),
                ));
            }
        } else if id.contains('/') {
            return Err(invalid(format!("{place}.name"), Problem::SlashInName));
        }
        if n > 240 {
            return Err(invalid(place, Problem::TooManyHosts));
        }
        let ipv4 = ip.unwrap_or(Ipv4Addr::new(10, 244, 0, 10 + n as u8));
        let ipv6 = ipv6.unwrap_or(Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            0,
            0,
            0,
            0,
            10 + n as u16,
        ));
        for addr in [IpAddr::V4(ipv4), IpAddr::V6(ipv6)] {
            if let Some(other) = used.insert(addr, id.clone()) {
                return Err(invalid(
                    place.clone(),
                    Problem::AddressTaken {
                        address: addr,
                        by: other,
                    },
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (j, p) in ports.iter().enumerate() {
            if p.port == 0 || !seen.insert((p.port, p.protocol)) {
                return Err(invalid(
                    format!("{place}.ports[{j}]"),
                    Problem::BadPort {
                        port: p.port,
                        protocol: p.protocol,
                    },
                ));
            }
            if p.protocol == Protocol::SCTP {
                return Err(invalid(
                    format!("{place}.ports[{j}].protocol"),
                    Problem::ServesTcpUdpOnly,
                ));
            }
        }
        if index.insert(id.clone(), hosts.len()).is_some() {
            return Err(invalid(place, Problem::DeclaredTwice(id)));
        }
        hosts.push(Host {
            id,
            is_pod,
            ipv4,
            ipv6,
            ports: ports
                .iter()
                .map(|p| (p.port, p.protocol, p.reply))
                .collect(),
        });
    }
    let resolved = Resolved {
        scenario,
        hosts,
        index,
        enforced: HashMap::new(),
    };
    let known = |r: &str| r.parse::<IpAddr>().is_ok() || resolved.host(r).is_some();
    for (i, t) in resolved.scenario.traffic.iter().enumerate() {
        if resolved.host(&t.from).is_none() {
            return Err(invalid(
                format!("traffic[{i}].from"),
                Problem::UnknownHost(t.from.clone()),
            ));
        }
        if !known(&t.to) {
            return Err(invalid(
                format!("traffic[{i}].to"),
                Problem::UnknownPeer(t.to.clone()),
            ));
        }
        if t.count == 0 || t.parallel == 0 || t.parallel > 64 {
            return Err(invalid(format!("traffic[{i}]"), Problem::BadCount));
        }
        if t.protocol == Protocol::SCTP {
            return Err(invalid(
                format!("traffic[{i}].protocol"),
                Problem::SendsTcpUdpOnly,
            ));
        }
        if t.held && t.protocol != Protocol::TCP {
            return Err(invalid(format!("traffic[{i}].held"), Problem::HeldTcpOnly));
        }
        let verdict_ok = match (t.protocol, t.expect) {
            (_, None) => true,
            (Protocol::TCP, Some(v)) => matches!(
                v,
                Verdict::Established | Verdict::Refused | Verdict::Timeout
            ),
            (Protocol::UDP, Some(v)) => matches!(v, Verdict::Answered | Verdict::Sent),
            (Protocol::SCTP, _) => false,
        };
        if !verdict_ok {
            return Err(invalid(
                format!("traffic[{i}].expect"),
                Problem::Unexpected {
                    expect: t.expect.map(|v| v.to_string()).unwrap_or_default(),
                    protocol: t.protocol,
                },
            ));
        }
    }
    for (i, d) in resolved.scenario.drops.iter().enumerate() {
        if resolved.host(&d.pod).is_none() {
            return Err(invalid(
                format!("drops[{i}].pod"),
                Problem::UnknownHost(d.pod.clone()),
            ));
        }
        if let Some(peer) = &d.peer {
            if !known(peer) {
                return Err(invalid(
                    format!("drops[{i}].peer"),
                    Problem::UnknownPeer(peer.clone()),
                ));
            }
        }
        if d.port.is_some() && d.protocol.is_none() {
            return Err(invalid(
                format!("drops[{i}].port"),
                Problem::PortWithoutProtocol,
            ));
        }
    }
    // The scenario is a cluster too: what the snapshot reader or the policy checks would
    // refuse (a policy of another apiVersion, an invalid selector or CIDR) is refused now,
    // not when the lab is half built. Found by the scenario fuzz target.
    crate::enforce::declared(&resolved)
        .map_err(|e| invalid("policies".into(), Problem::Refused(Box::new(e))))?;
    Ok(resolved)
}

#[derive(Debug, thiserror::Error)]
pub enum PoliciesFileError {
    #[error(transparent)]
    Read(#[from] SnapshotError),
    #[error("{0}: holds objects other than policies; give a file of policies only")]
    NotOnlyPolicies(String),
}

/// The NetworkPolicies and cluster-scoped policies of a file (multi-document YAML or a List,
/// as `flowpol suggest` writes them), read like any snapshot; anything else in it is refused.
/// For `flowpol lab --policies`.
pub fn read_policies(path: &Path) -> Result<Vec<serde_yaml::Value>, PoliciesFileError> {
    let snap = snapshot::load(path)?;
    let c = &snap.cluster;
    let others = c.namespaces().len() + c.nodes().len() + c.pods().len() + c.services().len();
    if others > 0 || !snap.skipped.is_empty() {
        return Err(PoliciesFileError::NotOnlyPolicies(
            path.display().to_string(),
        ));
    }
    let mut out: Vec<serde_yaml::Value> = snap
        .policies
        .iter()
        .map(|np| serde_yaml::to_value(np).expect("a NetworkPolicy encodes"))
        .collect();
    if !snap.cluster_policies.is_empty() {
        // Read (and checked) above; taken as written.
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
            path: path.display().to_string(),
            source,
        })?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap_or_default();
            let items = match v["items"].as_sequence() {
                Some(items) if v["kind"] == "List" => items.clone(),
                _ => vec![v],
            };
            out.extend(items.into_iter().filter(|o| {
                o["kind"]
                    .as_str()
                    .is_some_and(|k| flowpol_analysis::policy::clusterwide::api::KINDS.contains(&k))
            }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
