//! The comparison users run: any number of labelled runs (CNIs, enforcers, clusters), each
//! possibly repeated, side by side. One row per case (source, destination, port, protocol,
//! ends named by namespace/workload), one cell per run saying whether the case got through
//! `always`, `never` or `sometimes` over the run's repetitions, with the policy engine's
//! expectation beside them and the finding where a cell disagrees with it. Pure.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::{case_of, outcomes, Case, Outcome};
use crate::{eval, policy::engine::Engine, record::FlowRecord};

/// One labelled run: the records of each of its repetitions, attributed.
pub struct Run {
    pub label: String,
    pub repetitions: Vec<Vec<FlowRecord>>,
    /// The enforcer's time to enforce new policies, for each repetition that measured it.
    pub enforced: Vec<Duration>,
}

/// What a case did over a run's repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Says {
    /// Through in every repetition that showed anything.
    Always,
    /// Stopped (blocked or refused) in every one.
    Never,
    Sometimes,
    /// No repetition shows its fate (absent, or a datagram nobody answered).
    Unseen,
}

/// Where a cell disagrees with the declared policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disagreement {
    /// Denied, yet it got through (in some repetition at least).
    EnforcementGap,
    /// Allowed, yet a filter stopped it (in some repetition at least).
    OverBlock,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub says: Says,
    /// Repetitions in which it got through, was blocked by a filter, was refused (nothing
    /// listening, or an enforcer that rejects), of those that showed its fate.
    pub passed: u32,
    pub blocked: u32,
    pub refused: u32,
    pub of: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Disagreement>,
}

/// What the declared policies say of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    pub allowed: bool,
    /// The engine's reasons (`egress: allowed by ns/name#0`, ...).
    pub because: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub case: Case,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Expectation>,
    /// One per run, in the runs' order.
    pub cells: Vec<Cell>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub runs: Vec<String>,
    /// Per run, its enforcer's time to enforce new policies, when measured.
    pub time_to_enforce: Vec<Option<Timing>>,
    pub rows: Vec<Row>,
}

/// Times over a run's repetitions, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    pub measured: usize,
    pub median_seconds: f64,
    pub slowest_seconds: f64,
}

impl Timing {
    /// `None` for no times.
    pub fn of(times: &[Duration]) -> Option<Self> {
        let mut s: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        Some(Self {
            measured: s.len(),
            median_seconds: *s.get(s.len() / 2)?,
            slowest_seconds: *s.last()?,
        })
    }
}

/// The table of `runs`, with the expectation of `engine` (the declared policies) when given.
pub fn table(runs: &[Run], engine: Option<&Engine>) -> Table {
    let mut first: BTreeMap<Case, &FlowRecord> = BTreeMap::new();
    for record in runs.iter().flat_map(|r| r.repetitions.iter().flatten()) {
        first.entry(case_of(record)).or_insert(record);
    }
    let per_run: Vec<Vec<BTreeMap<Case, Outcome>>> = runs
        .iter()
        .map(|r| r.repetitions.iter().map(|rep| outcomes(rep)).collect())
        .collect();
    let rows = first
        .into_iter()
        .map(|(case, record)| {
            let expected = engine.map(|engine| {
                let judged = eval::evaluate(engine, vec![record.clone()]);
                let decision = &judged[0].explanation;
                Expectation {
                    allowed: decision.allowed,
                    because: decision.reasons(),
                }
            });
            let cells = per_run
                .iter()
                .map(|reps| cell(&case, reps, expected.as_ref().map(|e| e.allowed)))
                .collect();
            Row {
                case,
                expected,
                cells,
            }
        })
        .collect();
    let time_to_enforce = runs.iter().map(|r| Timing::of(&r.enforced)).collect();
    Table {
        runs: runs.iter().map(|r| r.label.clone()).collect(),
        time_to_enforce,
        rows,
    }
}

fn cell(case: &Case, repetitions: &[BTreeMap<Case, Outcome>], allowed: Option<bool>) -> Cell {
    let (mut passed, mut blocked, mut refused, mut mixed) = (0, 0, 0, 0);
    for rep in repetitions {
        match rep.get(case) {
            Some(Outcome::Passed) => passed += 1,
            Some(Outcome::Blocked) => blocked += 1,
            Some(Outcome::Refused) => refused += 1,
            Some(Outcome::Mixed) => mixed += 1,
            Some(Outcome::Inconclusive | Outcome::Absent) | None => {}
        }
    }
    let of = passed + blocked + refused + mixed;
    let says = match () {
        () if of == 0 => Says::Unseen,
        () if passed == of => Says::Always,
        () if passed == 0 && mixed == 0 => Says::Never,
        () => Says::Sometimes,
    };
    // A refusal is what an allowed connection to a closed port gets, and what a rejecting
    // enforcer answers a denied one with: it disagrees with neither.
    let finding = match (allowed, says) {
        (Some(false), Says::Always | Says::Sometimes) => Some(Disagreement::EnforcementGap),
        (Some(true), Says::Never | Says::Sometimes) if blocked + mixed > 0 => {
            Some(Disagreement::OverBlock)
        }
        _ => None,
    };
    Cell {
        says,
        passed,
        blocked,
        refused,
        of,
        finding,
    }
}

impl Cell {
    /// `always`, `never (refused)`, `sometimes 2/5 (over-block)`, `-`.
    pub fn text(&self) -> String {
        let mut out = match self.says {
            Says::Always => "always".to_owned(),
            Says::Never if self.refused == self.of => "never (refused)".to_owned(),
            Says::Never => "never".to_owned(),
            Says::Sometimes => format!("sometimes {}/{}", self.passed, self.of),
            Says::Unseen => "-".to_owned(),
        };
        if self.of > 1 && matches!(self.says, Says::Always | Says::Never) {
            out = format!("{out} {}/{}", self.passed, self.of);
        }
        match self.finding {
            Some(Disagreement::EnforcementGap) => out.push_str(" GAP"),
            Some(Disagreement::OverBlock) => out.push_str(" OVER-BLOCK"),
            None => {}
        }
        out
    }
}

impl Table {
    fn cells(&self) -> Vec<Vec<String>> {
        let has_expectation = self.rows.iter().any(|r| r.expected.is_some());
        let mut header = vec!["SOURCE".to_owned(), "DESTINATION".into(), "PORT".into()];
        if has_expectation {
            header.push("POLICY".into());
        }
        header.extend(self.runs.iter().cloned());
        let mut rows = vec![header];
        for r in &self.rows {
            let mut row = vec![
                r.case.src.clone(),
                r.case.dst.clone(),
                format!("{}/{}", r.case.protocol, r.case.port),
            ];
            if has_expectation {
                row.push(match &r.expected {
                    Some(e) if e.allowed => "allow".into(),
                    Some(_) => "deny".into(),
                    None => String::new(),
                });
            }
            row.extend(r.cells.iter().map(Cell::text));
            rows.push(row);
        }
        rows
    }

    /// Cells that disagree with the policies, per run.
    pub fn findings(&self) -> Vec<usize> {
        (0..self.runs.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter(|r| r.cells[i].finding.is_some())
                    .count()
            })
            .collect()
    }

    fn summary(&self) -> String {
        let per_run: Vec<String> = self
            .runs
            .iter()
            .zip(self.findings())
            .map(|(run, n)| format!("{run}: {n}"))
            .collect();
        let mut out = format!(
            "{} case(s) over {} run(s); cells that disagree with the policies: {}",
            self.rows.len(),
            self.runs.len(),
            per_run.join(", ")
        );
        if self.time_to_enforce.iter().any(Option::is_some) {
            let times: Vec<String> = self
                .runs
                .iter()
                .zip(&self.time_to_enforce)
                .map(|(run, t)| match t {
                    Some(t) => format!(
                        "{run}: {:.2} s (median of {}, slowest {:.2} s)",
                        t.median_seconds, t.measured, t.slowest_seconds
                    ),
                    None => format!("{run}: not measured"),
                })
                .collect();
            out.push_str(&format!(
                "\ntime to enforce new policies (from their creation until a canary showed them): {}",
                times.join(", ")
            ));
        }
        out
    }

    /// For people at a terminal.
    pub fn render(&self) -> String {
        format!(
            "{}\n{}",
            self.summary(),
            crate::output::columns_of(&self.cells())
        )
    }

    /// GitHub-flavoured markdown, to paste into an issue or a pull request.
    pub fn markdown(&self) -> String {
        let rows = self.cells();
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        // Each line of the summary a paragraph of its own.
        let mut out = format!("{}\n\n", self.summary().replace('\n', "\n\n"));
        out.push_str(&line(&rows[0]));
        out.push_str(&line(&vec!["---".to_owned(); rows[0].len()]));
        for r in &rows[1..] {
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Endpoint, Protocol, Verdict};

    fn rec(dst: &str, verdict: Verdict) -> FlowRecord {
        FlowRecord::new(
            Protocol::TCP,
            Endpoint::new("10.0.0.1".parse().unwrap(), None),
            Endpoint::new(dst.parse().unwrap(), Some(80)),
            Some(verdict),
        )
    }

    #[test]
    fn cells_count_repetitions_and_name_what_disagrees() {
        use Verdict::{Established as E, Refused as R, Timeout as T};
        let runs = [
            Run {
                label: "steady".into(),
                repetitions: vec![
                    vec![rec("10.0.0.2", E), rec("10.0.0.3", T), rec("10.0.0.4", R)],
                    vec![rec("10.0.0.2", E), rec("10.0.0.3", T), rec("10.0.0.4", R)],
                ],
                enforced: Vec::new(),
            },
            Run {
                label: "flaky".into(),
                repetitions: vec![
                    vec![rec("10.0.0.2", T), rec("10.0.0.3", E)],
                    vec![rec("10.0.0.2", E), rec("10.0.0.3", T)],
                    vec![rec("10.0.0.2", E)],
                ],
                enforced: Vec::new(),
            },
        ];
        let t = table(&runs, None);
        let texts: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|r| r.cells.iter().map(Cell::text).collect())
            .collect();
        assert_eq!(
            texts,
            [
                ["always 2/2", "sometimes 2/3"],
                ["never 0/2", "sometimes 1/2"],
                ["never (refused) 0/2", "-"],
            ]
        );
        // Without an expectation nothing is a finding.
        assert_eq!(t.findings(), [0, 0]);
    }

    #[test]
    fn findings_follow_the_expectation() {
        let case = case_of(&rec("10.0.0.2", Verdict::Established));
        let reps = |outcomes: &[Outcome]| -> Vec<BTreeMap<Case, Outcome>> {
            outcomes
                .iter()
                .map(|o| BTreeMap::from([(case.clone(), *o)]))
                .collect()
        };
        use Outcome::{Blocked as B, Passed as P, Refused as R};
        let finding = |o: &[Outcome], allowed| cell(&case, &reps(o), Some(allowed)).finding;
        assert_eq!(finding(&[P, P], false), Some(Disagreement::EnforcementGap));
        assert_eq!(finding(&[P, B], false), Some(Disagreement::EnforcementGap));
        assert_eq!(finding(&[B, B], false), None);
        assert_eq!(finding(&[R, R], false), None, "a rejecting enforcer");
        assert_eq!(finding(&[B, P], true), Some(Disagreement::OverBlock));
        assert_eq!(finding(&[B], true), Some(Disagreement::OverBlock));
        assert_eq!(finding(&[R], true), None, "a closed port");
        assert_eq!(finding(&[P], true), None);
    }

    #[test]
    fn markdown_is_a_table_with_one_column_per_run() {
        let runs = [
            Run {
                label: "a|b".into(),
                repetitions: vec![vec![rec("10.0.0.2", Verdict::Established)]],
                enforced: Vec::new(),
            },
            Run {
                label: "c".into(),
                repetitions: vec![vec![]],
                enforced: Vec::new(),
            },
        ];
        let md = table(&runs, None).markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[2], "| SOURCE | DESTINATION | PORT | a\\|b | c |");
        assert_eq!(lines[3], "| --- | --- | --- | --- | --- |");
        assert_eq!(lines[4], "| 10.0.0.1 | 10.0.0.2 | TCP/80 | always | - |");
        assert!(
            !md.contains("time to enforce"),
            "nothing measured, nothing said"
        );
    }

    /// Three repetitions of a real enforcer (0.3, 0.1, 0.2 s) and one of an enforcer that
    /// measures nothing: the median and the slowest, and "not measured".
    #[test]
    fn the_summary_says_each_runs_time_to_enforce() {
        let ms = Duration::from_millis;
        let runs = [
            Run {
                label: "real".into(),
                repetitions: vec![vec![], vec![], vec![]],
                enforced: vec![ms(300), ms(100), ms(200)],
            },
            Run {
                label: "own".into(),
                repetitions: vec![vec![]],
                enforced: Vec::new(),
            },
        ];
        let t = table(&runs, None);
        assert_eq!(
            t.time_to_enforce,
            [
                Some(Timing {
                    measured: 3,
                    median_seconds: 0.2,
                    slowest_seconds: 0.3
                }),
                None
            ]
        );
        assert!(
            t.render()
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("real: 0.20 s (median of 3, slowest 0.30 s), own: not measured"),
            "{}",
            t.render()
        );
    }
}
