//! A TCP proxy in front of a real API server, for the faults a network makes and the server
//! cannot be asked for: cut every open connection (a watch broken mid-stream), stall them
//! (bytes held, connections open), refuse new ones. TLS passes through untouched (the
//! server's certificate is valid for 127.0.0.1 on any port), so clients see the real server.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// New connections are accepted and closed at once; open ones are cut.
    Refuse,
    /// Nothing is forwarded, in either direction, until the mode changes.
    Stall,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// Both ends of every open connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
    accepted: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cut(&self) {
        for s in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy's port")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            open: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                if s.mode() == Mode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let s = s.clone();
                std::thread::spawn(move || forward(&s, client));
            }
        });
        Ok(FaultProxy { port, shared })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Closes every open connection (watches included) at once.
    pub fn cut(&self) {
        self.shared.cut();
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        if mode == Mode::Refuse {
            self.shared.cut();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.shared.cut();
    }
}

fn forward(s: &Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect_timeout(&s.upstream, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    s.open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([c3, s3]);
    let up = {
        let s = s.clone();
        std::thread::spawn(move || copy(&s, client, server))
    };
    copy(s, s2, c2);
    let _ = up.join();
}

/// Copies `from` to `to` until either closes, holding bytes while stalled.
fn copy(s: &Shared, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while s.mode() == Mode::Stall && !s.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if s.mode() == Mode::Refuse || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
