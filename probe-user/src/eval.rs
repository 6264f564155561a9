//! Flow records held against the declared policies: each record with the engine's verdict and
//! its explanation. Pure.
use serde::Serialize;

use crate::{
    policy::engine::{Connection, Decision, Engine},
    record::FlowRecord,
};

/// A record, its policy verdict and why.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluated {
    #[serde(flatten)]
    pub record: FlowRecord,
    /// `allow` or `deny`.
    pub policy_verdict: &'static str,
    pub explanation: Decision,
}

/// Evaluates every record (their `dst.port` must be set; [`crate::record::read_json_lines`]
/// checks it).
pub fn evaluate(engine: &Engine, records: Vec<FlowRecord>) -> Vec<Evaluated> {
    records
        .into_iter()
        .map(|record| {
            let conn = Connection {
                src: record.src.ip,
                dst: record.dst.ip,
                port: record.dst.port.unwrap_or(0),
                protocol: record.protocol,
            };
            let explanation = engine.evaluate(&conn);
            Evaluated {
                policy_verdict: if explanation.allowed { "allow" } else { "deny" },
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
        let why = |side: &crate::policy::engine::Side, dir: &str| -> String {
            use crate::policy::engine::Side::*;
            match side {
                NotAPod { .. } => String::new(),
                NotIsolated => format!("{dir}: not isolated"),
                OwnNode => format!("{dir}: own node"),
                Loopback => format!("{dir}: loopback"),
                Allowed { rules } => format!(
                    "{dir}: allowed by {}",
                    rules
                        .iter()
                        .map(|r| format!("{}#{}", r.policy, r.rule))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Denied { isolated_by } => format!(
                    "{dir}: isolated by {}, no rule matched",
                    isolated_by.join(", ")
                ),
            }
        };
        let reasons: Vec<String> = [why(&d.egress, "egress"), why(&d.ingress, "ingress")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        lines.push([
            format!("{} ({})", e.record.src.ip, d.src),
            format!("{} ({})", e.record.dst.ip, d.dst),
            format!("{}/{}", e.record.protocol, e.record.dst.port.unwrap_or(0)),
            e.record
                .verdict
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            e.policy_verdict.into(),
            reasons.join("; "),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let row: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(row.join("  ").trim_end());
        out.push('\n');
    }
    out
}
