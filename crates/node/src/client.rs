//! The client side of a connection attempt from the calling thread's network namespace, as
//! an application sees it: shared by the node's active probing and the lab's traffic.
#![expect(
    unsafe_code,
    reason = "socket options (SO_LINGER, SO_RCVTIMEO) through libc"
)]
use std::{
    io::{ErrorKind, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use flowpol_analysis::record::{Protocol, Verdict};

/// How a TCP client ends its connections.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Close {
    /// FIN, as applications normally do.
    #[default]
    Graceful,
    /// RST (SO_LINGER 0): no TIME_WAIT, for bursts larger than the ephemeral port range.
    Reset,
}

/// `setsockopt(SOL_SOCKET, option, value)`.
pub fn set_socket_option<T>(
    fd: &impl AsRawFd,
    option: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: a valid socket fd and a value of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Close with RST: no TIME_WAIT, so bursts can exceed the ephemeral port range.
fn linger_zero(stream: &TcpStream) {
    let _ = set_socket_option(
        stream,
        libc::SO_LINGER,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// `work` on every item, `at_once` items at a time each on its own thread, results in item
/// order (`None` for an item whose thread panicked).
pub fn batched<T: Sync, R: Send>(
    items: &[T],
    at_once: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let mut out = Vec::with_capacity(items.len());
    for batch in items.chunks(at_once.max(1)) {
        std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|item| s.spawn(|| work(item))).collect();
            out.extend(handles.into_iter().map(|h| h.join().ok()));
        });
    }
    out
}

/// One connection attempt (TCP, closed as `close` says) or datagram (UDP) to `addr` from the
/// calling thread's network namespace, as the client saw it.
pub fn attempt(addr: SocketAddr, protocol: Protocol, timeout: Duration, close: Close) -> Verdict {
    attempt_telling_errors(addr, protocol, timeout, close).0
}

/// [`attempt`], with the error a UDP send failed with: `EPERM` when a filter of the
/// client's own namespace dropped the datagram (its verdict is still `sent`: it was).
pub fn attempt_telling_errors(
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    close: Close,
) -> (Verdict, Option<String>) {
    match protocol {
        Protocol::UDP => udp_attempt(addr, timeout),
        _ => (tcp_attempt(addr, timeout, close), None),
    }
}

fn tcp_attempt(addr: SocketAddr, timeout: Duration, close: Close) -> Verdict {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            if close == Close::Reset {
                linger_zero(&s);
            } else {
                // A well-behaved exchange: request, half-close, read until the server closes.
                // Closing with unread data would make the kernel discard it (QUEUE_PURGE).
                let _ = s.write_all(b"ping\n");
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.set_read_timeout(Some(timeout));
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
            Verdict::Established
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Verdict::Refused,
        Err(_) => Verdict::Timeout,
    }
}

fn udp_attempt(addr: SocketAddr, timeout: Duration) -> (Verdict, Option<String>) {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let s = match UdpSocket::bind(local) {
        Ok(s) => s,
        Err(e) => return (Verdict::Sent, Some(error_name(&e))),
    };
    if let Err(e) = s.send_to(b"query", addr) {
        return (Verdict::Sent, Some(error_name(&e)));
    }
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 64];
    match s.recv_from(&mut buf) {
        Ok(_) => (Verdict::Answered, None),
        Err(_) => (Verdict::Sent, None),
    }
}

/// `EPERM`, `ENETUNREACH`, ...: the errno's name, as records name socket errors.
fn error_name(e: &std::io::Error) -> String {
    e.raw_os_error()
        .and_then(|n| crate::aggregate::errno_name(n as u32))
        .unwrap_or_else(|| e.to_string())
}
