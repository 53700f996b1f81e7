//! Start-up permission preflight (DESIGN.md §3): read `GET /access/permissions` once and name every
//! privilege the token lacks, before anything changes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What kiln will touch: the templates it clones, the storages, bridges (with VLAN) and pool.
#[derive(Debug, Clone, Default)]
pub struct PreflightScope {
    pub templates: BTreeSet<u32>,
    pub storages: BTreeSet<String>,
    /// (bridge, vlan)
    pub bridges: BTreeSet<(String, Option<u16>)>,
    pub pool: Option<String>,
    /// The datacenter's `user-tag-access` lets anyone set new tags (`free`).
    pub tags_free: bool,
}

impl PreflightScope {
    /// What these clusters' VMs will touch.
    pub fn for_clusters<'a>(clusters: impl IntoIterator<Item = &'a crate::spec::Cluster>) -> Self {
        let mut scope = Self::default();
        let mut pools = BTreeSet::new();
        for c in clusters {
            let p = &c.spec.proxmox;
            scope
                .templates
                .extend(c.nodes.iter().map(|n| n.template.get()));
            scope.storages.insert(p.storage.clone());
            scope.bridges.insert((p.bridge.clone(), p.vlan));
            pools.insert(p.pool.clone());
        }
        // VMs all in one pool: the privileges may be granted there; otherwise they are needed on /vms.
        if pools.len() == 1 {
            scope.pool = pools.into_iter().next().flatten();
        }
        scope
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

/// Every (path, privilege) kiln needs for this scope.
pub fn required(scope: &PreflightScope) -> Vec<(String, &'static str)> {
    let mut need = Vec::new();
    for t in &scope.templates {
        need.push((format!("/vms/{t}"), "VM.Clone"));
    }
    let vms = match &scope.pool {
        Some(pool) => format!("/pool/{pool}"),
        None => "/vms".to_owned(),
    };
    for p in VM_PRIVILEGES {
        need.push((vms.clone(), p));
    }
    for s in &scope.storages {
        need.push((format!("/storage/{s}"), "Datastore.AllocateSpace"));
    }
    for (bridge, vlan) in &scope.bridges {
        let mut path = format!("/sdn/zones/localnetwork/{bridge}");
        if let Some(v) = vlan {
            path.push_str(&format!("/{v}"));
        }
        need.push((path, "SDN.Use"));
    }
    need.push(("/".to_owned(), "Sys.Audit"));
    if !scope.tags_free {
        need.push(("/".to_owned(), "Sys.Modify"));
    }
    need
}

/// Parses `{path: {privilege: propagate}}`.
pub fn parse_held(data: &Value) -> BTreeMap<String, BTreeSet<String>> {
    data.as_object()
        .map(|o| {
            o.iter()
                .map(|(path, privs)| {
                    let set = privs
                        .as_object()
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default();
                    (path.clone(), set)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `path: privilege` entries missing, in the order `required` lists them. A privilege held on a
/// parent path counts (PVE propagates ACLs by default; a non-propagating one still shows at its own
/// path, which is the one kiln asks about for templates).
pub fn missing(
    held: &BTreeMap<String, BTreeSet<String>>,
    need: &[(String, &'static str)],
) -> Vec<String> {
    need.iter()
        .filter(|(path, privilege)| {
            !held.iter().any(|(p, privs)| {
                privs.contains(*privilege)
                    && (p == "/" || p == path || path.starts_with(&format!("{p}/")))
            })
        })
        .map(|(path, privilege)| format!("{privilege} on {path}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_every_missing_privilege() {
        let scope = PreflightScope {
            templates: [9000].into(),
            storages: ["local-lvm".to_owned()].into(),
            bridges: [("vmbr0".to_owned(), Some(20))].into(),
            pool: None,
            tags_free: false,
        };
        let held = parse_held(&json!({
            "/vms": {"VM.Allocate": 1, "VM.Audit": 1, "VM.Clone": 1},
            "/sdn/zones/localnetwork": {"SDN.Use": 1}
        }));
        let m = missing(&held, &required(&scope));
        assert!(m.contains(&"VM.PowerMgmt on /vms".to_owned()));
        assert!(m.contains(&"Datastore.AllocateSpace on /storage/local-lvm".to_owned()));
        assert!(m.contains(&"Sys.Modify on /".to_owned()));
        assert!(
            !m.iter().any(|x| x.starts_with("VM.Clone")),
            "inherited from /vms"
        );
        assert!(
            !m.iter().any(|x| x.starts_with("SDN.Use")),
            "inherited from the zone"
        );
        let root = parse_held(&json!({"/": {"VM.Allocate": 1}}));
        assert!(!missing(&root, &required(&scope)).contains(&"VM.Allocate on /vms".to_owned()));
    }
}
