//! Control planes added to a running etcd join one at a time (DESIGN §4, issue 27).
//!
//! A first provisioning creates every VM at once and bootstraps etcd on the first control plane;
//! the others join as Talos brings them up. Once etcd runs, each new control plane joins as a
//! learner that Talos promotes when it has caught up (siderolabs/talos v1.13
//! `internal/app/machined/pkg/system/services/etcd.go`: `addMember` calls `MemberAddAsLearner`,
//! `promoteMember` retries `MemberPromote`), and etcd admits one learner at a time. Adding two at once
//! would also put two unproven members into the quorum count together. So in a bootstrapped cluster
//! the planner orders the new control planes: create, configure, wait until it is Ready and a voting
//! member ([`Action::JoinControlPlane`]), then the next. New workers keep the side-by-side path:
//! they are not etcd members.

use super::action::{Action, Step};
use super::observed::ObservedCluster;
use crate::spec::{Cluster, Role};

/// The node a provisioning step creates or configures, if it is one.
fn provisions(action: &Action) -> Option<u32> {
    match action {
        Action::CreateVm { number, .. }
        | Action::FinishVm { number, .. }
        | Action::ApplyConfig { number, .. } => Some(*number),
        _ => None,
    }
}

/// Reorders the provisioning steps of `steps` (creates, finishes and configs, as `converge` planned
/// them) when etcd already runs (the marker says it was bootstrapped and a control plane's VM is
/// there): the other steps keep their order (new workers side by side), then
/// each new control plane in number order is created, configured and waited for before the next.
///
/// A control plane made in an earlier turn whose join was not yet confirmed is waited for first: the
/// plan cannot see etcd, and the control plane created last is the only one that may still be
/// joining (each earlier one was waited for before it). The lowest-numbered control plane is where
/// etcd runs, so it is never waited for.
pub(super) fn one_at_a_time(steps: &mut Vec<Step>, desired: &Cluster, observed: &ObservedCluster) {
    let bootstrapped = observed.secrets.as_ref().is_some_and(|s| s.bootstrapped);
    if !bootstrapped {
        return;
    }
    let is_cp = |n: u32| {
        desired
            .node(n)
            .is_some_and(|n| n.role == Role::ControlPlane)
    };
    let mut joining: Vec<u32> = steps
        .iter()
        .filter_map(|s| provisions(&s.action))
        .filter(|n| is_cp(*n))
        .collect();
    joining.sort_unstable();
    joining.dedup();
    if joining.is_empty() {
        return;
    }
    let first_cp = desired.control_planes().map(|n| n.number).min();
    let settled = desired
        .control_planes()
        .filter(|n| !joining.contains(&n.number) && observed.vms.contains_key(&n.number))
        .map(|n| n.number)
        .max();
    if settled.is_none() {
        // No control plane of etcd's is left to join: nothing to order against.
        return;
    }
    let (mut cp_steps, rest): (Vec<Step>, Vec<Step>) = std::mem::take(steps)
        .into_iter()
        .partition(|s| provisions(&s.action).is_some_and(|n| joining.contains(&n)));
    *steps = rest;

    let mut after = settled
        .and_then(|n| desired.node(n))
        .map(|n| n.name.clone());
    if let Some(last) = settled
        && Some(last) != first_cp
        && let Some(node) = desired.node(last)
    {
        steps.push(Step {
            action: Action::JoinControlPlane {
                number: last,
                name: node.name.clone(),
                after: None,
            },
            reason: "the control plane added last must have joined etcd before the next is created"
                .into(),
        });
    }
    for number in joining {
        let Some(node) = desired.node(number) else {
            continue;
        };
        // Create (or finish) before configure, as `converge` planned them.
        let (mine, others): (Vec<Step>, Vec<Step>) = std::mem::take(&mut cp_steps)
            .into_iter()
            .partition(|s| provisions(&s.action) == Some(number));
        cp_steps = others;
        steps.extend(mine);
        steps.push(Step {
            action: Action::JoinControlPlane {
                number,
                name: node.name.clone(),
                after: after.clone(),
            },
            reason: "etcd runs: a new control plane joins as a learner, one at a time".into(),
        });
        after = Some(node.name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::owned;
    use super::super::*;
    use crate::spec::ClusterDocument;

    /// The example cluster with control planes `cps` (numbers 1..) and its two workers pinned at 4
    /// and 5, and `extra` more workers pinned after them.
    fn cluster(cps: u8, extra: u8) -> Cluster {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/clusters/production.yaml"
        ))
        .unwrap();
        let all_cps = "      - {ip: 192.168.2.161, mac: \"BC:24:11:00:00:01\"}\n      - {ip: 192.168.2.162}\n      - {ip: 192.168.2.163}\n";
        assert!(text.contains(all_cps));
        let mut cp_list = String::from("      - {ip: 192.168.2.161, mac: \"BC:24:11:00:00:01\"}\n");
        for n in 2..=cps {
            cp_list.push_str(&format!(
                "      - {{ip: 192.168.2.{}, number: {n}}}\n",
                160 + n
            ));
        }
        let mut workers = String::from(
            "      - {ip: 192.168.2.164, number: 4}\n      - {ip: 192.168.2.165, number: 5}\n",
        );
        for k in 0..extra {
            workers.push_str(&format!(
                "      - {{ip: 192.168.2.{}, number: {}}}\n",
                170 + k,
                6 + k
            ));
        }
        let text = text.replace(all_cps, &cp_list).replace(
            "      - {ip: 192.168.2.164}\n      - {ip: 192.168.2.165, number: 5}\n",
            &workers,
        );
        let doc: ClusterDocument = serde_yaml::from_str(&text).unwrap();
        Cluster::expand(&doc).unwrap()
    }

    fn observed(c: &Cluster, bootstrapped: bool) -> ObservedCluster {
        ObservedCluster {
            vms: c.nodes.iter().map(|n| (n.number, owned(n))).collect(),
            conflicts: vec![],
            secrets: Some(SecretsObserved {
                bundle: BundleState::Present,
                bootstrapped,
                kubeconfig_stored: true,
                talosconfig_stored: true,
                decommissioned: false,
                credentials: Default::default(),
            }),
            ..ObservedCluster::default()
        }
    }

    fn plan(desired: &Cluster, previous: &Cluster, observed: &ObservedCluster) -> ClusterPlan {
        converge(ConvergeInput {
            desired,
            previous: Some(previous),
            observed,
            drift_policy: DriftPolicy::Repair,
            intent_changed: true,
        })
    }

    /// Each step as a short word and its node, e.g. `create 2`, `join 2`.
    fn shape(plan: &ClusterPlan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match &s.action {
                Action::CreateVm { number, .. } => format!("create {number}"),
                Action::ApplyConfig { number, .. } => format!("config {number}"),
                Action::JoinControlPlane { number, .. } => format!("join {number}"),
                Action::WaitHealthy => "healthy".into(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn control_planes_added_to_a_running_etcd_join_one_at_a_time_after_the_new_workers() {
        let before = cluster(1, 0);
        let after = cluster(3, 1);
        let p = plan(&after, &before, &observed(&before, true));
        assert!(p.blockers.is_empty(), "{p}");
        assert_eq!(
            shape(&p),
            [
                "create 6", "config 6", "create 2", "config 2", "join 2", "create 3", "config 3",
                "join 3", "healthy"
            ],
            "{p}"
        );
        let joins: Vec<String> = p
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::JoinControlPlane { .. }))
            .map(|s| s.action.disruption().to_string())
            .collect();
        assert_eq!(
            joins,
            [
                "adds control plane production-cp-2 to etcd (joins after cp-1 is Ready)",
                "adds control plane production-cp-3 to etcd (joins after cp-2 is Ready)",
            ]
        );
        assert_eq!(
            p.disruption().to_string(),
            "2 etcd members added, one at a time"
        );
        // The executor never puts a join in a batch, so nothing of cp-3 runs beside cp-2's wait.
        assert!(
            p.steps
                .iter()
                .filter(|s| matches!(s.action, Action::JoinControlPlane { .. }))
                .all(|s| crate::reconcile::executor::batch_class(&s.action).is_none())
        );
    }

    #[test]
    fn a_first_provisioning_keeps_the_parallel_path_and_waits_for_no_join() {
        let c = cluster(3, 0);
        let mut o = observed(&c, false);
        o.vms.clear();
        o.secrets.as_mut().unwrap().bundle = BundleState::Absent;
        o.secrets.as_mut().unwrap().kubeconfig_stored = false;
        let p = converge(ConvergeInput {
            desired: &c,
            previous: None,
            observed: &o,
            drift_policy: DriftPolicy::Repair,
            intent_changed: true,
        });
        let s = shape(&p);
        assert!(!s.iter().any(|x| x.starts_with("join")), "{p}");
        assert_eq!(
            &s[1..6],
            ["create 1", "create 2", "create 3", "create 4", "create 5"],
            "{p}"
        );
    }

    #[test]
    fn a_control_plane_made_in_an_earlier_turn_is_waited_for_before_the_next_is_created() {
        // cp-2 exists (its VM made and configured by an earlier turn), cp-3 does not yet.
        let before = cluster(1, 0);
        let half = cluster(2, 0);
        let after = cluster(3, 0);
        let p = plan(&after, &before, &observed(&half, true));
        assert_eq!(
            shape(&p),
            ["join 2", "create 3", "config 3", "join 3", "healthy"],
            "{p}"
        );
        assert_eq!(
            p.steps[0].action.disruption().to_string(),
            "adds control plane production-cp-2 to etcd"
        );
        // Nothing joining: no wait, whatever exists.
        let p = plan(&after, &after, &observed(&after, true));
        assert!(p.steps.is_empty(), "{p}");
    }

    #[test]
    fn a_control_plane_in_maintenance_rejoins_through_the_same_wait() {
        let c = cluster(3, 0);
        let mut o = observed(&c, true);
        o.nodes = Some(
            c.nodes
                .iter()
                .map(|n| {
                    let s = if n.number == 3 {
                        NodeState::Maintenance
                    } else {
                        NodeState::Configured
                    };
                    (n.number, s)
                })
                .collect(),
        );
        let p = plan(&c, &c, &o);
        assert_eq!(
            shape(&p),
            ["join 2", "config 3", "join 3", "healthy"],
            "{p}"
        );
    }
}
