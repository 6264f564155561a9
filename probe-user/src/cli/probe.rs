//! `flowpol probe`: active verification. From the declared policies, a plan of attempts that
//! must and must not get through; they run from inside the source pods' network namespaces
//! and are recorded, so `flowpol verify` judges them like any traffic.
use std::{path::PathBuf, process::ExitCode};

use super::enforcing::EnforcerArgs;
use super::source::Source;
use flowpol_analysis::{output, plan};
use flowpol_lab::{
    enforce::Fault, enforcer, in_cluster::ApiServer, objects, probing, scenario, EXAMPLE_SCENARIO,
};
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
    #[command(flatten)]
    enforcing: EnforcerArgs,
    /// Write the lab's cluster as a snapshot, for `flowpol verify --cluster`.
    #[arg(long)]
    cluster_out: Option<PathBuf>,
    /// Run the plan this many times, the records of run i in OUTPUT with `.i` before its
    /// extension: repetitions for `flowpol compare --run`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

impl Args {
    /// Where run `i` writes its records.
    fn output_of(&self, i: u32) -> anyhow::Result<Option<PathBuf>> {
        match &self.output {
            Some(o) => Ok(Some(output::repetition(o, i, self.repeat))),
            None if self.repeat > 1 => {
                anyhow::bail!("--repeat writes each run's records to its own file: give --output")
            }
            None => Ok(None),
        }
    }
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A real enforcer reads the lab through the API server: --kube names it, not a cluster.
    let on_a_cluster = !args.enforcing.real() && args.source.live_requested();
    if args.source.cluster.is_some() || on_a_cluster {
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
    for i in 1..=args.repeat {
        let output = args.output_of(i)?;
        let (report, enforced) = match args.enforcing.program() {
            None => (
                probing::run(
                    resolved.clone(),
                    &attempts,
                    faults,
                    super::record::hostname(),
                )
                .await?,
                None,
            ),
            Some(program) => {
                if !args.fault.is_empty() || args.no_enforce {
                    anyhow::bail!("--fault and --no-enforce are for flowpol's own enforcer");
                }
                let api = ApiServer::connect(
                    args.source.kubeconfig.as_deref(),
                    args.source.context.as_deref(),
                )
                .await?;
                let probed = probing::as_traffic(resolved.clone(), &attempts);
                let (report, enforced) =
                    enforcer::run(probed, super::record::hostname(), &program, &api).await?;
                (report, Some(enforced))
            }
        };
        output::emit_records(
            output.as_deref(),
            &report.records,
            &[report.summary.capture()],
        )?;
        super::enforcing::write_facts(output.as_deref(), enforced.as_ref())?;
        eprintln!(
            "flowpol probe: {} records in {:.1} s; judge them with `flowpol verify --flows`",
            report.records.len(),
            report.traffic_time.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Probing from this node: the plan of the cluster's policies, the attempts whose source
/// pod runs here, recorded.
async fn on_node(args: Args) -> anyhow::Result<ExitCode> {
    if args.scenario.is_some()
        || !args.fault.is_empty()
        || args.no_enforce
        || args.cluster_out.is_some()
        || args.enforcing.real()
    {
        anyhow::bail!("a scenario, --fault, --no-enforce, --enforcer and --cluster-out are for the lab; with --cluster or --kube the cluster's own CNI enforces");
    }
    let snap = args.source.load("probe").await?;
    let engine = snap.engine("probe")?;
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
    for i in 1..=args.repeat {
        let output = args.output_of(i)?;
        let probed = share.clone().record(super::record::hostname()).await?;
        output::emit_records(
            output.as_deref(),
            &probed.records,
            &[probed.summary.capture()],
        )?;
        eprintln!("{}", probed.summary);
        if probed.unentered > 0 {
            anyhow::bail!(
                "{} attempt(s) could not enter their pod's network namespace",
                probed.unentered
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
