//! `flowpol probe`: active verification. From the declared policies, a plan of attempts that
//! must and must not get through; they run from inside the source pods' network namespaces
//! and are recorded, so `flowpol verify` judges them like any traffic.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use flowpol::{
    lab::{
        cluster,
        enforce::{self, Fault},
        probing, run, scenario, EXAMPLE_SCENARIO,
    },
    output,
};

#[derive(clap::Args)]
pub struct Args {
    /// Lab scenario (YAML) whose pods, outside hosts and NetworkPolicies are probed; the
    /// built-in shop scenario when absent.
    scenario: Option<PathBuf>,
    /// Write the records as JSON lines here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the plan (JSON) and exit without running it.
    #[arg(long)]
    plan: bool,
    /// Enforce the policies like a CNI with this bug (repeatable); see `flowpol lab --help`.
    #[arg(long)]
    fault: Vec<Fault>,
    /// Do not enforce the policies at all.
    #[arg(long, conflicts_with = "fault")]
    no_enforce: bool,
    /// Write the lab's cluster as a snapshot, for `flowpol verify --cluster`.
    #[arg(long)]
    cluster_out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let resolved = match &args.scenario {
        Some(path) => scenario::load(path)?,
        None => scenario::parse("<built-in shop scenario>", EXAMPLE_SCENARIO)?,
    };
    if resolved.scenario.policies.is_empty() {
        anyhow::bail!(
            "scenario `{}` declares no NetworkPolicies: there is nothing to probe",
            resolved.scenario.name
        );
    }
    let attempts = probing::plan(&resolved)?;
    if args.plan {
        println!("{}", serde_json::to_string_pretty(&attempts)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.cluster_out {
        let yaml = cluster::snapshot_yaml(&resolved);
        output::write_atomic(path, |mut f| {
            std::io::Write::write_all(&mut f, yaml.as_bytes())
        })?;
    }
    let allowed = attempts.iter().filter(|a| a.expect_allowed).count();
    eprintln!(
        "flowpol probe: {} attempts from {} policies ({allowed} must get through, {} must not)",
        attempts.len(),
        resolved.scenario.policies.len(),
        attempts.len() - allowed
    );
    let mut resolved = probing::as_traffic(resolved, &attempts);
    if !args.no_enforce {
        enforce::install(&mut resolved, &args.fault)?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = rt.block_on(run::run(resolved, super::record::hostname()))?;
    output::emit_records(args.output.as_deref(), &report.records)?;
    eprintln!(
        "flowpol probe: {} records in {:.1} s; judge them with `flowpol verify --flows`",
        report.records.len(),
        report.traffic_time.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
