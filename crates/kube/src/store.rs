//! The cluster-wide store: `ObservedTraffic` objects (deploy/crd.yaml) in the API server.
//! Each agent server-side applies its node's share of each workload's object under its own
//! field manager (`flowpol-agent/<node>`): the API server merges the shares (edges are a
//! list-map keyed by node among others), so agents never overwrite each other and no agent
//! needs to read before it writes, except once per workload after a restart or an eviction
//! (see [`Observed::read_back`]). Writes carry totals, so a retry after a failure cannot
//! count twice. The only code that writes to the API server.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
    Api, Client,
};

use flowpol_analysis::{
    cluster::Cluster,
    observed::{self, Observed, TrafficObject, Unread},
    record::FlowRecord,
};

use crate::crd::ObservedTraffic;

/// Objects are read untyped, each then checked on its own: one malformed object is
/// reported by name and field instead of failing the whole list.
fn resource() -> ApiResource {
    ApiResource::erase::<ObservedTraffic>(&())
}

/// The field manager of `node`'s agent.
pub fn field_manager(node: &str) -> String {
    // Field managers are at most 128 characters.
    let mut m = format!("flowpol-agent/{node}");
    m.truncate(128);
    m
}

/// How one flush went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub written: usize,
    pub failed: usize,
    /// Workloads still waiting (failed, or not reached before the deadline).
    pub pending: usize,
    pub last_error: Option<String>,
}

/// The least time a write is given, however close the deadline.
const MIN_WAIT: Duration = Duration::from_secs(2);

pub struct Writer {
    client: Client,
    node: String,
    params: PatchParams,
    /// At most one request per this long.
    spacing: Duration,
}

impl Writer {
    /// Writes `node`'s share, at most `per_second` requests per second.
    pub fn new(client: Client, node: &str, per_second: f64) -> Self {
        Self {
            client,
            node: node.to_owned(),
            // Forced: the node's own edges are its alone; a conflict can only be on the
            // workload's identity, which every agent writes the same.
            params: PatchParams::apply(&field_manager(node)).force(),
            spacing: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
        }
    }

    /// Writes every workload changed since it was last written, one apply each, paced;
    /// gives up for this round at the first failure (the API server is likely away: the
    /// workloads stay pending, and the next round retries) or at `deadline`.
    pub async fn flush(
        &self,
        observed: &Mutex<Observed>,
        deadline: tokio::time::Instant,
        mut on_write: impl FnMut(bool),
    ) -> Flushed {
        let pending = lock(observed).pending();
        let mut report = Flushed::default();
        let mut next = tokio::time::Instant::now();
        for p in pending {
            if next > deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
            next = tokio::time::Instant::now() + self.spacing;
            let ns = &p.workload.namespace;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &resource());
            let typed: Api<ObservedTraffic> = Api::namespaced(self.client.clone(), ns);
            let object_name = observed::object_name(&p.workload.workload);
            // A stalled API server (or network) must not hold the round past its deadline:
            // the write is abandoned there, and retried next round like any failure.
            let limit = deadline.max(tokio::time::Instant::now() + MIN_WAIT);
            let result = tokio::time::timeout_at(limit, async {
                let carried = if p.read {
                    let edges = match api.get_opt(&object_name).await? {
                        Some(o) => {
                            let value = serde_json::to_value(o).map_err(kube::Error::SerdeError)?;
                            match TrafficObject::parse(&value) {
                                Ok(o) => o.edges_of(&self.node),
                                Err(e) => {
                                    tracing::warn!(object = %format!("{ns}/{object_name}"), "unreadable ObservedTraffic, overwriting this node's share: {e}");
                                    Vec::new()
                                }
                            }
                        }
                        None => Vec::new(),
                    };
                    lock(observed).read_back(&p.workload, edges)
                } else {
                    Vec::new()
                };
                let Some((generation, object)) =
                    lock(observed).object(&self.node, &p.workload, &carried)
                else {
                    return Ok(());
                };
                typed
                    .patch(
                        &object_name,
                        &self.params,
                        &Patch::Apply(&ObservedTraffic::from(object)),
                    )
                    .await?;
                lock(observed).written(&p.workload, generation);
                Ok::<_, kube::Error>(())
            })
            .await;
            let result = match result {
                Ok(r) => r.map_err(|e| explain(&e)),
                Err(_) => Err("no answer in time (the API server or the network stalls)".into()),
            };
            on_write(result.is_ok());
            match result {
                Ok(()) => report.written += 1,
                Err(e) => {
                    report.failed += 1;
                    report.last_error = Some(format!("{ns}/{object_name}: {e}"));
                    break;
                }
            }
        }
        report.pending = lock(observed).dirty();
        report
    }
}

/// A write's failure, with what to do about the usual causes.
fn explain(e: &kube::Error) -> String {
    match e {
        // The object lives in its workload's namespace, which may have been deleted since.
        kube::Error::Api(s)
            if s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
        {
            format!("{e} (the workload's namespace is gone)")
        }
        // Apply creates objects: otherwise, not found means the resource itself is unknown.
        kube::Error::Api(s) if s.code == 404 => {
            format!("{e} (is the ObservedTraffic CRD installed? kubectl apply -k deploy/)")
        }
        kube::Error::Api(s) if s.code == 403 => format!(
            "{e} (the agent's ServiceAccount may not write ObservedTraffic: see deploy/rbac.yaml)"
        ),
        _ => e.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `ObservedTraffic` objects of a cluster.
#[derive(Debug, Default)]
pub struct Listed {
    pub objects: Vec<TrafficObject>,
    /// Objects without the CRD's shape: `namespace/name: field: cause`.
    pub invalid: Vec<String>,
}

/// Every `ObservedTraffic` object in the cluster, read page by page.
pub async fn list(client: &Client) -> Result<Listed, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let mut out = Listed::default();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for o in page.items {
            let value = serde_json::to_value(&o).map_err(kube::Error::SerdeError)?;
            match TrafficObject::parse(&value) {
                Ok(t) => out.objects.push(t),
                Err(e) => out.invalid.push(format!(
                    "{}/{}: {e}",
                    o.metadata.namespace.as_deref().unwrap_or("?"),
                    o.metadata.name.as_deref().unwrap_or("?")
                )),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "listing ObservedTraffic objects (is the flowpol CRD installed? kubectl apply -k deploy/)"
    )]
    List(#[source] kube::Error),
    /// Each as `namespace/name: field: cause`.
    #[error("{} ObservedTraffic object(s) cannot be read", .0.len())]
    Invalid(Vec<String>),
}

/// What the store holds, as records.
#[derive(Debug)]
pub struct Traffic {
    pub records: Vec<FlowRecord>,
    /// Objects read.
    pub objects: usize,
    pub unread: Unread,
}

/// The traffic the agents aggregated, as flow records with both ends named from `cluster`;
/// edges last seen more than `within` ago are left out. One unreadable object fails the
/// read, naming every such object: a partial picture would pass for the whole one.
pub async fn read_traffic(
    client: &Client,
    cluster: &Cluster,
    within: Option<Duration>,
) -> Result<Traffic, ReadError> {
    let listed = list(client).await.map_err(ReadError::List)?;
    if !listed.invalid.is_empty() {
        return Err(ReadError::Invalid(listed.invalid));
    }
    let since = within.map(|d| {
        chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    });
    let (records, unread) = observed::records(cluster, &listed.objects, since);
    Ok(Traffic {
        records,
        objects: listed.objects.len(),
        unread,
    })
}

/// Runs [`Writer::flush`] every `every` until dropped.
pub async fn run(
    writer: Arc<Writer>,
    observed: Arc<Mutex<Observed>>,
    every: Duration,
    on_write: impl Fn(bool) + Send + 'static,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let deadline = tokio::time::Instant::now() + every;
        let r = writer.flush(&observed, deadline, &on_write).await;
        match (&r.last_error, failing) {
            (Some(e), false) => {
                tracing::warn!(
                    pending = r.pending,
                    "writing ObservedTraffic failed; retrying every {}: {e}",
                    humantime::format_duration(every)
                );
                failing = true;
            }
            (None, true) => {
                tracing::info!(written = r.written, "writing ObservedTraffic works again");
                failing = false;
            }
            _ => {}
        }
    }
}
