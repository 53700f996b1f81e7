//! One cluster's working state during its turn: the intent (and the spec last applied), the listing,
//! the secret paths, the bundle once loaded, and what the turn learnt (Talos stages, boot clocks,
//! notes). It mints kiln's short-lived client credentials from the bundle and opens the cluster's
//! Kubernetes API; the step handlers in `steps` act through it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use time::OffsetDateTime;

use super::error::{Missing, TurnError};
use super::observe::{self, LoadedBundle};
use super::worker::{Ctx, Progress};
use crate::kube::KubePort;
use crate::proxmox::{Inventory, VmIdentity};
use crate::secrets::{SecretPaths, meta_keys};
use crate::spec::{Cluster, Node, Role};
use crate::talos::grpc::{ClientIdentity, TalosNode};

/// A condition a step wants on the cluster's status besides its outcome.
#[derive(Debug, Clone)]
pub struct Note {
    pub kind: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// The condition kind of a VM whose node does not answer within `[talos] boot_timeout`.
pub const BOOT_TIMEOUT: &str = "NodeNotAnswering";

pub struct Turn<'a> {
    pub ctx: &'a Ctx,
    pub name: String,
    pub cluster: Option<&'a Cluster>,
    pub previous: Option<&'a Cluster>,
    pub inventory: &'a Inventory,
    pub paths: SecretPaths,
    pub bundle: Option<LoadedBundle>,
    pub cluster_uid: Option<crate::talos::ClusterUid>,
    pub stages: BTreeMap<u32, String>,
    /// Node number → when its VM was started, until its node first answers.
    pub started: BTreeMap<u32, OffsetDateTime>,
    pub notes: Vec<Note>,
    /// Credentials a step renewed this turn, for the status.
    pub credentials: super::renewal::CredentialTimes,
}

impl<'a> Turn<'a> {
    pub fn new(
        ctx: &'a Ctx,
        name: &str,
        cluster: Option<&'a Cluster>,
        previous: Option<&'a Cluster>,
        inventory: &'a Inventory,
        paths: SecretPaths,
    ) -> Self {
        Turn {
            ctx,
            name: name.to_owned(),
            cluster,
            previous,
            inventory,
            paths,
            bundle: None,
            cluster_uid: None,
            stages: BTreeMap::new(),
            started: BTreeMap::new(),
            notes: Vec::new(),
            credentials: Default::default(),
        }
    }

    pub fn say(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!("{message}");
        self.ctx.liveness.touch();
        if let Some(tx) = &self.ctx.progress {
            let _ = tx.send(Progress {
                cluster: self.name.clone(),
                message,
            });
        }
    }

    pub fn cluster(&self) -> Result<&'a Cluster, TurnError> {
        Ok(self.cluster.ok_or(Missing::Intent)?)
    }

    /// The intent's node `number` (steps are planned from the intent, so it is there).
    pub fn node(&self, number: u32) -> Result<&'a Node, TurnError> {
        Ok(self.cluster()?.node(number).ok_or(Missing::Node(number))?)
    }

    pub fn bundle(&self) -> Result<&LoadedBundle, TurnError> {
        Ok(self.bundle.as_ref().ok_or(Missing::Bundle)?)
    }

    pub fn uid(&self) -> Result<String, TurnError> {
        Ok(self
            .bundle
            .as_ref()
            .map(|b| b.cluster_uid.clone())
            .or_else(|| self.cluster_uid.as_ref().map(ToString::to_string))
            .ok_or(Missing::ClusterUid)?)
    }

    pub fn talos_identity(&self) -> Result<ClientIdentity, TurnError> {
        observe::talos_identity(&self.bundle()?.bundle)
    }

    /// A configured node's Talos API over mTLS with kiln's identity.
    pub async fn talos_node(&self, ip: IpAddr) -> Result<Box<dyn TalosNode>, TurnError> {
        let identity = self.talos_identity()?;
        Ok(self.ctx.ports.talos.connect(ip, &identity).await?)
    }

    /// The cluster's API (the intent's, or for a cluster being removed the spec last applied).
    pub async fn kube(&self) -> Option<Box<dyn KubePort>> {
        let cluster = self.cluster.or(self.previous)?;
        observe::kube_api(&self.ctx.ports, cluster, &self.bundle.as_ref()?.bundle).await
    }

    /// Whether the cluster's Kubernetes API should answer: etcd was bootstrapped (the marker), so its
    /// nodes may run workloads and each owes a drain before a Proxmox reboot or a destroy. Read from
    /// the store each time: a cheap cycle has not looked at it.
    pub async fn api_expected(&self) -> Result<bool, TurnError> {
        Ok(self
            .ctx
            .ports
            .secrets
            .read(&self.paths.secrets)
            .await?
            .custom_metadata()
            .is_some_and(|m| m.contains_key(meta_keys::BOOTSTRAPPED_AT)))
    }

    pub fn identity_of(&self, node: &Node) -> Result<VmIdentity, TurnError> {
        Ok(VmIdentity::for_node(self.cluster()?, node, &self.uid()?))
    }

    /// The identity of a VM seen in the listing, for VMs the intent no longer names.
    pub fn identity_of_listed(
        &self,
        number: u32,
        role: Role,
        vmid: crate::spec::Vmid,
        name: &str,
    ) -> Result<VmIdentity, TurnError> {
        let pve_node = self
            .inventory
            .get(vmid.get())
            .map(|vm| vm.pve_node.clone())
            .ok_or(Missing::Listed(vmid.get()))?;
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

    /// Whichever step waits on it, a node that stays silent past boot_timeout is named; one that
    /// answered stops its clock.
    pub fn note_silent_nodes(&mut self, cluster: &Cluster) {
        for node in &cluster.nodes {
            match self.stages.get(&node.number).map(String::as_str) {
                Some(stage @ ("unreachable" | "booting")) => {
                    let stage = stage.to_owned();
                    self.note_if_boot_timed_out(node, &stage);
                }
                Some(_) => {
                    self.started.remove(&node.number);
                }
                None => {}
            }
        }
    }

    /// A copy for a step that runs side by side with others: the read-only state, fresh findings.
    pub fn fork(&self) -> Turn<'a> {
        Turn {
            ctx: self.ctx,
            name: self.name.clone(),
            cluster: self.cluster,
            previous: self.previous,
            inventory: self.inventory,
            paths: self.paths.clone(),
            bundle: self.bundle.clone(),
            cluster_uid: self.cluster_uid.clone(),
            stages: BTreeMap::new(),
            started: self.started.clone(),
            notes: Vec::new(),
            credentials: Default::default(),
        }
    }

    /// Takes in what the forks of a batch found. Each fork began from `before`: what one added or
    /// removed in its boot clocks is its own node's news.
    pub fn join(&mut self, before: &BTreeMap<u32, OffsetDateTime>, forks: Vec<Turn<'a>>) {
        let mut started = self.started.clone();
        for turn in forks {
            self.stages.extend(turn.stages);
            self.notes.extend(turn.notes);
            self.credentials.extend(turn.credentials);
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
        }
        self.started = started;
    }
}
