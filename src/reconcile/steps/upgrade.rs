//! One hop of a Talos upgrade on one node (`Action::UpgradeTalos`, planned by `plan::upgrade`),
//! the way `talosctl upgrade` v1.13.9 does it (`cmd/talosctl/cmd/talos/upgrade.go`), with kiln's own
//! gate in front:
//! 1. the gate: every node Ready in Kubernetes and every control plane of the spec an etcd member (a
//!    member list read from a control plane). The legacy API with `preserve: true` makes Talos skip
//!    its own etcd check, so this gate is the only one;
//! 2. by the version the node runs: from v1.13.0 on (talosctl's `>1.13.0-alpha.2`, which is when
//!    Talos registers the services) `ImageService.Pull` and `LifecycleService.Upgrade` (exit code 0),
//!    then kiln's cordon and drain, then `Reboot`; below, cordon and drain, then the legacy
//!    `MachineService.Upgrade` with `preserve: true`, which reboots the node by itself;
//! 3. wait, up to `[talos] upgrade_timeout`, until the node answers over mTLS with the new version
//!    and its Node is Ready; then uncordon. A node not back in time stops the rollout: the step fails
//!    with `UpgradeUnhealthy`, a refusal (`Blocked` at once), and the worker records it so a later
//!    cycle does not upgrade it again blindly (`plan::upgrade::FailedUpgrade`).
//!
//! A re-run after a crash finds the node already at the hop's version and only finishes (uncordon).
//! A node done ends the turn (`Flow::Wait`): the status shows the rollout (`Updating`, the versions)
//! after every node, and the next node is planned from a fresh observation.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::reconcile::error::TurnError;
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::turn::Turn;
use crate::spec::{Cluster, Node, Role, Version};

/// The first Talos that serves `ImageService` and `LifecycleService`.
const NEW_API_SINCE: Version = Version::new(1, 13, 0);

/// How often the wait looks at the node again (at most; a short timeout looks more often).
const POLL: Duration = Duration::from_secs(1);

/// The installer for `to`: the spec's `installImage` with its tag moved to the hop's version (a hop
/// through an older minor needs that minor's installer of the same schematic), else kiln's default
/// nocloud installer (DESIGN §4 "Install image").
pub fn installer_image(cluster: &Cluster, to: Version) -> String {
    match &cluster.spec.talos.install_image {
        Some(image) => match image.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => format!("{repo}:{to}"),
            _ => format!("{image}:{to}"),
        },
        None => crate::talos::config::render::default_install_image(to),
    }
}

/// Whether a node running `running` is upgraded through the new API.
pub fn uses_new_api(running: Version) -> bool {
    running >= NEW_API_SINCE
}

impl Turn<'_> {
    pub(super) async fn upgrade_talos(&mut self, number: u32, to: Version) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let ip = IpAddr::V4(node.ip);
        let talos = self.talos_node(ip).await?;
        let running = parse_version(&talos.running_version().await?)?;
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(format!(
                "{}'s upgrade waits for the Kubernetes API (kiln drains a node before it reboots it)",
                node.name
            )));
        };
        if running >= to {
            // Done before a crash or a restart: only the uncordon may be left.
            kube.set_unschedulable(&node.name, false).await?;
            return Ok(Flow::Done);
        }
        if let Some(why) = self.upgrade_gate(cluster, kube.as_ref()).await? {
            return Ok(Flow::Wait(format!("{}'s upgrade waits: {why}", node.name)));
        }
        let image = installer_image(cluster, to);
        let deadline = self.ctx.settings.upgrade_timeout;
        if uses_new_api(running) {
            self.say(format!(
                "upgrading {} {running} → {to}: pulling and installing {image}",
                node.name
            ));
            talos.pull_and_install(&image, deadline).await?;
            self.drain_for_upgrade(kube.as_ref(), node).await?;
            self.say(format!("rebooting {} into Talos {to}", node.name));
            talos.reboot().await?;
        } else {
            self.drain_for_upgrade(kube.as_ref(), node).await?;
            self.say(format!(
                "upgrading {} {running} → {to} with the legacy API (preserve: true): {image}",
                node.name
            ));
            talos.legacy_upgrade(&image).await?;
        }
        drop(talos);
        self.wait_back(node, to, deadline).await?;
        kube.set_unschedulable(&node.name, false).await?;
        self.say(format!("{} runs Talos {to} and is Ready", node.name));
        // One node per turn: the status is published (phase Updating, each node's version) and the
        // rest of the rollout is planned again from a fresh look, not from the one made before it.
        Ok(Flow::Wait(format!(
            "{} runs Talos {to}; the rollout goes on from the next look",
            node.name
        )))
    }

    async fn drain_for_upgrade(
        &self,
        kube: &dyn crate::kube::KubePort,
        node: &Node,
    ) -> Result<(), TurnError> {
        kube.set_unschedulable(&node.name, true).await?;
        kube.drain(&node.name, self.ctx.settings.drain_timeout)
            .await?;
        Ok(())
    }

    /// `None` when the cluster may lose this node for a while: every node Ready, every control plane
    /// of the spec a member of etcd. Otherwise what is not so yet.
    async fn upgrade_gate(
        &self,
        cluster: &Cluster,
        kube: &dyn crate::kube::KubePort,
    ) -> Result<Option<String>, TurnError> {
        let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let readiness = kube.node_readiness(&expected).await?;
        if !readiness.all_ready() {
            let mut not: Vec<String> = readiness.not_ready.clone();
            not.extend(readiness.missing.iter().cloned());
            return Ok(Some(format!(
                "not every node is Ready ({})",
                not.join(", ")
            )));
        }
        let mut members = None;
        let mut last_error = String::new();
        for cp in cluster.control_planes() {
            let listed = async {
                self.talos_node(IpAddr::V4(cp.ip))
                    .await?
                    .etcd_members()
                    .await
                    .map_err(TurnError::from)
            };
            match listed.await {
                Ok(list) => {
                    members = Some(list);
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        let Some(members) = members else {
            return Ok(Some(format!(
                "no control plane lists etcd's members ({last_error})"
            )));
        };
        let absent: Vec<&str> = cluster
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .filter(|n| !members.iter().any(|m| m.hostname == n.name))
            .map(|n| n.name.as_str())
            .collect();
        if !absent.is_empty() {
            return Ok(Some(format!(
                "etcd is not healthy: {} not a member",
                absent.join(", ")
            )));
        }
        Ok(None)
    }

    /// Until the node answers over mTLS running `to` and its Node is Ready, or the deadline.
    async fn wait_back(&self, node: &Node, to: Version, within: Duration) -> Result<(), TurnError> {
        let started = Instant::now();
        let poll = POLL.min(within / 10).max(Duration::from_millis(50));
        loop {
            let last = match self.node_back(node, to).await {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= within {
                return Err(TurnError::UpgradeUnhealthy {
                    node: node.name.clone(),
                    to: to.to_string(),
                    waited: humantime::format_duration(within).to_string(),
                    last,
                });
            }
            // Polling the node: nothing tells kiln when a reboot ends.
            crate::systemd::progress();
            tokio::time::sleep(poll).await;
        }
    }

    /// `None` once the node is back, else what it still lacks.
    async fn node_back(&self, node: &Node, to: Version) -> Result<Option<String>, TurnError> {
        let talos = self.talos_node(IpAddr::V4(node.ip)).await?;
        let running = talos.running_version().await?;
        if parse_version(&running)? != to {
            return Ok(Some(format!("it runs {running}")));
        }
        let Some(kube) = self.kube().await else {
            return Ok(Some("the Kubernetes API does not answer".into()));
        };
        let ready = kube
            .node_readiness(std::slice::from_ref(&node.name))
            .await?;
        Ok((!ready.all_ready()).then(|| "its Node is not Ready".to_owned()))
    }

    /// For the health check at the end of a turn (DESIGN §4: a node on another version than the spec
    /// is never Ready): the first node whose running Talos differs from `spec.talos.version`, as the
    /// reason to wait (the next look plans its upgrade), or a newer one as an error.
    pub(super) async fn version_mismatch(&self, cluster: &Cluster) -> Option<String> {
        let target = cluster.spec.talos.version;
        for node in &cluster.nodes {
            let Ok(talos) = self.talos_node(IpAddr::V4(node.ip)).await else {
                return Some(format!("{} does not answer over mTLS", node.name));
            };
            match talos.running_version().await {
                Ok(v) if v == target.to_string() => {}
                Ok(v) => {
                    return Some(format!(
                        "{} runs Talos {v}, not spec.talos.version {target}",
                        node.name
                    ));
                }
                Err(e) => return Some(format!("{}: {e}", node.name)),
            }
        }
        None
    }
}

fn parse_version(tag: &str) -> Result<Version, TurnError> {
    tag.parse::<Version>()
        .map_err(|e| TurnError::UnknownVersion(format!("the node reports Talos {tag:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(install_image: Option<&str>) -> Cluster {
        let image = install_image
            .map(|i| format!("    installImage: {i}\n"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  proxmox:\n    \
             node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: 40\n  \
             talos:\n    version: v1.13.9\n{image}  kubernetes:\n    version: v1.34.1\n  network:\n    \
             vip: 10.0.0.10\n    gateway: 10.0.0.1\n    prefixLength: 24\n    nameservers: [10.0.0.1]\n  \
             controlPlane:\n    resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n      - {{ip: 10.0.0.11}}\n"
        );
        let doc: crate::spec::ClusterDocument = serde_yaml::from_str(&yaml).unwrap();
        Cluster::expand(&doc).unwrap()
    }

    /// A hop through an older minor installs that minor's installer of the same schematic.
    #[test]
    fn the_installer_carries_the_hop_s_version() {
        let hop: Version = "v1.12.11".parse().unwrap();
        assert_eq!(
            installer_image(&cluster(None), hop),
            "factory.talos.dev/nocloud-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.12.11"
        );
        assert_eq!(
            installer_image(
                &cluster(Some(
                    "registry.lan:5000/factory/nocloud-installer/abc:v1.13.9"
                )),
                hop
            ),
            "registry.lan:5000/factory/nocloud-installer/abc:v1.12.11"
        );
    }

    #[test]
    fn the_api_follows_the_running_version() {
        assert!(!uses_new_api("v1.12.11".parse().unwrap()));
        assert!(uses_new_api("v1.13.0".parse().unwrap()));
        assert!(uses_new_api("v1.13.9".parse().unwrap()));
    }
}
