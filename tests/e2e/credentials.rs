//! The credentials kiln stored for humans work as a human uses them: the talosconfig reaches the control
//! planes over mTLS and shows one etcd cluster of exactly the control planes (so bootstrap ran, once);
//! the kubeconfig reaches the cluster's API at the VIP and lists every node, Ready, by name. Values are
//! read from Vault into `Secret`s and never printed.

use std::collections::BTreeSet;

use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use kiln::redact::Secret;
use kiln::talos::grpc::{ClientIdentity, ClientOptions, TalosClient};
use serde_json::Value;

use crate::fixture::{ClusterFixture, Role};
use crate::support::{VAULT_MOUNT, World};

pub async fn stored(world: &World, cluster: &str, leaf: &str, key: &str) -> Secret {
    let body = world
        .bao
        .api(
            "GET",
            &format!("{VAULT_MOUNT}/data/kubernetes/{cluster}/{leaf}"),
            None,
        )
        .await
        .unwrap();
    match &body["data"]["data"][key] {
        Value::String(s) => Secret::new(s.clone()),
        _ => panic!("kubernetes/{cluster}/{leaf} has no string {key}"),
    }
}

fn unbase64(text: &str, what: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|_| panic!("talosconfig: {what} is not base64"));
    String::from_utf8(bytes).unwrap_or_else(|_| panic!("talosconfig: {what} is not PEM text"))
}

/// The talosconfig's current context, as talosctl reads it.
pub fn talos_identity(
    talosconfig: &Secret,
    cluster: &ClusterFixture,
) -> (ClientIdentity, Vec<String>) {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(talosconfig.expose()).expect("the stored talosconfig is YAML");
    let name = doc["context"].as_str().expect("talosconfig: context");
    assert_eq!(name, cluster.name, "talosconfig context");
    let ctx = &doc["contexts"][name];
    let field = |k: &str| {
        ctx[k]
            .as_str()
            .unwrap_or_else(|| panic!("talosconfig: no {k}"))
    };
    let endpoints = ctx["endpoints"]
        .as_sequence()
        .expect("talosconfig: endpoints")
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    let identity = ClientIdentity {
        ca_pem: unbase64(field("ca"), "ca"),
        cert_pem: unbase64(field("crt"), "crt"),
        key_pem: Secret::new(unbase64(field("key"), "key")),
    };
    (identity, endpoints)
}

pub async fn assert_credentials_work(world: &World, c: &ClusterFixture) {
    let cps: Vec<_> = c
        .wanted()
        .into_iter()
        .filter(|w| w.role == Role::ControlPlane)
        .collect();

    // talosconfig: endpoints are the control planes; each answers over mTLS with one etcd cluster.
    let talosconfig = stored(world, &c.name, "talos", "talosconfig").await;
    let (identity, endpoints) = talos_identity(&talosconfig, c);
    let want: BTreeSet<String> = cps.iter().map(|w| w.ip.to_string()).collect();
    assert_eq!(
        endpoints.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "talosconfig endpoints"
    );
    for cp in &cps {
        let client =
            TalosClient::connect_mtls((cp.ip, 50000).into(), &identity, ClientOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{}: the stored talosconfig is refused: {e}", cp.name));
        let members = client
            .etcd_member_list()
            .await
            .unwrap_or_else(|e| panic!("{}: etcd member list: {e}", cp.name));
        let names: BTreeSet<String> = members.iter().map(|m| m.hostname.clone()).collect();
        let want: BTreeSet<String> = cps.iter().map(|w| w.name.clone()).collect();
        assert_eq!(names, want, "{}: etcd members", cp.name);
    }

    // kubeconfig: the API at the VIP lists every node kiln made, Ready.
    let server = stored(world, &c.name, "kubeconfig", "server").await;
    assert_eq!(server.expose(), format!("https://{}:6443", c.vip()));
    let kubeconfig = stored(world, &c.name, "kubeconfig", "kubeconfig").await;
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig.expose())
        .expect("the stored kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .expect("the stored kubeconfig is usable");
    let client = kube::Client::try_from(config).expect("a Kubernetes client");
    let nodes = kube::Api::<Node>::all(client)
        .list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("listing nodes at {}: {e}", c.vip()));
    let ready: BTreeSet<String> = nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let want: BTreeSet<String> = c.wanted().into_iter().map(|w| w.name).collect();
    assert_eq!(ready, want, "Ready nodes at the VIP");
}
