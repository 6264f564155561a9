//! `flowpol probe`: active verification. From the declared policies, a plan of attempts that
//! must and must not get through; they run from inside the source pods' network namespaces
//! and are recorded, so `flowpol verify` judges them like any traffic.
use std::{path::PathBuf, process::ExitCode};

use super::source::Source;
use flowpol_analysis::{output, plan, policy::engine::Engine};
use flowpol_lab::{enforce::Fault, objects, probing, scenario, EXAMPLE_SCENARIO};
use flowpol_node::probing as node_probing;

#[derive(clap::Args)]
pub(super) struct Args {
    /// Lab scenario (YAML) whose pods, outside hosts and NetworkPolicies are probed; the
    /// built-in shop scenario when absent.
    scenario: Option<PathBuf>,
    /// Probe a real cluster instead, from this node: its policies and pods from a snapshot
    /// (--cluster) or the API server (--kube); attempts run from the pods on this node,
    /// inside their network namespaces.
    #[command(flatten)]
    source: Source,
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

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.source.cluster.is_some() || args.source.live_requested() {
        return on_node(args).await;
    }
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
        let yaml = objects::snapshot_yaml(&resolved);
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
    let faults = (!args.no_enforce).then_some(args.fault.as_slice());
    let report = probing::run(resolved, &attempts, faults, super::record::hostname()).await?;
    output::emit_records(args.output.as_deref(), &report.records)?;
    eprintln!(
        "flowpol probe: {} records in {:.1} s; judge them with `flowpol verify --flows`",
        report.records.len(),
        report.traffic_time.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Probing from this node: the plan of the cluster's policies, the attempts whose source
/// pod runs here, recorded.
async fn on_node(args: Args) -> anyhow::Result<ExitCode> {
    if args.scenario.is_some()
        || !args.fault.is_empty()
        || args.no_enforce
        || args.cluster_out.is_some()
    {
        anyhow::bail!("a scenario, --fault, --no-enforce and --cluster-out are for the lab; with --cluster or --kube the cluster's own CNI enforces");
    }
    let snap = args.source.load("probe").await?;
    let policies = snap.compile("probe")?;
    let engine = Engine::new(&snap.cluster, policies);
    let attempts = plan::plan(&engine, &[]);
    if args.plan {
        println!("{}", serde_json::to_string_pretty(&attempts)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let share = node_probing::Share::of_node(&snap.cluster, attempts, &mountinfo)?;
    eprintln!(
        "flowpol probe: {} attempts in the plan of {} policies; {} from the {} pod(s) on this node",
        share.planned,
        snap.policies.len(),
        share.attempts.len(),
        share.local.len()
    );
    let probed = share.record(super::record::hostname()).await?;
    output::emit_records(args.output.as_deref(), &probed.records)?;
    eprintln!("{}", probed.summary);
    if probed.unentered > 0 {
        anyhow::bail!(
            "{} attempt(s) could not enter their pod's network namespace",
            probed.unentered
        );
    }
    Ok(ExitCode::SUCCESS)
}
