//! Properties of the engine over random policies and pods.
use proptest::prelude::*;

use super::*;

const ADDRS: [&str; 9] = [XA, XB, XC, YA, YB, YC, N1, N2, OUT];

fn arb_peer() -> impl Strategy<Value = String> {
    prop_oneof![
        "(a|b|c)".prop_map(|p| format!("{{podSelector: {{matchLabels: {{pod: {p}}}}}}}")),
        "(a|b)".prop_map(|t| format!("{{namespaceSelector: {{matchLabels: {{team: {t}}}}}}}")),
        ("(a|b|c)", "(a|b)").prop_map(|(p, t)| format!("{{podSelector: {{matchLabels: {{pod: {p}}}}}, namespaceSelector: {{matchLabels: {{team: {t}}}}}}}")),
        prop::sample::select(vec!["10.0.0.0/16", "10.0.1.0/24", "0.0.0.0/0", "192.168.0.0/24"]).prop_map(|c| format!("{{ipBlock: {{cidr: {c}}}}}")),
    ]
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(arb_peer(), 0..3),
        prop::option::of(prop::sample::select(vec![53u16, 80, 81])),
    )
        .prop_map(|(peers, port)| {
            let ports = port
                .map(|p| format!(", ports: [{{port: {p}}}]"))
                .unwrap_or_default();
            format!("{{from: [{}]{ports}}}", peers.join(", "))
        })
}

pub(super) fn arb_policy(i: usize) -> impl Strategy<Value = String> {
    (prop::sample::select(vec!["x", "y"]), prop::sample::select(vec!["{}", "{matchLabels: {pod: a}}", "{matchLabels: {tier: db}}"]), prop::collection::vec(arb_rule(), 0..3), any::<bool>())
        .prop_map(move |(ns, sel, rules, egress)| {
            let rules = rules.join(", ").replace("from:", if egress { "to:" } else { "from:" });
            let (types, key) = if egress { ("[Egress]", "egress") } else { ("[Ingress]", "ingress") };
            format!("metadata: {{name: p{i}, namespace: {ns}}}\nspec: {{podSelector: {sel}, policyTypes: {types}, {key}: [{rules}]}}")
        })
}

pub(super) fn arb_conn() -> impl Strategy<Value = Connection> {
    (
        prop::sample::select(ADDRS.to_vec()),
        prop::sample::select(ADDRS.to_vec()),
        prop::sample::select(vec![53u16, 80, 81]),
        any::<bool>(),
    )
        .prop_map(|(s, d, port, is_udp)| {
            if is_udp {
                udp(s, d, port)
            } else {
                tcp(s, d, port)
            }
        })
}

proptest! {
    /// Ends resolved once give every port the verdict the connection gets on its own.
    #[test]
    fn verdicts_between_resolved_ends_are_the_verdicts(
        policies in prop::collection::vec((0..4usize).prop_flat_map(arb_policy), 0..4),
        conns in prop::collection::vec(arb_conn(), 1..20),
    ) {
        let c = cluster();
        let e = Engine::new(&c, policies.iter().map(|p| policy(p)).collect());
        for conn in &conns {
            let ends = e.ends(conn.src, conn.dst);
            prop_assert_eq!(e.verdict_on(&ends, conn.port, conn.protocol), e.verdict(conn), "{:?}", conn);
        }
    }

    #[test]
    fn adding_an_allow_rule_never_denies_an_allowed_flow(
        policies in prop::collection::vec((0..4usize).prop_flat_map(arb_policy), 1..4),
        extra in arb_rule(),
        conns in prop::collection::vec(arb_conn(), 1..20),
    ) {
        let c = cluster();
        let before: Vec<Policy> = policies.iter().map(|p| policy(p)).collect();
        let mut after = before.clone();
        // Add the rule to the first policy, in the direction it already governs.
        let first = &mut after[0];
        let rule = super::super::compile(&serde_yaml::from_str(&format!(
            "metadata: {{name: t, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress, Egress], ingress: [{extra}], egress: [{}]}}",
            extra.replace("from:", "to:")
        )).unwrap()).unwrap();
        if let Some(r) = first.ingress.as_mut() { r.extend(rule.ingress.unwrap()); }
        if let Some(r) = first.egress.as_mut() { r.extend(rule.egress.unwrap()); }
        let (e1, e2) = (Engine::new(&c, before), Engine::new(&c, after));
        for conn in &conns {
            prop_assert!(!e1.allows(conn) || e2.allows(conn), "{conn:?} was allowed, then denied");
            prop_assert_eq!(e1.evaluate(conn).allowed, e1.allows(conn));
        }
    }

    #[test]
    fn a_policy_that_selects_no_pod_changes_nothing(
        policies in prop::collection::vec((0..4usize).prop_flat_map(arb_policy), 0..4),
        conns in prop::collection::vec(arb_conn(), 1..20),
    ) {
        let c = cluster();
        let base: Vec<Policy> = policies.iter().map(|p| policy(p)).collect();
        let mut more = base.clone();
        more.push(policy("metadata: {name: nobody, namespace: x}\nspec: {podSelector: {matchLabels: {pod: nobody}}, policyTypes: [Ingress, Egress]}"));
        more.push(policy("metadata: {name: elsewhere, namespace: absent}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}"));
        let (e1, e2) = (Engine::new(&c, base), Engine::new(&c, more));
        for conn in &conns {
            prop_assert_eq!(e1.allows(conn), e2.allows(conn), "{:?}", conn);
        }
    }
}
