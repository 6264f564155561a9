//! A recording session: capture -> decode -> aggregate, until told to stop.
use std::{future::Future, time::Duration};

use crate::{
    aggregate::{Aggregator, Totals},
    capture::{CaptureError, Probe, ProbeStats},
    decode::decode,
    record::FlowRecord,
};

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
        write!(
            f,
            "  events lost      {} (ring full per CPU: {:?}, skipped on recursion: {}), decode errors {}, counters evicted {}",
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
}

impl Session {
    pub fn new(probe: Probe, agg: Aggregator) -> Self {
        Self {
            probe,
            agg,
            events: 0,
            decode_errors: 0,
        }
    }

    pub async fn run(&mut self, stop: impl Future<Output = ()>) -> Result<(), CaptureError> {
        tokio::pin!(stop);
        let mut last_sync = tokio::time::Instant::now();
        loop {
            let Self {
                probe,
                agg,
                events,
                decode_errors,
            } = self;
            tokio::select! {
                _ = &mut stop => break,
                r = probe.next_batch(POLL, |bytes| ingest(agg, events, decode_errors, bytes)) => r?,
            }
            if last_sync.elapsed() >= SYNC_EVERY {
                self.sync_counters();
                last_sync = tokio::time::Instant::now();
            }
        }
        Ok(())
    }

    fn sync_counters(&mut self) -> u64 {
        let keys: Vec<_> = self.agg.kernel_counted().copied().collect();
        let mut evicted = 0;
        for key in keys {
            match self.probe.flow_stats(&key) {
                Some(stats) => self.agg.update_counters(&key, stats),
                None => evicted += 1,
            }
        }
        evicted
    }

    /// Drains the ring buffer, reads the final counters and returns the records.
    pub fn finish(mut self) -> (Vec<FlowRecord>, Summary) {
        let Self {
            probe,
            agg,
            events,
            decode_errors,
        } = &mut self;
        probe.drain(|bytes| ingest(agg, events, decode_errors, bytes));
        let evicted = self.sync_counters();
        let probe = self.probe.stats();
        let summary = Summary {
            totals: self.agg.totals(),
            events: self.events,
            events_lost: probe.events_lost(),
            probe,
            decode_errors: self.decode_errors,
            counters_evicted: evicted,
        };
        (self.agg.records(), summary)
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
