//! The probe's event rings, read as one: an epoll set holding every ring's fd is what tokio
//! watches, so a wakeup from any ring wakes the reader, which then drains them all.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// An epoll instance whose members are the rings' fds (level-triggered: readable while any
/// ring holds data).
struct Set(OwnedFd);

impl AsRawFd for Set {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub(super) struct Rings {
    rings: Vec<RingBuf<MapData>>,
    ready: AsyncFd<Set>,
}

impl Rings {
    /// Needs a tokio runtime.
    pub(super) fn new(rings: Vec<RingBuf<MapData>>) -> std::io::Result<Self> {
        // SAFETY: epoll_create1 has no preconditions; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is not owned elsewhere.
        let set = Set(unsafe { OwnedFd::from_raw_fd(fd) });
        for ring in &rings {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: both fds are open (the rings outlive the set: they are dropped with
            // it), and `event` is a valid epoll_event.
            let rc = unsafe {
                libc::epoll_ctl(
                    set.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.as_raw_fd(),
                    &mut event,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: the set owns its fd, which is neither closed nor replaced while registered:
        // it lives inside the AsyncFd, dropped with the rings.
        let ready = unsafe { AsyncFd::register(set) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { rings, ready })
    }

    /// Waits until a ring wakes us or `timeout` passes, then hands every pending event of
    /// every ring to `f`.
    pub(super) async fn next_batch(
        &mut self,
        timeout: std::time::Duration,
        f: impl FnMut(&[u8]),
    ) -> std::io::Result<()> {
        if let Ok(ready) = tokio::time::timeout(timeout, self.ready.readable()).await {
            ready?.clear_ready();
        }
        self.drain(f);
        Ok(())
    }

    /// Hands every pending event to `f` without waiting.
    pub(super) fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        for ring in &mut self.rings {
            while let Some(item) = ring.next() {
                f(&item);
            }
        }
    }
}
