//! What runs a pod, in one vocabulary for the model, the edge store and suggest.
use std::{cmp::Ordering, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kind of a pod's controller. The built-in controllers are named; any other owner (a
/// custom controller's kind, such as Argo's `Rollout`) is kept by its name, since the API
/// lets any kind own a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
    /// A pod nothing owns is its own workload.
    Pod,
    Other(String),
}

impl WorkloadKind {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
            Self::ReplicationController => "ReplicationController",
            Self::Pod => "Pod",
            Self::Other(kind) => kind,
        }
    }
}

impl From<&str> for WorkloadKind {
    fn from(kind: &str) -> Self {
        match kind {
            "Deployment" => Self::Deployment,
            "ReplicaSet" => Self::ReplicaSet,
            "StatefulSet" => Self::StatefulSet,
            "DaemonSet" => Self::DaemonSet,
            "Job" => Self::Job,
            "CronJob" => Self::CronJob,
            "ReplicationController" => Self::ReplicationController,
            "Pod" => Self::Pod,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for WorkloadKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// By name, as the kinds were ordered when they were strings: outputs sorted by workload
/// keep their order.
impl Ord for WorkloadKind {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for WorkloadKind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for WorkloadKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WorkloadKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(String::deserialize(d)?.as_str().into())
    }
}

impl JsonSchema for WorkloadKind {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkloadKind".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        String::json_schema(g)
    }
}

/// A controller reference (`metadata.ownerReferences` with `controller: true`).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct OwnerRef {
    pub kind: WorkloadKind,
    pub name: String,
}

/// What runs a pod: the top of its owner chain (Deployment, StatefulSet, DaemonSet, CronJob,
/// a Job or ReplicaSet of its own, ...), or the pod itself when nothing owns it.
pub type Workload = OwnerRef;

/// A workload across the cluster: the one key the edge store, suggest and its proof use.
/// Ordered by namespace, kind, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub workload: Workload,
}

impl WorkloadKey {
    pub fn new(namespace: impl Into<String>, kind: WorkloadKind, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            workload: Workload {
                kind,
                name: name.into(),
            },
        }
    }
}

/// `namespace/kind/name`.
impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace, self.workload.kind, self.workload.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_and_write_as_the_api_names_them() {
        for name in [
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
            "ReplicationController",
            "Pod",
            "Rollout",
        ] {
            let kind = WorkloadKind::from(name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_value(&kind).unwrap(), name);
            let back: WorkloadKind = serde_json::from_value(name.into()).unwrap();
            assert_eq!(back, kind);
        }
        assert_eq!(
            WorkloadKind::from("Rollout"),
            WorkloadKind::Other("Rollout".into())
        );
    }

    #[test]
    fn kinds_order_by_name() {
        let mut kinds: Vec<WorkloadKind> = ["StatefulSet", "Pod", "Rollout", "CronJob", "Job"]
            .map(WorkloadKind::from)
            .to_vec();
        kinds.sort();
        let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["CronJob", "Job", "Pod", "Rollout", "StatefulSet"]);
    }
}
