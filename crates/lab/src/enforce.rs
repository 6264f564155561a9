//! The lab's policy enforcer: the scenario's NetworkPolicies compiled into nftables rules in
//! each pod's network namespace, so the lab behaves like a cluster whose CNI enforces them.
//!
//! Like a CNI, it resolves selectors to the addresses of the pods they match when the rules
//! are written, keeps replies through conntrack (`ct state established,related`), leaves
//! loopback and ICMP alone (NetworkPolicy speaks of TCP, UDP and SCTP), and drops what no
//! rule of a selecting policy allows; cluster-scoped policies around them as [`tiers`] says.
//! Switchable [`Fault`]s make it behave like CNIs with known bugs, so `verify` has something
//! to find. Rendering is pure.
use std::{collections::HashMap, fmt::Write as _};

use super::{nft::proto, scenario::Resolved};
use flowpol_analysis::{
    cluster::{snapshot::SnapshotError, Cluster, PodId},
    policy::{
        self,
        clusterwide::{self, ClusterPolicy, ClusterPolicyError},
        engine::Engine,
        Direction, Peer, Policy, PolicyError, PortMatch, PortSpec, Rule,
    },
    record::Protocol,
};

mod tiers;

/// The nft table of the enforcer in every pod namespace (the drop rules have their own).
pub const TABLE: &str = "flowpol_policy";

/// How the enforcer departs from the specification, after bugs CNIs have shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Egress policies are not enforced (CNIs that implemented ingress only).
    IgnoreEgress,
    /// A peer with both `namespaceSelector` and `podSelector` loses its namespaceSelector:
    /// its podSelector is applied in the policy's own namespace.
    IgnoreNamespaceSelectorWithPodSelector,
    /// `ipBlock.except` is ignored: the whole CIDR is allowed.
    IgnoreExcept,
    /// Named ports never match (a rule left with only named ports allows nothing).
    IgnoreNamedPorts,
    /// Nothing is enforced (a CNI without NetworkPolicy support).
    EnforceNothing,
    /// Cluster-scoped policies are not enforced, NetworkPolicies are (a CNI without
    /// ClusterNetworkPolicy support, or with its feature flag off).
    IgnoreClusterPolicies,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::IgnoreEgress,
        Fault::IgnoreNamespaceSelectorWithPodSelector,
        Fault::IgnoreExcept,
        Fault::IgnoreNamedPorts,
        Fault::EnforceNothing,
        Fault::IgnoreClusterPolicies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::IgnoreEgress => "ignore-egress",
            Fault::IgnoreNamespaceSelectorWithPodSelector => "ignore-ns-selector-with-pod-selector",
            Fault::IgnoreExcept => "ignore-except",
            Fault::IgnoreNamedPorts => "ignore-named-ports",
            Fault::EnforceNothing => "enforce-nothing",
            Fault::IgnoreClusterPolicies => "ignore-cluster-policies",
        }
    }

    /// The policies as a CNI with this fault enforces them.
    fn distort(self, policies: Vec<Policy>) -> Vec<Policy> {
        match self {
            Fault::EnforceNothing => return Vec::new(),
            Fault::IgnoreClusterPolicies => return policies,
            _ => {}
        }
        policies
            .into_iter()
            .map(|mut p| {
                if self == Fault::IgnoreEgress {
                    p.egress = None;
                }
                for rules in [&mut p.ingress, &mut p.egress].into_iter().flatten() {
                    rules.retain_mut(|r| self.distort_rule(r));
                }
                p
            })
            .collect()
    }

    /// Changes one rule; false when the rule no longer allows anything.
    fn distort_rule(self, rule: &mut Rule) -> bool {
        for peer in &mut rule.peers {
            match (self, peer) {
                (Fault::IgnoreExcept, Peer::IpBlock { except, .. }) => except.clear(),
                (
                    Fault::IgnoreNamespaceSelectorWithPodSelector,
                    Peer::Pods {
                        pods: Some(_),
                        namespaces,
                    },
                ) => *namespaces = None,
                _ => {}
            }
        }
        if self == Fault::IgnoreNamedPorts && !rule.ports.is_empty() {
            rule.ports
                .retain(|m| !matches!(m.port, Some(PortSpec::Named(_))));
            return !rule.ports.is_empty();
        }
        true
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Fault::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown fault `{s}` (one of: {})", all.join(", "))
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Model(#[from] SnapshotError),
    #[error("{} invalid NetworkPolicy object(s) in the scenario: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Policies(Vec<PolicyError>),
    #[error("{} invalid cluster network policy object(s) in the scenario: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    ClusterPolicies(Vec<ClusterPolicyError>),
}

/// The lab's cluster and its declared policies, compiled.
pub struct Declared {
    pub cluster: Cluster,
    pub policies: Vec<Policy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies, the BaselineAdminNetworkPolicy.
    pub cluster_policies: Vec<ClusterPolicy>,
}

impl Declared {
    /// The engine over every declared policy, of all tiers.
    pub fn engine(&self) -> Engine<'_> {
        Engine::with_cluster_policies(
            &self.cluster,
            self.policies.clone(),
            self.cluster_policies.clone(),
        )
    }
}

/// Reads the scenario's cluster and compiles its policies; every invalid one is named.
pub fn declared(resolved: &Resolved) -> Result<Declared, EnforceError> {
    let snap = super::objects::model(resolved)?;
    let policies = policy::compile_all(&snap.policies).map_err(EnforceError::Policies)?;
    let cluster_policies =
        clusterwide::compile_all(&snap.cluster_policies).map_err(EnforceError::ClusterPolicies)?;
    Ok(Declared {
        cluster: snap.cluster,
        policies,
        cluster_policies,
    })
}

/// Makes the lab enforce its policies (with `faults`): the nft scripts go into
/// `resolved.enforced`, which [`super::Lab::up`] loads into the pods' namespaces.
pub fn install(resolved: &mut Resolved, faults: &[Fault]) -> Result<(), EnforceError> {
    let Declared {
        cluster,
        policies,
        cluster_policies,
    } = declared(resolved)?;
    let policies = faults.iter().fold(policies, |p, f| f.distort(p));
    let ignored = faults
        .iter()
        .any(|f| matches!(f, Fault::IgnoreClusterPolicies | Fault::EnforceNothing));
    let cluster_policies = if ignored {
        Vec::new()
    } else {
        cluster_policies
    };
    let engine = Engine::with_cluster_policies(&cluster, policies, cluster_policies);
    resolved.enforced = render(&engine);
    Ok(())
}

/// One nft script per pod (`namespace/name`) that some policy isolates.
pub fn render(engine: &Engine) -> HashMap<String, String> {
    let cluster = engine.cluster();
    let mut out = HashMap::new();
    for pod in cluster.pod_ids() {
        let p = cluster.pod(pod);
        if !p.is_active() || p.host_network {
            continue;
        }
        let mut script = String::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let selecting = engine.selecting_indexes(pod, dir);
            let tiered = tiers::selects(engine, pod, dir);
            if selecting.is_empty() && !tiered {
                continue;
            }
            let (name, hook, lo) = match dir {
                Direction::Ingress => ("ingress", "input", "iif"),
                Direction::Egress => ("egress", "output", "oif"),
            };
            let preamble = format!(
                "    type filter hook {hook} priority 0; policy accept;\n    \
                 ct state established,related accept\n    {lo} \"lo\" accept\n    \
                 meta l4proto {{ icmp, ipv6-icmp }} accept\n"
            );
            let mut np = String::new();
            for &pi in selecting {
                let policy = &engine.policies()[pi as usize];
                for (ri, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
                    for line in rule_lines(engine, pi as usize, rule, pod, dir) {
                        let _ = writeln!(
                            np,
                            "    {line} accept comment \"{} {name}#{ri}\"",
                            policy.id()
                        );
                    }
                }
            }
            if tiered {
                let isolated = (!selecting.is_empty()).then_some(np.as_str());
                script.push_str(&tiers::chains(
                    engine,
                    pod,
                    dir,
                    (name, &preamble),
                    isolated,
                ));
            } else {
                let _ = write!(
                    script,
                    "  chain {name} {{\n{preamble}{np}    counter drop\n  }}\n"
                );
            }
        }
        if !script.is_empty() {
            out.insert(
                cluster.pod_name(pod),
                format!("table inet {TABLE} {{\n{script}}}\n"),
            );
        }
    }
    out
}

/// The nft matches (without verdict) of one rule for `pod`: one per (peer, port) pair.
fn rule_lines(
    engine: &Engine,
    policy: usize,
    rule: &Rule,
    pod: PodId,
    dir: Direction,
) -> Vec<String> {
    let cluster = engine.cluster();
    let peers: Vec<Option<&Peer>> = if rule.peers.is_empty() {
        vec![None]
    } else {
        rule.peers.iter().map(Some).collect()
    };
    let ports: Vec<Option<&PortMatch>> = if rule.ports.is_empty() {
        vec![None]
    } else {
        rule.ports.iter().map(Some).collect()
    };
    let field = match dir {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let mut lines = Vec::new();
    for peer in &peers {
        for m in &ports {
            match (m, dir) {
                // A named port is the destination pod's: for egress, each destination pod's
                // own number, so the rule goes per pod address.
                (
                    Some(PortMatch {
                        protocol,
                        port: Some(PortSpec::Named(name)),
                    }),
                    Direction::Egress,
                ) => {
                    let dests = match peer {
                        Some(peer) => engine.peer_pods(policy, peer),
                        None => cluster
                            .pod_ids()
                            .filter(|&d| cluster.pod(d).is_active() && !cluster.pod(d).host_network)
                            .collect(),
                    };
                    for d in dests {
                        if let Some(n) = named(cluster, d, name, *protocol) {
                            for ip in &cluster.pod(d).ips {
                                lines.push(format!(
                                    "{} {field} {ip} {} dport {n}",
                                    family(ip.is_ipv4()),
                                    proto(*protocol)
                                ));
                            }
                        }
                    }
                }
                (m, _) => {
                    let port = match m {
                        None => String::new(),
                        Some(PortMatch {
                            protocol,
                            port: None,
                        }) => format!("meta l4proto {}", proto(*protocol)),
                        Some(PortMatch {
                            protocol,
                            port: Some(PortSpec::Range(a, b)),
                        }) if a == b => format!("{} dport {a}", proto(*protocol)),
                        Some(PortMatch {
                            protocol,
                            port: Some(PortSpec::Range(a, b)),
                        }) => format!("{} dport {a}-{b}", proto(*protocol)),
                        Some(PortMatch {
                            protocol,
                            port: Some(PortSpec::Named(name)),
                        }) => match named(cluster, pod, name, *protocol) {
                            Some(n) => format!("{} dport {n}", proto(*protocol)),
                            None => continue,
                        },
                    };
                    for addr in addresses(engine, policy, *peer, field) {
                        lines.push(format!("{addr} {port}").trim().to_owned());
                    }
                }
            }
        }
    }
    lines
}

/// Address matches for a peer: `None` (any), one set per family of matched pods' addresses,
/// or a CIDR with its exceptions.
fn addresses(engine: &Engine, policy: usize, peer: Option<&Peer>, field: &str) -> Vec<String> {
    match peer {
        None => vec![String::new()],
        Some(Peer::IpBlock { cidr, except }) => {
            let fam = family(matches!(cidr, ipnet::IpNet::V4(_)));
            let mut m = format!("{fam} {field} {cidr}");
            let except: Vec<String> = except.iter().map(|e| e.to_string()).collect();
            if !except.is_empty() {
                let _ = write!(m, " {fam} {field} != {{ {} }}", except.join(", "));
            }
            vec![m]
        }
        Some(peer) => {
            let cluster = engine.cluster();
            let pods = engine.peer_pods(policy, peer);
            let mut out = Vec::new();
            for v4 in [true, false] {
                let ips: Vec<String> = pods
                    .iter()
                    .flat_map(|&p| cluster.pod(p).ips.iter())
                    .filter(|ip| ip.is_ipv4() == v4)
                    .map(|ip| ip.to_string())
                    .collect();
                if !ips.is_empty() {
                    out.push(format!("{} {field} {{ {} }}", family(v4), ips.join(", ")));
                }
            }
            out
        }
    }
}

/// The number of `pod`'s container port called `name` for `protocol`.
fn named(cluster: &Cluster, pod: PodId, name: &str, protocol: Protocol) -> Option<u16> {
    cluster
        .pod(pod)
        .ports
        .iter()
        .find(|c| c.name.as_deref() == Some(name) && c.protocol == protocol)
        .map(|c| c.port)
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "ip"
    } else {
        "ip6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scenario::parse, EXAMPLE_SCENARIO};

    fn shop() -> Resolved {
        parse("shop", EXAMPLE_SCENARIO).unwrap()
    }

    /// Every pod's rules in one readable file, held against golden `name` (FLOWPOL_BLESS=1
    /// rewrites it).
    fn golden(r: &Resolved, name: &str) {
        let mut pods: Vec<_> = r.enforced.iter().collect();
        pods.sort();
        let text: String = pods
            .iter()
            .map(|(pod, script)| format!("# {pod}\n{script}"))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/golden")
            .join(name);
        if std::env::var_os("FLOWPOL_BLESS").is_some() {
            assert!(
                std::env::var_os("CI").is_none(),
                "FLOWPOL_BLESS under CI: goldens are reviewed, never rewritten by CI"
            );
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(text, std::fs::read_to_string(&path).unwrap());
    }

    /// The shop's rules, every pod.
    #[test]
    fn renders_the_shop_like_a_cni() {
        let mut r = shop();
        install(&mut r, &[]).unwrap();
        golden(&r, "enforce-shop.nft");
        // Pods no policy selects get no table: they stay open, as the spec says.
        assert!(!r.enforced.contains_key("kube-system/coredns-0"));
        assert!(!r.enforced.contains_key("ingress-nginx/ingress-controller"));
    }

    fn rules_of(faults: &[Fault]) -> HashMap<String, String> {
        let mut r = shop();
        install(&mut r, faults).unwrap();
        r.enforced
    }

    #[test]
    fn each_fault_changes_what_it_names_and_nothing_else() {
        let faithful = rules_of(&[]);
        let no_egress = rules_of(&[Fault::IgnoreEgress]);
        assert!(no_egress.values().all(|s| !s.contains("chain egress")));
        assert_eq!(
            no_egress["data/postgres-0"], faithful["data/postgres-0"],
            "ingress-only pods are untouched"
        );
        let except = rules_of(&[Fault::IgnoreExcept]);
        assert!(faithful["payments/checkout-0"].contains("!= { 203.0.113.66/32 }"));
        assert!(!except["payments/checkout-0"].contains("203.0.113.66"));
        assert_eq!(except["shop/web-0"], faithful["shop/web-0"]);
        let named = rules_of(&[Fault::IgnoreNamedPorts]);
        assert!(
            faithful["shop/web-0"].contains("tcp dport 8080 accept comment \"shop/web ingress#0\"")
        );
        assert!(!named["shop/web-0"].contains("shop/web ingress#0"));
        assert!(named["shop/web-0"].contains("shop/web egress#0"));
        assert_eq!(
            named["shop/cart-0"], faithful["shop/cart-0"],
            "cart's ports are numbers"
        );
        let combined = rules_of(&[Fault::IgnoreNamespaceSelectorWithPodSelector]);
        assert!(
            faithful["data/postgres-0"].contains("10.244.0.12"),
            "cart may reach postgres"
        );
        assert!(!combined["data/postgres-0"].contains("10.244.0.12"));
        assert!(rules_of(&[Fault::EnforceNothing]).is_empty());
    }

    /// The tiers scenario: Admin rules in order ahead of the rest, NetworkPolicy's rules or
    /// the Baseline's in the rest.
    #[test]
    fn renders_cluster_policies_in_tiers() {
        let yaml = include_str!("../../../tests/fixtures/scenario-tiers.yaml");
        let mut r = parse("tiers", yaml).unwrap();
        install(&mut r, &[]).unwrap();
        golden(&r, "enforce-tiers.nft");
        // Beside the golden, what it must mean. web: the Accept of its admin port before
        // the Pass, and (no NetworkPolicy isolates it) the Baseline's Deny in the rest.
        let web = &r.enforced["apps/web-0"];
        let at = |s: &str, what: &str| s.find(what).unwrap_or_else(|| panic!("{what} in\n{s}"));
        assert!(
            at(
                web,
                "tcp dport 8081 accept comment \"cnp/tenants-admin-port ingress#0\""
            ) < at(
                web,
                "goto ingress_rest comment \"cnp/tenants-to-apps ingress#0\""
            )
        );
        let rest = &web[at(web, "chain ingress_rest")..at(web, "chain ingress {")];
        assert!(
            rest.contains("counter drop comment \"banp/default ingress#0\""),
            "{rest}"
        );
        assert!(
            web.contains("tcp dport 9000 counter drop comment \"cnp/tenants-to-apps egress#0\"")
        );
        // db: the Admin Deny, then its NetworkPolicy's rules and the drop; no Baseline.
        let db = &r.enforced["apps/db-0"];
        assert!(db.contains("counter drop comment \"cnp/tenants-no-db ingress#0\""));
        let rest = &db[at(db, "chain ingress_rest")..at(db, "chain ingress {")];
        assert!(
            rest.contains("apps/db ingress#0") && !rest.contains("banp/"),
            "{rest}"
        );
        // The client's own ingress only has the Baseline.
        assert!(r.enforced["tenants/client-0"].contains("banp/default ingress#0"));
        // A CNI that ignores cluster policies enforces db's NetworkPolicy alone.
        let mut ignoring = parse("tiers", yaml).unwrap();
        install(&mut ignoring, &[Fault::IgnoreClusterPolicies]).unwrap();
        assert_eq!(
            ignoring.enforced.keys().collect::<Vec<_>>(),
            vec!["apps/db-0"]
        );
        assert!(!ignoring.enforced["apps/db-0"].contains("_rest"));
    }

    #[test]
    fn faults_parse_by_name() {
        for f in Fault::ALL {
            assert_eq!(f.as_str().parse::<Fault>(), Ok(f));
        }
        assert!("ignore-everything"
            .parse::<Fault>()
            .unwrap_err()
            .contains("ignore-egress"));
    }
}
