//! Proxmox VE: the port the reconciler drives VMs through, its adapter on the PVE API, and the pure
//! rules both share (ownership, inventory, the wanted VM config). DESIGN.md §3; docs/proxmox.md.
//!
//! Safety lives here, not in callers: every write takes an [`OwnedVm`], which only
//! [`OwnedVm::verify`] can make — from a configuration just read back that passes the ownership rules —
//! and the adapter re-reads and re-checks once more right before each modifying call, sending the
//! fresh `digest` so a concurrent change fails instead of being overwritten.

pub mod adapter;
pub mod client;
pub mod error;
pub mod inventory;
pub mod ownership;
pub mod preflight;
pub mod task;
pub mod tls;
pub mod vmconfig;

use async_trait::async_trait;

pub use adapter::PveAdapter;
pub use client::{Api, DEFAULT_RETRY, Reply, RetryPolicy, Transport, TransportError};
pub use error::ProxmoxError;
pub use inventory::{Inventory, KilnNodeRef, ObservedVm, Ownership, PowerState};
pub use ownership::{Verdict, VmIdentity};
pub use preflight::PreflightScope;
pub use task::TaskOutcome;
pub use vmconfig::VmSpec;

/// Proof that a VM was, when last read, this node's VM by every ownership rule. Fields are private
/// and the only constructor checks the rules, so no caller can aim a write at a VM it did not prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedVm {
    id: VmIdentity,
    node: String,
    digest: String,
    running: bool,
    /// The `uuid=` of `smbios1`: what the guest reports as its SMBIOS system uuid, so a machine config
    /// goes only to this VM (DESIGN.md §4). Empty when the VM has none.
    smbios_uuid: String,
}

impl OwnedVm {
    /// Judges a configuration just read from Proxmox. Only `Verdict::Owned` yields a proof.
    pub(crate) fn verify(
        id: &VmIdentity,
        node: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        running: bool,
    ) -> Result<Self, ProxmoxError> {
        match ownership::judge(id, config) {
            Verdict::Owned => Ok(Self::proven(id, node, config, running)),
            Verdict::HalfMade => Err(ProxmoxError::Foreign {
                vmid: id.vmid.get(),
                reason: "a half-made kiln VM (no tags yet): finish it with create".into(),
            }),
            Verdict::Foreign(reason) => Err(ProxmoxError::Foreign {
                vmid: id.vmid.get(),
                reason,
            }),
            Verdict::Mismatched(reason) => Err(ProxmoxError::Mismatched {
                vmid: id.vmid.get(),
                reason,
            }),
        }
    }

    /// The proof, once a verdict allowed it.
    fn proven(
        id: &VmIdentity,
        node: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        running: bool,
    ) -> Self {
        Self {
            id: id.clone(),
            node: node.to_owned(),
            digest: config
                .get("digest")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_owned(),
            running,
            smbios_uuid: config
                .get("smbios1")
                .and_then(|v| v.as_str())
                .and_then(smbios_uuid)
                .unwrap_or_default(),
        }
    }

    /// As [`Self::verify`], for a destroy only: a half-made VM (clone done, tags not yet set) is also
    /// proof enough when it is stopped and no clone still holds it — the marker in the clone call is
    /// kiln's own writing (DESIGN.md §3), and a decommission must be able to remove what a crash
    /// left. A running one lost its tags to a person: refused, as everywhere else.
    pub(crate) fn verify_for_destroy(
        id: &VmIdentity,
        node: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        running: bool,
    ) -> Result<Self, ProxmoxError> {
        let locked_by_clone = config.get("lock").and_then(|v| v.as_str()) == Some("clone");
        match ownership::judge(id, config) {
            Verdict::HalfMade if !running && !locked_by_clone => {
                Ok(Self::proven(id, node, config, running))
            }
            Verdict::HalfMade => Err(ProxmoxError::Foreign {
                vmid: id.vmid.get(),
                reason: if running {
                    "running with kiln's marker but without its tags: changed by a person".into()
                } else {
                    "its clone is still running (locked `clone`)".into()
                },
            }),
            _ => Self::verify(id, node, config, running),
        }
    }

    pub fn identity(&self) -> &VmIdentity {
        &self.id
    }
    pub fn vmid(&self) -> u32 {
        self.id.vmid.get()
    }
    /// The Proxmox node the VM was found on.
    pub fn pve_node(&self) -> &str {
        &self.node
    }
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn running(&self) -> bool {
        self.running
    }
    /// The VM's SMBIOS uuid (`smbios1: uuid=…`), empty when unset.
    pub fn smbios_uuid(&self) -> &str {
        &self.smbios_uuid
    }
}

/// `uuid=` out of a `smbios1` property string (`uuid=…,manufacturer=…`).
fn smbios_uuid(smbios1: &str) -> Option<String> {
    smbios1
        .split(',')
        .find_map(|part| part.trim().strip_prefix("uuid="))
        .map(str::to_owned)
}

/// Sizes the next start will use, where they differ from what runs now (`GET …/pending`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingChanges {
    /// key → pending value (`None`: a pending delete).
    pub keys: std::collections::BTreeMap<String, Option<String>>,
}

impl PendingChanges {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What `create` did, for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub vm: OwnedVm,
    /// A half-made VM (clone done, configuration not) was found and finished instead of cloning.
    pub adopted: bool,
    /// Tasks that ended `WARNINGS: n`, kept for the report.
    pub warnings: Vec<TaskOutcome>,
}

/// What a resize left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    pub vm: OwnedVm,
    /// cores/memory changed on a running VM: pending until [`ProxmoxPort::reboot`].
    pub needs_reboot: bool,
    pub disk_grown: bool,
}

/// The port the reconciler drives Proxmox through; implemented by [`PveAdapter`] alone (the simulator,
/// `sim::pve`, is a [`Transport`] under it). No method writes to a VM without proving ownership first.
#[async_trait]
pub trait ProxmoxPort: Send + Sync {
    /// Exactly one `GET /cluster/resources?type=vm`, classified.
    async fn observe(&self) -> Result<Inventory, ProxmoxError>;
    /// Checks a template before a clone is planned: it is a template, has a cloud-init drive, and —
    /// for a clone onto another node — the storage is shared.
    async fn check_template(&self, spec: &VmSpec, template_node: &str) -> Result<(), ProxmoxError>;
    /// Re-reads the VM and proves it is this node's.
    async fn claim(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError>;
    /// As [`Self::claim`], for a decommission's destroy: also accepts kiln's stopped half-made VM.
    async fn claim_for_destroy(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError>;
    async fn pending(&self, vm: &OwnedVm) -> Result<PendingChanges, ProxmoxError>;
    /// Clone (or adopt a half-made VM), configure, grow the disk, start. Idempotent.
    async fn create(&self, spec: &VmSpec, template_node: &str) -> Result<Created, ProxmoxError>;
    /// cores/memory and disk growth. A running VM's cores/memory wait for [`Self::reboot`].
    async fn resize(&self, vm: &OwnedVm, spec: &VmSpec) -> Result<Resized, ProxmoxError>;
    /// Proxmox's own reboot (stop + start), which applies pending changes.
    async fn reboot(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError>;
    async fn start(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError>;
    /// ACPI shutdown with the configured timeout, then a hard stop.
    async fn shutdown(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError>;
    /// Shutdown, then destroy with purge; returns once Proxmox confirms the VM is gone.
    async fn destroy(&self, vm: OwnedVm) -> Result<(), ProxmoxError>;
}
