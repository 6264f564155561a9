//! Writing events to the ring buffer, counting the ones that do not fit.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use probe_common::{Event, EventKind, FlowKey, Stat, ABI_VERSION};

use crate::maps::{bump, EVENTS};

// uapi `bpf_ringbuf_*` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Wake userspace only once this much is waiting; it also drains on a short timer. A wakeup
/// per event would cost more than the event itself, in the kernel and in userspace.
const WAKEUP_BYTES: u64 = (probe_common::EVENTS_RING_BYTES / 4) as u64;

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
    match EVENTS.reserve::<Event>(0) {
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
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => bump(Stat::RingFull),
    }
}
