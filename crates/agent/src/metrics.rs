//! What the agent exports to Prometheus (OpenMetrics text at `/metrics`).
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use flowpol_analysis::{
    observed::Observed,
    record::FlowRecord,
    verify::{self, Finding},
};
use flowpol_kube::watch::Status;
use flowpol_node::session::Summary;

type Label = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

pub struct Metrics {
    registry: Registry,
    records: Family<Labels2, Counter>,
    observations: Family<Labels2, Counter>,
    drops: Family<Label, Counter>,
    findings: Family<Label, Counter>,
    exposures: Family<Label, Gauge>,
    events: Counter,
    events_lost: Counter,
    decode_errors: Counter,
    counters_evicted: Counter,
    watch_ready: Family<Label, Gauge>,
    watch_served: Family<Label, Gauge>,
    watch_objects: Family<Label, Gauge>,
    watch_events: Family<Label, Counter>,
    watch_errors: Family<Label, Counter>,
    model_stale: Gauge<f64, AtomicU64>,
    edges: Gauge,
    edges_evicted: Family<Label, Counter>,
    writes: Family<Label, Counter>,
    pending: Gauge,
    last_write: Gauge<f64, AtomicU64>,
    open_at_start: Gauge,
    namespaces_not_listed: Gauge,
    model_incomplete: Counter<f64, AtomicU64>,
}

/// Raises a counter to `value` (a total counted elsewhere: the kernel, the watchers).
fn raise(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

fn label(name: &'static str, value: impl Into<String>) -> Label {
    [(name, value.into())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("flowpol"),
            records: Family::default(),
            observations: Family::default(),
            drops: Family::default(),
            findings: Family::default(),
            exposures: Family::default(),
            events: Counter::default(),
            events_lost: Counter::default(),
            decode_errors: Counter::default(),
            counters_evicted: Counter::default(),
            watch_ready: Family::default(),
            watch_served: Family::default(),
            watch_objects: Family::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            model_stale: Gauge::default(),
            edges: Gauge::default(),
            edges_evicted: Family::default(),
            writes: Family::default(),
            pending: Gauge::default(),
            last_write: Gauge::default(),
            open_at_start: Gauge::default(),
            namespaces_not_listed: Gauge::default(),
            model_incomplete: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "flow_records",
            "Flow records emitted, by protocol and verdict",
            m.records.clone(),
        );
        r.register(
            "observations",
            "Connections, datagrams or packets the records count, by protocol and verdict",
            m.observations.clone(),
        );
        r.register(
            "drops",
            "Packets dropped by the kernel, by drop reason",
            m.drops.clone(),
        );
        r.register(
            "findings",
            "Flow records where the cluster and its policies disagree, by finding kind",
            m.findings.clone(),
        );
        r.register(
            "exposures",
            "What the declared policies leave open, by exposure",
            m.exposures.clone(),
        );
        r.register(
            "events",
            "Events delivered by the probe's ring buffer",
            m.events.clone(),
        );
        r.register(
            "events_lost",
            "Probe events lost in the kernel (ring buffer full, or skipped on recursion)",
            m.events_lost.clone(),
        );
        r.register(
            "decode_errors",
            "Probe events that did not decode",
            m.decode_errors.clone(),
        );
        r.register(
            "flow_counters_evicted",
            "UDP flows and drops whose kernel counters were evicted before they were read",
            m.counters_evicted.clone(),
        );
        r.register(
            "connections_open_at_start",
            "TCP connections found established when the probe started (each side on this node)",
            m.open_at_start.clone(),
        );
        r.register(
            "namespaces_not_listed",
            "Network namespaces whose sockets could not be listed at start",
            m.namespaces_not_listed.clone(),
        );
        r.register(
            "model_incomplete_seconds",
            "Time the cluster model was incomplete, records held back or written unnamed",
            m.model_incomplete.clone(),
        );
        r.register(
            "watch_ready",
            "1 once the kind has been listed fully",
            m.watch_ready.clone(),
        );
        r.register(
            "watch_served",
            "1 when the API server serves the kind (cluster-scoped policy needs its CRDs)",
            m.watch_served.clone(),
        );
        r.register(
            "watch_objects",
            "Objects of the kind in the cluster model",
            m.watch_objects.clone(),
        );
        r.register(
            "watch_events",
            "Watch events received, by kind",
            m.watch_events.clone(),
        );
        r.register(
            "watch_errors",
            "Failed lists and watches, by kind",
            m.watch_errors.clone(),
        );
        r.register(
            "model_stale_seconds",
            "How long the most out-of-date kind has been unable to watch (0 when all are well)",
            m.model_stale.clone(),
        );
        r.register(
            "observed_edges",
            "Aggregated edges held in memory",
            m.edges.clone(),
        );
        r.register(
            "observed_edges_evicted",
            "Edges evicted from memory when full; written=false ones were lost",
            m.edges_evicted.clone(),
        );
        r.register(
            "store_writes",
            "ObservedTraffic server-side applies, by result",
            m.writes.clone(),
        );
        r.register(
            "store_pending_workloads",
            "Workloads with edges not yet written to the cluster",
            m.pending.clone(),
        );
        r.register(
            "store_last_write_timestamp_seconds",
            "When an ObservedTraffic object was last written",
            m.last_write.clone(),
        );
        m
    }

    /// Counts records emitted (attributed or not).
    pub fn records(&self, records: &[FlowRecord]) {
        for r in records {
            let verdict = r
                .verdict
                .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
            let labels = [("protocol", r.protocol.to_string()), ("verdict", verdict)];
            self.records.get_or_create(&labels).inc();
            self.observations.get_or_create(&labels).inc_by(r.count);
            if let Some(reason) = &r.drop_reason {
                self.drops
                    .get_or_create(&label("reason", reason.clone()))
                    .inc_by(r.count);
            }
        }
    }

    /// Counts the records behind each flow finding of a batch.
    pub fn findings(&self, report: &verify::Report) {
        for f in &report.findings {
            let records = match f {
                Finding::EnforcementGap(f) | Finding::OverBlock(f) | Finding::Refused(f) => {
                    f.records
                }
                Finding::Unattributed(u) => u.records,
                Finding::Unprotected(_) => continue,
            };
            self.findings
                .get_or_create(&label("kind", f.kind().as_str()))
                .inc_by(records);
        }
    }

    /// The exposures of the declared policies, as of the latest model.
    pub fn exposures(&self, exposures: &[verify::Unprotected]) {
        self.exposures.clear();
        for e in exposures {
            let name = serde_json::to_value(e.exposure)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.exposures.get_or_create(&label("exposure", name)).inc();
        }
    }

    pub fn probe(&self, s: &Summary) {
        raise(&self.events, s.events);
        raise(&self.events_lost, s.events_lost);
        raise(&self.decode_errors, s.decode_errors);
        raise(&self.counters_evicted, s.counters_evicted);
        self.open_at_start.set(s.before_start.connections as i64);
        self.namespaces_not_listed
            .set(s.before_start.failed.len() as i64);
    }

    pub fn model_incomplete(&self, time: std::time::Duration) {
        self.model_incomplete.inc_by(time.as_secs_f64());
    }

    pub fn watch(&self, status: &Status) {
        for k in &status.kinds {
            let l = label("kind", k.kind.to_string());
            self.watch_ready.get_or_create(&l).set(i64::from(k.ready));
            self.watch_served
                .get_or_create(&l)
                .set(i64::from(!k.absent));
            self.watch_objects.get_or_create(&l).set(k.objects as i64);
            raise(&self.watch_events.get_or_create(&l), k.events);
            raise(&self.watch_errors.get_or_create(&l), k.errors);
        }
        self.model_stale.set(status.stale_seconds);
    }

    /// `stored`: workloads are written to the cluster (else none is ever pending).
    pub fn observed(&self, o: &Observed, stored: bool) {
        self.edges.set(o.len() as i64);
        if stored {
            self.pending.set(o.dirty() as i64);
        }
        raise(
            &self.edges_evicted.get_or_create(&label("written", "true")),
            o.evicted - o.evicted_unwritten,
        );
        raise(
            &self.edges_evicted.get_or_create(&label("written", "false")),
            o.evicted_unwritten,
        );
    }

    pub fn write(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.writes.get_or_create(&label("result", result)).inc();
        if ok {
            self.last_write
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpol_analysis::record::{Endpoint, Protocol, Verdict};

    #[test]
    fn records_and_drops_are_counted_by_label() {
        let m = Metrics::new();
        let mut r = FlowRecord::new(
            Protocol::TCP,
            Endpoint::new("10.0.0.1".parse().unwrap(), None),
            Endpoint::new("10.0.0.2".parse().unwrap(), Some(80)),
            Some(Verdict::Dropped),
        );
        r.count = 3;
        r.drop_reason = Some("NETFILTER_DROP".into());
        m.records(&[r.clone(), r]);
        let text = m.encode();
        for line in [
            "flowpol_flow_records_total{protocol=\"TCP\",verdict=\"dropped\"} 2",
            "flowpol_observations_total{protocol=\"TCP\",verdict=\"dropped\"} 6",
            "flowpol_drops_total{reason=\"NETFILTER_DROP\"} 6",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
