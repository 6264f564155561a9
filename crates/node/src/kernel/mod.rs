//! What the probe must know about the running kernel, found out before load.
//!
//! Offsets of kernel structs come from BTF and tracepoint layouts from tracefs, so one probe
//! binary runs on every kernel >= 5.8 with BTF. Missing pieces are reported by name.
pub mod btf;
pub mod tracefs;

use std::{collections::HashMap, path::PathBuf};

use probe_common::ProbeConfig;

use btf::{Btf, BtfError};
use tracefs::{TracefsError, Tracepoint};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this kernel has no BTF ({VMLINUX_BTF} is missing); flowpol needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (>= 5.8)")]
    NoBtf,
    #[error("cannot read {VMLINUX_BTF}")]
    ReadBtf {
        #[source]
        source: std::io::Error,
    },
    #[error("reading the kernel's BTF")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("offset of {what} is {offset}, beyond what the probe can address")]
    OffsetTooLarge { what: String, offset: usize },
    #[error("raw tracepoint {name} does not have the prototype the probe reads (void *, struct sock *, int, int); found: {found}")]
    NoRawTracepoint { name: String, found: String },
    #[error("no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo); UDP capture attaches to its root. Mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2,
}

/// Everything learnt about the kernel.
pub struct KernelInfo {
    pub config: ProbeConfig,
    /// Root of the cgroup v2 hierarchy, where the UDP programs attach.
    pub cgroup2: PathBuf,
    /// `enum skb_drop_reason` value -> name without the `SKB_DROP_REASON_` prefix.
    pub drop_reasons: HashMap<u32, String>,
}

/// Reads BTF and tracefs of the running kernel and checks every hook is there.
pub fn discover() -> Result<KernelInfo, KernelError> {
    let btf = match std::fs::read(VMLINUX_BTF) {
        Ok(bytes) => Btf::parse(bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KernelError::NoBtf),
        Err(source) => return Err(KernelError::ReadBtf { source }),
    };
    let root = tracefs::tracefs_root()?;
    let drop = Tracepoint::load(&root, "skb", "kfree_skb")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = cgroup2_root(&mountinfo).ok_or(KernelError::NoCgroup2)?;
    resolve(&btf, &drop, cgroup2)
}

/// The first cgroup2 mount point in a mountinfo listing (field 5 is the mount point; the
/// filesystem type follows the ` - ` separator).
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        // The root of the hierarchy is mounted when field 4 (the mount's root) is "/".
        let mut fields = left.split_whitespace().skip(3);
        let root = fields.next()?;
        let point = fields.next()?;
        (root == "/").then(|| PathBuf::from(point.replace("\\040", " ")))
    })
}

/// The raw tracepoint the TCP program attaches to, and the arguments it reads.
pub const STATE_TRACEPOINT: &str = "inet_sock_set_state";
const STATE_PROTOTYPE: [&str; 4] = ["void *", "struct sock *", "int", "int"];

/// The TCP program reads the raw tracepoint's arguments by position: check the kernel
/// declares them as the probe expects (`btf_trace_<name>`: the hidden `void *` comes first).
fn check_raw_tracepoint(btf: &Btf) -> Result<(), KernelError> {
    let typedef = format!("btf_trace_{STATE_TRACEPOINT}");
    let found = btf
        .fn_pointer_params(&typedef)
        .map_err(|_| KernelError::NoRawTracepoint {
            name: STATE_TRACEPOINT.into(),
            found: "no such tracepoint in BTF".into(),
        })?;
    if found != STATE_PROTOTYPE {
        return Err(KernelError::NoRawTracepoint {
            name: STATE_TRACEPOINT.into(),
            found: found.join(", "),
        });
    }
    Ok(())
}

/// Builds the probe's configuration from parsed BTF and tracepoint layouts.
pub fn resolve(btf: &Btf, drop: &Tracepoint, cgroup2: PathBuf) -> Result<KernelInfo, KernelError> {
    check_raw_tracepoint(btf)?;
    let member = |strukt: &str, path: &str| -> Result<u16, KernelError> {
        let offset = btf.member_offset(strukt, path)?;
        u16::try_from(offset).map_err(|_| KernelError::OffsetTooLarge {
            what: format!("{strukt}.{path}"),
            offset,
        })
    };
    let has_reason = drop.has("reason");
    let drop_fields: &[&str] = if has_reason {
        &["skbaddr", "protocol", "reason"]
    } else {
        &["skbaddr", "protocol"]
    };
    let common = [
        ("skc_family", 2),
        ("skc_dport", 2),
        ("skc_daddr", 4),
        ("skc_rcv_saddr", 4),
        ("skc_v6_daddr", 16),
        ("skc_v6_rcv_saddr", 16),
    ];
    let mut skc = [0u16; 6];
    let mut common_len = 0usize;
    for (slot, (field, size)) in skc.iter_mut().zip(common) {
        *slot = member("sock_common", field)?;
        common_len = common_len.max(usize::from(*slot) + size);
    }
    if common_len > probe_common::COPY_MAX {
        return Err(KernelError::OffsetTooLarge {
            what: "the sock_common fields the probe reads".into(),
            offset: common_len,
        });
    }
    let mut config = ProbeConfig {
        tp_drop_skbaddr: drop.offset("skbaddr", 8)?,
        tp_drop_protocol: drop.offset("protocol", 2)?,
        tp_drop_reason: if has_reason {
            drop.offset("reason", 4)?
        } else {
            0
        },
        tp_drop_has_reason: u16::from(has_reason),
        tp_drop_len: drop.extent(drop_fields)?,
        sock_net: member("sock", "__sk_common.skc_net.net")?,
        sock_err: member("sock", "sk_err")?,
        sock_protocol: member("sock", "sk_protocol")?,
        skc_family: skc[0],
        skc_dport: skc[1],
        skc_daddr: skc[2],
        skc_rcv_saddr: skc[3],
        skc_v6_daddr: skc[4],
        skc_v6_rcv_saddr: skc[5],
        sock_common_len: common_len as u16,
        inet_sport: member("inet_sock", "inet_sport")?,
        net_inum: member("net", "ns.inum")?,
        skb_head: member("sk_buff", "head")?,
        skb_network_header: member("sk_buff", "network_header")?,
        skb_dev: member("sk_buff", "dev")?,
        skb_sk: member("sk_buff", "sk")?,
        dev_net: member("net_device", "nd_net.net")?,
        task_nsproxy: member("task_struct", "nsproxy")?,
        nsproxy_net_ns: member("nsproxy", "net_ns")?,
        // Before 5.15 the socket's cgroup was encoded differently: report no cgroup there.
        sock_cgroup: member("sock", "sk_cgrp_data.cgroup").unwrap_or(0),
        cgroup_kn: member("cgroup", "kn").unwrap_or(0),
        kernfs_id: member("kernfs_node", "id").unwrap_or(0),
        skb_iif: member("sk_buff", "skb_iif")?,
        sock_cookie: member("sock", "__sk_common.skc_cookie")?,
        // Set below, from the drop reasons.
        drop_netfilter: 0,
    };
    let drop_reasons: HashMap<u32, String> = if has_reason {
        btf.enum_values("skb_drop_reason")?
            .into_iter()
            .filter_map(|(v, name)| {
                let short = name
                    .strip_prefix("SKB_DROP_REASON_")
                    .unwrap_or(&name)
                    .to_owned();
                u32::try_from(v).ok().map(|v| (v, short))
            })
            .collect()
    } else {
        HashMap::new()
    };
    config.drop_netfilter = drop_reasons
        .iter()
        .find(|(_, name)| name.as_str() == "NETFILTER_DROP")
        .and_then(|(v, _)| u16::try_from(*v).ok())
        .unwrap_or(0);
    Ok(KernelInfo {
        config,
        cgroup2,
        drop_reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_root_in_mountinfo() {
        let hybrid = "25 20 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
34 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let nested_only = "40 20 0:30 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_root(nested_only),
            None,
            "a sub-tree mount is not the root"
        );
        assert_eq!(cgroup2_root("1 0 0:1 / / rw - ext4 /dev/vda rw"), None);
    }
}
