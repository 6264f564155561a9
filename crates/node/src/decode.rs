//! Ring buffer bytes -> typed observations. Pure: the bytes are untrusted and checked.
#![expect(
    unsafe_code,
    reason = "ring buffer bytes are read as the probe's #[repr(C)] event"
)]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use probe_common::{Event, EventKind, FlowKey, ABI_VERSION, AF_INET, AF_INET6};

use flowpol_analysis::record::Protocol;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event is {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("event ABI version {got}, this flowpol understands {ABI_VERSION}")]
    Version { got: u16 },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown IP protocol {0}")]
    Protocol(u8),
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub kind: EventKind,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub errno: u32,
    pub flags: u32,
    pub protocol: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub netns: u32,
    pub reason: u32,
    /// The raw key, to look up the counters of aggregated kinds in the flow map.
    pub key: FlowKey,
}

/// Turns the probe's address bytes into an address; IPv4-mapped IPv6 becomes IPv4, as a
/// dual-stack socket talking IPv4 is an IPv4 flow to everyone else.
pub fn addr(family: u8, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            Ok(v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)))
        }
        other => Err(DecodeError::Family(other)),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Observation, DecodeError> {
    let want = std::mem::size_of::<Event>();
    if bytes.len() < want {
        return Err(DecodeError::Length {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; `Event` is plain old data, valid for any bit pattern, and
    // `read_unaligned` makes no alignment assumption about the ring buffer slice.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    if ev.version != ABI_VERSION {
        return Err(DecodeError::Version { got: ev.version });
    }
    let kind = EventKind::try_from(ev.kind).map_err(DecodeError::Kind)?;
    let k = ev.key;
    let protocol = Protocol::from_ipproto(k.protocol).ok_or(DecodeError::Protocol(k.protocol))?;
    Ok(Observation {
        kind,
        ts_ns: ev.ts_ns,
        cgroup_id: ev.cgroup_id,
        errno: ev.errno,
        flags: ev.flags,
        protocol,
        src: addr(k.family, &k.saddr)?,
        src_port: ev.sport,
        dst: addr(k.family, &k.daddr)?,
        dst_port: k.dport,
        netns: ev.netns,
        reason: k.reason,
        key: k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{bytes, event};
    use probe_common::IPPROTO_TCP;

    #[test]
    fn decodes_a_tcp_event() {
        let ev = event(EventKind::TcpEstablishedOut, AF_INET, IPPROTO_TCP);
        let obs = decode(&bytes(&ev)).expect("valid event");
        assert_eq!(obs.kind, EventKind::TcpEstablishedOut);
        assert_eq!(obs.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((obs.src_port, obs.dst_port), (40000, 8080));
        assert_eq!(obs.protocol, Protocol::TCP);
    }

    #[test]
    fn maps_v4_mapped_v6_to_v4() {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(
            addr(AF_INET6, &b).unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v6 = "fd00::7".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            addr(AF_INET6, &v6).unwrap(),
            "fd00::7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rejects_bad_bytes_with_typed_errors() {
        let ev = event(EventKind::Udp, AF_INET, IPPROTO_TCP);
        let good = bytes(&ev);
        assert_eq!(
            decode(&good[..10]),
            Err(DecodeError::Length { got: 10, want: 96 })
        );
        let mut v = ev;
        v.version = 99;
        assert_eq!(decode(&bytes(&v)), Err(DecodeError::Version { got: 99 }));
        let mut v = ev;
        v.kind = 42;
        assert_eq!(decode(&bytes(&v)), Err(DecodeError::Kind(42)));
        let mut v = ev;
        v.key.family = 3;
        assert_eq!(decode(&bytes(&v)), Err(DecodeError::Family(3)));
        let mut v = ev;
        v.key.protocol = 1;
        assert_eq!(decode(&bytes(&v)), Err(DecodeError::Protocol(1)));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every length and a spread of byte patterns.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&buf);
        }
    }
}
