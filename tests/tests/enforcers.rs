//! The shop under real NetworkPolicy implementations, each run by `flowpol lab --enforcer`
//! as a CNI's node agent against a real kube-apiserver: kube-network-policies (SIG
//! Network's reference, NFQUEUE) and kube-router's policy controller (iptables, ipset).
//! Each run is judged by `flowpol verify` flow by flow, and set beside flowpol's own
//! enforcer, faithful and faulty, by `flowpol compare --run`, cell by cell. The expected
//! answers are the shop's traffic list (what its policies allow, worked by hand), not
//! flowpol's engine.
#[path = "../../probe-user/tests/k8s/mod.rs"]
mod k8s;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use flowpol_e2e::{assert_no_leftovers, binary, privileged};
use k8s::{ControlPlane, Options};
use serde_json::Value;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowpol-enforcers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `flowpol lab` with `args`, its records in `dir/<name>.jsonl`; returns its stderr.
fn lab(cp: Option<&ControlPlane>, dir: &Path, name: &str, args: &[&str]) -> String {
    let mut command = Command::new(binary());
    command
        .arg("lab")
        .arg("--output")
        .arg(dir.join(format!("{name}.jsonl")))
        .arg("--cluster-out")
        .arg(dir.join("cluster.yaml"))
        .args(args);
    if let Some(cp) = cp {
        command.arg("--kubeconfig").arg(cp.kubeconfig_path());
    }
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "flowpol lab {args:?}:\n{err}");
    assert_no_leftovers();
    err
}

fn real(cp: &ControlPlane, dir: &Path, kind: &str) -> String {
    let bins = cp.binaries();
    let program = match kind {
        "kube-network-policies" => &bins.kube_network_policies,
        "kube-router" => &bins.kube_router,
        other => panic!("no enforcer {other}"),
    };
    let err = lab(
        Some(cp),
        dir,
        kind,
        &[
            "--enforcer",
            kind,
            "--enforcer-bin",
            program.to_str().unwrap(),
        ],
    );
    assert!(err.contains(&format!("{kind} was ready")), "{err}");
    // What it said on stderr is what it wrote beside the records, for `compare`.
    let said: f64 = err
        .split("enforced the policies ")
        .nth(1)
        .and_then(|rest| rest.split(" s after").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time to enforce in:\n{err}"));
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{kind}.jsonl.enforced.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(facts["enforcer"], kind);
    let wrote = facts["propagation_seconds"].as_f64().unwrap();
    assert!(
        wrote > 0.0 && (wrote - said).abs() < 0.001,
        "{facts} vs {said}"
    );
    err
}

/// (kind, source, destination, port) of every enforcement gap and over-block.
fn findings(dir: &Path, name: &str) -> BTreeSet<(String, String, String, u64)> {
    let out = Command::new(binary())
        .args(["verify", "--output", "json", "--cluster"])
        .arg(dir.join("cluster.yaml"))
        .arg("--flows")
        .arg(dir.join(format!("{name}.jsonl")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "enforcement_gap" || f["kind"] == "over_block")
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["src"]["name"].as_str().unwrap_or_default().to_owned(),
                f["dst"]["name"].as_str().unwrap_or_default().to_owned(),
                f["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Nothing the lab published is left in the cluster: no lab pod, no enforcer identity.
fn assert_cluster_clean(cp: &ControlPlane) {
    let pods = k8s::get_json(cp, &["pods", "-A"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 0, "{pods}");
    let policies = k8s::get_json(cp, &["networkpolicies", "-A"]);
    assert_eq!(policies["items"].as_array().unwrap().len(), 0, "{policies}");
    for kind in ["kube-network-policies", "kube-router"] {
        let sa = cp.kubectl(&[
            "get",
            "serviceaccount",
            "-n",
            "kube-system",
            &format!("flowpol-lab-{kind}"),
        ]);
        assert!(!sa.status.success(), "the {kind} identity was removed");
    }
}

/// `flowpol compare --run` over `runs` (label, file stem), as (source, destination, port,
/// policy, cell per run) rows, and each run's time to enforce.
fn comparison(dir: &Path, runs: &[(&str, &str)]) -> (Vec<Vec<String>>, Value) {
    let mut command = Command::new(binary());
    command
        .args(["compare", "--output", "json", "--cluster"])
        .arg(dir.join("cluster.yaml"));
    for (label, stem) in runs {
        command.arg("--run").arg(format!(
            "{label}={}",
            dir.join(format!("{stem}.jsonl")).display()
        ));
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = runs.iter().map(|(l, _)| *l).collect();
    assert_eq!(table["runs"], serde_json::json!(labels));
    let rows = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut row = vec![
                r["src"].as_str().unwrap().to_owned(),
                r["dst"].as_str().unwrap().to_owned(),
                format!("{}/{}", r["protocol"].as_str().unwrap(), r["port"]),
                if r["expected"]["allowed"] == true {
                    "allow"
                } else {
                    "deny"
                }
                .to_owned(),
            ];
            row.extend(r["cells"].as_array().unwrap().iter().map(|c| {
                let says = c["says"].as_str().unwrap().to_owned();
                match c["finding"].as_str() {
                    Some(f) => format!("{says} {f}"),
                    None => says,
                }
            }));
            row
        })
        .collect();
    (rows, table["time_to_enforce"].clone())
}

/// The shop's traffic list (crates/lab/scenarios/shop.yaml), worked by hand: each case,
/// what its policies say, and what each run must show. `egress` marks the denied cases
/// that only an egress policy denies (a CNI ignoring egress lets them through).
#[rustfmt::skip]
const SHOP: &[(&str, &str, &str, &str, &str, bool)] = &[
    // source,                            destination,             port,        policy, faithful,  egress-only
    ("ingress-nginx/ingress-controller", "shop/web-0",            "TCP/8080", "allow", "always",  false),
    ("payments/checkout-0",              "203.0.113.10",          "TCP/443",  "allow", "always",  false),
    ("payments/checkout-0",              "203.0.113.66",          "TCP/443",  "deny",  "never",   true),
    ("payments/checkout-0",              "2001:db8::10",          "TCP/443",  "allow", "always",  false),
    ("payments/checkout-0",              "kube-system/coredns-0", "UDP/53",   "allow", "always",  false),
    // Nothing listens on the outside host's 514: its kernel's NO_SOCKET drop shows a refusal.
    ("shop/cart-0",                      "203.0.113.10",          "UDP/514",  "allow", "never",   false),
    ("shop/cart-0",                      "data/postgres-0",       "TCP/5432", "allow", "always",  false),
    ("shop/cart-0",                      "payments/checkout-0",   "TCP/8443", "allow", "always",  false),
    ("shop/web-0",                       "203.0.113.10",          "TCP/443",  "deny",  "never",   true),
    ("shop/web-0",                       "data/postgres-0",       "TCP/5432", "deny",  "never",   false),
    ("shop/web-0",                       "kube-system/coredns-0", "UDP/53",   "allow", "always",  false),
    ("shop/web-0",                       "shop/cart-0",           "TCP/9090", "allow", "always",  false),
    ("shop/web-0",                       "shop/cart-0",           "TCP/9091", "allow", "never",   false),
];

/// Under each real enforcer the shop has no enforcement gap and no over-block, flow by
/// flow; the comparison table of flowpol's faithful enforcer, a faulty one (ignoring
/// egress) and both real ones is the hand-worked table above, cell by cell; and nothing of
/// any run is left in the cluster or the kernel.
#[test]
fn the_shop_under_real_enforcers_and_the_comparison_table() {
    if !privileged() {
        return;
    }
    let dir = tempdir("shop");
    let cp = k8s::start(Options::default());
    for kind in ["kube-network-policies", "kube-router"] {
        let err = real(&cp, &dir, kind);
        assert_eq!(findings(&dir, kind), BTreeSet::new(), "{kind}:\n{err}");
        assert_cluster_clean(&cp);
    }
    drop(cp);
    lab(None, &dir, "faithful", &[]);
    assert_eq!(findings(&dir, "faithful"), BTreeSet::new());
    lab(None, &dir, "ignore-egress", &["--fault", "ignore-egress"]);

    let (got, time_to_enforce) = comparison(
        &dir,
        &[
            ("flowpol", "faithful"),
            ("ignore-egress", "ignore-egress"),
            ("kube-network-policies", "kube-network-policies"),
            ("kube-router", "kube-router"),
        ],
    );
    let mut want: Vec<Vec<String>> = SHOP
        .iter()
        .map(|&(src, dst, port, policy, faithful, egress_only)| {
            let faulty = if egress_only {
                "always enforcement_gap"
            } else {
                faithful
            };
            [src, dst, port, policy, faithful, faulty, faithful, faithful]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    want.sort();
    let mut got = got;
    got.sort();
    assert_eq!(got, want);
    // flowpol's own enforcer has no propagation to measure; each real one ran once.
    let measured: Vec<Value> = time_to_enforce
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["measured"].clone())
        .collect();
    assert_eq!(measured, [Value::Null, Value::Null, 1.into(), 1.into()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `flowpol conformance` under `enforcer` (and `extra` arguments): its summary line.
fn conformance(cp: Option<&ControlPlane>, enforcer: &str, extra: &[&str]) -> String {
    let mut command = Command::new(binary());
    command
        .args([
            "conformance",
            "--fail-on-disagreement",
            "--enforcer",
            enforcer,
        ])
        .args(extra);
    if let Some(cp) = cp {
        command.arg("--kubeconfig").arg(cp.kubeconfig_path());
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "conformance under {enforcer}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_leftovers();
    stdout
}

/// Upstream's NetworkPolicy e2e cases, translated by hand: under flowpol's faithful
/// enforcer every probe of every case agrees with upstream's truth table on the first try;
/// under each real enforcer (one run for the whole set, the policies swapped case by case)
/// every probe does by upstream's protocol (a second try after wrong results); under a CNI
/// that ignores egress the egress cases do not (the set can fail).
#[test]
fn the_conformance_set_under_every_enforcer() {
    if !privileged() {
        return;
    }
    let all = conformance(None, "flowpol", &[]);
    assert!(
        all.contains("47 case(s), 4455 probes: 4455 agree with upstream, 0 disagree"),
        "{all}"
    );
    assert!(!all.contains("first try only"), "{all}");
    let broken = Command::new(binary())
        .args([
            "conformance",
            "--fault",
            "ignore-egress",
            "--case",
            "deny-egress-namespace",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&broken.stdout);
    // The case denies all egress from x's three pods to the eight other pods: 24 pairs,
    // which a CNI ignoring egress lets through.
    assert!(
        said.contains("upstream says denied, the client saw established"),
        "{said}"
    );
    assert!(
        said.contains("1 case(s), 81 probes: 57 agree with upstream, 24 disagree"),
        "{said}"
    );

    let cp = k8s::start(Options::default());
    let bins = cp.binaries().clone();
    for (kind, program) in [
        ("kube-network-policies", &bins.kube_network_policies),
        ("kube-router", &bins.kube_router),
    ] {
        let summary = conformance(
            Some(&cp),
            kind,
            &["--enforcer-bin", program.to_str().unwrap()],
        );
        assert!(
            summary.contains("47 case(s), 4455 probes: 4455 agree with upstream, 0 disagree"),
            "{kind}: {summary}"
        );
        assert!(
            summary.contains("policies enforced after"),
            "{kind}: {summary}"
        );
        assert_cluster_clean(&cp);
    }
}

/// The tiers scenario (tests/fixtures/scenario-tiers.yaml) as AdminNetworkPolicies: the
/// same rules in v1alpha1, which kube-network-policies v0.8.0 implements (ClusterNetworkPolicy
/// it does not).
fn tiers_v1alpha1() -> String {
    let mut s: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../fixtures/scenario-tiers.yaml")).unwrap();
    for p in s["policies"].as_sequence_mut().unwrap() {
        if p["kind"] != "ClusterNetworkPolicy" {
            continue;
        }
        p["apiVersion"] = "policy.networking.k8s.io/v1alpha1".into();
        p["kind"] = "AdminNetworkPolicy".into();
        let spec = p["spec"].as_mapping_mut().unwrap();
        assert_eq!(spec.remove("tier").unwrap(), "Admin");
        for dir in ["ingress", "egress"] {
            for rule in spec
                .get_mut(dir)
                .and_then(|r| r.as_sequence_mut())
                .into_iter()
                .flatten()
            {
                if rule["action"] == "Accept" {
                    rule["action"] = "Allow".into();
                }
                let rule = rule.as_mapping_mut().unwrap();
                if let Some(protocols) = rule.remove("protocols") {
                    let ports: Vec<serde_yaml::Value> = protocols
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            let name = p["destinationNamedPort"]
                                .as_str()
                                .expect("named ports only");
                            serde_yaml::from_str(&format!("{{namedPort: {name}}}")).unwrap()
                        })
                        .collect();
                    rule.insert("ports".into(), ports.into());
                }
            }
        }
    }
    serde_yaml::to_string(&s).unwrap()
}

/// kube-network-policies enforces the AdminNetworkPolicies and the BaselineAdminNetwork
/// Policy of the tiers scenario, with their CRDs installed in the API server and the flags
/// the lab gives it, and meets every expectation (worked by hand in the scenario) but one:
/// v0.8.0 matches an ingress rule's `namedPort` against the *source* pod's container ports
/// (controller.go passes `srcPod` to `evaluateAdminIngress`, whose port check looks the name
/// up on the pod it is given and never compares the number), although the API says the
/// ports are the subject's. So the Allow of web's port `admin` (8081) from tenants does not
/// match, the Pass and then the Baseline Deny decide, and verify reports that one flow as
/// an over-block. kube-router implements none of them: the lab says so, and verify names the
/// three flows the tiers deny as gaps.
#[test]
fn admin_network_policies_under_real_enforcers() {
    if !privileged() {
        return;
    }
    let dir = tempdir("tiers");
    let cp = k8s::start(Options::default());
    for (file, name) in cp.binaries().cluster_policy_crds[1..].iter().zip([
        "adminnetworkpolicies.policy.networking.k8s.io",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
    ]) {
        cp.kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .unwrap();
        k8s::wait_established(&cp, name);
    }
    let scenario = dir.join("tiers.yaml");
    std::fs::write(&scenario, tiers_v1alpha1()).unwrap();
    let bins = cp.binaries();
    let run = |kind: &str, program: &Path| {
        lab(
            Some(&cp),
            &dir,
            kind,
            &[
                scenario.to_str().unwrap(),
                "--enforcer",
                kind,
                "--enforcer-bin",
                program.to_str().unwrap(),
            ],
        )
    };
    let err = run("kube-network-policies", &bins.kube_network_policies);
    assert!(!err.contains("does not implement"), "{err}");
    assert_eq!(
        findings(&dir, "kube-network-policies"),
        [(
            "over_block".to_owned(),
            "tenants/client-0".to_owned(),
            "apps/web-0".to_owned(),
            8081
        )]
        .into(),
        "{err}"
    );
    let anps = k8s::get_json(&cp, &["adminnetworkpolicies"]);
    assert_eq!(
        anps["items"].as_array().unwrap().len(),
        0,
        "withdrawn: {anps}"
    );
    let err = run("kube-router", &bins.kube_router);
    assert!(
        err.contains("kube-router does not implement AdminNetworkPolicy")
            && err.contains("kube-router does not implement BaselineAdminNetworkPolicy"),
        "{err}"
    );
    let gap = |src: &str, dst: &str, port| {
        (
            "enforcement_gap".to_owned(),
            src.to_owned(),
            dst.to_owned(),
            port,
        )
    };
    assert_eq!(
        findings(&dir, "kube-router"),
        [
            gap("tenants/client-0", "apps/db-0", 5432),
            gap("tenants/client-0", "apps/web-0", 8080),
            gap("apps/web-0", "tenants/client-0", 9000),
        ]
        .into(),
        "{err}"
    );
}
