//! Does the capture agree with what the lab's clients saw? Pure: the lab hands in the
//! outcomes, the records and which namespace inode belongs to which host.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use super::{scenario::Resolved, traffic::ClientSaw};
use flowpol_analysis::record::{FlowRecord, Protocol, Side, Verdict};

/// One disagreement, phrased for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Flow = (String, IpAddr, u16, Protocol, Verdict, Side);

/// Compares, for every traffic item with an `expect`, the client's own results and the
/// records captured on the client side (and, for completed exchanges with a lab host, on the
/// server side) with the expectation. Counts must match exactly, both ways: a record captured
/// in a lab host that no expectation accounts for (a phantom, or a verdict no client saw) is
/// a mismatch too. Left out of that second direction: traffic items without an `expect`
/// (nothing to hold them to), drops on the path (what the drop rules make, not a flow's
/// end), and datagrams a server received without answering (the client's `sent` cannot say
/// whether they arrived).
pub fn check(
    resolved: &Resolved,
    outcomes: &[ClientSaw],
    records: &[FlowRecord],
    hosts_by_inode: &HashMap<u32, String>,
) -> Vec<Mismatch> {
    let mut problems = Vec::new();
    let mut want: BTreeMap<Flow, u64> = BTreeMap::new();
    // (host, address, port, protocol) of traffic held to no expectation, on either end.
    let mut unchecked: HashSet<(String, IpAddr, u16, Protocol)> = HashSet::new();
    let server_of = |target: IpAddr| {
        resolved
            .hosts
            .iter()
            .find(|h| IpAddr::V4(h.ipv4) == target || IpAddr::V6(h.ipv6) == target)
    };
    for (t, o) in resolved.scenario.traffic.iter().zip(outcomes) {
        let Some(target) = o.target else {
            continue;
        };
        let Some(expect) = t.expect else {
            unchecked.insert((t.from.clone(), target, t.port, t.protocol));
            if let Some(server) = server_of(target) {
                unchecked.insert((server.id.clone(), target, t.port, t.protocol));
            }
            continue;
        };
        let got = o.results.get(&expect).copied().unwrap_or(0);
        if got != t.count {
            problems.push(Mismatch(format!(
                "traffic[{}] {} -> {}:{} {}: the client saw {:?}, expected {} x {expect}",
                o.item, t.from, t.to, t.port, t.protocol, o.results, t.count
            )));
        }
        *want
            .entry((
                t.from.clone(),
                target,
                t.port,
                t.protocol,
                expect,
                Side::Client,
            ))
            .or_default() += u64::from(t.count);
        if let (Some(server), Verdict::Established | Verdict::Answered) =
            (server_of(target), expect)
        {
            *want
                .entry((
                    server.id.clone(),
                    target,
                    t.port,
                    t.protocol,
                    expect,
                    Side::Server,
                ))
                .or_default() += u64::from(t.count);
        }
    }
    let mut got: HashMap<Flow, u64> = HashMap::new();
    for r in records {
        let (Some(obs), Some(verdict), Some(port)) = (&r.observer, r.verdict, r.dst.port) else {
            continue;
        };
        let Some(host) = hosts_by_inode.get(&obs.netns) else {
            continue;
        };
        *got.entry((host.clone(), r.dst.ip, port, r.protocol, verdict, obs.side))
            .or_default() += r.count;
    }
    for (flow, n) in &want {
        let seen = got.get(flow).copied().unwrap_or(0);
        if seen != *n {
            let (host, ip, port, proto, verdict, side) = flow;
            problems.push(Mismatch(format!(
                "captured {seen} x {verdict} for {proto} to {ip}:{port} on the {side:?} side in {host}, expected {n}"
            )));
        }
    }
    let mut phantoms: Vec<(&Flow, u64)> = got
        .iter()
        .filter(|(flow, _)| !want.contains_key(*flow))
        .filter(|((host, ip, port, proto, verdict, side), _)| {
            !(*side == Side::Path
                || (*side == Side::Server && *verdict == Verdict::Received)
                || unchecked.contains(&(host.clone(), *ip, *port, *proto)))
        })
        .map(|(flow, n)| (flow, *n))
        .collect();
    phantoms.sort();
    for ((host, ip, port, proto, verdict, side), n) in phantoms {
        problems.push(Mismatch(format!(
            "captured {n} x {verdict} for {proto} to {ip}:{port} on the {side:?} side in {host}, which no traffic item expects"
        )));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;
    use flowpol_analysis::record::{Endpoint, Observer};

    fn record(
        ip: &str,
        port: u16,
        verdict: Verdict,
        side: Side,
        netns: u32,
        count: u64,
    ) -> FlowRecord {
        FlowRecord {
            first_seen: None,
            last_seen: None,
            protocol: Protocol::TCP,
            src: Endpoint::new("10.244.0.10".parse().unwrap(), None),
            dst: Endpoint::new(ip.parse().unwrap(), Some(port)),
            verdict: Some(verdict),
            drop_reason: None,
            count,
            replies: None,
            error: None,
            node: None,
            observer: Some(Observer {
                side,
                netns,
                cgroup_id: None,
                since: None,
            }),
        }
    }

    #[test]
    fn exact_counts_on_both_sides_are_required() {
        let r = parse(
            "t",
            "name: t\nnamespaces: [{name: a}]\npods: [{name: c, namespace: a}, {name: s, namespace: a, ports: [{port: 80}]}]\ntraffic: [{from: a/c, to: a/s, port: 80, count: 3, expect: established}]\n",
        )
        .unwrap();
        let outcome = ClientSaw {
            item: 0,
            target: Some("10.244.0.11".parse().unwrap()),
            results: BTreeMap::from([(Verdict::Established, 3)]),
            ..ClientSaw::default()
        };
        let hosts = HashMap::from([(1, "a/c".to_owned()), (2, "a/s".to_owned())]);
        let good = [
            record("10.244.0.11", 80, Verdict::Established, Side::Client, 1, 3),
            record("10.244.0.11", 80, Verdict::Established, Side::Server, 2, 3),
        ];
        assert!(check(&r, std::slice::from_ref(&outcome), &good, &hosts).is_empty());
        let short = [
            good[0].clone(),
            record("10.244.0.11", 80, Verdict::Established, Side::Server, 2, 2),
        ];
        let problems = check(&r, std::slice::from_ref(&outcome), &short, &hosts);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].0.contains("captured 2"), "{}", problems[0]);
        let mut refused = outcome.clone();
        refused.results = BTreeMap::from([(Verdict::Refused, 3)]);
        assert_eq!(check(&r, &[refused], &good, &hosts).len(), 1);
        // The other way: what was captured must all be expected.
        let phantom = [
            good[0].clone(),
            good[1].clone(),
            record("10.244.0.11", 80, Verdict::Timeout, Side::Client, 1, 1),
            record("10.244.0.12", 443, Verdict::Established, Side::Server, 2, 1),
        ];
        let problems = check(&r, std::slice::from_ref(&outcome), &phantom, &hosts);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.0.contains("which no traffic item expects")));
        // Drops on the path, and records outside the lab's hosts, are not flows it plans.
        let mut drop = record("10.244.0.11", 80, Verdict::Dropped, Side::Path, 2, 4);
        drop.drop_reason = Some("NETFILTER_DROP".into());
        let elsewhere = record("10.244.0.11", 80, Verdict::Timeout, Side::Client, 99, 1);
        let with_others = [good[0].clone(), good[1].clone(), drop, elsewhere];
        assert!(check(&r, std::slice::from_ref(&outcome), &with_others, &hosts).is_empty());
    }

    #[test]
    fn traffic_without_an_expectation_is_not_held_to_one() {
        let r = parse(
            "t",
            "name: t\nnamespaces: [{name: a}]\npods: [{name: c, namespace: a}, {name: s, namespace: a, ports: [{port: 80}]}]\ntraffic: [{from: a/c, to: a/s, port: 80, count: 2}]\n",
        )
        .unwrap();
        let outcome = ClientSaw {
            item: 0,
            target: Some("10.244.0.11".parse().unwrap()),
            results: BTreeMap::from([(Verdict::Established, 1), (Verdict::Timeout, 1)]),
            ..ClientSaw::default()
        };
        let hosts = HashMap::from([(1, "a/c".to_owned()), (2, "a/s".to_owned())]);
        let captured = [
            record("10.244.0.11", 80, Verdict::Established, Side::Client, 1, 1),
            record("10.244.0.11", 80, Verdict::Timeout, Side::Client, 1, 1),
            record("10.244.0.11", 80, Verdict::Established, Side::Server, 2, 1),
        ];
        assert!(check(&r, &[outcome], &captured, &hosts).is_empty());
    }
}
