//! The agent's round without root: events from a script, the model from a switch the test
//! flips, records read back from the output file. Expected names and counts are the test's
//! own cluster and events, worked by hand.
use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use flowpol_analysis::{cluster::snapshot, record::read_json_lines};
use flowpol_node::{
    aggregate::{Aggregator, Clock},
    script::{tcp_established, Script},
};

use super::*;

const CLUSTER: &str = include_str!("../../../tests/fixtures/web-api.yaml");

const DENY_API_INGRESS: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-api, namespace: a}
spec: {podSelector: {matchLabels: {app: api}}, policyTypes: [Ingress]}
";

/// The model, complete once the test says so.
struct Switch {
    complete: Arc<AtomicBool>,
    fixed: Fixed,
}

impl ModelSource for Switch {
    fn current(&self, metrics: &Metrics) -> Current {
        if self.complete.load(Ordering::Relaxed) {
            self.fixed.current(metrics)
        } else {
            Current::Incomplete("cluster model: pods not listed yet".into())
        }
    }
}

struct Test {
    agent: Agent<Script>,
    complete: Arc<AtomicBool>,
    output: PathBuf,
}

fn agent(yaml: &str, events: Vec<Vec<u8>>) -> Test {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flowpol-agent-round-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("records.jsonl");
    let snap = snapshot::parse("test", yaml).unwrap();
    let complete = Arc::new(AtomicBool::new(false));
    let model = Switch {
        complete: complete.clone(),
        fixed: Fixed {
            cluster: Arc::new(snap.cluster),
            policies: Policies {
                network: snap.policies,
                cluster: snap.cluster_policies,
            },
        },
    };
    let config = Config {
        node: "node-a".into(),
        round: Duration::from_secs(10),
        idle: Duration::from_secs(120),
        max_edges: 100,
        flush_every: Duration::from_secs(30),
        counts_every: Duration::from_secs(300),
        writes_per_second: 5.0,
        shutdown_timeout: Duration::from_secs(1),
        cgroup_root: dir.join("no-cgroups"),
        duration: None,
        state_dir: None,
    };
    let session = Session::new(
        Script {
            pending: events,
            ..Script::default()
        },
        Aggregator::new(Some("node-a".into()), Clock::system(), HashMap::new()),
    );
    let health = Arc::new(Health::new(Metrics::new(), config.round));
    let sink = Sink::File(Rotating::open(&output, 1 << 20, 1).unwrap());
    Test {
        agent: Agent::new(config, session, Box::new(model), None, sink, health),
        complete,
        output,
    }
}

impl Test {
    fn written(&self) -> Vec<FlowRecord> {
        if !self.output.exists() {
            return Vec::new();
        }
        read_json_lines(&self.output).unwrap()
    }

    fn pods(&self) -> Vec<(Option<String>, Option<String>, u64)> {
        self.written()
            .into_iter()
            .map(|r| (r.src.identity.pod, r.dst.identity.pod, r.count))
            .collect()
    }

    fn edges(&self) -> usize {
        lock(&self.agent.observed).len()
    }
}

#[test]
fn records_are_held_back_until_the_model_is_complete_then_named() {
    let mut t = agent(CLUSTER, vec![tcp_established([10, 0, 0, 2])]);
    t.agent.round(false).unwrap();
    assert!(t.written().is_empty(), "nothing written unnamed");
    assert_eq!(t.agent.held.len(), 1);
    assert_eq!(t.edges(), 0);
    t.complete.store(true, Ordering::Relaxed);
    t.agent.round(false).unwrap();
    assert_eq!(
        t.pods(),
        vec![(Some("web-1".into()), Some("api-1".into()), 1)]
    );
    assert!(t.agent.held.is_empty());
    // web's egress edge: this node saw the client side.
    assert_eq!(t.edges(), 1);
}

#[test]
fn past_the_bound_held_records_go_out_unnamed_rather_than_lost() {
    let mut t = agent(
        CLUSTER,
        vec![
            tcp_established([10, 0, 0, 2]),
            tcp_established([10, 0, 0, 9]),
        ],
    );
    t.agent.hold_max = 1;
    t.agent.round(false).unwrap();
    let written = t.pods();
    assert_eq!(written.len(), 2);
    assert!(written
        .iter()
        .all(|(src, dst, _)| src.is_none() && dst.is_none()));
    assert!(t.agent.held.is_empty());
    assert_eq!(t.edges(), 0, "unnamed records make no workload edges");
}

#[test]
fn the_last_round_writes_what_is_held_even_without_a_model() {
    let mut t = agent(CLUSTER, vec![tcp_established([10, 0, 0, 2])]);
    t.agent.round(false).unwrap();
    t.agent.round(true).unwrap();
    assert_eq!(t.pods(), vec![(None, None, 1)]);
    assert_eq!(t.agent.written.records, 1);
}

#[test]
fn each_round_judges_its_records_against_the_policies() {
    let yaml = format!("{CLUSTER}{DENY_API_INGRESS}");
    let mut t = agent(&yaml, vec![tcp_established([10, 0, 0, 2])]);
    t.complete.store(true, Ordering::Relaxed);
    t.agent.round(false).unwrap();
    // Established although the policy isolates api with no ingress rule: a gap.
    let metrics = t.agent.health.metrics.encode();
    assert!(
        metrics.contains("flowpol_findings_total{kind=\"enforcement_gap\"} 1"),
        "{metrics}"
    );
    // The exposures of the declared policies were computed with the model.
    assert!(metrics.contains("flowpol_exposures{"), "{metrics}");
}

#[test]
fn events_lost_in_a_round_are_written_beside_its_records_once() {
    let mut t = agent(CLUSTER, vec![tcp_established([10, 0, 0, 2])]);
    t.complete.store(true, Ordering::Relaxed);
    t.agent.round(false).unwrap();
    let flows = flowpol_analysis::record::read_flows(&t.output).unwrap();
    assert!(flows.captures.is_empty(), "nothing lost, nothing said");
    // The kernel reports 5 events lost on one CPU and 2 on another: said once, in the next
    // round, with the span it happened in.
    t.agent.session.probe_mut().stats.ring_full_per_cpu = vec![5, 2];
    t.agent.round(false).unwrap();
    t.agent.round(false).unwrap();
    let flows = flowpol_analysis::record::read_flows(&t.output).unwrap();
    assert_eq!(flows.captures.len(), 1, "{:?}", flows.captures);
    let c = &flows.captures[0];
    assert_eq!((c.events_lost, c.node.as_deref()), (7, Some("node-a")));
    assert!(c.started <= c.ended && c.started.is_some());
    assert_eq!(flows.missing_flows().len(), 1);
    assert_eq!(flows.records.len(), 1, "the records are all still read");
}

#[test]
fn the_time_the_model_was_incomplete_is_written_and_counted() {
    let mut t = agent(CLUSTER, vec![tcp_established([10, 0, 0, 2])]);
    t.agent.round(false).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    t.complete.store(true, Ordering::Relaxed);
    t.agent.round(false).unwrap();
    t.agent.round(false).unwrap();
    let flows = flowpol_analysis::record::read_flows(&t.output).unwrap();
    let incomplete: u64 = flows.captures.iter().map(|c| c.model_incomplete_ms).sum();
    assert!(incomplete >= 30, "{:?}", flows.captures);
    assert!(flows.missing_flows().is_empty(), "no flow missing for it");
    let text = t.agent.health.metrics.encode();
    let seconds: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("flowpol_model_incomplete_seconds_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no model_incomplete metric in\n{text}"));
    assert!(seconds >= 0.03, "{seconds}");
}
