//! The connectivity map over all ports, against answers worked out from the API reference.
use std::sync::Arc;

use proptest::prelude::*;

use super::{cluster, labels, policy};
use crate::{
    cluster::{Cluster, ClusterBuilder, ContainerPort, LabelSet, NewPod, PortRef},
    policy::{
        connectivity::{between, compute, port_classes, render, Ports, Reach},
        engine::{Connection, Engine, PolicyVerdict},
        matrix::{self, Family},
        pod_classes::PodClasses,
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

/// Replicas: pods that share namespace, labels and ports, some of them on addresses an
/// ipBlock tells apart (x/a3 is outside 10.0.1.0/24), and one (y/c2) without named ports.
fn replicas() -> Cluster {
    let mut b = ClusterBuilder::new();
    b.namespace("x", labels(&[("team", "a")])).unwrap();
    b.namespace("y", labels(&[("team", "b")])).unwrap();
    let named = || -> Arc<[ContainerPort]> {
        vec![
            ContainerPort {
                name: Some("serve-80-tcp".into()),
                port: 80,
                protocol: TCP,
            },
            ContainerPort {
                name: Some("dns".into()),
                port: 53,
                protocol: UDP,
            },
        ]
        .into()
    };
    let web = LabelSet::shared(labels(&[("pod", "a"), ("tier", "web")]));
    let db = LabelSet::shared(labels(&[("pod", "b"), ("tier", "db")]));
    let c = LabelSet::shared(labels(&[("pod", "c")]));
    let pods = [
        ("x", "a", "10.0.1.1", &web, named()),
        ("x", "a2", "10.0.1.11", &web, named()),
        ("x", "a3", "10.0.3.1", &web, named()),
        ("x", "b", "10.0.1.2", &db, named()),
        ("x", "b2", "10.0.1.12", &db, named()),
        ("y", "a", "10.0.2.1", &web, named()),
        ("y", "a2", "10.0.2.11", &web, named()),
        ("y", "b", "10.0.2.2", &db, named()),
        ("y", "c", "10.0.2.3", &c, named()),
        ("y", "c2", "10.0.2.13", &c, Arc::from(vec![])),
    ];
    for (namespace, name, ip, labels, ports) in pods {
        b.pod(NewPod {
            namespace,
            name,
            labels: labels.clone(),
            ips: vec![ip.parse().unwrap()],
            ports,
            ..NewPod::default()
        })
        .unwrap();
    }
    b.build()
}

/// The connectivity map the slow way: every pair of pods on its own (the port classes are
/// checked on their own, above).
fn brute(e: &Engine) -> Vec<Reach> {
    let pods = matrix::pods(e, Family::Ipv4);
    let ports = port_classes(e);
    let mut out = Vec::new();
    for (s, _, src) in &pods {
        for (d, _, dst) in &pods {
            if s == d {
                continue;
            }
            let (allowed, undetermined) = between(e, &ports, *src, *dst);
            if !allowed.is_empty() || !undetermined.is_empty() {
                out.push(Reach {
                    src: s.clone(),
                    dst: d.clone(),
                    allowed,
                    undetermined,
                });
            }
        }
    }
    out
}

/// Every cell of the matrix against its own verdict.
fn check_matrix(e: &Engine) {
    let ports = [
        PortRef::Number(80),
        PortRef::Name("dns".into()),
        PortRef::Number(53),
    ];
    let m = matrix::compute(e, &ports, &[TCP, UDP], Family::Ipv4);
    let pods = matrix::pods(e, Family::Ipv4);
    let cluster = e.cluster();
    for case in &m.cases {
        for (si, (_, _, src)) in pods.iter().enumerate() {
            for (di, (_, dst_id, dst)) in pods.iter().enumerate() {
                let number = match case.port.parse::<u16>() {
                    Ok(n) => Some(n),
                    Err(_) => cluster
                        .pod(*dst_id)
                        .ports
                        .iter()
                        .find(|p| {
                            p.name.as_deref() == Some(&case.port) && p.protocol == case.protocol
                        })
                        .map(|p| p.port),
                };
                let want = number.and_then(|port| {
                    match e.verdict(&Connection {
                        src: *src,
                        dst: *dst,
                        port,
                        protocol: case.protocol,
                        at: None,
                    }) {
                        PolicyVerdict::Allow => Some(true),
                        PolicyVerdict::Deny => Some(false),
                        PolicyVerdict::Undetermined => None,
                    }
                });
                assert_eq!(
                    case.allowed[si][di], want,
                    "{}/{} {si} -> {di}",
                    case.protocol, case.port
                );
            }
        }
    }
}

#[test]
fn replicas_share_a_class_unless_an_ip_block_or_a_port_tells_them_apart() {
    let c = replicas();
    let block = "metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {tier: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.1.0/24}}]
    ports: [{port: serve-80-tcp}]";
    let e = Engine::new(&c, vec![policy(block)]);
    let pods = matrix::pods(&e, Family::Ipv4);
    let classes = PodClasses::new(&e, &pods);
    let names =
        |class: &Vec<usize>| -> Vec<&str> { class.iter().map(|&i| pods[i].0.as_str()).collect() };
    let mut got: Vec<Vec<&str>> = classes.members.iter().map(names).collect();
    got.sort();
    assert_eq!(
        got,
        [
            vec!["x/a", "x/a2"],
            vec!["x/a3"],
            vec!["x/b", "x/b2"],
            vec!["y/a", "y/a2"],
            vec!["y/b"],
            vec!["y/c"],
            vec!["y/c2"],
        ]
    );
    let pairs = compute(&e, Family::Ipv4);
    assert_eq!(pairs, brute(&e));
    // Inside the block, x/a reaches x/b on 80 only; x/a3, outside it, not at all.
    let to = |src: &str, dst: &str| {
        pairs
            .iter()
            .find(|r| r.src == src && r.dst == dst)
            .map(|r| r.allowed.clone())
    };
    assert_eq!(to("x/a2", "x/b"), Some(vec![ports(TCP, 80, 80)]));
    assert_eq!(to("x/b2", "x/b"), Some(vec![ports(TCP, 80, 80)]));
    assert_eq!(to("x/a3", "x/b"), None);
    check_matrix(&e);
}

proptest! {
    /// Worked by classes, the map and the matrix are what every pair's own verdicts say.
    #[test]
    fn classes_change_no_answer(
        policies in prop::collection::vec((0..4usize).prop_flat_map(super::properties::arb_policy), 0..4),
    ) {
        let c = replicas();
        let e = Engine::new(&c, policies.iter().map(|p| policy(p)).collect());
        prop_assert_eq!(compute(&e, Family::Ipv4), brute(&e));
        check_matrix(&e);
    }
}
