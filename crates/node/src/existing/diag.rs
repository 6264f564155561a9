//! One `sock_diag` dump (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`), what `ss` uses: the
//! kernel lists the sockets of one family and protocol in the caller's network namespace.
//! Requests are built and replies parsed by hand from the uapi layouts
//! (`linux/inet_diag.h`, `linux/netlink.h`); [`parse`] is pure and takes untrusted bytes.
#![expect(unsafe_code, reason = "a netlink socket through libc")]
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::decode;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// `enum { ..., INET_DIAG_CGROUP_ID = 21 }`: the socket's cgroup v2 id (kernel >= 5.7).
const INET_DIAG_CGROUP_ID: u16 = 21;

/// TCP states (`include/net/tcp_states.h`, uapi-stable); UDP uses the same numbers.
pub const ESTABLISHED: u8 = 1;
pub const LISTEN: u8 = 10;

/// One socket as the kernel listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket cookie (the one `bpf_get_socket_cookie` returns).
    pub cookie: u64,
    /// cgroup v2 id of the socket's owner, 0 when the kernel does not say.
    pub cgroup_id: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("netlink message of {len} bytes at offset {at} overruns the {total}-byte reply")]
    Overrun { at: usize, len: usize, total: usize },
    #[error("inet_diag message of {0} bytes, shorter than its {MSG_LEN}-byte header")]
    Short(usize),
    #[error("the kernel refused the dump: {0}")]
    Refused(String),
}

/// The request: every socket of `family`/`protocol` in one of `states` (a bit per state).
pub fn request(family: u8, protocol: u8, states: u32) -> [u8; NLMSG_HDR + REQ_LEN] {
    let mut b = [0u8; NLMSG_HDR + REQ_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    // seq 1, pid 0 (the kernel fills in ours).
    b[8..12].copy_from_slice(&1u32.to_ne_bytes());
    b[16] = family;
    b[17] = protocol;
    // idiag_ext 0: the cgroup id comes without asking.
    b[20..24].copy_from_slice(&states.to_ne_bytes());
    b
}

/// Parses one reply datagram into `out`; true once the dump is complete.
pub fn parse(buf: &[u8], family: u8, out: &mut Vec<Entry>) -> Result<bool, ParseError> {
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < NLMSG_HDR || at + len > buf.len() {
            return Err(ParseError::Overrun {
                at,
                len,
                total: buf.len(),
            });
        }
        let body = &buf[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                return Err(ParseError::Refused(
                    io::Error::from_raw_os_error(-errno).to_string(),
                ));
            }
            SOCK_DIAG_BY_FAMILY => out.push(entry(body, family)?),
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        at += (len + 3) & !3;
    }
    Ok(false)
}

fn entry(body: &[u8], family: u8) -> Result<Entry, ParseError> {
    if body.len() < MSG_LEN {
        return Err(ParseError::Short(body.len()));
    }
    let u32_at = |i: usize| u32::from_ne_bytes(body[i..i + 4].try_into().unwrap());
    let addr = |i: usize| -> IpAddr {
        let bytes: [u8; 16] = body[i..i + 16].try_into().unwrap();
        // Both families are known here (they were asked for), so this cannot fail.
        decode::addr(family, &bytes).unwrap_or(IpAddr::from([0u8; 16]))
    };
    let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    // struct inet_diag_sockid at offset 4: sport, dport, src[16], dst[16], if, cookie[2].
    let local = SocketAddr::new(addr(8), port(4));
    let remote = SocketAddr::new(addr(24), port(6));
    let cookie = u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32);
    let mut cgroup_id = 0;
    let mut at = MSG_LEN;
    while at + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        if len < 4 || at + len > body.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            cgroup_id = u64::from_ne_bytes(body[at + 4..at + 12].try_into().unwrap());
        }
        at += (len + 3) & !3;
    }
    Ok(Entry {
        state: body[1],
        local,
        remote,
        cookie,
        cgroup_id,
    })
}

/// Dumps the sockets of `family`/`protocol` in `states` of the calling thread's netns.
pub fn dump(family: u8, protocol: u8, states: u32) -> io::Result<Vec<Entry>> {
    // SAFETY: plain syscall; the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = request(family, protocol, states);
    // SAFETY: `req` is valid for its length; with no address, netlink sends to the kernel.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        match parse(&buf[..n as usize], family, &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{AF_INET, AF_INET6};

    /// A reply message as the kernel lays it out, with a cgroup id attribute.
    fn message(family: u8, state: u8, local: ([u8; 16], u16), remote: ([u8; 16], u16)) -> Vec<u8> {
        let mut body = vec![0u8; MSG_LEN];
        body[0] = family;
        body[1] = state;
        body[4..6].copy_from_slice(&local.1.to_be_bytes());
        body[6..8].copy_from_slice(&remote.1.to_be_bytes());
        body[8..24].copy_from_slice(&local.0);
        body[24..40].copy_from_slice(&remote.0);
        body[44..48].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        body[48..52].copy_from_slice(&0x0000_0005u32.to_ne_bytes());
        body.extend_from_slice(&12u16.to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        body.extend_from_slice(&77u64.to_ne_bytes());
        let mut m = ((NLMSG_HDR + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(body);
        m
    }

    fn done() -> Vec<u8> {
        let mut m = 20u32.to_ne_bytes().to_vec();
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m
    }

    #[test]
    fn a_reply_parses_into_ends_cookie_and_cgroup() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut v4b = [0u8; 16];
        v4b[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut buf = message(AF_INET, ESTABLISHED, (v4, 40000), (v4b, 5432));
        buf.extend(done());
        let mut out = Vec::new();
        assert_eq!(parse(&buf, AF_INET, &mut out), Ok(true));
        assert_eq!(
            out,
            [Entry {
                state: ESTABLISHED,
                local: "10.0.0.1:40000".parse().unwrap(),
                remote: "10.0.0.2:5432".parse().unwrap(),
                cookie: 0x5_0102_0304,
                cgroup_id: 77,
            }]
        );
    }

    #[test]
    fn ipv4_mapped_ends_of_a_dual_stack_socket_become_ipv4() {
        let mapped: std::net::Ipv6Addr = "::ffff:10.0.0.9".parse().unwrap();
        let v6: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let buf = message(AF_INET6, LISTEN, (mapped.octets(), 80), (v6.octets(), 0));
        let mut out = Vec::new();
        assert_eq!(parse(&buf, AF_INET6, &mut out), Ok(false), "no DONE yet");
        assert_eq!(out[0].local, "10.0.0.9:80".parse().unwrap());
        assert_eq!(out[0].remote.ip().to_string(), "fd00::1");
    }

    #[test]
    fn truncated_and_refused_replies_are_errors() {
        let mut buf = message(AF_INET, ESTABLISHED, ([0; 16], 1), ([0; 16], 2));
        buf.truncate(40);
        assert!(matches!(
            parse(&buf, AF_INET, &mut Vec::new()),
            Err(ParseError::Overrun { at: 0, .. })
        ));
        let mut err = 20u32.to_ne_bytes().to_vec();
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let e = parse(&err, AF_INET, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[test]
    fn the_kernel_lists_a_connection_made_here_on_both_ends() {
        // Needs no privilege: the test's own sockets, in its own netns.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let states = (1 << ESTABLISHED) | (1 << LISTEN);
        let all = dump(AF_INET, probe_common::IPPROTO_TCP, states).unwrap();
        let here = client.local_addr().unwrap();
        let ends: Vec<_> = all
            .iter()
            .filter(|e| e.local == here || e.remote == here || e.local == server)
            .map(|e| (e.state, e.local, e.remote))
            .collect();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(ends.contains(&(ESTABLISHED, here, server)), "{ends:?}");
        assert!(ends.contains(&(ESTABLISHED, server, here)), "{ends:?}");
        assert!(ends.contains(&(LISTEN, server, any)), "{ends:?}");
    }
}
