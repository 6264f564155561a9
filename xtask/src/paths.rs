//! Where cargo puts what it builds: `$CARGO_TARGET_DIR` when set (cargo reads a relative one
//! from the current directory), else the workspace's `target/`.
use std::path::PathBuf;

use anyhow::{bail, Result};

/// The workspace's root, whatever the current directory.
pub(crate) fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is a folder of the workspace")
        .to_owned()
}

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().unwrap_or_default().join(dir)
            }
        }
        _ => workspace().join("target"),
    }
}

/// The binary `name` of `profile` (`debug`, `release`), which must have been built.
pub(crate) fn binary(profile: &str, name: &str) -> Result<PathBuf> {
    let path = target_dir().join(profile).join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist: cargo did not build {name} where xtask looks (CARGO_TARGET_DIR: {})",
            path.display(),
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "unset".into())
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named_by_its_path() {
        let e = binary("release", "no-such-binary").unwrap_err().to_string();
        assert!(e.contains("release/no-such-binary does not exist"), "{e}");
    }
}
