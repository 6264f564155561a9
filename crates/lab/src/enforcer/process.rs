//! A real enforcer as a process in the lab's node namespace (where the bridge is, so it
//! sees pod-to-pod traffic as a CNI's node agent does), reaching the API server through a
//! bridge on that namespace's loopback, with a ServiceAccount token of its own.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowpol_node::netns::enter;
use tokio::{io::copy_bidirectional, net::TcpStream, task::JoinHandle};

use super::{EnforcerError, Program, Real};
use crate::{netns, objects};

/// kube-network-policies' default queue.
const QUEUE: u16 = 100;

/// How the enforcer reaches the API server.
pub struct Access {
    /// The API server as flowpol reaches it (an address on this host's loopback).
    pub upstream: SocketAddr,
    pub ca_pem: String,
    pub token: String,
}

/// A TCP bridge from the node namespace's `127.0.0.1:<port>` to the API server.
struct Bridge {
    port: u16,
    task: JoinHandle<()>,
}

impl Bridge {
    fn start(node_ns: &str, upstream: SocketAddr) -> Result<Self, EnforcerError> {
        let ns = node_ns.to_owned();
        // The socket belongs to the namespace its creating thread is in.
        let listener = std::thread::spawn(move || -> Result<_, EnforcerError> {
            enter(&ns).map_err(|e| EnforcerError::Bridge(std::io::Error::other(e)))?;
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(EnforcerError::Bridge)?;
            l.set_nonblocking(true).map_err(EnforcerError::Bridge)?;
            Ok(l)
        })
        .join()
        .map_err(|_| EnforcerError::Bridge(std::io::Error::other("bridge thread panicked")))??;
        let port = listener.local_addr().map_err(EnforcerError::Bridge)?.port();
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(EnforcerError::Bridge)?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = copy_bidirectional(&mut inbound, &mut up).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running enforcer; dropping it stops it and removes its files.
pub struct Running {
    kind: Real,
    child: Child,
    dir: PathBuf,
    node_ns: String,
    _bridge: Bridge,
}

impl Running {
    /// Starts `program` in the node namespace `node_ns`.
    pub fn start(program: &Program, node_ns: &str, access: &Access) -> Result<Self, EnforcerError> {
        let (kind, binary) = (program.kind, program.path.as_path());
        if !binary.is_file() {
            return Err(EnforcerError::NoBinary {
                kind,
                path: binary.to_owned(),
            });
        }
        let tools: &[(&str, &str)] = match kind {
            Real::KubeNetworkPolicies => &[
                ("iptables-legacy", "iptables"),
                ("ip6tables-legacy", "iptables"),
                ("unshare", "util-linux"),
            ],
            Real::KubeRouter => &[
                ("iptables", "iptables"),
                ("ip6tables", "iptables"),
                ("ipset", "ipset"),
            ],
        };
        for (tool, package) in tools {
            netns::require(tool, package)?;
        }
        let bridge = Bridge::start(node_ns, access.upstream)?;
        let dir = std::env::temp_dir().join(format!("{node_ns}-{}", kind.as_str()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join(name), text))
                .map_err(|source| EnforcerError::Files {
                    dir: dir.clone(),
                    source,
                })
        };
        write("token", &access.token)?;
        write("ca.crt", &access.ca_pem)?;
        let server = format!("https://127.0.0.1:{}", bridge.port);
        write(
            "kubeconfig",
            &flowpol_kube::identity::kubeconfig(&server, &access.ca_pem, &access.token),
        )?;
        // Bridged frames through the node's iptables, as on a CNI's node.
        for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            netns::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    node_ns,
                    "sysctl",
                    "-qw",
                    &format!("net.bridge.{key}=1"),
                ],
                None,
            )?;
        }
        let log =
            std::fs::File::create(dir.join("log")).map_err(|source| EnforcerError::Files {
                dir: dir.clone(),
                source,
            })?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", node_ns]);
        match kind {
            Real::KubeNetworkPolicies => {
                feed_queue(node_ns)?;
                // It reads the cluster through in-cluster config only: the token and CA at
                // the service account's fixed path (in a mount namespace of its own, over a
                // private /run) and the API server's address in the environment.
                let sa = "/run/secrets/kubernetes.io/serviceaccount";
                let script = format!(
                    "mount -t tmpfs flowpol-lab /run && mkdir -p {sa} && cp '{d}/token' '{d}/ca.crt' {sa}/ && exec \"$0\" \"$@\"",
                    d = dir.display()
                );
                command
                    .args(["unshare", "--mount", "sh", "-c", &script])
                    .arg(binary)
                    .args([
                        &format!("--hostname-override={}", objects::NODE),
                        "--disable-nri",
                        // Not needed from kernel 6.12 on (its own help says so).
                        "--netfilter-bug-1766-fix=false",
                        &format!("--nfqueue-id={QUEUE}"),
                        "--metrics-bind-address=127.0.0.1:9080",
                        "--v=2",
                    ])
                    .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
                    .env("KUBERNETES_SERVICE_PORT", bridge.port.to_string());
            }
            Real::KubeRouter => {
                // IPv4 only, kube-router's default: v2.1.0's dual-stack policies are broken
                // upstream (cloudnativelabs/kube-router#1653, #1665); `--enforcer-arg
                // --enable-ipv6=true` shows it.
                command.arg(binary).args([
                    "--run-firewall=true",
                    "--run-router=false",
                    "--run-service-proxy=false",
                    &format!("--kubeconfig={}", dir.join("kubeconfig").display()),
                    &format!("--hostname-override={}", objects::NODE),
                    "--metrics-port=0",
                    "--v=2",
                ]);
            }
        }
        command.args(&program.extra_args);
        let err = log.try_clone().map_err(|source| EnforcerError::Files {
            dir: dir.clone(),
            source,
        })?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| EnforcerError::Spawn { kind, source })?;
        Ok(Self {
            kind,
            child,
            dir,
            node_ns: node_ns.to_owned(),
            _bridge: bridge,
        })
    }

    /// Waits until the enforcer is ready to judge packets: kube-network-policies has bound
    /// its queue, kube-router has made its forward chain. Its exit, or `within` passing, is
    /// an error quoting its log.
    pub async fn ready(&mut self, within: Duration) -> Result<Duration, EnforcerError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EnforcerError::Exited {
                    kind: self.kind,
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if self.is_ready() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(EnforcerError::NotReady {
                    kind: self.kind,
                    within,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn is_ready(&self) -> bool {
        match self.kind {
            // Its namespace's queues: `<queue> <peer portid> ...`, one line per bound queue.
            Real::KubeNetworkPolicies => std::fs::read_to_string(format!(
                "/proc/{}/net/netfilter/nfnetlink_queue",
                self.child.id()
            ))
            .is_ok_and(|queues| {
                queues
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(&QUEUE.to_string()))
            }),
            Real::KubeRouter => netns::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.node_ns,
                    "iptables",
                    "-S",
                    "KUBE-ROUTER-FORWARD",
                ],
                None,
            )
            .is_ok(),
        }
    }

    /// Keeps its whole log beside its folder (which goes with it), for a failure's reader.
    pub fn keep_log(&self) -> Option<PathBuf> {
        let kept = self.dir.with_extension("log");
        std::fs::copy(self.dir.join("log"), &kept)
            .ok()
            .map(|_| kept)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kube-network-policies asks nftables to queue a connection's first packets, which this
/// kernel cannot (no `CONFIG_NFT_QUEUE`): the same rules as its own `postrouting` chain,
/// written for iptables-legacy, whose NFQUEUE target the kernel has.
fn feed_queue(node_ns: &str) -> Result<(), EnforcerError> {
    let queue = QUEUE.to_string();
    for (tool, extra) in [
        ("iptables-legacy", None),
        // IPv6 neighbour discovery must not wait on a verdict.
        (
            "ip6tables-legacy",
            Some(["-p", "ipv6-icmp", "-j", "ACCEPT"]),
        ),
    ] {
        let mut rules: Vec<Vec<&str>> = Vec::new();
        rules.extend(extra.map(|r| r.to_vec()));
        // The node's own (root's) traffic, its API server bridge included, is not judged.
        rules.push(vec!["-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"]);
        rules.push(vec![
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        rules.push(vec!["-j", "NFQUEUE", "--queue-num", &queue]);
        for rule in rules {
            let mut args = vec![
                "netns",
                "exec",
                node_ns,
                tool,
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
            ];
            args.extend(rule);
            netns::run("ip", &args, None).map_err(EnforcerError::Feed)?;
        }
    }
    Ok(())
}
