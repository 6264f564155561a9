//! A probe plan run from this node: each attempt from inside its source pod's network
//! namespace, entered through a process of the pod (found by the kubelet's pod cgroups), and
//! recorded by the eBPF probe like any traffic: `flowpol probe --cluster/--kube` on a node (the
//! agent does not probe). The lab runs its plans with its own namespaces.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    aggregate::{Aggregator, Clock},
    capture::{self, CaptureError, Sensor},
    client::{self, Close},
    kernel::{self, KernelError},
    netns, podcgroup,
    session::{Session, Summary},
};
use flowpol_analysis::{
    cluster::Cluster,
    plan::{Attempt, Host, ATTEMPT_CONCURRENCY, ATTEMPT_TIMEOUT},
    record::{FlowRecord, Verdict},
};

/// Time left after the attempts for the last events to arrive.
const GRACE: Duration = Duration::from_millis(300);

/// A pod running on this node, and how to enter its network namespace.
#[derive(Clone, Debug)]
pub struct LocalPod {
    /// `/proc/<pid>/ns/net` of one of its processes.
    pub netns: PathBuf,
    /// That namespace's inode (records name it as their observer's).
    pub inode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeProbeError {
    #[error("no cgroup v2 hierarchy is mounted: pods cannot be found by their cgroups")]
    NoCgroup2,
    #[error("inspecting the running kernel")]
    Kernel(#[from] KernelError),
    #[error("loading the eBPF probe")]
    Capture(#[from] CaptureError),
    #[error("the probe's attempt runner stopped unexpectedly")]
    Join(#[from] tokio::task::JoinError),
}

/// The model's pods (by `namespace/name`) that run here with their own network namespace:
/// a process in the pod's cgroups under `cgroup_root` whose namespace is not the node's.
fn local_pods(cluster: &Cluster, cgroup_root: &Path) -> HashMap<String, LocalPod> {
    let node_ns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    let pids = podcgroup::pids(cgroup_root);
    let mut out = HashMap::new();
    for id in cluster.pod_ids() {
        let pod = cluster.pod(id);
        if !pod.is_active() || pod.host_network {
            continue;
        }
        let Some(procs) = pids.get(&*pod.uid) else {
            continue;
        };
        let entered = procs.iter().find_map(|pid| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ino = std::fs::metadata(&path).ok()?.ino();
            (Some(ino) != node_ns).then_some(LocalPod {
                netns: path,
                inode: ino as u32,
            })
        });
        if let Some(local) = entered {
            out.insert(cluster.pod_name(id), local);
        }
    }
    out
}

/// Runs `attempts` (all from pods in `local`), `concurrency` at a time, each from inside
/// its source's namespace: the client's verdict per attempt, in order.
fn run_attempts(
    attempts: &[Attempt],
    local: &HashMap<String, LocalPod>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<Option<Verdict>> {
    client::batched(attempts, concurrency, |a| {
        let Host::Pod(from) = &a.from else {
            return None;
        };
        netns::enter_path(&local.get(from)?.netns).ok()?;
        Some(client::attempt(
            SocketAddr::new(a.address, a.port),
            a.protocol,
            timeout,
            Close::Graceful,
        ))
    })
    .into_iter()
    .map(Option::flatten)
    .collect()
}

/// The attempts of a probe plan this node runs: those whose source pod is here.
#[derive(Clone)]
pub struct Share {
    /// Attempts in the whole plan.
    pub planned: usize,
    pub attempts: Vec<Attempt>,
    /// The cluster's pods running here, by `namespace/name`.
    pub local: HashMap<String, LocalPod>,
}

/// What running a share gave: the records seen in the source pods' namespaces.
pub struct Probed {
    pub records: Vec<FlowRecord>,
    pub summary: Summary,
    /// Attempts that could not enter their pod's network namespace (the pod went away).
    pub unentered: usize,
}

impl Share {
    /// The plan's attempts from pods on this node, found by the kubelet's pod cgroups under
    /// the cgroup v2 hierarchy that `mountinfo` (`/proc/self/mountinfo`) names.
    pub fn of_node(
        cluster: &Cluster,
        plan: Vec<Attempt>,
        mountinfo: &str,
    ) -> Result<Self, NodeProbeError> {
        let root = kernel::cgroup2_root(mountinfo).ok_or(NodeProbeError::NoCgroup2)?;
        let local = local_pods(cluster, &root);
        let planned = plan.len();
        let attempts = plan
            .into_iter()
            .filter(|a| matches!(&a.from, Host::Pod(p) if local.contains_key(p)))
            .collect();
        Ok(Self {
            planned,
            attempts,
            local,
        })
    }

    /// Loads the eBPF probe and runs the attempts while it records, `node` naming the
    /// records' observer.
    pub async fn record(self, node: Option<String>) -> Result<Probed, NodeProbeError> {
        let (verdicts, records, summary) = record_attempts(
            self.attempts,
            self.local,
            ATTEMPT_TIMEOUT,
            ATTEMPT_CONCURRENCY as usize,
            node,
        )
        .await?;
        Ok(Probed {
            records,
            summary,
            unentered: verdicts.iter().filter(|v| v.is_none()).count(),
        })
    }
}

/// Loads the eBPF probe, runs the attempts while it records, and returns the records seen
/// in the source pods' namespaces.
async fn record_attempts(
    attempts: Vec<Attempt>,
    local: HashMap<String, LocalPod>,
    timeout: Duration,
    concurrency: usize,
    node: Option<String>,
) -> Result<(Vec<Option<Verdict>>, Vec<FlowRecord>, Summary), NodeProbeError> {
    capture::check_privileges()?;
    let info = kernel::discover()?;
    let probe = Sensor::load(&info)?;
    let mut session = Session::new(
        probe,
        Aggregator::new(node, Clock::system(), info.drop_reasons),
    );
    let inodes: Vec<u32> = local.values().map(|l| l.inode).collect();
    let local = Arc::new(local);
    let runner = tokio::task::spawn_blocking({
        let local = local.clone();
        move || run_attempts(&attempts, &local, timeout, concurrency)
    });
    let mut verdicts = None;
    let stop = async {
        verdicts = Some(runner.await);
        tokio::time::sleep(GRACE).await;
    };
    session.run(stop).await?;
    let verdicts = verdicts.expect("the stop future ran to its end")?;
    let (records, summary) = session.finish();
    let records = records
        .into_iter()
        .filter(|r| {
            r.observer
                .as_ref()
                .is_some_and(|o| inodes.contains(&o.netns))
        })
        .collect();
    Ok((verdicts, records, summary))
}
