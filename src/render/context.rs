//! The data templates see: derived once per cluster and per app, in plain serialisable structs, so a
//! template override can use every field and a misspelt one is an error (strict undefined).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::apps::{self, Port};
use super::charts;
use super::settings::RenderSettings;
use crate::spec::{App, Cluster};

#[derive(Debug, Serialize)]
pub struct ClusterCtx<'a> {
    pub name: &'a str,
    /// The intent file, as named in headers: `clusters/<name>.yaml`.
    pub source: String,
    pub labels: &'a BTreeMap<String, String>,
    pub endpoint: String,
    pub vip: String,
    /// The node network (`gateway/prefixLength`, truncated): where the API server listens.
    pub node_network: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub lb_range: Option<LbRange>,
    pub kubernetes_version: String,
    pub talos_version: String,
    pub control_planes: usize,
    pub workers: usize,
    pub nodes: Vec<NodeCtx<'a>>,
    /// Enabled apps, in `App::ALL` order.
    pub apps: Vec<&'static str>,
    pub monitoring: bool,
    /// Vault KV v2 path (below the mount) of the cluster's kubeconfig keys.
    pub kubeconfig_key: String,
}

#[derive(Debug, Serialize)]
pub struct LbRange {
    pub first: String,
    pub last: String,
}

#[derive(Debug, Serialize)]
pub struct NodeCtx<'a> {
    pub name: &'a str,
    pub role: &'static str,
    pub ip: String,
    pub vmid: u32,
}

impl<'a> ClusterCtx<'a> {
    pub fn new(cluster: &'a Cluster, settings: &RenderSettings) -> Self {
        let net = &cluster.spec.network;
        let node_network = Ipv4Net::new(net.gateway, net.prefix_length)
            .map(|n| n.trunc().to_string())
            // prefixLength is validated to 1..=32 before a Cluster exists; /32 is the safe fallback.
            .unwrap_or_else(|_| format!("{}/32", net.gateway));
        let name = cluster.name.as_str();
        Self {
            name,
            source: format!("{}/{name}.yaml", settings.clusters_dir),
            labels: &cluster.labels,
            endpoint: cluster.endpoint(),
            vip: net.vip.to_string(),
            node_network,
            pod_cidr: net.pod_cidr.to_string(),
            service_cidr: net.service_cidr.to_string(),
            lb_range: net.lb_range.as_ref().map(|r| LbRange {
                first: r.first.to_string(),
                last: r.last.to_string(),
            }),
            kubernetes_version: cluster.spec.kubernetes.version.to_string(),
            talos_version: cluster.spec.talos.version.to_string(),
            control_planes: cluster.control_planes().count(),
            workers: cluster.workers().count(),
            nodes: cluster
                .nodes
                .iter()
                .map(|n| NodeCtx {
                    name: &n.name,
                    role: n.role.as_str(),
                    ip: n.ip.to_string(),
                    vmid: n.vmid.get(),
                })
                .collect(),
            apps: cluster
                .spec
                .enabled_apps()
                .into_iter()
                .map(App::name)
                .collect(),
            monitoring: cluster.spec.app_enabled(App::Monitoring),
            kubeconfig_key: format!("{}/{name}/kubeconfig", settings.secrets_prefix),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AppCtx {
    pub name: &'static str,
    /// The Application's name: `<cluster>-<app>`.
    pub application: String,
    pub namespace: &'static str,
    pub wave: i32,
    pub privileged: bool,
    pub server_side_apply: bool,
    pub skip_dry_run_on_missing_resource: bool,
    pub chart: ChartCtx,
    /// Repository paths (what `$values/…` and `path:` name).
    pub values_path: String,
    pub extra_path: String,
    pub ingress_from_anywhere: &'static [Port],
    pub egress_to_anywhere: &'static [Port],
    pub egress_to_pods: bool,
    pub egress_all: bool,
    pub quota: QuotaCtx,
}

#[derive(Debug, Serialize)]
pub struct ChartCtx {
    pub repo_url: &'static str,
    pub chart: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct QuotaCtx {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_memory: String,
    pub pods: u32,
    /// LimitRange defaults for containers that state nothing (chart Jobs, mostly).
    pub default_request_cpu: String,
    pub default_request_memory: String,
    pub default_limit_memory: String,
}

/// The folder of one app's files for one cluster, relative to the repository root.
pub fn manifests_dir(settings: &RenderSettings, app: App, cluster: &str) -> String {
    format!("{}/manifests/{}/{cluster}", settings.output_dir, app.name())
}

impl AppCtx {
    pub fn new(app: App, cluster: &Cluster, settings: &RenderSettings) -> Self {
        let profile = apps::profile(app);
        let pin = charts::pin(app);
        let f = apps::sizing_factor(cluster);
        let dir = manifests_dir(settings, app, cluster.name.as_str());
        let q = profile.quota;
        Self {
            name: app.name(),
            application: format!("{}-{}", cluster.name, app.name()),
            namespace: profile.namespace,
            wave: profile.wave,
            privileged: profile.privileged,
            server_side_apply: profile.server_side_apply,
            skip_dry_run_on_missing_resource: apps::skips_dry_run_on_missing(app, cluster),
            chart: ChartCtx {
                repo_url: pin.repo_url,
                chart: pin.chart,
                version: pin.version,
            },
            values_path: format!("{dir}/values.yaml"),
            extra_path: format!("{dir}/extra"),
            ingress_from_anywhere: profile.openings.ingress_from_anywhere,
            egress_to_anywhere: profile.openings.egress_to_anywhere,
            egress_to_pods: profile.openings.egress_to_pods,
            egress_all: profile.openings.egress_all,
            quota: QuotaCtx {
                requests_cpu: format!("{}m", q.requests_cpu_m * f),
                requests_memory: format!("{}Mi", q.requests_memory_mi * f),
                limits_memory: format!("{}Mi", q.limits_memory_mi * f),
                pods: q.pods,
                default_request_cpu: "50m".into(),
                default_request_memory: "64Mi".into(),
                default_limit_memory: "256Mi".into(),
            },
        }
    }
}

/// What the shared files (root ApplicationSet, store, project) are made from.
#[derive(Debug, Serialize)]
pub struct SharedCtx<'a> {
    pub settings: &'a RenderSettings,
    /// Every cluster's name, sorted.
    pub clusters: Vec<&'a str>,
    /// Helm repositories of the chart pins, sorted.
    pub chart_repos: Vec<&'static str>,
    pub bootstrap_path: String,
    pub shared_path: String,
    pub applicationsets_path: String,
}
