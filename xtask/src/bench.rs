//! `cargo xtask bench`: the benchmarks, each writing its figures under `target/bench/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::setup::cargo;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum What {
    /// Connection rate (native generator), eBPF cost per hook, userspace CPU per event, loss
    /// curve; against bpftrace.
    Capture,
    /// Policy engine: model build, memory, verdicts/s; against network-config-analyzer on
    /// the same connectivity map, every answer compared.
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
mod nca;
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
/// kind of cluster at sizes network-config-analyzer (PyPI) can handle, both tools computing
/// the same thing from the same file (see [`nca`]), alternately, medians of [`NCA_RUNS`].
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
    let flowpol = flowpol()?;
    // Absolute: `cargo bench` runs the bench binary from the package directory.
    let dir = crate::paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    println!("\nside by side with network-config-analyzer: every pair of pods, all ports (wall time and peak RSS, medians of {NCA_RUNS}):");
    println!(
        "{:>6} {:>5} {:>8} {:>9} {:>9} {:>8} {:>11} {:>11} {:>6} {:>9}",
        "pods",
        "ns",
        "policies",
        "allowed",
        "disagree",
        "nca (s)",
        "flowpol (s)",
        "ratio",
        "nca MiB",
        "ours MiB"
    );
    let mut rows = Vec::new();
    for pods in [200u32, 1000, 2000, 5000] {
        let (ns, policies) = (pods / 20, pods / 5);
        let file = dir.join(format!("nca-{pods}.yaml"));
        let f = file.to_str().context("path")?;
        cargo(&engine_bench(&[
            "--pods",
            &pods.to_string(),
            "--namespaces",
            &ns.to_string(),
            "--policies",
            &policies.to_string(),
            "--write",
            f,
        ]))?;
        let mut yaml = std::fs::read_to_string(&file)?;
        yaml.push_str(nca::POD_CIDR_POLICY);
        std::fs::write(&file, yaml)?;
        let (nca_out, ours_out) = (
            dir.join(format!("nca-{pods}.txt")),
            dir.join(format!("flowpol-{pods}.jsonl")),
        );
        let (mut nca_runs, mut ours_runs) = (Vec::new(), Vec::new());
        for _ in 0..NCA_RUNS {
            nca_runs.push(nca::measure(
                Path::new("nca"),
                &[
                    "--connectivity",
                    "--resource_list",
                    f,
                    "--output_format",
                    "txt_no_fw_rules",
                    "--output_endpoints",
                    "pods",
                ],
                &nca_out,
            )?);
            ours_runs.push(nca::measure(
                &flowpol,
                &["eval", "--cluster", f, "--connectivity"],
                &ours_out,
            )?);
        }
        let theirs = nca::parse_nca(&std::fs::read_to_string(&nca_out)?)?;
        let ours = nca::parse_flowpol(&std::fs::read_to_string(&ours_out)?)?;
        let found = nca::disagreements(&theirs, &ours);
        let explained = nca::explain(&flowpol, &file, &found)?;
        let (nca_s, nca_mib) = medians(&nca_runs);
        let (ours_s, ours_mib) = medians(&ours_runs);
        println!(
            "{pods:>6} {ns:>5} {:>8} {:>9} {:>9} {nca_s:>8.2} {ours_s:>11.2} {:>11.1} {nca_mib:>6.0} {ours_mib:>9.0}",
            policies + 1,
            ours.len(),
            found.len(),
            nca_s / ours_s,
        );
        for line in explained.iter().take(3) {
            println!("    {line}");
        }
        rows.push(serde_json::json!({
            "pods": pods,
            "namespaces": ns,
            "policies": policies + 1,
            "pairs": u64::from(pods) * u64::from(pods - 1),
            "pairs_allowed_flowpol": ours.len(),
            "pairs_allowed_nca": theirs.len(),
            "disagreements": found.len(),
            "explained": explained,
            "nca_s": nca_s,
            "flowpol_s": ours_s,
            "nca_peak_mib": nca_mib,
            "flowpol_peak_mib": ours_mib,
        }));
    }
    std::fs::write(
        dir.join("engine-vs-nca.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}

/// The `cargo` arguments of the engine bench with `args` for it (its sizes, `--write`).
fn engine_bench<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "bench",
        "--quiet",
        "--package",
        "flowpol-analysis",
        "--bench",
        "engine",
        "--",
    ];
    all.extend_from_slice(args);
    all
}

/// Runs of each tool per size in the comparison.
const NCA_RUNS: usize = 3;

/// The medians of (seconds, MiB) runs.
fn medians(runs: &[(f64, f64)]) -> (f64, f64) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
    )
}
