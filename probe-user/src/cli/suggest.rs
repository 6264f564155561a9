//! `flowpol suggest`: least-privilege NetworkPolicies from observed traffic, proven by
//! replaying the traffic through them.
use std::{path::PathBuf, process::ExitCode};

use super::source::FlowsFrom;

use flowpol_analysis::{
    output, record,
    suggest::{self, Options, ProofError, Proven},
};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Networkpolicy,
    Cilium,
}

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    input: FlowsFrom,
    #[arg(long, value_enum, default_value = "networkpolicy")]
    format: Format,
    /// Annotate each rule with the observed flows that justify it.
    #[arg(long)]
    explain: bool,
    /// Only write policies for these namespaces (repeatable; all observed by default); with
    /// --from-cluster, only their ObservedTraffic is read (what their pods' nodes saw, both
    /// ways: a server's node writes its ingress edges; traffic into them seen only by a
    /// client elsewhere, a server on a node without an agent, is not in it).
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,
    /// Widen outside addresses to their /24 (IPv4) or /64 (IPv6).
    #[arg(long)]
    cidr_aggregate: bool,
    /// More distinct outside addresses than this on one port of a workload: allow the
    /// internet on that port, private ranges excepted.
    #[arg(long, default_value_t = 16)]
    internet_threshold: usize,
    /// Against the policies already in the cluster: write only what they are missing, and
    /// list what a default deny would break today.
    #[arg(long)]
    diff: bool,
    /// Write the YAML here (replaced atomically) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Write a suggestion even when the recording lost events (it may then break flows
    /// that were not seen).
    #[arg(long)]
    accept_loss: bool,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // With --from-cluster and namespaces named, only their objects are read.
    let (snap, flows) = args.input.load_in("suggest", &args.namespaces).await?;
    let incomplete = flows.missing_flows();
    for why in &incomplete {
        eprintln!("flowpol suggest: the recording is incomplete: {why}");
    }
    if !incomplete.is_empty() && !args.accept_loss {
        anyhow::bail!(
            "a suggestion from an incomplete recording may break the flows it did not see: record again, or pass --accept-loss to write it anyway"
        );
    }
    let records = flows.records;
    let existing = snap.compile("suggest")?;
    let cluster_policies = snap.compile_cluster_policies("suggest")?;
    let options = Options {
        namespaces: args.namespaces.clone(),
        explain: args.explain,
        cidr_aggregate: args.cidr_aggregate,
        internet_threshold: args.internet_threshold,
        cilium: matches!(args.format, Format::Cilium),
    };
    let proven = match suggest::prove(
        &snap.cluster,
        &existing,
        &cluster_policies,
        &records,
        &options,
        args.diff,
    ) {
        Ok(p) => p,
        Err(e) => {
            if let ProofError::Denied(denied) = &e {
                for r in denied {
                    eprintln!("  denied: {}", flow(r));
                }
            }
            return Err(e.into());
        }
    };
    let Proven {
        suggestion: s,
        namespaces,
        replayed,
        excess,
        diff,
        overridden,
    } = proven;
    if let Some(diff) = &diff {
        eprintln!(
            "flowpol suggest: {} observed flow(s) not allowed by a rule of today's policies on both ends; a default deny in {} would break {} flow(s) today",
            diff.needing_rules,
            namespaces.iter().cloned().collect::<Vec<_>>().join(", "),
            diff.would_break.len()
        );
        for r in diff.would_break.iter().take(20) {
            eprintln!("  would break: {}", flow(r));
        }
        if !diff.cluster_allowed.is_empty() {
            eprintln!(
                "flowpol suggest: {} observed flow(s) need no NetworkPolicy rule: an Admin-tier cluster policy accepts them",
                diff.cluster_allowed.len()
            );
        }
        for (r, why) in diff.cluster_allowed.iter().take(20) {
            eprintln!("  accepted: {} ({why})", flow(r));
        }
    }
    if !overridden.is_empty() {
        eprintln!(
            "flowpol suggest: {} observed flow(s) that got through are denied by an Admin-tier cluster policy, which no NetworkPolicy can override (change that policy if they should pass; verify reports them as gaps)",
            overridden.len()
        );
    }
    for (r, why) in overridden.iter().take(20) {
        eprintln!("  denied by a cluster policy: {} ({why})", flow(r));
    }
    eprintln!(
        "flowpol suggest: {} policies for {} namespace(s) from {} flows; replayed {} records through existing + suggested policies: none denied by them; excess: {} (source, destination, port) combination(s) allowed but not observed",
        s.policies.len(),
        namespaces.len(),
        s.flows_used,
        replayed,
        excess.len()
    );
    for (src, dst, port, proto) in excess.iter().take(20) {
        eprintln!("  excess: {src} -> {dst} {proto}/{port}");
    }
    for w in &s.inexact {
        eprintln!("flowpol suggest: warning: no stable labels select exactly the pods of {w}; its policy selects more pods");
    }
    let yaml = match args.format {
        Format::Networkpolicy => suggest::to_yaml(&s.policies),
        Format::Cilium => suggest::to_yaml(&s.cilium),
    };
    match &args.output {
        Some(path) => output::write_atomic(path, |mut f| {
            std::io::Write::write_all(&mut f, yaml.as_bytes())
        })?,
        None => print!("{yaml}"),
    }
    if !incomplete.is_empty() {
        eprintln!("flowpol suggest: warning: written with --accept-loss from an incomplete recording: it may not allow every flow the workloads make");
    }
    Ok(ExitCode::SUCCESS)
}

/// `ns/pod -> ns/pod proto/port`, addresses where an end is no pod.
fn flow(r: &record::FlowRecord) -> String {
    let end = |e: &record::Endpoint| match (&e.identity.namespace, &e.identity.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => e.ip.to_string(),
    };
    format!(
        "{} -> {} {}/{}",
        end(&r.src),
        end(&r.dst),
        r.protocol,
        r.dst.port.unwrap_or(0)
    )
}
