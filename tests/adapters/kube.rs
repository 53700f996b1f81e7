//! The `kube` module against the simulated Kubernetes API over real HTTPS with client certificates:
//! kube-rs runs for real, nothing in between is mocked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::kube::{KubeAccess, KubeClient, KubePort};
use kiln::redact::Secret;
use kiln::sim::kubernetes::{KubeSimServer, KubeSimState, KubeSimTls, SimNode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;

pub struct Pki {
    pub ca_pem: String,
    server_cert: String,
    server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki(ip: [u8; 4]) -> Pki {
    let kubernetes_ca = ca("kubernetes");
    let (server_cert, server_key) = leaf(
        &kubernetes_ca,
        "kube-apiserver",
        None,
        vec![SanType::IpAddress(ip.into())],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &kubernetes_ca,
        "admin",
        Some("system:masters"),
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca_pem: kubernetes_ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

pub async fn start(ip: [u8; 4], pki: &Pki) -> KubeSimServer {
    let state = Arc::new(Mutex::new(KubeSimState {
        git_version: "v1.34.1".into(),
        ..Default::default()
    }));
    {
        let mut s = state.lock().unwrap();
        for (name, role, ready) in [
            ("prod-cp-1", "control-plane", true),
            ("prod-wk-4", "worker", true),
            ("prod-wk-5", "worker", false),
            ("stranger", "worker", true),
        ] {
            s.put_node(
                name,
                SimNode {
                    ready,
                    role: role.into(),
                    kubelet_version: "v1.34.1".into(),
                    ..SimNode::default()
                },
            );
        }
        // flannel runs on every node (it tolerates every taint); web-1 is a bare pod, db-0 is
        // covered by a budget that allows no disruption.
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "flannel", "namespace": "kube-system" },
            "spec": { "selector": { "matchLabels": { "app": "flannel" } }, "template": {
                "metadata": { "labels": { "app": "flannel" } },
                "spec": { "tolerations": [{ "operator": "Exists" }],
                          "containers": [{ "name": "flannel", "image": "flannel" }] } } },
        }))
        .unwrap();
        for (name, node, app) in [
            ("web-1", "prod-wk-4", "web"),
            ("web-2", "prod-cp-1", "web"),
            ("db-0", "stranger", "db"),
        ] {
            s.create(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": "default", "labels": { "app": app } },
                "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] },
            }))
            .unwrap();
        }
        s.create(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": { "name": "db", "namespace": "default" },
            "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "db" } } },
        }))
        .unwrap();
    }
    start_with(ip, pki, state).await
}

/// Serves `state` on `ip` (any port) with the PKI's server certificate, client certificates from its CA.
pub async fn start_with(ip: [u8; 4], pki: &Pki, state: Arc<Mutex<KubeSimState>>) -> KubeSimServer {
    let tls = KubeSimTls {
        server_cert_pem: pki.server_cert.clone(),
        server_key_pem: pki.server_key.clone(),
        client_ca_pem: pki.ca_pem.clone(),
    };
    KubeSimServer::start(SocketAddr::from((ip, 0)), &tls, state)
        .await
        .expect("simulated API starts")
}

fn access(server: &KubeSimServer, pki: &Pki) -> KubeAccess {
    KubeAccess {
        server: format!("https://{}", server.addr),
        ca_pem: pki.ca_pem.clone(),
        client_cert_pem: pki.client_cert.clone(),
        client_key_pem: Secret::new(pki.client_key.clone()),
    }
}

#[tokio::test]
async fn health_cordon_drain_and_node_deletion_over_https() {
    let ip = [127, 0, 20, 1];
    let pki = pki(ip);
    let server = start(ip, &pki).await;
    let kube = KubeClient::connect(&access(&server, &pki)).await.unwrap();

    assert_eq!(kube.server_version().await.unwrap(), "v1.34.1");

    let expected: Vec<String> = ["prod-cp-1", "prod-wk-4", "prod-wk-5", "prod-wk-6"]
        .map(String::from)
        .to_vec();
    let r = kube.node_readiness(&expected).await.unwrap();
    assert_eq!(r.ready, vec!["prod-cp-1", "prod-wk-4"]);
    assert_eq!(r.not_ready, vec!["prod-wk-5"]);
    assert_eq!(r.missing, vec!["prod-wk-6"]);
    assert_eq!(r.extra, vec!["stranger"]);
    assert!(!r.all_ready());

    kube.set_unschedulable("prod-wk-4", true).await.unwrap();
    assert!(server.state.lock().unwrap().nodes["prod-wk-4"].unschedulable);

    // The DaemonSet pod stays, the other one is evicted.
    let evicted = kube
        .drain("prod-wk-4", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(evicted, 1);
    assert_eq!(
        server.state.lock().unwrap().evictions,
        vec!["default/web-1"]
    );
    let left = server.state.lock().unwrap().pods_on("prod-wk-4");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("kube-system/flannel-"), "{left:?}");

    // A disruption budget that never relents ends in a timeout naming the pod, which stays.
    let err = kube
        .drain("stranger", Duration::from_millis(600))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("default/db-0"), "{err}");
    assert!(
        server
            .state
            .lock()
            .unwrap()
            .pods_on("stranger")
            .contains(&"default/db-0".to_owned())
    );

    kube.delete_node("prod-wk-4").await.unwrap();
    kube.delete_node("prod-wk-4").await.unwrap(); // absent is success
    assert!(!server.state.lock().unwrap().nodes.contains_key("prod-wk-4"));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ip = [127, 0, 20, 2];
    let pki_real = pki(ip);
    let server = start(ip, &pki_real).await;
    let other = pki(ip);
    let mut forged = access(&server, &pki_real);
    forged.client_cert_pem = other.client_cert.clone();
    forged.client_key_pem = Secret::new(other.client_key.clone());
    let kube = KubeClient::connect(&forged).await.unwrap();
    assert!(kube.server_version().await.is_err());
}
