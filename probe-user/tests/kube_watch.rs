//! The live cluster model against an API server stand-in that speaks list/watch: first list,
//! then churn (pods deleted, an address reused, endpoints moving), cut watches, bookmarks,
//! 410 Gone after compaction, a server restart; and the CLI reading the cluster live.
mod apiserver;

use std::{future::Future, path::PathBuf, process::Command, time::Duration};

use apiserver::{read_list, ApiServer};
use chrono::Utc;
use flowpol::cluster::{watch::Live, Cluster, Endpoint};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/pods";
/// Long enough for any retry to land: the watchers' backoff (kube-runtime's default, as
/// client-go's) doubles from 0.8 s up to 30 s between attempts, so after an outage a retry
/// may be up to 30 s away. (Seen once on a loaded machine: a 30 s wait was too short.)
const PATIENCE: Duration = Duration::from_secs(75);

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

async fn shop(bookmark_every: Duration) -> ApiServer {
    ApiServer::start(
        read_list(&fixtures().join("cluster-shop.yaml")),
        bookmark_every,
    )
    .await
}

async fn live(server: &ApiServer, dir: &tempdir::Dir) -> Live {
    let client =
        flowpol::cluster::watch::client(Some(&server.kubeconfig(&dir.0)), Some("stand-in"))
            .await
            .expect("kubeconfig is valid");
    let live = Live::start(client, Duration::from_secs(600));
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

/// Polls `check` (state of the stand-in, not the model) until it holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let wait = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

fn run<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn pod(namespace: &str, name: &str, uid: &str, ip: &str, created: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": created, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "x",
            "ports": [{"containerPort": 8080, "name": "http"}]}], "nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn pod_named(c: &Cluster, who: Endpoint) -> String {
    match who {
        Endpoint::Pod(p) => c.pod_name(p),
        other => format!("{other:?}"),
    }
}

/// A temporary directory, removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("flowpol-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn first_list_then_pods_come_and_go_and_addresses_are_reused() {
    run(async {
        let server = shop(Duration::from_secs(60)).await;
        let dir = tempdir::Dir::new("watch-churn");
        let live = live(&server, &dir).await;
        let status = live.status();
        assert!(status.ready, "{status}");
        let pods = status
            .kinds
            .iter()
            .find(|k| k.kind.as_str() == "Pod")
            .unwrap();
        let listed = read_list(&fixtures().join("cluster-shop.yaml"))
            .iter()
            .filter(|o| o["kind"] == "Pod")
            .count();
        assert_eq!(pods.objects, listed, "every pod of the fixture listed");
        assert_eq!(status.stale_seconds, 0.0);

        let web = ip("10.244.0.11");
        let c = live.model().unwrap();
        assert_eq!(pod_named(&c, c.endpoint(web)), "shop/web-5c7b9-x2x4k");
        let w = c.workload(c.pod_by_name("shop", "web-5c7b9-x2x4k").unwrap());
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Deployment", "web"));

        // The pod goes; a pod elsewhere gets its address a second later.
        let before = Utc::now();
        server.delete("Pod", "shop", "web-5c7b9-x2x4k");
        until(&live, "the deleted pod's address is free", |c| {
            matches!(c.endpoint(web), Endpoint::External(_))
        })
        .await;
        let created = Utc::now() + chrono::Duration::seconds(1);
        server.apply(pod(
            "other",
            "reuser",
            "uid-reuser",
            "10.244.0.11",
            &created.to_rfc3339(),
        ));
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
            "from its creation on, the address is the new pod's"
        );

        // The service's endpoints move to a new backend.
        let slice = read_list(&fixtures().join("cluster-shop.yaml"))
            .into_iter()
            .find(|o| o["kind"] == "EndpointSlice" && o["metadata"]["name"] == "web-abc12")
            .expect("fixture has the web service's slice");
        let mut moved = slice.clone();
        moved["endpoints"] = json!([{"addresses": ["10.244.0.99"], "conditions": {"ready": true}}]);
        server.apply(moved);
        until(&live, "the web service's backend moved", |c| {
            c.services().iter().any(|s| {
                s.name == "web"
                    && s.endpoints
                        .iter()
                        .all(|g| g.addresses == vec![ip("10.244.0.99")])
            })
        })
        .await;
    });
}

#[test]
fn owners_are_read_from_metadata_only_watches() {
    run(async {
        let server = shop(Duration::from_secs(60)).await;
        let dir = tempdir::Dir::new("watch-owners");
        let live = live(&server, &dir).await;
        // A ReplicaSet whose name says nothing about its Deployment: only its owner
        // reference, read through the metadata-only watch, names the workload.
        server.apply(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "rs-opaque", "namespace": "shop", "uid": "uid-rs",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "storefront", "uid": "uid-d", "controller": true}]},
            "spec": {"selector": {}}
        }));
        let mut p = pod(
            "shop",
            "rs-opaque-abcde",
            "uid-p",
            "10.244.0.77",
            "2026-11-20T10:00:00Z",
        );
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "rs-opaque", "uid": "uid-rs", "controller": true}]);
        server.apply(p);
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
fn a_cut_watch_resumes_where_it_was_without_relisting() {
    run(async {
        let server = shop(Duration::from_secs(60)).await;
        let dir = tempdir::Dir::new("watch-cut");
        let live = live(&server, &dir).await;
        assert_eq!(server.lists(PODS), 1);
        let watches = server.watches(PODS);
        server.cut_watches();
        server.apply(pod(
            "shop",
            "late",
            "uid-late",
            "10.244.0.50",
            "2026-11-20T10:00:00Z",
        ));
        until(&live, "the pod created across the cut arrives", |c| {
            pod_named(c, c.endpoint(ip("10.244.0.50"))) == "shop/late"
        })
        .await;
        assert!(server.watches(PODS) > watches, "the watch was reopened");
        assert_eq!(
            server.lists(PODS),
            1,
            "resumed from its resourceVersion, no relist"
        );
    });
}

#[test]
fn bookmarks_keep_a_quiet_watch_resumable_after_compaction() {
    run(async {
        let server = shop(Duration::from_millis(100)).await;
        let dir = tempdir::Dir::new("watch-bookmark");
        let live = live(&server, &dir).await;
        // Other kinds move the resourceVersion on; the pod watch hears of it only by bookmark.
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "newcomer"}}));
        until(&live, "the namespace arrives", |c| {
            c.namespace_id("newcomer").is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.compact();
        let watches = server.watches(PODS);
        server.cut_watches();
        eventually("the pod watch is reopened", || {
            server.watches(PODS) > watches
        })
        .await;
        server.apply(pod(
            "shop",
            "after",
            "uid-after",
            "10.244.0.51",
            "2026-11-20T10:00:00Z",
        ));
        until(&live, "a pod created after the compaction arrives", |c| {
            c.pod_by_name("shop", "after").is_some()
        })
        .await;
        assert_eq!(
            server.lists(PODS),
            1,
            "the bookmark's resourceVersion survived compaction: no 410, no relist"
        );
    });
}

#[test]
fn a_restarted_server_with_compacted_history_is_relisted() {
    run(async {
        let server = shop(Duration::from_secs(60)).await;
        let dir = tempdir::Dir::new("watch-restart");
        let live = live(&server, &dir).await;
        let before = Utc::now();
        // Down: the watchers fail and say for how long.
        server.stop();
        server.delete("Pod", "shop", "cart-0");
        server.compact();
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
        // Up again: resuming from the old resourceVersion gets 410 Gone, so they relist, and
        // the pod deleted meanwhile leaves the model (kept for attribution of old flows).
        server.restart().await;
        let cart = ip("10.244.1.12");
        until(
            &live,
            "the relist drops the pod deleted during the outage",
            |c| matches!(c.endpoint(cart), Endpoint::External(_)),
        )
        .await;
        assert!(server.lists(PODS) >= 2, "relisted after 410");
        let c = live.model().unwrap();
        assert_eq!(pod_named(&c, c.endpoint_at(cart, before)), "shop/cart-0");
        eventually("the watchers recover", || {
            let s = live.status();
            s.ready && s.stale_seconds == 0.0
        })
        .await;
    });
}

fn flowpol<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .current_dir(fixtures())
        .env_remove("KUBECONFIG")
        .output()
        .expect("flowpol runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn enrich_and_eval_from_the_api_server_match_the_snapshot() {
    run(async {
        let server = shop(Duration::from_secs(60)).await;
        let dir = tempdir::Dir::new("watch-cli");
        let kubeconfig = server.kubeconfig(&dir.0);
        let cli = |args: &[&str]| {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
            tokio::task::spawn_blocking(move || flowpol(&all))
        };
        for (args, snapshot_args) in [
            (
                vec![
                    "enrich",
                    "--flows",
                    "flows-shop.jsonl",
                    "--context",
                    "stand-in",
                ],
                vec![
                    "enrich",
                    "--flows",
                    "flows-shop.jsonl",
                    "--cluster",
                    "cluster-shop.yaml",
                ],
            ),
            (
                vec![
                    "eval",
                    "--flows",
                    "flows-shop.jsonl",
                    "--context",
                    "stand-in",
                ],
                vec![
                    "eval",
                    "--flows",
                    "flows-shop.jsonl",
                    "--cluster",
                    "cluster-shop.yaml",
                ],
            ),
        ] {
            let (ok, live_out, err) = cli(&args).await.unwrap();
            assert!(ok, "{args:?}: {err}");
            let (ok, snap_out, err) = flowpol(&snapshot_args);
            assert!(ok, "{err}");
            assert!(!live_out.is_empty());
            assert_eq!(
                live_out, snap_out,
                "{args:?}: live model and snapshot disagree"
            );
        }
        // The kubeconfig's current context points nowhere: without --context it cannot list.
        let (ok, out, err) = cli(&[
            "enrich",
            "--flows",
            "flows-shop.jsonl",
            "--kube-timeout",
            "2s",
        ])
        .await
        .unwrap();
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains("not complete after 2s") && err.contains("Pod"),
            "{err}"
        );
    });
}
