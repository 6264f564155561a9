//! Checking and decoding, case by case from the CRDs (network-policy-api v0.3.0 experimental
//! ClusterNetworkPolicy, v0.1.7 AdminNetworkPolicy/BaselineAdminNetworkPolicy): each invalid
//! object names the field the API server names. The same objects are sent to a real API
//! server with the real CRDs in probe-user/tests/kube_cluster_policies.rs.
use super::{
    api::Source, compile, Action, ClusterPeer, ClusterPolicy, ClusterPolicyError, Kind,
    ProtocolMatch, Subject, Tier,
};
use crate::{record::Protocol, validation::Problem};

/// Decodes one object of any of the three kinds (its `kind` field says which).
pub(crate) fn source(yaml: &str) -> Source {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test object is YAML");
    let kind = value["kind"]
        .as_str()
        .expect("test object has a kind")
        .to_owned();
    Source::decode(&kind, value).unwrap_or_else(|e| panic!("test object decodes: {e}"))
}

/// A checked cluster policy, for the engine's tests.
pub(crate) fn cluster_policy(yaml: &str) -> ClusterPolicy {
    compile(&source(yaml)).unwrap_or_else(|e| panic!("test object is valid: {e}"))
}

fn refused(yaml: &str) -> ClusterPolicyError {
    match compile(&source(yaml)) {
        Ok(p) => panic!("accepted what the CRD refuses:\n{yaml}\n{p:#?}"),
        Err(e) => e,
    }
}

/// A v1alpha2 ClusterNetworkPolicy named `p` with this spec (flow-style YAML).
pub(crate) fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata: {{name: p}}\nspec: {spec}"
    )
}

fn anp(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: {kind}\n\
         metadata: {{name: {name}}}\nspec: {spec}"
    )
}

const SUBJECT: &str = "subject: {namespaces: {}}";

/// What a case expects of the problem found.
type Expect = fn(&Problem) -> bool;

#[test]
fn a_cluster_network_policy_maps_onto_the_model() {
    let p = cluster_policy(&cnp(
        "{tier: Admin, priority: 10, subject: {pods: {podSelector: {matchLabels: {app: db}}}},
          ingress: [{name: from-b, action: Deny, from: [{namespaces: {matchLabels: {team: b}}}],
                     protocols: [{tcp: {destinationPort: {number: 80}}},
                                 {udp: {destinationPort: {range: {start: 1000, end: 2000}}}},
                                 {destinationNamedPort: dns}]}],
          egress: [{action: Accept, to: [{networks: [10.1.2.3/8, 'fd00::/8']}]},
                   {action: Pass, to: [{nodes: {}}]}]}",
    ));
    assert_eq!(p.kind, Kind::ClusterNetworkPolicy);
    assert_eq!(p.id(), "cnp/p");
    assert_eq!((p.tier, p.priority), (Tier::Admin, Some(10)));
    // An absent namespaceSelector of `pods` is `{}` in v1alpha2: every namespace.
    let Subject::Pods { namespaces, .. } = &p.subject else {
        panic!("{:?}", p.subject)
    };
    assert_eq!(*namespaces, Default::default());
    let rule = &p.ingress[0];
    assert_eq!(
        (rule.name.as_deref(), rule.action),
        (Some("from-b"), Action::Deny)
    );
    assert_eq!(
        rule.protocols,
        vec![
            ProtocolMatch::Ports {
                protocol: Protocol::TCP,
                start: 80,
                end: 80
            },
            ProtocolMatch::Ports {
                protocol: Protocol::UDP,
                start: 1000,
                end: 2000
            },
            ProtocolMatch::Named("dns".into()),
        ]
    );
    // isCIDR in v0.2.0 takes host bits; they mean nothing.
    assert_eq!(
        p.egress[0].peers,
        vec![ClusterPeer::Networks(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap()
        ])]
    );
    assert_eq!(p.egress[1].action, Action::Pass);
}

#[test]
fn v1alpha1_objects_map_allow_to_accept_and_baseline_has_no_priority() {
    let a = cluster_policy(&anp(
        "AdminNetworkPolicy",
        "a",
        "{priority: 3, subject: {namespaces: {}},
          egress: [{action: Allow, to: [{pods: {namespaceSelector: {}, podSelector: {}}}],
                    ports: [{portNumber: {port: 53, protocol: UDP}}, {portRange: {start: 80, end: 80}},
                            {namedPort: web}]}]}",
    ));
    assert_eq!(
        (a.tier, a.priority, a.egress[0].action),
        (Tier::Admin, Some(3), Action::Accept)
    );
    // portRange's protocol defaults to TCP, and start == end is allowed in v1alpha1.
    assert_eq!(
        a.egress[0].protocols[1],
        ProtocolMatch::Ports {
            protocol: Protocol::TCP,
            start: 80,
            end: 80
        }
    );
    let b = cluster_policy(&anp(
        "BaselineAdminNetworkPolicy",
        "default",
        "{subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}",
    ));
    assert_eq!(
        (b.tier, b.priority, b.id()),
        (Tier::Baseline, None, "banp/default".into())
    );
}

/// (spec, field, what is wrong) for ClusterNetworkPolicy v1alpha2.
#[test]
fn each_invalid_cluster_network_policy_is_refused_naming_the_field() {
    let deny_all = "ingress: [{action: Deny, from: [{namespaces: {}}]}]";
    let cases: Vec<(String, &str, Expect)> = vec![
        (
            format!("{{priority: 1, {SUBJECT}, {deny_all}}}"),
            "spec.tier",
            |p| *p == Problem::Missing,
        ),
        (
            format!("{{tier: Middle, priority: 1, {SUBJECT}}}"),
            "spec.tier",
            |p| matches!(p, Problem::NotOneOf { value, .. } if value == "Middle"),
        ),
        (
            format!("{{tier: Admin, priority: 1001, {SUBJECT}}}"),
            "spec.priority",
            |p| matches!(p, Problem::OutOfRange { value: 1001, .. }),
        ),
        (
            format!("{{tier: Admin, priority: -1, {SUBJECT}}}"),
            "spec.priority",
            |p| matches!(p, Problem::OutOfRange { value: -1, .. }),
        ),
        (
            "{tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}".into(),
            "spec.subject",
            |p| matches!(p, Problem::ExactlyOne { set, .. } if set.len() == 2),
        ),
        (
            "{tier: Admin, priority: 1, subject: {}}".into(),
            "spec.subject",
            |p| matches!(p, Problem::ExactlyOne { set, .. } if set.is_empty()),
        ),
        (
            "{tier: Admin, priority: 1, subject: {pods: {}}}".into(),
            "spec.subject.pods.podSelector",
            |p| *p == Problem::Missing,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Allow, from: [{{namespaces: {{}}}}]}}]}}"),
            "spec.ingress[0].action",
            |p| matches!(p, Problem::NotOneOf { value, .. } if value == "Allow"),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: []}}]}}"),
            "spec.ingress[0].from",
            |p| *p == Problem::NoItems,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny}}]}}"),
            "spec.ingress[0].from",
            |p| *p == Problem::Missing,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{networks: [10.0.0.0/8]}}]}}]}}"),
            "spec.ingress[0].from[0].networks",
            |p| matches!(p, Problem::NotAllowedHere { field: "networks", .. }),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8], nodes: {{}}}}]}}]}}"),
            "spec.egress[0].to[0]",
            |p| matches!(p, Problem::ExactlyOne { .. }),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/33]}}]}}]}}"),
            "spec.egress[0].to[0].networks[0]",
            |p| matches!(p, Problem::NotACidr(_)),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8, 10.0.0.0/8]}}]}}]}}"),
            "spec.egress[0].to[0].networks[1]",
            |p| matches!(p, Problem::DuplicateItem(_)),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Accept, to: [{{domainNames: [-bad.example.com]}}]}}]}}"),
            "spec.egress[0].to[0].domainNames[0]",
            |p| matches!(p, Problem::NotADomainName(_)),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Accept, to: [{{domainNames: [localhost]}}]}}]}}"),
            "spec.egress[0].to[0].domainNames[0]",
            |p| matches!(p, Problem::NotADomainName(_)),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, {deny_all}, ingress2: 1}}"),
            "",
            |_| true,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{}}}}]}}]}}"),
            "spec.ingress[0].protocols[0].tcp.destinationPort",
            |p| *p == Problem::Missing,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{sctp: {{destinationPort: {{number: 0}}}}}}]}}]}}"),
            "spec.ingress[0].protocols[0].sctp.destinationPort.number",
            |p| matches!(p, Problem::OutOfRange { value: 0, .. }),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {{range: {{start: 90, end: 90}}}}}}}}]}}]}}"),
            "spec.ingress[0].protocols[0].udp.destinationPort.range",
            |p| matches!(p, Problem::StartNotBelowEnd { start: 90, end: 90 }),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}, destinationNamedPort: web}}]}}]}}"),
            "spec.ingress[0].protocols[0]",
            |p| matches!(p, Problem::ExactlyOne { .. }),
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{nodes: {{}}}}], protocols: [{{destinationNamedPort: web}}]}}]}}"),
            "spec.egress[0]",
            |p| *p == Problem::NamedPortWithNonPodPeer,
        ),
        (
            format!("{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{name: {}, action: Deny, from: [{{namespaces: {{}}}}]}}]}}", "n".repeat(101)),
            "spec.ingress[0].name",
            |p| matches!(p, Problem::TooLong { len: 101, max: 100 }),
        ),
        (
            format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{}]}}",
                vec!["{action: Deny, from: [{namespaces: {}}]}"; 26].join(", ")
            ),
            "spec.ingress",
            |p| matches!(p, Problem::TooManyItems { found: 26, max: 25 }),
        ),
        (
            "{tier: Admin, priority: 1, subject: {namespaces: {matchExpressions: [{key: a, operator: Has}]}}}".into(),
            "spec.subject.namespaces.matchExpressions[0].operator",
            |p| matches!(p, Problem::UnknownOperator(_)),
        ),
    ];
    for (spec, field, problem) in cases {
        let yaml = cnp(&spec);
        if field.is_empty() {
            // An unknown field does not decode at all: the snapshot reader names its path.
            let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
            let e = Source::decode("ClusterNetworkPolicy", value).unwrap_err();
            assert_eq!(e.path, "spec.ingress2", "{e}");
            assert!(e.message.contains("ingress2"), "{e}");
            continue;
        }
        let e = refused(&yaml);
        assert_eq!(e.error.field, field, "{spec}: {e}");
        assert!(problem(&e.error.problem), "{spec}: {e}");
        assert!(e.to_string().starts_with("ClusterNetworkPolicy p: "), "{e}");
    }
}

#[test]
fn each_invalid_v1alpha1_object_is_refused_naming_the_field() {
    let cases: Vec<(&str, &str, String, &str, Expect)> = vec![
        (
            "AdminNetworkPolicy",
            "a",
            "{priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}".into(),
            "spec.ingress[0].action",
            |p| matches!(p, Problem::NotOneOf { value, .. } if value == "Accept"),
        ),
        (
            "AdminNetworkPolicy",
            "a",
            "{priority: 1, subject: {pods: {podSelector: {}}}}".into(),
            "spec.subject.pods.namespaceSelector",
            |p| *p == Problem::Missing,
        ),
        (
            "AdminNetworkPolicy",
            "a",
            "{subject: {namespaces: {}}}".into(),
            "spec.priority",
            |p| *p == Problem::Missing,
        ),
        (
            "AdminNetworkPolicy",
            "a",
            "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], ports: [{portNumber: {port: 80, protocol: ICMP}}]}]}".into(),
            "spec.egress[0].ports[0].portNumber.protocol",
            |p| matches!(p, Problem::UnknownProtocol(_)),
        ),
        (
            "AdminNetworkPolicy",
            "a",
            "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 80}}]}]}".into(),
            "spec.egress[0].ports[0].portRange",
            |p| matches!(p, Problem::StartNotBelowEnd { .. }),
        ),
        (
            "BaselineAdminNetworkPolicy",
            "other",
            "{subject: {namespaces: {}}}".into(),
            "metadata.name",
            |p| *p == Problem::BaselineNotDefault,
        ),
        (
            "BaselineAdminNetworkPolicy",
            "default",
            "{priority: 1, subject: {namespaces: {}}}".into(),
            "spec.priority",
            |p| matches!(p, Problem::NotAllowedHere { .. }),
        ),
        (
            "BaselineAdminNetworkPolicy",
            "default",
            "{subject: {namespaces: {}}, egress: [{action: Pass, to: [{namespaces: {}}]}]}".into(),
            "spec.egress[0].action",
            |p| matches!(p, Problem::NotOneOf { value, .. } if value == "Pass"),
        ),
        (
            "BaselineAdminNetworkPolicy",
            "default",
            "{subject: {namespaces: {}}, egress: [{action: Allow, to: [{domainNames: [example.com]}]}]}".into(),
            "spec.egress[0].to[0].domainNames",
            |p| matches!(p, Problem::NotAllowedHere { .. }),
        ),
    ];
    for (kind, name, spec, field, problem) in cases {
        let e = refused(&anp(kind, name, &spec));
        assert_eq!(e.error.field, field, "{spec}: {e}");
        assert!(problem(&e.error.problem), "{spec}: {e}");
        assert_eq!(e.kind.as_str(), kind);
    }
}

#[test]
fn api_versions_other_than_the_served_ones_are_refused() {
    let mut yaml = cnp(&format!("{{tier: Admin, priority: 1, {SUBJECT}}}"));
    assert!(source(&yaml).check_api_version().is_ok());
    yaml = yaml.replace("v1alpha2", "v1alpha1");
    let e = source(&yaml).check_api_version().unwrap_err();
    assert_eq!(e.path, "apiVersion");
    assert!(e.message.contains("v1alpha2"), "{e}");
}

#[test]
fn domain_names_follow_the_crd_pattern() {
    for good in [
        "example.com",
        "*.example.com",
        "a.b.c.",
        "x_y.example.com",
        "a1.b2",
    ] {
        assert!(super::compile::is_domain_name(good), "{good}");
    }
    for bad in [
        "com",
        "*.com",
        "*example.com",
        "a..b",
        "-a.b",
        "a-.b",
        "a.b..",
        "a.*.b",
        "",
    ] {
        assert!(!super::compile::is_domain_name(bad), "{bad}");
    }
}
