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
    #[error("{object}: an object needs a kind and metadata.name")]
    Unnamed { object: String },
    #[error("{object}: not an object: {error}")]
    NotAnObject {
        object: String,
        error: serde_json::Error,
    },
    #[error("{object}: its owner {kind} {name} is not in the snapshot, and only a {} can be made in its place", plan::MADE_KINDS.join(", "))]
    OwnerMissing {
        object: String,
        kind: String,
        name: String,
    },
    #[error("{object}: {action}")]
    Api {
        object: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("Namespace {namespace} was still being deleted after {limit:?}; is kube-controller-manager running?")]
    StillTerminating { namespace: String, limit: Duration },
    #[error("the endpointslice controller did not give Service {service} its {want} endpoints within {limit:?} (it has {got}); is kube-controller-manager running?")]
    Endpoints {
        service: String,
        want: usize,
        got: usize,
        limit: Duration,
    },
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
                Err(source) => return Err(failed(shown(k), "deleting it")(source)),
            }
        }
        let namespaces: Api<DynamicObject> = Api::all_with(client.clone(), &namespace_resource());
        for (name, before) in &self.relabelled {
            let now = namespaces
                .get(name)
                .await
                .map_err(failed(format!("Namespace {name}"), "reading it"))?;
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
                .map_err(failed(format!("Namespace {name}"), "restoring its labels"))?;
        }
        Ok(())
    }
}

/// The error of a failed request about `object`.
fn failed(
    object: impl Into<String>,
    action: &'static str,
) -> impl FnOnce(kube::Error) -> PublishError {
    let object = object.into();
    move |source| PublishError::Api {
        object,
        action,
        source,
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
                    .map_err(failed(
                        shown(&k),
                        "finding its resource (is its CRD installed?)",
                    ))?;
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
            serde_json::from_value(object).map_err(|error| PublishError::NotAnObject {
                object: shown(&k),
                error,
            })?;
        let err = |action: &'static str| failed(shown(&k), action);
        if k.1 == "Namespace" {
            wait_until_terminated(&api, &k.2).await?;
        }
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
/// How long a namespace of an earlier run may take to finish terminating.
const TERMINATING_WITHIN: Duration = Duration::from_secs(120);

/// Waits while namespace `name` is being deleted (an earlier run's, say): nothing can be
/// created in it until the namespace controller has emptied and removed it.
async fn wait_until_terminated(api: &Api<DynamicObject>, name: &str) -> Result<(), PublishError> {
    let started = std::time::Instant::now();
    loop {
        let existing = api
            .get_opt(name)
            .await
            .map_err(failed(format!("Namespace {name}"), "reading it"))?;
        match existing {
            Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
                if started.elapsed() > TERMINATING_WITHIN {
                    return Err(PublishError::StillTerminating {
                        namespace: name.to_owned(),
                        limit: TERMINATING_WITHIN,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return Ok(()),
        }
    }
}

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
            .map_err(failed(
                format!("Service {ns}/{name}"),
                "listing its EndpointSlices",
            ))?
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

mod plan;
#[cfg(test)]
mod tests;

use plan::{labels, shown, Key};
pub use plan::{plan, Item};
