//! Attribution: naming both ends of every flow record from the cluster model. Pure.
//!
//! An address is named as it was when the flow was first seen (`first_seen`): a pod that held
//! it then (even if deleted and its address reused since), a node (hostNetwork pods included),
//! a service, or an outside address. A service address is resolved through its EndpointSlices
//! to the backends and their target ports; when the responder's side of the same connection
//! was observed too (same client address, and client port when both records carry it), the
//! exact backend is known. Addresses of services without a selector, such as
//! `default/kubernetes` (the API server), are named after their service.
use std::{collections::HashMap, net::IpAddr};

use crate::{
    cluster::{AddressHolder, Cluster, PodId, Timestamp},
    record::{Endpoint, EndpointKind, FlowRecord, Identity, Protocol, Side},
};

/// cgroup id -> pod UID, for the sockets of this node (the node side scans them).
pub type CgroupPods = HashMap<u64, String>;

/// Names the address `ip` as it was at `t` (now when `t` is unknown).
pub fn identify(cluster: &Cluster, ip: IpAddr, t: Option<Timestamp>) -> Identity {
    let who = match t {
        Some(t) => cluster.endpoint_at(ip, t),
        None => cluster.endpoint(ip),
    };
    match who {
        AddressHolder::Pod(id) => pod_identity(cluster, id),
        AddressHolder::Node(n) => Identity {
            kind: Some(EndpointKind::Node),
            node: Some(cluster.node(n).name.clone()),
            ..Identity::default()
        },
        AddressHolder::External(_) => Identity {
            kind: Some(EndpointKind::External),
            ..Identity::default()
        },
    }
}

pub fn pod_identity(cluster: &Cluster, id: PodId) -> Identity {
    let p = cluster.pod(id);
    Identity {
        kind: Some(EndpointKind::Pod),
        namespace: Some(cluster.namespace(p.namespace).name.clone()),
        pod: Some(p.name.to_string()),
        workload: Some(cluster.workload(id)),
        labels: Some(p.labels.to_map()),
        node: p.node.map(|n| cluster.node(n).name.clone()),
        ..Identity::default()
    }
}

/// The service answering at `ip:port` through one of its backends' own addresses, for
/// services without a selector (their endpoints are not pods: the API server's, say).
fn selectorless_service(
    cluster: &Cluster,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Option<String> {
    cluster
        .services()
        .iter()
        .filter(|s| s.selector.is_none())
        .find_map(|s| {
            s.endpoints
                .iter()
                .any(|g| {
                    g.addresses.contains(&ip)
                        && g.ports
                            .iter()
                            .any(|(_, p, proto)| *p == port && *proto == protocol)
                })
                .then(|| s.id(cluster))
        })
}

/// Names both ends of every record, in place.
pub fn enrich(cluster: &Cluster, records: &mut [FlowRecord]) {
    enrich_on_node(cluster, records, &CgroupPods::new());
}

/// As [`enrich`], for records observed on this node: the observing socket's end is named
/// after the pod its cgroup belongs to, whatever its address says (a hostNetwork pod's
/// address is its node's).
pub fn enrich_on_node(cluster: &Cluster, records: &mut [FlowRecord], cgroups: &CgroupPods) {
    // Responder-side observations: (client, server address, server port, protocol, client port).
    let served: Vec<(IpAddr, IpAddr, u16, Protocol, Option<u16>)> = records
        .iter()
        .filter(|r| r.observer.as_ref().is_some_and(|o| o.side == Side::Server))
        .filter_map(|r| Some((r.src.ip, r.dst.ip, r.dst.port?, r.protocol, r.src.port)))
        .collect();
    // Pods by UID (a pod kept as it was and as it is: the latter, added last), when needed.
    let by_uid: HashMap<&str, PodId> = if cgroups.is_empty() {
        HashMap::new()
    } else {
        cluster
            .pod_ids()
            .map(|id| (&*cluster.pod(id).uid, id))
            .filter(|(uid, _)| !uid.is_empty())
            .collect()
    };
    for r in records.iter_mut() {
        let t = r.first_seen;
        r.src.identity = identify(cluster, r.src.ip, t);
        let port = r.dst.port.unwrap_or(0);
        r.dst.identity = match cluster.service_at(r.dst.ip) {
            Some(sid) => {
                let svc = cluster.service(sid);
                let candidates = svc.backends(port, r.protocol);
                // The backend the responder side saw this client reach, if it was observed.
                let seen: Vec<&(IpAddr, u16)> = candidates
                    .iter()
                    .filter(|(ip, p)| {
                        served.iter().any(|(c, s, sp, proto, cport)| {
                            *c == r.src.ip
                                && s == ip
                                && sp == p
                                && *proto == r.protocol
                                && (cport.is_none() || r.src.port.is_none() || *cport == r.src.port)
                        })
                    })
                    .collect();
                let chosen: Vec<(IpAddr, u16)> = if seen.len() == 1 {
                    vec![*seen[0]]
                } else {
                    candidates.clone()
                };
                Identity {
                    kind: Some(EndpointKind::Service),
                    namespace: Some(cluster.namespace(svc.namespace).name.clone()),
                    service: Some(svc.id(cluster)),
                    backends: chosen
                        .into_iter()
                        .map(|(ip, p)| Endpoint {
                            ip,
                            port: Some(p),
                            identity: identify(cluster, ip, t),
                        })
                        .collect(),
                    ..Identity::default()
                }
            }
            None => {
                let mut id = identify(cluster, r.dst.ip, t);
                if let Some(service) = selectorless_service(cluster, r.dst.ip, port, r.protocol) {
                    id.service = Some(service);
                }
                id
            }
        };
        let local = r.observer.as_ref().and_then(|o| {
            let pod = *by_uid.get(cgroups.get(&o.cgroup_id?)?.as_str())?;
            Some((o.side, pod))
        });
        match local {
            Some((Side::Client, pod)) => r.src.identity = pod_identity(cluster, pod),
            Some((Side::Server, pod)) => r.dst.identity = pod_identity(cluster, pod),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{
            ClusterBuilder, EndpointGroup, LabelSet, Labels, NewPod, OwnerRef, PortRef, Service,
            ServicePort,
        },
        record::{Observer, Verdict},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Two backends of `shop/web` (port 80 -> named targetPort `http`, which is 8080 on one
    /// pod and 8081 on the other: two slices), a dual-stack client, a hostNetwork pod, a pod
    /// deleted at 11:00 whose address was reused at once, and the API server.
    fn cluster() -> Cluster {
        let mut b = ClusterBuilder::new();
        b.node("n1", vec![ip("192.168.0.1")], Labels::new())
            .unwrap();
        let rs = Some(std::sync::Arc::new(OwnerRef {
            kind: "ReplicaSet".into(),
            name: "web-5c7b9".into(),
        }));
        let hash = Labels::from([
            ("pod-template-hash".into(), "5c7b9".into()),
            ("app".into(), "web".into()),
        ]);
        b.pod(NewPod {
            namespace: "shop",
            name: "web-a",
            labels: LabelSet::shared(hash.clone()),
            ips: vec![ip("10.0.0.11")],
            owner: rs.clone(),
            node: Some("n1"),
            ..NewPod::default()
        })
        .unwrap();
        b.pod(NewPod {
            namespace: "shop",
            name: "web-b",
            labels: LabelSet::shared(hash),
            ips: vec![ip("10.0.0.12")],
            owner: rs,
            node: Some("n1"),
            ..NewPod::default()
        })
        .unwrap();
        b.pod(NewPod {
            namespace: "shop",
            name: "client",
            ips: vec![ip("10.0.0.20"), ip("fd00::20")],
            node: Some("n1"),
            ..NewPod::default()
        })
        .unwrap();
        b.pod(NewPod {
            namespace: "kube-system",
            name: "agent",
            uid: "uid-agent",
            ips: vec![ip("192.168.0.1")],
            host_network: true,
            node: Some("n1"),
            ..NewPod::default()
        })
        .unwrap();
        b.pod(NewPod {
            namespace: "old",
            name: "gone",
            ips: vec![ip("10.0.0.30")],
            created: Some(at("2026-01-01T10:00:00Z")),
            gone: Some(at("2026-01-01T11:00:00Z")),
            ..NewPod::default()
        })
        .unwrap();
        b.pod(NewPod {
            namespace: "new",
            name: "reuser",
            ips: vec![ip("10.0.0.30")],
            created: Some(at("2026-01-01T11:00:00Z")),
            ..NewPod::default()
        })
        .unwrap();
        b.service("shop", |ns| Service {
            namespace: ns,
            name: "web".into(),
            cluster_ips: vec![ip("10.96.0.40")],
            selector: Some(Labels::from([("app".into(), "web".into())])),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::TCP,
                target: Some(PortRef::Name("http".into())),
            }],
            endpoints: Vec::new(),
        });
        b.endpoints(
            "shop",
            "web",
            EndpointGroup {
                addresses: vec![ip("10.0.0.11")],
                ports: vec![(Some("http".into()), 8080, Protocol::TCP)],
            },
        );
        b.endpoints(
            "shop",
            "web",
            EndpointGroup {
                addresses: vec![ip("10.0.0.12")],
                ports: vec![(Some("http".into()), 8081, Protocol::TCP)],
            },
        );
        b.service("default", |ns| Service {
            namespace: ns,
            name: "kubernetes".into(),
            cluster_ips: vec![ip("10.96.0.1")],
            selector: None,
            ports: vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                protocol: Protocol::TCP,
                target: Some(PortRef::Number(6443)),
            }],
            endpoints: Vec::new(),
        });
        b.endpoints(
            "default",
            "kubernetes",
            EndpointGroup {
                addresses: vec![ip("192.168.0.5")],
                ports: vec![(Some("https".into()), 6443, Protocol::TCP)],
            },
        );
        b.build()
    }

    fn record(
        src: &str,
        sport: Option<u16>,
        dst: &str,
        dport: u16,
        side: Side,
        t: Option<&str>,
    ) -> FlowRecord {
        FlowRecord {
            first_seen: t.map(at),
            last_seen: None,
            protocol: Protocol::TCP,
            src: Endpoint::new(ip(src), sport),
            dst: Endpoint::new(ip(dst), Some(dport)),
            verdict: Some(Verdict::Established),
            drop_reason: None,
            count: 1,
            replies: None,
            error: None,
            node: None,
            observer: Some(Observer {
                side,
                netns: 1,
                cgroup_id: None,
                since: None,
            }),
        }
    }

    #[test]
    fn the_observing_sockets_cgroup_names_a_host_network_pod() {
        let c = cluster();
        let cgroups = CgroupPods::from([(77, "uid-agent".to_owned())]);
        let mut client = record("192.168.0.1", None, "203.0.113.9", 443, Side::Client, None);
        client.observer.as_mut().unwrap().cgroup_id = Some(77);
        let mut server = record(
            "10.0.0.20",
            Some(40000),
            "192.168.0.1",
            9100,
            Side::Server,
            None,
        );
        server.observer.as_mut().unwrap().cgroup_id = Some(77);
        let mut unknown = client.clone();
        unknown.observer.as_mut().unwrap().cgroup_id = Some(78);
        let mut rs = vec![client.clone(), server, unknown];
        enrich_on_node(&c, &mut rs, &cgroups);
        for (r, end) in [(&rs[0], &rs[0].src), (&rs[1], &rs[1].dst)] {
            assert_eq!(
                (end.identity.kind, end.identity.pod.as_deref()),
                (Some(EndpointKind::Pod), Some("agent")),
                "{r:?}"
            );
        }
        assert_eq!(
            rs[1].src.identity.pod.as_deref(),
            Some("client"),
            "the remote end by address"
        );
        assert_eq!(
            rs[2].src.identity.kind,
            Some(EndpointKind::Node),
            "unknown cgroup: by address"
        );
        let mut plain = vec![client];
        enrich(&c, &mut plain);
        assert_eq!(plain[0].src.identity.kind, Some(EndpointKind::Node));
    }

    #[test]
    fn pods_workloads_nodes_and_outside() {
        let c = cluster();
        let mut rs = vec![
            record("fd00::20", None, "10.0.0.11", 8080, Side::Client, None),
            record("192.168.0.1", None, "203.0.113.9", 443, Side::Client, None),
        ];
        enrich(&c, &mut rs);
        let src = &rs[0].src.identity;
        assert_eq!(
            (src.kind, src.namespace.as_deref(), src.pod.as_deref()),
            (Some(EndpointKind::Pod), Some("shop"), Some("client")),
            "IPv6 pod address"
        );
        let dst = &rs[0].dst.identity;
        assert_eq!(
            dst.workload,
            Some(OwnerRef {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            dst.labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            (rs[1].src.identity.kind, rs[1].src.identity.node.as_deref()),
            (Some(EndpointKind::Node), Some("n1")),
            "hostNetwork pod is its node"
        );
        assert_eq!(rs[1].dst.identity.kind, Some(EndpointKind::External));
    }

    #[test]
    fn reused_addresses_are_named_by_time() {
        let c = cluster();
        let mut rs = vec![
            record(
                "10.0.0.20",
                None,
                "10.0.0.30",
                80,
                Side::Client,
                Some("2026-01-01T10:59:59Z"),
            ),
            record(
                "10.0.0.20",
                None,
                "10.0.0.30",
                80,
                Side::Client,
                Some("2026-01-01T11:00:00Z"),
            ),
        ];
        enrich(&c, &mut rs);
        assert_eq!(
            rs[0].dst.identity.pod.as_deref(),
            Some("gone"),
            "the deleted pod held it then"
        );
        assert_eq!(rs[1].dst.identity.pod.as_deref(), Some("reuser"));
    }

    #[test]
    fn services_resolve_to_backends_and_named_target_ports() {
        let c = cluster();
        let mut rs = vec![record(
            "10.0.0.20",
            Some(40000),
            "10.96.0.40",
            80,
            Side::Client,
            None,
        )];
        enrich(&c, &mut rs);
        let d = &rs[0].dst.identity;
        assert_eq!(
            (d.kind, d.service.as_deref()),
            (Some(EndpointKind::Service), Some("shop/web"))
        );
        let backends: Vec<(String, Option<u16>)> = d
            .backends
            .iter()
            .map(|b| (b.ip.to_string(), b.port))
            .collect();
        assert_eq!(
            backends,
            [
                ("10.0.0.11".into(), Some(8080)),
                ("10.0.0.12".into(), Some(8081))
            ],
            "both candidates, each on its own target port"
        );
    }

    #[test]
    fn the_exact_backend_is_matched_by_the_observed_server_side() {
        let c = cluster();
        let mut rs = vec![
            record(
                "10.0.0.20",
                Some(40000),
                "10.96.0.40",
                80,
                Side::Client,
                None,
            ),
            record(
                "10.0.0.20",
                Some(40000),
                "10.0.0.12",
                8081,
                Side::Server,
                None,
            ),
            // Another connection of the same client to the other backend, different port.
            record(
                "10.0.0.20",
                Some(40001),
                "10.0.0.11",
                8080,
                Side::Server,
                None,
            ),
        ];
        enrich(&c, &mut rs);
        let b = &rs[0].dst.identity.backends;
        assert_eq!(b.len(), 1, "{b:#?}");
        assert_eq!(
            (b[0].ip, b[0].port, b[0].identity.pod.as_deref()),
            (ip("10.0.0.12"), Some(8081), Some("web-b"))
        );
    }

    #[test]
    fn the_api_server_is_the_kubernetes_service() {
        let c = cluster();
        let mut rs = vec![
            record("10.0.0.20", None, "10.96.0.1", 443, Side::Client, None),
            record("10.0.0.20", None, "192.168.0.5", 6443, Side::Client, None),
        ];
        enrich(&c, &mut rs);
        assert_eq!(
            rs[0].dst.identity.service.as_deref(),
            Some("default/kubernetes")
        );
        assert_eq!(rs[0].dst.identity.backends[0].port, Some(6443));
        assert_eq!(
            rs[1].dst.identity.service.as_deref(),
            Some("default/kubernetes"),
            "its endpoint address too"
        );
    }
}
