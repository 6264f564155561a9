//! A native TCP connection generator for the capture benchmark: client threads connect to a
//! listener on the loopback of a network namespace made for the run and reset each
//! connection at once (SO_LINGER 0: no TIME_WAIT, so the ephemeral ports never run out);
//! acceptor threads take and drop them. Nothing leaves the namespace. Paced when given a
//! rate (the loss curve), else as fast as the machine goes.
#![expect(
    unsafe_code,
    reason = "setns, SO_LINGER and listen backlog through libc"
)]
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::setup::sh;

/// The namespace the load runs in, removed when dropped.
pub(crate) struct Namespace {
    name: String,
}

impl Namespace {
    pub(crate) fn create() -> Result<Self> {
        let name = format!("flowpol-bench-{}", std::process::id());
        // A namespace left by an interrupted run of this pid is replaced.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn enter(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: a valid namespace fd; the kernel checks its type.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// What one run of the generator did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ran {
    pub connections: u64,
    pub failed: u64,
    pub seconds: f64,
}

impl Ran {
    pub(crate) fn rate(&self) -> f64 {
        self.connections as f64 / self.seconds
    }
}

const PORT: u16 = 8080;
const CLIENTS: usize = 2;

/// Makes `total` connections, as fast as possible or at `rate` per second overall.
pub(crate) fn run(ns: &Namespace, total: u64, rate: Option<f64>) -> Result<Ran> {
    let stop = Arc::new(AtomicBool::new(false));
    let listener = std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpListener> {
            ns.enter()?;
            let l = TcpListener::bind(("127.0.0.1", PORT)).context("binding the listener")?;
            // SAFETY: a valid listening socket; listen() again only raises its backlog.
            if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
                bail!("listen: {}", std::io::Error::last_os_error());
            }
            Ok(l)
        })
        .join()
        .expect("listener thread")
    })?;
    let listener = Arc::new(listener);
    let acceptor = {
        let (listener, stop) = (listener.clone(), stop.clone());
        std::thread::spawn(move || {
            listener.set_nonblocking(true).ok();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    let made = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    let started = Instant::now();
    let per_client = total / CLIENTS as u64;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (made, failed) = (&made, &failed);
                s.spawn(move || -> Result<()> {
                    ns.enter()?;
                    // Each client's share of the rate: one connection every `gap`.
                    let gap = rate.map(|r| Duration::from_secs_f64(CLIENTS as f64 / r));
                    let t0 = Instant::now();
                    for i in 0..per_client {
                        if let Some(gap) = gap {
                            let due = t0 + gap * i as u32;
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                        }
                        match TcpStream::connect(addr) {
                            Ok(c) => {
                                reset_on_close(&c);
                                made.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread")?;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    acceptor.join().expect("acceptor thread");
    Ok(Ran {
        connections: made.into_inner(),
        failed: failed.into_inner(),
        seconds,
    })
}

fn reset_on_close(c: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a value of the size passed.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
