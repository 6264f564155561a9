//! Offline cluster snapshots: what `kubectl get namespaces,pods,services,endpointslices,
//! networkpolicies,nodes -A -o yaml` (or `-o json`) prints, a `kind: List`, or multi-document
//! YAML of the same objects.
//!
//! Objects are read with the k8s-openapi types, so field names and value types follow the API
//! reference; a malformed object fails the whole read with its kind, namespace, name and the
//! offending field. Kinds flowpol does not use (ConfigMaps, ...) are skipped and counted.
//!
//! JSON (`-o json`, the form large clusters are dumped in) is read straight into the typed
//! objects, each item's text kept apart until its kind is known; YAML goes through a value
//! tree, which costs about six times as much (`cargo bench -p flowpol-analysis --bench engine`).
use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{
    objects::{self, Object, Objects},
    Cluster, ModelError, Timestamp,
};
use crate::{
    policy::clusterwide::api::{self as cluster_api, Source},
    validation::FieldError,
};

/// Largest snapshot read (a multi-thousand-node cluster's objects stay well below it).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read cluster snapshot {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster snapshot {path} is {size} bytes; the limit is {MAX_SNAPSHOT_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("cluster snapshot {path}: document {document} is not valid YAML or JSON")]
    Syntax {
        path: String,
        document: usize,
        #[source]
        source: Malformed,
    },
    #[error("cluster snapshot {path}: {what}: {error}")]
    Object {
        path: String,
        what: String,
        error: FieldError,
    },
    #[error("cluster snapshot {path}: {what}: {error}")]
    ClusterPolicy {
        path: String,
        what: String,
        error: cluster_api::DecodeError,
    },
    #[error("cluster snapshot {path}: {what}: declared twice")]
    Duplicate { path: String, what: String },
    #[error("cluster snapshot {path}: {what}")]
    Decode {
        path: String,
        what: String,
        #[source]
        source: Malformed,
    },
    #[error("cluster snapshot {path}")]
    Model {
        path: String,
        #[source]
        source: ModelError,
    },
}

/// What the YAML or the JSON reader said of a document or an object.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Everything read from a snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    /// NetworkPolicies as written; the policy module checks and compiles them.
    pub policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies and the BaselineAdminNetworkPolicy, as
    /// written; [`crate::policy::clusterwide::compile`] checks them.
    pub cluster_policies: Vec<Source>,
    /// Objects of kinds flowpol does not use, by kind.
    pub skipped: BTreeMap<String, usize>,
}

pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SnapshotError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge {
            path: shown,
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

/// One object's identity for messages: `Pod shop/web-0 (document 1, item 3)`.
fn describe(
    (kind, namespace, name): (Option<&str>, Option<&str>, Option<&str>),
    document: usize,
    item: Option<usize>,
) -> String {
    let kind = kind.unwrap_or("object without kind");
    let name = match (namespace, name) {
        (Some(ns), Some(n)) => format!(" {ns}/{n}"),
        (None, Some(n)) => format!(" {n}"),
        _ => String::new(),
    };
    let at = match item {
        Some(i) => format!("document {document}, item {i}"),
        None => format!("document {document}"),
    };
    format!("{kind}{name} ({at})")
}

/// Kind, namespace and name of a YAML object, where it has them.
fn yaml_head(v: &serde_yaml::Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    let meta = |key: &str| {
        v.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(|x| x.as_str())
    };
    (
        v.get("kind").and_then(|k| k.as_str()),
        meta("namespace"),
        meta("name"),
    )
}

/// What is read of a JSON object before its kind is known; the rest is skipped unparsed.
#[derive(serde::Deserialize, Default)]
struct Head {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: HeadMeta,
    /// A List's objects, each kept as its text.
    #[serde(default)]
    items: Option<Vec<Box<RawValue>>>,
}

#[derive(serde::Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// One object of a snapshot, its kind known, the rest not yet decoded.
enum Item {
    Yaml(serde_yaml::Value),
    Json(Box<RawValue>),
}

impl Item {
    fn decode<T: DeserializeOwned>(self) -> Result<T, Malformed> {
        Ok(match self {
            Item::Yaml(v) => serde_yaml::from_value(v)?,
            Item::Json(raw) => serde_json::from_str(raw.get())?,
        })
    }

    fn cluster_policy(self, kind: &str) -> Result<Source, cluster_api::DecodeError> {
        match self {
            Item::Yaml(v) => Source::decode(kind, v),
            Item::Json(raw) => {
                Source::decode(kind, &mut serde_json::Deserializer::from_str(raw.get()))
            }
        }
    }
}

/// The objects of a JSON snapshot: a List's items, or the one object it is.
fn json_items(path: &str, text: &str) -> Result<Vec<(String, String, Item)>, SnapshotError> {
    let syntax = |source: serde_json::Error| SnapshotError::Syntax {
        path: path.into(),
        document: 0,
        source: source.into(),
    };
    let top: Head = serde_json::from_str(text).map_err(syntax)?;
    let head = |h: &Head, item| {
        let m = &h.metadata;
        describe(
            (h.kind.as_deref(), m.namespace.as_deref(), m.name.as_deref()),
            0,
            item,
        )
    };
    if !top.kind.as_deref().is_some_and(|k| k.ends_with("List")) {
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(syntax)?;
        return Ok(vec![(
            top.kind.clone().unwrap_or_default(),
            head(&top, None),
            Item::Json(raw),
        )]);
    }
    top.items
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let h: Head = serde_json::from_str(raw.get()).map_err(syntax)?;
            Ok((
                h.kind.clone().unwrap_or_default(),
                head(&h, Some(i)),
                Item::Json(raw),
            ))
        })
        .collect()
}

/// The objects of a YAML snapshot: every document's, a List's items in place of the List.
fn yaml_items(path: &str, text: &str) -> Result<Vec<(String, String, Item)>, SnapshotError> {
    let mut found = Vec::new();
    let mut push = |v: serde_yaml::Value, document, item| {
        let what = describe(yaml_head(&v), document, item);
        let kind = yaml_head(&v).0.unwrap_or_default().to_owned();
        found.push((kind, what, Item::Yaml(v)));
    };
    for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde::Deserialize::deserialize(de).map_err(|source| SnapshotError::Syntax {
                path: path.into(),
                document,
                source: Malformed::Yaml(source),
            })?;
        match value {
            serde_yaml::Value::Null => {}
            v if yaml_head(&v).0.is_some_and(|k| k.ends_with("List")) => {
                let items = v
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                for (i, item) in items.into_iter().enumerate() {
                    push(item, document, Some(i));
                }
            }
            v => push(v, document, None),
        }
    }
    Ok(found)
}

pub fn parse(path: &str, text: &str) -> Result<Snapshot, SnapshotError> {
    // YAML may begin with a flow mapping too: what is not JSON is read as YAML.
    let json = text
        .trim_start()
        .starts_with('{')
        .then(|| json_items(path, text))
        .filter(|r| !matches!(r, Err(SnapshotError::Syntax { .. })));
    let found = match json {
        Some(items) => items?,
        None => yaml_items(path, text)?,
    };
    let mut store = Objects::default();
    let mut cluster_policies: Vec<Source> = Vec::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, what, v) in found {
        let ctx = (path, what.as_str());
        let converted = match kind.as_str() {
            "Namespace" => objects::namespace_obj(decode(ctx, v)?),
            "Node" => objects::node_obj(decode(ctx, v)?),
            "Pod" => objects::pod_obj(decode(ctx, v)?),
            "Service" => objects::service_obj(decode(ctx, v)?),
            "EndpointSlice" => objects::slice_obj(decode(ctx, v)?),
            "ReplicaSet" | "Job" => {
                let o: MetaOnly = decode(ctx, v)?;
                objects::owned_obj(&kind, &o.metadata)
            }
            "NetworkPolicy" => objects::policy_obj(decode(ctx, v)?),
            k if cluster_api::KINDS.contains(&k) => {
                let error = |error| SnapshotError::ClusterPolicy {
                    path: path.into(),
                    what: what.clone(),
                    error,
                };
                let source = v.cluster_policy(k).map_err(error)?;
                source.check_api_version().map_err(error)?;
                if cluster_policies
                    .iter()
                    .any(|o| o.kind() == source.kind() && o.name() == source.name())
                {
                    return Err(SnapshotError::Duplicate {
                        path: path.into(),
                        what,
                    });
                }
                cluster_policies.push(source);
                continue;
            }
            other => {
                *skipped
                    .entry(if other.is_empty() {
                        "(no kind)".into()
                    } else {
                        other.into()
                    })
                    .or_default() += 1;
                continue;
            }
        };
        let o = converted.map_err(|error| SnapshotError::Object {
            path: path.into(),
            what: what.clone(),
            error,
        })?;
        if is_duplicate(&store, &o) {
            return Err(SnapshotError::Duplicate {
                path: path.into(),
                what,
            });
        }
        store.apply(o, Timestamp::default());
    }
    let cluster = store.build(false).map_err(|source| SnapshotError::Model {
        path: path.into(),
        source,
    })?;
    Ok(Snapshot {
        cluster,
        policies: store.policies.into_values().collect(),
        cluster_policies,
        skipped,
    })
}

fn decode<T: DeserializeOwned>((path, what): (&str, &str), v: Item) -> Result<T, SnapshotError> {
    v.decode().map_err(|source| SnapshotError::Decode {
        path: path.into(),
        what: what.into(),
        source,
    })
}

/// Whether the store already holds an object of this kind and key.
fn is_duplicate(store: &Objects, o: &Object) -> bool {
    match o {
        Object::Namespace { name, .. } => store.namespaces.contains_key(name),
        Object::Node { name, .. } => store.nodes.contains_key(name),
        Object::Pod(p) => store
            .pods
            .contains_key(&(p.namespace.clone(), p.name.clone())),
        Object::Service {
            namespace, name, ..
        } => store
            .services
            .contains_key(&(namespace.clone(), name.clone())),
        Object::EndpointSlice {
            namespace, name, ..
        } => store
            .slices
            .contains_key(&(namespace.clone(), name.clone())),
        // Read beside the store, and checked for duplicates there.
        Object::Owned { .. } | Object::ClusterPolicy(_) => false,
        Object::NetworkPolicy(np) => store.policies.contains_key(&(
            np.metadata.namespace.clone().unwrap_or_default(),
            np.metadata.name.clone().unwrap_or_default(),
        )),
    }
}

/// Objects read for their metadata alone.
#[derive(serde::Deserialize)]
struct MetaOnly {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster::AddressHolder, record::Protocol};

    const MULTI: &str = "
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: prod, labels: {app: api}}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 8080, name: http}]}]
status: {phase: Running, podIPs: [{ip: 10.1.0.5}, {ip: 'fd00::5'}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: prod}
";

    #[test]
    fn reads_multi_document_yaml_in_any_order() {
        let snap = parse("multi.yaml", MULTI).expect("valid snapshot");
        let c = &snap.cluster;
        let pod = c.pod_by_name("prod", "api-0").expect("pod read");
        assert_eq!(
            c.endpoint("fd00::5".parse().unwrap()),
            AddressHolder::Pod(pod),
            "IPv6 from status.podIPs"
        );
        let ns = c.namespace(c.namespace_id("prod").unwrap());
        assert_eq!(
            ns.labels.get("env").map(String::as_str),
            Some("prod"),
            "the Namespace object's labels win"
        );
        assert_eq!(
            ns.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            c.pod(pod).ports[0].protocol,
            Protocol::TCP,
            "container port protocol defaults to TCP"
        );
        assert_eq!(snap.policies.len(), 1);
        assert_eq!(snap.skipped.get("Secret"), Some(&1));
    }

    /// MULTI's objects as `kubectl get -o json` prints them: one List.
    fn as_json_list(yaml: &str) -> String {
        let items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    }

    #[test]
    fn json_reads_like_the_same_objects_in_yaml() {
        let (yaml, json) = (
            parse("multi.yaml", MULTI).unwrap(),
            parse("multi.json", &as_json_list(MULTI)).unwrap(),
        );
        assert_eq!(json.policies, yaml.policies);
        assert_eq!(json.skipped, yaml.skipped);
        let c = &json.cluster;
        let pod = c.pod_by_name("prod", "api-0").expect("pod read");
        assert_eq!(
            c.endpoint("fd00::5".parse().unwrap()),
            AddressHolder::Pod(pod)
        );
        let ns = c.namespace(c.namespace_id("prod").unwrap());
        assert_eq!(ns.labels.get("env").map(String::as_str), Some("prod"));
        // Cluster-scoped policies too, one of each kind.
        let tiers = include_str!("../../../../tests/fixtures/cluster-policies-shop.yaml");
        let (yaml, json) = (
            parse("tiers.yaml", tiers).unwrap(),
            parse("tiers.json", &as_json_list(tiers)).unwrap(),
        );
        assert!(yaml.cluster_policies.len() >= 3);
        assert_eq!(
            format!("{:?}", json.cluster_policies),
            format!("{:?}", yaml.cluster_policies)
        );
        // One object, not a List.
        let one = r#" {"kind": "Namespace", "metadata": {"name": "a", "labels": {"x": "y"}}}"#;
        let snap = parse("one.json", one).unwrap();
        assert!(snap.cluster.namespace_id("a").is_some());
    }

    #[test]
    fn json_errors_name_the_object_and_yaml_may_begin_with_a_brace() {
        let bad_ip = r#"{"kind": "List", "items": [
            {"kind": "Namespace", "metadata": {"name": "a"}},
            {"kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
             "status": {"podIPs": [{"ip": "10.0.0.300"}]}}]}"#;
        let e = parse("bad.json", bad_ip).unwrap_err().to_string();
        assert!(e.contains("Pod a/p (document 0, item 1)"), "{e}");
        let bad_type =
            r#"{"kind": "Pod", "metadata": {"name": "p", "namespace": "a", "labels": {"x": 5}}}"#;
        let e = parse("bad.json", bad_type).unwrap_err();
        assert!(matches!(e, SnapshotError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("Pod a/p (document 0)"), "{e}");
        // A flow mapping is YAML, not JSON: read as YAML.
        let flow =
            "{kind: Namespace, metadata: {name: a}}\n---\nkind: Namespace\nmetadata: {name: b}\n";
        let snap = parse("flow.yaml", flow).unwrap();
        assert!(snap.cluster.namespace_id("b").is_some());
        let e = parse("cut.json", r#"{"kind": "List", "items": [{"kind": "#).unwrap_err();
        assert!(matches!(e, SnapshotError::Syntax { .. }), "{e}");
    }

    #[test]
    fn missing_names_and_duplicates_are_errors() {
        let e = parse("x.yaml", "kind: Pod\nmetadata: {namespace: a}\n").unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let dup =
            "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n";
        let e = parse("x.yaml", dup).unwrap_err().to_string();
        assert!(
            e.contains("Namespace a (document 1)") && e.contains("declared twice"),
            "{e}"
        );
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let path = std::env::temp_dir().join(format!("flowpol-huge-{}.yaml", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_SNAPSHOT_BYTES + 1).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
