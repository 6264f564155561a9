//! A recording session: capture -> decode -> aggregate, until told to stop, or taken from
//! as it goes (the agent).
use std::{future::Future, time::Duration};

use probe_common::FlowKey;

use crate::{
    aggregate::{monotonic_ns, Aggregator, Totals},
    capture::{CaptureError, Probe, ProbeStats},
    decode::decode,
};
use flowpol_analysis::record::FlowRecord;

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
    pub probe: ProbeStats,
    /// Events that did not decode (a probe/userspace mismatch; never expected).
    pub decode_errors: u64,
    /// Aggregated flows whose kernel counters were evicted before the final read.
    pub counters_evicted: u64,
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

/// Runs capture until `stop` completes, then drains what is left.
pub struct Session {
    probe: Probe,
    agg: Aggregator,
    events: u64,
    decode_errors: u64,
    counters_evicted: u64,
}

impl Session {
    pub fn new(probe: Probe, agg: Aggregator) -> Self {
        Self {
            probe,
            agg,
            events: 0,
            decode_errors: 0,
            counters_evicted: 0,
        }
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
        let Self {
            probe,
            agg,
            events,
            decode_errors,
            ..
        } = self;
        probe.drain(|bytes| ingest(agg, events, decode_errors, bytes));
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
        }
    }

    /// Drains the ring buffer, reads the final counters and returns the records.
    pub fn finish(mut self) -> (Vec<FlowRecord>, Summary) {
        let Self {
            probe,
            agg,
            events,
            decode_errors,
            ..
        } = &mut self;
        probe.drain(|bytes| ingest(agg, events, decode_errors, bytes));
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
