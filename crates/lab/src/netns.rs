//! Network namespaces on a bridge: the lab's hosts. Everything is created under one unique
//! prefix and deleted when [`LabNet`] is dropped (also after errors and Ctrl-C), so runs
//! cannot collide and nothing is left behind.
#![expect(unsafe_code, reason = "geteuid() has no safe wrapper in std")]
use flowpol_node::netns::netns_path;
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

/// Prefix of every namespace the lab creates; the tests look for leftovers with it.
pub const NETNS_PREFIX: &str = "flowpol-lab-";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the lab needs root (it creates network namespaces and nftables rules); run it with sudo"
    )]
    NotRoot,
    #[error("`{tool}` is not installed; the lab needs it (Debian: apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Enter(#[from] flowpol_node::netns::EnterError),
}

/// Runs a command, turning a failure into an error that quotes it and its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// A tool the lab needs, or the error naming its Debian package.
pub fn require(tool: &'static str, package: &'static str) -> Result<(), NetError> {
    if have(tool) {
        Ok(())
    } else {
        Err(NetError::MissingTool { tool, package })
    }
}

/// Checks the lab can run here: root, iproute2 and nftables.
pub fn preflight() -> Result<(), NetError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetError::NotRoot);
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if !have(tool) {
            return Err(NetError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// The lab's namespaces. Dropping it deletes them all, with their links and nft tables.
pub struct LabNet {
    prefix: String,
    node: String,
    hosts: Vec<String>,
}

impl LabNet {
    /// Creates the node namespace with its bridge.
    pub fn create() -> Result<Self, NetError> {
        preflight()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!("{NETNS_PREFIX}{}-{:x}-", std::process::id(), nanos & 0xffff);
        let net = Self {
            node: format!("{prefix}node"),
            prefix,
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &net.node], None)?;
        let node = net.node.as_str();
        run("ip", &["-n", node, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &["-n", node, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run("ip", &["-n", node, "link", "set", "br0", "up"], None)?;
        Ok(net)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a host namespace wired to the bridge with the given addresses; returns its name.
    pub fn add_host(&mut self, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<String, NetError> {
        let i = self.hosts.len();
        let ns = format!("{}h{i}", self.prefix);
        run("ip", &["netns", "add", &ns], None)?;
        self.hosts.push(ns.clone());
        let veth = format!("v{i}");
        let node = self.node.as_str();
        run(
            "ip",
            &[
                "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
            None,
        )?;
        run(
            "ip",
            &["-n", node, "link", "set", &veth, "master", "br0", "up"],
            None,
        )?;
        let v4 = format!("{ipv4}/16");
        let v6 = format!("{ipv6}/64");
        for args in [
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "addr", "add", &v4, "dev", "eth0"],
            // nodad: usable at once, no duplicate address detection delay.
            vec!["-n", &ns, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"],
            // On-link default routes: "external" hosts on the same bridge answer for their
            // addresses; nothing can leave the lab, which has no uplink.
            vec!["-n", &ns, "route", "add", "default", "dev", "eth0"],
            vec!["-n", &ns, "-6", "route", "add", "default", "dev", "eth0"],
        ] {
            run("ip", &args, None)?;
        }
        Ok(ns)
    }

    /// Inode of a namespace: what the probe reports as `observer.netns`.
    pub fn inode(ns: &str) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(netns_path(ns))
            .ok()
            .map(|m| m.ino() as u32)
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.node)) {
            if let Err(e) = run("ip", &["netns", "del", ns], None) {
                tracing::warn!("lab cleanup: {e}");
            }
        }
    }
}

/// Namespaces left by earlier lab runs (the tests assert there are none).
pub fn leftovers() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}
