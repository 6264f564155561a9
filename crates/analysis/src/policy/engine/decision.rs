//! What the engine answers: per direction, the ruling that decided and the cluster-scoped
//! steps passed on the way, in words for people and in JSON.
use serde::Serialize;

use crate::policy::clusterwide::{Action, Tier};

/// The rule that allowed a connection: rule `rule` of `spec.ingress`/`spec.egress` of `policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: usize,
}

/// A rule of a cluster-scoped policy that matched: rule `rule` of `policy` (`cnp/name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStep {
    pub tier: Tier,
    pub action: Action,
    pub policy: String,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Policies of the same tier and priority whose first matching rule has another action:
    /// the API leaves the choice to the implementation (flowpol takes the first by name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tied_with: Vec<String>,
}

impl ClusterStep {
    /// `[Admin] Deny by cnp/block-metadata rule 0 "metadata"`, with ` (priority 10)` when
    /// `priority` is asked for.
    fn text(&self, priority: bool) -> String {
        let mut s = format!(
            "[{}] {} by {} rule {}",
            self.tier.as_str(),
            self.action.as_str(),
            self.policy,
            self.rule
        );
        if let Some(n) = &self.rule_name {
            s.push_str(&format!(" \"{n}\""));
        }
        if let (true, Some(p)) = (priority, self.priority) {
            s.push_str(&format!(" (priority {p})"));
        }
        if !self.tied_with.is_empty() {
            s.push_str(&format!(
                " (same priority as {}, which would not {}: the API leaves the order to the implementation)",
                self.tied_with.join(", "),
                self.action.as_str()
            ));
        }
        s
    }
}

/// One direction's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ruling {
    /// This end is not a pod of the cluster: no policy applies to it.
    NotAPod { endpoint: String },
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// The other end is the pod's own node, which is always allowed.
    OwnNode,
    /// The pod talks to itself, which no policy restricts.
    Loopback,
    /// Allowed by these rules.
    Allowed { rules: Vec<RuleRef> },
    /// The pod is isolated by these policies and none of their rules matched.
    Denied { isolated_by: Vec<String> },
    /// A cluster-scoped policy's Accept or Deny rule decided.
    Cluster(ClusterStep),
}

impl Ruling {
    pub fn allows(&self) -> bool {
        match self {
            Ruling::Denied { .. } => false,
            Ruling::Cluster(step) => step.action == Action::Accept,
            _ => true,
        }
    }
}

impl Serialize for Ruling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            verdict: PolicyVerdict,
            reason: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            endpoint: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rules: Option<&'a [RuleRef]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            isolated_by: Option<&'a [String]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            by: Option<&'a ClusterStep>,
        }
        let mut json = Json {
            verdict: PolicyVerdict::of(self.allows()),
            reason: "",
            endpoint: None,
            rules: None,
            isolated_by: None,
            by: None,
        };
        json.reason = match self {
            Ruling::NotAPod { endpoint } => {
                json.endpoint = Some(endpoint);
                "not_a_pod"
            }
            Ruling::NotIsolated => "not_isolated",
            Ruling::OwnNode => "own_node",
            Ruling::Loopback => "loopback",
            Ruling::Allowed { rules } => {
                json.rules = Some(rules);
                "rule"
            }
            Ruling::Denied { isolated_by } => {
                json.isolated_by = Some(isolated_by);
                "no_rule_matched"
            }
            Ruling::Cluster(step) => {
                json.by = Some(step);
                "cluster_policy"
            }
        };
        json.serialize(s)
    }
}

/// One direction: the ruling, the Pass steps that led to it, and the rules whose match
/// depends on DNS names when they could change the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub ruling: Ruling,
    /// Pass rules that sent the decision on to the next tier, in order.
    pub passed: Vec<ClusterStep>,
    /// Rules with `domainNames` peers the evaluation went past, assuming the address is
    /// none of their names; non-empty only when a match would change this side's verdict.
    pub undetermined: Vec<ClusterStep>,
}

impl Side {
    pub(crate) fn of(ruling: Ruling) -> Self {
        Self {
            ruling,
            passed: Vec::new(),
            undetermined: Vec::new(),
        }
    }

    pub fn allows(&self) -> bool {
        self.ruling.allows()
    }

    /// The chain in words, or None when the other end has no say (`NotAPod`).
    pub fn text(&self) -> Option<String> {
        let layered = !self.passed.is_empty() || matches!(self.ruling, Ruling::Cluster(_));
        let ruling = match &self.ruling {
            Ruling::NotAPod { .. } => return None,
            Ruling::NotIsolated if layered => "allowed by default (nothing decided)".to_owned(),
            Ruling::NotIsolated => "not isolated".to_owned(),
            Ruling::OwnNode => "own node".into(),
            Ruling::Loopback => "loopback".into(),
            Ruling::Allowed { rules } => format!(
                "allowed by {}",
                rules
                    .iter()
                    .map(|r| format!("{}#{}", r.policy, r.rule))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ruling::Denied { isolated_by } => {
                format!("isolated by {}, no rule matched", isolated_by.join(", "))
            }
            Ruling::Cluster(step) => step.text(true),
        };
        let ruling = match &self.ruling {
            Ruling::Allowed { .. } | Ruling::Denied { .. } | Ruling::OwnNode if layered => {
                format!("[NetworkPolicy] {ruling}")
            }
            _ => ruling,
        };
        let mut chain: Vec<String> = self.passed.iter().map(|s| s.text(false)).collect();
        chain.push(ruling);
        let mut text = chain.join(" -> ");
        if !self.undetermined.is_empty() {
            text.push_str(&format!(
                "; undetermined: {} if the address is one of its domain names",
                self.undetermined
                    .iter()
                    .map(|s| s.text(false))
                    .collect::<Vec<_>>()
                    .join(", or ")
            ));
        }
        Some(text)
    }
}

impl Serialize for Side {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            ruling: &'a Ruling,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            passed: &'a [ClusterStep],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            undetermined: &'a [ClusterStep],
        }
        Json {
            ruling: &self.ruling,
            passed: &self.passed,
            undetermined: &self.undetermined,
        }
        .serialize(s)
    }
}

/// What the declared policies say about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyVerdict {
    Allow,
    Deny,
    /// It depends on whether an address is one of a rule's domain names, which the
    /// addresses alone cannot tell.
    Undetermined,
}

impl PolicyVerdict {
    pub fn of(allowed: bool) -> Self {
        if allowed {
            Self::Allow
        } else {
            Self::Deny
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Undetermined => "undetermined",
        }
    }
}

impl std::fmt::Display for PolicyVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The verdict when no address is one of the domain names rules name; see [`Self::verdict`].
    #[serde(skip)]
    pub allowed: bool,
    /// What each end is: `pod ns/name`, `node name`, `external`.
    pub src: String,
    pub dst: String,
    pub egress: Side,
    pub ingress: Side,
}

impl Decision {
    /// Allow or deny, or undetermined when a rule naming domains could turn it.
    pub fn verdict(&self) -> PolicyVerdict {
        let open = |s: &Side| !s.undetermined.is_empty();
        // Each side either is decided or could go both ways; a side that surely denies
        // decides alone.
        let (e, i) = (&self.egress, &self.ingress);
        if (!open(e) && !e.allows()) || (!open(i) && !i.allows()) {
            PolicyVerdict::Deny
        } else if open(e) || open(i) {
            PolicyVerdict::Undetermined
        } else {
            PolicyVerdict::Allow
        }
    }

    /// Why, per direction that has a say, in words: `egress: allowed by ns/name#0`,
    /// `ingress: isolated by ns/a, ns/b, no rule matched`, `ingress: not isolated`,
    /// `egress: [Admin] Pass by cnp/sensitive rule 1 -> [NetworkPolicy] allowed by shop/web#0`.
    pub fn reasons(&self) -> Vec<String> {
        [(&self.egress, "egress"), (&self.ingress, "ingress")]
            .into_iter()
            .filter_map(|(side, dir)| side.text().map(|t| format!("{dir}: {t}")))
            .collect()
    }
}
