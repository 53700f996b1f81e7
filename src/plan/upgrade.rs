//! Talos upgrades, decided from the versions the nodes run (DESIGN §4 "Scale-down and upgrades"):
//! one minor at a time through each minor's latest patch (`spec::talos_releases`), node by node,
//! control planes first. Pure, so the order and the refusals are unit-tested from literals.
//!
//! Refusals, in the plan so `kiln plan` shows them before anything moves:
//! - a node running a *newer* Talos than `spec.talos.version` (kiln never downgrades, DESIGN §4);
//! - a control plane of an etcd with exactly two members: while it reboots one member is left, which
//!   is no quorum (Talos's own `ValidateForUpgrade` refuses it too, but only when neither `preserve`
//!   nor `force` is set, and kiln sends `preserve: true`: TALOS-FACTS §8);
//! - a node that did not come back healthy from an upgrade kiln made (`reconcile::records`): not
//!   retried blindly, and cleared once the node runs the version it was upgraded to and the cluster
//!   is healthy again, or once the intent changes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::action::{Action, Blocker, ClusterPlan, Step};
use crate::spec::{Cluster, Role, Version, talos_releases};

/// What the deep observation saw of the nodes' Talos versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VersionsObserved {
    /// Node number → the Talos tag it runs (configured nodes that answered `Version` over mTLS).
    pub running: BTreeMap<u32, Version>,
    /// How many members a control plane's etcd lists (`None`: not bootstrapped, or no answer).
    pub etcd_members: Option<usize>,
    /// A node kiln upgraded that did not come back healthy (kiln's record of it).
    pub failed: Option<FailedUpgrade>,
    /// Every expected Node is Ready in Kubernetes, whatever version it runs (`None`: not asked).
    pub nodes_ready: Option<bool>,
}

/// The record of an upgrade that stopped a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FailedUpgrade {
    pub node: String,
    pub number: u32,
    pub to: Version,
    /// The intent revision the rollout belonged to: a new intent clears the record.
    pub revision: String,
}

impl FailedUpgrade {
    /// What a person reads in the status and the plan.
    pub fn message(&self) -> String {
        format!(
            "{} did not come back healthy after upgrading to Talos {}; fix the node (its Talos API must \
             answer running {} and its Kubernetes Node be Ready; it stays cordoned until then, and kiln \
             lifts its cordon once it is) and kiln resumes the rollout on its next look, or change spec.talos.version to \
             start a new one",
            self.node, self.to, self.to
        )
    }

    /// The node now runs the version it was upgraded to and every Node is Ready: the record is done.
    pub fn resolved(&self, seen: &VersionsObserved) -> bool {
        seen.running.get(&self.number) == Some(&self.to) && seen.nodes_ready == Some(true)
    }
}

/// Why no upgrade path exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPath {
    #[error(
        "kiln knows no latest patch of Talos {0}.{1} (spec::talos_releases), so it cannot upgrade through it"
    )]
    UnknownMinor(u32, u32),
    #[error("Talos {from} → {to} changes the major version; kiln upgrades within v1 only")]
    Major { from: Version, to: Version },
}

/// The versions a node at `from` passes through to reach `target`: the latest patch of its own minor
/// first (when it is not there yet), then the latest patch of each following minor, `target` last.
pub fn hops(from: Version, target: Version) -> Result<Vec<Version>, NoPath> {
    if from >= target {
        return Ok(Vec::new());
    }
    if from.major != target.major {
        return Err(NoPath::Major { from, to: target });
    }
    let latest = |minor: (u32, u32)| {
        talos_releases::latest_patch(minor).ok_or(NoPath::UnknownMinor(minor.0, minor.1))
    };
    let mut out = Vec::new();
    let mut at = from;
    while at.minor_line() < target.minor_line() {
        let end_of_minor = latest(at.minor_line())?;
        if end_of_minor > at {
            out.push(end_of_minor);
        }
        let next = (at.major, at.minor + 1);
        at = if next == target.minor_line() {
            target
        } else {
            latest(next)?
        };
        out.push(at);
    }
    if at < target {
        out.push(target);
    }
    Ok(out)
}

/// The version the machine configs are rendered for while nodes run different versions: the
/// contract moves to the spec's only once every node runs the spec's minor (DESIGN §4); until then
/// the lowest running version, whose contract every node of the cluster understands. Nodes whose
/// version is not known do not count. The live-config path calls this too.
pub fn config_version(target: Version, running: &BTreeMap<u32, Version>) -> Version {
    match running.values().min() {
        Some(lowest) if lowest.minor_line() != target.minor_line() && *lowest < target => *lowest,
        _ => target,
    }
}

/// Adds the upgrade steps (or the refusals) for `desired` to `plan`.
pub fn plan_upgrades(plan: &mut ClusterPlan, desired: &Cluster, seen: &VersionsObserved) {
    plan_upgrades_to(plan, desired, seen, desired.spec.talos.version);
}

/// The same, stopping at `stop` (a version at or below the spec's): a combined change whose next
/// Kubernetes hop must come before a later Talos minor (`plan::version_path`).
pub fn plan_upgrades_to(
    plan: &mut ClusterPlan,
    desired: &Cluster,
    seen: &VersionsObserved,
    stop: Version,
) {
    let spec = desired.spec.talos.version;
    let mut blocked = false;
    for node in &desired.nodes {
        if let Some(v) = seen.running.get(&node.number)
            && *v > spec
        {
            plan.blockers.push(Blocker::Blocked(format!(
                "{} runs Talos {v}, newer than spec.talos.version {spec}; kiln never downgrades a \
                 node: set spec.talos.version to {v}, or replace the node",
                node.name
            )));
            blocked = true;
        }
    }
    if let Some(failed) = &seen.failed {
        plan.blockers.push(Blocker::Blocked(failed.message()));
        blocked = true;
    }
    if blocked {
        return;
    }
    // The nodes of the intent with a known version, control planes first, each in number order.
    let mut nodes: Vec<(&crate::spec::Node, Version)> = desired
        .nodes
        .iter()
        .filter_map(|n| seen.running.get(&n.number).map(|v| (n, *v)))
        .collect();
    nodes.sort_by_key(|(n, _)| (n.role != Role::ControlPlane, n.number));
    let Some(lowest) = nodes.iter().map(|(_, v)| *v).min() else {
        return;
    };
    let target = stop.min(spec);
    let path = match hops(lowest, target) {
        Ok(p) => p,
        Err(e) => {
            plan.blockers.push(Blocker::Refused(format!(
                "spec.talos.version {target}: {e}"
            )));
            return;
        }
    };
    let mut steps = Vec::new();
    for hop in &path {
        for (node, at) in nodes.iter_mut() {
            if *at >= *hop {
                continue;
            }
            steps.push(Step {
                action: Action::UpgradeTalos {
                    number: node.number,
                    name: node.name.clone(),
                    from: *at,
                    to: *hop,
                },
                reason: format!(
                    "{} runs Talos {at}; spec.talos.version is {spec}, reached one minor at a time",
                    node.name
                ),
            });
            *at = *hop;
        }
    }
    let touches_control_plane = steps.iter().any(|s| {
        matches!(&s.action, Action::UpgradeTalos { number, .. }
            if desired.node(*number).is_some_and(|n| n.role == Role::ControlPlane))
    });
    if touches_control_plane && seen.etcd_members == Some(2) {
        plan.blockers.push(Blocker::Refused(
            "etcd has exactly two members: while one control plane reboots into its upgrade the other \
             alone has no quorum (Talos refuses it too); scale the control planes to three (or one) \
             first"
                .into(),
        ));
        return;
    }
    plan.steps.extend(steps);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanKind;
    use crate::spec::ClusterDocument;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    /// `cps` control planes and `workers` workers on Talos `talos`.
    fn cluster(cps: usize, workers: usize, talos: &str) -> Cluster {
        let node = |i: usize| format!("      - {{ip: 10.0.0.{}}}\n", 11 + i);
        let cp: String = (0..cps).map(node).collect();
        let wk: String = (cps..cps + workers).map(node).collect();
        let workers = if workers == 0 {
            String::new()
        } else {
            format!(
                "  workers:\n    resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n{wk}"
            )
        };
        let yaml = format!(
            "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: production\nspec:\n  proxmox:\n    \
             node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: 40\n  \
             talos:\n    version: {talos}\n  kubernetes:\n    version: v1.34.1\n  network:\n    vip: 10.0.0.10\n    \
             gateway: 10.0.0.1\n    prefixLength: 24\n    nameservers: [10.0.0.1]\n  controlPlane:\n    \
             resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n{cp}{workers}"
        );
        let doc: ClusterDocument = serde_yaml::from_str(&yaml).unwrap();
        Cluster::expand(&doc).unwrap()
    }

    fn all_at(c: &Cluster, version: &str) -> VersionsObserved {
        VersionsObserved {
            running: c.nodes.iter().map(|n| (n.number, v(version))).collect(),
            etcd_members: Some(c.control_planes().count()),
            failed: None,
            nodes_ready: Some(true),
        }
    }

    fn planned(c: &Cluster, seen: &VersionsObserved) -> ClusterPlan {
        let mut plan = ClusterPlan {
            cluster: c.name.clone(),
            kind: PlanKind::Converge,
            steps: Vec::new(),
            blockers: Vec::new(),
            reports: Vec::new(),
        };
        plan_upgrades(&mut plan, c, seen);
        plan
    }

    fn upgrades(plan: &ClusterPlan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match &s.action {
                Action::UpgradeTalos { name, from, to, .. } => format!("{name} {from}→{to}"),
                other => panic!("not an upgrade: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn hops_go_one_minor_at_a_time_through_each_latest_patch() {
        assert_eq!(hops(v("v1.12.11"), v("v1.13.9")), Ok(vec![v("v1.13.9")]));
        assert_eq!(
            hops(v("v1.12.3"), v("v1.13.9")),
            Ok(vec![v("v1.12.11"), v("v1.13.9")])
        );
        assert_eq!(
            hops(v("v1.11.2"), v("v1.13.5")),
            Ok(vec![v("v1.11.6"), v("v1.12.11"), v("v1.13.5")])
        );
        assert_eq!(hops(v("v1.13.2"), v("v1.13.9")), Ok(vec![v("v1.13.9")]));
        assert_eq!(hops(v("v1.13.9"), v("v1.13.9")), Ok(vec![]));
        assert_eq!(
            hops(v("v1.10.9"), v("v1.12.11")),
            Err(NoPath::UnknownMinor(1, 10))
        );
    }

    #[test]
    fn control_planes_first_then_workers_one_node_per_step_per_hop() {
        let c = cluster(3, 2, "v1.13.9");
        let plan = planned(&c, &all_at(&c, "v1.12.3"));
        assert!(plan.blockers.is_empty(), "{:?}", plan.blockers);
        assert_eq!(
            upgrades(&plan),
            [
                "production-cp-1 v1.12.3→v1.12.11",
                "production-cp-2 v1.12.3→v1.12.11",
                "production-cp-3 v1.12.3→v1.12.11",
                "production-wk-4 v1.12.3→v1.12.11",
                "production-wk-5 v1.12.3→v1.12.11",
                "production-cp-1 v1.12.11→v1.13.9",
                "production-cp-2 v1.12.11→v1.13.9",
                "production-cp-3 v1.12.11→v1.13.9",
                "production-wk-4 v1.12.11→v1.13.9",
                "production-wk-5 v1.12.11→v1.13.9",
            ]
        );
    }

    #[test]
    fn a_rollout_cut_short_resumes_with_the_nodes_still_behind() {
        let c = cluster(3, 1, "v1.13.9");
        let mut seen = all_at(&c, "v1.12.11");
        seen.running.insert(1, v("v1.13.9"));
        seen.running.insert(2, v("v1.13.9"));
        assert_eq!(
            upgrades(&planned(&c, &seen)),
            [
                "production-cp-3 v1.12.11→v1.13.9",
                "production-wk-4 v1.12.11→v1.13.9"
            ]
        );
        // Converged: nothing.
        assert!(planned(&c, &all_at(&c, "v1.13.9")).steps.is_empty());
        // Unknown versions plan nothing for those nodes.
        let mut partial = all_at(&c, "v1.13.9");
        partial.running.remove(&4);
        assert!(planned(&c, &partial).steps.is_empty());
    }

    #[test]
    fn a_newer_node_than_the_spec_is_blocked_not_downgraded() {
        let c = cluster(3, 1, "v1.12.11");
        let mut seen = all_at(&c, "v1.12.11");
        seen.running.insert(4, v("v1.13.9"));
        let plan = planned(&c, &seen);
        assert!(plan.steps.is_empty());
        assert!(
            matches!(&plan.blockers[..], [Blocker::Blocked(m)] if m.contains("production-wk-4 runs Talos v1.13.9, newer")),
            "{:?}",
            plan.blockers
        );
    }

    #[test]
    fn two_etcd_members_refuse_a_control_plane_upgrade_but_not_a_worker_one() {
        let c = cluster(2, 1, "v1.13.9");
        let plan = planned(&c, &all_at(&c, "v1.12.11"));
        assert!(plan.steps.is_empty());
        assert!(
            matches!(&plan.blockers[..], [Blocker::Refused(m)] if m.contains("exactly two members")),
            "{:?}",
            plan.blockers
        );
        // Only the worker is behind: no control plane reboots, so nothing to refuse.
        let mut seen = all_at(&c, "v1.13.9");
        seen.running.insert(3, v("v1.12.11"));
        assert_eq!(
            upgrades(&planned(&c, &seen)),
            ["production-wk-3 v1.12.11→v1.13.9"]
        );
        // One or three members are fine.
        let c3 = cluster(3, 0, "v1.13.9");
        assert_eq!(planned(&c3, &all_at(&c3, "v1.12.11")).steps.len(), 3);
    }

    #[test]
    fn a_failed_upgrade_blocks_until_resolved() {
        let c = cluster(3, 1, "v1.13.9");
        let mut seen = all_at(&c, "v1.12.11");
        seen.running.insert(1, v("v1.13.9"));
        let failed = FailedUpgrade {
            node: "production-cp-2".into(),
            number: 2,
            to: v("v1.13.9"),
            revision: "r1".into(),
        };
        seen.failed = Some(failed.clone());
        let plan = planned(&c, &seen);
        assert!(plan.steps.is_empty());
        assert!(
            matches!(&plan.blockers[..], [Blocker::Blocked(m)] if m.starts_with("production-cp-2 did not come back healthy after upgrading to Talos v1.13.9")),
            "{:?}",
            plan.blockers
        );
        assert!(!failed.resolved(&seen));
        seen.running.insert(2, v("v1.13.9"));
        seen.nodes_ready = Some(false);
        assert!(!failed.resolved(&seen));
        seen.nodes_ready = Some(true);
        assert!(failed.resolved(&seen));
    }

    #[test]
    fn configs_keep_the_lowest_running_contract_until_every_node_runs_the_new_minor() {
        let target = v("v1.13.9");
        let mut running: BTreeMap<u32, Version> = [(1, v("v1.13.9")), (2, v("v1.12.11"))].into();
        assert_eq!(config_version(target, &running), v("v1.12.11"));
        running.insert(2, v("v1.13.2"));
        // Same minor: the contract is the spec's (patches share it).
        assert_eq!(config_version(target, &running), target);
        assert_eq!(config_version(target, &BTreeMap::new()), target);
    }
}
