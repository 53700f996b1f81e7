//! A simulated Kubernetes API server over HTTPS with client certificates checked against the cluster
//! CA, enough that kube-rs (kiln's own `kube` module) and the real `kubectl` work against it on
//! loopback: discovery (`/api`, `/apis`, each group version's resource list, `/version`, an OpenAPI v3
//! index for `kubectl apply`), nodes with Ready conditions and kubelet versions, pods, cordon, the
//! Eviction API with PodDisruptionBudgets, Node deletion, server-side apply, Leases, and the `Table`
//! form `kubectl get` asks for. Errors are `Status` objects, as the API server sends them.
//!
//! The Talos simulator starts one per bootstrapped cluster at the VIP and registers nodes as they come
//! up; tests can also drive it directly through `KubeSimState`. What each part copies from upstream
//! Kubernetes is named in its module: `discovery`, `store` (objects, patches, server-side apply),
//! `workloads` (the controllers that turn DaemonSets and Deployments into pods, the disruption
//! controller's budget arithmetic and the Eviction API), `table` (what `kubectl get` prints).

mod discovery;
pub mod management;
mod nodes;
mod routes;
mod static_pods;
mod store;
mod table;
mod workloads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use store::ObjectKey;

#[derive(Debug, thiserror::Error)]
pub enum KubeSimError {
    #[error("simulated Kubernetes API: bad TLS material: {0}")]
    Tls(String),
    #[error("simulated Kubernetes API: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("simulated Kubernetes API: cannot store the object: {0}")]
    Object(String),
}

/// A Node as the kubelet of a simulated machine registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    pub ready: bool,
    pub unschedulable: bool,
    /// `metadata.annotations`, kept across a kubelet's re-registration as the Node object is.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `control-plane` or `worker`: the `node-role.kubernetes.io/…` label; a control plane carries
    /// the `NoSchedule` taint Talos puts on it unless `control_plane_schedulable`.
    pub role: String,
    /// The config's `cluster.allowSchedulingOnControlPlanes`: no control-plane taint.
    pub control_plane_schedulable: bool,
    /// `status.nodeInfo.kubeletVersion`: the tag of the kubelet image the node's config names.
    pub kubelet_version: String,
    /// `status.addresses` InternalIP.
    pub internal_ip: Option<String>,
    /// `status.nodeInfo.osImage`, e.g. `Talos (v1.13.9)`.
    pub os_image: String,
    pub created: SystemTime,
    pub resource_version: u64,
}

impl Default for SimNode {
    fn default() -> Self {
        Self {
            ready: false,
            unschedulable: false,
            annotations: Default::default(),
            role: "worker".into(),
            control_plane_schedulable: false,
            kubelet_version: String::new(),
            internal_ip: None,
            os_image: "Talos".into(),
            created: SystemTime::now(),
            resource_version: 0,
        }
    }
}

/// The cluster the API serves. Shared with whoever drives the simulation.
#[derive(Debug)]
pub struct KubeSimState {
    /// `/version`'s `gitVersion`: the tag of the API server image.
    pub git_version: String,
    pub nodes: BTreeMap<String, SimNode>,
    /// Every other object (pods, workloads, budgets, leases, RBAC, …) as the JSON the API returns.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Every eviction the API accepted, in order (`namespace/name`).
    pub evictions: Vec<String>,
    /// Every eviction refused with 429 because a PodDisruptionBudget held, in order.
    pub refused_evictions: Vec<String>,
    /// The cluster's resourceVersion counter (etcd's revision, on a real cluster).
    pub revision: u64,
}

impl Default for KubeSimState {
    fn default() -> Self {
        let mut state = Self {
            git_version: "v1.34.1".into(),
            nodes: BTreeMap::new(),
            objects: BTreeMap::new(),
            evictions: Vec::new(),
            refused_evictions: Vec::new(),
            revision: 1,
        };
        // The namespaces an API server creates at start (`pkg/controlplane/controller/systemnamespaces`).
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let doc = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns },
                "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" },
            });
            let _ = state.create(doc);
        }
        state
    }
}

impl KubeSimState {
    /// Stores a new object (its `apiVersion` and `kind` must be a served resource), filling in the
    /// metadata the API server would, then runs the simulated controllers. For tests and callers in
    /// process; clients go through the API.
    pub fn create(&mut self, doc: Value) -> Result<Value, KubeSimError> {
        let created =
            store::create_document(self, doc).map_err(|e| KubeSimError::Object(e.message))?;
        workloads::reconcile(self);
        Ok(created)
    }

    /// Pods bound to `node`, as `namespace/name`.
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter(|(k, v)| {
                k.group.is_empty()
                    && k.plural == "pods"
                    && v.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            })
            .map(|(k, _)| format!("{}/{}", k.namespace, k.name))
            .collect()
    }

    /// Registers (or replaces) a Node and lets the controllers react (DaemonSet pods on it, pending
    /// pods scheduled).
    pub fn put_node(&mut self, name: &str, mut node: SimNode) {
        node.resource_version = self.next_revision();
        self.nodes.insert(name.to_owned(), node);
        // The kubelet's heartbeat Lease in `kube-node-lease`, which `kubectl describe node` shows.
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": name, "namespace": "kube-node-lease" },
            "spec": { "holderIdentity": name, "leaseDurationSeconds": 40,
                      "renewTime": store::micro_timestamp(SystemTime::now()) },
        });
        let key = ObjectKey {
            group: "coordination.k8s.io".into(),
            plural: "leases".into(),
            namespace: "kube-node-lease".into(),
            name: name.to_owned(),
        };
        if !self.objects.contains_key(&key) {
            let _ = store::create_document(self, lease);
        }
        workloads::reconcile(self);
    }

    /// Changes a Node's readiness as its kubelet would report it.
    pub fn set_node_ready(&mut self, name: &str, ready: bool) {
        let changed = self.nodes.get(name).is_some_and(|n| n.ready != ready);
        if changed {
            let rv = self.next_revision();
            if let Some(n) = self.nodes.get_mut(name) {
                n.ready = ready;
                n.resource_version = rv;
            }
            workloads::reconcile(self);
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }
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
        let app = routes::router(state.clone());
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

fn lock(state: &SharedKubeSim) -> std::sync::MutexGuard<'_, KubeSimState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}
