//! The commands reading a real cluster: the shop published into kube-apiserver (its API
//! server at the address and port the fixture gives it), then `enrich`, `eval`, `verify` and
//! `suggest` with `--kube` say exactly what they say from the snapshot file, and from a
//! snapshot taken of that cluster with kubectl as the README tells users to; `kubectl
//! flowpol` works through the built kubectl; and what `suggest` writes is accepted by the
//! real API server, as NetworkPolicies and, with Cilium's published CRD, as
//! CiliumNetworkPolicies.
mod common;
mod k8s;

use std::path::{Path, PathBuf};

use k8s::{ControlPlane, Options};

/// The shop's cluster, published; its API server is where the fixture says (the
/// `kubernetes` endpoints are the fixture's, as an API server at 192.168.10.5:6443 would
/// publish them).
fn shop() -> ControlPlane {
    let cp = k8s::start(Options {
        advertise_address: "192.168.10.5".parse().unwrap(),
        endpoint_reconciler: false,
        ..Options::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(k8s::publish(
        &cp,
        &k8s::read_list(&k8s::fixtures().join("cluster-shop.yaml")),
    ));
    cp
}

/// The shop's recorded flows in `dir`, as if they happened now: after the pods the server
/// has just created.
fn flows_now(dir: &k8s::TempDir) -> PathBuf {
    let flows = dir.0.join("flows.jsonl");
    k8s::shifted_flows(
        &k8s::fixtures().join("flows-shop.jsonl"),
        chrono::Utc::now() + chrono::Duration::seconds(5),
        &flows,
    );
    flows
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let (code, out, err) = common::flowpol_code(args);
    (code, out, err)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_commands_say_the_same_from_the_cluster_as_from_its_snapshots() {
    let cp = shop();
    let dir = k8s::TempDir::new("kube-cli");
    let flows = flows_now(&dir);
    // The snapshot a user takes of this cluster, as the README says.
    let taken = dir.0.join("taken.yaml");
    let yaml = cp
        .kubectl_ok(&[
            "get",
            "namespaces,nodes,pods,services,endpointslices,replicasets,jobs,networkpolicies",
            "-A",
            "-o",
            "yaml",
        ])
        .unwrap();
    std::fs::write(&taken, yaml).unwrap();
    let fixture: PathBuf = k8s::fixtures().join("cluster-shop.yaml");
    let kubeconfig = cp.kubeconfig_path();
    for command in [
        vec!["enrich"],
        vec!["eval"],
        vec!["eval", "--output", "table"],
        vec!["verify", "--output", "json"],
        vec!["verify"],
        vec!["suggest"],
        vec!["suggest", "--format", "cilium"],
    ] {
        let with = |source: &[&str]| {
            let mut args = command.clone();
            args.extend(["--flows", p(&flows)]);
            args.extend(source);
            run(&args)
        };
        let live = with(&["--kube", "--kubeconfig", p(&kubeconfig)]);
        let from_fixture = with(&["--cluster", p(&fixture)]);
        let from_taken = with(&["--cluster", p(&taken)]);
        assert!(!live.1.is_empty(), "{command:?}: {}", live.2);
        assert_eq!(live.0, from_fixture.0, "{command:?}: {}", live.2);
        assert_eq!(
            live.1, from_fixture.1,
            "{command:?}: the live cluster and the fixture it was published from disagree"
        );
        assert_eq!(
            from_taken.1, live.1,
            "{command:?}: a snapshot taken with kubectl and the live cluster disagree"
        );
        if command == ["verify", "--output", "json"] {
            // Not an empty agreement: the shop's traffic is attributed and judged.
            let v: serde_json::Value = serde_json::from_str(&live.1).unwrap();
            let kinds: Vec<&str> = v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["kind"].as_str())
                .collect();
            for kind in ["enforcement_gap", "over_block", "unprotected"] {
                assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
            }
            assert!(live.1.contains("\"workload\""), "{}", live.1);
        }
    }
    // A kubeconfig whose server does not answer: named, after the timeout given.
    let nowhere = cp
        .admin_kubeconfig_for("nowhere.kubeconfig", "https://127.0.0.1:1")
        .unwrap();
    let (code, out, err) = run(&[
        "enrich",
        "--flows",
        p(&flows),
        "--kubeconfig",
        p(&nowhere),
        "--kube-timeout",
        "2s",
    ]);
    assert!(code != Some(0) && out.is_empty(), "{out}");
    assert!(
        err.contains("not complete after 2s") && err.contains("Pod"),
        "{err}"
    );
}

#[test]
fn suggestions_are_accepted_by_the_api_server_and_kubectl_flowpol_reads_the_cluster() {
    let cp = shop();
    let dir = k8s::TempDir::new("kube-apply");
    let flows = flows_now(&dir);
    // `kubectl flowpol`, the plugin, through the built kubectl; the current context is the
    // cluster.
    let plugins = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_flowpol"),
        plugins.join("kubectl-flowpol"),
    )
    .unwrap();
    let kubectl = |args: &[&str], input: Option<&str>| {
        let path = format!(
            "{}:{}",
            plugins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = std::process::Command::new(&cp.binaries().kubectl)
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(input.unwrap_or_default().as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, suggested, err) = kubectl(&["flowpol", "suggest", "--flows", p(&flows)], None);
    assert!(ok, "{err}");
    let policies = suggested.matches("kind: NetworkPolicy").count();
    assert!(policies > 5, "{suggested}");
    // Applied as is: every policy accepted, server-side validated and defaulted.
    let (ok, applied, err) = kubectl(&["apply", "-f", "-"], Some(&suggested));
    assert!(ok, "{err}");
    assert_eq!(
        applied.matches("networkpolicy.networking.k8s.io/").count(),
        policies,
        "{applied}"
    );
    // What the server holds now is what was suggested: suggest --diff against the live
    // cluster has nothing left to add.
    let (ok, diff, err) = kubectl(
        &["flowpol", "suggest", "--flows", p(&flows), "--diff"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        !diff.contains("kind: NetworkPolicy"),
        "nothing is missing any more: {diff}"
    );

    // Cilium's own CRD, as its operator installs it; the suggestion in its format passes.
    cp.kubectl_ok(&["apply", "-f", p(&cp.binaries().cilium_crd)])
        .unwrap();
    k8s::wait_established(&cp, "ciliumnetworkpolicies.cilium.io");
    let (ok, cilium, err) = kubectl(
        &[
            "flowpol",
            "suggest",
            "--flows",
            p(&flows),
            "--format",
            "cilium",
        ],
        None,
    );
    assert!(ok, "{err}");
    let count = cilium.matches("kind: CiliumNetworkPolicy").count();
    assert!(count > 5, "{cilium}");
    let (ok, applied, err) = kubectl(&["apply", "-f", "-"], Some(&cilium));
    assert!(ok, "the CRD's schema takes every policy: {err}");
    assert_eq!(
        applied.matches("ciliumnetworkpolicy.cilium.io/").count(),
        count,
        "{applied}"
    );
}
