//! Compare: the same traffic (a probe plan, say) observed in two clusters, e.g. with two
//! CNIs, side by side. Each case (source, destination, port, protocol) gets the fate its
//! records show in each run, and every case whose fates differ is listed. Ends are named by
//! namespace and workload, so pods with generated names in two clusters still line up;
//! [`table`] sets any number of labelled, repeated runs side by side. Pure.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub mod table;

use crate::{
    record::{Endpoint, EndpointKind, FlowRecord, Protocol},
    verify::{fate, Fate},
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Case {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What a run shows for one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Blocked,
    Refused,
    /// Records that prove nothing either way (a datagram nobody answered).
    Inconclusive,
    /// Some attempts passed and others did not.
    Mixed,
    /// The run has no record of this case.
    Absent,
}

#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    #[serde(flatten)]
    pub case: Case,
    pub a: Outcome,
    pub b: Outcome,
}

/// How one end is named for comparison: its workload in its namespace (pods), the service,
/// the node, or the address.
fn name(e: &Endpoint) -> String {
    let id = &e.identity;
    if let Some(svc) = &id.service {
        return format!("service {svc}");
    }
    match (id.kind, &id.namespace, &id.workload, &id.pod, &id.node) {
        (Some(EndpointKind::Pod), Some(ns), Some(w), _, _) => format!("{ns}/{}", w.name),
        (Some(EndpointKind::Pod), Some(ns), None, Some(pod), _) => format!("{ns}/{pod}"),
        (Some(EndpointKind::Node), _, _, _, Some(node)) => format!("node {node}"),
        _ => e.ip.to_string(),
    }
}

/// The case a record is of.
pub fn case_of(r: &FlowRecord) -> Case {
    Case {
        src: name(&r.src),
        dst: name(&r.dst),
        port: r.dst.port.unwrap_or(0),
        protocol: r.protocol,
    }
}

/// The outcome of every case in `records` (attributed first, to name ends by workload).
pub fn outcomes(records: &[FlowRecord]) -> BTreeMap<Case, Outcome> {
    let mut fates: BTreeMap<Case, BTreeSet<Fate>> = BTreeMap::new();
    for r in records {
        fates.entry(case_of(r)).or_default().insert(fate(r));
    }
    fates
        .into_iter()
        .map(|(case, mut f)| {
            f.remove(&Fate::Unknown);
            let outcome = match (f.len(), f.first()) {
                (0, _) => Outcome::Inconclusive,
                (1, Some(Fate::Passed)) => Outcome::Passed,
                (1, Some(Fate::Blocked)) => Outcome::Blocked,
                (1, _) => Outcome::Refused,
                _ => Outcome::Mixed,
            };
            (case, outcome)
        })
        .collect()
}

/// Every case whose outcome differs between runs `a` and `b`, in case order.
pub fn compare(a: &[FlowRecord], b: &[FlowRecord]) -> Vec<Difference> {
    let (a, b) = (outcomes(a), outcomes(b));
    let cases: BTreeSet<&Case> = a.keys().chain(b.keys()).collect();
    cases
        .into_iter()
        .filter_map(|case| {
            let get = |m: &BTreeMap<Case, Outcome>| m.get(case).copied().unwrap_or(Outcome::Absent);
            let (oa, ob) = (get(&a), get(&b));
            (oa != ob).then(|| Difference {
                case: case.clone(),
                a: oa,
                b: ob,
            })
        })
        .collect()
}

/// The differences as a table for people.
pub fn render(diffs: &[Difference], a: &str, b: &str) -> String {
    if diffs.is_empty() {
        return format!("no differences: {a} and {b} agree on every case\n");
    }
    let mut rows = vec![[
        "SOURCE".to_owned(),
        "DESTINATION".into(),
        "PORT".into(),
        a.to_uppercase(),
        b.to_uppercase(),
    ]];
    let word = |o: Outcome| {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    for d in diffs {
        rows.push([
            d.case.src.clone(),
            d.case.dst.clone(),
            format!("{}/{}", d.case.protocol, d.case.port),
            word(d.a),
            word(d.b),
        ]);
    }
    format!(
        "{} case(s) differ between {a} and {b}\n{}",
        diffs.len(),
        crate::output::columns(&rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Verdict;

    fn rec(dst: &str, port: u16, verdict: Verdict, reason: Option<&str>) -> FlowRecord {
        let mut r = FlowRecord::new(
            Protocol::TCP,
            Endpoint::new("10.0.0.1".parse().unwrap(), None),
            Endpoint::new(dst.parse().unwrap(), Some(port)),
            Some(verdict),
        );
        r.drop_reason = reason.map(Into::into);
        r
    }

    #[test]
    fn lists_exactly_the_cases_that_differ() {
        let a = vec![
            rec("10.0.0.2", 80, Verdict::Established, None),
            rec("10.0.0.3", 80, Verdict::Timeout, None),
            rec("10.0.0.3", 80, Verdict::Dropped, Some("NETFILTER_DROP")),
            rec("10.0.0.4", 80, Verdict::Refused, None),
            rec("10.0.0.5", 80, Verdict::Established, None),
        ];
        let b = vec![
            rec("10.0.0.2", 80, Verdict::Established, None),
            rec("10.0.0.3", 80, Verdict::Established, None),
            rec("10.0.0.4", 80, Verdict::Refused, None),
            rec("10.0.0.6", 80, Verdict::Sent, None),
        ];
        let d = compare(&a, &b);
        let got: Vec<(&str, Outcome, Outcome)> =
            d.iter().map(|d| (d.case.dst.as_str(), d.a, d.b)).collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.3", Outcome::Blocked, Outcome::Passed),
                ("10.0.0.5", Outcome::Passed, Outcome::Absent),
                ("10.0.0.6", Outcome::Absent, Outcome::Inconclusive),
            ]
        );
        assert!(compare(&a, &a).is_empty());
    }

    #[test]
    fn mixed_attempts_are_their_own_outcome() {
        let a = vec![
            rec("10.0.0.2", 80, Verdict::Established, None),
            rec("10.0.0.2", 80, Verdict::Timeout, None),
        ];
        assert_eq!(outcomes(&a).into_values().next(), Some(Outcome::Mixed));
    }
}
