//! One cluster's turn in a cycle: observe (cheaply when it can), plan, run the steps in order, and
//! report. Steps are re-checked against the system right before they act (a step that is already
//! true is skipped), so a crash anywhere resumes from observation (DESIGN.md §7 "Crash safety").
//!
//! A step ends in one of three ways: done (go on), waiting (a node still boots, the API is not up
//! yet: come back soon, no error), or failed (capped backoff keyed on the intent revision and the
//! action; after `max_failures` in a row the cluster is `Failed` until its file changes).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tracing::Instrument;

use super::backoff::{Backoff, RetryKey};
use super::observe::{self, LoadedBundle};
use super::ports::Ports;
use super::records::ClusterRecord;
use super::state_file::{now_rfc3339, rfc3339};
use super::status::{ClusterStatus, NodeStatus, Phase, VmState};
use crate::config::{DriftPolicy, OnDecommission};
use crate::kube::{KubeAccess, KubePort};
use crate::plan::{
    self, Action, Blocker, ClusterPlan, ConvergeInput, DecommissionInput, NodeState,
    ObservedCluster, Power, Step,
};
use crate::proxmox::{Inventory, ProxmoxError, VmIdentity, VmSpec};
use crate::redact::Secret;
use crate::secrets::{
    CreateOutcome, CustomMetadata, MetadataPatch, Prefix, ReadOutcome, SecretPaths, bundle_keys,
    bundle_record, kubeconfig_keys, meta_keys, secret_data, talos_keys,
};
use crate::spec::{Cluster, Node, Role};
use crate::talos::grpc::{BootstrapOutcome, ClientIdentity, TalosError};
use crate::talos::{ClusterUid, SecretsBundle, credentials};

/// Engine-wide settings a cluster's turn needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub drift_policy: DriftPolicy,
    pub prefix: Prefix,
    pub on_decommission: OnDecommission,
    /// Consecutive failures of one action (same intent revision) before the cluster is `Failed`.
    pub max_failures: u32,
    pub drain_timeout: Duration,
    /// How soon to look again at a cluster that waits for a machine (boot, install, API).
    pub wait_interval: Duration,
    /// `[talos] boot_timeout`: a started VM whose node never answered by then gets a condition.
    pub boot_timeout: Duration,
}

/// A line of progress for people watching (`kiln demo`, `run --once` logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub cluster: String,
    pub message: String,
}

/// What every job shares.
#[derive(Clone)]
pub struct Ctx {
    pub ports: Ports,
    pub backoff: Arc<Mutex<Backoff>>,
    pub settings: Arc<Settings>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
}

/// A cluster with a valid file.
pub struct ConvergeJob {
    pub cluster: Cluster,
    pub path: String,
    pub text: String,
    pub revision: String,
    /// The spec last applied (renumbering is judged against it; scale-down finds leaving IPs in it).
    pub previous: Option<Cluster>,
    pub record: ClusterRecord,
    pub inventory: Arc<Inventory>,
    /// The drift timer says: look at secrets, Talos and Kubernetes even if the listing looks right.
    pub deep: bool,
    pub previous_status: Option<ClusterStatus>,
}

/// A cluster whose file is gone, grace over, removal commit pushed.
pub struct DecommissionJob {
    pub name: crate::spec::ClusterName,
    pub last: Option<Cluster>,
    pub record: ClusterRecord,
    pub inventory: Arc<Inventory>,
    pub previous_status: Option<ClusterStatus>,
}

#[derive(Debug)]
pub struct Outcome {
    pub status: ClusterStatus,
    /// The record to keep (`None`: leave the records as they are).
    pub record: Option<ClusterRecord>,
    /// Decommission confirmed: drop the record and the status.
    pub forget: bool,
    /// Nothing more will happen without a change (Ready, Blocked, Failed).
    pub settled: bool,
    pub converged: bool,
    /// When this cluster wants its next look.
    pub wake_in: Option<Duration>,
}

enum Flow {
    Done,
    Wait(String),
    /// A refusal only a person can lift (a node refused the config for good, a template that cannot
    /// work): the cluster is `Blocked` at once and the step is not retried for this intent revision.
    Blocked(String),
}

/// How long a bootstrap probe waits for EtcdMemberList: before bootstrap a real node answers only at
/// the caller's deadline (DESIGN §4).
const ETCD_PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// A condition a step wants on the cluster's status besides its outcome.
#[derive(Debug, Clone)]
struct Note {
    kind: &'static str,
    reason: &'static str,
    message: String,
}

/// The condition kind of a VM whose node does not answer within `[talos] boot_timeout`.
const BOOT_TIMEOUT: &str = "NodeNotAnswering";

#[derive(Debug)]
struct StepError(String);

impl<E: std::fmt::Display> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError(e.to_string())
    }
}

type StepResult = Result<Flow, StepError>;

/// The backoff key of an action: the action and its target, stable across cycles.
fn action_key(a: &Action) -> String {
    match a {
        Action::GenerateSecrets => "generate-secrets".into(),
        Action::CreateVm { vmid, .. } => format!("create-vm {vmid}"),
        Action::FinishVm { vmid, .. } => format!("finish-vm {vmid}"),
        Action::StartVm { vmid, .. } => format!("start-vm {vmid}"),
        Action::ResizeVm { vmid, .. } => format!("resize-vm {vmid}"),
        Action::ApplyConfig { name, .. } => format!("apply-config {name}"),
        Action::Bootstrap { name, .. } => format!("bootstrap {name}"),
        Action::StoreCredentials => "store-credentials".into(),
        Action::WaitHealthy => "wait-healthy".into(),
        Action::RemoveNode { vmid, .. } => format!("remove-node {vmid}"),
        Action::DestroyVm { vmid, .. } => format!("destroy-vm {vmid}"),
        Action::RetireSecrets { .. } => "retire-secrets".into(),
    }
}

/// Steps that run side by side: VM creation within a cluster, and configs to nodes in maintenance.
fn batch_class(a: &Action) -> Option<u8> {
    match a {
        Action::CreateVm { .. } | Action::FinishVm { .. } => Some(1),
        Action::ApplyConfig { .. } => Some(2),
        Action::DestroyVm { .. } => Some(3),
        _ => None,
    }
}

/// One cluster's working state during its turn.
struct Turn<'a> {
    ctx: &'a Ctx,
    name: String,
    cluster: Option<&'a Cluster>,
    previous: Option<&'a Cluster>,
    inventory: &'a Inventory,
    paths: SecretPaths,
    revision: String,
    bundle: Option<LoadedBundle>,
    cluster_uid: Option<String>,
    stages: BTreeMap<u32, String>,
    /// Node number → when its VM was started, until its node first answers.
    started: BTreeMap<u32, OffsetDateTime>,
    notes: Vec<Note>,
}

impl<'a> Turn<'a> {
    fn say(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!("{message}");
        if let Some(tx) = &self.ctx.progress {
            let _ = tx.send(Progress {
                cluster: self.name.clone(),
                message,
            });
        }
    }

    fn cluster(&self) -> Result<&'a Cluster, StepError> {
        self.cluster
            .ok_or_else(|| StepError("no intent for this cluster".into()))
    }

    /// The intent's node `number` (steps are planned from the intent, so it is there).
    fn node(&self, number: u32) -> Result<&'a Node, StepError> {
        self.cluster()?
            .node(number)
            .ok_or_else(|| StepError(format!("node {number} is not in the intent")))
    }

    fn bundle(&self) -> Result<&LoadedBundle, StepError> {
        self.bundle.as_ref().ok_or_else(|| {
            StepError("the secrets bundle is not loaded (the store did not return it)".into())
        })
    }

    fn uid(&self) -> Result<String, StepError> {
        self.bundle
            .as_ref()
            .map(|b| b.cluster_uid.clone())
            .or_else(|| self.cluster_uid.clone())
            .ok_or_else(|| {
                StepError("the cluster uid is unknown (no readable secrets bundle)".into())
            })
    }

    fn talos_identity(&self) -> Result<ClientIdentity, StepError> {
        let b = &self.bundle()?.bundle;
        let issued = credentials::kiln_talos_identity(b)?;
        Ok(ClientIdentity::from_minted(b.os_ca.cert_pem(), &issued))
    }

    fn kube_access(&self, server: String) -> Result<KubeAccess, StepError> {
        let b = &self.bundle()?.bundle;
        let issued = credentials::kiln_kubernetes_identity(b)?;
        Ok(KubeAccess {
            server,
            ca_pem: b.k8s_ca.cert_pem().to_owned(),
            client_cert_pem: issued.cert.cert_pem.clone(),
            client_key_pem: Secret::new(issued.cert.key_pem.expose()),
        })
    }

    /// The cluster's API: the VIP once it answers, before that the first control plane (§4).
    async fn kube(&self) -> Option<Box<dyn KubePort>> {
        let cluster = self.cluster.or(self.previous)?;
        let mut servers = vec![cluster.endpoint()];
        if let Some(cp) = cluster.control_planes().next() {
            servers.push(format!("https://{}:6443", cp.ip));
        }
        for server in servers {
            let Ok(access) = self.kube_access(server.clone()) else {
                return None;
            };
            match self.ctx.ports.kube.connect(&access).await {
                Ok(client) => match client.server_version().await {
                    Ok(_) => return Some(client),
                    Err(e) => tracing::debug!(%server, error = %e, "Kubernetes API not answering"),
                },
                Err(e) => tracing::debug!(%server, error = %e, "cannot connect to Kubernetes API"),
            }
        }
        None
    }

    /// Whether the cluster's Kubernetes API should answer: etcd was bootstrapped (the marker), so its
    /// nodes may run workloads and each owes a drain before a Proxmox reboot or a destroy. Read from
    /// the store each time: a cheap cycle has not looked at it.
    async fn api_expected(&self) -> Result<bool, StepError> {
        Ok(self
            .ctx
            .ports
            .secrets
            .read(&self.paths.secrets)
            .await?
            .custom_metadata()
            .is_some_and(|m| m.contains_key(meta_keys::BOOTSTRAPPED_AT)))
    }

    fn identity_of(&self, node: &Node) -> Result<VmIdentity, StepError> {
        Ok(VmIdentity::for_node(self.cluster()?, node, &self.uid()?))
    }

    /// The identity of a VM seen in the listing, for VMs the intent no longer names.
    fn identity_of_listed(
        &self,
        number: u32,
        role: Role,
        vmid: crate::spec::Vmid,
        name: &str,
    ) -> Result<VmIdentity, StepError> {
        let pve_node = self
            .inventory
            .get(vmid.get())
            .map(|vm| vm.pve_node.clone())
            .ok_or_else(|| StepError(format!("VM {vmid} is not in the listing")))?;
        Ok(VmIdentity {
            cluster: self.name.clone(),
            cluster_uid: self.uid()?,
            number,
            role,
            name: name.to_owned(),
            vmid,
            pve_node,
        })
    }

    async fn run(&mut self, action: &Action) -> StepResult {
        let span = tracing::info_span!("action", action = %action_key(action));
        async {
            match action {
                Action::GenerateSecrets => self.generate_secrets().await,
                Action::CreateVm { number, .. } | Action::FinishVm { number, .. } => {
                    self.create_vm(*number).await
                }
                Action::StartVm { number, .. } => self.start_vm(*number).await,
                Action::ResizeVm { number, .. } => self.resize_vm(*number).await,
                Action::ApplyConfig { number, .. } => self.apply_config(*number).await,
                Action::Bootstrap { number, .. } => self.bootstrap(*number).await,
                Action::StoreCredentials => self.store_credentials().await,
                Action::WaitHealthy => self.wait_healthy().await,
                Action::RemoveNode {
                    number,
                    role,
                    vmid,
                    name,
                } => self.remove_node(*number, *role, *vmid, name).await,
                Action::DestroyVm { number, vmid, name } => {
                    self.destroy_vm(*number, *vmid, name).await
                }
                Action::RetireSecrets { destroy } => self.retire_secrets(*destroy).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn generate_secrets(&mut self) -> StepResult {
        let store = &self.ctx.ports.secrets;
        let winner = match store.read(&self.paths.secrets).await? {
            ReadOutcome::Absent => {
                self.say("generating the Talos secrets bundle");
                let bundle = tokio::task::spawn_blocking(SecretsBundle::generate)
                    .await
                    .map_err(|e| StepError(format!("bundle generation panicked: {e}")))??;
                let uid = ClusterUid::generate();
                let (data, meta) = bundle_record(
                    uid.as_str(),
                    secret_data([(bundle_keys::BUNDLE, bundle.to_yaml())]),
                );
                match store.create(&self.paths.secrets, &data, &meta).await? {
                    CreateOutcome::Created { version } => {
                        self.say(format!(
                            "stored the secrets bundle at {} (version {version})",
                            self.paths.secrets
                        ));
                        crate::testhook::reached("bundle-stored");
                        self.bundle = Some(LoadedBundle {
                            bundle,
                            cluster_uid: uid.as_str().to_owned(),
                        });
                        return Ok(Flow::Done);
                    }
                    // Someone (an earlier run whose reply was lost) got there first: use theirs.
                    CreateOutcome::AlreadyExists(other) => other,
                }
            }
            other => other,
        };
        match winner {
            ReadOutcome::Present(stored) => {
                self.bundle = Some(observe::parse_bundle(&stored).map_err(StepError)?);
                Ok(Flow::Done)
            }
            _ => Err(StepError(
                "the secrets path holds a deleted or destroyed bundle; kiln never mints a second one"
                    .into(),
            )),
        }
    }

    async fn create_vm(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let spec = VmSpec::for_node(cluster, node, &self.uid()?);
        let template_node = self
            .inventory
            .template_node(node.template.get())
            .unwrap_or(&node.pve_node)
            .to_owned();
        self.say(format!("creating VM {} {}", node.vmid, node.name));
        let created = self.ctx.ports.proxmox.create(&spec, &template_node).await?;
        for w in &created.warnings {
            tracing::warn!(vm = %node.name, "Proxmox task ended with warnings: {w:?}");
        }
        self.started.insert(number, OffsetDateTime::now_utc());
        self.say(format!(
            "VM {} {} {} and started",
            node.vmid,
            node.name,
            if created.adopted {
                "adopted (half-made)"
            } else {
                "created"
            }
        ));
        Ok(Flow::Done)
    }

    async fn start_vm(&mut self, number: u32) -> StepResult {
        let node = self.node(number)?;
        let vm = self
            .ctx
            .ports
            .proxmox
            .claim(&self.identity_of(node)?)
            .await?;
        self.ctx.ports.proxmox.start(&vm).await?;
        self.started.insert(number, OffsetDateTime::now_utc());
        self.say(format!("started VM {} {}", node.vmid, node.name));
        Ok(Flow::Done)
    }

    async fn resize_vm(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let px = &self.ctx.ports.proxmox;
        let vm = px.claim(&self.identity_of(node)?).await?;
        let spec = VmSpec::for_node(cluster, node, &self.uid()?);
        let resized = px.resize(&vm, &spec).await?;
        if resized.needs_reboot {
            // cores/memory only apply after a Proxmox power cycle: move the work off first.
            let kube = match self.kube().await {
                Some(k) => Some(k),
                None if self.api_expected().await? => {
                    return Ok(Flow::Wait(format!(
                        "{} waits for its drain: the Kubernetes API does not answer, and kiln \
                         never reboots a node without the drain it owes it",
                        node.name
                    )));
                }
                None => None,
            };
            if let Some(k) = &kube {
                k.set_unschedulable(&node.name, true).await?;
                k.drain(&node.name, self.ctx.settings.drain_timeout).await?;
            }
            self.say(format!(
                "rebooting VM {} {} through Proxmox to apply its new size",
                node.vmid, node.name
            ));
            px.reboot(&resized.vm).await?;
            if let Some(k) = &kube {
                k.set_unschedulable(&node.name, false).await?;
            }
        }
        self.say(format!("resized VM {} {}", node.vmid, node.name));
        Ok(Flow::Done)
    }

    async fn apply_config(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let identity = self.talos_identity()?;
        let ip = IpAddr::V4(node.ip);
        let state = self.ctx.ports.talos.node_state(ip, &identity).await;
        let (_, stage) = observe::classify(&state);
        self.stages.insert(number, stage);
        match state {
            crate::talos::grpc::NodeState::Configured(_) => {
                self.started.remove(&number);
                Ok(Flow::Done)
            }
            crate::talos::grpc::NodeState::Maintenance => {
                self.started.remove(&number);
                let vm = self
                    .ctx
                    .ports
                    .proxmox
                    .claim(&self.identity_of(node)?)
                    .await?;
                let bundle = &self.bundle()?.bundle;
                let config = crate::talos::config::render::render(
                    cluster,
                    node,
                    bundle,
                    cluster.spec.talos.version,
                )?;
                let applied = self
                    .ctx
                    .ports
                    .talos
                    .apply_in_maintenance(ip, vm.smbios_uuid(), config.as_bytes())
                    .await;
                match applied {
                    Ok(_) => {}
                    // Another machine answers at the IP, or a template that cannot work: no retry
                    // changes either (DESIGN §7: a uuid mismatch is Blocked at once).
                    Err(
                        e @ (TalosError::WrongPlatform { .. } | TalosError::UuidMismatch { .. }),
                    ) => {
                        return Ok(Flow::Blocked(format!("{}: {e}", node.name)));
                    }
                    // The node's Talos refused the config: its validation (`InvalidArgument`), or
                    // its decoder — an older one that does not know a newer contract answers a plain
                    // error (`Unknown`, "failed to parse config"). The same config is refused again.
                    Err(e)
                        if e.code() == Some(tonic::Code::InvalidArgument)
                            || (e.code() == Some(tonic::Code::Unknown)
                                && e.to_string().contains("failed to parse config")) =>
                    {
                        return Ok(Flow::Blocked(self.refused_in_maintenance(node, &e).await));
                    }
                    Err(e) => return Err(e.into()),
                }
                self.say(format!("applied the machine config to {}", node.name));
                crate::testhook::reached("config-applied");
                Ok(Flow::Done)
            }
            crate::talos::grpc::NodeState::Booting { reason }
            | crate::talos::grpc::NodeState::Unreachable { reason } => Ok(Flow::Wait(format!(
                "waiting for {} to reach maintenance mode ({reason})",
                node.name
            ))),
        }
    }

    /// A node in maintenance refused the config (`InvalidArgument`): its running Talos is the
    /// template's, which judges the config (RuntimeValidate's Kubernetes range, an older decoder).
    /// Names that version and Talos's reason; retrying cannot help.
    async fn refused_in_maintenance(&self, node: &Node, e: &TalosError) -> String {
        let reason = match e {
            TalosError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let reason = one_line(&reason);
        let running = match self
            .ctx
            .ports
            .talos
            .maintenance_version(IpAddr::V4(node.ip))
            .await
        {
            Ok(v) if !v.is_empty() => v,
            // RuntimeValidate's message names it too.
            _ => talos_version_in(&reason).unwrap_or_else(|| "an unknown version".into()),
        };
        let cluster = self.cluster.map(|c| &c.spec);
        // Only a refusal about Kubernetes has a second way out (another Kubernetes version); an
        // older decoder's refusal of a newer config has one: a template of the spec's Talos.
        let about_kubernetes = reason.contains("Kubernetes");
        let advice = match (cluster, running.parse::<crate::spec::Version>()) {
            (Some(spec), Ok(v)) => match crate::spec::compat::kubernetes_range(v) {
                Some(range) if about_kubernetes => format!(
                    "; use a template of Talos {} (spec.talos.version) or a Kubernetes version Talos {running} supports ({}); then replace the VM or restart kiln",
                    spec.talos.version,
                    range.minors()
                ),
                _ => format!(
                    "; use a template of Talos {} (spec.talos.version), then replace the VM or restart kiln",
                    spec.talos.version
                ),
            },
            _ => String::new(),
        };
        format!(
            "{} runs Talos {running} (its template's boot image) and refused the machine config: {reason}{advice}",
            node.name
        )
    }

    /// A VM kiln started whose node still does not answer after `[talos] boot_timeout`: say what is
    /// likely wrong instead of waiting silently. The clock starts when kiln started the VM, or when a
    /// turn first found it running and silent.
    fn note_if_boot_timed_out(&mut self, node: &Node, stage: &str) {
        let started = *self
            .started
            .entry(node.number)
            .or_insert_with(OffsetDateTime::now_utc);
        let since = super::state_file::rfc3339(started);
        let waited = OffsetDateTime::now_utc() - started;
        if waited < self.ctx.settings.boot_timeout {
            return;
        }
        self.notes.push(Note {
            kind: BOOT_TIMEOUT,
            reason: "BootTimeout",
            message: format!(
                "{} (VM {}) was started at {since} but its Talos API at {}:50000 has not answered within \
                 boot_timeout {}: check that the template holds Talos's nocloud image (another platform \
                 ignores the cloud-init drive and takes DHCP), that the VM boots from its disk (boot \
                 order), and that kiln has a route to {} (its API is {stage})",
                node.name,
                node.vmid,
                node.ip,
                humantime::format_duration(self.ctx.settings.boot_timeout),
                node.ip
            ),
        });
    }

    async fn bootstrap(&mut self, number: u32) -> StepResult {
        use crate::plan::bootstrap::{self as decision, AfterBootstrap, BootstrapDecision};
        let cluster = self.cluster()?;
        let store = &self.ctx.ports.secrets;
        let marked = store
            .read(&self.paths.secrets)
            .await?
            .custom_metadata()
            .is_some_and(|m| m.contains_key(meta_keys::BOOTSTRAPPED_AT));
        let answers = if marked {
            Vec::new()
        } else {
            let identity = self.talos_identity()?;
            let talos = self.ctx.ports.talos.as_ref();
            // Side by side: before bootstrap each probe may take its whole deadline.
            let probes = cluster
                .control_planes()
                .map(|cp| probe_control_plane(talos, &identity, cp));
            let mut answers = Vec::new();
            for (number, stage, answer) in futures::future::join_all(probes).await {
                self.stages.insert(number, stage);
                answers.push(answer);
            }
            answers
        };
        match decision::decide(marked, &answers) {
            BootstrapDecision::AlreadyThere(why) => {
                if !marked {
                    self.say(format!("etcd already exists ({why}); not bootstrapping"));
                }
            }
            BootstrapDecision::Wait(why) => return Ok(Flow::Wait(why)),
            BootstrapDecision::Bootstrap => {
                let identity = self.talos_identity()?;
                let first = self.node(number)?;
                self.say(format!("bootstrapping etcd on {}", first.name));
                let reply = match self
                    .ctx
                    .ports
                    .talos
                    .bootstrap(IpAddr::V4(first.ip), &identity)
                    .await
                {
                    Ok(BootstrapOutcome::Bootstrapped) => decision::BootstrapReply::Ok,
                    Ok(BootstrapOutcome::AlreadyBootstrapped) => {
                        decision::BootstrapReply::AlreadyExists
                    }
                    Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                        decision::BootstrapReply::FailedPrecondition(e.to_string())
                    }
                    Err(e) => decision::BootstrapReply::Other(e.to_string()),
                };
                match decision::after_bootstrap(reply) {
                    AfterBootstrap::WriteMarker => {
                        self.say("etcd bootstrapped");
                        // A crash here leaves etcd bootstrapped without the marker: the restart
                        // must see etcd and write the marker, never bootstrap a second time.
                        crate::testhook::reached("etcd-bootstrapped");
                    }
                    AfterBootstrap::Wait(why) => return Ok(Flow::Wait(why)),
                    AfterBootstrap::Fail(e) => return Err(StepError(e)),
                }
            }
        }
        if !marked {
            let patch =
                MetadataPatch::from([(meta_keys::BOOTSTRAPPED_AT.to_owned(), Some(now_rfc3339()))]);
            store.patch_metadata(&self.paths.secrets, &patch).await?;
        }
        Ok(Flow::Done)
    }

    async fn store_credentials(&mut self) -> StepResult {
        let cluster = self.cluster()?;
        let bundle = self.bundle()?.bundle.clone();
        let store = self.ctx.ports.secrets.clone();
        let now = OffsetDateTime::now_utc();
        if store.read(&self.paths.kubeconfig).await?.is_absent() {
            let endpoint = cluster.endpoint();
            let kc = credentials::admin_kubeconfig(cluster.name.as_str(), &endpoint, &bundle, now)?;
            let data = BTreeMap::from([
                (
                    kubeconfig_keys::KUBECONFIG.to_owned(),
                    Secret::new(kc.yaml.expose()),
                ),
                (kubeconfig_keys::SERVER.to_owned(), Secret::new(&endpoint)),
                (
                    kubeconfig_keys::CA_CRT.to_owned(),
                    Secret::new(bundle.k8s_ca.cert_pem()),
                ),
                (
                    kubeconfig_keys::CLIENT_CRT.to_owned(),
                    Secret::new(&kc.client.cert.cert_pem),
                ),
                (
                    kubeconfig_keys::CLIENT_KEY.to_owned(),
                    Secret::new(kc.client.cert.key_pem.expose()),
                ),
            ]);
            let meta = CustomMetadata::from([(
                meta_keys::EXPIRES_AT.to_owned(),
                rfc3339(kc.client.not_after),
            )]);
            store.create(&self.paths.kubeconfig, &data, &meta).await?;
            self.say(format!(
                "stored the kubeconfig at {}",
                self.paths.kubeconfig
            ));
            crate::testhook::reached("kubeconfig-stored");
        }
        if store.read(&self.paths.talos).await?.is_absent() {
            let ips: Vec<IpAddr> = cluster.control_planes().map(|n| IpAddr::V4(n.ip)).collect();
            let tc = credentials::talosconfig(cluster.name.as_str(), &ips, &bundle, now)?;
            let data = BTreeMap::from([(
                talos_keys::TALOSCONFIG.to_owned(),
                Secret::new(tc.yaml.expose()),
            )]);
            let meta = CustomMetadata::from([(
                meta_keys::EXPIRES_AT.to_owned(),
                rfc3339(tc.client.not_after),
            )]);
            store.create(&self.paths.talos, &data, &meta).await?;
            self.say(format!("stored the talosconfig at {}", self.paths.talos));
        }
        Ok(Flow::Done)
    }

    async fn wait_healthy(&mut self) -> StepResult {
        let cluster = self.cluster()?;
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(
                "waiting for the Kubernetes API to answer".to_owned(),
            ));
        };
        let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let r = kube.node_readiness(&expected).await?;
        if r.all_ready() {
            if !r.extra.is_empty() {
                tracing::info!(cluster = %self.name, extra = ?r.extra, "nodes kiln does not expect");
            }
            self.say(format!("all {} nodes Ready", expected.len()));
            Ok(Flow::Done)
        } else {
            Ok(Flow::Wait(format!(
                "{} of {} nodes Ready",
                r.ready.len(),
                expected.len()
            )))
        }
    }

    async fn remove_node(
        &mut self,
        number: u32,
        role: Role,
        vmid: crate::spec::Vmid,
        name: &str,
    ) -> StepResult {
        let identity = self.identity_of_listed(number, role, vmid, name)?;
        let px = self.ctx.ports.proxmox.clone();
        let vm = px.claim(&identity).await?;
        let kube = self.kube().await;
        if kube.is_none() && self.api_expected().await? {
            return Ok(Flow::Wait(format!(
                "{name} waits for its drain: the Kubernetes API does not answer, and kiln never \
                 destroys a node without the drain it owes it"
            )));
        }
        if role == Role::ControlPlane {
            // Leave etcd gracefully and see it confirmed by another member before the VM goes (§4).
            let ip = self
                .previous
                .and_then(|p| p.node(number))
                .map(|n| IpAddr::V4(n.ip))
                .ok_or_else(|| {
                    StepError(format!(
                        "the address of {name} is unknown (no applied spec names it); remove it by hand"
                    ))
                })?;
            let talos_id = self.talos_identity()?;
            let cluster = self.cluster()?;
            let other = cluster
                .control_planes()
                .next()
                .map(|n| IpAddr::V4(n.ip))
                .ok_or_else(|| StepError("no remaining control plane".into()))?;
            let listed = |members: &[crate::talos::grpc::proto::machine::EtcdMember]| {
                members.iter().any(|m| m.hostname == name)
            };
            if listed(&self.ctx.ports.talos.etcd_members(other, &talos_id).await?) {
                self.say(format!("{name} leaves etcd"));
                self.ctx
                    .ports
                    .talos
                    .reset_graceful(ip, &talos_id, false)
                    .await?;
                if listed(&self.ctx.ports.talos.etcd_members(other, &talos_id).await?) {
                    return Ok(Flow::Wait(format!(
                        "{name} is still an etcd member; its VM stays until the leave is confirmed"
                    )));
                }
            }
        } else if let Some(k) = &kube {
            k.set_unschedulable(name, true).await?;
            k.drain(name, self.ctx.settings.drain_timeout).await?;
        }
        if let Some(k) = &kube {
            k.delete_node(name).await?;
        }
        self.say(format!("destroying VM {vmid} {name}"));
        px.destroy(vm).await?;
        Ok(Flow::Done)
    }

    async fn destroy_vm(&mut self, number: u32, vmid: crate::spec::Vmid, name: &str) -> StepResult {
        let role = self
            .inventory
            .cluster(&self.name)
            .get(&number)
            .and_then(|vm| match &vm.ownership {
                crate::proxmox::Ownership::Kiln(r) => Some(r.role),
                _ => None,
            })
            .unwrap_or(Role::Worker);
        let identity = self.identity_of_listed(number, role, vmid, name)?;
        let px = self.ctx.ports.proxmox.clone();
        // A half-made VM (a crash between clone and tags) goes too: its marker proves it (§3).
        match px.claim_for_destroy(&identity).await {
            Ok(vm) => {
                self.say(format!("stopping and destroying VM {vmid} {name}"));
                px.destroy(vm).await?;
                Ok(Flow::Done)
            }
            Err(ProxmoxError::NotFound(_)) => Ok(Flow::Done),
            Err(e) => Err(e.into()),
        }
    }

    async fn retire_secrets(&mut self, destroy: bool) -> StepResult {
        let policy = if destroy {
            OnDecommission::Destroy
        } else {
            OnDecommission::Retain
        };
        let report = crate::secrets::decommission(
            self.ctx.ports.secrets.as_ref(),
            &self.paths,
            policy,
            OffsetDateTime::now_utc(),
        )
        .await?;
        self.say(format!(
            "secrets {}: {} marked, {} destroyed",
            if destroy { "destroyed" } else { "retained" },
            report.marked.len() + report.already_marked.len(),
            report.destroyed.len()
        ));
        Ok(Flow::Done)
    }

    /// Runs the plan's steps in order (batches side by side). Returns how it ended.
    async fn execute(&mut self, steps: &[Step]) -> Execution {
        let mut i = 0;
        while i < steps.len() {
            if *self.ctx.shutdown.borrow() {
                return Execution::Interrupted;
            }
            let class = batch_class(&steps[i].action);
            let mut j = i + 1;
            while class.is_some() && j < steps.len() && batch_class(&steps[j].action) == class {
                j += 1;
            }
            let batch = &steps[i..j];
            let now = Instant::now();
            let keys: Vec<RetryKey> = batch
                .iter()
                .map(|s| RetryKey {
                    cluster: self.name.clone(),
                    intent_revision: self.revision.clone(),
                    action: action_key(&s.action),
                })
                .collect();
            {
                let backoff = self.ctx.backoff.lock().expect("backoff lock");
                if let Some((step, why)) = keys
                    .iter()
                    .zip(batch)
                    .find_map(|(k, s)| backoff.blocked(k).map(|why| (s, why)))
                {
                    return Execution::Blocked {
                        action: step.action.clone(),
                        why: why.to_owned(),
                    };
                }
                if let Some((until, err)) = keys.iter().find_map(|k| backoff.wait(k, now)) {
                    return Execution::BackingOff {
                        until,
                        error: err.to_owned(),
                        failures: keys.iter().map(|k| backoff.failures(k)).max().unwrap_or(0),
                        action: batch[0].action.clone(),
                    };
                }
            }
            // Adapters' own retries end with the step's budget; this executor's backoff is the
            // one that waits longer (crate::retry).
            let results =
                crate::retry::with_budget(crate::retry::STEP_BUDGET, self.run_batch(batch)).await;
            let mut waiting = None;
            let mut failed = None;
            let mut blocked = None;
            {
                let mut backoff = self.ctx.backoff.lock().expect("backoff lock");
                for (key, (step, r)) in keys.into_iter().zip(batch.iter().zip(results)) {
                    match r {
                        Ok(Flow::Done) => backoff.succeeded(&key),
                        Ok(Flow::Wait(why)) => {
                            backoff.succeeded(&key);
                            waiting.get_or_insert((step.action.clone(), why));
                        }
                        Ok(Flow::Blocked(why)) => {
                            tracing::warn!(cluster = %self.name, action = %key.action, reason = %why, "step blocked");
                            backoff.block(key.clone(), &why);
                            blocked.get_or_insert((step.action.clone(), why));
                        }
                        Err(StepError(e)) => {
                            tracing::warn!(cluster = %self.name, action = %key.action, error = %e, "step failed");
                            let until = backoff.failed(key.clone(), &e, Instant::now());
                            let failures = backoff.failures(&key);
                            failed.get_or_insert((step.action.clone(), e, until, failures));
                        }
                    }
                }
            }
            if let Some((action, why)) = blocked {
                return Execution::Blocked { action, why };
            }
            if let Some((action, error, until, failures)) = failed {
                return Execution::Failed {
                    action,
                    error,
                    until,
                    failures,
                };
            }
            if let Some((action, why)) = waiting {
                return Execution::Waiting { action, why };
            }
            i = j;
        }
        Execution::Complete
    }

    async fn run_batch(&mut self, batch: &[Step]) -> Vec<StepResult> {
        if batch.len() == 1 {
            return vec![self.run(&batch[0].action).await];
        }
        // Side by side: each runs on its own copy of the turn's read-only state.
        let futures = batch.iter().map(|s| {
            let mut turn = self.fork();
            let action = s.action.clone();
            async move {
                let r = turn.run(&action).await;
                (r, turn)
            }
        });
        let mut out = Vec::new();
        let before = self.started.clone();
        let mut started = self.started.clone();
        for (r, turn) in futures::future::join_all(futures).await {
            self.stages.extend(turn.stages);
            self.notes.extend(turn.notes);
            // Each fork began from `before`: what one added or removed is its node's news.
            for (n, t) in &turn.started {
                if before.get(n) != Some(t) {
                    started.insert(*n, *t);
                }
            }
            for n in before.keys() {
                if !turn.started.contains_key(n) {
                    started.remove(n);
                }
            }
            out.push(r);
        }
        self.started = started;
        out
    }

    fn fork(&self) -> Turn<'a> {
        Turn {
            ctx: self.ctx,
            name: self.name.clone(),
            cluster: self.cluster,
            previous: self.previous,
            inventory: self.inventory,
            paths: self.paths.clone(),
            revision: self.revision.clone(),
            bundle: self.bundle.clone(),
            cluster_uid: self.cluster_uid.clone(),
            stages: BTreeMap::new(),
            started: self.started.clone(),
            notes: Vec::new(),
        }
    }
}

enum Execution {
    Complete,
    Waiting {
        action: Action,
        why: String,
    },
    Blocked {
        action: Action,
        why: String,
    },
    Failed {
        action: Action,
        error: String,
        until: Instant,
        failures: u32,
    },
    BackingOff {
        action: Action,
        error: String,
        until: Instant,
        failures: u32,
    },
    Interrupted,
}

fn retry_at(until: Instant) -> String {
    let left = until.saturating_duration_since(Instant::now());
    rfc3339(OffsetDateTime::now_utc() + left)
}

fn phase_of(action: &Action, first_apply: bool, intent_changed: bool) -> Phase {
    match action {
        Action::DestroyVm { .. } | Action::RetireSecrets { .. } => Phase::Deleting,
        Action::GenerateSecrets
        | Action::CreateVm { .. }
        | Action::FinishVm { .. }
        | Action::ApplyConfig { .. }
            if first_apply =>
        {
            Phase::Provisioning
        }
        Action::Bootstrap { .. } | Action::StoreCredentials | Action::WaitHealthy
            if first_apply =>
        {
            Phase::Bootstrapping
        }
        _ if intent_changed => Phase::Updating,
        _ => Phase::Degraded,
    }
}

fn node_statuses(
    cluster: &Cluster,
    observed: &ObservedCluster,
    stages: &BTreeMap<u32, String>,
    previous: Option<&ClusterStatus>,
) -> Vec<NodeStatus> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let vm = observed.vms.get(&n.number);
            let stage = stages.get(&n.number).cloned().unwrap_or_else(|| {
                previous
                    .and_then(|p| p.nodes.iter().find(|s| s.name == n.name))
                    .map(|s| s.talos_stage.clone())
                    .unwrap_or_else(|| "-".into())
            });
            NodeStatus {
                name: n.name.clone(),
                vmid: n.vmid.get(),
                ip: n.ip,
                role: n.role.as_str().to_owned(),
                vm_state: vm.map(|v| v.power).into(),
                talos_stage: if vm.is_none() { "-".into() } else { stage },
            }
        })
        .collect()
}

fn blockers_message(plan: &ClusterPlan) -> String {
    plan.blockers
        .iter()
        .map(|b| match b {
            Blocker::Refused(m) | Blocker::Blocked(m) => m.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One control plane's answers for the bootstrap decision: its stage (for the status), and what it says.
async fn probe_control_plane(
    talos: &dyn crate::talos::grpc::TalosPort,
    identity: &ClientIdentity,
    cp: &Node,
) -> (u32, String, crate::plan::bootstrap::ControlPlaneAnswer) {
    use crate::plan::bootstrap::{ControlPlaneAnswer, MemberProbe};
    let ip = IpAddr::V4(cp.ip);
    let state = talos.node_state(ip, identity).await;
    let (planned, stage) = observe::classify(&state);
    let mut answer = ControlPlaneAnswer {
        name: cp.name.clone(),
        configured: Ok(()),
        etcd_running: Ok(false),
        members: MemberProbe::Other("not asked".into()),
    };
    if planned != NodeState::Configured {
        answer.configured = Err(format!("it is {stage}"));
        return (cp.number, stage, answer);
    }
    let (services, members) = tokio::join!(
        talos.services(ip, identity),
        talos.etcd_members_within(ip, identity, ETCD_PROBE_DEADLINE)
    );
    answer.etcd_running = services
        .map(|list| list.iter().any(|s| s.id == "etcd" && s.state == "Running"))
        .map_err(|e| e.to_string());
    answer.members = match members {
        Ok(list) => MemberProbe::Listed(list.len()),
        Err(TalosError::Timeout { .. }) => MemberProbe::Deadline,
        Err(e) => match e.code() {
            Some(tonic::Code::Unknown) => MemberProbe::Unknown,
            Some(tonic::Code::DeadlineExceeded) => MemberProbe::Deadline,
            Some(tonic::Code::Unavailable) => MemberProbe::Unavailable,
            _ => MemberProbe::Other(e.to_string()),
        },
    };
    (cp.number, stage, answer)
}

/// Talos's multi-line error lists (`1 error occurred:\n\t* …`) as one status line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\t'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("* "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `… used with Talos 1.11.6` → `v1.11.6`: the running version as RuntimeValidate names it.
fn talos_version_in(text: &str) -> Option<String> {
    let at = text.find("Talos ")? + "Talos ".len();
    let version: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let version = version.trim_end_matches('.');
    (version.split('.').count() == 3).then(|| format!("v{version}"))
}

/// Converges one cluster with a valid intent file.
pub async fn converge(ctx: Ctx, job: ConvergeJob) -> Outcome {
    let span = tracing::info_span!("cluster", cluster = %job.cluster.name);
    converge_inner(&ctx, &job).instrument(span).await
}

async fn converge_inner(ctx: &Ctx, job: &ConvergeJob) -> Outcome {
    let cluster = &job.cluster;
    let name = cluster.name.as_str().to_owned();
    let mut status = ClusterStatus::continued(&name, job.previous_status.as_ref());
    status.set_condition("SpecValid", true, "Valid", &job.path);
    let mut record = job.record.clone();
    record.protected = cluster.spec.deletion_protection;
    if record.applied_revision.is_none() {
        // Until a first success, the newest text is the one kiln may have made VMs for.
        record.spec_text = job.text.clone();
        record.path = job.path.clone();
    }

    let wanted: Vec<(u32, crate::spec::Vmid)> =
        cluster.nodes.iter().map(|n| (n.number, n.vmid)).collect();
    let mut observed = observe::from_listing(&job.inventory, &name, &wanted);
    let intent_changed = record.applied_revision.as_deref() != Some(job.revision.as_str());
    let first_apply = record.applied_revision.is_none();
    let mut turn = Turn {
        ctx,
        name: name.clone(),
        cluster: Some(cluster),
        previous: job.previous.as_ref(),
        inventory: &job.inventory,
        paths: SecretPaths::for_cluster(&ctx.settings.prefix, &cluster.name),
        revision: job.revision.clone(),
        bundle: None,
        cluster_uid: record.cluster_uid.as_ref().map(ToString::to_string),
        stages: BTreeMap::new(),
        started: record.started_at.clone(),
        notes: Vec::new(),
    };

    let cheap = !intent_changed
        && !job.deep
        && record.cluster_uid.is_some()
        && observe::matches_intent(&observed, cluster);
    if !cheap {
        match deep_observe(&mut turn, cluster, &mut observed).await {
            Ok(()) => {}
            Err(e) => {
                status.last_error = Some(e.clone());
                status.nodes = node_statuses(cluster, &observed, &turn.stages, Some(&status));
                return Outcome {
                    status,
                    record: Some(record),
                    forget: false,
                    settled: false,
                    converged: false,
                    wake_in: Some(ctx.settings.wait_interval * 5),
                };
            }
        }
        record.deep_checked_at = Some(OffsetDateTime::now_utc());
        if let Some(b) = &turn.bundle {
            record.cluster_uid = b.cluster_uid.parse().ok();
        }
    }

    let plan = plan::converge(ConvergeInput {
        desired: cluster,
        previous: job.previous.as_ref(),
        observed: &observed,
        drift_policy: ctx.settings.drift_policy,
        intent_changed,
    });
    for r in &plan.reports {
        tracing::warn!(cluster = %name, "{r}");
    }
    if !plan.blockers.is_empty() {
        let msg = blockers_message(&plan);
        status.phase = Phase::Blocked;
        status.last_error = Some(msg.clone());
        status.retry_at = None;
        status.set_condition("Blocked", true, "NeedsAPerson", &msg);
        status.nodes = node_statuses(
            cluster,
            &observed,
            &turn.stages,
            job.previous_status.as_ref(),
        );
        return Outcome {
            status,
            record: Some(record),
            forget: false,
            settled: true,
            converged: false,
            wake_in: None,
        };
    }
    status.conditions.retain(|c| c.kind != "Blocked");

    if !plan.steps.is_empty() {
        turn.say(format!(
            "{} step(s): {}",
            plan.steps.len(),
            plan.steps
                .iter()
                .map(|s| action_key(&s.action))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let execution = turn.execute(&plan.steps).await;
    if let Some(b) = &turn.bundle {
        record.cluster_uid = b.cluster_uid.parse().ok();
    }
    // Whichever step waits on it, a node that stays silent past boot_timeout is named.
    for node in &cluster.nodes {
        match turn.stages.get(&node.number).map(String::as_str) {
            Some(stage @ ("unreachable" | "booting")) => {
                let stage = stage.to_owned();
                turn.note_if_boot_timed_out(node, &stage);
            }
            Some(_) => {
                turn.started.remove(&node.number);
            }
            None => {}
        }
    }
    record.started_at = turn.started.clone();
    status.conditions.retain(|c| c.kind != BOOT_TIMEOUT);
    for note in &turn.notes {
        status.set_condition(note.kind, true, note.reason, &note.message);
    }
    if matches!(execution, Execution::Complete)
        && !plan.steps.is_empty()
        && let Ok(identity) = turn.talos_identity()
    {
        // The steps moved the machines on: report the stages they ended at.
        let all: Vec<&Node> = cluster.nodes.iter().collect();
        let states = observe::talos_states(ctx.ports.talos.as_ref(), &identity, &all).await;
        turn.stages = states.into_iter().map(|(n, (_, st))| (n, st)).collect();
    }
    status.nodes = node_statuses(
        cluster,
        &observed,
        &turn.stages,
        job.previous_status.as_ref(),
    );
    match execution {
        Execution::Complete => {
            record.applied_revision = Some(job.revision.clone());
            record.spec_text = job.text.clone();
            record.path = job.path.clone();
            status.phase = if plan.reports.iter().any(|r| r.is_drift()) {
                Phase::Degraded
            } else {
                Phase::Ready
            };
            status.last_applied_revision = Some(job.revision.clone());
            status.last_error = None;
            status.retry_at = None;
            status.set_condition(
                "Healthy",
                true,
                "AllNodesReady",
                "every expected node is Ready",
            );
            if !plan.steps.is_empty() {
                // What the steps changed shows in the next listing; report it from there.
                for n in &mut status.nodes {
                    if matches!(n.vm_state, VmState::Absent | VmState::Stopped) {
                        n.vm_state = VmState::Running;
                    }
                }
                for (number, stage) in &turn.stages {
                    if let Some(node) = cluster.node(*number)
                        && let Some(s) = status.nodes.iter_mut().find(|s| s.name == node.name)
                    {
                        s.talos_stage = stage.clone();
                    }
                }
            }
            Outcome {
                status,
                record: Some(record),
                forget: false,
                settled: true,
                converged: true,
                wake_in: None,
            }
        }
        unfinished => unfinished_outcome(ctx, status, record, unfinished, |action| {
            phase_of(action, first_apply, intent_changed)
        }),
    }
}

/// Secrets, Talos node states and Kubernetes health of one cluster. An error means the cycle cannot
/// judge the cluster (the store is down): nothing is planned from a partial view.
async fn deep_observe(
    turn: &mut Turn<'_>,
    cluster: &Cluster,
    observed: &mut ObservedCluster,
) -> Result<(), String> {
    let view = observe::secrets(turn.ctx.ports.secrets.as_ref(), &turn.paths)
        .await
        .map_err(|e| format!("secret store: {e}"))?;
    let bootstrapped = view.observed.bootstrapped;
    observed.secrets = Some(view.observed);
    turn.bundle = view.bundle;
    if view.uid_mirror_missing
        && let Some(b) = &turn.bundle
    {
        // A crash between the bundle's value and its metadata: finish the write (§5's mirror).
        let patch = MetadataPatch::from([(
            meta_keys::CLUSTER_UID.to_owned(),
            Some(b.cluster_uid.clone()),
        )]);
        turn.ctx
            .ports
            .secrets
            .patch_metadata(&turn.paths.secrets, &patch)
            .await
            .map_err(|e| format!("secret store: repairing the cluster-uid mirror: {e}"))?;
        turn.say("repaired the bundle's cluster-uid metadata (a write was cut short)");
    }
    if turn.bundle.is_none() {
        return Ok(());
    }
    let identity = turn
        .talos_identity()
        .map_err(|StepError(e)| format!("kiln's Talos identity: {e}"))?;
    let running: Vec<&Node> = cluster
        .nodes
        .iter()
        .filter(|n| {
            observed.vms.get(&n.number).is_some_and(|vm| {
                vm.power == Power::Running && vm.ownership == plan::Ownership::Owned
            })
        })
        .collect();
    let states = observe::talos_states(turn.ctx.ports.talos.as_ref(), &identity, &running).await;
    observed.nodes = Some(states.iter().map(|(n, (s, _))| (*n, *s)).collect());
    turn.stages = states.into_iter().map(|(n, (_, st))| (n, st)).collect();
    if bootstrapped {
        let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let healthy = match turn.kube().await {
            Some(k) => k
                .node_readiness(&expected)
                .await
                .map(|r| r.all_ready())
                .unwrap_or(false),
            None => false,
        };
        observed.healthy = Some(healthy);
    }
    Ok(())
}

/// Decommissions one cluster whose file is gone (removal commit already pushed).
pub async fn decommission(ctx: Ctx, job: DecommissionJob) -> Outcome {
    let span = tracing::info_span!("cluster", cluster = %job.name);
    decommission_inner(&ctx, &job).instrument(span).await
}

async fn decommission_inner(ctx: &Ctx, job: &DecommissionJob) -> Outcome {
    let name = job.name.as_str().to_owned();
    let mut status = ClusterStatus::continued(&name, job.previous_status.as_ref());
    let mut observed = observe::from_listing(&job.inventory, &name, &[]);
    let paths = SecretPaths::for_cluster(&ctx.settings.prefix, &job.name);
    let mut turn = Turn {
        ctx,
        name: name.clone(),
        cluster: None,
        previous: job.last.as_ref(),
        inventory: &job.inventory,
        paths: paths.clone(),
        revision: format!("decommission:{}", job.record.spec_text.len()),
        bundle: None,
        cluster_uid: job.record.cluster_uid.as_ref().map(ToString::to_string),
        stages: BTreeMap::new(),
        started: BTreeMap::new(),
        notes: Vec::new(),
    };
    match observe::secrets(ctx.ports.secrets.as_ref(), &paths).await {
        Ok(view) => {
            if let Some(b) = &view.bundle {
                turn.cluster_uid = Some(b.cluster_uid.clone());
            }
            observed.secrets = Some(view.observed);
        }
        Err(e) => {
            status.last_error = Some(format!("secret store: {e}"));
            return Outcome {
                status,
                record: Some(job.record.clone()),
                forget: false,
                settled: false,
                converged: false,
                wake_in: Some(ctx.settings.wait_interval * 5),
            };
        }
    }
    let plan = plan::decommission(DecommissionInput {
        name: &job.name,
        protected: job.record.protected,
        observed: &observed,
        destroy_secrets: ctx.settings.on_decommission == OnDecommission::Destroy,
    });
    if !plan.blockers.is_empty() {
        let msg = blockers_message(&plan);
        status.phase = Phase::Blocked;
        status.last_error = Some(msg.clone());
        status.set_condition("Blocked", true, "DeletionProtection", &msg);
        return Outcome {
            status,
            record: Some(job.record.clone()),
            forget: false,
            settled: true,
            converged: false,
            wake_in: None,
        };
    }
    status.phase = Phase::Deleting;
    match turn.execute(&plan.steps).await {
        Execution::Complete => {
            turn.say("decommissioned");
            status.last_error = None;
            Outcome {
                status,
                record: None,
                forget: true,
                settled: true,
                converged: true,
                wake_in: None,
            }
        }
        unfinished => unfinished_outcome(ctx, status, job.record.clone(), unfinished, |_| {
            Phase::Deleting
        }),
    }
}

/// The outcome of a turn that did not run every step: waiting for a machine (looked at again soon),
/// failing (backoff; `Failed` after `max_failures` in a row), or interrupted by shutdown.
fn unfinished_outcome(
    ctx: &Ctx,
    mut status: ClusterStatus,
    record: ClusterRecord,
    execution: Execution,
    phase: impl Fn(&Action) -> Phase,
) -> Outcome {
    let (mut settled, mut wake_in) = (false, None);
    match execution {
        Execution::Complete | Execution::Interrupted => {}
        Execution::Waiting { action, why } => {
            status.phase = phase(&action);
            status.last_error = None;
            status.retry_at = None;
            status.set_condition("Progressing", true, "Waiting", &why);
            wake_in = Some(ctx.settings.wait_interval);
        }
        Execution::Blocked { action, why } => {
            status.phase = Phase::Blocked;
            status.last_error = Some(format!("{}: {why}", action_key(&action)));
            status.retry_at = None;
            status.set_condition("Blocked", true, "RefusedByNode", &why);
            settled = true;
        }
        Execution::Failed {
            action,
            error,
            until,
            failures,
        }
        | Execution::BackingOff {
            action,
            error,
            until,
            failures,
        } => {
            let gave_up = failures >= ctx.settings.max_failures;
            status.phase = if gave_up {
                Phase::Failed
            } else {
                phase(&action)
            };
            status.last_error = Some(format!("{}: {error}", action_key(&action)));
            status.retry_at = (!gave_up).then(|| retry_at(until));
            settled = gave_up;
            wake_in = (!gave_up).then(|| until.saturating_duration_since(Instant::now()));
        }
    }
    Outcome {
        status,
        record: Some(record),
        forget: false,
        settled,
        converged: false,
        wake_in,
    }
}
