//! The control plane's programs, built with the ordinary `go` command from the Go module
//! proxy into a cache outside the repository. The Go modules in `xtask/k8s` pin every version
//! (their go.sum every hash); the cache is keyed by the upstream version and by those files'
//! content, so a warm cache costs nothing and a changed go.mod builds anew.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// One Go module of `xtask/k8s` and the commands built from it.
struct Module {
    /// Its folder under `xtask/k8s`, and the cache entry's name.
    dir: &'static str,
    go_mod: &'static str,
    go_sum: &'static str,
    /// The upstream module whose version names the build.
    upstream: &'static str,
    /// (command, package)
    commands: &'static [(&'static str, &'static str)],
    /// Packages whose version variables the linker sets (`-X pkg.var=...`), and how they
    /// are named.
    version_packages: &'static [&'static str],
    version_vars: VersionVars,
}

/// How a module names the variables that hold its version.
#[derive(Clone, Copy, PartialEq)]
enum VersionVars {
    /// `gitVersion`, `gitMajor`, `gitMinor`, `gitTreeState`, `buildDate` (hack/lib/version.sh).
    Kubernetes,
    /// `Version` and `BuildDate` (kine has only the first; the linker skips what is absent).
    Plain,
}

const KUBERNETES: Module = Module {
    dir: "kubernetes",
    go_mod: include_str!("../../k8s/kubernetes/go.mod"),
    go_sum: include_str!("../../k8s/kubernetes/go.sum"),
    upstream: "k8s.io/kubernetes",
    commands: &[
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        (
            "kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
        ),
        ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    ],
    // As upstream's hack/lib/version.sh sets them, so `--version` tells the truth.
    version_packages: &[
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ],
    version_vars: VersionVars::Kubernetes,
};

const KINE: Module = Module {
    dir: "kine",
    go_mod: include_str!("../../k8s/kine/go.mod"),
    go_sum: include_str!("../../k8s/kine/go.sum"),
    upstream: "github.com/k3s-io/kine",
    commands: &[("kine", "github.com/k3s-io/kine")],
    version_packages: &["github.com/k3s-io/kine/pkg/version"],
    version_vars: VersionVars::Plain,
};

/// The SIG Network reference NetworkPolicy enforcer (userspace verdicts over NFQUEUE).
const KUBE_NETWORK_POLICIES: Module = Module {
    dir: "kube-network-policies",
    go_mod: include_str!("../../k8s/kube-network-policies/go.mod"),
    go_sum: include_str!("../../k8s/kube-network-policies/go.sum"),
    upstream: "sigs.k8s.io/kube-network-policies",
    commands: &[(
        "kube-network-policies",
        "sigs.k8s.io/kube-network-policies/cmd",
    )],
    version_packages: &[],
    version_vars: VersionVars::Plain,
};

/// kube-router, run as its network policy controller only (iptables and ipset).
const KUBE_ROUTER: Module = Module {
    dir: "kube-router",
    go_mod: include_str!("../../k8s/kube-router/go.mod"),
    go_sum: include_str!("../../k8s/kube-router/go.sum"),
    upstream: "github.com/cloudnativelabs/kube-router/v2",
    commands: &[(
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
    )],
    version_packages: &["github.com/cloudnativelabs/kube-router/v2/pkg/version"],
    version_vars: VersionVars::Plain,
};

/// Everything built from `xtask/k8s`, in build order.
const MODULES: [&Module; 4] = [&KUBERNETES, &KINE, &KUBE_NETWORK_POLICIES, &KUBE_ROUTER];

/// The version `go.mod` requires of `module` (`\tk8s.io/kubernetes v1.37.2 // indirect`).
fn required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim().strip_prefix("require ").unwrap_or(line.trim());
        let mut words = line.split_whitespace();
        (words.next()? == module)
            .then(|| words.next().map(str::to_owned))
            .flatten()
    })
}

/// Changes whenever the way binaries are built changes, so old cache entries are not reused.
const RECIPE: &str = "CGO_ENABLED=0 -trimpath version-ldflags 1";

/// FNV-1a: a stable content hash (std's hashers may change between Rust releases).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Module {
    fn version(&self) -> String {
        required_version(self.go_mod, self.upstream).unwrap_or_else(|| {
            panic!(
                "xtask/k8s/{}/go.mod requires no {}",
                self.dir, self.upstream
            )
        })
    }

    fn source(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../k8s")
            .join(self.dir)
    }

    /// The cache entry: `<cache>/k8s/<dir>-<version>-<hash of go.mod, go.sum and the recipe>`.
    fn entry(&self) -> PathBuf {
        let hash = fnv1a(&[self.go_mod, self.go_sum, RECIPE]);
        cache_root().join("k8s").join(format!(
            "{}-{}-{:08x}",
            self.dir,
            self.version(),
            hash as u32
        ))
    }

    fn binary(&self, command: &str) -> PathBuf {
        self.entry().join("bin").join(command)
    }

    fn built(&self) -> bool {
        self.commands.iter().all(|(c, _)| self.binary(c).is_file())
    }

    /// `-X` flags that give the binaries their real version and the release's date.
    fn ldflags(&self, version: &str, time: &str) -> String {
        let mut vars = Vec::new();
        match self.version_vars {
            VersionVars::Kubernetes => {
                vars.push(("gitVersion", version.to_owned()));
                vars.push(("gitTreeState", "clean".into()));
                if let Some((major, minor)) = version
                    .strip_prefix('v')
                    .and_then(|v| v.split_once('.'))
                    .map(|(major, rest)| (major, rest.split('.').next().unwrap_or_default()))
                {
                    vars.push(("gitMajor", major.to_owned()));
                    vars.push(("gitMinor", minor.to_owned()));
                }
                vars.push(("buildDate", time.to_owned()));
            }
            VersionVars::Plain => {
                vars.push(("Version", version.to_owned()));
                vars.push(("BuildDate", time.to_owned()));
            }
        }
        let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
        for package in self.version_packages {
            for (var, value) in &vars {
                flags.push(format!("-X {package}.{var}={value}"));
            }
        }
        flags.join(" ")
    }

    fn build(&self) -> Result<()> {
        if self.built() {
            return Ok(());
        }
        self.build_into(&self.entry(), &Go::default())
    }

    /// Builds the commands into `entry` with `go`.
    fn build_into(&self, entry: &Path, go_cmd: &Go) -> Result<()> {
        let version = self.version();
        let dir = self.source();
        let names: Vec<&str> = self.commands.iter().map(|(c, _)| *c).collect();
        eprintln!(
            "controlplane: building {} ({} {version}) from the Go module proxy into {}",
            names.join(", "),
            self.upstream,
            entry.display()
        );
        let go = |args: &[&str]| {
            let mut c = Command::new(&go_cmd.program);
            c.args(args)
                .current_dir(&dir)
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", "-mod=readonly")
                .envs(go_cmd.env.iter().map(|(k, v)| (k, v)));
            c
        };
        let out = go(&["version"]).output().with_context(|| {
            format!(
                "building the Kubernetes control plane needs Go: `{}` cannot be run (install Go 1.26 or newer)",
                go_cmd.program
            )
        })?;
        if !out.status.success() {
            bail!(
                "`go version` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let proxy = go(&["env", "GOPROXY"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let out = go(&["mod", "download"])
            .output()
            .context("cannot run `go mod download`")?;
        if !out.status.success() {
            bail!(
                "cannot download {} {version} and its dependencies from the Go module proxy (GOPROXY={proxy}), in {}:\n{}",
                self.upstream,
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let out = go(&["list", "-m", "-f", "{{.Time}}", self.upstream]).output()?;
        let time = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let time = chrono_like(&time);
        let tmp = entry.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("bin"))
            .with_context(|| format!("creating {}", tmp.display()))?;
        let packages: Vec<&str> = self.commands.iter().map(|(_, p)| *p).collect();
        let mut args = vec![
            "build".to_owned(),
            "-trimpath".to_owned(),
            format!("-ldflags={}", self.ldflags(&version, &time)),
            "-o".to_owned(),
            // One command is named for itself (its package may be called `cmd`).
            match self.commands {
                [(command, _)] => tmp.join("bin").join(command).display().to_string(),
                _ => format!("{}/", tmp.join("bin").display()),
            },
        ];
        args.extend(packages.iter().map(|p| p.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let status = go(&args).status().context("cannot run `go build`")?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            bail!(
                "`go build` of {} failed ({status}) in {}",
                names.join(", "),
                dir.display()
            );
        }
        // Whole or not at all: a build cut short leaves no entry that looks complete.
        let _ = std::fs::remove_dir_all(entry);
        std::fs::rename(&tmp, entry)
            .with_context(|| format!("moving {} to {}", tmp.display(), entry.display()))?;
        Ok(())
    }
}

mod crds;
use crds::{
    ADMIN_NETWORK_POLICY, BASELINE_ADMIN_NETWORK_POLICY, CILIUM, CLUSTER_NETWORK_POLICY, CRDS,
};

/// The go command and what its environment changes.
struct Go {
    program: String,
    env: Vec<(String, String)>,
}

impl Default for Go {
    fn default() -> Self {
        Go {
            program: "go".into(),
            env: Vec::new(),
        }
    }
}

/// `2026-10-27 12:01:04 +0000 UTC` (Go's time format) as `2026-10-27T12:01:04Z`.
fn chrono_like(go_time: &str) -> String {
    let mut words = go_time.split_whitespace();
    match (words.next(), words.next()) {
        (Some(date), Some(time)) => format!("{date}T{time}Z"),
        _ => "1970-01-01T00:00:00Z".into(),
    }
}

/// Where built binaries are kept: `$FLOWPOL_CACHE`, else `$XDG_CACHE_HOME/flowpol`, else
/// `~/.cache/flowpol`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOWPOL_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("flowpol");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/flowpol")
}

/// The control plane's programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub kine: PathBuf,
    /// Cilium's CiliumNetworkPolicy CRD (YAML).
    pub cilium_crd: PathBuf,
    /// network-policy-api's CRDs (YAML): ClusterNetworkPolicy, AdminNetworkPolicy and
    /// BaselineAdminNetworkPolicy.
    pub cluster_policy_crds: [PathBuf; 3],
    /// The real NetworkPolicy enforcers the lab can run in place of its own.
    pub kube_network_policies: PathBuf,
    pub kube_router: PathBuf,
}

impl Binaries {
    /// Where the binaries of this checkout's versions are, built or not.
    pub fn cached() -> Binaries {
        Binaries {
            kube_apiserver: KUBERNETES.binary("kube-apiserver"),
            kube_controller_manager: KUBERNETES.binary("kube-controller-manager"),
            kubectl: KUBERNETES.binary("kubectl"),
            kine: KINE.binary("kine"),
            cilium_crd: CILIUM.path(),
            cluster_policy_crds: [
                CLUSTER_NETWORK_POLICY.path(),
                ADMIN_NETWORK_POLICY.path(),
                BASELINE_ADMIN_NETWORK_POLICY.path(),
            ],
            kube_network_policies: KUBE_NETWORK_POLICIES.binary("kube-network-policies"),
            kube_router: KUBE_ROUTER.binary("kube-router"),
        }
    }

    /// The built binaries, or an error that says how to build them.
    pub fn find() -> Result<Binaries> {
        if MODULES.iter().all(|m| m.built()) && CRDS.iter().all(|c| c.path().is_file()) {
            return Ok(Self::cached());
        }
        bail!(
            "the Kubernetes control plane ({}) is not built in {}: run `cargo xtask k8s build` \
             (`cargo xtask test` builds it too)",
            versions(),
            cache_root().join("k8s").display()
        )
    }

    /// Builds what is missing (a cold build takes about ten minutes on two cores), then
    /// returns the binaries.
    pub fn build() -> Result<Binaries> {
        for module in MODULES {
            module.build()?;
        }
        for crd in CRDS {
            crd.fetch()?;
        }
        Ok(Self::cached())
    }

    /// The folder holding kubectl, for `PATH`.
    pub fn bin_dir(&self) -> &Path {
        self.kubectl.parent().expect("binaries live in a folder")
    }
}

/// `kubernetes v1.37.2, kine v0.17.5, ...`
pub fn versions() -> String {
    let modules: Vec<String> = MODULES
        .iter()
        .map(|m| format!("{} {}", m.dir, m.version()))
        .collect();
    format!(
        "{}, cilium CRDs {}, network-policy-api CRDs {} and {}",
        modules.join(", "),
        CILIUM.version,
        CLUSTER_NETWORK_POLICY.version,
        ADMIN_NETWORK_POLICY.version
    )
}

/// The Kubernetes version built (`v1.37.2`).
pub fn kubernetes_version() -> String {
    KUBERNETES.version()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_committed_go_mods() {
        assert_eq!(
            required_version(
                "require (\n\tk8s.io/kubernetes v1.37.2 // indirect\n)",
                "k8s.io/kubernetes"
            ),
            Some("v1.37.2".into())
        );
        assert_eq!(
            required_version(
                "require github.com/k3s-io/kine v0.17.5\n",
                "github.com/k3s-io/kine"
            ),
            Some("v0.17.5".into())
        );
        assert_eq!(
            required_version("require k8s.io/kubernetes-x v1\n", "k8s.io/kubernetes"),
            None
        );
        // The committed modules: a v1.37 release of Kubernetes, and kine.
        assert!(
            KUBERNETES.version().starts_with("v1.37."),
            "{}",
            KUBERNETES.version()
        );
        assert!(KINE.version().starts_with('v'));
    }

    #[test]
    fn every_staging_module_is_replaced_by_its_published_tag() {
        // gen-go-mod.sh's output: each k8s.io module k8s.io/kubernetes requires at v0.0.0 is
        // replaced by v0.<minor>.<patch> of the same release.
        let v = KUBERNETES.version();
        let staging = format!("v0.{}", v.strip_prefix("v1.").unwrap());
        let replaced: Vec<&str> = KUBERNETES
            .go_mod
            .lines()
            .filter_map(|l| l.trim().split_once(" => "))
            .map(|(from, to)| {
                assert_eq!(to, format!("{from} {staging}"), "{from}");
                from
            })
            .collect();
        for must in [
            "k8s.io/api",
            "k8s.io/client-go",
            "k8s.io/apiserver",
            "k8s.io/streaming",
            "k8s.io/cri-streaming",
        ] {
            assert!(replaced.contains(&must), "{must} is not replaced");
        }
    }

    #[test]
    fn ldflags_set_the_real_version() {
        let k = KUBERNETES.ldflags("v1.37.2", "2026-10-27T12:01:04Z");
        assert!(
            k.contains("-X k8s.io/component-base/version.gitVersion=v1.37.2"),
            "{k}"
        );
        assert!(
            k.contains("-X k8s.io/client-go/pkg/version.gitMinor=37"),
            "{k}"
        );
        assert!(!k.contains(".Version="), "{k}");
        let kine = KINE.ldflags("v0.17.5", "x");
        assert_eq!(
            kine,
            "-s -w -X github.com/k3s-io/kine/pkg/version.Version=v0.17.5 \
             -X github.com/k3s-io/kine/pkg/version.BuildDate=x"
        );
        assert_eq!(
            chrono_like("2026-10-27 12:01:04 +0000 UTC"),
            "2026-10-27T12:01:04Z"
        );
    }

    #[test]
    fn a_missing_go_or_proxy_is_named_and_leaves_no_entry() {
        let tmp = std::env::temp_dir().join(format!("controlplane-nogo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let entry = tmp.join("entry");
        let no_go = Go {
            program: "/nonexistent/go".into(),
            env: Vec::new(),
        };
        let err = format!("{:#}", KINE.build_into(&entry, &no_go).unwrap_err());
        assert!(
            err.contains("needs Go: `/nonexistent/go` cannot be run"),
            "{err}"
        );
        // A machine that cannot reach the proxy (and has nothing cached).
        let offline = Go {
            program: "go".into(),
            env: vec![
                ("GOPROXY".into(), "off".into()),
                (
                    "GOMODCACHE".into(),
                    tmp.join("modcache").display().to_string(),
                ),
            ],
        };
        let err = format!("{:#}", KINE.build_into(&entry, &offline).unwrap_err());
        assert!(
            err.contains("cannot download github.com/k3s-io/kine v0.17.5")
                && err.contains("GOPROXY=off"),
            "{err}"
        );
        assert!(!entry.exists(), "nothing half-built is left");
        // Module caches are read-only; make them removable.
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&tmp).status();
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn the_cache_key_changes_with_the_modules() {
        assert_ne!(fnv1a(&["a", "b"]), fnv1a(&["ab", ""]));
        assert_eq!(fnv1a(&["go.mod"]), fnv1a(&["go.mod"]));
    }
}
