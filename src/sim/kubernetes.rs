//! A simulated Kubernetes API server: the slice of the API kiln's `kube` module uses (version, nodes
//! with Ready conditions, cordon, pods by node, eviction, Node deletion), over HTTPS with client
//! certificates checked against the cluster CA, so kube-rs runs for real against it on loopback.
//!
//! The Talos simulator starts one per bootstrapped cluster at the VIP and registers nodes as they
//! come up; tests can also drive it directly through `KubeSimState`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum KubeSimError {
    #[error("simulated Kubernetes API: bad TLS material: {0}")]
    Tls(String),
    #[error("simulated Kubernetes API: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    pub ready: bool,
    pub unschedulable: bool,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPod {
    pub node: String,
    pub daemonset: bool,
    /// Evictions answer 429 while set, as a PodDisruptionBudget would.
    pub protected_by_budget: bool,
}

/// The cluster the API serves. Shared with whoever drives the simulation.
#[derive(Debug, Default)]
pub struct KubeSimState {
    pub git_version: String,
    pub nodes: BTreeMap<String, SimNode>,
    /// Keyed by (namespace, name).
    pub pods: BTreeMap<(String, String), SimPod>,
    /// Every eviction the API accepted, in order.
    pub evictions: Vec<String>,
}

pub type SharedKubeSim = Arc<Mutex<KubeSimState>>;

/// PEM material for the simulated API server.
pub struct KubeSimTls {
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Client certificates must chain to this CA (the cluster's Kubernetes CA).
    pub client_ca_pem: String,
}

pub struct KubeSimServer {
    pub addr: SocketAddr,
    pub state: SharedKubeSim,
    task: JoinHandle<()>,
}

impl Drop for KubeSimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_config(tls: &KubeSimTls) -> Result<rustls::ServerConfig, KubeSimError> {
    let bad = |e: &dyn std::fmt::Display| KubeSimError::Tls(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.server_key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| bad(&e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl KubeSimServer {
    /// Serves the API on `addr` until dropped.
    pub async fn start(
        addr: SocketAddr,
        tls: &KubeSimTls,
        state: SharedKubeSim,
    ) -> Result<Self, KubeSimError> {
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(tls)?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| KubeSimError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| KubeSimError::Bind { addr, source })?;
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    // A client without a valid certificate fails here, as with a real API server.
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = TowerToHyperService::new(app);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }
}

fn router(state: SharedKubeSim) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api/v1/nodes", get(list_nodes))
        .route(
            "/api/v1/nodes/{name}",
            get(get_node).patch(patch_node).delete(delete_node),
        )
        .route("/api/v1/pods", get(list_pods))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/eviction",
            post(evict_pod),
        )
        .with_state(state)
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

fn lock(state: &SharedKubeSim) -> std::sync::MutexGuard<'_, KubeSimState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn version(State(state): State<SharedKubeSim>) -> Response {
    let v = lock(&state).git_version.clone();
    let (major, minor) = v
        .trim_start_matches('v')
        .split_once('.')
        .map(|(a, b)| (a.to_owned(), b.split('.').next().unwrap_or("0").to_owned()))
        .unwrap_or_default();
    axum::Json(json!({
        "major": major, "minor": minor, "gitVersion": v, "gitCommit": "0000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64",
    }))
    .into_response()
}

fn node_json(name: &str, n: &SimNode) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/hostname": name, format!("node-role.kubernetes.io/{}", n.role): "" },
        },
        "spec": { "unschedulable": n.unschedulable },
        "status": { "conditions": [{
            "type": "Ready",
            "status": if n.ready { "True" } else { "False" },
            "reason": if n.ready { "KubeletReady" } else { "KubeletNotReady" },
        }]},
    })
}

async fn list_nodes(State(state): State<SharedKubeSim>) -> Response {
    let s = lock(&state);
    let items: Vec<Value> = s.nodes.iter().map(|(k, v)| node_json(k, v)).collect();
    axum::Json(json!({
        "apiVersion": "v1", "kind": "NodeList", "metadata": { "resourceVersion": "1" }, "items": items,
    }))
    .into_response()
}

async fn get_node(State(state): State<SharedKubeSim>, Path(name): Path<String>) -> Response {
    let s = lock(&state);
    match s.nodes.get(&name) {
        Some(n) => axum::Json(node_json(&name, n)).into_response(),
        None => not_found("nodes", &name),
    }
}

async fn patch_node(
    State(state): State<SharedKubeSim>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "patch body is not JSON".into(),
        );
    };
    let mut s = lock(&state);
    let Some(node) = s.nodes.get_mut(&name) else {
        return not_found("nodes", &name);
    };
    if let Some(u) = patch.pointer("/spec/unschedulable") {
        node.unschedulable = u.as_bool().unwrap_or(false);
        // The e2e tests read drains from `kiln sim talos`'s log: it is all they can see of them.
        tracing::info!(node = %name, unschedulable = node.unschedulable, "node cordon set");
    }
    axum::Json(node_json(&name, node)).into_response()
}

async fn delete_node(State(state): State<SharedKubeSim>, Path(name): Path<String>) -> Response {
    let mut s = lock(&state);
    match s.nodes.remove(&name) {
        Some(_) => {
            tracing::info!(node = %name, "node deleted");
            axum::Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": { "name": name, "kind": "nodes" },
            }))
            .into_response()
        }
        None => not_found("nodes", &name),
    }
}

async fn list_pods(
    State(state): State<SharedKubeSim>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let node_filter = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_owned);
    let s = lock(&state);
    let items: Vec<Value> = s
        .pods
        .iter()
        .filter(|(_, p)| node_filter.as_deref().is_none_or(|n| p.node == n))
        .map(|((ns, name), p)| {
            let owners = if p.daemonset {
                json!([{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "ds-uid" }])
            } else {
                json!([])
            };
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": ns, "ownerReferences": owners },
                "spec": { "nodeName": p.node, "containers": [] },
            })
        })
        .collect();
    axum::Json(json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": "1" }, "items": items,
    }))
    .into_response()
}

async fn evict_pod(
    State(state): State<SharedKubeSim>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut s = lock(&state);
    let key = (ns.clone(), name.clone());
    match s.pods.get(&key) {
        None => not_found("pods", &name),
        Some(p) if p.protected_by_budget => status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        ),
        Some(_) => {
            s.pods.remove(&key);
            tracing::info!(pod = %format!("{ns}/{name}"), "pod evicted");
            s.evictions.push(format!("{ns}/{name}"));
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201,
                })),
            )
                .into_response()
        }
    }
}
