//! The simulated cluster's Kubernetes API at `<vip>:6443`, once etcd runs: `sim::kubernetes` serves it
//! (discovery, version, nodes, pods, cordon, eviction with budgets, server-side apply) with a server
//! certificate from the config's Kubernetes CA and client certificates required from it; this module
//! starts one per bootstrapped cluster and keeps its Nodes in step with the machines: a machine that
//! runs its config registers its Node (as kubelet does), Ready once its stage is running, with the
//! kubelet version of its config's kubelet image; `/version` is the API server image's tag; a Node
//! deleted through the API stays deleted until its machine is configured again.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::Shared;
use super::config::MachineType;
use super::fleet::{Fleet, Phase};
use crate::sim::kubernetes::{KubeSimServer, KubeSimState, KubeSimTls, SharedKubeSim, SimNode};

pub const API_PORT: u16 = 6443;

/// One cluster's API server and which machine configuration registered each Node.
pub struct KubeLink {
    pub state: SharedKubeSim,
    pub server: Option<KubeSimServer>,
    /// Node name → when the machine behind it accepted the config that registered it.
    registered: BTreeMap<String, Instant>,
    /// Control plane name → the digest of the config it runs, and what that config says of its
    /// Kubernetes control plane.
    api_servers: BTreeMap<String, (u64, ControlPlaneFacts)>,
    /// Talos's `ManifestApplyController` created the bootstrap manifests once etcd ran.
    manifests_created: bool,
}

fn server_tls(vip: IpAddr, ca_pem: &str, ca_key_pem: &str) -> Result<KubeSimTls, String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("cluster.ca.key: {e}"))?;
    let alg = ca_key.algorithm();
    let issuer =
        Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| format!("cluster.ca.crt: {e}"))?;
    let key = KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
    ])
    .map_err(|e| e.to_string())?;
    params.subject_alt_names.push(SanType::IpAddress(vip));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok(KubeSimTls {
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
        client_ca_pem: ca_pem.to_owned(),
    })
}

/// Starts the API of `cluster` at its VIP unless it runs already. A VIP this machine cannot bind (a
/// real LAN address) is logged and skipped: only loopback clusters get a Kubernetes API.
pub fn ensure_started(shared: &Arc<Shared>, cluster: &str) {
    let mut fleet = shared.fleet.lock().expect("fleet lock");
    if fleet.kube.contains_key(cluster) {
        return;
    }
    let source = fleet.nodes.values().find_map(|n| match &n.phase {
        Phase::Configured(c)
            if c.cfg.cluster_key == cluster && c.cfg.machine_type == MachineType::ControlPlane =>
        {
            Some((
                c.cfg.vip.clone()?,
                c.cfg.k8s_ca_pem.clone()?,
                c.cfg.k8s_ca_key_pem.clone()?,
                c.cfg.kubernetes_version.clone(),
            ))
        }
        _ => None,
    });
    let Some((vip, ca, key, version)) = source else {
        return;
    };
    let Ok(vip) = vip.parse::<IpAddr>() else {
        return;
    };
    let tls = match server_tls(vip, &ca, &key) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "simulated Kubernetes API: no server certificate");
            return;
        }
    };
    let state: SharedKubeSim = Arc::new(Mutex::new(KubeSimState {
        git_version: version.unwrap_or_else(|| "v1.34.1".into()),
        ..KubeSimState::default()
    }));
    fleet.kube.insert(
        cluster.to_owned(),
        KubeLink {
            state: state.clone(),
            server: None,
            registered: BTreeMap::new(),
            api_servers: BTreeMap::new(),
            manifests_created: false,
        },
    );
    sync(&mut fleet);
    drop(fleet);
    let (shared, cluster) = (shared.clone(), cluster.to_owned());
    tokio::spawn(async move {
        let addr = SocketAddr::new(vip, API_PORT);
        match KubeSimServer::start(addr, &tls, state).await {
            Ok(server) => {
                if let Some(link) = shared
                    .fleet
                    .lock()
                    .expect("fleet lock")
                    .kube
                    .get_mut(&cluster)
                {
                    link.server = Some(server);
                }
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "simulated Kubernetes API cannot listen at the VIP")
            }
        }
    });
}

/// What a control plane's config says of its Kubernetes control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ControlPlaneFacts {
    /// The tag of `cluster.apiServer.image`, which its `kube-apiserver` static pod runs.
    api_server_version: Option<String>,
    /// `cluster.allowSchedulingOnControlPlanes`: no `NoSchedule` taint.
    schedulable: bool,
    /// `(component, image)` of each static pod Talos runs from the config; an image the config does
    /// not name is the upstream one at the kubelet's tag.
    static_pods: Vec<(String, String)>,
}

fn control_plane_facts(raw: &[u8], kubelet_version: &str) -> ControlPlaneFacts {
    let docs = super::config::documents(raw).unwrap_or_default();
    let cluster = super::config::v1alpha1(&docs).and_then(|v1| v1.get("cluster"));
    let image_of = |section: &str| {
        cluster
            .and_then(|c| c.get(section))
            .and_then(|s| s.get("image"))
            .and_then(|i| i.as_str())
            .map(str::to_owned)
    };
    let static_pods = [
        ("kube-apiserver", "apiServer"),
        ("kube-controller-manager", "controllerManager"),
        ("kube-scheduler", "scheduler"),
    ]
    .into_iter()
    .map(|(component, section)| {
        let image = image_of(section)
            .unwrap_or_else(|| format!("registry.k8s.io/{component}:{kubelet_version}"));
        (component.to_owned(), image)
    })
    .collect();
    ControlPlaneFacts {
        api_server_version: image_of("apiServer")
            .as_deref()
            .and_then(super::config::image_tag)
            .map(str::to_owned),
        schedulable: cluster
            .and_then(|c| c.get("allowSchedulingOnControlPlanes"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        static_pods,
    }
}

fn config_digest(raw: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut h);
    h.finish()
}

/// What a machine's kubelet reports of itself.
struct Machine {
    name: String,
    applied_at: Instant,
    ready: bool,
    kubelet_version: String,
    ip: String,
    talos_version: String,
    /// `Some` for a control plane, with the digest of the config it was read from.
    control_plane: Option<(u64, ControlPlaneFacts)>,
}

/// Brings every cluster's Nodes in step with its machines (called after each simulated call).
pub fn sync(fleet: &mut Fleet) {
    let mut machines: BTreeMap<String, Vec<Machine>> = BTreeMap::new();
    // Per cluster, the bootstrap manifests of its first running control plane, until created.
    let mut manifests: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for node in fleet.nodes.values() {
        let Some(c) = node.configured() else { continue };
        let Some(name) = c.cfg.hostname.clone() else {
            continue;
        };
        let (stage, _) = super::handlers::stage(fleet, node);
        let control_plane = c.cfg.machine_type == MachineType::ControlPlane;
        let cluster = c.cfg.cluster_key.clone();
        // Parsed once per accepted config, not on every call. Keyed on the config's bytes: a running
        // node given a new config keeps its `applied_at` (its Node survives), but not its images.
        let kubelet_version = c.cfg.kubernetes_version.clone().unwrap_or_default();
        let facts = control_plane.then(|| {
            let digest = config_digest(&c.raw);
            match fleet
                .kube
                .get(&cluster)
                .and_then(|l| l.api_servers.get(&name))
            {
                Some((seen, facts)) if *seen == digest => (digest, facts.clone()),
                _ => (digest, control_plane_facts(&c.raw, &kubelet_version)),
            }
        });
        if control_plane
            && stage == "running"
            && !manifests.contains_key(&cluster)
            && fleet
                .kube
                .get(&cluster)
                .is_some_and(|l| !l.manifests_created)
        {
            manifests.insert(cluster.clone(), super::manifests::objects(node));
        }
        machines.entry(cluster).or_default().push(Machine {
            name,
            applied_at: c.applied_at,
            ready: stage == "running",
            kubelet_version,
            ip: node.addr.ip().to_string(),
            talos_version: node.version.clone(),
            control_plane: facts,
        });
    }
    for (cluster, link) in fleet.kube.iter_mut() {
        let mut state = link.state.lock().expect("kube sim lock");
        let current = machines.remove(cluster).unwrap_or_default();
        // Talos v1.13.9 `internal/app/machined/pkg/controllers/k8s/manifest_apply.go`: once etcd is
        // healthy a control plane creates each bootstrap manifest object that does not exist yet and
        // never updates one that does — which is why `talosctl upgrade-k8s` syncs them itself.
        if let Some(objects) = manifests.remove(cluster) {
            for object in objects {
                // An object that exists already is left as it is.
                let _ = state.create(object);
            }
            link.manifests_created = true;
        }
        for m in &current {
            // A control plane's static pods follow its config, whether or not its kubelet
            // re-registers.
            let mut new_static_pods = false;
            if let Some((digest, facts)) = &m.control_plane {
                let before = link
                    .api_servers
                    .insert(m.name.clone(), (*digest, facts.clone()));
                new_static_pods = before.is_none_or(|(d, _)| d != *digest);
            }
            let fresh = link.registered.get(&m.name) != Some(&m.applied_at);
            if fresh {
                link.registered.insert(m.name.clone(), m.applied_at);
                let role = if m.control_plane.is_some() {
                    "control-plane"
                } else {
                    "worker"
                };
                // A kubelet with a new config re-registers its Node; a cordon survives that, as the
                // Node object (and its `spec`) outlives a kubelet restart.
                let unschedulable = state.nodes.get(&m.name).is_some_and(|n| n.unschedulable);
                let annotations = state
                    .nodes
                    .get(&m.name)
                    .map(|n| n.annotations.clone())
                    .unwrap_or_default();
                let created = state
                    .nodes
                    .get(&m.name)
                    .map_or_else(std::time::SystemTime::now, |n| n.created);
                state.put_node(
                    &m.name,
                    SimNode {
                        ready: m.ready,
                        unschedulable,
                        annotations,
                        role: role.into(),
                        control_plane_schedulable: m
                            .control_plane
                            .as_ref()
                            .is_some_and(|(_, f)| f.schedulable),
                        kubelet_version: m.kubelet_version.clone(),
                        internal_ip: Some(m.ip.clone()),
                        os_image: format!("Talos ({})", m.talos_version),
                        created,
                        resource_version: 0,
                    },
                );
                // Its kubelet runs the static pods the new config describes.
                if let Some((_, facts)) = &m.control_plane {
                    state.put_static_pods(&m.name, &facts.static_pods);
                }
            } else {
                if new_static_pods && let Some((_, facts)) = &m.control_plane {
                    state.put_static_pods(&m.name, &facts.static_pods);
                }
                let stale = state.nodes.get(&m.name).is_some_and(|n| {
                    n.kubelet_version != m.kubelet_version
                        || n.os_image != format!("Talos ({})", m.talos_version)
                });
                if stale && let Some(n) = state.nodes.get(&m.name).cloned() {
                    state.put_node(
                        &m.name,
                        SimNode {
                            kubelet_version: m.kubelet_version.clone(),
                            os_image: format!("Talos ({})", m.talos_version),
                            ..n
                        },
                    );
                }
                state.set_node_ready(&m.name, m.ready);
            }
        }
        // A machine that no longer runs its config leaves a NotReady Node behind until someone deletes it.
        let gone: Vec<String> = state
            .nodes
            .keys()
            .filter(|name| !current.iter().any(|m| &m.name == *name))
            .cloned()
            .collect();
        for name in gone {
            state.set_node_ready(&name, false);
        }
        // `/version` answers from the API server behind the VIP: the first running control plane's
        // (by name), whose `kube-apiserver` runs the image its config names.
        if let Some(v) = current
            .iter()
            .filter(|m| m.control_plane.is_some() && m.ready)
            .min_by(|a, b| a.name.cmp(&b.name))
            .and_then(|m| {
                m.control_plane
                    .as_ref()
                    .and_then(|(_, f)| f.api_server_version.clone())
                    .or_else(|| Some(m.kubelet_version.clone()))
            })
            .filter(|v| !v.is_empty())
        {
            state.git_version = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_config_names_its_api_server_and_whether_it_takes_workloads() {
        let raw = b"version: v1alpha1\nmachine:\n  type: controlplane\ncluster:\n  \
                    allowSchedulingOnControlPlanes: true\n  apiServer:\n    \
                    image: registry.k8s.io/kube-apiserver:v1.35.0\n";
        let facts = control_plane_facts(raw, "v1.34.1");
        assert_eq!(facts.api_server_version.as_deref(), Some("v1.35.0"));
        assert!(facts.schedulable);
        assert_eq!(
            facts.static_pods,
            [
                ("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.35.0"),
                (
                    "kube-controller-manager",
                    "registry.k8s.io/kube-controller-manager:v1.34.1"
                ),
                ("kube-scheduler", "registry.k8s.io/kube-scheduler:v1.34.1"),
            ]
            .map(|(c, i)| (c.to_owned(), i.to_owned()))
        );
        let raw = b"version: v1alpha1\nmachine:\n  type: controlplane\ncluster: {}\n";
        let facts = control_plane_facts(raw, "v1.34.1");
        assert_eq!((facts.api_server_version, facts.schedulable), (None, false));
    }
}
