//! `flowpol agent`: the node DaemonSet. Loads the probe, watches the cluster, and runs until
//! SIGTERM: records as JSON lines, metrics and health on `--listen`, and this node's share of
//! the `ObservedTraffic` objects written to the API server.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use flowpol_agent::{
    self as agent,
    launch::{self, Output, Settings},
    Fixed, ModelSource, Policies,
};
use flowpol_kube::watch;

use super::{record::hostname, source::Source};

#[derive(clap::Args)]
pub(super) struct Args {
    /// This node's name: records carry it, and the agent writes this node's share of the
    /// ObservedTraffic objects under the field manager `flowpol-agent/<node>`.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The cluster: the API server (--kube, as the DaemonSet runs) or a snapshot.
    #[command(flatten)]
    source: Source,
    /// Where the metrics (/metrics) and the health (/healthz) and readiness (/readyz)
    /// endpoints listen.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Append flow records (JSON lines) to this file, rotated by size, instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Rotate the output file when it would pass this many MiB.
    #[arg(long, default_value_t = 100, requires = "output")]
    output_max_mib: u64,
    /// Rotated output files kept (<file>.1 is the newest).
    #[arg(long, default_value_t = 5, requires = "output")]
    output_keep: usize,
    /// Do not write flow records at all (metrics and ObservedTraffic only).
    #[arg(long, conflicts_with = "output")]
    no_records: bool,
    /// How often records are taken from the probe, named, judged and written out.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    round: Duration,
    /// UDP flows and drops quiet this long are forgotten (a later packet starts them anew).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Most aggregated edges held in memory; past it the least recently seen are evicted
    /// (written ones first) and counted.
    #[arg(long, default_value_t = 200_000)]
    max_edges: usize,
    /// Do not write ObservedTraffic objects (only with --kube are they written).
    #[arg(long)]
    no_store: bool,
    /// How often changed workloads' ObservedTraffic objects are written (one apply each):
    /// those with new edges at the next write, those whose counts alone changed every
    /// --counts-every.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    flush_every: Duration,
    /// How often a workload whose counts alone changed (no new edge) is written: on a busy
    /// cluster every edge's counts change all the time, and writing each share every
    /// --flush-every would be 3 writes/s per node (see deploy/README.md).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    counts_every: Duration,
    /// Most writes to the API server per second.
    #[arg(long, default_value_t = 5.0)]
    writes_per_second: f64,
    /// How long the last write may take when stopping.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// The kubelet's cgroup tree (the host's /sys/fs/cgroup, as mounted in the pod), to name
    /// each record's local end by its pod; default: this system's cgroup2 mount.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Keep what could not be written to the API server when stopping in this directory,
    /// and take it back on the next start (the DaemonSet mounts /var/lib/flowpol).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Stop after this long (default: run until SIGTERM or Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let node = args
        .node
        .clone()
        .or_else(hostname)
        .context("no node name: pass --node or set NODE_NAME")?;
    let settings = Settings {
        config: agent::Config {
            node: node.clone(),
            round: args.round,
            idle: args.idle,
            max_edges: args.max_edges,
            flush_every: args.flush_every,
            counts_every: args.counts_every,
            writes_per_second: args.writes_per_second,
            shutdown_timeout: args.shutdown_timeout,
            cgroup_root: PathBuf::new(),
            duration: args.duration,
            state_dir: args.state_dir.clone(),
        },
        listen: args.listen,
        output: match (&args.output, args.no_records) {
            (Some(path), _) => Output::File {
                path: path.clone(),
                max_bytes: args.output_max_mib.saturating_mul(1 << 20),
                keep: args.output_keep,
            },
            (None, true) => Output::Discard,
            (None, false) => Output::Stdout,
        },
        cgroup_root: args.cgroup_root.clone(),
    };
    settings.check()?;
    let (model, client): (Box<dyn ModelSource>, _) = if args.source.cluster.is_some() {
        let loaded = args.source.load("agent").await?;
        let fixed = Fixed {
            cluster: loaded.cluster,
            policies: Policies {
                network: loaded.policies,
                cluster: loaded.cluster_policies,
            },
        };
        (Box::new(fixed), None)
    } else if args.source.live_requested() {
        let connection = args.source.connect().await?;
        let live = watch::Live::start(&connection, args.source.deleted_pod_grace);
        (
            Box::new(live),
            (!args.no_store).then_some(connection.client),
        )
    } else {
        anyhow::bail!("name a cluster: --kube (the API server) or --cluster FILE (a snapshot)");
    };
    let writing = client.is_some();
    let started = launch::start(settings, model, client).await?;
    eprintln!(
        "flowpol agent: node {node}, metrics on http://{}/metrics{}",
        args.listen,
        if writing {
            ", writing ObservedTraffic"
        } else {
            ""
        }
    );
    if let Some(n) = started.restored {
        eprintln!(
            "flowpol agent: {n} workloads kept by the previous run are written with the next flush"
        );
    }
    let (report, failed) = started.run().await?.report();
    eprintln!("{report}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
