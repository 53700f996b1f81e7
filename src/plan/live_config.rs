//! Live machine-config changes and config drift (DESIGN §4 "Apply", §7): a configured node whose
//! running config differs, as documents, from what kiln renders for it gets its config re-applied —
//! after a change of the intent always, otherwise (drift: a config changed by hand) only under
//! `drift_policy = "repair"`; under `"report"` it is reported. Equal configs are never re-applied.

use std::collections::BTreeMap;

use serde::Serialize;

use super::DriftPolicy;
use super::action::{Action, ClusterPlan, Report, Step};
use super::observed::ObservedCluster;
use crate::spec::Cluster;

/// A configured node's running config compared with the rendered one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum RunningConfig {
    Matches,
    Differs {
        /// The documents that differ (`v1alpha1`, `RegistryMirrorConfig docker.io`, …).
        documents: Vec<String>,
        /// What a dry run of the rendered config said: `Some(true)` when Talos would reboot to apply
        /// it; `None` when the dry run did not answer.
        reboot: Option<bool>,
    },
}

/// Per node (by number), for the nodes whose config was read: only a deep look reads them.
pub type RunningConfigs = BTreeMap<u32, RunningConfig>;

pub(super) fn plan_updates(
    plan: &mut ClusterPlan,
    desired: &Cluster,
    observed: &ObservedCluster,
    drift_policy: DriftPolicy,
    intent_changed: bool,
) {
    let Some(configs) = &observed.running_configs else {
        return;
    };
    for node in &desired.nodes {
        let Some(RunningConfig::Differs { documents, reboot }) = configs.get(&node.number) else {
            continue;
        };
        let what = documents.join(", ");
        if !intent_changed && drift_policy == DriftPolicy::Report {
            let cost = match reboot {
                Some(true) => "; putting it back would reboot the node",
                Some(false) => "; it can be put back without a reboot",
                None => "",
            };
            plan.reports.push(Report::Drift {
                reason: format!(
                    "the machine config {} runs differs from the one kiln renders ({what}){cost}",
                    node.name
                ),
            });
            continue;
        }
        plan.steps.push(Step {
            action: Action::UpdateConfig {
                number: node.number,
                name: node.name.clone(),
                role: node.role,
                reboot: *reboot,
            },
            reason: if intent_changed {
                format!("the file asks for another machine config ({what})")
            } else {
                format!("the machine config was changed on the node ({what})")
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::owned;
    use crate::plan::{
        BundleState, ConvergeInput, Disruption, DisruptionSummary, SecretsObserved, converge,
    };
    use crate::spec::{ClusterDocument, Role};

    fn production() -> Cluster {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/clusters/production.yaml"
        ))
        .unwrap();
        let doc: ClusterDocument = serde_yaml::from_str(&text).unwrap();
        Cluster::expand(&doc).unwrap()
    }

    /// Converged, every node configured and healthy, with `configs` as the deep look saw them.
    fn seen(c: &Cluster, configs: RunningConfigs) -> ObservedCluster {
        ObservedCluster {
            vms: c.nodes.iter().map(|n| (n.number, owned(n))).collect(),
            conflicts: vec![],
            secrets: Some(SecretsObserved {
                bundle: BundleState::Present,
                bootstrapped: true,
                kubeconfig_stored: true,
                talosconfig_stored: true,
                decommissioned: false,
                credentials: Default::default(),
            }),
            nodes: Some(
                c.nodes
                    .iter()
                    .map(|n| (n.number, super::super::NodeState::Configured))
                    .collect(),
            ),
            healthy: Some(true),
            running_configs: Some(configs),
            versions: None,
            kubernetes: None,
            cordoned_by_kiln: Vec::new(),
        }
    }

    fn differs(reboot: Option<bool>) -> RunningConfig {
        RunningConfig::Differs {
            documents: vec!["v1alpha1".into()],
            reboot,
        }
    }

    fn plan(c: &Cluster, o: &ObservedCluster, policy: DriftPolicy, changed: bool) -> ClusterPlan {
        converge(ConvergeInput {
            desired: c,
            previous: Some(c),
            observed: o,
            drift_policy: policy,
            intent_changed: changed,
        })
    }

    #[test]
    fn equal_configs_are_never_re_applied() {
        let c = production();
        let all: RunningConfigs = c
            .nodes
            .iter()
            .map(|n| (n.number, RunningConfig::Matches))
            .collect();
        for (policy, changed) in [
            (DriftPolicy::Repair, true),
            (DriftPolicy::Repair, false),
            (DriftPolicy::Report, false),
        ] {
            let p = plan(&c, &seen(&c, all.clone()), policy, changed);
            assert!(p.steps.is_empty(), "{p}");
            assert!(p.reports.is_empty(), "{p}");
        }
    }

    #[test]
    fn a_changed_intent_re_applies_each_differing_node_in_number_order() {
        let c = production();
        let configs = RunningConfigs::from([(5, differs(Some(true))), (2, differs(Some(false)))]);
        let p = plan(&c, &seen(&c, configs), DriftPolicy::Report, true);
        let updates: Vec<(u32, Option<bool>)> = p
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::UpdateConfig { number, reboot, .. } => Some((*number, *reboot)),
                _ => None,
            })
            .collect();
        // Under `report` too: a change of the file is not drift.
        assert_eq!(updates, vec![(2, Some(false)), (5, Some(true))], "{p}");
        assert!(p.reports.is_empty());
        assert!(matches!(
            p.steps.last().map(|s| &s.action),
            Some(Action::WaitHealthy)
        ));
    }

    #[test]
    fn drift_is_repaired_under_repair_and_only_reported_under_report() {
        let c = production();
        let configs = RunningConfigs::from([(4, differs(Some(true)))]);
        let repaired = plan(&c, &seen(&c, configs.clone()), DriftPolicy::Repair, false);
        assert!(
            repaired.steps.iter().any(|s| matches!(
                &s.action,
                Action::UpdateConfig { number: 4, name, .. } if name == "production-wk-4"
            )),
            "{repaired}"
        );
        let reported = plan(&c, &seen(&c, configs), DriftPolicy::Report, false);
        assert!(reported.steps.is_empty(), "{reported}");
        assert_eq!(reported.reports.len(), 1);
        let text = reported.reports[0].to_string();
        assert!(reported.reports[0].is_drift());
        assert!(text.contains("production-wk-4"), "{text}");
        assert!(text.contains("would reboot"), "{text}");
    }

    #[test]
    fn nothing_is_planned_without_a_deep_look() {
        let c = production();
        let mut o = seen(&c, RunningConfigs::new());
        o.running_configs = None;
        assert!(plan(&c, &o, DriftPolicy::Repair, false).steps.is_empty());
    }

    #[test]
    fn the_disruption_says_reboot_or_not() {
        let action = |name: &str, role, reboot| Action::UpdateConfig {
            number: 2,
            name: name.into(),
            role,
            reboot,
        };
        let live = action("production-cp-2", Role::ControlPlane, Some(false));
        assert_eq!(
            live.disruption().to_string(),
            "re-applies the config of production-cp-2 without a reboot"
        );
        let reboot = action("production-wk-4", Role::Worker, Some(true));
        assert!(
            reboot
                .disruption()
                .to_string()
                .starts_with("reboots production-wk-4 to apply its config"),
            "{}",
            reboot.disruption()
        );
        let each: Vec<Disruption> = [live, reboot.clone(), reboot]
            .iter()
            .map(Action::disruption)
            .collect();
        assert_eq!(
            DisruptionSummary::of(&each).to_string(),
            "2 reboots, one at a time; 1 config re-applied live"
        );
    }
}
