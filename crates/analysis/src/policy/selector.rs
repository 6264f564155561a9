//! Label selectors (`matchLabels` and `matchExpressions`, ANDed), compiled once and checked.
use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    cluster::LabelLookup,
    validation::{FieldError, Operator, Problem},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    In(String, BTreeSet<String>),
    /// Also true when the label is absent.
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A compiled selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Compiles `sel`; an error names the offending field relative to it.
    pub fn compile(sel: &LabelSelector) -> Result<Self, FieldError> {
        let labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut requirements = Vec::new();
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let operator = Operator::parse(&e.operator)
                .map_err(|p| FieldError::new(format!("{field}.operator"), p))?;
            if operator.takes_values() && values.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.values"),
                    Problem::OperatorNeedsValues(operator),
                ));
            }
            if !operator.takes_values() && !values.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.values"),
                    Problem::OperatorTakesNoValues(operator),
                ));
            }
            let key = e.key.clone();
            requirements.push(match operator {
                Operator::In => Requirement::In(key, values),
                Operator::NotIn => Requirement::NotIn(key, values),
                Operator::Exists => Requirement::Exists(key),
                Operator::DoesNotExist => Requirement::DoesNotExist(key),
            });
        }
        Ok(Self {
            labels,
            requirements,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &impl LabelLookup) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(v.as_str()))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.label(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.label(k).is_some(),
                Requirement::DoesNotExist(k) => labels.label(k).is_none(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Labels;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::compile(&LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(
                    ml.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        })
        .expect("valid selector")
    }

    #[test]
    fn operators_follow_the_api_reference() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let bare = labels(&[]);
        assert!(
            sel(&[], vec![]).matches(&bare),
            "empty selector matches everything"
        );
        assert!(sel(&[("app", "web")], vec![]).matches(&web));
        assert!(
            !sel(&[("app", "web"), ("tier", "back")], vec![]).matches(&web),
            "matchLabels are ANDed"
        );
        assert!(sel(&[], vec![expr("app", "In", &["web", "api"])]).matches(&web));
        assert!(!sel(&[], vec![expr("app", "In", &["api"])]).matches(&web));
        assert!(!sel(&[], vec![expr("app", "In", &["web"])]).matches(&bare));
        assert!(sel(&[], vec![expr("app", "NotIn", &["api"])]).matches(&web));
        assert!(
            sel(&[], vec![expr("app", "NotIn", &["api"])]).matches(&bare),
            "NotIn matches an absent label"
        );
        assert!(!sel(&[], vec![expr("app", "NotIn", &["web"])]).matches(&web));
        assert!(sel(&[], vec![expr("tier", "Exists", &[])]).matches(&web));
        assert!(!sel(&[], vec![expr("tier", "Exists", &[])]).matches(&bare));
        assert!(sel(&[], vec![expr("tier", "DoesNotExist", &[])]).matches(&bare));
        assert!(!sel(&[], vec![expr("tier", "DoesNotExist", &[])]).matches(&web));
        assert!(
            !sel(&[("app", "web")], vec![expr("tier", "DoesNotExist", &[])]).matches(&web),
            "matchLabels and matchExpressions are ANDed"
        );
    }

    #[test]
    fn invalid_expressions_are_rejected_with_the_field() {
        let bad = |e| {
            Selector::compile(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
            .unwrap_err()
        };
        assert_eq!(
            bad(expr("a", "Like", &["x"])),
            FieldError::new(
                "matchExpressions[0].operator",
                Problem::UnknownOperator("Like".into())
            )
        );
        assert_eq!(
            bad(expr("a", "In", &[])),
            FieldError::new(
                "matchExpressions[0].values",
                Problem::OperatorNeedsValues(Operator::In)
            )
        );
        assert_eq!(
            bad(expr("a", "Exists", &["x"])),
            FieldError::new(
                "matchExpressions[0].values",
                Problem::OperatorTakesNoValues(Operator::Exists)
            )
        );
    }
}
