//! The control plane's processes: started with their output in a log file, stopped with
//! SIGTERM (SIGKILL after a grace period), and found again by pid when whoever started them
//! is gone (`cargo xtask k8s down`, or a test binary that was killed before it could clean
//! up).
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub(crate) struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` in `cwd` with its stdout and stderr appended to `log`. `detach`: in a
    /// session of its own, so it outlives the terminal's Ctrl-C and whoever started it.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        cwd: &Path,
        log: &Path,
        detach: bool,
    ) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if detach {
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (false once it exited, with its status reaped).
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let start = Instant::now();
        while self.running() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The last `lines` lines of its log.
    pub(crate) fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file (read from its last 64 KiB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

pub(crate) fn alive(pid: u32) -> bool {
    signal(pid, 0)
}

/// Kills `pid` if it is one of ours: its command line names `marker` (the control plane's
/// folder), so a reused pid of an unrelated process is left alone.
pub(crate) fn kill_ours(pid: u32, marker: &Path) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let marker = marker.to_string_lossy();
    if String::from_utf8_lossy(&cmdline).contains(marker.as_ref()) {
        signal(pid, libc::SIGKILL);
    }
}

/// A port on 127.0.0.1 nobody listens on now.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding a port on 127.0.0.1")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `127.0.0.1:port`, while `proc` runs.
pub(crate) fn wait_listening(proc: &mut Proc, port: u16, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if !proc.running() {
            anyhow::bail!(
                "{} exited before it listened on port {port}; its log ({}):\n{}",
                proc.name,
                proc.log.display(),
                proc.tail(30)
            );
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "{} does not listen on port {port} after {limit:?}; its log ({}):\n{}",
                proc.name,
                proc.log.display(),
                proc.tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
