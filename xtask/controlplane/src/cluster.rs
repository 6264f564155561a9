//! A running control plane: kine on SQLite, one or more kube-apiservers on it (RBAC,
//! admission on, audit log of every request), and kube-controller-manager with the
//! controllers a test cluster needs. Everything listens on 127.0.0.1 at ports free when it
//! starts, in a folder of its own, so two control planes never collide.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

mod access;

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};

use crate::{
    binaries::Binaries,
    pki::{CertKey, Pki},
    process::{self, Proc},
};

/// The Service CIDR, as in most clusters (and the fixtures): `kubernetes` is 10.96.0.1.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The controllers started: what a cluster without kubelets needs for namespaces, service
/// accounts and their tokens, Service endpoints, owner references and the roles that
/// aggregate. Not node lifecycle or eviction (there are no kubelets to keep nodes ready), nor
/// the workload controllers (pods are the tests' own).
pub const CONTROLLERS: &[&str] = &[
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "clusterrole-aggregation-controller",
];

#[derive(Clone, Debug)]
pub struct Options {
    /// The address the API server advertises: the `kubernetes` Service's endpoint.
    pub advertise_address: IpAddr,
    /// The API server keeps the `kubernetes` Service's endpoints (the `lease` reconciler);
    /// without it (`none`) they are whoever publishes them.
    pub endpoint_reconciler: bool,
    pub controller_manager: bool,
    /// Compact the store's history this often (kube-apiserver's compactor; kine keeps no
    /// minimum of revisions). Default: the API server's own 5 minutes, kine's 1000 revisions.
    pub compaction: Option<Duration>,
    /// The folder to keep everything in; default a new one under the temp folder.
    pub dir: Option<PathBuf>,
    /// The processes outlive this value (`cargo xtask k8s up`); see [`ControlPlane::detach`].
    pub detach: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // TEST-NET-1: never routed anywhere.
            advertise_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            endpoint_reconciler: true,
            controller_manager: true,
            compaction: None,
            dir: None,
            detach: false,
        }
    }
}

struct ApiServer {
    port: u16,
    proc: Option<Proc>,
}

pub struct ControlPlane {
    dir: PathBuf,
    bins: Binaries,
    pki: Pki,
    opts: Options,
    admin: CertKey,
    kine_port: u16,
    kine: Option<Proc>,
    apiservers: Vec<ApiServer>,
    controller_manager: Option<Proc>,
    detached: bool,
}

/// Where test control planes live, each in `cp-<pid of its owner>-<n>`.
fn base() -> PathBuf {
    std::env::temp_dir().join("flowpol-k8s")
}

/// Removes the control planes of test processes that died without cleaning up.
fn reap() {
    let Ok(entries) = std::fs::read_dir(base()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("cp-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_none_or(process::alive) {
            continue;
        }
        let dir = e.path();
        kill_recorded(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Kills the processes listed in `dir/pids` that are still ours.
fn kill_recorded(dir: &Path) {
    for pid in std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
    {
        process::kill_ours(pid, dir);
    }
}

/// A kubeconfig (JSON, which kubectl and every client read) with everything inline, so it
/// works wherever the file is copied or mounted.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &Value) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "flowpol-k8s", "cluster": {
            "server": server,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": "flowpol-k8s", "user": user}],
        "contexts": [{"name": "flowpol-k8s", "context": {"cluster": "flowpol-k8s", "user": "flowpol-k8s"}}],
        "current-context": "flowpol-k8s",
    });
    serde_json::to_string_pretty(&doc).expect("JSON serializes")
}

fn cert_user(c: &CertKey) -> Value {
    json!({
        "client-certificate-data": STANDARD.encode(&c.cert),
        "client-key-data": STANDARD.encode(&c.key),
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

impl ControlPlane {
    /// Starts kine, one API server (ready) and, if asked, the controller manager (its
    /// service accounts and the root CA published), from the built binaries.
    pub fn start(opts: Options) -> Result<ControlPlane> {
        let bins = Binaries::find()?;
        reap();
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                base().join(format!("cp-{}-{n}", std::process::id()))
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The dir is absolute from here on: process command lines name it (see reap).
        let dir = dir.canonicalize()?;
        let pki = Pki::create(&dir.join("pki"), &[opts.advertise_address])?;
        let admin = pki.client("flowpol-admin", Some("system:masters"))?;
        write(
            &dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        let mut cp = ControlPlane {
            dir,
            bins,
            pki,
            admin,
            kine_port: 0,
            kine: None,
            apiservers: Vec::new(),
            controller_manager: None,
            detached: false,
            opts,
        };
        cp.start_kine()?;
        cp.add_apiserver()?;
        if cp.opts.controller_manager {
            cp.start_controller_manager()?;
        }
        Ok(cp)
    }

    fn record_pid(&self, pid: u32) -> Result<()> {
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))?;
        writeln!(f, "{pid}")?;
        Ok(())
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let p = Proc::spawn(name, program, args, &self.dir, &log, self.opts.detach)?;
        self.record_pid(p.pid())?;
        Ok(p)
    }

    fn start_kine(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("kine"))?;
        let mut last = None;
        for _ in 0..3 {
            let port = process::free_port()?;
            let mut args = vec![
                format!("--listen-address=127.0.0.1:{port}"),
                format!(
                    "--endpoint=sqlite://{}/kine/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate",
                    self.dir.display()
                ),
                "--metrics-bind-address=0".into(),
            ];
            if self.opts.compaction.is_some() {
                args.push("--compact-min-retain=0".into());
            }
            let mut p = self.spawn("kine", &self.bins.kine.clone(), &args)?;
            match process::wait_listening(&mut p, port, Duration::from_secs(30)) {
                Ok(()) => {
                    self.kine_port = port;
                    self.kine = Some(p);
                    return Ok(());
                }
                Err(e) => {
                    p.stop(Duration::from_secs(1));
                    last = Some(e);
                }
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn apiserver_args(&self, index: usize, port: u16) -> Vec<String> {
        let pki = |f: &str| self.pki.path(f).display().to_string();
        let mut args = vec![
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            format!("--advertise-address={}", self.opts.advertise_address),
            format!("--etcd-servers=http://127.0.0.1:{}", self.kine_port),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            format!("--cert-dir={}/apiserver-{index}-certs", self.dir.display()),
            format!(
                "--audit-policy-file={}",
                self.dir.join("audit-policy.yaml").display()
            ),
            format!("--audit-log-path={}", self.audit_log(index).display()),
            "--audit-log-maxsize=0".into(),
            "--profiling=false".into(),
        ];
        if !self.opts.endpoint_reconciler {
            args.push("--endpoint-reconciler-type=none".into());
        }
        if let Some(every) = self.opts.compaction {
            args.push(format!(
                "--etcd-compaction-interval={}ms",
                every.as_millis()
            ));
        }
        args
    }

    fn audit_log(&self, index: usize) -> PathBuf {
        self.dir.join(format!("audit-{index}.log"))
    }

    /// Starts one more API server on the same store (as in a highly available control
    /// plane); returns its index.
    pub fn add_apiserver(&mut self) -> Result<usize> {
        let index = self.apiservers.len();
        let mut last = None;
        for _ in 0..3 {
            let port = process::free_port()?;
            self.apiservers.push(ApiServer { port, proc: None });
            match self.start_apiserver(index) {
                Ok(()) => return Ok(index),
                Err(e) => {
                    self.apiservers.pop();
                    last = Some(e);
                }
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// Starts API server `index` again on its port, and waits until it is ready.
    pub fn start_apiserver(&mut self, index: usize) -> Result<()> {
        let port = self.apiservers[index].port;
        let args = self.apiserver_args(index, port);
        let name = format!("kube-apiserver-{index}");
        let p = self.spawn(&name, &self.bins.kube_apiserver.clone(), &args)?;
        self.apiservers[index].proc = Some(p);
        self.wait_ready(index, Duration::from_secs(90))
    }

    /// Stops API server `index` (SIGTERM, as a node drain or an upgrade does).
    pub fn stop_apiserver(&mut self, index: usize) {
        if let Some(mut p) = self.apiservers[index].proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    fn wait_ready(&mut self, index: usize, limit: Duration) -> Result<()> {
        let kubeconfig = self.admin_kubeconfig(index);
        let server = format!("https://127.0.0.1:{}", self.apiservers[index].port);
        write(
            &kubeconfig,
            &kubeconfig_text(&server, &self.pki.ca.cert, &self.admin),
        )?;
        let port = self.apiservers[index].port;
        let start = Instant::now();
        loop {
            let out = Command::new(&self.bins.kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw=/readyz", "--request-timeout=5s"])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            let proc = self.apiservers[index]
                .proc
                .as_mut()
                .expect("started before waited on");
            if !proc.running() || start.elapsed() > limit {
                let why = if proc.running() {
                    format!("not ready after {limit:?}")
                } else {
                    "exited".to_owned()
                };
                let text = proc.tail(40);
                proc.stop(Duration::from_secs(2));
                bail!(
                    "kube-apiserver on port {port} {why}: {}; its log ({}):\n{text}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    proc.log.display(),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let cert = self.pki.client("system:kube-controller-manager", None)?;
        let kc = self.dir.join("controller-manager.kubeconfig");
        write(
            &kc,
            &kubeconfig(&self.server(), &self.pki.ca.cert, &cert_user(&cert)),
        )?;
        let args = vec![
            format!("--kubeconfig={}", kc.display()),
            "--secure-port=0".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                self.pki.path("sa.key").display()
            ),
            format!("--root-ca-file={}", self.pki.path("ca.crt").display()),
            format!("--controllers={}", CONTROLLERS.join(",")),
        ];
        let p = self.spawn(
            "kube-controller-manager",
            &self.bins.kube_controller_manager.clone(),
            &args,
        )?;
        self.controller_manager = Some(p);
        // Up once its controllers have acted: the default service account and the root CA
        // in a namespace.
        let start = Instant::now();
        loop {
            let sa = self.kubectl(&["get", "serviceaccount", "default", "-n", "default"]);
            let ca = self.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "default"]);
            if sa.status.success() && ca.status.success() {
                return Ok(());
            }
            let p = self.controller_manager.as_mut().expect("just started");
            if !p.running() || start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "kube-controller-manager did not come up; its log ({}):\n{}",
                    p.log.display(),
                    p.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The folder holding everything (certificates, store, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The admin kubeconfig (group system:masters) for the first API server.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.admin_kubeconfig(0)
    }

    /// The admin kubeconfig for API server `index`.
    pub fn admin_kubeconfig(&self, index: usize) -> PathBuf {
        self.dir.join(format!("admin-{index}.kubeconfig"))
    }

    /// The first API server's URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiservers[0].port)
    }

    pub fn apiserver_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.apiservers[index].port))
    }

    /// The store's and the first API server's processes (kine, kube-apiserver), to measure.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.kine.as_ref().map(Proc::pid),
            self.apiservers[0].proc.as_ref().map(Proc::pid),
        )
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca.cert
    }

    /// Leaves the processes running and records them in `state.json` for [`down`].
    pub fn detach(mut self) -> Result<()> {
        let mut pids = Vec::new();
        pids.extend(self.kine.as_ref().map(Proc::pid));
        pids.extend(
            self.apiservers
                .iter()
                .filter_map(|a| a.proc.as_ref().map(Proc::pid)),
        );
        pids.extend(self.controller_manager.as_ref().map(Proc::pid));
        let state = json!({
            "pids": pids,
            "server": self.server(),
            "kubeconfig": self.kubeconfig_path(),
            "bin": self.bins.bin_dir(),
        });
        write(&self.dir.join("state.json"), &state.to_string())?;
        self.detached = true;
        Ok(())
    }
}

fn kubeconfig_text(server: &str, ca: &str, cert: &CertKey) -> String {
    kubeconfig(server, ca, &cert_user(cert))
}

/// What `cargo xtask k8s up` left in `dir`: its `state.json`, if its API server still runs.
pub fn running(dir: &Path) -> Option<Value> {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()?;
    let all_alive = state["pids"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .all(|pid| process::alive(pid as u32));
    all_alive.then_some(state)
}

/// Stops a detached control plane in `dir` and removes the folder; whether there was one.
pub fn down(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    let dir = dir.canonicalize()?;
    kill_recorded(&dir);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(true)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(mut p) = self.controller_manager.take() {
            p.stop(Duration::from_secs(5));
        }
        for a in &mut self.apiservers {
            if let Some(mut p) = a.proc.take() {
                p.stop(Duration::from_secs(5));
            }
        }
        if let Some(mut p) = self.kine.take() {
            p.stop(Duration::from_secs(5));
        }
        if std::thread::panicking() {
            // Removed by the next control plane started after this process ends.
            eprintln!(
                "controlplane: kept {} for a look at the logs",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
