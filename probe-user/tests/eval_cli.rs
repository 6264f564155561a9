//! `flowpol eval` through the binary: golden outputs for what people read, and bad input.
//! Set FLOWPOL_BLESS=1 to rewrite the golden files after an intended change (and review them).
mod common;
use common::{fixtures, flowpol, golden};
use std::path::PathBuf;

#[test]
fn eval_explains_every_flow() {
    let (ok, out, err) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "flows-shop.jsonl",
    ]);
    assert!(ok, "{err}");
    golden("eval-shop.jsonl", &out);
    let (ok, table, _) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "flows-shop.jsonl",
        "--output",
        "table",
    ]);
    assert!(ok);
    golden("eval-shop.txt", &table);
    assert!(
        err.contains("skipped 1 ConfigMap"),
        "skipped kinds are reported: {err}"
    );
}

#[test]
fn json_snapshots_read_the_same_as_yaml() {
    let (_, yaml, _) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "flows-shop.jsonl",
    ]);
    let (ok, json, err) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.json",
        "--flows",
        "flows-shop.jsonl",
    ]);
    assert!(ok, "{err}");
    assert_eq!(yaml, json);
}

#[test]
fn matrix_between_all_pods() {
    let (ok, out, err) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--matrix",
        "--ports",
        "8080,http,5432,53",
        "--protocols",
        "TCP,UDP",
        "--output",
        "table",
    ]);
    assert!(ok, "{err}");
    golden("matrix-shop.txt", &out);
    let (ok, json, _) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--matrix",
        "--ports",
        "8080",
        "--output",
        "json",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pods = v["pods"].as_array().unwrap();
    assert_eq!(
        pods.len(),
        6,
        "running pods with addresses, no hostNetwork, no finished or pending pods: {pods:?}"
    );
}

/// Writes a variant of the shop snapshot with `from` replaced by `to`.
fn variant(name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("cluster-shop.yaml")).unwrap();
    assert!(text.contains(from), "fixture lacks {from}");
    let dir = std::env::temp_dir().join(format!("flowpol-eval-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn bad_input_names_object_and_field() {
    let cases = [
        (
            "cidr",
            "cidr: 203.0.113.0/24",
            "cidr: 203.0.113.0/33",
            &[
                "NetworkPolicy payments/checkout-egress",
                "spec.egress[0].to[0].ipBlock.cidr",
            ][..],
        ),
        (
            "ip",
            "podIP: 10.244.1.12",
            "podIP: 10.244.1.300",
            &["Pod shop/cart-0", "status.podIP"][..],
        ),
        (
            "protocol",
            "protocol: UDP\n      targetPort: 53",
            "protocol: QUIC\n      targetPort: 53",
            &["Service kube-system/kube-dns", "spec.ports[0].protocol"][..],
        ),
        (
            "yaml",
            "kind: List",
            "kind: [List",
            &["cluster.yaml", "not valid YAML"][..],
        ),
        (
            "type",
            "hostNetwork: true",
            "hostNetwork: yes-please",
            &["Pod kube-system/kube-proxy-9xk2p"][..],
        ),
    ];
    for (name, from, to, wants) in cases {
        let path = variant(name, from, to);
        let (ok, _, err) = flowpol(&[
            "eval",
            "--cluster",
            path.to_str().unwrap(),
            "--flows",
            "flows-shop.jsonl",
        ]);
        assert!(!ok, "{name}: must fail");
        for want in wants {
            assert!(err.contains(want), "{name}: expected `{want}` in:\n{err}");
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
    let (ok, _, err) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "cluster-shop.yaml",
    ]);
    assert!(!ok && err.contains("cluster-shop.yaml:1"), "{err}");
}

#[test]
fn enrich_names_both_ends() {
    let (ok, out, err) = flowpol(&[
        "enrich",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "flows-shop.jsonl",
    ]);
    assert!(ok, "{err}");
    golden("enrich-shop.jsonl", &out);
}
