//! `cargo xtask bench scale [-- ARGS]`: the ObservedTraffic store with 1,000 simulated agents
//! against the real control plane (kube-apiserver on kine, built from the Go module proxy;
//! no kube-controller-manager: the synthetic pods have no ReplicaSet objects for it to keep),
//! the server's and the store's memory, `verify`/`suggest --from-cluster` on the whole
//! cluster, and the engine at 100,000 and 10,000 pods. ARGS go to the store benchmark
//! (crates/kube/benches/scale.rs: --nodes, --pods, --workloads, ...). Writes
//! target/bench/scale.json.
use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use controlplane::{Binaries, ControlPlane, Options};
use serde_json::{json, Value};

use crate::setup::cargo;

/// Runs `cargo bench` and returns the JSON its last line of output holds.
fn bench_json(args: &[&str]) -> Result<Value> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), out.status);
    }
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("the last line is not JSON: {last}"))
}

/// Resident and peak memory of `pid`, bytes (VmRSS, VmHWM).
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} for {pid}"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("a size")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub(crate) fn scale(args: &[String]) -> Result<()> {
    Binaries::build()?;
    cargo(&["build", "--release", "--package", "probe-user"])?;
    let flowpol = super::flowpol()?;
    let dir = crate::paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let cp = ControlPlane::start(Options {
        controller_manager: false,
        ..Options::default()
    })?;
    cp.kubectl_ok(&["apply", "-f", "deploy/crd.yaml"])?;
    cp.wait_established("observedtraffics.flowpol.io")?;
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().context("path")?;
    let mut store_args = vec![
        "bench",
        "--package",
        "flowpol-kube",
        "--bench",
        "scale",
        "--",
        "--kubeconfig",
        kubeconfig,
    ];
    store_args.extend(args.iter().map(String::as_str));
    let store = bench_json(&store_args)?;

    // The CLI on the whole cluster, as a user runs it.
    let time = |command: &str| -> Result<f64> {
        let out = dir.join(format!("scale-{command}.out"));
        let t = Instant::now();
        let status = Command::new(&flowpol)
            .args([command, "--from-cluster", "--kubeconfig", kubeconfig])
            .args(["--kube-timeout", "10m"])
            .stdout(std::fs::File::create(&out)?)
            .status()
            .with_context(|| format!("cannot run flowpol {command}"))?;
        let took = t.elapsed().as_secs_f64();
        if !status.success() {
            bail!("flowpol {command} --from-cluster failed ({status})");
        }
        println!("  flowpol {command} --from-cluster: {took:.1} s");
        Ok(took)
    };
    let verify_s = time("verify")?;
    let suggest_s = time("suggest")?;
    let (kine, apiserver) = cp.pids();
    let (apiserver_rss, apiserver_peak) = memory(apiserver.context("kube-apiserver runs")?)?;
    let (kine_rss, kine_peak) = memory(kine.context("kine runs")?)?;
    drop(cp);

    let engine = |pods: &str, namespaces: &str| {
        bench_json(&super::engine_bench(&[
            "--pods",
            pods,
            "--namespaces",
            namespaces,
            "--policies",
            "2000",
        ]))
    };
    let big = engine("100000", "5000")?;
    let ten = engine("10000", "500")?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let model_build_ms = f(&big, "parse_json_ms") + f(&big, "compile_ms") + f(&big, "index_ms");
    let mut figures = json!({
        "apiserver_rss_bytes": apiserver_rss, "apiserver_peak_rss_bytes": apiserver_peak,
        "kine_rss_bytes": kine_rss, "kine_peak_rss_bytes": kine_peak,
        "verify_from_cluster_s": verify_s, "suggest_from_cluster_s": suggest_s,
        "model_build_ms_100k": model_build_ms,
        "model_build_yaml_ms_100k": f(&big, "parse_ms") + f(&big, "compile_ms") + f(&big, "index_ms"),
        "bytes_per_pod_100k": f(&big, "model_bytes") / 100_000.0,
        "live_bytes_per_pod_100k": (f(&big, "live_bytes") - f(&big, "live_policy_bytes")) / 100_000.0,
        "verdicts_per_s": f(&ten, "verdicts_per_s"),
    });
    for (k, v) in store.as_object().context("the store figures")? {
        figures[k] = v.clone();
    }
    let path = dir.join("scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&figures)? + "\n")?;
    println!("{figures:#}\nxtask: wrote {}", path.display());
    Ok(())
}
