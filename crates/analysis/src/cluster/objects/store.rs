//! The objects store: what the snapshot reader and the watchers hold, by kind and key,
//! built into the model on demand.
use super::*;

/// A pod's (namespace, name), sharing the stored pod's strings.
pub type PodKey = (Arc<str>, Arc<str>);

/// The kinds flowpol reads, one watcher each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    ReplicaSet,
    Job,
    NetworkPolicy,
    /// Served only where network-policy-api's CRDs are installed.
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ReplicaSet,
        Kind::Job,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    /// The kinds a cluster may lack (their CRDs are not installed everywhere).
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            Kind::ClusterNetworkPolicy
                | Kind::AdminNetworkPolicy
                | Kind::BaselineAdminNetworkPolicy
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every object of the cluster, by kind and key, plus recently deleted pods.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub namespaces: BTreeMap<String, Labels>,
    pub nodes: BTreeMap<String, NodeObj>,
    /// Boxed: the map's nodes then hold pointers, not half-empty room for whole pods.
    pub pods: BTreeMap<PodKey, Box<PodObj>>,
    pub services: BTreeMap<Key, ServiceObj>,
    pub slices: BTreeMap<Key, SliceObj>,
    /// (namespace, kind, name) of ReplicaSets and Jobs -> their controller.
    pub owners: BTreeMap<(String, String, String), OwnerRef>,
    pub policies: BTreeMap<Key, NetworkPolicy>,
    /// Cluster-scoped policies by (kind, name).
    pub cluster_policies: BTreeMap<(Kind, String), crate::policy::clusterwide::api::Source>,
    /// Deleted pods (and finished pods' running past) with the time they were seen gone,
    /// oldest first: flows seen while they held their addresses are still attributed to them.
    pub gone: VecDeque<(PodObj, Timestamp)>,
    /// One copy of each distinct label set and port list (pods of a template share them).
    label_sets: HashSet<Arc<LabelSet>>,
    port_lists: HashSet<Arc<[ContainerPort]>>,
    pod_owners: HashSet<Arc<OwnerRef>>,
    /// Namespace and node names pods refer to.
    names: HashSet<Arc<str>>,
}

/// The pooled copy of `value`, added to the pool if new.
fn intern<T: ?Sized + Eq + std::hash::Hash>(pool: &mut HashSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match pool.get(&value) {
        Some(shared) => shared.clone(),
        None => {
            pool.insert(value.clone());
            value
        }
    }
}

fn cluster_policy_kind(source: &crate::policy::clusterwide::api::Source) -> Kind {
    use crate::policy::clusterwide::api::Source;
    match source {
        Source::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        Source::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
        Source::BaselineAdminNetworkPolicy(_) => Kind::BaselineAdminNetworkPolicy,
    }
}

/// Whether a pod holds its addresses: finished pods have handed them back.
fn holds_ips(p: &PodObj) -> bool {
    !p.ips.is_empty() && !matches!(p.phase, PodPhase::Succeeded | PodPhase::Failed)
}

impl Objects {
    /// Adds or replaces an object. A pod that stops holding its addresses (it finished, or
    /// they changed) leaves its previous self among the gone, as of `at`.
    pub fn apply(&mut self, o: Object, at: Timestamp) {
        match o {
            Object::Namespace { name, labels } => {
                self.namespaces.insert(name, labels);
            }
            Object::Node { name, node } => {
                self.nodes.insert(name, node);
            }
            Object::Pod(mut p) => {
                p.labels = intern(&mut self.label_sets, p.labels);
                p.ports = intern(&mut self.port_lists, p.ports);
                p.owner = p.owner.map(|o| intern(&mut self.pod_owners, o));
                p.namespace = intern(&mut self.names, p.namespace);
                p.node = p.node.map(|n| intern(&mut self.names, n));
                let released = |old: &PodObj| {
                    holds_ips(old) && (old.uid != p.uid || !holds_ips(&p) || old.ips != p.ips)
                };
                let key = (p.namespace.clone(), p.name.clone());
                let old = self.pods.remove(&key).filter(|o| released(o));
                self.pods.insert(key, Box::new(p));
                if let Some(old) = old {
                    self.gone.push_back((*old, at));
                }
            }
            Object::Service {
                namespace,
                name,
                service,
            } => {
                self.services.insert((namespace, name), service);
            }
            Object::EndpointSlice {
                namespace,
                name,
                slice,
            } => {
                self.slices.insert((namespace, name), slice);
            }
            Object::Owned {
                namespace,
                kind,
                name,
                owner,
            } => match owner {
                Some(owner) => {
                    self.owners.insert((namespace, kind, name), owner);
                }
                None => {
                    self.owners.remove(&(namespace, kind, name));
                }
            },
            Object::NetworkPolicy(np) => {
                let key = (
                    np.metadata.namespace.clone().unwrap_or_default(),
                    np.metadata.name.clone().unwrap_or_default(),
                );
                self.policies.insert(key, *np);
            }
            Object::ClusterPolicy(source) => {
                let kind = cluster_policy_kind(&source);
                self.cluster_policies
                    .insert((kind, source.name().to_owned()), *source);
            }
        }
    }

    /// Removes the object of `kind` named `namespace/name` (`name` for cluster-scoped kinds);
    /// a pod moves to the gone, as of `at`.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str, at: Timestamp) {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            Kind::Namespace => {
                self.namespaces.remove(name);
            }
            Kind::Node => {
                self.nodes.remove(name);
            }
            Kind::Pod => {
                if let Some(p) = self.pods.remove(&(namespace.into(), name.into())) {
                    if holds_ips(&p) {
                        self.gone.push_back((*p, at));
                    }
                }
            }
            Kind::Service => {
                self.services.remove(&key);
            }
            Kind::EndpointSlice => {
                self.slices.remove(&key);
            }
            Kind::ReplicaSet | Kind::Job => {
                self.owners
                    .remove(&(key.0, kind.as_str().to_owned(), key.1));
            }
            Kind::NetworkPolicy => {
                self.policies.remove(&key);
            }
            Kind::ClusterNetworkPolicy
            | Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy => {
                self.cluster_policies.remove(&(kind, name.to_owned()));
            }
        }
    }

    /// Replaces every object of `kind` with `items`, a fresh full list (after a relist):
    /// pods missing from it were deleted while nobody watched, and go to the gone as of `at`.
    pub fn replace(&mut self, kind: Kind, items: Vec<Object>, at: Timestamp) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::Pod => {
                let listed: std::collections::HashSet<PodKey> = items
                    .iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some((p.namespace.clone(), p.name.clone())),
                        _ => None,
                    })
                    .collect();
                let vanished: Vec<PodKey> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for (ns, name) in vanished {
                    self.delete(Kind::Pod, &ns, &name, at);
                }
            }
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.slices.clear(),
            Kind::ReplicaSet | Kind::Job => self.owners.retain(|(_, k, _), _| k != kind.as_str()),
            Kind::NetworkPolicy => self.policies.clear(),
            Kind::ClusterNetworkPolicy
            | Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy => {
                self.cluster_policies.retain(|(k, _), _| *k != kind)
            }
        }
        for o in items {
            self.apply(o, at);
        }
    }

    /// Forgets pods gone before `before`, and label sets and port lists no pod uses.
    pub fn expire(&mut self, before: Timestamp) {
        while self.gone.front().is_some_and(|(_, at)| *at < before) {
            self.gone.pop_front();
        }
        // Held by the pool alone (models built earlier may hold more references: kept then).
        self.label_sets.retain(|l| Arc::strong_count(l) > 1);
        self.port_lists.retain(|p| Arc::strong_count(p) > 1);
        self.pod_owners.retain(|o| Arc::strong_count(o) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    /// How many objects of `kind` are held.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Node => self.nodes.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::ReplicaSet | Kind::Job => self
                .owners
                .keys()
                .filter(|(_, k, _)| k == kind.as_str())
                .count(),
            Kind::NetworkPolicy => self.policies.len(),
            Kind::ClusterNetworkPolicy
            | Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy => self
                .cluster_policies
                .keys()
                .filter(|(k, _)| *k == kind)
                .count(),
        }
    }

    /// The indexed model of these objects. A snapshot is one moment, so two running pods on
    /// one address contradict it; a live store (`handover`) can briefly hold both while
    /// events arrive, and the newer pod takes the address over.
    pub fn build(&self, handover: bool) -> Result<Cluster, ModelError> {
        let mut b = ClusterBuilder::new();
        b.handover(handover);
        for (name, labels) in &self.namespaces {
            b.namespace(name, labels.clone())?;
        }
        for (name, n) in &self.nodes {
            b.node(name, n.ips.clone(), n.labels.clone())?;
        }
        for ((ns, kind, name), owner) in &self.owners {
            b.owner(ns, kind, name, owner.clone());
        }
        let gone = self.gone.iter().map(|(p, at)| (p, Some(*at)));
        for (p, gone) in gone.chain(self.pods.values().map(|p| (&**p, None))) {
            b.shared_pod(
                NewPod {
                    namespace: &p.namespace,
                    name: &p.name,
                    uid: &p.uid,
                    labels: p.labels.clone(),
                    ips: p.ips.clone(),
                    node: p.node.as_deref(),
                    host_network: p.host_network,
                    phase: p.phase,
                    ports: p.ports.clone(),
                    owner: p.owner.clone(),
                    created: p.created,
                    gone,
                },
                p.name.clone(),
                p.uid.clone(),
            )?;
        }
        for ((ns, name), s) in &self.services {
            let s = s.clone();
            b.service(ns, |id| Service {
                namespace: id,
                name: name.clone(),
                cluster_ips: s.cluster_ips,
                selector: s.selector,
                ports: s.ports,
                endpoints: Vec::new(),
            });
        }
        for ((ns, _), slice) in &self.slices {
            if let Some(service) = &slice.service {
                b.endpoints(ns, service, slice.group.clone());
            }
        }
        Ok(b.build())
    }
}
