//! `flowpol lab`: build the namespace lab from a scenario, run its traffic while recording.
use std::{path::PathBuf, process::ExitCode};

use super::enforcing::{EnforcerArgs, LabApi};
use flowpol_analysis::output;
use flowpol_lab::{
    enforce::{self, Fault},
    enforcer,
    in_cluster::Published,
    objects, run, scenario, EXAMPLE_SCENARIO,
};

#[derive(clap::Args)]
pub(super) struct Args {
    /// Scenario file (YAML); the built-in shop scenario when absent.
    scenario: Option<PathBuf>,
    /// Write the records as JSON lines here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Fail (exit 1) unless every `expect` of the traffic plan matches what was captured.
    #[arg(long)]
    check: bool,
    /// Print the built-in scenario and exit.
    #[arg(long)]
    print_example: bool,
    /// Only generate the traffic, without loading the probe (a load generator for measuring
    /// a separately running `flowpol record`). Prints the clients' results as JSON.
    #[arg(long, conflicts_with_all = ["check", "output"])]
    no_record: bool,
    /// Do not enforce the scenario's NetworkPolicies (like a CNI without policy support,
    /// but without pretending to be one: see `--fault enforce-nothing`).
    #[arg(long, conflicts_with = "fault")]
    no_enforce: bool,
    #[command(flatten)]
    enforcing: EnforcerArgs,
    /// Run the lab this many times (each its own build, enforcer and recording), the
    /// records of run i in OUTPUT with `.i` before its extension: repetitions for
    /// `flowpol compare --run`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Enforce the policies like a CNI with this bug (repeatable): ignore-egress,
    /// ignore-ns-selector-with-pod-selector, ignore-except, ignore-named-ports, enforce-nothing,
    /// ignore-cluster-policies.
    #[arg(long)]
    fault: Vec<Fault>,
    /// Declare (and enforce) these NetworkPolicies instead of the scenario's: multi-document
    /// YAML, as `flowpol suggest` writes it.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Write the lab's cluster (namespaces, node, pods, declared policies) as a snapshot
    /// for `--cluster` of eval, enrich, verify and suggest.
    #[arg(long)]
    cluster_out: Option<PathBuf>,
    #[command(flatten)]
    api: LabApi,
    /// With --kube: leave what was published in the cluster, to read it afterwards.
    #[arg(long)]
    keep_published: bool,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.print_example {
        print!("{EXAMPLE_SCENARIO}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut resolved = match &args.scenario {
        Some(path) => scenario::load(path)?,
        None => scenario::parse("<built-in shop scenario>", EXAMPLE_SCENARIO)?,
    };
    if let Some(path) = &args.policies {
        resolved.scenario.policies = scenario::read_policies(path)?;
    }
    if let Some(path) = &args.cluster_out {
        let yaml = objects::snapshot_yaml(&resolved);
        output::write_atomic(path, |mut f| {
            std::io::Write::write_all(&mut f, yaml.as_bytes())
        })?;
    }
    let kube = args.api.requested();
    if let Some(program) = args.enforcing.program() {
        let kind = program.kind;
        if args.no_enforce || !args.fault.is_empty() || args.no_record || args.keep_published {
            anyhow::bail!("--enforcer {kind} runs a real enforcer: --no-enforce, --fault, --no-record and --keep-published are for flowpol's own");
        }
        if !kube {
            anyhow::bail!("--enforcer {kind} reads the lab from an API server: give --kube (or --kubeconfig / --context)");
        }
        if resolved.scenario.policies.is_empty() {
            anyhow::bail!(
                "--enforcer {kind} needs NetworkPolicies to enforce; the scenario has none"
            );
        }
    } else if !args.no_enforce && !resolved.scenario.policies.is_empty() {
        args.enforcing
            .only_flowpol("--enforcer-bin and --enforcer-arg are for a real --enforcer")?;
        enforce::install(&mut resolved, &args.fault)?;
        let faults: Vec<&str> = args.fault.iter().map(|f| f.as_str()).collect();
        eprintln!(
            "flowpol lab: enforcing {} policies{}",
            resolved.scenario.policies.len(),
            if faults.is_empty() {
                " faithfully".to_owned()
            } else {
                format!(" with fault(s) {}", faults.join(", "))
            }
        );
    } else if !args.fault.is_empty() {
        anyhow::bail!("--fault needs NetworkPolicies to enforce; the scenario has none");
    }
    eprintln!(
        "flowpol lab: scenario `{}`: {} hosts, {} traffic items",
        resolved.scenario.name,
        resolved.hosts.len(),
        resolved.scenario.traffic.len()
    );
    if args.no_record {
        let (elapsed, outcomes) = run::run_traffic_only(resolved)?;
        let attempts: u32 = outcomes.iter().flat_map(|o| o.results.values()).sum();
        println!(
            "{}",
            serde_json::json!({"seconds": elapsed.as_secs_f64(), "attempts": attempts, "per_second": f64::from(attempts) / elapsed.as_secs_f64(), "outcomes": outcomes})
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.repeat > 1 && args.output.is_none() {
        anyhow::bail!("--repeat writes each run's records to its own file: give --output");
    }
    let mut failed = false;
    for i in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("flowpol lab: run {i} of {}", args.repeat);
        }
        let (report, enforced) = one_run(&args, resolved.clone(), kube).await?;
        let output = args
            .output
            .as_deref()
            .map(|o| output::repetition(o, i, args.repeat));
        output::emit_records(
            output.as_deref(),
            &report.records,
            &[report.summary.capture()],
        )?;
        super::enforcing::write_facts(output.as_deref(), enforced.as_ref())?;
        failed |= tell(&args, &report);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One run of the lab with the enforcer asked for, and what a real one measured.
async fn one_run(
    args: &Args,
    resolved: scenario::Resolved,
    kube: bool,
) -> anyhow::Result<(run::LabReport, Option<enforcer::Enforced>)> {
    let Some(program) = args.enforcing.program() else {
        return Ok((run_publishing(args, resolved, kube).await?, None));
    };
    let kind = program.kind;
    let api = args.api.connect().await?;
    eprintln!(
        "flowpol lab: {kind} ({}) enforces {} policies",
        program.path.display(),
        resolved.scenario.policies.len()
    );
    let (report, enforced) =
        enforcer::run(resolved, super::record::hostname(), &program, &api).await?;
    for k in &enforced.unimplemented {
        eprintln!(
            "flowpol lab: warning: {kind} does not implement {}: the scenario's go unenforced (verify shows what they would have denied)",
            k.as_str()
        );
    }
    eprintln!(
        "flowpol lab: {kind} was ready {:.3} s after its start and {} (canaries: {})",
        enforced.ready.as_secs_f64(),
        match enforced.propagation {
            Some(p) => format!(
                "enforced the policies {:.3} s after they were created",
                p.as_secs_f64()
            ),
            None =>
                "the policies deny nothing a canary can try: their enforcement is not waited for"
                    .into(),
        },
        enforced
            .canaries
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok((report, Some(enforced)))
}

/// Prints a run's table, summary and mismatches; true when `--check` fails.
fn tell(args: &Args, report: &run::LabReport) -> bool {
    eprintln!("{}\n\n{}", report.table(), report.summary);
    eprintln!(
        "  traffic plan took {:.3} s",
        report.traffic_time.as_secs_f64()
    );
    for (host, dropped) in &report.listen_drops {
        eprintln!(
            "  {host}'s kernel dropped {} segments at its listeners ({} with the accept queue full): its side may count fewer handshakes than its clients",
            dropped.drops, dropped.overflows
        );
    }
    if report.mismatches.is_empty() {
        if args.check {
            eprintln!("flowpol lab: check passed: every expectation matched the capture exactly");
        }
        return false;
    }
    // The scenario's expectations are written for its own policies, faithfully enforced.
    let departs = !args.fault.is_empty()
        || args.policies.is_some()
        || args.no_enforce
        || args.enforcing.real();
    if departs && !args.check {
        eprintln!(
            "flowpol lab: this run departs from the scenario's own faithfully enforced policies; where the outcome differs from its expectations:"
        );
        for m in &report.mismatches {
            eprintln!("  differs: {m}");
        }
    } else {
        for m in &report.mismatches {
            eprintln!("flowpol lab: MISMATCH: {m}");
        }
    }
    args.check
}

/// flowpol's own enforcer, with the lab published into the API server when asked.
async fn run_publishing(
    args: &Args,
    resolved: scenario::Resolved,
    kube: bool,
) -> anyhow::Result<run::LabReport> {
    let published = if kube {
        let p = Published::new(
            args.api.kubeconfig.as_deref(),
            args.api.context.as_deref(),
            &resolved,
        )
        .await?;
        eprintln!(
            "flowpol lab: published {} objects into the API server{}",
            p.created(),
            if p.kept().is_empty() {
                String::new()
            } else {
                format!(" (kept the cluster's own {})", p.kept().join(", "))
            }
        );
        Some(p)
    } else {
        None
    };
    let report = run::run(resolved, super::record::hostname()).await;
    if let Some(p) = published.filter(|_| !args.keep_published) {
        match p.remove().await {
            Ok(()) => eprintln!("flowpol lab: removed what it published"),
            Err(e) if report.is_ok() => return Err(e.into()),
            // The run's own failure is the one to report; this one is said on the way.
            Err(e) => eprintln!("flowpol lab: {:#}", anyhow::Error::from(e)),
        }
    }
    Ok(report?)
}
