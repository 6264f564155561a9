//! `flowpol compare`: runs of the same traffic (two clusters, CNIs, enforcers, faithful and
//! faulty enforcement) side by side. Two files alone: every case whose outcome differs.
//! With `--run LABEL=FILE`: the comparison table, one column per label, repetitions of a
//! label counted (`always`, `never`, `sometimes 2/5`), the policies' expectation beside.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use flowpol_analysis::{
    attribute,
    cluster::snapshot,
    compare::{self, table},
    output,
    policy::{self, clusterwide, engine::Engine},
    record,
};

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    Table,
    Json,
    /// A markdown table, to paste into an issue or a pull request.
    Md,
}

#[derive(clap::Args)]
pub(super) struct Args {
    /// Two runs' flow records (JSON lines from `record`, `lab` or `probe`): their
    /// differences. Not with --run.
    #[arg(num_args = 0..=2, conflicts_with = "run")]
    files: Vec<PathBuf>,
    /// A labelled run, `LABEL=FILE[,FILE...]` (repeatable): the comparison table, one
    /// column per label, each file a repetition of that run (as `lab --repeat` writes
    /// them); a label given again adds repetitions. A `FILE.enforced.json` beside a file
    /// (`lab`/`probe --enforcer` write one) adds its enforcer's time to enforce.
    #[arg(long, value_parser = parse_run)]
    run: Vec<(String, Vec<PathBuf>)>,
    /// Cluster snapshot naming the ends of every run (same cluster, or same names); with
    /// --run its NetworkPolicies give each case's expectation.
    #[arg(long, conflicts_with_all = ["cluster_a", "cluster_b"])]
    cluster: Option<PathBuf>,
    /// Cluster snapshot for the first of two files (when the runs come from two clusters).
    #[arg(long, requires = "cluster_b", conflicts_with = "run")]
    cluster_a: Option<PathBuf>,
    /// Cluster snapshot for the second file.
    #[arg(long, requires = "cluster_a", conflicts_with = "run")]
    cluster_b: Option<PathBuf>,
    /// table or json; with --run also md.
    #[arg(long, value_enum, default_value = "table")]
    output: TableFormat,
    /// Exit with status 3 when the runs differ (two files), or when a cell disagrees with
    /// the policies (--run).
    #[arg(long)]
    fail_on_difference: bool,
}

fn parse_run(s: &str) -> Result<(String, Vec<PathBuf>), String> {
    match s.split_once('=') {
        Some((label, files)) if !label.is_empty() && files.split(',').all(|f| !f.is_empty()) => {
            Ok((
                label.to_owned(),
                files.split(',').map(PathBuf::from).collect(),
            ))
        }
        _ => Err(format!("`{s}` is not LABEL=FILE[,FILE...]")),
    }
}

fn load(
    flows: &std::path::Path,
    cluster: Option<&snapshot::Snapshot>,
) -> anyhow::Result<Vec<record::FlowRecord>> {
    let mut records = record::read_json_lines(flows)?;
    if let Some(snap) = cluster {
        attribute::enrich(&snap.cluster, &mut records);
    }
    Ok(records)
}

/// The time to enforce that `lab`/`probe --enforcer` wrote beside `flows`, if any.
fn enforced_beside(flows: &std::path::Path) -> anyhow::Result<Option<std::time::Duration>> {
    let path = output::enforced_beside(flows);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let facts: output::EnforcedFacts = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not what `flowpol lab --enforcer` writes",
            path.display()
        )
    })?;
    facts
        .propagation_seconds
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s)
                .with_context(|| format!("{}: propagation_seconds {s}", path.display()))
        })
        .transpose()
}

fn snapshot_at(path: Option<&PathBuf>) -> anyhow::Result<Option<snapshot::Snapshot>> {
    path.map(|p| snapshot::load(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.run.is_empty() {
        return run_table(&args);
    }
    let [a, b] = args.files.as_slice() else {
        anyhow::bail!(
            "compare needs two files of flow records, or labelled runs (--run LABEL=FILE)"
        );
    };
    let cluster_a = snapshot_at(args.cluster.as_ref().or(args.cluster_a.as_ref()))?;
    let cluster_b = snapshot_at(args.cluster.as_ref().or(args.cluster_b.as_ref()))?;
    let diffs = compare::compare(&load(a, cluster_a.as_ref())?, &load(b, cluster_b.as_ref())?);
    match args.output {
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&diffs)?),
        TableFormat::Table => {
            let label = |p: &PathBuf| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            print!("{}", compare::render(&diffs, &label(a), &label(b)))
        }
        TableFormat::Md => anyhow::bail!("--output md is for the table of labelled runs (--run)"),
    }
    Ok(if args.fail_on_difference && !diffs.is_empty() {
        ExitCode::from(super::verify::FINDINGS_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_table(args: &Args) -> anyhow::Result<ExitCode> {
    let snap = snapshot_at(args.cluster.as_ref())?;
    let mut runs: Vec<table::Run> = Vec::new();
    for (label, files) in &args.run {
        let mut repetitions = Vec::new();
        let mut enforced = Vec::new();
        for file in files {
            repetitions.push(load(file, snap.as_ref())?);
            enforced.extend(enforced_beside(file)?);
        }
        match runs.iter_mut().find(|r| &r.label == label) {
            Some(run) => {
                run.repetitions.extend(repetitions);
                run.enforced.extend(enforced);
            }
            None => runs.push(table::Run {
                label: label.clone(),
                repetitions,
                enforced,
            }),
        }
    }
    let engine = match &snap {
        Some(s) => {
            let policies = policy::compile_all(&s.policies).map_err(|errors| {
                let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(
                    "invalid NetworkPolicy object(s) in the cluster snapshot (the API server would reject them): {}",
                    shown.join("; ")
                )
            })?;
            let cluster_policies =
                clusterwide::compile_all(&s.cluster_policies).map_err(|errors| {
                    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!(
                        "invalid cluster network policy object(s) in the cluster snapshot (the API server would reject them): {}",
                        shown.join("; ")
                    )
                })?;
            Some(Engine::with_cluster_policies(
                &s.cluster,
                policies,
                cluster_policies,
            ))
        }
        None => None,
    };
    let t = table::table(&runs, engine.as_ref());
    match args.output {
        TableFormat::Table => print!("{}", t.render()),
        TableFormat::Md => print!("{}", t.markdown()),
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&t)?),
    }
    Ok(
        if args.fail_on_difference && t.findings().iter().any(|&n| n > 0) {
            ExitCode::from(super::verify::FINDINGS_EXIT)
        } else {
            ExitCode::SUCCESS
        },
    )
}
