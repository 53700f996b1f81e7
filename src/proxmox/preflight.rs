//! Start-up permission preflight (DESIGN.md §3): which privileges kiln needs on which concrete paths,
//! and how to read PVE's answers. PVE resolves inheritance, propagation, pools and token privilege
//! separation itself (`GET /access/permissions?path=…`, pve-access-control
//! `src/PVE/API2/AccessControl.pm`), so nothing here re-implements them. Pure; the adapter asks.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::ownership::{TAG_CLUSTER_PREFIX, TAG_KILN, TAG_ROLE_PREFIX};

/// One VM the intent wants, as far as its permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedVm {
    pub vmid: u32,
    pub template: u32,
    pub storage: String,
    pub bridge: String,
    pub vlan: Option<u16>,
    pub pool: Option<String>,
    /// The tags kiln will write on it.
    pub tags: BTreeSet<String>,
}

/// Every VM the intent wants. The adapter narrows it to the VMs still to be made.
#[derive(Debug, Clone, Default)]
pub struct PreflightScope {
    pub vms: Vec<WantedVm>,
}

impl PreflightScope {
    pub fn for_clusters<'a>(clusters: impl IntoIterator<Item = &'a crate::spec::Cluster>) -> Self {
        let mut vms = Vec::new();
        for c in clusters {
            let p = &c.spec.proxmox;
            for n in &c.nodes {
                vms.push(WantedVm {
                    vmid: n.vmid.get(),
                    template: n.template.get(),
                    storage: p.storage.clone(),
                    bridge: p.bridge.clone(),
                    vlan: p.vlan,
                    pool: p.pool.clone(),
                    tags: [
                        TAG_KILN.to_owned(),
                        format!("{TAG_CLUSTER_PREFIX}{}", c.name.as_str()),
                        format!("{TAG_ROLE_PREFIX}{}", n.role.as_str()),
                    ]
                    .into(),
                });
            }
        }
        Self { vms }
    }
}

pub const VM_PRIVILEGES: [&str; 10] = [
    "VM.Allocate",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
    "VM.Config.HWType",
    "VM.PowerMgmt",
    "VM.Audit",
];

/// One privilege kiln needs, named at `path`. It is held when the answer for any path in `via` (the
/// path itself, and the pool the clone joins: qemu-server's `check_vm_perm` accepts either) has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub path: String,
    pub privilege: &'static str,
    pub via: Vec<String>,
}

impl Need {
    fn at(path: String, privilege: &'static str) -> Self {
        Self {
            via: vec![path.clone()],
            path,
            privilege,
        }
    }
}

/// The ACL path PVE checks `SDN.Use` on for a NIC (pve-guest-common `check_vnet_access`): the VLAN
/// under the bridge when tagged, else the bridge. Plain bridges live in zone `localnetwork`.
pub fn sdn_path(bridge: &str, vlan: Option<u16>) -> String {
    match vlan {
        Some(v) => format!("/sdn/zones/localnetwork/{bridge}/{v}"),
        None => format!("/sdn/zones/localnetwork/{bridge}"),
    }
}

/// The bridge and VLAN of every `netN` of a VM config. A clone checks them all (qemu-server
/// `check_bridge_access` on the source config), so the template's own NICs count, not only kiln's.
pub fn nets_of(config: &Map<String, Value>) -> BTreeSet<(String, Option<u16>)> {
    config
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix("net")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|(_, v)| v.as_str())
        .filter_map(|net| {
            let prop = |key: &str| {
                net.split(',')
                    .find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='))
            };
            let bridge = prop("bridge")?.to_owned();
            Some((bridge, prop("tag").and_then(|t| t.parse().ok())))
        })
        .collect()
}

/// Whether writing `tags` needs `Sys.Modify` on `/` under the datacenter's tag policy, read from
/// `GET /cluster/options`. pve-guest-common `get_allowed_tags`/`assert_tag_permissions`: a missing
/// `user-tag-access` or `user-allow` means `free`; a tag in `registered-tags` always needs it.
/// DESIGN.md §3 asks for it whenever `user-allow` is not `free`, even if `list`/`existing` would
/// happen to allow kiln's tags: such a list changes without kiln noticing.
pub fn tags_need_sys_modify(options: &Value, tags: &BTreeSet<String>) -> bool {
    let user_allow = match options.get("user-tag-access") {
        // PVE returns datacenter.cfg parsed (a hash); a property string is read the same way.
        Some(Value::Object(o)) => o
            .get("user-allow")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(Value::String(s)) => s
            .split(',')
            .find_map(|p| p.trim().strip_prefix("user-allow="))
            .map(str::to_owned),
        _ => None,
    };
    let registered: BTreeSet<String> = match options.get("registered-tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect(),
        Some(Value::String(s)) => s
            .split([';', ',', ' '])
            .filter(|t| !t.is_empty())
            .map(str::to_ascii_lowercase)
            .collect(),
        _ => BTreeSet::new(),
    };
    user_allow.as_deref().unwrap_or("free") != "free" || tags.iter().any(|t| registered.contains(t))
}

/// Everything kiln needs to make `to_create` (DESIGN.md §3), given the templates' own NICs and the
/// tag policy's verdict. `Sys.Audit` on `/` is always needed: without it the tag policy is hidden.
pub fn required(
    to_create: &[&WantedVm],
    template_nets: &BTreeMap<u32, BTreeSet<(String, Option<u16>)>>,
    sys_modify: bool,
) -> Vec<Need> {
    let mut need = vec![Need::at("/".to_owned(), "Sys.Audit")];
    if sys_modify {
        need.push(Need::at("/".to_owned(), "Sys.Modify"));
    }
    let mut templates = BTreeSet::new();
    let mut storages = BTreeSet::new();
    let mut nets = BTreeSet::new();
    for vm in to_create {
        templates.insert(vm.template);
        storages.insert(vm.storage.clone());
        nets.insert((vm.bridge.clone(), vm.vlan));
        let path = format!("/vms/{}", vm.vmid);
        let mut via = vec![path.clone()];
        via.extend(vm.pool.iter().map(|p| format!("/pool/{p}")));
        need.extend(VM_PRIVILEGES.into_iter().map(|privilege| Need {
            path: path.clone(),
            privilege,
            via: via.clone(),
        }));
    }
    for t in &templates {
        need.push(Need::at(format!("/vms/{t}"), "VM.Clone"));
        need.push(Need::at(format!("/vms/{t}"), "VM.Audit"));
        nets.extend(template_nets.get(t).into_iter().flatten().cloned());
    }
    for s in storages {
        need.push(Need::at(format!("/storage/{s}"), "Datastore.AllocateSpace"));
    }
    for (bridge, vlan) in nets {
        need.push(Need::at(sdn_path(&bridge, vlan), "SDN.Use"));
    }
    need
}

/// The privileges an answer of `GET /access/permissions?path=…` grants on that path: the union of its
/// entries. PVE answers one entry, already resolved; fakepve the granting entries of the path and its
/// parents (DESIGN.md §9). The union is right for both.
pub fn held_at(answer: &Value) -> BTreeSet<String> {
    answer
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(Value::as_object)
        .flat_map(|privs| privs.keys().cloned())
        .collect()
}

/// `Privilege on /path` for every need no answer grants, grouped by path in the order `required`
/// first names each path.
pub fn missing(need: &[Need], held: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let lacking: Vec<&Need> = need
        .iter()
        .filter(|n| {
            !n.via
                .iter()
                .any(|p| held.get(p).is_some_and(|s| s.contains(n.privilege)))
        })
        .collect();
    let mut paths: Vec<&str> = Vec::new();
    for n in &lacking {
        if !paths.contains(&n.path.as_str()) {
            paths.push(&n.path);
        }
    }
    paths
        .into_iter()
        .flat_map(|p| {
            lacking
                .iter()
                .filter(move |n| n.path == p)
                .map(|n| format!("{} on {}", n.privilege, n.path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(vmid: u32, pool: Option<&str>) -> WantedVm {
        WantedVm {
            vmid,
            template: 9000,
            storage: "local-lvm".into(),
            bridge: "vmbr1".into(),
            vlan: Some(20),
            pool: pool.map(str::to_owned),
            tags: ["kiln".to_owned()].into(),
        }
    }

    fn nets(list: &[(&str, Option<u16>)]) -> BTreeMap<u32, BTreeSet<(String, Option<u16>)>> {
        [(
            9000,
            list.iter().map(|(b, v)| ((*b).to_owned(), *v)).collect(),
        )]
        .into()
    }

    #[test]
    fn every_path_of_the_list_is_asked_and_named() {
        let a = vm(401, None);
        let need = required(&[&a], &nets(&[("vmbr0", None)]), false);
        let named: BTreeSet<String> = need
            .iter()
            .map(|n| format!("{} on {}", n.privilege, n.path))
            .collect();
        for want in [
            "Sys.Audit on /",
            "VM.Clone on /vms/9000",
            "VM.Audit on /vms/9000",
            "VM.Allocate on /vms/401",
            "VM.Config.HWType on /vms/401",
            "VM.PowerMgmt on /vms/401",
            "Datastore.AllocateSpace on /storage/local-lvm",
            "SDN.Use on /sdn/zones/localnetwork/vmbr1/20",
            "SDN.Use on /sdn/zones/localnetwork/vmbr0",
        ] {
            assert!(named.contains(want), "{want} not in {named:?}");
        }
        assert!(!named.contains("Sys.Modify on /"));
        assert_eq!(need.len(), 1 + 10 + 2 + 1 + 2);
        // Nothing to make: only what the tag policy's reading needs.
        assert_eq!(
            required(&[], &BTreeMap::new(), false),
            vec![Need::at("/".into(), "Sys.Audit")]
        );
    }

    #[test]
    fn a_pool_grant_counts_for_the_vms_joining_it() {
        let a = vm(401, Some("kiln"));
        let need = required(&[&a], &BTreeMap::new(), false);
        let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        held.insert(
            "/pool/kiln".into(),
            VM_PRIVILEGES.iter().map(|p| (*p).to_owned()).collect(),
        );
        let m = missing(&need, &held);
        assert!(!m.iter().any(|x| x.contains("/vms/401")), "{m:?}");
        assert!(m.contains(&"VM.Clone on /vms/9000".to_owned()), "{m:?}");
    }

    #[test]
    fn answers_are_read_as_the_union_of_their_entries() {
        // fakepve: the granting entries of the path and its parents.
        let fake = json!({"/": {"Sys.Audit": 1}, "/vms": {"VM.Allocate": 1}});
        assert_eq!(
            held_at(&fake),
            ["Sys.Audit".to_owned(), "VM.Allocate".to_owned()].into()
        );
        // PVE: one entry for the path asked, already resolved (propagate flags as values).
        let pve = json!({"/vms/401": {"VM.Allocate": 1, "VM.Audit": 0}});
        assert_eq!(
            held_at(&pve),
            ["VM.Allocate".to_owned(), "VM.Audit".to_owned()].into()
        );
        assert!(held_at(&json!({})).is_empty());
    }

    #[test]
    fn the_missing_list_is_grouped_per_path() {
        let a = vm(401, None);
        let need = required(&[&a], &BTreeMap::new(), true);
        let held: BTreeMap<String, BTreeSet<String>> = [
            ("/".to_owned(), ["Sys.Audit".to_owned()].into()),
            (
                "/vms/401".to_owned(),
                VM_PRIVILEGES
                    .iter()
                    .filter(|p| **p != "VM.PowerMgmt")
                    .map(|p| (*p).to_owned())
                    .collect(),
            ),
        ]
        .into();
        assert_eq!(
            missing(&need, &held),
            vec![
                "Sys.Modify on /",
                "VM.PowerMgmt on /vms/401",
                "VM.Clone on /vms/9000",
                "VM.Audit on /vms/9000",
                "Datastore.AllocateSpace on /storage/local-lvm",
                "SDN.Use on /sdn/zones/localnetwork/vmbr1/20",
            ]
        );
    }

    #[test]
    fn the_tag_policy_needs_sys_modify_only_when_pve_would() {
        let tags: BTreeSet<String> = ["kiln".to_owned(), "kiln-cluster-prod".to_owned()].into();
        // A default datacenter has no user-tag-access: PVE's default is `free`.
        assert!(!tags_need_sys_modify(&json!({}), &tags));
        assert!(!tags_need_sys_modify(
            &json!({"user-tag-access": {"user-allow": "free"}}),
            &tags
        ));
        assert!(!tags_need_sys_modify(
            &json!({"user-tag-access": {"user-allow-list": ["x"]}}),
            &tags
        ));
        for policy in ["none", "list", "existing"] {
            assert!(tags_need_sys_modify(
                &json!({"user-tag-access": {"user-allow": policy}}),
                &tags
            ));
            assert!(tags_need_sys_modify(
                &json!({"user-tag-access": format!("user-allow={policy}")}),
                &tags
            ));
        }
        assert!(tags_need_sys_modify(
            &json!({"registered-tags": ["other", "Kiln"]}),
            &tags
        ));
        assert!(!tags_need_sys_modify(
            &json!({"registered-tags": ["other"]}),
            &tags
        ));
        assert!(tags_need_sys_modify(
            &json!({"registered-tags": "other;kiln-cluster-prod"}),
            &tags
        ));
    }

    #[test]
    fn nics_are_read_from_every_net_key() {
        let cfg = json!({
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0",
            "net1": "virtio=BC:24:11:AA:BB:CD,bridge=vmbr2,tag=30,firewall=1",
            "netx": "bridge=nope",
            "ipconfig0": "ip=dhcp",
        });
        assert_eq!(
            nets_of(cfg.as_object().unwrap()),
            [("vmbr0".to_owned(), None), ("vmbr2".to_owned(), Some(30))].into()
        );
    }
}
