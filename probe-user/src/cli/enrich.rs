//! `flowpol enrich`: name both ends of recorded flows from a cluster snapshot, offline.
use std::{path::PathBuf, process::ExitCode};

use flowpol::{attribute, cluster::snapshot, output, record};

#[derive(clap::Args)]
pub struct Args {
    /// Cluster snapshot: `kubectl get namespaces,pods,services,endpointslices,replicasets,jobs,nodes -A -o yaml`.
    #[arg(long)]
    cluster: PathBuf,
    /// Flow records (JSON lines).
    #[arg(long)]
    flows: PathBuf,
    /// Write here instead of stdout (replaced atomically).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snap = snapshot::load(&args.cluster)?;
    let mut records = record::read_json_lines(&args.flows)?;
    attribute::enrich(&snap.cluster, &mut records);
    output::emit_records(args.output.as_deref(), &records)?;
    Ok(ExitCode::SUCCESS)
}
