//! deploy/ in a real cluster: `kubectl apply -k deploy/` with the built kubectl, the CRD
//! Established, ObservedTraffic objects held to the real structural schema (a malformed one
//! refused, an unknown field pruned), and least privilege proven by the real RBAC
//! authorizer: with a token for the DaemonSet's ServiceAccount from the TokenRequest API,
//! everything the agent needs works, and nothing else does.
mod common;
mod k8s;

use std::time::Duration;

use flowpol_analysis::{
    observed::Observed,
    record::{FlowRecord, Protocol, Verdict},
};
use flowpol_kube::{store::Writer, watch::Live};
use k8s::{ControlPlane, Options};
use serde_json::{json, Value};

const SA: &str = "system:serviceaccount:flowpol-system:flowpol-agent";

/// The cluster with deploy/ applied as its README says, and the shop published.
fn installed() -> ControlPlane {
    let cp = k8s::start(Options::default());
    let out = k8s::apply_deploy(&cp);
    for made in [
        "namespace/flowpol-system created",
        "customresourcedefinition.apiextensions.k8s.io/observedtraffics.flowpol.io created",
        "serviceaccount/flowpol-agent created",
        "clusterrole.rbac.authorization.k8s.io/flowpol-agent created",
        "clusterrolebinding.rbac.authorization.k8s.io/flowpol-agent created",
        "daemonset.apps/flowpol-agent created",
    ] {
        assert!(out.contains(made), "{made}: {out}");
    }
    cp
}

/// `kubectl apply -f -` of `object`: (success, stderr).
fn apply(cp: &ControlPlane, object: &Value) -> (bool, String) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &object.to_string());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn observed_traffic(edge: Value) -> Value {
    json!({"apiVersion": "flowpol.io/v1alpha1", "kind": "ObservedTraffic",
        "metadata": {"name": "deployment-web.node-a", "namespace": "default"},
        "spec": {"workload": {"kind": "Deployment", "name": "web"}, "node": "node-a", "pages": 1, "edges": [edge]}})
}

fn edge() -> Value {
    json!({"direction": "egress", "peer": "data/StatefulSet/db",
        "port": 5432, "protocol": "TCP", "verdicts": {"established": 3}})
}

#[test]
fn the_schema_refuses_malformed_objects_and_prunes_unknown_fields() {
    let cp = installed();
    assert!(
        apply(&cp, &observed_traffic(edge())).0,
        "a well-formed object is taken"
    );
    // What the real structural schema refuses, field by field.
    for (change, field) in [
        (json!({"direction": "sideways"}), "spec.edges[0].direction"),
        (json!({"port": 70000}), "spec.edges[0].port"),
        (json!({"protocol": "ICMP"}), "spec.edges[0].protocol"),
        (
            json!({"verdicts": {"established": -1}}),
            "spec.edges[0].verdicts.established",
        ),
        (json!({"firstSeen": "yesterday"}), "spec.edges[0].firstSeen"),
    ] {
        let mut e = edge();
        for (k, v) in change.as_object().unwrap() {
            e[k] = v.clone();
        }
        let (ok, err) = apply(&cp, &observed_traffic(e));
        assert!(!ok && err.contains(field), "{change}: {err}");
    }
    for field in ["workload", "node"] {
        let mut missing = observed_traffic(edge());
        missing["spec"].as_object_mut().unwrap().remove(field);
        let (ok, err) = apply(&cp, &missing);
        assert!(
            !ok && err.contains(&format!("spec.{field}: Required value")),
            "{err}"
        );
    }
    let mut negative = observed_traffic(edge());
    negative["spec"]["page"] = json!(-1);
    let (ok, err) = apply(&cp, &negative);
    assert!(!ok && err.contains("spec.page"), "{err}");
    let mut keyless = edge();
    keyless.as_object_mut().unwrap().remove("peer");
    let (ok, err) = apply(&cp, &observed_traffic(keyless));
    assert!(
        !ok && err.contains("peer"),
        "an edge's key is required: {err}"
    );
    // An unknown field: kubectl's strict validation refuses it; a client that does not ask
    // for validation has it pruned, as the schema is structural.
    let mut extra = edge();
    extra["colour"] = json!("red");
    let (ok, err) = apply(&cp, &observed_traffic(extra.clone()));
    assert!(!ok && err.contains("colour"), "{err}");
    let out = cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &observed_traffic(extra).to_string(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = k8s::get_json(
        &cp,
        &["observedtraffic", "deployment-web.node-a", "-n", "default"],
    );
    assert_eq!(held["spec"]["edges"][0].get("colour"), None, "pruned");
    assert_eq!(held["spec"]["edges"][0]["verdicts"]["established"], 3);
}

/// `kubectl auth can-i --as=<the agent's ServiceAccount>`: yes or no.
fn can_i(cp: &ControlPlane, verb: &str, resource: &str) -> bool {
    let out = cp.kubectl(&[
        "auth",
        "can-i",
        verb,
        resource,
        "--all-namespaces",
        "--as",
        SA,
    ]);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "can-i {verb} {resource}: {answer}"
    );
    answer == "yes"
}

fn web_to_db() -> FlowRecord {
    let pod = |ip: &str, ns: &str, kind: &str, name: &str| {
        common::pod_endpoint(ip, ns, kind, name, "node-a")
    };

    let mut db = pod("10.244.1.14", "data", "StatefulSet", "postgres");
    db.port = Some(5432);
    let mut r = FlowRecord::new(
        Protocol::TCP,
        pod("10.244.0.11", "shop", "Deployment", "web"),
        db,
        Some(Verdict::Established),
    );
    r.first_seen = Some("2026-01-01T10:00:00Z".parse().unwrap());
    r.last_seen = r.first_seen;
    r
}

#[test]
fn the_agents_service_account_can_do_what_it_needs_and_nothing_else() {
    let cp = installed();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(k8s::publish(
        &cp,
        &k8s::read_list(&k8s::fixtures().join("cluster-shop.yaml")),
    ));
    // The real authorizer's answers for the DaemonSet's ServiceAccount.
    for resource in [
        "namespaces",
        "nodes",
        "pods",
        "services",
        "endpointslices.discovery.k8s.io",
        "networkpolicies.networking.k8s.io",
        "replicasets.apps",
        "jobs.batch",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(can_i(&cp, verb, resource), "{verb} {resource}");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(
                !can_i(&cp, verb, resource),
                "{verb} {resource} must be refused"
            );
        }
    }
    for verb in ["get", "list", "watch", "create", "patch"] {
        assert!(can_i(&cp, verb, "observedtraffics.flowpol.io"), "{verb}");
    }
    assert!(!can_i(&cp, "delete", "observedtraffics.flowpol.io"));
    for resource in [
        "secrets",
        "configmaps",
        "serviceaccounts",
        "deployments.apps",
        "clusterroles.rbac.authorization.k8s.io",
    ] {
        assert!(
            !can_i(&cp, "get", resource),
            "get {resource} must be refused"
        );
    }

    // Its own token, from the TokenRequest API, as the kubelet would mount it.
    let token = cp.token("flowpol-system", "flowpol-agent").unwrap();
    let kubeconfig = cp.token_kubeconfig("agent.kubeconfig", &token).unwrap();
    // What it needs works: the live model, and its share of ObservedTraffic.
    rt.block_on(async {
        let connection = k8s::connect(&kubeconfig).await;
        let live = Live::start(&connection, Duration::from_secs(60));
        live.ready(Duration::from_secs(60))
            .await
            .expect("every kind the model watches is listed and watched with the agent's rights");
        assert!(live
            .model()
            .unwrap()
            .pod_by_name("shop", "web-5c7b9-x2x4k")
            .is_some());
        let seen = std::sync::Mutex::new(Observed::new(100));
        seen.lock().unwrap().add("node-a", &web_to_db());
        let f = Writer::new(connection.client.clone(), "node-a", 100.0)
            .flush(
                &seen,
                tokio::time::Instant::now() + Duration::from_secs(30),
                |_| {},
            )
            .await;
        assert_eq!((f.written, f.failed, f.pending), (2, 0, 0), "{f:?}");
    });
    let written = k8s::observed(&cp, "shop", "Deployment/web", "node-a")
        .expect("written with the agent's token");
    assert_eq!(k8s::appliers(&written), vec!["flowpol-agent/node-a"]);
    let written_name = written["metadata"]["name"].as_str().unwrap().to_owned();
    let (code, out, err) = common::flowpol_code(&[
        "verify",
        "--from-cluster",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(
        code,
        Some(0),
        "verify reads back with the agent's rights: {err}"
    );
    assert!(out.contains("\"findings\""), "{out}");
    // Real attempts at what it must not do are refused by the server.
    for (args, what) in [
        (vec!["get", "secrets", "-A"], "secrets"),
        (vec!["get", "configmaps", "-n", "kube-system"], "configmaps"),
        (
            vec!["delete", "networkpolicy", "web", "-n", "shop"],
            "networkpolicies",
        ),
        (
            vec!["delete", "observedtraffic", &written_name, "-n", "shop"],
            "observedtraffics",
        ),
        (
            vec!["label", "pod", "web-5c7b9-x2x4k", "-n", "shop", "x=y"],
            "pods",
        ),
    ] {
        let (ok, _, err) = k8s::kubectl_with(&cp, &kubeconfig, &args, "");
        assert!(
            !ok && err.contains("Forbidden") && err.contains(SA) && err.contains(what),
            "{args:?}: {err}"
        );
    }
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "sneaky", "namespace": "shop"}, "spec": {"podSelector": {}}});
    let (ok, _, err) = k8s::kubectl_with(
        &cp,
        &kubeconfig,
        &["create", "-f", "-"],
        &policy.to_string(),
    );
    assert!(!ok && err.contains("Forbidden"), "{err}");
}
