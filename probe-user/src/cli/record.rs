//! `flowpol record`: load the probe, capture until a duration passes or Ctrl-C, print records.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use flowpol::{
    aggregate::{Aggregator, Clock},
    attribute,
    capture::{self, Probe},
    cluster::snapshot,
    kernel, output,
    session::Session,
    shutdown::Shutdown,
};

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. `30s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write JSON lines here instead of stdout (replaced atomically at the end).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Node name put in every record (default: this host's name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Cluster snapshot (`kubectl get ... -o yaml`): name both ends of every record.
    #[arg(long)]
    cluster: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        capture::check_privileges()?;
        // Read the snapshot first: a bad file fails before anything is loaded.
        let cluster = args.cluster.as_deref().map(snapshot::load).transpose()?;
        let info = kernel::discover().context("inspecting the running kernel")?;
        let probe = Probe::load(&info).context("loading the eBPF probe")?;
        let node = args.node.or_else(hostname);
        let mut session = Session::new(
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
        session.run(stop).await.context("capturing")?;
        let (mut records, summary) = session.finish();
        if let Some(snap) = &cluster {
            attribute::enrich(&snap.cluster, &mut records);
        }
        output::emit_records(args.output.as_deref(), &records)?;
        eprintln!("{summary}");
        Ok(ExitCode::SUCCESS)
    })
}

/// This host's name, as Kubernetes would name the node by default.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
