//! Sockets that existed before the probe: the probe sees TCP state changes and UDP
//! datagrams, so a connection established before it started (a database pool, a gRPC
//! stream) would never appear. At start, every network namespace of the node is listed
//! with `sock_diag` ([`diag`]), and:
//! - each established TCP connection becomes a record marked `before_start`, on the side
//!   its socket is (the server's side when a listener in the same namespace holds its
//!   local port);
//! - each connected UDP socket becomes a record marked `before_start` too (a client's
//!   `sent`, a server's `received`), sent datagrams or none: an idle one talks again later;
//! - each UDP socket's namespace is taught to the probe (by cookie), which otherwise learns
//!   it only when the socket first sends.
//!
//! Chosen over a BPF socket iterator (`iter/tcp`): that iterator also lists only the
//! namespace of whoever opens it, so it needs a setns per namespace just the same, plus a
//! program per protocol for the verifier to pass; sock_diag is in every kernel that runs pods.
//!
//! Namespaces are found through every task's `ns/net` and the bind mounts of `ip netns`
//! (`/run/netns`), where the CNI and the lab keep pods' namespaces.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use flowpol_analysis::record::{Protocol, Side};
use probe_common::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

pub mod diag;

/// One network namespace of the node: its inode and a file that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u32,
    pub path: PathBuf,
}

/// A socket found at start, with the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub netns: u32,
    pub protocol: Protocol,
    pub entry: diag::Entry,
}

/// An established TCP connection or a connected UDP socket found at start, as seen from
/// one of its sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub protocol: Protocol,
    pub side: Side,
    pub netns: u32,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub cgroup_id: u64,
}

/// What one scan found.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub sockets: Vec<Socket>,
    pub namespaces: usize,
    /// Namespaces that could not be listed, with why (a pod that ended while scanning is
    /// not among them: it had nothing left to list).
    pub failed: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
}

/// Every network namespace reachable from this host's `/proc` and `/run/netns`, once each.
pub fn namespaces() -> Vec<Namespace> {
    let mut by_inode: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            by_inode.entry(meta.ino() as u32).or_insert(path);
        }
    };
    for dir in ["/run/netns", "/var/run/netns"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            add(entry.path());
        }
    }
    // Threads too: a thread may have entered a namespace its process did not.
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !is_number(&proc.file_name()) {
            continue;
        }
        for task in std::fs::read_dir(proc.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            add(task.path().join("ns/net"));
        }
    }
    by_inode
        .into_iter()
        .map(|(inode, path)| Namespace { inode, path })
        .collect()
}

fn is_number(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Lists the TCP (established and listening) and UDP sockets of every namespace.
pub fn scan() -> Scan {
    let started = Instant::now();
    let namespaces = namespaces();
    let mut scan = Scan {
        namespaces: namespaces.len(),
        ..Scan::default()
    };
    for ns in namespaces {
        match in_namespace(&ns.path) {
            Ok(found) => scan
                .sockets
                .extend(found.into_iter().map(|(protocol, entry)| Socket {
                    netns: ns.inode,
                    protocol,
                    entry,
                })),
            // The task that held it ended meanwhile: nothing left to list.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => scan.failed.push((ns.path, e.to_string())),
        }
    }
    scan.elapsed = started.elapsed();
    scan
}

/// The sockets of the namespace at `path`, listed from a thread that entered it (setns
/// moves only the calling thread, which then ends).
fn in_namespace(path: &Path) -> std::io::Result<Vec<(Protocol, diag::Entry)>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        crate::netns::enter_path(&path).map_err(|e| e.source)?;
        let tcp_states = (1 << diag::ESTABLISHED) | (1 << diag::LISTEN);
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            for (protocol, states) in [(IPPROTO_TCP, tcp_states), (IPPROTO_UDP, u32::MAX)] {
                let name = if protocol == IPPROTO_TCP {
                    Protocol::TCP
                } else {
                    Protocol::UDP
                };
                out.extend(
                    diag::dump(family, protocol, states)?
                        .into_iter()
                        .map(|e| (name, e)),
                );
            }
        }
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the scanning thread panicked")))
}

/// The established TCP connections and connected UDP sockets among `sockets`, each with the
/// side its socket is on. A socket is the server's when a listener of the same namespace
/// and protocol holds its local port on its address or on the unspecified one (for UDP, a
/// socket bound there and connected to no one: a server answering from its own connected
/// socket per peer).
pub fn connections(sockets: &[Socket]) -> Vec<Connection> {
    let mut listeners: HashMap<(u32, Protocol, u16), Vec<IpAddr>> = HashMap::new();
    for s in sockets {
        if listens(s) {
            listeners
                .entry((s.netns, s.protocol, s.entry.local.port()))
                .or_default()
                .push(s.entry.local.ip());
        }
    }
    sockets
        .iter()
        .filter(|s| s.entry.state == diag::ESTABLISHED)
        .filter(|s| matches!(s.protocol, Protocol::TCP | Protocol::UDP))
        .map(|s| {
            let e = &s.entry;
            let serves = listeners
                .get(&(s.netns, s.protocol, e.local.port()))
                .is_some_and(|ips| {
                    ips.iter()
                        .any(|ip| ip.is_unspecified() || *ip == e.local.ip())
                });
            let (side, client, server) = if serves {
                (Side::Server, e.remote, e.local)
            } else {
                (Side::Client, e.local, e.remote)
            };
            Connection {
                protocol: s.protocol,
                side,
                netns: s.netns,
                client,
                server,
                cgroup_id: e.cgroup_id,
            }
        })
        .collect()
}

/// A TCP listener, or a UDP socket bound to a port and connected to no one.
fn listens(s: &Socket) -> bool {
    match s.protocol {
        Protocol::TCP => s.entry.state == diag::LISTEN,
        Protocol::UDP => s.entry.state != diag::ESTABLISHED && s.entry.local.port() != 0,
        _ => false,
    }
}

/// Cookie -> namespace of every UDP socket, for the probe.
pub fn udp_namespaces(sockets: &[Socket]) -> impl Iterator<Item = (u64, u32)> + '_ {
    sockets
        .iter()
        .filter(|s| s.protocol == Protocol::UDP && s.entry.cookie != 0)
        .map(|s| (s.entry.cookie, s.netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(netns: u32, state: u8, local: &str, remote: &str) -> Socket {
        socket(Protocol::TCP, netns, state, local, remote)
    }

    fn socket(protocol: Protocol, netns: u32, state: u8, local: &str, remote: &str) -> Socket {
        Socket {
            netns,
            protocol,
            entry: diag::Entry {
                state,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                cookie: 1,
                cgroup_id: 5,
            },
        }
    }

    #[test]
    fn the_side_is_the_servers_where_a_listener_holds_the_local_port() {
        let sockets = [
            // Namespace 1 serves 5432 on every address and 8080 on one.
            tcp(1, diag::LISTEN, "0.0.0.0:5432", "0.0.0.0:0"),
            tcp(1, diag::LISTEN, "10.0.0.1:8080", "0.0.0.0:0"),
            tcp(1, diag::ESTABLISHED, "10.0.0.1:5432", "10.0.0.2:40000"),
            tcp(1, diag::ESTABLISHED, "10.0.0.1:8080", "10.0.0.3:40001"),
            // The same port on another address of namespace 1 is not served.
            tcp(1, diag::ESTABLISHED, "10.0.0.9:8080", "10.0.0.4:40002"),
            // Namespace 2's client of 5432: no listener of its own on 40000.
            tcp(2, diag::ESTABLISHED, "10.0.0.2:40000", "10.0.0.1:5432"),
        ];
        let got: Vec<_> = connections(&sockets)
            .into_iter()
            .map(|c| (c.netns, c.side, c.client.to_string(), c.server.to_string()))
            .collect();
        let want = [
            (1, Side::Server, "10.0.0.2:40000", "10.0.0.1:5432"),
            (1, Side::Server, "10.0.0.3:40001", "10.0.0.1:8080"),
            (1, Side::Client, "10.0.0.9:8080", "10.0.0.4:40002"),
            (2, Side::Client, "10.0.0.2:40000", "10.0.0.1:5432"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(n, s, c, v)| (*n, *s, c.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_connected_udp_socket_is_a_client_unless_its_port_is_served_unconnected() {
        const UNCONNECTED: u8 = 7; // TCP_CLOSE, as sock_diag shows an unconnected UDP socket
        let udp = |netns, state, local, remote| socket(Protocol::UDP, netns, state, local, remote);
        let sockets = [
            // Namespace 1: a resolver's socket connected to its server, and one bound to
            // 53 connected to no one (a server).
            udp(1, diag::ESTABLISHED, "10.0.0.1:41000", "10.0.0.53:53"),
            udp(1, UNCONNECTED, "0.0.0.0:53", "0.0.0.0:0"),
            // A server's own connected socket per peer, on the served port.
            udp(1, diag::ESTABLISHED, "10.0.0.1:53", "10.0.0.7:50000"),
            // An unconnected socket is no connection, and a TCP listener serves no UDP.
            udp(2, UNCONNECTED, "0.0.0.0:41001", "0.0.0.0:0"),
            tcp(2, diag::LISTEN, "0.0.0.0:8125", "0.0.0.0:0"),
            udp(2, diag::ESTABLISHED, "10.0.0.2:8125", "10.0.0.9:8125"),
        ];
        let got: Vec<_> = connections(&sockets)
            .into_iter()
            .map(|c| {
                (
                    c.protocol,
                    c.netns,
                    c.side,
                    c.client.to_string(),
                    c.server.to_string(),
                )
            })
            .collect();
        let want = [
            (
                Protocol::UDP,
                1,
                Side::Client,
                "10.0.0.1:41000",
                "10.0.0.53:53",
            ),
            (
                Protocol::UDP,
                1,
                Side::Server,
                "10.0.0.7:50000",
                "10.0.0.1:53",
            ),
            (
                Protocol::UDP,
                2,
                Side::Client,
                "10.0.0.2:8125",
                "10.0.0.9:8125",
            ),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(p, n, s, c, v)| (*p, *n, *s, c.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn namespaces_include_this_processs_once() {
        let mine = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let all = namespaces();
        assert_eq!(all.iter().filter(|n| n.inode == mine).count(), 1);
    }
}
