//! The `ObservedTraffic` custom resource, typed: the spec is flowpol-analysis' wire shape,
//! and `deploy/crd.yaml` is generated from it (`cargo xtask crd`; a test fails when the
//! committed file drifts), so the schema, the writer and the reader cannot disagree.
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use flowpol_analysis::{
    cluster::Workload,
    observed::{layout, TrafficObject, WireEdge},
};

/// What one workload's pods on one node were seen doing (one page of it, when that is too
/// large for one object: see `flowpol_analysis::observed::layout`). The node's agent is its
/// only writer, with server-side apply under its own field manager (`flowpol-agent/<node>`).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flowpol.io",
    version = "v1alpha1",
    kind = "ObservedTraffic",
    plural = "observedtraffics",
    shortname = "otraffic",
    namespaced,
    doc = "ObservedTraffic: the traffic of one workload's pods on one node, as its agent saw it.",
    printcolumn = r#"{"name": "Workload", "type": "string", "jsonPath": ".spec.workload.name"}"#,
    printcolumn = r#"{"name": "Kind", "type": "string", "jsonPath": ".spec.workload.kind"}"#,
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.node"}"#,
    printcolumn = r#"{"name": "Page", "type": "integer", "jsonPath": ".spec.page"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct ObservedTrafficSpec {
    /// The workload an object is about.
    pub workload: Workload,
    /// The node whose agent saw the edges, and writes them.
    pub node: String,
    /// Which page of the node's share this is (edges are spread over pages by a hash of
    /// their key when one object would be too large).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub page: u32,
    /// How many pages the node's share has (page 0's count is the one read back).
    #[schemars(range(min = 1))]
    pub pages: u32,
    /// Atomic: the one writer replaces the list whole, so managedFields stays one small
    /// entry however many edges there are.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub edges: Vec<WireEdge>,
}

impl From<TrafficObject> for ObservedTraffic {
    fn from(o: TrafficObject) -> Self {
        let labels = layout::labels(&o.workload, &o.node)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let mut object = ObservedTraffic::new(
            &o.name,
            ObservedTrafficSpec {
                workload: o.workload,
                node: o.node,
                page: o.page,
                pages: o.pages,
                edges: o.edges,
            },
        );
        object.metadata.namespace = Some(o.namespace);
        object.metadata.labels = Some(labels);
        object
    }
}

/// The header of deploy/crd.yaml: what it is, and that it is generated.
const HEADER: &str =
    "# ObservedTraffic: what one workload's pods on one node were seen doing (one page of it when
# that is too large for one object, each under 512 KiB: see deploy/README.md). The node's
# agent is its only writer, with server-side apply under its own field manager
# (flowpol-agent/<node>).
#
# Generated from crates/kube/src/crd.rs by `cargo xtask crd`: do not edit.
";

/// deploy/crd.yaml as it must read.
pub fn crd_yaml() -> String {
    let crd = serde_yaml::to_string(&ObservedTraffic::crd()).expect("a CRD serializes");
    format!("{HEADER}{crd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crd.yaml");
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == crd_yaml(),
            "deploy/crd.yaml differs from the ObservedTraffic type: run `cargo xtask crd`"
        );
    }

    /// What the schema says, read back from the generated YAML, not from the types.
    #[test]
    fn the_schema_names_the_node_once_and_bounds_what_it_can() {
        let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "otraffic");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut top: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["node", "pages", "workload"]);
        assert_eq!(spec["properties"]["page"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(spec["properties"]["pages"]["minimum"].as_f64(), Some(1.0));
        let edges = &spec["properties"]["edges"];
        assert_eq!(edges["x-kubernetes-list-type"], "atomic");
        let item = &edges["items"];
        let mut required: Vec<&str> = item["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        required.sort();
        assert_eq!(required, ["direction", "peer", "port", "protocol"]);
        let p = &item["properties"];
        assert_eq!(
            p["direction"]["enum"],
            serde_json::json!(["ingress", "egress"])
        );
        assert_eq!(
            p["protocol"]["enum"],
            serde_json::json!(["TCP", "UDP", "SCTP"])
        );
        let bound = |v: &serde_json::Value, b: &str| v[b].as_f64();
        assert_eq!(
            (bound(&p["port"], "minimum"), bound(&p["port"], "maximum")),
            (Some(0.0), Some(65535.0))
        );
        assert_eq!(
            bound(&p["verdicts"]["additionalProperties"], "minimum"),
            Some(0.0)
        );
        assert_eq!(p["dropReasons"]["additionalProperties"]["format"], "int64");
        assert_eq!(p["firstSeen"]["format"], "date-time");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Workload", "Kind", "Node", "Page", "Age"]);
    }
}
