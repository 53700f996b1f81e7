//! Re-applying a configured node's machine config (DESIGN §4 "Apply"): a dry run with mode AUTO first,
//! whose reply says whether Talos needs a reboot for it (its `CanApplyImmediate`). Without one the
//! config is applied with NO_REBOOT. With one it is a health-gated reboot: every node Ready first,
//! then cordon and drain (the same `kube` port a resize uses), apply with REBOOT, wait until the node
//! answers over mTLS running the new config and its Node is Ready, uncordon. The executor runs these
//! steps one at a time (`executor::batch_class`) and this step returns only once its node is back, so
//! two nodes are never down at once.

use std::net::IpAddr;
use std::time::Duration;

use crate::kube::KubePort;
use crate::reconcile::error::TurnError;
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::observe::live_config::rendered;
use crate::reconcile::turn::Turn;
use crate::spec::Node;
use crate::talos::config::compare::{CompareError, differing_documents};
use crate::talos::grpc::NodeState;
use crate::talos::grpc::proto::machine::ApplyMode;

/// How often a rebooting node is asked whether it is back.
const BACK_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LiveConfigError {
    #[error("{node}: {source}")]
    Compare {
        node: String,
        #[source]
        source: CompareError,
    },
    #[error(
        "{node} did not come back within {} after rebooting to apply its machine config ({last}); it stays cordoned until it is back and Ready, when kiln lifts its cordon",
        humantime::format_duration(*waited)
    )]
    NotBack {
        node: String,
        waited: Duration,
        last: String,
    },
}

impl LiveConfigError {
    pub fn is_not_back(&self) -> bool {
        matches!(self, LiveConfigError::NotBack { .. })
    }
}

impl Turn<'_> {
    pub(super) async fn update_config(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let bundle = &self.bundle()?.bundle;
        // The contract every node understands, from the versions the nodes run now.
        let version = self.running_contract(cluster).await?;
        let talos = self.talos_node(IpAddr::V4(node.ip)).await?;
        let running = talos.running_config().await?;
        let wanted = rendered(cluster, node, bundle, version, &running)?;
        let differing = differing_documents(&running, &wanted).map_err(|source| {
            TurnError::from(LiveConfigError::Compare {
                node: node.name.clone(),
                source,
            })
        })?;
        if differing.is_empty() {
            // Put back since the plan was made (by a person, or an earlier try of this step).
            return Ok(Flow::Done);
        }
        let dry = talos
            .apply(wanted.as_bytes(), ApplyMode::Auto, true)
            .await?;
        if dry.mode != ApplyMode::Reboot {
            talos
                .apply(wanted.as_bytes(), ApplyMode::NoReboot, false)
                .await?;
            self.say(format!(
                "re-applied the machine config of {} without a reboot ({})",
                node.name,
                differing.join(", ")
            ));
            return Ok(Flow::Done);
        }
        let kube = match self.kube().await {
            Some(k) => Some(k),
            None if self.api_expected().await? => {
                return Ok(Flow::Wait(format!(
                    "{} waits to reboot for its machine config: the Kubernetes API does not \
                     answer, and kiln never reboots a node without the drain it owes it",
                    node.name
                )));
            }
            None => None,
        };
        if let Some(k) = &kube {
            let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
            let readiness = k.node_readiness(&expected).await?;
            if !readiness.all_ready() {
                return Ok(Flow::Wait(format!(
                    "{} waits to reboot for its machine config until every node is Ready ({} of {})",
                    node.name,
                    readiness.ready.len(),
                    expected.len()
                )));
            }
            k.set_unschedulable(&node.name, true).await?;
            k.drain(&node.name, self.ctx.settings.drain_timeout).await?;
        }
        self.say(format!(
            "rebooting {} to apply its machine config ({})",
            node.name,
            differing.join(", ")
        ));
        talos
            .apply(wanted.as_bytes(), ApplyMode::Reboot, false)
            .await?;
        drop(talos);
        self.wait_config_back(node, &wanted, kube.as_deref())
            .await?;
        if let Some(k) = &kube {
            k.set_unschedulable(&node.name, false).await?;
        }
        self.say(format!(
            "{} is back with its machine config and Ready",
            node.name
        ));
        Ok(Flow::Done)
    }

    /// Until the node answers over mTLS running `wanted` (before its reboot it still runs the old
    /// config, so an answer alone does not prove it is back) and its Node is Ready, within
    /// `[talos] boot_timeout`.
    async fn wait_config_back(
        &self,
        node: &Node,
        wanted: &str,
        kube: Option<&dyn KubePort>,
    ) -> Result<(), TurnError> {
        let identity = self.talos_identity()?;
        let ip = IpAddr::V4(node.ip);
        let limit = self.ctx.settings.boot_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let talos = &self.ctx.ports.talos;
        loop {
            let last = match talos.node_state(ip, &identity).await {
                NodeState::Configured(_) => match talos.connect(ip, &identity).await {
                    Ok(client) => match client.running_config().await {
                        Ok(running)
                            if differing_documents(&running, wanted)
                                .is_ok_and(|d| d.is_empty()) =>
                        {
                            match kube {
                                None => return Ok(()),
                                Some(k) => {
                                    match k.node_readiness(std::slice::from_ref(&node.name)).await {
                                        Ok(r) if r.all_ready() => return Ok(()),
                                        Ok(_) => "its Node is not Ready".to_owned(),
                                        Err(e) => format!("Kubernetes: {e}"),
                                    }
                                }
                            }
                        }
                        Ok(_) => "it still runs the old config".to_owned(),
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                },
                NodeState::Maintenance => "it is in maintenance mode".to_owned(),
                NodeState::Booting { reason } | NodeState::Unreachable { reason } => reason,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LiveConfigError::NotBack {
                    node: node.name.clone(),
                    waited: limit,
                    last,
                }
                .into());
            }
            crate::systemd::progress();
            tokio::time::sleep(BACK_POLL).await;
        }
    }
}
