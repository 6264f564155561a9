#![allow(dead_code, reason = "each test binary uses a part of these helpers")]
//! Running the `flowpol` binary on the fixtures, and golden files.
use std::{path::PathBuf, process::Command};

use flowpol_analysis::{
    cluster::Workload,
    record::{Endpoint, EndpointKind, Identity},
};

/// A pod's end of a flow record as the agent names it: address, namespace, the workload
/// (`kind`, `name`) and the node.
pub(crate) fn pod_endpoint(ip: &str, ns: &str, kind: &str, name: &str, node: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port: None,
        identity: Identity {
            kind: Some(EndpointKind::Pod),
            namespace: Some(ns.into()),
            workload: Some(Workload {
                kind: kind.into(),
                name: name.into(),
            }),
            node: Some(node.into()),
            ..Identity::default()
        },
    }
}

pub(crate) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Runs flowpol in the fixtures directory: (success, stdout, stderr).
pub(crate) fn flowpol(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = flowpol_code(args);
    (code == Some(0), out, err)
}

/// Like [`flowpol`], with the exit code.
pub(crate) fn flowpol_code(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .current_dir(fixtures())
        .output()
        .expect("flowpol runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(name);
    if std::env::var_os("FLOWPOL_BLESS").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "FLOWPOL_BLESS under CI: goldens are reviewed, never rewritten by CI"
        );
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with FLOWPOL_BLESS=1",
            path.display()
        )
    });
    assert_eq!(
        actual,
        want,
        "output differs from {} (FLOWPOL_BLESS=1 rewrites it)",
        path.display()
    );
}

/// The shop with `policies` (cluster-scoped ones) beside its objects, in one snapshot.
pub(crate) fn shop_with(name: &str, policies: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowpol-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shop = std::fs::read_to_string(fixtures().join("cluster-shop.yaml")).unwrap();
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, format!("{shop}\n---\n{policies}")).unwrap();
    path
}

pub(crate) fn cluster_policies_text() -> String {
    std::fs::read_to_string(fixtures().join("cluster-policies-shop.yaml")).unwrap()
}
