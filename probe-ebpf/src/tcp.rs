//! TCP connection outcomes from the raw tracepoint `sock/inet_sock_set_state`.
//!
//! Kernel: the tracepoint exists since 4.16 with the prototype
//! `(const struct sock *sk, const int oldstate, const int newstate)`; userspace checks it
//! against the kernel's BTF (`btf_trace_inet_sock_set_state`) before load. A raw tracepoint
//! hands over those three arguments as plain context loads, so the transitions that do not
//! matter (four of six per connection) cost two loads and a compare, and nothing is kept per
//! socket. The socket is read (at BTF offsets) only for:
//! - SYN_SENT -> ESTABLISHED: client side established;
//! - SYN_RECV -> ESTABLISHED: server side established (the child socket);
//! - SYN_SENT -> CLOSE: the attempt failed. `tcp_reset()` and `tcp_write_err()` store
//!   `sk_err` (ECONNREFUSED, ETIMEDOUT, ...) before `tcp_done()` sets CLOSE, so it tells a
//!   refusal from a timeout; 0 means the application gave up first.
//!
//! State numbers are uapi (`tcp_states.h`) and stable.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{EventKind, FlowKey, AF_INET, IPPROTO_TCP};

use crate::{
    config::{off, Copied},
    emit::{emit, Extra},
    maps::SCRATCH_TCP,
    net::{sock_cgroup_id, sock_netns},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if let Err(e) = try_inet_sock_set_state(&ctx) {
        debug!(
            &ctx,
            "inet_sock_set_state: cannot read the socket (error {})", e
        );
    }
    0
}

/// Argument `i` of the raw tracepoint (`struct bpf_raw_tracepoint_args { u64 args[]; }`).
#[inline(always)]
fn arg(ctx: &RawTracePointContext, i: usize) -> u64 {
    // SAFETY: a constant, aligned offset inside the argument array: a plain context load.
    unsafe { *(ctx.as_ptr() as *const u64).add(i) }
}

fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (old, new) = (arg(ctx, 1) as i32, arg(ctx, 2) as i32);
    let kind = match (old, new) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) => EventKind::TcpEstablishedOut,
        (TCP_SYN_SENT, TCP_CLOSE) => EventKind::TcpFailed,
        (TCP_SYN_RECV, TCP_ESTABLISHED) => EventKind::TcpEstablishedIn,
        _ => return Ok(()),
    };
    let sk = arg(ctx, 0) as *const u8;
    // The tracepoint also fires for SCTP and MPTCP sockets.
    // SAFETY: probe read at a BTF offset of `struct sock`.
    let protocol: u16 =
        unsafe { bpf_probe_read_kernel(sk.add(off!(sock_protocol)) as *const u16)? };
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let (key, client_port) = read_key(sk, kind == EventKind::TcpEstablishedIn)?;
    // SAFETY: `sk` is the traced socket.
    let mut extra = Extra {
        sport: client_port,
        cgroup_id: unsafe { sock_cgroup_id(sk) },
        ..Extra::NONE
    };
    if kind == EventKind::TcpFailed {
        // SAFETY: probe read at a BTF offset of `struct sock`.
        extra.errno = unsafe { bpf_probe_read_kernel(sk.add(off!(sock_err)) as *const i32) }
            .unwrap_or(0) as u32;
    }
    emit(kind, &key, extra);
    Ok(())
}

/// The flow key with the client as source; `passive` means the socket is the server's, whose
/// local end is the server. Returns the key and the client port.
fn read_key(sk: *const u8, passive: bool) -> Result<(FlowKey, u16), i64> {
    let common = Copied::read(SCRATCH_TCP, sk, off!(sock_common_len))?;
    let family: u16 = common.get(off!(skc_family));
    let remote_port = u16::from_be(common.get(off!(skc_dport)));
    // SAFETY: probe read at a BTF offset of `struct inet_sock`, which starts with the sock.
    let local_port =
        u16::from_be(unsafe { bpf_probe_read_kernel(sk.add(off!(inet_sport)) as *const u16)? });
    let (client_port, server_port) = if passive {
        (remote_port, local_port)
    } else {
        (local_port, remote_port)
    };
    let mut key = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        cookie: 0,
        // SAFETY: `sk` is the traced socket.
        netns: unsafe { sock_netns(sk) },
        sport: client_port,
        dport: server_port,
        family: family as u8,
        protocol: IPPROTO_TCP,
        kind: 0,
        _pad: 0,
        reason: 0,
    };
    // The client's address goes to `saddr`: the local one unless this is the server's socket.
    let (client, server) = if passive {
        (&mut key.daddr, &mut key.saddr)
    } else {
        (&mut key.saddr, &mut key.daddr)
    };
    if family == AF_INET as u16 {
        client[..4].copy_from_slice(&common.get::<[u8; 4]>(off!(skc_rcv_saddr)));
        server[..4].copy_from_slice(&common.get::<[u8; 4]>(off!(skc_daddr)));
    } else {
        *client = common.get(off!(skc_v6_rcv_saddr));
        *server = common.get(off!(skc_v6_daddr));
    }
    Ok((key, client_port))
}
