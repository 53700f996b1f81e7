//! What a cluster's turn keeps of a Talos rollout between cycles and shows of it: the record of a
//! node that did not come back healthy from its upgrade (`records::ClusterRecord::failed_upgrade`,
//! handed to the planner, which blocks on it), and each node's running version in the status.

use std::collections::BTreeMap;

use super::error::Refusal;
use super::executor::Execution;
use super::observe;
use super::records::ClusterRecord;
use super::status::NodeStatus;
use crate::plan::upgrade::FailedUpgrade;
use crate::plan::{Action, NodeState, ObservedCluster};
use crate::spec::{Cluster, Node, Version};
use crate::talos::grpc::{ClientIdentity, TalosPort};

/// Before planning: a record of another intent is dropped (a new `spec.talos.version` starts a new
/// rollout), and one the node has since resolved (it runs that version, every Node Ready) too;
/// otherwise the planner sees it and blocks.
pub fn attach(record: &mut ClusterRecord, observed: &mut ObservedCluster, revision: &str) {
    let Some(failed) = record.failed_upgrade.clone() else {
        return;
    };
    if failed.revision != revision {
        record.failed_upgrade = None;
        return;
    }
    if let Some(seen) = &mut observed.versions {
        if failed.resolved(seen) {
            tracing::info!(node = %failed.node, to = %failed.to, "the node that failed its upgrade is healthy now; the rollout resumes");
            record.failed_upgrade = None;
        } else {
            seen.failed = Some(failed);
        }
    }
}

/// After the steps: an upgrade the node did not come back from is recorded.
pub fn after(record: &mut ClusterRecord, execution: &Execution, revision: &str) {
    if let Execution::Blocked {
        action: Action::UpgradeTalos {
            number, name, to, ..
        },
        refusal: Refusal::NeedsAPerson,
        ..
    } = execution
    {
        record.failed_upgrade = Some(FailedUpgrade {
            node: name.clone(),
            number: *number,
            to: *to,
            revision: revision.to_owned(),
        });
    }
}

pub fn versions_of(observed: &ObservedCluster) -> BTreeMap<u32, Version> {
    observed
        .versions
        .as_ref()
        .map(|v| v.running.clone())
        .unwrap_or_default()
}

/// The versions after a turn's steps moved the nodes on.
pub async fn running_now(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    cluster: &Cluster,
) -> BTreeMap<u32, Version> {
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    let states = observe::talos_states(talos, identity, &nodes).await;
    let planned: BTreeMap<u32, NodeState> = states.iter().map(|(n, (s, _))| (*n, *s)).collect();
    observe::versions::running(talos, identity, &nodes, &planned).await
}

/// Each node's row shows the version it was last seen running.
pub fn show_versions(
    rows: &mut [NodeStatus],
    cluster: &Cluster,
    versions: &BTreeMap<u32, Version>,
) {
    for (number, v) in versions {
        if let Some(node) = cluster.node(*number)
            && let Some(row) = rows.iter_mut().find(|r| r.name == node.name)
        {
            row.talos_version = Some(v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::upgrade::VersionsObserved;

    fn failed(revision: &str) -> FailedUpgrade {
        FailedUpgrade {
            node: "production-cp-2".into(),
            number: 2,
            to: "v1.13.9".parse().unwrap(),
            revision: revision.into(),
        }
    }

    fn observed(cp2: &str, ready: bool) -> ObservedCluster {
        ObservedCluster {
            versions: Some(VersionsObserved {
                running: [(1, "v1.13.9".parse().unwrap()), (2, cp2.parse().unwrap())].into(),
                nodes_ready: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_upgrade_is_kept_until_resolved_or_the_intent_changes() {
        let mut record = ClusterRecord {
            failed_upgrade: Some(failed("r1")),
            ..Default::default()
        };
        let mut seen = observed("v1.12.11", true);
        attach(&mut record, &mut seen, "r1");
        assert_eq!(record.failed_upgrade, Some(failed("r1")));
        assert_eq!(seen.versions.unwrap().failed, Some(failed("r1")));

        // Back on the version, but not every Node Ready yet: still held.
        let mut seen = observed("v1.13.9", false);
        attach(&mut record, &mut seen, "r1");
        assert!(record.failed_upgrade.is_some());

        let mut seen = observed("v1.13.9", true);
        attach(&mut record, &mut seen, "r1");
        assert_eq!(record.failed_upgrade, None);
        assert_eq!(seen.versions.unwrap().failed, None);

        let mut record = ClusterRecord {
            failed_upgrade: Some(failed("r1")),
            ..Default::default()
        };
        let mut seen = observed("v1.12.11", true);
        attach(&mut record, &mut seen, "r2");
        assert_eq!(record.failed_upgrade, None);
        assert_eq!(seen.versions.unwrap().failed, None);
    }

    #[test]
    fn only_an_upgrade_that_did_not_come_back_is_recorded() {
        let action = Action::UpgradeTalos {
            number: 2,
            name: "production-cp-2".into(),
            from: "v1.12.11".parse().unwrap(),
            to: "v1.13.9".parse().unwrap(),
        };
        let mut record = ClusterRecord::default();
        after(
            &mut record,
            &Execution::Waiting {
                action: action.clone(),
                why: "gate".into(),
            },
            "r1",
        );
        assert_eq!(record.failed_upgrade, None);
        after(
            &mut record,
            &Execution::Blocked {
                action,
                refusal: Refusal::NeedsAPerson,
                why: "did not come back".into(),
            },
            "r1",
        );
        assert_eq!(record.failed_upgrade, Some(failed("r1")));
    }
}
