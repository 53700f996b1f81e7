//! What the reconciler saw, reduced to what planning needs. The reconciler builds these from the ports'
//! answers (Proxmox listing, Talos node states, secret-store markers); the planner never talks to a
//! system, so every decision can be unit-tested from a literal.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{Role, Vmid};

/// Power state as Proxmox reports it. `Unknown` (a stale status dump, a missing field, a node that
/// did not answer) is never read as stopped or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Running,
    Stopped,
    Unknown,
}

/// How a VM that the planner may act on proved it is kiln's (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ownership {
    /// Tags and marker match.
    Owned,
    /// Stopped, with the expected name and marker but no tags: a crash between clone and tagging.
    HalfMade,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedVm {
    pub number: u32,
    pub role: Role,
    pub vmid: Vmid,
    pub name: String,
    pub pve_node: String,
    pub power: Power,
    pub ownership: Ownership,
    /// Sizes as applied (pending changes excluded); `None` when Proxmox did not say.
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    /// A change is pending until the VM is power-cycled by Proxmox.
    pub pending_changes: bool,
    /// A Proxmox lock (`clone`, `backup`, …): the VM is busy, act later.
    pub lock: Option<String>,
}

/// Something at a VMID kiln wants, or tagged as kiln's, that fails the ownership rules: reported,
/// never touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub vmid: Vmid,
    pub name: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum BundleState {
    Absent,
    Present,
    /// Metadata without a readable current version (soft-deleted, destroyed) or a read error:
    /// never a reason to mint a new bundle.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretsObserved {
    pub bundle: BundleState,
    /// The `bootstrapped-at` marker: etcd was bootstrapped once; never again.
    pub bootstrapped: bool,
    pub kubeconfig_stored: bool,
    pub talosconfig_stored: bool,
    /// `kiln-decommissioned-at`: a retired cluster of the same name; an operator must clear it.
    pub decommissioned: bool,
    /// What is left of the stored credentials' lives (renewal: `plan::credentials`).
    pub credentials: super::credentials::StoredCredentials,
}

/// A Talos node as seen on its own IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Nothing answered (booting, or no route).
    Unreachable,
    /// Waiting for a machine config.
    Maintenance,
    /// Answers mTLS with kiln's client certificate.
    Configured,
}

/// Everything observed of one cluster. Parts the cheap cycle does not look at are `None`: the planner
/// then plans nothing that depends on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObservedCluster {
    /// kiln's VMs of this cluster, by node number.
    pub vms: BTreeMap<u32, ObservedVm>,
    pub conflicts: Vec<Conflict>,
    pub secrets: Option<SecretsObserved>,
    pub nodes: Option<BTreeMap<u32, NodeState>>,
    /// Every expected node is Ready by name.
    pub healthy: Option<bool>,
    /// The config each configured node runs, compared with the rendered one (deep looks only).
    pub running_configs: Option<super::RunningConfigs>,
    /// The Talos versions the nodes run (deep observation), for upgrades.
    pub versions: Option<super::upgrade::VersionsObserved>,
    /// The Kubernetes versions the nodes' configs name (deep observation), for Kubernetes hops.
    pub kubernetes: Option<super::k8s_rollout::KubernetesObserved>,
    /// Nodes that are Ready and still carry kiln's cordon (`kube::CORDONED_BY_KILN`): an uncordon
    /// a crash left undone (deep observation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cordoned_by_kiln: Vec<String>,
}
