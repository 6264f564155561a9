//! `flowpol enrich`: name both ends of recorded flows from a cluster snapshot or the live
//! cluster.
use std::{path::PathBuf, process::ExitCode};

use flowpol_analysis::output;

use super::source::FlowsFrom;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    input: FlowsFrom,
    /// Write here instead of stdout (replaced atomically).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, flows) = args.input.load("enrich").await?;
    output::emit_records(args.output.as_deref(), &flows.records, &flows.captures)?;
    Ok(ExitCode::SUCCESS)
}
