//! CustomResourceDefinitions the tests install, copied out of the Go modules that publish them.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::cache_root;

/// A CustomResourceDefinition published inside a Go module: downloaded, and checked against
/// the checksum database, by `go mod download`.
pub(super) struct Crd {
    pub(super) module: &'static str,
    pub(super) version: &'static str,
    /// The file inside the module.
    pub(super) file: &'static str,
}

/// Cilium's CiliumNetworkPolicy CRD (the module holds the generated schema the operator
/// installs), for holding `flowpol suggest --format cilium` against it.
pub(super) const CILIUM: Crd = Crd {
    module: "github.com/cilium/cilium",
    version: "v1.20.2",
    file: "pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml",
};

/// network-policy-api's ClusterNetworkPolicy, experimental channel (every field): v0.3.0 is
/// the newest release, serving v1alpha2 and v1beta1.
pub(super) const CLUSTER_NETWORK_POLICY: Crd = Crd {
    module: "sigs.k8s.io/network-policy-api",
    version: "v0.3.0",
    file: "config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml",
};

/// AdminNetworkPolicy and BaselineAdminNetworkPolicy v1alpha1: v0.1.7 is their last release.
pub(super) const ADMIN_NETWORK_POLICY: Crd = Crd {
    module: "sigs.k8s.io/network-policy-api",
    version: "v0.1.7",
    file: "config/crd/experimental/policy.networking.k8s.io_adminnetworkpolicies.yaml",
};

pub(super) const BASELINE_ADMIN_NETWORK_POLICY: Crd = Crd {
    module: "sigs.k8s.io/network-policy-api",
    version: "v0.1.7",
    file: "config/crd/experimental/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml",
};

pub(super) const CRDS: [&Crd; 4] = [
    &CILIUM,
    &CLUSTER_NETWORK_POLICY,
    &ADMIN_NETWORK_POLICY,
    &BASELINE_ADMIN_NETWORK_POLICY,
];

impl Crd {
    pub(super) fn path(&self) -> PathBuf {
        let short = self.module.rsplit('/').next().unwrap_or(self.module);
        let name = self.file.rsplit('/').next().unwrap_or(self.file);
        cache_root()
            .join("k8s")
            .join(format!("{short}-{}", self.version))
            .join(name)
    }

    /// Copies the CRD out of its module, unless it is there already.
    pub(super) fn fetch(&self) -> Result<()> {
        let dest = self.path();
        if dest.is_file() {
            return Ok(());
        }
        let Crd {
            module,
            version,
            file,
        } = self;
        let out = Command::new("go")
            .args(["mod", "download", "-json", &format!("{module}@{version}")])
            .current_dir(std::env::temp_dir())
            .env("GO111MODULE", "on")
            .output()
            .context("building the control plane needs Go: `go` is not on PATH")?;
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let Some(dir) = info["Dir"].as_str().filter(|_| out.status.success()) else {
            bail!(
                "cannot download {module}@{version} from the Go module proxy: {}{}",
                info["Error"].as_str().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        let parent = dest.parent().expect("a file in a folder");
        std::fs::create_dir_all(parent)?;
        let tmp = dest.with_extension("tmp");
        std::fs::copy(Path::new(dir).join(file), &tmp)
            .with_context(|| format!("{module}@{version} has no {file}"))?;
        std::fs::rename(&tmp, &dest)?;
        Ok(())
    }
}
