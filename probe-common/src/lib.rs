//! The contract between the eBPF probe and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so both sides agree on
//! the layout byte for byte; `const` assertions below fail the build if a field moves. Events
//! carry [`ABI_VERSION`] so a decoder refuses bytes from a probe it does not understand.
#![no_std]

/// Bumped whenever a layout in this file changes.
pub const ABI_VERSION: u16 = 2;

/// Map names, shared so userspace never spells them differently from the probe.
/// The event ring buffers, one for each CPU number modulo [`EVENTS_RINGS`].
pub const MAP_EVENTS: [&str; EVENTS_RINGS] = ["EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3"];
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_SOCK_NETNS: &str = "SOCK_NETNS";
/// Name of the global that userspace fills in before load.
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Event ring buffers. A BPF ring buffer is shared by every CPU that writes to it, behind one
/// spinlock: with one ring, CPUs finishing handshakes at once wait for each other (measured
/// on 2 CPUs: 107 ns a run of the TCP tracepoint with all load on one CPU, 146 on both).
/// CPU `n` writes to ring `n % EVENTS_RINGS`, so up to this many CPUs never share one; the
/// kernel has no per-CPU ring buffer, and perf buffers wake the reader on every event.
pub const EVENTS_RINGS: usize = 4;
/// Size in bytes of each ring buffer (a power of two and a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 4 << 20;
/// Entries of the LRU map that aggregates UDP flows and drops.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Entries of the map from UDP socket cookie to the netns the socket was created in.
pub const SOCK_NETNS_MAX_ENTRIES: u32 = 65_536;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// Indexes into the per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that found the ring buffer full and were not delivered.
    RingFull = 0,
    /// Flow map updates that failed (the map is LRU, so this means a kernel error, not "full").
    FlowUpdateFailed = 1,
    /// Packets seen by the drop hook whose headers could not be read.
    DropUnparsed = 2,
}
pub const STATS_LEN: u32 = 3;

/// What an [`Event`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connect() from a local socket reached ESTABLISHED (client side).
    TcpEstablishedOut = 1,
    /// A passive socket reached ESTABLISHED from SYN_RECV (server side).
    TcpEstablishedIn = 2,
    /// A connect() went from SYN_SENT to CLOSE; `errno` holds `sk_err`.
    TcpFailed = 3,
    /// A UDP flow was seen for the first time, or its flags changed.
    Udp = 4,
    /// A packet was dropped (first drop of this key; counts live in the flow map).
    Drop = 5,
}

impl TryFrom<u8> for EventKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => Self::TcpEstablishedOut,
            2 => Self::TcpEstablishedIn,
            3 => Self::TcpFailed,
            4 => Self::Udp,
            5 => Self::Drop,
            other => return Err(other),
        })
    }
}

/// `FlowKey::kind` for entries of the flow map.
pub const FLOW_KIND_UDP: u8 = 1;
pub const FLOW_KIND_DROP: u8 = 2;

/// UDP flow flags (`FlowStats::flags`, `Event::flags`).
/// The local socket sent the first datagram: it is the client.
pub const UDP_LOCAL_INITIATOR: u32 = 1;
/// The first datagram came from the remote end: the local socket is the server.
pub const UDP_LOCAL_RESPONDER: u32 = 2;
/// Datagrams went both ways.
pub const UDP_ANSWERED: u32 = 4;

/// Identifies a flow: who initiated (`saddr`), who answered (`daddr:dport`), where it was seen.
///
/// Addresses are 16 bytes; an IPv4 address sits in the first 4 bytes, the rest zero.
/// For the aggregated kinds (UDP, drops) `sport` is 0: the initiator's ephemeral port would
/// otherwise make every exchange a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Socket cookie of the observing UDP socket, so the two ends of a flow between two local
    /// pods stay apart (0 for TCP and drops).
    pub cookie: u64,
    /// Inode of the network namespace of the observing socket or device (0 if unknown;
    /// for UDP it is in `FlowStats::netns`, as it is not known on every path).
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub protocol: u8,
    pub kind: u8,
    pub _pad: u8,
    /// `enum skb_drop_reason` for drops (kernel-version specific: names come from BTF).
    pub reason: u32,
}

/// Counters kept in the flow map, updated atomically by the probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and latest packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Datagrams initiator -> responder, or dropped packets.
    pub packets: u64,
    /// Datagrams responder -> initiator.
    pub replies: u64,
    /// cgroup v2 id of the socket's owner (UDP).
    pub cgroup_id: u64,
    pub flags: u32,
    /// Network namespace inode of the socket, learnt when it sends (UDP; 0 until then).
    pub netns: u32,
}

impl FlowStats {
    pub const ZERO: Self = Self {
        first_ns: 0,
        last_ns: 0,
        packets: 0,
        replies: 0,
        cgroup_id: 0,
        flags: 0,
        netns: 0,
    };
}

/// One ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub version: u16,
    /// An [`EventKind`].
    pub kind: u8,
    pub _pad0: u8,
    /// `sk_err` for [`EventKind::TcpFailed`].
    pub errno: u32,
    /// When the event happened (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// cgroup v2 id of the socket's owner (0 if unknown).
    pub cgroup_id: u64,
    /// UDP flags at the time of the event.
    pub flags: u32,
    /// The initiator's port (client port for TCP; first one seen for UDP and drops).
    pub sport: u16,
    pub _pad1: u16,
    /// Network namespace inode of the observer. For UDP it is not part of the key (see
    /// `FlowKey::netns`), so it travels here; the key is always the flow map's key, unchanged.
    pub netns: u32,
    pub _pad2: u32,
    pub key: FlowKey,
}

/// Offsets the probe needs, resolved by userspace from the running kernel before load.
///
/// Tracepoint field offsets come from tracefs `format` files; struct member offsets from
/// `/sys/kernel/btf/vmlinux`. Nothing kernel-specific is compiled into the probe. All `u16`,
/// so the struct has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    // skb/kfree_skb (a classic tracepoint: fields located through tracefs `format`)
    pub tp_drop_skbaddr: u16,
    pub tp_drop_protocol: u16,
    pub tp_drop_reason: u16,
    /// 1 when the tracepoint has a `reason` field (kernel >= 5.17).
    pub tp_drop_has_reason: u16,
    /// Bytes of the record the probe copies (up to its last field used).
    pub tp_drop_len: u16,
    // struct sock (the raw tracepoint sock/inet_sock_set_state hands us the socket)
    /// `sock.__sk_common.skc_net.net`
    pub sock_net: u16,
    pub sock_err: u16,
    pub sock_protocol: u16,
    /// `sock.__sk_common.skc_*`: read from one copy of the first `sock_common_len` bytes.
    pub skc_family: u16,
    pub skc_dport: u16,
    pub skc_daddr: u16,
    pub skc_rcv_saddr: u16,
    pub skc_v6_daddr: u16,
    pub skc_v6_rcv_saddr: u16,
    pub sock_common_len: u16,
    /// `inet_sock.inet_sport`: still set when a failed connect() closes, unlike `skc_num`.
    pub inet_sport: u16,
    // struct net
    /// `net.ns.inum`
    pub net_inum: u16,
    // struct sk_buff
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_dev: u16,
    pub skb_sk: u16,
    // struct net_device
    /// `net_device.nd_net.net`
    pub dev_net: u16,
    // struct task_struct / nsproxy
    /// `task_struct.nsproxy`
    pub task_nsproxy: u16,
    /// `nsproxy.net_ns`
    pub nsproxy_net_ns: u16,
    // the socket's cgroup: `sock.sk_cgrp_data.cgroup->kn->id` (kernel >= 5.15; 0 = unknown)
    pub sock_cgroup: u16,
    pub cgroup_kn: u16,
    pub kernfs_id: u16,
    /// `sk_buff.skb_iif`: 0 while a packet has not arrived on any device (made here).
    pub skb_iif: u16,
    /// `sock.__sk_common.skc_cookie`: the socket cookie, once something asked for it.
    pub sock_cookie: u16,
    /// This kernel's `SKB_DROP_REASON_NETFILTER_DROP` (0 when it has no drop reasons).
    pub drop_netfilter: u16,
}

/// Largest prefix of a kernel object (tracepoint record, `sock_common`) the probe copies to
/// its stack in one read.
pub const COPY_MAX: usize = 96;

impl ProbeConfig {
    /// All offsets zero: the placeholder the probe is compiled with.
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer, for which all-zero bytes are a valid value.
        unsafe { core::mem::zeroed() }
    }
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 56);
    assert!(core::mem::offset_of!(FlowKey, cookie) == 32);
    assert!(core::mem::offset_of!(FlowKey, netns) == 40);
    assert!(core::mem::offset_of!(FlowKey, reason) == 52);
    assert!(core::mem::size_of::<FlowStats>() == 48);
    assert!(core::mem::size_of::<Event>() == 96);
    assert!(core::mem::offset_of!(Event, netns) == 32);
    assert!(core::mem::offset_of!(Event, key) == 40);
    assert!(core::mem::size_of::<ProbeConfig>() == 60);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ProbeConfig {}
}
