//! The proof of a suggestion: replayed together with the policies already declared, every
//! observed flow that got through still gets through; and what it allows beyond what was
//! observed (its excess). In diff mode, only what today's policies are missing is written;
//! flows a cluster-scoped policy decides are set apart, since a NetworkPolicy rule either is
//! not needed for them (an Admin Accept) or cannot change them (an Admin Deny).
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use super::{
    default_deny, endpoint, is_traffic, live, suggest, Options, Port, Suggestion, WorkloadKey,
};
use crate::{
    cluster::{AddressHolder, Cluster, PodId, Timestamp},
    eval,
    policy::{
        self,
        clusterwide::{Action, ClusterPolicy, Tier},
        engine::{Engine, PolicyVerdict, Ruling, Side},
        Policy, PolicyError,
    },
    record::{FlowRecord, Protocol},
};

/// A suggestion with its proof.
#[derive(Debug)]
pub struct Proven {
    pub suggestion: Suggestion,
    /// Namespaces the suggestion writes policies for.
    pub namespaces: BTreeSet<String>,
    /// Records replayed through existing + suggested policies (with
    /// [`Options::namespaces`], those with every pod in them): none denied.
    pub replayed: usize,
    /// (source, destination, port, protocol) combinations the suggestion alone allows
    /// between its namespaces' workloads that were not observed ([`excess`]).
    pub excess: Vec<(String, String, u16, Protocol)>,
    /// In diff mode, what the existing policies lack.
    pub diff: Option<Diff>,
    /// Observed flows an Admin-tier Deny stops: no NetworkPolicy can let them through, only
    /// a change to the cluster policy (left out of the replay). With the Deny, in words.
    pub overridden: Vec<(FlowRecord, String)>,
}

/// Diff mode: the suggestion is written for the flows today's policies do not allow by a
/// rule on both ends, and leaves out the default denies.
#[derive(Debug)]
pub struct Diff {
    /// Observed flows not allowed by a rule of today's policies on both ends.
    pub needing_rules: usize,
    /// Flows allowed today that the existing policies plus a default deny in the
    /// suggestion's namespaces would deny.
    pub would_break: Vec<FlowRecord>,
    /// Flows an Admin-tier Accept lets through (on every end that has a say, or with a
    /// NetworkPolicy rule on the other): they need no NetworkPolicy rule. With the Accept,
    /// in words.
    pub cluster_allowed: Vec<(FlowRecord, String)>,
}

/// How a side was decided.
enum Decided {
    /// By a NetworkPolicy rule, or the end has no say (not a pod, loopback, own node).
    ByRule,
    /// Nothing allowed it by a rule: not isolated, or denied by NetworkPolicy or a
    /// Baseline-tier policy (a NetworkPolicy rule comes first, and can change it).
    NeedsRule,
    AdminAccept(String),
    AdminDeny(String),
}

fn decided(side: &Side) -> Decided {
    match &side.ruling {
        Ruling::Cluster(step) if step.tier == Tier::Admin => {
            let why = side.text().unwrap_or_default();
            match step.action {
                Action::Deny => Decided::AdminDeny(why),
                _ => Decided::AdminAccept(why),
            }
        }
        Ruling::NotIsolated | Ruling::Denied { .. } | Ruling::Cluster(_) => Decided::NeedsRule,
        _ => Decided::ByRule,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("suggested policy is invalid (a flowpol bug)")]
    Invalid(#[source] PolicyError),
    #[error("{} observed flow(s) would be denied by the suggestion (a flowpol bug; please report it)", .0.len())]
    Denied(Vec<FlowRecord>),
}

/// Suggests policies for `records` next to the `existing` ones and proves the suggestion by
/// replay: fails, with the flows, if any observed flow in scope would be denied.
///
/// `cluster_policies` matter in diff mode only: the suggestion is NetworkPolicy, which the
/// Admin tier overrides and the Baseline tier never does for the pods it isolates.
pub fn prove(
    cluster: &Cluster,
    existing: &[Policy],
    cluster_policies: &[ClusterPolicy],
    records: &[FlowRecord],
    options: &Options,
    diff: bool,
) -> Result<Proven, ProofError> {
    // In diff mode, new rules are needed for the flows today's policies do not allow by a
    // rule on both ends: denied ones, and those passing only because an end is not isolated
    // (the suggestion isolates it). Flows the Admin tier decides need none.
    let mut cluster_allowed = Vec::new();
    let basis: Vec<FlowRecord> = if diff {
        let engine =
            Engine::with_cluster_policies(cluster, existing.to_vec(), cluster_policies.to_vec());
        let mut basis = Vec::new();
        for e in eval::evaluate(&engine, records.to_vec()) {
            let sides = [
                decided(&e.explanation.egress),
                decided(&e.explanation.ingress),
            ];
            if sides.iter().any(|d| matches!(d, Decided::AdminDeny(_))) {
                // No rule helps; reported with the replay's.
            } else if sides.iter().any(|d| matches!(d, Decided::NeedsRule)) {
                basis.push(e.record);
            } else if let Some(why) = sides.iter().find_map(|d| match d {
                Decided::AdminAccept(why) => Some(why.clone()),
                _ => None,
            }) {
                cluster_allowed.push((e.record, why));
            }
        }
        basis
    } else {
        records.to_vec()
    };
    let mut s = suggest(cluster, &basis, options);
    let namespaces = namespaces_of(&s);
    let diff = diff.then(|| {
        let would_break =
            breaks_under_default_deny(cluster, existing, cluster_policies, records, &namespaces);
        s.policies
            .retain(|p| p.metadata.name.as_deref() != Some("default-deny"));
        s.cilium
            .retain(|p| p.metadata.name.as_deref() != Some("default-deny"));
        Diff {
            needing_rules: basis.len(),
            would_break,
            cluster_allowed: std::mem::take(&mut cluster_allowed),
        }
    });
    let suggested: Vec<Policy> = s
        .policies
        .iter()
        .map(policy::compile)
        .collect::<Result<_, _>>()
        .map_err(ProofError::Invalid)?;
    // The guarantee: every flow that got through still gets through.
    let all: Vec<Policy> = existing
        .iter()
        .cloned()
        .chain(suggested.iter().cloned())
        .collect();
    let replay = Engine::with_cluster_policies(cluster, all, cluster_policies.to_vec());
    // With --namespace, flows with a pod elsewhere depend on policies not written here.
    let in_scope: Vec<FlowRecord> = records
        .iter()
        .filter(|r| {
            let ends = [&r.src, &r.dst].into_iter().chain(&r.dst.identity.backends);
            options.namespaces.is_empty()
                || ends
                    .filter_map(|e| e.identity.namespace.as_ref())
                    .all(|ns| options.namespaces.contains(ns))
        })
        .cloned()
        .collect();
    let mut overridden = Vec::new();
    let mut not_allowed = Vec::new();
    let denied_now: Vec<FlowRecord> = denied(&replay, &in_scope).into_iter().cloned().collect();
    for e in eval::evaluate(&replay, denied_now) {
        match [
            decided(&e.explanation.egress),
            decided(&e.explanation.ingress),
        ] {
            [Decided::AdminDeny(why), _] | [_, Decided::AdminDeny(why)] => {
                overridden.push((e.record, why))
            }
            _ => not_allowed.push(e.record),
        }
    }
    let denied = not_allowed;
    if !denied.is_empty() {
        return Err(ProofError::Denied(denied));
    }
    let tight = Engine::new(cluster, suggested);
    let excess = excess(&tight, records, &namespaces);
    Ok(Proven {
        suggestion: s,
        namespaces,
        replayed: in_scope.len(),
        excess,
        diff,
        overridden,
    })
}

/// Flows allowed today that the existing policies plus a default deny in `namespaces` deny.
fn breaks_under_default_deny(
    cluster: &Cluster,
    existing: &[Policy],
    cluster_policies: &[ClusterPolicy],
    records: &[FlowRecord],
    namespaces: &BTreeSet<String>,
) -> Vec<FlowRecord> {
    let today =
        Engine::with_cluster_policies(cluster, existing.to_vec(), cluster_policies.to_vec());
    let mut with_deny = existing.to_vec();
    for ns in namespaces {
        with_deny.push(policy::compile(&default_deny(ns)).expect("a default deny is valid"));
    }
    let engine = Engine::with_cluster_policies(cluster, with_deny, cluster_policies.to_vec());
    let denied_today: HashSet<*const FlowRecord> = denied(&today, records)
        .into_iter()
        .map(|r| r as *const FlowRecord)
        .collect();
    denied(&engine, records)
        .into_iter()
        .filter(|r| !denied_today.contains(&(*r as *const FlowRecord)))
        .cloned()
        .collect()
}

/// Which of `records` that are traffic ([`is_traffic`]) a policy set denies.
pub fn denied<'r>(engine: &Engine, records: &'r [FlowRecord]) -> Vec<&'r FlowRecord> {
    let traffic: Vec<&FlowRecord> = records.iter().filter(|r| is_traffic(r)).collect();
    let judged = eval::evaluate(engine, traffic.iter().map(|r| (*r).clone()).collect());
    traffic
        .into_iter()
        .zip(judged)
        .filter(|(_, e)| e.policy_verdict == PolicyVerdict::Deny)
        .map(|(r, _)| r)
        .collect()
}

/// Combinations (source workload, destination workload, port, protocol) that the policies
/// allow between the workloads of `namespaces` but that were not observed: the excess of a
/// suggestion. Ports are those the destination listens on or was reached on. In order of
/// destination, then source.
pub fn excess(
    engine: &Engine,
    records: &[FlowRecord],
    namespaces: &BTreeSet<String>,
) -> Vec<(String, String, u16, Protocol)> {
    let cluster = engine.cluster();
    let mut reps: BTreeMap<WorkloadKey, PodId> = BTreeMap::new();
    for id in cluster.pod_ids() {
        let p = cluster.pod(id);
        let ns = &cluster.namespace(p.namespace).name;
        if live(cluster, id) && namespaces.contains(ns) {
            reps.entry(cluster.workload_key(id)).or_insert(id);
        }
    }
    let name = WorkloadKey::to_string;
    let key_of = |ip: IpAddr, at: Option<Timestamp>| match endpoint(cluster, ip, at) {
        AddressHolder::Pod(p) => Some(cluster.workload_key(p)),
        _ => None,
    };
    let mut observed: BTreeSet<(WorkloadKey, WorkloadKey, u16, Protocol)> = BTreeSet::new();
    let mut reached: BTreeMap<WorkloadKey, BTreeSet<Port>> = BTreeMap::new();
    for r in records.iter().filter(|r| is_traffic(r)) {
        let targets: Vec<(IpAddr, u16)> = if r.dst.identity.backends.is_empty() {
            vec![(r.dst.ip, r.dst.port.unwrap_or(0))]
        } else {
            r.dst
                .identity
                .backends
                .iter()
                .map(|b| (b.ip, b.port.unwrap_or(0)))
                .collect()
        };
        for (ip, port) in targets {
            if let (Some(s), Some(d)) = (key_of(r.src.ip, r.first_seen), key_of(ip, r.first_seen)) {
                reached
                    .entry(d.clone())
                    .or_default()
                    .insert((r.protocol, port));
                observed.insert((s, d, port, r.protocol));
            }
        }
    }
    let mut out = Vec::new();
    for (dw, &d) in &reps {
        let mut ports: BTreeSet<Port> = cluster
            .pod(d)
            .ports
            .iter()
            .map(|c| (c.protocol, c.port))
            .collect();
        ports.extend(reached.get(dw).into_iter().flatten().copied());
        for (sw, &s) in &reps {
            if sw == dw {
                continue;
            }
            let (Some(&src), Some(&dst)) = (cluster.pod(s).ips.first(), cluster.pod(d).ips.first())
            else {
                continue;
            };
            for &(protocol, port) in &ports {
                let c = policy::engine::Connection {
                    src,
                    dst,
                    port,
                    protocol,
                    at: None,
                };
                if engine.allows(&c)
                    && !observed.contains(&(sw.clone(), dw.clone(), port, protocol))
                {
                    out.push((name(sw), name(dw), port, protocol));
                }
            }
        }
    }
    out
}

/// Namespaces the suggestion writes policies for.
pub fn namespaces_of(s: &Suggestion) -> BTreeSet<String> {
    s.policies
        .iter()
        .filter_map(|p| p.metadata.namespace.clone())
        .collect()
}
