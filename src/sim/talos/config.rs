//! What the simulator reads from a machine config it accepted: enough to act like the node that runs it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_yaml::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineType {
    ControlPlane,
    Worker,
}

/// The parts of an accepted config the simulated node acts on. PEMs are decoded from the base64 the
/// v1alpha1 document carries.
#[derive(Clone)]
pub struct NodeConfig {
    pub machine_type: MachineType,
    pub os_ca_pem: String,
    /// Only control planes carry the OS CA key; the simulator signs the node's API cert with it.
    /// A worker gets its cert from trustd on real Talos; the simulator signs it with the key it learnt
    /// from the cluster's control planes (see `NodeBook`), or refuses to serve mTLS without one.
    pub os_ca_key_pem: Option<String>,
    pub cert_sans: Vec<String>,
    pub hostname: Option<String>,
    pub install_image: Option<String>,
    pub cluster_name: String,
    /// Identity of the cluster the node belongs to, shared by its control planes and workers.
    pub cluster_key: String,
    pub endpoint: String,
    pub k8s_ca_pem: Option<String>,
    pub k8s_ca_key_pem: Option<String>,
    pub has_etcd_ca: bool,
    /// The control-plane VIP (`Layer2VIPConfig.name` on 1.12+, `machine.network.interfaces[].vip.ip`
    /// on 1.11), where the cluster's Kubernetes API answers once etcd runs.
    pub vip: Option<String>,
    /// Kubernetes version, from the kubelet image tag.
    pub kubernetes_version: Option<String>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("machine_type", &self.machine_type)
            .field("hostname", &self.hostname)
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// Every YAML document of a machine config, in order. A parse failure is the error Talos returns
/// before validation (gRPC `Unknown`).
pub fn documents(data: &[u8]) -> Result<Vec<Value>, String> {
    let text =
        std::str::from_utf8(data).map_err(|e| format!("failed to parse config: not UTF-8: {e}"))?;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = <Value as serde::Deserialize>::deserialize(de)
            .map_err(|e| format!("failed to parse config: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The one document without `kind` whose `version` is `v1alpha1`.
pub fn v1alpha1(docs: &[Value]) -> Option<&Value> {
    docs.iter().find(|d| {
        d.get("kind").is_none() && d.get("version").and_then(Value::as_str) == Some("v1alpha1")
    })
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn b64_pem(v: &Value, path: &[&str]) -> Result<Option<String>, String> {
    let Some(text) = s(v, path) else {
        return Ok(None);
    };
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{}: not base64: {e}", path.join(".")))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| format!("{}: not PEM text: {e}", path.join(".")))
}

/// The tag of an image reference (`…/installer:v1.13.9` → `v1.13.9`), ignoring a registry port.
pub fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next()?;
    let last = last.split('@').next()?;
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

fn vip(docs: &[Value], v1: &Value) -> Option<String> {
    let multi_doc = docs
        .iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("Layer2VIPConfig"))
        .and_then(|d| s(d, &["name"]));
    let legacy = || {
        v1.get("machine")?
            .get("network")?
            .get("interfaces")?
            .as_sequence()?
            .iter()
            .find_map(|i| {
                i.get("vip")
                    .and_then(|v| v.get("ip"))
                    .and_then(Value::as_str)
            })
    };
    multi_doc.or_else(legacy).map(str::to_owned)
}

impl NodeConfig {
    pub fn from_documents(docs: &[Value]) -> Result<Self, String> {
        let v1 = v1alpha1(docs)
            .ok_or("the applied machine configuration doesn't contain v1alpha1 config")?;
        let machine_type = match s(v1, &["machine", "type"]) {
            Some("controlplane") | Some("init") => MachineType::ControlPlane,
            Some("worker") => MachineType::Worker,
            other => return Err(format!("unknown machine type {other:?}")),
        };
        let os_ca_pem =
            b64_pem(v1, &["machine", "ca", "crt"])?.ok_or("machine.ca.crt is required")?;
        let os_ca_key_pem = b64_pem(v1, &["machine", "ca", "key"])?;
        let cert_sans = v1
            .get("machine")
            .and_then(|m| m.get("certSANs"))
            .and_then(Value::as_sequence)
            .map(|seq| {
                seq.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // 1.12+ contracts carry the hostname in a HostnameConfig document; 1.11 in machine.network.
        let hostname = docs
            .iter()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("HostnameConfig"))
            .and_then(|d| s(d, &["hostname"]))
            .or_else(|| s(v1, &["machine", "network", "hostname"]))
            .map(str::to_owned);
        let cluster_name = s(v1, &["cluster", "clusterName"])
            .unwrap_or_default()
            .to_owned();
        let cluster_id = s(v1, &["cluster", "id"]).unwrap_or_default();
        let endpoint = s(v1, &["cluster", "controlPlane", "endpoint"])
            .unwrap_or_default()
            .to_owned();
        // The discovery id is per cluster and in every node's config; without one, fall back to what a
        // human would call "the same cluster".
        let cluster_key = if cluster_id.is_empty() {
            format!("{cluster_name}|{endpoint}")
        } else {
            cluster_id.to_owned()
        };
        Ok(Self {
            machine_type,
            os_ca_pem,
            os_ca_key_pem,
            cert_sans,
            hostname,
            install_image: s(v1, &["machine", "install", "image"]).map(str::to_owned),
            cluster_name,
            cluster_key,
            endpoint,
            k8s_ca_pem: b64_pem(v1, &["cluster", "ca", "crt"])?,
            k8s_ca_key_pem: b64_pem(v1, &["cluster", "ca", "key"])?,
            has_etcd_ca: s(v1, &["cluster", "etcd", "ca", "crt"]).is_some_and(|c| !c.is_empty()),
            vip: vip(docs, v1),
            kubernetes_version: s(v1, &["machine", "kubelet", "image"])
                .and_then(image_tag)
                .map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("ghcr.io/siderolabs/installer:v1.13.9"),
            Some("v1.13.9")
        );
        assert_eq!(
            image_tag("registry.lan:5000/installer:v1.12.1"),
            Some("v1.12.1")
        );
        assert_eq!(image_tag("registry.lan:5000/installer"), None);
    }
}
