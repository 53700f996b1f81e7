//! The `Cluster` intent document (DESIGN.md §2) as it appears in `clusters/<name>.yaml`.
//! Field names are the YAML's (camelCase); unknown fields are refused everywhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::{ClusterName, HumanDuration, Ipv4Range, MacAddr, Version, Vmid};

pub const API_VERSION: &str = "kiln.dev/v1alpha1";
pub const KIND: &str = "Cluster";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "kiln Cluster",
    description = "One Kubernetes cluster of Talos Linux VMs on Proxmox VE"
)]
pub struct ClusterDocument {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "kiln.dev/v1alpha1")]
    V1Alpha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: ClusterName,
    /// Copied onto the Argo CD cluster secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// When true, deleting the file is refused (status Blocked) and nothing is destroyed.
    #[serde(default)]
    pub deletion_protection: bool,
    pub proxmox: ProxmoxSpec,
    pub talos: TalosSpec,
    pub kubernetes: KubernetesSpec,
    pub network: NetworkSpec,
    #[serde(default, skip_serializing_if = "RegistriesSpec::is_empty")]
    pub registries: RegistriesSpec,
    pub control_plane: NodeGroup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<NodeGroup>,
    #[serde(default)]
    pub apps: AppsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxmoxSpec {
    /// The Proxmox node for every VM (use `nodes` to spread over several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Proxmox nodes to spread VMs over, round-robin, control planes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Talos nocloud template VMID, or one per Proxmox node.
    pub template: TemplateRef,
    pub storage: String,
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<u16>,
    /// VMID = this prefix followed by the node number (40 → 401, 402, …).
    #[schemars(range(min = 1))]
    pub vmid_prefix: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Which template to clone: one VMID for all nodes, or one per Proxmox node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TemplateRef {
    Single(Vmid),
    PerNode(BTreeMap<String, Vmid>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TalosSpec {
    /// Picks the machine-config contract: 1.11 (legacy), 1.12, 1.13.
    pub version: Version,
    /// Installer image; required when `extensions` are listed (a factory.talos.dev schematic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_image: Option<String>,
    #[serde(default = "default_install_disk")]
    pub install_disk: String,
    /// System extensions the install image carries, e.g. siderolabs/qemu-guest-agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
}

pub fn default_install_disk() -> String {
    "/dev/sda".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesSpec {
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Control-plane VIP; the API endpoint is https://<vip>:6443.
    pub vip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    #[schemars(range(min = 1, max = 32))]
    pub prefix_length: u8,
    #[schemars(length(min = 1))]
    pub nameservers: Vec<IpAddr>,
    #[serde(rename = "podCIDR", default = "default_pod_cidr")]
    #[schemars(schema_with = "cidr_schema")]
    pub pod_cidr: Ipv4Net,
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    #[schemars(schema_with = "cidr_schema")]
    pub service_cidr: Ipv4Net,
    /// The metallb address pool, FIRST-LAST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_range: Option<Ipv4Range>,
}

fn cidr_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "description": "an IPv4 network, ADDRESS/PREFIX",
        "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$",
    })
}

pub fn default_pod_cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("constant CIDR")
}
pub fn default_service_cidr() -> Ipv4Net {
    "10.96.0.0/12".parse().expect("constant CIDR")
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistriesSpec {
    /// Registry host → mirror endpoints. A URL with a path implies `overridePath`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
}

impl RegistriesSpec {
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    pub resources: Resources,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[schemars(range(min = 1))]
    pub cores: u32,
    #[serde(rename = "memoryGiB")]
    #[schemars(range(min = 1))]
    pub memory_gib: u32,
    #[serde(rename = "diskGiB")]
    #[schemars(range(min = 1))]
    pub disk_gib: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    pub ip: Ipv4Addr,
    /// Derived when absent: 02 + 5 bytes of SHA-256("{cluster}/{n}").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Pins the node number (its identity: VM name, VMID, MAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub number: Option<u32>,
}

/// The core apps (on by default, longhorn only with its extensions) and traefik (off by default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppsSpec {
    #[serde(
        rename = "cert-manager",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cert_manager: Option<AppSpec>,
    #[serde(
        rename = "external-secrets",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub external_secrets: Option<AppSpec>,
    #[serde(
        rename = "ingress-nginx",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_nginx: Option<AppSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metallb: Option<AppSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longhorn: Option<AppSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<AppSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traefik: Option<AppSpec>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Absent: the app's default (see App::enabled_by_default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Helm values deep-merged over kiln's.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub values: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSpec {
    /// How often a snapshot is taken (at least 5m), e.g. 6h; each cluster's times are shifted by a
    /// jitter derived from its name.
    pub schedule: HumanDuration,
    /// How many verified snapshots to keep; older ones are pruned once a new one verified.
    #[schemars(range(min = 1))]
    pub keep: u32,
    /// An absolute folder (local or mounted) or s3://bucket/prefix (`[backup]` of kiln.toml).
    pub destination: String,
    /// age X25519 recipients (age1…) the snapshots are encrypted to: a snapshot holds every
    /// secret of the cluster, and kiln keeps only these public keys.
    #[schemars(length(min = 1), inner(regex(pattern = r"^age1[02-9ac-hj-np-z]+$")))]
    pub age_recipients: Vec<String>,
}
