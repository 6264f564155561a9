#![allow(dead_code, reason = "each test binary uses a part of these helpers")]
//! The real control plane under the kube-facing tests: kube-apiserver on kine with
//! kube-controller-manager, built from upstream (`cargo xtask k8s build`), one per test, so
//! what a cluster decides (validation, defaults, schema pruning, server-side apply merges,
//! RBAC, endpoints, compaction) is decided by the real thing. Helpers read what the server
//! holds and what its audit log says it was asked.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub(crate) use controlplane::{ControlPlane, Options};
use serde_json::Value;

pub(crate) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub(crate) fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs a test's async body on a runtime of two worker threads.
pub(crate) fn run(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A control plane for one test; fails the test, naming the remedy, when it cannot start.
pub(crate) fn start(opts: Options) -> ControlPlane {
    ControlPlane::start(opts).unwrap_or_else(|e| panic!("starting the control plane: {e:#}"))
}

/// The items of a `kubectl get -o yaml` List (or multi-document YAML) file.
pub(crate) fn read_list(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        match v["items"].as_array() {
            Some(items) if v["kind"] == "List" => out.extend(items.iter().cloned()),
            _ => out.push(v),
        }
    }
    out
}

/// A connection for `kubeconfig`, as flowpol makes its own.
pub(crate) async fn connect(kubeconfig: &Path) -> flowpol_kube::watch::Connection {
    flowpol_kube::watch::connect(Some(kubeconfig), None)
        .await
        .expect("the control plane's kubeconfig is valid")
}

/// Writes `objects` into the cluster as a cluster holds them (see `flowpol_kube::publish`).
pub(crate) async fn publish(cp: &ControlPlane, objects: &[Value]) {
    let c = connect(&cp.kubeconfig_path()).await.client;
    flowpol_kube::publish::publish(&c, objects, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("publishing: {:#}\n{}", anyhow::Error::from(e), cp.logs()));
}

/// Waits until CRD `name` is Established (its resource served).
pub(crate) fn wait_established(cp: &ControlPlane, name: &str) {
    cp.wait_established(name)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Installs flowpol's CRD from deploy/ and waits until it is Established.
pub(crate) fn install_crd(cp: &ControlPlane) {
    let crd = deploy().join("crd.yaml");
    cp.kubectl_ok(&["apply", "-f", crd.to_str().unwrap()])
        .unwrap();
    wait_established(cp, "observedtraffics.flowpol.io");
}

/// `kubectl apply -k deploy/`, as deploy/README.md says; returns what kubectl printed,
/// once the CRD is Established.
pub(crate) fn apply_deploy(cp: &ControlPlane) -> String {
    let out = cp
        .kubectl_ok(&["apply", "-k", deploy().to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_established(cp, "observedtraffics.flowpol.io");
    out
}

/// The built kubectl with `kubeconfig` (another user, another API server), `input` on
/// stdin: (success, stdout, stderr).
pub(crate) fn kubectl_with(
    cp: &ControlPlane,
    kubeconfig: &Path,
    args: &[&str],
    input: &str,
) -> (bool, String, String) {
    let out = cp.kubectl_with(kubeconfig, args, input);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl get ARGS -o json`, parsed.
pub(crate) fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&all).unwrap()).unwrap()
}

/// Every ObservedTraffic object the server holds.
pub(crate) fn all_observed(cp: &ControlPlane) -> Vec<Value> {
    all_observed_at(cp, 0)
}

/// Every ObservedTraffic object, read through API server `index` (while another is down).
pub(crate) fn all_observed_at(cp: &ControlPlane, index: usize) -> Vec<Value> {
    let out = cp
        .kubectl_at(index)
        .args([
            "get",
            "observedtraffics",
            "-A",
            "--show-managed-fields",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The ObservedTraffic object holding `node`'s share of `workload` (`Kind/name`) in
/// `namespace` (its first page), if the server holds it.
pub(crate) fn observed(
    cp: &ControlPlane,
    namespace: &str,
    workload: &str,
    node: &str,
) -> Option<Value> {
    let (kind, name) = workload.split_once('/').unwrap();
    all_observed(cp).into_iter().find(|o| {
        let spec = &o["spec"];
        o["metadata"]["namespace"] == namespace
            && spec["workload"]["kind"] == kind
            && spec["workload"]["name"] == name
            && spec["node"] == node
            && spec["page"].as_u64().unwrap_or(0) == 0
    })
}

/// The field managers that applied (server-side) to `object`, as its managedFields record.
pub(crate) fn appliers(object: &Value) -> Vec<String> {
    let mut m: Vec<String> = object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["operation"] == "Apply")
        .filter_map(|f| f["manager"].as_str().map(str::to_owned))
        .collect();
    m.sort();
    m
}

/// Audited requests matching `verb` on `resource` (ResponseComplete or, for watches,
/// ResponseStarted: one entry per request), whose URI contains `uri_part`.
pub(crate) fn requests(
    cp: &ControlPlane,
    verb: &str,
    resource: &str,
    uri_part: &str,
) -> Vec<Value> {
    cp.audit()
        .into_iter()
        .filter(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
        .filter(|e| {
            let stage = if verb == "watch" {
                "ResponseStarted"
            } else {
                "ResponseComplete"
            };
            e["stage"] == stage
        })
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .unwrap_or_default()
                .contains(uri_part)
        })
        .collect()
}

/// Server-side applies of ObservedTraffic by `manager` (the field manager, URL-encoded as
/// the request carries it).
pub(crate) fn applies(cp: &ControlPlane, manager: &str) -> usize {
    let encoded = manager.replace('/', "%2F");
    requests(
        cp,
        "patch",
        "observedtraffics",
        &format!("fieldManager={encoded}"),
    )
    .len()
}

/// The flow records of `path` moved in time so the first is at `start`, gaps kept: the
/// fixtures' traffic as if it happened now, after the pods the real server created just now.
pub(crate) fn shifted_flows(path: &Path, start: chrono::DateTime<chrono::Utc>, out: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times = |r: &Value| {
        ["first_seen", "last_seen"]
            .into_iter()
            .filter_map(|f| r[f].as_str())
            .filter_map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .collect::<Vec<_>>()
    };
    let earliest = records.iter().flat_map(times).min().expect("timed records");
    let by = start - earliest;
    for r in &mut records {
        for f in ["first_seen", "last_seen"] {
            if let Some(t) = r[f].as_str() {
                let t: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
                r[f] = Value::String((t + by).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
            }
        }
    }
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

/// A temporary directory, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("flowpol-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `object` with kubectl; returns it as the server holds it.
pub(crate) fn create(cp: &ControlPlane, object: &Value) -> Value {
    let out = cp.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &object.to_string());
    assert!(
        out.status.success(),
        "kubectl create {}: {}",
        object["metadata"]["name"],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes a status through the status subresource, as a kubelet or controller does.
pub(crate) fn set_status(
    cp: &ControlPlane,
    kind: &str,
    namespace: &str,
    name: &str,
    status: Value,
) {
    let patch = serde_json::json!({ "status": status }).to_string();
    cp.kubectl_ok(&[
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])
    .unwrap();
}

/// A pod on `node` with a named container port, created, then running at `ip` (and Ready
/// when `ready`) as its kubelet would report it. Returns the pod as created.
pub(crate) fn running_pod(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    labels: Value,
    node: &str,
    ip: &str,
    ready: bool,
) -> Value {
    let created = create(
        cp,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                "ports": [{"containerPort": 8080, "name": "http"}]}]},
        }),
    );
    let ready = if ready { "True" } else { "False" };
    set_status(
        cp,
        "pod",
        namespace,
        name,
        serde_json::json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": ready}, {"type": "ContainersReady", "status": ready}]}),
    );
    created
}
