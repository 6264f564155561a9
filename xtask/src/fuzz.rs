//! `cargo xtask fuzz [TARGET] [--seconds N]`: the cargo-fuzz targets of crates/fuzz (the
//! ring-buffer decoder past its version check, the snapshot reader, the scenario reader,
//! ObservedTraffic objects), each run for a while from seeds taken from the fixtures. `cargo
//! xtask test` runs every target briefly. cargo-fuzz is installed when missing.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const DIR: &str = "crates/fuzz";

/// Each target, and the files its corpus starts from.
pub(crate) const TARGETS: &[(&str, &[&str])] = &[
    ("decode", &[]),
    (
        "snapshot",
        &[
            "tests/fixtures/cluster-shop.yaml",
            "tests/fixtures/cluster-shop.json",
        ],
    ),
    ("scenario", &["crates/lab/scenarios/shop.yaml"]),
    ("observed", &[]),
];

fn cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Runs `targets` (all when empty) for `seconds` each; fails on the first crash.
pub(crate) fn run(targets: &[String], seconds: u32) -> Result<()> {
    cargo_fuzz()?;
    let chosen: Vec<&(&str, &[&str])> = if targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        targets
            .iter()
            .map(|t| {
                TARGETS
                    .iter()
                    .find(|(name, _)| name == t)
                    .with_context(|| format!("no fuzz target `{t}`"))
            })
            .collect::<Result<_>>()?
    };
    for (name, seeds) in chosen {
        let corpus = PathBuf::from("target/fuzz-corpus").join(name);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        for seed in *seeds {
            let file = Path::new(seed);
            let to = corpus.join(file.file_name().context("a seed file name")?);
            std::fs::copy(file, &to).with_context(|| format!("copying seed {seed}"))?;
        }
        eprintln!("xtask: fuzzing {name} for {seconds} s");
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "--fuzz-dir", DIR, name])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")])
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {name} failed ({status}); the crashing input is under {DIR}/artifacts/{name}");
        }
    }
    Ok(())
}
