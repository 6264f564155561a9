//! Who enforces the lab's policies: the options `lab`, `probe` and `conformance` share.
use std::path::PathBuf;

use flowpol_lab::enforcer::{Enforcer, Program};

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
