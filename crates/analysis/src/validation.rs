//! What the API server would refuse in an object, typed: the field and the problem, so
//! callers (and tests) match on the kind of mistake rather than on a sentence.
use std::fmt;

use crate::record::UnknownProtocol;

/// A field that does not hold what the API reference says it must.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's path in the object, as `kubectl explain` names it (`spec.ingress[0].ports[1].port`).
    pub field: String,
    pub problem: Problem,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a field, as the API's validation rules put it.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("is missing")]
    Missing,
    #[error("`{0}` is not an IP address")]
    NotAnIp(String),
    #[error("`{0}` is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)")]
    NotACidr(String),
    #[error("`{except}` is not a strict subset of cidr `{cidr}`")]
    ExceptOutsideCidr { except: String, cidr: String },
    #[error("unknown protocol `{0}` (TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("{0} is not a port (1-65535)")]
    NotAPort(i32),
    #[error(
        "`{0}` is not a valid port name (1-15 lowercase letters, digits and '-', with a letter)"
    )]
    BadPortName(String),
    #[error("endPort needs a numeric port")]
    EndPortWithoutPort,
    #[error("endPort cannot be used with a named port")]
    EndPortWithNamedPort,
    #[error("endPort {end} is below port {start}")]
    EndPortBelowPort { start: u16, end: u16 },
    #[error("unknown policy type `{0}` (Ingress or Egress)")]
    UnknownPolicyType(String),
    #[error("ipBlock cannot be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector,
    #[error("a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    #[error("unknown operator `{0}` (In, NotIn, Exists, DoesNotExist)")]
    UnknownOperator(String),
    #[error("operator {0} needs at least one value")]
    OperatorNeedsValues(Operator),
    #[error("operator {0} takes no values")]
    OperatorTakesNoValues(Operator),
    #[error("`{value}` is not one of {}", allowed.join(", "))]
    NotOneOf {
        value: String,
        allowed: &'static [&'static str],
    },
    #[error("{value} is out of range ({min} to {max})")]
    OutOfRange { value: i64, min: i64, max: i64 },
    #[error("exactly one of {} must be set; {}", fields.join(", "), if set.is_empty() { "none is".to_owned() } else { format!("{} are", set.join(" and ")) })]
    ExactlyOne {
        fields: &'static [&'static str],
        set: Vec<&'static str>,
    },
    #[error("needs at least one item")]
    NoItems,
    #[error("has {found} items; at most {max} are allowed")]
    TooManyItems { found: usize, max: usize },
    #[error("is {len} characters long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("Start port must be less than End port (start {start}, end {end})")]
    StartNotBelowEnd { start: u16, end: u16 },
    #[error("`{0}` appears twice in a list that is a set")]
    DuplicateItem(String),
    #[error("`{0}` is not a domain name (`example.com`, or `*.example.com` for its subdomains)")]
    NotADomainName(String),
    /// An object that does not decode as its kind (an unknown field, a wrong type).
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames")]
    NamedPortWithNonPodPeer,
    #[error("`{field}` is not allowed here: {why}")]
    NotAllowedHere {
        field: &'static str,
        why: &'static str,
    },
    #[error("Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster")]
    BaselineNotDefault,
}

impl From<UnknownProtocol> for Problem {
    fn from(e: UnknownProtocol) -> Self {
        Self::UnknownProtocol(e.0)
    }
}

/// A label selector's operator (`matchExpressions[].operator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    /// Reads an operator as the API spells it.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        match text {
            "In" => Ok(Self::In),
            "NotIn" => Ok(Self::NotIn),
            "Exists" => Ok(Self::Exists),
            "DoesNotExist" => Ok(Self::DoesNotExist),
            other => Err(Problem::UnknownOperator(other.to_owned())),
        }
    }

    /// In and NotIn need values; Exists and DoesNotExist take none.
    pub fn takes_values(self) -> bool {
        matches!(self, Self::In | Self::NotIn)
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        })
    }
}
