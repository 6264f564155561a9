//! Where a command gets the cluster from: a snapshot file, or the API server (kubeconfig as
//! kubectl reads it, or the in-cluster service account).
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use flowpol_analysis::{
    attribute,
    cluster::{snapshot, Cluster},
    policy::{
        self,
        clusterwide::{self, api::Source as ClusterPolicySource, ClusterPolicy},
        engine::Engine,
        Policy,
    },
    record::{self, FlowRecord, Flows},
};
use flowpol_kube::{
    store,
    watch::{self, Live},
};
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// Deleted pods are kept this long for attribution.
const GRACE_DEFAULT: &str = "10m";

#[derive(clap::Args, Clone)]
pub(super) struct Source {
    /// Cluster snapshot: `kubectl get namespaces,nodes,pods,services,endpointslices,replicasets,jobs,networkpolicies -A -o yaml` (or -o json).
    #[arg(long, conflicts_with_all = ["kube", "kubeconfig", "context"])]
    pub cluster: Option<PathBuf>,
    /// Read the cluster live from the API server: kubeconfig ($KUBECONFIG, ~/.kube/config)
    /// or, inside a pod, its service account.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig file to use (implies --kube).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (implies --kube).
    #[arg(long)]
    pub context: Option<String>,
    /// How long to wait for the API server's first full list of every kind.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,
    /// How long deleted pods are remembered, so flows they sent are still named after them.
    #[arg(long, default_value = GRACE_DEFAULT, value_parser = humantime::parse_duration)]
    pub deleted_pod_grace: Duration,
}

/// Recorded flows and the cluster that names their ends, for commands that judge them.
#[derive(clap::Args, Clone)]
pub(super) struct FlowsFrom {
    #[command(flatten)]
    pub source: Source,
    /// Flow records (JSON lines), as `flowpol record`, `lab`, `probe` or `agent` write them.
    #[arg(
        long,
        required_unless_present = "from_cluster",
        conflicts_with = "from_cluster"
    )]
    pub flows: Option<PathBuf>,
    /// Read the traffic the agents aggregated in the cluster (ObservedTraffic objects)
    /// instead of a file; needs the API server (--kube).
    #[arg(long)]
    pub from_cluster: bool,
    /// With --from-cluster: only edges seen within this long (e.g. `24h`, `7days`).
    #[arg(long, requires = "from_cluster", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
}

impl FlowsFrom {
    /// The cluster, and the flows with both ends named from it. The flows are read first:
    /// a bad file fails before the API server is asked anything.
    pub(super) async fn load(&self, command: &str) -> anyhow::Result<(Loaded, Flows)> {
        self.load_in(command, &[]).await
    }

    /// [`FlowsFrom::load`], reading only the ObservedTraffic of `namespaces` when some are
    /// named (with --from-cluster).
    pub(super) async fn load_in(
        &self,
        command: &str,
        namespaces: &[String],
    ) -> anyhow::Result<(Loaded, Flows)> {
        let Some(path) = &self.flows else {
            let (loaded, records) = self.read_cluster_store(command, namespaces).await?;
            let flows = Flows {
                records,
                captures: Vec::new(),
            };
            return Ok((loaded, flows));
        };
        let mut flows = record::read_flows(path)?;
        let loaded = self.source.load(command).await?;
        attribute::enrich(&loaded.cluster, &mut flows.records);
        Ok((loaded, flows))
    }

    /// The live cluster and the traffic its ObservedTraffic objects hold.
    async fn read_cluster_store(
        &self,
        command: &str,
        namespaces: &[String],
    ) -> anyhow::Result<(Loaded, Vec<FlowRecord>)> {
        if !self.source.live_requested() {
            anyhow::bail!(
                "--from-cluster reads the API server: add --kube (or --kubeconfig/--context)"
            );
        }
        let connection = self.source.connect().await?;
        let live = Live::start(&connection, self.source.deleted_pod_grace);
        let loaded = self.source.take(&live).await?;
        let traffic =
            store::read_traffic(&connection.client, &loaded.cluster, self.since, namespaces)
                .await
                .inspect_err(|e| {
                    if let store::ReadError::Invalid(objects) = e {
                        for o in objects {
                            eprintln!("flowpol {command}: ObservedTraffic {o}");
                        }
                    }
                })?;
        let unread = &traffic.unread;
        eprintln!(
            "flowpol {command}: {} records from {} ObservedTraffic objects{}{}{}",
            traffic.records.len(),
            traffic.objects,
            if namespaces.is_empty() {
                String::new()
            } else {
                format!(" in {}", namespaces.join(", "))
            },
            if unread.gone > 0 {
                format!(
                    "; {} edges of workloads no longer in the cluster left out",
                    unread.gone
                )
            } else {
                String::new()
            },
            if unread.older > 0 {
                format!("; {} edges older than --since left out", unread.older)
            } else {
                String::new()
            }
        );
        let records = traffic.records;
        Ok((loaded, records))
    }
}

/// A cluster read once, for commands that work on a fixed picture.
pub(super) struct Loaded {
    pub cluster: Arc<Cluster>,
    pub policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies and the BaselineAdminNetworkPolicy.
    pub cluster_policies: Vec<ClusterPolicySource>,
    /// Where it came from, for messages.
    pub origin: String,
}

impl Loaded {
    /// The NetworkPolicies compiled for the engine; every invalid one is reported, then
    /// refused together (the API server would not have accepted them).
    pub(super) fn compile(&self, command: &str) -> anyhow::Result<Vec<Policy>> {
        self.refuse_invalid(
            policy::compile_all(&self.policies),
            "NetworkPolicy",
            command,
        )
    }

    /// The cluster-scoped policies compiled, checked the same way.
    pub(super) fn compile_cluster_policies(
        &self,
        command: &str,
    ) -> anyhow::Result<Vec<ClusterPolicy>> {
        self.refuse_invalid(
            clusterwide::compile_all(&self.cluster_policies),
            "cluster network policy",
            command,
        )
    }

    fn refuse_invalid<T, E: std::fmt::Display>(
        &self,
        compiled: Result<Vec<T>, Vec<E>>,
        what: &str,
        command: &str,
    ) -> anyhow::Result<Vec<T>> {
        compiled.or_else(|errors| {
            for e in &errors {
                eprintln!("flowpol {command}: {}: invalid {e}", self.origin);
            }
            anyhow::bail!(
                "{} invalid {what} object(s) in {}; the API server would reject them",
                errors.len(),
                self.origin
            )
        })
    }

    /// The policy engine over every policy of the cluster, of all tiers.
    pub(super) fn engine(&self, command: &str) -> anyhow::Result<Engine<'_>> {
        let policies = self.compile(command)?;
        let cluster_policies = self.compile_cluster_policies(command)?;
        Ok(Engine::with_cluster_policies(
            &self.cluster,
            policies,
            cluster_policies,
        ))
    }
}

impl Source {
    pub(super) fn live_requested(&self) -> bool {
        // A snapshot wins over `--kube` as a default (the kubectl plugin's).
        self.cluster.is_none() && (self.kube || self.kubeconfig.is_some() || self.context.is_some())
    }

    /// A connection to the API server, configured as kubectl would be.
    pub(super) async fn connect(&self) -> anyhow::Result<watch::Connection> {
        watch::connect(self.kubeconfig.as_deref(), self.context.as_deref())
            .await
            .context("connecting to the Kubernetes API server")
    }

    /// Connects and starts the watchers.
    pub(super) async fn start(&self) -> anyhow::Result<Live> {
        Ok(Live::start(&self.connect().await?, self.deleted_pod_grace))
    }

    /// Waits for the live model to be complete and takes it.
    pub(super) async fn take(&self, live: &Live) -> anyhow::Result<Loaded> {
        live.ready(self.kube_timeout).await.map_err(|status| {
            anyhow::anyhow!(
                "the cluster model is not complete after {}: {status}",
                humantime::format_duration(self.kube_timeout)
            )
        })?;
        Ok(Loaded {
            cluster: live.model().context("building the cluster model")?,
            policies: live.policies(),
            cluster_policies: live.cluster_policies(),
            origin: "the API server".into(),
        })
    }

    /// The cluster from the snapshot, or from the API server once fully listed.
    pub(super) async fn load(&self, command: &str) -> anyhow::Result<Loaded> {
        if let Some(path) = &self.cluster {
            let snap = snapshot::load(path)?;
            for (kind, n) in &snap.skipped {
                eprintln!("flowpol {command}: skipped {n} {kind} object(s) (not used)");
            }
            return Ok(Loaded {
                cluster: Arc::new(snap.cluster),
                policies: snap.policies,
                cluster_policies: snap.cluster_policies,
                origin: path.display().to_string(),
            });
        }
        if !self.live_requested() {
            anyhow::bail!("name a cluster: --cluster FILE (a snapshot) or --kube (the API server)");
        }
        let live = self.start().await?;
        self.take(&live).await
    }
}
