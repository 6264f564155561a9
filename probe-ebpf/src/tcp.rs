//! TCP connection outcomes from `tracepoint/sock/inet_sock_set_state`.
//!
//! Kernel: the tracepoint exists since 4.16 (fields located through tracefs `format`). The
//! transitions that matter (uapi `tcp_states.h`, stable numbers):
//! - CLOSE -> SYN_SENT: connect() begins, in the caller's context: remember time and cgroup;
//! - SYN_SENT -> ESTABLISHED: client side established;
//! - SYN_RECV -> ESTABLISHED: server side established (the child socket);
//! - SYN_SENT -> CLOSE: the attempt failed. `tcp_reset()` and `tcp_write_err()` store
//!   `sk_err` (ECONNREFUSED, ETIMEDOUT, ...) before `tcp_done()` sets CLOSE, so it tells a
//!   refusal from a timeout; 0 means the application gave up first.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{ConnectStart, EventKind, FlowKey, AF_INET, IPPROTO_TCP};

use crate::{
    config::off,
    emit::{emit, Extra},
    maps::CONNECTS,
    net::sock_netns,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets come from this kernel's tracefs format for this tracepoint.
    let (protocol, old, new, skaddr) = unsafe {
        (
            ctx.read_at::<u16>(off!(tp_state_protocol))?,
            ctx.read_at::<i32>(off!(tp_state_oldstate))?,
            ctx.read_at::<i32>(off!(tp_state_newstate))?,
            ctx.read_at::<u64>(off!(tp_state_skaddr))?,
        )
    };
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            let start = ConnectStart {
                // SAFETY: plain helper calls; connect() runs in the caller's task.
                start_ns: unsafe { bpf_ktime_get_ns() },
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            };
            let _ = CONNECTS.insert(&skaddr, &start, 0);
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            let key = read_key(ctx, skaddr, false)?;
            let start = take_start(skaddr);
            emit(
                EventKind::TcpEstablishedOut,
                &key.0,
                Extra {
                    start_ns: start.start_ns,
                    cgroup_id: start.cgroup_id,
                    sport: key.1,
                    ..Extra::NONE
                },
            );
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let key = read_key(ctx, skaddr, false)?;
            let start = take_start(skaddr);
            let sk = skaddr as *const u8;
            // SAFETY: probe read at a BTF offset of `struct sock`.
            let err: i32 =
                unsafe { bpf_probe_read_kernel(sk.add(off!(sock_err)) as *const i32) }.unwrap_or(0);
            emit(
                EventKind::TcpFailed,
                &key.0,
                Extra {
                    errno: err as u32,
                    start_ns: start.start_ns,
                    cgroup_id: start.cgroup_id,
                    sport: key.1,
                    ..Extra::NONE
                },
            );
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let key = read_key(ctx, skaddr, true)?;
            emit(
                EventKind::TcpEstablishedIn,
                &key.0,
                Extra {
                    sport: key.1,
                    ..Extra::NONE
                },
            );
        }
        _ => {}
    }
    Ok(())
}

fn take_start(skaddr: u64) -> ConnectStart {
    // SAFETY: the value is copied out before the entry is removed.
    let start = unsafe { CONNECTS.get(&skaddr) }
        .copied()
        .unwrap_or_default();
    let _ = CONNECTS.remove(&skaddr);
    start
}

/// The flow key with the client as source; `passive` means the socket is the server's, whose
/// `saddr/sport` are the local (server) end. Returns the key and the client port.
fn read_key(ctx: &TracePointContext, skaddr: u64, passive: bool) -> Result<(FlowKey, u16), i64> {
    // SAFETY: offsets from tracefs as above.
    let (family, sport, dport) = unsafe {
        (
            ctx.read_at::<u16>(off!(tp_state_family))?,
            ctx.read_at::<u16>(off!(tp_state_sport))?,
            ctx.read_at::<u16>(off!(tp_state_dport))?,
        )
    };
    let mut local = [0u8; 16];
    let mut remote = [0u8; 16];
    // SAFETY: as above.
    unsafe {
        if family == AF_INET as u16 {
            local[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(off!(tp_state_saddr))?);
            remote[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(off!(tp_state_daddr))?);
        } else {
            local = ctx.read_at::<[u8; 16]>(off!(tp_state_saddr_v6))?;
            remote = ctx.read_at::<[u8; 16]>(off!(tp_state_daddr_v6))?;
        }
    }
    // SAFETY: `skaddr` is the traced socket.
    let netns = unsafe { sock_netns(skaddr as *const u8) };
    let (saddr, daddr, client_port, server_port) = if passive {
        (remote, local, dport, sport)
    } else {
        (local, remote, sport, dport)
    };
    Ok((
        FlowKey {
            saddr,
            daddr,
            cookie: 0,
            netns,
            sport: client_port,
            dport: server_port,
            family: family as u8,
            protocol: IPPROTO_TCP,
            kind: 0,
            _pad: 0,
            reason: 0,
        },
        client_port,
    ))
}
