//! The agent e2e tests' helpers: the agent as a child process, the lab as an API server's
//! cluster, edges as the cluster holds them.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowpol_analysis::{
    attribute,
    observed::Observed,
    record::{self, FlowRecord},
};
use flowpol_e2e::{assert_no_leftovers, binary};
use flowpol_lab::{objects, scenario, EXAMPLE_SCENARIO};
use serde_json::Value;

use super::k8s::{self, ControlPlane, Options};

pub(crate) const NODE: &str = objects::NODE;

pub(crate) fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowpol-agent-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status, body) of a plain HTTP GET.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Whether `check` holds within `limit`.
pub(crate) fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Waits until the API server holds `want` as `node`'s share; fails showing both.
pub(crate) fn wait_for_edges(cp: &ControlPlane, node: &str, want: &Edges, limit: Duration) {
    let mut got = Edges::new();
    eventually(limit, || {
        got = edges(&k8s::all_observed(cp), node);
        got == *want
    });
    assert_eq!(got, *want);
}

pub(crate) struct Agent {
    pub child: Child,
    pub port: u16,
    /// Its stderr (a file: a pipe nobody reads would stall its logging when full).
    pub log: PathBuf,
}

impl Agent {
    /// Starts `node`'s agent keeping its state in `dir/state-<node>`, and waits until it is
    /// ready.
    pub(crate) fn start(
        kubeconfig: &Path,
        dir: &Path,
        node: &str,
        output: &Path,
        run: usize,
    ) -> Agent {
        Agent::start_with(kubeconfig, dir, node, output, run, &[])
    }

    /// [`Agent::start`] with more arguments.
    pub(crate) fn start_with(
        kubeconfig: &Path,
        dir: &Path,
        node: &str,
        output: &Path,
        run: usize,
        extra: &[&str],
    ) -> Agent {
        let port = free_port();
        let log = dir.join(format!("agent-{node}-{run}.log"));
        let child = Command::new(binary())
            .args(["agent", "--node", node])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--round",
                "1s",
                "--flush-every",
                "1s",
                "--counts-every",
                "1s",
                "--writes-per-second",
                "100",
            ])
            .args(["--shutdown-timeout", "3s"])
            .arg("--state-dir")
            .arg(dir.join(format!("state-{node}")))
            .arg("--output")
            .arg(output)
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("flowpol agent starts");
        let mut agent = Agent { child, port, log };
        let ready = eventually(Duration::from_secs(90), || {
            get(port, "/readyz").is_some_and(|(code, _)| code == 200)
        });
        if !ready {
            let _ = agent.child.kill();
            panic!("the agent did not become ready:\n{}", agent.stderr());
        }
        assert_eq!(get(port, "/healthz").unwrap().0, 200);
        agent
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a pod; returns (success, stderr).
    pub(crate) fn stop(mut self) -> (bool, String) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status.success(), self.stderr())
    }
}

/// Runs the built-in shop lab (policies enforced), recording with its own probe.
pub(crate) fn lab(dir: &Path, run: usize) -> Vec<FlowRecord> {
    let out = dir.join(format!("lab-{run}.jsonl"));
    let status = Command::new(binary())
        .args(["lab", "--output"])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_no_leftovers();
    record::read_json_lines(&out).unwrap()
}

/// One node's edges per object: name -> {(direction, peer, port, protocol) -> verdicts}.
pub(crate) type Edges = BTreeMap<String, BTreeMap<String, Value>>;

pub(crate) fn edges(objects: &[Value], node: &str) -> Edges {
    let mut out = Edges::new();
    for o in objects.iter().filter(|o| o["spec"]["node"] == node) {
        let w = &o["spec"]["workload"];
        let name = format!(
            "{}/{}/{}",
            o["metadata"]["namespace"].as_str().unwrap(),
            w["kind"].as_str().unwrap(),
            w["name"].as_str().unwrap()
        );
        for e in o["spec"]["edges"].as_array().unwrap() {
            let key = format!(
                "{} {} {}/{}",
                e["direction"], e["peer"], e["port"], e["protocol"]
            );
            let mut counts = e["verdicts"].clone();
            if let Some(reasons) = e.get("dropReasons") {
                counts["dropReasons"] = reasons.clone();
            }
            out.entry(name.clone()).or_default().insert(key, counts);
        }
    }
    out
}

/// The edges the lab's own recordings make for `node`'s agent, attributed from the lab's
/// cluster (where every pod runs on [`NODE`]).
pub(crate) fn expected(recordings: &[&Vec<FlowRecord>], node: &str) -> Edges {
    let snapshot = objects::model(&lab_scenario()).unwrap();
    let mut o = Observed::new(1 << 20);
    for records in recordings {
        let mut records = (*records).clone();
        attribute::enrich(&snapshot.cluster, &mut records);
        for r in &records {
            o.add(node, r);
        }
    }
    let objects: Vec<Value> = o
        .pending()
        .iter()
        .flat_map(|p| o.objects(node, &p.workload, &[]).unwrap().unwrap().changed)
        .map(|v| v.to_value())
        .collect();
    edges(&objects, node)
}

/// A real control plane holding the lab's cluster, with deploy/ applied (CRD, RBAC, the
/// DaemonSet's ServiceAccount), and a kubeconfig with that ServiceAccount's token.
pub(crate) struct LabApi {
    pub cp: ControlPlane,
    pub kubeconfig: PathBuf,
}

pub(crate) fn serve_lab(dir: &Path) -> LabApi {
    let cp = k8s::start(Options::default());
    k8s::apply_deploy(&cp);
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(&snapshot, objects::snapshot_yaml(&lab_scenario())).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(k8s::publish(&cp, &k8s::read_list(&snapshot)));
    let token = cp.token("flowpol-system", "flowpol-agent").unwrap();
    let kubeconfig = cp.token_kubeconfig("agent.kubeconfig", &token).unwrap();
    LabApi { cp, kubeconfig }
}

pub(crate) fn lab_scenario() -> scenario::Resolved {
    scenario::parse("shop", EXAMPLE_SCENARIO).unwrap()
}

/// A metric's samples: label set -> value.
pub(crate) fn samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub(crate) fn pod_as_podman_args(ds: &Value, state: &Path) -> Vec<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let mut args: Vec<String> = vec![
        "--runtime=runc".into(),
        "--ulimit=nofile=4096:4096".into(),
        "--ulimit=nproc=4096:4096".into(),
        "--network=host".into(),
    ];
    if pod["hostPID"] == true {
        args.push("--pid=host".into());
    }
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        args.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        args.push("--security-opt=seccomp=unconfined".into());
    }
    if sc["appArmorProfile"]["type"] == "Unconfined" {
        args.push("--security-opt=apparmor=unconfined".into());
    }
    let host_paths: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    for m in c["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let host = if path == "/var/lib/flowpol" {
            state.to_str().unwrap()
        } else {
            host_paths[m["name"].as_str().unwrap()]
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        args.push(format!("--volume={host}:{path}{ro}"));
    }
    for e in c["env"].as_array().into_iter().flatten() {
        if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            args.push(format!("--env={}={NODE}", e["name"].as_str().unwrap()));
        }
    }
    args
}
