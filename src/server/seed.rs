//! The original provisioning service's request body, turned into an intent document (DESIGN §8).
//!
//! Pure: the body, `[defaults]` and the addresses other clusters use go in; a `ClusterDocument` or
//! every problem (each with the body's own field path) comes out. Nothing here reads Git or the
//! clock, so the rules are unit-tested without a daemon.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::FieldError;
use crate::config::DefaultsConfig;
use crate::spec::ClusterDocument;
use crate::spec::diagnostic::clip_values;
use crate::spec::document::{
    ApiVersion, AppsSpec, ClusterSpec, Kind, KubernetesSpec, Metadata, NetworkSpec, NodeGroup,
    NodeSpec, ProxmoxSpec, RegistriesSpec, Resources, TalosSpec, TemplateRef,
};

/// `POST /api/v1/clusters` in the seed's shape. Only the schema (for the OpenAPI document) is
/// derived from this type: the body is read field by field by [`parse`], so that every wrong
/// field is reported at once rather than serde's first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "SeedClusterRequest",
    description = "The original provisioning service's body; kiln completes it from [defaults]"
)]
pub struct SeedRequest {
    /// The cluster's name (DNS-1123 label, at most 50 characters); the file is clusters/<name>.yaml.
    pub cluster_name: String,
    /// VMID = this prefix followed by the node number (40 → 401, 402, …).
    #[schemars(range(min = 1))]
    pub vmid_prefix: u32,
    #[schemars(range(min = 1))]
    pub control_plane_nodes: u32,
    /// Default 0.
    #[serde(default)]
    pub worker_nodes: u32,
    pub network_config: SeedNetwork,
    pub resource_config: SeedResources,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedNetwork {
    /// The control-plane VIP.
    pub vip: Ipv4Addr,
    /// Control planes first, then workers; workers left out get the next consecutive addresses
    /// after the last one given.
    #[schemars(length(min = 1))]
    pub node_ips: Vec<Ipv4Addr>,
    /// Default 10.244.0.0/16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub pod_cidr: Option<Ipv4Net>,
    /// Default 10.96.0.0/12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub service_cidr: Option<Ipv4Net>,
}

/// One size for every node, control planes and workers alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedResources {
    #[schemars(range(min = 1))]
    pub cpu_cores: u32,
    #[schemars(range(min = 1))]
    pub memory_gb: u32,
    #[schemars(range(min = 1))]
    pub storage_gb: u32,
}

/// An address another cluster at the tip holds (a node, its VIP, its load-balancer range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// For the message: e.g. `cluster production (VIP)`.
    pub owner: String,
}

impl UsedRange {
    fn holds(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }
}

/// Whether a JSON body is an intent document rather than the seed's body: only documents carry
/// `apiVersion` or `kind`, and the seed's fields are snake_case.
pub fn is_intent_document(body: &Value) -> bool {
    body.get("apiVersion").is_some() || body.get("kind").is_some()
}

/// Reads the seed body, reporting every missing, unknown or mistyped field with its path.
pub fn parse(body: &Value) -> Result<SeedRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(top) = body.as_object() else {
        return Err(vec![err("", "the body must be a JSON object")]);
    };
    unknown_fields(
        top,
        &[
            "cluster_name",
            "vmid_prefix",
            "control_plane_nodes",
            "worker_nodes",
            "network_config",
            "resource_config",
        ],
        "",
        &mut errors,
    );
    let cluster_name = string(top, "cluster_name", "cluster_name", &mut errors);
    let vmid_prefix = count(top, "vmid_prefix", "vmid_prefix", 1, true, &mut errors);
    let control_plane_nodes = count(
        top,
        "control_plane_nodes",
        "control_plane_nodes",
        1,
        true,
        &mut errors,
    );
    let worker_nodes = count(top, "worker_nodes", "worker_nodes", 0, false, &mut errors);

    let network = object(top, "network_config", "network_config", &mut errors);
    let (mut vip, mut node_ips, mut pod_cidr, mut service_cidr) = (None, None, None, None);
    if let Some(n) = network {
        unknown_fields(
            n,
            &["vip", "node_ips", "pod_cidr", "service_cidr"],
            "network_config.",
            &mut errors,
        );
        vip = string(n, "vip", "network_config.vip", &mut errors).and_then(|s| {
            parsed::<Ipv4Addr>(&s, "network_config.vip", "an IPv4 address", &mut errors)
        });
        node_ips = match n.get("node_ips") {
            None => {
                errors.push(err("network_config.node_ips", "is required"));
                None
            }
            Some(Value::Array(items)) => {
                let mut ips = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let path = format!("network_config.node_ips[{i}]");
                    match item.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                        Some(ip) => ips.push(ip),
                        None => {
                            ok = false;
                            errors
                                .push(err(path, "must be an IPv4 address, e.g. \"192.168.2.161\""));
                        }
                    }
                }
                ok.then_some(ips)
            }
            Some(_) => {
                errors.push(err(
                    "network_config.node_ips",
                    "must be a list of IPv4 addresses",
                ));
                None
            }
        };
        pod_cidr = optional_cidr(n, "pod_cidr", &mut errors);
        service_cidr = optional_cidr(n, "service_cidr", &mut errors);
    }

    let resources = object(top, "resource_config", "resource_config", &mut errors).map(|r| {
        unknown_fields(
            r,
            &["cpu_cores", "memory_gb", "storage_gb"],
            "resource_config.",
            &mut errors,
        );
        (
            count(
                r,
                "cpu_cores",
                "resource_config.cpu_cores",
                1,
                true,
                &mut errors,
            ),
            count(
                r,
                "memory_gb",
                "resource_config.memory_gb",
                1,
                true,
                &mut errors,
            ),
            count(
                r,
                "storage_gb",
                "resource_config.storage_gb",
                1,
                true,
                &mut errors,
            ),
        )
    });

    if !errors.is_empty() {
        return Err(errors);
    }
    // Every field was read above or an error recorded, so each `?` below is unreachable in
    // practice; they keep this function free of panics.
    let missing = || vec![err("", "the body is incomplete")];
    let (cpu, mem, disk) = resources.ok_or_else(missing)?;
    Ok(SeedRequest {
        cluster_name: cluster_name.ok_or_else(missing)?,
        vmid_prefix: vmid_prefix.ok_or_else(missing)?,
        control_plane_nodes: control_plane_nodes.ok_or_else(missing)?,
        worker_nodes: worker_nodes.unwrap_or(0),
        network_config: SeedNetwork {
            vip: vip.ok_or_else(missing)?,
            node_ips: node_ips.ok_or_else(missing)?,
            pod_cidr,
            service_cidr,
        },
        resource_config: SeedResources {
            cpu_cores: cpu.ok_or_else(missing)?,
            memory_gb: mem.ok_or_else(missing)?,
            storage_gb: disk.ok_or_else(missing)?,
        },
    })
}

/// The intent document for a seed body (DESIGN §8): `node_ips` are the control planes then the
/// workers; workers without an address get the next consecutive addresses after the last one
/// given; an address equal to the VIP, to another node's, or inside what another cluster uses is
/// refused; everything the body lacks comes from `[defaults]`.
pub fn to_document(
    seed: &SeedRequest,
    defaults: &DefaultsConfig,
    used: &[UsedRange],
) -> Result<ClusterDocument, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = seed
        .cluster_name
        .parse()
        .map_err(|e: String| errors.push(err("cluster_name", clip_values(&e))))
        .ok();
    let cps = seed.control_plane_nodes as usize;
    let workers = seed.worker_nodes as usize;
    let given = &seed.network_config.node_ips;
    if given.len() < cps {
        errors.push(err(
            "network_config.node_ips",
            format!(
                "lists {} address(es), but the {cps} control plane(s) need one each (control planes first, then workers)",
                given.len()
            ),
        ));
    }
    if given.len() > cps + workers {
        errors.push(err(
            "network_config.node_ips",
            format!(
                "lists {} addresses for {} node(s) ({cps} control plane(s), {workers} worker(s))",
                given.len(),
                cps + workers
            ),
        ));
    }
    let gateway = match defaults.gateway {
        IpAddr::V4(g) => Some(g),
        IpAddr::V6(_) => {
            errors.push(err(
                "",
                "[defaults] gateway is an IPv6 address; kiln's node network is IPv4",
            ));
            None
        }
    };

    // Every address with where it came from: given ones by index, derived ones by worker number.
    let mut ips: Vec<(Ipv4Addr, String)> = Vec::new();
    if let Some(&last) = given.last()
        && given.len() >= cps
    {
        ips.extend(
            given
                .iter()
                .enumerate()
                .map(|(i, ip)| (*ip, format!("network_config.node_ips[{i}]"))),
        );
        let mut next = u32::from(last);
        for k in given.len()..cps + workers {
            let Some(n) = next.checked_add(1) else {
                errors.push(err(
                    "network_config.node_ips",
                    "no address is left after the last one given for the remaining workers",
                ));
                break;
            };
            next = n;
            ips.push((
                Ipv4Addr::from(next),
                format!(
                    "worker_nodes (worker {}, the next address after network_config.node_ips[{}])",
                    k - cps + 1,
                    given.len() - 1
                ),
            ));
        }
    }
    let vip = seed.network_config.vip;
    let mut seen: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for (ip, path) in &ips {
        if *ip == vip {
            errors.push(err(
                path.clone(),
                format!("{ip} is the VIP (network_config.vip)"),
            ));
        } else if !seen.insert(*ip) {
            errors.push(err(
                path.clone(),
                format!("{ip} is given to another node of this cluster"),
            ));
        }
        if let Some(u) = used.iter().find(|u| u.holds(*ip)) {
            errors.push(err(path.clone(), format!("{ip} is used by {}", u.owner)));
        }
    }
    if let Some(u) = used.iter().find(|u| u.holds(vip)) {
        errors.push(err(
            "network_config.vip",
            format!("{vip} is used by {}", u.owner),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(name), Some(gateway)) = (name, gateway) else {
        return Err(errors);
    };

    let resources = Resources {
        cores: seed.resource_config.cpu_cores,
        memory_gib: seed.resource_config.memory_gb,
        disk_gib: seed.resource_config.storage_gb,
    };
    let nodes = |range: std::ops::Range<usize>| -> Vec<NodeSpec> {
        ips[range]
            .iter()
            .map(|(ip, _)| NodeSpec {
                ip: *ip,
                mac: None,
                number: None,
            })
            .collect()
    };
    Ok(ClusterDocument {
        api_version: ApiVersion::V1Alpha1,
        kind: Kind::Cluster,
        metadata: Metadata {
            name,
            labels: Default::default(),
        },
        spec: ClusterSpec {
            deletion_protection: false,
            proxmox: ProxmoxSpec {
                node: Some(defaults.proxmox_node.clone()),
                nodes: None,
                template: TemplateRef::Single(defaults.template),
                storage: defaults.storage.clone(),
                bridge: defaults.bridge.clone(),
                vlan: None,
                vmid_prefix: seed.vmid_prefix,
                pool: None,
            },
            talos: TalosSpec {
                version: defaults.talos_version,
                install_image: None,
                install_disk: defaults.install_disk.clone(),
                extensions: Vec::new(),
            },
            kubernetes: KubernetesSpec {
                version: defaults.kubernetes_version,
            },
            network: NetworkSpec {
                vip,
                gateway,
                prefix_length: defaults.prefix_length,
                nameservers: defaults.nameservers.clone(),
                pod_cidr: seed
                    .network_config
                    .pod_cidr
                    .unwrap_or_else(crate::spec::document::default_pod_cidr),
                service_cidr: seed
                    .network_config
                    .service_cidr
                    .unwrap_or_else(crate::spec::document::default_service_cidr),
                lb_range: None,
            },
            registries: RegistriesSpec::default(),
            control_plane: NodeGroup {
                resources,
                nodes: nodes(0..cps),
            },
            workers: (workers > 0).then(|| NodeGroup {
                resources,
                nodes: nodes(cps..cps + workers),
            }),
            apps: AppsSpec::default(),
            backup: None,
        },
    })
}

/// The seed field an intent document's field came from, so that a rule the validator applies to
/// the generated document (an address outside the node network, a VMID out of range) is reported
/// where the client can fix it. Fields the body does not have say so.
pub fn seed_path(intent_path: &str, control_planes: usize) -> String {
    let index = |rest: &str| -> Option<usize> {
        rest.strip_prefix('[')?
            .split_once(']')
            .and_then(|(n, _)| n.parse().ok())
    };
    if let Some(rest) = intent_path.strip_prefix("spec.controlPlane.nodes")
        && let Some(i) = index(rest)
    {
        return format!("network_config.node_ips[{i}]");
    }
    if let Some(rest) = intent_path.strip_prefix("spec.workers.nodes")
        && let Some(i) = index(rest)
    {
        return format!("network_config.node_ips[{}]", control_planes + i);
    }
    let direct = match intent_path {
        "metadata.name" => "cluster_name",
        "spec.proxmox.vmidPrefix" => "vmid_prefix",
        "spec.network.vip" => "network_config.vip",
        "spec.network.podCIDR" => "network_config.pod_cidr",
        "spec.network.serviceCIDR" => "network_config.service_cidr",
        "spec.controlPlane.nodes" => "control_plane_nodes",
        "spec.workers.nodes" => "worker_nodes",
        p if p.ends_with("resources.cores") => "resource_config.cpu_cores",
        p if p.ends_with("resources.memoryGiB") => "resource_config.memory_gb",
        p if p.ends_with("resources.diskGiB") => "resource_config.storage_gb",
        "" => "",
        other => {
            return format!(
                "{other} (not in the seed body: filled in from [defaults] or kiln's own defaults)"
            );
        }
    };
    direct.to_owned()
}

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
        line: None,
    }
}

fn unknown_fields(
    map: &serde_json::Map<String, Value>,
    known: &[&str],
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(err(
            format!("{prefix}{}", clip_values(key)),
            format!("unknown field; expected one of {}", known.join(", ")),
        ));
    }
}

fn string(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match map.get(key) {
        None => errors.push(err(path, "is required")),
        Some(Value::String(s)) => return Some(s.clone()),
        Some(_) => errors.push(err(path, "must be a string")),
    }
    None
}

fn object<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a serde_json::Map<String, Value>> {
    match map.get(key) {
        None => errors.push(err(path, "is required")),
        Some(Value::Object(o)) => return Some(o),
        Some(_) => errors.push(err(path, "must be an object")),
    }
    None
}

/// A whole number of at least `min` that fits a `u32`.
fn count(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    min: u64,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<u32> {
    match map.get(key) {
        None if required => errors.push(err(path, "is required")),
        None => {}
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if u64::from(n) >= min => return Some(n),
            _ => errors.push(err(
                path,
                format!("must be a whole number of at least {min}"),
            )),
        },
    }
    None
}

fn parsed<T: std::str::FromStr>(
    s: &str,
    path: &str,
    what: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match s.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            errors.push(err(path, format!("must be {what}")));
            None
        }
    }
}

fn optional_cidr(
    map: &serde_json::Map<String, Value>,
    key: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Ipv4Net> {
    let path = format!("network_config.{key}");
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            parsed::<Ipv4Net>(s, &path, "an IPv4 network, ADDRESS/PREFIX", errors)
        }
        Some(_) => {
            errors.push(err(path, "must be a string, ADDRESS/PREFIX"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "cluster_name": "analytics",
            "vmid_prefix": 42,
            "control_plane_nodes": 3,
            "worker_nodes": 3,
            "network_config": {
                "vip": "192.168.2.180",
                "node_ips": ["192.168.2.181", "192.168.2.182", "192.168.2.183", "192.168.2.184"],
                "pod_cidr": "10.244.0.0/16",
                "service_cidr": "10.96.0.0/12"
            },
            "resource_config": {"cpu_cores": 4, "memory_gb": 8, "storage_gb": 100}
        })
    }

    fn convert(body: &Value, used: &[UsedRange]) -> Result<ClusterDocument, Vec<FieldError>> {
        to_document(&parse(body)?, &DefaultsConfig::default(), used)
    }

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn control_planes_come_first_and_missing_workers_take_the_next_addresses() {
        let doc = convert(&body(), &[]).unwrap();
        let cp: Vec<String> = doc
            .spec
            .control_plane
            .nodes
            .iter()
            .map(|n| n.ip.to_string())
            .collect();
        assert_eq!(cp, ["192.168.2.181", "192.168.2.182", "192.168.2.183"]);
        let wk: Vec<String> = doc
            .spec
            .workers
            .as_ref()
            .unwrap()
            .nodes
            .iter()
            .map(|n| n.ip.to_string())
            .collect();
        assert_eq!(wk, ["192.168.2.184", "192.168.2.185", "192.168.2.186"]);
        assert_eq!(doc.metadata.name.as_str(), "analytics");
        assert_eq!(doc.spec.proxmox.vmid_prefix, 42);
        assert_eq!(doc.spec.control_plane.resources.memory_gib, 8);
        assert_eq!(doc.spec.workers.unwrap().resources.disk_gib, 100);
    }

    #[test]
    fn what_the_body_lacks_comes_from_defaults() {
        let defaults = DefaultsConfig {
            storage: "ceph-vm".into(),
            nameservers: vec!["9.9.9.9".parse().unwrap()],
            prefix_length: 23,
            ..Default::default()
        };
        let mut b = body();
        b["network_config"]
            .as_object_mut()
            .unwrap()
            .remove("pod_cidr");
        let doc = to_document(&parse(&b).unwrap(), &defaults, &[]).unwrap();
        assert_eq!(doc.spec.proxmox.storage, "ceph-vm");
        assert_eq!(
            doc.spec.proxmox.node.as_deref(),
            Some(defaults.proxmox_node.as_str())
        );
        assert_eq!(doc.spec.network.nameservers, defaults.nameservers);
        assert_eq!(doc.spec.network.prefix_length, 23);
        assert_eq!(
            doc.spec.network.gateway.to_string(),
            defaults.gateway.to_string()
        );
        assert_eq!(doc.spec.talos.version, defaults.talos_version);
        assert_eq!(doc.spec.kubernetes.version, defaults.kubernetes_version);
        assert_eq!(
            doc.spec.network.pod_cidr,
            crate::spec::document::default_pod_cidr()
        );
    }

    #[test]
    fn no_workers_means_no_worker_group() {
        let mut b = body();
        b["worker_nodes"] = json!(0);
        b["network_config"]["node_ips"] =
            json!(["192.168.2.181", "192.168.2.182", "192.168.2.183"]);
        assert!(convert(&b, &[]).unwrap().spec.workers.is_none());
    }

    #[test]
    fn a_derived_address_that_clashes_is_refused_where_it_came_from() {
        // The VIP right after the last given address: the second derived worker would take it.
        let mut b = body();
        b["network_config"]["vip"] = json!("192.168.2.186");
        let errors = convert(&b, &[]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].path.starts_with("worker_nodes (worker 3"),
            "{errors:?}"
        );
        assert!(errors[0].message.contains("is the VIP"), "{errors:?}");

        let other = UsedRange {
            first: "192.168.2.185".parse().unwrap(),
            last: "192.168.2.185".parse().unwrap(),
            owner: "cluster production (spec.controlPlane.nodes[0].ip)".into(),
        };
        let errors = convert(&body(), &[other]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("used by cluster production"),
            "{errors:?}"
        );
    }

    #[test]
    fn given_addresses_clash_with_each_other_the_vip_and_other_clusters() {
        let mut b = body();
        b["network_config"]["node_ips"] = json!([
            "192.168.2.181",
            "192.168.2.181",
            "192.168.2.180",
            "192.168.2.200"
        ]);
        let lb = UsedRange {
            first: "192.168.2.200".parse().unwrap(),
            last: "192.168.2.220".parse().unwrap(),
            owner: "cluster production (spec.network.lbRange)".into(),
        };
        let errors = convert(&b, &[lb]).unwrap_err();
        let p = paths(&errors);
        assert!(p.contains(&"network_config.node_ips[1]"), "{errors:?}");
        assert!(p.contains(&"network_config.node_ips[2]"), "{errors:?}");
        assert!(p.contains(&"network_config.node_ips[3]"), "{errors:?}");
        assert!(
            p.iter().filter(|x| x.starts_with("worker_nodes")).count() >= 2,
            "{errors:?}"
        );
    }

    #[test]
    fn every_wrong_field_is_reported_at_once_with_its_path() {
        let b = json!({
            "cluster_name": 7,
            "control_plane_nodes": 0,
            "extra": true,
            "network_config": {"vip": "not-an-ip", "node_ips": ["192.168.2.1", "x"], "pod_cidr": "10/8"},
            "resource_config": {"cpu_cores": -1, "memory_gb": 8}
        });
        let errors = parse(&b).unwrap_err();
        let mut p = paths(&errors);
        p.sort_unstable();
        assert_eq!(
            p,
            [
                "cluster_name",
                "control_plane_nodes",
                "extra",
                "network_config.node_ips[1]",
                "network_config.pod_cidr",
                "network_config.vip",
                "resource_config.cpu_cores",
                "resource_config.storage_gb",
                "vmid_prefix",
            ]
        );
        // A wrong value is named by its path, never echoed back.
        assert!(
            errors.iter().all(|e| !e.message.contains("not-an-ip")),
            "{errors:?}"
        );
    }

    #[test]
    fn too_few_or_too_many_addresses_and_a_bad_name() {
        let mut b = body();
        b["network_config"]["node_ips"] = json!(["192.168.2.181"]);
        b["cluster_name"] = json!("Not_A_Label");
        let errors = convert(&b, &[]).unwrap_err();
        assert_eq!(paths(&errors), ["cluster_name", "network_config.node_ips"]);
        let mut b = body();
        b["worker_nodes"] = json!(0);
        assert_eq!(
            paths(&convert(&b, &[]).unwrap_err()),
            ["network_config.node_ips"]
        );
    }

    #[test]
    fn intent_paths_map_back_to_the_seed_fields() {
        assert_eq!(
            seed_path("spec.workers.nodes[1].ip", 3),
            "network_config.node_ips[4]"
        );
        assert_eq!(
            seed_path("spec.controlPlane.nodes[0].ip", 3),
            "network_config.node_ips[0]"
        );
        assert_eq!(seed_path("spec.network.vip", 3), "network_config.vip");
        assert_eq!(
            seed_path("spec.workers.resources.diskGiB", 3),
            "resource_config.storage_gb"
        );
        assert_eq!(
            seed_path("spec.talos.version", 3),
            "spec.talos.version (not in the seed body: filled in from [defaults] or kiln's own defaults)"
        );
    }

    #[test]
    fn only_documents_carry_api_version_or_kind() {
        assert!(!is_intent_document(&body()));
        assert!(is_intent_document(
            &json!({"apiVersion": "kiln.dev/v1alpha1"})
        ));
        assert!(is_intent_document(&json!({"kind": "Cluster"})));
    }
}

#[cfg(test)]
mod example {
    use std::path::Path;

    use super::*;

    /// examples/api/create-cluster.json (the README's and e2e's body) becomes a file that passes
    /// `kiln validate`'s rules beside the example clusters, with every default filled in.
    #[test]
    fn the_example_body_becomes_a_valid_cluster_beside_the_example_clusters() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let body: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("examples/api/create-cluster.json")).unwrap(),
        )
        .unwrap();
        let doc = to_document(&parse(&body).unwrap(), &DefaultsConfig::default(), &[]).unwrap();
        let text = serde_yaml::to_string(&doc).unwrap();
        let mut files: Vec<(std::path::PathBuf, String)> = ["production", "staging"]
            .iter()
            .map(|n| {
                let p = root.join(format!("examples/clusters/{n}.yaml"));
                let t = std::fs::read_to_string(&p).unwrap();
                (p, t)
            })
            .collect();
        files.push(("clusters/analytics.yaml".into(), text.clone()));
        let outcome = crate::spec::load(files.iter().map(|(p, t)| (p.as_path(), t.as_str())));
        let errors: Vec<String> = outcome.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{text}");
        assert_eq!(outcome.clusters.len(), 3);
        let analytics = &outcome.clusters[2];
        assert_eq!(analytics.nodes.len(), 6);
        assert_eq!(analytics.nodes[5].ip.to_string(), "192.168.2.186");
        assert_eq!(analytics.nodes[5].vmid.to_string(), "426");
    }
}

#[cfg(test)]
mod schema {
    use super::*;

    /// The schema the OpenAPI document publishes for the seed body accepts the example and refuses
    /// what `parse` refuses for its shape (an unknown field, a missing one).
    #[test]
    fn the_published_seed_schema_agrees_with_the_example_and_the_parser() {
        let schema = serde_json::to_value(schemars::schema_for!(SeedRequest)).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let example: Value =
            serde_json::from_str(include_str!("../../examples/api/create-cluster.json")).unwrap();
        assert!(validator.is_valid(&example));
        assert!(parse(&example).is_ok());
        let mut unknown = example.clone();
        unknown["extra"] = Value::Bool(true);
        assert!(!validator.is_valid(&unknown));
        assert!(parse(&unknown).is_err());
        let mut missing = example;
        missing.as_object_mut().unwrap().remove("resource_config");
        assert!(!validator.is_valid(&missing));
        assert!(parse(&missing).is_err());
    }
}
