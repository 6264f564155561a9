//! The way back: `ObservedTraffic` objects as attributed flow records, for verify and
//! suggest over what the agents aggregated.
use std::collections::BTreeMap;

use super::{keep_later, EdgeStats, TrafficObject, WireKey, WorkloadKey};
use crate::{
    cluster::Timestamp,
    policy::Direction,
    record::{Endpoint, EndpointKind, FlowRecord, Side, Verdict},
};

/// What [`records`] could not turn back into records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unread {
    /// Edges whose workload (or peer workload) has no pod in the model any more.
    pub gone: u64,
    /// Edges last seen before the window.
    pub older: u64,
}

/// The traffic the `ObservedTraffic` objects hold, as attributed flow records, for verify
/// and suggest: an egress edge becomes a client-side record from one of the workload's pods
/// to the peer, an ingress edge a server-side one from the peer; one record per verdict
/// (drops per reason). Edges last seen before `since` are left out. Both ends are named from
/// `cluster` as it is now (a workload's pod stands for the workload).
pub fn records(
    cluster: &crate::cluster::Cluster,
    objects: &[TrafficObject],
    since: Option<Timestamp>,
) -> (Vec<FlowRecord>, Unread) {
    use crate::{
        attribute,
        cluster::PodId,
        record::{Identity, Observer},
    };
    use std::collections::HashMap;
    // A pod per workload, active ones preferred.
    let mut pods: HashMap<WorkloadKey, PodId> = HashMap::new();
    for id in cluster.pod_ids() {
        let p = cluster.pod(id);
        if p.ips.is_empty() {
            continue;
        }
        let w = cluster.workload(id);
        let key = WorkloadKey {
            namespace: cluster.namespace(p.namespace).name.clone(),
            workload: w,
        };
        match pods.get(&key) {
            Some(held) if cluster.pod(*held).is_active() || !p.is_active() => {}
            _ => {
                pods.insert(key, id);
            }
        }
    }
    let pod_end = |w: &WorkloadKey| {
        pods.get(w).map(|&id| Endpoint {
            ip: cluster.pod(id).ips[0],
            port: None,
            identity: attribute::pod_identity(cluster, id),
        })
    };
    let peer_end = |peer: &str| -> Option<Endpoint> {
        let parts: Vec<&str> = peer.splitn(3, '/').collect();
        match parts.as_slice() {
            // Kinds are capitalized; namespaces (even one called "service") are not.
            [ns, kind, name] if kind.starts_with(|c: char| c.is_ascii_uppercase()) => {
                pod_end(&WorkloadKey::new(*ns, (*kind).into(), *name))
            }
            ["service", ns, name] => {
                let svc = cluster
                    .services()
                    .iter()
                    .find(|s| s.name == *name && cluster.namespace(s.namespace).name == *ns)?;
                Some(Endpoint {
                    ip: *svc.cluster_ips.first()?,
                    port: None,
                    identity: Identity {
                        kind: Some(EndpointKind::Service),
                        namespace: Some(ns.to_string()),
                        service: Some(format!("{ns}/{name}")),
                        ..Identity::default()
                    },
                })
            }
            ["node", name] => {
                let n = cluster.nodes().iter().find(|n| n.name == *name)?;
                Some(Endpoint {
                    ip: *n.ips.first()?,
                    port: None,
                    identity: Identity {
                        kind: Some(EndpointKind::Node),
                        node: Some(n.name.clone()),
                        ..Identity::default()
                    },
                })
            }
            _ => {
                let ip = peer.parse().ok()?;
                Some(Endpoint {
                    ip,
                    port: None,
                    identity: attribute::identify(cluster, ip, None),
                })
            }
        }
    };
    // Each edge once, however many pages held it.
    let mut edges: BTreeMap<(WorkloadKey, &str, &WireKey), EdgeStats> = BTreeMap::new();
    for o in objects {
        for e in &o.edges {
            keep_later(&mut edges, (o.workload_key(), &o.node, &e.key), &e.stats);
        }
    }
    let mut out = Vec::new();
    let mut unread = Unread::default();
    for ((w, node, key), stats) in &edges {
        if since.is_some() && stats.last_seen.is_none_or(|t| Some(t) < since) {
            unread.older += 1;
            continue;
        }
        let (Some(own), Some(peer)) = (pod_end(w), peer_end(&key.peer)) else {
            unread.gone += 1;
            continue;
        };
        let (mut src, mut dst, side) = match key.direction {
            Direction::Egress => (own, peer, Side::Client),
            Direction::Ingress => (peer, own, Side::Server),
        };
        src.port = None;
        dst.port = Some(key.port);
        let mut tallies: Vec<(Verdict, Option<String>, u64)> = Vec::new();
        for (v, n) in stats.verdicts.iter() {
            if v == Verdict::Dropped {
                let mut left = n;
                for (reason, &m) in &stats.drop_reasons {
                    tallies.push((v, Some(reason.clone()), m.min(left)));
                    left = left.saturating_sub(m);
                }
                if left > 0 {
                    tallies.push((v, None, left));
                }
            } else {
                tallies.push((v, None, n));
            }
        }
        for (verdict, drop_reason, count) in tallies.into_iter().filter(|t| t.2 > 0) {
            let mut r = FlowRecord::new(key.protocol, src.clone(), dst.clone(), Some(verdict));
            r.count = count;
            r.drop_reason = drop_reason;
            r.first_seen = stats.first_seen;
            r.last_seen = stats.last_seen;
            r.node = Some(node.to_string());
            r.observer = Some(Observer {
                side: if verdict == Verdict::Dropped {
                    Side::Path
                } else {
                    side
                },
                netns: 0,
                cgroup_id: None,
                since: None,
            });
            out.push(r);
        }
    }
    (out, unread)
}
