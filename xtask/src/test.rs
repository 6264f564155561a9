//! The whole suite, as CI runs it.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::setup::{cargo, sh};

/// Passed and failed tests, summed over every `cargo test` run.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cargo test ARGS`, echoing its output and adding up its `test result:` lines.
    fn cargo_test(&mut self, args: &[&str]) -> Result<()> {
        let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .arg("test")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run cargo test")?;
        for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
            let line = line?;
            println!("{line}");
            if let Some((passed, failed)) = parse_result(&line) {
                self.passed += passed;
                self.failed += failed;
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("`cargo test {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }
}

/// `test result: ok. 26 passed; 0 failed; ...` -> (26, 0)
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number = |word: &str| {
        rest.split("; ")
            .find_map(|p| {
                p.split_once(&format!(" {word}"))
                    .map(|(n, _)| n.rsplit(' ').next().unwrap_or(n).parse().ok())
            })
            .flatten()
    };
    Some((number("passed")?, number("failed")?))
}

pub fn run() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    sh(
        "sh",
        &["-c", "cd probe-ebpf && cargo +nightly fmt -- --check"],
    )?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "probe-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    sh(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "--package",
            "probe-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The kube-facing tests each start a real control plane from these binaries.
    let started = std::time::Instant::now();
    controlplane::Binaries::build()?;
    eprintln!(
        "xtask: control plane ({}) ready after {:.1} s",
        controlplane::versions(),
        started.elapsed().as_secs_f64()
    );
    let mut tally = Tally::default();
    // Unit tests, then the privileged end-to-end tests one at a time: they share the kernel's
    // hooks, so parallel labs would see each other's traffic and load.
    tally.cargo_test(&[
        "--workspace",
        "--exclude",
        "probe-ebpf",
        "--exclude",
        "flowpol-e2e",
    ])?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !root {
        bail!("the end-to-end tests load eBPF programs and create network namespaces: run `cargo xtask test` as root");
    }
    cargo(&["build", "--package", "probe-user"])?;
    let bin = std::env::current_dir()?.join("target/debug/flowpol");
    crate::image::build(&bin, crate::image::TEST_TAG)?;
    std::env::set_var("FLOWPOL_BIN", &bin);
    std::env::set_var("FLOWPOL_IMAGE", crate::image::TEST_TAG);
    std::env::set_var("FLOWPOL_E2E", "required");
    tally.cargo_test(&["--package", "flowpol-e2e", "--", "--test-threads=1"])?;
    println!(
        "xtask test: {} passed, {} failed",
        tally.passed, tally.failed
    );
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cargo_test_result_lines() {
        let line = "test result: ok. 26 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.08s";
        assert_eq!(super::parse_result(line), Some((26, 0)));
        assert_eq!(
            super::parse_result("test result: FAILED. 2 passed; 1 failed; 0 ignored"),
            Some((2, 1))
        );
        assert_eq!(super::parse_result("running 3 tests"), None);
    }
}
