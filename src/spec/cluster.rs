//! The expanded, validated view of one intent file: concrete nodes keyed by node number, with every
//! identity (VM name, VMID, MAC, Proxmox node, template) derived once, here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::document::{AppSpec, ClusterDocument, ClusterSpec, Resources, TemplateRef};
use super::types::{ClusterName, MacAddr, Vmid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(rename = "controlplane")]
    ControlPlane,
    Worker,
}

impl Role {
    /// The word used in VM names (`-cp-`/`-wk-`).
    pub fn short(self) -> &'static str {
        match self {
            Role::ControlPlane => "cp",
            Role::Worker => "wk",
        }
    }
    /// The word used in tags and Talos (`controlplane`/`worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM of a cluster, fully derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub number: u32,
    pub role: Role,
    /// `{cluster}-cp-{n}` / `{cluster}-wk-{n}`: VM name, Talos hostname and Kubernetes node name.
    pub name: String,
    pub vmid: Vmid,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The Proxmox node the VM lives on.
    pub pve_node: String,
    /// The template VMID cloned for it (on `pve_node` unless shared storage says otherwise).
    pub template: Vmid,
    pub resources: Resources,
}

/// The apps kiln renders for a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum App {
    #[serde(rename = "cert-manager")]
    CertManager,
    #[serde(rename = "external-secrets")]
    ExternalSecrets,
    #[serde(rename = "ingress-nginx")]
    IngressNginx,
    #[serde(rename = "metallb")]
    Metallb,
    #[serde(rename = "longhorn")]
    Longhorn,
    #[serde(rename = "monitoring")]
    Monitoring,
    #[serde(rename = "traefik")]
    Traefik,
}

impl App {
    pub const ALL: [App; 7] = [
        App::CertManager,
        App::ExternalSecrets,
        App::IngressNginx,
        App::Metallb,
        App::Longhorn,
        App::Monitoring,
        App::Traefik,
    ];

    pub fn name(self) -> &'static str {
        match self {
            App::CertManager => "cert-manager",
            App::ExternalSecrets => "external-secrets",
            App::IngressNginx => "ingress-nginx",
            App::Metallb => "metallb",
            App::Longhorn => "longhorn",
            App::Monitoring => "monitoring",
            App::Traefik => "traefik",
        }
    }
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Extensions longhorn cannot become healthy without.
pub const LONGHORN_EXTENSIONS: [&str; 2] = ["iscsi-tools", "util-linux-tools"];
pub const QEMU_GUEST_AGENT_EXTENSION: &str = "qemu-guest-agent";

/// Whether the extension list names `short` (with or without the `siderolabs/` prefix).
pub fn has_extension(extensions: &[String], short: &str) -> bool {
    extensions
        .iter()
        .any(|e| e == short || e.rsplit('/').next() == Some(short))
}

impl ClusterSpec {
    pub fn app_spec(&self, app: App) -> Option<&AppSpec> {
        let a = &self.apps;
        match app {
            App::CertManager => a.cert_manager.as_ref(),
            App::ExternalSecrets => a.external_secrets.as_ref(),
            App::IngressNginx => a.ingress_nginx.as_ref(),
            App::Metallb => a.metallb.as_ref(),
            App::Longhorn => a.longhorn.as_ref(),
            App::Monitoring => a.monitoring.as_ref(),
            App::Traefik => a.traefik.as_ref(),
        }
    }

    /// What `enabled` means when the file leaves it out.
    pub fn app_enabled_by_default(&self, app: App) -> bool {
        match app {
            App::Traefik => false,
            App::Longhorn => LONGHORN_EXTENSIONS
                .iter()
                .all(|x| has_extension(&self.talos.extensions, x)),
            _ => true,
        }
    }

    pub fn app_enabled(&self, app: App) -> bool {
        self.app_spec(app)
            .and_then(|s| s.enabled)
            .unwrap_or_else(|| self.app_enabled_by_default(app))
    }

    pub fn enabled_apps(&self) -> Vec<App> {
        App::ALL
            .into_iter()
            .filter(|a| self.app_enabled(*a))
            .collect()
    }

    pub fn has_guest_agent(&self) -> bool {
        has_extension(&self.talos.extensions, QEMU_GUEST_AGENT_EXTENSION)
    }
}

/// The MAC a node gets when the file gives none: locally administered, unicast, stable.
pub fn derived_mac(cluster: &str, number: u32) -> MacAddr {
    let digest = Sha256::digest(format!("{cluster}/{number}").as_bytes());
    let mut mac = [0u8; 6];
    mac[0] = 0x02;
    mac[1..].copy_from_slice(&digest[..5]);
    MacAddr(mac)
}

/// VMID = decimal concatenation of the prefix and the node number.
pub fn derived_vmid(prefix: u32, number: u32) -> Result<Vmid, String> {
    let text = format!("{prefix}{number}");
    let value: u64 = text
        .parse()
        .map_err(|_| format!("VMID {text} does not fit a number"))?;
    Vmid::new(value)
}

/// The node number each entry gets: its pin, else its position (control planes 1..C, workers C+1..).
pub fn node_numbers(spec: &ClusterSpec) -> (Vec<u32>, Vec<u32>) {
    let cps = &spec.control_plane.nodes;
    let cp: Vec<u32> = cps
        .iter()
        .enumerate()
        .map(|(i, n)| n.number.unwrap_or(i as u32 + 1))
        .collect();
    let c = cps.len() as u32;
    let wk: Vec<u32> = spec
        .workers
        .iter()
        .flat_map(|w| w.nodes.iter().enumerate())
        .map(|(i, n)| n.number.unwrap_or(c + i as u32 + 1))
        .collect();
    (cp, wk)
}

/// A cluster that passed validation, with its nodes expanded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: ClusterName,
    pub labels: BTreeMap<String, String>,
    pub spec: ClusterSpec,
    /// Sorted by node number.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Expands a document into concrete nodes. Fails (with a message per problem, already phrased
    /// for the user) only on what expansion itself cannot do; `validate` reports these with paths.
    pub fn expand(doc: &ClusterDocument) -> Result<Self, Vec<String>> {
        let spec = &doc.spec;
        let name = doc.metadata.name.as_str();
        let mut problems = Vec::new();
        let pve_nodes: Vec<String> = match (&spec.proxmox.node, &spec.proxmox.nodes) {
            (Some(n), None) => vec![n.clone()],
            (None, Some(ns)) if !ns.is_empty() => ns.clone(),
            (Some(_), Some(_)) => {
                problems.push("spec.proxmox: give either `node` or `nodes`, not both".to_owned());
                Vec::new()
            }
            _ => {
                problems.push(
                    "spec.proxmox: `node` or a non-empty `nodes` list is required".to_owned(),
                );
                Vec::new()
            }
        };
        let (cp_numbers, wk_numbers) = node_numbers(spec);
        let groups = [
            (Role::ControlPlane, &spec.control_plane, cp_numbers),
            (
                Role::Worker,
                spec.workers.as_ref().unwrap_or(&spec.control_plane),
                wk_numbers,
            ),
        ];
        let mut nodes = Vec::new();
        let mut slot = 0usize;
        for (role, group, numbers) in groups {
            if role == Role::Worker && spec.workers.is_none() {
                continue;
            }
            for (entry, number) in group.nodes.iter().zip(numbers) {
                let pve_node = if pve_nodes.is_empty() {
                    String::new()
                } else {
                    pve_nodes[slot % pve_nodes.len()].clone()
                };
                slot += 1;
                let vmid = match derived_vmid(spec.proxmox.vmid_prefix, number) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(format!("node {number}: {e}"));
                        continue;
                    }
                };
                let template = match &spec.proxmox.template {
                    TemplateRef::Single(t) => *t,
                    TemplateRef::PerNode(map) => match map.get(&pve_node) {
                        Some(t) => *t,
                        None => {
                            problems.push(format!(
                                "spec.proxmox.template: no template for Proxmox node `{pve_node}`"
                            ));
                            continue;
                        }
                    },
                };
                nodes.push(Node {
                    number,
                    role,
                    name: format!("{name}-{}-{number}", role.short()),
                    vmid,
                    ip: entry.ip,
                    mac: entry.mac.unwrap_or_else(|| derived_mac(name, number)),
                    pve_node,
                    template,
                    resources: group.resources,
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        nodes.sort_by_key(|n| n.number);
        Ok(Self {
            name: doc.metadata.name.clone(),
            labels: doc.metadata.labels.clone(),
            spec: spec.clone(),
            nodes,
        })
    }

    pub fn control_planes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::ControlPlane)
    }
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Worker)
    }
    pub fn node(&self, number: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.number == number)
    }
    /// `https://<vip>:6443`
    pub fn endpoint(&self) -> String {
        format!("https://{}:6443", self.spec.network.vip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_is_local_unicast_and_stable() {
        let a = derived_mac("production", 1);
        assert_eq!(a, derived_mac("production", 1));
        assert_ne!(a, derived_mac("production", 2));
        assert!(a.is_unicast());
        assert!(a.is_locally_administered());
        assert_eq!(a.0[0], 0x02);
    }

    #[test]
    fn vmid_is_decimal_concatenation() {
        assert_eq!(derived_vmid(40, 1).unwrap().get(), 401);
        assert_eq!(derived_vmid(40, 12).unwrap().get(), 4012);
        assert!(derived_vmid(9, 9).is_err());
    }
}
