//! Entering network namespaces: a pod's from the node (active probing), a lab host's in the
//! lab. setns is per thread, so only the calling thread moves.
#![expect(unsafe_code, reason = "setns() has no safe wrapper in std")]
use std::{os::fd::AsRawFd, path::PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace {path}")]
pub struct EnterError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The file of a named namespace (`ip netns add <name>`).
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Moves the calling thread into network namespace `ns` (setns is per thread). Sockets the
/// thread creates afterwards belong to that namespace.
pub fn enter(ns: &str) -> Result<(), EnterError> {
    enter_path(&netns_path(ns))
}

/// [`enter`] by the namespace's file: `/run/netns/<name>`, or `/proc/<pid>/ns/net` of a
/// process inside it (a pod's, from the node).
pub fn enter_path(path: &std::path::Path) -> Result<(), EnterError> {
    let path = path.to_owned();
    let file = std::fs::File::open(&path).map_err(|source| EnterError {
        path: path.clone(),
        source,
    })?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET asks the kernel to check its type.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(EnterError {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
