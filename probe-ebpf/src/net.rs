//! Reading kernel objects through the offsets in `CONFIG`.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use probe_common::{AF_INET, AF_INET6};

use crate::config::off;

/// Inode of the network namespace a `struct sock` belongs to (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
pub unsafe fn sock_netns(sk: *const u8) -> u32 {
    if sk.is_null() {
        return 0;
    }
    // SAFETY: probe reads fault safely; the offsets come from this kernel's BTF.
    let net: *const u8 =
        match unsafe { bpf_probe_read_kernel(sk.add(off!(sock_net)) as *const *const u8) } {
            Ok(p) => p,
            Err(_) => return 0,
        };
    unsafe { net_inum(net) }
}

/// `net->ns.inum`.
#[inline(always)]
pub unsafe fn net_inum(net: *const u8) -> u32 {
    if net.is_null() {
        return 0;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(net.add(off!(net_inum)) as *const u32) }.unwrap_or(0)
}

/// Netns of a packet: its device's, else its socket's.
#[inline(always)]
pub unsafe fn skb_netns(skb: *const u8) -> u32 {
    // SAFETY: as above.
    unsafe {
        let dev: *const u8 = bpf_probe_read_kernel(skb.add(off!(skb_dev)) as *const *const u8)
            .unwrap_or(core::ptr::null());
        if !dev.is_null() {
            let net: *const u8 = bpf_probe_read_kernel(dev.add(off!(dev_net)) as *const *const u8)
                .unwrap_or(core::ptr::null());
            let inum = net_inum(net);
            if inum != 0 {
                return inum;
            }
        }
        let sk: *const u8 = bpf_probe_read_kernel(skb.add(off!(skb_sk)) as *const *const u8)
            .unwrap_or(core::ptr::null());
        sock_netns(sk)
    }
}

/// The 5-tuple of a packet, read from its IP and transport headers.
pub struct Tuple {
    pub family: u8,
    pub protocol: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Parses the network header of `skb` (IPv4 or IPv6 without extension headers).
/// Returns `None` when the header offset is unset or the bytes cannot be read.
#[inline(always)]
pub unsafe fn skb_tuple(skb: *const u8) -> Option<Tuple> {
    // SAFETY: probe reads fault safely; offsets from BTF.
    unsafe {
        let head: *const u8 =
            bpf_probe_read_kernel(skb.add(off!(skb_head)) as *const *const u8).ok()?;
        let nh: u16 =
            bpf_probe_read_kernel(skb.add(off!(skb_network_header)) as *const u16).ok()?;
        // `(u16)~0U` marks an unset header offset.
        if head.is_null() || nh == u16::MAX {
            return None;
        }
        let ip = head.add(nh as usize);
        let first: u8 = bpf_probe_read_kernel(ip).ok()?;
        let mut t = Tuple {
            family: 0,
            protocol: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
        };
        let l4 = match first >> 4 {
            4 => {
                let hdr: [u8; 20] = bpf_probe_read_kernel(ip as *const [u8; 20]).ok()?;
                t.family = AF_INET;
                t.protocol = hdr[9];
                t.saddr[..4].copy_from_slice(&hdr[12..16]);
                t.daddr[..4].copy_from_slice(&hdr[16..20]);
                // A fragment other than the first carries no transport header.
                let frag = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
                if frag != 0 {
                    return Some(t);
                }
                ip.add(((hdr[0] & 0x0f) as usize) * 4)
            }
            6 => {
                let hdr: [u8; 40] = bpf_probe_read_kernel(ip as *const [u8; 40]).ok()?;
                t.family = AF_INET6;
                t.protocol = hdr[6];
                t.saddr.copy_from_slice(&hdr[8..24]);
                t.daddr.copy_from_slice(&hdr[24..40]);
                ip.add(40)
            }
            _ => return None,
        };
        let ports: [u8; 4] = bpf_probe_read_kernel(l4 as *const [u8; 4]).ok()?;
        t.sport = u16::from_be_bytes([ports[0], ports[1]]);
        t.dport = u16::from_be_bytes([ports[2], ports[3]]);
        Some(t)
    }
}

/// cgroup v2 id of a socket's owner (`sk->sk_cgrp_data.cgroup->kn->id`), 0 when the kernel
/// (< 5.15) has another layout.
#[inline(always)]
pub unsafe fn sock_cgroup_id(sk: *const u8) -> u64 {
    if off!(sock_cgroup) == 0 {
        return 0;
    }
    // SAFETY: probe reads fault safely; offsets from this kernel's BTF.
    unsafe {
        let cgroup: *const u8 =
            match bpf_probe_read_kernel(sk.add(off!(sock_cgroup)) as *const *const u8) {
                Ok(p) if !p.is_null() => p,
                _ => return 0,
            };
        let kn: *const u8 =
            match bpf_probe_read_kernel(cgroup.add(off!(cgroup_kn)) as *const *const u8) {
                Ok(p) if !p.is_null() => p,
                _ => return 0,
            };
        bpf_probe_read_kernel(kn.add(off!(kernfs_id)) as *const u64).unwrap_or(0)
    }
}
