//! `flowpol verify` through the binary on the shop fixtures: golden outputs, the findings
//! each kind of evidence yields, and exit codes for CI gates.
mod common;
use common::{flowpol, flowpol_code, golden};

const ARGS: [&str; 5] = [
    "verify",
    "--cluster",
    "cluster-shop.yaml",
    "--flows",
    "flows-shop.jsonl",
];

fn report() -> serde_json::Value {
    let (ok, out, err) = flowpol(&[&ARGS[..], &["--output", "json"]].concat());
    assert!(ok, "{err}");
    golden("verify-shop.json", &out);
    serde_json::from_str(&out).expect("verify prints JSON")
}

fn of_kind<'a>(r: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

#[test]
fn verify_reports_grouped_and_ranked() {
    let (ok, table, err) = flowpol(&ARGS);
    assert!(ok, "{err}");
    golden("verify-shop.txt", &table);
    // Beside the golden: the table says what the JSON report says, kinds in reading order.
    let r = report();
    let s = &r["summary"];
    assert!(
        table.starts_with(&format!(
            "verified {} records: {} consistent with the policies, {} disagreeing, {} inconclusive (",
            s["records"], s["consistent"], s["disagreeing"], s["inconclusive"]
        )),
        "{table}"
    );
    // The shop's flows hold one datagram never answered and one drop without a reason.
    assert_eq!(
        s["inconclusive_by"],
        serde_json::json!({"unanswered": 1, "dropped_not_by_a_filter": 1})
    );
    let mut last = 0;
    for kind in [
        "enforcement_gap",
        "over_block",
        "refused",
        "unprotected",
        "unattributed",
    ] {
        let heading = format!("\n{} ({}): ", kind.to_uppercase(), s["findings"][kind]);
        let at = table
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading:?} in\n{table}"));
        assert!(at > last, "{kind} out of order:\n{table}");
        last = at;
    }
    assert!(
        table.contains("shop/cart-0") && table.contains("data/postgres-0"),
        "{table}"
    );
}

#[test]
fn each_kind_of_evidence_gives_its_finding() {
    let r = report();
    // The timeout and the netfilter drops of one allowed flow are one over-block.
    let over = of_kind(&r, "over_block");
    assert_eq!(over.len(), 1, "{over:#?}");
    assert_eq!(over[0]["src"]["name"], "shop/cart-0");
    assert_eq!(over[0]["dst"]["name"], "data/postgres-0");
    assert_eq!(over[0]["observed"]["timeout"], 4);
    assert_eq!(over[0]["observed"]["dropped"], 9);
    assert_eq!(over[0]["drop_reasons"]["NETFILTER_DROP"], 9);
    assert_eq!(over[0]["first_seen"], "2026-11-21T12:00:00Z");
    assert_eq!(over[0]["last_seen"], "2026-11-21T12:05:00Z");
    assert_eq!(over[0]["nodes"], serde_json::json!(["node-b"]));
    // A refusal on an allowed port is not a policy drop: reported apart.
    let refused = of_kind(&r, "refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["dst"]["name"], "shop/web-5c7b9-x2x4k");
    assert_eq!(refused[0]["port"], 8080);
    // Established although denied, with the rule that decided.
    let gaps = of_kind(&r, "enforcement_gap");
    let web_9090 = gaps
        .iter()
        .find(|g| g["dst"]["name"] == "shop/web-5c7b9-x2x4k" && g["port"] == 9090)
        .expect("ingress -> web:9090 is a gap");
    assert_eq!(
        web_9090["explanation"]["ingress"]["verdict"], "deny",
        "{web_9090:#}"
    );
    // A pod address nobody knows; the API server's address is named by its service.
    let unnamed = of_kind(&r, "unattributed");
    assert_eq!(unnamed.len(), 1, "{unnamed:#?}");
    assert_eq!(unnamed[0]["ip"], "10.244.7.7");
    // Counted in the summary.
    assert_eq!(r["summary"]["findings"]["over_block"], 1);
    assert_eq!(
        r["summary"]["records"].as_u64().unwrap(),
        r["summary"]["consistent"].as_u64().unwrap()
            + r["summary"]["disagreeing"].as_u64().unwrap()
            + r["summary"]["inconclusive"].as_u64().unwrap()
    );
}

#[test]
fn namespaces_without_default_deny_and_open_pods_are_listed() {
    let r = report();
    let open = of_kind(&r, "unprotected");
    let has = |exposure: &str, ns: &str| {
        open.iter()
            .any(|f| f["exposure"] == exposure && f["namespace"] == ns)
    };
    // shop has a default deny for both directions; data has none.
    assert!(!has("no_default_deny_ingress", "shop"));
    assert!(!has("no_default_deny_egress", "shop"));
    assert!(has("no_default_deny_ingress", "data"));
    assert!(has("egress_not_isolated", "data"));
    assert!(has("ingress_not_isolated", "ingress-nginx"));
    // checkout is isolated for egress and may not reach the API server.
    assert!(!open.iter().any(|f| f["exposure"] == "reaches_api_server"
        && f["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "checkout-6f4d-8qwer")));
}

#[test]
fn fail_on_gates_the_exit_code() {
    let (code, _, err) = flowpol_code(&[&ARGS[..], &["--fail-on", "over_block"]].concat());
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("over_block"), "{err}");
    let (code, _, _) = flowpol_code(&ARGS);
    assert_eq!(code, Some(0), "no --fail-on: findings do not fail");
    let (code, _, err) = flowpol_code(&[&ARGS[..], &["--fail-on", "over-blok"]].concat());
    assert_eq!(code, Some(2), "unknown kinds are usage errors: {err}");
    assert!(err.contains("unknown finding kind"), "{err}");
    let (code, _, err) = flowpol_code(&[
        "verify",
        "--cluster",
        "cluster-shop.yaml",
        "--flows",
        "no-such-file.jsonl",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no-such-file.jsonl"), "{err}");
}

#[test]
fn compare_lists_the_cases_whose_outcome_differs() {
    let (ok, out, err) = flowpol(&[
        "compare",
        "flows-shop.jsonl",
        "flows-shop.jsonl",
        "--cluster",
        "cluster-shop.yaml",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no differences"), "{out}");
    // The same run, but the web tier's connections to the database got through this time.
    let dir = std::env::temp_dir().join(format!("flowpol-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other.jsonl");
    let text = std::fs::read_to_string(common::fixtures().join("flows-shop.jsonl")).unwrap();
    let changed = text.replacen(
        r#""dst": {"ip": "10.244.1.14", "port": 5432}, "verdict": "timeout""#,
        r#""dst": {"ip": "10.244.1.14", "port": 5432}, "verdict": "established""#,
        1,
    );
    assert_ne!(changed, text, "the fixture has the web -> postgres timeout");
    std::fs::write(&other, changed).unwrap();
    let (code, out, err) = flowpol_code(&[
        "compare",
        "flows-shop.jsonl",
        other.to_str().unwrap(),
        "--cluster",
        "cluster-shop.yaml",
        "--output",
        "json",
        "--fail-on-difference",
    ]);
    assert_eq!(code, Some(3), "{err}");
    let diffs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        diffs,
        serde_json::json!([{
            "src": "shop/web", "dst": "data/postgres-0", "port": 5432, "protocol": "TCP",
            "a": "blocked", "b": "passed"
        }])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_probe_plan_of_the_shop() {
    let (ok, out, err) = flowpol(&["probe", "--plan"]);
    assert!(ok, "{err}");
    golden("probe-plan-shop.json", &out);
    let plan: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let has = |from: &str, to: &str, port: u64, allowed: bool| {
        plan.iter().any(|a| {
            a["from"] == from
                && a["to"] == to
                && a["port"] == port
                && a["expect_allowed"] == allowed
        })
    };
    // The peers a rule allows must get through...
    assert!(has("shop/cart-0", "payments/checkout-0", 8443, true));
    assert!(has("payments/checkout-0", "payment-api", 443, true));
    // ...inverted peers (right namespace, labels off) and excepted addresses must not.
    assert!(has("shop/web-0", "payments/checkout-0", 8443, false));
    assert!(has("payments/checkout-0", "blocked-api", 443, false));
    // Default deny: a pod of another namespace tries the shop's pods.
    assert!(has("kube-system/coredns-0", "shop/web-0", 8080, false));
    assert!(plan
        .iter()
        .all(|a| !a["reasons"].as_array().unwrap().is_empty()));
}
