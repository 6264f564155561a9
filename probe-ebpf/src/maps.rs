//! The probe's maps. Names and sizes come from `probe_common` so userspace agrees.
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use probe_common::{
    FlowKey, FlowStats, COPY_MAX, EVENTS_RING_BYTES, FLOWS_MAX_ENTRIES, SOCK_NETNS_MAX_ENTRIES,
    STATS_LEN,
};

/// News for userspace: finished TCP handshakes, new UDP flows, first drops; a ring for each
/// CPU number modulo `EVENTS_RINGS` (see [`events`]). Names match `probe_common::MAP_EVENTS`.
#[map]
pub static EVENTS0: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
pub static EVENTS1: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
pub static EVENTS2: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
pub static EVENTS3: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// This CPU's ring buffer: CPUs that write at once do not contend for one ring's lock.
#[inline(always)]
pub fn events() -> &'static RingBuf {
    const _: () = assert!(probe_common::EVENTS_RINGS == 4);
    // SAFETY: the helper has no preconditions.
    match unsafe { bpf_get_smp_processor_id() } % 4 {
        0 => &EVENTS0,
        1 => &EVENTS1,
        2 => &EVENTS2,
        _ => &EVENTS3,
    }
}

/// UDP flows and drops aggregated in the kernel; userspace reads and sums the counters.
/// Per-CPU values: counting needs no atomics (which the bpf target does not offer to Rust),
/// and two CPUs never contend for one cache line.
#[map]
pub static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

/// UDP socket cookie -> netns inode, recorded when the socket is created (in its creator's
/// context), because the ingress hook runs in softirq where the current task is unrelated.
#[map]
pub static SOCK_NETNS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(SOCK_NETNS_MAX_ENTRIES, 0);

/// Per-CPU scratch space for [`crate::config::Copied`], one slot per program that can nest
/// on a CPU (a classic tracepoint may run inside the raw one), so copies stay off the stack.
#[map]
pub static SCRATCH: PerCpuArray<[u8; COPY_MAX]> = PerCpuArray::with_max_entries(2, 0);
pub const SCRATCH_TCP: u32 = 0;
pub const SCRATCH_DROP: u32 = 1;

/// Per-CPU counters indexed by `probe_common::Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[inline(always)]
pub fn bump(stat: probe_common::Stat) {
    if let Some(v) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *v += 1 };
    }
}
