//! `cargo xtask k8s build|up|down|env`: a real control plane for people (the tests start
//! their own). `up` builds what is missing, starts kine, kube-apiserver and
//! kube-controller-manager on 127.0.0.1 with their state in `target/k8s`, and leaves them
//! running; `env` prints the shell lines that point kubectl and flowpol at it; `down` stops
//! them and removes the folder.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;
use controlplane::{Binaries, ControlPlane, Options};

#[derive(Subcommand)]
pub(crate) enum Action {
    /// Build kube-apiserver, kube-controller-manager, kubectl and kine into the cache.
    Build,
    /// Start the control plane (idempotent: one already running is kept).
    Up,
    /// Print `export` lines for the shell: `eval "$(cargo xtask k8s env)"`.
    Env,
    /// Stop the control plane and remove what `up` created.
    Down,
}

/// Where `up` keeps the control plane of this checkout.
pub(crate) fn dir() -> PathBuf {
    crate::paths::target_dir().join("k8s")
}

fn env_lines(state: &serde_json::Value) -> String {
    format!(
        "export KUBECONFIG={}\nexport PATH={}:$PATH\n",
        state["kubeconfig"].as_str().unwrap_or_default(),
        state["bin"].as_str().unwrap_or_default()
    )
}

pub(crate) fn run(action: Action) -> Result<()> {
    let dir = dir();
    match action {
        Action::Build => {
            let bins = Binaries::build()?;
            eprintln!(
                "xtask: {} built in {}",
                controlplane::versions(),
                bins.bin_dir().display()
            );
        }
        Action::Up => {
            if let Some(state) = controlplane::running(&dir) {
                eprintln!(
                    "xtask: the control plane is already up ({})",
                    state["server"]
                );
                return Ok(());
            }
            // Whatever an earlier `up` left behind (stopped processes, a stale folder).
            controlplane::down(&dir)?;
            Binaries::build()?;
            let cp = ControlPlane::start(Options {
                dir: Some(dir.clone()),
                detach: true,
                ..Options::default()
            })?;
            let server = cp.server();
            cp.detach()?;
            eprintln!(
                "xtask: {} up at {server}; use it with: eval \"$(cargo xtask k8s env)\"",
                controlplane::versions()
            );
        }
        Action::Env => match controlplane::running(&dir) {
            Some(state) => print!("{}", env_lines(&state)),
            None => bail!(
                "no control plane is up in {}: run `cargo xtask k8s up`",
                dir.display()
            ),
        },
        Action::Down => {
            if controlplane::down(&dir)? {
                eprintln!("xtask: control plane stopped, {} removed", dir.display());
            } else {
                eprintln!("xtask: no control plane was up");
            }
        }
    }
    Ok(())
}
