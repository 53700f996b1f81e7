//! Machine configs from a cluster spec: start from what `talosctl gen config` emits for the
//! contract (TALOS-FACTS §4.2, minus `persist`), then add what the spec sets. Pure and
//! deterministic: the same cluster, node, bundle and version give the same bytes.
//!
//! Decisions (where neither DESIGN.md nor the issue say):
//! - Links are chosen by MAC (the VM's NIC), never by name: metal ISOs use predictable names.
//!   MACs are written lower-case, as Talos reports link addresses.
//! - Cert SANs are the VIP and the node's own IP on control planes (Talos API and kube-apiserver
//!   certs), the node's own IP on workers: the VIP because clients reach the API through it, the
//!   node IP (never the other nodes') so a config does not change when other nodes come and go.
//! - A cluster without workers allows scheduling on control planes (otherwise nothing would run).
//! - Registry mirrors: `overridePath: true` on every endpoint URL that has a path; in the 1.11
//!   layout the flag is per mirror, so it is set when any endpoint has a path.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::documents::{
    AddressConfig, Document, HostnameConfig, Layer2VipConfig, LinkAliasConfig, LinkConfig,
    LinkSelector, NameserverConfig, RegistryEndpoint, RegistryMirrorConfig, ResolverConfig,
    RouteConfig,
};
use super::types::*;
use super::{Contract, UnsupportedVersion};
use crate::spec::{App, Cluster, Node, Role, Version};
use crate::talos::secrets::{EncryptionSecret, SecretsBundle};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Version(#[from] UnsupportedVersion),
    #[error("node {node} is not part of cluster {cluster}")]
    UnknownNode { cluster: String, node: String },
}

/// The link alias kiln gives the node's NIC (1.12+).
const LINK: &str = "net0";
const LONGHORN_PATH: &str = "/var/lib/longhorn";

/// A machine config as typed documents: the v1alpha1 document, then the others in order.
#[derive(Clone, PartialEq)]
pub struct MachineConfigDocs {
    pub v1alpha1: Config,
    pub documents: Vec<Document>,
}

/// The v1alpha1 document holds the cluster's CA keys, tokens and the secretbox key: `Debug` (a
/// `tracing` field, a panic message, an `assert_eq!`) shows the document kinds only.
impl std::fmt::Debug for MachineConfigDocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.documents.iter().map(Document::kind).collect();
        f.debug_struct("MachineConfigDocs")
            .field("v1alpha1", &format_args!("[redacted]"))
            .field("documents", &kinds)
            .finish()
    }
}

impl MachineConfigDocs {
    /// The YAML stream `ApplyConfiguration` takes.
    pub fn to_yaml(&self) -> String {
        let mut out = serde_yaml::to_string(&self.v1alpha1).expect("config serialises");
        for d in &self.documents {
            out.push_str("---\n");
            out.push_str(&d.to_yaml());
        }
        out
    }
}

/// The machine config of `node` for Talos `talos_version`, as the YAML stream to apply.
pub fn render(
    cluster: &Cluster,
    node: &Node,
    bundle: &SecretsBundle,
    talos_version: Version,
) -> Result<String, RenderError> {
    Ok(render_documents(cluster, node, bundle, talos_version)?.to_yaml())
}

/// The image factory's schematic id of an empty customization (no extensions, no kernel args).
pub const VANILLA_SCHEMATIC: &str =
    "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

/// Without `installImage`: the nocloud installer of the vanilla schematic. The generic
/// `ghcr.io/siderolabs/installer` is the metal platform: an install or upgrade from it would drop the
/// nocloud platform the template boots with (DESIGN §4 "Install image").
pub fn default_install_image(talos_version: crate::spec::Version) -> String {
    format!("factory.talos.dev/nocloud-installer/{VANILLA_SCHEMATIC}:{talos_version}")
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

/// Whether a mirror URL carries a path (then containerd must not append `/v2`).
pub fn url_has_path(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('/')
        .is_some_and(|(_, path)| !path.trim_end_matches('/').is_empty())
}

fn pod_security() -> serde_yaml::Mapping {
    // What `gen config` emits: enforce baseline, audit and warn restricted, kube-system exempt.
    serde_yaml::from_str(
        "apiVersion: pod-security.admission.config.k8s.io/v1alpha1\n\
         defaults:\n  audit: restricted\n  audit-version: latest\n  enforce: baseline\n  \
         enforce-version: latest\n  warn: restricted\n  warn-version: latest\n\
         exemptions:\n  namespaces: [kube-system]\n  runtimeClasses: []\n  usernames: []\n\
         kind: PodSecurityConfiguration\n",
    )
    .expect("constant YAML")
}

fn audit_policy() -> serde_yaml::Mapping {
    serde_yaml::from_str("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n")
        .expect("constant YAML")
}

/// The same, as typed documents (for tests and the simulator).
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(cluster = %cluster.name, node = %node.name, talos = %talos_version)
)]
pub fn render_documents(
    cluster: &Cluster,
    node: &Node,
    bundle: &SecretsBundle,
    talos_version: Version,
) -> Result<MachineConfigDocs, RenderError> {
    let images = KubernetesImages::uniform(cluster.spec.kubernetes.version);
    render_documents_with(cluster, node, bundle, talos_version, &images)
}

/// The Kubernetes version of each component a machine config names. The same everywhere except
/// during a Kubernetes upgrade, which moves them one component at a time as `talosctl upgrade-k8s`
/// does (v1.13.9 `pkg/cluster/kubernetes/talos_managed.go`: the API server on every control plane,
/// then the controller manager, the scheduler, kube-proxy, then each kubelet); see
/// docs/upgrade-kubernetes.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubernetesImages {
    pub apiserver: Version,
    pub controller_manager: Version,
    pub scheduler: Version,
    pub proxy: Version,
    pub kubelet: Version,
}

impl KubernetesImages {
    pub fn uniform(version: Version) -> Self {
        Self {
            apiserver: version,
            controller_manager: version,
            scheduler: version,
            proxy: version,
            kubelet: version,
        }
    }
}

/// [`render_documents`] with each Kubernetes component's version given (a Kubernetes upgrade's
/// intermediate configs).
pub fn render_documents_with(
    cluster: &Cluster,
    node: &Node,
    bundle: &SecretsBundle,
    talos_version: Version,
    images: &KubernetesImages,
) -> Result<MachineConfigDocs, RenderError> {
    let contract = Contract::for_version(talos_version)?;
    if !cluster.nodes.iter().any(|n| n == node) {
        return Err(RenderError::UnknownNode {
            cluster: cluster.name.to_string(),
            node: node.name.clone(),
        });
    }
    let spec = &cluster.spec;
    let net = &spec.network;
    let cp = node.role == Role::ControlPlane;
    let vip = net.vip.to_string();
    let ip = node.ip.to_string();
    let mac = node.mac.to_string().to_lowercase();
    let address = format!("{}/{}", node.ip, net.prefix_length);
    let gateway = net.gateway.to_string();
    let nameservers: Vec<String> = net.nameservers.iter().map(|n| n.to_string()).collect();
    // Workers never answer on the VIP, so only control planes carry it.
    let sans = if cp {
        vec![vip.clone(), ip.clone()]
    } else {
        vec![ip.clone()]
    };
    let legacy = !contract.multi_doc();

    let extra_mounts = spec.app_enabled(App::Longhorn).then(|| {
        vec![ExtraMount {
            destination: LONGHORN_PATH.into(),
            mount_type: "bind".into(),
            source: LONGHORN_PATH.into(),
            options: vec!["bind".into(), "rshared".into(), "rw".into()],
        }]
    });

    let network = match contract {
        Contract::V1_11 => Some(NetworkConfig {
            hostname: Some(node.name.clone()),
            interfaces: Some(vec![Device {
                interface: None,
                device_selector: Some(DeviceSelector {
                    hardware_addr: Some(mac.clone()),
                    permanent_addr: None,
                    bus_path: None,
                    driver: None,
                    physical: None,
                }),
                addresses: vec![address.clone()],
                routes: vec![Route {
                    network: "0.0.0.0/0".into(),
                    gateway: Some(gateway.clone()),
                    metric: None,
                }],
                vip: cp.then(|| DeviceVip { ip: vip.clone() }),
                dhcp: None,
            }]),
            nameservers: Some(nameservers.clone()),
        }),
        // `gen config` for 1.12 still writes an empty `network: {}`, but `machine.network` is the
        // deprecated container there (DESIGN: no deprecated fields), and 1.13 drops it anyway.
        Contract::V1_12 | Contract::V1_13 => None,
    };

    let mirrors = &spec.registries.mirrors;
    let registries = (legacy && !mirrors.is_empty()).then(|| RegistriesConfig {
        mirrors: mirrors
            .iter()
            .map(|(host, urls)| {
                let path = urls.iter().any(|u| url_has_path(u));
                (
                    host.clone(),
                    RegistryMirror {
                        endpoints: urls.clone(),
                        override_path: path.then_some(true),
                        skip_fallback: None,
                    },
                )
            })
            .collect(),
    });

    let install_image = spec
        .talos
        .install_image
        .clone()
        .unwrap_or_else(|| default_install_image(talos_version));

    let machine = MachineConfig {
        machine_type: if cp {
            MachineType::Controlplane
        } else {
            MachineType::Worker
        },
        token: bundle.trustd_token.expose().to_owned(),
        ca: PemEncodedCertAndKey {
            crt: b64(bundle.os_ca.cert_pem()),
            key: if cp {
                b64(bundle.os_ca.key_pem().expose())
            } else {
                String::new()
            },
        },
        cert_sans: sans.clone(),
        kubelet: Some(KubeletConfig {
            image: Some(format!("ghcr.io/siderolabs/kubelet:{}", images.kubelet)),
            default_runtime_seccomp_profile_enabled: Some(true),
            disable_manifests_directory: Some(true),
            extra_mounts,
        }),
        network,
        install: Some(InstallConfig {
            disk: Some(spec.talos.install_disk.clone()),
            image: Some(install_image),
            wipe: Some(false),
            grub_use_uki_cmdline: (!legacy).then_some(true),
        }),
        registries,
        features: Some(FeaturesConfig {
            rbac: legacy.then_some(true),
            stable_hostname: legacy.then_some(true),
            apid_check_ext_key_usage: legacy.then_some(true),
            disk_quota_support: Some(true),
            kube_prism: Some(KubePrism {
                enabled: Some(true),
                port: Some(7445),
            }),
            host_dns: Some(HostDns {
                enabled: Some(true),
                forward_kube_dns_to_host: Some(true),
                resolve_member_names: None,
            }),
        }),
        node_labels: cp.then(|| {
            BTreeMap::from([(
                "node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
                String::new(),
            )])
        }),
    };

    let (secretbox, aescbc) = match &bundle.encryption {
        EncryptionSecret::Secretbox(s) => (Some(s.expose().to_owned()), None),
        EncryptionSecret::Aescbc(s) => (None, Some(s.expose().to_owned())),
    };
    let image = |name: &str, v: Version| Some(format!("registry.k8s.io/{name}:{v}"));
    let cluster_cfg = ClusterConfig {
        id: Some(bundle.cluster_id.clone()),
        secret: Some(bundle.cluster_secret.expose().to_owned()),
        control_plane: ControlPlaneConfig {
            endpoint: cluster.endpoint(),
        },
        cluster_name: Some(cluster.name.to_string()),
        network: Some(ClusterNetworkConfig {
            dns_domain: Some("cluster.local".into()),
            pod_subnets: vec![net.pod_cidr.to_string()],
            service_subnets: vec![net.service_cidr.to_string()],
            cni: None,
        }),
        token: bundle.bootstrap_token.expose().to_owned(),
        secretbox_encryption_secret: if cp { secretbox } else { None },
        aescbc_encryption_secret: if cp { aescbc } else { None },
        ca: PemEncodedCertAndKey {
            crt: b64(bundle.k8s_ca.cert_pem()),
            key: if cp {
                b64(bundle.k8s_ca.key_pem().expose())
            } else {
                String::new()
            },
        },
        aggregator_ca: cp.then(|| PemEncodedCertAndKey {
            crt: b64(bundle.k8s_aggregator_ca.cert_pem()),
            key: b64(bundle.k8s_aggregator_ca.key_pem().expose()),
        }),
        service_account: cp.then(|| PemEncodedKey {
            key: b64(bundle.service_account_key.expose()),
        }),
        api_server: cp.then(|| ApiServerConfig {
            image: image("kube-apiserver", images.apiserver),
            cert_sans: sans.clone(),
            disable_pod_security_policy: legacy.then_some(true),
            admission_control: vec![AdmissionPlugin {
                name: "PodSecurity".into(),
                configuration: pod_security(),
            }],
            audit_policy: Some(audit_policy()),
        }),
        controller_manager: cp.then(|| ImageOnly {
            image: image("kube-controller-manager", images.controller_manager),
        }),
        proxy: cp.then(|| ImageOnly {
            image: image("kube-proxy", images.proxy),
        }),
        scheduler: cp.then(|| ImageOnly {
            image: image("kube-scheduler", images.scheduler),
        }),
        discovery: Some(DiscoveryConfig {
            enabled: Some(true),
            registries: Some(DiscoveryRegistries {
                kubernetes: Some(DiscoveryRegistry {
                    disabled: Some(true),
                    endpoint: None,
                }),
                service: Some(DiscoveryRegistry::default()),
            }),
        }),
        etcd: cp.then(|| EtcdConfig {
            ca: PemEncodedCertAndKey {
                crt: b64(bundle.etcd_ca.cert_pem()),
                key: b64(bundle.etcd_ca.key_pem().expose()),
            },
        }),
        allow_scheduling_on_control_planes: (cp && cluster.workers().next().is_none())
            .then_some(true),
    };

    let mut documents = Vec::new();
    if contract.multi_doc() {
        for (host, urls) in mirrors {
            documents.push(Document::RegistryMirror(RegistryMirrorConfig {
                name: host.clone(),
                endpoints: urls
                    .iter()
                    .map(|u| RegistryEndpoint {
                        url: u.clone(),
                        override_path: url_has_path(u).then_some(true),
                    })
                    .collect(),
                skip_fallback: None,
            }));
        }
        documents.push(Document::Hostname(HostnameConfig {
            hostname: Some(node.name.clone()),
            auto: None,
        }));
        documents.push(Document::LinkAlias(LinkAliasConfig {
            name: LINK.into(),
            selector: LinkSelector {
                match_expr: format!("mac(link.permanent_addr) == \"{mac}\""),
            },
        }));
        documents.push(Document::Link(LinkConfig {
            name: LINK.into(),
            up: None,
            mtu: None,
            addresses: vec![AddressConfig {
                address: address.clone(),
                route_priority: None,
            }],
            routes: vec![RouteConfig {
                destination: None,
                gateway: Some(gateway.clone()),
                metric: None,
                mtu: None,
            }],
        }));
        if cp {
            documents.push(Document::Layer2Vip(Layer2VipConfig {
                name: vip.clone(),
                link: LINK.into(),
            }));
        }
        documents.push(Document::Resolver(ResolverConfig {
            nameservers: nameservers
                .iter()
                .map(|a| NameserverConfig { address: a.clone() })
                .collect(),
        }));
    }

    Ok(MachineConfigDocs {
        v1alpha1: Config {
            version: ConfigVersion::V1Alpha1,
            debug: Some(false),
            machine,
            cluster: cluster_cfg,
        },
        documents,
    })
}

#[cfg(test)]
mod tests {
    use super::url_has_path;

    #[test]
    fn debug_shows_no_key_material() {
        let text = include_str!("../../../examples/clusters/production.yaml");
        let outcome = crate::spec::load([(std::path::Path::new("production.yaml"), text)]);
        let cluster = &outcome.clusters[0];
        let bundle = crate::talos::secrets::SecretsBundle::generate().unwrap();
        let docs = super::render_documents(
            cluster,
            &cluster.nodes[0],
            &bundle,
            cluster.spec.talos.version,
        )
        .unwrap();
        let shown = format!("{docs:?}");
        let yaml = docs.to_yaml();
        assert!(yaml.contains(bundle.bootstrap_token.expose()));
        for secret in [
            bundle.bootstrap_token.expose(),
            bundle.trustd_token.expose(),
            bundle.cluster_secret.expose(),
        ] {
            assert!(!shown.contains(secret), "Debug shows a secret: {shown}");
        }
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("LS0t"),
            "{shown}"
        );
        assert!(shown.contains("MachineConfigDocs"), "{shown}");
    }

    #[test]
    fn mirror_paths() {
        assert!(url_has_path("https://registry.lan/v2/docker.io"));
        assert!(!url_has_path("https://mirror.gcr.io"));
        assert!(!url_has_path("https://mirror.gcr.io/"));
        assert!(url_has_path("http://10.0.0.1:5000/proxy/"));
    }
}

#[cfg(test)]
mod images_tests {
    use super::{KubernetesImages, render_documents_with};

    #[test]
    fn each_component_names_its_own_version() {
        let text = include_str!("../../../examples/clusters/production.yaml");
        let outcome = crate::spec::load([(std::path::Path::new("production.yaml"), text)]);
        let cluster = &outcome.clusters[0];
        let bundle = crate::talos::secrets::SecretsBundle::generate().unwrap();
        let old: crate::spec::Version = "v1.34.1".parse().unwrap();
        let new: crate::spec::Version = "v1.35.4".parse().unwrap();
        let images = KubernetesImages {
            apiserver: new,
            ..KubernetesImages::uniform(old)
        };
        let cp = cluster.control_planes().next().unwrap();
        let yaml = render_documents_with(cluster, cp, &bundle, cluster.spec.talos.version, &images)
            .unwrap()
            .to_yaml();
        assert!(
            yaml.contains("registry.k8s.io/kube-apiserver:v1.35.4"),
            "{yaml}"
        );
        for old in [
            "registry.k8s.io/kube-controller-manager:v1.34.1",
            "registry.k8s.io/kube-scheduler:v1.34.1",
            "registry.k8s.io/kube-proxy:v1.34.1",
            "ghcr.io/siderolabs/kubelet:v1.34.1",
        ] {
            assert!(yaml.contains(old), "{old} missing");
        }
    }
}
