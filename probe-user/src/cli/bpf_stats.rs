//! `flowpol bpf-stats`: run counts and time of every loaded BPF program (flowpol's and
//! others'), to measure what the probe costs the kernel. Needs `kernel.bpf_stats_enabled=1`.
use std::process::ExitCode;

use flowpol_node::capture;

#[derive(clap::Args)]
pub(super) struct Args {
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    capture::check_privileges()?;
    let stats = capture::program_stats()?;
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<16} {:>12} {:>14} {:>10}",
        "ID", "NAME", "RUNS", "TIME (ns)", "NS/RUN"
    );
    for s in stats {
        let avg = s.run_time_ns.checked_div(s.run_count).unwrap_or(0);
        println!(
            "{:>6}  {:<16} {:>12} {:>14} {:>10}",
            s.id, s.name, s.run_count, s.run_time_ns, avg
        );
    }
    Ok(ExitCode::SUCCESS)
}
