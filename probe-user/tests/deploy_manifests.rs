//! The deploy/ manifests, held against the Kubernetes API types: every document parses into
//! its k8s-openapi type and survives a round trip unchanged (an unknown or misspelled field
//! would be dropped and show up as a difference), kustomization lists every file, and the
//! RBAC grants exactly what the cluster model watches.
use std::path::PathBuf;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde_json::Value;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Equal as JSON, numbers compared by value (1 and 1.0 are the same number).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, place: &str) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{place}: does not parse as its kind: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert!(
        same(doc, &back),
        "{place}: fields were lost in the round trip (unknown or misspelled?)\nwritten: {doc:#}\nread:    {back:#}"
    );
}

fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: document {}: {e}", f.display(), i + 1));
            out.push((format!("{} document {}", f.display(), i + 1), value));
        }
    }
    out
}

/// The one document of `kind`, typed.
fn document<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let (place, doc) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{place}: {e}"))
}

#[test]
fn every_manifest_is_a_valid_object_of_its_kind() {
    let docs = documents();
    assert!(docs.len() >= 6, "{}", docs.len());
    for (place, doc) in &docs {
        match doc["kind"].as_str().unwrap_or_default() {
            "Namespace" => round_trip::<Namespace>(doc, place),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc, place),
            "ClusterRole" => round_trip::<ClusterRole>(doc, place),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc, place),
            "DaemonSet" => round_trip::<DaemonSet>(doc, place),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc, place),
            other => panic!("{place}: unexpected kind {other:?}"),
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let k: Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files);
}

#[test]
fn rbac_reads_what_the_model_watches_and_writes_only_its_own_resource() {
    let role: ClusterRole = document("ClusterRole");
    let rules = role.rules.unwrap_or_default();
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.resources.iter().flatten().any(|x| x == resource) && r.verbs.iter().any(|v| v == verb)
        })
    };
    for kind in flowpol_analysis::cluster::objects::Kind::ALL {
        let resource = format!("{}s", kind.as_str().to_lowercase()).replace("policys", "policies");
        for verb in ["get", "list", "watch"] {
            assert!(
                grants(&resource, verb),
                "{verb} {resource} is needed by the watchers"
            );
        }
    }
    for verb in ["create", "patch"] {
        assert!(grants("observedtraffics", verb));
    }
    assert!(rules
        .iter()
        .all(|r| !r.verbs.iter().any(|v| v == "*" || v == "delete")
            && !r.resources.iter().flatten().any(|x| x == "*")));
    let writes: Vec<&String> = rules
        .iter()
        .filter(|r| {
            r.verbs
                .iter()
                .any(|v| v == "create" || v == "patch" || v == "update")
        })
        .flat_map(|r| r.resources.iter().flatten())
        .collect();
    assert_eq!(writes, vec!["observedtraffics"]);
}

#[test]
fn the_agent_runs_with_capabilities_not_privileged() {
    let ds: DaemonSet = document("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let mut added = caps.add.clone().unwrap_or_default();
    added.sort();
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON"],
        "exactly what the probe needs"
    );
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    let mounts: Vec<String> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    for path in ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/btf"] {
        assert!(mounts.iter().any(|m| m == path), "{path} is mounted");
    }
}

/// The agent's command line in the DaemonSet is one `flowpol agent` accepts (every flag
/// known, every value valid), and its state directory is the mounted hostPath.
#[test]
fn the_daemonset_command_line_is_accepted() {
    let ds: DaemonSet = document("DaemonSet");
    let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|a| a.replace("$(NODE_NAME)", "node-a"))
        .collect();
    assert!(args.iter().any(|a| a == "--state-dir=/var/lib/flowpol"));
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == "/var/lib/flowpol" && m.read_only != Some(true)));
    // A zero --round is refused after the command line parsed: reaching that error proves
    // the rest was accepted, without starting an agent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(&args)
        .args(["--round", "0s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--round and --flush-every must be longer than zero"),
        "{args:?}: {err}"
    );
}

/// `kubectl apply -k deploy/` builds: kubectl renders the kustomization into
/// exactly the documents of the listed files.
#[test]
fn kubectl_builds_the_kustomization() {
    let kubectl = controlplane::Binaries::find()
        .unwrap_or_else(|e| panic!("{e:#}"))
        .kubectl;
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy())
        .output()
        .expect("the built kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rendered: Vec<(String, String)> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut written: Vec<(String, String)> = documents()
        .into_iter()
        .map(|(_, v)| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rendered.sort();
    written.sort();
    assert_eq!(rendered, written);
}

/// What the agent writes fits the CRD's schema (deploy/crd.yaml, as committed): the same
/// fields, the required ones present, the list-map keys among them.
#[test]
fn observed_traffic_objects_fit_the_crd_schema() {
    use flowpol_analysis::{
        observed::{Observed, API_VERSION, KIND},
        record::{Endpoint, EndpointKind, FlowRecord, Identity, Protocol, Verdict},
    };
    let crd = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "CustomResourceDefinition")
        .map(|(_, d)| d)
        .unwrap();
    let spec = &crd["spec"];
    assert_eq!(
        format!(
            "{}/{}",
            spec["group"].as_str().unwrap(),
            spec["versions"][0]["name"].as_str().unwrap()
        ),
        API_VERSION
    );
    assert_eq!(spec["names"]["kind"], KIND);
    let schema = &spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let edge_schema = &schema["properties"]["edges"];
    let pod = |ip: &str, ns: &str, name: &str| Endpoint {
        ip: ip.parse().unwrap(),
        port: None,
        identity: Identity {
            kind: Some(EndpointKind::Pod),
            namespace: Some(ns.into()),
            workload: Some(flowpol_analysis::cluster::Workload {
                kind: "Deployment".into(),
                name: name.into(),
            }),
            ..Identity::default()
        },
    };
    let mut dst = pod("10.0.0.2", "b", "api");
    dst.port = Some(8080);
    let mut r = FlowRecord::new(
        Protocol::TCP,
        pod("10.0.0.1", "a", "web"),
        dst,
        Some(Verdict::Established),
    );
    r.first_seen = Some("2026-01-01T10:00:00Z".parse().unwrap());
    let mut o = Observed::new(10);
    o.add("node-a", &r);
    r.verdict = Some(Verdict::Dropped);
    r.drop_reason = Some("NETFILTER_DROP".into());
    o.add("node-a", &r);
    let objects: Vec<serde_json::Value> = o
        .pending()
        .iter()
        // As the agent applies them: the typed custom resource, serialized.
        .flat_map(|p| {
            o.objects("node-a", &p.workload, &[])
                .unwrap()
                .unwrap()
                .changed
        })
        .map(|object| {
            serde_json::to_value(flowpol_kube::crd::ObservedTraffic::from(object)).unwrap()
        })
        .collect();
    assert!(objects[0].to_string().contains("dropReasons"));
    assert_eq!(objects.len(), 2, "offline records: both ends' workloads");
    for obj in &objects {
        for field in schema["required"].as_array().unwrap() {
            assert!(
                obj["spec"].get(field.as_str().unwrap()).is_some(),
                "{field} missing"
            );
        }
        for edge in obj["spec"]["edges"].as_array().unwrap() {
            let allowed = edge_schema["items"]["properties"].as_object().unwrap();
            for key in edge.as_object().unwrap().keys() {
                assert!(allowed.contains_key(key), "{key} is not in the CRD schema");
            }
            for key in edge_schema["items"]["required"].as_array().unwrap() {
                assert!(
                    edge.get(key.as_str().unwrap()).is_some(),
                    "required key {key} missing"
                );
            }
        }
    }
}
