//! `flowpol enrich`: name both ends of recorded flows from a cluster snapshot or the live
//! cluster.
use std::{path::PathBuf, process::ExitCode};

use flowpol::{attribute, output, record};

use super::source::Source;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Flow records (JSON lines).
    #[arg(long)]
    flows: PathBuf,
    /// Write here instead of stdout (replaced atomically).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Read the flows first: a bad file fails before the API server is asked anything.
    let mut records = record::read_json_lines(&args.flows)?;
    let loaded = args.source.load("enrich")?;
    attribute::enrich(&loaded.cluster, &mut records);
    output::emit_records(args.output.as_deref(), &records)?;
    Ok(ExitCode::SUCCESS)
}
