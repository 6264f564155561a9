//! Who enforces the lab's NetworkPolicies: flowpol's own nftables compiler
//! ([`crate::enforce`]), or a real implementation run as a CNI's node agent would run:
//! kube-network-policies (SIG Network's reference, userspace verdicts over NFQUEUE) or
//! kube-router's network policy controller (iptables and ipset). A real enforcer reads the
//! lab from an API server, so the lab publishes itself there first; the policies are
//! published once the enforcer is ready, and the lab's traffic waits until a canary shows
//! them enforced.
pub mod canary;
pub mod process;
pub mod session;

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use flowpol_kube::identity::TokenError;
use flowpol_node::shutdown::Shutdown;

use flowpol_analysis::policy::clusterwide::Kind as ClusterKind;

use crate::{
    enforce::{self, EnforceError},
    in_cluster::{ApiServer, InClusterError},
    netns::NetError,
    run::{self, LabError, LabReport},
    scenario::Resolved,
    Lab,
};
use canary::Canary;

/// How long an enforcer may take to start, and then to enforce what was published.
const READY_WITHIN: Duration = Duration::from_secs(60);
const ENFORCED_WITHIN: Duration = Duration::from_secs(60);

/// The lab's enforcer, as `--enforcer` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcer {
    Flowpol,
    Real(Real),
}

/// A NetworkPolicy implementation that is not flowpol's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Real {
    KubeNetworkPolicies,
    KubeRouter,
}

impl Real {
    pub const ALL: [Real; 2] = [Real::KubeNetworkPolicies, Real::KubeRouter];

    /// Whether it enforces cluster-scoped policies of `kind` (given their flags, see
    /// [`Program::for_scenario`]).
    pub fn implements(self, kind: ClusterKind) -> bool {
        matches!(
            (self, kind),
            (
                Real::KubeNetworkPolicies,
                ClusterKind::AdminNetworkPolicy | ClusterKind::BaselineAdminNetworkPolicy
            )
        )
    }

    /// Its name, and its program's.
    pub fn as_str(self) -> &'static str {
        match self {
            Real::KubeNetworkPolicies => "kube-network-policies",
            Real::KubeRouter => "kube-router",
        }
    }
}

impl std::fmt::Display for Real {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Enforcer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "flowpol" {
            return Ok(Enforcer::Flowpol);
        }
        Real::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .map(Enforcer::Real)
            .ok_or_else(|| {
                format!(
                    "unknown enforcer `{s}`: one of flowpol, kube-network-policies, kube-router"
                )
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    InCluster(#[from] InClusterError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Declared(#[from] EnforceError),
    #[error("the lab's traffic runner stopped unexpectedly")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("the API server's address {url} does not resolve to a socket address")]
    ApiAddress { url: String },
    #[error("cannot bridge the node namespace to the API server")]
    Bridge(#[source] std::io::Error),
    #[error("cannot write the enforcer's files in {dir}")]
    Files {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} is not at {path} (`cargo xtask k8s build` builds it; or give --enforcer-bin)")]
    NoBinary { kind: Real, path: PathBuf },
    #[error("cannot start {kind}")]
    Spawn {
        kind: Real,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "feeding kube-network-policies' queue from iptables (this kernel has no nftables queue)"
    )]
    Feed(#[source] NetError),
    #[error("{kind} exited ({status}) before it enforced anything; its log ends:\n{log}")]
    Exited {
        kind: Real,
        status: String,
        log: String,
    },
    #[error("{kind} was not ready within {within:?}; its log ends:\n{log}")]
    NotReady {
        kind: Real,
        within: Duration,
        log: String,
    },
    #[error("no canary: a real enforcer's policies are waited for through attempts between pods (TCP, or UDP to a port that answers) that they deny and allow, and the scenario has none")]
    NoCanary,
    #[error("the policies were not enforced within {within:?}: {}{}", canaries.join("; "), log.as_ref().map(|l| format!("; the enforcer's log ends:\n{l}")).unwrap_or_default())]
    NotEnforcing {
        within: Duration,
        canaries: Vec<String>,
        /// The enforcer's log, when one runs.
        log: Option<String>,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("the lab was handed to the run's body; the session has none left")]
    LabTaken,
}

/// A real enforcer to run: which, its program, and arguments of the user's after the lab's
/// own (they win: both enforcers take the last value of a flag).
#[derive(Clone, Debug)]
pub struct Program {
    pub kind: Real,
    pub path: PathBuf,
    pub extra_args: Vec<String>,
}

impl Program {
    /// `kind` from `given`, else the first program on PATH by its name, else the bare name
    /// (whose absence [`run`] reports).
    pub fn new(kind: Real, given: Option<&Path>, extra_args: Vec<String>) -> Self {
        let path = given.map(Path::to_owned).unwrap_or_else(|| {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(kind.as_str()))
                        .find(|p| p.is_file())
                })
                .unwrap_or_else(|| PathBuf::from(kind.as_str()))
        });
        Self {
            kind,
            path,
            extra_args,
        }
    }
}

impl Program {
    /// The program with the flags that make it read the cluster-scoped policies of
    /// `resolved` where it implements them (kube-network-policies v0.8.0: AdminNetworkPolicy
    /// and BaselineAdminNetworkPolicy v1alpha1, each behind a flag), and the kinds it does not
    /// implement, which go unenforced.
    pub fn for_scenario(
        &self,
        resolved: &Resolved,
    ) -> Result<(Program, Vec<ClusterKind>), EnforceError> {
        let declared = enforce::declared(resolved)?;
        let mut kinds: Vec<ClusterKind> =
            declared.cluster_policies.iter().map(|p| p.kind).collect();
        kinds.sort();
        kinds.dedup();
        let mut program = self.clone();
        let mut flags = Vec::new();
        let mut unimplemented = Vec::new();
        for kind in kinds {
            if !self.kind.implements(kind) {
                unimplemented.push(kind);
            } else if kind == ClusterKind::AdminNetworkPolicy {
                flags.push("--admin-network-policy".to_owned());
            } else {
                flags.push("--baseline-admin-network-policy".to_owned());
            }
        }
        // Before the user's own, which win.
        flags.append(&mut program.extra_args);
        program.extra_args = flags;
        Ok((program, unimplemented))
    }
}

/// What a real enforcer's run measured.
#[derive(Clone, Debug)]
pub struct Enforced {
    pub kind: Real,
    /// From its start until it let the canaries through, before any policy existed.
    pub ready: Duration,
    /// From the policies' creation (the request) until the start of the canary round that
    /// showed them enforced; `None` when they deny nothing a canary can try, so their
    /// enforcement cannot be seen.
    pub propagation: Option<Duration>,
    pub canaries: Vec<Canary>,
    /// Kinds of cluster-scoped policy in the scenario that it does not implement.
    pub unimplemented: Vec<ClusterKind>,
}

/// Runs the lab with `kind` enforcing its policies and records its traffic plan; see
/// [`with`].
pub async fn run(
    resolved: Resolved,
    node: Option<String>,
    program: &Program,
    api: &ApiServer,
) -> Result<(LabReport, Enforced), EnforcerError> {
    with(resolved, program, api, async |lab, shutdown| {
        Ok(run::run_on(lab, node, shutdown).await?)
    })
    .await
}

/// Runs `body` on the lab (created, not yet listening) while `program` enforces its
/// policies: a [`session`] whose first and only plan is `resolved` itself.
pub async fn with<T>(
    resolved: Resolved,
    program: &Program,
    api: &ApiServer,
    body: impl AsyncFnOnce(Lab, &mut Shutdown) -> Result<T, EnforcerError>,
) -> Result<(T, Enforced), EnforcerError> {
    let (program, unimplemented) = program.for_scenario(&resolved)?;
    session::session(resolved.clone(), &program, api, async |s| {
        let propagation = s.enforce(&resolved).await?;
        let (kind, ready, canaries) = (s.kind, s.ready, s.canaries().to_vec());
        let (lab, shutdown) = s.take_lab().ok_or(EnforcerError::LabTaken)?;
        let done = body(lab, shutdown).await?;
        Ok((
            done,
            Enforced {
                kind,
                ready,
                propagation,
                canaries,
                unimplemented,
            },
        ))
    })
    .await
}

/// The API server's socket address, from the client's configuration.
fn upstream(api: &ApiServer) -> Result<SocketAddr, EnforcerError> {
    let url = &api.config.cluster_url;
    let shown = || EnforcerError::ApiAddress {
        url: url.to_string(),
    };
    let host = url.host().ok_or_else(shown)?;
    let port = url.port_u16().unwrap_or(443);
    (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|_| shown())?
        .next()
        .ok_or_else(shown)
}

/// An error with its causes, one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
