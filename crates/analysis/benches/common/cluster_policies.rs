//! Cluster-scoped policies over the synthetic cluster, for the engine benchmark.
use std::fmt::Write as _;

/// `count` ClusterNetworkPolicies over the same namespaces, as a kubectl `List`: three in four
/// in the Admin tier (unique priorities), the rest Baseline; subjects by team, by namespace
/// name, or the database pods of prod; rules of every action and peer kind.
pub(crate) fn cluster_policies_yaml(namespaces: usize, count: usize) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for c in 0..count {
        let subject = match c % 3 {
            0 => format!("{{namespaces: {{matchLabels: {{team: team-{}}}}}}}", c % 25),
            1 => "{pods: {namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {tier: db}}}}".to_owned(),
            _ => format!("{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: ns-{:03}}}}}}}", c % namespaces.max(1)),
        };
        let (tier, ingress, egress) = if c % 4 == 3 {
            (
                "Baseline",
                "[{name: default-deny, action: Deny, from: [{namespaces: {}}]}]".to_owned(),
                "[{action: Accept, to: [{networks: [10.0.0.0/8]}]}]".to_owned(),
            )
        } else {
            (
                "Admin",
                format!("[{{name: staging-db, action: Deny, from: [{{namespaces: {{matchLabels: {{env: staging}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 5432}}}}}}]}}, {{action: Pass, from: [{{pods: {{namespaceSelector: {{matchLabels: {{team: team-{}}}}}, podSelector: {{matchLabels: {{tier: web}}}}}}}}]}}, {{action: Accept, from: [{{namespaces: {{matchLabels: {{team: team-{}}}}}}}], protocols: [{{destinationNamedPort: metrics}}]}}]", (c + 1) % 25, (c + 2) % 25),
                "[{name: metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}, {action: Accept, to: [{nodes: {}}], protocols: [{tcp: {destinationPort: {range: {start: 10250, end: 10260}}}}]}]".to_owned(),
            )
        };
        let _ = write!(
            y,
            "- apiVersion: policy.networking.k8s.io/v1alpha2\n  kind: ClusterNetworkPolicy\n  metadata: {{name: cnp-{c:03}}}\n  spec: {{tier: {tier}, priority: {}, subject: {subject}, ingress: {ingress}, egress: {egress}}}\n",
            (c * 7) % 1000
        );
    }
    y
}
