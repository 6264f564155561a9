//! `flowpol probe` on the lab: the probe plan of the scenario's declared policies replaces
//! its traffic, and runs from inside the pods' (and outside hosts') network namespaces.
use std::{net::IpAddr, time::Duration};

use super::{
    enforce::{self, EnforceError},
    scenario::{Close, Family, Resolved, Traffic},
};
use flowpol_analysis::{
    plan::{self, Attempt, Outside},
    policy::engine::Engine,
};

/// How long a probe waits for an answer: denied attempts cost this much each.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts run at once.
pub const PROBE_CONCURRENCY: u32 = 8;

/// The probe plan of the scenario's declared policies.
pub fn plan(resolved: &Resolved) -> Result<Vec<Attempt>, EnforceError> {
    let declared = enforce::declared(resolved)?;
    let engine = Engine::new(&declared.cluster, declared.policies);
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
            expect: None,
        })
        .collect();
    resolved.scenario.settings.timeout = PROBE_TIMEOUT;
    resolved.scenario.settings.concurrency = PROBE_CONCURRENCY;
    resolved
}
