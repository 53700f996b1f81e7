//! `kiln plan --offline`: what merging a change would do, decided from Git alone (no Proxmox, no
//! Vault), the way a pull request's CI check runs it. The base revision stands for what is applied:
//! each cluster it declares is taken as converged to its file there, so the plan shows exactly what
//! the change adds, changes and removes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::plan::{
    self, Blocker, BundleState, ClusterPlan, ConvergeInput, DecommissionInput, DriftPolicy,
    ObservedCluster, ObservedVm, Ownership, Plan, Power, SecretsObserved,
};
use crate::spec::{Cluster, Diagnostic, LoadOutcome};

/// The plan of a change, with every problem of the files it would leave in the branch.
#[derive(Debug, Clone, Serialize)]
pub struct OfflinePlan {
    pub plan: Plan,
    /// Errors of the head revision's files (each such cluster is unknown, so nothing is planned
    /// for it, never a decommission).
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// Notes on what the base revision could not say (e.g. its file for a cluster was invalid).
    pub notes: Vec<String>,
}

impl OfflinePlan {
    /// `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes, 1 errors.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() || self.plan.has_blockers() {
            1
        } else if self.plan.has_changes() {
            2
        } else {
            0
        }
    }
}

/// What Proxmox and the secret store would show for a cluster converged to `c`.
pub fn converged_observation(c: &Cluster) -> ObservedCluster {
    ObservedCluster {
        vms: c
            .nodes
            .iter()
            .map(|n| {
                let vm = ObservedVm {
                    number: n.number,
                    role: n.role,
                    vmid: n.vmid,
                    name: n.name.clone(),
                    pve_node: n.pve_node.clone(),
                    power: Power::Running,
                    ownership: Ownership::Owned,
                    cores: Some(n.resources.cores),
                    memory_mib: Some(u64::from(n.resources.memory_gib) * 1024),
                    disk_gib: Some(u64::from(n.resources.disk_gib)),
                    pending_changes: false,
                    lock: None,
                };
                (n.number, vm)
            })
            .collect(),
        conflicts: Vec::new(),
        secrets: Some(SecretsObserved {
            bundle: BundleState::Present,
            bootstrapped: true,
            kubeconfig_stored: true,
            talosconfig_stored: true,
            decommissioned: false,
            credentials: Default::default(),
        }),
        nodes: None,
        healthy: Some(true),
        // Offline nothing reads a node's config: taken as the rendered one.
        running_configs: None,
        // Offline, every node is taken to run the base revision's version: a changed
        // spec.talos.version lists its hops from there.
        versions: Some(plan::upgrade::VersionsObserved {
            running: c
                .nodes
                .iter()
                .map(|n| (n.number, c.spec.talos.version))
                .collect(),
            etcd_members: Some(c.control_planes().count()),
            failed: None,
            nodes_ready: Some(true),
        }),
        // Likewise every component at the base revision's Kubernetes, kube-proxy's manifests in step.
        kubernetes: Some(plan::k8s_rollout::KubernetesObserved {
            running: c
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.number,
                        plan::k8s_rollout::Running::uniform(c.spec.kubernetes.version, n.role),
                    )
                })
                .collect(),
            manifests_current: Some(true),
        }),
        cordoned_by_kiln: Vec::new(),
    }
}

fn new_cluster_observation() -> ObservedCluster {
    ObservedCluster {
        secrets: Some(SecretsObserved {
            bundle: BundleState::Absent,
            bootstrapped: false,
            kubeconfig_stored: false,
            talosconfig_stored: false,
            decommissioned: false,
            credentials: Default::default(),
        }),
        ..Default::default()
    }
}

/// Plans `head` against `base`. `allow_empty` is `reconcile.allow_empty`: without it, a head with no
/// valid file while the base had clusters is taken for a mistake and decommissions nothing.
pub fn plan_change(base: &LoadOutcome, head: &LoadOutcome, allow_empty: bool) -> OfflinePlan {
    let base_valid: BTreeMap<&str, &Cluster> =
        base.clusters.iter().map(|c| (c.name.as_str(), c)).collect();
    let base_invalid: BTreeSet<&str> = base.invalid.iter().map(|f| f.stem.as_str()).collect();
    let head_invalid: BTreeSet<&str> = head.invalid.iter().map(|f| f.stem.as_str()).collect();
    let mut notes = Vec::new();
    let mut clusters: Vec<ClusterPlan> = Vec::new();

    for desired in &head.clusters {
        let name = desired.name.as_str();
        let (previous, observed) = match base_valid.get(name) {
            Some(prev) => (Some(*prev), converged_observation(prev)),
            None => {
                if base_invalid.contains(name) {
                    notes.push(format!(
                        "{name}: its file is invalid at the base revision, so what exists is unknown offline; planned as a new cluster (the daemon plans from what Proxmox shows)"
                    ));
                }
                (None, new_cluster_observation())
            }
        };
        clusters.push(plan::converge(ConvergeInput {
            desired,
            previous,
            observed: &observed,
            drift_policy: DriftPolicy::Repair,
            intent_changed: true,
        }));
    }

    let head_names: BTreeSet<&str> = head.clusters.iter().map(|c| c.name.as_str()).collect();
    let emptied = super::policy::empty_folder_holds(!head.clusters.is_empty(), allow_empty);
    for (name, prev) in &base_valid {
        if head_names.contains(name) || head_invalid.contains(name) {
            continue;
        }
        let mut decommission = plan::decommission(DecommissionInput {
            name: &prev.name,
            protected: prev.spec.deletion_protection,
            observed: &converged_observation(prev),
            destroy_secrets: false,
        });
        if emptied && decommission.blockers.is_empty() {
            decommission.steps.clear();
            decommission.blockers.push(Blocker::Blocked(
                "the clusters folder would hold no valid file; kiln destroys nothing then, unless reconcile.allow_empty = true".into(),
            ));
        }
        clusters.push(decommission);
    }
    clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));

    OfflinePlan {
        plan: Plan { clusters },
        errors: head.errors().cloned().collect(),
        warnings: head.warnings.clone(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::{Action, Effect};
    use crate::spec;

    const PRODUCTION: &str = include_str!("../../examples/clusters/production.yaml");
    const STAGING: &str = include_str!("../../examples/clusters/staging.yaml");

    fn load(files: &[(&str, &str)]) -> LoadOutcome {
        spec::load(files.iter().map(|(p, t)| (Path::new(*p), *t)))
    }

    #[test]
    fn adding_a_cluster_plans_its_vms_and_exits_2() {
        let base = load(&[("clusters/production.yaml", PRODUCTION)]);
        let head = load(&[
            ("clusters/production.yaml", PRODUCTION),
            ("clusters/staging.yaml", STAGING),
        ]);
        let p = plan_change(&base, &head, false);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.exit_code(), 2);
        let staging = p
            .plan
            .clusters
            .iter()
            .find(|c| c.cluster.as_str() == "staging")
            .unwrap();
        let vms: Vec<u32> = staging
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::CreateVm { vmid, .. } => Some(vmid.get()),
                _ => None,
            })
            .collect();
        assert_eq!(vms, vec![411, 412, 413]);
        let production = p
            .plan
            .clusters
            .iter()
            .find(|c| c.cluster.as_str() == "production")
            .unwrap();
        assert!(production.is_noop(), "{production}");
    }

    /// Offline, no node's version can be seen: the hops are listed from the base revision's version.
    #[test]
    fn a_talos_bump_lists_each_node_of_each_hop_from_the_base_version() {
        let older = PRODUCTION.replace("v1.13.9", "v1.11.6");
        let base = load(&[("clusters/production.yaml", older.as_str())]);
        let head = load(&[("clusters/production.yaml", PRODUCTION)]);
        let p = plan_change(&base, &head, false);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.exit_code(), 2);
        let production = &p.plan.clusters[0];
        let lines: Vec<String> = production
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::UpgradeTalos { .. }))
            .map(|s| s.action.disruption().to_string())
            .collect();
        let names = ["cp-1", "cp-2", "cp-3", "wk-4", "wk-5"];
        let mut expected: Vec<String> = names
            .iter()
            .map(|n| format!("upgrades production-{n} v1.11.6 → v1.12.11 (reboot)"))
            .collect();
        expected.extend(
            names
                .iter()
                .map(|n| format!("upgrades production-{n} v1.12.11 → v1.13.9 (reboot)")),
        );
        assert_eq!(lines, expected);
        assert!(
            production
                .to_string()
                .contains("upgrades production-cp-1 v1.12.11 → v1.13.9 (reboot)"),
            "{production}"
        );
    }

    #[test]
    fn an_unchanged_branch_exits_0() {
        let files = [("clusters/production.yaml", PRODUCTION)];
        let p = plan_change(&load(&files), &load(&files), false);
        assert_eq!(p.exit_code(), 0);
    }

    #[test]
    fn a_deleted_file_decommissions_but_an_invalid_one_does_not() {
        let base = load(&[
            ("clusters/production.yaml", PRODUCTION),
            ("clusters/staging.yaml", STAGING),
        ]);
        let deleted = plan_change(
            &base,
            &load(&[("clusters/production.yaml", PRODUCTION)]),
            false,
        );
        let staging = deleted
            .plan
            .clusters
            .iter()
            .find(|c| c.cluster.as_str() == "staging")
            .unwrap();
        assert_eq!(staging.count(Effect::Destroy), 3);

        let broken = plan_change(
            &base,
            &load(&[
                ("clusters/production.yaml", PRODUCTION),
                (
                    "clusters/staging.yaml",
                    "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nspec: [",
                ),
            ]),
            false,
        );
        assert_eq!(broken.exit_code(), 1);
        assert!(
            broken
                .plan
                .clusters
                .iter()
                .all(|c| c.count(Effect::Destroy) == 0)
        );
        assert!(!broken.errors.is_empty());
    }

    #[test]
    fn a_protected_cluster_is_blocked_not_destroyed() {
        let protected = PRODUCTION.replace("deletionProtection: false", "deletionProtection: true");
        let base = load(&[("clusters/production.yaml", &protected)]);
        let head = load(&[]);
        let p = plan_change(&base, &head, false);
        assert_eq!(p.exit_code(), 1);
        assert!(p.plan.clusters[0].steps.is_empty());
    }

    #[test]
    fn deleting_the_last_file_destroys_only_with_allow_empty() {
        let base = load(&[("clusters/production.yaml", PRODUCTION)]);
        let refused = plan_change(&base, &load(&[]), false);
        assert_eq!(refused.exit_code(), 1);
        assert!(refused.plan.clusters[0].steps.is_empty());
        let allowed = plan_change(&base, &load(&[]), true);
        assert_eq!(allowed.exit_code(), 2);
        assert_eq!(allowed.plan.clusters[0].count(Effect::Destroy), 5);
    }
}
