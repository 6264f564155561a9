//! Checks a cluster-scoped policy as its CRD's schema and CEL rules check it (experimental
//! channel, which has every field), and maps it onto [`super::ClusterPolicy`].
//!
//! Limits and rules, from the CRDs: v1alpha2 priority 0-1000, at most 25 rules, 1-25 peers
//! and 1-25 protocols a rule, rule names at most 100 characters, exactly one member set in
//! `subject`, each peer, each protocol entry and each port, `tcp`/`udp`/`sctp` with a
//! `destinationPort`, ports 1-65535, ranges with start < end, networks 1-25 CIDRs of at most
//! 43 characters (`isCIDR`), domainNames 1-25 names matching the DomainName pattern, both
//! sets without duplicates, and no named port in an egress rule with a networks, nodes or
//! domainNames peer. v1alpha1 the same with 100 for rules, peers and ports, `Allow` for
//! `Accept`, `ports` for `protocols`, both selectors of `pods` required, and a Baseline
//! object named `default`. Beyond the CRDs: label selectors are checked as NetworkPolicy's
//! are (an implementation cannot parse a bad operator, and each one treats it its own way).
use ipnet::IpNet;

use super::{
    api::{self, LabelSelector, NamespacedPod, Peer, Source},
    Action, ClusterPeer, ClusterPolicy, ClusterRule, Kind, ProtocolMatch, Subject, Tier,
};
use crate::{
    policy::selector::Selector,
    validation::{FieldError, Problem},
};

mod ports;
use ports::{anp_ports, cnp_protocols, egress_named_ports};

/// A cluster-scoped policy its API server would refuse, named with the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} {name}: {error}", kind.as_str())]
pub struct ClusterPolicyError {
    pub kind: Kind,
    pub name: String,
    pub error: FieldError,
}

/// Compiles every object, or reports every invalid one.
pub fn compile_all(sources: &[Source]) -> Result<Vec<ClusterPolicy>, Vec<ClusterPolicyError>> {
    let (ok, errors): (Vec<_>, Vec<_>) = sources.iter().map(compile).partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().map(Result::unwrap).collect())
    } else {
        Err(errors.into_iter().map(|e| e.unwrap_err()).collect())
    }
}

type Checked<T> = Result<T, FieldError>;

fn err<T>(field: impl Into<String>, problem: Problem) -> Checked<T> {
    Err(FieldError::new(field, problem))
}

/// What differs between the two API versions while checking.
#[derive(Clone, Copy)]
struct Version {
    kind: Kind,
    /// maxItems of rules, peers and ports.
    max_items: usize,
    /// Whether `pods.namespaceSelector` is required (v1alpha1).
    pod_namespaces_required: bool,
}

pub fn compile(source: &Source) -> Result<ClusterPolicy, ClusterPolicyError> {
    let kind = match source {
        Source::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        Source::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
        Source::BaselineAdminNetworkPolicy(_) => Kind::BaselineAdminNetworkPolicy,
    };
    let name = source.name().to_owned();
    let checked = match source {
        Source::ClusterNetworkPolicy(o) => cnp(&name, o.spec.as_ref()),
        Source::AdminNetworkPolicy(o) | Source::BaselineAdminNetworkPolicy(o) => {
            anp(kind, &name, o.spec.as_ref())
        }
    };
    let checked = if name.is_empty() {
        err("metadata.name", Problem::Missing)
    } else {
        checked
    };
    checked.map_err(|error| ClusterPolicyError { kind, name, error })
}

fn cnp(name: &str, spec: Option<&api::CnpSpec>) -> Checked<ClusterPolicy> {
    let Some(spec) = spec else {
        return err("spec", Problem::Missing);
    };
    let v = Version {
        kind: Kind::ClusterNetworkPolicy,
        max_items: 25,
        pod_namespaces_required: false,
    };
    let tier = match required(spec.tier.as_deref(), "spec.tier")? {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => return err("spec.tier", not_one_of(other, &["Admin", "Baseline"])),
    };
    let priority = priority(spec.priority, "spec.priority")?;
    let subject = subject(spec.subject.as_ref(), v)?;
    let ingress = rules(spec.ingress.as_deref(), "spec.ingress", v, |r, field| {
        let action = cnp_action(r.action.as_deref(), &format!("{field}.action"))?;
        let peers = peers(
            r.from.as_deref(),
            &format!("{field}.from"),
            v,
            Side::Ingress,
        )?;
        let protocols = cnp_protocols(r.protocols.as_deref(), &format!("{field}.protocols"))?;
        rule(r.name.as_deref(), field, action, peers, protocols)
    })?;
    let egress = rules(spec.egress.as_deref(), "spec.egress", v, |r, field| {
        let action = cnp_action(r.action.as_deref(), &format!("{field}.action"))?;
        let peers = peers(r.to.as_deref(), &format!("{field}.to"), v, Side::Egress)?;
        let protocols = cnp_protocols(r.protocols.as_deref(), &format!("{field}.protocols"))?;
        let protocols = egress_named_ports(protocols, &peers, field)?;
        rule(r.name.as_deref(), field, action, peers, protocols)
    })?;
    Ok(ClusterPolicy {
        kind: v.kind,
        name: name.to_owned(),
        tier,
        priority: Some(priority),
        subject,
        ingress,
        egress,
    })
}

fn anp(kind: Kind, name: &str, spec: Option<&api::AnpSpec>) -> Checked<ClusterPolicy> {
    let baseline = kind == Kind::BaselineAdminNetworkPolicy;
    if baseline && name != "default" {
        return err("metadata.name", Problem::BaselineNotDefault);
    }
    let Some(spec) = spec else {
        return err("spec", Problem::Missing);
    };
    let v = Version {
        kind,
        max_items: 100,
        pod_namespaces_required: true,
    };
    let priority = if baseline {
        if spec.priority.is_some() {
            return err(
                "spec.priority",
                Problem::NotAllowedHere {
                    field: "priority",
                    why: "a BaselineAdminNetworkPolicy has no priority",
                },
            );
        }
        None
    } else {
        Some(priority(spec.priority, "spec.priority")?)
    };
    let actions: &'static [&'static str] = if baseline {
        &["Allow", "Deny"]
    } else {
        &["Allow", "Deny", "Pass"]
    };
    let action = |a: Option<&str>, field: &str| -> Checked<Action> {
        let a = required(a, field)?;
        match a {
            "Allow" => Ok(Action::Accept),
            "Deny" => Ok(Action::Deny),
            "Pass" if !baseline => Ok(Action::Pass),
            other => err(field, not_one_of(other, actions)),
        }
    };
    let subject = subject(spec.subject.as_ref(), v)?;
    let ingress = rules(spec.ingress.as_deref(), "spec.ingress", v, |r, field| {
        let action = action(r.action.as_deref(), &format!("{field}.action"))?;
        let peers = peers(
            r.from.as_deref(),
            &format!("{field}.from"),
            v,
            Side::Ingress,
        )?;
        let ports = anp_ports(r.ports.as_deref(), &format!("{field}.ports"), v)?;
        rule(r.name.as_deref(), field, action, peers, ports)
    })?;
    let egress = rules(spec.egress.as_deref(), "spec.egress", v, |r, field| {
        let action = action(r.action.as_deref(), &format!("{field}.action"))?;
        let peers = peers(r.to.as_deref(), &format!("{field}.to"), v, Side::Egress)?;
        let ports = anp_ports(r.ports.as_deref(), &format!("{field}.ports"), v)?;
        let ports = egress_named_ports(ports, &peers, field)?;
        rule(r.name.as_deref(), field, action, peers, ports)
    })?;
    Ok(ClusterPolicy {
        kind,
        name: name.to_owned(),
        tier: if baseline {
            Tier::Baseline
        } else {
            Tier::Admin
        },
        priority,
        subject,
        ingress,
        egress,
    })
}

fn required<'a, T: ?Sized>(v: Option<&'a T>, field: &str) -> Checked<&'a T> {
    v.ok_or_else(|| FieldError::new(field, Problem::Missing))
}

fn not_one_of(value: &str, allowed: &'static [&'static str]) -> Problem {
    Problem::NotOneOf {
        value: value.to_owned(),
        allowed,
    }
}

fn priority(p: Option<i64>, field: &str) -> Checked<u32> {
    let p = *required(p.as_ref(), field)?;
    if !(0..=1000).contains(&p) {
        return err(
            field,
            Problem::OutOfRange {
                value: p,
                min: 0,
                max: 1000,
            },
        );
    }
    Ok(p as u32)
}

/// Exactly one of `set` (names paired with whether each is present) is present.
fn exactly_one(field: &str, fields: &'static [&'static str], present: &[bool]) -> Checked<()> {
    let set: Vec<&'static str> = fields
        .iter()
        .zip(present)
        .filter(|(_, p)| **p)
        .map(|(f, _)| *f)
        .collect();
    if set.len() == 1 {
        Ok(())
    } else {
        err(field, Problem::ExactlyOne { fields, set })
    }
}

fn count(field: &str, len: usize, max: usize) -> Checked<()> {
    match len {
        0 => err(field, Problem::NoItems),
        n if n > max => err(field, Problem::TooManyItems { found: n, max }),
        _ => Ok(()),
    }
}

fn selector(s: &LabelSelector, field: &str) -> Checked<Selector> {
    let converted = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: s.match_labels.clone(),
        match_expressions: s.match_expressions.as_ref().map(|es| {
            es.iter()
                .map(
                    |e| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: e.values.clone(),
                    },
                )
                .collect()
        }),
    };
    Selector::compile(&converted)
        .map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.problem))
}

fn namespaced_pod(p: &NamespacedPod, field: &str, v: Version) -> Checked<(Selector, Selector)> {
    let namespaces = match &p.namespace_selector {
        Some(s) => selector(s, &format!("{field}.namespaceSelector"))?,
        None if v.pod_namespaces_required => {
            return err(format!("{field}.namespaceSelector"), Problem::Missing)
        }
        // A non-pointer struct in v1alpha2: absent is `{}`, every namespace.
        None => Selector::default(),
    };
    let pods = selector(
        required(p.pod_selector.as_ref(), &format!("{field}.podSelector"))?,
        &format!("{field}.podSelector"),
    )?;
    Ok((namespaces, pods))
}

fn subject(s: Option<&api::Subject>, v: Version) -> Checked<Subject> {
    let s = required(s, "spec.subject")?;
    exactly_one(
        "spec.subject",
        &["namespaces", "pods"],
        &[s.namespaces.is_some(), s.pods.is_some()],
    )?;
    Ok(match (&s.namespaces, &s.pods) {
        (Some(ns), _) => Subject::Namespaces(selector(ns, "spec.subject.namespaces")?),
        (None, Some(p)) => {
            let (namespaces, pods) = namespaced_pod(p, "spec.subject.pods", v)?;
            Subject::Pods { namespaces, pods }
        }
        (None, None) => unreachable!("exactly_one checked"),
    })
}

fn rules<R>(
    list: Option<&[R]>,
    field: &str,
    v: Version,
    each: impl Fn(&R, &str) -> Checked<ClusterRule>,
) -> Checked<Vec<ClusterRule>> {
    let list = list.unwrap_or_default();
    if list.len() > v.max_items {
        return err(
            field,
            Problem::TooManyItems {
                found: list.len(),
                max: v.max_items,
            },
        );
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| each(r, &format!("{field}[{i}]")))
        .collect()
}

fn rule(
    name: Option<&str>,
    field: &str,
    action: Action,
    peers: Vec<ClusterPeer>,
    protocols: Vec<ProtocolMatch>,
) -> Checked<ClusterRule> {
    if let Some(n) = name {
        let len = n.chars().count();
        if len > 100 {
            return err(format!("{field}.name"), Problem::TooLong { len, max: 100 });
        }
    }
    Ok(ClusterRule {
        name: name.map(str::to_owned),
        action,
        peers,
        protocols,
    })
}

fn cnp_action(a: Option<&str>, field: &str) -> Checked<Action> {
    match required(a, field)? {
        "Accept" => Ok(Action::Accept),
        "Deny" => Ok(Action::Deny),
        "Pass" => Ok(Action::Pass),
        other => err(field, not_one_of(other, &["Accept", "Deny", "Pass"])),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ingress,
    Egress,
}

fn peers(list: Option<&[Peer]>, field: &str, v: Version, side: Side) -> Checked<Vec<ClusterPeer>> {
    let list = required(list, field)?;
    count(field, list.len(), v.max_items)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let egress_only = |name: &'static str, present: bool| -> Checked<()> {
            if present && side == Side::Ingress {
                return err(
                    format!("{field}.{name}"),
                    Problem::NotAllowedHere {
                        field: name,
                        why: "an ingress peer is namespaces or pods",
                    },
                );
            }
            Ok(())
        };
        egress_only("nodes", p.nodes.is_some())?;
        egress_only("networks", p.networks.is_some())?;
        egress_only("domainNames", p.domain_names.is_some())?;
        if p.domain_names.is_some() && v.kind == Kind::BaselineAdminNetworkPolicy {
            return err(
                format!("{field}.domainNames"),
                Problem::NotAllowedHere {
                    field: "domainNames",
                    why: "a BaselineAdminNetworkPolicy egress peer has no domainNames",
                },
            );
        }
        let fields: &'static [&'static str] = match side {
            Side::Ingress => &["namespaces", "pods"],
            Side::Egress => &["namespaces", "pods", "nodes", "networks", "domainNames"],
        };
        exactly_one(
            &field,
            fields,
            &[
                p.namespaces.is_some(),
                p.pods.is_some(),
                p.nodes.is_some(),
                p.networks.is_some(),
                p.domain_names.is_some(),
            ][..fields.len()],
        )?;
        out.push(if let Some(ns) = &p.namespaces {
            ClusterPeer::Namespaces(selector(ns, &format!("{field}.namespaces"))?)
        } else if let Some(pods) = &p.pods {
            let (namespaces, pods) = namespaced_pod(pods, &format!("{field}.pods"), v)?;
            ClusterPeer::Pods { namespaces, pods }
        } else if let Some(nodes) = &p.nodes {
            ClusterPeer::Nodes(selector(nodes, &format!("{field}.nodes"))?)
        } else if let Some(nets) = &p.networks {
            ClusterPeer::Networks(networks(nets, &format!("{field}.networks"))?)
        } else if let Some(names) = &p.domain_names {
            ClusterPeer::DomainNames(domain_names(names, &format!("{field}.domainNames"))?)
        } else {
            unreachable!("exactly_one checked")
        });
    }
    Ok(out)
}

fn set_of<'a>(items: &'a [String], field: &str, max: usize) -> Checked<&'a [String]> {
    count(field, items.len(), max)?;
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return err(
                format!("{field}[{i}]"),
                Problem::DuplicateItem(item.clone()),
            );
        }
    }
    Ok(items)
}

/// CEL `isCIDR` (v0.2.0): an address and a prefix length; host bits are allowed and cleared.
fn networks(items: &[String], field: &str) -> Checked<Vec<IpNet>> {
    set_of(items, field, 25)?
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let field = format!("{field}[{i}]");
            let len = text.chars().count();
            if len > 43 {
                return err(field, Problem::TooLong { len, max: 43 });
            }
            text.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| FieldError::new(field, Problem::NotACidr(text.clone())))
        })
        .collect()
}

fn domain_names(items: &[String], field: &str) -> Checked<Vec<String>> {
    set_of(items, field, 25)?
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if is_domain_name(name) {
                Ok(name.clone())
            } else {
                err(
                    format!("{field}[{i}]"),
                    Problem::NotADomainName(name.clone()),
                )
            }
        })
        .collect()
}

/// The DomainName pattern (as v0.3.0 corrected it): `(*.)?(label.)+label.?`, a label being
/// letters, digits, `-` and `_`, starting and ending with a letter or digit.
pub(crate) fn is_domain_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    };
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| label(l))
}
