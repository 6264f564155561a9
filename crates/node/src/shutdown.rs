//! Stop requests: SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends a pod).
//!
//! The handlers are installed when [`Shutdown::install`] is called, so a signal that arrives
//! while a lab is being built is remembered instead of killing the process with namespaces
//! half made.
use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes once SIGINT or SIGTERM has been received (also before this call).
    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}
