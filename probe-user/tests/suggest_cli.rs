//! `flowpol suggest` through the binary on the shop fixtures: the golden YAML, its validity,
//! completeness (every observed flow that got through is allowed) and tightness, filters
//! and the diff mode.
mod common;
use common::{cluster_policies_text, fixtures, flowpol, golden, shop_with};

use flowpol_analysis::{
    attribute,
    cluster::snapshot,
    policy::{self, engine::Engine},
    record, suggest,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;

const ARGS: [&str; 5] = [
    "suggest",
    "--cluster",
    "cluster-shop.yaml",
    "--flows",
    "flows-shop.jsonl",
];

fn parse(yaml: &str) -> Vec<NetworkPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let np: NetworkPolicy =
                serde::Deserialize::deserialize(doc).expect("each document is a NetworkPolicy");
            np
        })
        .collect()
}

#[test]
fn suggestion_is_golden_deterministic_and_valid() {
    let (ok, out, err) = flowpol(&[&ARGS[..], &["--explain"]].concat());
    assert!(ok, "{err}");
    golden("suggest-shop.yaml", &out);
    let (_, again, _) = flowpol(&[&ARGS[..], &["--explain"]].concat());
    assert_eq!(out, again, "same input, byte-identical output");
    let policies = parse(&out);
    assert_eq!(policies.len(), 11);
    for np in &policies {
        policy::compile(np).unwrap_or_else(|e| panic!("suggested policy invalid: {e}"));
        let yaml = serde_yaml::to_string(np).unwrap();
        for volatile in suggest::VOLATILE_LABELS {
            assert!(
                !yaml.contains(volatile),
                "{volatile} in a selector:\n{yaml}"
            );
        }
    }
    assert!(err.contains("none denied"), "{err}");
    assert!(err.contains("excess: 0 "), "{err}");
}

/// Completeness, checked here independently of the command's own replay: existing plus
/// suggested policies allow every record that got through.
#[test]
fn replaying_the_flows_through_the_suggestion_denies_none() {
    let (ok, out, err) = flowpol(&ARGS);
    assert!(ok, "{err}");
    let snap = snapshot::load(&fixtures().join("cluster-shop.yaml")).unwrap();
    let mut records = record::read_json_lines(&fixtures().join("flows-shop.jsonl")).unwrap();
    attribute::enrich(&snap.cluster, &mut records);
    let existing: Vec<_> = snap
        .policies
        .iter()
        .map(|p| policy::compile(p).unwrap())
        .collect();
    let before = suggest::denied(&Engine::new(&snap.cluster, existing.clone()), &records);
    assert!(
        !before.is_empty(),
        "the fixture has flows today's policies deny"
    );
    let suggested: Vec<_> = parse(&out)
        .iter()
        .map(|p| policy::compile(p).unwrap())
        .collect();
    let engine = Engine::new(
        &snap.cluster,
        existing.into_iter().chain(suggested).collect(),
    );
    let after = suggest::denied(&engine, &records);
    assert!(after.is_empty(), "denied after the suggestion: {after:#?}");
}

#[test]
fn peers_are_workloads_dns_by_service_selector_and_the_api_server_by_address() {
    let (ok, out, err) = flowpol(&ARGS);
    assert!(ok, "{err}");
    let policies = parse(&out);
    let named = |ns: &str, name: &str| {
        policies
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .unwrap_or_else(|| panic!("no policy {ns}/{name}"))
    };
    let web = serde_yaml::to_string(named("shop", "allow-web")).unwrap();
    // DNS through the kube-dns Service: its selector, not its own labels.
    assert!(web.contains("k8s-app: kube-dns"), "{web}");
    let checkout = serde_yaml::to_string(named("payments", "allow-checkout")).unwrap();
    assert!(checkout.contains("cidr: 192.168.10.5/32"), "{checkout}");
    assert!(
        checkout.contains("endpoint of service default/kubernetes"),
        "{checkout}"
    );
    assert!(checkout.contains("cidr: 203.0.113.10/32"), "{checkout}");
    // Another node (a hostNetwork pod there) as an annotated ipBlock; the pod's own node
    // (192.168.10.11: kubelet probes) needs no rule.
    assert!(web.contains("cidr: 192.168.10.12/32"), "{web}");
    assert!(web.contains("192.168.10.12 is node node-b"), "{web}");
    assert!(!web.contains("192.168.10.11"), "{web}");
    // Every namespace with observed workloads gets a default deny.
    for ns in ["shop", "payments", "data", "kube-system", "ingress-nginx"] {
        named(ns, "default-deny");
    }
}

#[test]
fn namespace_filter_and_diff_mode() {
    let (ok, out, err) = flowpol(&[&ARGS[..], &["--namespace", "shop"]].concat());
    assert!(ok, "{err}");
    let policies = parse(&out);
    assert!(policies
        .iter()
        .all(|p| p.metadata.namespace.as_deref() == Some("shop")));
    assert_eq!(policies.len(), 3, "default deny, web, cart");
    // Diff: only what today's policies lack, no default deny, and what one would break.
    let (ok, out, err) = flowpol(&[&ARGS[..], &["--diff"]].concat());
    assert!(ok, "{err}");
    let missing = parse(&out);
    assert!(missing
        .iter()
        .all(|p| p.metadata.name.as_deref() != Some("default-deny")));
    assert!(
        missing.len() < 11 && !missing.is_empty(),
        "{}",
        missing.len()
    );
    assert!(err.contains("would break"), "{err}");
}

#[test]
fn cilium_output_names_entities_and_proxies_dns() {
    let (ok, out, err) = flowpol(&[&ARGS[..], &["--format", "cilium"]].concat());
    assert!(ok, "{err}");
    golden("suggest-shop-cilium.yaml", &out);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 11, "the same policies as NetworkPolicies");
    assert!(docs.iter().all(|d| d["apiVersion"] == "cilium.io/v2"));
    let named = |ns: &str, name: &str| {
        docs.iter()
            .find(|d| d["metadata"]["namespace"] == ns && d["metadata"]["name"] == name)
            .unwrap()
    };
    let deny = named("shop", "default-deny");
    assert_eq!(deny["spec"]["ingress"], serde_json::json!([{}]));
    let checkout = named("payments", "allow-checkout");
    let egress = checkout["spec"]["egress"].as_array().unwrap();
    assert!(egress
        .iter()
        .any(|r| r["toEntities"] == serde_json::json!(["kube-apiserver"])));
    let web = named("shop", "allow-web");
    let dns = web["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["toPorts"][0]["ports"][0]["port"] == "53")
        .expect("a DNS rule");
    assert_eq!(
        dns["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"],
        "kube-system"
    );
    assert_eq!(dns["toPorts"][0]["rules"]["dns"][0]["matchPattern"], "*");
}

#[test]
fn diff_mode_sets_apart_what_cluster_policies_decide() {
    let path = shop_with("suggest-tiers", &cluster_policies_text());
    let cluster = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        flowpol(
            &[
                &[
                    "suggest",
                    "--cluster",
                    cluster,
                    "--flows",
                    "flows-shop.jsonl",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let (ok, out, err) = run(&["--diff"]);
    let (plain_ok, plain, plain_err) = flowpol(&[&ARGS[..], &["--diff"]].concat());
    let (full_ok, _, full_err) = run(&[]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(ok && plain_ok && full_ok, "{err}\n{plain_err}\n{full_err}");
    // Worked by hand from tests/fixtures/cluster-policies-shop.yaml: checkout's own policy
    // excepts 203.0.113.128/25, so without the cluster policies the diff adds a rule for
    // 203.0.113.200; the AdminNetworkPolicy partner-api accepts it, so with them it needs none.
    assert!(plain.contains("203.0.113.200"), "{plain}");
    assert!(!out.contains("203.0.113.200"), "{out}");
    assert!(
        err.contains("1 observed flow(s) need no NetworkPolicy rule")
            && err.contains("anp/partner-api"),
        "{err}"
    );
    // cart -> postgres is allowed by the data namespace's NetworkPolicy, but the Admin-tier
    // protect-data denies all but payments: no NetworkPolicy can change that, in either mode.
    for e in [&err, &full_err] {
        assert!(
            e.contains("which no NetworkPolicy can override")
                && e.contains("shop/cart-0")
                && e.contains("cnp/protect-data"),
            "{e}"
        );
    }
}

/// The shop's flows, as a recording that lost events says it did (its last line).
fn lossy_flows(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowpol-lossy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flows = std::fs::read_to_string(fixtures().join("flows-shop.jsonl")).unwrap();
    let path = dir.join("flows.jsonl");
    std::fs::write(
        &path,
        format!(
            "{flows}{}\n",
            r#"{"capture":{"node":"node-a","started":"2026-11-22T14:00:00Z","ended":"2026-11-22T14:05:00Z","events_lost":12,"decode_errors":0,"counters_evicted":0,"namespaces_not_listed":0}}"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_recording_that_lost_events_yields_no_suggestion_unless_the_loss_is_accepted() {
    let flows = lossy_flows("suggest");
    let flows = flows.to_str().unwrap();
    let out_file = std::env::temp_dir().join(format!("flowpol-lossy-{}.yaml", std::process::id()));
    let out_path = out_file.to_str().unwrap();
    let args = [
        "suggest",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        flows,
    ];
    let (code, out, err) = common::flowpol_code(&[&args[..], &["-o", out_path]].concat());
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(!out_file.exists(), "nothing written");
    assert!(
        err.contains("12 events lost on node-a between 2026-11-22T14:00:00+00:00"),
        "{err}"
    );
    assert!(err.contains("--accept-loss"), "{err}");
    // Accepted: the same suggestion as from the same records without the loss, and a warning.
    let (ok, accepted, err) = flowpol(&[&args[..], &["--accept-loss"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("may not allow every flow"), "{err}");
    let (_, clean, _) = flowpol(&ARGS);
    assert_eq!(accepted, clean);
}

#[test]
fn verify_says_its_verdicts_may_miss_what_a_lossy_recording_lost() {
    let flows = lossy_flows("verify");
    let flows = flows.to_str().unwrap();
    let args = ["verify", "--cluster", "cluster-shop.yaml", "--flows", flows];
    let (ok, table, err) = flowpol(&args);
    assert!(ok, "{err}");
    assert!(table.contains("INCOMPLETE CAPTURE"), "{table}");
    assert!(table.contains("12 events lost on node-a"), "{table}");
    assert!(err.contains("flows may be missing"), "{err}");
    let (_, json, _) = flowpol(&[&args[..], &["--output", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["incomplete"].as_array().map(Vec::len), Some(1), "{json}");
    // The clean recording says nothing of the kind.
    let (_, clean, _) = flowpol(&[
        "verify",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "flows-shop.jsonl",
    ]);
    assert!(!clean.contains("INCOMPLETE"), "{clean}");
}
