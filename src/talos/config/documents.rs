//! The multi-document kinds (apiVersion `v1alpha1`, Talos 1.12+) kiln emits: hostname, static
//! link addressing and routes, the control-plane VIP, resolvers and registry mirrors. Each body
//! refuses unknown fields; `apiVersion`/`kind` are written and checked by [`Document`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostnameAuto {
    Stable,
    Off,
}

/// `hostname` and `auto` are mutually exclusive (checked in `decode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostnameConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<HostnameAuto>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSelector {
    /// A CEL expression over the link, e.g. `mac(link.permanent_addr) == "bc:24:11:00:00:01"`.
    #[serde(rename = "match")]
    pub match_expr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkAliasConfig {
    pub name: String,
    pub selector: LinkSelector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddressConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_priority: Option<u32>,
}

/// A route; no `destination` means the default route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<AddressConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

/// A shared IP announced by gratuitous ARP from the etcd-elected holder (control planes only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer2VipConfig {
    /// The VIP itself.
    pub name: String,
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameserverConfig {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<NameserverConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryEndpoint {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_path: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryMirrorConfig {
    /// The registry host mirrored (`docker.io`), or `*`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<RegistryEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_fallback: Option<bool>,
}

/// One non-v1alpha1 document of a machine-config stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Hostname(HostnameConfig),
    LinkAlias(LinkAliasConfig),
    Link(LinkConfig),
    Layer2Vip(Layer2VipConfig),
    Resolver(ResolverConfig),
    RegistryMirror(RegistryMirrorConfig),
}

/// Every kind kiln's decoder understands, with the first contract that has it.
pub const KINDS: [&str; 6] = [
    "HostnameConfig",
    "LinkAliasConfig",
    "LinkConfig",
    "Layer2VIPConfig",
    "ResolverConfig",
    "RegistryMirrorConfig",
];

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

fn tagged<T: Serialize>(kind: &'static str, body: &T) -> String {
    serde_yaml::to_string(&Tagged {
        api_version: "v1alpha1",
        kind,
        body,
    })
    .expect("documents serialise")
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Hostname(_) => "HostnameConfig",
            Document::LinkAlias(_) => "LinkAliasConfig",
            Document::Link(_) => "LinkConfig",
            Document::Layer2Vip(_) => "Layer2VIPConfig",
            Document::Resolver(_) => "ResolverConfig",
            Document::RegistryMirror(_) => "RegistryMirrorConfig",
        }
    }

    /// The document as YAML, `apiVersion` and `kind` first as `talosctl` writes them.
    pub fn to_yaml(&self) -> String {
        let k = self.kind();
        match self {
            Document::Hostname(d) => tagged(k, d),
            Document::LinkAlias(d) => tagged(k, d),
            Document::Link(d) => tagged(k, d),
            Document::Layer2Vip(d) => tagged(k, d),
            Document::Resolver(d) => tagged(k, d),
            Document::RegistryMirror(d) => tagged(k, d),
        }
    }

    /// Decodes the body of a document whose `kind` is `kind` (tags already removed).
    pub(crate) fn from_body(
        kind: &str,
        body: serde_yaml::Value,
    ) -> Option<serde_yaml::Result<Self>> {
        fn de<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> serde_yaml::Result<T> {
            serde_yaml::from_value(v)
        }
        Some(match kind {
            "HostnameConfig" => de(body).map(Document::Hostname),
            "LinkAliasConfig" => de(body).map(Document::LinkAlias),
            "LinkConfig" => de(body).map(Document::Link),
            "Layer2VIPConfig" => de(body).map(Document::Layer2Vip),
            "ResolverConfig" => de(body).map(Document::Resolver),
            "RegistryMirrorConfig" => de(body).map(Document::RegistryMirror),
            _ => return None,
        })
    }
}
