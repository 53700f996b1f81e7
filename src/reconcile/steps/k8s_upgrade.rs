//! One change of a Kubernetes hop (`Action::UpgradeKubernetes`, planned by `plan::k8s_rollout`) and
//! the hop's last part (`Action::SyncManifests`), as `talosctl upgrade-k8s` v1.13.9 does them
//! (`pkg/cluster/kubernetes/talos_managed.go`, `kubelet.go`, `patch.go`):
//! 1. every node Ready before a node changes;
//! 2. the node's config rendered with its running images and this one component moved, dry-run,
//!    then applied with NO_REBOOT (talosctl's `patchNodeConfig` applies NO_REBOOT; kiln refuses to
//!    go on if Talos says it would reboot);
//! 3. wait, up to `[talos] upgrade_timeout`, until the component runs the new version: the static
//!    pod's mirror pod (`<component>-<node>` in `kube-system`) on the new image and Ready, or the
//!    Node's `kubeletVersion` and Ready; kube-proxy has no per-node gate (its DaemonSet follows with
//!    the manifests).
//!
//! Each step re-reads the node's running config, so a re-run after a crash only waits for what is
//! already applied. The hop's steps run in one turn, one node at a time, in the plan's order.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::kube::KubePort;
use crate::plan::NodeState;
use crate::plan::k8s_rollout::Component;
use crate::reconcile::error::TurnError;
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::observe::live_config::contract_version;
use crate::reconcile::observe::versions;
use crate::reconcile::turn::Turn;
use crate::spec::{Cluster, Node, Version};
use crate::talos::config::images::{NamedImages, named_images};
use crate::talos::config::render_documents_with;
use crate::talos::grpc::proto::machine::ApplyMode;

/// How often the wait looks again (at most; a short timeout looks more often).
const POLL: Duration = Duration::from_secs(1);

fn named(images: &NamedImages, component: Component) -> Option<Version> {
    match component {
        Component::ApiServer => images.apiserver,
        Component::ControllerManager => images.controller_manager,
        Component::Scheduler => images.scheduler,
        Component::Proxy => images.proxy,
        Component::Kubelet => images.kubelet,
    }
}

fn with(images: NamedImages, component: Component, to: Version) -> NamedImages {
    let mut out = images;
    let slot = match component {
        Component::ApiServer => &mut out.apiserver,
        Component::ControllerManager => &mut out.controller_manager,
        Component::Scheduler => &mut out.scheduler,
        Component::Proxy => &mut out.proxy,
        Component::Kubelet => &mut out.kubelet,
    };
    *slot = Some(to);
    out
}

impl Turn<'_> {
    pub(super) async fn upgrade_kubernetes(
        &mut self,
        number: u32,
        component: Component,
        to: Version,
    ) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(format!(
                "{component} on {} waits for the Kubernetes API",
                node.name
            )));
        };
        let talos = self.talos_node(IpAddr::V4(node.ip)).await?;
        let running = named_images(&talos.running_config().await?);
        if named(&running, component) != Some(to) {
            let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
            let readiness = kube.node_readiness(&expected).await?;
            if !readiness.all_ready() {
                let mut not = readiness.not_ready.clone();
                not.extend(readiness.missing.iter().cloned());
                return Ok(Flow::Wait(format!(
                    "{component} on {} waits until every node is Ready ({})",
                    node.name,
                    not.join(", ")
                )));
            }
            let images = with(running, component, to).or(cluster.spec.kubernetes.version);
            let version = self.running_contract(cluster).await?;
            let wanted =
                render_documents_with(cluster, node, &self.bundle()?.bundle, version, &images)?
                    .to_yaml();
            let dry = talos
                .apply(wanted.as_bytes(), ApplyMode::Auto, true)
                .await?;
            if dry.mode == ApplyMode::Reboot {
                return Err(TurnError::KubernetesNeedsReboot {
                    node: node.name.clone(),
                    component: component.to_string(),
                });
            }
            talos
                .apply(wanted.as_bytes(), ApplyMode::NoReboot, false)
                .await?;
            self.say(format!(
                "{component} on {}: config applied for {to} without a reboot",
                node.name
            ));
        }
        drop(talos);
        self.wait_component(kube.as_ref(), node, component, to)
            .await?;
        Ok(Flow::Done)
    }

    /// The contract every node understands, from the Talos versions the nodes run now (the
    /// live-config step renders with it too).
    pub(super) async fn running_contract(&self, cluster: &Cluster) -> Result<Version, TurnError> {
        let identity = self.talos_identity()?;
        let all: Vec<&Node> = cluster.nodes.iter().collect();
        let reachable: BTreeMap<u32, NodeState> = all
            .iter()
            .map(|n| (n.number, NodeState::Configured))
            .collect();
        let running =
            versions::running(self.ctx.ports.talos.as_ref(), &identity, &all, &reachable).await;
        Ok(contract_version(cluster, &running))
    }

    async fn wait_component(
        &self,
        kube: &dyn KubePort,
        node: &Node,
        component: Component,
        to: Version,
    ) -> Result<(), TurnError> {
        let within = self.ctx.settings.upgrade_timeout;
        let started = Instant::now();
        let poll = POLL.min(within / 10).max(Duration::from_millis(50));
        loop {
            let last = match component_state(kube, node, component, to).await {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= within {
                return Err(TurnError::KubernetesUnhealthy {
                    node: node.name.clone(),
                    component: component.to_string(),
                    to: to.to_string(),
                    waited: humantime::format_duration(within).to_string(),
                    last,
                });
            }
            // Nothing tells kiln when a kubelet or a static pod has restarted: it looks again.
            crate::systemd::progress();
            tokio::time::sleep(poll).await;
        }
    }
}

/// `None` once `component` runs `to` on `node` and is Ready, else what it still lacks.
async fn component_state(
    kube: &dyn KubePort,
    node: &Node,
    component: Component,
    to: Version,
) -> Result<Option<String>, TurnError> {
    let ready = kube
        .node_readiness(std::slice::from_ref(&node.name))
        .await?;
    if !ready.all_ready() {
        return Ok(Some(format!("{} is not Ready", node.name)));
    }
    match component {
        Component::Kubelet => {
            let versions = kube.kubelet_versions().await?;
            match versions.get(&node.name) {
                Some(v) if *v == to.to_string() => Ok(None),
                Some(v) => Ok(Some(format!("its kubelet reports {v}"))),
                None => Ok(Some("its Node reports no kubelet version".into())),
            }
        }
        // Its DaemonSet moves with the manifests, after the kubelets.
        Component::Proxy => Ok(None),
        _ => {
            let pod = format!("{component}-{}", node.name);
            match kube.pod_image("kube-system", &pod).await? {
                Some((image, true)) if image.ends_with(&format!(":{to}")) => Ok(None),
                Some((image, ready)) => Ok(Some(format!(
                    "its static pod {pod} runs {image}{}",
                    if ready { "" } else { ", not Ready" }
                ))),
                None => Ok(Some(format!("no mirror pod {pod} yet"))),
            }
        }
    }
}

impl Turn<'_> {
    /// The hop's last part, as `talosctl upgrade-k8s` ends (`talos_managed.go`
    /// `PerformManifestsSync`): the bootstrap manifests a control plane renders from the config it
    /// runs (COSI `Manifests`), applied server-side as field manager `talos`.
    pub(super) async fn sync_manifests(&mut self, to: Version) -> StepResult {
        let cluster = self.cluster()?;
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(
                "the manifests wait for the Kubernetes API".to_owned(),
            ));
        };
        let mut last = String::from("no control plane");
        for cp in cluster.control_planes() {
            let objects = match self.talos_node(IpAddr::V4(cp.ip)).await {
                Ok(node) => node.bootstrap_manifests().await,
                Err(e) => {
                    last = format!("{}: {e}", cp.name);
                    continue;
                }
            };
            match objects {
                Ok(objects) if !objects.is_empty() => {
                    let applied = kube.apply_manifests(&objects).await?;
                    self.say(format!(
                        "applied {applied} bootstrap manifest objects of Kubernetes {to} from {}",
                        cp.name
                    ));
                    return Ok(Flow::Done);
                }
                Ok(_) => last = format!("{} renders no manifests", cp.name),
                Err(e) => last = format!("{}: {e}", cp.name),
            }
        }
        Ok(Flow::Wait(format!(
            "no control plane gave its bootstrap manifests ({last})"
        )))
    }
}
