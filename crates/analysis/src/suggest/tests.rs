use super::*;
use crate::cluster::snapshot;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
    )
}

fn cluster(pods: &[String]) -> Cluster {
    snapshot::parse("t", &pods.concat()).unwrap().cluster
}

fn selector_of(c: &Cluster, names: &[&str]) -> (Labels, bool) {
    let ids: Vec<PodId> = names
        .iter()
        .map(|n| c.pod_by_name("a", n).unwrap())
        .collect();
    stable_selector(c, &ids)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn selectors_use_stable_labels_that_select_exactly_the_workload() {
    let c = cluster(&[
        pod("a", "prod-1", "10.0.0.1", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: prod, pod-template-hash: h1}"),
        pod("a", "prod-2", "10.0.0.2", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: prod, pod-template-hash: h2}"),
        pod("a", "canary", "10.0.0.3", "{app.kubernetes.io/name: api, app.kubernetes.io/instance: canary}"),
        pod("a", "old", "10.0.0.4", "{app: legacy, pod-template-hash: h3, tier: x}"),
    ]);
    assert_eq!(
        selector_of(&c, &["prod-1", "prod-2"]),
        (
            labels(&[
                ("app.kubernetes.io/instance", "prod"),
                ("app.kubernetes.io/name", "api")
            ]),
            true
        ),
        "name alone would also select the canary"
    );
    assert_eq!(
        selector_of(&c, &["old"]),
        (labels(&[("app", "legacy")]), true)
    );
}

#[test]
fn twins_cannot_be_told_apart_and_say_so() {
    let c = cluster(&[
        pod("a", "one", "10.0.0.1", "{app: same}"),
        pod("a", "two", "10.0.0.2", "{app: same}"),
    ]);
    assert_eq!(
        selector_of(&c, &["one"]),
        (labels(&[("app", "same")]), false)
    );
}

#[test]
fn three_or_more_consecutive_ports_become_a_range() {
    let ports: BTreeSet<Port> = [80, 81, 82, 90, 91]
        .into_iter()
        .map(|p| (Protocol::TCP, p))
        .chain([(Protocol::UDP, 83)])
        .collect();
    let got: Vec<(Option<i32>, Option<i32>, String)> = render::port_list(&ports)
        .into_iter()
        .map(|p| {
            let n = match p.port {
                Some(IntOrString::Int(n)) => Some(n),
                _ => None,
            };
            (n, p.end_port, p.protocol.unwrap())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(80), Some(82), "TCP".into()),
            (Some(90), None, "TCP".into()),
            (Some(91), None, "TCP".into()),
            (Some(83), None, "UDP".into()),
        ]
    );
}

#[test]
fn many_outside_addresses_on_one_port_become_the_internet_without_private_ranges() {
    let mut edges: BTreeMap<Peer, BTreeMap<Port, Evidence>> = BTreeMap::new();
    for i in 1..=5u8 {
        let peer = Peer::Block {
            cidr: IpNet::from(IpAddr::from([198, 51, 100, i])),
            except: Vec::new(),
            note: None,
        };
        let ev = Evidence {
            count: 1,
            first: None,
            last: None,
        };
        edges
            .entry(peer)
            .or_default()
            .insert((Protocol::TCP, 443), ev);
    }
    let mut few = edges.clone();
    widen_to_internet(&mut few, 5);
    assert_eq!(few.len(), 5, "at the threshold: still one /32 each");
    widen_to_internet(&mut edges, 4);
    let (peer, ports) = edges.iter().next().unwrap();
    assert_eq!(edges.len(), 1);
    assert!(matches!(peer, Peer::Block { cidr, except, .. }
        if cidr.to_string() == "0.0.0.0/0" && except.iter().any(|e| e.to_string() == "10.0.0.0/8")));
    assert_eq!(ports[&(Protocol::TCP, 443)].count, 5);
}

fn with_port(ns: &str, name: &str, ip: &str, labels: &str, port: u16) -> String {
    pod(ns, name, ip, labels).replace(
        "containers: [{name: c}]",
        &format!("containers: [{{name: c, ports: [{{containerPort: {port}}}]}}]"),
    )
}

fn flow(src: &str, dst: &str, port: u16) -> FlowRecord {
    FlowRecord::new(
        Protocol::TCP,
        crate::record::Endpoint::new(src.parse().unwrap(), None),
        crate::record::Endpoint::new(dst.parse().unwrap(), Some(port)),
        Some(crate::record::Verdict::Established),
    )
}

fn engine_of<'c>(c: &'c Cluster, s: &Suggestion) -> crate::policy::engine::Engine<'c> {
    let compiled = crate::policy::compile_all(&s.policies).unwrap();
    crate::policy::engine::Engine::new(c, compiled)
}

/// The excess, computed by hand: a canary shares its labels with the observed api pod,
/// so whatever the api pod may do, the canary may too.
#[test]
fn excess_is_what_shared_labels_open_beyond_the_observed() {
    let c = cluster(&[
        with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
        with_port("a", "api-1", "10.0.0.2", "{app: api}", 8080),
        with_port("a", "api-canary", "10.0.0.3", "{app: api}", 8080),
        with_port("a", "db-1", "10.0.0.4", "{app: db}", 5432),
    ]);
    let flows = [
        flow("10.0.0.1", "10.0.0.2", 8080),
        flow("10.0.0.2", "10.0.0.4", 5432),
    ];
    let s = suggest(&c, &flows, &Options::default());
    assert_eq!(s.inexact, vec!["a/Pod/api-1".to_owned()]);
    let engine = engine_of(&c, &s);
    assert!(denied(&engine, &flows).is_empty());
    let got = excess(&engine, &flows, &namespaces_of(&s));
    assert_eq!(
        got,
        vec![
            (
                "a/Pod/web-1".into(),
                "a/Pod/api-canary".into(),
                8080,
                Protocol::TCP
            ),
            (
                "a/Pod/api-canary".into(),
                "a/Pod/db-1".into(),
                5432,
                Protocol::TCP
            ),
        ]
    );
    // With workload-granular labels there is none.
    let c = cluster(&[
        with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
        with_port("a", "api-1", "10.0.0.2", "{app: api, track: stable}", 8080),
        with_port(
            "a",
            "api-canary",
            "10.0.0.3",
            "{app: api, track: canary}",
            8080,
        ),
        with_port("a", "db-1", "10.0.0.4", "{app: db}", 5432),
    ]);
    let s = suggest(&c, &flows, &Options::default());
    let engine = engine_of(&c, &s);
    assert_eq!(excess(&engine, &flows, &namespaces_of(&s)), Vec::new());
}

#[test]
fn cilium_rules_keep_port_ranges() {
    let g = Group {
        ports: [80, 81, 82, 443]
            .into_iter()
            .map(|p| (Protocol::TCP, p))
            .collect(),
        peers: vec![Peer::Block {
            cidr: "198.51.100.7/32".parse().unwrap(),
            except: Vec::new(),
            note: None,
        }],
        explain: Vec::new(),
    };
    let rules = cilium::rules("a", &[g], cilium::Way::To);
    assert_eq!(
        serde_json::to_value(rules).unwrap(),
        serde_json::json!([{
            "toCIDRSet": [{"cidr": "198.51.100.7/32"}],
            "toPorts": [{"ports": [
                {"port": "80", "endPort": 82, "protocol": "TCP"},
                {"port": "443", "protocol": "TCP"},
            ]}],
        }])
    );
}

#[test]
fn policy_names_are_dns_labels() {
    let w = |kind: &str, name: &str| Workload {
        kind: kind.into(),
        name: name.into(),
    };
    assert_eq!(render::policy_name(&w("Deployment", "web")), "allow-web");
    assert_eq!(
        render::policy_name(&w("CronJob", "Nightly_Report")),
        "allow-cronjob-nightly-report"
    );
}

/// Diff mode, worked by hand: today web may reach api by a rule on both ends, so only
/// api -> db needs new rules; a default deny in `a` would break api -> db (allowed today
/// only because neither end is isolated), and no default deny is written.
#[test]
fn diff_mode_writes_only_what_todays_policies_lack() {
    let yaml = [
        with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
        with_port("a", "api-1", "10.0.0.2", "{app: api}", 8080),
        with_port("a", "db-1", "10.0.0.4", "{app: db}", 5432),
        format!(
            "---\n{}",
            include_str!("../../../../tests/fixtures/api-from-web.yaml")
        ),
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-api, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8080}]}]
"
        .to_owned(),
    ]
    .concat();
    let snap = snapshot::parse("t", &yaml).unwrap();
    let existing = crate::policy::compile_all(&snap.policies).unwrap();
    let mut flows = vec![
        flow("10.0.0.1", "10.0.0.2", 8080),
        flow("10.0.0.2", "10.0.0.4", 5432),
    ];
    crate::attribute::enrich(&snap.cluster, &mut flows);
    let p = prove(
        &snap.cluster,
        &existing,
        &[],
        &flows,
        &Options::default(),
        true,
    )
    .unwrap();
    let diff = p.diff.expect("diff mode");
    assert_eq!(diff.needing_rules, 1);
    let broken: Vec<(String, String)> = diff
        .would_break
        .iter()
        .map(|r| (r.src.ip.to_string(), r.dst.ip.to_string()))
        .collect();
    assert_eq!(broken, vec![("10.0.0.2".into(), "10.0.0.4".into())]);
    let names: Vec<&str> = p
        .suggestion
        .policies
        .iter()
        .filter_map(|np| np.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["allow-pod-api-1", "allow-pod-db-1"]);
    assert_eq!(p.replayed, 2);
    // The written rules: api may send to db on 5432, db receive from api on 5432.
    let rules = |name: &str| {
        let np = p
            .suggestion
            .policies
            .iter()
            .find(|np| np.metadata.name.as_deref() == Some(name))
            .unwrap();
        serde_json::to_value(np.spec.as_ref().unwrap()).unwrap()
    };
    assert_eq!(
        rules("allow-pod-api-1")["egress"],
        serde_json::json!([{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432, "protocol": "TCP"}]}])
    );
    assert_eq!(rules("allow-pod-api-1")["ingress"], serde_json::json!([]));
    assert_eq!(
        rules("allow-pod-db-1")["ingress"],
        serde_json::json!([{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 5432, "protocol": "TCP"}]}])
    );
}

/// With `--namespace a`, a flow with its other end in `b` depends on policies in `b` that
/// are not written, so it is not replayed; the flow within `a` is.
#[test]
fn only_flows_within_the_chosen_namespaces_are_replayed() {
    let c = cluster(&[
        with_port("a", "web-1", "10.0.0.1", "{app: web}", 80),
        with_port("a", "api-1", "10.0.0.2", "{app: api}", 8080),
        with_port("b", "x-1", "10.0.1.1", "{app: x}", 9000),
    ]);
    let mut flows = vec![
        flow("10.0.0.1", "10.0.0.2", 8080),
        flow("10.0.0.1", "10.0.1.1", 9000),
    ];
    crate::attribute::enrich(&c, &mut flows);
    let options = Options {
        namespaces: vec!["a".into()],
        ..Options::default()
    };
    let p = prove(&c, &[], &[], &flows, &options, false).unwrap();
    assert_eq!(p.replayed, 1);
    assert_eq!(p.namespaces, BTreeSet::from(["a".to_owned()]));
    assert!(p.diff.is_none());
    assert_eq!(p.excess, Vec::new());
}
