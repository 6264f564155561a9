//! The objects as the API defines them, field for field: ClusterNetworkPolicy
//! (`policy.networking.k8s.io/v1alpha2`, network-policy-api v0.2.0, the same schema as its
//! v1beta1) and AdminNetworkPolicy / BaselineAdminNetworkPolicy (`v1alpha1`, v0.1.7).
//!
//! Every struct refuses fields it does not know: the API server prunes unknown fields of a
//! structural schema, so an object carrying one comes from another version of the API (or
//! has a typo), and reading it as if the field were absent could turn a rule into "all".
//! Required fields are `Option` here so that a missing one is reported with its path by
//! [`super::compile`] rather than as a bare decoding error.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// `metav1.LabelSelector`, strict: `{namespaceSelector: ...}` where a selector is expected
/// (the v0.1.1 shape) is an error, not an empty selector that selects everything.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<Requirement>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

/// Pods chosen by their namespace's labels and their own.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
}

/// `spec.subject`: exactly one of the two.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
}

/// Root fields every object has; `status` is the implementation's and is not read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<Spec> {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<Spec>,
    pub status: Option<serde_json::Value>,
}

// ---- v1alpha2 ClusterNetworkPolicy ----

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpSpec {
    pub tier: Option<String>,
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<CnpIngressRule>>,
    pub egress: Option<Vec<CnpEgressRule>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpIngressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub from: Option<Vec<Peer>>,
    pub protocols: Option<Vec<CnpProtocol>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpEgressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub to: Option<Vec<Peer>>,
    pub protocols: Option<Vec<CnpProtocol>>,
}

/// Every peer field of both versions; which ones a direction, kind and tier may use is
/// checked in [`super::compile`], so the message names the field rather than "unknown".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    pub nodes: Option<LabelSelector>,
    pub networks: Option<Vec<String>>,
    pub domain_names: Option<Vec<String>>,
}

/// One protocol entry: exactly one of the four.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpProtocol {
    pub tcp: Option<ProtocolPort>,
    pub udp: Option<ProtocolPort>,
    pub sctp: Option<ProtocolPort>,
    pub destination_named_port: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtocolPort {
    pub destination_port: Option<Port>,
}

/// Exactly one of a number or a range.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    pub number: Option<i64>,
    pub range: Option<PortRange>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

// ---- v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy ----

/// Both kinds' spec; `priority` exists only in AdminNetworkPolicy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpSpec {
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<AnpIngressRule>>,
    pub egress: Option<Vec<AnpEgressRule>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpIngressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub from: Option<Vec<Peer>>,
    pub ports: Option<Vec<AnpPort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpEgressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub to: Option<Vec<Peer>>,
    pub ports: Option<Vec<AnpPort>>,
}

/// Exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPort {
    pub port_number: Option<AnpPortNumber>,
    pub named_port: Option<String>,
    pub port_range: Option<AnpPortRange>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPortNumber {
    /// Defaults to TCP.
    pub protocol: Option<String>,
    pub port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnpPortRange {
    /// Defaults to TCP.
    pub protocol: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// A cluster-scoped policy object as read, of any of the three kinds.
#[derive(Clone, Debug)]
pub enum Source {
    ClusterNetworkPolicy(Object<CnpSpec>),
    AdminNetworkPolicy(Object<AnpSpec>),
    BaselineAdminNetworkPolicy(Object<AnpSpec>),
}

impl Source {
    pub fn name(&self) -> &str {
        let meta = match self {
            Self::ClusterNetworkPolicy(o) => &o.metadata,
            Self::AdminNetworkPolicy(o) | Self::BaselineAdminNetworkPolicy(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// The kind, as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClusterNetworkPolicy(_) => KINDS[0],
            Self::AdminNetworkPolicy(_) => KINDS[1],
            Self::BaselineAdminNetworkPolicy(_) => KINDS[2],
        }
    }

    /// The versions whose schema this reads: v1alpha2 and v1beta1 (the same schema, network-
    /// policy-api v0.3.0) for ClusterNetworkPolicy, v1alpha1 for the other two. An object
    /// without `apiVersion` is taken to be of them.
    pub fn check_api_version(&self) -> Result<(), DecodeError> {
        let (given, accepted): (&Option<String>, &[&str]) = match self {
            Self::ClusterNetworkPolicy(o) => (
                &o.api_version,
                &[
                    "policy.networking.k8s.io/v1alpha2",
                    "policy.networking.k8s.io/v1beta1",
                ],
            ),
            Self::AdminNetworkPolicy(o) | Self::BaselineAdminNetworkPolicy(o) => {
                (&o.api_version, &["policy.networking.k8s.io/v1alpha1"])
            }
        };
        match given {
            Some(v) if !accepted.contains(&v.as_str()) => Err(DecodeError {
                path: "apiVersion".into(),
                message: format!(
                    "`{v}` is not a version flowpol reads for {} ({})",
                    self.kind(),
                    accepted.join(", ")
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The kinds read, as `kind` spells them.
pub const KINDS: [&str; 3] = [
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// An object that does not decode, with the path of the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// `spec.egress[0].to[1]`, or `.` for the object itself.
    pub path: String,
    pub message: String,
}

impl Source {
    /// Decodes an object of kind `kind` (one of [`KINDS`]), from YAML or JSON alike.
    pub fn decode<'de, D: serde::Deserializer<'de>>(
        kind: &str,
        de: D,
    ) -> Result<Self, DecodeError> {
        fn strict<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
            de: D,
        ) -> Result<T, DecodeError> {
            serde_path_to_error::deserialize(de).map_err(|e| DecodeError {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })
        }
        Ok(match kind {
            "ClusterNetworkPolicy" => Self::ClusterNetworkPolicy(strict(de)?),
            "AdminNetworkPolicy" => Self::AdminNetworkPolicy(strict(de)?),
            "BaselineAdminNetworkPolicy" => Self::BaselineAdminNetworkPolicy(strict(de)?),
            other => {
                return Err(DecodeError {
                    path: "kind".into(),
                    message: format!("`{other}` is not a cluster network policy kind"),
                })
            }
        })
    }
}
