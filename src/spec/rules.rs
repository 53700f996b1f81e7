//! The semantic rules of one intent file (DESIGN.md §2), on its typed document. Each rule reports
//! with the field path it is about; every rule runs, so a file gets all its errors at once.
//! The cross-file rules live in `load`, on the identities computed here.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::cluster::{LONGHORN_EXTENSIONS, derived_mac, derived_vmid, node_numbers};
use super::diagnostic::Finding;
use super::document::{ClusterDocument, TemplateRef};
use super::types::{MacAddr, Vmid};
use super::{App, Role};

/// The shortest `spec.backup.schedule`: a snapshot is the whole etcd database, streamed,
/// encrypted, written and read back; a shorter interval would start the next before a large
/// cluster's last one ends, and keep `keep` snapshots of minutes apart (docs/backup.md).
pub const MIN_BACKUP_SCHEDULE: std::time::Duration = std::time::Duration::from_secs(300);

/// What a node entry claims, the unit of the duplicate rules (in a file and across files).
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// `spec.controlPlane.nodes[0]`
    pub path: String,
    pub role: Role,
    pub number: u32,
    pub vmid: Result<Vmid, String>,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Whether `mac` was written in the file (else derived).
    pub mac_given: bool,
}

pub fn identities(doc: &ClusterDocument) -> Vec<NodeIdentity> {
    let spec = &doc.spec;
    let name = doc.metadata.name.as_str();
    let (cp, wk) = node_numbers(spec);
    let groups = [
        (
            "spec.controlPlane.nodes",
            Role::ControlPlane,
            &spec.control_plane.nodes[..],
            cp,
        ),
        (
            "spec.workers.nodes",
            Role::Worker,
            spec.workers.as_ref().map_or(&[][..], |w| &w.nodes[..]),
            wk,
        ),
    ];
    let mut out = Vec::new();
    for (base, role, entries, numbers) in groups {
        for (i, (entry, number)) in entries.iter().zip(numbers).enumerate() {
            out.push(NodeIdentity {
                path: format!("{base}[{i}]"),
                role,
                number,
                vmid: derived_vmid(spec.proxmox.vmid_prefix, number),
                ip: entry.ip,
                mac: entry.mac.unwrap_or_else(|| derived_mac(name, number)),
                mac_given: entry.mac.is_some(),
            });
        }
    }
    out
}

/// The node network: `gateway/prefixLength`.
pub fn node_network(doc: &ClusterDocument) -> Option<Ipv4Net> {
    let n = &doc.spec.network;
    Ipv4Net::new(n.gateway, n.prefix_length)
        .ok()
        .map(|net| net.trunc())
}

/// Every rule of one file. `stem` is the file name without `.yaml`.
pub fn check(doc: &ClusterDocument, stem: &str, ids: &[NodeIdentity]) -> Vec<Finding> {
    let mut out = Vec::new();
    name_rules(doc, stem, &mut out);
    proxmox_rules(doc, ids, &mut out);
    super::pve_names::check(doc, &mut out);
    node_rules(doc, ids, &mut out);
    network_rules(doc, ids, &mut out);
    talos_rules(doc, &mut out);
    kubernetes_range_rule(doc, &mut out);
    app_rules(doc, &mut out);
    misc_rules(doc, &mut out);
    out
}

fn name_rules(doc: &ClusterDocument, stem: &str, out: &mut Vec<Finding>) {
    let name = doc.metadata.name.as_str();
    if name != stem {
        out.push(
            Finding::error(
                "metadata.name",
                format!("`{name}` does not match the file name `{stem}.yaml`"),
            )
            .hint(format!(
                "the file of cluster `{name}` must be `{name}.yaml`; rename one of them"
            )),
        );
    }
    for (key, value) in &doc.metadata.labels {
        let path = super::position::join_key("metadata.labels", key);
        if !valid_label_key(key) {
            out.push(
                Finding::error(path.clone(), format!("`{key}` is not a Kubernetes label key"))
                    .hint("an optional DNS prefix and `/`, then at most 63 letters, digits, `-`, `_`, `.`"),
            );
        }
        if !value.is_empty() && !valid_label_name(value) {
            out.push(
                Finding::error(path, format!("`{value}` is not a Kubernetes label value")).hint(
                    "at most 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric",
                ),
            );
        }
    }
}

fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn valid_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
                && valid_label_name(name)
        }
        None => valid_label_name(s),
    }
}

/// The Proxmox nodes VMs are spread over (empty when the file names none, reported here).
pub fn pve_nodes(doc: &ClusterDocument) -> Vec<&str> {
    let p = &doc.spec.proxmox;
    match (&p.node, &p.nodes) {
        (Some(n), None) => vec![n.as_str()],
        (None, Some(ns)) => ns.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}

fn proxmox_rules(doc: &ClusterDocument, ids: &[NodeIdentity], out: &mut Vec<Finding>) {
    let p = &doc.spec.proxmox;
    match (&p.node, &p.nodes) {
        (Some(_), Some(_)) => out.push(
            Finding::error("spec.proxmox.nodes", "`node` and `nodes` are both given").hint(
                "keep `node: pve1` for one Proxmox node, or `nodes: [pve1, pve2]` to spread VMs",
            ),
        ),
        (None, None) => out.push(
            Finding::error("spec.proxmox.node", "missing field `node` (or `nodes`)")
                .hint("node: pve1, or nodes: [pve1, pve2] to spread VMs round-robin"),
        ),
        (None, Some(ns)) if ns.is_empty() => out.push(
            Finding::error("spec.proxmox.nodes", "the list of Proxmox nodes is empty")
                .hint("list at least one Proxmox node, e.g. nodes: [pve1]"),
        ),
        _ => {}
    }
    if let Some(ns) = &p.nodes {
        let mut seen = BTreeSet::new();
        for (i, n) in ns.iter().enumerate() {
            if !seen.insert(n) {
                out.push(
                    Finding::error(
                        format!("spec.proxmox.nodes[{i}]"),
                        format!("Proxmox node `{n}` is listed twice"),
                    )
                    .hint("list each Proxmox node once"),
                );
            }
        }
    }
    let templates: Vec<Vmid> = match &p.template {
        TemplateRef::Single(t) => vec![*t],
        TemplateRef::PerNode(map) => {
            for n in pve_nodes(doc) {
                if !map.contains_key(n) {
                    out.push(
                        Finding::error(
                            "spec.proxmox.template",
                            format!("no template for Proxmox node `{n}`"),
                        )
                        .hint(format!("add `{n}: <template VMID>` to the template map")),
                    );
                }
            }
            map.values().copied().collect()
        }
    };
    for id in ids {
        if let Ok(v) = id.vmid
            && templates.contains(&v)
        {
            out.push(
                Finding::error(
                    id.path.clone(),
                    format!("VMID {v} of node {} is the template's VMID", id.number),
                )
                .hint("change spec.proxmox.vmidPrefix or the template so they differ"),
            );
        }
    }
}

fn node_rules(doc: &ClusterDocument, ids: &[NodeIdentity], out: &mut Vec<Finding>) {
    let cps = doc.spec.control_plane.nodes.len();
    if cps == 0 {
        out.push(
            Finding::error("spec.controlPlane.nodes", "no control plane: the list is empty")
                .hint("a cluster needs at least one control plane, e.g. - {ip: 192.168.2.161}; use 1, 3 or 5"),
        );
    } else if cps.is_multiple_of(2) {
        out.push(
            Finding::warning(
                "spec.controlPlane.nodes",
                format!(
                    "{cps} control planes: an even count tolerates no more failures than {} (etcd needs a majority)",
                    cps - 1
                ),
            )
            .hint("use an odd number: 1, 3 or 5"),
        );
    }
    let mut numbers: HashMap<u32, &str> = HashMap::new();
    let mut macs: HashMap<MacAddr, (&str, bool)> = HashMap::new();
    for id in ids {
        let number_path = if pinned(doc, id) {
            format!("{}.number", id.path)
        } else {
            id.path.clone()
        };
        if let Some(first) = numbers.insert(id.number, &id.path) {
            numbers.insert(id.number, first);
            out.push(
                Finding::error(
                    number_path.clone(),
                    format!("node number {} is also the number of {first}", id.number),
                )
                .hint("numbers are identities (VM name, VMID, MAC): pin distinct `number:`s"),
            );
        }
        if let Err(e) = &id.vmid {
            out.push(Finding::error(number_path, e.clone()).hint(format!(
                "VMID = vmidPrefix ({}) followed by the node number; Proxmox accepts {}..{}",
                doc.spec.proxmox.vmid_prefix,
                Vmid::MIN,
                Vmid::MAX
            )));
        }
        let mac_path = if id.mac_given {
            format!("{}.mac", id.path)
        } else {
            id.path.clone()
        };
        if !id.mac.is_unicast() {
            out.push(
                Finding::error(
                    mac_path.clone(),
                    format!(
                        "{} is a multicast MAC (the first octet's low bit is set)",
                        id.mac
                    ),
                )
                .hint(
                    "a NIC needs a unicast MAC, e.g. BC:24:11:…; or leave `mac` out to derive one",
                ),
            );
        }
        if let Some((first, first_given)) = macs.insert(id.mac, (&id.path, id.mac_given)) {
            macs.insert(id.mac, (first, first_given));
            // Two derived MACs collide only when the numbers do, which is reported above.
            if id.mac_given || first_given {
                out.push(
                    Finding::error(
                        mac_path,
                        format!("MAC {} is also the MAC of {first}", id.mac),
                    )
                    .hint("give each node its own MAC, or leave `mac` out to derive one"),
                );
            }
        }
    }
}

fn pinned(doc: &ClusterDocument, id: &NodeIdentity) -> bool {
    let (group, i) = match id.path.rsplit_once('[') {
        Some((g, rest)) => (g, rest.trim_end_matches(']').parse::<usize>().unwrap_or(0)),
        None => return false,
    };
    let entries = if group == "spec.controlPlane.nodes" {
        &doc.spec.control_plane.nodes[..]
    } else {
        doc.spec.workers.as_ref().map_or(&[][..], |w| &w.nodes[..])
    };
    entries.get(i).is_some_and(|e| e.number.is_some())
}

fn network_rules(doc: &ClusterDocument, ids: &[NodeIdentity], out: &mut Vec<Finding>) {
    let n = &doc.spec.network;
    let Some(net) = node_network(doc) else {
        return; // prefixLength out of range: the schema already said so
    };
    let has_hosts = net.prefix_len() <= 30;
    let special = |ip: Ipv4Addr| has_hosts && (ip == net.network() || ip == net.broadcast());
    let outside_hint = format!(
        "the node network is {net} (gateway {}/{}); use an address inside it",
        n.gateway, n.prefix_length
    );
    if special(n.gateway) {
        out.push(
            Finding::error(
                "spec.network.gateway",
                format!("{} is the network's own or broadcast address", n.gateway),
            )
            .hint("the gateway is a host address such as 192.168.2.1"),
        );
    }
    let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
    for id in ids {
        let path = format!("{}.ip", id.path);
        if !net.contains(&id.ip) {
            out.push(
                Finding::error(
                    path.clone(),
                    format!("{} is outside the node network {net}", id.ip),
                )
                .hint(outside_hint.clone()),
            );
        } else if special(id.ip) {
            out.push(
                Finding::error(
                    path.clone(),
                    format!("{} is the network or broadcast address of {net}", id.ip),
                )
                .hint("use a host address"),
            );
        }
        if id.ip == n.gateway {
            out.push(
                Finding::error(path.clone(), format!("{} is the gateway's address", id.ip))
                    .hint("give the node its own address"),
            );
        }
        if let Some(first) = ips.insert(id.ip, &id.path) {
            ips.insert(id.ip, first);
            out.push(
                Finding::error(path, format!("{} is also the IP of {first}", id.ip))
                    .hint("give each node its own address"),
            );
        }
    }
    if !net.contains(&n.vip) {
        out.push(
            Finding::error(
                "spec.network.vip",
                format!("{} is outside the node network {net}", n.vip),
            )
            .hint(outside_hint.clone()),
        );
    } else if special(n.vip) {
        out.push(
            Finding::error(
                "spec.network.vip",
                format!("{} is the network or broadcast address", n.vip),
            )
            .hint("use a free host address"),
        );
    }
    if n.vip == n.gateway {
        out.push(
            Finding::error(
                "spec.network.vip",
                format!("{} is the gateway's address", n.vip),
            )
            .hint("the VIP is a free address of the node network, used by no node"),
        );
    }
    if let Some(node) = ips.get(&n.vip) {
        out.push(
            Finding::error(
                "spec.network.vip",
                format!("{} is also the IP of {node}", n.vip),
            )
            .hint("the VIP is a free address of the node network, used by no node"),
        );
    }
    let (pod, svc) = (n.pod_cidr.trunc(), n.service_cidr.trunc());
    if overlaps(pod, svc) {
        out.push(
            Finding::error(
                "spec.network.serviceCIDR",
                format!("{svc} overlaps podCIDR {pod}"),
            )
            .hint("pod and service networks must be disjoint, e.g. 10.244.0.0/16 and 10.96.0.0/12"),
        );
    }
    for (path, cidr, name) in [
        ("spec.network.podCIDR", pod, "podCIDR"),
        ("spec.network.serviceCIDR", svc, "serviceCIDR"),
    ] {
        if overlaps(cidr, net) {
            out.push(
                Finding::error(
                    path,
                    format!("{name} {cidr} overlaps the node network {net}"),
                )
                .hint("choose a range the nodes' network does not use"),
            );
        }
    }
    if let Some(r) = n.lb_range {
        if !net.contains(&r.first) || !net.contains(&r.last) {
            out.push(
                Finding::error(
                    "spec.network.lbRange",
                    format!("{r} is not inside the node network {net}"),
                )
                .hint(outside_hint),
            );
        }
        let mut clashes: Vec<String> = ids
            .iter()
            .filter(|id| r.contains(id.ip))
            .map(|id| format!("{} ({})", id.ip, id.path))
            .collect();
        if r.contains(n.vip) {
            clashes.push(format!("the VIP {}", n.vip));
        }
        if r.contains(n.gateway) {
            clashes.push(format!("the gateway {}", n.gateway));
        }
        if !clashes.is_empty() {
            out.push(
                Finding::error(
                    "spec.network.lbRange",
                    format!("{r} contains {}", clashes.join(", ")),
                )
                .hint("the load-balancer pool must hold only free addresses"),
            );
        }
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn talos_rules(doc: &ClusterDocument, out: &mut Vec<Finding>) {
    let t = &doc.spec.talos;
    if !t.extensions.is_empty() && t.install_image.is_none() {
        out.push(
            Finding::error(
                "spec.talos.extensions",
                "extensions are listed but no installImage carries them",
            )
            .hint("set spec.talos.installImage to the factory.talos.dev installer of a schematic with these extensions"),
        );
    }
    if let Some(image) = &t.install_image {
        let tag = image
            .rsplit_once(':')
            .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty())
            .map(|(_, tag)| tag);
        match tag {
            Some(tag) if tag.parse::<super::Version>().is_ok_and(|v| v != t.version) => {
                out.push(
                    Finding::error(
                        "spec.talos.installImage",
                        format!("the image's tag {tag} differs from spec.talos.version {}", t.version),
                    )
                    .hint("the installer's tag is the version that gets installed: make them equal"),
                );
            }
            None => out.push(
                Finding::error("spec.talos.installImage", format!("`{image}` has no tag"))
                    .hint(format!("pin the installer to the Talos version, e.g. …/nocloud-installer/<schematic>:{}", t.version)),
            ),
            _ => {}
        }
    }
    if !t.install_disk.starts_with("/dev/") {
        out.push(
            Finding::error(
                "spec.talos.installDisk",
                format!("`{}` is not a device path", t.install_disk),
            )
            .hint("a device such as /dev/sda or /dev/vda"),
        );
    }
}

/// A node refuses a config whose Kubernetes its running Talos minor does not support (Talos's
/// `RuntimeValidate`, `InvalidArgument`): say so before any VM exists.
fn kubernetes_range_rule(doc: &ClusterDocument, out: &mut Vec<Finding>) {
    use super::compat::{Incompatible, kubernetes_supported};
    let talos = doc.spec.talos.version;
    let k8s = doc.spec.kubernetes.version;
    match kubernetes_supported(talos, k8s) {
        Ok(()) => {}
        Err(Incompatible::UnknownTalos { .. }) => out.push(
            Finding::error(
                "spec.talos.version",
                format!("kiln knows no Kubernetes range for Talos {talos}"),
            )
            .hint("kiln supports Talos 1.11, 1.12 and 1.13"),
        ),
        Err(
            e @ (Incompatible::TooOld { range, .. } | Incompatible::TooNew { range, .. }),
        ) => out.push(
            Finding::error(
                "spec.kubernetes.version",
                format!(
                    "Kubernetes {k8s} does not run on Talos {talos}: {e} (Talos {}.{} supports Kubernetes {})",
                    range.talos_minor.0,
                    range.talos_minor.1,
                    range.minors()
                ),
            )
            .hint(format!(
                "pick a Kubernetes version from {} for Talos {}.{}, or another Talos version",
                range.minors(),
                range.talos_minor.0,
                range.talos_minor.1
            )),
        ),
    }
}

fn app_rules(doc: &ClusterDocument, out: &mut Vec<Finding>) {
    let spec = &doc.spec;
    let longhorn_ready = spec.app_enabled_by_default(App::Longhorn);
    let longhorn_set = spec.app_spec(App::Longhorn).and_then(|a| a.enabled);
    if !longhorn_ready {
        let yaml = format!(
            "spec.talos.extensions: [siderolabs/{}, siderolabs/{}] (with an installImage that has them) and spec.apps.longhorn: {{enabled: true}}",
            LONGHORN_EXTENSIONS[0], LONGHORN_EXTENSIONS[1]
        );
        match longhorn_set {
            Some(true) => out.push(
                Finding::error(
                    "spec.apps.longhorn.enabled",
                    "longhorn is enabled but spec.talos.extensions lacks iscsi-tools and util-linux-tools; it cannot become healthy",
                )
                .hint(format!("add {yaml}")),
            ),
            Some(false) => {}
            None => out.push(
                Finding::warning(
                    "spec.apps.longhorn",
                    "longhorn is off: spec.talos.extensions lacks iscsi-tools and util-linux-tools",
                )
                .hint(format!("to turn it on, set {yaml}")),
            ),
        }
    }
    if spec.app_enabled(App::IngressNginx) {
        out.push(
            Finding::warning(
                "spec.apps.ingress-nginx",
                "ingress-nginx is enabled; it was retired upstream in March 2026 and gets no more security fixes",
            )
            .hint("set apps: {ingress-nginx: {enabled: false}, traefik: {enabled: true}} to switch"),
        );
    }
}

fn misc_rules(doc: &ClusterDocument, out: &mut Vec<Finding>) {
    for (host, urls) in &doc.spec.registries.mirrors {
        let base = super::position::join_key("spec.registries.mirrors", host);
        for (i, url) in urls.iter().enumerate() {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                out.push(
                    Finding::error(
                        format!("{base}[{i}]"),
                        format!("`{url}` is not an http(s) URL"),
                    )
                    .hint("e.g. https://registry.lan/v2/docker.io"),
                );
            }
        }
    }
    if let Some(b) = &doc.spec.backup {
        if b.schedule.0 < MIN_BACKUP_SCHEDULE {
            out.push(
                Finding::error(
                    "spec.backup.schedule",
                    format!("`{}` is shorter than 5m", b.schedule),
                )
                .hint(
                    "a duration such as 6h: each snapshot is the whole etcd database, streamed, \
                     encrypted, written and read back, which takes longer than a few minutes on a \
                     large cluster",
                ),
            );
        }
        let d = &b.destination;
        let s3_ok = d
            .strip_prefix("s3://")
            .is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !(d.starts_with('/') || s3_ok) {
            out.push(
                Finding::error(
                    "spec.backup.destination",
                    format!("`{d}` is neither an absolute folder nor s3://bucket/prefix"),
                )
                .hint("e.g. /var/backups/kiln or s3://backups/kiln"),
            );
        }
        for (i, r) in b.age_recipients.iter().enumerate() {
            // The age crate's own parser: the bech32 checksum and the key length, not just the
            // prefix, so a key mangled in copy and paste is refused here, not at the first snapshot.
            if r.parse::<age::x25519::Recipient>().is_err() {
                out.push(
                    Finding::error(
                        format!("spec.backup.ageRecipients[{i}]"),
                        format!("`{r}` is not an age X25519 recipient"),
                    )
                    .hint("an age public key, age1… (from `age-keygen -y KEYFILE`)"),
                );
            }
        }
    }
}
