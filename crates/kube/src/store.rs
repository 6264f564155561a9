//! The cluster-wide store: `ObservedTraffic` objects (deploy/crd.yaml) in the API server,
//! one per workload and node (paged when large: `flowpol_analysis::observed::layout`).
//! Each agent server-side applies its own node's objects under its own field manager
//! (`flowpol-agent/<node>`): no object has two writers, so agents never overwrite each
//! other, and no agent needs to read before it writes, except once per workload after a
//! restart or an eviction (see [`Observed::read_back`]). Writes carry totals, so a retry
//! after a failure cannot count twice. The only code that writes to the API server.
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
    observed::{self, layout, Observed, Pending, TrafficObject, Unread},
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
    /// Objects read back (point reads after a restart or an eviction).
    pub reads: usize,
    /// Bytes of the objects applied.
    pub bytes: usize,
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
            // Forced: the node's objects are its alone.
            params: PatchParams::apply(&field_manager(node)).force(),
            spacing: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
        }
    }

    /// Writes every workload changed since it was last written (the pages of it that
    /// changed), one apply each, paced; gives up for this round at the first failure (the
    /// API server is likely away: the workloads stay pending, and the next round retries)
    /// or at `deadline`.
    pub async fn flush(
        &self,
        observed: &Mutex<Observed>,
        deadline: tokio::time::Instant,
        on_write: impl FnMut(bool),
    ) -> Flushed {
        let pending = lock(observed).pending();
        self.write_all(observed, pending, deadline, on_write).await
    }

    /// [`Writer::flush`] of the workloads due ([`Observed::pending_due`]): those with new
    /// edges, and those whose counts alone changed when `counts_every` has passed.
    pub async fn flush_due(
        &self,
        observed: &Mutex<Observed>,
        deadline: tokio::time::Instant,
        counts_every: Duration,
        on_write: impl FnMut(bool),
    ) -> Flushed {
        let pending = lock(observed).pending_due(std::time::Instant::now(), counts_every);
        self.write_all(observed, pending, deadline, on_write).await
    }

    async fn write_all(
        &self,
        observed: &Mutex<Observed>,
        pending: Vec<Pending>,
        deadline: tokio::time::Instant,
        mut on_write: impl FnMut(bool),
    ) -> Flushed {
        let mut report = Flushed::default();
        let mut pace = Pace {
            next: tokio::time::Instant::now(),
            spacing: self.spacing,
            deadline,
        };
        for p in pending {
            let what = p.workload.to_string();
            let result = self
                .write(observed, &p, &mut pace, &mut on_write, &mut report)
                .await;
            match result {
                Ok(true) => report.written += 1,
                // Out of time: the rest waits for the next round.
                Ok(false) => break,
                Err(e) => {
                    report.failed += 1;
                    report.last_error = Some(format!("{what}: {e}"));
                    break;
                }
            }
        }
        report.pending = lock(observed).dirty();
        report
    }

    /// Writes one workload's changed pages (reading its share back first when needed).
    /// False when the deadline came first.
    async fn write(
        &self,
        observed: &Mutex<Observed>,
        p: &Pending,
        pace: &mut Pace,
        on_write: &mut impl FnMut(bool),
        report: &mut Flushed,
    ) -> Result<bool, String> {
        let ns = &p.workload.namespace;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource());
        let typed: Api<ObservedTraffic> = Api::namespaced(self.client.clone(), ns);
        let carried = if p.read {
            // By name, page 0 first (it says how many there are): point reads, where a
            // label-selected list would have the store scan the namespace.
            let mut objects = Vec::new();
            let mut page = 0;
            let mut pages = 1;
            while page < pages {
                if !pace.wait().await {
                    return Ok(false);
                }
                let name = layout::object_name(&p.workload.workload, &self.node, page);
                report.reads += 1;
                if let Some(o) = pace.bounded(api.get_opt(&name)).await? {
                    let value = serde_json::to_value(o).map_err(|e| e.to_string())?;
                    match TrafficObject::parse(&value) {
                        Ok(o) => {
                            if page == 0 {
                                pages = o.pages;
                            }
                            objects.push(o);
                        }
                        Err(e) => {
                            tracing::warn!(object = %format!("{ns}/{name}"), "unreadable ObservedTraffic, overwriting it: {e}");
                        }
                    }
                }
                page += 1;
            }
            let held = observed::share_of(&objects, &p.workload, &self.node);
            lock(observed).read_back(&p.workload, held)
        } else {
            Vec::new()
        };
        let Some(pages) = lock(observed).objects(&self.node, &p.workload, &carried) else {
            return Ok(true);
        };
        let pages = pages.map_err(|e| e.to_string())?;
        for object in pages.changed {
            if !pace.wait().await {
                return Ok(false);
            }
            // Serialized once, here, to count what is sent.
            let body = serde_json::value::to_raw_value(&ObservedTraffic::from(object.clone()))
                .map_err(|e| e.to_string())?;
            let result = pace
                .bounded(typed.patch(&object.name, &self.params, &Patch::Apply(&body)))
                .await;
            on_write(result.is_ok());
            result?;
            report.bytes += body.get().len();
            lock(observed).page_written(&p.workload, &object, pages.count);
        }
        lock(observed).written(&p.workload, pages.generation, std::time::Instant::now());
        Ok(true)
    }
}

/// Requests at most one per `spacing`, none started past `deadline`.
struct Pace {
    next: tokio::time::Instant,
    spacing: Duration,
    deadline: tokio::time::Instant,
}

impl Pace {
    /// Waits for the next request's turn; false when it would come past the deadline.
    async fn wait(&mut self) -> bool {
        if self.next > self.deadline {
            return false;
        }
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + self.spacing;
        true
    }

    /// A request, abandoned at the deadline: a stalled API server (or network) must not
    /// hold the round past it. It is retried next round like any failure.
    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        let limit = self.deadline.max(tokio::time::Instant::now() + MIN_WAIT);
        match tokio::time::timeout_at(limit, request).await {
            Ok(r) => r.map_err(|e| explain(&e)),
            Err(_) => Err("no answer in time (the API server or the network stalls)".into()),
        }
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

/// The `ObservedTraffic` objects of `namespaces` (every namespace when empty), read page
/// by page.
pub async fn list(client: &Client, namespaces: &[String]) -> Result<Listed, kube::Error> {
    let apis: Vec<Api<DynamicObject>> = if namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &resource())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &resource()))
            .collect()
    };
    let mut out = Listed::default();
    for api in apis {
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
                None => break,
            }
        }
    }
    Ok(out)
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
/// edges last seen more than `within` ago are left out. Only the objects of `namespaces`
/// are read when some are named (their workloads' edges both ways: a server's node writes
/// the ingress edges). One unreadable object fails the read, naming every such object: a
/// partial picture would pass for the whole one.
pub async fn read_traffic(
    client: &Client,
    cluster: &Cluster,
    within: Option<Duration>,
    namespaces: &[String],
) -> Result<Traffic, ReadError> {
    let listed = list(client, namespaces).await.map_err(ReadError::List)?;
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

/// Runs [`Writer::flush_due`] every `every` until dropped.
pub async fn run(
    writer: Arc<Writer>,
    observed: Arc<Mutex<Observed>>,
    every: Duration,
    counts_every: Duration,
    on_write: impl Fn(bool) + Send + 'static,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let deadline = tokio::time::Instant::now() + every;
        let r = writer
            .flush_due(&observed, deadline, counts_every, &on_write)
            .await;
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
