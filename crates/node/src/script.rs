//! A scripted event source for tests, here and in the crates that build on sessions (the
//! agent): events as the probe would deliver them, and kernel counters a test sets. Built
//! for this crate's tests and with the `script` feature.
#![expect(
    unsafe_code,
    reason = "an event's bytes, as the ring buffer hands them over"
)]
use std::{collections::HashMap, time::Duration};

use probe_common::{
    Event, EventKind, FlowKey, FlowStats, ABI_VERSION, AF_INET, FLOW_KIND_UDP, IPPROTO_TCP,
    IPPROTO_UDP, UDP_LOCAL_INITIATOR,
};

use crate::{
    capture::{CaptureError, SensorStats},
    session::EventSource,
};

/// Events and kernel counters as a test sets them; what the session removes is noted.
#[derive(Default)]
pub struct Script {
    pub pending: Vec<Vec<u8>>,
    pub counters: HashMap<FlowKey, FlowStats>,
    pub forgotten: Vec<FlowKey>,
    pub stats: SensorStats,
    /// Socket cookie -> netns, as taught by the session.
    pub learnt: HashMap<u64, u32>,
}

impl EventSource for Script {
    /// Like the ring buffer: what is pending at once, else after waiting `timeout`.
    async fn next_batch(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<(), CaptureError> {
        if self.pending.is_empty() {
            tokio::time::sleep(timeout).await;
        }
        self.drain(f);
        Ok(())
    }
    fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        for e in self.pending.drain(..) {
            f(&e);
        }
    }
    fn flow_stats(&self, key: &FlowKey) -> Option<FlowStats> {
        self.counters.get(key).copied()
    }
    fn forget(&mut self, key: &FlowKey) {
        self.counters.remove(key);
        self.forgotten.push(*key);
    }
    fn stats(&self) -> SensorStats {
        self.stats.clone()
    }
    fn learn_netns(&mut self, cookie: u64, netns: u32) {
        self.learnt.entry(cookie).or_insert(netns);
    }
}

/// A TCP connection from 10.0.0.1:40000 to `dst`:8080 that this node's client saw
/// established.
pub fn tcp_established(dst: [u8; 4]) -> Vec<u8> {
    let mut ev = event(EventKind::TcpEstablishedOut, AF_INET, IPPROTO_TCP);
    ev.key.daddr[..4].copy_from_slice(&dst);
    bytes(&ev)
}

/// A UDP flow this node's client started, first seen at `ts_ns`, and its flow key.
pub fn udp(ts_ns: u64) -> (Vec<u8>, FlowKey) {
    let mut ev = event(EventKind::Udp, AF_INET, IPPROTO_UDP);
    ev.flags = UDP_LOCAL_INITIATOR;
    ev.key.kind = FLOW_KIND_UDP;
    ev.ts_ns = ts_ns;
    (bytes(&ev), ev.key)
}

pub fn event(kind: EventKind, family: u8, protocol: u8) -> Event {
    let mut key = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        cookie: 0,
        netns: 4026531840,
        sport: 0,
        dport: 8080,
        family,
        protocol,
        kind: 0,
        _pad: 0,
        reason: 0,
    };
    key.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    key.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    Event {
        version: ABI_VERSION,
        kind: kind as u8,
        _pad0: 0,
        errno: 0,
        ts_ns: 2_000,
        cgroup_id: 7,
        flags: 0,
        sport: 40000,
        _pad1: 0,
        netns: key.netns,
        _pad2: 0,
        key,
    }
}

pub fn bytes(ev: &Event) -> Vec<u8> {
    // SAFETY: `Event` is plain old data without uninitialised padding.
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const Event).cast::<u8>(),
            std::mem::size_of::<Event>(),
        )
    }
    .to_vec()
}
