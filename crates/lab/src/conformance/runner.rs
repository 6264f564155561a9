//! Running conformance cases in the lab, under flowpol's enforcer or a real one, and
//! holding what the clients saw against upstream's answers.
//!
//! As upstream's `ValidateOrFail` does (test/e2e/network/netpol/test_helper.go), a case
//! whose first probing of the matrix has wrong results is probed a second time, and the
//! second try is the verdict; the first try's wrong results are kept as transient, since an
//! enforcer that loses packets now and then is a result too.
//!
//! A real enforcer runs once for the whole set, as it would on a cluster: every case's
//! policies are put in force, probed and withdrawn in turn over the same pods, each change
//! waited for through canaries (upstream uses fresh namespaces per test; here the pods stay
//! and only the policies change).
use std::time::Duration;

use super::{judge, Case, ConformanceError, Disagreement, Set};
use crate::{
    enforce::{self, EnforceError, Fault},
    enforcer::{self, session::Session, EnforcerError, Program},
    in_cluster::ApiServer,
    netns, Lab,
};

/// Who enforces.
pub enum With<'a> {
    /// flowpol's own nftables rules, with these faults (none: faithfully).
    Flowpol(&'a [Fault]),
    Real {
        program: &'a Program,
        api: &'a ApiServer,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Conformance(#[from] ConformanceError),
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    #[error(transparent)]
    Enforcer(#[from] EnforcerError),
    #[error(transparent)]
    Net(#[from] netns::NetError),
    #[error("the lab's traffic runner stopped unexpectedly")]
    Join(#[from] tokio::task::JoinError),
    #[error("case {case}: its policies were not withdrawn in time, so the cases after it cannot be judged")]
    NotWithdrawn {
        case: String,
        #[source]
        source: Box<EnforcerError>,
    },
}

/// One case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: String,
    pub probes: usize,
    /// Wrong on the verdict's try (the second, when the first had any wrong).
    pub disagreements: Vec<Disagreement>,
    /// Wrong on the first try and right on the second.
    pub transient: Vec<Disagreement>,
    /// A real enforcer's time from the policies' creation to their enforcement.
    pub propagation: Option<Duration>,
    /// Why the probes did not run: the enforcer did not enforce the case's policies in
    /// time (a result about the enforcer, not a failure of the run).
    pub not_enforced: Option<String>,
}

/// Runs `cases` (every pair on every probed port of each) under `with` and judges them;
/// `each` sees every result as it comes.
pub async fn run_cases(
    set: &Set,
    cases: &[&Case],
    with: &With<'_>,
    mut each: impl FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, RunError> {
    let mut results = Vec::new();
    match with {
        With::Flowpol(faults) => {
            for case in cases {
                let r = flowpol_case(set, case, faults).await?;
                each(&r);
                results.push(r);
            }
        }
        With::Real { program, api } => {
            let Some(first) = cases.first() else {
                return Ok(results);
            };
            // The pods are every case's; the first case's scenario carries them.
            let pods = set.scenario(first)?;
            enforcer::session::session(pods, program, api, async |s| {
                for case in cases {
                    let r = real_case(set, case, s).await?;
                    each(&r);
                    results.push(r);
                }
                Ok::<(), RunError>(())
            })
            .await?;
        }
    }
    Ok(results)
}

async fn flowpol_case(set: &Set, case: &Case, faults: &[Fault]) -> Result<CaseResult, RunError> {
    let expected = set.expected(case)?;
    let probes = expected.len();
    let mut resolved = set.scenario(case)?;
    enforce::install(&mut resolved, faults)?;
    let (disagreements, transient) = tokio::task::spawn_blocking(move || {
        netns::preflight()?;
        let lab = Lab::up(resolved)?;
        let first = judge(&expected, &lab.run_traffic()?);
        Ok::<_, RunError>(if first.is_empty() {
            (first, Vec::new())
        } else {
            second_try(first, judge(&expected, &lab.run_traffic()?))
        })
    })
    .await??;
    Ok(CaseResult {
        case: case.name.clone(),
        probes,
        disagreements,
        transient,
        propagation: None,
        not_enforced: None,
    })
}

async fn real_case(set: &Set, case: &Case, s: &mut Session) -> Result<CaseResult, RunError> {
    let expected = set.expected(case)?;
    let plan = set.scenario(case)?;
    let mut result = CaseResult {
        case: case.name.clone(),
        probes: expected.len(),
        disagreements: Vec::new(),
        transient: Vec::new(),
        propagation: None,
        not_enforced: None,
    };
    match s.enforce(&plan).await {
        Ok(propagation) => {
            result.propagation = propagation;
            let first = judge(&expected, &s.traffic(&plan).await?);
            (result.disagreements, result.transient) = if first.is_empty() {
                (first, Vec::new())
            } else {
                second_try(first, judge(&expected, &s.traffic(&plan).await?))
            };
        }
        Err(e @ EnforcerError::NotEnforcing { .. }) => result.not_enforced = Some(e.to_string()),
        Err(e) => return Err(e.into()),
    }
    s.withdraw()
        .await
        .map_err(|source| RunError::NotWithdrawn {
            case: case.name.clone(),
            source: Box::new(source),
        })?;
    Ok(result)
}

/// Upstream's protocol after a first try with wrong results: the second try is the verdict,
/// and what the first got wrong and the second right was transient.
fn second_try(
    first: Vec<Disagreement>,
    second: Vec<Disagreement>,
) -> (Vec<Disagreement>, Vec<Disagreement>) {
    let transient = first
        .into_iter()
        .filter(|d| !second.iter().any(|s| s.expected == d.expected))
        .collect();
    (second, transient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Expected;
    use flowpol_analysis::record::Protocol;

    fn wrong(from: &str, to: &str, saw: &str) -> Disagreement {
        Disagreement {
            expected: Expected {
                from: from.into(),
                to: to.into(),
                port: 80,
                protocol: Protocol::TCP,
                allowed: true,
            },
            saw: saw.into(),
        }
    }

    /// The second try decides; a probe wrong on both tries is not transient even when the
    /// client saw something else the second time.
    #[test]
    fn the_second_try_is_the_verdict_and_the_first_tries_leftovers_are_transient() {
        let (verdict, transient) = second_try(
            vec![
                wrong("x/a", "x/b", "timeout"),
                wrong("y/a", "y/b", "refused"),
            ],
            vec![wrong("y/a", "y/b", "timeout")],
        );
        assert_eq!(verdict, [wrong("y/a", "y/b", "timeout")]);
        assert_eq!(transient, [wrong("x/a", "x/b", "timeout")]);
    }
}
