//! The port the reconciler drives Talos through, and its gRPC adapter. The simulator serves the same wire
//! protocol, so `talos.backend = "simulated"` uses this adapter too, against loopback addresses.
//!
//! The port holds only what the reconciler calls, shaped like `KubeConnect`: the maintenance-mode entry
//! points (no identity yet), the node-state probe, and `connect` for a configured node's handle. What
//! other code needs (snapshots, recovery, upgrades, kubeconfig, …) is on `GrpcTalos` and `TalosClient`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;

use super::client::{
    APID_PORT, ApplyOutcome, BootstrapOutcome, ByteStream, ClientOptions, TalosClient,
    UploadStream, VersionReport,
};
use super::error::TalosError;
use super::proto::machine::{ApplyMode, EtcdMember, ServiceInfo};
use super::state::{self, NodeState, UuidCheck};
use super::tls::ClientIdentity;
use crate::redact::Secret;

#[async_trait]
pub trait TalosPort: Send + Sync {
    /// Configured (mTLS answers), maintenance (an insecure COSI read says so), or booting/unreachable.
    async fn node_state(&self, ip: IpAddr, identity: &ClientIdentity) -> NodeState;
    /// Checks the node's SMBIOS uuid against the VM's and its platform (`nocloud`), then applies with
    /// mode AUTO over the same insecure connection (the only mode a node without config takes), pinned
    /// to the certificate the checks saw.
    async fn apply_in_maintenance(
        &self,
        ip: IpAddr,
        vm_uuid: &str,
        config: &[u8],
    ) -> Result<ApplyOutcome, TalosError>;
    /// The Talos version a node in maintenance runs (its template's), from COSI `Versions`.
    async fn maintenance_version(&self, ip: IpAddr) -> Result<String, TalosError>;
    /// A configured node over mTLS with kiln's identity; the handle is for the calls of one step
    /// (nodes reboot under kiln, so connections are not kept).
    async fn connect(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Box<dyn TalosNode>, TalosError>;
}

/// The calls the reconciler makes on a configured node.
#[async_trait]
pub trait TalosNode: Send + Sync {
    async fn bootstrap(&self) -> Result<BootstrapOutcome, TalosError>;
    async fn etcd_members(&self) -> Result<Vec<EtcdMember>, TalosError>;
    /// EtcdMemberList with its own deadline (before bootstrap a real node waits until it).
    async fn etcd_members_within(&self, deadline: Duration) -> Result<Vec<EtcdMember>, TalosError>;
    async fn services(&self) -> Result<Vec<ServiceInfo>, TalosError>;
    /// Graceful: a control plane leaves etcd before it wipes itself.
    async fn reset_graceful(&self, reboot: bool) -> Result<(), TalosError>;
    /// The config the node runs (COSI `MachineConfigs`, `os:admin` only).
    async fn running_config(&self) -> Result<String, TalosError>;
    /// ApplyConfiguration over mTLS; with `dry_run` the reply's mode says what Talos would do.
    async fn apply(
        &self,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError>;
    /// The Talos tag the node runs (`Version` over mTLS).
    async fn running_version(&self) -> Result<String, TalosError>;
    /// The new upgrade flow (Talos ≥ v1.13): pull the installer, then install it (no reboot); the
    /// deadline bounds each of the two streams.
    async fn pull_and_install(&self, image: &str, deadline: Duration) -> Result<(), TalosError>;
    /// The legacy `MachineService.Upgrade` with `preserve: true` (the EPHEMERAL partition, where
    /// Longhorn keeps its data, stays); the node reboots by itself.
    async fn legacy_upgrade(&self, image: &str) -> Result<(), TalosError>;
    async fn reboot(&self) -> Result<(), TalosError>;
    /// The bootstrap manifests a control plane renders from its config (COSI `Manifests`), every
    /// object in resource-id order, as `talosctl upgrade-k8s` syncs them; none on a worker.
    async fn bootstrap_manifests(&self) -> Result<Vec<serde_json::Value>, TalosError>;
    /// The node's etcd database as it streams, SHA-256 trailer included (`EtcdSnapshot`; a control
    /// plane's etcd must run).
    async fn etcd_snapshot(&self) -> Result<ByteStream, TalosError>;
    /// Uploads a snapshot for [`TalosNode::bootstrap_recover`] (`EtcdRecover`).
    async fn etcd_recover(&self, snapshot: UploadStream) -> Result<(), TalosError>;
    /// `Bootstrap { recover_etcd: true }`: etcd starts a new one-member cluster from the uploaded
    /// snapshot (the hash trailer checked).
    async fn bootstrap_recover(&self) -> Result<BootstrapOutcome, TalosError>;
    /// Reset, not graceful, wiping only EPHEMERAL (etcd's data, `/var`) and rebooting: the node
    /// keeps its config (STATE) and comes back with an empty etcd, waiting in Preparing.
    async fn reset_ephemeral(&self) -> Result<(), TalosError>;
}

#[async_trait]
impl TalosNode for TalosClient {
    async fn bootstrap(&self) -> Result<BootstrapOutcome, TalosError> {
        TalosClient::bootstrap(self, false).await
    }

    async fn etcd_members(&self) -> Result<Vec<EtcdMember>, TalosError> {
        self.etcd_member_list().await
    }

    async fn etcd_members_within(&self, deadline: Duration) -> Result<Vec<EtcdMember>, TalosError> {
        self.etcd_member_list_within(deadline).await
    }

    async fn services(&self) -> Result<Vec<ServiceInfo>, TalosError> {
        self.service_list().await
    }

    async fn reset_graceful(&self, reboot: bool) -> Result<(), TalosError> {
        self.reset(true, reboot).await.map(drop)
    }

    async fn running_config(&self) -> Result<String, TalosError> {
        super::machine_config::running_config(self).await
    }

    async fn apply(
        &self,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        self.apply_configuration(config, mode, dry_run).await
    }

    async fn running_version(&self) -> Result<String, TalosError> {
        Ok(self.version().await?.tag)
    }

    async fn bootstrap_manifests(&self) -> Result<Vec<serde_json::Value>, TalosError> {
        super::manifests::bootstrap_manifests(self).await
    }

    async fn pull_and_install(&self, image: &str, deadline: Duration) -> Result<(), TalosError> {
        // The install names the reference as given, as talosctl v1.13.9 `upgradeViaLifecycleService`
        // does (it passes `--image` to both calls, not the name Pull answers).
        self.image_pull(image, deadline).await?;
        self.lifecycle_upgrade(image, deadline).await.map(drop)
    }

    async fn legacy_upgrade(&self, image: &str) -> Result<(), TalosError> {
        self.upgrade(image, true).await.map(drop)
    }

    async fn reboot(&self) -> Result<(), TalosError> {
        TalosClient::reboot(self).await.map(drop)
    }

    async fn etcd_snapshot(&self) -> Result<ByteStream, TalosError> {
        TalosClient::etcd_snapshot(self).await
    }

    async fn etcd_recover(&self, snapshot: UploadStream) -> Result<(), TalosError> {
        TalosClient::etcd_recover(self, snapshot).await
    }

    async fn bootstrap_recover(&self) -> Result<BootstrapOutcome, TalosError> {
        TalosClient::bootstrap(self, true).await
    }

    async fn reset_ephemeral(&self) -> Result<(), TalosError> {
        self.reset_wiping(false, true, &["EPHEMERAL"])
            .await
            .map(drop)
    }
}

/// Dials `<ip>:<port>` for every call: nodes reboot under kiln, so long-lived connections buy little.
#[derive(Clone, Debug)]
pub struct GrpcTalos {
    pub port: u16,
    pub options: ClientOptions,
}

impl Default for GrpcTalos {
    fn default() -> Self {
        Self {
            port: APID_PORT,
            options: ClientOptions::default(),
        }
    }
}

#[async_trait]
impl TalosPort for GrpcTalos {
    async fn node_state(&self, ip: IpAddr, identity: &ClientIdentity) -> NodeState {
        state::detect(self.addr(ip), identity, &self.options).await
    }

    async fn apply_in_maintenance(
        &self,
        ip: IpAddr,
        vm_uuid: &str,
        config: &[u8],
    ) -> Result<ApplyOutcome, TalosError> {
        let client = TalosClient::connect_insecure(self.addr(ip), self.options.clone()).await?;
        let found = state::system_uuid(&client).await?;
        if state::compare_uuid(client.addr(), vm_uuid, &found)? == UuidCheck::Unreported {
            tracing::warn!(node = %ip, "node reports no SMBIOS uuid; applying without the identity check");
        }
        let platform = state::platform(&client).await?;
        if platform != state::NOCLOUD {
            return Err(TalosError::WrongPlatform {
                addr: client.addr(),
                platform,
            });
        }
        client
            .apply_configuration(config, ApplyMode::Auto, false)
            .await
    }

    async fn maintenance_version(&self, ip: IpAddr) -> Result<String, TalosError> {
        let client = TalosClient::connect_insecure(self.addr(ip), self.options.clone()).await?;
        state::talos_version(&client).await
    }

    async fn connect(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Box<dyn TalosNode>, TalosError> {
        Ok(Box::new(self.mtls(ip, identity).await?))
    }
}

/// Calls outside the reconciler's turn (tests, recovery, upgrades, tools), each on a fresh connection.
impl GrpcTalos {
    fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    async fn mtls(&self, ip: IpAddr, identity: &ClientIdentity) -> Result<TalosClient, TalosError> {
        TalosClient::connect_mtls(self.addr(ip), identity, self.options.clone()).await
    }

    /// On a configured node: `dry_run` tells what a change needs before it is made.
    pub async fn apply_configured(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        self.mtls(ip, identity)
            .await?
            .apply_configuration(config, mode, dry_run)
            .await
    }

    pub async fn bootstrap(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<BootstrapOutcome, TalosError> {
        self.mtls(ip, identity).await?.bootstrap(false).await
    }

    pub async fn kubeconfig(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Secret, TalosError> {
        self.mtls(ip, identity).await?.kubeconfig().await
    }

    pub async fn etcd_members(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Vec<EtcdMember>, TalosError> {
        self.mtls(ip, identity).await?.etcd_member_list().await
    }

    pub async fn etcd_members_within(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        deadline: Duration,
    ) -> Result<Vec<EtcdMember>, TalosError> {
        self.mtls(ip, identity)
            .await?
            .etcd_member_list_within(deadline)
            .await
    }

    pub async fn etcd_remove_member(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        id: u64,
    ) -> Result<(), TalosError> {
        self.mtls(ip, identity)
            .await?
            .etcd_remove_member_by_id(id)
            .await
    }

    pub async fn etcd_snapshot(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<ByteStream, TalosError> {
        self.mtls(ip, identity).await?.etcd_snapshot().await
    }

    pub async fn etcd_recover(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        snapshot: UploadStream,
    ) -> Result<(), TalosError> {
        self.mtls(ip, identity).await?.etcd_recover(snapshot).await
    }

    pub async fn bootstrap_from_snapshot(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        snapshot: UploadStream,
    ) -> Result<BootstrapOutcome, TalosError> {
        let client = self.mtls(ip, identity).await?;
        client.etcd_recover(snapshot).await?;
        client.bootstrap(true).await
    }

    pub async fn reset_graceful(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        reboot: bool,
    ) -> Result<(), TalosError> {
        self.mtls(ip, identity)
            .await?
            .reset(true, reboot)
            .await
            .map(drop)
    }

    pub async fn upgrade(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
        image: &str,
        preserve: bool,
    ) -> Result<(), TalosError> {
        self.mtls(ip, identity)
            .await?
            .upgrade(image, preserve)
            .await
            .map(drop)
    }

    pub async fn reboot(&self, ip: IpAddr, identity: &ClientIdentity) -> Result<(), TalosError> {
        self.mtls(ip, identity).await?.reboot().await.map(drop)
    }

    pub async fn version(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<VersionReport, TalosError> {
        self.mtls(ip, identity).await?.version().await
    }

    pub async fn services(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Vec<ServiceInfo>, TalosError> {
        self.mtls(ip, identity).await?.service_list().await
    }
}
