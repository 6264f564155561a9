//! Packet drops from `tracepoint/skb/kfree_skb`, with the kernel's `enum skb_drop_reason`.
//!
//! Kernel: the tracepoint exists since 2.6; the `reason` field since 5.17 (userspace tells us
//! whether it is there). The `protocol` field is `ntohs(skb->protocol)`. Only TCP, UDP and
//! SCTP over IPv4/IPv6 are recorded. Drops are aggregated per (ends, port, reason, netns):
//! the first one is sent as an event, the rest are counted in the flow map. A UDP datagram
//! dropped by netfilter before it left its sender's stack is also counted as that socket's
//! send ([`crate::udp::dropped_before_egress`]).
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::tracepoint,
    programs::TracePointContext, EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    EventKind, FlowKey, FlowStats, Stat, FLOW_KIND_DROP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    config::{off, Copied},
    emit::{emit, Extra},
    maps::{bump, FLOWS, SCRATCH_DROP},
    net::{skb_netns, skb_tuple},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_kfree_skb(&ctx) {
        debug!(&ctx, "kfree_skb: cannot read the record (error {})", e);
    }
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i64> {
    // Offsets from this kernel's tracefs format for the tracepoint.
    let rec = Copied::read(SCRATCH_DROP, ctx.as_ptr() as *const u8, off!(tp_drop_len))?;
    let protocol: u16 = rec.get(off!(tp_drop_protocol));
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Ok(());
    }
    let skb: u64 = rec.get(off!(tp_drop_skbaddr));
    let reason: u32 = if off!(tp_drop_has_reason) != 0 {
        rec.get(off!(tp_drop_reason))
    } else {
        0
    };
    let skb = skb as *const u8;
    // SAFETY: probe reads at BTF offsets of `struct sk_buff`.
    let Some(t) = (unsafe { skb_tuple(skb) }) else {
        bump(Stat::DropUnparsed);
        return Ok(());
    };
    if t.protocol != IPPROTO_TCP && t.protocol != IPPROTO_UDP && t.protocol != IPPROTO_SCTP {
        return Ok(());
    }
    // A datagram a filter in its sender's own namespace dropped never reached the UDP
    // egress hook (nftables' output and postrouting hooks come first): count it as sent.
    if t.protocol == IPPROTO_UDP
        && (off!(tp_drop_has_reason) == 0 || reason == off!(drop_netfilter) as u32)
    {
        // SAFETY: `skb` is the dropped packet; reads at BTF offsets.
        unsafe { crate::udp::dropped_before_egress(skb, &t) };
    }
    let key = FlowKey {
        saddr: t.saddr,
        daddr: t.daddr,
        // SAFETY: as above.
        netns: unsafe { skb_netns(skb) },
        cookie: 0,
        sport: 0,
        dport: t.dport,
        family: t.family,
        protocol: t.protocol,
        kind: FLOW_KIND_DROP,
        _pad: 0,
        reason,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(st) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: live map value; per-CPU value, no other writer while we run.
        unsafe {
            (*st).packets += 1;
            (*st).last_ns = now;
        }
        return Ok(());
    }
    let stats = FlowStats {
        first_ns: now,
        last_ns: now,
        packets: 1,
        ..FlowStats::ZERO
    };
    match FLOWS.insert(&key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => emit(
            EventKind::Drop,
            &key,
            Extra {
                sport: t.sport,
                ..Extra::NONE
            },
        ),
        Err(_) => match FLOWS.get_ptr_mut(&key) {
            // SAFETY: as above.
            Some(st) => unsafe {
                (*st).packets += 1;
            },
            None => bump(Stat::FlowUpdateFailed),
        },
    }
    Ok(())
}
