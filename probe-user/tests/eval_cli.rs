//! `flowpol eval` through the binary: golden outputs for what people read, and bad input.
//! Set FLOWPOL_BLESS=1 to rewrite the golden files after an intended change (and review them).
mod common;
use common::{cluster_policies_text, fixtures, flowpol, golden, shop_with};
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
    // Beside the golden, what the shop's policies (tests/fixtures/cluster-shop.yaml) say,
    // worked by hand.
    let verdict_of = |src: &str, dst: &str, port: u16, observed: &str| -> String {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| {
                e["src"]["ip"] == src
                    && e["dst"]["ip"] == dst
                    && e["dst"]["port"] == port
                    && e["verdict"] == observed
            })
            .unwrap_or_else(|| panic!("no {src} -> {dst}:{port} {observed} in\n{out}"))
            ["policy_verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // shop/web admits ingress-nginx's pods on its named port http (8080), nothing else.
    assert_eq!(
        verdict_of("10.244.0.10", "10.244.0.11", 8080, "established"),
        "allow"
    );
    assert_eq!(
        verdict_of("10.244.0.10", "10.244.0.11", 9090, "established"),
        "deny"
    );
    // web's egress reaches cart and DNS only: not the database.
    assert_eq!(
        verdict_of("10.244.0.11", "10.244.1.14", 5432, "timeout"),
        "deny"
    );
    // checkout may reach 203.0.113.0/24 on 443 except 203.0.113.128/25.
    assert_eq!(
        verdict_of("10.244.1.13", "203.0.113.10", 443, "established"),
        "allow"
    );
    assert_eq!(
        verdict_of("10.244.1.13", "203.0.113.200", 443, "established"),
        "deny"
    );
    // A pod's own node always may; another node is held to the policy.
    assert_eq!(
        verdict_of("192.168.10.11", "10.244.0.11", 8080, "established"),
        "allow"
    );
    assert_eq!(
        verdict_of("192.168.10.12", "10.244.0.11", 8080, "dropped"),
        "deny"
    );
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
    // Beside the golden, pairs worked by hand from the shop's policies (source row,
    // destination column), on TCP/8080.
    let at = |name: &str| {
        pods.iter()
            .position(|p| p.as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no pod {name} in {pods:?}"))
    };
    let allowed = |src: &str, dst: &str| v["cases"][0]["allowed"][at(src)][at(dst)].clone();
    assert_eq!(v["cases"][0]["port"], "8080");
    // web admits ingress-nginx on http (8080), and nobody else.
    assert_eq!(allowed("ingress-nginx/", "shop/web-"), true);
    assert_eq!(allowed("data/postgres-0", "shop/web-"), false);
    // postgres admits cart on its named port (5432) only.
    assert_eq!(allowed("shop/cart-0", "data/postgres-0"), false);
    // Neither end of postgres -> ingress-nginx is isolated.
    assert_eq!(allowed("data/postgres-0", "ingress-nginx/"), true);
}

#[test]
fn connectivity_over_all_ports() {
    let (ok, out, err) = flowpol(&[
        "eval",
        "--cluster",
        "cluster-shop.yaml",
        "--connectivity",
        "--output",
        "table",
    ]);
    assert!(ok, "{err}");
    golden("connectivity-shop.txt", &out);
    let (ok, json, _) = flowpol(&["eval", "--cluster", "cluster-shop.yaml", "--connectivity"]);
    assert!(ok);
    let pairs: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reach = |src: &str, dst: &str| -> Vec<String> {
        let Some(p) = pairs.iter().find(|p| {
            p["src"].as_str().unwrap().starts_with(src)
                && p["dst"].as_str().unwrap().starts_with(dst)
        }) else {
            return vec![];
        };
        p["allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {}-{}",
                    r["protocol"].as_str().unwrap(),
                    r["start"],
                    r["end"]
                )
            })
            .collect()
    };
    // Beside the golden, worked by hand from the shop's policies: web admits ingress-nginx on
    // its named port http (8080/TCP) and nothing else; web's egress reaches DNS on 53 of
    // both protocols and cart on 9090; postgres admits cart on 5432 only; the rest of the
    // shop is isolated both ways.
    assert_eq!(reach("ingress-nginx/", "shop/web-"), ["TCP 8080-8080"]);
    assert_eq!(
        reach("shop/web-", "kube-system/coredns-"),
        ["TCP 53-53", "UDP 53-53"]
    );
    assert_eq!(reach("shop/web-", "shop/cart-0"), ["TCP 9090-9090"]);
    assert_eq!(reach("shop/cart-0", "data/postgres-0"), ["TCP 5432-5432"]);
    assert!(reach("shop/web-", "data/postgres-0").is_empty());
    assert!(reach("data/postgres-0", "shop/cart-0").is_empty());
    // Neither end isolated: every port of every protocol.
    assert_eq!(
        reach("data/postgres-0", "ingress-nginx/"),
        ["TCP 1-65535", "UDP 1-65535", "SCTP 1-65535"]
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
    // Beside the golden, names worked by hand from the fixture's objects.
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = |ip: &str| {
        records
            .iter()
            .flat_map(|r| [&r["src"], &r["dst"]])
            .find(|e| e["ip"] == ip)
            .unwrap_or_else(|| panic!("no end {ip}"))
            .clone()
    };
    // A pod: its namespace, name and workload (the ReplicaSet's Deployment).
    let web = end("10.244.0.11");
    assert_eq!(
        (web["kind"].as_str(), web["namespace"].as_str()),
        (Some("pod"), Some("shop"))
    );
    assert_eq!(web["workload"]["kind"], "Deployment", "{web}");
    // A service address: the service, and the backend that answered.
    let svc = end("10.96.12.40");
    assert_eq!(svc["service"], "shop/web", "{svc}");
    assert_eq!(svc["backends"][0]["ip"], "10.244.0.11", "{svc}");
    // A node, and an outside address.
    assert_eq!(end("192.168.10.11")["node"], "node-a");
    assert_eq!(end("198.51.100.7")["kind"], "external");
}

/// A reader that stops after one line (`| head -1`) ends `eval` by SIGPIPE, as it ends
/// `grep`, with no panic on stderr; the output is larger than a pipe holds, so the write
/// after the reader left must fail.
#[test]
fn a_reader_that_stops_early_ends_eval_quietly() {
    use std::io::{BufRead, Read};
    use std::os::unix::process::ExitStatusExt;
    let shop = std::fs::read_to_string(fixtures().join("flows-shop.jsonl")).unwrap();
    let dir = std::env::temp_dir().join(format!("flowpol-epipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, shop.repeat(2000)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(["eval", "--cluster"])
        .arg(fixtures().join("cluster-shop.yaml"))
        .arg("--flows")
        .arg(&flows)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn cluster_policies_decide_around_the_network_policies() {
    let path = shop_with("tiers", &cluster_policies_text());
    let (ok, out, err) = flowpol(&[
        "eval",
        "--cluster",
        path.to_str().unwrap(),
        "--flows",
        "flows-shop.jsonl",
    ]);
    let (table_ok, table, _) = flowpol(&[
        "eval",
        "--cluster",
        path.to_str().unwrap(),
        "--flows",
        "flows-shop.jsonl",
        "--output",
        "table",
    ]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(ok && table_ok, "{err}");
    golden("eval-shop-tiers.jsonl", &out);
    // The chains in words, as people read them.
    golden("eval-shop-tiers.txt", &table);
    assert!(table.contains(
        "ingress: [Admin] Pass by cnp/pass-ingress-to-shop rule 0 \"ingress-controller\" -> [NetworkPolicy] allowed by shop/web#0"
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |src: &str, dst: &str, port: u16| -> &serde_json::Value {
        lines
            .iter()
            .find(|e| e["src"]["ip"] == src && e["dst"]["ip"] == dst && e["dst"]["port"] == port)
            .unwrap_or_else(|| panic!("no {src} -> {dst}:{port} in\n{out}"))
    };
    // Worked by hand from tests/fixtures/cluster-policies-shop.yaml. The shop's own
    // NetworkPolicy lets cart reach postgres; the Admin tier comes first and denies all but
    // payments.
    let e = find("10.244.1.12", "10.244.1.14", 5432);
    assert_eq!(e["policy_verdict"], "deny");
    let by = &e["explanation"]["ingress"]["by"];
    assert_eq!(e["explanation"]["ingress"]["reason"], "cluster_policy");
    assert_eq!(
        (&by["policy"], &by["rule_name"], &by["tier"], &by["action"]),
        (
            &"cnp/protect-data".into(),
            &"others".into(),
            &"Admin".into(),
            &"Deny".into()
        )
    );
    // checkout's NetworkPolicy excepts 203.0.113.128/25; the AdminNetworkPolicy allows it.
    let e = find("10.244.1.13", "203.0.113.200", 443);
    assert_eq!(e["policy_verdict"], "allow");
    assert_eq!(
        e["explanation"]["egress"]["by"]["policy"],
        "anp/partner-api"
    );
    // kube-system is isolated by no NetworkPolicy: the BaselineAdminNetworkPolicy denies.
    let e = find("10.244.0.11", "10.244.0.53", 53);
    assert_eq!(e["policy_verdict"], "deny");
    assert_eq!(e["explanation"]["ingress"]["by"]["policy"], "banp/default");
    // The ingress controller is passed to the shop's NetworkPolicy, which decides.
    let e = find("10.244.0.10", "10.244.0.11", 8080);
    assert_eq!(e["policy_verdict"], "allow");
    assert_eq!(e["explanation"]["ingress"]["reason"], "rule");
    assert_eq!(
        e["explanation"]["ingress"]["passed"][0]["policy"],
        "cnp/pass-ingress-to-shop"
    );
    assert_eq!(
        find("10.244.0.10", "10.244.0.11", 9090)["policy_verdict"],
        "deny"
    );
}

#[test]
fn bad_cluster_policies_name_object_and_field() {
    let policies = cluster_policies_text();
    let cases = [
        (
            "priority",
            "priority: 10",
            "priority: 1001",
            &["ClusterNetworkPolicy protect-data", "spec.priority", "1001"][..],
        ),
        (
            "unknown-field",
            "  tier: Admin\n  priority: 10",
            "  tier: Admin\n  prority: 10",
            &["ClusterNetworkPolicy protect-data", "spec", "prority"][..],
        ),
        (
            "version",
            "policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy",
            "policy.networking.k8s.io/v1alpha2\nkind: BaselineAdminNetworkPolicy",
            &[
                "BaselineAdminNetworkPolicy default",
                "apiVersion",
                "v1alpha2",
            ][..],
        ),
        (
            "cidr",
            "203.0.113.128/25",
            "203.0.113.128/33",
            &[
                "AdminNetworkPolicy partner-api",
                "spec.egress[0].to[0].networks[0]",
            ][..],
        ),
        (
            "baseline-name",
            "name: default",
            "name: fallback",
            &["BaselineAdminNetworkPolicy fallback", "metadata.name"][..],
        ),
    ];
    for (name, from, to, wants) in cases {
        assert!(policies.contains(from), "{name}: the fixture has `{from}`");
        let path = shop_with(name, &policies.replacen(from, to, 1));
        let (ok, out, err) = flowpol(&[
            "eval",
            "--cluster",
            path.to_str().unwrap(),
            "--flows",
            "flows-shop.jsonl",
        ]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        assert!(!ok, "{name}: must fail");
        assert!(out.is_empty(), "{name}: nothing written: {out}");
        for want in wants {
            assert!(err.contains(want), "{name}: expected `{want}` in:\n{err}");
        }
    }
    let path = shop_with("twice", &format!("{policies}\n---\n{policies}"));
    let (ok, _, err) = flowpol(&[
        "eval",
        "--cluster",
        path.to_str().unwrap(),
        "--flows",
        "flows-shop.jsonl",
    ]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(!ok && err.contains("declared twice"), "{err}");
}

/// A domainNames rule may name any address, pods included (NPEP-133: pod and headless-service
/// records resolve): where it would change the verdict, the matrix cell is undetermined.
#[test]
fn the_matrix_marks_verdicts_that_hang_on_a_domain_name() {
    let dns = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: to-example}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: storefront}}},\n\
        egress: [{action: Accept, to: [{domainNames: ['*.example.com']}]}]}\n";
    let path = shop_with("matrix-dns", dns);
    let run = |output: &str| {
        flowpol(&[
            "eval",
            "--cluster",
            path.to_str().unwrap(),
            "--matrix",
            "--ports",
            "8080",
            "--output",
            output,
        ])
    };
    let (ok, json, err) = run("json");
    let (table_ok, table, _) = run("table");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(ok && table_ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pods: Vec<&str> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let at = |prefix: &str| pods.iter().position(|p| p.starts_with(prefix)).unwrap();
    let undetermined: Vec<(usize, usize)> = v["cases"][0]["undetermined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_u64().unwrap() as usize,
                c[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    // Worked by hand: web's own egress policy denies ingress-nginx on 8080, which isolates
    // nothing for ingress; the Accept by name comes first, so it depends on the name.
    let web_to_nginx = (at("shop/web-"), at("ingress-nginx/"));
    assert!(undetermined.contains(&web_to_nginx), "{json}");
    assert_eq!(
        v["cases"][0]["allowed"][web_to_nginx.0][web_to_nginx.1],
        serde_json::Value::Null
    );
    // postgres's ingress denies web whatever the name: certain.
    let web_to_db = (at("shop/web-"), at("data/postgres"));
    assert!(!undetermined.contains(&web_to_db));
    assert_eq!(v["cases"][0]["allowed"][web_to_db.0][web_to_db.1], false);
    // Only the storefront's pods are subjects.
    assert!(
        undetermined
            .iter()
            .all(|(s, _)| pods[*s].starts_with("shop/")),
        "{json}"
    );
    assert!(table.contains('?'), "{table}");
}
