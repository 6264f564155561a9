//! Writes a snapshot's objects into an API server the way a cluster holds them, so a real
//! control plane (or a NetworkPolicy implementation reading it) sees the lab or a recorded
//! cluster as it would see its own: objects are created without the fields the server sets
//! (uid, resourceVersion, timestamps, managedFields), pods' and nodes' status is written
//! through the status subresource as their kubelet would (other status is the controllers'
//! or the server's), owner references are pointed at
//! the owners' new uids, and an owner a snapshot lacks (the ReplicaSet of a pod, its
//! Deployment) is created as the minimal object of its kind, so the garbage collector keeps
//! the pod and the model names the same workload. EndpointSlices that the endpointslice
//! controller makes are left to it; publishing waits until it has made them. What the
//! cluster already holds (the `kubernetes` Service, `default` namespaces) is kept, a
//! namespace's labels aside.
//!
//! [`plan`] (pure) orders and prepares; [`publish`] writes; [`Published::remove`] undoes.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use kube::{
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
        PatchParams, PostParams,
    },
    discovery::{self, Scope},
    Client,
};
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{object}: {problem}")]
    Invalid { object: String, problem: String },
    #[error("{object}: {action}")]
    Api {
        object: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the endpointslice controller did not give Service {service} its {want} endpoints within {limit:?} (it has {got}); is kube-controller-manager running?")]
    Endpoints {
        service: String,
        want: usize,
        got: usize,
        limit: Duration,
    },
}

/// The managed-by label of the EndpointSlices the endpointslice controller makes.
const CONTROLLER_SLICES: &str = "endpointslice-controller.k8s.io";

/// Kinds made when a snapshot lacks an owner its objects name.
const MADE_KINDS: [&str; 6] = [
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

/// Where an object goes, in the order written.
fn rank(kind: &str) -> u8 {
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
type Key = (String, String, String);

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
    fn key(&self) -> Key {
        key(&self.object)
    }
}

fn key(o: &Value) -> Key {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        o["kind"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn shown(k: &Key) -> String {
    if k.0.is_empty() {
        format!("{} {}", k.1, k.2)
    } else {
        format!("{} {}/{}", k.1, k.0, k.2)
    }
}

fn labels(o: &Value) -> Map<String, Value> {
    o["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// A pod template carrying `labels`, with a container that is never run (nothing pulls it).
fn template(labels: &Map<String, Value>, restart_never: bool) -> Value {
    let mut spec =
        json!({"containers": [{"name": "main", "image": "flowpol.invalid/placeholder"}]});
    if restart_never {
        spec["restartPolicy"] = json!("Never");
    }
    json!({"metadata": {"labels": labels}, "spec": spec})
}

/// The minimal valid `kind` named `name` whose pods carry `pod_labels`.
fn make_owner(ns: &str, kind: &str, name: &str, pod_labels: &Map<String, Value>) -> Value {
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
fn owner_of_made(
    kind: &str,
    name: &str,
    pod_labels: &Map<String, Value>,
) -> Option<(String, String)> {
    let hash = pod_labels.get("pod-template-hash")?.as_str()?;
    let deployment = name.strip_suffix(&format!("-{hash}"))?;
    (kind == "ReplicaSet" && !deployment.is_empty())
        .then(|| ("Deployment".to_owned(), deployment.to_owned()))
}

/// The controller references of an object: (kind, name, reference).
fn owner_refs(o: &Value) -> Vec<(String, String, Value)> {
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
fn stripped(o: &Value) -> (Value, Option<Value>) {
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
fn pod_status(mut status: Value, scheduled: bool) -> Value {
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
            return Err(PublishError::Invalid {
                object: shown(&k),
                problem: "an object needs a kind and metadata.name".into(),
            });
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
                return Err(PublishError::Invalid {
                    object: shown(&items[i].key()),
                    problem: format!(
                        "its owner {kind} {name} is not in the snapshot, and only a {} can be made in its place",
                        MADE_KINDS.join(", ")
                    ),
                });
            }
            let object = make_owner(&ns, &kind, &name, &dependent_labels);
            let owners = owner_of_made(&kind, &name, &dependent_labels)
                .map(|(k, n)| {
                    let reference = json!({"apiVersion": "apps/v1", "kind": k, "name": n,
                        "controller": true, "blockOwnerDeletion": true});
                    vec![(k, n, reference)]
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

/// What [`publish`] wrote, to undo it.
#[derive(Debug, Default)]
pub struct Published {
    /// Created, in order.
    created: Vec<(ApiResource, bool, Key)>,
    /// Namespaces the cluster had, with their labels before.
    relabelled: Vec<(String, Map<String, Value>)>,
    /// Objects the cluster held already and kept as they were.
    pub kept: Vec<String>,
}

impl Published {
    pub fn created(&self) -> usize {
        self.created.len()
    }

    /// Deletes what was created, newest first, and gives relabelled namespaces their labels
    /// back.
    pub async fn remove(&self, client: &Client) -> Result<(), PublishError> {
        for (ar, namespaced, k) in self.created.iter().rev() {
            let api = api(client, ar, *namespaced, &k.0);
            // At once: pods would wait for a kubelet to finish a graceful deletion.
            match api
                .delete(&k.2, &DeleteParams::background().grace_period(0))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(PublishError::Api {
                        object: shown(k),
                        action: "deleting it",
                        source,
                    })
                }
            }
        }
        let namespaces: Api<DynamicObject> = Api::all_with(client.clone(), &namespace_resource());
        for (name, before) in &self.relabelled {
            let now = namespaces
                .get(name)
                .await
                .map_err(|source| PublishError::Api {
                    object: format!("Namespace {name}"),
                    action: "reading it",
                    source,
                })?;
            let mut labels: Map<String, Value> = now
                .metadata
                .labels
                .unwrap_or_default()
                .into_keys()
                .map(|k| (k, Value::Null))
                .collect();
            labels.extend(before.clone());
            namespaces
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await
                .map_err(|source| PublishError::Api {
                    object: format!("Namespace {name}"),
                    action: "restoring its labels",
                    source,
                })?;
        }
        Ok(())
    }
}

fn namespace_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
}

fn api(client: &Client, ar: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
    if namespaced {
        Api::namespaced_with(client.clone(), ns, ar)
    } else {
        Api::all_with(client.clone(), ar)
    }
}

/// Whether `labels` has every pair of `selector`.
fn selects(selector: &Map<String, Value>, labels: &Map<String, Value>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Writes `objects` (a snapshot's) into the cluster; see the module's documentation. Waits
/// up to `endpoints_within` for the endpointslice controller to give each Service with a
/// selector one endpoint per running pod it selects.
pub async fn publish(
    client: &Client,
    objects: &[Value],
    endpoints_within: Duration,
) -> Result<Published, PublishError> {
    let items = plan(objects)?;
    let mut out = Published::default();
    let mut resources: HashMap<String, (ApiResource, bool)> = HashMap::new();
    let mut uids: BTreeMap<Key, String> = BTreeMap::new();
    for item in &items {
        let k = item.key();
        let api_version = item.object["apiVersion"].as_str().unwrap_or_default();
        let gv = format!("{api_version}/{}", k.1);
        if !resources.contains_key(&gv) {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let (ar, caps) =
                discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, &k.1))
                    .await
                    .map_err(|source| PublishError::Api {
                        object: shown(&k),
                        action: "finding its resource (is its CRD installed?)",
                        source,
                    })?;
            resources.insert(gv.clone(), (ar, caps.scope == Scope::Namespaced));
        }
        let (ar, namespaced) = resources[&gv].clone();
        let api = api(client, &ar, namespaced, &k.0);
        let mut object = item.object.clone();
        let refs: Vec<Value> = item
            .owners
            .iter()
            .filter_map(|(kind, name, reference)| {
                let uid = uids.get(&(k.0.clone(), kind.clone(), name.clone()))?;
                let mut r = reference.clone();
                r["uid"] = json!(uid);
                Some(r)
            })
            .collect();
        if !refs.is_empty() {
            object["metadata"]["ownerReferences"] = json!(refs);
        }
        let typed: DynamicObject =
            serde_json::from_value(object).map_err(|e| PublishError::Invalid {
                object: shown(&k),
                problem: format!("not an object: {e}"),
            })?;
        let err = |action: &'static str| {
            let object = shown(&k);
            move |source| PublishError::Api {
                object,
                action,
                source,
            }
        };
        let created = match api.create(&PostParams::default(), &typed).await {
            Ok(o) => {
                out.created.push((ar.clone(), namespaced, k.clone()));
                o
            }
            // The cluster's own (the `kubernetes` Service answers 422 for its address
            // before 409 for its name): kept.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                let Some(existing) = api
                    .get_opt(&k.2)
                    .await
                    .map_err(err("reading the cluster's own"))?
                else {
                    return Err(err("creating it")(kube::Error::Api(e)));
                };
                if k.1 == "Namespace" {
                    let before: Map<String, Value> = existing
                        .metadata
                        .labels
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect();
                    api.patch(
                        &k.2,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": labels(&item.object)}})),
                    )
                    .await
                    .map_err(err("merging its labels into the cluster's"))?;
                    out.relabelled.push((k.2.clone(), before));
                } else {
                    out.kept.push(shown(&k));
                }
                existing
            }
            Err(source) => return Err(err("creating it")(source)),
        };
        if let Some(uid) = created.metadata.uid.clone() {
            uids.insert(k.clone(), uid);
        }
        if let Some(status) = &item.status {
            api.patch_status(
                &k.2,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(err("writing its status"))?;
        }
    }
    wait_for_endpoints(client, &items, endpoints_within).await?;
    Ok(out)
}

/// Waits until every Service with a selector has as many endpoints as running pods (with an
/// address, on a node) it selects.
async fn wait_for_endpoints(
    client: &Client,
    items: &[Item],
    limit: Duration,
) -> Result<(), PublishError> {
    let pods: Vec<&Item> = items.iter().filter(|i| i.object["kind"] == "Pod").collect();
    for svc in items.iter().filter(|i| i.object["kind"] == "Service") {
        let Some(selector) = svc.object["spec"]["selector"]
            .as_object()
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let (ns, _, name) = svc.key();
        let want = pods
            .iter()
            .filter(|p| p.key().0 == ns && selects(selector, &labels(&p.object)))
            .filter(|p| {
                p.object["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            })
            .filter(|p| {
                let s = p.status.as_ref();
                s.and_then(|s| s["podIP"].as_str())
                    .is_some_and(|ip| !ip.is_empty())
                    && !matches!(
                        s.and_then(|s| s["phase"].as_str()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .count();
        let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
        let started = std::time::Instant::now();
        loop {
            let got: usize = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
                client.clone(),
                &ns,
            )
            .list(&params)
            .await
            .map_err(|source| PublishError::Api {
                object: format!("Service {ns}/{name}"),
                action: "listing its EndpointSlices",
                source,
            })?
            .items
            .iter()
            .map(|s| s.endpoints.len())
            .sum();
            if got >= want {
                break;
            }
            if started.elapsed() > limit {
                return Err(PublishError::Endpoints {
                    service: format!("{ns}/{name}"),
                    want,
                    got,
                    limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, owner: Option<(&str, &str)>, labels: Value, phase: &str) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": "old", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase, "podIP": "10.0.0.1"}});
        if let Some((kind, n)) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": "1", "controller": true}]);
        }
        p
    }

    #[test]
    fn a_pod_of_a_replicaset_the_snapshot_lacks_gets_it_and_its_deployment() {
        let items = plan(&[
            pod(
                "web-5c7b9-x",
                Some(("ReplicaSet", "web-5c7b9")),
                json!({"app": "web", "pod-template-hash": "5c7b9"}),
                "Running",
            ),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        ])
        .unwrap();
        let order: Vec<(String, String, bool)> = items
            .iter()
            .map(|i| (i.key().1, i.key().2, i.made))
            .collect();
        assert_eq!(
            order,
            vec![
                ("Namespace".into(), "shop".into(), false),
                ("Deployment".into(), "web".into(), true),
                ("ReplicaSet".into(), "web-5c7b9".into(), true),
                ("Pod".into(), "web-5c7b9-x".into(), false),
            ]
        );
        let (ns, deploy, rs, pod) = (&items[0], &items[1], &items[2], &items[3]);
        assert_eq!(
            ns.object.get("spec"),
            None,
            "the namespace controller's finalizers"
        );
        assert_eq!(ns.status, None, "a namespace's phase is the server's");
        assert_eq!(
            deploy.object["spec"]["selector"]["matchLabels"],
            json!({"app": "web"})
        );
        assert_eq!(
            rs.object["spec"]["selector"]["matchLabels"],
            json!({"app": "web", "pod-template-hash": "5c7b9"})
        );
        assert_eq!(rs.owners[0].0, "Deployment");
        assert_eq!(pod.owners[0].1, "web-5c7b9");
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "ownerReferences",
        ] {
            assert_eq!(pod.object["metadata"].get(f), None, "{f} is the server's");
        }
        let status = pod.status.as_ref().unwrap();
        let ready: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "True")
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            ready,
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        );
    }

    #[test]
    fn controller_slices_are_left_to_the_controller_and_unknown_owners_are_named() {
        let slice = |manager: &str| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "s", "namespace": "shop",
                    "labels": {"endpointslice.kubernetes.io/managed-by": manager}},
                "addressType": "IPv4", "endpoints": []})
        };
        let items = plan(&[slice(CONTROLLER_SLICES), slice("someone-else")]).unwrap();
        assert_eq!(items.len(), 1);
        let finished = plan(&[pod("m", None, json!({}), "Succeeded")]).unwrap();
        let ready = finished[0].status.as_ref().unwrap()["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "False");
        let err = plan(&[pod("x", Some(("Rollout", "r")), json!({}), "Running")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Pod shop/x: its owner Rollout r is not in the snapshot"),
            "{err}"
        );
    }
}
