//! TCP connection outcomes from the BTF-typed tracepoint `sock/inet_sock_set_state`
//! (`tp_btf`, kernel >= 5.5 with BTF).
//!
//! Kernel: the tracepoint exists since 4.16 with the prototype
//! `(const struct sock *sk, const int oldstate, const int newstate)`; userspace checks it
//! against the kernel's BTF (`btf_trace_inet_sock_set_state`) before load. The arguments
//! are plain context loads, so the transitions that do not matter (four of six per
//! connection) cost two loads and a compare, and nothing is kept per socket. Because the
//! socket comes typed, its fields are read with plain loads the verifier checks against
//! BTF (faults read as 0), not a helper call each: the reads were most of the hook's cost.
//! The socket is read (at BTF offsets) only for:
//! - SYN_SENT -> ESTABLISHED: client side established;
//! - SYN_RECV -> ESTABLISHED: server side established (the child socket);
//! - SYN_SENT -> CLOSE: the attempt failed. `tcp_reset()` and `tcp_write_err()` store
//!   `sk_err` (ECONNREFUSED, ETIMEDOUT, ...) before `tcp_done()` sets CLOSE, so it tells a
//!   refusal from a timeout; 0 means the application gave up first.
//!
//! State numbers are uapi (`tcp_states.h`) and stable.
use aya_ebpf::{
    helpers::bpf_skc_to_tcp_sock, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use probe_common::{EventKind, FlowKey, AF_INET, IPPROTO_TCP};

use crate::{
    config::off,
    emit::{emit, Extra},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments, by the position the prototype check vouched for.
    let (sk, old, new): (*const u8, i32, i32) = unsafe { (ctx.arg(0), ctx.arg(1), ctx.arg(2)) };
    let kind = match (old, new) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) => EventKind::TcpEstablishedOut,
        (TCP_SYN_SENT, TCP_CLOSE) => EventKind::TcpFailed,
        (TCP_SYN_RECV, TCP_ESTABLISHED) => EventKind::TcpEstablishedIn,
        _ => return 0,
    };
    // The tracepoint also fires for SCTP and MPTCP sockets: only a TCP socket comes back,
    // typed as `struct tcp_sock`, whose `inet_sock` part holds the local port.
    // SAFETY: a helper for tracing programs, on the traced socket.
    let sk = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if sk.is_null() {
        return 0;
    }
    // SAFETY: `sk` is the traced socket.
    let (key, client_port) = unsafe { read_key(sk, kind == EventKind::TcpEstablishedIn) };
    let mut extra = Extra {
        sport: client_port,
        // SAFETY: as above.
        cgroup_id: unsafe { cgroup_id(sk) },
        ..Extra::NONE
    };
    if kind == EventKind::TcpFailed {
        // SAFETY: as above.
        extra.errno = unsafe { field::<i32>(sk, off!(sock_err)) } as u32;
    }
    emit(kind, &key, extra);
    0
}

/// The `T` at byte `offset` of the BTF-typed object at `p`: a plain load, which the
/// verifier checks against the object's type and which reads 0 where the memory faults.
#[inline(always)]
unsafe fn field<T: Copy>(p: *const u8, offset: usize) -> T {
    // SAFETY: the caller's `p` is a BTF pointer and `offset` a field of `T` there.
    unsafe { core::ptr::read(p.add(offset) as *const T) }
}

/// A 16-byte address field, read as four aligned words.
#[inline(always)]
unsafe fn addr16(p: *const u8, offset: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    for i in 0..4 {
        // SAFETY: as in `field`: an `in6_addr` is four 32-bit words.
        let w: u32 = unsafe { field(p, offset + 4 * i) };
        a[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    a
}

/// cgroup v2 id of the socket's owner (`sk->sk_cgrp_data.cgroup->kn->id`), 0 when the
/// kernel (< 5.15) has another layout.
#[inline(always)]
unsafe fn cgroup_id(sk: *const u8) -> u64 {
    if off!(sock_cgroup) == 0 {
        return 0;
    }
    // SAFETY: each pointer is a BTF-typed field of the object before it; a NULL one reads 0.
    unsafe {
        let cgroup: *const u8 = field(sk, off!(sock_cgroup));
        if cgroup.is_null() {
            return 0;
        }
        let kn: *const u8 = field(cgroup, off!(cgroup_kn));
        if kn.is_null() {
            return 0;
        }
        field(kn, off!(kernfs_id))
    }
}

/// The flow key with the client as source; `passive` means the socket is the server's, whose
/// local end is the server. Returns the key and the client port.
#[inline(always)]
unsafe fn read_key(sk: *const u8, passive: bool) -> (FlowKey, u16) {
    // SAFETY: fields of the traced socket at BTF offsets (`inet_sock` starts with the sock).
    let (family, remote_port, local_port, net) = unsafe {
        (
            field::<u16>(sk, off!(skc_family)),
            u16::from_be(field::<u16>(sk, off!(skc_dport))),
            u16::from_be(field::<u16>(sk, off!(inet_sport))),
            field::<*const u8>(sk, off!(sock_net)),
        )
    };
    let (client_port, server_port) = if passive {
        (remote_port, local_port)
    } else {
        (local_port, remote_port)
    };
    let mut key = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        cookie: 0,
        netns: if net.is_null() {
            0
        } else {
            // SAFETY: `struct net`, typed by the socket's field.
            unsafe { field::<u32>(net, off!(net_inum)) }
        },
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
    // SAFETY: address fields of the socket.
    unsafe {
        if family == AF_INET as u16 {
            client[..4].copy_from_slice(&field::<[u8; 4]>(sk, off!(skc_rcv_saddr)));
            server[..4].copy_from_slice(&field::<[u8; 4]>(sk, off!(skc_daddr)));
        } else {
            *client = addr16(sk, off!(skc_v6_rcv_saddr));
            *server = addr16(sk, off!(skc_v6_daddr));
        }
    }
    (key, client_port)
}
