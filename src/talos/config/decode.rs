//! A strict decoder of a machine-config stream for one contract. It refuses what the official
//! schema of that Talos minor refuses (unknown fields and document kinds, wrong enums and types,
//! fields the contract dropped such as `persist` or 1.12+'s legacy networking) and the runtime
//! rules Talos's own validation applies to what kiln emits (a worker holding CA keys, etcd or a
//! VIP; a control plane without the OS CA key; a non-https endpoint). It needs no schema file, so
//! the simulator can use it when `KILN_REFERENCE_SCHEMAS` is unset.
//!
//! It covers the fields and kinds kiln emits; anything else Talos would take (other kinds, other
//! v1alpha1 fields) is refused here with a message saying so, never silently accepted.

use std::collections::BTreeSet;

use super::Contract;
use super::documents::{Document, KINDS};
use super::types::{Config, MachineType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("machine config (Talos {contract}), document {index}: {message}")]
pub struct DecodeError {
    pub contract: Contract,
    /// 0-based position in the YAML stream.
    pub index: usize,
    pub message: String,
}

/// A decoded stream: the v1alpha1 document and the others, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedConfig {
    pub v1alpha1: Config,
    pub documents: Vec<Document>,
}

impl DecodedConfig {
    pub fn machine_type(&self) -> MachineType {
        self.v1alpha1.machine.machine_type
    }
}

pub fn decode(text: &str, contract: Contract) -> Result<DecodedConfig, DecodeError> {
    let err = |index: usize, message: String| DecodeError {
        contract,
        index,
        message,
    };
    let mut v1alpha1: Option<(usize, Config)> = None;
    let mut documents = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| err(index, format!("not YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let serde_yaml::Value::Mapping(mut map) = value else {
            return Err(err(index, "a document must be a mapping".into()));
        };
        if let Some(kind) = map.remove("kind") {
            let kind = kind
                .as_str()
                .ok_or_else(|| err(index, "`kind` must be a string".into()))?
                .to_owned();
            match map.remove("apiVersion") {
                Some(serde_yaml::Value::String(v)) if v == "v1alpha1" => {}
                Some(other) => {
                    return Err(err(
                        index,
                        format!("{kind}: apiVersion must be `v1alpha1`, not {other:?}"),
                    ));
                }
                None => return Err(err(index, format!("{kind}: `apiVersion` is required"))),
            }
            if !contract.multi_doc() {
                return Err(err(
                    index,
                    format!("document kind `{kind}` does not exist in Talos {contract}"),
                ));
            }
            let doc = Document::from_body(&kind, serde_yaml::Value::Mapping(map))
                .ok_or_else(|| {
                    err(
                        index,
                        format!(
                            "unknown document kind `{kind}` (kiln's decoder knows {})",
                            KINDS.join(", ")
                        ),
                    )
                })?
                .map_err(|e| err(index, format!("{kind}: {e}")))?;
            documents.push((index, doc));
        } else {
            if !map.contains_key("version") {
                return Err(err(
                    index,
                    "neither a v1alpha1 document (`version`) nor a typed one (`kind`)".into(),
                ));
            }
            let config: Config = serde_yaml::from_value(serde_yaml::Value::Mapping(map))
                .map_err(|e| err(index, format!("v1alpha1: {e}")))?;
            if let Some((first, _)) = v1alpha1 {
                return Err(err(
                    index,
                    format!("a second v1alpha1 document (the first is document {first})"),
                ));
            }
            v1alpha1 = Some((index, config));
        }
    }
    let Some((v_index, config)) = v1alpha1 else {
        return Err(err(
            0,
            "the machine configuration doesn't contain a v1alpha1 document".into(),
        ));
    };
    check_v1alpha1(&config, contract).map_err(|m| err(v_index, m))?;
    check_documents(&config, &documents).map_err(|(i, m)| err(i, m))?;
    Ok(DecodedConfig {
        v1alpha1: config,
        documents: documents.into_iter().map(|(_, d)| d).collect(),
    })
}

fn check_v1alpha1(c: &Config, contract: Contract) -> Result<(), String> {
    let m = &c.machine;
    let legacy = contract == Contract::V1_11;
    let absent = |present: bool, field: &str| -> Result<(), String> {
        if present {
            Err(format!(
                "`{field}` is not part of the Talos {contract} schema"
            ))
        } else {
            Ok(())
        }
    };
    if let Some(n) = &m.network {
        absent(contract == Contract::V1_13, "machine.network")?;
        if !legacy {
            absent(n.hostname.is_some(), "machine.network.hostname")?;
            absent(n.interfaces.is_some(), "machine.network.interfaces")?;
            absent(n.nameservers.is_some(), "machine.network.nameservers")?;
        }
    }
    absent(!legacy && m.registries.is_some(), "machine.registries")?;
    if let Some(f) = &m.features {
        absent(!legacy && f.rbac.is_some(), "machine.features.rbac")?;
        absent(
            !legacy && f.stable_hostname.is_some(),
            "machine.features.stableHostname",
        )?;
        absent(
            !legacy && f.apid_check_ext_key_usage.is_some(),
            "machine.features.apidCheckExtKeyUsage",
        )?;
        if let Some(h) = &f.host_dns
            && h.forward_kube_dns_to_host == Some(true)
            && h.enabled != Some(true)
        {
            return Err("hostDNS.forwardKubeDNSToHost requires hostDNS.enabled".into());
        }
    }
    if let Some(i) = &m.install {
        absent(
            legacy && i.grub_use_uki_cmdline.is_some(),
            "machine.install.grubUseUKICmdline",
        )?;
    }
    if let Some(a) = &c.cluster.api_server {
        absent(
            !legacy && a.disable_pod_security_policy.is_some(),
            "cluster.apiServer.disablePodSecurityPolicy",
        )?;
    }
    let endpoint = &c.cluster.control_plane.endpoint;
    if !endpoint.starts_with("https://") || endpoint.len() <= "https://".len() {
        return Err(format!(
            "cluster.controlPlane.endpoint `{endpoint}` must be an https:// URL"
        ));
    }
    if c.machine.ca.crt.is_empty() {
        return Err("machine.ca.crt is required".into());
    }
    let interfaces = m
        .network
        .as_ref()
        .and_then(|n| n.interfaces.as_deref())
        .unwrap_or_default();
    match m.machine_type {
        MachineType::Controlplane => {
            if m.ca.key.is_empty() {
                return Err("a control plane needs machine.ca.key".into());
            }
            if c.cluster.etcd.is_none() {
                return Err("a control plane needs cluster.etcd.ca".into());
            }
        }
        MachineType::Worker => {
            if !m.ca.key.is_empty() {
                return Err("a worker must not hold machine.ca.key".into());
            }
            if !c.cluster.ca.key.is_empty() {
                return Err("a worker must not hold cluster.ca.key".into());
            }
            if c.cluster.etcd.is_some() {
                return Err("a worker must not have an etcd section".into());
            }
            if interfaces.iter().any(|d| d.vip.is_some()) {
                return Err("a worker must not carry a VIP".into());
            }
        }
    }
    Ok(())
}

fn check_documents(c: &Config, docs: &[(usize, Document)]) -> Result<(), (usize, String)> {
    let mut seen = BTreeSet::new();
    for (i, d) in docs {
        let key = match d {
            Document::Hostname(h) => {
                if h.hostname.is_some() == h.auto.is_some() {
                    return Err((
                        *i,
                        "HostnameConfig: exactly one of `hostname` and `auto` must be set".into(),
                    ));
                }
                "HostnameConfig".to_owned()
            }
            Document::Resolver(_) => "ResolverConfig".to_owned(),
            Document::LinkAlias(a) => format!("LinkAliasConfig/{}", a.name),
            Document::Link(l) => format!("LinkConfig/{}", l.name),
            Document::Layer2Vip(v) => {
                if c.machine.machine_type == MachineType::Worker {
                    return Err((*i, "a worker must not carry a Layer2VIPConfig".into()));
                }
                if v.name.parse::<std::net::IpAddr>().is_err() {
                    return Err((
                        *i,
                        format!("Layer2VIPConfig name `{}` is not an IP", v.name),
                    ));
                }
                format!("Layer2VIPConfig/{}", v.name)
            }
            Document::RegistryMirror(r) => format!("RegistryMirrorConfig/{}", r.name),
        };
        if !seen.insert(key.clone()) {
            return Err((*i, format!("duplicate document {key}")));
        }
    }
    Ok(())
}

/// A certificate field of an accepted config that does not hold what it should.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFieldError {
    #[error("{field}: not base64 of PEM text")]
    Encoding { field: &'static str },
    #[error("{field}: {source}")]
    Pki {
        field: &'static str,
        #[source]
        source: crate::talos::PkiError,
    },
}

/// What the simulator (and diagnostics) read out of an accepted config.
impl DecodedConfig {
    fn pem(field: &'static str, b64: &str) -> Result<String, ConfigFieldError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(ConfigFieldError::Encoding { field })
    }

    /// The OS CA certificate (PEM): what a configured node's apid trusts for client certs.
    pub fn os_ca_cert_pem(&self) -> Result<String, ConfigFieldError> {
        Self::pem("machine.ca.crt", &self.v1alpha1.machine.ca.crt)
    }

    /// The OS CA with its key (control planes only): what signs the node's API server cert.
    pub fn os_ca(&self) -> Result<Option<crate::talos::CertificateAuthority>, ConfigFieldError> {
        let ca = &self.v1alpha1.machine.ca;
        if ca.key.is_empty() {
            return Ok(None);
        }
        let crt = Self::pem("machine.ca.crt", &ca.crt)?;
        let key = crate::talos::PrivateKeyPem::new(Self::pem("machine.ca.key", &ca.key)?);
        crate::talos::CertificateAuthority::from_pem(&crt, key, "machine.ca")
            .map(Some)
            .map_err(|source| ConfigFieldError::Pki {
                field: "machine.ca",
                source,
            })
    }

    /// The Kubernetes CA with its key (control planes only): what the API server's cert and the
    /// admin kubeconfig come from.
    pub fn kubernetes_ca(
        &self,
    ) -> Result<Option<crate::talos::CertificateAuthority>, ConfigFieldError> {
        let ca = &self.v1alpha1.cluster.ca;
        if ca.key.is_empty() {
            return Ok(None);
        }
        let crt = Self::pem("cluster.ca.crt", &ca.crt)?;
        let key = crate::talos::PrivateKeyPem::new(Self::pem("cluster.ca.key", &ca.key)?);
        crate::talos::CertificateAuthority::from_pem(&crt, key, "cluster.ca")
            .map(Some)
            .map_err(|source| ConfigFieldError::Pki {
                field: "cluster.ca",
                source,
            })
    }

    /// The static hostname: `HostnameConfig.hostname` (1.12+) or `machine.network.hostname` (1.11).
    pub fn hostname(&self) -> Option<&str> {
        self.documents
            .iter()
            .find_map(|d| match d {
                Document::Hostname(h) => h.hostname.as_deref(),
                _ => None,
            })
            .or_else(|| {
                self.v1alpha1
                    .machine
                    .network
                    .as_ref()
                    .and_then(|n| n.hostname.as_deref())
            })
    }

    /// Static addresses (CIDR form) from `LinkConfig`s or legacy interfaces.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .documents
            .iter()
            .flat_map(|d| match d {
                Document::Link(l) => l.addresses.iter().map(|a| a.address.clone()).collect(),
                _ => Vec::new(),
            })
            .collect();
        if let Some(ifaces) = self
            .v1alpha1
            .machine
            .network
            .as_ref()
            .and_then(|n| n.interfaces.as_ref())
        {
            out.extend(ifaces.iter().flat_map(|i| i.addresses.iter().cloned()));
        }
        out
    }

    /// The control-plane VIP, if this node carries one.
    pub fn vip(&self) -> Option<&str> {
        self.documents
            .iter()
            .find_map(|d| match d {
                Document::Layer2Vip(v) => Some(v.name.as_str()),
                _ => None,
            })
            .or_else(|| {
                self.v1alpha1
                    .machine
                    .network
                    .as_ref()
                    .and_then(|n| n.interfaces.as_ref())
                    .and_then(|i| i.iter().find_map(|d| d.vip.as_ref().map(|v| v.ip.as_str())))
            })
    }

    pub fn cluster_name(&self) -> Option<&str> {
        self.v1alpha1.cluster.cluster_name.as_deref()
    }

    /// `cluster.controlPlane.endpoint`, e.g. `https://192.168.2.160:6443`.
    pub fn endpoint(&self) -> &str {
        &self.v1alpha1.cluster.control_plane.endpoint
    }
}
