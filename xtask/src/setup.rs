//! The eBPF toolchain and system tools, installed idempotently. The recipe: nightly's
//! rust-src for `-Z build-std=core`, and bpf-linker built against the LLVM that the Rust
//! toolchain ships (its `llvm-NN` feature derived from `rustc -vV`), since prebuilt
//! binaries cannot be downloaded here.
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command, failing with the command line when it fails.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    sh(
        &std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        args,
    )
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The LLVM major version a toolchain was built with (`LLVM version: 22.1.4` -> 22).
pub(crate) fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}

pub(crate) fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    system_tools()?;
    Ok(())
}

/// The nightly toolchain with what the eBPF build and its checks use: rust-src for
/// `-Z build-std=core`, rustfmt and clippy. Installed when a machine lacks it.
fn rust_src() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("the eBPF build needs rustup (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        sh(
            "rustup",
            &[
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src,rustfmt,clippy",
            ],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    for component in ["rust-src", "rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("xtask: installing {component} for nightly");
            sh(
                "rustup",
                &["component", "add", component, "--toolchain", "nightly"],
            )?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if have("bpf-linker")
        && Command::new("bpf-linker")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        return Ok(());
    }
    let vv = output("rustc", &["+nightly", "-vV"])?;
    let major =
        llvm_major(&vv).context("cannot read the LLVM version from `rustc +nightly -vV`")?;
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?
        .trim()
        .to_owned();
    let lib = std::path::Path::new(&sysroot).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| {
            format!(
                "no libLLVM-*.so in {}: the toolchain ships no shared LLVM",
                lib.display()
            )
        })?;
    let so = so
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    eprintln!("xtask: building bpf-linker against the toolchain's LLVM {major} ({so})");
    let rustflags = format!(
        "-C link-arg=-L{0} -C link-arg=-l{so} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    let feature = format!("llvm-{major},no-llvm-linking");
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &feature,
        ])
        .env("RUSTFLAGS", rustflags)
        .status()?;
    if !status.success() {
        bail!("installing bpf-linker failed ({status})");
    }
    Ok(())
}

/// Debian packages the lab, the tests and the benchmarks use; installed when missing and we are root.
fn system_tools() -> Result<()> {
    let wanted = [
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("bpftrace", "bpftrace"),
        // The container image (built and run by the tests); runc, as crun refuses hosts
        // with cgroup v1 controllers mounted beside cgroup2.
        ("podman", "podman"),
        ("runc", "runc"),
        ("objcopy", "binutils"),
        // The lab's real enforcers: kube-router's iptables and ipset, and the
        // iptables-legacy NFQUEUE rules that feed kube-network-policies.
        ("iptables-legacy", "iptables"),
        ("ipset", "ipset"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "missing tools ({}) and no apt-get to install them",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    sh("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(super::llvm_major(vv), Some(22));
        assert_eq!(super::llvm_major("rustc 1.0\n"), None);
    }
}
