//! The lab: a cluster stand-in made of network namespaces on one machine.
//!
//! A scenario becomes one namespace per pod (and per external host) on a bridge, listeners on
//! the declared ports, and nftables rules for the declared drops. The traffic plan then runs
//! while the probe records, and the records are checked against what the clients saw.
pub mod check;
pub mod conformance;
pub mod enforce;
pub mod enforcer;
pub mod in_cluster;
pub mod netns;
pub mod netstat;
pub mod nft;
pub mod objects;
pub mod probing;
pub mod run;
pub mod scenario;
pub mod traffic;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::AtomicBool, Arc},
    thread::JoinHandle,
};

use netns::{LabNet, NetError};
use scenario::Resolved;
use traffic::ClientSaw;

/// The shop scenario that `flowpol lab` runs when given none.
pub const EXAMPLE_SCENARIO: &str = include_str!("../scenarios/shop.yaml");

/// A running lab. Dropping it stops the listeners and deletes every namespace.
pub struct Lab {
    resolved: Resolved,
    /// host id -> namespace name
    namespaces: HashMap<String, String>,
    stop: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
    // Declared last: dropped after the listeners are joined.
    net: LabNet,
}

impl Lab {
    /// Creates namespaces, addresses, drop rules and listeners.
    pub fn up(resolved: Resolved) -> Result<Self, NetError> {
        let mut lab = Self::create(resolved)?;
        lab.listen()?;
        Ok(lab)
    }

    /// Creates namespaces, addresses and nftables rules, without listeners yet: what must
    /// exist before them (the probe, whose socket hooks learn each socket's namespace when
    /// it is created; a real enforcer) can start in between.
    pub fn create(resolved: Resolved) -> Result<Self, NetError> {
        let net = LabNet::create()?;
        let stop = Arc::new(AtomicBool::new(false));
        // From here on, an error drops `lab`, which stops what started and deletes the namespaces.
        let mut lab = Self {
            resolved,
            namespaces: HashMap::new(),
            stop,
            listeners: Vec::new(),
            net,
        };
        for host in lab.resolved.hosts.clone() {
            let ns = lab.net.add_host(host.ipv4, host.ipv6)?;
            let scripts = nft::render(&lab.resolved, &host.id)
                .into_iter()
                .chain(lab.resolved.enforced.get(&host.id).cloned());
            for script in scripts {
                netns::run(
                    "ip",
                    &["netns", "exec", &ns, "nft", "-f", "-"],
                    Some(&script),
                )?;
            }
            lab.namespaces.insert(host.id.clone(), ns);
        }
        Ok(lab)
    }

    /// Starts every host's listeners on its declared ports.
    pub fn listen(&mut self) -> Result<(), NetError> {
        for host in &self.resolved.hosts {
            let ns = &self.namespaces[&host.id];
            for (port, protocol, reply) in &host.ports {
                self.listeners.push(traffic::listen(
                    ns.clone(),
                    *port,
                    *protocol,
                    *reply,
                    self.stop.clone(),
                )?);
            }
        }
        Ok(())
    }

    /// Whether [`Lab::listen`] has started the listeners.
    pub fn listening(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// The namespace holding the bridge: where a real enforcer runs.
    pub fn node_namespace(&self) -> &str {
        self.net.node()
    }

    /// The network namespace (name under /run/netns) of host `id`.
    pub fn namespace(&self, id: &str) -> Option<&str> {
        self.namespaces.get(id).map(String::as_str)
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// The stop flag: set it (e.g. on Ctrl-C) and clients and listeners wind down.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the traffic plan, `settings.concurrency` items at a time (in order when 1); each
    /// item's clients run in its source's namespace. Outcomes come in plan order.
    pub fn run_traffic(&self) -> Result<Vec<ClientSaw>, NetError> {
        self.run_plan(&self.resolved)
    }

    /// Opens the connections of the items marked `held` and keeps them open until the
    /// returned value is dropped.
    pub fn hold(&self) -> Result<traffic::Held, NetError> {
        traffic::hold(&self.resolved, &self.namespaces)
    }

    /// Runs another plan's traffic (but its `held` items: see [`Lab::hold`]), with its settings, over this lab's hosts (the plan's
    /// hosts must be the lab's: the conformance cases share one model of pods).
    pub fn run_plan(&self, plan: &Resolved) -> Result<Vec<ClientSaw>, NetError> {
        let items: Vec<(usize, &scenario::Traffic)> = plan
            .scenario
            .traffic
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.held)
            .collect();
        let at_once = plan.scenario.settings.concurrency as usize;
        flowpol_node::client::batched(&items, at_once, |&(i, t)| {
            let ns = self
                .namespaces
                .get(&t.from)
                .ok_or_else(|| NetError::Command {
                    command: format!("traffic[{i}]"),
                    stderr: format!("`{}` is not a host of this lab", t.from),
                })?;
            traffic::run_item(plan, ns, i, t, &self.stop)
        })
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(NetError::Command {
                    command: "traffic".into(),
                    stderr: "a traffic runner panicked".into(),
                })
            })
        })
        .collect()
    }

    /// Host id -> its kernel's listener counters now.
    pub fn listen_counters(&self) -> Result<BTreeMap<String, netstat::ListenCounters>, NetError> {
        self.namespaces
            .iter()
            .map(|(id, ns)| Ok((id.clone(), netstat::read(ns)?)))
            .collect()
    }

    /// Netns inode -> host id, for every namespace of the lab (the node is `lab-node`).
    pub fn inodes(&self) -> HashMap<u32, String> {
        let mut map: HashMap<u32, String> = self
            .namespaces
            .iter()
            .filter_map(|(id, ns)| LabNet::inode(ns).map(|ino| (ino, id.clone())))
            .collect();
        if let Some(ino) = LabNet::inode(self.net.node()) {
            map.insert(ino, "lab-node".into());
        }
        map
    }

    pub fn prefix(&self) -> &str {
        self.net.prefix()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in self.listeners.drain(..) {
            let _ = l.join();
        }
    }
}
