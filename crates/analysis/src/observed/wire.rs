//! The shape of an `ObservedTraffic` object, typed: what the agents write and read back.
//! flowpol-kube derives the custom resource, and deploy/crd.yaml, from these types, so the
//! schema and the code cannot disagree. Pure.
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    cluster::{Timestamp, Workload, WorkloadKey},
    policy::Direction,
    record::{FlowRecord, Protocol, Verdict},
};

/// API group, version and kind of the custom resource.
pub const API_VERSION: &str = "flowpol.io/v1alpha1";
pub const KIND: &str = "ObservedTraffic";

/// One edge of a workload on a node, as an agent holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeKey {
    /// The node whose agent saw it.
    pub node: String,
    pub direction: Direction,
    /// The other end: namespace/Kind/name for pods, node/<name>,
    /// service/<namespace>/<name>, or an address.
    pub peer: String,
    /// The responder's port (0 when unknown).
    pub port: u16,
    pub protocol: Protocol,
}

/// An edge's key within its object, which names the node once for all its edges.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct WireKey {
    pub direction: Direction,
    /// The other end: namespace/Kind/name for pods, node/<name>,
    /// service/<namespace>/<name>, or an address.
    pub peer: String,
    /// The responder's port (0 when unknown).
    #[schemars(schema_with = "port")]
    pub port: u16,
    pub protocol: Protocol,
}

impl WireKey {
    /// The key of this edge as `node`'s agent holds it.
    pub fn on(&self, node: &str) -> EdgeKey {
        EdgeKey {
            node: node.to_owned(),
            direction: self.direction,
            peer: self.peer.clone(),
            port: self.port,
            protocol: self.protocol,
        }
    }
}

impl From<&EdgeKey> for WireKey {
    fn from(k: &EdgeKey) -> Self {
        Self {
            direction: k.direction,
            peer: k.peer.clone(),
            port: k.port,
            protocol: k.protocol,
        }
    }
}

/// Counts by verdict, held inline: a map of their own cost each edge ~57 of its ~390 bytes
/// (`cargo xtask bench agent`). Written as a map of the non-zero ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally([u64; Verdict::ALL.len()]);

/// Where a verdict counts in a [`Tally`] (a new verdict does not compile until it has one).
pub(super) fn slot(v: Verdict) -> usize {
    match v {
        Verdict::Established => 0,
        Verdict::Refused => 1,
        Verdict::Timeout => 2,
        Verdict::Dropped => 3,
        Verdict::Sent => 4,
        Verdict::Received => 5,
        Verdict::Answered => 6,
    }
}

impl Tally {
    pub fn get(&self, v: Verdict) -> u64 {
        self.0[slot(v)]
    }

    pub fn add(&mut self, v: Verdict, n: u64) {
        self.0[slot(v)] += n;
    }

    /// The non-zero counts, in the verdicts' order.
    pub fn iter(&self) -> impl Iterator<Item = (Verdict, u64)> + '_ {
        Verdict::ALL
            .iter()
            .map(|&v| (v, self.get(v)))
            .filter(|&(_, n)| n > 0)
    }
}

impl Serialize for Tally {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Verdict, u64>::deserialize(d)?;
        let mut t = Tally::default();
        for (v, n) in map {
            t.add(v, n);
        }
        Ok(t)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EdgeStats {
    #[serde(default)]
    pub verdicts: Tally,
    /// Dropped packets by the kernel's drop reason (NETFILTER_DROP, NO_SOCKET, ...).
    #[serde(
        rename = "dropReasons",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    #[schemars(schema_with = "counts")]
    pub drop_reasons: BTreeMap<String, u64>,
    #[serde(rename = "firstSeen", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub first_seen: Option<Timestamp>,
    #[serde(rename = "lastSeen", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub last_seen: Option<Timestamp>,
}

impl EdgeStats {
    pub(super) fn add_record(&mut self, r: &FlowRecord) {
        if let Some(v) = r.verdict {
            self.verdicts.add(v, r.count);
        }
        if let Some(reason) = &r.drop_reason {
            *self.drop_reasons.entry(reason.clone()).or_default() += r.count;
        }
        crate::record::widen_span(
            &mut self.first_seen,
            &mut self.last_seen,
            r.first_seen,
            r.last_seen,
        );
    }

    /// Adds another tally of the same edge.
    pub(super) fn add(&mut self, other: &EdgeStats) {
        for (v, n) in other.verdicts.iter() {
            self.verdicts.add(v, n);
        }
        for (reason, n) in &other.drop_reasons {
            *self.drop_reasons.entry(reason.clone()).or_default() += n;
        }
        crate::record::widen_span(
            &mut self.first_seen,
            &mut self.last_seen,
            other.first_seen,
            other.last_seen,
        );
    }
}

/// One entry of `spec.edges`: its key and its counts, side by side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WireEdge {
    #[serde(flatten)]
    pub key: WireKey,
    #[serde(flatten)]
    pub stats: EdgeStats,
}

/// One `ObservedTraffic` object: one page of one node's share of one workload's edges
/// (see [`super::layout`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficObject {
    pub namespace: String,
    pub name: String,
    pub workload: Workload,
    /// The node whose agent wrote it, its only writer.
    pub node: String,
    /// Which of the share's pages this is.
    pub page: u32,
    /// How many pages the share has: page 0's count is the one read back (it is written
    /// last, so it never counts a page not yet written).
    pub pages: u32,
    pub edges: Vec<WireEdge>,
}

impl TrafficObject {
    pub fn workload_key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
        }
    }

    /// Reads an object as the API server returns it (JSON). Refuses objects that do not
    /// have the CRD's shape, naming the field.
    pub fn parse(object: &Value) -> Result<Self, String> {
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{what}: missing or not a string"))
        };
        let namespace = text(&object["metadata"]["namespace"], "metadata.namespace")?;
        let name = text(&object["metadata"]["name"], "metadata.name")?;
        let spec = &object["spec"];
        let workload = Workload {
            kind: text(&spec["workload"]["kind"], "spec.workload.kind")?
                .as_str()
                .into(),
            name: text(&spec["workload"]["name"], "spec.workload.name")?,
        };
        let node = text(&spec["node"], "spec.node")?;
        let page = match &spec["page"] {
            Value::Null => 0,
            v => v
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or("spec.page: not a page number")?,
        };
        let pages = match &spec["pages"] {
            Value::Null => page.checked_add(1).ok_or("spec.page: not a page number")?,
            v => v
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p > page)
                .ok_or("spec.pages: not a count of pages above spec.page")?,
        };
        let listed = match &spec["edges"] {
            Value::Null => &[][..],
            Value::Array(a) => a.as_slice(),
            _ => return Err("spec.edges: not a list".into()),
        };
        let edges = listed
            .iter()
            .enumerate()
            .map(|(i, e)| WireEdge::deserialize(e).map_err(|err| format!("spec.edges[{i}]: {err}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            namespace,
            name,
            workload,
            node,
            page,
            pages,
            edges,
        })
    }

    /// The object as JSON, as the API server holds it.
    pub fn to_value(&self) -> Value {
        json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": super::layout::labels(&self.workload, &self.node),
            },
            "spec": {"workload": self.workload, "node": self.node, "page": self.page, "pages": self.pages, "edges": self.edges},
        })
    }
}

/// A port: 0 (unknown) to 65535.
fn port(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": 65535})
}

/// Counts by name, never negative.
fn counts(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
    })
}

fn date_time(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

impl JsonSchema for Tally {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Tally".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<String> = Verdict::ALL.iter().map(|v| v.to_string()).collect();
        schemars::json_schema!({
            "type": "object",
            "description": format!("Counts by observed verdict ({}).", names.join(", ")),
            "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
        })
    }
}
