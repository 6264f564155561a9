//! `flowpol verify`: where the cluster disagrees with its declared policies.
use std::process::ExitCode;

use super::source::FlowsFrom;

use flowpol_analysis::verify::{self, Kind};

/// Exit status when a finding of a `--fail-on` kind is present (1 is for errors).
pub(super) const FINDINGS_EXIT: u8 = 3;

use super::Format;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    input: FlowsFrom,
    #[arg(long, value_enum, default_value = "table")]
    output: Format,
    /// Exit with status 3 when findings of these kinds exist (comma-separated:
    /// enforcement_gap, over_block, refused, unprotected, unattributed).
    #[arg(long, value_delimiter = ',')]
    fail_on: Vec<Kind>,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snap, flows) = args.input.load("verify").await?;
    let engine = snap.engine("verify")?;
    let incomplete = flows.missing_flows();
    let mut report = verify::verify(&engine, flows.records);
    for why in &incomplete {
        eprintln!("flowpol verify: warning: the recording is incomplete ({why}): flows may be missing from the verdicts");
    }
    report.incomplete = incomplete;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", verify::render(&report)),
    }
    let failing: Vec<&str> = args
        .fail_on
        .iter()
        .filter(|k| report.count(**k) > 0)
        .map(|k| k.as_str())
        .collect();
    if failing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("flowpol verify: findings of kind {}", failing.join(", "));
    Ok(ExitCode::from(FINDINGS_EXIT))
}
