//! `flowpol agent`: the node DaemonSet's long-running loop. Every round it takes what the
//! probe saw since the last one ([`Session::take`]), names both ends from the cluster model,
//! judges the records against the declared policies (continuous verify), writes them as JSON
//! lines, counts them in the metrics and aggregates them into this node's share of the
//! `ObservedTraffic` objects, which a separate task writes to the API server ([`store`]),
//! so a slow or absent API server never holds up capture.
pub mod http;
pub mod launch;
pub mod metrics;
pub mod state;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;

use flowpol_analysis::{
    attribute,
    cluster::Cluster,
    observed::{Observed, Spill},
    output::{self, OutputError, Rotating},
    policy::{
        self,
        clusterwide::{self, api::Source as ClusterPolicySource},
        engine::Engine,
    },
    record::{Capture, FlowRecord, Verdict},
    verify::{self, Finding},
};
use flowpol_kube::{
    store::{self, Flushed, Writer},
    watch::Live,
};
use flowpol_node::{
    capture::{CaptureError, Sensor},
    podcgroup,
    session::{EventSource, Session, Summary},
    shutdown::Shutdown,
};
use http::Health;
use metrics::Metrics;

/// Records held while the model is not complete yet (at start), so they are named rather
/// than written out anonymous; past this many they go out unnamed.
const HOLD_MAX: usize = 100_000;
/// Distinct findings logged (each once); further ones are only counted in the metrics.
const LOGGED_MAX: usize = 10_000;

pub struct Config {
    pub node: String,
    /// How often records are taken, named, judged and written out.
    pub round: Duration,
    /// UDP flows and drops quiet this long are forgotten (in the kernel too).
    pub idle: Duration,
    /// Most edges held in memory.
    pub max_edges: usize,
    /// How often changed workloads are written to the cluster.
    pub flush_every: Duration,
    /// How often a workload whose counts alone changed (no new edge) is written.
    pub counts_every: Duration,
    pub writes_per_second: f64,
    /// How long the last write may take on shutdown.
    pub shutdown_timeout: Duration,
    /// The kubelet's cgroup tree, to name the local end of each record by its pod.
    pub cgroup_root: PathBuf,
    /// Stop after this long (else on SIGTERM or SIGINT).
    pub duration: Option<Duration>,
    /// Where what could not be written to the cluster before stopping is kept for the
    /// next start ([`state`]).
    pub state_dir: Option<PathBuf>,
}

/// Where each round's cluster model comes from: the live watchers, a fixed snapshot, or a
/// script in the tests.
pub trait ModelSource: Send + Sync {
    /// The model now; rounds hold their records back while it is not complete.
    fn current(&self, metrics: &Metrics) -> Current;
}

/// The declared policies of every kind.
#[derive(Clone, Default)]
pub struct Policies {
    pub network: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies, the BaselineAdminNetworkPolicy.
    pub cluster: Vec<ClusterPolicySource>,
}

pub enum Current {
    Complete(Arc<Cluster>, Policies),
    /// Not listed in full yet: the agent is not ready, and says why.
    Incomplete(String),
    /// Listed, but the model could not be built from it.
    Failed(String),
}

impl ModelSource for Live {
    fn current(&self, metrics: &Metrics) -> Current {
        let status = self.status();
        metrics.watch(&status);
        if !status.ready {
            return Current::Incomplete(format!("cluster model: {status}"));
        }
        match self.model() {
            Ok(c) => Current::Complete(
                c,
                Policies {
                    network: self.policies(),
                    cluster: self.cluster_policies(),
                },
            ),
            Err(e) => Current::Failed(format!("cluster model: {e}")),
        }
    }
}

/// A cluster read once (a snapshot file).
pub struct Fixed {
    pub cluster: Arc<Cluster>,
    pub policies: Policies,
}

impl ModelSource for Fixed {
    fn current(&self, _: &Metrics) -> Current {
        Current::Complete(self.cluster.clone(), self.policies.clone())
    }
}

/// Where records go.
pub enum Sink {
    Stdout,
    File(Rotating),
    /// Nowhere (only metrics and the store).
    Discard,
}

impl Sink {
    fn write(&mut self, records: &[FlowRecord]) -> Result<(), OutputError> {
        match self {
            Sink::Stdout => output::write_json_lines(std::io::stdout().lock(), records, &[])
                .map_err(OutputError::Stdout),
            Sink::File(f) => f.write(records),
            Sink::Discard => Ok(()),
        }
    }

    fn write_capture(&mut self, capture: &Capture) -> Result<(), OutputError> {
        match self {
            Sink::Stdout => output::write_json_lines(
                std::io::stdout().lock(),
                &[],
                std::slice::from_ref(capture),
            )
            .map_err(OutputError::Stdout),
            Sink::File(f) => f.write_capture(capture),
            Sink::Discard => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("capturing")]
    Capture(#[from] CaptureError),
    #[error("writing flow records")]
    Output(#[from] OutputError),
    #[error("keeping what could not be written to the cluster")]
    State(#[from] state::StateError),
}

/// What the agent wrote out over its run (the session's own totals only cover what it still
/// holds: each round drains it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    /// Connections, packets and flows by verdict, as the records count them.
    pub observations: BTreeMap<Verdict, u64>,
    pub drops: BTreeMap<String, u64>,
}

impl Written {
    fn add(&mut self, records: &[FlowRecord]) {
        for r in records {
            self.records += 1;
            if let Some(v) = r.verdict {
                *self.observations.entry(v).or_default() += r.count;
            }
            if let Some(reason) = &r.drop_reason {
                *self.drops.entry(reason.clone()).or_default() += r.count;
            }
        }
    }
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} flow records written", self.records)?;
        for (v, n) in &self.observations {
            write!(f, "\n  {:<24} {n}", v.to_string())?;
        }
        for (reason, n) in &self.drops {
            write!(f, "\n  {:<24} {n} packets", format!("dropped {reason}"))?;
        }
        Ok(())
    }
}

/// How the agent ended.
#[derive(Debug)]
pub struct Exit {
    /// The capture's counters (events, losses).
    pub summary: Summary,
    pub written: Written,
    /// The last write to the cluster, on shutdown (`None` without a store).
    pub flushed: Option<Flushed>,
    /// Edges evicted from memory before they were written.
    pub evicted_unwritten: u64,
    /// The file keeping the workloads the last write did not reach, and how many.
    pub kept: Option<(PathBuf, usize)>,
}

pub struct Agent<S = Sensor> {
    config: Config,
    session: Session<S>,
    model: Box<dyn ModelSource>,
    sink: Sink,
    health: Arc<Health>,
    observed: Arc<Mutex<Observed>>,
    writer: Option<Arc<Writer>>,
    held: Vec<FlowRecord>,
    /// Most records held back while the model is incomplete.
    hold_max: usize,
    written: Written,
    logged: HashSet<String>,
    /// The model the exposures were last computed for.
    exposures_of: Option<Arc<Cluster>>,
    /// The capture's losses as of the last capture line written.
    reported: Capture,
    /// Since when the cluster model has been incomplete, and how long it was before.
    incomplete_since: Option<std::time::Instant>,
    incomplete: Duration,
}

impl<S: EventSource> Agent<S> {
    /// `store`: the API server to write `ObservedTraffic` to, if any.
    pub fn new(
        config: Config,
        session: Session<S>,
        model: Box<dyn ModelSource>,
        store: Option<Client>,
        sink: Sink,
        health: Arc<Health>,
    ) -> Self {
        let writer =
            store.map(|c| Arc::new(Writer::new(c, &config.node, config.writes_per_second)));
        Self {
            observed: Arc::new(Mutex::new(Observed::new(config.max_edges))),
            config,
            session,
            model,
            sink,
            health,
            writer,
            held: Vec::new(),
            hold_max: HOLD_MAX,
            written: Written::default(),
            logged: HashSet::new(),
            exposures_of: None,
            reported: Capture::default(),
            incomplete_since: None,
            incomplete: Duration::ZERO,
        }
    }

    /// Starts from what a previous agent on this node kept ([`state::take`]).
    pub fn restore(mut self, spill: Spill) -> Self {
        self.observed = Arc::new(Mutex::new(Observed::restore(self.config.max_edges, spill)));
        self
    }

    /// Runs until SIGTERM/SIGINT (or the configured duration), then takes what is left,
    /// writes it out and makes a last write to the cluster.
    pub async fn run(mut self, mut shutdown: Shutdown) -> Result<Exit, AgentError> {
        let flusher = self.writer.clone().map(|w| {
            let health = self.health.clone();
            tokio::spawn(store::run(
                w,
                self.observed.clone(),
                self.config.flush_every,
                self.config.counts_every,
                move |ok| health.metrics.write(ok),
            ))
        });
        let end = self
            .config
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        loop {
            let round = self.config.round;
            let stop = self
                .session
                .run(async {
                    tokio::select! {
                        _ = tokio::time::sleep(round) => false,
                        _ = shutdown.requested() => true,
                        _ = async { tokio::time::sleep_until(end.expect("guarded")).await }, if end.is_some() => true,
                    }
                })
                .await?;
            self.round(stop)?;
            if stop {
                break;
            }
        }
        if let Some(f) = flusher {
            f.abort();
        }
        let flushed = match &self.writer {
            Some(w) => {
                let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
                let health = self.health.clone();
                Some(
                    w.flush(&self.observed, deadline, |ok| health.metrics.write(ok))
                        .await,
                )
            }
            None => None,
        };
        let kept = match (&flushed, &self.config.state_dir) {
            (Some(f), Some(dir)) if f.pending > 0 => {
                let spill = lock(&self.observed).spill(&self.config.node);
                let n = spill.workloads.len();
                Some((state::keep(dir, &spill)?, n))
            }
            _ => None,
        };
        let evicted_unwritten = lock(&self.observed).evicted_unwritten;
        Ok(Exit {
            summary: self.session.summary(),
            written: std::mem::take(&mut self.written),
            flushed,
            evicted_unwritten,
            kept,
        })
    }

    /// One round: take, name, judge, write out, aggregate. `last`: records are not held
    /// back for a model that is not complete.
    fn round(&mut self, last: bool) -> Result<(), AgentError> {
        let mut records = self.session.take(self.config.idle);
        let health = self.health.clone();
        let m = &health.metrics;
        m.probe(&self.session.summary());
        let current = match self.model.current(m) {
            Current::Complete(cluster, policies) => Some((cluster, policies)),
            Current::Incomplete(why) => {
                self.health.set_ready(Some(why));
                self.incomplete_since
                    .get_or_insert_with(std::time::Instant::now);
                None
            }
            Current::Failed(why) => {
                tracing::warn!("{why}");
                None
            }
        };
        match current {
            Some((cluster, policies)) => {
                self.health.set_ready(None);
                if let Some(since) = self.incomplete_since.take() {
                    let was = since.elapsed();
                    self.incomplete += was;
                    m.model_incomplete(was);
                }
                if !self.held.is_empty() {
                    let mut held = std::mem::take(&mut self.held);
                    held.append(&mut records);
                    records = held;
                }
                let cgroups = podcgroup::scan(&self.config.cgroup_root);
                attribute::enrich_on_node(&cluster, &mut records, &cgroups);
                self.judge(&cluster, &policies, &records);
                let mut observed = lock(&self.observed);
                for r in &records {
                    observed.add(&self.config.node, r);
                }
                m.observed(&observed, self.writer.is_some());
            }
            None if !last && self.held.len() + records.len() <= self.hold_max => {
                self.held.append(&mut records);
            }
            None => {
                // Out of patience: written out unnamed rather than lost.
                let mut held = std::mem::take(&mut self.held);
                held.append(&mut records);
                records = held;
            }
        }
        self.sink.write(&records)?;
        if let Some(lost) = self.losses_since_last_round() {
            if let Some(why) = lost.missing_flows() {
                tracing::warn!("the capture is incomplete: {why}");
            }
            self.sink.write_capture(&lost)?;
        }
        m.records(&records);
        self.written.add(&records);
        self.health.round_done();
        Ok(())
    }

    /// What the capture lost since the previous round, as the line that tells readers of
    /// the records (suggest, verify) that flows may be missing; `None` when nothing was.
    fn losses_since_last_round(&mut self) -> Option<Capture> {
        let mut now = self.session.summary().capture();
        let incomplete = self.incomplete
            + self
                .incomplete_since
                .map_or(Duration::ZERO, |t| t.elapsed());
        now.model_incomplete_ms = incomplete.as_millis() as u64;
        let before = std::mem::replace(&mut self.reported, now.clone());
        let lost = now.since(&before);
        (lost.missing_flows().is_some() || lost.model_incomplete_ms > 0).then_some(lost)
    }

    /// Continuous verify: counts the findings of this round's records, logs each new one
    /// once, and recomputes the exposures when the model changed.
    fn judge(&mut self, cluster: &Arc<Cluster>, policies: &Policies, records: &[FlowRecord]) {
        // The API server validates policies; one that does not compile here is ours to fix,
        // and must not stop attribution.
        fn understood<T, E: std::fmt::Display>(
            compiled: Result<Vec<T>, Vec<E>>,
            what: &str,
        ) -> Option<Vec<T>> {
            compiled
                .map_err(|errors| {
                    for e in &errors {
                        tracing::warn!("{what} not understood, verify skipped: {e}");
                    }
                })
                .ok()
        }
        let (Some(compiled), Some(cluster_compiled)) = (
            understood(policy::compile_all(&policies.network), "NetworkPolicy"),
            understood(
                clusterwide::compile_all(&policies.cluster),
                "cluster-scoped policy",
            ),
        ) else {
            return;
        };
        let engine = Engine::with_cluster_policies(cluster, compiled, cluster_compiled);
        if !self
            .exposures_of
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, cluster))
        {
            self.health.metrics.exposures(&verify::unprotected(&engine));
            self.exposures_of = Some(cluster.clone());
        }
        if records.is_empty() {
            return;
        }
        let report = verify::judge(&engine, records.to_vec());
        self.health.metrics.findings(&report);
        for f in &report.findings {
            let (Finding::EnforcementGap(flow) | Finding::OverBlock(flow) | Finding::Refused(flow)) =
                f
            else {
                continue;
            };
            let what = format!(
                "{}: {} -> {} {}/{}",
                f.kind().as_str(),
                flow.src.name,
                flow.dst.name,
                flow.port,
                flow.protocol
            );
            if self.logged.len() < LOGGED_MAX && self.logged.insert(what.clone()) {
                tracing::warn!(
                    observed = ?flow.observed,
                    policy = flow.policy_verdict.as_str(),
                    reasons = %flow.explanation.reasons().join("; "),
                    "{what}"
                );
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
