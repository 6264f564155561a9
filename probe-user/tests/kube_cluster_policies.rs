//! Cluster-scoped policy against a real kube-apiserver with network-policy-api's own CRDs
//! (v0.3.0 ClusterNetworkPolicy, v0.1.7 AdminNetworkPolicy and BaselineAdminNetworkPolicy,
//! experimental channel, from the Go module proxy): the watchers find the kinds when the
//! CRDs come and go, what the server stores means what the file meant, and the server and
//! flowpol refuse the same objects for the same field.
mod k8s;

use std::time::Duration;

use flowpol_analysis::policy::clusterwide::{self, api::Source};
use flowpol_kube::watch::Live;
use k8s::{run, ControlPlane, Options};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

const CRDS: [&str; 3] = [
    "clusternetworkpolicies.policy.networking.k8s.io",
    "adminnetworkpolicies.policy.networking.k8s.io",
    "baselineadminnetworkpolicies.policy.networking.k8s.io",
];

const OPTIONAL: [&str; 3] = [
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

fn install_crds(cp: &ControlPlane) {
    for (file, name) in cp.binaries().cluster_policy_crds.iter().zip(CRDS) {
        cp.kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{e:#}"));
        k8s::wait_established(cp, name);
    }
}

/// The shop's cluster-scoped policies, as files hold them.
fn fixture_objects() -> Vec<Value> {
    k8s::read_list(&k8s::fixtures().join("cluster-policies-shop.yaml"))
}

fn decode(v: &Value) -> Source {
    let kind = v["kind"].as_str().unwrap().to_owned();
    Source::decode(&kind, v.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// Waits until `check` holds of the watchers' status and objects.
async fn until(live: &Live, what: &str, check: impl Fn(&Live) -> bool) {
    let wait = async {
        loop {
            let changed = live.changed();
            if check(live) {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}: {}", live.status()));
}

fn absent(live: &Live) -> Vec<String> {
    live.status()
        .kinds
        .iter()
        .filter(|k| k.absent)
        .map(|k| k.kind.to_string())
        .collect()
}

#[test]
fn the_watchers_follow_the_crds_as_they_come_and_go() {
    run(async {
        let cp = k8s::start(Options::default());
        let live = Live::start(
            &k8s::connect(&cp.kubeconfig_path()).await,
            Duration::from_secs(600),
        );
        // A cluster without the CRDs is a cluster without cluster-scoped policy: ready.
        live.ready(PATIENCE)
            .await
            .unwrap_or_else(|s| panic!("ready without the CRDs: {s}"));
        assert_eq!(absent(&live), OPTIONAL.map(String::from).to_vec());

        install_crds(&cp);
        let objects = fixture_objects();
        let text: Vec<String> = objects
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &text.join("\n---\n"));
        assert!(
            out.status.success(),
            "the CRDs take the fixture: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        until(&live, "every cluster policy is seen", |l| {
            l.cluster_policies().len() == objects.len()
        })
        .await;
        assert!(absent(&live).is_empty(), "{}", live.status());

        // What the server stores (defaults filled in, ClusterNetworkPolicy read as v1beta1,
        // its storage version) means what the file said.
        let mut served = clusterwide::compile_all(&live.cluster_policies()).unwrap();
        let mut written =
            clusterwide::compile_all(&objects.iter().map(decode).collect::<Vec<_>>()).unwrap();
        served.sort_by_key(|a| a.id());
        written.sort_by_key(|a| a.id());
        assert_eq!(served, written);
        let versions: Vec<String> = live
            .cluster_policies()
            .iter()
            .filter(|s| s.kind() == "ClusterNetworkPolicy")
            .map(|s| match s {
                Source::ClusterNetworkPolicy(o) => o.api_version.clone().unwrap_or_default(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            versions,
            vec!["policy.networking.k8s.io/v1beta1"; 2],
            "the newest served version is watched"
        );

        // A policy deleted leaves; the CRD removed takes the kind away again.
        cp.kubectl_ok(&["delete", "adminnetworkpolicy", "partner-api"])
            .unwrap();
        until(&live, "the deleted policy is gone", |l| {
            !l.cluster_policies()
                .iter()
                .any(|s| s.name() == "partner-api")
        })
        .await;
        cp.kubectl_ok(&["delete", "crd", CRDS[0]]).unwrap();
        until(&live, "ClusterNetworkPolicy is absent again", |l| {
            absent(l) == ["ClusterNetworkPolicy"]
                && !l
                    .cluster_policies()
                    .iter()
                    .any(|s| s.kind() == "ClusterNetworkPolicy")
        })
        .await;
        assert!(live.status().ready);
    });
}

/// An object (flow-style YAML), and the field both the server and flowpol should name.
struct Case {
    object: String,
    field: &'static str,
}

fn cnp(spec: &str) -> String {
    format!("{{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {{name: bad}}, spec: {spec}}}")
}

fn anp(kind: &str, name: &str, spec: &str) -> String {
    format!("{{apiVersion: policy.networking.k8s.io/v1alpha1, kind: {kind}, metadata: {{name: {name}}}, spec: {spec}}}")
}

const S: &str = "subject: {namespaces: {}}";
const FROM: &str = "from: [{namespaces: {}}]";

fn cases() -> Vec<Case> {
    let case = |object: String, field| Case { object, field };
    vec![
        case(cnp(&format!("{{priority: 1, {S}}}")), "spec.tier"),
        case(cnp(&format!("{{tier: Middle, priority: 1, {S}}}")), "spec.tier"),
        case(cnp(&format!("{{tier: Admin, priority: 1001, {S}}}")), "spec.priority"),
        case(
            cnp("{tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
            "spec.subject",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, ingress: [{{action: Allow, {FROM}}}]}}")),
            "spec.ingress[0].action",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, ingress: [{{action: Deny, from: []}}]}}")),
            "spec.ingress[0].from",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/33]}}]}}]}}")),
            "spec.egress[0].to[0].networks[0]",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, egress: [{{action: Accept, to: [{{domainNames: [-bad.example.com]}}]}}]}}")),
            "spec.egress[0].to[0].domainNames[0]",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, ingress: [{{action: Deny, {FROM}, protocols: [{{udp: {{destinationPort: {{range: {{start: 90, end: 90}}}}}}}}]}}]}}")),
            "spec.ingress[0].protocols[0].udp.destinationPort.range",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, ingress: [{{action: Deny, {FROM}, protocols: [{{sctp: {{destinationPort: {{number: 0}}}}}}]}}]}}")),
            "spec.ingress[0].protocols[0].sctp.destinationPort.number",
        ),
        case(
            cnp(&format!("{{tier: Admin, priority: 1, {S}, egress: [{{action: Deny, to: [{{nodes: {{}}}}], protocols: [{{destinationNamedPort: web}}]}}]}}")),
            "spec.egress[0]",
        ),
        case(
            cnp(&format!(
                "{{tier: Admin, priority: 1, {S}, ingress: [{}]}}",
                vec![format!("{{action: Deny, {FROM}}}"); 26].join(", ")
            )),
            "spec.ingress",
        ),
        case(
            anp("AdminNetworkPolicy", "bad", &format!("{{priority: 1, {S}, ingress: [{{action: Accept, {FROM}}}]}}")),
            "spec.ingress[0].action",
        ),
        case(
            anp("AdminNetworkPolicy", "bad", "{priority: 1, subject: {pods: {podSelector: {}}}}"),
            "spec.subject.pods.namespaceSelector",
        ),
        case(
            anp("BaselineAdminNetworkPolicy", "other", &format!("{{{S}}}")),
            "metadata.name",
        ),
        case(
            anp("BaselineAdminNetworkPolicy", "default", &format!("{{{S}, egress: [{{action: Pass, to: [{{namespaces: {{}}}}]}}]}}")),
            "spec.egress[0].action",
        ),
    ]
}

#[test]
fn the_api_server_and_flowpol_refuse_the_same_objects_for_the_same_field() {
    let cp = k8s::start(Options::default());
    install_crds(&cp);
    for Case { object, field } in cases() {
        let value: Value = serde_yaml::from_str(&object).unwrap();
        let json = serde_json::to_string(&value).unwrap();
        let out = cp.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &json);
        let server = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the API server takes {object}");
        assert!(
            server.contains(field),
            "the API server names another field than `{field}` for {object}:\n{server}"
        );
        let ours =
            clusterwide::compile(&decode(&value)).expect_err(&format!("flowpol takes {object}"));
        assert_eq!(ours.error.field, field, "{object}: {ours}");
    }
    // And both take the fixture.
    for o in fixture_objects() {
        let out = cp.kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &serde_json::to_string(&o).unwrap(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        clusterwide::compile(&decode(&o)).unwrap();
    }
}
