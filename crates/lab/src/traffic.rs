//! Listeners and clients, each a thread inside a host's network namespace.
#![expect(
    unsafe_code,
    reason = "socket options (SO_RCVTIMEO, SO_LINGER, listen backlog) through libc"
)]
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use flowpol_analysis::record::{Protocol, Verdict};
use flowpol_node::{client, netns::enter};

use crate::{
    netns::NetError,
    scenario::{Family, Resolved, Traffic},
};

/// How often blocked listeners look at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// A receive timeout, which `accept()` honours too (std offers none for listeners).
fn set_timeout(fd: &impl AsRawFd, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    client::set_socket_option(fd, libc::SO_RCVTIMEO, &tv)
}

/// Starts a listener thread in `ns` serving `port`; returns once the socket is bound.
pub fn listen(
    ns: String,
    port: u16,
    protocol: Protocol,
    reply: bool,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, NetError> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), NetError>>();
    let handle = std::thread::spawn(move || {
        let setup = || -> Result<Box<dyn FnMut() -> bool>, NetError> {
            enter(&ns)?;
            let io = |source| NetError::Spawn {
                command: format!("listen on port {port} in {ns}"),
                source,
            };
            // `[::]` with the default bindv6only=0 serves IPv4 and IPv6 alike.
            let any = SocketAddr::from(([0u16; 8], port));
            match protocol {
                Protocol::TCP => {
                    let l = TcpListener::bind(any).map_err(io)?;
                    // std listens with a backlog of 128; bursts need the kernel's maximum
                    // (listen() again on a listening socket only updates it).
                    // SAFETY: a valid listening socket.
                    if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
                        return Err(io(std::io::Error::last_os_error()));
                    }
                    set_timeout(&l, TICK).map_err(io)?;
                    // Connections whose client sends nothing and keeps them open (held
                    // traffic), kept open until the listener stops, as a server would.
                    let mut quiet = Vec::new();
                    Ok(Box::new(move || match l.accept() {
                        Ok((mut conn, _)) => {
                            // Read the request before closing, as a server would; closing on
                            // unread data makes the kernel reset and discard it.
                            let _ = conn.set_read_timeout(Some(TICK));
                            if let Err(e) = std::io::copy(&mut conn, &mut std::io::sink()) {
                                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                                    quiet.push(conn);
                                }
                            }
                            true
                        }
                        Err(e) => matches!(
                            e.kind(),
                            ErrorKind::WouldBlock
                                | ErrorKind::TimedOut
                                | ErrorKind::Interrupted
                                | ErrorKind::ConnectionAborted
                        ),
                    }))
                }
                _ => {
                    let s = UdpSocket::bind(any).map_err(io)?;
                    s.set_read_timeout(Some(TICK)).map_err(io)?;
                    let mut buf = [0u8; 1500];
                    Ok(Box::new(move || match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if reply {
                                let _ = s.send_to(&buf[..n], from);
                            }
                            true
                        }
                        Err(e) => matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ),
                    }))
                }
            }
        };
        let mut serve = match setup() {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            if !serve() {
                break;
            }
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetError::Command {
            command: format!("listener on port {port}"),
            stderr: "thread died".into(),
        }),
    }
}

/// What the client application saw for one traffic item.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientSaw {
    pub item: usize,
    pub target: Option<IpAddr>,
    /// Attempts by result: established/refused/timeout for TCP, answered/sent for UDP.
    pub results: BTreeMap<Verdict, u32>,
    /// UDP sends that failed, by errno name (`EPERM`: a filter of the client's own
    /// namespace dropped the datagram).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub send_errors: BTreeMap<String, u32>,
}

/// Runs one traffic item from the namespace of its source host.
pub fn run_item(
    resolved: &Resolved,
    ns: &str,
    item: usize,
    t: &Traffic,
    stop: &Arc<AtomicBool>,
) -> Result<ClientSaw, NetError> {
    let target = resolved
        .address(&t.to, t.family)
        .filter(|a| a.is_ipv4() == (t.family == Family::Ipv4));
    let Some(target) = target else {
        return Err(NetError::Command {
            command: format!("traffic[{item}]"),
            stderr: format!("`{}` has no {:?} address", t.to, t.family),
        });
    };
    let addr = SocketAddr::new(target, t.port);
    let timeout = resolved.scenario.settings.timeout;
    let per_thread: Vec<u32> = (0..t.parallel)
        .map(|i| t.count / t.parallel + u32::from(i < t.count % t.parallel))
        .collect();
    let threads: Vec<_> = per_thread
        .into_iter()
        .map(|n| {
            let ns = ns.to_owned();
            let stop = stop.clone();
            let (protocol, close) = (t.protocol, t.close);
            std::thread::spawn(move || -> Result<ClientSaw, NetError> {
                enter(&ns)?;
                let mut saw = ClientSaw::default();
                for _ in 0..n {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (v, error) = client::attempt_telling_errors(addr, protocol, timeout, close);
                    *saw.results.entry(v).or_insert(0) += 1;
                    if let Some(error) = error {
                        *saw.send_errors.entry(error).or_insert(0) += 1;
                    }
                }
                Ok(saw)
            })
        })
        .collect();
    let mut outcome = ClientSaw {
        item,
        target: Some(target),
        ..ClientSaw::default()
    };
    for th in threads {
        let part = th.join().map_err(|_| NetError::Command {
            command: format!("traffic[{item}]"),
            stderr: "client thread panicked".into(),
        })??;
        for (v, n) in part.results {
            *outcome.results.entry(v).or_insert(0) += n;
        }
        for (e, n) in part.send_errors {
            *outcome.send_errors.entry(e).or_insert(0) += n;
        }
    }
    Ok(outcome)
}

/// Connections of the traffic items marked `held`, opened and kept open: the open
/// connections a probe started later finds. Dropping it closes them.
pub struct Held {
    pub outcomes: Vec<ClientSaw>,
    _streams: Vec<std::net::TcpStream>,
}

/// Opens the `held` items' connections, each from its source's namespace (a socket stays in
/// the namespace it was made in).
pub fn hold(
    resolved: &Resolved,
    namespaces: &std::collections::HashMap<String, String>,
) -> Result<Held, NetError> {
    let mut held = Held {
        outcomes: Vec::new(),
        _streams: Vec::new(),
    };
    for (item, t) in resolved.scenario.traffic.iter().enumerate() {
        if !t.held {
            continue;
        }
        let failed = |why: String| NetError::Command {
            command: format!("traffic[{item}] (held)"),
            stderr: why,
        };
        let ns = namespaces
            .get(&t.from)
            .ok_or_else(|| failed(format!("`{}` is not a host of this lab", t.from)))?
            .clone();
        let target = resolved
            .address(&t.to, t.family)
            .ok_or_else(|| failed(format!("`{}` has no {:?} address", t.to, t.family)))?;
        let addr = SocketAddr::new(target, t.port);
        let (count, timeout) = (t.count, resolved.scenario.settings.timeout);
        let opened = std::thread::spawn(move || -> Result<Vec<_>, NetError> {
            enter(&ns)?;
            Ok((0..count)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, timeout))
                .collect())
        })
        .join()
        .map_err(|_| failed("client thread panicked".into()))??;
        let mut outcome = ClientSaw {
            item,
            target: Some(target),
            ..ClientSaw::default()
        };
        for r in opened {
            let verdict = match r {
                Ok(stream) => {
                    held._streams.push(stream);
                    Verdict::Established
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Verdict::Refused,
                Err(_) => Verdict::Timeout,
            };
            *outcome.results.entry(verdict).or_insert(0) += 1;
        }
        held.outcomes.push(outcome);
    }
    Ok(held)
}
