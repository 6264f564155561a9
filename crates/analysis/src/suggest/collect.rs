//! Collecting: attributed records that got through, as edges per workload (direction,
//! peer, port), with the evidence behind each.
use super::*;

pub(super) struct Suggester<'a> {
    cluster: &'a Cluster,
    options: &'a Options,
    /// Workload -> its pods (all the model knows of, deleted ones included).
    pods: BTreeMap<WorkloadKey, Vec<PodId>>,
    selectors: BTreeMap<WorkloadKey, (Labels, bool)>,
    pub(super) edges: BTreeMap<WorkloadKey, Edges>,
}

impl<'a> Suggester<'a> {
    pub(super) fn new(cluster: &'a Cluster, options: &'a Options) -> Self {
        let mut pods: BTreeMap<WorkloadKey, Vec<PodId>> = BTreeMap::new();
        for id in cluster.pod_ids() {
            let p = cluster.pod(id);
            if p.host_network {
                continue;
            }
            pods.entry(cluster.workload_key(id)).or_default().push(id);
        }
        Self {
            cluster,
            options,
            pods,
            selectors: BTreeMap::new(),
            edges: BTreeMap::new(),
        }
    }

    /// The workload's selector, and whether it selects exactly its pods.
    pub(super) fn selector(&mut self, w: &WorkloadKey) -> (Labels, bool) {
        if let Some(s) = self.selectors.get(w) {
            return s.clone();
        }
        let s = stable_selector(self.cluster, &self.pods[w]);
        self.selectors.insert(w.clone(), s.clone());
        s
    }

    fn pod_peer(&mut self, pod: PodId) -> Peer {
        let w = self.cluster.workload_key(pod);
        let (selector, _) = self.selector(&w);
        Peer::Pods {
            what: w.to_string(),
            namespace: w.namespace,
            selector,
        }
    }

    /// The peer an address stands for, seen from `local` (a pod of the workload getting
    /// the rule); `None` when no rule is needed (the pod's own node).
    fn peer(&mut self, ip: IpAddr, at: Option<Timestamp>, local: PodId) -> Option<Peer> {
        match endpoint(self.cluster, ip, at) {
            AddressHolder::Pod(p) if !self.cluster.pod(p).host_network => Some(self.pod_peer(p)),
            AddressHolder::Pod(p) => self.node_peer(ip, self.cluster.pod(p).node, local),
            AddressHolder::Node(n) => self.node_peer(ip, Some(n), local),
            AddressHolder::External(_) => Some(Peer::Block {
                cidr: host_net(ip, self.options.cidr_aggregate),
                except: Vec::new(),
                note: None,
            }),
        }
    }

    fn node_peer(
        &self,
        ip: IpAddr,
        node: Option<crate::cluster::NodeId>,
        local: PodId,
    ) -> Option<Peer> {
        if node.is_some() && self.cluster.pod(local).node == node {
            return None;
        }
        let name = node.map(|n| self.cluster.node(n).name.clone());
        Some(Peer::Block {
            cidr: IpNet::from(ip),
            except: Vec::new(),
            note: Some(match name {
                Some(n) => format!("{ip} is node {n} (host network: kubelet, hostNetwork pods)"),
                None => format!("{ip} is a node address"),
            }),
        })
    }

    fn add(&mut self, w: WorkloadKey, dir: Direction, peer: Peer, port: Port, r: &FlowRecord) {
        let edges = self.edges.entry(w).or_default();
        let side = match dir {
            Direction::Ingress => &mut edges.ingress,
            Direction::Egress => &mut edges.egress,
        };
        side.entry(peer)
            .or_default()
            .entry(port)
            .or_default()
            .add(r);
    }

    /// One record that got through: an ingress edge for the responder's workload and an
    /// egress edge for the initiator's.
    pub(super) fn record(&mut self, r: &FlowRecord) {
        let at = r.first_seen;
        let dst_port = r.dst.port.unwrap_or(0);
        // The responders: backends behind a service address, else the address itself.
        let targets: Vec<(IpAddr, u16)> = if r.dst.identity.backends.is_empty() {
            vec![(r.dst.ip, dst_port)]
        } else {
            r.dst
                .identity
                .backends
                .iter()
                .map(|b| (b.ip, b.port.unwrap_or(dst_port)))
                .collect()
        };
        let src = match endpoint(self.cluster, r.src.ip, at) {
            AddressHolder::Pod(p) if !self.cluster.pod(p).host_network => Some(p),
            _ => None,
        };
        let service = r.dst.identity.service.clone();
        for (ip, port) in targets {
            let dst = match endpoint(self.cluster, ip, at) {
                AddressHolder::Pod(p) if !self.cluster.pod(p).host_network => Some(p),
                _ => None,
            };
            if let (Some(s), Some(d)) = (src, dst) {
                if s == d {
                    continue;
                }
            }
            if let Some(d) = dst {
                if let Some(peer) = self.peer(r.src.ip, at, d) {
                    let key = self.cluster.workload_key(d);
                    self.add(key, Direction::Ingress, peer, (r.protocol, port), r);
                }
            }
            if let Some(s) = src {
                let peer = match (&service, dst) {
                    // DNS: the service's own selector, which is what the DNS pods carry.
                    (Some(svc), Some(_)) if port == 53 || dst_port == 53 => {
                        self.service_peer(svc).or_else(|| self.peer(ip, at, s))
                    }
                    // Services without pods (the API server): their endpoints' addresses.
                    (Some(svc), None) => Some(Peer::Block {
                        cidr: IpNet::from(ip),
                        except: Vec::new(),
                        note: Some(format!("{ip} is an endpoint of service {svc}")),
                    }),
                    _ => self.peer(ip, at, s),
                };
                if let Some(peer) = peer {
                    let key = self.cluster.workload_key(s);
                    self.add(key, Direction::Egress, peer, (r.protocol, port), r);
                }
            }
        }
    }

    /// `namespace/name`'s pods by the service's `spec.selector`.
    fn service_peer(&self, svc: &str) -> Option<Peer> {
        let (ns, name) = svc.split_once('/')?;
        let s = self
            .cluster
            .services()
            .iter()
            .find(|s| s.name == name && self.cluster.namespace(s.namespace).name == ns)?;
        let selector = s.selector.clone().filter(|sel| !sel.is_empty())?;
        Some(Peer::Pods {
            namespace: ns.to_owned(),
            selector,
            what: format!("service {svc}"),
        })
    }
}
