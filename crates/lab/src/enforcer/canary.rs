//! Waiting for an enforcer to enforce, rather than sleeping: a connection the declared
//! policies deny and one they allow are tried again and again until the first fails and the
//! second gets through (a datagram: is answered). An enforcer that enforces nothing never gets there, and the wait
//! ends in an error.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use flowpol_analysis::{
    plan::ATTEMPT_TIMEOUT,
    policy::engine::{Connection, Engine},
    record::{Protocol, Verdict},
};
use flowpol_node::{client, netns::enter};

use super::EnforcerError;
use crate::{traffic, Lab};

/// How often the canaries are tried.
const EVERY: Duration = Duration::from_millis(100);

/// A connection (or datagram) whose fate shows whether the policies are in force.
#[derive(Clone, Debug)]
pub struct Canary {
    pub from: String,
    pub to: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub allowed: bool,
}

impl std::fmt::Display for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} ({}) {}, which the policies {}",
            self.from,
            self.to,
            self.addr,
            self.protocol,
            if self.allowed { "allow" } else { "deny" }
        )
    }
}

/// A denied and an allowed attempt between pods, over IPv4, to a port the destination
/// serves, as the declared policies (`engine`) judge them: TCP where they deny some, else
/// UDP. Policies that deny nothing leave only the allowed one: their enforcement cannot be
/// seen, and [`measurable`] says so.
pub fn choose(lab: &Lab, engine: &Engine) -> Result<Vec<Canary>, EnforcerError> {
    let pods: Vec<&crate::scenario::Host> =
        lab.resolved().hosts.iter().filter(|h| h.is_pod).collect();
    let pick = |allowed: bool, protocol: Protocol| {
        pods.iter().find_map(|from| {
            pods.iter().filter(|to| to.id != from.id).find_map(|to| {
                to.ports
                    .iter()
                    .filter(|&&(_, proto, reply)| {
                        proto == protocol && (reply || protocol == Protocol::TCP)
                    })
                    .find(|&&(port, _, _)| {
                        engine
                            .evaluate(&Connection {
                                src: IpAddr::V4(from.ipv4),
                                dst: IpAddr::V4(to.ipv4),
                                port,
                                protocol,
                                at: None,
                            })
                            .allowed
                            == allowed
                    })
                    .map(|&(port, _, _)| Canary {
                        from: from.id.clone(),
                        to: to.id.clone(),
                        addr: SocketAddr::new(IpAddr::V4(to.ipv4), port),
                        protocol,
                        allowed,
                    })
            })
        })
    };
    let canaries: Vec<Canary> = [false, true]
        .into_iter()
        .filter_map(|allowed| pick(allowed, Protocol::TCP).or_else(|| pick(allowed, Protocol::UDP)))
        .collect();
    if canaries.is_empty() {
        return Err(EnforcerError::NoCanary);
    }
    Ok(canaries)
}

/// Whether the canaries can show enforcement: one of them is denied.
pub fn measurable(canaries: &[Canary]) -> bool {
    canaries.iter().any(|c| !c.allowed)
}

/// Tries the canaries until each one's fate is what the policies say; returns when the
/// round that showed it began, after `since` (a denied canary fails only if the rules were
/// in place when it started, so this bounds the time to enforce from above, to within one
/// round). Until the lab listens, the canaries' destinations get listeners of their own for
/// the wait, gone before the lab's traffic starts.
pub fn wait(
    lab: &Lab,
    canaries: &[Canary],
    since: Instant,
    within: Duration,
    stop: &Arc<AtomicBool>,
) -> Result<Duration, EnforcerError> {
    let done = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    let mut served = std::collections::BTreeSet::new();
    // The lab's own listeners serve them once it listens.
    let unserved = if lab.listening() { &[][..] } else { canaries };
    for c in unserved {
        // Both canaries may go to one port.
        if !served.insert((&c.to, c.addr.port(), c.protocol)) {
            continue;
        }
        let ns = lab.namespace(&c.to).expect("a canary goes to a lab host");
        listeners.push(traffic::listen(
            ns.to_owned(),
            c.addr.port(),
            c.protocol,
            true,
            done.clone(),
        )?);
    }
    let outcome = loop {
        let round = Instant::now();
        let wrong: Vec<&Canary> = canaries
            .iter()
            .filter(|c| {
                let ns = lab
                    .namespace(&c.from)
                    .expect("a canary comes from a lab host");
                let got_through = matches!(
                    try_once(ns, c.addr, c.protocol),
                    Some(Verdict::Established | Verdict::Answered)
                );
                got_through != c.allowed
            })
            .collect();
        if wrong.is_empty() {
            break Ok(round.duration_since(since));
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break Err(EnforcerError::Interrupted);
        }
        if since.elapsed() > within {
            break Err(EnforcerError::NotEnforcing {
                within,
                canaries: wrong.iter().map(ToString::to_string).collect(),
                log: None,
            });
        }
        std::thread::sleep(EVERY);
    };
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in listeners {
        let _ = l.join();
    }
    outcome
}

/// One attempt from namespace `ns`, on a thread of its own (setns is per thread).
fn try_once(ns: &str, addr: SocketAddr, protocol: Protocol) -> Option<Verdict> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns).ok()?;
        Some(client::attempt(
            addr,
            protocol,
            ATTEMPT_TIMEOUT,
            client::Close::Graceful,
        ))
    })
    .join()
    .ok()
    .flatten()
}
