//! Cluster-scoped policy as the engine holds it: ClusterNetworkPolicy (v1alpha2) and the older
//! AdminNetworkPolicy / BaselineAdminNetworkPolicy (v1alpha1), checked as their CRDs check
//! them and mapped onto one model. docs/reference/cluster-network-policy.md cites the sources.
//!
//! Semantics (network-policy-api v0.2.0, `apis/v1alpha2` doc comments and api-overview):
//! - Tiers are evaluated Admin, then NetworkPolicy, then Baseline, per direction: the
//!   sender's egress and the receiver's ingress are decided apart, and a connection needs
//!   both. Within a tier, policies by ascending priority, each policy's rules in the order
//!   written; the first rule that matches decides. Accept and Deny are final; Pass skips the
//!   rest of its tier. NetworkPolicy decides for the pods it isolates; nothing deciding means
//!   allowed.
//! - A policy without rules for a direction has no effect on it (no implicit isolation).
//! - Subjects and pod peers never include hostNetwork pods; traffic a pod sends to its own
//!   address is never subject to these policies (v0.3.0 api-overview).
//! - Ties in priority are implementation-defined; flowpol takes the policy whose name sorts
//!   first (as kube-network-policies and Calico do) and says when the tie changed the verdict.
//! - AdminNetworkPolicy is an Admin-tier policy (Allow = Accept); the BaselineAdminNetwork
//!   Policy `default` a Baseline-tier one that comes after every Baseline ClusterNetworkPolicy.
pub mod api;
pub mod compile;
#[cfg(test)]
pub(crate) mod tests;

use ipnet::IpNet;

use super::selector::Selector;
use crate::record::Protocol;

pub use compile::{compile, compile_all, ClusterPolicyError};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Action {
    /// v1alpha1's `Allow`.
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

/// Which API an object came from; its explanations are prefixed with the short name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl Kind {
    /// The kubectl short name: `cnp`, `anp`, `banp`.
    pub fn short(self) -> &'static str {
        match self {
            Self::ClusterNetworkPolicy => "cnp",
            Self::AdminNetworkPolicy => "anp",
            Self::BaselineAdminNetworkPolicy => "banp",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Self::AdminNetworkPolicy => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub kind: Kind,
    pub name: String,
    pub tier: Tier,
    /// None for the BaselineAdminNetworkPolicy, which has none and comes last in its tier.
    pub priority: Option<u32>,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// `cnp/name`, `anp/name`, `banp/default`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind.short(), self.name)
    }

    pub fn rules(&self, direction: super::Direction) -> &[ClusterRule] {
        match direction {
            super::Direction::Ingress => &self.ingress,
            super::Direction::Egress => &self.egress,
        }
    }

    /// The order within a tier: priority (none last), then name, then kind.
    pub fn order_key(&self) -> (u32, &str, Kind) {
        (self.priority.unwrap_or(u32::MAX), &self.name, self.kind)
    }
}

/// The pods a policy applies to (never hostNetwork pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the namespaces these labels select.
    Namespaces(Selector),
    /// Pods these labels select in the namespaces those labels select.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    /// ORed; never empty (the CRD requires one).
    pub peers: Vec<ClusterPeer>,
    /// ORed; empty = every protocol and port.
    pub protocols: Vec<ProtocolMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Every pod (not hostNetwork) of the namespaces these labels select.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// The addresses of the nodes these labels select (`status.addresses`), which include
    /// every hostNetwork pod on them. Egress only.
    Nodes(Selector),
    /// Any address in one of these, pods included. Egress only.
    Networks(Vec<IpNet>),
    /// Names resolved by DNS at run time: whether an address is one of them cannot be told
    /// from the address, so a rule that reaches one makes the verdict depend on it.
    DomainNames(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolMatch {
    /// `start..=end` of `protocol` (one port when equal).
    Ports {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// The destination pod's container port of this name, with that port's protocol.
    Named(String),
}
