//! The plan as a value: ordered steps, each with the reason it exists. Printable for `kiln plan`,
//! serialisable for `--format json`, comparable in tests.

use std::fmt;

use serde::Serialize;

use super::disruption::{Disruption, DisruptionSummary, Shown};
use crate::spec::{ClusterName, Role, Version, Vmid};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Generate the Talos secrets bundle and store it create-only (before any VM exists).
    GenerateSecrets,
    /// Full clone, configure (tags, marker, sizes, network, cloud-init), grow the disk, start.
    CreateVm {
        number: u32,
        role: Role,
        vmid: Vmid,
        name: String,
        pve_node: String,
        template: Vmid,
    },
    /// Finish a VM a crash left between clone and tagging.
    FinishVm { number: u32, vmid: Vmid },
    StartVm {
        number: u32,
        vmid: Vmid,
        name: String,
    },
    /// Cores/memory need a Proxmox power cycle (rolling, drained, health-gated); disks only grow.
    ResizeVm {
        number: u32,
        vmid: Vmid,
        /// Name and role say what the step disrupts (`Action::disruption`).
        name: String,
        role: Role,
        cores: Option<(u32, u32)>,
        memory_mib: Option<(u64, u64)>,
        disk_gib: Option<(u64, u64)>,
    },
    /// Apply the machine config to a node in maintenance (after the SMBIOS uuid check).
    ApplyConfig { number: u32, name: String },
    /// Re-apply the machine config of a configured node whose running config differs (`dry_run`
    /// first; without a reboot when Talos allows it, else drained and rebooted, one node at a time).
    UpdateConfig {
        number: u32,
        name: String,
        role: Role,
        /// What the observation's dry run said (`None`: unknown until the step's own dry run).
        reboot: Option<bool>,
    },
    /// Bootstrap etcd on this control plane, guarded by the member list and the marker.
    Bootstrap { number: u32, name: String },
    /// A control plane joining a running etcd: wait until it is Ready by name and a voting member in
    /// another member's list, before the next one is created (`plan::join`).
    JoinControlPlane {
        number: u32,
        name: String,
        /// The control plane that joined just before it (shown in the plan).
        after: Option<String>,
    },
    /// Store the admin kubeconfig and talosconfig (once; rotation is separate).
    StoreCredentials,
    /// Wait until every expected node is Ready by name.
    WaitHealthy,
    /// Replace stored credentials in their last third of life (check-and-set on the version read).
    RenewCredentials { kubeconfig: bool, talosconfig: bool },
    /// Lift a cordon kiln made whose step did not finish (a crash after the node came back, a
    /// failed step): the node is Ready and no step of the plan drains it.
    Uncordon { name: String },
    /// Scale-down: cordon and drain, leave etcd (control plane, confirmed by another member), delete
    /// the Kubernetes Node, then shut down and destroy the VM.
    RemoveNode {
        number: u32,
        role: Role,
        vmid: Vmid,
        name: String,
    },
    /// Decommission: stop and destroy (no etcd leave: the last member has no one to confirm it).
    DestroyVm {
        number: u32,
        vmid: Vmid,
        name: String,
    },
    /// Upgrade one node's Talos by one hop (DESIGN §4): drained, rebooted into `to`, back healthy
    /// before the next step.
    UpgradeTalos {
        number: u32,
        name: String,
        from: Version,
        to: Version,
    },
    /// One component of a Kubernetes hop on one node (`plan::k8s_rollout`): its machine config
    /// applied with that component's new image, without a reboot, as `talosctl upgrade-k8s` does.
    UpgradeKubernetes {
        number: u32,
        name: String,
        component: super::k8s_rollout::Component,
        from: Option<Version>,
        to: Version,
    },
    /// The bootstrap manifests (kube-proxy, CoreDNS, flannel) as the control planes render them,
    /// applied server-side: the last part of a Kubernetes hop.
    SyncManifests { to: Version },
    /// Decommission: mark the secrets retained (`kiln-decommissioned-at`) or destroy them.
    RetireSecrets { destroy: bool },
}

/// How a step counts in the summary (like Terraform's add/change/destroy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Create,
    Change,
    Destroy,
}

impl Action {
    pub fn effect(&self) -> Effect {
        match self {
            Action::GenerateSecrets | Action::CreateVm { .. } => Effect::Create,
            Action::RemoveNode { .. } | Action::DestroyVm { .. } => Effect::Destroy,
            Action::RetireSecrets { destroy: true } => Effect::Destroy,
            _ => Effect::Change,
        }
    }
    /// Steps that change or destroy something a person can lose.
    pub fn is_destructive(&self) -> bool {
        self.effect() == Effect::Destroy
    }
}

fn pair<T: fmt::Display>(label: &str, v: Option<(T, T)>) -> Option<String> {
    v.map(|(from, to)| format!("{label} {from} → {to}"))
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::GenerateSecrets => write!(f, "generate the Talos secrets bundle"),
            Action::CreateVm {
                vmid,
                name,
                pve_node,
                template,
                ..
            } => write!(
                f,
                "create VM {vmid} {name} on {pve_node} (full clone of {template})"
            ),
            Action::FinishVm { vmid, .. } => write!(f, "finish half-made VM {vmid}"),
            Action::StartVm { vmid, name, .. } => write!(f, "start VM {vmid} {name}"),
            Action::ResizeVm {
                vmid,
                name,
                cores,
                memory_mib,
                disk_gib,
                ..
            } => {
                let parts: Vec<String> = [
                    pair("cores", *cores),
                    pair("memory MiB", *memory_mib),
                    pair("disk GiB", *disk_gib),
                ]
                .into_iter()
                .flatten()
                .collect();
                write!(f, "resize VM {vmid} {name}: {}", parts.join(", "))
            }
            Action::ApplyConfig { name, .. } => write!(f, "apply the machine config to {name}"),
            Action::UpdateConfig { name, .. } => {
                write!(f, "re-apply the machine config of {name}")
            }
            Action::Bootstrap { name, .. } => write!(f, "bootstrap etcd on {name}"),
            Action::JoinControlPlane { name, .. } => {
                write!(f, "wait until {name} is Ready and a voting etcd member")
            }
            Action::StoreCredentials => write!(f, "store the kubeconfig and talosconfig"),
            Action::WaitHealthy => write!(f, "wait until every node is Ready"),
            Action::Uncordon { name } => write!(f, "uncordon {name} (kiln's cordon, left behind)"),
            Action::RenewCredentials {
                kubeconfig,
                talosconfig,
            } => match (kubeconfig, talosconfig) {
                (true, true) => write!(f, "renew the stored kubeconfig and talosconfig"),
                (true, false) => write!(f, "renew the stored kubeconfig"),
                _ => write!(f, "renew the stored talosconfig"),
            },
            Action::RemoveNode {
                vmid, name, role, ..
            } => match role {
                Role::ControlPlane => write!(
                    f,
                    "remove control plane {name}: leave etcd, delete the Node, destroy VM {vmid}"
                ),
                Role::Worker => write!(
                    f,
                    "remove worker {name}: drain, delete the Node, destroy VM {vmid}"
                ),
            },
            Action::DestroyVm { vmid, name, .. } => write!(f, "stop and destroy VM {vmid} {name}"),
            Action::UpgradeTalos { name, from, to, .. } => {
                write!(f, "upgrade Talos on {name}: {from} → {to}")
            }
            Action::UpgradeKubernetes {
                name,
                component,
                from: Some(from),
                to,
                ..
            } => write!(f, "move {component} on {name}: {from} → {to}"),
            Action::UpgradeKubernetes {
                name,
                component,
                from: None,
                to,
                ..
            } => write!(f, "move {component} on {name} to {to}"),
            Action::SyncManifests { to } => write!(
                f,
                "apply the bootstrap manifests (kube-proxy, CoreDNS, flannel) of Kubernetes {to} server-side"
            ),
            Action::RetireSecrets { destroy: false } => {
                write!(f, "mark the cluster's secrets as decommissioned (retained)")
            }
            Action::RetireSecrets { destroy: true } => write!(f, "destroy the cluster's secrets"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// Why the step exists, from the observation that made it necessary.
    pub reason: String,
}

/// JSON: the action and reason as before, and the disruption (its kind and its sentence) added.
impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let disruption = self.action.disruption();
        let mut st = s.serialize_struct("Step", 3)?;
        st.serialize_field("action", &self.action)?;
        st.serialize_field("reason", &self.reason)?;
        st.serialize_field("disruption", &Shown::of(&disruption))?;
        st.end()
    }
}

/// Why nothing (or only part) can be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "message")]
pub enum Blocker {
    /// Refused change (renumbering, disk shrink): the spec must be fixed; the hint says how.
    Refused(String),
    /// Waits for a person (unreadable bundle with VMs, retained secrets of a retired cluster,
    /// deletion protection, a conflict at a wanted VMID).
    Blocked(String),
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::Refused(m) => write!(f, "refused: {m}"),
            Blocker::Blocked(m) => write!(f, "blocked: {m}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    Converge,
    Decommission,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub cluster: ClusterName,
    pub kind: PlanKind,
    pub steps: Vec<Step>,
    pub blockers: Vec<Blocker>,
    /// Observations worth a person's attention that change nothing (drift under `report`, …).
    pub reports: Vec<Report>,
}

/// An observation the plan acts on later or not at all. Kinds, not text, so the reconciler decides
/// (a drift left unrepaired makes the cluster `Degraded`) without reading messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A VMID kiln does not want holds a kiln-tagged VM that is not consistent with this cluster.
    Foreign {
        vmid: Vmid,
        reason: String,
        /// Said during a decommission: the VM is left where it is.
        left_untouched: bool,
    },
    /// Proxmox holds a lock on the VM: acted on in a later cycle.
    Locked { vmid: Vmid, lock: String },
    /// Drift under `drift_policy = "report"`: seen, not repaired.
    Drift { reason: String },
    /// Changes Proxmox applies only at the VM's next reboot.
    PendingChanges { vmid: Vmid },
}

impl Report {
    pub fn is_drift(&self) -> bool {
        matches!(self, Report::Drift { .. })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Foreign {
                vmid,
                reason,
                left_untouched,
            } => {
                write!(f, "VMID {vmid}: {reason}")?;
                if *left_untouched {
                    f.write_str(" (left untouched)")?;
                }
                Ok(())
            }
            Report::Locked { vmid, lock } => {
                write!(f, "VM {vmid} is locked ({lock}); acting on it later")
            }
            Report::Drift { reason } => write!(f, "drift (reported, not repaired): {reason}"),
            Report::PendingChanges { vmid } => write!(
                f,
                "VM {vmid} has pending changes that a Proxmox reboot would apply"
            ),
        }
    }
}

/// `kiln plan --format json` shows reports as the sentences they always were.
impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// JSON: the fields as they always were, and the cluster's disruption summary added.
impl Serialize for ClusterPlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let summary = self.disruption();
        let mut st = s.serialize_struct("ClusterPlan", 6)?;
        st.serialize_field("cluster", &self.cluster)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("steps", &self.steps)?;
        st.serialize_field("blockers", &self.blockers)?;
        st.serialize_field("reports", &self.reports)?;
        st.serialize_field("disruption", &Shown::of(&summary))?;
        st.end()
    }
}

impl ClusterPlan {
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }
    /// What the steps disrupt, counted for the summary line.
    pub fn disruption(&self) -> DisruptionSummary {
        let each: Vec<Disruption> = self.steps.iter().map(|s| s.action.disruption()).collect();
        DisruptionSummary::of(&each)
    }
    pub fn count(&self, effect: Effect) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action.effect() == effect)
            .count()
    }
}

impl fmt::Display for ClusterPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.kind {
            PlanKind::Converge => "",
            PlanKind::Decommission => " (decommission)",
        };
        writeln!(
            f,
            "cluster {}{verb}: {} to create, {} to change, {} to destroy",
            self.cluster,
            self.count(Effect::Create),
            self.count(Effect::Change),
            self.count(Effect::Destroy)
        )?;
        if !self.steps.is_empty() {
            writeln!(f, "  disruption: {}", self.disruption())?;
        }
        for b in &self.blockers {
            writeln!(f, "  ! {b}")?;
        }
        for s in &self.steps {
            let mark = match s.action.effect() {
                Effect::Create => '+',
                Effect::Change => '~',
                Effect::Destroy => '-',
            };
            writeln!(f, "  {mark} {}  ({})", s.action, s.reason)?;
            writeln!(f, "      → {}", s.action.disruption())?;
        }
        for r in &self.reports {
            writeln!(f, "  ? {r}")?;
        }
        Ok(())
    }
}
