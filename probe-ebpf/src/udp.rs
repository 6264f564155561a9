//! UDP flows, both directions, connected or not, DNS included.
//!
//! Hooks: `cgroup_skb/egress` and `cgroup_skb/ingress` on the cgroup v2 root (kernel >= 4.10),
//! which see every datagram a local socket sends or has delivered, with the packet starting at
//! its network header. Chosen over kprobes/fentry on `udp_send_skb`/`skb_consume_udp`: those
//! need CONFIG_KPROBES or BPF trampolines, which locked-down kernels lack, and static functions
//! can be inlined away. The programs never change a verdict: they always return 1 (pass).
//!
//! A flow is keyed by the observing socket (its cookie), initiator, responder and the
//! responder's port; datagrams in the other direction mark it answered. Only new flows and the
//! first answer reach the ring buffer. The socket's netns is read from the current task on
//! egress, where the sender's task is current. On ingress (softirq) the current task is
//! unrelated, so `cgroup/sock_create` records each UDP socket's netns by cookie when it is
//! created; sockets older than the probe get theirs when they first send.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_task, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock},
    programs::{SkBuffContext, SockContext},
};
use aya_log_ebpf::warn;
use probe_common::{
    EventKind, FlowKey, FlowStats, Stat, AF_INET, AF_INET6, FLOW_KIND_UDP, IPPROTO_UDP,
    UDP_ANSWERED, UDP_LOCAL_INITIATOR, UDP_LOCAL_RESPONDER,
};

use crate::{
    config::off,
    emit::{emit, Extra},
    maps::{bump, FLOWS, SOCK_NETNS},
    net::{net_inum, sock_cgroup_id, sock_netns, Tuple},
};

/// `cgroup_skb` return value that lets the packet through.
const PASS: i32 = 1;

struct End {
    addr: [u8; 16],
    port: u16,
}

#[cgroup_skb]
pub fn udp_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_udp(&ctx, true);
    PASS
}

#[cgroup_skb]
pub fn udp_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_udp(&ctx, false);
    PASS
}

#[cgroup_sock(sock_create)]
pub fn udp_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context's socket is valid for the program's run.
    if unsafe { (*ctx.sock).protocol } == IPPROTO_UDP as u32 {
        // SAFETY: helper valid for cgroup_sock programs on the context's socket.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
        let _ = SOCK_NETNS.insert(&cookie, &current_netns(), 0);
    }
    PASS
}

#[cgroup_sock(sock_release)]
pub fn udp_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: as above.
    if unsafe { (*ctx.sock).protocol } == IPPROTO_UDP as u32 {
        // SAFETY: as above.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
        let _ = SOCK_NETNS.remove(&cookie);
    }
    PASS
}

/// The packet's IP protocol by direct packet access, without a helper call: these hooks run
/// for every packet of every local socket, and most are TCP and leave right here. `None` when
/// the header is not in the linear part (the caller then parses with `load`).
#[inline(always)]
fn ip_protocol(ctx: &SkBuffContext) -> Option<u8> {
    // SAFETY: data/data_end are the packet bounds; every read is checked against them.
    unsafe {
        let skb = ctx.skb.skb;
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        if data + 20 > end {
            return None;
        }
        match *(data as *const u8) >> 4 {
            4 => Some(*((data + 9) as *const u8)),
            6 => {
                if data + 40 > end {
                    return None;
                }
                Some(*((data + 6) as *const u8))
            }
            _ => Some(0),
        }
    }
}

fn try_udp(ctx: &SkBuffContext, outgoing: bool) -> Result<(), i64> {
    if ip_protocol(ctx).is_some_and(|p| p != IPPROTO_UDP) {
        return Ok(());
    }
    let first: u8 = ctx.load(0)?;
    let mut src = End {
        addr: [0; 16],
        port: 0,
    };
    let mut dst = End {
        addr: [0; 16],
        port: 0,
    };
    let (family, l4) = match first >> 4 {
        4 => {
            // Non-first fragments carry no ports.
            if ctx.load::<u8>(9)? != IPPROTO_UDP || u16::from_be(ctx.load::<u16>(6)?) & 0x1fff != 0
            {
                return Ok(());
            }
            let addrs: [u8; 8] = ctx.load(12)?;
            src.addr[..4].copy_from_slice(&addrs[..4]);
            dst.addr[..4].copy_from_slice(&addrs[4..]);
            (AF_INET, ((first & 0x0f) as usize) * 4)
        }
        6 => {
            if ctx.load::<u8>(6)? != IPPROTO_UDP {
                return Ok(());
            }
            src.addr = ctx.load(8)?;
            dst.addr = ctx.load(24)?;
            (AF_INET6, 40)
        }
        _ => return Ok(()),
    };
    let ports: [u8; 4] = ctx.load(l4)?;
    src.port = u16::from_be_bytes([ports[0], ports[1]]);
    dst.port = u16::from_be_bytes([ports[2], ports[3]]);
    // SAFETY: helpers valid for cgroup_skb programs on the context's own skb.
    let (cookie, cgroup_id) = unsafe {
        (
            bpf_get_socket_cookie(ctx.skb.skb as *mut _),
            bpf_skb_cgroup_id(ctx.skb.skb),
        )
    };
    let netns = if outgoing {
        current_netns()
    } else {
        // SAFETY: the value is copied out at once.
        unsafe { SOCK_NETNS.get(&cookie) }.copied().unwrap_or(0)
    };
    let seen = Seen {
        cookie,
        family,
        netns,
        cgroup_id,
    };
    let counted = if outgoing {
        seen.account(&src, &dst, Direction::Out)
    } else {
        seen.account(&dst, &src, Direction::In)
    };
    if !counted {
        warn!(
            ctx,
            "udp: flow map update failed; this flow's counts are incomplete"
        );
    }
    Ok(())
}

/// A datagram of a local UDP socket that netfilter dropped before `cgroup_skb/egress` saw
/// it (the output and postrouting hooks of the sender's namespace run first): accounted
/// to its socket as that hook would have, so the client's `sent` flow exists beside the
/// drop; a dropped reply is not (it answered nothing). Locally made packets have no input device yet (`skb_iif` 0), which tells them from
/// received ones (early demux gives those a socket too). A drop by a netdev egress hook,
/// which runs after the cgroup hook, would be counted twice; no CNI filters there today.
#[inline(always)]
pub unsafe fn dropped_before_egress(skb: *const u8, t: &Tuple) {
    // SAFETY: probe reads at BTF offsets fault safely.
    unsafe {
        let iif: i32 = bpf_probe_read_kernel(skb.add(off!(skb_iif)) as *const i32).unwrap_or(-1);
        if iif != 0 {
            return;
        }
        let sk: *const u8 = bpf_probe_read_kernel(skb.add(off!(skb_sk)) as *const *const u8)
            .unwrap_or(core::ptr::null());
        if sk.is_null() {
            return;
        }
        let protocol: u16 =
            bpf_probe_read_kernel(sk.add(off!(sock_protocol)) as *const u16).unwrap_or(0);
        if protocol != IPPROTO_UDP as u16 {
            return;
        }
        let seen = Seen {
            // Set for every socket made since the probe started (sock_create asks for it).
            cookie: bpf_probe_read_kernel(sk.add(off!(sock_cookie)) as *const u64).unwrap_or(0),
            family: t.family,
            netns: sock_netns(sk),
            cgroup_id: sock_cgroup_id(sk),
        };
        let src = End {
            addr: t.saddr,
            port: t.sport,
        };
        let dst = End {
            addr: t.daddr,
            port: t.dport,
        };
        seen.account(&src, &dst, Direction::OutDropped);
    }
}

/// Netns inode of the current task (`current->nsproxy->net_ns->ns.inum`).
fn current_netns() -> u32 {
    // SAFETY: probe reads through BTF offsets; a task without nsproxy (exiting) reads 0.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let nsproxy: *const u8 =
            match bpf_probe_read_kernel(task.add(off!(task_nsproxy)) as *const *const u8) {
                Ok(p) if !p.is_null() => p,
                _ => return 0,
            };
        match bpf_probe_read_kernel(nsproxy.add(off!(nsproxy_net_ns)) as *const *const u8) {
            Ok(net) => net_inum(net),
            Err(_) => 0,
        }
    }
}

/// Which way a datagram went, as far as the local socket is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Sent, seen by the egress hook.
    Out,
    /// Delivered, seen by the ingress hook.
    In,
    /// Sent, and dropped by the sender's own namespace before the egress hook.
    OutDropped,
}

struct Seen {
    cookie: u64,
    family: u8,
    netns: u32,
    cgroup_id: u64,
}

impl Seen {
    fn key(&self, initiator: &End, responder: &End) -> FlowKey {
        FlowKey {
            saddr: initiator.addr,
            daddr: responder.addr,
            cookie: self.cookie,
            netns: 0,
            sport: 0,
            dport: responder.port,
            family: self.family,
            protocol: IPPROTO_UDP,
            kind: FLOW_KIND_UDP,
            _pad: 0,
            reason: 0,
        }
    }

    /// Accounts one datagram between `local` and `remote`, going `direction`.
    /// One key is built and then turned around, to keep the stack small. False when the
    /// flow map could not be updated (counted in `Stat::FlowUpdateFailed`).
    fn account(&self, local: &End, remote: &End, direction: Direction) -> bool {
        let outgoing = direction != Direction::In;
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        // The flow this datagram would answer: the other side initiated it.
        let mut key = if outgoing {
            self.key(remote, local)
        } else {
            self.key(local, remote)
        };
        let answered = &key;
        if let Some(st) = FLOWS.get_ptr_mut(answered) {
            // A reply its sender's namespace dropped answered nothing: the flow stays
            // `received` on this side, and the drop is recorded beside it.
            if direction == Direction::OutDropped {
                return true;
            }
            // SAFETY: per-CPU map value, no other writer while we run.
            unsafe {
                (*st).replies += 1;
                (*st).last_ns = now;
                if self.netns != 0 {
                    (*st).netns = self.netns;
                }
                let flags = (*st).flags;
                if flags & UDP_ANSWERED == 0 {
                    (*st).flags = flags | UDP_ANSWERED;
                    emit(
                        EventKind::Udp,
                        answered,
                        self.extra(flags | UDP_ANSWERED, (*st).netns, 0),
                    );
                }
            }
            return true;
        }
        let (role, initiator_port) = if outgoing {
            (UDP_LOCAL_INITIATOR, local.port)
        } else {
            (UDP_LOCAL_RESPONDER, remote.port)
        };
        core::mem::swap(&mut key.saddr, &mut key.daddr);
        key.dport = if outgoing { remote.port } else { local.port };
        let initiated = &key;
        if let Some(st) = FLOWS.get_ptr_mut(initiated) {
            // SAFETY: as above.
            unsafe {
                (*st).packets += 1;
                (*st).last_ns = now;
            }
            return true;
        }
        let stats = FlowStats {
            first_ns: now,
            last_ns: now,
            packets: 1,
            replies: 0,
            cgroup_id: self.cgroup_id,
            flags: role,
            netns: self.netns,
        };
        match FLOWS.insert(initiated, &stats, BPF_NOEXIST as u64) {
            Ok(()) => emit(
                EventKind::Udp,
                initiated,
                self.extra(role, self.netns, initiator_port),
            ),
            // Another CPU created it first: count this datagram there.
            Err(_) => match FLOWS.get_ptr_mut(initiated) {
                // SAFETY: as above.
                Some(st) => unsafe { (*st).packets += 1 },
                None => {
                    bump(Stat::FlowUpdateFailed);
                    return false;
                }
            },
        }
        true
    }

    fn extra(&self, flags: u32, netns: u32, sport: u16) -> Extra {
        Extra {
            flags,
            sport,
            cgroup_id: self.cgroup_id,
            netns,
            ..Extra::NONE
        }
    }
}
