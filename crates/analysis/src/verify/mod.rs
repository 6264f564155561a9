//! Verify: what the kernel did, held against what the declared policies say. Pure.
//!
//! Each attributed record is judged by the policy engine ([`crate::eval`]) and by what was
//! observed, and the two must agree:
//! - passed (`established`, `answered`, `received`) but denied: an **enforcement gap**;
//! - blocked (`timeout`, or dropped by a filter: netfilter, tc, cgroup BPF) but allowed: an
//!   **over-block**;
//! - `refused` (an RST: the packet reached a host with nothing listening) while allowed is
//!   not a policy drop and is reported apart; `sent` (a datagram nobody answered) proves
//!   nothing either way.
//!
//! The declared policies alone also tell which pods are left open (**unprotected**), and
//! records whose ends the model could not name are **unattributed**. Findings are grouped by
//! (ends, port, protocol) so one broken rule is one finding with its evidence, not one line
//! per packet.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    cluster::Timestamp,
    eval::{self, Evaluated},
    policy::engine::{Decision, Engine, PolicyVerdict},
    record::{Endpoint, EndpointKind, FlowRecord, Protocol, Verdict},
};

/// Kernel drop reasons that mean a packet filter decided: what a CNI's policy looks like in
/// `kfree_skb`. Other reasons (no socket, checksum, queue full, ...) say nothing about policy.
pub const FILTER_DROP_REASONS: &[&str] = &[
    "NETFILTER_DROP",
    "TC_INGRESS",
    "TC_EGRESS",
    "TC_DROP",
    "BPF_CGROUP_EGRESS",
    "BPF_CGROUP_INGRESS",
    "XDP",
];

/// The kinds of finding, in the order people should read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    EnforcementGap,
    OverBlock,
    Refused,
    Unprotected,
    Unattributed,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::EnforcementGap,
        Kind::OverBlock,
        Kind::Refused,
        Kind::Unprotected,
        Kind::Unattributed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EnforcementGap => "enforcement_gap",
            Kind::OverBlock => "over_block",
            Kind::Refused => "refused",
            Kind::Unprotected => "unprotected",
            Kind::Unattributed => "unattributed",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown finding kind `{s}` (one of: {})", all.join(", "))
            })
    }
}

/// One end of a flow finding, named.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct End {
    /// `pod`, `node`, `service` or `external`; absent when unattributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<EndpointKind>,
    /// `namespace/pod`, the node's name, or the address.
    pub name: String,
    /// `Kind/name` of the pod's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// For flows to a service address: `namespace/name` of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ips: BTreeSet<IpAddr>,
}

/// Traffic where the cluster and its policies disagree, with the evidence.
#[derive(Clone, Debug, Serialize)]
pub struct FlowFinding {
    pub src: End,
    pub dst: End,
    pub port: u16,
    pub protocol: Protocol,
    /// What the policies say: `allow` or `deny`.
    pub policy_verdict: PolicyVerdict,
    /// What was observed, by verdict: counts of connections, datagrams or packets.
    pub observed: BTreeMap<Verdict, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drop_reasons: BTreeMap<String, u64>,
    /// Records behind this finding.
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub nodes: BTreeSet<String>,
    /// The engine's reasoning for the first record.
    pub explanation: Decision,
}

impl FlowFinding {
    /// The observed total, for ranking.
    pub fn count(&self) -> u64 {
        self.observed.values().sum()
    }
}

/// What is open according to the declared policies alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    /// No policy selects these pods for ingress: anyone may connect.
    IngressNotIsolated,
    /// No policy selects these pods for egress: they may connect anywhere.
    EgressNotIsolated,
    /// The namespace has no policy selecting all its pods with no ingress rules.
    NoDefaultDenyIngress,
    /// Likewise for egress.
    NoDefaultDenyEgress,
    /// These pods may open connections to the API server's endpoints.
    ReachesApiServer,
    /// These pods may reach any address outside the cluster.
    ReachesInternet,
}

#[derive(Clone, Debug, Serialize)]
pub struct Unprotected {
    pub exposure: Exposure,
    pub namespace: String,
    /// The pods concerned (empty for namespace-wide exposures).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Why, in words (the policy and rule that opens it, when one does).
    pub detail: String,
}

/// An address the model could not name although it looks like the cluster's own.
#[derive(Clone, Debug, Serialize)]
pub struct Unattributed {
    pub ip: IpAddr,
    /// Records where it appears.
    pub records: u64,
    /// Other ends it talked to (a few, for context).
    pub peers: BTreeSet<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    EnforcementGap(FlowFinding),
    OverBlock(FlowFinding),
    Refused(FlowFinding),
    Unprotected(Unprotected),
    Unattributed(Unattributed),
}

impl Finding {
    pub fn kind(&self) -> Kind {
        match self {
            Finding::EnforcementGap(_) => Kind::EnforcementGap,
            Finding::OverBlock(_) => Kind::OverBlock,
            Finding::Refused(_) => Kind::Refused,
            Finding::Unprotected(_) => Kind::Unprotected,
            Finding::Unattributed(_) => Kind::Unattributed,
        }
    }
}

/// How the records were judged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records: u64,
    /// Observed outcome and policy agree.
    pub consistent: u64,
    /// Records in a flow finding.
    pub disagreeing: u64,
    /// Outcomes that prove nothing about policy (`sent`, drops for other reasons), and
    /// verdicts that depend on whether an address is one of a rule's domain names.
    pub inconclusive: u64,
    /// The inconclusive records by why they could not be judged.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inconclusive_by: BTreeMap<Inconclusive, u64>,
    pub findings: BTreeMap<Kind, u64>,
}

/// Why a record could not be judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inconclusive {
    /// The verdict depends on whether the address is one of a rule's domain names.
    DomainNames,
    /// UDP sent and never answered: nothing says whether it arrived.
    Unanswered,
    /// Dropped for a reason no filter gives (no route, a full queue, ...).
    DroppedNotByAFilter,
    /// The record says nothing of what happened.
    NoVerdict,
}

impl Inconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomainNames => "decided by domain names",
            Self::Unanswered => "UDP sent, never answered",
            Self::DroppedNotByAFilter => "dropped, not by a filter",
            Self::NoVerdict => "no verdict recorded",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub findings: Vec<Finding>,
    /// Why flows may be missing from what was verified: the recordings' own account of
    /// events they lost (see [`crate::record::Capture`]). Empty when nothing was lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

impl Report {
    pub fn count(&self, kind: Kind) -> u64 {
        self.summary.findings.get(&kind).copied().unwrap_or(0)
    }
}

/// What an observed outcome says about the packets' fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// They reached the other end (established, answered, received).
    Passed,
    /// A filter stopped them (timeout, or dropped by netfilter, tc or cgroup BPF).
    Blocked,
    /// They reached a host with nothing listening (RST, or the kernel's NO_SOCKET drop).
    Refused,
    /// Nothing to conclude (`sent`, drops for other reasons).
    Unknown,
}

pub fn fate(r: &FlowRecord) -> Fate {
    match r.verdict {
        Some(Verdict::Established | Verdict::Answered | Verdict::Received) => Fate::Passed,
        Some(Verdict::Timeout) => Fate::Blocked,
        Some(Verdict::Refused) => Fate::Refused,
        Some(Verdict::Dropped) => match r.drop_reason.as_deref() {
            Some(reason) if FILTER_DROP_REASONS.contains(&reason) => Fate::Blocked,
            Some("NO_SOCKET") => Fate::Refused,
            _ => Fate::Unknown,
        },
        Some(Verdict::Sent) | None => Fate::Unknown,
    }
}

/// Verifies attributed `records` ([`crate::attribute::enrich`]) against the engine's
/// policies, and lists what the policies leave open.
pub fn verify(engine: &Engine, records: Vec<FlowRecord>) -> Report {
    report(engine, records, true)
}

/// [`verify`] without the exposures: only what the records show (for an agent judging
/// batch after batch; the exposures change with the policies, not with traffic).
pub fn judge(engine: &Engine, records: Vec<FlowRecord>) -> Report {
    report(engine, records, false)
}

fn report(engine: &Engine, records: Vec<FlowRecord>, exposures: bool) -> Report {
    let mut summary = Summary {
        records: records.len() as u64,
        ..Summary::default()
    };
    let mut flows: BTreeMap<(Kind, End, End, u16, Protocol), FlowFinding> = BTreeMap::new();
    let mut unnamed: BTreeMap<IpAddr, Unattributed> = BTreeMap::new();
    for e in eval::evaluate(engine, records) {
        for (end, peer) in [
            (&e.record.src, &e.record.dst),
            (&e.record.dst, &e.record.src),
        ] {
            if is_unattributed(end) {
                let u = unnamed.entry(end.ip).or_insert_with(|| Unattributed {
                    ip: end.ip,
                    records: 0,
                    peers: BTreeSet::new(),
                    first_seen: None,
                    last_seen: None,
                });
                u.records += 1;
                if u.peers.len() < 5 {
                    u.peers.insert(peer.ip);
                }
                widen(&mut u.first_seen, &mut u.last_seen, &e.record);
            }
        }
        if e.policy_verdict == PolicyVerdict::Undetermined {
            summary.inconclusive += 1;
            *summary
                .inconclusive_by
                .entry(Inconclusive::DomainNames)
                .or_default() += 1;
            continue;
        }
        let allowed = e.policy_verdict == PolicyVerdict::Allow;
        let kind = match (fate(&e.record), allowed) {
            (Fate::Passed, false) => Kind::EnforcementGap,
            (Fate::Blocked, true) => Kind::OverBlock,
            (Fate::Refused, true) => Kind::Refused,
            (Fate::Unknown, _) => {
                summary.inconclusive += 1;
                let why = match e.record.verdict {
                    Some(Verdict::Sent) => Inconclusive::Unanswered,
                    Some(_) => Inconclusive::DroppedNotByAFilter,
                    None => Inconclusive::NoVerdict,
                };
                *summary.inconclusive_by.entry(why).or_default() += 1;
                continue;
            }
            _ => {
                summary.consistent += 1;
                continue;
            }
        };
        summary.disagreeing += 1;
        add(&mut flows, kind, e);
    }
    let mut findings: Vec<Finding> = Vec::new();
    let mut ranked: Vec<(Kind, FlowFinding)> =
        flows.into_iter().map(|((kind, ..), f)| (kind, f)).collect();
    // Kinds in reading order; within a kind, the most traffic first (stable for ties).
    ranked.sort_by(|(ka, a), (kb, b)| ka.cmp(kb).then(b.count().cmp(&a.count())));
    findings.extend(ranked.into_iter().map(|(kind, f)| match kind {
        Kind::EnforcementGap => Finding::EnforcementGap(f),
        Kind::OverBlock => Finding::OverBlock(f),
        _ => Finding::Refused(f),
    }));
    if exposures {
        findings.extend(unprotected(engine).into_iter().map(Finding::Unprotected));
    }
    let mut unnamed: Vec<Unattributed> = unnamed.into_values().collect();
    unnamed.sort_by(|a, b| b.records.cmp(&a.records).then(a.ip.cmp(&b.ip)));
    findings.extend(unnamed.into_iter().map(Finding::Unattributed));
    for f in &findings {
        *summary.findings.entry(f.kind()).or_default() += 1;
    }
    Report {
        summary,
        findings,
        incomplete: Vec::new(),
    }
}

/// An end the model should have named: no attribution at all, or an "external" address in
/// the private ranges a cluster uses (a pod forgotten, or a model too stale).
fn is_unattributed(end: &Endpoint) -> bool {
    if end.identity.service.is_some() {
        return false;
    }
    match end.identity.kind {
        None => true,
        Some(EndpointKind::External) => is_private(end.ip),
        Some(_) => false,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

fn widen(first: &mut Option<Timestamp>, last: &mut Option<Timestamp>, r: &FlowRecord) {
    crate::record::widen_span(first, last, r.first_seen, r.last_seen);
}

fn end(e: &Endpoint) -> End {
    let id = &e.identity;
    let name = match (id.kind, &id.namespace, &id.pod, &id.node) {
        (Some(EndpointKind::Pod), Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
        (Some(EndpointKind::Node), _, _, Some(node)) => node.clone(),
        _ => e.ip.to_string(),
    };
    // A service flow's real peer is its backend: name it when it is known exactly.
    let (name, workload, ips) = match (&id.service, id.backends.as_slice()) {
        (Some(_), [b]) => (end(b).name, end(b).workload, BTreeSet::from([b.ip])),
        _ => (
            name,
            id.workload
                .as_ref()
                .map(|w| format!("{}/{}", w.kind, w.name)),
            BTreeSet::from([e.ip]),
        ),
    };
    End {
        kind: id.kind,
        name,
        workload,
        service: id.service.clone(),
        ips,
    }
}

fn add(
    flows: &mut BTreeMap<(Kind, End, End, u16, Protocol), FlowFinding>,
    kind: Kind,
    e: Evaluated,
) {
    let r = &e.record;
    let (mut src, mut dst) = (end(&r.src), end(&r.dst));
    let (src_ips, dst_ips) = (std::mem::take(&mut src.ips), std::mem::take(&mut dst.ips));
    let port = r.dst.port.unwrap_or(0);
    let f = flows
        .entry((kind, src.clone(), dst.clone(), port, r.protocol))
        .or_insert_with(|| FlowFinding {
            src,
            dst,
            port,
            protocol: r.protocol,
            policy_verdict: e.policy_verdict,
            observed: BTreeMap::new(),
            drop_reasons: BTreeMap::new(),
            records: 0,
            first_seen: None,
            last_seen: None,
            nodes: BTreeSet::new(),
            explanation: e.explanation.clone(),
        });
    f.src.ips.extend(src_ips);
    f.dst.ips.extend(dst_ips);
    f.records += 1;
    if let Some(v) = r.verdict {
        *f.observed.entry(v).or_default() += r.count;
    }
    if let Some(reason) = &r.drop_reason {
        *f.drop_reasons.entry(reason.clone()).or_default() += r.count;
    }
    widen(&mut f.first_seen, &mut f.last_seen, r);
    f.nodes.extend(r.node.clone());
}

mod exposures;
mod render;
#[cfg(test)]
mod tests;

pub use exposures::unprotected;
pub use render::render;
