//! Cluster-scoped policy around NetworkPolicy, case by case from network-policy-api's
//! api-overview and type docs (the expected verdicts are the documents', worked out by
//! hand), then properties.
use proptest::prelude::*;

use super::{properties::arb_conn, *};
use crate::policy::{
    clusterwide::{tests::cluster_policy, tests::cnp, ClusterPolicy},
    engine::PolicyVerdict,
};

fn engine_with<'c>(c: &'c Cluster, nps: &[&str], cps: &[String]) -> Engine<'c> {
    Engine::with_cluster_policies(
        c,
        nps.iter().map(|p| policy(p)).collect(),
        cps.iter().map(|p| cluster_policy(p)).collect(),
    )
}

/// Each connection's verdict, from `evaluate` and from the fast path alike.
fn check(nps: &[&str], cps: &[String], cases: &[(Connection, PolicyVerdict)]) {
    let c = cluster();
    let e = engine_with(&c, nps, cps);
    for (conn, want) in cases {
        let d = e.evaluate(conn);
        assert_eq!(d.verdict(), *want, "{conn:?}: {:#?}", d.reasons());
        assert_eq!(e.verdict(conn), *want, "fast path disagrees for {conn:?}");
        if *want != PolicyVerdict::Undetermined {
            assert_eq!(e.allows(conn), *want == PolicyVerdict::Allow, "{conn:?}");
        }
    }
}

use PolicyVerdict::{Allow, Deny, Undetermined};

/// A CNP named `name` in `tier` at `priority`, selecting namespace x (team=a).
fn on_x(name: &str, tier: &str, priority: u32, rules: &str) -> String {
    cnp(&format!(
        "{{tier: {tier}, priority: {priority}, subject: {{namespaces: {{matchLabels: {{team: a}}}}}}, {rules}}}"
    ))
    .replace("name: p}", &format!("name: {name}}}"))
}

const FROM_Y: &str = "from: [{namespaces: {matchLabels: {team: b}}}]";
const FROM_ALL: &str = "from: [{namespaces: {}}]";
const ALLOW_ALL_TO_X: &str =
    "metadata: {name: all, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}";
const DENY_X: &str = "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}";

#[test]
fn an_admin_deny_overrides_a_network_policy_that_allows() {
    let cps = [on_x(
        "block-y",
        "Admin",
        10,
        &format!("ingress: [{{action: Deny, {FROM_Y}}}]"),
    )];
    check(
        &[ALLOW_ALL_TO_X],
        &cps,
        &[
            (tcp(YA, XB, 80), Deny),
            (tcp(XA, XB, 80), Allow),
            (tcp(XA, YB, 80), Allow),
        ],
    );
    let c = cluster();
    let e = engine_with(&c, &[ALLOW_ALL_TO_X], &cps);
    assert_eq!(
        e.evaluate(&tcp(YA, XB, 80)).reasons(),
        vec![
            "egress: not isolated".to_owned(),
            "ingress: [Admin] Deny by cnp/block-y rule 0 (priority 10)".to_owned()
        ]
    );
}

#[test]
fn an_admin_accept_overrides_a_network_policy_that_denies() {
    let cps = [on_x(
        "let-y",
        "Admin",
        10,
        &format!("ingress: [{{action: Accept, {FROM_Y}}}]"),
    )];
    check(
        &[DENY_X],
        &cps,
        &[(tcp(YA, XB, 80), Allow), (tcp(XA, XB, 80), Deny)],
    );
}

#[test]
fn lower_priority_numbers_come_first_and_the_first_matching_rule_decides() {
    let accept_y = |p| {
        on_x(
            "accept-y",
            "Admin",
            p,
            &format!("ingress: [{{action: Accept, {FROM_Y}}}]"),
        )
    };
    let deny_all = |p| {
        on_x(
            "deny-all",
            "Admin",
            p,
            &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
        )
    };
    check(
        &[],
        &[accept_y(5), deny_all(10)],
        &[(tcp(YA, XB, 80), Allow), (tcp(XA, XB, 80), Deny)],
    );
    check(
        &[],
        &[accept_y(10), deny_all(5)],
        &[(tcp(YA, XB, 80), Deny)],
    );
    // Within a policy, rules in the order written.
    let ordered = on_x(
        "ordered",
        "Admin",
        1,
        &format!(
            "ingress: [{{action: Deny, {FROM_ALL}, protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}},
                       {{action: Accept, {FROM_ALL}}}, {{action: Deny, {FROM_ALL}}}]"
        ),
    );
    check(
        &[DENY_X],
        &[ordered],
        &[
            (tcp(YA, XB, 80), Deny),
            (tcp(YA, XB, 81), Allow),
            (udp(YA, XB, 80), Allow),
        ],
    );
}

#[test]
fn pass_skips_the_rest_of_the_admin_tier_to_network_policy_then_baseline() {
    let pass_y = on_x(
        "pass-y",
        "Admin",
        1,
        &format!("ingress: [{{action: Pass, {FROM_Y}}}]"),
    );
    let deny_all = on_x(
        "deny-all",
        "Admin",
        2,
        &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
    );
    let baseline_deny = on_x(
        "base",
        "Baseline",
        1,
        &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
    );
    let cps = [pass_y.clone(), deny_all.clone(), baseline_deny.clone()];
    // No NetworkPolicy decides: the Baseline does.
    check(
        &[],
        &cps,
        &[(tcp(YA, XB, 80), Deny), (tcp(XA, XB, 80), Deny)],
    );
    // A NetworkPolicy that allows decides for what was passed to it, and only for that.
    check(
        &[ALLOW_ALL_TO_X],
        &cps,
        &[(tcp(YA, XB, 80), Allow), (tcp(XA, XB, 80), Deny)],
    );
    let c = cluster();
    let e = engine_with(&c, &[], &cps);
    assert_eq!(
        e.evaluate(&tcp(YA, XB, 80)).reasons()[1],
        "ingress: [Admin] Pass by cnp/pass-y rule 0 -> [Baseline] Deny by cnp/base rule 0 (priority 1)"
    );
    // A Baseline Pass is the same as no match: allowed.
    let baseline_pass = on_x(
        "base",
        "Baseline",
        1,
        &format!("ingress: [{{action: Pass, {FROM_ALL}}}]"),
    );
    check(&[], &[pass_y, baseline_pass], &[(tcp(YA, XB, 80), Allow)]);
}

#[test]
fn network_policy_decides_before_the_baseline_for_the_pods_it_isolates() {
    let only_b = "metadata: {name: b-from-a, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}";
    let baseline = on_x(
        "base",
        "Baseline",
        1,
        &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
    );
    check(
        &[only_b],
        &[baseline],
        &[
            (tcp(XA, XB, 80), Allow),
            // x/b is isolated by the NetworkPolicy, which denies; the Baseline never runs.
            (tcp(YA, XB, 80), Deny),
            // x/c is not: the Baseline denies.
            (tcp(XA, XC, 80), Deny),
        ],
    );
    let c = cluster();
    let e = engine_with(
        &c,
        &[only_b],
        &[on_x(
            "base",
            "Baseline",
            1,
            &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
        )],
    );
    assert_eq!(
        e.evaluate(&tcp(YA, XB, 80)).reasons()[1],
        "ingress: isolated by x/b-from-a, no rule matched"
    );
}

#[test]
fn the_baseline_admin_network_policy_comes_after_every_baseline_cluster_network_policy() {
    let accept_y = on_x(
        "late",
        "Baseline",
        1000,
        &format!("ingress: [{{action: Accept, {FROM_Y}}}]"),
    );
    let banp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n\
                metadata: {name: default}\nspec: {subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}";
    check(
        &[],
        &[accept_y, banp.to_owned()],
        &[
            (tcp(YA, XB, 80), Allow),
            (tcp(XA, XB, 80), Deny),
            (tcp(XA, YB, 80), Deny),
        ],
    );
}

#[test]
fn a_policy_without_rules_for_a_direction_leaves_it_alone() {
    let egress_only = on_x(
        "egress",
        "Admin",
        1,
        "egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]",
    );
    check(
        &[],
        &[egress_only],
        &[
            (tcp(YA, XB, 80), Allow),
            (tcp(XA, OUT, 443), Deny),
            (tcp(YA, OUT, 443), Allow),
        ],
    );
}

#[test]
fn nodes_networks_and_pod_peers_match_what_they_name() {
    let cps = [on_x(
        "egress",
        "Admin",
        1,
        "egress: [{action: Deny, to: [{nodes: {}}]},
                  {action: Deny, to: [{networks: [10.0.2.0/24, 'fd00::/8']}]},
                  {action: Deny, to: [{pods: {podSelector: {matchLabels: {tier: db}}}}]}]",
    )];
    check(
        &[],
        &cps,
        &[
            (tcp(XA, N2, 10250), Deny),
            (tcp(XA, YA, 80), Deny),
            (tcp(XA, "fd00::22", 80), Deny),
            // x/b is a pod with tier=db, in any namespace (namespaceSelector left out).
            (tcp(XA, XB, 80), Deny),
            (tcp(XA, XC, 80), Allow),
            (tcp(XA, OUT, 80), Allow),
        ],
    );
}

#[test]
fn host_network_pods_are_never_subjects_and_self_traffic_is_exempt() {
    let deny_y = cnp("{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: b}}}, egress: [{action: Deny, to: [{networks: ['0.0.0.0/0']}]}], ingress: [{action: Deny, from: [{namespaces: {}}]}]}");
    check(
        &[],
        &[deny_y],
        &[
            // y/host (192.168.0.1) is the node's address: no subject.
            (tcp(N1, XA, 80), Allow),
            (tcp(YA, XA, 80), Deny),
            (tcp(YA, YA, 80), Allow),
            (tcp(XA, YB, 80), Deny),
        ],
    );
}

#[test]
fn named_ports_resolve_against_the_destination_pods_container_ports() {
    let cps = [on_x(
        "named",
        "Admin",
        1,
        &format!("ingress: [{{action: Deny, {FROM_ALL}, protocols: [{{destinationNamedPort: serve-81-udp}}, {{sctp: {{destinationPort: {{range: {{start: 9000, end: 9100}}}}}}}}]}}]"),
    )];
    let sctp = |port| Connection {
        protocol: Protocol::SCTP,
        ..tcp(YA, XB, port)
    };
    check(
        &[],
        &cps,
        &[
            (udp(YA, XB, 81), Deny),
            (tcp(YA, XB, 81), Allow),
            (udp(YA, XB, 80), Allow),
            (sctp(9050), Deny),
            (sctp(9101), Allow),
        ],
    );
}

#[test]
fn domain_names_make_a_verdict_undetermined_unless_something_certain_decides_first() {
    let accept_dns = on_x(
        "to-example",
        "Admin",
        10,
        "egress: [{action: Accept, to: [{domainNames: [example.com]}]}]",
    );
    let baseline_deny = on_x(
        "base",
        "Baseline",
        1,
        "egress: [{action: Deny, to: [{networks: ['0.0.0.0/0']}]}]",
    );
    let certain = on_x(
        "certain",
        "Admin",
        5,
        "egress: [{action: Deny, to: [{networks: [203.0.113.7/32]}]}]",
    );
    check(
        &[],
        &[accept_dns.clone(), baseline_deny.clone()],
        &[
            (tcp(XA, OUT, 443), Undetermined),
            (tcp(YA, OUT, 443), Allow),
        ],
    );
    check(
        &[],
        &[accept_dns.clone(), baseline_deny, certain],
        &[(tcp(XA, OUT, 443), Deny)],
    );
    // Accept by name, or allowed anyway: allowed whichever it is.
    check(&[], &[accept_dns], &[(tcp(XA, OUT, 443), Allow)]);
}

#[test]
fn a_tie_in_priority_goes_to_the_first_name_and_is_said() {
    let a = on_x(
        "a-accept",
        "Admin",
        7,
        &format!("ingress: [{{action: Accept, {FROM_Y}}}]"),
    );
    let b = on_x(
        "b-deny",
        "Admin",
        7,
        &format!("ingress: [{{action: Deny, {FROM_ALL}}}]"),
    );
    check(
        &[],
        &[b.clone(), a.clone()],
        &[(tcp(YA, XB, 80), Allow), (tcp(XA, XB, 80), Deny)],
    );
    let c = cluster();
    let e = engine_with(&c, &[], &[b, a]);
    let why = &e.evaluate(&tcp(YA, XB, 80)).reasons()[1];
    assert!(
        why.contains("Accept by cnp/a-accept") && why.contains("same priority as cnp/b-deny"),
        "{why}"
    );
    // No tie is mentioned when the other policy would decide the same.
    assert!(!e.evaluate(&tcp(XA, XB, 80)).reasons()[1].contains("same priority"));
}

const PODS: [&str; 6] = [XA, XB, XC, YA, YB, YC];

fn arb_cluster_policy(i: usize) -> impl Strategy<Value = String> {
    let peer = prop::sample::select(vec![
        "{namespaces: {}}",
        "{namespaces: {matchLabels: {team: b}}}",
        "{pods: {podSelector: {matchLabels: {pod: a}}}}",
        "{networks: [10.0.0.0/16]}",
        "{nodes: {}}",
    ]);
    let rule = (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        peer,
        any::<bool>(),
    )
        .prop_map(|(action, peer, egress)| {
            (egress, format!("{{action: {action}, FROM: [{peer}]}}"))
        });
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        0..3u32,
        prop::sample::select(vec!["{namespaces: {}}", "{namespaces: {matchLabels: {team: a}}}", "{pods: {podSelector: {matchLabels: {tier: db}}}}"]),
        prop::collection::vec(rule, 0..4),
    )
        .prop_map(move |(tier, priority, subject, rules)| {
            let list = |egress: bool| {
                let rs: Vec<String> = rules
                    .iter()
                    .filter(|(e, r)| {
                        // Ingress peers are namespaces and pods only.
                        *e == egress && (egress || !(r.contains("networks") || r.contains("nodes")))
                    })
                    .map(|(_, r)| r.replace("FROM", if egress { "to" } else { "from" }))
                    .collect();
                rs.join(", ")
            };
            cnp(&format!("{{tier: {tier}, priority: {priority}, subject: {subject}, ingress: [{}], egress: [{}]}}", list(false), list(true)))
                .replace("name: p}", &format!("name: p{i}}}"))
        })
}

fn compiled(sources: &[String]) -> Vec<ClusterPolicy> {
    sources.iter().map(|s| cluster_policy(s)).collect()
}

proptest! {
    /// An Admin Accept of everything, ahead of all else, allows every flow from a pod.
    #[test]
    fn admin_accept_first_allows_everything(
        cps in prop::collection::vec((0..4usize).prop_flat_map(arb_cluster_policy), 0..4),
        conns in prop::collection::vec(arb_conn(), 1..20),
    ) {
        let c = cluster();
        let mut all = compiled(&cps);
        all.push(cluster_policy(&cnp("{tier: Admin, priority: 0, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}], egress: [{action: Accept, to: [{networks: ['0.0.0.0/0', '::/0']}]}]}").replace("name: p}", "name: '0'}")));
        let e = Engine::with_cluster_policies(&c, vec![policy(DENY_X)], all);
        // Ingress peers are pods: traffic from outside the pods is NetworkPolicy's.
        for conn in conns.iter().filter(|c| PODS.contains(&c.src.to_string().as_str())) {
            prop_assert!(e.allows(conn), "{:?}: {:?}", conn, e.evaluate(conn).reasons());
        }
    }

    /// Adding an Admin-tier Accept rule, anywhere in the order, never turns an allowed flow
    /// into a denied one.
    #[test]
    fn an_admin_accept_never_denies_an_allowed_flow(
        cps in prop::collection::vec((0..4usize).prop_flat_map(arb_cluster_policy), 0..4),
        priority in 0..3u32,
        subject in prop::sample::select(vec!["{namespaces: {}}", "{namespaces: {matchLabels: {team: b}}}", "{pods: {podSelector: {matchLabels: {pod: b}}}}"]),
        peer in prop::sample::select(vec!["{namespaces: {}}", "{namespaces: {matchLabels: {team: a}}}", "{pods: {podSelector: {matchLabels: {tier: web}}}}"]),
        egress in any::<bool>(),
        with_np in any::<bool>(),
        conns in prop::collection::vec(arb_conn(), 1..30),
    ) {
        let c = cluster();
        let nps = if with_np { vec![policy(DENY_X)] } else { Vec::new() };
        let rule = if egress {
            format!("egress: [{{action: Accept, to: [{peer}]}}]")
        } else {
            format!("ingress: [{{action: Accept, from: [{peer}]}}]")
        };
        let mut more = cps.clone();
        more.push(
            cnp(&format!("{{tier: Admin, priority: {priority}, subject: {subject}, {rule}}}"))
                .replace("name: p}", "name: extra}"),
        );
        let before = Engine::with_cluster_policies(&c, nps.clone(), compiled(&cps));
        let after = Engine::with_cluster_policies(&c, nps, compiled(&more));
        for conn in &conns {
            if before.allows(conn) {
                prop_assert!(after.allows(conn), "{:?}: {:?}", conn, after.evaluate(conn).reasons());
            }
        }
    }

    /// The fast path and the explained evaluation agree, and cluster policies that select
    /// no pod leave NetworkPolicy's verdicts as they were.
    #[test]
    fn fast_and_explained_agree(
        cps in prop::collection::vec((0..4usize).prop_flat_map(arb_cluster_policy), 0..5),
        with_np in any::<bool>(),
        conns in prop::collection::vec(arb_conn(), 1..30),
    ) {
        let c = cluster();
        let nps = if with_np { vec![policy(DENY_X)] } else { Vec::new() };
        let tiered = Engine::with_cluster_policies(&c, nps.clone(), compiled(&cps));
        let nobody: Vec<String> = cps
            .iter()
            .map(|p| {
                let at = p.find("subject: ").unwrap();
                let end = at + p[at..].find(", ingress").unwrap();
                format!("{}subject: {{namespaces: {{matchLabels: {{team: none}}}}}}{}", &p[..at], &p[end..])
            })
            .collect();
        let unselecting = Engine::with_cluster_policies(&c, nps.clone(), compiled(&nobody));
        let plain = Engine::new(&c, nps);
        for conn in &conns {
            let d = tiered.evaluate(conn);
            prop_assert_eq!(d.allowed, tiered.allows(conn), "{:?}: {:?}", conn, d.reasons());
            prop_assert_eq!(unselecting.evaluate(conn).reasons(), plain.evaluate(conn).reasons());
            prop_assert_eq!(unselecting.allows(conn), plain.allows(conn));
        }
    }
}
