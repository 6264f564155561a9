//! `flowpol agent` on this node, against a real kube-apiserver holding the lab's cluster, with
//! deploy/ applied and the agent running as the DaemonSet's ServiceAccount (a TokenRequest
//! token): the lab's traffic becomes ObservedTraffic objects with the same edges and counts
//! as the lab's own recording; an API server outage (the server stopped) loses nothing, even
//! when the agent is stopped during it (its state directory keeps what it could not write,
//! for the next agent); a new agent adds to the history; the metrics count what the agent
//! wrote out, drops by reason included.
#[path = "../../probe-user/tests/k8s/mod.rs"]
mod k8s;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    time::Duration,
};

use flowpol_analysis::record::{self, FlowRecord};
use flowpol_e2e::{assert_no_leftovers, binary, privileged, skip};
use flowpol_lab::objects;
use k8s::{ControlPlane, Options};
use serde_json::Value;

#[path = "agent/by_hand.rs"]
mod by_hand;
#[path = "agent/support.rs"]
mod support;

use support::*;

#[test]
fn lab_traffic_becomes_observed_traffic_through_outage_and_restart() {
    if !privileged() {
        return;
    }
    let dir = tempdir();
    let lab_ips: BTreeSet<IpAddr> = objects::model(&lab_scenario())
        .unwrap()
        .cluster
        .pods()
        .iter()
        .flat_map(|p| p.ips.clone())
        .collect();
    let LabApi { mut cp, kubeconfig } = serve_lab(&dir);
    // The cluster is read through a second API server while the agent's is away.
    let reader = cp.add_apiserver().unwrap();
    let output = dir.join("agent.jsonl");

    // 1. The agent records the lab; its objects hold what the lab recorded itself.
    let agent = Agent::start(&kubeconfig, &dir, NODE, &output, 1);
    let first = lab(&dir, 1);
    let want = expected(&[&first], NODE);
    by_hand::assert_shop_by_hand(&want, 1);
    wait_for_edges(&cp, NODE, &want, Duration::from_secs(60));

    // The metrics count what the agent wrote out; the lab's drops are among them. A round
    // writes the file, then counts: read both once a round has done both.
    let tally = |written: &[FlowRecord]| {
        let mut by_verdict: BTreeMap<String, f64> = BTreeMap::new();
        let mut drops: BTreeMap<String, f64> = BTreeMap::new();
        for r in written {
            let labels = format!(
                "{{protocol=\"{}\",verdict=\"{}\"}}",
                r.protocol,
                r.verdict.unwrap()
            );
            *by_verdict.entry(labels).or_default() += r.count as f64;
            if let Some(reason) = &r.drop_reason {
                *drops.entry(format!("{{reason=\"{reason}\"}}")).or_default() += r.count as f64;
            }
        }
        (by_verdict, drops)
    };
    let (mut metrics, mut written) = (String::new(), Vec::new());
    eventually(Duration::from_secs(30), || {
        metrics = get(agent.port, "/metrics").unwrap().1;
        written = record::read_json_lines(&output).unwrap();
        samples(&metrics, "flowpol_observations_total") == tally(&written).0
    });
    let (by_verdict, drops) = tally(&written);
    assert_eq!(
        samples(&metrics, "flowpol_observations_total"),
        by_verdict,
        "{metrics}"
    );
    assert_eq!(samples(&metrics, "flowpol_drops_total"), drops, "{metrics}");
    let lab_drops: u64 = first
        .iter()
        .filter(|r| r.drop_reason.as_deref() == Some("NETFILTER_DROP"))
        .map(|r| r.count)
        .sum();
    let agent_lab_drops: u64 = written
        .iter()
        .filter(|r| r.drop_reason.as_deref() == Some("NETFILTER_DROP"))
        .filter(|r| lab_ips.contains(&r.src.ip) || lab_ips.contains(&r.dst.ip))
        .map(|r| r.count)
        .sum();
    assert!(lab_drops > 0, "the enforced shop drops packets");
    assert_eq!(agent_lab_drops, lab_drops);
    assert_eq!(
        samples(&metrics, "flowpol_events_lost_total"),
        BTreeMap::from([(String::new(), 0.0)])
    );
    assert_eq!(
        samples(&metrics, "flowpol_model_stale_seconds"),
        BTreeMap::from([(String::new(), 0.0)])
    );
    let findings = samples(&metrics, "flowpol_findings_total");
    for kind in ["enforcement_gap", "over_block"] {
        assert!(
            !findings.contains_key(&format!("{{kind=\"{kind}\"}}")),
            "faithful enforcement: no {kind}; {metrics}"
        );
    }

    // 2. The API server goes away while the lab runs again, and comes back.
    cp.stop_apiserver(0);
    let second = lab(&dir, 2);
    let failing = eventually(Duration::from_secs(30), || {
        get(agent.port, "/metrics")
            .unwrap()
            .1
            .contains("flowpol_store_writes_total{result=\"error\"}")
    });
    assert!(
        failing,
        "the agent tried to write while the API server was away"
    );
    assert_eq!(
        edges(&k8s::all_observed_at(&cp, reader), NODE),
        want,
        "nothing written while away"
    );
    assert!(get(agent.port, "/metrics")
        .unwrap()
        .1
        .contains("flowpol_store_writes_total{result=\"error\"}"));
    cp.start_apiserver(0).unwrap();
    let want = expected(&[&first, &second], NODE);
    by_hand::assert_shop_by_hand(&want, 2);
    wait_for_edges(&cp, NODE, &want, Duration::from_secs(90));

    // 3. The API server goes away again and the agent is stopped before it could write: what
    // it holds is kept in its state directory, and the next agent on the node writes it.
    cp.stop_apiserver(0);
    let before = record::read_json_lines(&output).unwrap().len();
    let third = lab(&dir, 3);
    // Stopped once a round has taken the third run in (its records are written out).
    let taken = eventually(Duration::from_secs(30), || {
        record::read_json_lines(&output).unwrap().len() > before
    });
    assert!(
        taken,
        "the agent's rounds go on while the API server is away"
    );
    let (ok, stderr) = agent.stop();
    assert!(ok, "{stderr}");
    assert!(stderr.contains("for the next start"), "{stderr}");
    // Its exit summary counts the whole run, every record it wrote.
    let written = record::read_json_lines(&output).unwrap().len();
    assert!(
        stderr.contains(&format!("flowpol agent: {written} flow records written")),
        "{stderr}"
    );
    let kept = dir.join(format!("state-{NODE}/observed-pending.json"));
    assert!(kept.exists());
    assert_eq!(edges(&k8s::all_observed_at(&cp, reader), NODE), want);
    cp.start_apiserver(0).unwrap();
    let agent = Agent::start(&kubeconfig, &dir, NODE, &output, 2);
    assert!(!kept.exists(), "taken by the new agent");
    assert!(
        agent.stderr().contains("kept by the previous run"),
        "{}",
        agent.stderr()
    );
    let want = expected(&[&first, &second, &third], NODE);
    wait_for_edges(&cp, NODE, &want, Duration::from_secs(60));

    // 4. The new agent adds to the history it did not see itself.
    let fourth = lab(&dir, 4);
    let want = expected(&[&first, &second, &third, &fourth], NODE);
    wait_for_edges(&cp, NODE, &want, Duration::from_secs(60));
    let (ok, stderr) = agent.stop();
    assert!(ok, "{stderr}");
    assert!(stderr.contains("ObservedTraffic written"), "{stderr}");

    drop(cp);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `podman run` arguments for the DaemonSet's agent container as the manifest declares it:
/// its capabilities, security options, host paths and environment (the state directory in
/// `state` instead of the host's). Host network, unlike the pod: the API server listens on
/// this machine's loopback, and capture does not depend on the pod's network.
/// The DaemonSet's pod, run from the image with what its manifest grants and nothing more:
/// the agent loads its probe, records the lab and writes ObservedTraffic, merged with a
/// second node's agent writing the same workloads; SIGTERM (as the kubelet stops it) ends it
/// cleanly after its last write.
#[test]
fn the_daemonset_pod_runs_the_agent_from_its_image() {
    if !privileged() {
        return;
    }
    let Ok(image) = std::env::var("FLOWPOL_IMAGE") else {
        skip("no image in FLOWPOL_IMAGE (cargo xtask test builds one)");
        return;
    };
    let dir = tempdir().join("image");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/daemonset.yaml"
    ))
    .unwrap();
    let ds: Value = serde_yaml::from_str(&text).unwrap();
    let LabApi { cp, kubeconfig } = serve_lab(&dir);
    let port = free_port();
    let name = format!("flowpol-e2e-{}", std::process::id());
    let mut agent_args: Vec<String> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("$(NODE_NAME)", NODE))
        .map(|a| {
            if a.starts_with("--listen=") {
                format!("--listen=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    agent_args.extend(
        [
            "--kubeconfig=/etc/flowpol/kubeconfig",
            "--round=1s",
            "--flush-every=1s",
            "--counts-every=1s",
            "--writes-per-second=100",
        ]
        .map(String::from),
    );
    let log = dir.join("podman.log");
    let mut child = Command::new("podman")
        .args(["run", "--rm", "--name", &name])
        .args(pod_as_podman_args(&ds, &dir.join("state")))
        .arg(format!(
            "--volume={}:/etc/flowpol/kubeconfig:ro",
            kubeconfig.display()
        ))
        .arg(&image)
        .args(&agent_args)
        .stdout(std::fs::File::create(dir.join("records.jsonl")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("podman runs");
    let mut exited = None;
    let ready = eventually(Duration::from_secs(90), || {
        exited = child.try_wait().unwrap();
        exited.is_some() || get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    if let Some(status) = exited {
        panic!("the agent's container ended ({status}):\n{}", stderr());
    }
    if !ready {
        let _ = Command::new("podman").args(["kill", &name]).status();
        let _ = child.wait();
        panic!("the agent's container did not become ready:\n{}", stderr());
    }
    // A second node's agent, a process on the host, writes into the same objects. (Here it
    // sees the same kernel, so the same sockets; the pods do not run on its node, so it
    // writes no drops on their path.)
    let other = "node-b";
    let second = Agent::start(&kubeconfig, &dir, other, &dir.join("node-b.jsonl"), 1);
    let first = lab(&dir, 1);
    let want = expected(&[&first], NODE);
    wait_for_edges(&cp, NODE, &want, Duration::from_secs(60));
    let want_other = expected(&[&first], other);
    assert_ne!(want_other, want, "the nodes' shares differ by the drops");
    wait_for_edges(&cp, other, &want_other, Duration::from_secs(60));
    let (ok, err) = second.stop();
    assert!(ok, "{err}");
    // Each node's share is in objects of its own, each under its node's manager alone.
    let all = k8s::all_observed(&cp);
    for node in [NODE, other] {
        let mine: Vec<&Value> = all.iter().filter(|o| o["spec"]["node"] == node).collect();
        assert!(!mine.is_empty(), "{node} wrote nothing");
        for o in mine {
            assert_eq!(k8s::appliers(o), vec![format!("flowpol-agent/{node}")]);
        }
    }
    assert!(k8s::applies(&cp, &format!("flowpol-agent/{other}")) > 0);
    assert!(k8s::applies(&cp, &format!("flowpol-agent/{NODE}")) > 0);
    let records = record::read_json_lines(&dir.join("records.jsonl")).unwrap();
    assert!(
        records.iter().any(|r| r.drop_reason.is_some()),
        "the drops are recorded from inside the container"
    );
    let stopped = Command::new("podman")
        .args(["stop", "--time", "30", &name])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", stderr());
    assert!(stderr().contains("ObservedTraffic written"), "{}", stderr());
    drop(cp);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Memory stays bounded under more edges than `--max-edges`: evictions are counted in the
/// metrics, those lost before a write are reported at exit, and evicting and reading a share
/// back never makes the cluster count anything twice.
#[test]
fn more_edges_than_max_edges_stay_bounded_and_never_count_twice() {
    if !privileged() {
        return;
    }
    const MAX: f64 = 8.0;
    let dir = tempdir().join("bounded");
    std::fs::create_dir_all(&dir).unwrap();
    let LabApi { cp, kubeconfig } = serve_lab(&dir);
    let agent = Agent::start_with(
        &kubeconfig,
        &dir,
        NODE,
        &dir.join("agent.jsonl"),
        1,
        &["--max-edges", &MAX.to_string()],
    );
    let first = lab(&dir, 1);
    let truth = expected(&[&first], NODE);
    let total: usize = truth.values().map(|e| e.len()).sum();
    assert!(total as f64 > 2.0 * MAX, "the shop makes {total} edges");
    let one = |metrics: &str, name: &str| samples(metrics, name).get("").copied();
    let evicted = |metrics: &str| -> f64 {
        samples(metrics, "flowpol_observed_edges_evicted_total")
            .values()
            .sum()
    };
    // Every edge the lab made was taken in: held now, or evicted.
    let mut metrics = String::new();
    let taken = eventually(Duration::from_secs(60), || {
        metrics = get(agent.port, "/metrics").unwrap().1;
        one(&metrics, "flowpol_observed_edges").unwrap_or(0.0) + evicted(&metrics) >= total as f64
    });
    assert!(taken, "{metrics}");
    assert!(one(&metrics, "flowpol_observed_edges").unwrap() <= MAX);
    // A round has written what it holds.
    let written = eventually(Duration::from_secs(60), || {
        !edges(&k8s::all_observed(&cp), NODE).is_empty()
    });
    assert!(written, "nothing reached the cluster");
    let metrics = get(agent.port, "/metrics").unwrap().1;
    let lost = samples(&metrics, "flowpol_observed_edges_evicted_total")
        .get("{written=\"false\"}")
        .copied()
        .unwrap_or(0.0);
    let (ok, stderr) = agent.stop();
    assert!(ok, "{stderr}");
    assert_eq!(
        lost > 0.0,
        stderr.contains("evicted from memory before they could be written"),
        "{lost} lost; {stderr}"
    );
    // What reached the cluster is part of the truth, never more.
    let got = edges(&k8s::all_observed(&cp), NODE);
    assert!(!got.is_empty());
    for (object, edges) in &got {
        for (key, counts) in edges {
            let want = truth
                .get(object)
                .and_then(|e| e.get(key))
                .unwrap_or_else(|| panic!("{object} {key} is not the lab's"));
            for (verdict, n) in counts.as_object().unwrap() {
                if verdict == "dropReasons" {
                    continue;
                }
                assert!(
                    n.as_u64().unwrap() <= want[verdict].as_u64().unwrap_or(0),
                    "{object} {key}: {counts} against the lab's {want}"
                );
            }
        }
    }
    drop(cp);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `flowpol lab --kube`: the lab's cluster is published for the run, as the scenario
/// describes it (each pod Running and Ready at its lab addresses, so the endpointslice
/// controller and enforcers see it as a cluster would), removed afterwards, and left with
/// `--keep-published`; a later run keeps what the cluster already holds.
#[test]
fn the_lab_publishes_its_cluster_for_the_run() {
    if !privileged() {
        return;
    }
    let dir = tempdir().join("publish");
    std::fs::create_dir_all(&dir).unwrap();
    let lab_with = |cp: &ControlPlane, extra: &[&str]| -> String {
        let out = Command::new(binary())
            .args(["lab", "--kubeconfig"])
            .arg(cp.kubeconfig_path())
            .arg("--output")
            .arg(dir.join("flows.jsonl"))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert_no_leftovers();
        err
    };
    let scenario = lab_scenario();
    let pods: Vec<(String, String)> = scenario
        .scenario
        .pods
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    let pod_exists = |cp: &ControlPlane, ns: &str, name: &str| {
        cp.kubectl(&["get", "pod", name, "-n", ns]).status.success()
    };

    let cp = k8s::start(Options::default());
    let err = lab_with(&cp, &["--keep-published"]);
    assert!(
        err.contains("published") && err.contains("objects into the API server"),
        "{err}"
    );
    for (ns, name) in &pods {
        let pod = k8s::get_json(&cp, &["pod", name, "-n", ns]);
        let host = scenario.host(&format!("{ns}/{name}")).unwrap();
        assert_eq!(pod["spec"]["nodeName"], NODE);
        assert_eq!(pod["status"]["phase"], "Running", "{ns}/{name}");
        assert_eq!(
            pod["status"]["podIPs"],
            serde_json::json!([{"ip": host.ipv4.to_string()}, {"ip": host.ipv6.to_string()}])
        );
        let ready = pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{ns}/{name} is Ready");
    }
    let policies = k8s::get_json(&cp, &["networkpolicies", "-A"]);
    assert_eq!(
        policies["items"].as_array().unwrap().len(),
        scenario.scenario.policies.len()
    );
    let err = lab_with(&cp, &[]);
    assert!(err.contains("kept the cluster's own"), "{err}");
    assert!(
        pods.iter().all(|(ns, name)| pod_exists(&cp, ns, name)),
        "a run removes only what it published itself"
    );
    drop(cp);

    let cp = k8s::start(Options::default());
    let err = lab_with(&cp, &[]);
    assert!(err.contains("removed what it published"), "{err}");
    assert!(
        pods.iter().all(|(ns, name)| !pod_exists(&cp, ns, name)),
        "nothing of the lab is left in the cluster"
    );
    drop(cp);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `flowpol record` naming from a cluster that grants it nothing (a ServiceAccount with no
/// role: every list is forbidden) writes its records all the same, unnamed, fails, and its
/// capture line says the model was incomplete for the whole recording; with the agent's own
/// ServiceAccount the model is complete within the recording's first seconds.
#[test]
fn record_says_how_long_its_cluster_model_was_incomplete() {
    if !privileged() {
        return;
    }
    let dir = tempdir().join("record-model");
    std::fs::create_dir_all(&dir).unwrap();
    let LabApi { cp, kubeconfig } = serve_lab(&dir);
    cp.kubectl_ok(&["create", "serviceaccount", "nobody", "-n", "default"])
        .unwrap();
    let token = cp.token("default", "nobody").unwrap();
    let nobody = cp.token_kubeconfig("nobody.kubeconfig", &token).unwrap();
    const RECORDING_MS: u64 = 3_000;
    let record = |kubeconfig: &std::path::Path, name: &str| {
        let output = dir.join(name);
        let out = Command::new(binary())
            .args(["record", "--duration", "3s", "--kube-timeout", "2s"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let flows = record::read_flows(&output).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(flows.captures.len(), 1, "{err}");
        (out.status, err, flows.captures[0].model_incomplete_ms)
    };

    let (status, err, incomplete) = record(&nobody, "nobody.jsonl");
    assert!(!status.success(), "{err}");
    assert!(err.contains("records are not named"), "{err}");
    assert!(incomplete >= RECORDING_MS, "{incomplete} ms: {err}");
    assert!(
        err.contains(&format!("cluster model incomplete for {incomplete} ms")),
        "{err}"
    );

    let (status, err, incomplete) = record(&kubeconfig, "agent.jsonl");
    assert!(status.success(), "{err}");
    assert!(incomplete < RECORDING_MS, "{incomplete} ms: {err}");
    drop(cp);
    std::fs::remove_dir_all(&dir).unwrap();
}
