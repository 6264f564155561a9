//! Observations -> flow records. Pure: counters from the kernel's flow map are fed in by the
//! caller, time conversion goes through a [`Clock`] the caller provides.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use chrono::{DateTime, Utc};
use probe_common::{EventKind, FlowKey, FlowStats, UDP_ANSWERED, UDP_LOCAL_INITIATOR};

use crate::{decode::Observation, existing::Connection};
use flowpol_analysis::record::{Endpoint, FlowRecord, Observer, Protocol, Side, Since, Verdict};

/// Converts the probe's CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn from_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// The system's current offset between CLOCK_REALTIME and CLOCK_MONOTONIC.
    pub fn system() -> Self {
        Self {
            offset_ns: read_clock(libc::CLOCK_REALTIME) - read_clock(libc::CLOCK_MONOTONIC),
        }
    }

    pub fn wall(&self, mono_ns: u64) -> DateTime<Utc> {
        let ns = mono_ns as i128 + self.offset_ns;
        DateTime::from_timestamp_nanos(ns.clamp(0, i64::MAX as i128) as i64)
    }
}

/// Now on the probe's clock (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` reads), in ns.
pub fn monotonic_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC) as u64
}

#[expect(
    unsafe_code,
    reason = "std has no CLOCK_MONOTONIC reading in nanoseconds"
)]
fn read_clock(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Name of a connect() errno as the kernel reports it in `sk_err`.
pub fn errno_name(errno: u32) -> Option<String> {
    Some(match errno {
        0 => return None,
        1 => "EPERM".into(),
        101 => "ENETUNREACH".into(),
        103 => "ECONNABORTED".into(),
        104 => "ECONNRESET".into(),
        110 => "ETIMEDOUT".into(),
        111 => "ECONNREFUSED".into(),
        113 => "EHOSTUNREACH".into(),
        n => format!("errno {n}"),
    })
}

const ECONNREFUSED: u32 = 111;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnKey {
    side: Side,
    netns: u32,
    protocol: Protocol,
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
    verdict: Verdict,
    errno: u32,
    /// Found established when the probe started.
    before_start: bool,
}

/// A connection's ends as one of its sockets sees them: protocol, side, netns, client, server.
type Ends = (Protocol, Side, u32, SocketAddr, SocketAddr);

#[derive(Clone, Debug)]
struct ConnAgg {
    first_ns: u64,
    last_ns: u64,
    count: u64,
    /// The client port while every connection used the same one.
    src_port: Option<u16>,
    cgroup_id: Option<u64>,
}

#[derive(Clone, Debug)]
struct FlowAgg {
    first: Observation,
    stats: FlowStats,
    /// What [`Aggregator::take`] has handed out so far: packets, replies, last packet.
    taken: (u64, u64, u64),
}

/// What makes two records the same flow: everything but times, counts and varying details.
type Identity = (
    Protocol,
    IpAddr,
    IpAddr,
    Option<u16>,
    Option<Verdict>,
    Option<String>,
    Option<String>,
    Option<(Side, u32, Option<Since>)>,
);

fn identity(r: &FlowRecord) -> Identity {
    (
        r.protocol,
        r.src.ip,
        r.dst.ip,
        r.dst.port,
        r.verdict,
        r.drop_reason.clone(),
        r.error.clone(),
        r.observer.as_ref().map(|o| (o.side, o.netns, o.since)),
    )
}

/// Merges records of the same flow (UDP is aggregated per socket in the kernel; a client
/// that opens a socket per query would otherwise yield a record per query).
fn merge(records: Vec<FlowRecord>) -> Vec<FlowRecord> {
    let mut by_id: HashMap<Identity, FlowRecord> = HashMap::with_capacity(records.len());
    for r in records {
        match by_id.entry(identity(&r)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(r);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let m = o.get_mut();
                m.first_seen = m
                    .first_seen
                    .min(r.first_seen)
                    .or(m.first_seen.or(r.first_seen));
                m.last_seen = m.last_seen.max(r.last_seen);
                m.count += r.count;
                m.replies = match (m.replies, r.replies) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                if m.src.port != r.src.port {
                    m.src.port = None;
                }
                if let (Some(a), Some(b)) = (m.observer.as_mut(), r.observer.as_ref()) {
                    if a.cgroup_id != b.cgroup_id {
                        a.cgroup_id = None;
                    }
                }
            }
        }
    }
    by_id.into_values().collect()
}

/// Records in a stable order: by first seen, then by what they are.
/// Records in a total order: equal keys would otherwise come out in the hash maps' order,
/// different from one call to the next (found by the decode fuzz target: two failed
/// connections differing only in their errno).
fn sorted(mut out: Vec<FlowRecord>) -> Vec<FlowRecord> {
    let key = |r: &FlowRecord| {
        (
            r.first_seen,
            r.protocol,
            r.src.ip,
            r.dst.ip,
            r.dst.port,
            r.verdict,
            r.observer.clone(),
            (r.src.port, r.error.clone(), r.drop_reason.clone()),
            (r.last_seen, r.count, r.replies),
        )
    };
    out.sort_by_cached_key(key);
    out
}

/// Accumulates observations into records.
pub struct Aggregator {
    node: Option<String>,
    clock: Clock,
    drop_reasons: HashMap<u32, String>,
    conns: HashMap<ConnKey, ConnAgg>,
    flows: HashMap<FlowKey, FlowAgg>,
    /// Connections found open at start, until the probe reports one of them being made
    /// (it was established between the probe's start and the listing): then it is not.
    before_start: HashMap<Ends, ConnKey>,
}

impl Aggregator {
    pub fn new(node: Option<String>, clock: Clock, drop_reasons: HashMap<u32, String>) -> Self {
        Self {
            node,
            clock,
            drop_reasons,
            conns: HashMap::new(),
            flows: HashMap::new(),
            before_start: HashMap::new(),
        }
    }

    /// The node put in every record.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Adds the connections found established when the probe started (seen at `at_ns`),
    /// each socket once; returns how many there were.
    pub fn add_before_start(&mut self, conns: &[Connection], at_ns: u64) -> usize {
        let mut added = 0;
        for c in conns {
            let ends = (c.protocol, c.side, c.netns, c.client, c.server);
            if self.before_start.contains_key(&ends) {
                continue;
            }
            added += 1;
            // A connected UDP socket's record counts the socket, as a TCP one counts the
            // connection: no datagram of it has been seen (yet).
            let verdict = match (c.protocol, c.side) {
                (Protocol::UDP, Side::Client) => Verdict::Sent,
                (Protocol::UDP, _) => Verdict::Received,
                _ => Verdict::Established,
            };
            let key = ConnKey {
                side: c.side,
                netns: c.netns,
                protocol: c.protocol,
                src: c.client.ip(),
                dst: c.server.ip(),
                dst_port: c.server.port(),
                verdict,
                errno: 0,
                before_start: true,
            };
            let cgroup = (c.cgroup_id != 0).then_some(c.cgroup_id);
            self.count(key.clone(), at_ns, at_ns, c.client.port(), cgroup);
            self.before_start.insert(ends, key);
        }
        added
    }

    pub fn add(&mut self, obs: Observation) {
        let (side, verdict) = match obs.kind {
            EventKind::TcpEstablishedOut => (Side::Client, Verdict::Established),
            EventKind::TcpEstablishedIn => (Side::Server, Verdict::Established),
            EventKind::TcpFailed if obs.errno == ECONNREFUSED => (Side::Client, Verdict::Refused),
            EventKind::TcpFailed => (Side::Client, Verdict::Timeout),
            EventKind::Udp | EventKind::Drop => {
                let entry = self.flows.entry(obs.key).or_insert_with(|| FlowAgg {
                    stats: FlowStats {
                        first_ns: obs.ts_ns,
                        last_ns: obs.ts_ns,
                        packets: 1,
                        cgroup_id: obs.cgroup_id,
                        netns: obs.netns,
                        ..FlowStats::ZERO
                    },
                    first: obs.clone(),
                    taken: (0, 0, 0),
                });
                entry.stats.flags |= obs.flags;
                entry.stats.last_ns = entry.stats.last_ns.max(obs.ts_ns);
                if entry.stats.netns == 0 {
                    entry.stats.netns = obs.netns;
                }
                return;
            }
        };
        if verdict == Verdict::Established && !self.before_start.is_empty() {
            let ends = (
                obs.protocol,
                side,
                obs.netns,
                SocketAddr::new(obs.src, obs.src_port),
                SocketAddr::new(obs.dst, obs.dst_port),
            );
            if let Some(listed) = self.before_start.remove(&ends) {
                self.uncount(&listed);
            }
        }
        let key = ConnKey {
            side,
            netns: obs.netns,
            protocol: obs.protocol,
            src: obs.src,
            dst: obs.dst,
            dst_port: obs.dst_port,
            verdict,
            errno: if verdict == Verdict::Established {
                0
            } else {
                obs.errno
            },
            before_start: false,
        };
        let cgroup = (obs.cgroup_id != 0).then_some(obs.cgroup_id);
        self.count(key, obs.ts_ns, obs.ts_ns, obs.src_port, cgroup);
    }

    /// One more connection under `key`.
    fn count(&mut self, key: ConnKey, first: u64, last: u64, src_port: u16, cgroup: Option<u64>) {
        match self.conns.get_mut(&key) {
            Some(agg) => {
                agg.first_ns = agg.first_ns.min(first);
                agg.last_ns = agg.last_ns.max(last);
                agg.count += 1;
                if agg.src_port != Some(src_port) {
                    agg.src_port = None;
                }
                if agg.cgroup_id != cgroup {
                    agg.cgroup_id = None;
                }
            }
            None => {
                self.conns.insert(
                    key,
                    ConnAgg {
                        first_ns: first,
                        last_ns: last,
                        count: 1,
                        src_port: Some(src_port),
                        cgroup_id: cgroup,
                    },
                );
            }
        }
    }

    /// One connection fewer under `key` (a listed one the probe saw being made).
    fn uncount(&mut self, key: &ConnKey) {
        if let Some(agg) = self.conns.get_mut(key) {
            agg.count -= 1;
            if agg.count == 0 {
                self.conns.remove(key);
            }
        }
    }

    /// Keys of the flows whose counters live in the kernel's flow map.
    pub fn kernel_counted(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows.keys()
    }

    /// Takes the latest counters for `key` from the flow map (summed over CPUs).
    pub fn update_counters(&mut self, key: &FlowKey, stats: FlowStats) {
        if let Some(f) = self.flows.get_mut(key) {
            let flags = f.stats.flags | stats.flags;
            let first_ns = if stats.first_ns != 0 {
                f.stats.first_ns.min(stats.first_ns)
            } else {
                f.stats.first_ns
            };
            f.stats = FlowStats {
                first_ns,
                last_ns: f.stats.last_ns.max(stats.last_ns),
                packets: stats.packets.max(f.stats.packets),
                replies: stats.replies.max(f.stats.replies),
                cgroup_id: if stats.cgroup_id != 0 {
                    stats.cgroup_id
                } else {
                    f.stats.cgroup_id
                },
                flags,
                netns: if stats.netns != 0 {
                    stats.netns
                } else {
                    f.stats.netns
                },
            };
        }
    }

    fn drop_reason(&self, reason: u32) -> String {
        match self.drop_reasons.get(&reason) {
            Some(name) => name.clone(),
            None if self.drop_reasons.is_empty() => "UNKNOWN".into(),
            None => format!("REASON_{reason}"),
        }
    }

    /// Every record so far, in a stable order.
    pub fn records(&self) -> Vec<FlowRecord> {
        let mut out = Vec::with_capacity(self.conns.len() + self.flows.len());
        out.extend(self.conns.iter().map(|(k, a)| self.conn_record(k, a)));
        out.extend(self.flows.values().map(|f| {
            let s = &f.stats;
            self.flow_record(f, s.packets.max(1), s.replies, s.first_ns)
        }));
        sorted(merge(out))
    }

    /// What happened since the last call, for a process that runs for days: the
    /// connections seen since then (forgotten here), and for each UDP flow or drop the
    /// packets counted since then. A flow with no new packet since `idle_before_ns` is
    /// retired, as are those in `gone` (no longer in the kernel's map); the retired keys
    /// that are still in the kernel's map are returned, for the caller to remove there too
    /// (the flow's next packet then starts it anew, and is reported).
    pub fn take(
        &mut self,
        idle_before_ns: u64,
        gone: &[FlowKey],
    ) -> (Vec<FlowRecord>, Vec<FlowKey>) {
        // What was listed at start and taken now can no longer be reported twice.
        self.before_start.clear();
        let mut out: Vec<FlowRecord> = self
            .conns
            .drain()
            .collect::<Vec<_>>()
            .iter()
            .map(|(k, a)| self.conn_record(k, a))
            .collect();
        let mut retire = Vec::new();
        for (key, f) in &self.flows {
            let s = &f.stats;
            let (packets, replies, last) = f.taken;
            let new_packets = s.packets.max(1).saturating_sub(packets);
            let new_replies = s.replies.saturating_sub(replies);
            if new_packets > 0 || new_replies > 0 {
                // The first new packet came after the last one handed out.
                let first = if packets == 0 {
                    s.first_ns
                } else {
                    (last + 1).min(s.last_ns)
                };
                out.push(self.flow_record(f, new_packets, new_replies, first));
            } else if s.last_ns < idle_before_ns {
                retire.push(*key);
            }
        }
        for f in self.flows.values_mut() {
            let s = &f.stats;
            f.taken = (s.packets.max(1), s.replies, s.last_ns);
        }
        for key in retire.iter().chain(gone) {
            self.flows.remove(key);
        }
        (sorted(merge(out)), retire)
    }

    fn conn_record(&self, k: &ConnKey, a: &ConnAgg) -> FlowRecord {
        FlowRecord {
            first_seen: Some(self.clock.wall(a.first_ns)),
            last_seen: Some(self.clock.wall(a.last_ns)),
            protocol: k.protocol,
            src: Endpoint::new(k.src, if a.count == 1 { a.src_port } else { None }),
            dst: Endpoint::new(k.dst, Some(k.dst_port)),
            verdict: Some(k.verdict),
            drop_reason: None,
            count: a.count,
            replies: None,
            error: errno_name(k.errno),
            node: self.node.clone(),
            observer: Some(Observer {
                side: k.side,
                netns: k.netns,
                cgroup_id: a.cgroup_id,
                since: k.before_start.then_some(Since::BeforeStart),
            }),
        }
    }

    /// A flow's record counting `packets` and `replies` from `first_ns` on.
    fn flow_record(&self, f: &FlowAgg, packets: u64, replies: u64, first_ns: u64) -> FlowRecord {
        let o = &f.first;
        let s = &f.stats;
        let (side, verdict, drop_reason, replies) = if o.kind == EventKind::Drop {
            (
                Side::Path,
                Verdict::Dropped,
                Some(self.drop_reason(o.reason)),
                None,
            )
        } else {
            let side = if s.flags & UDP_LOCAL_INITIATOR != 0 {
                Side::Client
            } else {
                Side::Server
            };
            let verdict = if s.flags & UDP_ANSWERED != 0 {
                Verdict::Answered
            } else if side == Side::Client {
                Verdict::Sent
            } else {
                Verdict::Received
            };
            (side, verdict, None, Some(replies))
        };
        FlowRecord {
            first_seen: Some(self.clock.wall(first_ns)),
            last_seen: Some(self.clock.wall(s.last_ns)),
            protocol: o.protocol,
            src: Endpoint::new(o.src, None),
            dst: Endpoint::new(o.dst, Some(o.dst_port)),
            verdict: Some(verdict),
            drop_reason,
            count: packets,
            replies,
            error: None,
            node: self.node.clone(),
            observer: Some(Observer {
                side,
                netns: s.netns,
                cgroup_id: (s.cgroup_id != 0).then_some(s.cgroup_id),
                since: None,
            }),
        }
    }

    /// Totals for the end-of-run summary.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for (k, a) in &self.conns {
            if k.protocol == Protocol::UDP {
                t.udp_flows += 1;
            } else {
                *t.connections.entry(k.verdict).or_default() += a.count;
            }
        }
        for f in self.flows.values() {
            if f.first.kind == EventKind::Drop {
                *t.drops_by_reason
                    .entry(self.drop_reason(f.first.reason))
                    .or_default() += f.stats.packets.max(1);
            } else {
                t.udp_flows += 1;
            }
        }
        t.records = self.conns.len() + self.flows.len();
        t
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub records: usize,
    /// TCP connections by verdict (each side counted where it was observed).
    pub connections: BTreeMap<Verdict, u64>,
    pub udp_flows: usize,
    pub drops_by_reason: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests;
