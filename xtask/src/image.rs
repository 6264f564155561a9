//! `cargo xtask image`: the container image the DaemonSet runs, built without pulling
//! anything (only package registries are reachable from here): `FROM scratch` with the
//! `flowpol` binary, the shared libraries it links (found by ldd) and the CA certificates,
//! built by podman from deploy/Containerfile and saved as an OCI archive to push with
//! `skopeo copy`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::setup::{cargo, sh};

/// The tag `cargo xtask test` builds for the end-to-end tests.
pub(crate) const TEST_TAG: &str = "localhost/flowpol:test";

/// The CA certificates, where Debian keeps them and rustls looks for them.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the release binary, the image `tag`, and saves it to `output`.
pub(crate) fn run(tag: &str, output: &Path) -> Result<()> {
    cargo(&["build", "--release", "--package", "probe-user"])?;
    build(&crate::paths::binary("release", "flowpol")?, tag)?;
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(output);
    let out = output.to_str().context("output path is not UTF-8")?;
    sh(
        "podman",
        &["save", "--format", "oci-archive", "--output", out, tag],
    )?;
    println!(
        "xtask image: {tag} saved to {out}; push it with `skopeo copy oci-archive:{out} docker://<registry>/flowpol:<version>`"
    );
    Ok(())
}

/// Builds the image `tag` holding `binary` (debug information stripped).
pub(crate) fn build(binary: &Path, tag: &str) -> Result<()> {
    let context = PathBuf::from("target/image");
    let rootfs = context.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing {}", rootfs.display()))?;
    }
    for dir in ["usr/local/bin", "var/lib/flowpol", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let bin = rootfs.join("usr/local/bin/flowpol");
    sh(
        "objcopy",
        &[
            "--strip-debug",
            binary.to_str().context("binary path is not UTF-8")?,
            bin.to_str().context("image path is not UTF-8")?,
        ],
    )?;
    for lib in libraries(binary)? {
        let dest = rootfs.join(lib.strip_prefix("/").expect("ldd paths are absolute"));
        std::fs::create_dir_all(dest.parent().expect("a library has a directory"))?;
        // The file itself, not the symlink: the image has nothing else to point to.
        std::fs::copy(&lib, &dest)
            .with_context(|| format!("copying {} into the image", lib.display()))?;
    }
    // The kube client's TLS loads the system's roots even when the cluster's CA is given.
    let roots = Path::new(CA_BUNDLE);
    if !roots.exists() {
        bail!("{CA_BUNDLE} is missing: install Debian's ca-certificates");
    }
    std::fs::create_dir_all(rootfs.join("etc/ssl/certs"))?;
    std::fs::copy(roots, rootfs.join(CA_BUNDLE.trim_start_matches('/')))
        .with_context(|| format!("copying {CA_BUNDLE} into the image"))?;
    sh(
        "podman",
        &[
            "build",
            "--quiet",
            "--tag",
            tag,
            "--file",
            "deploy/Containerfile",
            context.to_str().expect("a UTF-8 path"),
        ],
    )
}

/// The shared libraries `binary` loads, as ldd resolves them on this machine.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` lines to paths; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f86)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f86)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f86)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
