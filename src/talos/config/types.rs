//! The v1alpha1 document, as far as kiln emits it and the schemas of 1.11–1.13 describe it. Every
//! struct refuses unknown fields, so decoding with these types is as strict as the schema; which
//! optional fields a contract allows is checked in `decode`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only `version` a v1alpha1 document may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigVersion {
    #[serde(rename = "v1alpha1")]
    V1Alpha1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub version: ConfigVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    pub machine: MachineConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    Controlplane,
    Worker,
}

/// `{crt, key}`, both base64 of PEM text; `key` is `""` where a worker must not hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemEncodedCertAndKey {
    pub crt: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemEncodedKey {
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    #[serde(rename = "type")]
    pub machine_type: MachineType,
    pub token: String,
    pub ca: PemEncodedCertAndKey,
    #[serde(default, rename = "certSANs")]
    pub cert_sans: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletConfig>,
    /// 1.11: hostname, interfaces, nameservers; 1.12: only `{}`; 1.13: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallConfig>,
    /// 1.11 only (1.12+ use `RegistryMirrorConfig` documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries: Option<RegistriesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_runtime_seccomp_profile_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_manifests_directory: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_mounts: Option<Vec<ExtraMount>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraMount {
    pub destination: String,
    #[serde(rename = "type")]
    pub mount_type: String,
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Device>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
}

/// One `machine.network.interfaces[]` entry (1.11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<DeviceVip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceVip {
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstallConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<bool>,
    /// 1.12+.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "grubUseUKICmdline"
    )]
    pub grub_use_uki_cmdline: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    #[serde(default)]
    pub mirrors: BTreeMap<String, RegistryMirror>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryMirror {
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_fallback: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeaturesConfig {
    /// 1.11 only (hidden from the schema since 1.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<bool>,
    /// 1.11 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_hostname: Option<bool>,
    /// 1.11 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apid_check_ext_key_usage: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_quota_support: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_prism: Option<KubePrism>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostDNS")]
    pub host_dns: Option<HostDns>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubePrism {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostDns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "forwardKubeDNSToHost"
    )]
    pub forward_kube_dns_to_host: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_member_names: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub control_plane: ControlPlaneConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ClusterNetworkConfig>,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox_encryption_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbc_encryption_secret: Option<String>,
    pub ca: PemEncodedCertAndKey,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "aggregatorCA"
    )]
    pub aggregator_ca: Option<PemEncodedCertAndKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<PemEncodedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<ApiServerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<ImageOnly>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ImageOnly>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<ImageOnly>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_scheduling_on_control_planes: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    #[serde(default)]
    pub pod_subnets: Vec<String>,
    #[serde(default)]
    pub service_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniName {
    Flannel,
    Custom,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniConfig {
    pub name: CniName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiServerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "certSANs")]
    pub cert_sans: Vec<String>,
    /// 1.11 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_pod_security_policy: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admission_control: Vec<AdmissionPlugin>,
    /// A Kubernetes audit `Policy`, free-form as in Talos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_policy: Option<serde_yaml::Mapping>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionPlugin {
    pub name: String,
    pub configuration: serde_yaml::Mapping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOnly {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries: Option<DiscoveryRegistries>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryRegistries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<DiscoveryRegistry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<DiscoveryRegistry>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryRegistry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub ca: PemEncodedCertAndKey,
}
