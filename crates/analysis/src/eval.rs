//! Flow records held against the declared policies: each record with the engine's verdict and
//! its explanation. Pure.
use serde::Serialize;

use crate::{
    policy::engine::{Connection, Decision, Engine, PolicyVerdict},
    record::FlowRecord,
};

/// A record, its policy verdict and why.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluated {
    #[serde(flatten)]
    pub record: FlowRecord,
    pub policy_verdict: PolicyVerdict,
    pub explanation: Decision,
}

/// Evaluates every record (their `dst.port` must be set; [`crate::record::read_json_lines`]
/// checks it), at the time it was first seen. Records must be attributed first
/// ([`crate::attribute::enrich`]): a flow to a service address is judged by its backends and
/// their target ports, as policies apply after the service address is translated. With
/// several possible backends it is allowed only if every one allows it; the explanation is
/// that of the first that does not (or of the first).
pub fn evaluate(engine: &Engine, records: Vec<FlowRecord>) -> Vec<Evaluated> {
    records
        .into_iter()
        .map(|record| {
            let targets: Vec<(std::net::IpAddr, u16)> = if record.dst.identity.backends.is_empty() {
                vec![(record.dst.ip, record.dst.port.unwrap_or(0))]
            } else {
                record
                    .dst
                    .identity
                    .backends
                    .iter()
                    .map(|b| (b.ip, b.port.unwrap_or(0)))
                    .collect()
            };
            let decisions: Vec<Decision> = targets
                .iter()
                .map(|(ip, port)| {
                    engine.evaluate(&Connection {
                        src: record.src.ip,
                        dst: *ip,
                        port: *port,
                        protocol: record.protocol,
                        at: record.first_seen,
                    })
                })
                .collect();
            // Denied by one backend is denied; otherwise one that may go either way leaves
            // the flow undetermined.
            let verdicts: Vec<PolicyVerdict> = decisions.iter().map(Decision::verdict).collect();
            let verdict = verdicts
                .iter()
                .copied()
                .find(|v| *v == PolicyVerdict::Deny)
                .or_else(|| {
                    verdicts
                        .iter()
                        .copied()
                        .find(|v| *v == PolicyVerdict::Undetermined)
                })
                .unwrap_or(PolicyVerdict::Allow);
            let explanation = match verdicts.iter().position(|v| *v == verdict) {
                Some(i) => decisions[i].clone(),
                None => decisions[0].clone(),
            };
            Evaluated {
                policy_verdict: verdict,
                explanation,
                record,
            }
        })
        .collect()
}

/// A table for people: one row per record.
pub fn table(rows: &[Evaluated]) -> String {
    let mut lines = vec![[
        "SOURCE".to_owned(),
        "DESTINATION".into(),
        "PORT".into(),
        "OBSERVED".into(),
        "POLICY".into(),
        "WHY".into(),
    ]];
    for e in rows {
        let d = &e.explanation;
        let reasons = d.reasons();
        lines.push([
            format!("{} ({})", e.record.src.ip, d.src),
            match &e.record.dst.identity.service {
                Some(svc) => format!("{} (service {svc} -> {})", e.record.dst.ip, d.dst),
                None => format!("{} ({})", e.record.dst.ip, d.dst),
            },
            format!("{}/{}", e.record.protocol, e.record.dst.port.unwrap_or(0)),
            e.record
                .verdict
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            e.policy_verdict.to_string(),
            reasons.join("; "),
        ]);
    }
    crate::output::columns(&lines)
}
