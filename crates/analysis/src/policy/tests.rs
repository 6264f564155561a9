//! Table-driven cases written from the NetworkPolicy API reference, and properties.
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    compile,
    engine::{Connection, Engine, Ruling},
    Policy,
};
use crate::{
    cluster::{Cluster, ClusterBuilder, ContainerPort, LabelSet, Labels, NewPod},
    record::Protocol,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Namespaces `x` (team=a) and `y` (team=b); pods a, b, c in each; a node with a hostNetwork
/// pod; container ports: `serve-80-tcp` 80/TCP, `serve-81-udp` 81/UDP, `dns` 53/UDP.
///
/// | pod   | ip          | labels          |
/// |-------|-------------|-----------------|
/// | x/a   | 10.0.1.1    | pod=a, tier=web |
/// | x/b   | 10.0.1.2    | pod=b, tier=db  |
/// | x/c   | 10.0.1.3    | pod=c           |
/// | y/a   | 10.0.2.1    | pod=a, tier=web |
/// | y/b   | 10.0.2.2, fd00::22 | pod=b, tier=db |
/// | y/c   | 10.0.2.3    | pod=c           |
/// | y/host| node n1 (192.168.0.1), hostNetwork, pod=host |
/// x/* and y/a run on n1, y/b and y/c on n2 (192.168.0.2).
pub(crate) fn cluster() -> Cluster {
    let mut b = ClusterBuilder::new();
    b.namespace("x", labels(&[("team", "a")])).unwrap();
    b.namespace("y", labels(&[("team", "b")])).unwrap();
    b.node("n1", vec!["192.168.0.1".parse().unwrap()], Labels::new())
        .unwrap();
    b.node("n2", vec!["192.168.0.2".parse().unwrap()], Labels::new())
        .unwrap();
    let ports = || {
        vec![
            ContainerPort {
                name: Some("serve-80-tcp".into()),
                port: 80,
                protocol: Protocol::TCP,
            },
            ContainerPort {
                name: Some("serve-81-udp".into()),
                port: 81,
                protocol: Protocol::UDP,
            },
            ContainerPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::UDP,
            },
        ]
    };
    /// (namespace, name, addresses, labels, node)
    type PodRow<'a> = (
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let pods: [PodRow; 6] = [
        (
            "x",
            "a",
            &["10.0.1.1"],
            &[("pod", "a"), ("tier", "web")],
            "n1",
        ),
        (
            "x",
            "b",
            &["10.0.1.2"],
            &[("pod", "b"), ("tier", "db")],
            "n1",
        ),
        ("x", "c", &["10.0.1.3"], &[("pod", "c")], "n1"),
        (
            "y",
            "a",
            &["10.0.2.1"],
            &[("pod", "a"), ("tier", "web")],
            "n1",
        ),
        (
            "y",
            "b",
            &["10.0.2.2", "fd00::22"],
            &[("pod", "b"), ("tier", "db")],
            "n2",
        ),
        ("y", "c", &["10.0.2.3"], &[("pod", "c")], "n2"),
    ];
    for (ns, name, ips, l, node) in pods {
        let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        b.pod(NewPod {
            namespace: ns,
            name,
            labels: LabelSet::shared(labels(l)),
            ips,
            node: Some(node),
            ports: ports().into(),
            ..NewPod::default()
        })
        .unwrap();
    }
    b.pod(NewPod {
        namespace: "y",
        name: "host",
        labels: LabelSet::shared(labels(&[("pod", "host")])),
        ips: vec!["192.168.0.1".parse().unwrap()],
        node: Some("n1"),
        host_network: true,
        ..NewPod::default()
    })
    .unwrap();
    b.build()
}

pub(crate) fn policy(yaml: &str) -> Policy {
    let np: NetworkPolicy = serde_yaml::from_str(yaml).expect("test policy is valid YAML");
    compile(&np).expect("test policy is valid")
}

pub(super) fn tcp(src: &str, dst: &str, port: u16) -> Connection {
    Connection {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        port,
        protocol: Protocol::TCP,
        at: None,
    }
}

pub(super) fn udp(src: &str, dst: &str, port: u16) -> Connection {
    Connection {
        protocol: Protocol::UDP,
        ..tcp(src, dst, port)
    }
}

const XA: &str = "10.0.1.1";
const XB: &str = "10.0.1.2";
const XC: &str = "10.0.1.3";
const YA: &str = "10.0.2.1";
const YB: &str = "10.0.2.2";
const YC: &str = "10.0.2.3";
const N1: &str = "192.168.0.1";
const N2: &str = "192.168.0.2";
const OUT: &str = "203.0.113.7";

/// Each case: policies, then (connection, allowed) pairs.
fn check(policies: &[&str], cases: &[(Connection, bool)]) {
    let c = cluster();
    let engine = Engine::new(&c, policies.iter().map(|p| policy(p)).collect());
    for (conn, want) in cases {
        let d = engine.evaluate(conn);
        assert_eq!(d.allowed, *want, "{conn:?}: {d:#?}");
        assert_eq!(
            engine.allows(conn),
            *want,
            "fast path disagrees for {conn:?}"
        );
    }
}

#[test]
fn no_policy_allows_everything() {
    check(
        &[],
        &[
            (tcp(XA, YB, 80), true),
            (udp(OUT, XA, 53), true),
            (tcp(XA, OUT, 443), true),
        ],
    );
}

#[test]
fn default_deny_ingress_isolates_only_ingress() {
    let deny = "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}";
    check(
        &[deny],
        &[
            (tcp(YA, XB, 80), false),
            (tcp(XA, XB, 80), false),
            (tcp(XB, YA, 80), true),
            (tcp(YA, YB, 80), true),
        ],
    );
    let c = cluster();
    let e = Engine::new(&c, vec![policy(deny)]);
    let d = e.evaluate(&tcp(YA, XB, 80));
    assert_eq!(d.egress.ruling, Ruling::NotIsolated);
    assert_eq!(
        d.ingress.ruling,
        Ruling::Denied {
            isolated_by: vec!["x/deny".into()]
        }
    );
}

#[test]
fn policy_types_are_inferred_from_the_rules() {
    // No policyTypes and an egress section: Ingress AND Egress. Ingress has no rules: deny all.
    let egress_only = "metadata: {name: e, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]";
    check(
        &[egress_only],
        &[
            (tcp(XA, XB, 80), true),
            (tcp(XA, XC, 80), false),
            (tcp(XC, XA, 80), false),
        ],
    );
    // An empty egress list does not add Egress.
    let empty_egress = "metadata: {name: e, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, egress: []}";
    check(
        &[empty_egress],
        &[(tcp(XA, XC, 80), true), (tcp(XC, XA, 80), false)],
    );
    // Explicit Egress only: ingress rules present are ignored and ingress is not isolated.
    let explicit = "metadata: {name: e, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]";
    check(
        &[explicit],
        &[(tcp(XC, XA, 80), true), (tcp(XA, XC, 80), false)],
    );
}

#[test]
fn empty_and_missing_lists() {
    // A rule with neither from nor ports allows everything.
    let all = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}";
    check(&[all], &[(tcp(OUT, XA, 1), true), (udp(YC, XB, 9), true)]);
    // from: [] and ports: [] are the same as missing.
    let empty = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [], ports: []}]}";
    check(&[empty], &[(tcp(OUT, XA, 1), true)]);
    // ingress: [] with Ingress in policyTypes denies all ingress.
    let none = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress], ingress: []}";
    check(&[none], &[(tcp(XB, XA, 80), false)]);
}

#[test]
fn pod_and_namespace_selectors_and_vs_or() {
    let and = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {pod: b}}}]";
    check(
        &[and],
        &[
            (tcp(YB, XA, 80), true),
            (tcp(YC, XA, 80), false),
            (tcp(XB, XA, 80), false),
        ],
    );
    let or = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {pod: b}}}]";
    check(
        &[or],
        &[
            (tcp(YB, XA, 80), true),
            (tcp(YC, XA, 80), true),
            (tcp(XB, XA, 80), true),
            (tcp(XC, XA, 80), false),
        ],
    );
    // podSelector alone: the policy's own namespace only.
    let own = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]";
    check(&[own], &[(tcp(XC, XA, 80), true), (tcp(YC, XA, 80), false)]);
    // An empty namespaceSelector: every namespace.
    let any_ns = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}}]}]";
    check(
        &[any_ns],
        &[
            (tcp(YC, XA, 80), true),
            (tcp(OUT, XA, 80), false),
            (tcp(N2, XA, 80), false),
        ],
    );
    // The automatic namespace name label.
    let by_name = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]";
    check(
        &[by_name],
        &[(tcp(YC, XA, 80), true), (tcp(XC, XA, 80), false)],
    );
}

#[test]
fn match_expressions_in_policies() {
    let p = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}, namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}}]";
    // x/c has no tier label: not selected, not isolated.
    check(
        &[p],
        &[
            (tcp(YC, XC, 80), true),
            (tcp(YC, XA, 80), false),
            (tcp(YB, XA, 80), true),
            (tcp(XB, XA, 80), true),
        ],
    );
}

#[test]
fn ip_blocks_with_except_apply_to_any_address() {
    let p = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]\n  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}, {ipBlock: {cidr: 'fd00::/64'}}]}]";
    check(
        &[p],
        &[
            (tcp(XB, XA, 80), true),
            (tcp(YB, XA, 80), false),
            (tcp(OUT, XA, 80), false),
            (tcp(XA, OUT, 443), true),
            (tcp(XA, XB, 80), false),
            (tcp(XA, "fd00::22", 80), true),
            (tcp(XA, "fd01::1", 80), false),
            (tcp("::ffff:10.0.1.2", XA, 80), true),
        ],
    );
}

#[test]
fn ports_numbers_ranges_names_and_protocols() {
    let p = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80}, {port: 8000, endPort: 8010}, {protocol: UDP, port: serve-81-udp}, {protocol: SCTP}]";
    check(
        &[p],
        &[
            (tcp(YA, XA, 80), true),
            (udp(YA, XA, 80), false),
            (tcp(YA, XA, 8000), true),
            (tcp(YA, XA, 8010), true),
            (tcp(YA, XA, 8011), false),
            (udp(YA, XA, 81), true),
            (tcp(YA, XA, 81), false),
            (
                Connection {
                    protocol: Protocol::SCTP,
                    ..tcp(YA, XA, 5000)
                },
                true,
            ),
        ],
    );
    // A named port resolves against the destination: for egress, the peer pod.
    let egress = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{protocol: UDP, port: dns}]}]";
    check(
        &[egress],
        &[
            (udp(XA, YB, 53), true),
            (udp(XA, YB, 54), false),
            (udp(XA, OUT, 53), false),
        ],
    );
    // TCP by default: the named port exists only as UDP.
    let wrong_proto = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: dns}]}]}";
    check(
        &[wrong_proto],
        &[(tcp(YA, XA, 53), false), (udp(YA, XA, 53), false)],
    );
}

#[test]
fn own_node_always_allowed_and_host_network_is_the_node() {
    let deny_both = "metadata: {name: d, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}";
    check(
        &[deny_both],
        &[
            (tcp(N1, XA, 80), true),
            (tcp(XA, N1, 10250), true),
            (tcp(N2, XA, 80), false),
            (tcp(XA, N2, 80), false),
        ],
    );
    // A policy selecting all pods in y does not select the hostNetwork pod: its node address
    // is not isolated, and pod selectors do not match it.
    let deny_y = "metadata: {name: d, namespace: y}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}";
    let from_pods = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: host}}}]}]";
    check(&[deny_y], &[(tcp(N1, N2, 22), true)]);
    check(&[from_pods], &[(tcp(N2, XA, 80), false)]);
    let from_node_block = "metadata: {name: p, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{ipBlock: {cidr: 192.168.0.1/32}}]}]";
    check(
        &[from_node_block],
        &[(tcp(N1, YC, 80), true), (tcp(XA, YC, 80), false)],
    );
}

#[test]
fn a_pod_may_always_reach_itself() {
    let deny_both = "metadata: {name: d, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}";
    check(
        &[deny_both],
        &[
            (tcp(XA, XA, 80), true),
            (udp(XB, XB, 53), true),
            (tcp(XA, XB, 80), false),
        ],
    );
    let c = cluster();
    let e = Engine::new(&c, vec![policy(deny_both)]);
    assert_eq!(
        e.evaluate(&tcp(XA, XA, 80)).ingress.ruling,
        Ruling::Loopback
    );
}

#[test]
fn policies_are_additive_and_namespaced() {
    let a = "metadata: {name: a, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}";
    let b = "metadata: {name: b, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}";
    check(
        &[a, b],
        &[
            (tcp(XB, XA, 80), true),
            (tcp(XC, XA, 80), true),
            (tcp(YB, XA, 80), false),
            (tcp(XB, YA, 80), true),
        ],
    );
    let c = cluster();
    let e = Engine::new(&c, vec![policy(a), policy(b)]);
    let d = e.evaluate(&tcp(XC, XA, 80));
    assert_eq!(
        serde_json::to_string(&d.ingress).unwrap(),
        r#"{"verdict":"allow","reason":"rule","rules":[{"policy":"x/b","rule":0}]}"#
    );
    let d = e.evaluate(&tcp(YC, XA, 80));
    assert_eq!(
        serde_json::to_string(&d.ingress).unwrap(),
        r#"{"verdict":"deny","reason":"no_rule_matched","isolated_by":["x/a","x/b"]}"#
    );
}

#[test]
fn invalid_policies_name_the_field_and_the_problem() {
    use crate::validation::{Operator, Problem};
    let bad = |spec: &str| {
        let yaml = format!("metadata: {{name: p, namespace: x}}\nspec: {spec}");
        let np: NetworkPolicy = serde_yaml::from_str(&yaml).unwrap();
        let e = compile(&np).expect_err("policy must be rejected");
        assert_eq!(e.policy, "x/p");
        (e.error.field, e.error.problem)
    };
    let cases = [
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
            Problem::NotACidr("10.0.0.0/33".into()),
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            Problem::ExceptOutsideCidr { except: "10.1.0.0/24".into(), cidr: "10.0.0.0/16".into() },
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            Problem::ExceptOutsideCidr { except: "10.0.0.0/16".into(), cidr: "10.0.0.0/16".into() },
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: http, endPort: 90}]}]}",
            "spec.egress[0].ports[0].endPort",
            Problem::EndPortWithNamedPort,
        ),
        (
            "{podSelector: {}, egress: [{ports: [{endPort: 90}]}]}",
            "spec.egress[0].ports[0].endPort",
            Problem::EndPortWithoutPort,
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.egress[0].ports[0].endPort",
            Problem::EndPortBelowPort { start: 90, end: 80 },
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 70000}]}]}",
            "spec.egress[0].ports[0].port",
            Problem::NotAPort(70000),
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Has}]}}",
            "spec.podSelector.matchExpressions[0].operator",
            Problem::UnknownOperator("Has".into()),
        ),
        (
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: NotIn}]}}]}]}",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            Problem::OperatorNeedsValues(Operator::NotIn),
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]",
            Problem::IpBlockWithSelector,
        ),
        (
            "{podSelector: {}, ingress: [{from: [{}]}]}",
            "spec.ingress[0].from[0]",
            Problem::EmptyPeer,
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "spec.ingress[0].ports[0].protocol",
            Problem::UnknownProtocol("ICMP".into()),
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: Web_Port}]}]}",
            "spec.ingress[0].ports[0].port",
            Problem::BadPortName("Web_Port".into()),
        ),
        (
            "{podSelector: {}, policyTypes: [Both]}",
            "spec.policyTypes[0]",
            Problem::UnknownPolicyType("Both".into()),
        ),
    ];
    for (spec, field, problem) in cases {
        assert_eq!(bad(spec), (field.to_owned(), problem), "{spec}");
    }
    // The message users read keeps the policy, the field and the problem in one line.
    let np: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}",
    )
    .unwrap();
    assert_eq!(
        compile(&np).unwrap_err().to_string(),
        "NetworkPolicy x/p: spec.egress[0].ports[0].endPort: endPort 80 is below port 90"
    );
}

mod connectivity;
mod properties;
mod tiers;
