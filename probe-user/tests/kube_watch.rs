//! The live cluster model against a real kube-apiserver (on kine, with the controller
//! manager): the shop published as a cluster holds it, then churn as a cluster makes it:
//! pods created and deleted, an address reused, a Job's pod completing, endpoints following
//! backends as the endpointslice controller moves them, namespace labels changing; and the
//! faults: watches cut mid-stream and connections refused (a proxy in front of the server),
//! an API server restarted while the store compacted its history past the watchers'
//! resourceVersion (410, relist).
mod k8s;

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use controlplane::{FaultProxy, Mode};
use flowpol_analysis::cluster::{AddressHolder, Cluster};
use flowpol_kube::watch::Live;
use k8s::{run, ControlPlane, Options};
use serde_json::{json, Value};

/// Long enough for any retry to land: the watchers' backoff (kube-runtime's default, as
/// client-go's) doubles from 0.8 s up to 30 s between attempts, so after an outage a retry
/// may be up to 30 s away.
const PATIENCE: Duration = Duration::from_secs(75);
/// flowpol's own user, so the audit log tells its requests from kubectl's and the
/// controllers'.
const USER: &str = "flowpol-watcher";

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// A control plane holding the shop fixture.
async fn shop(opts: Options) -> ControlPlane {
    let cp = k8s::start(opts);
    k8s::publish(
        &cp,
        &k8s::read_list(&k8s::fixtures().join("cluster-shop.yaml")),
    )
    .await;
    cp
}

/// flowpol's kubeconfig (its own user, admin rights) for `server`.
fn kubeconfig(cp: &ControlPlane, server: &str) -> PathBuf {
    let path = cp
        .user_kubeconfig("flowpol.kubeconfig", USER, Some("system:masters"))
        .unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&cp.server(), server);
    std::fs::write(&path, text).unwrap();
    path
}

async fn live(kubeconfig: &std::path::Path) -> Live {
    let live = Live::start(&k8s::connect(kubeconfig).await, Duration::from_secs(600));
    live.ready(PATIENCE).await.expect("every kind listed");
    live
}

/// Waits until the model satisfies `check`, re-checking on every watcher change.
async fn until(live: &Live, what: &str, check: impl Fn(&Cluster) -> bool) {
    let wait = async {
        loop {
            let changed = live.changed();
            if check(&live.model().expect("model builds")) {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}; status: {}", live.status()));
}

/// Polls `check` until it holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let wait = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

fn pod_named(c: &Cluster, who: AddressHolder) -> String {
    match who {
        AddressHolder::Pod(p) => c.pod_name(p),
        other => format!("{other:?}"),
    }
}

/// flowpol's requests of `verb` on pods, in the audit log.
fn pod_requests(cp: &ControlPlane, verb: &str) -> Vec<Value> {
    k8s::requests(cp, verb, "pods", "")
        .into_iter()
        .filter(|e| e["user"]["username"] == USER)
        .collect()
}

/// Deletes a pod through API server `server` as its kubelet does once the containers are
/// gone (at once: no kubelet runs here to finish a graceful deletion).
fn delete_pod(cp: &ControlPlane, server: usize, namespace: &str, name: &str) {
    let args = [
        "delete",
        "pod",
        name,
        "-n",
        namespace,
        "--grace-period=0",
        "--force",
    ];
    kubectl_via(cp, server, &args, "");
}

/// kubectl as admin through API server `server`, `input` on stdin; fails the test if it fails.
fn kubectl_via(cp: &ControlPlane, server: usize, args: &[&str], input: &str) {
    let (ok, _, err) = k8s::kubectl_with(cp, &cp.admin_kubeconfig(server), args, input);
    assert!(ok, "kubectl {args:?}: {err}");
}

fn created_at(object: &Value) -> DateTime<Utc> {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn pods_come_and_go_and_a_reused_address_is_named_by_the_time_of_the_flow() {
    run(async {
        let cp = shop(Options::default()).await;
        let live = live(&kubeconfig(&cp, &cp.server())).await;
        let status = live.status();
        assert!(status.ready, "{status}");
        let pods = status
            .kinds
            .iter()
            .find(|k| k.kind.as_str() == "Pod")
            .unwrap();
        let listed = k8s::read_list(&k8s::fixtures().join("cluster-shop.yaml"))
            .iter()
            .filter(|o| o["kind"] == "Pod")
            .count();
        assert_eq!(pods.objects, listed, "every pod of the fixture listed");
        assert_eq!(status.stale_seconds, 0.0);

        let web = ip("10.244.0.11");
        let c = live.model().unwrap();
        assert_eq!(pod_named(&c, c.endpoint(web)), "shop/web-5c7b9-x2x4k");
        // Its ReplicaSet and that one's Deployment exist in the server, read through the
        // metadata-only watch.
        let w = c.workload(c.pod_by_name("shop", "web-5c7b9-x2x4k").unwrap());
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Deployment", "web"));

        // The pod goes; a pod elsewhere gets its address a moment later.
        let before = Utc::now();
        delete_pod(&cp, 0, "shop", "web-5c7b9-x2x4k");
        until(&live, "the deleted pod's address is free", |c| {
            matches!(c.endpoint(web), AddressHolder::External(_))
        })
        .await;
        // Creation times have a resolution of one second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        cp.kubectl_ok(&["create", "namespace", "other"]).unwrap();
        let reuser = k8s::running_pod(
            &cp,
            "other",
            "reuser",
            json!({"app": "reuser"}),
            "node-a",
            "10.244.0.11",
            true,
        );
        let created = created_at(&reuser);
        assert!(created > before, "{created} after {before}");
        until(&live, "the new pod holds the address", |c| {
            pod_named(c, c.endpoint(web)) == "other/reuser"
        })
        .await;
        let c = live.model().unwrap();
        assert_eq!(
            pod_named(&c, c.endpoint_at(web, before)),
            "shop/web-5c7b9-x2x4k",
            "a flow from before the deletion is the old pod's"
        );
        assert_eq!(
            pod_named(&c, c.endpoint_at(web, created)),
            "other/reuser",
            "from its creation on (as the server stamped it), the address is the new pod's"
        );
    });
}

#[test]
fn a_jobs_pod_hands_its_address_back_when_it_completes() {
    run(async {
        let cp = shop(Options::default()).await;
        let live = live(&kubeconfig(&cp, &cp.server())).await;
        let job = k8s::create(
            &cp,
            &json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "report", "namespace": "shop"},
                "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "x"}]}}}}),
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "report-x1", "namespace": "shop", "labels": {"job-name": "report"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "report",
                    "uid": job["metadata"]["uid"], "controller": true}]},
            "spec": {"nodeName": "node-b", "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}});
        k8s::create(&cp, &pod);
        let addr = ip("10.244.1.77");
        k8s::set_status(
            &cp,
            "pod",
            "shop",
            "report-x1",
            json!({"phase": "Running", "podIP": "10.244.1.77", "podIPs": [{"ip": "10.244.1.77"}]}),
        );
        until(&live, "the Job's pod holds its address", |c| {
            pod_named(c, c.endpoint(addr)) == "shop/report-x1"
        })
        .await;
        let c = live.model().unwrap();
        let w = c.workload(c.pod_by_name("shop", "report-x1").unwrap());
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Job", "report"));
        let running = Utc::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Completed: the kubelet reports Succeeded and the status keeps the address, which
        // the network has handed back.
        k8s::set_status(
            &cp,
            "pod",
            "shop",
            "report-x1",
            json!({"phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]}),
        );
        until(
            &live,
            "the completed pod no longer holds its address",
            |c| matches!(c.endpoint(addr), AddressHolder::External(_)),
        )
        .await;
        let held = k8s::get_json(&cp, &["pod", "report-x1", "-n", "shop"]);
        assert_eq!(
            held["status"]["podIP"], "10.244.1.77",
            "the server keeps the address in the status"
        );
        let c = live.model().unwrap();
        assert_eq!(
            pod_named(&c, c.endpoint_at(addr, running)),
            "shop/report-x1",
            "while it ran, the address was the pod's"
        );
        assert!(
            c.pod_by_name("shop", "report-x1").is_some(),
            "the pod itself stays in the model"
        );
        // A new pod may get the address now.
        k8s::running_pod(
            &cp,
            "shop",
            "next",
            json!({"app": "next"}),
            "node-b",
            "10.244.1.77",
            true,
        );
        until(&live, "the new holder", |c| {
            pod_named(c, c.endpoint(addr)) == "shop/next"
        })
        .await;
    });
}

#[test]
fn endpoints_follow_backends_as_they_become_ready_and_namespace_labels_change() {
    run(async {
        let cp = shop(Options::default()).await;
        let live = live(&kubeconfig(&cp, &cp.server())).await;
        let web_backends = |c: &Cluster| -> Vec<std::net::IpAddr> {
            let mut a: Vec<_> = c
                .services()
                .iter()
                .filter(|s| s.name == "web")
                .flat_map(|s| s.endpoints.iter().flat_map(|g| g.addresses.clone()))
                .collect();
            a.sort();
            a
        };
        assert_eq!(
            web_backends(&live.model().unwrap()),
            vec![ip("10.244.0.11")]
        );
        // A second replica starts, not ready yet: the controller lists it as not ready, and
        // the model leaves it out.
        let labels = json!({"app.kubernetes.io/name": "web", "tier": "frontend"});
        k8s::running_pod(
            &cp,
            "shop",
            "web-second",
            labels,
            "node-b",
            "10.244.1.21",
            false,
        );
        eventually("the controller lists the unready backend", || {
            k8s::get_json(
                &cp,
                &[
                    "endpointslices",
                    "-n",
                    "shop",
                    "-l",
                    "kubernetes.io/service-name=web",
                ],
            )["items"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .any(|e| e["addresses"][0] == "10.244.1.21" && e["conditions"]["ready"] == false)
        })
        .await;
        assert_eq!(
            web_backends(&live.model().unwrap()),
            vec![ip("10.244.0.11")]
        );
        // It becomes ready; then the first one goes.
        k8s::set_status(
            &cp,
            "pod",
            "shop",
            "web-second",
            json!({"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}),
        );
        until(&live, "the ready replica is a backend", |c| {
            web_backends(c) == vec![ip("10.244.0.11"), ip("10.244.1.21")]
        })
        .await;
        delete_pod(&cp, 0, "shop", "web-5c7b9-x2x4k");
        until(&live, "only the second replica is left", |c| {
            web_backends(c) == vec![ip("10.244.1.21")]
        })
        .await;
        // Namespace labels change, and with them what policies select.
        cp.kubectl_ok(&[
            "label",
            "namespace",
            "payments",
            "team=checkout",
            "--overwrite",
        ])
        .unwrap();
        until(&live, "the namespace's new label", |c| {
            let ns = c.namespace_id("payments").unwrap();
            c.namespace(ns).labels.get("team").map(String::as_str) == Some("checkout")
        })
        .await;
        cp.kubectl_ok(&["label", "namespace", "payments", "team-"])
            .unwrap();
        until(&live, "the label removed", |c| {
            let ns = c.namespace_id("payments").unwrap();
            !c.namespace(ns).labels.contains_key("team")
        })
        .await;
    });
}

#[test]
fn owners_are_read_from_metadata_only_watches() {
    run(async {
        let cp = shop(Options::default()).await;
        let live = live(&kubeconfig(&cp, &cp.server())).await;
        // A ReplicaSet whose name says nothing about its Deployment: only its owner
        // reference, read through the metadata-only watch, names the workload.
        let labels = json!({"app": "storefront"});
        let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let deployment = k8s::create(
            &cp,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "storefront", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": labels}, "template": template}}),
        );
        let rs = k8s::create(
            &cp,
            &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "rs-opaque", "namespace": "shop",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": "storefront", "uid": deployment["metadata"]["uid"], "controller": true}]},
                "spec": {"selector": {"matchLabels": labels}, "template": template}}),
        );
        k8s::create(
            &cp,
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "rs-opaque-abcde", "namespace": "shop", "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "rs-opaque", "uid": rs["metadata"]["uid"], "controller": true}]},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}}),
        );
        until(&live, "the pod's workload is the Deployment", |c| {
            c.pod_by_name("shop", "rs-opaque-abcde").is_some_and(|id| {
                let w = c.workload(id);
                w.kind == "Deployment" && w.name == "storefront"
            })
        })
        .await;
    });
}

#[test]
fn a_cut_or_refused_watch_resumes_from_its_resource_version_without_relisting() {
    run(async {
        // The store compacts its history every second: resuming works from the API server's
        // watch cache, not from history the store still happens to keep.
        let cp = shop(Options {
            compaction: Some(Duration::from_secs(1)),
            ..Options::default()
        })
        .await;
        let proxy = FaultProxy::start(cp.apiserver_addr(0)).unwrap();
        let live = live(&kubeconfig(&cp, &proxy.url())).await;
        assert_eq!(pod_requests(&cp, "list").len(), 1);
        let watches = pod_requests(&cp, "watch").len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Cut mid-stream: every open watch ends at once.
        proxy.cut();
        k8s::running_pod(
            &cp,
            "shop",
            "late",
            json!({"app": "late"}),
            "node-a",
            "10.244.0.50",
            true,
        );
        until(&live, "the pod created across the cut arrives", |c| {
            pod_named(c, c.endpoint(ip("10.244.0.50"))) == "shop/late"
        })
        .await;
        eventually("the pod watch is reopened", || {
            pod_requests(&cp, "watch").len() > watches
        })
        .await;
        // Refused for a while: the watchers say so, and resume when let through.
        proxy.set(Mode::Refuse);
        eventually("the watchers notice", || live.status().stale_seconds > 0.0).await;
        k8s::running_pod(
            &cp,
            "shop",
            "later",
            json!({"app": "later"}),
            "node-a",
            "10.244.0.51",
            true,
        );
        proxy.set(Mode::Pass);
        until(&live, "the pod created while refused arrives", |c| {
            c.pod_by_name("shop", "later").is_some()
        })
        .await;
        eventually("the watchers recover", || {
            let s = live.status();
            s.ready && s.stale_seconds == 0.0
        })
        .await;
        let resumed: Vec<String> = pod_requests(&cp, "watch")
            .iter()
            .map(|e| e["requestURI"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            resumed
                .iter()
                .skip(1)
                .all(|u| u.contains("resourceVersion=")),
            "every reopened watch names the resourceVersion it had reached: {resumed:#?}"
        );
        assert_eq!(
            pod_requests(&cp, "list").len(),
            1,
            "resumed from its resourceVersion, no relist"
        );
    });
}

/// The last resourceVersion flowpol's pod watch asked for.
fn last_watch_version(cp: &ControlPlane) -> u64 {
    pod_requests(cp, "watch")
        .iter()
        .filter_map(|e| {
            let uri = e["requestURI"].as_str()?;
            let v = uri.split("resourceVersion=").nth(1)?;
            v.split('&').next()?.parse().ok()
        })
        .next_back()
        .expect("a watch from a resourceVersion")
}

/// The highest revision kine says it compacted to.
fn compacted_to(cp: &ControlPlane) -> u64 {
    std::fs::read_to_string(cp.dir().join("kine.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.split("COMPACT compacted from ").nth(1)?;
            rest.split_whitespace().nth(2)?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn an_api_server_restart_after_compaction_relists_and_loses_nothing() {
    run(async {
        // Two API servers on one store, as in a highly available control plane: flowpol
        // watches through the first, the changes during its restart go through the second.
        let mut cp = shop(Options {
            compaction: Some(Duration::from_secs(1)),
            ..Options::default()
        })
        .await;
        let second = cp.add_apiserver().unwrap();
        let live = live(&kubeconfig(&cp, &cp.server())).await;
        let cart = ip("10.244.1.12");
        let before = Utc::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watched = last_watch_version(&cp);
        cp.stop_apiserver(0);
        eventually("the watchers notice the outage", || {
            live.status().stale_seconds > 0.0
        })
        .await;
        let status = live.status();
        assert!(
            status
                .kinds
                .iter()
                .any(|k| k.errors > 0 && k.last_error.is_some()),
            "{status:?}"
        );
        // Meanwhile, through the other API server: a pod deleted, one created, a namespace
        // relabelled.
        delete_pod(&cp, second, "shop", "cart-0");
        kubectl_via(
            &cp,
            second,
            &["label", "namespace", "data", "tier=storage"],
            "",
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "newcomer", "namespace": "shop"},
            "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x"}]}});
        kubectl_via(&cp, second, &["create", "-f", "-"], &pod.to_string());
        // The store's history is compacted past where the watchers were.
        eventually("kine compacts past the watch's resourceVersion", || {
            compacted_to(&cp) > watched
        })
        .await;
        cp.start_apiserver(0).unwrap();
        // Resuming from the old resourceVersion gets 410 Gone, so they relist, and the pod
        // deleted meanwhile leaves the model (kept for attribution of old flows).
        until(
            &live,
            "the relist drops the pod deleted during the outage",
            |c| matches!(c.endpoint(cart), AddressHolder::External(_)),
        )
        .await;
        until(&live, "and brings what changed", |c| {
            let data = c.namespace_id("data").unwrap();
            c.pod_by_name("shop", "newcomer").is_some()
                && c.namespace(data).labels.get("tier").map(String::as_str) == Some("storage")
        })
        .await;
        assert!(pod_requests(&cp, "list").len() >= 2, "relisted after 410");
        let c = live.model().unwrap();
        assert_eq!(pod_named(&c, c.endpoint_at(cart, before)), "shop/cart-0");
        eventually("the watchers recover", || {
            let s = live.status();
            s.ready && s.stale_seconds == 0.0
        })
        .await;
    });
}
