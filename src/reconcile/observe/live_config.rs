//! The deep look at each configured node's machine config (DESIGN §7 drift, §4 "Apply"): read what the
//! node runs over mTLS (COSI `MachineConfigs`, `talos::grpc::machine_config`), compare it with what
//! kiln renders for the node as documents (`talos::config::compare`), and for a node that differs ask
//! Talos with a dry run whether applying the rendered one would reboot it, so the plan can say so. A
//! dry run changes nothing on the node. A node that cannot be read is left out: unknown is never
//! "differs", so nothing is re-applied on a guess.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::plan::{NodeState, RunningConfig, RunningConfigs};
use crate::spec::{Cluster, Node, Version};
use crate::talos::SecretsBundle;
use crate::talos::config::compare::differing_documents;
use crate::talos::config::images::{NamedImages, named_images};
use crate::talos::config::render::{KubernetesImages, RenderError, render_documents_with};
use crate::talos::grpc::proto::machine::ApplyMode;
use crate::talos::grpc::{ClientIdentity, TalosPort};

/// The config kiln wants `node` to run, for the config contract of `talos_version`. Callers pass
/// `cluster.spec.talos.version` until nodes report the version they run; an upgrade passes the
/// running minor, so a config moves to a new contract only once the node runs it (DESIGN §4).
pub fn rendered(
    cluster: &Cluster,
    node: &Node,
    bundle: &SecretsBundle,
    talos_version: Version,
    running: &str,
) -> Result<String, RenderError> {
    let images = wanted_images(cluster, running);
    Ok(render_documents_with(cluster, node, bundle, talos_version, &images)?.to_yaml())
}

/// The Kubernetes images a node's config is compared and re-applied with: the spec's once the node
/// runs them, otherwise the ones its running config names — a Kubernetes version change goes
/// through `plan::k8s_rollout` one component and one node at a time, never through a re-applied
/// config that would move every component of every node at once.
pub fn wanted_images(cluster: &Cluster, running: &str) -> KubernetesImages {
    let spec = cluster.spec.kubernetes.version;
    let named = named_images(running);
    let images = named.or(spec);
    if images == KubernetesImages::uniform(spec) {
        KubernetesImages::uniform(spec)
    } else {
        images
    }
}

/// The version whose contract the configured nodes' configs are rendered for (see [`rendered`]):
/// during a Talos rollout the lowest running one, until every node runs the spec's minor
/// (`plan::upgrade::config_version`). `running` holds the versions of the nodes that answered.
pub fn contract_version(cluster: &Cluster, running: &BTreeMap<u32, Version>) -> Version {
    crate::plan::upgrade::config_version(cluster.spec.talos.version, running)
}

/// Compares each configured node's running config with the rendered one, side by side.
pub async fn running_configs(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    cluster: &Cluster,
    bundle: &SecretsBundle,
    states: &BTreeMap<u32, NodeState>,
    version: Version,
) -> (RunningConfigs, BTreeMap<u32, NamedImages>) {
    let configured = cluster
        .nodes
        .iter()
        .filter(|n| states.get(&n.number) == Some(&NodeState::Configured));
    let looks = configured.map(|node| async move {
        let seen = look(talos, identity, cluster, node, bundle, version).await;
        (node.number, seen)
    });
    let mut configs = RunningConfigs::new();
    let mut images = BTreeMap::new();
    for (number, seen) in futures::future::join_all(looks).await {
        if let Some((config, named)) = seen {
            configs.insert(number, config);
            images.insert(number, named);
        }
    }
    (configs, images)
}

async fn look(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    cluster: &Cluster,
    node: &Node,
    bundle: &SecretsBundle,
    version: Version,
) -> Option<(RunningConfig, NamedImages)> {
    let client = match talos.connect(IpAddr::V4(node.ip), identity).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(node = %node.name, error = %e, "running config not read");
            return None;
        }
    };
    let running = match client.running_config().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "cannot read the running machine config");
            return None;
        }
    };
    let named = named_images(&running);
    let wanted = match rendered(cluster, node, bundle, version, &running) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "cannot render the machine config to compare");
            return None;
        }
    };
    let documents = match differing_documents(&running, &wanted) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "cannot compare the running machine config");
            return None;
        }
    };
    if documents.is_empty() {
        return Some((RunningConfig::Matches, named));
    }
    let reboot = match client.apply(wanted.as_bytes(), ApplyMode::Auto, true).await {
        Ok(outcome) => Some(outcome.mode == ApplyMode::Reboot),
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "dry run of the rendered machine config failed");
            None
        }
    };
    Some((RunningConfig::Differs { documents, reboot }, named))
}
