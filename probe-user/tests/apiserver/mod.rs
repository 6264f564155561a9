#![allow(dead_code, reason = "each test binary uses a part of the stand-in")]
//! A Kubernetes API server stand-in that speaks the list/watch protocol as the real one does,
//! for the kinds flowpol reads: paginated lists carrying a resourceVersion, chunked watch
//! streams of ADDED/MODIFIED/DELETED events from a given resourceVersion, BOOKMARK events,
//! `410 Gone` (an ERROR event with code 410, reason Expired) for a resourceVersion older than
//! the compacted history, metadata-only (`PartialObjectMetadata`) lists and watches, and
//! watch timeouts. Tests drive it: change objects, cut every watch, compact the history, stop
//! and restart it on the same port.
//!
//! It also serves flowpol's `ObservedTraffic` custom resource as the API server serves a CRD
//! with server-side apply: get, list (all namespaces), and `PATCH` with
//! `application/apply-patch+yaml` and a `fieldManager`, where `spec.edges` is a list-map
//! (deploy/crd.yaml: keyed by node, direction, peer, port and protocol): each manager owns
//! the entries it applied, and an apply removes the entries its manager applied before and
//! left out now, leaving other managers' entries alone.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Collection path, apiVersion and kind of every resource served.
const RESOURCES: [(&str, &str, &str); 8] = [
    ("/api/v1/namespaces", "v1", "Namespace"),
    ("/api/v1/nodes", "v1", "Node"),
    ("/api/v1/pods", "v1", "Pod"),
    ("/api/v1/services", "v1", "Service"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicy",
    ),
    ("/apis/apps/v1/replicasets", "apps/v1", "ReplicaSet"),
    ("/apis/batch/v1/jobs", "batch/v1", "Job"),
];

fn resource_of_kind(kind: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|r| r.2 == kind)
        .unwrap_or_else(|| panic!("the stand-in does not serve {kind}"))
        .0
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object) of every change, oldest first.
    events: Vec<(u64, &'static str, Value)>,
}

const CRD_GROUP_VERSION: &str = "flowpol.io/v1alpha1";
const CRD_COLLECTION: &str = "/apis/flowpol.io/v1alpha1/observedtraffics";

/// One ObservedTraffic object: its workload and its edges with their owners.
#[derive(Clone, Default)]
struct Observed {
    workload: Value,
    resource_version: u64,
    /// Edge key (node, direction, peer, port, protocol) -> (field manager, edge).
    edges: BTreeMap<String, (String, Value)>,
}

impl Observed {
    fn render(&self, ns: &str, name: &str) -> Value {
        let mut managers: Vec<&String> = self.edges.values().map(|(m, _)| m).collect();
        managers.sort();
        managers.dedup();
        json!({"apiVersion": CRD_GROUP_VERSION, "kind": "ObservedTraffic",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": self.resource_version.to_string(),
                "managedFields": managers.iter().map(|m| json!({"manager": m, "operation": "Apply"})).collect::<Vec<_>>()},
            "spec": {"workload": self.workload, "edges": self.edges.values().map(|(_, e)| e.clone()).collect::<Vec<_>>()}})
    }
}

fn edge_key(e: &Value) -> String {
    ["node", "direction", "peer", "port", "protocol"]
        .iter()
        .map(|k| e[k].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

#[derive(Default)]
struct State {
    observed: BTreeMap<(String, String), Observed>,
    /// Server-side applies received, by field manager.
    applies: BTreeMap<String, u64>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    collections: BTreeMap<&'static str, Collection>,
    lists: BTreeMap<String, u64>,
    watches: BTreeMap<String, u64>,
}

struct Inner {
    state: Mutex<State>,
    /// The newest resourceVersion, for watches waiting for news.
    rv: watch::Sender<u64>,
    /// Bumped to cut every open watch.
    cut: watch::Sender<u64>,
    bookmark_every: Duration,
    /// The ObservedTraffic CRD is not installed: its paths answer as a real API server's
    /// unknown paths do (plain text, not a Status).
    no_crd: std::sync::atomic::AtomicBool,
}

pub struct ApiServer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl ApiServer {
    /// Serves `objects` (each with apiVersion, kind and metadata) on a free local port.
    pub async fn start(objects: Vec<Value>, bookmark_every: Duration) -> ApiServer {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            rv: watch::channel(0).0,
            cut: watch::channel(0).0,
            bookmark_every,
            no_crd: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ApiServer {
            inner,
            addr,
            acceptor: Mutex::new(None),
        };
        for o in objects {
            server.apply(o);
        }
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let _ = handle(inner, conn).await;
                });
            }
        });
        *self.acceptor.lock().unwrap() = Some(task);
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"]
            .as_str()
            .expect("object has a kind")
            .to_owned();
        let key = key(&object);
        let mut st = self.inner.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = st.collections.entry(resource_of_kind(&kind)).or_default();
        let kind = if c.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.events.push((rv, kind, object));
        drop(st);
        self.inner.rv.send_replace(rv);
        rv
    }

    /// Deletes an object (`namespace` empty for cluster-scoped kinds).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut st = self.inner.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collections.entry(resource_of_kind(kind)).or_default();
        let mut object = c
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.events.push((rv, "DELETED", object));
        drop(st);
        self.inner.rv.send_replace(rv);
    }

    /// Ends every open watch abruptly, as a load balancer or a crashing server would.
    pub fn cut_watches(&self) {
        self.inner.cut.send_modify(|g| *g += 1);
    }

    /// Forgets the event history (etcd compaction): watches resuming from an older
    /// resourceVersion get 410 Gone and must relist.
    pub fn compact(&self) {
        let mut st = self.inner.state.lock().unwrap();
        st.compacted = st.rv;
        for c in st.collections.values_mut() {
            c.events.clear();
        }
    }

    /// Stops listening and cuts every watch: clients see refused connections.
    pub fn stop(&self) {
        if let Some(t) = self.acceptor.lock().unwrap().take() {
            t.abort();
        }
        self.cut_watches();
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Uninstalls (`false`) or reinstalls the ObservedTraffic CRD; the objects are kept.
    pub fn set_crd(&self, installed: bool) {
        self.inner
            .no_crd
            .store(!installed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Full lists served for a collection path (each relist is one more).
    pub fn lists(&self, path: &str) -> u64 {
        let st = self.inner.state.lock().unwrap();
        st.lists.get(path).copied().unwrap_or(0)
    }

    /// An ObservedTraffic object as the API server would return it.
    pub fn observed(&self, namespace: &str, name: &str) -> Option<Value> {
        let st = self.inner.state.lock().unwrap();
        st.observed
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|o| o.render(namespace, name))
    }

    /// Every ObservedTraffic object.
    pub fn all_observed(&self) -> Vec<Value> {
        let st = self.inner.state.lock().unwrap();
        st.observed
            .iter()
            .map(|((ns, name), o)| o.render(ns, name))
            .collect()
    }

    /// Server-side applies received from a field manager.
    pub fn applies(&self, manager: &str) -> u64 {
        let st = self.inner.state.lock().unwrap();
        st.applies.get(manager).copied().unwrap_or(0)
    }

    /// Watches opened on a collection path.
    pub fn watches(&self, path: &str) -> u64 {
        let st = self.inner.state.lock().unwrap();
        st.watches.get(path).copied().unwrap_or(0)
    }

    /// A kubeconfig whose context `stand-in` points here; its current context points at a
    /// port nobody listens on, so using it proves `--context` was honoured.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster: {{server: 'http://{}'}}
- name: nowhere
  cluster: {{server: 'http://127.0.0.1:9'}}
contexts:
- name: stand-in
  context: {{cluster: stand-in, user: tester}}
- name: nowhere
  context: {{cluster: nowhere, user: tester}}
current-context: nowhere
users:
- name: tester
  user: {{}}
",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().expect("object has a name").to_owned(),
    )
}

/// The objects of a `kubectl get -o yaml` List file, of the kinds served.
pub fn read_list(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let list: Value = serde_yaml::from_str(&text).unwrap();
    let served = |o: &Value| RESOURCES.iter().any(|r| Some(r.2) == o["kind"].as_str());
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| served(o))
        .cloned()
        .collect()
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    metadata_only: bool,
    content_type: String,
    body: Vec<u8>,
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end..].to_vec();
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let method = first.split_whitespace().next().unwrap_or("GET").to_owned();
    let target = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let metadata_only = header("accept").contains("as=PartialObjectMetadata");
    let length: usize = header("content-length").parse().unwrap_or(0);
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                k.to_owned(),
                v.replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/"),
            )
        })
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_owned(),
        query,
        metadata_only,
        content_type: header("content-type"),
        body,
    }))
}

/// An object as a metadata-only request gets it.
fn partial(o: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
}

async fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if code == 200 { "OK" } else { "Error" },
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await
}

async fn handle(inner: Arc<Inner>, mut conn: TcpStream) -> std::io::Result<()> {
    let Some(req) = read_request(&mut conn).await? else {
        return Ok(());
    };
    if req.path.starts_with("/apis/flowpol.io/") {
        if inner.no_crd.load(std::sync::atomic::Ordering::Relaxed) {
            let body = "404 page not found\n";
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
            return conn.shutdown().await;
        }
        let (code, body) = observed_traffic(&inner, &req);
        return respond(&mut conn, code, &body).await;
    }
    let Some(&(path, api_version, kind)) = RESOURCES.iter().find(|r| r.0 == req.path) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{} not found", req.path)});
        return respond(&mut conn, 404, &status).await;
    };
    let shape = |o: &Value| {
        if req.metadata_only {
            partial(o)
        } else {
            o.clone()
        }
    };
    if !matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    ) {
        // A list, in pages of `limit` when asked; the continue token is the next offset.
        let body = {
            let mut st = inner.state.lock().unwrap();
            let rv = st.rv;
            let items: Vec<Value> = st
                .collections
                .get(path)
                .map(|c| c.objects.values().map(shape).collect())
                .unwrap_or_default();
            let from: usize = req
                .query
                .get("continue")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let limit: usize = req
                .query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            let page: Vec<Value> = items.iter().skip(from).take(limit).cloned().collect();
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if from + page.len() < items.len() {
                metadata["continue"] = json!((from + page.len()).to_string());
            } else {
                *st.lists.entry(path.to_owned()).or_default() += 1;
            }
            let (list_version, list_kind) = if req.metadata_only {
                (
                    "meta.k8s.io/v1".to_owned(),
                    "PartialObjectMetadataList".to_owned(),
                )
            } else {
                (api_version.to_owned(), format!("{kind}List"))
            };
            json!({"apiVersion": list_version, "kind": list_kind, "metadata": metadata, "items": page})
        };
        return respond(&mut conn, 200, &body).await;
    }

    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let gone = {
        let mut st = inner.state.lock().unwrap();
        *st.watches.entry(path.to_owned()).or_default() += 1;
        (from < st.compacted).then_some(st.compacted)
    };
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await?;
    if let Some(compacted) = gone {
        let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {from} ({compacted})")}});
        chunk(&mut conn, &status).await?;
        return conn.write_all(b"0\r\n\r\n").await;
    }
    let mut news = inner.rv.subscribe();
    let mut cut = inner.cut.subscribe();
    cut.borrow_and_update();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut cursor = from;
    loop {
        news.borrow_and_update();
        let (events, rv) = {
            let st = inner.state.lock().unwrap();
            let events: Vec<Value> = st
                .collections
                .get(path)
                .map(|c| {
                    c.events
                        .iter()
                        .filter(|(v, _, _)| *v > cursor)
                        .map(|(_, t, o)| json!({"type": t, "object": shape(o)}))
                        .collect()
                })
                .unwrap_or_default();
            (events, st.rv)
        };
        for e in &events {
            chunk(&mut conn, e).await?;
        }
        cursor = rv;
        // A cut asked for before a change is made wins over delivering that change.
        tokio::select! {
            biased;
            _ = cut.changed() => return Ok(()),
            _ = news.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return conn.write_all(b"0\r\n\r\n").await,
            _ = tokio::time::sleep(inner.bookmark_every), if bookmarks => {
                // Everything up to the cursor has been sent.
                let rv = cursor;
                let kind = if req.metadata_only { "PartialObjectMetadata" } else { kind };
                let version = if req.metadata_only { "meta.k8s.io/v1" } else { api_version };
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind,
                    "apiVersion": version, "metadata": {"resourceVersion": rv.to_string()}}});
                chunk(&mut conn, &bookmark).await?;
            }
        }
    }
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message}),
    )
}

/// The ObservedTraffic resource: list, get, and server-side apply.
fn observed_traffic(inner: &Inner, req: &Request) -> (u16, Value) {
    let mut st = inner.state.lock().unwrap();
    if req.path == CRD_COLLECTION && req.method == "GET" {
        let items: Vec<Value> = st
            .observed
            .iter()
            .map(|((ns, name), o)| o.render(ns, name))
            .collect();
        return (
            200,
            json!({"apiVersion": CRD_GROUP_VERSION, "kind": "ObservedTrafficList",
                "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        );
    }
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let ["apis", "flowpol.io", "v1alpha1", "namespaces", ns, "observedtraffics", name] =
        parts.as_slice()
    else {
        return status(404, "NotFound", format!("{} not found", req.path));
    };
    let key = (ns.to_string(), name.to_string());
    match req.method.as_str() {
        "GET" => match st.observed.get(&key) {
            Some(o) => (200, o.render(ns, name)),
            None => status(
                404,
                "NotFound",
                format!("observedtraffics.flowpol.io \"{name}\" not found"),
            ),
        },
        "PATCH" => {
            if req.content_type != "application/apply-patch+yaml" {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("content type {}", req.content_type),
                );
            }
            let Some(manager) = req.query.get("fieldManager").cloned() else {
                return status(
                    400,
                    "BadRequest",
                    "fieldManager is required for apply requests".into(),
                );
            };
            let text = String::from_utf8_lossy(&req.body);
            let Ok(body) = serde_yaml::from_str::<Value>(&text) else {
                return status(400, "BadRequest", "the body is not YAML".into());
            };
            if body["apiVersion"] != CRD_GROUP_VERSION
                || body["kind"] != "ObservedTraffic"
                || body["metadata"]["name"] != *name
                || body["metadata"]["namespace"]
                    .as_str()
                    .is_some_and(|n| n != *ns)
            {
                return status(
                    400,
                    "BadRequest",
                    format!("the object does not match the URL: {body}"),
                );
            }
            let Some(edges) = body["spec"]["edges"].as_array() else {
                return status(422, "Invalid", "spec.edges: Required value".into());
            };
            st.rv += 1;
            let rv = st.rv;
            *st.applies.entry(manager.clone()).or_default() += 1;
            let o = st.observed.entry(key).or_default();
            o.workload = body["spec"]["workload"].clone();
            o.resource_version = rv;
            let applied: BTreeMap<String, Value> =
                edges.iter().map(|e| (edge_key(e), e.clone())).collect();
            o.edges
                .retain(|k, (owner, _)| *owner != manager || applied.contains_key(k));
            for (k, e) in applied {
                o.edges.insert(k, (manager.clone(), e));
            }
            (200, o.render(ns, name))
        }
        m => status(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        ),
    }
}
