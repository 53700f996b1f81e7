//! From the ports' answers to the planner's `ObservedCluster` (pure mapping of the Proxmox listing) and
//! the deep observation of one cluster (secret store markers, Talos node states, Kubernetes health),
//! which only runs when the cheap one cannot vouch for the cluster (DESIGN.md §7 "Observation cost").

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::error::TurnError;
use super::ports::Ports;
use crate::kube::{KubeAccess, KubePort};
use crate::plan::{self, Conflict, NodeState, ObservedCluster, ObservedVm, Ownership, Power};
use crate::proxmox::{self, Inventory, PowerState};
use crate::redact::Secret;
use crate::secrets::{ReadOutcome, SecretPaths, SecretStore, bundle_keys, meta_keys};
use crate::spec::{Cluster, Node, Vmid};
use crate::talos::grpc::{ClientIdentity, TalosPort};
use crate::talos::{SecretsBundle, credentials};

pub mod live_config;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn power(p: PowerState) -> Power {
    match p {
        PowerState::Running => Power::Running,
        PowerState::Stopped => Power::Stopped,
        PowerState::Paused | PowerState::Unknown => Power::Unknown,
    }
}

/// kiln's VMs of cluster `name` (and its half-made ones) from the listing, plus anything at a VMID the
/// cluster wants that is not its VM. `wanted` are the VMIDs of the nodes the intent lists (empty for a
/// cluster being decommissioned: nothing there is a conflict, it just is not touched).
pub fn from_listing(inventory: &Inventory, name: &str, wanted: &[(u32, Vmid)]) -> ObservedCluster {
    let mut out = ObservedCluster::default();
    let prefix = format!("{name}-");
    for vm in inventory.cluster_candidates(name) {
        let (r, ownership) = match &vm.ownership {
            proxmox::Ownership::Kiln(r) if r.cluster == name => (r, Ownership::Owned),
            proxmox::Ownership::HalfMade(r) if r.cluster == name => (r, Ownership::HalfMade),
            proxmox::Ownership::Mismatched { reason } if vm.name.starts_with(&prefix) => {
                if let Ok(vmid) = Vmid::new(u64::from(vm.vmid)) {
                    out.conflicts.push(Conflict {
                        vmid,
                        name: Some(vm.name.clone()),
                        reason: reason.clone(),
                    });
                }
                continue;
            }
            _ => continue,
        };
        let Ok(vmid) = Vmid::new(u64::from(vm.vmid)) else {
            continue;
        };
        out.vms.insert(
            r.number,
            ObservedVm {
                number: r.number,
                role: r.role,
                vmid,
                name: vm.name.clone(),
                pve_node: vm.pve_node.clone(),
                power: power(vm.status),
                ownership,
                cores: vm.size.cores.filter(|c| *c > 0),
                memory_mib: vm.size.memory_bytes.filter(|m| *m > 0).map(|m| m / MIB),
                disk_gib: vm.size.disk_bytes.filter(|d| *d > 0).map(|d| d / GIB),
                pending_changes: false,
                lock: vm.lock.clone(),
            },
        );
    }
    for &(number, vmid) in wanted {
        let Some(vm) = inventory.get(vmid.get()) else {
            continue;
        };
        let ours = out
            .vms
            .get(&number)
            .is_some_and(|o| o.vmid == vmid && o.name == vm.name);
        if ours || out.conflicts.iter().any(|c| c.vmid == vmid) {
            continue;
        }
        let reason = match &vm.ownership {
            proxmox::Ownership::Foreign { reason } | proxmox::Ownership::Mismatched { reason } => {
                reason.clone()
            }
            proxmox::Ownership::Kiln(r) | proxmox::Ownership::HalfMade(r) => format!(
                "it is node {} of cluster {}, not this cluster's node {number}",
                r.number, r.cluster
            ),
        };
        out.conflicts.push(Conflict {
            vmid,
            name: Some(vm.name.clone()),
            reason,
        });
    }
    out
}

/// The listing shows exactly the VMs the intent asks for, each kiln's and running, and the planner
/// would do nothing to any of them (`plan::vm_matches`: size, disk, lock): then a cluster whose intent
/// did not change needs no deeper look this cycle.
pub fn matches_intent(observed: &ObservedCluster, cluster: &Cluster) -> bool {
    observed.conflicts.is_empty()
        && observed.vms.len() == cluster.nodes.len()
        && cluster.nodes.iter().all(|n| {
            observed.vms.get(&n.number).is_some_and(|vm| {
                vm.vmid == n.vmid
                    && vm.ownership == Ownership::Owned
                    && vm.power == Power::Running
                    && plan::vm_matches(&cluster.name, n, vm)
            })
        })
}

/// The secrets bundle as read from the store, with the cluster incarnation's uid.
#[derive(Clone)]
pub struct LoadedBundle {
    pub bundle: SecretsBundle,
    pub cluster_uid: String,
}

/// What the secret store says about a cluster, and the bundle when it is readable.
pub struct SecretsView {
    pub observed: plan::SecretsObserved,
    pub bundle: Option<LoadedBundle>,
    /// The bundle is there but its custom metadata lacks the cluster-uid mirror: the writer died
    /// between the value and its metadata (two requests in KV v2). The caller repairs it.
    pub uid_mirror_missing: bool,
    /// The stored credentials' dates, for the status.
    pub credentials: super::renewal::CredentialTimes,
}

/// Reads the three paths (values and metadata). A read error is an error of the cycle (the store is
/// down), never "absent".
pub async fn secrets(
    store: &dyn SecretStore,
    paths: &SecretPaths,
) -> Result<SecretsView, crate::secrets::SecretsError> {
    let bundle_read = store.read(&paths.secrets).await?;
    let kubeconfig = store.read(&paths.kubeconfig).await?;
    let talos = store.read(&paths.talos).await?;
    let decommissioned = [&bundle_read, &kubeconfig, &talos]
        .iter()
        .any(|r| r.decommissioned_at().is_some());
    let bootstrapped = bundle_read
        .custom_metadata()
        .is_some_and(|m| m.contains_key(meta_keys::BOOTSTRAPPED_AT));
    let (state, bundle) = match &bundle_read {
        ReadOutcome::Absent => (plan::BundleState::Absent, None),
        ReadOutcome::DeletedOrDestroyed { state, .. } => (
            plan::BundleState::Unreadable(format!("the current version is {state:?}")),
            None,
        ),
        ReadOutcome::Present(stored) => match parse_bundle(stored) {
            Ok(b) => (plan::BundleState::Present, Some(b)),
            Err(why) => (plan::BundleState::Unreadable(why), None),
        },
    };
    let (stored_credentials, credentials) =
        super::renewal::observe(&kubeconfig, &talos, time::OffsetDateTime::now_utc());
    let uid_mirror_missing = bundle.is_some()
        && bundle_read
            .custom_metadata()
            .is_none_or(|m| !m.contains_key(meta_keys::CLUSTER_UID));
    Ok(SecretsView {
        uid_mirror_missing,
        credentials,
        observed: plan::SecretsObserved {
            bundle: state,
            bootstrapped,
            kubeconfig_stored: !kubeconfig.is_absent(),
            talosconfig_stored: !talos.is_absent(),
            decommissioned,
            credentials: stored_credentials,
        },
        bundle,
    })
}

pub fn parse_bundle(stored: &crate::secrets::Stored) -> Result<LoadedBundle, String> {
    let yaml = stored
        .data
        .get(bundle_keys::BUNDLE)
        .ok_or_else(|| format!("no `{}` key", bundle_keys::BUNDLE))?;
    let bundle = SecretsBundle::from_yaml(yaml.expose()).map_err(|e| e.to_string())?;
    let cluster_uid = stored
        .data
        .get(bundle_keys::CLUSTER_UID)
        .map(|s| s.expose().to_owned())
        .or_else(|| stored.custom_metadata.get(meta_keys::CLUSTER_UID).cloned())
        .ok_or_else(|| format!("no `{}`", bundle_keys::CLUSTER_UID))?;
    Ok(LoadedBundle {
        bundle,
        cluster_uid,
    })
}

/// Node states for the nodes whose VMs run, with the Talos stage for the status report.
pub async fn talos_states(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    nodes: &[&Node],
) -> BTreeMap<u32, (NodeState, String)> {
    let checks = nodes.iter().map(|n| async move {
        let s = talos.node_state(IpAddr::V4(n.ip), identity).await;
        (n.number, classify(&s))
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .collect()
}

/// The planner's three states, and the stage to show.
pub fn classify(s: &crate::talos::grpc::NodeState) -> (NodeState, String) {
    use crate::talos::grpc::NodeState as T;
    match s {
        T::Configured(m) => (NodeState::Configured, m.stage.as_str().to_owned()),
        T::Maintenance => (NodeState::Maintenance, "maintenance".to_owned()),
        T::Booting { .. } => (NodeState::Unreachable, "booting".to_owned()),
        T::Unreachable { .. } => (NodeState::Unreachable, "unreachable".to_owned()),
    }
}

/// How far to look at a cluster (DESIGN.md §7 "Observation cost").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The Proxmox listing only.
    Listing,
    /// Also the secret store, the Talos state of every running VM of kiln's, and Kubernetes health
    /// once etcd was bootstrapped.
    Deep,
}

/// What one look at a cluster found.
pub struct Observation {
    pub observed: ObservedCluster,
    /// The bundle, when the look went deep and the store returned it.
    pub bundle: Option<LoadedBundle>,
    /// The Talos stage of each node asked, for the status.
    pub stages: BTreeMap<u32, String>,
    /// See `SecretsView::uid_mirror_missing`: a writer (the worker) repairs it; a preview does not.
    pub uid_mirror_missing: bool,
    /// The stored credentials' dates when the look went deep (empty otherwise).
    pub credentials: super::renewal::CredentialTimes,
}

/// The nodes whose Talos API a deep look asks: only kiln's own running VMs. A VM that is not kiln's
/// (or a half-made one) is never contacted (§3), whatever answers at its address.
pub fn talos_candidates<'c>(observed: &ObservedCluster, cluster: &'c Cluster) -> Vec<&'c Node> {
    cluster
        .nodes
        .iter()
        .filter(|n| {
            observed.vms.get(&n.number).is_some_and(|vm| {
                vm.vmid == n.vmid && vm.power == Power::Running && vm.ownership == Ownership::Owned
            })
        })
        .collect()
}

/// The cheap look: the Proxmox listing only (no I/O).
pub fn listing(inventory: &Inventory, cluster: &Cluster) -> Observation {
    let wanted: Vec<(u32, Vmid)> = cluster.nodes.iter().map(|n| (n.number, n.vmid)).collect();
    Observation {
        observed: from_listing(inventory, cluster.name.as_str(), &wanted),
        bundle: None,
        stages: BTreeMap::new(),
        uid_mirror_missing: false,
        credentials: Default::default(),
    }
}

/// The one observation of a cluster with a valid file, for the worker and for `kiln plan`. Only reads.
/// An error means the cluster cannot be judged (the store is down): nothing is planned from a
/// partial view.
pub async fn cluster(
    ports: &Ports,
    inventory: &Inventory,
    paths: &SecretPaths,
    cluster: &Cluster,
    depth: Depth,
) -> Result<Observation, TurnError> {
    let mut out = listing(inventory, cluster);
    if depth == Depth::Listing {
        return Ok(out);
    }
    let view = secrets(ports.secrets.as_ref(), paths).await?;
    let bootstrapped = view.observed.bootstrapped;
    out.observed.secrets = Some(view.observed);
    out.uid_mirror_missing = view.uid_mirror_missing;
    out.credentials = view.credentials;
    out.bundle = view.bundle;
    let Some(loaded) = &out.bundle else {
        return Ok(out);
    };
    let identity = talos_identity(&loaded.bundle)?;
    let running = talos_candidates(&out.observed, cluster);
    let states = talos_states(ports.talos.as_ref(), &identity, &running).await;
    let planned: BTreeMap<u32, NodeState> = states.iter().map(|(n, (s, _))| (*n, *s)).collect();
    let mut seen = plan::upgrade::VersionsObserved {
        running: versions::running(ports.talos.as_ref(), &identity, &running, &planned).await,
        ..Default::default()
    };
    // Configs are compared in the contract every node understands: the spec's once every node
    // runs its minor, the lowest running version's meanwhile (DESIGN §4).
    let version = live_config::contract_version(cluster, &seen.running);
    let configs = live_config::running_configs(
        ports.talos.as_ref(),
        &identity,
        cluster,
        &loaded.bundle,
        &planned,
        version,
    );
    let (configs, images) = configs.await;
    out.observed.running_configs = Some(configs);
    out.observed.kubernetes = Some(plan::k8s_rollout::KubernetesObserved {
        running: images
            .into_iter()
            .map(|(n, i)| {
                let running = plan::k8s_rollout::Running {
                    apiserver: i.apiserver,
                    controller_manager: i.controller_manager,
                    scheduler: i.scheduler,
                    proxy: i.proxy,
                    kubelet: i.kubelet,
                };
                (n, running)
            })
            .collect(),
        manifests_current: None,
    });
    out.observed.nodes = Some(planned);
    out.stages = states.into_iter().map(|(n, (_, st))| (n, st)).collect();
    if bootstrapped {
        let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let kube = kube_api(ports, cluster, &loaded.bundle).await;
        let readiness = match &kube {
            Some(k) => k.node_readiness(&expected).await.ok(),
            None => None,
        };
        let ready = readiness.as_ref().is_some_and(|r| r.all_ready());
        out.observed.cordoned_by_kiln = readiness.map(|r| r.cordoned_by_kiln).unwrap_or_default();
        // Whether kube-proxy's DaemonSet runs what the control planes' configs name: after a
        // Kubernetes hop the bootstrap manifests are synced last (`plan::k8s_rollout`).
        if let (Some(k), Some(seen)) = (&kube, out.observed.kubernetes.as_mut()) {
            let mut proxies = cluster
                .control_planes()
                .filter_map(|n| seen.running.get(&n.number))
                .map(|r| r.proxy);
            let wanted = match proxies.next() {
                Some(Some(first)) if proxies.all(|p| p == Some(first)) => Some(first),
                _ => None,
            };
            if let Some(want) = wanted
                && let Ok(Some(image)) = k
                    .workload_image("DaemonSet", "kube-system", "kube-proxy")
                    .await
            {
                seen.manifests_current = Some(image.ends_with(&format!(":{want}")));
            }
        }
        let cps: Vec<&Node> = running
            .iter()
            .copied()
            .filter(|n| n.role == crate::spec::Role::ControlPlane)
            .collect();
        let states = out.observed.nodes.as_ref().expect("set above");
        seen.etcd_members =
            versions::etcd_members(ports.talos.as_ref(), &identity, &cps, states).await;
        seen.nodes_ready = Some(ready);
        // A node on another Talos than the spec's is never Ready (DESIGN §4).
        let target = cluster.spec.talos.version;
        // Nor is a node whose config names another Kubernetes than the spec's (issue 26).
        let k8s = cluster.spec.kubernetes.version;
        let k8s_at_spec = out.observed.kubernetes.as_ref().is_none_or(|k| {
            k.running.values().all(|r| {
                plan::k8s_rollout::Component::ORDER
                    .iter()
                    .all(|c| r.get(*c).is_none_or(|v| v == k8s))
            })
        });
        out.observed.healthy =
            Some(ready && k8s_at_spec && seen.running.values().all(|v| *v == target));
    }
    out.observed.versions = Some(seen);
    Ok(out)
}

/// The observation of a cluster whose file is gone: its VMs in the listing (none is a conflict: it
/// is only not touched) and its secrets. The bundle's uid comes back for the VMs' identities.
pub async fn leaving(
    ports: &Ports,
    inventory: &Inventory,
    paths: &SecretPaths,
    name: &str,
) -> Result<(ObservedCluster, Option<String>), TurnError> {
    let mut observed = from_listing(inventory, name, &[]);
    let view = secrets(ports.secrets.as_ref(), paths).await?;
    observed.secrets = Some(view.observed);
    Ok((observed, view.bundle.map(|b| b.cluster_uid)))
}

/// kiln's short-lived `os:admin` identity for the cluster's Talos API, minted from the bundle.
pub fn talos_identity(bundle: &SecretsBundle) -> Result<ClientIdentity, TurnError> {
    let issued = credentials::kiln_talos_identity(bundle)?;
    Ok(ClientIdentity::from_minted(
        bundle.os_ca.cert_pem(),
        &issued,
    ))
}

fn kube_access(bundle: &SecretsBundle, server: String) -> Result<KubeAccess, TurnError> {
    let issued = credentials::kiln_kubernetes_identity(bundle)?;
    Ok(KubeAccess {
        server,
        ca_pem: bundle.k8s_ca.cert_pem().to_owned(),
        client_cert_pem: issued.cert.cert_pem.clone(),
        client_key_pem: Secret::new(issued.cert.key_pem.expose()),
    })
}

/// The cluster's API: the VIP once it answers, before that the first control plane (§4).
pub async fn kube_api(
    ports: &Ports,
    cluster: &Cluster,
    bundle: &SecretsBundle,
) -> Option<Box<dyn KubePort>> {
    let mut servers = vec![cluster.endpoint()];
    if let Some(cp) = cluster.control_planes().next() {
        servers.push(format!("https://{}:6443", cp.ip));
    }
    for server in servers {
        let access = kube_access(bundle, server.clone()).ok()?;
        match ports.kube.connect(&access).await {
            Ok(client) => match client.server_version().await {
                Ok(_) => return Some(client),
                Err(e) => tracing::debug!(%server, error = %e, "Kubernetes API not answering"),
            },
            Err(e) => tracing::debug!(%server, error = %e, "cannot connect to Kubernetes API"),
        }
    }
    None
}

pub mod versions;

#[cfg(test)]
mod tests;
