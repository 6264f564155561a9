//! `flowpol compare`: two runs of the same traffic (two clusters, two CNIs, faithful and
//! faulty enforcement) side by side; every case whose outcome differs.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use flowpol_analysis::{attribute, cluster::snapshot, compare, record};

use super::Format;

#[derive(clap::Args)]
pub(super) struct Args {
    /// Flow records of the first run (JSON lines from `record`, `lab` or `probe`).
    a: PathBuf,
    /// Flow records of the second run.
    b: PathBuf,
    /// Cluster snapshot naming the ends of both runs (same cluster, or same names).
    #[arg(long, conflicts_with_all = ["cluster_a", "cluster_b"])]
    cluster: Option<PathBuf>,
    /// Cluster snapshot for the first run (when the runs come from two clusters).
    #[arg(long, requires = "cluster_b")]
    cluster_a: Option<PathBuf>,
    /// Cluster snapshot for the second run.
    #[arg(long, requires = "cluster_a")]
    cluster_b: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    output: Format,
    /// Exit with status 3 when the runs differ.
    #[arg(long)]
    fail_on_difference: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let load =
        |flows: &PathBuf, cluster: Option<&PathBuf>| -> anyhow::Result<Vec<record::FlowRecord>> {
            let mut records = record::read_json_lines(flows)?;
            if let Some(path) = cluster {
                let snap = snapshot::load(path)
                    .with_context(|| format!("naming the ends of {}", flows.display()))?;
                attribute::enrich(&snap.cluster, &mut records);
            }
            Ok(records)
        };
    let a = load(&args.a, args.cluster.as_ref().or(args.cluster_a.as_ref()))?;
    let b = load(&args.b, args.cluster.as_ref().or(args.cluster_b.as_ref()))?;
    let diffs = compare::compare(&a, &b);
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&diffs)?),
        Format::Table => {
            let label = |p: &PathBuf| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            print!(
                "{}",
                compare::render(&diffs, &label(&args.a), &label(&args.b))
            )
        }
    }
    Ok(if args.fail_on_difference && !diffs.is_empty() {
        ExitCode::from(super::verify::FINDINGS_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}
