use super::{plan::CONTROLLER_SLICES, *};

fn pod(name: &str, owner: Option<(&str, &str)>, labels: Value, phase: &str) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": "old", "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": phase, "podIP": "10.0.0.1"}});
    if let Some((kind, n)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": "1", "controller": true}]);
    }
    p
}

#[test]
fn a_pod_of_a_replicaset_the_snapshot_lacks_gets_it_and_its_deployment() {
    let items = plan(&[
        pod(
            "web-5c7b9-x",
            Some(("ReplicaSet", "web-5c7b9")),
            json!({"app": "web", "pod-template-hash": "5c7b9"}),
            "Running",
        ),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
    ])
    .unwrap();
    let order: Vec<(String, String, bool)> = items
        .iter()
        .map(|i| (i.key().1, i.key().2, i.made))
        .collect();
    assert_eq!(
        order,
        vec![
            ("Namespace".into(), "shop".into(), false),
            ("Deployment".into(), "web".into(), true),
            ("ReplicaSet".into(), "web-5c7b9".into(), true),
            ("Pod".into(), "web-5c7b9-x".into(), false),
        ]
    );
    let (ns, deploy, rs, pod) = (&items[0], &items[1], &items[2], &items[3]);
    assert_eq!(
        ns.object.get("spec"),
        None,
        "the namespace controller's finalizers"
    );
    assert_eq!(ns.status, None, "a namespace's phase is the server's");
    assert_eq!(
        deploy.object["spec"]["selector"]["matchLabels"],
        json!({"app": "web"})
    );
    assert_eq!(
        rs.object["spec"]["selector"]["matchLabels"],
        json!({"app": "web", "pod-template-hash": "5c7b9"})
    );
    assert_eq!(rs.owners[0].0, "Deployment");
    assert_eq!(pod.owners[0].1, "web-5c7b9");
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "ownerReferences",
    ] {
        assert_eq!(pod.object["metadata"].get(f), None, "{f} is the server's");
    }
    let status = pod.status.as_ref().unwrap();
    let ready: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "True")
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        ready,
        ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
    );
}

#[test]
fn controller_slices_are_left_to_the_controller_and_unknown_owners_are_named() {
    let slice = |manager: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "shop",
                "labels": {"endpointslice.kubernetes.io/managed-by": manager}},
            "addressType": "IPv4", "endpoints": []})
    };
    let items = plan(&[slice(CONTROLLER_SLICES), slice("someone-else")]).unwrap();
    assert_eq!(items.len(), 1);
    let finished = plan(&[pod("m", None, json!({}), "Succeeded")]).unwrap();
    let ready = finished[0].status.as_ref().unwrap()["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    let err = plan(&[pod("x", Some(("Rollout", "r")), json!({}), "Running")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Pod shop/x: its owner Rollout r is not in the snapshot"),
        "{err}"
    );
}
