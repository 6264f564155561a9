//! A recording session: capture -> decode -> aggregate, until told to stop, or taken from
//! as it goes (the agent).
use std::{future::Future, time::Duration};

use probe_common::{FlowKey, FlowStats};

use crate::{
    aggregate::{monotonic_ns, Aggregator, Totals},
    capture::{CaptureError, Sensor, SensorStats},
    decode::decode,
    existing::{self, Scan},
};
use chrono::{DateTime, Utc};
use flowpol_analysis::record::{Capture, FlowRecord};

/// How often counters of kernel-aggregated flows are read back.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Longest wait on an empty ring buffer before checking the stop condition and timers.
const POLL: Duration = Duration::from_millis(100);

/// What a session saw besides its records.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub totals: Totals,
    /// Events delivered by the ring buffer.
    pub events: u64,
    /// Events lost in the kernel: ring buffer full (summed over CPUs) or probe runs the
    /// kernel skipped on recursion.
    pub events_lost: u64,
    #[serde(flatten)]
    pub probe: SensorStats,
    /// Events that did not decode (a probe/userspace mismatch; never expected).
    pub decode_errors: u64,
    /// Aggregated flows whose kernel counters were evicted before the final read.
    pub counters_evicted: u64,
    /// What was found open when the probe started.
    pub before_start: BeforeStart,
    #[serde(skip)]
    pub node: Option<String>,
    #[serde(skip)]
    pub started: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub ended: Option<DateTime<Utc>>,
}

impl Summary {
    /// The losses, as the line a recording's flow file ends with.
    pub fn capture(&self) -> Capture {
        Capture {
            node: self.node.clone(),
            started: self.started,
            ended: self.ended,
            events_lost: self.events_lost,
            decode_errors: self.decode_errors,
            counters_evicted: self.counters_evicted,
            namespaces_not_listed: self.before_start.failed.len() as u64,
            model_incomplete_ms: 0,
        }
    }
}

/// The listing of the node's sockets at start ([`existing`]).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BeforeStart {
    /// TCP connections found established (each side that is on this node).
    pub connections: usize,
    pub namespaces: usize,
    pub scan_ms: u64,
    /// Namespaces that could not be listed, and why: connections there may be missing.
    pub failed: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flowpol: {} flow records from {} events",
            self.totals.records, self.events
        )?;
        for (verdict, n) in &self.totals.connections {
            writeln!(f, "  tcp {verdict:<12} {n}")?;
        }
        writeln!(f, "  udp flows        {}", self.totals.udp_flows)?;
        if self.totals.drops_by_reason.is_empty() {
            writeln!(f, "  drops            0")?;
        }
        for (reason, n) in &self.totals.drops_by_reason {
            writeln!(f, "  dropped {reason:<24} {n} packets")?;
        }
        let b = &self.before_start;
        writeln!(
            f,
            "  open at start    {} connections in {} namespaces (listed in {} ms)",
            b.connections, b.namespaces, b.scan_ms
        )?;
        for failed in &b.failed {
            writeln!(f, "  not listed       {failed}")?;
        }
        write!(f, "  events lost      {}", self.losses())
    }
}

impl Summary {
    /// Events lost, and what else the capture could not read, as one line.
    pub fn losses(&self) -> String {
        format!(
            "{} (ring full per CPU: {:?}, skipped on recursion: {}), decode errors {}, counters evicted {}",
            self.events_lost,
            self.probe.ring_full_per_cpu,
            self.probe.recursion_misses,
            self.decode_errors,
            self.counters_evicted
        )
    }
}

/// Where a session's events and kernel-side counters come from: the eBPF sensor
/// ([`Sensor`]), or a script in the tests.
pub trait EventSource {
    /// Waits up to `timeout` for events, then hands every pending one to `f`.
    fn next_batch(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> impl Future<Output = Result<(), CaptureError>>;
    /// Hands every pending event to `f` without waiting.
    fn drain(&mut self, f: impl FnMut(&[u8]));
    /// The kernel's counters of an aggregated flow, `None` once its map no longer holds it.
    fn flow_stats(&self, key: &FlowKey) -> Option<FlowStats>;
    /// Removes a flow from the kernel's map, so its next packet starts it anew.
    fn forget(&mut self, key: &FlowKey);
    fn stats(&self) -> SensorStats;
    /// Tells the probe the netns of a socket older than it.
    fn learn_netns(&mut self, cookie: u64, netns: u32);
}

impl EventSource for Sensor {
    fn next_batch(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> impl Future<Output = Result<(), CaptureError>> {
        Sensor::next_batch(self, timeout, f)
    }
    fn drain(&mut self, f: impl FnMut(&[u8])) {
        Sensor::drain(self, f)
    }
    fn flow_stats(&self, key: &FlowKey) -> Option<FlowStats> {
        Sensor::flow_stats(self, key)
    }
    fn forget(&mut self, key: &FlowKey) {
        Sensor::forget(self, key)
    }
    fn stats(&self) -> SensorStats {
        Sensor::stats(self)
    }
    fn learn_netns(&mut self, cookie: u64, netns: u32) {
        Sensor::learn_netns(self, cookie, netns)
    }
}

/// Runs capture until `stop` completes, then drains what is left.
pub struct Session<S = Sensor> {
    probe: S,
    agg: Aggregator,
    events: u64,
    decode_errors: u64,
    counters_evicted: u64,
    before_start: BeforeStart,
    started: DateTime<Utc>,
}

impl Session<Sensor> {
    /// A session on a probe just loaded, starting from the connections already open on
    /// this node (see [`existing`]): listed after the probe is attached, so none falls
    /// between the two.
    pub fn starting_from_open(probe: Sensor, agg: Aggregator) -> Self {
        let mut session = Self::new(probe, agg);
        session.adopt(&existing::scan(), monotonic_ns());
        session
    }
}

impl<S: EventSource> Session<S> {
    pub fn new(probe: S, agg: Aggregator) -> Self {
        Self {
            probe,
            agg,
            events: 0,
            decode_errors: 0,
            counters_evicted: 0,
            before_start: BeforeStart::default(),
            started: Utc::now(),
        }
    }

    /// The event source, for a test that scripts it as the session runs.
    #[cfg(feature = "script")]
    pub fn probe_mut(&mut self) -> &mut S {
        &mut self.probe
    }

    /// Takes in what a listing of the node's sockets found, made at `at_ns`.
    pub fn adopt(&mut self, scan: &Scan, at_ns: u64) {
        let conns = existing::connections(&scan.sockets);
        let found = self.agg.add_before_start(&conns, at_ns);
        for (cookie, netns) in existing::udp_namespaces(&scan.sockets) {
            self.probe.learn_netns(cookie, netns);
        }
        for (path, why) in &scan.failed {
            tracing::warn!(
                "cannot list the sockets of network namespace {}: {why}; connections open there before the start are missing",
                path.display()
            );
        }
        self.before_start = BeforeStart {
            connections: found,
            namespaces: scan.namespaces,
            scan_ms: scan.elapsed.as_millis() as u64,
            failed: scan
                .failed
                .iter()
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect(),
        };
    }

    /// Captures until `stop` completes, and returns its output.
    pub async fn run<T>(&mut self, stop: impl Future<Output = T>) -> Result<T, CaptureError> {
        tokio::pin!(stop);
        let mut last_sync = tokio::time::Instant::now();
        loop {
            let Self {
                probe,
                agg,
                events,
                decode_errors,
                ..
            } = self;
            tokio::select! {
                out = &mut stop => return Ok(out),
                r = probe.next_batch(POLL, |bytes| ingest(agg, events, decode_errors, bytes)) => r?,
            }
            if last_sync.elapsed() >= SYNC_EVERY {
                self.sync_counters();
                last_sync = tokio::time::Instant::now();
            }
        }
    }

    /// Decodes and aggregates every pending event.
    fn drain(&mut self) {
        let Self {
            probe,
            agg,
            events,
            decode_errors,
            ..
        } = self;
        probe.drain(|bytes| ingest(agg, events, decode_errors, bytes));
    }

    /// Reads the kernel's counters of every flow; returns the flows it no longer holds.
    fn sync_counters(&mut self) -> Vec<FlowKey> {
        let keys: Vec<_> = self.agg.kernel_counted().copied().collect();
        let mut evicted = Vec::new();
        for key in keys {
            match self.probe.flow_stats(&key) {
                Some(stats) => self.agg.update_counters(&key, stats),
                None => evicted.push(key),
            }
        }
        evicted
    }

    /// What was seen since the last call (see [`Aggregator::take`]), for a process that
    /// runs for days; flows quiet for `idle` are forgotten here and in the kernel.
    pub fn take(&mut self, idle: Duration) -> Vec<FlowRecord> {
        self.drain();
        let gone = self.sync_counters();
        self.counters_evicted += gone.len() as u64;
        let idle_before = monotonic_ns().saturating_sub(idle.as_nanos() as u64);
        let (records, retired) = self.agg.take(idle_before, &gone);
        for key in &retired {
            self.probe.forget(key);
        }
        records
    }

    /// Counters so far (totals of what is still held, for a session that is not taken from).
    pub fn summary(&self) -> Summary {
        let probe = self.probe.stats();
        Summary {
            totals: self.agg.totals(),
            events: self.events,
            events_lost: probe.events_lost(),
            probe,
            decode_errors: self.decode_errors,
            counters_evicted: self.counters_evicted,
            before_start: self.before_start.clone(),
            node: self.agg.node().map(str::to_owned),
            started: Some(self.started),
            ended: Some(Utc::now()),
        }
    }

    /// Drains the ring buffer, reads the final counters and returns the records.
    pub fn finish(mut self) -> (Vec<FlowRecord>, Summary) {
        self.drain();
        let evicted = self.sync_counters();
        self.counters_evicted += evicted.len() as u64;
        (self.agg.records(), self.summary())
    }
}

fn ingest(agg: &mut Aggregator, events: &mut u64, decode_errors: &mut u64, bytes: &[u8]) {
    *events += 1;
    match decode(bytes) {
        Ok(obs) => agg.add(obs),
        Err(e) => {
            *decode_errors += 1;
            tracing::warn!("undecodable probe event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flowpol_analysis::record::Verdict;
    use probe_common::UDP_LOCAL_INITIATOR;

    use super::*;
    use crate::{
        aggregate::Clock,
        script::{udp, Script},
    };

    fn session(script: Script) -> Session<Script> {
        Session::new(
            script,
            Aggregator::new(None, Clock::from_offset_ns(0), HashMap::new()),
        )
    }

    fn counters(packets: u64, replies: u64, last_ns: u64) -> FlowStats {
        FlowStats {
            first_ns: 1_000,
            last_ns,
            packets,
            replies,
            flags: UDP_LOCAL_INITIATOR,
            ..FlowStats::ZERO
        }
    }

    #[test]
    fn each_take_reports_the_packets_counted_in_the_kernel_since_the_last() {
        let now = monotonic_ns();
        let (ev, key) = udp(1_000);
        let mut s = session(Script {
            pending: vec![ev],
            counters: HashMap::from([(key, counters(5, 2, now))]),
            ..Script::default()
        });
        let first = s.take(Duration::from_secs(60));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].count, first[0].replies), (5, Some(2)));
        assert_eq!(first[0].verdict, Some(Verdict::Sent), "no answer flag");
        s.probe.counters.insert(key, counters(8, 2, now + 1));
        let second = s.take(Duration::from_secs(60));
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].count, second[0].replies), (3, Some(0)));
        assert!(s.take(Duration::from_secs(60)).is_empty(), "nothing new");
        assert!(s.probe.forgotten.is_empty(), "active within the idle time");
    }

    #[test]
    fn a_flow_quiet_for_the_idle_time_is_forgotten_here_and_in_the_kernel() {
        let (ev, key) = udp(1_000);
        let mut s = session(Script {
            pending: vec![ev],
            counters: HashMap::from([(key, counters(1, 0, 1_000))]),
            ..Script::default()
        });
        assert_eq!(s.take(Duration::from_secs(1)).len(), 1);
        // Last packet at 1 µs after boot, long before now minus a second.
        assert!(s.take(Duration::from_secs(1)).is_empty());
        assert_eq!(s.probe.forgotten, vec![key]);
        assert_eq!(s.agg.kernel_counted().count(), 0);
        assert_eq!(s.summary().counters_evicted, 0, "retired, not evicted");
    }

    #[test]
    fn a_flow_the_kernel_evicted_is_reported_once_and_counted() {
        let (ev, _) = udp(1_000);
        let mut s = session(Script {
            pending: vec![ev],
            ..Script::default()
        });
        let records = s.take(Duration::from_secs(60));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].count, 1, "only the event is known");
        assert_eq!(s.summary().counters_evicted, 1);
        assert!(s.take(Duration::from_secs(60)).is_empty());
        assert_eq!(s.summary().counters_evicted, 1);
    }

    #[test]
    fn undecodable_events_and_kernel_losses_are_counted_not_dropped_silently() {
        let (ev, key) = udp(1_000);
        let s = session(Script {
            pending: vec![ev, vec![1, 2, 3]],
            counters: HashMap::from([(key, counters(4, 0, 2_000))]),
            stats: SensorStats {
                ring_full_per_cpu: vec![2, 1],
                ..SensorStats::default()
            },
            ..Script::default()
        });
        let (records, summary) = s.finish();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].count, 4, "final counters read at the end");
        assert_eq!(summary.events, 2);
        assert_eq!(summary.decode_errors, 1);
        assert_eq!(summary.events_lost, 3);
    }

    fn listed(netns: u32, state: u8, local: &str, remote: &str) -> existing::Socket {
        existing::Socket {
            netns,
            protocol: flowpol_analysis::record::Protocol::TCP,
            entry: existing::diag::Entry {
                state,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                cookie: 0,
                cgroup_id: 0,
            },
        }
    }

    #[test]
    fn connections_open_at_start_are_reported_once_per_side_and_marked() {
        use existing::diag::{ESTABLISHED, LISTEN};
        use flowpol_analysis::record::{Side, Since};
        // 10.0.0.1:40000 -> 10.0.0.2:8080 established before the start, both ends on this
        // node (netns 1 the client's, 2 the server's); and one more the probe then saw
        // being made, as the listing ran just after its handshake (the script's event).
        let mut sockets = vec![
            listed(2, LISTEN, "0.0.0.0:8080", "0.0.0.0:0"),
            listed(1, ESTABLISHED, "10.0.0.1:40000", "10.0.0.2:8080"),
            listed(2, ESTABLISHED, "10.0.0.2:8080", "10.0.0.1:40000"),
            listed(9, ESTABLISHED, "10.0.0.1:40000", "10.0.0.2:8080"),
        ];
        // Listed twice (two threads of one process in the namespace): still once.
        sockets.push(sockets[1].clone());
        let mut udp = listed(3, 7, "0.0.0.0:53", "0.0.0.0:0");
        udp.protocol = flowpol_analysis::record::Protocol::UDP;
        udp.entry.cookie = 42;
        sockets.push(udp);
        // A resolver's UDP socket in netns 3, connected to its server and idle.
        let mut resolver = listed(3, ESTABLISHED, "10.0.0.3:41000", "10.0.0.53:53");
        resolver.protocol = flowpol_analysis::record::Protocol::UDP;
        sockets.push(resolver);
        let mut seen = crate::script::event(
            probe_common::EventKind::TcpEstablishedOut,
            probe_common::AF_INET,
            probe_common::IPPROTO_TCP,
        );
        (seen.netns, seen.key.netns) = (9, 9);
        let mut s = session(Script {
            pending: vec![crate::script::bytes(&seen)],
            ..Script::default()
        });
        s.adopt(
            &Scan {
                sockets,
                namespaces: 4,
                ..Scan::default()
            },
            1_000,
        );
        assert_eq!(
            s.probe.learnt,
            HashMap::from([(42, 3)]),
            "the UDP socket's netns"
        );
        // The summary's totals: TCP connections apart from UDP flows, the socket among them.
        let totals = s.summary().totals;
        use flowpol_analysis::record::{Protocol::*, Verdict::*};
        assert_eq!(totals.connections, [(Established, 3)].into());
        assert_eq!(totals.udp_flows, 1);
        let records = s.take(Duration::from_secs(60));
        let got: Vec<_> = records
            .iter()
            .map(|r| {
                let o = r.observer.as_ref().unwrap();
                (o.netns, r.protocol, r.verdict, o.side, o.since, r.count)
            })
            .collect();
        let mut want = vec![
            (
                1,
                TCP,
                Some(Established),
                Side::Client,
                Some(Since::BeforeStart),
                1,
            ),
            (
                2,
                TCP,
                Some(Established),
                Side::Server,
                Some(Since::BeforeStart),
                1,
            ),
            (
                3,
                UDP,
                Some(Sent),
                Side::Client,
                Some(Since::BeforeStart),
                1,
            ),
            (9, TCP, Some(Established), Side::Client, None, 1),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "{records:#?}");
        assert_eq!(s.summary().before_start.connections, 4);
        assert!(s.take(Duration::from_secs(60)).is_empty(), "taken once");
    }

    #[tokio::test]
    async fn run_stops_when_told_and_keeps_what_arrived() {
        let (ev, key) = udp(1_000);
        let mut s = session(Script {
            pending: vec![ev],
            counters: HashMap::from([(key, counters(2, 0, 2_000))]),
            ..Script::default()
        });
        s.run(tokio::time::sleep(Duration::from_millis(20)))
            .await
            .unwrap();
        let (records, summary) = s.finish();
        assert_eq!(summary.events, 1);
        assert_eq!(records[0].count, 2);
    }
}
