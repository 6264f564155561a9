//! Who enforces the lab's policies: the options `lab`, `probe` and `conformance` share.
use std::path::PathBuf;

use flowpol_analysis::output;
use flowpol_lab::{
    enforcer::{self, Enforcer, Program},
    in_cluster::ApiServer,
};

#[derive(clap::Args)]
pub(super) struct EnforcerArgs {
    /// Who enforces the NetworkPolicies: flowpol's own nftables rules, or a real
    /// implementation run as a CNI's node agent in the lab's node namespace:
    /// kube-network-policies or kube-router (firewall only). A real one reads the lab from
    /// the API server, so it needs --kube (or --kubeconfig / --context). See docs/enforcers.md.
    #[arg(long, default_value = "flowpol")]
    pub enforcer: Enforcer,
    /// The real enforcer's program (default: found on PATH by its name).
    #[arg(long)]
    pub enforcer_bin: Option<PathBuf>,
    /// An argument for the real enforcer after the lab's own, which it overrides
    /// (repeatable), e.g. `--enforcer-arg=--enable-ipv6=true` for kube-router.
    #[arg(long, allow_hyphen_values = true)]
    pub enforcer_arg: Vec<String>,
}

impl EnforcerArgs {
    /// The real enforcer to run, if one was asked for.
    pub(super) fn program(&self) -> Option<Program> {
        match self.enforcer {
            Enforcer::Flowpol => None,
            Enforcer::Real(kind) => Some(Program::new(
                kind,
                self.enforcer_bin.as_deref(),
                self.enforcer_arg.clone(),
            )),
        }
    }

    /// Whether a real enforcer was asked for, or anything only one takes.
    pub(super) fn real(&self) -> bool {
        self.enforcer != Enforcer::Flowpol
    }

    /// An error unless the options are all flowpol's (`why` says whose they are not).
    pub(super) fn only_flowpol(&self, why: &str) -> anyhow::Result<()> {
        if self.real() || self.enforcer_bin.is_some() || !self.enforcer_arg.is_empty() {
            anyhow::bail!("{why}");
        }
        Ok(())
    }
}

/// The API server the lab publishes itself into (and a real enforcer reads it from).
#[derive(clap::Args)]
pub(super) struct LabApi {
    /// Publish the lab's cluster (namespaces, node, pods with their status, policies) into
    /// the API server for the run, so what reads a cluster (`flowpol agent`, an enforcer)
    /// sees the lab as a cluster; removed at the end, also on errors and Ctrl-C. Meant for
    /// a test cluster (`cargo xtask k8s up`).
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig file to publish with (implies --kube).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to publish with (implies --kube).
    #[arg(long)]
    pub context: Option<String>,
}

impl LabApi {
    /// Whether an API server was asked for.
    pub(super) fn requested(&self) -> bool {
        self.kube || self.kubeconfig.is_some() || self.context.is_some()
    }

    pub(super) async fn connect(&self) -> anyhow::Result<ApiServer> {
        Ok(ApiServer::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?)
    }
}

/// Writes what a real enforcer's run measured beside its records file, for `compare`;
/// nothing for flowpol's own enforcer or records on stdout.
pub(super) fn write_facts(
    records: Option<&std::path::Path>,
    enforced: Option<&enforcer::Enforced>,
) -> Result<(), output::OutputError> {
    let (Some(records), Some(enforced)) = (records, enforced) else {
        return Ok(());
    };
    output::write_enforced(
        records,
        &output::EnforcedFacts {
            enforcer: enforced.kind.to_string(),
            ready_seconds: enforced.ready.as_secs_f64(),
            propagation_seconds: enforced.propagation.map(|p| p.as_secs_f64()),
        },
    )
}
