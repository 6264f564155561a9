//! Using a running control plane as its tests do: kubeconfigs for other users, kubectl,
//! tokens, the audit log.
use super::*;

impl ControlPlane {
    /// An admin kubeconfig, written to `name` in the folder, for `server` (another API
    /// server, or a proxy in front of one).
    pub fn admin_kubeconfig_for(&self, name: &str, server: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        write(
            &path,
            &kubeconfig_text(server, &self.pki.ca.cert, &self.admin),
        )?;
        Ok(path)
    }

    /// A kubeconfig authenticating with `token` (a service account's), written to `name`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        write(
            &path,
            &kubeconfig(
                &self.server(),
                &self.pki.ca.cert,
                &json!({ "token": token }),
            ),
        )?;
        Ok(path)
    }

    /// A client certificate for `user` in `group`, as a kubeconfig written to `name`.
    pub fn user_kubeconfig(&self, name: &str, user: &str, group: Option<&str>) -> Result<PathBuf> {
        let cert = self.pki.client(user, group)?;
        let path = self.dir.join(name);
        write(
            &path,
            &kubeconfig_text(&self.server(), &self.pki.ca.cert, &cert),
        )?;
        Ok(path)
    }

    /// The built kubectl, as admin of this control plane.
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_at(0)
    }

    /// The built kubectl, as admin, talking to API server `index`.
    pub fn kubectl_at(&self, index: usize) -> Command {
        let mut c = Command::new(&self.bins.kubectl);
        c.arg("--kubeconfig").arg(self.admin_kubeconfig(index));
        c
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("the built kubectl runs")
    }

    /// Runs kubectl as admin and returns its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl ARGS` as admin with `input` on stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        self.kubectl_with(&self.kubeconfig_path(), args, input)
    }

    /// `kubectl ARGS` with `kubeconfig` (another user, another API server), `input` on
    /// stdin.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(&self.bins.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the built kubectl runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .expect("kubectl reads its input");
        child.wait_with_output().expect("kubectl ends")
    }

    /// Waits until CRD `name` is Established (its resource served). Polls, as `kubectl
    /// wait` fails instead of waiting while a new CRD has no conditions yet.
    pub fn wait_established(&self, name: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = self.kubectl(&[
                "get",
                "crd",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]);
            if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "CRD {name} is not Established after 60 s: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A token for service account `namespace/name` from the TokenRequest API.
    pub fn token(&self, namespace: &str, name: &str) -> Result<String> {
        Ok(self
            .kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"])?
            .trim()
            .to_owned())
    }

    /// Every request the API servers audited (Metadata level: verb, user, URI, resource,
    /// response code, user agent), oldest first per server.
    pub fn audit(&self) -> Vec<Value> {
        (0..self.apiservers.len())
            .flat_map(|i| {
                std::fs::read_to_string(self.audit_log(i))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }

    /// The end of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut names = vec!["kine".to_owned()];
        names.extend((0..self.apiservers.len()).map(|i| format!("kube-apiserver-{i}")));
        names.push("kube-controller-manager".into());
        names
            .iter()
            .map(|n| {
                let path = self.dir.join(format!("{n}.log"));
                format!("--- {}\n{}", path.display(), process::tail(&path, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
