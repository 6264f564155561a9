//! The publishing plan, pure: objects ordered (owners first), stripped of what the server
//! sets, missing owners made, and the status a kubelet would write split off.
use super::*;
use flowpol_analysis::cluster::{OwnerRef, WorkloadKind};

/// The managed-by label of the EndpointSlices the endpointslice controller makes.
pub(super) const CONTROLLER_SLICES: &str = "endpointslice-controller.k8s.io";

/// Kinds made when a snapshot lacks an owner its objects name.
pub(super) const MADE_KINDS: [&str; 6] = [
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

/// Where an object goes, in the order written.
pub(super) fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        // Before pods: the endpointslice controller skips pods on nodes it does not know.
        "Node" => 1,
        "CronJob" | "Deployment" | "StatefulSet" | "DaemonSet" => 2,
        "ReplicaSet" | "Job" => 3,
        "Pod" => 4,
        _ => 5,
    }
}

/// (namespace, kind, name) of an object.
pub(super) type Key = (String, String, String);

/// One object to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The object without its status and the fields the server sets.
    pub object: Value,
    /// Written through the status subresource after the object is created.
    pub status: Option<Value>,
    /// Its owners (same namespace), whose uids fill `metadata.ownerReferences` once they
    /// exist: (kind, name, the reference as the snapshot had it).
    pub owners: Vec<(String, String, Value)>,
    /// Made because a dependent names it and the snapshot lacks it.
    pub made: bool,
}

impl Item {
    pub(super) fn key(&self) -> Key {
        key(&self.object)
    }
}

pub(super) fn key(o: &Value) -> Key {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        o["kind"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

pub(super) fn shown(k: &Key) -> String {
    if k.0.is_empty() {
        format!("{} {}", k.1, k.2)
    } else {
        format!("{} {}/{}", k.1, k.0, k.2)
    }
}

pub(super) fn labels(o: &Value) -> Map<String, Value> {
    o["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// A pod template carrying `labels`, with a container that is never run (nothing pulls it).
pub(super) fn template(labels: &Map<String, Value>, restart_never: bool) -> Value {
    let mut spec =
        json!({"containers": [{"name": "main", "image": "flowpol.invalid/placeholder"}]});
    if restart_never {
        spec["restartPolicy"] = json!("Never");
    }
    json!({"metadata": {"labels": labels}, "spec": spec})
}

/// The minimal valid `kind` named `name` whose pods carry `pod_labels`.
pub(super) fn make_owner(
    ns: &str,
    kind: &str,
    name: &str,
    pod_labels: &Map<String, Value>,
) -> Value {
    let mut labels = pod_labels.clone();
    // The controllers' own labels: not the owner's (a Job's are set by the server).
    for k in flowpol_analysis::cluster::CONTROLLER_LABELS {
        labels.remove(*k);
    }
    let selector = json!({"matchLabels": labels});
    let spec = match kind {
        "ReplicaSet" => {
            // A ReplicaSet's selector includes its pod-template-hash, as a Deployment makes it.
            let mut labels = labels.clone();
            if let Some(h) = pod_labels.get("pod-template-hash") {
                labels.insert("pod-template-hash".into(), h.clone());
            }
            json!({"replicas": 1, "selector": {"matchLabels": labels}, "template": template(&labels, false)})
        }
        "Deployment" | "StatefulSet" => {
            json!({"replicas": 1, "selector": selector, "template": template(&labels, false)})
        }
        "DaemonSet" => json!({"selector": selector, "template": template(&labels, false)}),
        "Job" => json!({"suspend": true, "template": template(&labels, true)}),
        _ => json!({"schedule": "@yearly", "suspend": true,
            "jobTemplate": {"spec": {"template": template(&labels, true)}}}),
    };
    let api_version = if matches!(kind, "Job" | "CronJob") {
        "batch/v1"
    } else {
        "apps/v1"
    };
    json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The owner a cluster would have given a made `kind`: a ReplicaSet named
/// `<deployment>-<pod-template-hash>` is a Deployment's.
pub(super) fn owner_of_made(
    kind: &str,
    name: &str,
    pod_labels: &Map<String, Value>,
) -> Option<OwnerRef> {
    let hash = pod_labels.get("pod-template-hash")?.as_str()?;
    let deployment = name.strip_suffix(&format!("-{hash}"))?;
    (kind == "ReplicaSet" && !deployment.is_empty()).then(|| OwnerRef {
        kind: WorkloadKind::Deployment,
        name: deployment.to_owned(),
    })
}

/// The controller references of an object: (kind, name, reference).
pub(super) fn owner_refs(o: &Value) -> Vec<(String, String, Value)> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["kind"].as_str()?.to_owned(),
                r["name"].as_str()?.to_owned(),
                r.clone(),
            ))
        })
        .collect()
}

/// `o` as it is written: no status, none of the fields the server sets.
pub(super) fn stripped(o: &Value) -> (Value, Option<Value>) {
    let mut o = o.clone();
    let status = o.as_object_mut().and_then(|m| m.remove("status"));
    if let Some(m) = o["metadata"].as_object_mut() {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "generation",
            "selfLink",
            "ownerReferences",
        ] {
            m.remove(f);
        }
    }
    (o, status)
}

/// A pod's status as its kubelet writes it: the snapshot's, with the conditions its phase
/// implies when the snapshot has none (Ready for a running pod, so it becomes an endpoint).
pub(super) fn pod_status(mut status: Value, scheduled: bool) -> Value {
    let has = status["conditions"]
        .as_array()
        .is_some_and(|c| !c.is_empty());
    if !has {
        let phase = status["phase"].as_str().unwrap_or("Pending");
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let conditions = match phase {
            "Running" => vec![
                cond("PodScheduled", true, None),
                cond("Initialized", true, None),
                cond("ContainersReady", true, None),
                cond("Ready", true, None),
            ],
            "Succeeded" | "Failed" => vec![
                cond("PodScheduled", true, None),
                cond("Initialized", true, Some("PodCompleted")),
                cond("ContainersReady", false, Some("PodCompleted")),
                cond("Ready", false, Some("PodCompleted")),
            ],
            _ if scheduled => vec![cond("PodScheduled", true, None)],
            _ => vec![],
        };
        status["conditions"] = json!(conditions);
    }
    status
}

/// Orders a snapshot's objects for writing, strips them, and adds the owners it lacks.
pub fn plan(objects: &[Value]) -> Result<Vec<Item>, PublishError> {
    let mut items: Vec<Item> = Vec::new();
    let mut present: BTreeSet<Key> = BTreeSet::new();
    for o in objects {
        let k = key(o);
        if k.1.is_empty() || k.2.is_empty() {
            return Err(PublishError::Unnamed { object: shown(&k) });
        }
        if k.1 == "EndpointSlice"
            && o["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                == CONTROLLER_SLICES
        {
            continue;
        }
        let (mut object, status) = stripped(o);
        let status = match (k.1.as_str(), status) {
            ("Pod", Some(s)) => {
                let scheduled = object["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                Some(pod_status(s, scheduled))
            }
            // A node's status is its kubelet's: written as the snapshot has it.
            ("Node", s) => s,
            // Every other status is a controller's or the server's to write.
            _ => None,
        };
        if k.1 == "Namespace" {
            // Its finalizers are the namespace controller's to set.
            object.as_object_mut().map(|m| m.remove("spec"));
        }
        present.insert(k);
        items.push(Item {
            object,
            status,
            owners: owner_refs(o),
            made: false,
        });
    }
    // Owners the snapshot lacks, made from what their dependents show, until none is missing.
    let mut i = 0;
    while i < items.len() {
        let ns = items[i].key().0;
        let dependent_labels = match items[i].key().1.as_str() {
            "Pod" => labels(&items[i].object),
            _ => items[i].object["spec"]["template"]["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        for (kind, name, _) in items[i].owners.clone() {
            let k = (ns.clone(), kind.clone(), name.clone());
            if present.contains(&k) {
                continue;
            }
            if !MADE_KINDS.contains(&kind.as_str()) {
                return Err(PublishError::OwnerMissing {
                    object: shown(&items[i].key()),
                    kind,
                    name,
                });
            }
            let object = make_owner(&ns, &kind, &name, &dependent_labels);
            let owners = owner_of_made(&kind, &name, &dependent_labels)
                .map(|o| {
                    let reference = json!({"apiVersion": "apps/v1", "kind": o.kind, "name": o.name,
                        "controller": true, "blockOwnerDeletion": true});
                    vec![(o.kind.to_string(), o.name, reference)]
                })
                .unwrap_or_default();
            present.insert(k);
            items.push(Item {
                object,
                status: None,
                owners,
                made: true,
            });
        }
        i += 1;
    }
    // Stable: within a rank, the snapshot's order.
    items.sort_by_key(|it| rank(it.object["kind"].as_str().unwrap_or_default()));
    Ok(items)
}
