//! `cargo xtask demo`: the whole loop on the built-in lab, step by step, files under
//! `target/demo/`: record the shop under faithful policy enforcement and verify it; break
//! the enforcer like a buggy CNI, verify again and compare; probe the policies actively;
//! suggest policies from the traffic, enforce them instead, and replay.
use anyhow::{Context as _, Result};

use crate::{
    paths,
    setup::{cargo, sh},
};

fn step(title: &str) {
    eprintln!("\n=== {title}");
}

pub(crate) fn run() -> Result<()> {
    cargo(&["build", "--release", "--package", "probe-user"])?;
    let flowpol = paths::binary("release", "flowpol")?;
    let flowpol = flowpol
        .to_str()
        .context("the target directory's path is not UTF-8")?;
    let dir = paths::target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let dir = dir
        .to_str()
        .context("the target directory's path is not UTF-8")?;
    let file = |name: &str| format!("{dir}/{name}");
    let (cluster, flows, faulty, probed) = (
        file("cluster.yaml"),
        file("flows.jsonl"),
        file("flows-ignore-egress.jsonl"),
        file("probe-named-ports.jsonl"),
    );
    step("1. the shop lab, its NetworkPolicies enforced faithfully, recorded and checked");
    sh(
        flowpol,
        &["lab", "--check", "--cluster-out", &cluster, "-o", &flows],
    )?;
    step("2. verify: no enforcement gap, no over-block (the gate CI pipelines would use)");
    sh(
        flowpol,
        &[
            "verify",
            "--cluster",
            &cluster,
            "--flows",
            &flows,
            "--fail-on",
            "enforcement_gap,over_block",
        ],
    )?;
    step("3. the same shop on a CNI that ignores egress policies");
    sh(flowpol, &["lab", "--fault", "ignore-egress", "-o", &faulty])?;
    step("4. verify finds the traffic that got out although policy denies it");
    sh(
        flowpol,
        &["verify", "--cluster", &cluster, "--flows", &faulty],
    )?;
    step("5. compare the two runs");
    sh(
        flowpol,
        &["compare", &flows, &faulty, "--cluster", &cluster],
    )?;
    step("6. probe the policies actively, on a CNI that ignores named ports, and verify");
    sh(
        flowpol,
        &["probe", "--fault", "ignore-named-ports", "-o", &probed],
    )?;
    sh(
        flowpol,
        &["verify", "--cluster", &cluster, "--flows", &probed],
    )?;
    let (suggested, replayed) = (file("suggested.yaml"), file("flows-suggested.jsonl"));
    step("7. suggest least-privilege policies from what the shop really did");
    sh(
        flowpol,
        &[
            "suggest",
            "--cluster",
            &cluster,
            "--flows",
            &flows,
            "--explain",
            "-o",
            &suggested,
        ],
    )?;
    step("8. enforce the suggestion instead of the hand-written policies, and replay");
    sh(flowpol, &["lab", "--policies", &suggested, "-o", &replayed])?;
    step("9. compare: what worked still works; only what never worked (a closed port) changed");
    sh(
        flowpol,
        &["compare", &flows, &replayed, "--cluster", &cluster],
    )?;
    eprintln!("\nfiles are in {dir}/");
    Ok(())
}

/// `cargo xtask demo --kube`: the same shop against a real control plane (built from the Go
/// module proxy, started here and stopped at the end): deploy/ applied, the lab's pods
/// published as Pod objects, the agent (as the DaemonSet's ServiceAccount) writing
/// ObservedTraffic while the lab runs, then verify and suggest `--from-cluster`, and the
/// suggestion applied with kubectl. Files land in `target/demo/kube/` (of `$CARGO_TARGET_DIR` when set).
pub(crate) fn kube() -> Result<()> {
    cargo(&["build", "--release", "--package", "probe-user"])?;
    let flowpol = paths::binary("release", "flowpol")?;
    let flowpol = flowpol
        .to_str()
        .context("the target directory's path is not UTF-8")?;
    let bins = controlplane::Binaries::build()?;
    let dir = paths::target_dir().join("demo/kube");
    std::fs::create_dir_all(&dir)?;
    let file = |name: &str| dir.join(name).display().to_string();
    step("1. a control plane: kine, kube-apiserver and kube-controller-manager on 127.0.0.1");
    let cp = controlplane::ControlPlane::start(controlplane::Options {
        dir: Some(dir.join("k8s")),
        ..controlplane::Options::default()
    })?;
    let admin = cp.kubeconfig_path().display().to_string();
    let kubectl = |args: &[&str]| -> Result<()> {
        let status = cp.kubectl_command().args(args).status()?;
        anyhow::ensure!(status.success(), "kubectl {} failed", args.join(" "));
        Ok(())
    };
    eprintln!(
        "  {} at {}; KUBECONFIG={admin}",
        controlplane::versions(),
        cp.server()
    );
    step("2. kubectl apply -k deploy/: the CRD, the agent's RBAC and DaemonSet");
    kubectl(&["apply", "-k", "deploy/"])?;
    cp.wait_established("observedtraffics.flowpol.io")?;
    let token = cp.token("flowpol-system", "flowpol-agent")?;
    let agent_kubeconfig = cp.token_kubeconfig("agent.kubeconfig", &token)?;
    step("3. flowpol agent on this node, as the DaemonSet's ServiceAccount");
    let log = std::fs::File::create(file("agent.log"))?;
    let mut agent = std::process::Command::new(flowpol)
        .args(["agent", "--node", "lab-node", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&agent_kubeconfig)
        .args([
            "--round",
            "1s",
            "--flush-every",
            "1s",
            "--counts-every",
            "1s",
        ])
        .arg("--no-records")
        .arg("--state-dir")
        .arg(file("agent-state"))
        .stderr(log)
        .spawn()?;
    step("4. the shop lab, published into the API server as Pods, its traffic recorded");
    let ran = sh(
        flowpol,
        &[
            "lab",
            "--kube",
            "--kubeconfig",
            &admin,
            "--keep-published",
            "-o",
            &file("flows.jsonl"),
        ],
    );
    // The agent's last writes, then SIGTERM as the kubelet would send.
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let stopped = agent.wait()?;
    ran?;
    anyhow::ensure!(
        stopped.success(),
        "the agent failed; see {}",
        file("agent.log")
    );
    step("5. what the agent wrote: kubectl get observedtraffics");
    kubectl(&["get", "observedtraffics", "-A"])?;
    step("6. verify --from-cluster: the cluster's own record held against its policies");
    sh(
        flowpol,
        &["verify", "--from-cluster", "--kubeconfig", &admin],
    )?;
    step("7. suggest --from-cluster, and the suggestion applied with kubectl");
    let suggested = file("suggested.yaml");
    sh(
        flowpol,
        &[
            "suggest",
            "--from-cluster",
            "--kubeconfig",
            &admin,
            "-o",
            &suggested,
        ],
    )?;
    kubectl(&["apply", "-f", &suggested])?;
    kubectl(&["get", "networkpolicies", "-A"])?;
    eprintln!(
        "\nfiles are in {}/ (kubectl {} built in {})",
        dir.display(),
        controlplane::kubernetes_version(),
        bins.bin_dir().display()
    );
    Ok(())
}
