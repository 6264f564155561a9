//! The live cluster model: one kube-rs watcher per kind feeds the [`Objects`] store the
//! snapshot reader fills too, and the indexed [`Cluster`] is rebuilt from it when read after
//! a change. The only code that talks to the API server.
//!
//! Each watcher lists, then watches from the list's resourceVersion; kube-runtime resumes a
//! broken watch from the last resourceVersion it saw (bookmarks included), relists on
//! `410 Gone`, and backs off exponentially (0.8 s to 30 s, as client-go) while the API server
//! is unreachable. A relist replaces that kind's objects at once, so pods deleted while
//! nobody watched leave too (kept among the gone, for flows seen before). The model is ready
//! once every kind has been listed fully, and reports how long a kind has been failing.
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    core::PartialObjectMeta,
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Config, Resource, ResourceExt,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use flowpol_analysis::{
    cluster::{
        objects::{self, Kind, Object, Objects},
        Cluster, ModelError,
    },
    policy::clusterwide::api::Source as ClusterPolicySource,
    validation::FieldError,
};

mod optional;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no Kubernetes configuration: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client for the API server, and what it has seen of watches.
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    /// What the client was built from: the API server's address and trusted roots.
    pub config: Config,
    watches: WatchLog,
}

/// When a watch of each collection (`/api/v1/pods`) was last established: the API server
/// answered a watch request with 200. kube-runtime resumes a broken watch silently, and a
/// quiet kind then has no event to show that it recovered; this shows it.
#[derive(Clone, Default)]
struct WatchLog(Arc<Mutex<BTreeMap<String, Instant>>>);

impl WatchLog {
    fn established_since(&self, collection: &str, since: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
            .is_some_and(|t| *t >= since)
    }
}

impl<S> tower::Layer<S> for WatchLog {
    type Service = Recording<S>;

    fn layer(&self, inner: S) -> Recording<S> {
        Recording {
            inner,
            log: self.clone(),
        }
    }
}

/// The client's HTTP stack, noting each watch the server accepted in a [`WatchLog`].
#[derive(Clone)]
pub struct Recording<S> {
    inner: S,
    log: WatchLog,
}

impl<S, B, R> tower::Service<http::Request<B>> for Recording<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let uri = req.uri();
        let watch = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let collection = uri.path().to_owned();
        let log = self.log.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await?;
            if watch && r.status().is_success() {
                log.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(collection, Instant::now());
            }
            Ok(r)
        })
    }
}

/// Connects as kubectl would: `kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`,
/// else the in-cluster service account) and its `context` (else the current one).
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Connection, ConnectError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let shown = || path.display().to_string();
            let file = Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
                path: shown(),
                source,
            })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: shown(),
                    source,
                })?
        }
        (None, Some(_)) => {
            Config::from_kubeconfig(&options)
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into()),
                    source,
                })?
        }
        (None, None) => Config::infer().await.map_err(ConnectError::Infer)?,
    };
    let watches = WatchLog::default();
    let client = kube::client::ClientBuilder::try_from(config.clone())
        .map_err(ConnectError::Client)?
        .with_layer(&watches)
        .build();
    Ok(Connection {
        client,
        config,
        watches,
    })
}

/// How one kind's watcher is doing.
#[derive(Clone, Debug, Default)]
struct Health {
    listed: bool,
    lists: u64,
    events: u64,
    errors: u64,
    rejected: u64,
    last_error: Option<String>,
    failing_since: Option<Instant>,
    /// The collection its watcher watches (`/api/v1/pods`).
    collection: String,
    /// The API server does not serve the kind (an optional one: its CRD is not installed).
    absent: bool,
}

#[derive(Default)]
struct State {
    objects: Objects,
    health: BTreeMap<Kind, Health>,
    /// Bumped on every change to `objects`.
    version: u64,
    /// The model built at `version`.
    model: Option<(u64, Arc<Cluster>)>,
}

struct Shared {
    state: Mutex<State>,
    watches: WatchLog,
    changed: tokio::sync::watch::Sender<u64>,
    /// How long deleted pods are kept for attribution.
    grace: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to the store and tells waiters.
    fn update(&self, kind: Kind, change: impl FnOnce(&mut Objects, &mut Health)) {
        let version = {
            let mut st = self.lock();
            let st = &mut *st;
            let health = st.health.entry(kind).or_default();
            health.failing_since = None;
            change(&mut st.objects, health);
            st.version += 1;
            st.version
        };
        self.changed.send_replace(version);
    }

    fn failed(&self, kind: Kind, error: &str) {
        tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
        {
            let mut st = self.lock();
            let h = st.health.entry(kind).or_default();
            h.errors += 1;
            h.last_error = Some(error.to_owned());
            h.failing_since.get_or_insert_with(Instant::now);
        }
        self.changed.send_modify(|_| {});
    }

    /// Converts a received object; one the model cannot read is logged and counted.
    fn convert<K: Resource>(
        &self,
        kind: Kind,
        k: K,
        convert: fn(K) -> Result<Object, FieldError>,
    ) -> Result<Object, ObjectKey> {
        let rejected = ObjectKey::of(&k);
        convert(k).map_err(|e| {
            let object = format!("{}/{}", rejected.namespace, rejected.name);
            tracing::warn!(%kind, %object, error = %e, "object ignored");
            self.lock().health.entry(kind).or_default().rejected += 1;
            rejected
        })
    }
}

/// Which object an event is about (for one the model could not read: so that what it was
/// can be forgotten).
struct ObjectKey {
    /// Empty for cluster-scoped kinds.
    namespace: String,
    name: String,
}

impl ObjectKey {
    fn of<K: Resource>(k: &K) -> Self {
        Self {
            namespace: k.namespace().unwrap_or_default(),
            name: k.name_any(),
        }
    }
}

/// The cluster as the watchers see it. Dropping it stops them.
pub struct Live {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One kind's status, for people and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct KindStatus {
    pub kind: Kind,
    /// Listed fully at least once, or found not served.
    pub ready: bool,
    /// Not served by the API server (its CRD is not installed): ready, with no objects.
    pub absent: bool,
    pub objects: usize,
    /// Full lists received (the first, then one per relist after `410 Gone`).
    pub lists: u64,
    pub events: u64,
    pub errors: u64,
    /// Objects ignored because they could not be read.
    pub rejected: u64,
    pub last_error: Option<String>,
    /// How long its watch has been failing, if it is.
    pub failing_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Every kind has been listed fully.
    pub ready: bool,
    /// How long the most out-of-date kind has been unable to watch (0 when all are well).
    pub stale_seconds: f64,
    pub kinds: Vec<KindStatus>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting: Vec<String> = self
            .kinds
            .iter()
            .filter(|k| !k.ready)
            .map(|k| match &k.last_error {
                Some(e) => format!("{} ({e})", k.kind),
                None => k.kind.to_string(),
            })
            .collect();
        if waiting.is_empty() {
            write!(f, "ready")?;
        } else {
            write!(f, "not listed yet: {}", waiting.join(", "))?;
        }
        if self.stale_seconds > 0.0 {
            write!(f, "; watches failing for {:.0} s", self.stale_seconds)?;
        }
        Ok(())
    }
}

impl Live {
    /// Starts one watcher per kind. Deleted pods are kept `grace` long, so flows seen while
    /// they lived are still attributed to them.
    pub fn start(connection: &Connection, grace: Duration) -> Live {
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            watches: connection.watches.clone(),
            changed,
            grace,
        });
        let c = || connection.client.clone();
        let mut tasks = vec![
            spawn(
                &shared,
                Kind::Namespace,
                Api::<Namespace>::all(c()),
                objects::namespace_obj,
            ),
            spawn(
                &shared,
                Kind::Node,
                Api::<Node>::all(c()),
                objects::node_obj,
            ),
            spawn(&shared, Kind::Pod, Api::<Pod>::all(c()), objects::pod_obj),
            spawn(
                &shared,
                Kind::Service,
                Api::<Service>::all(c()),
                objects::service_obj,
            ),
            spawn(
                &shared,
                Kind::EndpointSlice,
                Api::<EndpointSlice>::all(c()),
                objects::slice_obj,
            ),
            spawn(
                &shared,
                Kind::NetworkPolicy,
                Api::<NetworkPolicy>::all(c()),
                objects::policy_obj,
            ),
            // Only owners matter for these: metadata is enough, and far smaller.
            spawn(
                &shared,
                Kind::ReplicaSet,
                Api::<PartialObjectMeta<ReplicaSet>>::all(c()),
                |m| objects::owned_obj("ReplicaSet", &m.metadata),
            ),
            spawn(
                &shared,
                Kind::Job,
                Api::<PartialObjectMeta<Job>>::all(c()),
                |m| objects::owned_obj("Job", &m.metadata),
            ),
        ];
        tasks.extend(optional::spawn_cluster_policies(&shared, c()));
        Live { shared, tasks }
    }

    pub fn status(&self) -> Status {
        let mut st = self.shared.lock();
        // A watch re-established since a kind failed is the end of its failure, events or
        // none.
        for h in st.health.values_mut() {
            if h.failing_since
                .is_some_and(|t| self.shared.watches.established_since(&h.collection, t))
            {
                h.failing_since = None;
            }
        }
        let kinds: Vec<KindStatus> = Kind::ALL
            .iter()
            .map(|&kind| {
                let h = st.health.get(&kind).cloned().unwrap_or_default();
                KindStatus {
                    kind,
                    ready: h.listed,
                    absent: h.absent,
                    objects: st.objects.count(kind),
                    lists: h.lists,
                    events: h.events,
                    errors: h.errors,
                    rejected: h.rejected,
                    last_error: h.last_error,
                    failing_seconds: h.failing_since.map(|t| t.elapsed().as_secs_f64()),
                }
            })
            .collect();
        Status {
            ready: kinds.iter().all(|k| k.ready),
            stale_seconds: kinds
                .iter()
                .filter_map(|k| k.failing_seconds)
                .fold(0.0, f64::max),
            kinds,
        }
    }

    /// Waits until every kind has been listed, or `timeout` passes (the status says why).
    pub async fn ready(&self, timeout: Duration) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            let status = self.status();
            if status.ready {
                return Ok(());
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(self.status()),
            }
        }
    }

    /// Resolves at the next change reported by any watcher (an update or a failure) after
    /// this call: it subscribes now, so a change between a check and the await is not missed.
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut changes = self.shared.changed.subscribe();
        async move {
            // The sender lives as long as `self`.
            let _ = changes.changed().await;
        }
    }

    /// The model as of now: rebuilt if anything changed since it was last built. Deleted pods
    /// older than the grace period are dropped first.
    pub fn model(&self) -> Result<Arc<Cluster>, ModelError> {
        let mut st = self.shared.lock();
        let held = st.objects.gone.len();
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.shared.grace).unwrap_or(chrono::Duration::MAX);
        st.objects.expire(cutoff);
        if st.objects.gone.len() != held {
            st.version += 1;
        }
        if let Some((version, model)) = &st.model {
            if *version == st.version {
                return Ok(model.clone());
            }
        }
        let model = Arc::new(st.objects.build(true)?);
        st.model = Some((st.version, model.clone()));
        Ok(model)
    }

    /// The cluster-scoped policies as of now.
    pub fn cluster_policies(&self) -> Vec<ClusterPolicySource> {
        self.shared
            .lock()
            .objects
            .cluster_policies
            .values()
            .cloned()
            .collect()
    }

    /// The NetworkPolicies as of now.
    pub fn policies(&self) -> Vec<NetworkPolicy> {
        self.shared
            .lock()
            .objects
            .policies
            .values()
            .cloned()
            .collect()
    }
}

/// Runs one kind's watcher into the store until the task is aborted (errors are retried with
/// backoff).
fn spawn<K>(
    shared: &Arc<Shared>,
    kind: Kind,
    api: Api<K>,
    convert: fn(K) -> Result<Object, FieldError>,
) -> JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let shared = shared.clone();
    shared.lock().health.entry(kind).or_default().collection = api.resource_url().to_owned();
    tokio::spawn(async move { follow(&shared, kind, api, convert, |_| false).await })
}

/// Feeds one kind's watch into the store, until an error `ends` says the kind is no longer
/// served (other errors are retried with backoff).
async fn follow<K>(
    shared: &Shared,
    kind: Kind,
    api: Api<K>,
    convert: fn(K) -> Result<Object, FieldError>,
    ends: fn(&watcher::Error) -> bool,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // A relist's objects, applied at once when it completes.
    let mut listing: Vec<Object> = Vec::new();
    while let Some(item) = stream.next().await {
        let now = chrono::Utc::now();
        match item {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(k)) => {
                if let Ok(o) = shared.convert(kind, k, convert) {
                    listing.push(o);
                }
            }
            Ok(Event::InitDone) => {
                let items = std::mem::take(&mut listing);
                shared.update(kind, |objects, health| {
                    objects.replace(kind, items, now);
                    health.listed = true;
                    health.lists += 1;
                });
            }
            Ok(Event::Apply(k)) => {
                let converted = shared.convert(kind, k, convert);
                shared.update(kind, |objects, health| {
                    health.events += 1;
                    match converted {
                        Ok(o) => objects.apply(o, now),
                        // What it became cannot be read: forget what it was.
                        Err(r) => objects.delete(kind, &r.namespace, &r.name, now),
                    }
                });
            }
            Ok(Event::Delete(k)) => {
                let gone = ObjectKey::of(&k);
                shared.update(kind, |objects, health| {
                    health.events += 1;
                    objects.delete(kind, &gone.namespace, &gone.name, now);
                });
            }
            Err(e) if ends(&e) => return,
            Err(e) => shared.failed(kind, &e.to_string()),
        }
    }
}
