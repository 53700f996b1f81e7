//! The Kubernetes API of a cluster kiln built: node health by name, cordon, drain, Node deletion, and
//! the server-side apply of Talos's bootstrap manifests (`apply`) that ends a Kubernetes upgrade.
//! Only what provisioning, resizing, scale-down and upgrades need; everything else is Argo CD's
//! business.
//!
//! (Inside kiln the `kube` crate is written `::kube`, since this module shares its name.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ::kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use async_trait::async_trait;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;

use crate::redact::Secret;

pub mod apply;
mod versions;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot build a Kubernetes client for {server}: {message}")]
    Connect { server: String, message: String },
    #[error("Kubernetes API {operation} failed: {source}")]
    Api {
        operation: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("bootstrap manifest {index} cannot be applied: {message}")]
    Manifest { index: usize, message: String },
    #[error("{operation} did not finish within {timeout:?}: {detail}")]
    Timeout {
        operation: String,
        timeout: Duration,
        detail: String,
    },
    /// `[ha]`: this instance does not hold the Lease, so nothing was sent (`crate::ha::gate`).
    #[error("{0}")]
    NotLeader(String),
}

impl KubeError {
    fn api(operation: impl Into<String>) -> impl FnOnce(::kube::Error) -> Self {
        let operation = operation.into();
        move |source| Self::Api { operation, source }
    }
}

/// How kiln reaches a cluster's API server: the endpoint (the first control plane's IP until the VIP
/// answers), the cluster CA, and a client certificate minted from it.
#[derive(Debug, Clone)]
pub struct KubeAccess {
    /// `https://<ip>:6443`
    pub server: String,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: Secret,
}

/// Readiness of the nodes kiln expects, by name. Nodes kiln does not expect are listed, not awaited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeReadiness {
    pub ready: Vec<String>,
    pub not_ready: Vec<String>,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    /// Expected nodes that are Ready and still cordoned by kiln ([`CORDONED_BY_KILN`]): a cordon
    /// whose uncordon a crash or a failed step left undone.
    pub cordoned_by_kiln: Vec<String>,
}

/// The annotation kiln puts on a Node it cordons and removes when it uncordons it, so a cordon a
/// crash left behind is told from one a person made (kiln lifts only its own).
pub const CORDONED_BY_KILN: &str = "kiln.dev/cordoned";

impl NodeReadiness {
    pub fn all_ready(&self) -> bool {
        self.not_ready.is_empty() && self.missing.is_empty()
    }
}

/// What the reconciler needs from a cluster's Kubernetes API.
#[async_trait]
pub trait KubePort: Send + Sync {
    async fn server_version(&self) -> Result<String, KubeError>;
    async fn node_readiness(&self, expected: &[String]) -> Result<NodeReadiness, KubeError>;
    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), KubeError>;
    /// Evicts every pod of the node that a drain moves (not DaemonSet or mirror pods), honouring
    /// PodDisruptionBudgets by retrying refused evictions until `timeout`.
    async fn drain(&self, node: &str, timeout: Duration) -> Result<usize, KubeError>;
    /// Deletes the Node object; an absent node is success.
    async fn delete_node(&self, node: &str) -> Result<(), KubeError>;
    /// Server-side applies each object in order with Talos's field manager (`talos`) and force, each
    /// marked as a member of Talos's bootstrap-manifest inventory, as `talosctl upgrade-k8s` syncs the
    /// bootstrap manifests; how many were applied.
    async fn apply_manifests(&self, objects: &[serde_json::Value]) -> Result<usize, KubeError>;
    /// The first container image of a DaemonSet or Deployment, `None` when it does not exist: whether
    /// the bootstrap manifests are in sync.
    async fn workload_image(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, KubeError>;
    /// Each Node's `status.nodeInfo.kubeletVersion`, by name (a Kubernetes upgrade's kubelet gate).
    async fn kubelet_versions(&self) -> Result<BTreeMap<String, String>, KubeError>;
    /// A pod's first container image and whether it is Ready; `None` when it does not exist (a
    /// static pod's mirror pod `<component>-<node>` in `kube-system`).
    async fn pod_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, bool)>, KubeError>;
}

/// `KubePort` over kube-rs.
#[derive(Clone)]
pub struct KubeClient {
    client: ::kube::Client,
}

impl KubeClient {
    pub async fn connect(access: &KubeAccess) -> Result<Self, KubeError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: kiln\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: kiln\ncurrent-context: c\n",
            server = access.server,
            ca = b64(&access.ca_pem),
            crt = b64(&access.client_cert_pem),
            key = b64(access.client_key_pem.expose()),
        );
        let connect_err = |message: String| KubeError::Connect {
            server: access.server.clone(),
            message,
        };
        let kubeconfig = Kubeconfig::from_yaml(&yaml).map_err(|e| connect_err(e.to_string()))?;
        let mut config =
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| connect_err(e.to_string()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        // kiln owns retries and deadlines (drain retries refused evictions itself); kube-rs's own
        // 429 retry would hide a disruption budget behind minutes of silent backoff.
        config.default_retry = false;
        let client = ::kube::Client::try_from(config).map_err(|e| connect_err(e.to_string()))?;
        Ok(Self { client })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods a drain leaves alone: DaemonSet pods (they would come straight back) and mirror pods of
/// static manifests (the kubelet owns them).
fn drain_skips(pod: &Pod) -> bool {
    let daemonset = pod
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    daemonset || mirror
}

#[async_trait]
impl KubePort for KubeClient {
    async fn server_version(&self) -> Result<String, KubeError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(KubeError::api("GET /version"))?;
        Ok(info.git_version)
    }

    async fn node_readiness(&self, expected: &[String]) -> Result<NodeReadiness, KubeError> {
        let list = self
            .nodes()
            .list(&ListParams::default())
            .await
            .map_err(KubeError::api("list nodes"))?;
        let wanted: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let mut out = NodeReadiness::default();
        let mut seen = BTreeSet::new();
        for node in &list.items {
            let name = node.metadata.name.clone().unwrap_or_default();
            seen.insert(name.clone());
            if !wanted.contains(name.as_str()) {
                out.extra.push(name);
            } else if is_ready(node) {
                let kilns = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
                    && node
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(CORDONED_BY_KILN));
                if kilns {
                    out.cordoned_by_kiln.push(name.clone());
                }
                out.ready.push(name);
            } else {
                out.not_ready.push(name);
            }
        }
        out.missing = wanted
            .iter()
            .filter(|n| !seen.contains(**n))
            .map(|n| (*n).to_owned())
            .collect();
        for v in [
            &mut out.ready,
            &mut out.not_ready,
            &mut out.extra,
            &mut out.cordoned_by_kiln,
        ] {
            v.sort();
        }
        Ok(out)
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), KubeError> {
        // The mark goes and comes with the cordon, in the same write (a merge patch's `null`
        // removes a key), so no crash leaves one without the other.
        let mark =
            unschedulable.then(|| time::OffsetDateTime::now_utc().unix_timestamp().to_string());
        let patch = serde_json::json!({
            "metadata": { "annotations": { CORDONED_BY_KILN: mark } },
            "spec": { "unschedulable": unschedulable },
        });
        self.nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(KubeError::api(format!("cordon {node}")))?;
        Ok(())
    }

    async fn drain(&self, node: &str, timeout: Duration) -> Result<usize, KubeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={node}");
        let mut evicted = 0usize;
        loop {
            // A drain held by a budget polls for minutes: progress for systemd's watchdog.
            crate::systemd::progress();
            let pods = pods_api
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(KubeError::api(format!("list pods on {node}")))?;
            let movable: Vec<&Pod> = pods.items.iter().filter(|p| !drain_skips(p)).collect();
            if movable.is_empty() {
                return Ok(evicted);
            }
            let mut refused = Vec::new();
            for pod in movable {
                let ns = pod
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                match api.evict(&name, &EvictParams::default()).await {
                    Ok(_) => evicted += 1,
                    // Gone already.
                    Err(::kube::Error::Api(s)) if s.code == 404 => {}
                    // A PodDisruptionBudget says not now: try again until the deadline.
                    Err(::kube::Error::Api(s)) if s.code == 429 => {
                        refused.push(format!("{ns}/{name}"))
                    }
                    Err(e) => return Err(KubeError::api(format!("evict {ns}/{name}"))(e)),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KubeError::Timeout {
                    operation: format!("drain {node}"),
                    timeout,
                    detail: if refused.is_empty() {
                        "pods still terminating".into()
                    } else {
                        format!(
                            "evictions refused by disruption budgets: {}",
                            refused.join(", ")
                        )
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn delete_node(&self, node: &str) -> Result<(), KubeError> {
        match self.nodes().delete(node, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(::kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(KubeError::api(format!("delete node {node}"))(e)),
        }
    }

    async fn apply_manifests(&self, objects: &[serde_json::Value]) -> Result<usize, KubeError> {
        apply::apply_manifests(&self.client, objects).await
    }

    async fn workload_image(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, KubeError> {
        apply::workload_image(&self.client, kind, namespace, name).await
    }

    async fn kubelet_versions(&self) -> Result<BTreeMap<String, String>, KubeError> {
        self.list_kubelet_versions().await
    }

    async fn pod_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, bool)>, KubeError> {
        self.get_pod_image(namespace, name).await
    }
}
