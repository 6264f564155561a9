//! The agent's cluster-wide store against a real kube-apiserver with flowpol's CRD: each
//! node's share server-side applied into objects of its own (one writer, one managedFields
//! entry each), an outage (the API server stopped) that loses nothing, a restart that
//! resumes from what the cluster holds, a missing CRD named, evictions that do not delete
//! history, pacing; and `verify`/`suggest --from-cluster` reading the objects back, also as
//! the kubectl plugin through the built kubectl.
mod common;
mod k8s;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::pod_endpoint as pod;
use flowpol_analysis::{
    observed::Observed,
    record::{FlowRecord, Observer, Protocol, Side, Verdict},
};
use flowpol_kube::store::{field_manager, Writer};
use k8s::{run, ControlPlane, Options};
use serde::Deserialize;
use serde_json::Value;

/// A client-side record: a `web` pod on `node` connecting to the database, `count` times.
fn web_to_db(node: &str, verdict: Verdict, count: u64, at: &str) -> FlowRecord {
    let mut db = pod("10.0.9.9", "data", "StatefulSet", "db", "node-c");
    db.port = Some(5432);
    let mut r = FlowRecord::new(
        Protocol::TCP,
        pod("10.0.0.1", "shop", "Deployment", "web", node),
        db,
        Some(verdict),
    );
    r.count = count;
    r.first_seen = Some(at.parse().unwrap());
    r.last_seen = r.first_seen;
    r.observer = Some(Observer {
        side: Side::Client,
        netns: 1,
        cgroup_id: None,
        since: None,
    });
    r
}

async fn client(cp: &ControlPlane) -> kube::Client {
    k8s::connect(&cp.kubeconfig_path()).await.client
}

/// A control plane with the workloads' namespaces (ObservedTraffic objects live in them).
fn with_namespaces() -> ControlPlane {
    let cp = k8s::start(Options::default());
    for ns in ["shop", "data"] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
    }
    cp
}

/// [`with_namespaces`] with flowpol's CRD installed.
fn with_crd() -> ControlPlane {
    let cp = with_namespaces();
    k8s::install_crd(&cp);
    cp
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// The edges of an object: (peer, port, verdicts).
fn edges_of(object: &Value) -> Vec<(String, u64, Value)> {
    object["spec"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["peer"].as_str().unwrap().to_owned(),
                e["port"].as_u64().unwrap(),
                e["verdicts"].clone(),
            )
        })
        .collect()
}

#[test]
fn each_node_writes_its_own_objects_and_a_restart_resumes() {
    run(async {
        let cp = with_crd();
        let a = Writer::new(client(&cp).await, "node-a", 100.0);
        let b = Writer::new(client(&cp).await, "node-b", 100.0);
        let seen_a = Mutex::new(Observed::new(100));
        let seen_b = Mutex::new(Observed::new(100));
        for _ in 0..3 {
            seen_a.lock().unwrap().add(
                "node-a",
                &web_to_db("node-a", Verdict::Established, 2, "2026-01-01T10:00:00Z"),
            );
        }
        seen_b.lock().unwrap().add(
            "node-b",
            &web_to_db("node-b", Verdict::Timeout, 1, "2026-01-01T10:01:00Z"),
        );
        let fa = a.flush(&seen_a, far(), |_| {}).await;
        let fb = b.flush(&seen_b, far(), |_| {}).await;
        assert_eq!(
            (fa.written, fa.pending, fb.written),
            (1, 0, 1),
            "{fa:?} {fb:?}"
        );
        // Three records of one workload: one apply (batched), under the node's manager.
        assert_eq!(k8s::applies(&cp, &field_manager("node-a")), 1);
        // Each node's share is an object of its own, with one writer: managedFields holds
        // one entry, the node's.
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").expect("object written");
        let ob = k8s::observed(&cp, "shop", "Deployment/web", "node-b").expect("object written");
        assert_eq!(k8s::appliers(&o), vec![field_manager("node-a")]);
        assert_eq!(k8s::appliers(&ob), vec![field_manager("node-b")]);
        assert_eq!(o["metadata"]["managedFields"].as_array().unwrap().len(), 1);
        assert_eq!(o["spec"]["workload"]["name"], "web");
        assert_eq!(o["metadata"]["labels"]["flowpol.io/node"], "node-a");
        assert_eq!(
            edges_of(&o),
            vec![(
                "data/StatefulSet/db".into(),
                5432,
                serde_json::json!({"established": 6})
            )]
        );
        assert_eq!(
            edges_of(&ob),
            vec![(
                "data/StatefulSet/db".into(),
                5432,
                serde_json::json!({"timeout": 1})
            )]
        );
        // Unchanged: nothing is written again.
        assert_eq!(a.flush(&seen_a, far(), |_| {}).await.written, 0);

        // node-a restarts: a new process, an empty memory. Its next write adds to what the
        // cluster holds for node-a instead of replacing it, and leaves node-b's share be.
        let restarted = Mutex::new(Observed::new(100));
        restarted.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T11:00:00Z"),
        );
        let mut other = web_to_db("node-a", Verdict::Refused, 1, "2026-01-01T11:00:00Z");
        other.dst.port = Some(5433);
        restarted.lock().unwrap().add("node-a", &other);
        let f = a.flush(&restarted, far(), |_| {}).await;
        assert_eq!(f.written, 1, "{f:?}");
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").unwrap();
        assert_eq!(
            edges_of(&o),
            vec![
                (
                    "data/StatefulSet/db".into(),
                    5432,
                    serde_json::json!({"established": 7})
                ),
                (
                    "data/StatefulSet/db".into(),
                    5433,
                    serde_json::json!({"refused": 1})
                ),
            ]
        );
        let e = o["spec"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["port"] == 5432)
            .unwrap();
        assert_eq!(e["firstSeen"], "2026-01-01T10:00:00Z");
        assert_eq!(e["lastSeen"], "2026-01-01T11:00:00Z");
        let ob = k8s::observed(&cp, "shop", "Deployment/web", "node-b").unwrap();
        assert_eq!(edges_of(&ob).len(), 1, "node-b's share is its own");
        // Read back once: later writes do not add the history again.
        restarted.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T12:00:00Z"),
        );
        a.flush(&restarted, far(), |_| {}).await;
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").unwrap();
        assert_eq!(edges_of(&o)[0].2, serde_json::json!({"established": 8}));
    });
}

#[test]
fn an_outage_loses_nothing() {
    run(async {
        let mut cp = with_crd();
        let a = Writer::new(client(&cp).await, "node-a", 100.0);
        let seen = Mutex::new(Observed::new(100));
        seen.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:00:00Z"),
        );
        assert_eq!(a.flush(&seen, far(), |_| {}).await.written, 1);
        cp.stop_apiserver(0);
        // Traffic goes on while the API server is away; writes fail and are kept.
        for _ in 0..4 {
            seen.lock().unwrap().add(
                "node-a",
                &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:05:00Z"),
            );
            let mut outcomes = Vec::new();
            let f = a.flush(&seen, far(), |ok| outcomes.push(ok)).await;
            assert_eq!((f.written, f.failed, f.pending), (0, 1, 1), "{f:?}");
            assert_eq!(outcomes, vec![false]);
            assert!(f.last_error.unwrap().contains("shop/Deployment/web"));
        }
        cp.start_apiserver(0).unwrap();
        let f = a.flush(&seen, far(), |_| {}).await;
        assert_eq!((f.written, f.pending), (1, 0), "{f:?}");
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").unwrap();
        assert_eq!(edges_of(&o)[0].2, serde_json::json!({"established": 5}));
    });
}

/// Without the CRD, writes fail naming the cause and the remedy, and nothing is lost: once
/// it is installed the same edges are written.
#[test]
fn a_missing_crd_is_named_and_loses_nothing() {
    run(async {
        let cp = with_namespaces();
        let a = Writer::new(client(&cp).await, "node-a", 100.0);
        let seen = Mutex::new(Observed::new(100));
        seen.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 2, "2026-01-01T10:00:00Z"),
        );
        let f = a.flush(&seen, far(), |_| {}).await;
        assert_eq!((f.written, f.failed, f.pending), (0, 1, 1), "{f:?}");
        let err = f.last_error.unwrap();
        assert!(err.starts_with("shop/Deployment/web: "), "{err}");
        assert!(
            err.contains("404 page not found")
                && err.contains("is the ObservedTraffic CRD installed? kubectl apply -k deploy/"),
            "{err}"
        );
        k8s::install_crd(&cp);
        let f = a.flush(&seen, far(), |_| {}).await;
        assert_eq!((f.written, f.pending), (1, 0), "{f:?}");
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").unwrap();
        assert_eq!(edges_of(&o)[0].2, serde_json::json!({"established": 2}));
    });
}

/// A stalled connection to the API server (bytes held, nothing closed) costs a write its
/// round, not the agent its progress: the write is abandoned at the deadline and kept.
#[test]
fn a_stalled_api_server_does_not_hold_a_write_past_its_deadline() {
    run(async {
        let cp = with_crd();
        let proxy = controlplane::FaultProxy::start(cp.apiserver_addr(0)).unwrap();
        let via_proxy = cp
            .admin_kubeconfig_for("proxy.kubeconfig", &proxy.url())
            .unwrap();
        let a = Writer::new(k8s::connect(&via_proxy).await.client, "node-a", 100.0);
        let seen = Mutex::new(Observed::new(100));
        seen.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:00:00Z"),
        );
        assert_eq!(a.flush(&seen, far(), |_| {}).await.written, 1);
        seen.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:01:00Z"),
        );
        proxy.set(controlplane::Mode::Stall);
        let started = std::time::Instant::now();
        let soon = tokio::time::Instant::now() + Duration::from_secs(1);
        let f = a.flush(&seen, soon, |_| {}).await;
        let took = started.elapsed();
        assert_eq!((f.written, f.failed, f.pending), (0, 1, 1), "{f:?}");
        assert!(took < Duration::from_secs(10), "held for {took:?}");
        assert!(f.last_error.unwrap().contains("no answer in time"));
        proxy.set(controlplane::Mode::Pass);
        let f = a.flush(&seen, far(), |_| {}).await;
        assert_eq!((f.written, f.pending), (1, 0), "{f:?}");
        let o = k8s::observed(&cp, "shop", "Deployment/web", "node-a").unwrap();
        assert_eq!(edges_of(&o)[0].2, serde_json::json!({"established": 2}));
    });
}

/// A workload whose namespace was deleted: the error says so, not that the CRD is missing.
#[test]
fn a_gone_namespace_is_named_as_such() {
    run(async {
        let cp = k8s::start(Options::default());
        k8s::install_crd(&cp);
        let a = Writer::new(client(&cp).await, "node-a", 100.0);
        let seen = Mutex::new(Observed::new(100));
        seen.lock().unwrap().add(
            "node-a",
            &web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:00:00Z"),
        );
        let err = a.flush(&seen, far(), |_| {}).await.last_error.unwrap();
        assert!(
            err.contains("namespaces \"shop\" not found")
                && err.ends_with("(the workload's namespace is gone)"),
            "{err}"
        );
    });
}

#[test]
fn evicted_edges_stay_in_the_cluster_and_writes_are_paced() {
    run(async {
        let cp = with_crd();
        // One request per second, 1.5 s to spend: the first workload's read back and its
        // write (two requests), the rest wait.
        let slow = Writer::new(client(&cp).await, "node-a", 1.0);
        let seen = Mutex::new(Observed::new(4));
        for (i, name) in ["web", "cart", "search"].iter().enumerate() {
            let mut r = web_to_db("node-a", Verdict::Established, 1, "2026-01-01T10:00:00Z");
            r.src.identity.workload.as_mut().unwrap().name = name.to_string();
            r.dst.port = Some(5000 + i as u16);
            seen.lock().unwrap().add("node-a", &r);
        }
        let soon = tokio::time::Instant::now() + Duration::from_millis(1500);
        let f = slow.flush(&seen, soon, |_| {}).await;
        assert_eq!((f.written, f.pending), (1, 2), "{f:?}");
        assert_eq!(k8s::applies(&cp, &field_manager("node-a")), 1);
        let fast = Writer::new(client(&cp).await, "node-a", 100.0);
        assert_eq!(fast.flush(&seen, far(), |_| {}).await.written, 2);
        // A flood of new edges for web: the written edges of cart and search are evicted
        // from memory, not from the cluster.
        for port in 6000..6004u16 {
            let mut r = web_to_db("node-a", Verdict::Established, 1, "2026-01-01T11:00:00Z");
            r.dst.port = Some(port);
            seen.lock().unwrap().add("node-a", &r);
        }
        let evicted = seen.lock().unwrap().evicted;
        assert!(evicted >= 2, "evicted {evicted}");
        fast.flush(&seen, far(), |_| {}).await;
        let all = k8s::all_observed(&cp);
        assert_eq!(all.len(), 3, "{all:#?}");
        for o in &all {
            let ports: Vec<u64> = edges_of(o).iter().map(|e| e.1).collect();
            match o["spec"]["workload"]["name"].as_str().unwrap() {
                "cart" => assert_eq!(ports, vec![5001]),
                "search" => assert_eq!(ports, vec![5002]),
                "web" => assert_eq!(ports, vec![5000, 6000, 6001, 6002, 6003]),
                other => panic!("unexpected object {other}"),
            }
        }
        assert_eq!(seen.lock().unwrap().evicted_unwritten, 0);
    });
}

/// verify and suggest read the agents' objects back: the shop cluster served live, with the
/// traffic of the shop's recorded flows written by two nodes.
#[test]
fn verify_and_suggest_read_the_cluster_store() {
    let dir = k8s::TempDir::new("store-cli");
    let dir = &dir.0;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = k8s::start(Options::default());
    k8s::install_crd(&cp);
    rt.block_on(k8s::publish(
        &cp,
        &k8s::read_list(&common::fixtures().join("cluster-shop.yaml")),
    ));
    let kubeconfig = cp.kubeconfig_path();
    // The shop's recorded flows, attributed and split by the node that saw them.
    let snapshot =
        flowpol_analysis::cluster::snapshot::load(&common::fixtures().join("cluster-shop.yaml"))
            .unwrap();
    let mut records =
        flowpol_analysis::record::read_json_lines(&common::fixtures().join("flows-shop.jsonl"))
            .unwrap();
    flowpol_analysis::attribute::enrich(&snapshot.cluster, &mut records);
    rt.block_on(async {
        let c = client(&cp).await;
        for node in ["node-a", "node-b"] {
            let seen = Arc::new(Mutex::new(Observed::new(10_000)));
            for r in records
                .iter()
                .filter(|r| r.node.as_deref().unwrap_or("node-a") == node)
            {
                seen.lock().unwrap().add(node, r);
            }
            let f = Writer::new(c.clone(), node, 100.0)
                .flush(&seen, far(), |_| {})
                .await;
            assert_eq!(f.pending, 0, "{f:?}");
        }
    });
    assert!(!k8s::all_observed(&cp).is_empty());
    let kube = ["--kubeconfig", kubeconfig.to_str().unwrap()];
    let from_file = common::flowpol_code(&[
        "verify",
        "--cluster",
        common::fixtures()
            .join("cluster-shop.yaml")
            .to_str()
            .unwrap(),
        "--flows",
        common::fixtures()
            .join("flows-shop.jsonl")
            .to_str()
            .unwrap(),
        "--output",
        "json",
    ]);
    let mut args = vec!["verify", "--from-cluster", "--output", "json"];
    args.extend(kube);
    let from_cluster = common::flowpol_code(&args);
    assert_eq!(from_cluster.0, from_file.0, "{from_cluster:?}");
    // The same disagreements, by kind and ends, whichever way the traffic came.
    let kinds = |out: &str| {
        let v: Value = serde_json::from_str(out).unwrap();
        let mut k: Vec<String> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] != "unattributed")
            .map(|f| {
                format!(
                    "{} {} -> {} {}",
                    f["kind"], f["src"]["workload"], f["dst"]["workload"], f["port"]
                )
            })
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let expected = kinds(&from_file.1);
    assert!(
        expected
            .iter()
            .any(|k| k.starts_with("\"enforcement_gap\""))
            && expected.iter().any(|k| k.starts_with("\"over_block\"")),
        "{expected:#?}"
    );
    assert_eq!(kinds(&from_cluster.1), expected);
    assert!(
        from_cluster.2.contains("ObservedTraffic objects"),
        "{}",
        from_cluster.2
    );
    // --since: nothing in the fixtures is from the last minute.
    let mut args = vec!["suggest", "--from-cluster", "--since", "1m"];
    args.extend(kube);
    let recent = common::flowpol_code(&args);
    assert!(
        recent.2.contains("older than --since left out"),
        "{}",
        recent.2
    );
    let mut args = vec!["suggest", "--from-cluster"];
    args.extend(kube);
    let (code, yaml, err) = common::flowpol_code(&args);
    assert_eq!(code, Some(0), "{err}");
    assert!(yaml.contains("kind: NetworkPolicy"), "{yaml}");
    // One namespace's policies read only that namespace's objects, and come out the same.
    let objects_read = |err: &str| -> usize {
        let (_, rest) = err.split_once(" records from ").expect(err);
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let in_data = |yaml: &str| -> Vec<String> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .filter(|p| p["metadata"]["namespace"] == "data")
            .map(|p| serde_yaml::to_string(&p).unwrap())
            .collect()
    };
    let mut args = vec!["suggest", "--from-cluster", "-n", "data"];
    args.extend(kube);
    let (code, data_yaml, data_err) = common::flowpol_code(&args);
    assert_eq!(code, Some(0), "{data_err}");
    let data_objects = k8s::all_observed(&cp)
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "data")
        .count();
    assert!(data_objects > 0);
    assert_eq!(objects_read(&data_err), data_objects, "{data_err}");
    assert!(objects_read(&err) > data_objects, "{err}");
    assert!(
        data_err.contains("ObservedTraffic objects in data"),
        "{data_err}"
    );
    assert!(!in_data(&data_yaml).is_empty(), "{data_yaml}");
    assert_eq!(in_data(&data_yaml), in_data(&yaml));

    // As a kubectl plugin, through the built kubectl: the current context is the cluster.
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_flowpol"),
        plugins.join("kubectl-flowpol"),
    )
    .unwrap();
    let kubectl = |args: &[&str]| {
        let path = format!(
            "{}:{}",
            plugins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(&cp.binaries().kubectl)
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("the built kubectl runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, list, err) = kubectl(&["plugin", "list"]);
    assert!(
        list.contains(&plugins.join("kubectl-flowpol").display().to_string()),
        "{code:?} {list} {err}"
    );
    let (code, help, _) = kubectl(&["flowpol", "verify", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("Usage: kubectl flowpol verify"), "{help}");
    let via_kubectl = kubectl(&["flowpol", "verify", "--from-cluster", "--output", "json"]);
    assert_eq!(via_kubectl.0, from_cluster.0, "{via_kubectl:?}");
    assert_eq!(kinds(&via_kubectl.1), expected);
    // A snapshot still wins when named.
    let snapshot_path = common::fixtures().join("cluster-shop.yaml");
    let flows_path = common::fixtures().join("flows-shop.jsonl");
    let via_snapshot = kubectl(&[
        "flowpol",
        "verify",
        "--cluster",
        snapshot_path.to_str().unwrap(),
        "--flows",
        flows_path.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(via_snapshot.0, from_file.0, "{via_snapshot:?}");
    assert_eq!(kinds(&via_snapshot.1), expected);
}
