//! Attempts for cluster-scoped policy: for every rule of every ClusterNetworkPolicy (and
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy), from or to each pod it selects (one per
//! label set), the peers the rule names and peers that just miss it, on its ports. Each
//! attempt's expectation is the whole engine's, so an attempt planned for a rule that a
//! higher-priority rule, a Pass or a NetworkPolicy overrides tests that order too.
use super::{dir_name, ports_on, representatives, Addressed, Planner, Wanted};
use crate::{
    cluster::PodId,
    policy::{
        clusterwide::{ClusterPeer, ClusterRule, ProtocolMatch},
        Direction,
    },
    record::Protocol,
};

impl Planner<'_, '_> {
    /// Every rule of every cluster policy, for each pod it selects.
    pub(super) fn cluster_policies(&mut self) {
        let engine = self.engine;
        let cluster = engine.cluster();
        for (pi, policy) in engine.cluster_policies().iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let selected = cluster
                    .pod_ids()
                    .filter(|&p| engine.tier_list(p, policy.tier, dir).contains(&(pi as u32)));
                for target in representatives(cluster, selected) {
                    for (ri, rule) in policy.rules(dir).iter().enumerate() {
                        self.cluster_rule(pi, dir, ri, rule, target);
                    }
                }
            }
        }
    }

    fn cluster_rule(
        &mut self,
        pi: usize,
        dir: Direction,
        ri: usize,
        rule: &ClusterRule,
        target: PodId,
    ) {
        let engine = self.engine;
        let cluster = engine.cluster();
        let p = &engine.cluster_policies()[pi];
        let priority = p
            .priority
            .map(|n| format!(", priority {n}"))
            .unwrap_or_default();
        let label = format!(
            "{} {}#{ri} ({} {}{priority})",
            p.id(),
            dir_name(dir),
            p.tier.as_str(),
            rule.action.as_str()
        );
        // (host, whether the rule names it, its pod)
        let mut peers: Vec<(Addressed, bool, Option<PodId>)> = Vec::new();
        for peer in &rule.peers {
            let pod_match = |id: PodId| -> Option<(bool, bool)> {
                let pod = cluster.pod(id);
                let ns = &cluster.namespace(pod.namespace).labels;
                match peer {
                    ClusterPeer::Namespaces(s) => Some((s.matches(ns), true)),
                    ClusterPeer::Pods { namespaces, pods } => {
                        Some((namespaces.matches(ns), pods.matches(&*pod.labels)))
                    }
                    _ => None,
                }
            };
            let (mut yes, mut near) = (Vec::new(), Vec::new());
            for id in cluster.pod_ids() {
                match pod_match(id) {
                    Some((true, true)) => yes.push(id),
                    // Right namespace and wrong labels, or the other way round.
                    Some((a, b)) if a != b => near.push(id),
                    _ => {}
                }
            }
            for id in representatives(cluster, yes.into_iter()) {
                peers.push((self.pod_host(id), true, Some(id)));
            }
            for id in representatives(cluster, near.into_iter()) {
                peers.push((self.pod_host(id), false, Some(id)));
            }
            if let ClusterPeer::Networks(nets) = peer {
                for o in self.outside {
                    let inside = o.ips.iter().any(|ip| nets.iter().any(|n| n.contains(ip)));
                    peers.push((Self::outside_host(o), inside, None));
                }
            }
        }
        let target_host = self.pod_host(target);
        for (host, named, pod) in peers {
            let what = if named { "matching peer" } else { "near peer" };
            let reason = format!("{label}: {what}");
            let (from, to, dst) = match dir {
                Direction::Ingress => (host, target_host.clone(), Some(target)),
                Direction::Egress => (target_host.clone(), host, pod),
            };
            for port in self.cluster_ports(&rule.protocols, dst) {
                self.add(from.clone(), to.clone(), port, reason.clone());
            }
        }
    }

    /// The concrete ports of a rule's protocols on the destination (see [`ports_on`]); a
    /// named port takes the container port's own protocol.
    fn cluster_ports(
        &self,
        protocols: &[ProtocolMatch],
        dst: Option<PodId>,
    ) -> Vec<(u16, Protocol)> {
        let wanted: Vec<Wanted> = protocols
            .iter()
            .map(|m| match m {
                ProtocolMatch::Ports {
                    protocol,
                    start,
                    end,
                } => Wanted::Range(*protocol, *start, *end),
                ProtocolMatch::Named(name) => Wanted::Named(name, None),
            })
            .collect();
        ports_on(self.engine.cluster(), &wanted, dst)
    }
}
