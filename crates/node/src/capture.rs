//! The eBPF sensor (probe-ebpf) loaded into the kernel and read from: the only code that
//! touches aya. "Sensor" is the word for what observes; "probing" is flowpol's active
//! attempts ([`crate::probing`]).
//!
//! [`Sensor::load`] hands the kernel-specific offsets to the eBPF programs, loads and attaches every
//! program, and gives access to the ring buffer, the flow map and the loss counters. Dropping
//! the [`Sensor`] detaches everything.
#![expect(
    unsafe_code,
    reason = "the probe is loaded and read through aya; the rings' epoll set"
)]
mod rings;

use aya::{
    include_bytes_aligned,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::CgroupAttachMode, CgroupSkb, CgroupSock,
        RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use probe_common::{
    FlowKey, FlowStats, Stat, GLOBAL_CONFIG, MAP_EVENTS, MAP_FLOWS, MAP_SOCK_NETNS, MAP_STATS,
};
use std::os::fd::AsFd;

use crate::kernel::{KernelInfo, STATE_TRACEPOINT};

/// The probe object, built by `build.rs` from the probe-ebpf crate.
static PROBE_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowpol-probe"));

/// (program, tracepoint group, tracepoint name)
const TRACEPOINTS: [(&str, &str, &str); 1] = [("kfree_skb", "skb", "kfree_skb")];
/// cgroup/sock_create and sock_release programs (attach type is in their section names).
const CGROUP_SOCK: [&str; 2] = ["udp_sock_create", "udp_sock_release"];
/// (program, attach type) of the cgroup_skb programs, attached to the cgroup v2 root.
const CGROUP_SKB: [(&str, CgroupSkbAttachType); 2] = [
    ("udp_egress", CgroupSkbAttachType::Egress),
    ("udp_ingress", CgroupSkbAttachType::Ingress),
];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("missing privileges: {missing}. Run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN")]
    Privileges { missing: String },
    #[error("the kernel refused to load the probe")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {program} is missing from the probe object")]
    MissingProgram { program: String },
    #[error("cannot load program {program}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot attach {program} to {hook}")]
    Attach {
        program: String,
        hook: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map} is missing from the probe object")]
    MissingMap { map: &'static str },
    #[error("cannot open the cgroup v2 root {path}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the ring buffer")]
    Poll(#[source] std::io::Error),
}

/// Counters of the probe's own troubles.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SensorStats {
    /// Events lost because the ring buffer was full, per CPU.
    pub ring_full_per_cpu: Vec<u64>,
    /// Runs of the probe's programs the kernel skipped because one was already running on
    /// that CPU (a nested tracepoint hit, e.g. from softirq): events that were never seen.
    pub recursion_misses: u64,
    pub flow_update_failed: u64,
    pub drop_unparsed: u64,
}

impl SensorStats {
    /// Every event the kernel produced that did not reach userspace.
    pub fn events_lost(&self) -> u64 {
        self.ring_full_per_cpu.iter().sum::<u64>() + self.recursion_misses
    }
}

/// The loaded eBPF programs and their maps.
pub struct Sensor {
    // Owns the programs and their links; dropped last so maps stay valid until then.
    rings: rings::Rings,
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    stats: PerCpuArray<MapData, u64>,
    sock_netns: BpfHashMap<MapData, u64, u32>,
    _ebpf: Ebpf,
}

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Which capabilities the probe lacks, from the `CapEff:` line of /proc/self/status.
pub fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 only know it).
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Fails early, naming the missing capabilities, before anything touches the kernel.
pub fn check_privileges() -> Result<(), CaptureError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_capabilities(&status);
    if !missing.is_empty() {
        return Err(CaptureError::Privileges {
            missing: missing.join(", "),
        });
    }
    Ok(())
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(CaptureError::MissingMap { map: name })?;
    T::try_from(map).map_err(|source| CaptureError::Map {
        map: name,
        source: Box::new(source),
    })
}

impl Sensor {
    /// Loads and attaches every program. Needs a tokio runtime (for the ring buffer and logs).
    pub fn load(info: &KernelInfo) -> Result<Self, CaptureError> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let missing = missing_capabilities(&status);
        if !missing.is_empty() {
            return Err(CaptureError::Privileges {
                missing: missing.join(", "),
            });
        }
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .set_global(GLOBAL_CONFIG, &info.config, true)
            .load(PROBE_OBJECT)
            .map_err(|e| CaptureError::Load(Box::new(e)))?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
            tracing::warn!("probe diagnostics (aya-log) unavailable: {e}");
        }
        let program = STATE_TRACEPOINT;
        let prog: &mut RawTracePoint = program_mut(&mut ebpf, program)?;
        prog.load().map_err(load_error(program))?;
        prog.attach(program)
            .map_err(attach_error(program, format!("raw tracepoint {program}")))?;
        for (program, group, name) in TRACEPOINTS {
            let prog: &mut TracePoint = program_mut(&mut ebpf, program)?;
            prog.load().map_err(load_error(program))?;
            prog.attach(group, name)
                .map_err(attach_error(program, format!("tracepoint {group}/{name}")))?;
        }
        let cgroup = std::fs::File::open(&info.cgroup2).map_err(|source| CaptureError::Cgroup {
            path: info.cgroup2.display().to_string(),
            source,
        })?;
        // On kernels >= 5.7 aya attaches to cgroups through bpf_links, which always coexist with
        // other programs on the cgroup (systemd, a CNI) and take no flags: "Single" sends none.
        // Socket bookkeeping first, so sockets created from now on are known to the UDP hooks.
        for program in CGROUP_SOCK {
            let prog: &mut CgroupSock = program_mut(&mut ebpf, program)?;
            prog.load().map_err(load_error(program))?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_error(
                    program,
                    format!("cgroup/sock on {}", info.cgroup2.display()),
                ))?;
        }
        for (program, attach_type) in CGROUP_SKB {
            let prog: &mut CgroupSkb = program_mut(&mut ebpf, program)?;
            prog.load().map_err(load_error(program))?;
            prog.attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(attach_error(
                    program,
                    format!("cgroup_skb/{attach_type:?} on {}", info.cgroup2.display()),
                ))?;
        }
        let rings = MAP_EVENTS
            .iter()
            .map(|name| take::<RingBuf<MapData>>(&mut ebpf, name))
            .collect::<Result<Vec<_>, _>>()?;
        let rings = rings::Rings::new(rings).map_err(CaptureError::Poll)?;
        let flows = take(&mut ebpf, MAP_FLOWS)?;
        let stats = take(&mut ebpf, MAP_STATS)?;
        let sock_netns = take(&mut ebpf, MAP_SOCK_NETNS)?;
        Ok(Self {
            rings,
            flows,
            stats,
            sock_netns,
            _ebpf: ebpf,
        })
    }

    /// Waits until the probe wakes us (a quarter of a ring is filled) or `timeout` passes,
    /// then hands every pending event to `f`. The probe submits without wakeups otherwise, so
    /// the timeout is what bounds the delay of a quiet event stream.
    pub async fn next_batch(
        &mut self,
        timeout: std::time::Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<(), CaptureError> {
        self.rings
            .next_batch(timeout, f)
            .await
            .map_err(CaptureError::Poll)
    }

    /// Hands every pending event to `f` without waiting.
    pub fn drain(&mut self, f: impl FnMut(&[u8])) {
        self.rings.drain(f);
    }

    /// Counters of one aggregated flow, summed over CPUs; `None` once the LRU evicted it.
    pub fn flow_stats(&self, key: &FlowKey) -> Option<FlowStats> {
        let per_cpu = self.flows.get(key, 0).ok()?;
        let mut sum = FlowStats::default();
        for v in per_cpu.iter() {
            if v.packets == 0 && v.replies == 0 && v.flags == 0 {
                continue;
            }
            sum.first_ns = if sum.first_ns == 0 {
                v.first_ns
            } else {
                sum.first_ns.min(v.first_ns)
            };
            sum.last_ns = sum.last_ns.max(v.last_ns);
            sum.packets += v.packets;
            sum.replies += v.replies;
            sum.flags |= v.flags;
            sum.netns = sum.netns.max(v.netns);
            sum.cgroup_id = sum.cgroup_id.max(v.cgroup_id);
        }
        Some(sum)
    }

    /// Removes a retired flow from the kernel's map: its next packet starts it anew and is
    /// reported as an event.
    pub fn forget(&mut self, key: &FlowKey) {
        // Already gone (evicted by the LRU) is as good.
        let _ = self.flows.remove(key);
    }

    /// Tells the UDP hooks the namespace of a socket older than the probe, unless they
    /// know it already (the ingress hook cannot read it from the packet's context).
    pub fn learn_netns(&mut self, cookie: u64, netns: u32) {
        const BPF_NOEXIST: u64 = 1;
        // Known already, or the LRU map full of younger sockets: both fine.
        let _ = self.sock_netns.insert(cookie, netns, BPF_NOEXIST);
    }

    pub fn stats(&self) -> SensorStats {
        let read = |stat: Stat| -> Vec<u64> {
            self.stats
                .get(&(stat as u32), 0)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default()
        };
        SensorStats {
            ring_full_per_cpu: read(Stat::RingFull),
            recursion_misses: self
                ._ebpf
                .programs()
                .filter_map(|(_, p)| p.fd().ok().map(|fd| recursion_misses(fd.as_fd())))
                .sum(),
            flow_update_failed: read(Stat::FlowUpdateFailed).iter().sum(),
            drop_unparsed: read(Stat::DropUnparsed).iter().sum(),
        }
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| CaptureError::MissingProgram {
            program: program.into(),
        })?;
    prog.try_into().map_err(load_error(program))
}

fn load_error(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError + '_ {
    move |source| CaptureError::Program {
        program: program.into(),
        source: Box::new(source),
    }
}

fn attach_error(
    program: &str,
    hook: String,
) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError + '_ {
    move |source| CaptureError::Attach {
        program: program.into(),
        hook,
        source: Box::new(source),
    }
}

/// `bpf_prog_info.recursion_misses` (kernel >= 5.12; 0 before), which aya 0.13 does not
/// expose: `BPF_OBJ_GET_INFO_BY_FD` with the prefix of `struct bpf_prog_info` up to it.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    /// `struct bpf_prog_info` up to `recursion_misses` (offset 208 in the uapi header).
    #[repr(C)]
    struct InfoPrefix {
        head: [u8; 208],
        recursion_misses: u64,
    }
    /// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = InfoPrefix {
        head: [0; 208],
        recursion_misses: 0,
    };
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<InfoPrefix>() as u32,
        info: &mut info as *mut InfoPrefix as u64,
    };
    // SAFETY: `attr` and `info` are valid for the call; the kernel writes at most `info_len`
    // bytes into `info` and reads `size_of::<InfoAttr>()` bytes of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use memcg. Raising it
/// needs CAP_SYS_RESOURCE, which containers often lack: warn, don't fail.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_capeff() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert!(missing_capabilities(root).is_empty());
        let none = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing_capabilities(none),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        // CAP_SYS_ADMIN + CAP_NET_ADMIN is enough on its own.
        let sysadmin = format!("CapEff:\t{:016x}\n", (1u64 << 21) | (1u64 << 12));
        assert!(missing_capabilities(&sysadmin).is_empty());
    }
}

/// Run statistics of one loaded BPF program (any loader's), from `BPF_OBJ_GET_INFO_BY_FD`.
/// `run_time_ns`/`run_count` stay 0 unless `kernel.bpf_stats_enabled` is 1.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramStat {
    pub id: u32,
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Every BPF program loaded on this machine, with its run statistics.
pub fn program_stats() -> Result<Vec<ProgramStat>, CaptureError> {
    aya::programs::loaded_programs()
        .map(|p| {
            let p = p.map_err(load_error("(listing loaded programs)"))?;
            Ok(ProgramStat {
                id: p.id(),
                name: p.name_as_str().unwrap_or_default().to_owned(),
                run_count: p.run_count(),
                run_time_ns: p.run_time().as_nanos() as u64,
            })
        })
        .collect()
}
