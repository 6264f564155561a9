//! Drop rules as nftables: rendered here (pure), loaded into a host's namespace by the lab.
use std::net::IpAddr;

use super::scenario::{Direction, DropRule, Family, Resolved};
use flowpol_analysis::record::Protocol;

/// The nft table every lab namespace gets; deleted with its namespace.
pub const TABLE: &str = "flowpol_lab";

/// The nft script for the drop rules that live in host `id`'s namespace.
pub fn render(resolved: &Resolved, id: &str) -> Option<String> {
    let rules: Vec<&DropRule> = resolved
        .scenario
        .drops
        .iter()
        .filter(|d| d.pod == id)
        .collect();
    if rules.is_empty() {
        return None;
    }
    let mut input = Vec::new();
    let mut output = Vec::new();
    for rule in rules {
        let (chain, peer_dir) = match rule.direction {
            Direction::Ingress => (&mut input, "saddr"),
            Direction::Egress => (&mut output, "daddr"),
        };
        let l4 = match (rule.protocol, rule.port) {
            (Some(p), Some(port)) => format!("{} dport {port} ", proto(p)),
            (Some(p), None) => format!("meta l4proto {} ", proto(p)),
            (None, _) => String::new(),
        };
        match &rule.peer {
            None => chain.push(format!("{l4}counter drop")),
            Some(peer) => {
                let mut addrs: Vec<IpAddr> = [Family::Ipv4, Family::Ipv6]
                    .into_iter()
                    .filter_map(|f| resolved.address(peer, f))
                    .collect();
                addrs.dedup();
                for addr in addrs {
                    let family = if addr.is_ipv4() { "ip" } else { "ip6" };
                    chain.push(format!("{family} {peer_dir} {addr} {l4}counter drop"));
                }
            }
        }
    }
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let mut s =
            format!("  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n");
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    Some(format!(
        "table inet {TABLE} {{\n{}{}}}\n",
        chain("input", "input", &input),
        chain("output", "output", &output)
    ))
}

pub(super) fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    #[test]
    fn renders_ingress_and_egress_rules() {
        let r = parse(
            "t",
            "
name: t
namespaces: [{name: a}]
pods:
  - {name: db, namespace: a}
  - {name: web, namespace: a}
drops:
  - {pod: a/db, direction: ingress, peer: a/web, port: 5432, protocol: TCP}
  - {pod: a/db, direction: egress, protocol: UDP}
",
        )
        .unwrap();
        let script = render(&r, "a/db").expect("db has rules");
        let want = "table inet flowpol_lab {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr 10.244.0.11 tcp dport 5432 counter drop
    ip6 saddr fd00:10:244::b tcp dport 5432 counter drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp counter drop
  }
}
";
        assert_eq!(script, want);
        assert_eq!(render(&r, "a/web"), None);
    }
}
