//! Running conformance cases in the lab, under flowpol's enforcer or a real one, and
//! holding what the clients saw against upstream's answers.
use std::time::Duration;

use super::{judge, Case, ConformanceError, Disagreement, Set};
use crate::{
    enforce::{self, EnforceError, Fault},
    enforcer::{self, EnforcerError, Program},
    in_cluster::ApiServer,
    run::{self, LabError},
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
    Lab(#[from] LabError),
    #[error("the lab's traffic runner stopped unexpectedly")]
    Join(#[from] tokio::task::JoinError),
}

/// One case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: String,
    pub probes: usize,
    pub disagreements: Vec<Disagreement>,
    /// A real enforcer's time from the policies' creation to their enforcement.
    pub propagation: Option<Duration>,
    /// Why the probes did not run: the enforcer did not enforce the case's policies in
    /// time (a result about the enforcer, not a failure of the run).
    pub not_enforced: Option<String>,
}

/// Runs `case`'s probes (every pair on every probed port) and judges them.
pub async fn run_case(set: &Set, case: &Case, with: &With<'_>) -> Result<CaseResult, RunError> {
    let expected = set.expected(case)?;
    let mut resolved = set.scenario(case)?;
    let (outcomes, propagation) = match with {
        With::Flowpol(faults) => {
            enforce::install(&mut resolved, faults)?;
            let (_, outcomes) =
                tokio::task::spawn_blocking(move || run::run_traffic_only(resolved)).await??;
            (outcomes, None)
        }
        With::Real { program, api } => {
            let run = enforcer::with(resolved, program, api, async |mut lab, _| {
                let outcomes = tokio::task::spawn_blocking(move || {
                    lab.listen()?;
                    lab.run_traffic()
                })
                .await?
                .map_err(LabError::from)?;
                Ok(outcomes)
            })
            .await;
            match run {
                Ok((outcomes, enforced)) => (outcomes, enforced.propagation),
                Err(e @ EnforcerError::NotEnforcing { .. }) => {
                    return Ok(CaseResult {
                        case: case.name.clone(),
                        probes: expected.len(),
                        disagreements: Vec::new(),
                        propagation: None,
                        not_enforced: Some(e.to_string()),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(CaseResult {
        case: case.name.clone(),
        probes: expected.len(),
        disagreements: judge(&expected, &outcomes),
        propagation,
        not_enforced: None,
    })
}
