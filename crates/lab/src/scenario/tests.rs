use super::*;

#[test]
fn a_policies_file_holds_policies_only() {
    let dir = std::env::temp_dir().join(format!("flowpol-policies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n";
    let only = dir.join("only.yaml");
    std::fs::write(
        &only,
        format!("{policy}---\n{}", policy.replace("deny", "other")),
    )
    .unwrap();
    let read = read_policies(&only).unwrap();
    let names: Vec<&str> = read
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deny", "other"]);
    // Cluster-scoped policies are policies too, kept as written.
    let cnp = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n";
    let with_cnp = dir.join("with-cnp.yaml");
    std::fs::write(&with_cnp, format!("{policy}---\n{cnp}")).unwrap();
    let read = read_policies(&with_cnp).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1]["kind"], "ClusterNetworkPolicy");
    assert_eq!(read[1]["spec"]["priority"], 1);
    let mixed = dir.join("mixed.yaml");
    std::fs::write(
        &mixed,
        format!("{policy}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n"),
    )
    .unwrap();
    let err = read_policies(&mixed).unwrap_err().to_string();
    assert!(err.contains("holds objects other than policies"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cluster_policy_the_cluster_would_refuse_is_refused_with_the_scenario() {
    let text = include_str!("../../../../tests/fixtures/scenario-tiers.yaml");
    assert!(parse("tiers", text).is_ok());
    let bad = text.replacen("priority: 10", "priority: 1001", 1);
    let err = parse("tiers", &bad).unwrap_err().to_string();
    assert!(err.starts_with("scenario tiers: policies: "), "{err}");
    assert!(
        err.contains("ClusterNetworkPolicy tenants-no-db: spec.priority"),
        "{err}"
    );
}

#[test]
fn a_policy_the_cluster_would_refuse_is_refused_with_the_scenario() {
    let text = crate::EXAMPLE_SCENARIO.replacen(
        "apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: postgres",
        "apiVersion: networking.k.s8io/v1\n    kind: NetworkPolicy\n    metadata: {name: postgres",
        1,
    );
    assert_ne!(text, crate::EXAMPLE_SCENARIO, "the test edits one policy");
    let err = parse("shop", &text).unwrap_err().to_string();
    assert!(err.starts_with("scenario shop: policies: "), "{err}");
    assert!(err.contains("NetworkPolicy data/postgres"), "{err}");
    assert!(err.contains("networking.k.s8io/v1"), "{err}");
}

const MINIMAL: &str = "
name: t
namespaces: [{name: a}]
pods:
  - {name: web, namespace: a, ports: [{port: 80}]}
  - {name: dns, namespace: a, ip: 10.244.0.53, ports: [{port: 53, protocol: UDP}]}
externals: [{name: internet, ip: 203.0.113.10}]
traffic:
  - {from: a/web, to: a/dns, port: 53, protocol: UDP, expect: answered}
  - {from: a/dns, to: internet, port: 443, family: ipv6}
drops:
  - {pod: a/web, direction: ingress, peer: a/dns, port: 80, protocol: TCP}
";

/// The error with its causes, as the CLI prints it.
fn err(text: &str) -> String {
    let e = parse("s.yaml", text).expect_err("scenario must be rejected");
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

#[test]
fn parses_and_assigns_addresses() {
    let r = parse("s.yaml", MINIMAL).expect("valid scenario");
    let web = r.host("a/web").unwrap();
    assert_eq!(web.ipv4, Ipv4Addr::new(10, 244, 0, 10));
    assert_eq!(r.host("a/dns").unwrap().ipv4, Ipv4Addr::new(10, 244, 0, 53));
    assert_eq!(
        r.address("internet", Family::Ipv4),
        Some("203.0.113.10".parse().unwrap())
    );
    assert_eq!(
        r.address("a/web", Family::Ipv6),
        Some("fd00:10:244::a".parse().unwrap())
    );
    assert_eq!(
        r.address("192.0.2.1", Family::Ipv4),
        Some("192.0.2.1".parse().unwrap())
    );
    assert_eq!(r.scenario.settings.timeout, Duration::from_secs(1));
}

#[test]
fn errors_name_the_place() {
    let e = err(&MINIMAL.replace("to: a/dns, port: 53", "to: a/nope, port: 53"));
    assert!(e.contains("traffic[0].to") && e.contains("a/nope"), "{e}");
    let e = err(&MINIMAL.replace(
        "namespace: a, ports: [{port: 80}]",
        "namespace: b, ports: [{port: 80}]",
    ));
    assert!(e.contains("pods[0].namespace"), "{e}");
    let e = err(&MINIMAL.replace("ip: 10.244.0.53", "ip: 203.0.113.10"));
    assert!(e.contains("already used"), "{e}");
    let e = err(&MINIMAL.replace("expect: answered", "expect: established"));
    assert!(e.contains("traffic[0].expect"), "{e}");
    let e = err(&MINIMAL.replace("name: t", "name: t\ncolour: red"));
    assert!(e.contains("colour"), "unknown fields are errors: {e}");
    let e = err(&MINIMAL.replace("ip: 10.244.0.53", "ip: 10.244.0.999"));
    assert!(e.contains("s.yaml"), "{e}");
}
