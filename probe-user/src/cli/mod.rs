//! Command-line interface. Each subcommand lives in its own file; errors are reported here
//! once, with their chain of causes.
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

mod agent;
mod bpf_stats;
mod compare;
mod conformance;
mod enforcing;
mod enrich;
mod eval;
mod lab;
mod probe;
mod record;
mod source;
mod suggest;
mod verify;

#[derive(Parser)]
#[command(
    name = "flowpol",
    version,
    about = "See whether your NetworkPolicies hold: observe, attribute, verify, suggest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture connections, UDP flows and drops on this node as JSON lines.
    Record(record::Args),
    /// Build a cluster stand-in from network namespaces and record its traffic plan.
    Lab(lab::Args),
    /// Name both ends of recorded flows (pod, workload, namespace, labels, service) from a snapshot or the live cluster.
    Enrich(enrich::Args),
    /// Evaluate flow records against the declared NetworkPolicies, or print the reachability matrix.
    Eval(eval::Args),
    /// Hold observed traffic against the declared policies: enforcement gaps, over-blocks, exposures.
    Verify(verify::Args),
    /// Actively probe the declared policies: attempts that must and must not get through, recorded as flows.
    Probe(probe::Args),
    /// Write the least-privilege NetworkPolicies that allow exactly the observed traffic.
    Suggest(suggest::Args),
    /// Runs of the same traffic (clusters, CNIs, enforcers) side by side: differences, or a table over labelled, repeated runs.
    Compare(compare::Args),
    /// Upstream's NetworkPolicy e2e cases in the lab under an enforcer, held against upstream's truth tables.
    Conformance(conformance::Args),
    /// Run on every node (the DaemonSet): record, name, verify continuously; export JSON lines, metrics and ObservedTraffic objects.
    Agent(agent::Args),
    /// Run counts and time of every loaded BPF program (needs kernel.bpf_stats_enabled=1).
    BpfStats(bpf_stats::Args),
}

/// The command line. Installed as `kubectl-flowpol` on the PATH, flowpol is the kubectl
/// plugin `kubectl flowpol`: named so in its help, and, like every kubectl command, using the
/// current kubeconfig context unless told otherwise (`--kube` is the default; `--cluster FILE`
/// still reads a snapshot).
fn command(plugin: bool) -> clap::Command {
    let cmd = Cli::command();
    if !plugin {
        return cmd;
    }
    let reading_clusters: Vec<String> = cmd
        .get_subcommands()
        // Not the lab's commands: they would publish its pods into the user's cluster.
        .filter(|s| {
            !["lab", "conformance"].contains(&s.get_name())
                && s.get_arguments().any(|a| a.get_id() == "kube")
        })
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut cmd = cmd.name("kubectl-flowpol").bin_name("kubectl flowpol");
    for name in reading_clusters {
        cmd = cmd.mut_subcommand(name, |s| {
            s.mut_arg("kube", |a| {
                a.default_value("true")
                    .help("Read the cluster from the API server of the current kubeconfig context (the default as a kubectl plugin)")
            })
        });
    }
    cmd
}

/// How a command prints what it found: for people, or as JSON for programs.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
    Table,
}

/// Commands whose only writing is their output: no child process fed through a pipe, no
/// records to finish.
fn only_prints(command: &Command) -> bool {
    match command {
        Command::Eval(_)
        | Command::Enrich(_)
        | Command::Verify(_)
        | Command::Compare(_)
        | Command::Suggest(_)
        | Command::BpfStats(_) => true,
        Command::Conformance(args) => args.lists(),
        Command::Record(_) | Command::Agent(_) | Command::Lab(_) | Command::Probe(_) => false,
    }
}

/// A reader that stops early (`flowpol eval ... | head`) ends the command quietly, as it
/// ends `grep`, rather than println!'s panic on EPIPE. Not for the commands that feed `nft`
/// or `iptables-restore` through pipes: there a closed pipe is an error to report, not a
/// signal to die by.
fn exit_quietly_on_closed_stdout() {
    // SAFETY: restoring a signal's default action, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub(crate) fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, not for log collectors (kubectl logs).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWPOL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let plugin = std::env::args_os().next().is_some_and(|argv0| {
        std::path::Path::new(&argv0)
            .file_stem()
            .is_some_and(|n| n == "kubectl-flowpol")
    });
    let cli = Cli::from_arg_matches(&command(plugin).get_matches()).unwrap_or_else(|e| e.exit());
    if only_prints(&cli.command) {
        exit_quietly_on_closed_stdout();
    }
    // One runtime for every command: the async ones run on it, the others on its thread.
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                match cli.command {
                    Command::Record(args) => record::run(args).await,
                    Command::Agent(args) => agent::run(args).await,
                    Command::Lab(args) => lab::run(args).await,
                    Command::BpfStats(args) => bpf_stats::run(args),
                    Command::Eval(args) => eval::run(args).await,
                    Command::Enrich(args) => enrich::run(args).await,
                    Command::Verify(args) => verify::run(args).await,
                    Command::Compare(args) => compare::run(args),
                    Command::Conformance(args) => conformance::run(args).await,
                    Command::Probe(args) => probe::run(args).await,
                    Command::Suggest(args) => suggest::run(args).await,
                }
            })
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flowpol: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
