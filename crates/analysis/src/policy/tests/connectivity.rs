//! The connectivity map over all ports, against answers worked out from the API reference.
use super::{cluster, policy};
use crate::{
    policy::{
        connectivity::{compute, port_classes, render, Ports, Reach},
        engine::{Connection, Engine, PolicyVerdict},
        matrix::Family,
    },
    record::Protocol::{self, SCTP, TCP, UDP},
};

fn ports(protocol: Protocol, start: u16, end: u16) -> Ports {
    Ports {
        protocol,
        start,
        end,
    }
}

/// Ingress to x/b (tier=db) only from tier=web pods of x, on 5432, 9000-9099 and the named
/// port `dns` (53/UDP on every pod).
const DB: &str = "metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {tier: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {tier: web}}}]
    ports: [{port: 5432}, {port: 9000, endPort: 9099}, {port: dns, protocol: UDP}]";

#[test]
fn without_policies_every_pair_reaches_every_port() {
    let c = cluster();
    let e = Engine::new(&c, vec![]);
    assert_eq!(
        port_classes(&e),
        [
            ports(TCP, 1, 65535),
            ports(UDP, 1, 65535),
            ports(SCTP, 1, 65535)
        ]
    );
    let pairs = compute(&e, Family::Ipv4);
    // Six pods with IPv4 addresses (the hostNetwork pod is not in the table): 6 x 5 pairs.
    assert_eq!(pairs.len(), 30);
    assert!(pairs.iter().all(Reach::is_all));
}

#[test]
fn classes_cut_at_every_port_range_and_resolved_name() {
    let c = cluster();
    let e = Engine::new(&c, vec![policy(DB)]);
    assert_eq!(
        port_classes(&e),
        [
            ports(TCP, 1, 5431),
            ports(TCP, 5432, 5432),
            ports(TCP, 5433, 8999),
            ports(TCP, 9000, 9099),
            ports(TCP, 9100, 65535),
            ports(UDP, 1, 52),
            ports(UDP, 53, 53),
            ports(UDP, 54, 65535),
            ports(SCTP, 1, 65535),
        ]
    );
}

#[test]
fn an_isolated_pod_is_reached_only_by_what_its_rules_allow() {
    let c = cluster();
    let e = Engine::new(&c, vec![policy(DB)]);
    let pairs = compute(&e, Family::Ipv4);
    let to_xb: Vec<&Reach> = pairs.iter().filter(|r| r.dst == "x/b").collect();
    assert_eq!(
        to_xb,
        [&Reach {
            src: "x/a".into(),
            dst: "x/b".into(),
            allowed: vec![
                ports(TCP, 5432, 5432),
                ports(TCP, 9000, 9099),
                ports(UDP, 53, 53)
            ],
            undetermined: vec![],
        }]
    );
    // Every other pair is untouched: 30 pairs less the five into x/b, plus x/a's.
    assert_eq!(pairs.len(), 26);
    assert!(pairs.iter().filter(|r| r.dst != "x/b").all(Reach::is_all));
    let text = render(&pairs);
    assert!(text.contains("x/a => x/b : TCP 5432, TCP 9000-9099, UDP 53\n"));
    assert!(text.contains("x/b => x/a : all\n"));
}

/// The classes are exact: the map agrees with a verdict on every single port, here for the
/// one pair whose answer varies by port.
#[test]
fn every_port_agrees_with_its_class() {
    let c = cluster();
    let e = Engine::new(&c, vec![policy(DB)]);
    let pairs = compute(&e, Family::Ipv4);
    let reach = pairs
        .iter()
        .find(|r| (r.src.as_str(), r.dst.as_str()) == ("x/a", "x/b"))
        .expect("x/a reaches x/b");
    for protocol in [TCP, UDP, SCTP] {
        for port in 1..=65535u16 {
            let verdict = e.verdict(&Connection {
                src: "10.0.1.1".parse().unwrap(),
                dst: "10.0.1.2".parse().unwrap(),
                port,
                protocol,
                at: None,
            });
            let listed = reach
                .allowed
                .iter()
                .any(|p| p.protocol == protocol && (p.start..=p.end).contains(&port));
            assert_eq!(verdict == PolicyVerdict::Allow, listed, "{protocol} {port}");
        }
    }
}
