//! `cargo xtask bench`: the benchmarks, each writing its figures under `target/bench/`.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::setup::cargo;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum What {
    /// Connection rate (native generator), eBPF cost per hook, userspace CPU per event, loss
    /// curve; against bpftrace.
    Capture,
    /// Policy engine: model build, memory, verdicts/s; against network-config-analyzer.
    Engine,
    /// Suggest: 10,000 pods in 1,000 workloads, 100,000 flow records; time and memory.
    Suggest,
    /// The agent's edge store under a flood: bounded against unbounded memory, write pass,
    /// state file.
    Agent,
    /// The ObservedTraffic store at 1,000 nodes and 100,000 pods against the real control
    /// plane, with the analysis at that size; writes target/bench/scale.json.
    Scale,
}

mod capture;
mod load;
mod scale;

pub(crate) fn run(what: What, args: &[String]) -> Result<()> {
    if !args.is_empty() && !matches!(what, What::Scale) {
        bail!("only `bench scale` takes arguments after `--`");
    }
    match what {
        What::Scale => scale::scale(args),
        What::Capture => capture::capture(),
        What::Engine => engine(),
        What::Suggest => cargo(&[
            "bench",
            "--package",
            "flowpol-analysis",
            "--bench",
            "suggest",
        ]),
        What::Agent => cargo(&["bench", "--package", "flowpol-agent", "--bench", "agent"]),
    }
}

fn flowpol() -> Result<PathBuf> {
    crate::paths::binary("release", "flowpol")
}

/// The engine benchmark proper (10,000 pods, 500 namespaces, 2,000 policies), then the same
/// kind of cluster at sizes network-config-analyzer (PyPI) can handle, both tools timed on
/// the same file: `nca --connectivity` (its connectivity map, all ports, as grouped rules)
/// against `flowpol eval --matrix` over every port the policies name plus one they do not
/// (the same information, as a full pod-by-pod grid).
fn engine() -> Result<()> {
    cargo(&[
        "bench",
        "--package",
        "flowpol-analysis",
        "--bench",
        "engine",
    ])?;
    if Command::new("nca")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("xtask: installing network-config-analyzer from PyPI");
        crate::setup::sh("pip", &["install", "--quiet", "network-config-analyzer"])?;
    }
    cargo(&["build", "--release", "--package", "probe-user"])?;
    // Absolute: `cargo bench` runs the bench binary from the package directory.
    let dir = crate::paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    println!("\nside by side with network-config-analyzer (same cluster file, wall time):");
    println!(
        "{:>6} {:>6} {:>9} {:>12} {:>12} {:>8}",
        "pods", "ns", "policies", "nca (s)", "flowpol (s)", "ratio"
    );
    let mut rows = Vec::new();
    for pods in [200u32, 1000] {
        let (ns, policies) = (pods / 20, pods / 5);
        let file = dir.join(format!("nca-{pods}.yaml"));
        cargo(&[
            "bench",
            "--quiet",
            "--package",
            "flowpol-analysis",
            "--bench",
            "engine",
            "--",
            "--pods",
            &pods.to_string(),
            "--namespaces",
            &ns.to_string(),
            "--policies",
            &policies.to_string(),
            "--write",
            file.to_str().context("path")?,
        ])?;
        let time = |program: &str, args: &[&str]| -> Result<f64> {
            let t = Instant::now();
            let out = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !out.success() {
                bail!("{program} failed on {}", file.display());
            }
            Ok(t.elapsed().as_secs_f64())
        };
        let f = file.to_str().context("path")?;
        let nca = time(
            "nca",
            &[
                "--connectivity",
                "--resource_list",
                f,
                "--output_format",
                "txt",
            ],
        )?;
        let ours = time(
            flowpol()?.to_str().context("path")?,
            &[
                "eval",
                "--cluster",
                f,
                "--matrix",
                "--ports",
                "53,80,443,5432,8080,9000,9090,9100",
                "--protocols",
                "TCP,UDP",
                "--output",
                "json",
            ],
        )?;
        println!(
            "{pods:>6} {ns:>6} {policies:>9} {nca:>12.2} {ours:>12.2} {:>8.1}",
            nca / ours
        );
        rows.push(serde_json::json!({"pods": pods, "namespaces": ns, "policies": policies, "nca_s": nca, "flowpol_s": ours}));
    }
    std::fs::write(
        dir.join("engine-vs-nca.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}
