//! Writing events to the ring buffers, counting the ones that do not fit.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use probe_common::{Event, EventKind, FlowKey, Stat, ABI_VERSION};

use crate::maps::{bump, events};

// uapi `bpf_ringbuf_*` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Wake userspace when this much comes to be waiting in a ring; it also drains on a short
/// timer. A wakeup per event would cost more than the event itself, in the kernel and in
/// userspace.
const WAKEUP_BYTES: u64 = (probe_common::EVENTS_RING_BYTES / 4) as u64;
/// The wakeup is sent by the events that find the waiting bytes in
/// [WAKEUP_BYTES, WAKEUP_BYTES + WAKEUP_WINDOW): once as the ring crosses the mark, not on
/// every event after it until the reader has drained (a reader slow to be scheduled made
/// that a wakeup per event). The window, 64 records, is there for CPUs that reserve at once
/// in one ring; if all of them miss it, the timer drains.
const WAKEUP_WINDOW: u64 = 64 * (core::mem::size_of::<Event>() as u64 + 8);

pub struct Extra {
    pub errno: u32,
    pub cgroup_id: u64,
    pub flags: u32,
    pub sport: u16,
    /// The observer's netns when it is not in the key (UDP); the key's otherwise.
    pub netns: u32,
}

impl Extra {
    pub const NONE: Self = Self {
        errno: 0,
        cgroup_id: 0,
        flags: 0,
        sport: 0,
        netns: 0,
    };
}

#[inline(always)]
pub fn emit(kind: EventKind, key: &FlowKey, extra: Extra) {
    let ring = events();
    match ring.reserve::<Event>(0) {
        Some(mut entry) => {
            // Fields are written in place: building an `Event` on the stack first would cost
            // 96 of the 512 stack bytes a program chain may use.
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to a reserved, exclusively owned ring buffer slot of the
            // right size; every field is written before submit.
            unsafe {
                (*ev).version = ABI_VERSION;
                (*ev).kind = kind as u8;
                (*ev)._pad0 = 0;
                (*ev).errno = extra.errno;
                (*ev).ts_ns = bpf_ktime_get_ns();
                (*ev).cgroup_id = extra.cgroup_id;
                (*ev).flags = extra.flags;
                (*ev).sport = extra.sport;
                (*ev)._pad1 = 0;
                (*ev).netns = if extra.netns != 0 {
                    extra.netns
                } else {
                    key.netns
                };
                (*ev)._pad2 = 0;
                (*ev).key = *key;
            }
            let waiting = ring.query(BPF_RB_AVAIL_DATA);
            let flags = if (WAKEUP_BYTES..WAKEUP_BYTES + WAKEUP_WINDOW).contains(&waiting) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => bump(Stat::RingFull),
    }
}
