//! Starting and ending `flowpol agent`: settings checked before anything is touched, every
//! step that can fail at start done before what a previous run kept is taken (so a failed
//! start loses nothing), and the exit report with the exit status it calls for.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use kube::Client;

use flowpol_analysis::output::{OutputError, Rotating};
use flowpol_node::{
    aggregate::{Aggregator, Clock},
    capture::{self, CaptureError, Sensor},
    kernel::{self, KernelError},
    session::Session,
    shutdown::Shutdown,
};

use crate::{
    http::{self, Health},
    metrics::Metrics,
    state::{self, StateError},
    Agent, AgentError, Config, Exit, ModelSource, Sink,
};

/// Where flow records go.
pub enum Output {
    Stdout,
    /// Appended to a file rotated by size.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
    /// Not written (metrics and ObservedTraffic only).
    Discard,
}

pub struct Settings {
    pub config: Config,
    /// Where /metrics, /healthz and /readyz listen.
    pub listen: SocketAddr,
    pub output: Output,
    /// The kubelet's cgroup tree; `None`: this system's cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Setting(&'static str),
    #[error("checking privileges")]
    Privileges(#[source] CaptureError),
    #[error("opening the output")]
    Output(#[from] OutputError),
    #[error("inspecting the running kernel")]
    Kernel(#[from] KernelError),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("loading the eBPF probe")]
    Sensor(#[source] CaptureError),
    #[error("creating the state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl Settings {
    /// The rules the settings must keep, checked before anything is started.
    pub fn check(&self) -> Result<(), LaunchError> {
        let c = &self.config;
        if c.round.is_zero() || c.flush_every.is_zero() {
            return Err(LaunchError::Setting(
                "--round and --flush-every must be longer than zero",
            ));
        }
        if c.writes_per_second.is_nan() || c.writes_per_second <= 0.0 {
            return Err(LaunchError::Setting(
                "--writes-per-second must be above zero",
            ));
        }
        if c.max_edges == 0 {
            return Err(LaunchError::Setting("--max-edges must be above zero"));
        }
        Ok(())
    }
}

/// An agent ready to run: probe loaded, endpoints listening, signals caught.
pub struct Started {
    agent: Agent,
    server: tokio::task::JoinHandle<()>,
    shutdown: Shutdown,
    /// Workloads kept by the previous run, written with the next flush.
    pub restored: Option<usize>,
}

/// Starts the agent with `model` for names and, when `store` is given, writing this node's
/// ObservedTraffic share there.
pub async fn start(
    settings: Settings,
    model: Box<dyn ModelSource>,
    store: Option<Client>,
) -> Result<Started, LaunchError> {
    settings.check()?;
    capture::check_privileges().map_err(LaunchError::Privileges)?;
    let sink = match settings.output {
        Output::File {
            path,
            max_bytes,
            keep,
        } => Sink::File(Rotating::open(&path, max_bytes, keep)?),
        Output::Discard => Sink::Discard,
        Output::Stdout => Sink::Stdout,
    };
    let info = kernel::discover()?;
    let mut config = settings.config;
    if let Some(root) = settings.cgroup_root {
        config.cgroup_root = root;
    } else {
        config.cgroup_root.clone_from(&info.cgroup2);
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| LaunchError::Listen {
            addr: settings.listen,
            source,
        })?;
    let health = Arc::new(Health::new(Metrics::new(), config.round));
    let server = tokio::spawn(http::serve(listener, health.clone()));
    let shutdown = Shutdown::install().map_err(LaunchError::Signals)?;
    let probe = Sensor::load(&info).map_err(LaunchError::Sensor)?;
    let session = Session::starting_from_open(
        probe,
        Aggregator::new(
            Some(config.node.clone()),
            Clock::system(),
            info.drop_reasons,
        ),
    );
    if let Some(dir) = &config.state_dir {
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::StateDir {
            path: dir.clone(),
            source,
        })?;
    }
    // Taken last, once nothing else can fail at start, and only when it will be written.
    let kept = match (&config.state_dir, &store) {
        (Some(dir), Some(_)) => state::take(dir, &config.node)?,
        _ => None,
    };
    let agent = Agent::new(config, session, model, store, sink, health);
    let (agent, restored) = match kept {
        Some(spill) => {
            let n = spill.workloads.len();
            (agent.restore(spill), Some(n))
        }
        None => (agent, None),
    };
    Ok(Started {
        agent,
        server,
        shutdown,
        restored,
    })
}

impl Started {
    /// Runs until SIGTERM, Ctrl-C or the configured duration.
    pub async fn run(self) -> Result<Exit, AgentError> {
        let outcome = self.agent.run(self.shutdown).await;
        self.server.abort();
        outcome
    }
}

impl Exit {
    /// What the agent says when it stops, and whether that is a failure: ObservedTraffic
    /// that could be neither written nor kept is lost.
    pub fn report(&self) -> (String, bool) {
        let mut lines = vec![format!(
            "flowpol agent: {}\n  {} events, lost {}",
            self.written,
            self.summary.events,
            self.summary.losses()
        )];
        if self.evicted_unwritten > 0 {
            lines.push(format!(
                "flowpol agent: {} edges were evicted from memory before they could be written (raise --max-edges)",
                self.evicted_unwritten
            ));
        }
        let mut failed = false;
        if let Some(f) = &self.flushed {
            let why = f.last_error.as_deref().unwrap_or("out of time");
            lines.push(if let Some((path, n)) = &self.kept {
                format!(
                    "flowpol agent: {n} workloads' ObservedTraffic could not be written before stopping ({why}); kept in {} for the next start",
                    path.display()
                )
            } else if f.pending > 0 {
                failed = true;
                format!(
                    "flowpol agent: {} workloads' ObservedTraffic could not be written before stopping: {why}",
                    f.pending
                )
            } else {
                format!(
                    "flowpol agent: ObservedTraffic written ({} workloads in the last write)",
                    f.written
                )
            });
        }
        (lines.join("\n"), failed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowpol_kube::store::Flushed;
    use flowpol_node::session::Summary;

    use super::*;
    use crate::Written;

    fn settings(round: Duration, writes_per_second: f64, max_edges: usize) -> Settings {
        Settings {
            config: Config {
                node: "n".into(),
                round,
                idle: Duration::from_secs(120),
                max_edges,
                flush_every: Duration::from_secs(30),
                counts_every: Duration::from_secs(300),
                writes_per_second,
                shutdown_timeout: Duration::from_secs(20),
                cgroup_root: PathBuf::new(),
                duration: None,
                state_dir: None,
            },
            listen: ([127, 0, 0, 1], 0).into(),
            output: Output::Discard,
            cgroup_root: None,
        }
    }

    #[test]
    fn settings_that_would_spin_or_never_write_are_refused() {
        let s = Duration::from_secs(1);
        assert!(settings(s, 5.0, 10).check().is_ok());
        for (bad, says) in [
            (settings(Duration::ZERO, 5.0, 10), "--round"),
            (settings(s, 0.0, 10), "--writes-per-second"),
            (settings(s, f64::NAN, 10), "--writes-per-second"),
            (settings(s, 5.0, 0), "--max-edges"),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    fn outcome(flushed: Option<Flushed>, kept: Option<(PathBuf, usize)>) -> Exit {
        Exit {
            summary: Summary::default(),
            written: Written::default(),
            flushed,
            evicted_unwritten: 0,
            kept,
        }
    }

    fn flushed(written: usize, pending: usize) -> Flushed {
        Flushed {
            written,
            reads: 0,
            bytes: 0,
            failed: pending,
            pending,
            last_error: (pending > 0).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn the_exit_fails_only_when_observed_traffic_is_lost() {
        let (text, failed) = outcome(Some(flushed(3, 0)), None).report();
        assert!(!failed);
        assert!(text.ends_with("ObservedTraffic written (3 workloads in the last write)"));
        let (text, failed) = outcome(Some(flushed(0, 2)), None).report();
        assert!(failed);
        assert!(text.ends_with("2 workloads' ObservedTraffic could not be written before stopping: connection refused"), "{text}");
        let kept = Some((PathBuf::from("/var/lib/flowpol/n.json"), 2));
        let (text, failed) = outcome(Some(flushed(0, 2)), kept).report();
        assert!(!failed, "kept for the next start");
        assert!(text.contains("kept in /var/lib/flowpol/n.json"), "{text}");
        let (_, failed) = outcome(None, None).report();
        assert!(!failed, "no store: nothing to lose");
    }
}
