//! A program's identity in the API server, as a DaemonSet's pods get one: a ServiceAccount
//! bound to a read-only ClusterRole, a token requested for it (TokenRequest), and a
//! kubeconfig or in-cluster files that carry it. The lab runs real NetworkPolicy enforcers
//! with it, so they authenticate and are authorized as they would be in a cluster.
use base64::Engine;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{api::PostParams, Api, Client, Config};
use serde_json::{json, Value};

/// The namespace the identities live in, as a CNI's DaemonSet does.
pub const NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
#[error("requesting a token for ServiceAccount {NAMESPACE}/{name}")]
pub struct TokenError {
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// What a NetworkPolicy enforcer reads (kube-router's and kube-network-policies' own
/// manifests grant the same reads; neither writes).
fn enforcer_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["policy.networking.k8s.io"],
         "resources": ["adminnetworkpolicies", "baselineadminnetworkpolicies"],
         "verbs": ["get", "list", "watch"]},
    ])
}

/// The ServiceAccount `name` in [`NAMESPACE`], a ClusterRole of the same name with an
/// enforcer's reads, and the binding between them: objects for `publish::publish`.
pub fn enforcer_objects(name: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": NAMESPACE}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": enforcer_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]}),
    ]
}

/// A token for ServiceAccount `name` in [`NAMESPACE`], valid for an hour.
pub async fn token(client: &Client, name: &str) -> Result<String, TokenError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    });
    let answer: Value = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .map_err(|source| TokenError {
            name: name.to_owned(),
            source,
        })?;
    Ok(answer["status"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The API server's certificate authorities (PEM) as the client was configured to trust
/// them; empty when it trusts the system's roots.
pub fn ca_pem(config: &Config) -> String {
    let mut pem = String::new();
    for der in config.root_cert.iter().flatten() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

/// A kubeconfig that reaches the API server at `server` (`https://host:port`) with `token`.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: enforcer\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: enforcer}}\ncurrent-context: lab\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_reads_back_with_its_server_and_token() {
        let yaml = kubeconfig("https://127.0.0.1:6443", "PEM", "t0ken");
        let k: kube::config::Kubeconfig = serde_yaml::from_str(&yaml).unwrap();
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some("UEVN"),
            "base64 of the PEM"
        );
        let user = k.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
        assert_eq!(k.current_context.as_deref(), Some("lab"));
    }

    #[test]
    fn the_role_binds_the_account_it_names() {
        let objects = enforcer_objects("kube-router");
        let binding = &objects[2];
        assert_eq!(binding["roleRef"]["name"], "kube-router");
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
        let reads: Vec<&str> = objects[1]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(reads.contains(&"networkpolicies") && reads.contains(&"pods"));
    }
}
