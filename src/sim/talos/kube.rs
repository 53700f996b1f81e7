//! The simulated cluster's Kubernetes API at `<vip>:6443`, once etcd runs: `sim::kubernetes` serves it
//! (version, nodes with Ready conditions, cordon, pods, eviction, Node deletion) with a server
//! certificate from the config's Kubernetes CA and client certificates required from it; this module
//! starts one per bootstrapped cluster and keeps its Nodes in step with the machines: a machine that
//! runs its config registers its Node (as kubelet does), Ready once its stage is running; a Node deleted
//! through the API stays deleted until its machine is configured again.

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

/// Brings every cluster's Nodes in step with its machines (called after each simulated call).
pub fn sync(fleet: &mut Fleet) {
    let mut machines: BTreeMap<String, Vec<(String, Instant, bool, bool)>> = BTreeMap::new();
    for node in fleet.nodes.values() {
        let Some(c) = node.configured() else { continue };
        let Some(name) = c.cfg.hostname.clone() else {
            continue;
        };
        let (stage, _) = super::handlers::stage(fleet, node);
        let cp = c.cfg.machine_type == MachineType::ControlPlane;
        machines
            .entry(c.cfg.cluster_key.clone())
            .or_default()
            .push((name, c.applied_at, stage == "running", cp));
    }
    for (cluster, link) in fleet.kube.iter_mut() {
        let mut state = link.state.lock().expect("kube sim lock");
        let current = machines.remove(cluster).unwrap_or_default();
        for (name, applied_at, ready, cp) in &current {
            let fresh = link.registered.get(name) != Some(applied_at);
            if fresh {
                link.registered.insert(name.clone(), *applied_at);
                let role = if *cp { "control-plane" } else { "worker" };
                state.nodes.insert(
                    name.clone(),
                    SimNode {
                        ready: *ready,
                        unschedulable: false,
                        role: role.into(),
                    },
                );
            } else if let Some(n) = state.nodes.get_mut(name) {
                n.ready = *ready;
            }
        }
        // A machine that no longer runs its config leaves a NotReady Node behind until someone deletes it.
        for (name, n) in state.nodes.iter_mut() {
            if !current.iter().any(|(m, ..)| m == name) {
                n.ready = false;
            }
        }
    }
}
