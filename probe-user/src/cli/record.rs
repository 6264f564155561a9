//! `flowpol record`: load the probe, capture until a duration passes or Ctrl-C, print records.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use super::source::Source;
use anyhow::Context as _;
use flowpol_analysis::{attribute, output};
use flowpol_node::{
    aggregate::{Aggregator, Clock},
    capture::{self, Sensor},
    kernel, podcgroup,
    session::Session,
    shutdown::Shutdown,
};

#[derive(clap::Args)]
pub(super) struct Args {
    /// Stop after this long (e.g. `30s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write JSON lines here instead of stdout (replaced atomically at the end).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Node name put in every record (default: this host's name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Name both ends of every record from this snapshot or the live cluster. Without
    /// either, the API server is used when a kubeconfig or an in-cluster service account is
    /// found (--no-kube: never).
    #[command(flatten)]
    source: Source,
    /// Do not look for an API server.
    #[arg(long, conflicts_with_all = ["kube", "kubeconfig", "context", "cluster"])]
    no_kube: bool,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    capture::check_privileges()?;
    // Read the snapshot first: a bad file fails before anything is loaded.
    let snapshot = match &args.source.cluster {
        Some(_) => Some(args.source.load("record").await?),
        None => None,
    };
    let live = if snapshot.is_some() || args.no_kube {
        None
    } else if args.source.live_requested() {
        Some(args.source.start().await?)
    } else {
        // Found a cluster by looking: use it, or carry on without names if there is none.
        match args.source.start().await {
            Ok(live) => Some(live),
            Err(e) => {
                tracing::info!("no cluster to name records from: {e:#}");
                None
            }
        }
    };
    let info = kernel::discover().context("inspecting the running kernel")?;
    // Pods' cgroups name the local end of each record; pods that end while recording
    // take theirs along, so look before and after (when there is a model to name from).
    let mut cgroups = match (&snapshot, &live) {
        (None, None) => podcgroup::CgroupPods::new(),
        _ => podcgroup::scan(&info.cgroup2),
    };
    let probe = Sensor::load(&info).context("loading the eBPF probe")?;
    let node = args.node.or_else(hostname);
    let mut session = Session::starting_from_open(
        probe,
        Aggregator::new(node, Clock::system(), info.drop_reasons),
    );
    eprintln!(
        "flowpol: recording{}; Ctrl-C to stop",
        match args.duration {
            Some(d) => format!(" for {}", humantime::format_duration(d)),
            None => String::new(),
        }
    );
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let stop = async {
        match args.duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {},
                _ = shutdown.requested() => {},
            },
            None => shutdown.requested().await,
        }
    };
    let started = std::time::Instant::now();
    // When the live model first became complete: before that, records can lack names.
    let ready_at = std::cell::Cell::new(None);
    let first_ready = async {
        if let Some(live) = &live {
            while live.ready(Duration::from_secs(60)).await.is_err() {}
            ready_at.set(Some(std::time::Instant::now()));
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    tokio::select! {
        r = session.run(stop) => r.context("capturing")?,
        never = first_ready => match never {},
    }
    let ended = std::time::Instant::now();
    let (mut records, summary) = session.finish();
    // Records are never lost for want of names: without a model they go out as seen.
    let mut code = ExitCode::SUCCESS;
    let loaded = match (snapshot, &live) {
        (Some(s), _) => Some(s),
        (None, Some(live)) => match args.source.take(live).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("flowpol record: records are not named: {e:#}");
                if args.source.live_requested() {
                    code = ExitCode::FAILURE;
                }
                None
            }
        },
        (None, None) => None,
    };
    if let Some(loaded) = &loaded {
        cgroups.extend(podcgroup::scan(&info.cgroup2));
        attribute::enrich_on_node(&loaded.cluster, &mut records, &cgroups);
    }
    let mut capture = summary.capture();
    if live.is_some() {
        // Names come from the model as the recording ends; a model never complete names
        // nothing, whatever it held for a while.
        let incomplete = match (loaded.is_some(), ready_at.get()) {
            (true, Some(at)) => at.min(ended).saturating_duration_since(started),
            _ => ended.saturating_duration_since(started),
        };
        capture.model_incomplete_ms = incomplete.as_millis() as u64;
    }
    output::emit_records(
        args.output.as_deref(),
        &records,
        std::slice::from_ref(&capture),
    )?;
    eprintln!("{summary}");
    if capture.model_incomplete_ms > 0 {
        eprintln!(
            "  cluster model incomplete for {} ms of the recording",
            capture.model_incomplete_ms
        );
    }
    Ok(code)
}

/// This host's name, as Kubernetes would name the node by default.
pub(super) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
