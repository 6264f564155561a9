//! The `flowpol` binary's behaviour at its edges: privileges and bad input.
use std::process::Command;

use flowpol_e2e::{assert_no_leftovers, binary, privileged};

fn flowpol() -> Command {
    Command::new(binary())
}

/// `flowpol record` for three seconds into `output`.
struct Recording {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts [`Recording`] and returns once its sensor is attached (it says "recording").
fn record_briefly(extra: &[&std::ffi::OsStr], output: &std::path::Path) -> Recording {
    use std::io::BufRead;
    let mut child = flowpol()
        .args(["record", "--duration", "3s"])
        .args(extra)
        .arg("--output")
        .arg(output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (attached, wait) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.starts_with("flowpol: recording") {
                let _ = attached.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    // Disconnected (it ended before recording) is the same signal: the caller sees why.
    let _ = wait.recv_timeout(std::time::Duration::from_secs(60));
    Recording { child, stderr }
}

impl Recording {
    /// Waits for the end: the exit status and everything it said.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.stderr.join().unwrap())
    }
}

#[test]
fn record_without_privileges_names_what_is_missing() {
    if !privileged() {
        return;
    }
    // Drop to an unprivileged user with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(binary())
        .args(["record", "--duration", "1s"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without privileges");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
}

#[test]
fn record_captures_and_exits_cleanly() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowpol-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("records.jsonl");
    let recording = record_briefly(&[], &out_file);
    // A connection to a closed loopback port: refused.
    let _ = std::net::TcpStream::connect("127.0.0.1:9");
    let (status, stderr) = recording.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("events lost      0"),
        "summary reports losses: {stderr}"
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let refused = text.lines().find(|v: &&str| {
        v.contains("\"dst\":{\"ip\":\"127.0.0.1\",\"port\":9}")
            && v.contains("\"verdict\":\"refused\"")
    });
    assert!(
        refused.is_some(),
        "no refused record for 127.0.0.1:9 in\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A connection made before `flowpol record` started, and kept open, is in its output on
/// both sides, marked, and so is an idle connected UDP socket, on its client's side; the
/// file ends with the recording's account of itself.
#[test]
fn record_reports_a_connection_already_open_and_ends_with_its_capture_line() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowpol-cli-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("records.jsonl");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(server).unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    // A UDP socket connected to a server's and idle throughout, as a resolver's can be.
    let udp_server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    resolver.connect(udp_server.local_addr().unwrap()).unwrap();
    let (status, stderr) = record_briefly(&[], &out_file).finish();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("open at start"), "{stderr}");
    let flows = flowpol_analysis::record::read_flows(&out_file).unwrap();
    let here = client.local_addr().unwrap();
    let open: Vec<_> = flows
        .records
        .iter()
        .filter(|r| r.dst.port == Some(server.port()) && r.src.port == Some(here.port()))
        .map(|r| {
            let o = r.observer.as_ref().unwrap();
            (o.side, o.since, r.verdict, r.count)
        })
        .collect();
    use flowpol_analysis::record::{Side, Since, Verdict};
    let marked = |side| {
        (
            side,
            Some(Since::BeforeStart),
            Some(Verdict::Established),
            1,
        )
    };
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.contains(&marked(Side::Client)), "{open:?}");
    assert!(open.contains(&marked(Side::Server)), "{open:?}");
    let idle: Vec<_> = flows
        .records
        .iter()
        .filter(|r| r.dst.port == Some(udp_server.local_addr().unwrap().port()))
        .map(|r| {
            let o = r.observer.as_ref().unwrap();
            (r.protocol, o.side, o.since, r.verdict, r.count)
        })
        .collect();
    use flowpol_analysis::record::Protocol;
    assert_eq!(
        idle,
        [(
            Protocol::UDP,
            Side::Client,
            Some(Since::BeforeStart),
            Some(Verdict::Sent),
            1
        )],
        "the idle connected UDP socket, once, on its client's side"
    );
    assert_eq!(flows.captures.len(), 1);
    assert_eq!(flows.captures[0].events_lost, 0);
    assert!(flows.missing_flows().is_empty());
    let last = std::fs::read_to_string(&out_file).unwrap();
    assert!(last.lines().last().unwrap().starts_with("{\"capture\":"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_scenarios_fail_with_the_place_and_no_leftovers() {
    let dir = std::env::temp_dir().join(format!("flowpol-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: x\npods:\n  - {name: a, namespace: nowhere}\n").unwrap();
    let out = flowpol().arg("lab").arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("pods[0].namespace"),
        "{stderr}"
    );
    std::fs::write(&bad, "name: [unclosed\n").unwrap();
    let out = flowpol().arg("lab").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
    let out = flowpol()
        .args(["lab", "/nonexistent/scenario.yaml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/scenario.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_during_a_lab_run_cleans_up() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowpol-int-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("slow.yaml");
    // Ten connections into a dropping port, two seconds each: twenty seconds unless stopped.
    std::fs::write(
        &scenario,
        "name: slow\nsettings: {timeout: 2s}\nnamespaces: [{name: a}]\npods:\n  - {name: c, namespace: a}\n  - {name: s, namespace: a, ports: [{port: 80}]}\ntraffic:\n  - {from: a/c, to: a/s, port: 80, count: 10}\ndrops:\n  - {pod: a/s, direction: ingress, protocol: TCP}\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let child = flowpol()
        .arg("lab")
        .arg(&scenario)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once its lab is being built (its signal handler is installed before):
    // the namespaces carry the process id.
    let own = format!("{}{}-", flowpol_lab::netns::NETNS_PREFIX, child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !flowpol_lab::netns::leftovers()
        .iter()
        .any(|n| n.starts_with(&own))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lab never built its namespaces"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an interrupted run is not a success: {stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(12),
        "stopped promptly, not after the whole plan"
    );
    assert_no_leftovers();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hostNetwork pod's connection carries its node's address; its cgroup (named by the
/// kubelet after the pod's UID) names the pod anyway.
#[test]
fn record_names_a_host_network_pod_by_its_cgroup() {
    if !privileged() {
        return;
    }
    const UID: &str = "5e1f0c2a-7b3d-4e8f-9a6b-c1d2e3f4a5b6";
    let dir = std::env::temp_dir().join(format!("flowpol-cgroup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = flowpol_node::kernel::cgroup2_root(&mountinfo).expect("a cgroup v2 hierarchy");
    let top = root.join("kubepods-flowpol-e2e.slice");
    let pod_cgroup = top.join(format!("kubepods-pod{}.slice", UID.replace('-', "_")));
    std::fs::create_dir_all(&pod_cgroup).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(
        &snapshot,
        format!(
            "apiVersion: v1\nkind: List\nitems:\n\
- {{apiVersion: v1, kind: Node, metadata: {{name: lab-node}}, status: {{addresses: [{{type: InternalIP, address: 10.99.0.1}}]}}}}\n\
- apiVersion: v1\n  kind: Pod\n  metadata: {{name: node-agent, namespace: kube-system, uid: {UID}}}\n  \
spec: {{hostNetwork: true, nodeName: lab-node, containers: [{{name: agent, image: x}}]}}\n  \
status: {{phase: Running, podIP: 10.99.0.1, podIPs: [{{ip: 10.99.0.1}}]}}\n"
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepter = std::thread::spawn(move || listener.accept().map(|_| ()));
    let out_file = dir.join("records.jsonl");
    let recording = record_briefly(&["--cluster".as_ref(), snapshot.as_os_str()], &out_file);
    // A process of the pod: joins the pod's cgroup, then connects.
    let procs = pod_cgroup.join("cgroup.procs");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec 3<>/dev/tcp/127.0.0.1/{port}",
            procs.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    accepter.join().unwrap().unwrap();
    let (status, stderr) = recording.finish();
    // An exited task leaves its cgroup a moment after it was reaped.
    for _ in 0..100 {
        if std::fs::remove_dir(&pod_cgroup).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_dir(&top).unwrap();
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["dst"]["port"] == port)
        .collect();
    let client = records
        .iter()
        .find(|r| r["observer"]["side"] == "client")
        .unwrap_or_else(|| panic!("no client-side record to port {port} in\n{text}"));
    assert_eq!(client["src"]["kind"], "pod", "{client}");
    assert_eq!(client["src"]["pod"], "node-agent", "{client}");
    assert_eq!(client["src"]["namespace"], "kube-system", "{client}");
    // The test's own listener is in no pod's cgroup: by address, 127.0.0.1 is nobody's.
    let server = records
        .iter()
        .find(|r| r["observer"]["side"] == "server")
        .unwrap_or_else(|| panic!("no server-side record to port {port} in\n{text}"));
    assert_eq!(server["dst"]["kind"], "external", "{server}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `flowpol probe --cluster` on a node: the attempts whose source pod runs here go out from
/// inside that pod's network namespace, entered through a process in the pod's kubelet-style
/// cgroup. With the policies enforced, verify finds nothing; without, the denied attempt is
/// an enforcement gap.
#[test]
fn probe_runs_from_local_pods_namespaces_found_by_their_cgroups() {
    use flowpol_lab::{enforce, objects, scenario, Lab};
    if !privileged() {
        return;
    }
    let yaml = "
name: node-probe
namespaces: [{name: a}, {name: b}]
pods:
  - {name: client, namespace: a, labels: {app: client}}
  - {name: server, namespace: a, labels: {app: server}, ports: [{port: 8080, name: http}]}
  - {name: other, namespace: b, labels: {app: other}, ports: [{port: 8080}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: server, namespace: a}
    spec:
      podSelector: {matchLabels: {app: server}}
      ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny, namespace: b}
    spec: {podSelector: {}, policyTypes: [Ingress]}
";
    let dir = std::env::temp_dir().join(format!("flowpol-node-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = flowpol_node::kernel::cgroup2_root(&mountinfo).expect("a cgroup v2 hierarchy");
    let top = root.join("kubepods-flowpol-probe.slice");
    // The client is the scenario's first pod.
    let pod_cgroup = top.join(format!(
        "kubepods-pod{}.slice",
        objects::uid(0).replace('-', "_")
    ));
    for enforced in [true, false] {
        let mut resolved = scenario::parse("node-probe", yaml).unwrap();
        if enforced {
            enforce::install(&mut resolved, &[]).unwrap();
        }
        let snapshot = dir.join("cluster.yaml");
        std::fs::write(&snapshot, objects::snapshot_yaml(&resolved)).unwrap();
        let lab = Lab::up(resolved).unwrap();
        std::fs::create_dir_all(&pod_cgroup).unwrap();
        // The pod's process: in the client's namespace (once `ip` has entered it), then
        // moved into the pod's cgroup.
        let mut sleeper = Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.namespace("a/client").unwrap(),
                "sleep",
                "60",
            ])
            .spawn()
            .unwrap();
        let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let pid = sleeper.id().to_string();
        for _ in 0..100 {
            if ns_of(&pid) != ns_of("self") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(pod_cgroup.join("cgroup.procs"), &pid).unwrap();
        let records = dir.join("probe.jsonl");
        let out = flowpol()
            .args(["probe", "--cluster"])
            .arg(&snapshot)
            .arg("-o")
            .arg(&records)
            .output()
            .unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        for _ in 0..100 {
            if std::fs::remove_dir(&pod_cgroup).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(lab);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("2 from the 1 pod(s) on this node"),
            "{stderr}"
        );
        let verify = flowpol()
            .args(["verify", "--output", "json", "--cluster"])
            .arg(&snapshot)
            .arg("--flows")
            .arg(&records)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
        let flows: Vec<(String, String, String)> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "enforcement_gap" || f["kind"] == "over_block")
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["src"]["name"].as_str().unwrap().to_owned(),
                    f["dst"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let text = std::fs::read_to_string(&records).unwrap();
        if enforced {
            assert_eq!(flows, Vec::new(), "{text}");
            assert!(
                text.contains("\"verdict\":\"established\""),
                "client -> server got through: {text}"
            );
        } else {
            assert_eq!(
                flows,
                vec![(
                    "enforcement_gap".to_owned(),
                    "a/client".to_owned(),
                    "b/other".to_owned()
                )],
                "{text}"
            );
        }
    }
    std::fs::remove_dir(&top).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_no_leftovers();
}
