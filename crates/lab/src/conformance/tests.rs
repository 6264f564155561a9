use super::*;
use crate::enforce;
use flowpol_analysis::policy::engine::Connection;

fn set() -> Set {
    parse(UPSTREAM).unwrap()
}

#[test]
fn every_case_becomes_a_scenario_with_one_attempt_per_pair_and_probe() {
    let set = set();
    assert!(set.cases.len() >= 25, "{} cases", set.cases.len());
    let names: BTreeSet<&str> = set.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), set.cases.len(), "case names are unique");
    for case in &set.cases {
        let resolved = set.scenario(case).unwrap();
        assert_eq!(
            resolved.scenario.traffic.len(),
            81 * case.probes.len(),
            "{}",
            case.name
        );
        assert_eq!(resolved.hosts.len(), 9);
        assert_eq!(
            resolved.host("x/a").unwrap().ipv4.to_string(),
            "10.244.0.10"
        );
        assert_eq!(
            resolved.host("z/c").unwrap().ipv4.to_string(),
            "10.244.0.18"
        );
    }
}

/// flowpol's engine holds the same answers as upstream's truth tables, pair by pair (a
/// disagreement here is a bug in flowpol). Self-pairs are left out: in the lab they never
/// leave the pod.
#[test]
fn the_engine_agrees_with_upstream_on_every_case() {
    let set = set();
    let mut wrong = Vec::new();
    for case in &set.cases {
        let resolved = set.scenario(case).unwrap();
        let declared = enforce::declared(&resolved).unwrap();
        let engine = declared.engine();
        for e in set.expected(case).unwrap() {
            if e.from == e.to {
                continue;
            }
            let ip = |id: &str| std::net::IpAddr::V4(resolved.host(id).unwrap().ipv4);
            let allowed = engine
                .evaluate(&Connection {
                    src: ip(&e.from),
                    dst: ip(&e.to),
                    port: e.port,
                    protocol: e.protocol,
                    at: None,
                })
                .allowed;
            if allowed != e.allowed {
                wrong.push(format!(
                    "{}: {} -> {} {}/{}: upstream {}, flowpol {}",
                    case.name, e.from, e.to, e.protocol, e.port, e.allowed, allowed
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn truth_tables_expand_from_either_side() {
    let set = parse(
        "
model:
  namespaces: {x: {labels: {ns: x}}}
  pods: {a: {labels: {pod: a}}, b: {labels: {pod: b}}}
  ports: [{port: 80, protocol: TCP, name: serve-80-tcp}]
cases:
  - name: deny-one
    upstream: t
    policies: []
    probes: [{port: 80, protocol: TCP, denied: [[x/a, x/b]]}]
  - name: allow-one
    upstream: t
    policies: []
    probes: [{port: 80, protocol: TCP, denied: all, allowed: [[x/b, x/a]]}]
",
    )
    .unwrap();
    let allowed = |case: usize| -> Vec<(String, String, bool)> {
        set.expected(&set.cases[case])
            .unwrap()
            .into_iter()
            .map(|e| (e.from, e.to, e.allowed))
            .collect()
    };
    let t = |a: &str, b: &str, ok| (a.to_owned(), b.to_owned(), ok);
    assert_eq!(
        allowed(0),
        [
            t("x/a", "x/a", true),
            t("x/a", "x/b", false),
            t("x/b", "x/a", true),
            t("x/b", "x/b", true)
        ]
    );
    assert_eq!(
        allowed(1),
        [
            t("x/a", "x/a", true),
            t("x/a", "x/b", false),
            t("x/b", "x/a", true),
            t("x/b", "x/b", true)
        ]
    );
}
