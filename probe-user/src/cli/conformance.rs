//! `flowpol conformance`: upstream Kubernetes' NetworkPolicy e2e cases (translated by hand
//! into crates/lab/conformance/upstream.yaml) run in the lab under an enforcer, every probe
//! held against upstream's truth table.
use std::process::ExitCode;

use super::enforcing::{EnforcerArgs, LabApi};
use flowpol_lab::{
    conformance::{
        self,
        runner::{self, CaseResult, With},
    },
    enforce::Fault,
};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    enforcing: EnforcerArgs,
    /// flowpol's enforcer with this CNI bug (repeatable).
    #[arg(long)]
    fault: Vec<Fault>,
    /// Only these cases (repeatable; see --list).
    #[arg(long)]
    case: Vec<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    api: LabApi,
    /// Exit with status 3 when a probe disagrees with upstream.
    #[arg(long)]
    fail_on_disagreement: bool,
}

impl Args {
    /// Only lists the cases.
    pub(super) fn lists(&self) -> bool {
        self.list
    }
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let set = conformance::parse(conformance::UPSTREAM)?;
    if args.list {
        for case in &set.cases {
            println!("{}\t{}", case.name, case.upstream);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(unknown) = args
        .case
        .iter()
        .find(|c| !set.cases.iter().any(|k| &&k.name == c))
    {
        anyhow::bail!("no conformance case `{unknown}` (see --list)");
    }
    let cases: Vec<&conformance::Case> = set
        .cases
        .iter()
        .filter(|c| args.case.is_empty() || args.case.contains(&c.name))
        .collect();
    let api;
    let program;
    let with = match args.enforcing.program() {
        None => {
            args.enforcing
                .only_flowpol("--enforcer-bin and --enforcer-arg are for a real --enforcer")?;
            With::Flowpol(&args.fault)
        }
        Some(p) => {
            if !args.fault.is_empty() {
                anyhow::bail!("--fault is for flowpol's own enforcer");
            }
            if !args.api.requested() {
                anyhow::bail!("--enforcer {} reads the lab from an API server: give --kube (or --kubeconfig / --context)", p.kind);
            }
            api = args.api.connect().await?;
            program = p;
            With::Real {
                program: &program,
                api: &api,
            }
        }
    };
    let started = std::time::Instant::now();
    let results = runner::run_cases(&set, &cases, &with, |r| match &r.not_enforced {
        Some(why) => eprintln!("flowpol conformance: {:<60} NOT ENFORCED: {why}", r.case),
        None => eprintln!(
            "flowpol conformance: {:<60} {:>4} probes, {:>3} disagree{}{}",
            r.case,
            r.probes,
            r.disagreements.len(),
            match r.transient.len() {
                0 => String::new(),
                n => format!(" ({n} more on the first try only)"),
            },
            r.propagation
                .map(|p| format!(", enforced {:.2} s after creation", p.as_secs_f64()))
                .unwrap_or_default()
        ),
    })
    .await?;
    let unenforced: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.not_enforced.is_some())
        .collect();
    let probes: usize = results
        .iter()
        .filter(|r| r.not_enforced.is_none())
        .map(|r| r.probes)
        .sum();
    let wrong: usize = results.iter().map(|r| r.disagreements.len()).sum();
    for r in &unenforced {
        println!(
            "{}: not enforced: {}",
            r.case,
            r.not_enforced
                .as_deref()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    for r in &results {
        let wrong = r.disagreements.iter().map(|d| (d, ""));
        let transient = r.transient.iter().map(|d| (d, " (first try only)"));
        for (d, when) in wrong.chain(transient) {
            let e = &d.expected;
            println!(
                "{}: {} -> {} {}/{}: upstream says {}, the client saw {}{when}",
                r.case,
                e.from,
                e.to,
                e.protocol,
                e.port,
                if e.allowed { "allowed" } else { "denied" },
                d.saw
            );
        }
    }
    let transient: usize = results.iter().map(|r| r.transient.len()).sum();
    let mut propagation: Vec<f64> = results
        .iter()
        .filter_map(|r| r.propagation.map(|p| p.as_secs_f64()))
        .collect();
    propagation.sort_by(f64::total_cmp);
    println!(
        "{} case(s), {probes} probes: {} agree with upstream, {wrong} disagree{}{} ({:.0} s){}",
        results.len(),
        probes - wrong,
        match transient {
            0 => String::new(),
            n => format!(" ({n} more on the first try only, right on upstream's second)"),
        },
        if unenforced.is_empty() {
            String::new()
        } else {
            format!(
                "; {} case(s) not enforced within the wait, not probed",
                unenforced.len()
            )
        },
        started.elapsed().as_secs_f64(),
        match propagation.as_slice() {
            [] => String::new(),
            p => format!(
                "; policies enforced after {:.2} s (median), {:.2} s (slowest)",
                p[p.len() / 2],
                p[p.len() - 1]
            ),
        }
    );
    Ok(
        if args.fail_on_disagreement && (wrong > 0 || !unenforced.is_empty()) {
            ExitCode::from(super::verify::FINDINGS_EXIT)
        } else {
            ExitCode::SUCCESS
        },
    )
}
