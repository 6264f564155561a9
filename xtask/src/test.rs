//! The whole suite, as CI runs it.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::setup::{cargo, sh};

/// Test outcomes, summed over every `cargo test` run. libtest counts a test that returned
/// early as passed; the e2e helpers' `skip` lists such tests in [`SKIPS`], and they are
/// moved from passed to skipped.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS: u32 = 20;

/// Where skipped tests name themselves (FLOWPOL_SKIPS).
const SKIPS: &str = "target/xtask-skipped-tests";

/// What the pure core may not depend on: it builds and tests on stable Rust, without the
/// eBPF toolchain or an API server.
const NOT_IN_CORE: &[&str] = &["aya", "kube", "tokio", "probe-ebpf", "flowpol-node"];

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
            if let Some(r) = parse_result(&line) {
                self.passed += r.passed;
                self.failed += r.failed;
                self.ignored += r.ignored;
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("`cargo test {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// `test result: ok. 26 passed; 0 failed; 1 ignored; ...` -> 26, 0, 1
fn parse_result(line: &str) -> Option<Counts> {
    let rest = line.strip_prefix("test result: ")?;
    let number = |word: &str| {
        rest.split("; ")
            .find_map(|p| {
                p.split_once(&format!(" {word}"))
                    .map(|(n, _)| n.rsplit(' ').next().unwrap_or(n).parse().ok())
            })
            .flatten()
    };
    Some(Counts {
        passed: number("passed")?,
        failed: number("failed")?,
        ignored: number("ignored").unwrap_or(0),
    })
}

/// Longest Rust file: past it a module holds more than one thing.
const MAX_LINES: usize = 600;

/// Tracked Rust files longer than [`MAX_LINES`], with their length.
fn long_files() -> Result<Vec<(String, usize)>> {
    let out = Command::new("git")
        .args(["ls-files", "*.rs"])
        .output()
        .context("cannot run git ls-files")?;
    let mut long = Vec::new();
    for path in String::from_utf8_lossy(&out.stdout).lines() {
        let lines = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .lines()
            .count();
        if lines > MAX_LINES {
            long.push((path.to_owned(), lines));
        }
    }
    Ok(long)
}

/// The crates the pure core depends on (normal and build dependencies), by name.
fn core_dependencies() -> Result<Vec<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--package",
            "flowpol-analysis",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .context("cannot run cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

pub(crate) fn run() -> Result<()> {
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
    let impure: Vec<String> = core_dependencies()?
        .into_iter()
        .filter(|d| NOT_IN_CORE.contains(&d.as_str()))
        .collect();
    if !impure.is_empty() {
        bail!(
            "flowpol-analysis must stay pure, but depends on {}",
            impure.join(", ")
        );
    }
    let long = long_files()?;
    if !long.is_empty() {
        let listed: Vec<String> = long.iter().map(|(p, n)| format!("{p} ({n})")).collect();
        bail!(
            "Rust files over {MAX_LINES} lines: {}; split them by what they hold",
            listed.join(", ")
        );
    }
    let _ = std::fs::remove_file(SKIPS);
    std::env::set_var("FLOWPOL_SKIPS", std::env::current_dir()?.join(SKIPS));
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
    let bin = crate::paths::binary("debug", "flowpol")?;
    crate::image::build(&bin, crate::image::TEST_TAG)?;
    std::env::set_var("FLOWPOL_BIN", &bin);
    std::env::set_var("FLOWPOL_IMAGE", crate::image::TEST_TAG);
    std::env::set_var("FLOWPOL_E2E", "required");
    tally.cargo_test(&["--package", "flowpol-e2e", "--", "--test-threads=1"])?;
    // Every fuzz target, briefly: what reads untrusted bytes must not panic on them.
    crate::fuzz::run(&[], FUZZ_SECONDS)?;
    let skipped: Vec<String> = std::fs::read_to_string(SKIPS)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let skips = skipped.len() as u64;
    println!(
        "xtask test: {} passed, {} failed, {skips} skipped, {} ignored",
        tally.passed.saturating_sub(skips),
        tally.failed,
        tally.ignored
    );
    for t in &skipped {
        println!("  skipped: {t}");
    }
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    if skips > 0 || tally.ignored > 0 {
        bail!(
            "every test must run: {skips} skipped, {} ignored",
            tally.ignored
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cargo_test_result_lines() {
        let counts = |passed, failed, ignored| {
            Some(super::Counts {
                passed,
                failed,
                ignored,
            })
        };
        let line = "test result: ok. 26 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.08s";
        assert_eq!(super::parse_result(line), counts(26, 0, 3));
        assert_eq!(
            super::parse_result("test result: FAILED. 2 passed; 1 failed; 0 ignored"),
            counts(2, 1, 0)
        );
        assert_eq!(super::parse_result("running 3 tests"), None);
    }
}
