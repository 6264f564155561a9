//! Cluster-scoped policy in the enforcer. For a pod that a ClusterNetworkPolicy (or an
//! AdminNetworkPolicy or the BaselineAdminNetworkPolicy) selects, a direction's hook chain
//! holds the Admin tier's rules in evaluation order (Accept: accept, Deny: drop, Pass: on to
//! the rest) and then goes to a second chain: NetworkPolicy's rules when one isolates the pod
//! (what none allows is dropped), else the Baseline tier's rules, then accept. As a CNI does,
//! selectors become the addresses of what they match when the rules are written.
//!
//! `domainNames` peers cannot be matched by address: their rules are left out, as an
//! implementation that cannot resolve names would have to (the policies' verdict on such
//! traffic is undetermined, so verify does not hold either outcome against the lab).
use std::fmt::Write as _;

use flowpol_analysis::{
    cluster::{Cluster, PodId},
    policy::{
        clusterwide::{Action, ClusterPeer, ClusterRule, ProtocolMatch, Tier},
        engine::Engine,
        Direction,
    },
    record::Protocol,
};

use super::{family, proto};

/// Whether cluster policies select `pod` for `dir`.
pub(super) fn selects(engine: &Engine, pod: PodId, dir: Direction) -> bool {
    [Tier::Admin, Tier::Baseline]
        .iter()
        .any(|&t| !engine.tier_list(pod, t, dir).is_empty())
}

/// The two chains of one direction: `name` (the hook chain, opening with `preamble`) and
/// `{name}_rest`. `np` holds NetworkPolicy's accept lines when one isolates the pod.
pub(super) fn chains(
    engine: &Engine,
    pod: PodId,
    dir: Direction,
    (name, preamble): (&str, &str),
    np: Option<&str>,
) -> String {
    let rest = format!("{name}_rest");
    let mut hook = String::new();
    for (policy, ri, rule) in rules(engine, pod, Tier::Admin, dir) {
        let verdict = match rule.action {
            Action::Accept => "accept".to_owned(),
            Action::Deny => "counter drop".to_owned(),
            Action::Pass => format!("goto {rest}"),
        };
        for line in lines(engine.cluster(), rule, pod, dir) {
            let _ = writeln!(
                hook,
                "    {line} {verdict} comment \"{policy} {name}#{ri}\""
            );
        }
    }
    let mut tail = String::new();
    match np {
        Some(np) => {
            tail.push_str(np);
            tail.push_str("    counter drop\n");
        }
        None => {
            for (policy, ri, rule) in rules(engine, pod, Tier::Baseline, dir) {
                let verdict = match rule.action {
                    Action::Deny => "counter drop",
                    // A Baseline Pass ends the tiers: nothing decided, allowed.
                    Action::Accept | Action::Pass => "accept",
                };
                for line in lines(engine.cluster(), rule, pod, dir) {
                    let _ = writeln!(
                        tail,
                        "    {line} {verdict} comment \"{policy} {name}#{ri}\""
                    );
                }
            }
            tail.push_str("    accept\n");
        }
    }
    // The target first: a chain is declared before a rule jumps to it.
    format!(
        "  chain {rest} {{\n{tail}  }}\n  chain {name} {{\n{preamble}{hook}    goto {rest}\n  }}\n"
    )
}

/// The rules of `tier` for `pod` and `dir` in evaluation order, with their policy's id.
fn rules<'e>(
    engine: &'e Engine,
    pod: PodId,
    tier: Tier,
    dir: Direction,
) -> Vec<(String, usize, &'e ClusterRule)> {
    engine
        .tier_list(pod, tier, dir)
        .iter()
        .flat_map(|&pi| {
            let p = &engine.cluster_policies()[pi as usize];
            p.rules(dir)
                .iter()
                .enumerate()
                .map(move |(ri, r)| (p.id(), ri, r))
        })
        .collect()
}

/// The nft matches (without verdict) of one rule for `pod`: one per (peer addresses, port).
fn lines(cluster: &Cluster, rule: &ClusterRule, pod: PodId, dir: Direction) -> Vec<String> {
    let field = match dir {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let ports: Vec<Option<&ProtocolMatch>> = if rule.protocols.is_empty() {
        vec![None]
    } else {
        rule.protocols.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for peer in &rule.peers {
        for m in &ports {
            match (m, dir) {
                // The destination pod's port of that name: for egress, each peer pod's own.
                (Some(ProtocolMatch::Named(name)), Direction::Egress) => {
                    for d in peer_pods(cluster, peer) {
                        if let Some((n, protocol)) = named(cluster, d, name) {
                            for ip in &cluster.pod(d).ips {
                                out.push(format!(
                                    "{} {field} {ip} {} dport {n}",
                                    family(ip.is_ipv4()),
                                    proto(protocol)
                                ));
                            }
                        }
                    }
                }
                (m, _) => {
                    let port = match m {
                        None => String::new(),
                        Some(ProtocolMatch::Ports {
                            protocol,
                            start,
                            end,
                        }) if start == end => format!("{} dport {start}", proto(*protocol)),
                        Some(ProtocolMatch::Ports {
                            protocol,
                            start,
                            end,
                        }) => format!("{} dport {start}-{end}", proto(*protocol)),
                        Some(ProtocolMatch::Named(name)) => match named(cluster, pod, name) {
                            Some((n, protocol)) => format!("{} dport {n}", proto(protocol)),
                            None => continue,
                        },
                    };
                    for addr in addresses(cluster, peer, field) {
                        out.push(format!("{addr} {port}").trim_end().to_owned());
                    }
                }
            }
        }
    }
    out
}

/// The active pods (never hostNetwork ones) a namespaces or pods peer names.
fn peer_pods(cluster: &Cluster, peer: &ClusterPeer) -> Vec<PodId> {
    cluster
        .pod_ids()
        .filter(|&id| {
            let pod = cluster.pod(id);
            let ns = &cluster.namespace(pod.namespace).labels;
            pod.is_active()
                && !pod.host_network
                && match peer {
                    ClusterPeer::Namespaces(s) => s.matches(ns),
                    ClusterPeer::Pods { namespaces, pods } => {
                        namespaces.matches(ns) && pods.matches(&*pod.labels)
                    }
                    _ => false,
                }
        })
        .collect()
}

/// Address matches for a peer, one per family (none when it names nothing here).
fn addresses(cluster: &Cluster, peer: &ClusterPeer, field: &str) -> Vec<String> {
    let ips: Vec<std::net::IpAddr> = match peer {
        ClusterPeer::Networks(nets) => {
            return nets
                .iter()
                .map(|n| format!("{} {field} {n}", family(matches!(n, ipnet::IpNet::V4(_)))))
                .collect()
        }
        ClusterPeer::DomainNames(_) => return Vec::new(),
        ClusterPeer::Nodes(s) => cluster
            .nodes()
            .iter()
            .filter(|n| s.matches(&n.labels))
            .flat_map(|n| n.ips.iter().copied())
            .collect(),
        ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } => peer_pods(cluster, peer)
            .into_iter()
            .flat_map(|p| cluster.pod(p).ips.iter().copied())
            .collect(),
    };
    [true, false]
        .into_iter()
        .filter_map(|v4| {
            let set: Vec<String> = ips
                .iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(|ip| ip.to_string())
                .collect();
            (!set.is_empty()).then(|| format!("{} {field} {{ {} }}", family(v4), set.join(", ")))
        })
        .collect()
}

/// The number and protocol of `pod`'s container port called `name`.
fn named(cluster: &Cluster, pod: PodId, name: &str) -> Option<(u16, Protocol)> {
    cluster
        .pod(pod)
        .ports
        .iter()
        .find(|c| c.name.as_deref() == Some(name))
        .map(|c| (c.port, c.protocol))
}
