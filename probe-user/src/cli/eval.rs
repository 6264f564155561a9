//! `flowpol eval`: hold flow records against the declared NetworkPolicies, or print the
//! reachability matrix between all pods, or what each pod may open to each other over all
//! ports.
use std::{path::PathBuf, process::ExitCode};

use super::source::Source;

use anyhow::Context as _;
use flowpol_analysis::{
    attribute,
    cluster::PortRef,
    eval,
    policy::{connectivity, matrix},
    record::{self, Protocol},
};

use super::Format;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Family {
    Ipv4,
    Ipv6,
}

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    source: Source,
    /// Flow records (JSON lines) to evaluate.
    #[arg(long, required_unless_present = "table", conflicts_with = "table")]
    flows: Option<PathBuf>,
    /// Print the reachability matrix between all pods instead.
    #[arg(long, group = "table")]
    matrix: bool,
    /// Print, for each pair of pods, every protocol and port the first may open to the
    /// second (over all ports; pairs with nothing allowed left out).
    #[arg(long, group = "table")]
    connectivity: bool,
    /// Matrix ports: numbers or container port names.
    #[arg(long, value_delimiter = ',', default_value = "80", requires = "matrix")]
    ports: Vec<String>,
    /// Matrix protocols.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "TCP",
        requires = "matrix"
    )]
    protocols: Vec<String>,
    /// Matrix or connectivity address family.
    #[arg(long, value_enum, default_value = "ipv4", requires = "table")]
    family: Family,
    #[arg(long, value_enum, default_value = "json")]
    output: Format,
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snap = args.source.load("eval").await?;
    let engine = snap.engine("eval")?;
    let family = match args.family {
        Family::Ipv4 => matrix::Family::Ipv4,
        Family::Ipv6 => matrix::Family::Ipv6,
    };
    if args.connectivity {
        let pairs = connectivity::compute(&engine, family);
        match args.output {
            Format::Json => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for r in &pairs {
                    serde_json::to_writer(&mut out, r)?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
                std::io::Write::flush(&mut out)?;
            }
            Format::Table => print!("{}", connectivity::render(&pairs)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.matrix {
        let ports: Vec<PortRef> = args
            .ports
            .iter()
            .map(|p| {
                p.parse()
                    .map(PortRef::Number)
                    .unwrap_or_else(|_| PortRef::Name(p.clone()))
            })
            .collect();
        let protocols = args
            .protocols
            .iter()
            // As the flow records take them: `tcp` as well as `TCP`.
            .map(|p| {
                p.to_ascii_uppercase()
                    .parse::<Protocol>()
                    .context("--protocols")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let m = matrix::compute(&engine, &ports, &protocols, family);
        match args.output {
            Format::Json => println!("{}", serde_json::to_string(&m)?),
            Format::Table => print!("{}", m.render()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = args
        .flows
        .context("--flows is required without --matrix or --connectivity")?;
    let mut records = record::read_json_lines(&path)?;
    attribute::enrich(&snap.cluster, &mut records);
    let rows = eval::evaluate(&engine, records);
    match args.output {
        Format::Json => {
            let mut out = std::io::stdout().lock();
            for r in &rows {
                serde_json::to_writer(&mut out, r)?;
                std::io::Write::write_all(&mut out, b"\n")?;
            }
        }
        Format::Table => print!("{}", eval::table(&rows)),
    }
    Ok(ExitCode::SUCCESS)
}
