//! What kiln knows about each app: its namespace, sync wave, the host access it needs, the network
//! openings its pods need, and the Helm values kiln sizes for the cluster. Pure data and functions.

use serde_json::{Value, json};

use crate::spec::{App, Cluster};

/// A TCP or UDP port (or a range, `port..=end_port`) in a NetworkPolicy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Port {
    pub protocol: &'static str,
    pub port: u16,
    /// Inclusive end of a range (NetworkPolicy `endPort`).
    pub end_port: Option<u16>,
}

const fn tcp(port: u16) -> Port {
    Port {
        protocol: "TCP",
        port,
        end_port: None,
    }
}
const fn udp(port: u16) -> Port {
    Port {
        protocol: "UDP",
        port,
        end_port: None,
    }
}
const fn tcp_range(port: u16, end: u16) -> Port {
    Port {
        protocol: "TCP",
        port,
        end_port: Some(end),
    }
}

/// The traffic an app's pods need beyond the base set every namespace gets (same-namespace traffic,
/// DNS, the Kubernetes API, scraping from `monitoring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Openings {
    /// Ports reachable from anywhere: admission webhooks (called by the API server on the host
    /// network) and the traffic a load balancer brings in.
    pub ingress_from_anywhere: &'static [Port],
    /// Ports the pods may reach anywhere (ACME, Vault, cloud APIs, backup targets).
    pub egress_to_anywhere: &'static [Port],
    /// Any port on pods of the cluster: an ingress controller forwards to every backend.
    pub egress_to_pods: bool,
    /// Everything: Prometheus scrapes node and pod endpoints on arbitrary ports.
    pub egress_all: bool,
}

/// The static facts of one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub namespace: &'static str,
    /// Argo CD sync wave: CRD providers first (metallb, cert-manager, external-secrets), then the rest.
    pub wave: i32,
    /// Needs PodSecurity `privileged` (host network, host paths, privileged containers); Talos
    /// enforces `baseline` by default.
    pub privileged: bool,
    /// Its CRDs exceed the 256 KiB last-applied annotation of client-side apply.
    pub server_side_apply: bool,
    pub openings: Openings,
    /// ResourceQuota at sizing factor 1; scaled with the cluster like the values.
    pub quota: Quota,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests_cpu_m: u32,
    pub requests_memory_mi: u32,
    pub limits_memory_mi: u32,
    pub pods: u32,
}

const HTTP_OUT: &[Port] = &[tcp(80), tcp(443)];

pub fn profile(app: App) -> Profile {
    match app {
        App::Metallb => Profile {
            namespace: "metallb-system",
            wave: 0,
            privileged: true,
            server_side_apply: false,
            openings: Openings {
                // controller webhook; speaker memberlist (the speaker itself is on the host network,
                // where policies do not apply, but its peers' traffic may be seen by pod rules).
                ingress_from_anywhere: const { &[tcp(9443), tcp(7946), udp(7946)] },
                egress_to_anywhere: const { &[tcp(7946), udp(7946)] },
                egress_to_pods: false,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 500,
                requests_memory_mi: 512,
                limits_memory_mi: 1024,
                pods: 20,
            },
        },
        App::CertManager => Profile {
            namespace: "cert-manager",
            wave: 1,
            privileged: false,
            server_side_apply: false,
            openings: Openings {
                ingress_from_anywhere: const { &[tcp(10250)] },
                // ACME servers, plus DNS-01 self checks against public resolvers.
                egress_to_anywhere: const { &[tcp(80), tcp(443), tcp(53), udp(53)] },
                egress_to_pods: false,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 500,
                requests_memory_mi: 512,
                limits_memory_mi: 1024,
                pods: 10,
            },
        },
        App::ExternalSecrets => Profile {
            namespace: "external-secrets",
            wave: 2,
            privileged: false,
            server_side_apply: false,
            openings: Openings {
                ingress_from_anywhere: const { &[tcp(10250)] },
                // Vault/OpenBao (8200) and the cloud providers' https APIs.
                egress_to_anywhere: const { &[tcp(443), tcp(8200)] },
                egress_to_pods: false,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 500,
                requests_memory_mi: 512,
                limits_memory_mi: 1024,
                pods: 10,
            },
        },
        App::IngressNginx => Profile {
            namespace: "ingress-nginx",
            wave: 3,
            privileged: false,
            server_side_apply: false,
            openings: Openings {
                ingress_from_anywhere: const { &[tcp(80), tcp(443), tcp(8443)] },
                egress_to_anywhere: &[],
                egress_to_pods: true,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 1000,
                requests_memory_mi: 1024,
                limits_memory_mi: 2048,
                pods: 10,
            },
        },
        App::Traefik => Profile {
            namespace: "traefik",
            wave: 3,
            privileged: false,
            server_side_apply: false,
            openings: Openings {
                ingress_from_anywhere: const { &[tcp(8000), tcp(8443)] },
                egress_to_anywhere: &[],
                egress_to_pods: true,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 1000,
                requests_memory_mi: 1024,
                limits_memory_mi: 2048,
                pods: 10,
            },
        },
        App::Longhorn => Profile {
            namespace: "longhorn-system",
            wave: 3,
            privileged: true,
            server_side_apply: false,
            openings: Openings {
                // manager API, admission and conversion webhooks, recovery backend.
                ingress_from_anywhere: const { &[tcp_range(9500, 9503)] },
                // Backup targets (S3 over https, NFS is on the host).
                egress_to_anywhere: HTTP_OUT,
                egress_to_pods: false,
                egress_all: false,
            },
            quota: Quota {
                requests_cpu_m: 4000,
                requests_memory_mi: 4096,
                limits_memory_mi: 8192,
                pods: 100,
            },
        },
        App::Monitoring => Profile {
            namespace: "monitoring",
            wave: 3,
            privileged: true,
            server_side_apply: true,
            openings: Openings {
                // prometheus-operator's admission webhook.
                ingress_from_anywhere: const { &[tcp(10250)] },
                egress_to_anywhere: &[],
                egress_to_pods: false,
                egress_all: true,
            },
            quota: Quota {
                requests_cpu_m: 2000,
                requests_memory_mi: 4096,
                limits_memory_mi: 8192,
                pods: 50,
            },
        },
    }
}

/// How much bigger than the smallest setting an app is sized: 1 for nodes of up to 8 GiB, 2 up to
/// 16 GiB, at most 4. Apps run on workers when there are any, else on the control planes.
pub fn sizing_factor(cluster: &Cluster) -> u32 {
    let memory = cluster
        .spec
        .workers
        .as_ref()
        .map(|w| w.resources.memory_gib)
        .unwrap_or(cluster.spec.control_plane.resources.memory_gib);
    memory.div_ceil(8).clamp(1, 4)
}

/// Nodes that run workloads (workers, else the control planes).
pub fn schedulable_nodes(cluster: &Cluster) -> usize {
    match cluster.workers().count() {
        0 => cluster.nodes.len(),
        n => n,
    }
}

/// Requests and a memory limit; no CPU limit (throttling hurts more than it protects).
fn res(cpu_m: u32, memory_mi: u32, limit_mi: u32, factor: u32) -> Value {
    json!({
        "requests": {"cpu": format!("{}m", cpu_m * factor), "memory": format!("{}Mi", memory_mi * factor)},
        "limits": {"memory": format!("{}Mi", limit_mi * factor)},
    })
}

/// kiln's values for `app` on `cluster`, before the user's `spec.apps.<app>.values` are merged in.
pub fn kiln_values(app: App, cluster: &Cluster) -> Value {
    let f = sizing_factor(cluster);
    let monitored = cluster.spec.app_enabled(App::Monitoring);
    let replicas = schedulable_nodes(cluster).min(3);
    match app {
        App::CertManager => json!({
            "crds": {"enabled": true, "keep": true},
            "resources": res(25, 64, 256, f),
            "webhook": {"resources": res(10, 32, 128, f)},
            "cainjector": {"resources": res(25, 64, 256, f)},
            "startupapicheck": {"resources": res(10, 32, 64, 1)},
            "prometheus": {"enabled": true, "servicemonitor": {"enabled": monitored}},
        }),
        App::ExternalSecrets => json!({
            "installCRDs": true,
            "resources": res(25, 64, 256, f),
            "webhook": {"resources": res(10, 32, 128, f)},
            "certController": {"resources": res(10, 64, 256, f)},
            "serviceMonitor": {"enabled": monitored},
            "metrics": {"service": {"enabled": monitored}},
        }),
        App::IngressNginx => json!({
            "controller": {
                "replicaCount": replicas.max(1),
                "resources": res(100, 128, 512, f),
                "metrics": {"enabled": monitored, "serviceMonitor": {"enabled": monitored}},
                "admissionWebhooks": {"patch": {"resources": res(10, 32, 64, 1)}},
            },
        }),
        App::Traefik => json!({
            "deployment": {"replicas": replicas.max(1)},
            "resources": res(100, 128, 512, f),
        }),
        App::Metallb => json!({
            "controller": {"resources": res(25, 64, 128, f)},
            "speaker": {"resources": res(25, 64, 128, f)},
        }),
        App::Longhorn => json!({
            "persistence": {"defaultClassReplicaCount": replicas.max(1)},
            "defaultSettings": {"defaultReplicaCount": replicas.max(1)},
            "csi": {
                "attacherReplicaCount": replicas.max(1),
                "provisionerReplicaCount": replicas.max(1),
                "resizerReplicaCount": replicas.max(1),
                "snapshotterReplicaCount": replicas.max(1),
            },
            "longhornUI": {"replicas": 1},
        }),
        App::Monitoring => json!({
            "prometheus": {"prometheusSpec": {
                "retention": "10d",
                "resources": res(250, 1024, 2048, f),
                // Pick up the ServiceMonitors the other apps create, not only the chart's own.
                "serviceMonitorSelectorNilUsesHelmValues": false,
                "podMonitorSelectorNilUsesHelmValues": false,
            }},
            "alertmanager": {"alertmanagerSpec": {"resources": res(10, 64, 128, f)}},
            "grafana": {"resources": res(50, 128, 256, f)},
            "prometheusOperator": {"resources": res(50, 128, 256, f)},
            "kube-state-metrics": {"resources": res(25, 64, 256, f)},
            "prometheus-node-exporter": {"resources": res(10, 32, 64, 1)},
        }),
    }
}

/// Whether the app's manifests include objects of a CRD another app installs (ServiceMonitors from
/// monitoring) or of its own CRDs in the same sync (metallb's pool): Argo CD's dry run would fail.
pub fn skips_dry_run_on_missing(app: App, cluster: &Cluster) -> bool {
    let monitored = cluster.spec.app_enabled(App::Monitoring);
    match app {
        App::Metallb => true,
        App::CertManager | App::ExternalSecrets | App::IngressNginx => monitored,
        App::Longhorn | App::Monitoring | App::Traefik => false,
    }
}
