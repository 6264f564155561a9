//! One lab run: probe up, lab up, traffic while recording, checks, everything torn down.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use super::{
    check::{check, Mismatch},
    netns::{self, NetError},
    netstat::ListenCounters,
    scenario::Resolved,
    traffic::ClientSaw,
    Lab,
};
use flowpol_analysis::record::FlowRecord;
use flowpol_node::{
    aggregate::{Aggregator, Clock},
    capture::{CaptureError, Sensor},
    kernel::{self, KernelError},
    session::{Session, Summary},
    shutdown::Shutdown,
};

/// Time left after the traffic for the last events to arrive.
const GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("inspecting the running kernel")]
    Kernel(#[from] KernelError),
    #[error("loading the eBPF probe")]
    Capture(#[from] CaptureError),
    #[error("the lab's traffic runner stopped unexpectedly")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

pub struct LabReport {
    /// How long the traffic plan took.
    pub traffic_time: Duration,
    /// Records observed in the lab's namespaces only, but their loopback traffic.
    pub records: Vec<FlowRecord>,
    pub summary: Summary,
    pub outcomes: Vec<ClientSaw>,
    pub mismatches: Vec<Mismatch>,
    pub hosts_by_inode: HashMap<u32, String>,
    /// Host id -> what its kernel dropped at its listeners during the run, for the hosts
    /// where it dropped anything: why a server can count fewer handshakes than its clients.
    pub listen_drops: BTreeMap<String, ListenCounters>,
    pub resolved: Resolved,
}

/// Builds the lab, records while its traffic plan runs, and tears it down.
pub async fn run(resolved: Resolved, node: Option<String>) -> Result<LabReport, LabError> {
    netns::preflight()?;
    flowpol_node::capture::check_privileges()?;
    // Before anything is created: a Ctrl-C from here on is a request, not the end.
    let mut shutdown = Shutdown::install().map_err(LabError::Signals)?;
    let lab = tokio::task::spawn_blocking(move || Lab::create(resolved)).await??;
    run_on(lab, node, &mut shutdown).await
}

/// [`run`] on a lab already created (not yet listening). Listeners start and the `held`
/// connections open before the probe is loaded, as on a node where flowpol starts after
/// the workloads: what is already open must be found ([`Session::starting_from_open`]).
pub async fn run_on(
    mut lab: Lab,
    node: Option<String>,
    shutdown: &mut Shutdown,
) -> Result<LabReport, LabError> {
    flowpol_node::capture::check_privileges()?;
    let info = kernel::discover()?;
    let lab = Arc::new(tokio::task::spawn_blocking(move || lab.listen().map(|()| lab)).await??);
    let held = tokio::task::spawn_blocking({
        let lab = lab.clone();
        move || lab.hold()
    })
    .await??;
    let before = lab.listen_counters()?;
    let probe = Sensor::load(&info)?;
    let mut session = Session::starting_from_open(
        probe,
        Aggregator::new(node, Clock::system(), info.drop_reasons),
    );
    let started = std::time::Instant::now();
    let stop_flag = lab.stop_flag();
    let traffic = tokio::task::spawn_blocking({
        let lab = lab.clone();
        move || lab.run_traffic()
    });
    let mut finished = None;
    let mut traffic_time = Duration::ZERO;
    let stop = async {
        tokio::pin!(traffic);
        let result = tokio::select! {
            r = &mut traffic => {
                traffic_time = started.elapsed();
                r
            },
            _ = shutdown.requested() => {
                stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = (&mut traffic).await;
                finished = Some(Err(LabError::Interrupted));
                return;
            }
        };
        tokio::time::sleep(GRACE).await;
        finished = Some(
            result
                .map_err(LabError::from)
                .and_then(|r| r.map_err(LabError::from)),
        );
    };
    session.run(stop).await?;
    let mut outcomes = finished.unwrap_or(Err(LabError::Interrupted))?;
    let (records, summary) = session.finish();
    outcomes.extend(held.outcomes.iter().cloned());
    outcomes.sort_by_key(|o| o.item);
    drop(held);
    let hosts_by_inode = lab.inodes();
    let records: Vec<FlowRecord> = records
        .into_iter()
        .filter(|r| {
            r.observer
                .as_ref()
                .is_some_and(|o| hosts_by_inode.contains_key(&o.netns))
        })
        // A namespace's own loopback is no pod-to-pod traffic (no NetworkPolicy governs
        // it): in the lab, a real enforcer's connections to the API server's proxy in
        // the node's namespace, open before the recording.
        .filter(|r| !(r.src.ip.is_loopback() && r.dst.ip.is_loopback()))
        .collect();
    let listen_drops = lab
        .listen_counters()?
        .into_iter()
        .map(|(host, now)| {
            let during = now.since(before.get(&host).copied().unwrap_or_default());
            (host, during)
        })
        .filter(|(_, during)| *during != ListenCounters::default())
        .collect();
    let resolved = lab.resolved().clone();
    let mismatches = check(&resolved, &outcomes, &records, &hosts_by_inode);
    // Tear down now (listeners joined, namespaces deleted) rather than at some later drop.
    drop(lab);
    Ok(LabReport {
        traffic_time,
        records,
        summary,
        outcomes,
        mismatches,
        hosts_by_inode,
        listen_drops,
        resolved,
    })
}

/// Builds the lab and runs its traffic plan without recording: the load generator for
/// benchmarks, which measure a separately running `flowpol record`.
pub fn run_traffic_only(resolved: Resolved) -> Result<(Duration, Vec<ClientSaw>), LabError> {
    netns::preflight()?;
    let lab = Lab::up(resolved)?;
    let started = std::time::Instant::now();
    let outcomes = lab.run_traffic()?;
    Ok((started.elapsed(), outcomes))
}

impl LabReport {
    /// The records as a table with lab host names in place of addresses.
    pub fn table(&self) -> String {
        let name = |ip: IpAddr| -> String {
            self.resolved
                .hosts
                .iter()
                .find(|h| IpAddr::V4(h.ipv4) == ip || IpAddr::V6(h.ipv6) == ip)
                .map(|h| h.id.clone())
                .unwrap_or_else(|| ip.to_string())
        };
        let mut rows = vec![[
            "SOURCE".to_owned(),
            "DESTINATION".into(),
            "PROTO".into(),
            "VERDICT".into(),
            "COUNT".into(),
            "SEEN AT".into(),
        ]];
        for r in &self.records {
            let seen = r
                .observer
                .as_ref()
                .map(|o| {
                    format!(
                        "{:?} in {}",
                        o.side,
                        self.hosts_by_inode
                            .get(&o.netns)
                            .map(String::as_str)
                            .unwrap_or("?")
                    )
                    .to_lowercase()
                })
                .unwrap_or_default();
            let verdict = match (&r.verdict, &r.drop_reason) {
                (Some(v), Some(reason)) => format!("{v} ({reason})"),
                (Some(v), None) => v.to_string(),
                (None, _) => String::new(),
            };
            rows.push([
                name(r.src.ip),
                format!(
                    "{}:{}",
                    name(r.dst.ip),
                    r.dst.port.map(|p| p.to_string()).unwrap_or_default()
                ),
                r.protocol.to_string(),
                verdict,
                r.count.to_string(),
                seen,
            ]);
        }
        flowpol_analysis::output::columns(&rows)
            .trim_end()
            .to_owned()
    }
}
