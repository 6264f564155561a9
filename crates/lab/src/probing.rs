//! `flowpol probe` on the lab: the probe plan of the scenario's declared policies replaces
//! its traffic, and runs from inside the pods' (and outside hosts') network namespaces.
use std::net::IpAddr;

use super::{
    enforce::{self, EnforceError, Fault},
    run::{self, LabError, LabReport},
    scenario::{Close, Family, Resolved, Traffic},
};
use flowpol_analysis::plan::{self, Attempt, Outside};

/// The probe plan of the scenario's declared policies.
pub fn plan(resolved: &Resolved) -> Result<Vec<Attempt>, EnforceError> {
    let declared = enforce::declared(resolved)?;
    let engine = declared.engine();
    let outside: Vec<Outside> = resolved
        .hosts
        .iter()
        .filter(|h| !h.is_pod)
        .map(|h| Outside {
            name: h.id.clone(),
            ips: vec![IpAddr::V4(h.ipv4), IpAddr::V6(h.ipv6)],
        })
        .collect();
    Ok(plan::plan(&engine, &outside))
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    #[error(transparent)]
    Run(#[from] LabError),
}

/// Runs the plan's attempts as the scenario's traffic and records them. The lab's enforcer
/// installs the declared policies, broken by `faults` (none: faithfully), unless `faults`
/// is `None`: then nothing is enforced.
pub async fn run(
    resolved: Resolved,
    attempts: &[Attempt],
    faults: Option<&[Fault]>,
    node: Option<String>,
) -> Result<LabReport, ProbeError> {
    let mut resolved = as_traffic(resolved, attempts);
    if let Some(faults) = faults {
        enforce::install(&mut resolved, faults)?;
    }
    Ok(run::run(resolved, node).await?)
}

/// The scenario with `attempts` as its traffic, run concurrently with short timeouts.
pub fn as_traffic(mut resolved: Resolved, attempts: &[Attempt]) -> Resolved {
    resolved.scenario.traffic = attempts
        .iter()
        .map(|a| Traffic {
            from: a.from.name().to_owned(),
            to: a.to.name().to_owned(),
            port: a.port,
            protocol: a.protocol,
            count: 1,
            family: if a.address.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            parallel: 1,
            close: Close::Graceful,
            held: false,
            expect: None,
        })
        .collect();
    resolved.scenario.settings.timeout = plan::ATTEMPT_TIMEOUT;
    resolved.scenario.settings.concurrency = plan::ATTEMPT_CONCURRENCY;
    resolved
}
