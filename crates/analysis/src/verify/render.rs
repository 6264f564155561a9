//! The verify report for people.
use std::collections::BTreeMap;

use super::{End, Exposure, Finding, Kind, Report};
use crate::policy::engine::Decision;

/// The report for people: a summary line, then each kind of finding as its own section,
/// most traffic first.
pub fn render(report: &Report) -> String {
    let s = &report.summary;
    let why: Vec<String> = s
        .inconclusive_by
        .iter()
        .map(|(why, n)| format!("{n} {}", why.as_str()))
        .collect();
    let mut out = format!(
        "verified {} records: {} consistent with the policies, {} disagreeing, {} inconclusive{}\n",
        s.records,
        s.consistent,
        s.disagreeing,
        s.inconclusive,
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join(", "))
        }
    );
    if !report.incomplete.is_empty() {
        out.push_str("\nINCOMPLETE CAPTURE: flows may be missing from these verdicts\n");
        for why in &report.incomplete {
            out.push_str(&format!("  {why}\n"));
        }
    }
    for kind in Kind::ALL {
        let of_kind: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.kind() == kind)
            .collect();
        if of_kind.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n{} ({}): {}\n",
            kind.as_str().to_uppercase(),
            of_kind.len(),
            heading(kind)
        ));
        if kind == Kind::Unprotected {
            out.push_str(&exposures(&of_kind));
            continue;
        }
        for f in of_kind {
            out.push_str(&line(f));
        }
    }
    if report.findings.is_empty() {
        out.push_str("no findings\n");
    }
    out
}

fn exposure_words(e: Exposure) -> &'static str {
    match e {
        Exposure::IngressNotIsolated => "ingress not isolated",
        Exposure::EgressNotIsolated => "egress not isolated",
        Exposure::NoDefaultDenyIngress => "no default deny for ingress",
        Exposure::NoDefaultDenyEgress => "no default deny for egress",
        Exposure::ReachesApiServer => "can reach the API server",
        Exposure::ReachesInternet => "can reach the whole internet",
    }
}

/// A namespace's own exposures, and each of its pods' (with details).
type NamespaceExposures<'a> = (Vec<&'static str>, BTreeMap<&'a str, Vec<String>>);

/// Exposures, one block per namespace: its own first, then each pod with all of its.
fn exposures(findings: &[&Finding]) -> String {
    let mut by_ns: BTreeMap<&str, NamespaceExposures> = BTreeMap::new();
    for f in findings {
        let Finding::Unprotected(u) = f else { continue };
        let (own, pods) = by_ns.entry(&u.namespace).or_default();
        let what = exposure_words(u.exposure);
        if u.pods.is_empty() {
            own.push(what);
        }
        for p in &u.pods {
            let said = match u.exposure {
                Exposure::ReachesInternet | Exposure::ReachesApiServer => {
                    format!("{what} ({})", u.detail)
                }
                _ => what.to_owned(),
            };
            pods.entry(p).or_default().push(said);
        }
    }
    let mut out = String::new();
    for (ns, (own, pods)) in by_ns {
        out.push_str(&format!("  namespace {ns}"));
        if !own.is_empty() {
            out.push_str(&format!(": {}", own.join(", ")));
        }
        out.push('\n');
        for (pod, said) in pods {
            out.push_str(&format!("    {pod}: {}\n", said.join(", ")));
        }
    }
    out
}

fn heading(kind: Kind) -> &'static str {
    match kind {
        Kind::EnforcementGap => "got through although the policies deny it",
        Kind::OverBlock => "blocked although the policies allow it",
        Kind::Refused => "refused by the destination (nothing listening): not a policy drop",
        Kind::Unprotected => "left open by the declared policies",
        Kind::Unattributed => "cluster-looking addresses the model could not name",
    }
}

fn line(f: &Finding) -> String {
    match f {
        Finding::EnforcementGap(x) | Finding::OverBlock(x) | Finding::Refused(x) => {
            let observed: Vec<String> =
                x.observed.iter().map(|(v, n)| format!("{n} {v}")).collect();
            let reasons: Vec<String> = x
                .drop_reasons
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            let show = |e: &End| match &e.service {
                Some(svc) => format!("{} (via service {svc})", e.name),
                None => e.name.clone(),
            };
            let mut s = format!(
                "  {} -> {} {}/{}: observed {}{}; policy {}\n",
                show(&x.src),
                show(&x.dst),
                x.protocol,
                x.port,
                observed.join(", "),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" (drops: {})", reasons.join(", "))
                },
                x.policy_verdict,
            );
            s.push_str(&format!("      why: {}\n", explain(&x.explanation)));
            s
        }
        Finding::Unprotected(_) => exposures(&[f]),
        Finding::Unattributed(u) => {
            let peers: Vec<String> = u.peers.iter().map(|p| p.to_string()).collect();
            format!(
                "  {} in {} record(s), talking to {}\n",
                u.ip,
                u.records,
                peers.join(", ")
            )
        }
    }
}

/// The engine's decision in one line: which side decided, and by which rule or policy.
fn explain(d: &Decision) -> String {
    let reasons = d.reasons();
    if reasons.is_empty() {
        "neither end is a pod: no policy applies".into()
    } else {
        reasons.join("; ")
    }
}
