//! Writing events to the ring buffer, counting the ones that do not fit.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use probe_common::{Event, EventKind, FlowKey, Stat, ABI_VERSION};

use crate::maps::{bump, EVENTS};

pub struct Extra {
    pub errno: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub flags: u32,
    pub sport: u16,
    /// The observer's netns when it is not in the key (UDP); the key's otherwise.
    pub netns: u32,
}

impl Extra {
    pub const NONE: Self = Self {
        errno: 0,
        start_ns: 0,
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
                (*ev).start_ns = extra.start_ns;
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
            entry.submit(0);
        }
        None => bump(Stat::RingFull),
    }
}
