//! The systems the engine drives, as trait objects, so the same engine runs against the real adapters,
//! the simulators and test doubles (DESIGN.md §1). Git is a type parameter of the engine instead: its
//! port has generic methods.

use std::sync::Arc;

use async_trait::async_trait;

use crate::kube::{KubeAccess, KubeClient, KubeError, KubePort};
use crate::proxmox::ProxmoxPort;
use crate::secrets::SecretStore;
use crate::talos::grpc::TalosPort;

/// Opens a client for one cluster's Kubernetes API (a new cluster's endpoint changes from the first
/// control plane to the VIP, so clients are made per use).
#[async_trait]
pub trait KubeConnect: Send + Sync {
    async fn connect(&self, access: &KubeAccess) -> Result<Box<dyn KubePort>, KubeError>;
}

/// kube-rs against the real API server (or the simulator's, which speaks the same HTTPS).
pub struct KubeRs;

#[async_trait]
impl KubeConnect for KubeRs {
    async fn connect(&self, access: &KubeAccess) -> Result<Box<dyn KubePort>, KubeError> {
        Ok(Box::new(KubeClient::connect(access).await?))
    }
}

#[derive(Clone)]
pub struct Ports {
    pub proxmox: Arc<dyn ProxmoxPort>,
    pub talos: Arc<dyn TalosPort>,
    pub secrets: Arc<dyn SecretStore>,
    pub kube: Arc<dyn KubeConnect>,
}
