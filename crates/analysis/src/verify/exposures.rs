//! What the declared policies leave open, from the policies alone: pods not isolated,
//! namespaces without a default deny, pods allowed to the API server or to any outside
//! address.
use std::{collections::BTreeMap, net::IpAddr};

use super::{Exposure, Unprotected};
use crate::{
    cluster::{Cluster, PodId},
    policy::{
        engine::{Connection, Engine},
        Direction, Peer,
    },
    record::Protocol,
};

/// The exposures of the declared policies: pods not isolated, namespaces without a default
/// deny, pods allowed to the API server or to any outside address.
pub fn unprotected(engine: &Engine) -> Vec<Unprotected> {
    let cluster = engine.cluster();
    let mut out = Vec::new();
    let api = api_server(cluster);
    for ns in cluster.namespaces() {
        let Some(ns_id) = cluster.namespace_id(&ns.name) else {
            continue;
        };
        let pods: Vec<PodId> = cluster
            .pods_in(ns_id)
            .iter()
            .copied()
            .filter(|&p| {
                let pod = cluster.pod(p);
                pod.is_active() && !pod.host_network
            })
            .collect();
        if pods.is_empty() {
            continue;
        }
        let name = |p: &PodId| cluster.pod(*p).name.to_string();
        let mut group = |exposure: Exposure, pods: Vec<String>, detail: String| {
            out.push(Unprotected {
                exposure,
                namespace: ns.name.clone(),
                pods,
                detail,
            })
        };
        for (dir, exposure) in [
            (Direction::Ingress, Exposure::IngressNotIsolated),
            (Direction::Egress, Exposure::EgressNotIsolated),
        ] {
            let open: Vec<String> = pods
                .iter()
                .filter(|&&p| engine.selecting(p, dir).next().is_none())
                .map(name)
                .collect();
            if !open.is_empty() {
                group(
                    exposure,
                    open,
                    format!(
                        "no NetworkPolicy selects them for {}",
                        format!("{dir:?}").to_lowercase()
                    ),
                );
            }
        }
        for (dir, exposure) in [
            (Direction::Ingress, Exposure::NoDefaultDenyIngress),
            (Direction::Egress, Exposure::NoDefaultDenyEgress),
        ] {
            let has = engine.policies().iter().any(|p| {
                p.namespace == ns.name
                    && p.pod_selector.is_empty()
                    && p.rules(dir).is_some_and(|r| r.is_empty())
            });
            if !has {
                group(
                    exposure,
                    Vec::new(),
                    format!(
                        "no policy with an empty podSelector and no {} rules",
                        format!("{dir:?}").to_lowercase()
                    ),
                );
            }
        }
        if let Some((api_name, targets)) = &api {
            let reach: Vec<String> = pods
                .iter()
                .filter(|&&p| {
                    let Some(&src) = cluster.pod(p).ips.first() else {
                        return false;
                    };
                    targets.iter().any(|&(dst, port)| {
                        engine.allows(&Connection {
                            src,
                            dst,
                            port,
                            protocol: Protocol::TCP,
                            at: None,
                        })
                    })
                })
                .map(name)
                .collect();
            if !reach.is_empty() {
                group(
                    Exposure::ReachesApiServer,
                    reach,
                    format!("egress allowed to {api_name}'s endpoints"),
                );
            }
        }
        // The whole internet: a rule with no peer restriction or a /0 block, any port.
        let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for &p in &pods {
            let mut selecting = engine.selecting(p, Direction::Egress).peekable();
            if selecting.peek().is_none() {
                by_reason
                    .entry("egress not isolated".into())
                    .or_default()
                    .push(name(&p));
                continue;
            }
            let opener = selecting.find_map(|pol| {
                pol.egress.iter().flatten().enumerate().find_map(|(i, r)| {
                    let world = r.peers.is_empty()
                        || r.peers.iter().any(
                            |peer| matches!(peer, Peer::IpBlock { cidr, .. } if cidr.prefix_len() == 0),
                        );
                    world.then(|| format!("allowed by {}#{i}", pol.id()))
                })
            });
            if let Some(reason) = opener {
                by_reason.entry(reason).or_default().push(name(&p));
            }
        }
        for (reason, pods) in by_reason {
            group(Exposure::ReachesInternet, pods, reason);
        }
    }
    out
}

/// `default/kubernetes` and its endpoints (address, port), if the model has them.
fn api_server(cluster: &Cluster) -> Option<(String, Vec<(IpAddr, u16)>)> {
    let svc = cluster
        .services()
        .iter()
        .find(|s| s.name == "kubernetes" && cluster.namespace(s.namespace).name == "default")?;
    let mut targets: Vec<(IpAddr, u16)> = svc
        .ports
        .iter()
        .flat_map(|p| svc.backends(p.port, p.protocol))
        .collect();
    if targets.is_empty() {
        // No endpoints known: the service address itself, as a pod would dial it.
        targets = svc
            .cluster_ips
            .iter()
            .flat_map(|ip| svc.ports.iter().map(move |p| (*ip, p.port)))
            .collect();
    }
    Some((svc.id(cluster), targets))
}
