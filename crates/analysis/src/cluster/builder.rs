//! Building the model: objects collected, then indexed once.
use super::*;

/// Collects objects, then indexes them. Pods name their namespace and node by name; missing
/// namespaces are created with just their name label (a snapshot of pods only is usable).
#[derive(Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    /// Namespaces declared by a Namespace object (not just named by a pod).
    declared: std::collections::HashSet<NsId>,
    /// Let a newer pod take over an address another still holds (see [`Self::handover`]).
    handover: bool,
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `true`, an address claimed while another pod still holds it passes to the pod
    /// that started last instead of failing: the old holder must have released it, only the
    /// news of its deletion has not arrived yet. For live data; snapshots keep the check.
    pub fn handover(&mut self, on: bool) {
        self.handover = on;
    }

    pub fn namespace(&mut self, name: &str, mut labels: Labels) -> Result<NsId, ModelError> {
        labels
            .entry(NAMESPACE_NAME_LABEL.into())
            .or_insert_with(|| name.into());
        let id = self.ns_or_implicit(name);
        if !self.declared.insert(id) {
            return Err(ModelError::Duplicate {
                kind: "Namespace",
                name: name.into(),
            });
        }
        // An earlier pod may have created it implicitly: the real labels win.
        self.cluster.namespaces[id.0 as usize].labels = labels;
        Ok(id)
    }

    fn ns_or_implicit(&mut self, name: &str) -> NsId {
        match self.cluster.ns_by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = NsId(self.cluster.namespaces.len() as u32);
                let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]);
                self.cluster.namespaces.push(Namespace {
                    name: name.into(),
                    labels,
                });
                self.cluster.ns_by_name.insert(name.into(), id);
                self.cluster.pods_by_ns.push(Vec::new());
                id
            }
        }
    }

    pub fn node(
        &mut self,
        name: &str,
        ips: Vec<IpAddr>,
        labels: Labels,
    ) -> Result<NodeId, ModelError> {
        if self.cluster.node_by_name.contains_key(name) {
            return Err(ModelError::Duplicate {
                kind: "Node",
                name: name.into(),
            });
        }
        let id = NodeId(self.cluster.nodes.len() as u32);
        for ip in &ips {
            self.claim(
                *ip,
                Tenure {
                    from: None,
                    until: None,
                    who: AddressHolder::Node(id),
                },
                "Node",
                name,
            )?;
        }
        self.cluster.nodes.push(Node {
            name: name.into(),
            ips,
            labels,
        });
        self.cluster.node_by_name.insert(name.into(), id);
        Ok(id)
    }

    /// Adds a pod. Its node is created (without addresses) if unknown.
    pub fn pod(&mut self, p: NewPod) -> Result<PodId, ModelError> {
        let (name, uid) = (p.name.into(), p.uid.into());
        self.shared_pod(p, name, uid)
    }

    /// [`Self::pod`], with its name and UID as already held elsewhere (the objects store).
    pub fn shared_pod(
        &mut self,
        p: NewPod,
        name: Arc<str>,
        uid: Arc<str>,
    ) -> Result<PodId, ModelError> {
        let ns = self.ns_or_implicit(p.namespace);
        let full = format!("{}/{}", p.namespace, p.name);
        let node = match p.node {
            Some(n) => Some(match self.cluster.node_by_name.get(n) {
                Some(id) => *id,
                None => self.node(n, Vec::new(), Labels::new())?,
            }),
            None => None,
        };
        // A deleted pod may share its name with the one that replaced it (StatefulSets).
        let clash = self.cluster.pods_by_ns[ns.0 as usize].iter().any(|id| {
            let q = &self.cluster.pods[id.0 as usize];
            *q.name == *p.name && q.gone.is_none() && p.gone.is_none()
        });
        if clash {
            return Err(ModelError::Duplicate {
                kind: "Pod",
                name: full,
            });
        }
        let id = PodId(self.cluster.pods.len() as u32);
        let pod = Pod {
            namespace: ns,
            name,
            uid,
            labels: p.labels,
            owner: p.owner,
            created: p.created,
            gone: p.gone,
            ips: p.ips,
            node,
            host_network: p.host_network,
            phase: p.phase,
            ports: p.ports,
        };
        // hostNetwork pods use their node's addresses; finished pods hold none.
        let holds = !pod.ips.is_empty()
            && !pod.host_network
            && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed);
        if holds {
            for ip in &pod.ips {
                self.claim(
                    *ip,
                    Tenure {
                        from: pod.created,
                        until: pod.gone,
                        who: AddressHolder::Pod(id),
                    },
                    "Pod",
                    &full,
                )?;
            }
        }
        self.cluster.pods.push(pod);
        self.cluster.pods_by_ns[ns.0 as usize].push(id);

        Ok(id)
    }

    /// Records the controller of a ReplicaSet or Job, for workload resolution.
    pub fn owner(&mut self, namespace: &str, kind: &str, name: &str, owner: OwnerRef) {
        let ns = self.ns_or_implicit(namespace);
        let owned = OwnerRef {
            kind: kind.into(),
            name: name.into(),
        };
        self.cluster.owners.insert((ns, owned), owner);
    }

    pub fn service(&mut self, namespace: &str, service: impl FnOnce(NsId) -> Service) -> ServiceId {
        let ns = self.ns_or_implicit(namespace);
        let id = ServiceId(self.cluster.services.len() as u32);
        let service = service(ns);
        for ip in &service.cluster_ips {
            self.cluster.service_by_ip.insert(canonical(*ip), id);
        }
        self.cluster.services.push(service);
        id
    }

    /// Adds an EndpointSlice's backends to service `namespace/name` (ignored if unknown).
    pub fn endpoints(&mut self, namespace: &str, service: &str, group: EndpointGroup) {
        let Some(ns) = self.cluster.namespace_id(namespace) else {
            return;
        };
        if let Some(s) = self
            .cluster
            .services
            .iter_mut()
            .find(|s| s.namespace == ns && s.name == service)
        {
            s.endpoints.push(group);
        }
    }

    /// Records a tenure; two open-ended tenures of one address are a contradiction unless
    /// handover is on.
    fn claim(
        &mut self,
        ip: IpAddr,
        tenure: Tenure,
        kind: &'static str,
        name: &str,
    ) -> Result<(), ModelError> {
        let ip = canonical(ip);
        if tenure.until.is_none() && !self.handover {
            let open = self
                .cluster
                .by_ip
                .get(&ip)
                .and_then(|ts| ts.as_slice().iter().find(|t| t.until.is_none()).copied());
            if let Some(other) = open {
                let other = match other.who {
                    AddressHolder::Pod(p) => format!("Pod {}", self.cluster.pod_name(p)),
                    AddressHolder::Node(n) => format!("Node {}", self.cluster.node(n).name),
                    AddressHolder::External(_) => String::new(),
                };
                return Err(ModelError::AddressClash {
                    kind,
                    name: name.into(),
                    ip,
                    other,
                });
            }
        }
        match self.cluster.by_ip.entry(ip) {
            std::collections::hash_map::Entry::Occupied(mut held) => held.get_mut().push(tenure),
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(Tenures::One(tenure));
            }
        }
        Ok(())
    }

    pub fn build(mut self) -> Cluster {
        let c = &mut self.cluster;
        c.pods.shrink_to_fit();
        c.by_ip.shrink_to_fit();
        c.pods_by_ns.iter_mut().for_each(Vec::shrink_to_fit);
        self.cluster
    }
}
