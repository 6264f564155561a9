//! A real Kubernetes control plane on loopback: kube-apiserver, kube-controller-manager and
//! kubectl built from the published `k8s.io/kubernetes` module and kine (the etcd API over
//! SQLite) as the store, all from the Go module proxy (`xtask/k8s`). `cargo xtask k8s up`
//! starts one for people; every kube-facing test starts its own, so what the API server
//! decides (validation, defaulting, structural-schema pruning, server-side apply merges,
//! RBAC, compaction) is decided by the real one. [`FaultProxy`] adds the network's faults.
mod binaries;
mod cluster;
mod pki;
mod process;
mod proxy;

pub use binaries::{cache_root, kubernetes_version, versions, Binaries};
pub use cluster::{down, kubeconfig, running, ControlPlane, Options, CONTROLLERS, SERVICE_CIDR};
pub use proxy::{FaultProxy, Mode};
