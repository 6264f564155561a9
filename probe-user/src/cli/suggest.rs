//! `flowpol suggest`: least-privilege NetworkPolicies from observed traffic, proven by
//! replaying the traffic through them.
use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

use super::source::FlowsFrom;

use anyhow::bail;
use flowpol_analysis::{
    eval,
    policy::{
        self,
        engine::{Engine, Side},
        Policy,
    },
    record::{self, FlowRecord},
    suggest::{self, Options},
};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Networkpolicy,
    Cilium,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: FlowsFrom,
    #[arg(long, value_enum, default_value = "networkpolicy")]
    format: Format,
    /// Annotate each rule with the observed flows that justify it.
    #[arg(long)]
    explain: bool,
    /// Only write policies for these namespaces (repeatable; all observed by default).
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snap, records) = args.input.load("suggest")?;
    let existing = snap.compile("suggest")?;
    let options = Options {
        namespaces: args.namespaces.clone(),
        explain: args.explain,
        cidr_aggregate: args.cidr_aggregate,
        internet_threshold: args.internet_threshold,
        cilium: matches!(args.format, Format::Cilium),
    };
    let cluster = &snap.cluster;
    // In diff mode, new rules are needed for the flows today's policies do not allow by a
    // rule on both ends: denied ones, and those passing only because an end is not isolated
    // (the suggestion isolates it).
    let basis: Vec<FlowRecord> = if args.diff {
        let engine = Engine::new(cluster, existing.clone());
        let by_rule = |side: &Side| !matches!(side, Side::NotIsolated | Side::Denied { .. });
        eval::evaluate(&engine, records.clone())
            .into_iter()
            .filter(|e| !(by_rule(&e.explanation.egress) && by_rule(&e.explanation.ingress)))
            .map(|e| e.record)
            .collect()
    } else {
        records.clone()
    };
    let mut s = suggest::suggest(cluster, &basis, &options);
    let namespaces = suggest::namespaces_of(&s);
    if args.diff {
        let would_break = breaks_under_default_deny(cluster, &existing, &records, &namespaces);
        eprintln!(
            "flowpol suggest: {} observed flow(s) not allowed by a rule of today's policies on both ends; a default deny in {} would break {} flow(s) today",
            basis.len(),
            namespaces.iter().cloned().collect::<Vec<_>>().join(", "),
            would_break.len()
        );
        for r in would_break.iter().take(20) {
            eprintln!(
                "  would break: {} -> {} {}/{}",
                end(&r.src),
                end(&r.dst),
                r.protocol,
                r.dst.port.unwrap_or(0)
            );
        }
        s.policies
            .retain(|p| p.metadata.name.as_deref() != Some("default-deny"));
    }
    let suggested: Vec<Policy> = s
        .policies
        .iter()
        .map(|p| {
            policy::compile(p)
                .map_err(|e| anyhow::anyhow!("suggested policy is invalid (a flowpol bug): {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    // The guarantee: every flow that got through still gets through.
    let all: Vec<Policy> = existing
        .iter()
        .cloned()
        .chain(suggested.iter().cloned())
        .collect();
    let replay = Engine::new(cluster, all);
    // With --namespace, flows with a pod elsewhere depend on policies not written here.
    let in_scope: Vec<FlowRecord> = records
        .iter()
        .filter(|r| {
            let ends = [&r.src, &r.dst].into_iter().chain(&r.dst.identity.backends);
            options.namespaces.is_empty()
                || ends
                    .filter_map(|e| e.identity.namespace.as_ref())
                    .all(|ns| options.namespaces.contains(ns))
        })
        .cloned()
        .collect();
    let denied = suggest::denied(&replay, &in_scope);
    if !denied.is_empty() {
        for r in &denied {
            eprintln!(
                "  denied: {} -> {} {}/{}",
                end(&r.src),
                end(&r.dst),
                r.protocol,
                r.dst.port.unwrap_or(0)
            );
        }
        bail!("{} observed flow(s) would be denied by the suggestion (a flowpol bug; please report it)", denied.len());
    }
    let tight = Engine::new(cluster, suggested);
    let excess = suggest::excess(&tight, &records, &namespaces);
    eprintln!(
        "flowpol suggest: {} policies for {} namespace(s) from {} flows; replayed {} records through existing + suggested policies: none denied; excess: {} (source, destination, port) combination(s) allowed but not observed",
        s.policies.len(),
        namespaces.len(),
        s.flows_used,
        in_scope.len(),
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
        Some(path) => flowpol_analysis::output::write_atomic(path, |mut f| {
            std::io::Write::write_all(&mut f, yaml.as_bytes())
        })?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn end(e: &record::Endpoint) -> String {
    match (&e.identity.namespace, &e.identity.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => e.ip.to_string(),
    }
}

/// Flows allowed today that the existing policies plus a default deny in `namespaces` deny.
fn breaks_under_default_deny<'r>(
    cluster: &flowpol_analysis::cluster::Cluster,
    existing: &[Policy],
    records: &'r [FlowRecord],
    namespaces: &BTreeSet<String>,
) -> Vec<&'r FlowRecord> {
    let today = Engine::new(cluster, existing.to_vec());
    let mut with_deny = existing.to_vec();
    for ns in namespaces {
        let np = suggest::default_deny(ns);
        with_deny.push(policy::compile(&np).expect("a default deny is valid"));
    }
    let engine = Engine::new(cluster, with_deny);
    let denied_today: std::collections::HashSet<*const FlowRecord> =
        suggest::denied(&today, records)
            .into_iter()
            .map(|r| r as *const FlowRecord)
            .collect();
    suggest::denied(&engine, records)
        .into_iter()
        .filter(|r| !denied_today.contains(&(*r as *const FlowRecord)))
        .collect()
}
