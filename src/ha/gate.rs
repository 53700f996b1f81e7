//! The leader gate: whether this instance may write right now, judged on this process's monotonic
//! clock alone, and the port wrappers that ask it before every write.
//!
//! The gate opens when the elector renewed the Lease and stays open for the renew deadline counted
//! from the moment that renewal was *sent* (not answered): a follower starts its own count of
//! `lease_duration` only when it sees the change, which is later still, so the leader's window
//! always closes a third of a lease before any follower may take over. A process frozen by SIGSTOP
//! past its deadline finds the gate shut the moment it resumes: `Instant` is CLOCK_MONOTONIC, which
//! runs on while the process is stopped, and nothing but a new successful renewal reopens it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use tokio::sync::watch;

use crate::kube::{KubeAccess, KubeError, KubePort, NodeReadiness};
use crate::proxmox::{
    Created, Inventory, OwnedVm, PendingChanges, ProxmoxError, ProxmoxPort, Reply, Resized,
    Transport, TransportError, VmIdentity, VmSpec,
};
use crate::reconcile::KubeConnect;
use crate::secrets::{
    CreateOutcome, CustomMetadata, MetadataPatch, ReadOutcome, SecretData, SecretPath, SecretStore,
    SecretsError, Version,
};
use crate::talos::grpc::proto::machine::{ApplyMode, EtcdMember, ServiceInfo};
use crate::talos::grpc::{
    ApplyOutcome, BootstrapOutcome, ClientIdentity, NodeState, TalosError, TalosNode, TalosPort,
};

/// A write withheld because this instance does not hold the Lease within its renew deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} withheld: this instance ({identity}) does not hold the Lease within its renew deadline{}",
    .holder.as_deref().map(|h| format!(" (the leader is {h})")).unwrap_or_default()
)]
pub struct NotLeader {
    pub identity: String,
    pub holder: Option<String>,
    pub what: &'static str,
}

struct Inner {
    identity: String,
    renew_deadline: Duration,
    state: Mutex<State>,
    leading: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// When the last successful renewal (or acquisition) was sent.
    renewed_at: Option<Instant>,
    /// Who holds the Lease as last read (this instance's identity while it leads).
    holder: Option<String>,
}

/// Cheap to clone; every clone sees the same lease.
#[derive(Clone)]
pub struct LeaderGate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaderGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGate")
            .field("identity", &self.inner.identity)
            .field("leading", &self.check())
            .finish()
    }
}

impl LeaderGate {
    pub fn new(identity: String, renew_deadline: Duration) -> Self {
        let (leading, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                identity,
                renew_deadline,
                state: Mutex::new(State::default()),
                leading,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// This instance holds the Lease right now: it renewed it within the renew deadline.
    pub fn check(&self) -> bool {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] at `now` (the clock injected, for tests).
    pub fn check_at(&self, now: Instant) -> bool {
        self.state()
            .renewed_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.inner.renew_deadline)
    }

    /// `Ok` when this instance may write `what` now, else the typed refusal.
    pub fn allow(&self, what: &'static str) -> Result<(), NotLeader> {
        if self.check() {
            return Ok(());
        }
        Err(NotLeader {
            identity: self.inner.identity.clone(),
            holder: self.holder(),
            what,
        })
    }

    /// Who holds the Lease as last read: this instance while it leads, another's identity, or
    /// nobody known yet.
    pub fn holder(&self) -> Option<String> {
        let s = self.state();
        s.holder.clone()
    }

    /// `"leader"` or `"follower"`, as `/readyz` and the status say it.
    pub fn role(&self) -> &'static str {
        if self.check() { "leader" } else { "follower" }
    }

    /// The elector renewed (or acquired) the Lease with a request sent at `sent`.
    pub(crate) fn renewed(&self, sent: Instant) {
        {
            let mut s = self.state();
            // A late answer to an older request never moves the window back.
            if s.renewed_at.is_none_or(|t| t < sent) {
                s.renewed_at = Some(sent);
            }
            s.holder = Some(self.inner.identity.clone());
        }
        self.publish();
    }

    /// The elector read the Lease held by someone else (or by nobody): the gate shuts at once.
    pub(crate) fn held_by(&self, holder: Option<String>) {
        {
            let mut s = self.state();
            s.renewed_at = None;
            s.holder = holder;
        }
        self.publish();
    }

    /// Tells waiters of a change of role; the elector calls it after every attempt, so a deadline
    /// that ran out without an answer is noticed too.
    pub(crate) fn publish(&self) {
        let now = self.check();
        self.inner.leading.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// Resolves once this instance leads (at once if it does).
    pub async fn until_leading(&self) {
        let mut rx = self.inner.leading.subscribe();
        loop {
            if self.check() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl crate::reconcile::Leadership for LeaderGate {
    fn check(&self) -> bool {
        LeaderGate::check(self)
    }

    fn until_leading(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(LeaderGate::until_leading(self))
    }
}

/// `ProxmoxPort` that asks the gate before every method that changes a VM; reads go through.
pub struct GatedProxmox {
    inner: Arc<dyn ProxmoxPort>,
    gate: LeaderGate,
}

impl GatedProxmox {
    pub fn new(inner: Arc<dyn ProxmoxPort>, gate: LeaderGate) -> Self {
        Self { inner, gate }
    }

    fn allow(&self, what: &'static str) -> Result<(), ProxmoxError> {
        self.gate
            .allow(what)
            .map_err(|e| ProxmoxError::NotLeader(e.to_string()))
    }
}

#[async_trait]
impl ProxmoxPort for GatedProxmox {
    async fn observe(&self) -> Result<Inventory, ProxmoxError> {
        self.inner.observe().await
    }
    async fn check_template(&self, spec: &VmSpec, template_node: &str) -> Result<(), ProxmoxError> {
        self.inner.check_template(spec, template_node).await
    }
    async fn claim(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        self.inner.claim(id).await
    }
    async fn claim_for_destroy(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        self.inner.claim_for_destroy(id).await
    }
    async fn pending(&self, vm: &OwnedVm) -> Result<PendingChanges, ProxmoxError> {
        self.inner.pending(vm).await
    }
    async fn create(&self, spec: &VmSpec, template_node: &str) -> Result<Created, ProxmoxError> {
        self.allow("a Proxmox clone")?;
        self.inner.create(spec, template_node).await
    }
    async fn resize(&self, vm: &OwnedVm, spec: &VmSpec) -> Result<Resized, ProxmoxError> {
        self.allow("a Proxmox resize")?;
        self.inner.resize(vm, spec).await
    }
    async fn reboot(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        self.allow("a Proxmox reboot")?;
        self.inner.reboot(vm).await
    }
    async fn start(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        self.allow("a Proxmox start")?;
        self.inner.start(vm).await
    }
    async fn shutdown(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        self.allow("a Proxmox shutdown")?;
        self.inner.shutdown(vm).await
    }
    async fn destroy(&self, vm: OwnedVm) -> Result<(), ProxmoxError> {
        self.allow("a Proxmox destroy")?;
        self.inner.destroy(vm).await
    }
}

/// The Proxmox transport with the gate in front of every request that is not a read: a VM write
/// that one adapter call makes in several requests (clone, then configure, then start) is stopped
/// between them too, e.g. when the process resumes from SIGSTOP in the middle of a clone.
pub struct GatedTransport {
    inner: Arc<dyn Transport>,
    gate: LeaderGate,
}

impl GatedTransport {
    pub fn new(inner: Arc<dyn Transport>, gate: LeaderGate) -> Self {
        Self { inner, gate }
    }
}

#[async_trait]
impl Transport for GatedTransport {
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Reply, TransportError> {
        if method != Method::GET {
            // Not sent, and not to be retried: the adapter stops the call there.
            self.gate
                .allow("a Proxmox request")
                .map_err(|e| TransportError::Withheld(e.to_string()))?;
        }
        self.inner.exchange(method, path, params).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// `TalosPort` that asks the gate before every call that changes a node (apply, bootstrap, reset,
/// upgrade, reboot); reads and dry runs go through. A step may wait minutes between its reads and
/// its write (a bootstrap waits for the node), so the check sits on the call itself.
pub struct GatedTalos {
    inner: Arc<dyn TalosPort>,
    gate: LeaderGate,
}

impl GatedTalos {
    pub fn new(inner: Arc<dyn TalosPort>, gate: LeaderGate) -> Self {
        Self { inner, gate }
    }
}

fn talos_allow(gate: &LeaderGate, what: &'static str) -> Result<(), TalosError> {
    gate.allow(what)
        .map_err(|e| TalosError::NotLeader(e.to_string()))
}

#[async_trait]
impl TalosPort for GatedTalos {
    async fn node_state(&self, ip: IpAddr, identity: &ClientIdentity) -> NodeState {
        self.inner.node_state(ip, identity).await
    }
    async fn apply_in_maintenance(
        &self,
        ip: IpAddr,
        vm_uuid: &str,
        config: &[u8],
    ) -> Result<ApplyOutcome, TalosError> {
        talos_allow(&self.gate, "a Talos apply")?;
        self.inner.apply_in_maintenance(ip, vm_uuid, config).await
    }
    async fn maintenance_version(&self, ip: IpAddr) -> Result<String, TalosError> {
        self.inner.maintenance_version(ip).await
    }
    async fn connect(
        &self,
        ip: IpAddr,
        identity: &ClientIdentity,
    ) -> Result<Box<dyn TalosNode>, TalosError> {
        let node = self.inner.connect(ip, identity).await?;
        Ok(Box::new(GatedTalosNode {
            inner: node,
            gate: self.gate.clone(),
        }))
    }
}

struct GatedTalosNode {
    inner: Box<dyn TalosNode>,
    gate: LeaderGate,
}

#[async_trait]
impl TalosNode for GatedTalosNode {
    async fn bootstrap(&self) -> Result<BootstrapOutcome, TalosError> {
        talos_allow(&self.gate, "an etcd bootstrap")?;
        self.inner.bootstrap().await
    }
    async fn etcd_members(&self) -> Result<Vec<EtcdMember>, TalosError> {
        self.inner.etcd_members().await
    }
    async fn etcd_members_within(&self, deadline: Duration) -> Result<Vec<EtcdMember>, TalosError> {
        self.inner.etcd_members_within(deadline).await
    }
    async fn services(&self) -> Result<Vec<ServiceInfo>, TalosError> {
        self.inner.services().await
    }
    async fn reset_graceful(&self, reboot: bool) -> Result<(), TalosError> {
        talos_allow(&self.gate, "a Talos reset")?;
        self.inner.reset_graceful(reboot).await
    }
    async fn running_config(&self) -> Result<String, TalosError> {
        self.inner.running_config().await
    }
    async fn apply(
        &self,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        if !dry_run {
            talos_allow(&self.gate, "a Talos apply")?;
        }
        self.inner.apply(config, mode, dry_run).await
    }
    async fn running_version(&self) -> Result<String, TalosError> {
        self.inner.running_version().await
    }
    async fn pull_and_install(&self, image: &str, deadline: Duration) -> Result<(), TalosError> {
        talos_allow(&self.gate, "a Talos upgrade")?;
        self.inner.pull_and_install(image, deadline).await
    }
    async fn legacy_upgrade(&self, image: &str) -> Result<(), TalosError> {
        talos_allow(&self.gate, "a Talos upgrade")?;
        self.inner.legacy_upgrade(image).await
    }
    async fn reboot(&self) -> Result<(), TalosError> {
        talos_allow(&self.gate, "a Talos reboot")?;
        self.inner.reboot().await
    }
    async fn bootstrap_manifests(&self) -> Result<Vec<serde_json::Value>, TalosError> {
        self.inner.bootstrap_manifests().await
    }
    async fn etcd_snapshot(&self) -> Result<crate::talos::grpc::ByteStream, TalosError> {
        self.inner.etcd_snapshot().await
    }
    async fn etcd_recover(
        &self,
        snapshot: crate::talos::grpc::UploadStream,
    ) -> Result<(), TalosError> {
        talos_allow(&self.gate, "an etcd recovery upload")?;
        self.inner.etcd_recover(snapshot).await
    }
    async fn bootstrap_recover(&self) -> Result<BootstrapOutcome, TalosError> {
        talos_allow(&self.gate, "an etcd bootstrap")?;
        self.inner.bootstrap_recover().await
    }
    async fn reset_ephemeral(&self) -> Result<(), TalosError> {
        talos_allow(&self.gate, "a Talos reset")?;
        self.inner.reset_ephemeral().await
    }
}

/// The gate as the secret store's per-request [`crate::secrets::WriteGate`]: [`GatedSecrets`]
/// refuses an operation up front, this refuses each later request of one begun as the leader.
pub fn secrets_write_gate(gate: &LeaderGate) -> crate::secrets::WriteGate {
    let gate = gate.clone();
    Arc::new(move |what| {
        gate.allow(what)
            .map_err(|e| SecretsError::NotLeader(e.to_string()))
    })
}

/// `SecretStore` that asks the gate before every write; reads and listings go through.
pub struct GatedSecrets {
    inner: Arc<dyn SecretStore>,
    gate: LeaderGate,
}

impl GatedSecrets {
    pub fn new(inner: Arc<dyn SecretStore>, gate: LeaderGate) -> Self {
        Self { inner, gate }
    }

    fn allow(&self, what: &'static str) -> Result<(), SecretsError> {
        self.gate
            .allow(what)
            .map_err(|e| SecretsError::NotLeader(e.to_string()))
    }
}

#[async_trait]
impl SecretStore for GatedSecrets {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn check(&self) -> Result<(), SecretsError> {
        self.inner.check().await
    }
    async fn read(&self, path: &SecretPath) -> Result<ReadOutcome, SecretsError> {
        self.inner.read(path).await
    }
    async fn create(
        &self,
        path: &SecretPath,
        data: &SecretData,
        custom_metadata: &CustomMetadata,
    ) -> Result<CreateOutcome, SecretsError> {
        self.allow("a secret store write")?;
        self.inner.create(path, data, custom_metadata).await
    }
    async fn overwrite(
        &self,
        path: &SecretPath,
        expected: Version,
        data: &SecretData,
    ) -> Result<Version, SecretsError> {
        self.allow("a secret store write")?;
        self.inner.overwrite(path, expected, data).await
    }
    async fn patch_metadata(
        &self,
        path: &SecretPath,
        patch: &MetadataPatch,
    ) -> Result<(), SecretsError> {
        self.allow("a secret store write")?;
        self.inner.patch_metadata(path, patch).await
    }
    async fn delete(&self, path: &SecretPath) -> Result<(), SecretsError> {
        self.allow("a secret store delete")?;
        self.inner.delete(path).await
    }
    async fn destroy(&self, path: &SecretPath) -> Result<(), SecretsError> {
        self.allow("a secret store destroy")?;
        self.inner.destroy(path).await
    }
    async fn list(&self, dir: &SecretPath) -> Result<Vec<SecretPath>, SecretsError> {
        self.inner.list(dir).await
    }
}

/// `KubeConnect` whose clients ask the gate before every call that changes a workload cluster
/// (cordon, drain, Node deletion, the bootstrap manifests' apply); reads go through. A drain is one
/// call that evicts pod after pod: the gate is asked when it starts, and the executor's stop signal
/// (the step boundary) ends the turn after it.
pub struct GatedKube {
    inner: Arc<dyn KubeConnect>,
    gate: LeaderGate,
}

impl GatedKube {
    pub fn new(inner: Arc<dyn KubeConnect>, gate: LeaderGate) -> Self {
        Self { inner, gate }
    }
}

#[async_trait]
impl KubeConnect for GatedKube {
    async fn connect(&self, access: &KubeAccess) -> Result<Box<dyn KubePort>, KubeError> {
        Ok(Box::new(GatedKubeClient {
            inner: self.inner.connect(access).await?,
            gate: self.gate.clone(),
        }))
    }
}

struct GatedKubeClient {
    inner: Box<dyn KubePort>,
    gate: LeaderGate,
}

impl GatedKubeClient {
    fn allow(&self, what: &'static str) -> Result<(), KubeError> {
        self.gate
            .allow(what)
            .map_err(|e| KubeError::NotLeader(e.to_string()))
    }
}

#[async_trait]
impl KubePort for GatedKubeClient {
    async fn server_version(&self) -> Result<String, KubeError> {
        self.inner.server_version().await
    }
    async fn node_readiness(&self, expected: &[String]) -> Result<NodeReadiness, KubeError> {
        self.inner.node_readiness(expected).await
    }
    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), KubeError> {
        self.allow("a cordon")?;
        self.inner.set_unschedulable(node, unschedulable).await
    }
    async fn drain(&self, node: &str, timeout: Duration) -> Result<usize, KubeError> {
        self.allow("a drain")?;
        self.inner.drain(node, timeout).await
    }
    async fn delete_node(&self, node: &str) -> Result<(), KubeError> {
        self.allow("a Node deletion")?;
        self.inner.delete_node(node).await
    }
    async fn apply_manifests(&self, objects: &[serde_json::Value]) -> Result<usize, KubeError> {
        self.allow("a manifest apply")?;
        self.inner.apply_manifests(objects).await
    }
    async fn workload_image(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, KubeError> {
        self.inner.workload_image(kind, namespace, name).await
    }
    async fn kubelet_versions(&self) -> Result<BTreeMap<String, String>, KubeError> {
        self.inner.kubelet_versions().await
    }
    async fn pod_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, bool)>, KubeError> {
        self.inner.pod_image(namespace, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_on_renewal_and_shuts_at_the_renew_deadline_by_the_monotonic_clock() {
        let gate = LeaderGate::new("a_1".into(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!gate.check_at(t0), "closed before any renewal");
        gate.renewed(t0);
        assert!(gate.check_at(t0 + Duration::from_millis(9_999)));
        // A process stopped past its deadline resumes to a shut gate, whatever it last believed.
        assert!(!gate.check_at(t0 + Duration::from_secs(10)));
        assert!(!gate.check_at(t0 + Duration::from_secs(3600)));
        assert_eq!(gate.holder().as_deref(), Some("a_1"));
    }

    #[test]
    fn a_late_answer_never_moves_the_window_back_and_another_holder_shuts_it() {
        let gate = LeaderGate::new("a_1".into(), Duration::from_secs(10));
        let t0 = Instant::now();
        gate.renewed(t0 + Duration::from_secs(5));
        gate.renewed(t0);
        assert!(gate.check_at(t0 + Duration::from_secs(12)));
        gate.held_by(Some("b_2".into()));
        assert!(!gate.check_at(t0 + Duration::from_secs(6)));
        let refusal = gate.allow("a push").unwrap_err();
        assert!(
            refusal.to_string().contains("the leader is b_2"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn a_shut_gate_sends_no_secret_store_write_and_an_open_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SecretStore> =
            Arc::new(crate::secrets::FileStore::open(dir.path()).unwrap());
        let gate = LeaderGate::new("a_1".into(), Duration::from_secs(10));
        let gated = GatedSecrets::new(store.clone(), gate.clone());
        let path = SecretPath::parse("kubernetes/ha/secrets").unwrap();
        let data: SecretData = [("k".to_owned(), crate::redact::Secret::new("v".to_owned()))]
            .into_iter()
            .collect();
        let refused = gated
            .create(&path, &data, &CustomMetadata::new())
            .await
            .unwrap_err();
        assert!(matches!(refused, SecretsError::NotLeader(_)), "{refused}");
        assert!(matches!(
            store.read(&path).await.unwrap(),
            ReadOutcome::Absent
        ));
        // Reads are never gated.
        assert!(matches!(
            gated.read(&path).await.unwrap(),
            ReadOutcome::Absent
        ));
        gate.renewed(Instant::now());
        gated
            .create(&path, &data, &CustomMetadata::new())
            .await
            .unwrap();
        assert!(matches!(
            store.read(&path).await.unwrap(),
            ReadOutcome::Present(_)
        ));
    }

    /// A workload cluster's API that counts what reaches it.
    #[derive(Default)]
    struct Counting(Arc<Mutex<Vec<&'static str>>>);

    #[async_trait]
    impl KubeConnect for Counting {
        async fn connect(&self, _: &KubeAccess) -> Result<Box<dyn KubePort>, KubeError> {
            Ok(Box::new(Counting(self.0.clone())))
        }
    }

    #[async_trait]
    impl KubePort for Counting {
        async fn server_version(&self) -> Result<String, KubeError> {
            self.0.lock().unwrap().push("version");
            Ok("v1.34.0".into())
        }
        async fn node_readiness(&self, _: &[String]) -> Result<NodeReadiness, KubeError> {
            self.0.lock().unwrap().push("readiness");
            Ok(NodeReadiness::default())
        }
        async fn set_unschedulable(&self, _: &str, _: bool) -> Result<(), KubeError> {
            self.0.lock().unwrap().push("cordon");
            Ok(())
        }
        async fn drain(&self, _: &str, _: Duration) -> Result<usize, KubeError> {
            self.0.lock().unwrap().push("drain");
            Ok(0)
        }
        async fn delete_node(&self, _: &str) -> Result<(), KubeError> {
            self.0.lock().unwrap().push("delete");
            Ok(())
        }
        async fn apply_manifests(&self, _: &[serde_json::Value]) -> Result<usize, KubeError> {
            self.0.lock().unwrap().push("apply");
            Ok(0)
        }
        async fn workload_image(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<Option<String>, KubeError> {
            Ok(None)
        }
        async fn kubelet_versions(&self) -> Result<BTreeMap<String, String>, KubeError> {
            Ok(BTreeMap::new())
        }
        async fn pod_image(&self, _: &str, _: &str) -> Result<Option<(String, bool)>, KubeError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_shut_gate_sends_no_workload_cluster_write_and_reads_pass() {
        let seen = Counting::default();
        let calls = seen.0.clone();
        let gate = LeaderGate::new("a_1".into(), Duration::from_secs(10));
        let gated = GatedKube::new(Arc::new(seen), gate.clone());
        let access = KubeAccess {
            server: "https://192.0.2.1:6443".into(),
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            client_key_pem: crate::redact::Secret::new(String::new()),
        };
        let kube = gated.connect(&access).await.unwrap();
        for refused in [
            kube.set_unschedulable("n", true).await.unwrap_err(),
            kube.drain("n", Duration::from_secs(1))
                .await
                .map(|_| ())
                .unwrap_err(),
            kube.delete_node("n").await.unwrap_err(),
            kube.apply_manifests(&[]).await.map(|_| ()).unwrap_err(),
        ] {
            assert!(matches!(refused, KubeError::NotLeader(_)), "{refused}");
        }
        kube.server_version().await.unwrap();
        kube.node_readiness(&[]).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), ["version", "readiness"]);

        gate.renewed(Instant::now());
        kube.set_unschedulable("n", true).await.unwrap();
        kube.drain("n", Duration::from_secs(1)).await.unwrap();
        kube.delete_node("n").await.unwrap();
        kube.apply_manifests(&[]).await.unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            ["version", "readiness", "cordon", "drain", "delete", "apply"]
        );
    }

    #[tokio::test]
    async fn waiters_wake_when_the_instance_leads() {
        let gate = LeaderGate::new("a_1".into(), Duration::from_secs(10));
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.until_leading().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        gate.renewed(Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
