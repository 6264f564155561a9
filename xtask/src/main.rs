//! `cargo xtask`: what Cargo cannot do by itself. Sets up the eBPF toolchain (idempotently),
//! runs the demo and the whole test suite, and the benchmarks.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod image;
mod k8s;
mod paths;
mod setup;
mod test;

#[derive(Parser)]
#[command(about = "flowpol's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly with rust-src, bpf-linker, nftables,
    /// bpftrace, podman (the control plane is `cargo xtask k8s build`).
    Setup,
    /// Set up, build, and run flowpol on the built-in lab scenario.
    Demo {
        /// The same loop against a real Kubernetes control plane (built from the Go module
        /// proxy): pods published, the agent writing ObservedTraffic, verify and suggest
        /// from the cluster, the suggestion applied with kubectl.
        #[arg(long)]
        kube: bool,
    },
    /// Set up, then run formatting and lint checks, unit tests, and the privileged eBPF and
    /// lab end-to-end tests.
    Test,
    /// Benchmarks (figures for the notes).
    Bench {
        #[arg(value_enum)]
        what: bench::What,
        /// After `--`: the benchmark's own arguments (`scale`: --nodes, --pods, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A real Kubernetes control plane on 127.0.0.1, built from the Go module proxy.
    K8s {
        #[command(subcommand)]
        action: k8s::Action,
    },
    /// Write deploy/crd.yaml from the ObservedTraffic type (crates/kube/src/crd.rs).
    Crd,
    /// Run the cargo-fuzz targets of crates/fuzz (all when none is named).
    Fuzz {
        targets: Vec<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Build the container image the DaemonSet runs and save it as an OCI archive.
    Image {
        #[arg(long, default_value = concat!("ghcr.io/flowpol/flowpol:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        #[arg(long, default_value = "target/image/flowpol.oci.tar")]
        output: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo { kube } => {
            setup::run()?;
            if kube {
                demo::kube()
            } else {
                demo::run()
            }
        }
        Task::Test => {
            setup::run()?;
            test::run()
        }
        Task::Bench { what, args } => {
            setup::run()?;
            bench::run(what, &args)
        }
        Task::K8s { action } => k8s::run(action),
        Task::Fuzz { targets, seconds } => {
            setup::run()?;
            fuzz::run(&targets, seconds)
        }
        Task::Crd => {
            let path = "deploy/crd.yaml";
            std::fs::write(path, flowpol_kube::crd::crd_yaml())?;
            println!("xtask: wrote {path}");
            Ok(())
        }
        Task::Image { tag, output } => {
            setup::run()?;
            image::run(&tag, &output)
        }
    }
}
