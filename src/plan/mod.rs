//! Desired × observed → an ordered plan per cluster. Pure and deterministic: the same inputs give the
//! same plan, so `kiln plan`, the daemon and the tests agree on what will happen and why.
//!
//! The plan of a new cluster lists the whole chain (secrets → VMs → configs → bootstrap → credentials
//! → health) even though later steps depend on what earlier ones produce: the executor re-observes
//! before each step and skips what is already true, so a crash anywhere resumes from observation.

pub mod action;
pub mod bootstrap;
pub mod credentials;
pub mod disruption;
mod join;
pub mod k8s_rollout;
pub mod live_config;
pub mod observed;
mod renumber;
pub mod upgrade;
pub mod version_path;

use serde::Serialize;

pub use action::{Action, Blocker, ClusterPlan, Effect, PlanKind, Report, Step};
pub use credentials::{Expiry, StoredCredentials};
pub use disruption::{Disruption, DisruptionSummary, OnlineChange};
pub use live_config::{RunningConfig, RunningConfigs};
pub use observed::{
    BundleState, Conflict, NodeState, ObservedCluster, ObservedVm, Ownership, Power,
    SecretsObserved,
};

#[cfg(test)]
use crate::spec::Vmid;
use crate::spec::{Cluster, ClusterName, Node, Role};

/// Everything the planner reads for one cluster that has a valid intent file.
/// What the planner does with drift (a VM stopped or resized outside kiln): repair it, or only
/// report it (`reconcile.drift_policy` in `kiln.toml`, DESIGN §7). Defined here, where it is decided
/// on, so the planner reads no configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    #[default]
    Repair,
    Report,
}

#[derive(Debug, Clone, Copy)]
pub struct ConvergeInput<'a> {
    pub desired: &'a Cluster,
    /// The spec last applied successfully (renumbering is judged against it); `None` for a new cluster.
    pub previous: Option<&'a Cluster>,
    pub observed: &'a ObservedCluster,
    pub drift_policy: DriftPolicy,
    /// False when the intent revision equals the last applied one: differences are then drift.
    pub intent_changed: bool,
}

/// Plans the convergence of one cluster towards its intent file.
pub fn converge(input: ConvergeInput<'_>) -> ClusterPlan {
    let ConvergeInput {
        desired,
        previous,
        observed,
        drift_policy,
        intent_changed,
    } = input;
    let mut plan = ClusterPlan {
        cluster: desired.name.clone(),
        kind: PlanKind::Converge,
        steps: Vec::new(),
        blockers: Vec::new(),
        reports: Vec::new(),
    };

    if let Some(refusal) = renumber::check(desired, previous, &observed.vms) {
        plan.blockers.push(Blocker::Refused(refusal));
        return plan;
    }

    let any_vm = !observed.vms.is_empty();
    let mut new_cluster = false;
    if let Some(secrets) = &observed.secrets {
        if secrets.decommissioned {
            plan.blockers.push(Blocker::Blocked(format!(
                "the secret store holds the retained secrets of a decommissioned cluster named {}; destroy them (or pick another name) before reusing the name",
                desired.name
            )));
            return plan;
        }
        match &secrets.bundle {
            BundleState::Present => {}
            BundleState::Absent if !any_vm => {
                new_cluster = true;
                plan.steps.push(step(
                    Action::GenerateSecrets,
                    "no secrets bundle in the store and no VM of the cluster exists",
                ));
            }
            BundleState::Absent => {
                plan.blockers.push(Blocker::Blocked(
                    "VMs of the cluster exist but the secret store has no secrets bundle; a new bundle would lock kiln out of them. Restore the bundle (RESTORE.md)".into(),
                ));
                return plan;
            }
            BundleState::Unreadable(why) => {
                plan.blockers.push(Blocker::Blocked(format!(
                    "the secrets bundle cannot be read ({why}); kiln never mints a second one. Restore or undelete it"
                )));
                return plan;
            }
        }
    }

    for c in &observed.conflicts {
        if desired.nodes.iter().any(|n| n.vmid == c.vmid) {
            plan.blockers.push(Blocker::Blocked(format!(
                "VMID {} is wanted by this cluster but holds a VM that is not kiln's ({}); it is left untouched",
                c.vmid, c.reason
            )));
        } else {
            plan.reports.push(Report::Foreign {
                vmid: c.vmid,
                reason: c.reason.clone(),
                left_untouched: false,
            });
        }
    }
    let conflicted = |n: &Node| observed.conflicts.iter().any(|c| c.vmid == n.vmid);

    let mut provisioning: Vec<&Node> = Vec::new();
    let mut changed_anything = false;
    for node in &desired.nodes {
        if conflicted(node) {
            continue;
        }
        match observed.vms.get(&node.number) {
            None => {
                provisioning.push(node);
                plan.steps.push(step(
                    Action::CreateVm {
                        number: node.number,
                        role: node.role,
                        vmid: node.vmid,
                        name: node.name.clone(),
                        pve_node: node.pve_node.clone(),
                        template: node.template,
                    },
                    format!("no VM {} in Proxmox", node.vmid),
                ));
            }
            Some(vm) if vm.ownership == Ownership::HalfMade => {
                provisioning.push(node);
                plan.steps.push(step(
                    Action::FinishVm {
                        number: node.number,
                        vmid: vm.vmid,
                    },
                    "stopped with kiln's marker but no tags: a clone interrupted before tagging",
                ));
            }
            Some(vm) => {
                changed_anything |=
                    plan_existing(&mut plan, node, vm, drift_policy, intent_changed);
            }
        }
    }

    // Machine configs: for nodes kiln is creating, and for running nodes seen in maintenance.
    let mut needs_config: Vec<&Node> = provisioning.clone();
    if let Some(states) = &observed.nodes {
        for node in &desired.nodes {
            let running = observed
                .vms
                .get(&node.number)
                .is_some_and(|vm| vm.ownership == Ownership::Owned && vm.power == Power::Running);
            if running && states.get(&node.number) == Some(&NodeState::Maintenance) {
                needs_config.push(node);
            }
        }
    }
    needs_config.sort_by_key(|n| n.number);
    needs_config.dedup_by_key(|n| n.number);
    for node in &needs_config {
        plan.steps.push(step(
            Action::ApplyConfig {
                number: node.number,
                name: node.name.clone(),
            },
            if provisioning.iter().any(|p| p.number == node.number) {
                "a new node boots into maintenance mode"
            } else {
                "the node is in maintenance mode"
            },
        ));
    }
    join::one_at_a_time(&mut plan.steps, desired, observed);

    let bootstrapped = observed.secrets.as_ref().map(|s| s.bootstrapped);
    let never_bootstrapped = bootstrapped == Some(false) || (bootstrapped.is_none() && new_cluster);
    if never_bootstrapped && let Some(first) = desired.control_planes().find(|n| !conflicted(n)) {
        plan.steps.push(step(
            Action::Bootstrap {
                number: first.number,
                name: first.name.clone(),
            },
            "etcd was never bootstrapped (no bootstrapped-at marker)",
        ));
    }
    if let Some(s) = &observed.secrets
        && (!s.kubeconfig_stored || !s.talosconfig_stored)
    {
        plan.steps.push(step(
            Action::StoreCredentials,
            "the secret store lacks the kubeconfig or talosconfig",
        ));
    }

    live_config::plan_updates(&mut plan, desired, observed, drift_policy, intent_changed);

    // Scale-down: kiln's VMs whose number the file no longer lists, workers first, highest first.
    let mut leaving: Vec<&ObservedVm> = observed
        .vms
        .values()
        .filter(|vm| desired.node(vm.number).is_none())
        .collect();
    leaving.sort_by_key(|vm| (vm.role == Role::ControlPlane, std::cmp::Reverse(vm.number)));
    for vm in leaving {
        plan.steps.push(step(
            Action::RemoveNode {
                number: vm.number,
                role: vm.role,
                vmid: vm.vmid,
                name: vm.name.clone(),
            },
            format!("node {} is no longer in the file", vm.number),
        ));
    }

    if let Some(versions) = &observed.versions {
        k8s_rollout::plan_version_changes(
            &mut plan,
            desired,
            versions,
            observed.kubernetes.as_ref(),
        );
        if !plan.blockers.is_empty() {
            return plan;
        }
    }

    // A cordon kiln made and did not lift (a crash after the node came back, a failed step): lifted
    // once the node is Ready, unless a step here drains it anyway (that step uncordons after).
    // Not while the plan is blocked: a failed upgrade keeps its node cordoned on purpose.
    if plan.blockers.is_empty() {
        for name in &observed.cordoned_by_kiln {
            let drained_here = plan
                .steps
                .iter()
                .any(|s| s.action.disruption().node() == Some(name.as_str()));
            if desired.nodes.iter().any(|n| &n.name == name) && !drained_here {
                plan.steps.push(step(
                    Action::Uncordon { name: name.clone() },
                    "Ready, and still cordoned by a step of kiln's that did not finish",
                ));
            }
        }
    }

    let acted = !plan.steps.is_empty() || changed_anything;
    if acted || observed.healthy == Some(false) {
        plan.steps.push(step(
            Action::WaitHealthy,
            if acted {
                "after the changes above"
            } else {
                "not every expected node is Ready"
            },
        ));
    }
    // Last, and not an action WaitHealthy must follow: it touches no node.
    plan.steps
        .extend(observed.secrets.as_ref().and_then(credentials::renewal));
    plan
}

/// Whether kiln's VM is what `node` asks for, judged by the same rules that plan its repair (a
/// start, a resize of cores, memory or disk, a lock, a refused shrink): nothing would be planned,
/// refused or reported for it.
pub fn vm_matches(cluster: &ClusterName, node: &Node, vm: &ObservedVm) -> bool {
    let mut scratch = ClusterPlan {
        cluster: cluster.clone(),
        kind: PlanKind::Converge,
        steps: Vec::new(),
        blockers: Vec::new(),
        reports: Vec::new(),
    };
    let planned = plan_existing(&mut scratch, node, vm, DriftPolicy::Repair, false);
    !planned && scratch.blockers.is_empty() && scratch.reports.is_empty()
}

/// Drift and resizes of a VM kiln owns. Returns whether it planned anything.
fn plan_existing(
    plan: &mut ClusterPlan,
    node: &Node,
    vm: &ObservedVm,
    drift_policy: DriftPolicy,
    intent_changed: bool,
) -> bool {
    if let Some(lock) = &vm.lock {
        plan.reports.push(Report::Locked {
            vmid: vm.vmid,
            lock: lock.clone(),
        });
        return false;
    }
    let mut planned = false;
    let repair = |plan: &mut ClusterPlan, action: Action, reason: String, is_drift: bool| {
        if is_drift && drift_policy == DriftPolicy::Report {
            plan.reports.push(Report::Drift { reason });
            false
        } else {
            plan.steps.push(Step { action, reason });
            true
        }
    };
    if vm.power == Power::Stopped {
        planned |= repair(
            plan,
            Action::StartVm {
                number: node.number,
                vmid: vm.vmid,
                name: node.name.clone(),
            },
            format!("VM {} is stopped", vm.vmid),
            true,
        );
    }
    let want_mib = u64::from(node.resources.memory_gib) * 1024;
    let cores = vm
        .cores
        .filter(|&c| c != node.resources.cores)
        .map(|c| (c, node.resources.cores));
    let memory_mib = vm
        .memory_mib
        .filter(|&m| m != want_mib)
        .map(|m| (m, want_mib));
    let want_disk = u64::from(node.resources.disk_gib);
    let mut disk_gib = None;
    if let Some(have) = vm.disk_gib {
        if want_disk < have {
            plan.blockers.push(Blocker::Refused(format!(
                "{}: diskGiB {want_disk} is smaller than the VM's disk ({have} GiB); disks only grow (Proxmox cannot shrink them)",
                node.name
            )));
        } else if want_disk > have {
            disk_gib = Some((have, want_disk));
        }
    }
    if cores.is_some() || memory_mib.is_some() || disk_gib.is_some() {
        planned |= repair(
            plan,
            Action::ResizeVm {
                number: node.number,
                vmid: vm.vmid,
                name: node.name.clone(),
                role: node.role,
                cores,
                memory_mib,
                disk_gib,
            },
            if intent_changed {
                "the file asks for other resources".to_owned()
            } else {
                format!("VM {} was resized outside kiln", vm.vmid)
            },
            !intent_changed,
        );
    } else if vm.pending_changes && vm.power == Power::Running {
        plan.reports.push(Report::PendingChanges { vmid: vm.vmid });
    }
    planned
}

/// Everything the planner reads for a cluster whose file is gone (confirmed absent, grace over).
#[derive(Debug, Clone, Copy)]
pub struct DecommissionInput<'a> {
    pub name: &'a ClusterName,
    /// The last applied spec said `deletionProtection: true`.
    pub protected: bool,
    pub observed: &'a ObservedCluster,
    pub destroy_secrets: bool,
}

/// Plans the decommission of a cluster whose file was deleted: the reconciler pushes the removal of
/// its generated files first, then runs these steps.
pub fn decommission(input: DecommissionInput<'_>) -> ClusterPlan {
    let mut plan = ClusterPlan {
        cluster: input.name.clone(),
        kind: PlanKind::Decommission,
        steps: Vec::new(),
        blockers: Vec::new(),
        reports: Vec::new(),
    };
    if input.protected {
        plan.blockers.push(Blocker::Blocked(
            "deletionProtection is true: restore the file, or set deletionProtection: false before deleting it".into(),
        ));
        return plan;
    }
    for c in &input.observed.conflicts {
        plan.reports.push(Report::Foreign {
            vmid: c.vmid,
            reason: c.reason.clone(),
            left_untouched: true,
        });
    }
    let mut vms: Vec<&ObservedVm> = input.observed.vms.values().collect();
    vms.sort_by_key(|vm| (vm.role == Role::ControlPlane, std::cmp::Reverse(vm.number)));
    for vm in vms {
        plan.steps.push(step(
            Action::DestroyVm {
                number: vm.number,
                vmid: vm.vmid,
                name: vm.name.clone(),
            },
            "the cluster's file was deleted",
        ));
    }
    let has_secrets = input
        .observed
        .secrets
        .as_ref()
        .is_none_or(|s| s.bundle != BundleState::Absent && !s.decommissioned);
    if has_secrets {
        plan.steps.push(step(
            Action::RetireSecrets {
                destroy: input.destroy_secrets,
            },
            "the cluster's file was deleted",
        ));
    }
    plan
}

fn step(action: Action, reason: impl Into<String>) -> Step {
    Step {
        action,
        reason: reason.into(),
    }
}

/// Plans of every cluster, for `kiln plan` and the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub clusters: Vec<ClusterPlan>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.clusters.iter().any(|c| !c.is_noop())
    }
    pub fn has_blockers(&self) -> bool {
        self.clusters.iter().any(|c| !c.blockers.is_empty())
    }
    /// `Plan: 5 to create, 0 to change, 0 to destroy.` over every cluster, as Terraform sums it up.
    pub fn summary(&self) -> String {
        let count = |e| -> usize { self.clusters.iter().map(|c| c.count(e)).sum() };
        format!(
            "Plan: {} to create, {} to change, {} to destroy.",
            count(Effect::Create),
            count(Effect::Change),
            count(Effect::Destroy)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests;
