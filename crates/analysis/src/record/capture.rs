//! The line a recording ends with, `{"capture": {...}}`: what the capture could not see,
//! so that what is computed from the records can say it is incomplete (suggest refuses to
//! present a suggestion as complete, verify says its verdicts may miss flows).
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One recording's account of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    /// Events the kernel produced that never reached flowpol (ring buffer full, probe runs
    /// the kernel skipped): flows may be missing.
    #[serde(default)]
    pub events_lost: u64,
    /// Events that did not decode.
    #[serde(default)]
    pub decode_errors: u64,
    /// UDP flows and drops whose kernel counters were evicted before they were read: their
    /// counts are short, the flows themselves are there.
    #[serde(default)]
    pub counters_evicted: u64,
    /// Network namespaces whose sockets could not be listed at start: connections open
    /// there before the start may be missing.
    #[serde(default)]
    pub namespaces_not_listed: u64,
    /// How long the cluster model was incomplete (the agent: records held back, or written
    /// unnamed once it ran out of patience). Flows are not missing for it; names may be.
    #[serde(default)]
    pub model_incomplete_ms: u64,
}

/// The JSON line that carries a [`Capture`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Line<'a> {
    pub capture: std::borrow::Cow<'a, Capture>,
}

/// What a line of a flow file begins with when it is a [`Capture`].
pub(crate) const PREFIX: &str = "{\"capture\":";

impl Capture {
    /// What a recording that keeps going (the agent) counted from `earlier`, an account of
    /// itself it gave before, to this one.
    pub fn since(&self, earlier: &Capture) -> Capture {
        Capture {
            node: self.node.clone(),
            started: earlier.ended.or(self.started),
            ended: self.ended,
            events_lost: self.events_lost.saturating_sub(earlier.events_lost),
            decode_errors: self.decode_errors.saturating_sub(earlier.decode_errors),
            counters_evicted: self
                .counters_evicted
                .saturating_sub(earlier.counters_evicted),
            namespaces_not_listed: self
                .namespaces_not_listed
                .saturating_sub(earlier.namespaces_not_listed),
            model_incomplete_ms: self
                .model_incomplete_ms
                .saturating_sub(earlier.model_incomplete_ms),
        }
    }

    /// Why flows may be missing from this recording, if they may.
    pub fn missing_flows(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.events_lost > 0 {
            why.push(format!("{} events lost", self.events_lost));
        }
        if self.decode_errors > 0 {
            why.push(format!("{} events undecodable", self.decode_errors));
        }
        if self.namespaces_not_listed > 0 {
            why.push(format!(
                "{} network namespaces not listed at start",
                self.namespaces_not_listed
            ));
        }
        if why.is_empty() {
            return None;
        }
        let node = self.node.as_deref().unwrap_or("(no node)");
        let span = match (self.started, self.ended) {
            (Some(a), Some(b)) => format!(" between {} and {}", a.to_rfc3339(), b.to_rfc3339()),
            _ => String::new(),
        };
        Some(format!("{} on {node}{span}", why.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_since_an_earlier_one_counts_what_came_after_it() {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let earlier = Capture {
            node: Some("node-a".into()),
            started: at("2026-12-01T10:00:00Z"),
            ended: at("2026-12-01T10:01:00Z"),
            events_lost: 5,
            model_incomplete_ms: 2_000,
            ..Capture::default()
        };
        let now = Capture {
            ended: at("2026-12-01T10:02:00Z"),
            events_lost: 12,
            decode_errors: 1,
            model_incomplete_ms: 2_500,
            ..earlier.clone()
        };
        assert_eq!(
            now.since(&earlier),
            Capture {
                node: Some("node-a".into()),
                started: at("2026-12-01T10:01:00Z"),
                ended: at("2026-12-01T10:02:00Z"),
                events_lost: 7,
                decode_errors: 1,
                model_incomplete_ms: 500,
                ..Capture::default()
            }
        );
    }

    #[test]
    fn a_clean_capture_misses_nothing_and_a_lossy_one_says_what_and_where() {
        assert_eq!(Capture::default().missing_flows(), None);
        let evicted_only = Capture {
            counters_evicted: 3,
            ..Capture::default()
        };
        assert_eq!(
            evicted_only.missing_flows(),
            None,
            "counts short, flows there"
        );
        let lossy = Capture {
            node: Some("node-a".into()),
            events_lost: 12,
            namespaces_not_listed: 1,
            ..Capture::default()
        };
        assert_eq!(
            lossy.missing_flows().as_deref(),
            Some("12 events lost, 1 network namespaces not listed at start on node-a")
        );
    }
}
