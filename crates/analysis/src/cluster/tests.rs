use super::*;

fn ip(s: &str) -> Vec<IpAddr> {
    vec![s.parse().unwrap()]
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn addresses_resolve_to_active_pods_nodes_or_outside() {
    let mut b = ClusterBuilder::new();
    b.node("n1", ip("192.168.1.10"), Labels::new()).unwrap();
    let web = b
        .pod(NewPod {
            namespace: "a",
            name: "web",
            ips: ip("10.0.0.5"),
            node: Some("n1"),
            ..NewPod::default()
        })
        .unwrap();
    b.pod(NewPod {
        namespace: "a",
        name: "agent",
        ips: ip("192.168.1.10"),
        node: Some("n1"),
        host_network: true,
        ..NewPod::default()
    })
    .unwrap();
    b.pod(NewPod {
        namespace: "a",
        name: "done",
        ips: ip("10.0.0.6"),
        phase: PodPhase::Succeeded,
        ..NewPod::default()
    })
    .unwrap();
    let c = b.build();
    assert_eq!(
        c.endpoint("10.0.0.5".parse().unwrap()),
        AddressHolder::Pod(web)
    );
    assert_eq!(
        c.endpoint("::ffff:10.0.0.5".parse().unwrap()),
        AddressHolder::Pod(web)
    );
    assert_eq!(
        c.endpoint("192.168.1.10".parse().unwrap()),
        AddressHolder::Node(NodeId(0)),
        "hostNetwork pod is its node"
    );
    assert!(
        matches!(
            c.endpoint("10.0.0.6".parse().unwrap()),
            AddressHolder::External(_)
        ),
        "finished pods hold no address"
    );
    let ns = c.namespace(c.namespace_id("a").unwrap());
    assert_eq!(
        ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("a")
    );
}

#[test]
fn clashing_addresses_are_errors() {
    let mut b = ClusterBuilder::new();
    b.pod(NewPod {
        namespace: "a",
        name: "x",
        ips: ip("10.0.0.5"),
        ..NewPod::default()
    })
    .unwrap();
    let err = b
        .pod(NewPod {
            namespace: "b",
            name: "y",
            ips: ip("10.0.0.5"),
            ..NewPod::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("a/x"), "{err}");
}

#[test]
fn a_reused_address_is_attributed_by_time_at_exact_boundaries() {
    let mut b = ClusterBuilder::new();
    let old = b
        .pod(NewPod {
            namespace: "a",
            name: "old",
            ips: ip("10.0.0.9"),
            created: Some(at("2026-01-01T10:00:00Z")),
            gone: Some(at("2026-01-01T11:00:00Z")),
            ..NewPod::default()
        })
        .unwrap();
    let new = b
        .pod(NewPod {
            namespace: "b",
            name: "new",
            ips: ip("10.0.0.9"),
            created: Some(at("2026-01-01T11:00:00Z")),
            ..NewPod::default()
        })
        .unwrap();
    let c = b.build();
    let addr = "10.0.0.9".parse().unwrap();
    assert_eq!(
        c.endpoint_at(addr, at("2026-01-01T09:59:59Z")),
        AddressHolder::External(addr),
        "before anyone held it"
    );
    assert_eq!(
        c.endpoint_at(addr, at("2026-01-01T10:00:00Z")),
        AddressHolder::Pod(old),
        "from is inclusive"
    );
    assert_eq!(
        c.endpoint_at(addr, at("2026-01-01T10:59:59.999999999Z")),
        AddressHolder::Pod(old)
    );
    assert_eq!(
        c.endpoint_at(addr, at("2026-01-01T11:00:00Z")),
        AddressHolder::Pod(new),
        "until is exclusive: the new holder from then"
    );
    assert_eq!(
        c.endpoint(addr),
        AddressHolder::Pod(new),
        "now: the current holder"
    );
    assert!(!c.pod(old).is_active());
}

#[test]
fn workloads_follow_owner_chains() {
    let mut b = ClusterBuilder::new();
    let owner = |kind: &str, name: &str| {
        Some(Arc::new(OwnerRef {
            kind: kind.into(),
            name: name.into(),
        }))
    };
    b.owner(
        "a",
        "ReplicaSet",
        "web-5c7b9",
        OwnerRef {
            kind: "Deployment".into(),
            name: "web".into(),
        },
    );
    b.owner(
        "a",
        "Job",
        "report-2891",
        OwnerRef {
            kind: "CronJob".into(),
            name: "report".into(),
        },
    );
    let web = b
        .pod(NewPod {
            namespace: "a",
            name: "web-5c7b9-x",
            owner: owner("ReplicaSet", "web-5c7b9"),
            ..NewPod::default()
        })
        .unwrap();
    let labels = Labels::from([("pod-template-hash".to_owned(), "77aa".to_owned())]);
    let api = b
        .pod(NewPod {
            namespace: "a",
            name: "api-77aa-y",
            labels: LabelSet::shared(labels),
            owner: owner("ReplicaSet", "api-77aa"),
            ..NewPod::default()
        })
        .unwrap();
    let job = b
        .pod(NewPod {
            namespace: "a",
            name: "report-2891-z",
            owner: owner("Job", "report-2891"),
            ..NewPod::default()
        })
        .unwrap();
    let db = b
        .pod(NewPod {
            namespace: "a",
            name: "db-0",
            owner: owner("StatefulSet", "db"),
            ..NewPod::default()
        })
        .unwrap();
    let bare = b
        .pod(NewPod {
            namespace: "a",
            name: "debug",
            ..NewPod::default()
        })
        .unwrap();
    let c = b.build();
    let w = |id| {
        let w = c.workload(id);
        format!("{}/{}", w.kind, w.name)
    };
    assert_eq!(w(web), "Deployment/web");
    assert_eq!(
        w(api),
        "Deployment/api",
        "inferred from pod-template-hash without the ReplicaSet"
    );
    assert_eq!(w(job), "CronJob/report");
    assert_eq!(w(db), "StatefulSet/db");
    assert_eq!(w(bare), "Pod/debug", "bare pods are their own workload");
}
