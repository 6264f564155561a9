//! Which pods and nodes each cluster rule's peers name, worked out once when the engine is
//! built: a verdict then tests bits instead of matching selectors, and passes over a policy
//! none of whose rules can name the other end. The bits are kept by remote pod (one row of
//! every rule, and one of every policy direction, per pod), so the checks of one verdict read
//! one or two cache lines whatever the number of policies.
use crate::{
    cluster::{AddressHolder, Cluster},
    policy::{
        clusterwide::{ClusterPeer, ClusterPolicy},
        Direction,
    },
};

/// Rows of bits in one allocation: `rows` rows of `width` bits.
#[derive(Debug, Default)]
struct Matrix {
    words: Vec<u64>,
    stride: usize,
}

impl Matrix {
    fn new(rows: usize, width: usize) -> Self {
        let stride = width.div_ceil(64);
        Matrix {
            words: vec![0; rows * stride],
            stride,
        }
    }

    fn set(&mut self, row: usize, bit: usize) {
        self.words[row * self.stride + bit / 64] |= 1 << (bit % 64);
    }

    fn get(&self, row: usize, bit: usize) -> bool {
        self.words
            .get(row * self.stride + bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }
}

/// What the cluster policies' rules name, by remote.
#[derive(Debug, Default)]
pub(super) struct PeerIndex {
    /// The first global rule number of each (policy, direction).
    base: Vec<[usize; 2]>,
    /// By pod: which rules name it by a namespaces or pods peer (bit = global rule number).
    pod_rules: Matrix,
    /// By pod: which rules have a `networks` peer holding one of its addresses (which one
    /// the connection uses is checked then).
    pod_nets: Matrix,
    /// By pod: which policy directions have a rule of either kind (bit = policy * 2 + dir).
    pod_any: Matrix,
    /// By node: the same three, for `nodes` and `networks` peers.
    node_rules: Matrix,
    node_nets: Matrix,
    node_any: Matrix,
    /// By rule: it has `networks` peers; `domainNames` peers.
    nets: Vec<bool>,
    domains: Vec<bool>,
    /// By policy direction: one of its rules has `networks` peers; `domainNames` peers.
    nets_any: Vec<bool>,
    domains_any: Vec<bool>,
    /// By policy direction: what kinds of remote it can name at all ([`REACH_POD`], ...).
    reach: Vec<u8>,
}

/// Kinds of remote a policy direction (or a list of them) can name.
pub(super) const REACH_POD: u8 = 1;
pub(super) const REACH_NODE: u8 = 2;
pub(super) const REACH_EXTERNAL: u8 = 4;

/// The bit of [`REACH_POD`], ... for a remote.
pub(super) fn reach_of(remote: AddressHolder) -> u8 {
    match remote {
        AddressHolder::Pod(_) => REACH_POD,
        AddressHolder::Node(_) => REACH_NODE,
        AddressHolder::External(_) => REACH_EXTERNAL,
    }
}

impl PeerIndex {
    pub(super) fn build(cluster: &Cluster, policies: &[ClusterPolicy]) -> Self {
        let mut base = Vec::with_capacity(policies.len());
        let mut rules = 0;
        for p in policies {
            let ingress = rules;
            rules += p.ingress.len();
            base.push([ingress, rules]);
            rules += p.egress.len();
        }
        let (pods, nodes) = (cluster.pods().len(), cluster.nodes().len());
        let dirs = policies.len() * 2;
        let mut ix = PeerIndex {
            base,
            pod_rules: Matrix::new(pods, rules),
            pod_any: Matrix::new(pods, dirs),
            pod_nets: Matrix::new(pods, rules),
            node_rules: Matrix::new(nodes, rules),
            node_nets: Matrix::new(nodes, rules),
            node_any: Matrix::new(nodes, dirs),
            nets: vec![false; rules],
            domains: vec![false; rules],
            nets_any: vec![false; dirs],
            domains_any: vec![false; dirs],
            reach: vec![0; dirs],
        };
        for (pi, p) in policies.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let pd = pi * 2 + dir as usize;
                for (ri, rule) in p.rules(dir).iter().enumerate() {
                    let g = ix.base[pi][dir as usize] + ri;
                    for peer in &rule.peers {
                        ix.add(cluster, peer, g, pd);
                    }
                }
            }
        }
        ix
    }

    fn add(&mut self, cluster: &Cluster, peer: &ClusterPeer, rule: usize, pd: usize) {
        match peer {
            ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } => {
                for id in cluster.pod_ids() {
                    let pod = cluster.pod(id);
                    let ns = &cluster.namespace(pod.namespace).labels;
                    // hostNetwork pods are their node's address: pod peers never name them.
                    let hit = !pod.host_network
                        && match peer {
                            ClusterPeer::Namespaces(s) => s.matches(ns),
                            ClusterPeer::Pods { namespaces, pods } => {
                                namespaces.matches(ns) && pods.matches(&*pod.labels)
                            }
                            _ => false,
                        };
                    if hit {
                        self.pod_rules.set(id.0 as usize, rule);
                        self.pod_any.set(id.0 as usize, pd);
                        self.reach[pd] |= REACH_POD;
                    }
                }
            }
            ClusterPeer::Nodes(s) => {
                for (i, n) in cluster.nodes().iter().enumerate() {
                    if s.matches(&n.labels) {
                        self.node_rules.set(i, rule);
                        self.node_any.set(i, pd);
                        self.reach[pd] |= REACH_NODE;
                    }
                }
            }
            ClusterPeer::Networks(nets) => {
                self.nets[rule] = true;
                self.nets_any[pd] = true;
                self.reach[pd] |= REACH_EXTERNAL;
                let held = |ips: &[std::net::IpAddr]| {
                    ips.iter().any(|ip| nets.iter().any(|n| n.contains(ip)))
                };
                for id in cluster.pod_ids() {
                    if held(&cluster.pod(id).ips) {
                        self.pod_nets.set(id.0 as usize, rule);
                        self.pod_any.set(id.0 as usize, pd);
                        self.reach[pd] |= REACH_POD;
                    }
                }
                for (i, n) in cluster.nodes().iter().enumerate() {
                    if held(&n.ips) {
                        self.node_nets.set(i, rule);
                        self.node_any.set(i, pd);
                        self.reach[pd] |= REACH_NODE;
                    }
                }
            }
            ClusterPeer::DomainNames(_) => {
                self.domains[rule] = true;
                self.domains_any[pd] = true;
                self.reach[pd] |= REACH_POD | REACH_NODE | REACH_EXTERNAL;
            }
        }
    }

    /// What kinds of remote policy `pi`'s direction `dir` can name.
    pub(super) fn reach(&self, pi: u32, dir: Direction) -> u8 {
        self.reach[pi as usize * 2 + dir as usize]
    }

    /// Whether a rule of policy `pi`'s direction `dir` could name `remote`: false lets the
    /// whole policy be passed over.
    pub(super) fn may_name(&self, pi: u32, dir: Direction, remote: AddressHolder) -> bool {
        let pd = pi as usize * 2 + dir as usize;
        self.domains_any[pd]
            || match remote {
                AddressHolder::Pod(id) => self.pod_any.get(id.0 as usize, pd),
                AddressHolder::Node(id) => self.node_any.get(id.0 as usize, pd),
                AddressHolder::External(_) => self.nets_any[pd],
            }
    }

    /// Whether rule `ri` of policy `pi`'s direction `dir` names `remote` by its namespaces,
    /// pods or nodes peers: `Some(true)` yes, `Some(false)` no, `None` when its networks or
    /// domainNames peers might (look at them, with the connection's address).
    pub(super) fn names(
        &self,
        pi: u32,
        dir: Direction,
        ri: usize,
        remote: AddressHolder,
    ) -> Option<bool> {
        let g = self.base[pi as usize][dir as usize] + ri;
        let (named, in_nets) = match remote {
            AddressHolder::Pod(id) => (
                self.pod_rules.get(id.0 as usize, g),
                self.pod_nets.get(id.0 as usize, g),
            ),
            AddressHolder::Node(id) => (
                self.node_rules.get(id.0 as usize, g),
                self.node_nets.get(id.0 as usize, g),
            ),
            AddressHolder::External(_) => (false, self.nets[g]),
        };
        if named {
            Some(true)
        } else if in_nets || self.domains[g] {
            None
        } else {
            Some(false)
        }
    }
}
