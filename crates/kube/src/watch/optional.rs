//! Watchers of the kinds a cluster may not serve: network-policy-api's cluster-scoped
//! policies exist only where their CRDs are installed. Each one finds its kind by discovery
//! (the newest served version first); a kind not served is ready with no objects, and is
//! looked for again every [`RECHECK`], so installing the CRDs later is noticed, as is
//! removing them (the watch then fails with 404 and the kind goes back to absent).
use std::{sync::Arc, time::Duration};

use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    discovery, Api, Client,
};
use tokio::task::JoinHandle;

use flowpol_analysis::{
    cluster::objects::{Kind, Object},
    policy::clusterwide::api::Source,
    validation::{FieldError, Problem},
};

use super::{follow, Shared};

/// How often an absent kind is looked for again.
pub(super) const RECHECK: Duration = Duration::from_secs(10);

const GROUP: &str = "policy.networking.k8s.io";

/// The versions flowpol reads of each kind, newest first.
fn versions(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::ClusterNetworkPolicy => &["v1beta1", "v1alpha2"],
        _ => &["v1alpha1"],
    }
}

pub(super) fn spawn_cluster_policies(shared: &Arc<Shared>, client: Client) -> Vec<JoinHandle<()>> {
    [
        (
            Kind::ClusterNetworkPolicy,
            cnp_obj as fn(DynamicObject) -> Result<Object, FieldError>,
        ),
        (Kind::AdminNetworkPolicy, anp_obj),
        (Kind::BaselineAdminNetworkPolicy, banp_obj),
    ]
    .into_iter()
    .map(|(kind, convert)| {
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                match discover(&client, kind).await {
                    Ok(Some(resource)) => {
                        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                        shared.update(kind, |_, health| {
                            health.absent = false;
                            health.collection = api.resource_url().to_owned();
                        });
                        follow(&shared, kind, api, convert, |e| not_found(watch_cause(e))).await;
                        tracing::info!(%kind, "no longer served; looking for it again");
                    }
                    Ok(None) => {
                        let now = chrono::Utc::now();
                        shared.update(kind, |objects, health| {
                            objects.replace(kind, Vec::new(), now);
                            health.absent = true;
                            health.listed = true;
                        });
                        tokio::time::sleep(RECHECK).await;
                    }
                    Err(e) => {
                        shared.failed(kind, &format!("discovery: {e}"));
                        tokio::time::sleep(RECHECK).await;
                    }
                }
            }
        })
    })
    .collect()
}

/// The kind's resource in the newest served version, or `None` when no version is served.
async fn discover(client: &Client, kind: Kind) -> Result<Option<ApiResource>, kube::Error> {
    for version in versions(kind) {
        let gvk = GroupVersionKind::gvk(GROUP, version, kind.as_str());
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => return Ok(Some(resource)),
            Err(e) if not_found(Some(&e)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The group version is not served (404), or is served without the kind.
fn not_found(e: Option<&kube::Error>) -> bool {
    match e {
        // A group version not served answers a plain-text 404, not a Status.
        Some(kube::Error::Api(status)) => status.code == 404,
        Some(kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_))) => true,
        _ => false,
    }
}

fn watch_cause(e: &kube::runtime::watcher::Error) -> Option<&kube::Error> {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => Some(e),
        W::WatchError(_) | W::NoResourceVersion => None,
    }
}

fn cnp_obj(o: DynamicObject) -> Result<Object, FieldError> {
    decode("ClusterNetworkPolicy", o)
}

fn anp_obj(o: DynamicObject) -> Result<Object, FieldError> {
    decode("AdminNetworkPolicy", o)
}

fn banp_obj(o: DynamicObject) -> Result<Object, FieldError> {
    decode("BaselineAdminNetworkPolicy", o)
}

/// Reads an object as strictly as a snapshot's: a field flowpol does not know is refused
/// (the object is then counted as rejected), since ignoring it could change a verdict.
fn decode(kind: &str, o: DynamicObject) -> Result<Object, FieldError> {
    let value = serde_json::to_value(&o)
        .map_err(|e| FieldError::new(".", Problem::Unreadable(e.to_string())))?;
    let source = Source::decode(kind, value)
        .map_err(|e| FieldError::new(e.path, Problem::Unreadable(e.message)))?;
    Ok(Object::ClusterPolicy(Box::new(source)))
}
