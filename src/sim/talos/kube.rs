//! The simulated cluster's Kubernetes API at `<vip>:6443`, once etcd runs: what kiln's `kube` client
//! needs (version, nodes with Ready conditions, cordon, eviction, Node deletion), over HTTPS with a
//! server certificate from the cluster's Kubernetes CA and client certificates required from it.
//! Nodes are the cluster's configured machines; there are no pods, so a drain finds nothing to evict.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::Shared;
use super::config::MachineType;
use super::fleet::Phase;
use crate::talos::grpc::tls::{certs_from_pem, provider};

pub const API_PORT: u16 = 6443;

/// Per cluster: what the API server stores beyond what the machines say.
#[derive(Default)]
pub struct KubeState {
    pub cordoned: BTreeSet<String>,
    pub deleted: BTreeSet<String>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    cluster: String,
}

fn server_tls(vip: IpAddr, ca_pem: &str, ca_key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("cluster.ca.key: {e}"))?;
    let alg = ca_key.algorithm();
    let issuer =
        Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| format!("cluster.ca.crt: {e}"))?;
    let key = KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
    ])
    .map_err(|e| e.to_string())?;
    params.subject_alt_names.push(SanType::IpAddress(vip));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "cluster.ca.crt").map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Starts the API of `cluster` at its VIP unless it runs already. A VIP this machine cannot bind (a
/// real LAN address) is logged and skipped: only loopback clusters get a Kubernetes API.
pub fn ensure_started(shared: &Arc<Shared>, cluster: &str) {
    let mut fleet = shared.fleet.lock().expect("fleet lock");
    if fleet.kube.get(cluster).is_some_and(|k| k.task.is_some()) {
        return;
    }
    let source = fleet.nodes.values().find_map(|n| match &n.phase {
        Phase::Configured(c)
            if c.cfg.cluster_key == cluster && c.cfg.machine_type == MachineType::ControlPlane =>
        {
            Some((
                c.cfg.vip.clone()?,
                c.cfg.k8s_ca_pem.clone()?,
                c.cfg.k8s_ca_key_pem.clone()?,
            ))
        }
        _ => None,
    });
    let Some((vip, ca, key)) = source else { return };
    let Ok(vip) = vip.parse::<IpAddr>() else {
        return;
    };
    let tls = match server_tls(vip, &ca, &key) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "simulated Kubernetes API: no server certificate");
            return;
        }
    };
    let api = Api {
        shared: shared.clone(),
        cluster: cluster.to_owned(),
    };
    let task = tokio::spawn(serve(SocketAddr::new(vip, API_PORT), tls, api));
    fleet.kube.entry(cluster.to_owned()).or_default().task = Some(task);
}

async fn serve(addr: SocketAddr, tls: Arc<ServerConfig>, api: Api) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "simulated Kubernetes API cannot listen at the VIP");
            return;
        }
    };
    let router = Router::new()
        .route("/version", get(version))
        .route("/api/v1/nodes", get(list_nodes))
        .route(
            "/api/v1/nodes/{name}",
            get(get_node).patch(patch_node).delete(delete_node),
        )
        .route("/api/v1/pods", get(no_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(no_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", post(evict))
        .with_state(api);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

fn not_found(name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("nodes \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": "nodes"}, "code": 404,
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

impl Api {
    fn nodes(&self) -> Vec<Value> {
        let fleet = self.shared.fleet.lock().expect("fleet lock");
        let state = fleet.kube.get(&self.cluster);
        let mut out: Vec<Value> = fleet
            .nodes
            .values()
            .filter_map(|n| {
                let c = n.configured()?;
                if c.cfg.cluster_key != self.cluster {
                    return None;
                }
                let name = c.cfg.hostname.clone()?;
                if state.is_some_and(|s| s.deleted.contains(&name)) {
                    return None;
                }
                let (stage, _) = super::handlers::stage(&fleet, n);
                let ready = stage == "running";
                let cordoned = state.is_some_and(|s| s.cordoned.contains(&name));
                let mut labels = serde_json::Map::new();
                labels.insert("kubernetes.io/hostname".into(), json!(name));
                if c.cfg.machine_type == MachineType::ControlPlane {
                    labels.insert("node-role.kubernetes.io/control-plane".into(), json!(""));
                }
                Some(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "uid": format!("sim-{}", n.addr.ip()), "resourceVersion": "1",
                                 "labels": labels},
                    "spec": {"unschedulable": cordoned},
                    "status": {
                        "conditions": [{
                            "type": "Ready",
                            "status": if ready { "True" } else { "False" },
                            "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
                            "message": if ready { "kubelet is posting ready status" } else { "node is not ready" },
                        }],
                        "addresses": [{"type": "InternalIP", "address": n.addr.ip().to_string()},
                                      {"type": "Hostname", "address": name}],
                    },
                }))
            })
            .collect();
        out.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        out
    }

    fn node(&self, name: &str) -> Option<Value> {
        self.nodes()
            .into_iter()
            .find(|n| n["metadata"]["name"] == name)
    }
}

async fn version(State(api): State<Api>) -> axum::Json<Value> {
    let v = {
        let fleet = api.shared.fleet.lock().expect("fleet lock");
        fleet
            .nodes
            .values()
            .filter_map(|n| n.configured())
            .find(|c| c.cfg.cluster_key == api.cluster)
            .and_then(|c| c.cfg.kubernetes_version.clone())
            .unwrap_or_else(|| "v1.34.1".into())
    };
    let mut parts = v.trim_start_matches('v').split('.');
    let (major, minor) = (
        parts.next().unwrap_or("1").to_owned(),
        parts.next().unwrap_or("0").to_owned(),
    );
    axum::Json(json!({
        "major": major, "minor": minor, "gitVersion": v, "gitCommit": "kiln-sim", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64",
    }))
}

async fn list_nodes(State(api): State<Api>) -> axum::Json<Value> {
    axum::Json(
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"},
                      "items": api.nodes()}),
    )
}

async fn get_node(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.node(&name) {
        Some(n) => axum::Json(n).into_response(),
        None => not_found(&name),
    }
}

/// Merge and strategic-merge patches alike: only `spec.unschedulable` (cordon) is honoured.
async fn patch_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if api.node(&name).is_none() {
        return not_found(&name);
    }
    let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(flag) = patch.pointer("/spec/unschedulable") {
        let mut fleet = api.shared.fleet.lock().expect("fleet lock");
        let state = fleet.kube.entry(api.cluster.clone()).or_default();
        if flag.as_bool() == Some(true) {
            state.cordoned.insert(name.clone());
        } else {
            state.cordoned.remove(&name);
        }
    }
    get_node(State(api), Path(name)).await
}

async fn delete_node(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let Some(node) = api.node(&name) else {
        return not_found(&name);
    };
    api.shared
        .fleet
        .lock()
        .expect("fleet lock")
        .kube
        .entry(api.cluster.clone())
        .or_default()
        .deleted
        .insert(name);
    axum::Json(node).into_response()
}

async fn no_pods() -> axum::Json<Value> {
    axum::Json(
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

async fn evict(Path((ns, name)): Path<(String, String)>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("pods \"{name}\" not found in namespace {ns}"), "reason": "NotFound",
        "details": {"name": name, "kind": "pods"}, "code": 404,
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
