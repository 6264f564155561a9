//! Side by side with network-config-analyzer (PyPI) on the same information: its connectivity
//! map of every pair of pods over all ports (`nca --connectivity --output_endpoints pods`)
//! against `flowpol eval --connectivity`, on the engine bench's synthetic cluster plus one
//! policy that admits the pod CIDR by ipBlock, the case where the two are known to differ
//! (nca matches ipBlocks against addresses outside the cluster only; the API leaves pod
//! addresses in an ipBlock to the implementation, and flowpol matches them as addresses, as
//! most CNIs do). Every pair's answer is compared; a disagreement is explained by the rule
//! flowpol says decided it, and one that is not explained fails the bench.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// Per protocol, merged ranges of ports: `(protocol, start, end)`, sorted.
pub(super) type Ports = Vec<(String, u16, u16)>;
/// What each ordered pair of pods (`namespace/name`) may open.
pub(super) type Map = BTreeMap<(String, String), Ports>;

/// The policy appended to the engine bench's cluster: ns-001's databases admit 5432 from the
/// whole pod CIDR, written as an ipBlock.
pub(super) const POD_CIDR_POLICY: &str = "- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db-from-pod-cidr, namespace: ns-001}
  spec: {podSelector: {matchLabels: {tier: db}}, policyTypes: [Ingress], ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 5432}]}]}
";

/// Merges `(protocol, start, end)` ranges into the sorted, coalesced form both sides share.
fn normalize(mut ranges: Ports) -> Ports {
    ranges.sort();
    let mut out: Ports = Vec::new();
    for (p, s, e) in ranges {
        match out.last_mut() {
            Some((lp, _, le)) if *lp == p && u32::from(*le) + 1 >= u32::from(s) => {
                *le = (*le).max(e)
            }
            _ => out.push((p, s, e)),
        }
    }
    out
}

/// An endpoint of nca's output that is a pod (`ns/name`), not an address range.
fn is_pod(end: &str) -> bool {
    end.split_once('/')
        .is_some_and(|(ns, _)| ns.parse::<std::net::IpAddr>().is_err())
}

/// nca's `txt_no_fw_rules` connectivity lines between pods: `a/x => b/y : All connections`
/// or `: {protocols:TCP, UDP,dst_ports:53,9000-9099}`, one line per protocol set.
pub(super) fn parse_nca(text: &str) -> Result<Map> {
    let mut map = Map::new();
    for (n, line) in text.lines().enumerate() {
        let Some((ends, conn)) = line.split_once(" : ") else {
            continue;
        };
        let Some((src, dst)) = ends.split_once(" => ") else {
            continue;
        };
        if !is_pod(src) || !is_pod(dst) {
            continue;
        }
        let at = || format!("nca output line {}: {line:?}", n + 1);
        let entry = map.entry((src.to_owned(), dst.to_owned())).or_default();
        if conn == "All connections" {
            entry.extend(["SCTP", "TCP", "UDP"].map(|p| (p.to_owned(), 1, 65535)));
            continue;
        }
        let inner = conn
            .strip_prefix("{protocols:")
            .and_then(|c| c.strip_suffix('}'))
            .with_context(|| format!("{}: not a connection set", at()))?;
        let (protocols, ports) = match inner.split_once(",dst_ports:") {
            Some((p, ports)) => (p, Some(ports)),
            None => (inner, None),
        };
        let mut ranges = Vec::new();
        for r in ports
            .map(|p| p.split(',').collect())
            .unwrap_or_else(|| vec!["1-65535"])
        {
            let (s, e) = r.split_once('-').unwrap_or((r, r));
            let port = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .with_context(|| format!("{}: port {x:?}", at()))
            };
            ranges.push((port(s)?, port(e)?));
        }
        for p in protocols.split(',').map(str::trim) {
            if !["TCP", "UDP", "SCTP"].contains(&p) {
                bail!("{}: protocol {p:?}", at());
            }
            entry.extend(ranges.iter().map(|&(s, e)| (p.to_owned(), s, e)));
        }
    }
    Ok(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
}

/// `flowpol eval --connectivity` JSON lines.
pub(super) fn parse_flowpol(text: &str) -> Result<Map> {
    let mut map = Map::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("flowpol output line {}", n + 1))?;
        let field = |v: &serde_json::Value, k: &str| -> Result<String> {
            Ok(v[k]
                .as_str()
                .with_context(|| format!("flowpol output line {}: no {k}", n + 1))?
                .to_owned())
        };
        if v.get("undetermined").is_some() {
            bail!("flowpol output line {}: undetermined ports (a rule names domains): nca has no answer to compare", n + 1);
        }
        let mut ranges = Vec::new();
        for r in v["allowed"].as_array().into_iter().flatten() {
            let port = |k: &str| r[k].as_u64().and_then(|p| u16::try_from(p).ok());
            let (Some(s), Some(e)) = (port("start"), port("end")) else {
                bail!("flowpol output line {}: bad range {r}", n + 1);
            };
            ranges.push((field(r, "protocol")?, s, e));
        }
        map.insert((field(&v, "src")?, field(&v, "dst")?), normalize(ranges));
    }
    Ok(map)
}

/// A pair the two tools answer differently.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Disagreement {
    pub src: String,
    pub dst: String,
    pub nca: Ports,
    pub flowpol: Ports,
}

impl Disagreement {
    /// One port that one tool allows and the other does not: `(protocol, port, flowpol
    /// allows it)`.
    fn witness(&self) -> (String, u16, bool) {
        let covers = |set: &Ports, p: &str, port: u16| {
            set.iter()
                .any(|(q, s, e)| q == p && (*s..=*e).contains(&port))
        };
        for (ours, theirs, flowpol_allows) in [
            (&self.flowpol, &self.nca, true),
            (&self.nca, &self.flowpol, false),
        ] {
            for (p, s, e) in ours {
                // The first port of the range not covered by the other side.
                let mut port = *s;
                while covers(theirs, p, port) && port < *e {
                    port += 1;
                }
                if !covers(theirs, p, port) {
                    return (p.clone(), port, flowpol_allows);
                }
            }
        }
        unreachable!("a disagreement has a port one side allows and the other does not")
    }
}

pub(super) fn disagreements(nca: &Map, flowpol: &Map) -> Vec<Disagreement> {
    let keys: BTreeSet<_> = nca.keys().chain(flowpol.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (
                nca.get(k).cloned().unwrap_or_default(),
                flowpol.get(k).cloned().unwrap_or_default(),
            );
            (a != b).then(|| Disagreement {
                src: k.0.clone(),
                dst: k.1.clone(),
                nca: a,
                flowpol: b,
            })
        })
        .collect()
}

/// For each disagreement, whether flowpol allowed it by a rule with an ipBlock peer (the
/// pod-address case); the rules, looked up in the cluster file, as flowpol's `eval` names
/// them for one witness port.
pub(super) fn explain(
    flowpol: &Path,
    cluster: &Path,
    found: &[Disagreement],
) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(cluster)?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).context("the cluster file")?;
    let items = doc["items"]
        .as_sequence()
        .context("the cluster file has no items")?;
    let find = |kind: &str, id: &str| {
        items.iter().find(|i| {
            let m = &i["metadata"];
            i["kind"].as_str() == Some(kind)
                && format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or("")
                ) == id
        })
    };
    let ip = |pod: &str| -> Result<String> {
        Ok(find("Pod", pod)
            .and_then(|p| p["status"]["podIP"].as_str())
            .with_context(|| format!("no address for pod {pod}"))?
            .to_owned())
    };
    let dir = std::env::temp_dir().join(format!("flowpol-nca-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let flows = dir.join("witnesses.jsonl");
    let mut lines = String::new();
    let mut witnesses = Vec::new();
    for d in found {
        let (protocol, port, flowpol_allows) = d.witness();
        let (src, dst) = (ip(&d.src)?, ip(&d.dst)?);
        lines.push_str(&serde_json::json!({"protocol": protocol, "src": {"ip": src}, "dst": {"ip": dst, "port": port}, "verdict": "established", "count": 1}).to_string());
        lines.push('\n');
        witnesses.push((src, dst, protocol, port, flowpol_allows));
    }
    std::fs::write(&flows, lines)?;
    let out = Command::new(flowpol)
        .args(["eval", "--cluster"])
        .arg(cluster)
        .arg("--flows")
        .arg(&flows)
        .stderr(Stdio::inherit())
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    if !out.status.success() {
        bail!("flowpol eval on the disagreements failed");
    }
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut explained = Vec::new();
    for (d, (src, dst, protocol, port, flowpol_allows)) in found.iter().zip(witnesses) {
        let row = rows
            .iter()
            .find(|r| {
                r["src"]["ip"] == src.as_str()
                    && r["dst"]["ip"] == dst.as_str()
                    && r["dst"]["port"] == port
                    && r["protocol"] == protocol.as_str()
            })
            .with_context(|| {
                format!("flowpol eval has no row for {src} -> {dst} {protocol}/{port}")
            })?;
        let mut by_ip_block = Vec::new();
        for (side, peers) in [("ingress", "from"), ("egress", "to")] {
            for r in row["explanation"][side]["rules"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let (Some(policy), Some(i)) = (r["policy"].as_str(), r["rule"].as_u64()) else {
                    continue;
                };
                let rule = find("NetworkPolicy", policy).map(|p| &p["spec"][side][i as usize]);
                if rule
                    .and_then(|r| r[peers].as_sequence())
                    .is_some_and(|ps| ps.iter().any(|p| p.get("ipBlock").is_some()))
                {
                    by_ip_block.push(format!("{policy} {side}[{i}]"));
                }
            }
        }
        if flowpol_allows && !by_ip_block.is_empty() {
            explained.push(format!("{} => {}: {protocol} {port} allowed by flowpol through an ipBlock over a pod address ({})", d.src, d.dst, by_ip_block.join(", ")));
        } else {
            bail!(
                "{} => {} disagree on {protocol} {port} (nca: {:?}; flowpol: {:?}), not by an ipBlock over a pod address: {}",
                d.src, d.dst, d.nca, d.flowpol, row["explanation"]
            );
        }
    }
    Ok(explained)
}

/// Runs `program args > out` and returns (wall seconds, peak RSS in MiB) of that process.
pub(super) fn measure(program: &Path, args: &[&str], out: &Path) -> Result<(f64, f64)> {
    let file = std::fs::File::create(out)?;
    let t = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for the child we own and reaps it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: pid is our child, not waited for by anything else; both pointers are valid.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!(
            "wait4 {}: {}",
            program.display(),
            std::io::Error::last_os_error()
        );
    }
    let secs = t.elapsed().as_secs_f64();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} {} failed (status {status})",
            program.display(),
            args.join(" ")
        );
    }
    // ru_maxrss is in KiB on Linux.
    Ok((secs, usage.ru_maxrss as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[(&str, u16, u16)]) -> Ports {
        list.iter().map(|&(p, s, e)| (p.to_owned(), s, e)).collect()
    }

    /// Lines as nca 0.x prints them (captured from its output on a three-pod cluster).
    const NCA: &str = "global: cluster has 3 unique endpoints, 1 namespaces
10.0.0.0-10.255.255.255 => a/p1 : {protocols:TCP,dst_ports:5432}
a/p1 => 0.0.0.0-255.255.255.255 : All connections
a/p1 => a/p2 : {protocols:TCP,dst_ports:1-442}
a/p1 => a/p3 : All connections
a/p2 => a/p1 : {protocols:SCTP,dst_ports:100}
a/p2 => a/p1 : {protocols:TCP,dst_ports:53,80,9000-9099}
a/p2 => a/p1 : {protocols:TCP, UDP,dst_ports:53}
Total run time:   0.01 seconds
";

    #[test]
    fn nca_lines_between_pods_become_port_ranges() {
        let m = parse_nca(NCA).unwrap();
        let key = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(m.len(), 3, "address ranges are not pods: {m:?}");
        assert_eq!(m[&key("a/p1", "a/p2")], ports(&[("TCP", 1, 442)]));
        assert_eq!(
            m[&key("a/p1", "a/p3")],
            ports(&[("SCTP", 1, 65535), ("TCP", 1, 65535), ("UDP", 1, 65535)])
        );
        // TCP 53 twice (two lines) is one range; 9000-9099 stays a range.
        assert_eq!(
            m[&key("a/p2", "a/p1")],
            ports(&[
                ("SCTP", 100, 100),
                ("TCP", 53, 53),
                ("TCP", 80, 80),
                ("TCP", 9000, 9099),
                ("UDP", 53, 53)
            ])
        );
        assert!(parse_nca("a/p1 => a/p2 : {protocols:ICMP}").is_err());
        assert!(parse_nca("a/p1 => a/p2 : {protocols:TCP,dst_ports:80-x}")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn pairs_answered_differently_are_found_with_a_witness_port() {
        let nca = parse_nca(
            "a/p1 => a/p2 : {protocols:TCP,dst_ports:80}\na/p2 => a/p1 : All connections\n",
        )
        .unwrap();
        let flowpol = parse_flowpol(concat!(
            r#"{"src":"a/p1","dst":"a/p2","allowed":[{"protocol":"TCP","start":80,"end":80},{"protocol":"TCP","start":5432,"end":5432}]}"#,
            "\n",
            r#"{"src":"a/p2","dst":"a/p1","allowed":[{"protocol":"SCTP","start":1,"end":65535},{"protocol":"TCP","start":1,"end":65535},{"protocol":"UDP","start":1,"end":65535}]}"#,
            "\n",
            r#"{"src":"a/p3","dst":"a/p1","allowed":[{"protocol":"UDP","start":53,"end":53}]}"#,
        ))
        .unwrap();
        let found = disagreements(&nca, &flowpol);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            (found[0].src.as_str(), found[0].dst.as_str()),
            ("a/p1", "a/p2")
        );
        assert_eq!(found[0].witness(), ("TCP".to_owned(), 5432, true));
        assert_eq!(found[1].nca, ports(&[]));
        assert_eq!(found[1].witness(), ("UDP".to_owned(), 53, true));
        let narrower = Disagreement {
            src: "a".into(),
            dst: "b".into(),
            nca: ports(&[("TCP", 1, 100)]),
            flowpol: ports(&[("TCP", 1, 99)]),
        };
        assert_eq!(narrower.witness(), ("TCP".to_owned(), 100, false));
    }
}
