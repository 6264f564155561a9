//! The whole suite, as CI runs it.
use anyhow::{bail, Result};

use crate::setup::{cargo, sh};

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
    // Unit tests, then the privileged end-to-end tests one at a time: they share the kernel's
    // tracepoints, so parallel labs would see each other's traffic and load.
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "probe-ebpf",
        "--exclude",
        "flowpol-e2e",
    ])?;
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !root {
        bail!("the end-to-end tests load eBPF programs and create network namespaces: run `cargo xtask test` as root");
    }
    cargo(&["build", "--package", "probe-user"])?;
    let bin = std::env::current_dir()?.join("target/debug/flowpol");
    std::env::set_var("FLOWPOL_BIN", &bin);
    std::env::set_var("FLOWPOL_E2E", "required");
    cargo(&["test", "--package", "flowpol-e2e", "--", "--test-threads=1"])
}
