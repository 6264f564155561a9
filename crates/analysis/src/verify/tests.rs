//! Verdicts worked by hand on a two-pod namespace: `api` isolated for ingress, open to
//! `web` on 8080 only; `web` selected by no policy.
use super::*;
use crate::{
    attribute,
    cluster::snapshot,
    policy,
    record::{Endpoint as RecordEnd, FlowRecord},
};

const PODS: &str = include_str!("../../../../tests/fixtures/web-api.yaml");
const API_FROM_WEB: &str = include_str!("../../../../tests/fixtures/api-from-web.yaml");

fn record(protocol: Protocol, port: u16, verdict: Verdict, drop: Option<&str>) -> FlowRecord {
    let mut r = FlowRecord::new(
        protocol,
        RecordEnd::new("10.0.0.1".parse().unwrap(), None),
        RecordEnd::new("10.0.0.2".parse().unwrap(), Some(port)),
        Some(verdict),
    );
    r.drop_reason = drop.map(str::to_owned);
    r
}

fn judged(records: Vec<FlowRecord>, exposures: bool) -> Report {
    let snap = snapshot::parse("t", &format!("{PODS}---\n{API_FROM_WEB}")).unwrap();
    let mut records = records;
    attribute::enrich(&snap.cluster, &mut records);
    let engine = Engine::new(&snap.cluster, policy::compile_all(&snap.policies).unwrap());
    if exposures {
        verify(&engine, records)
    } else {
        judge(&engine, records)
    }
}

#[test]
fn the_fate_of_each_outcome() {
    let tcp = |v, d| fate(&record(Protocol::TCP, 80, v, d));
    assert_eq!(tcp(Verdict::Established, None), Fate::Passed);
    assert_eq!(tcp(Verdict::Timeout, None), Fate::Blocked);
    assert_eq!(tcp(Verdict::Refused, None), Fate::Refused);
    assert_eq!(tcp(Verdict::Sent, None), Fate::Unknown);
    assert_eq!(tcp(Verdict::Dropped, Some("NETFILTER_DROP")), Fate::Blocked);
    assert_eq!(tcp(Verdict::Dropped, Some("NO_SOCKET")), Fate::Refused);
    assert_eq!(tcp(Verdict::Dropped, Some("TCP_CSUM")), Fate::Unknown);
}

#[test]
fn each_disagreement_becomes_its_finding_and_agreement_is_counted() {
    let report = judged(
        vec![
            // Allowed and through: consistent.
            record(Protocol::TCP, 8080, Verdict::Established, None),
            // Denied (port 9090 has no rule) yet through: a gap.
            record(Protocol::TCP, 9090, Verdict::Established, None),
            // Allowed yet timed out: an over-block.
            record(Protocol::TCP, 8080, Verdict::Timeout, None),
            // Allowed, and refused by the host: reported apart.
            record(Protocol::TCP, 8080, Verdict::Refused, None),
            // Denied and dropped by a filter: consistent.
            record(
                Protocol::TCP,
                9090,
                Verdict::Dropped,
                Some("NETFILTER_DROP"),
            ),
            // Nobody answered a datagram: proves nothing.
            record(Protocol::UDP, 53, Verdict::Sent, None),
        ],
        false,
    );
    assert_eq!(
        (
            report.summary.records,
            report.summary.consistent,
            report.summary.disagreeing,
            report.summary.inconclusive
        ),
        (6, 2, 3, 1)
    );
    assert_eq!(
        report.summary.inconclusive_by,
        [(Inconclusive::Unanswered, 1)].into()
    );
    let flows: Vec<(Kind, String, String, u16, PolicyVerdict)> = report
        .findings
        .iter()
        .map(|f| match f {
            Finding::EnforcementGap(x) | Finding::OverBlock(x) | Finding::Refused(x) => (
                f.kind(),
                x.src.name.clone(),
                x.dst.name.clone(),
                x.port,
                x.policy_verdict,
            ),
            other => panic!("judge lists no exposures: {other:?}"),
        })
        .collect();
    let (web, api) = ("a/web-1".to_owned(), "a/api-1".to_owned());
    assert_eq!(
        flows,
        vec![
            (
                Kind::EnforcementGap,
                web.clone(),
                api.clone(),
                9090,
                PolicyVerdict::Deny
            ),
            (
                Kind::OverBlock,
                web.clone(),
                api.clone(),
                8080,
                PolicyVerdict::Allow
            ),
            (Kind::Refused, web, api, 8080, PolicyVerdict::Allow),
        ]
    );
}

#[test]
fn exposures_name_what_the_policies_leave_open() {
    let report = judged(Vec::new(), true);
    let open: BTreeSet<(Exposure, Vec<String>)> = report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Unprotected(u) => Some((u.exposure, u.pods.clone())),
            _ => None,
        })
        .collect();
    let pods = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    // web: selected by no policy, either way; api: isolated for ingress only. Nothing
    // isolates egress, so both may reach any outside address. No namespace-wide deny. (The
    // model has no `default/kubernetes`, so no API server exposure.)
    assert_eq!(
        open,
        BTreeSet::from([
            (Exposure::IngressNotIsolated, pods(&["web-1"])),
            (Exposure::EgressNotIsolated, pods(&["api-1", "web-1"])),
            (Exposure::NoDefaultDenyIngress, Vec::new()),
            (Exposure::NoDefaultDenyEgress, Vec::new()),
            (Exposure::ReachesInternet, pods(&["api-1", "web-1"])),
        ])
    );
}

/// A verdict that hangs on a domain name proves nothing either way: the record is
/// inconclusive, never a gap nor consistent; a certain Deny ahead of it still makes a gap.
#[test]
fn a_verdict_that_depends_on_a_domain_name_is_inconclusive() {
    let tiers = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: to-example}\nspec: {tier: Admin, priority: 10, subject: {namespaces: {}},\n\
        egress: [{action: Accept, to: [{domainNames: [example.com]}]}]}\n---\n\
        apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: no-internet}\nspec: {tier: Baseline, priority: 10, subject: {namespaces: {}},\n\
        egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}\n---\n\
        apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: blocked}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}},\n\
        egress: [{action: Deny, to: [{networks: [203.0.113.66/32]}]}]}\n";
    let snap = snapshot::parse("t", &format!("{PODS}---\n{tiers}")).unwrap();
    let engine = Engine::with_cluster_policies(
        &snap.cluster,
        Vec::new(),
        crate::policy::clusterwide::compile_all(&snap.cluster_policies).unwrap(),
    );
    let out = |ip: &str| {
        FlowRecord::new(
            Protocol::TCP,
            RecordEnd::new("10.0.0.1".parse().unwrap(), None),
            RecordEnd::new(ip.parse().unwrap(), Some(443)),
            Some(Verdict::Established),
        )
    };
    let mut records = vec![out("203.0.113.5"), out("203.0.113.66")];
    attribute::enrich(&snap.cluster, &mut records);
    let report = judge(&engine, records);
    assert_eq!(
        (
            report.summary.consistent,
            report.summary.disagreeing,
            report.summary.inconclusive
        ),
        (0, 1, 1)
    );
    assert_eq!(
        report.summary.inconclusive_by,
        [(Inconclusive::DomainNames, 1)].into()
    );
    let gaps: Vec<String> = report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::EnforcementGap(x) => Some(x.dst.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, ["203.0.113.66"]);
}

#[test]
fn what_cannot_be_judged_is_counted_by_why() {
    let report = judged(
        vec![
            record(Protocol::UDP, 53, Verdict::Sent, None),
            record(Protocol::UDP, 53, Verdict::Sent, None),
            record(Protocol::TCP, 8080, Verdict::Dropped, Some("TCP_CSUM")),
            FlowRecord::new(
                Protocol::TCP,
                RecordEnd::new("10.0.0.1".parse().unwrap(), None),
                RecordEnd::new("10.0.0.2".parse().unwrap(), Some(8080)),
                None,
            ),
        ],
        false,
    );
    assert_eq!(report.summary.inconclusive, 4);
    assert_eq!(
        report.summary.inconclusive_by,
        [
            (Inconclusive::Unanswered, 2),
            (Inconclusive::DroppedNotByAFilter, 1),
            (Inconclusive::NoVerdict, 1)
        ]
        .into()
    );
    assert!(render(&report).starts_with(
        "verified 4 records: 0 consistent with the policies, 0 disagreeing, 4 inconclusive (2 UDP sent, never answered, 1 dropped, not by a filter, 1 no verdict recorded)\n"
    ));
}
