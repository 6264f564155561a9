//! Builds the eBPF probe (probe-ebpf, for the bpf target) and leaves the object in OUT_DIR,
//! where `capture` embeds it. Needs the nightly toolchain with rust-src and bpf-linker:
//! `cargo xtask setup` installs both.
use anyhow::{anyhow, Context as _};
use aya_build::cargo_metadata::{MetadataCommand, Package};

fn main() -> anyhow::Result<()> {
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` once to install the eBPF toolchain"
        ));
    }
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let probe = metadata
        .packages
        .into_iter()
        .find(|Package { name, .. }| name == "probe-ebpf")
        .ok_or_else(|| anyhow!("probe-ebpf is not in the workspace"))?;
    // The host's flags (a fuzzer's sanitizers, a profiler's instrumentation) are not for
    // the bpf target: the nested cargo would otherwise inherit them.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        std::env::remove_var(var);
    }
    aya_build::build_ebpf([probe])
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}
