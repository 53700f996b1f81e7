//! The typed view of one `GET /cluster/resources?type=vm` (DESIGN.md §3 "Observe cheaply"). Pure, so
//! the same classification serves the API adapter, the simulator and the benchmark.
//!
//! The listing has tags and names but no description, so the marker is not visible here: an untagged,
//! stopped VM with a kiln node's name is only a *candidate* half-made VM; adopting it re-reads its
//! config and checks the marker first.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::ProxmoxError;
use super::ownership::{
    TAG_CLUSTER_PREFIX, TAG_KILN, TAG_ROLE_PREFIX, has_kiln_tags, parse_tags, parse_vm_name,
    vmid_matches_number,
};
use crate::spec::Role;

/// Power state as the listing reports it. `Unknown` (a node that stopped reporting, or a missing
/// field) is never read as stopped or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    Running,
    Stopped,
    Paused,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KilnNodeRef {
    pub cluster: String,
    pub number: u32,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// kiln's tags, consistent with the name and VMID (the marker is checked before any write).
    Kiln(KilnNodeRef),
    /// Stopped, no tags, a kiln node's name: possibly kiln's clone whose configuration never ran.
    HalfMade(KilnNodeRef),
    /// kiln-tagged, but tags, name and VMID disagree: reported, never touched.
    Mismatched { reason: String },
    /// Anything else, templates included.
    Foreign { reason: String },
}

/// Sizes as the listing reports them (`None`: not reported, i.e. unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListedSize {
    pub cores: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVm {
    pub vmid: u32,
    pub pve_node: String,
    pub name: String,
    pub status: PowerState,
    pub template: bool,
    pub lock: Option<String>,
    pub size: ListedSize,
    pub ownership: Ownership,
}

/// One observation of every QEMU VM, keyed by VMID.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    vms: BTreeMap<u32, ObservedVm>,
    /// VMIDs of kiln's and half-made VMs by cluster name, and of every mismatched VM: each
    /// cluster's turn looks up its own VMs, and scanning the whole listing for each made a cycle
    /// quadratic in the fleet (benches/scale.rs: 10,000 clusters took seconds to plan).
    by_cluster: BTreeMap<String, Vec<u32>>,
    mismatched: Vec<u32>,
}

#[derive(Deserialize)]
struct Envelope {
    data: QemuVms,
}

/// The listing's `data`, each entry classified as it is parsed: the whole list of entries (with the
/// containers kiln drops) never exists at once, which was 2 MB beside the body for 5,000 VMs.
struct QemuVms(BTreeMap<u32, ObservedVm>);

impl<'de> Deserialize<'de> for QemuVms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = QemuVms;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of cluster resources")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<QemuVms, A::Error> {
                let mut vms = BTreeMap::new();
                while let Some(e) = seq.next_element::<Entry>()? {
                    // Containers share the listing; kiln only makes QEMU VMs.
                    if e.kind.as_deref() != Some("qemu") {
                        continue;
                    }
                    let Some(vmid) = e.vmid else { continue };
                    vms.insert(vmid, classify(vmid, e));
                }
                Ok(QemuVms(vms))
            }
        }
        d.deserialize_seq(Entries)
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: Option<String>,
    vmid: Option<u32>,
    node: Option<String>,
    name: Option<String>,
    status: Option<String>,
    tags: Option<String>,
    template: Option<u8>,
    lock: Option<String>,
    maxcpu: Option<f64>,
    maxmem: Option<u64>,
    maxdisk: Option<u64>,
}

impl Inventory {
    /// Parses the body of `GET /cluster/resources?type=vm` (the `{"data": [...]}` envelope).
    pub fn from_listing_json(body: &[u8]) -> Result<Self, ProxmoxError> {
        let env: Envelope = serde_json::from_slice(body)
            .map_err(|e| ProxmoxError::Protocol(format!("/cluster/resources: {e}")))?;
        Ok(Self::indexed(env.data.0))
    }

    pub fn from_vms(list: impl IntoIterator<Item = ObservedVm>) -> Self {
        Self::indexed(list.into_iter().map(|v| (v.vmid, v)).collect())
    }

    fn indexed(vms: BTreeMap<u32, ObservedVm>) -> Self {
        let mut by_cluster: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut mismatched = Vec::new();
        // In VMID order, so each list is sorted.
        for vm in vms.values() {
            match &vm.ownership {
                Ownership::Kiln(r) | Ownership::HalfMade(r) => by_cluster
                    .entry(r.cluster.clone())
                    .or_default()
                    .push(vm.vmid),
                Ownership::Mismatched { .. } => mismatched.push(vm.vmid),
                Ownership::Foreign { .. } => {}
            }
        }
        Self {
            vms,
            by_cluster,
            mismatched,
        }
    }

    /// In VMID order: the VMs kiln's or half-made for `cluster`, and every mismatched VM (which
    /// cluster a mismatched VM concerns is the caller's judgement). The same VMs, in the same
    /// order, as filtering [`Inventory::iter`] for them.
    pub fn cluster_candidates<'a>(&'a self, cluster: &str) -> impl Iterator<Item = &'a ObservedVm> {
        let own = self
            .by_cluster
            .get(cluster)
            .map_or(&[][..], |v| v.as_slice());
        let mut ids: Vec<u32> = own.iter().chain(&self.mismatched).copied().collect();
        if !own.is_empty() && !self.mismatched.is_empty() {
            ids.sort_unstable();
        }
        ids.into_iter().filter_map(move |id| self.vms.get(&id))
    }

    pub fn get(&self, vmid: u32) -> Option<&ObservedVm> {
        self.vms.get(&vmid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ObservedVm> {
        self.vms.values()
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// kiln's VMs of one cluster, by node number.
    pub fn cluster(&self, name: &str) -> BTreeMap<u32, &ObservedVm> {
        self.cluster_candidates(name)
            .filter_map(|vm| match &vm.ownership {
                Ownership::Kiln(r) if r.cluster == name => Some((r.number, vm)),
                _ => None,
            })
            .collect()
    }

    /// VMs kiln reports and never touches: kiln-tagged but inconsistent.
    pub fn mismatched(&self) -> impl Iterator<Item = &ObservedVm> {
        self.vms
            .values()
            .filter(|vm| matches!(vm.ownership, Ownership::Mismatched { .. }))
    }

    /// Where a template lives (a per-node template or a shared one).
    pub fn template_node(&self, vmid: u32) -> Option<&str> {
        self.vms
            .get(&vmid)
            .filter(|vm| vm.template)
            .map(|vm| vm.pve_node.as_str())
    }
}

fn power(status: Option<&str>) -> PowerState {
    match status {
        Some("running") => PowerState::Running,
        Some("stopped") => PowerState::Stopped,
        Some("paused") | Some("suspended") => PowerState::Paused,
        _ => PowerState::Unknown,
    }
}

fn classify(vmid: u32, e: Entry) -> ObservedVm {
    let name = e.name.unwrap_or_default();
    let status = power(e.status.as_deref());
    let template = e.template == Some(1);
    let tags = parse_tags(e.tags.as_deref().unwrap_or(""));
    let ownership = if template {
        Ownership::Foreign {
            reason: "a template".into(),
        }
    } else if has_kiln_tags(&tags) {
        tagged(vmid, &name, &tags)
    } else {
        match parse_vm_name(&name) {
            // Only a VM with no tags at all can be kiln's clone whose tags were never written
            // (DESIGN.md §3); other tags were put there by a person, and that VM is theirs now.
            Some((cluster, role, number))
                if status == PowerState::Stopped
                    && tags.is_empty()
                    && vmid_matches_number(vmid, number) =>
            {
                Ownership::HalfMade(KilnNodeRef {
                    cluster: cluster.to_owned(),
                    number,
                    role,
                })
            }
            Some(_) if status == PowerState::Running => Ownership::Foreign {
                reason: format!(
                    "`{name}` is running without kiln's tags: changed by a person, not adopted"
                ),
            },
            Some(_) if !tags.is_empty() => Ownership::Foreign {
                reason: format!(
                    "`{name}` carries tags {tags:?} but not kiln's: changed by a person, not adopted"
                ),
            },
            _ => Ownership::Foreign {
                reason: "no kiln tags".into(),
            },
        }
    };
    ObservedVm {
        vmid,
        pve_node: e.node.unwrap_or_default(),
        name,
        status,
        template,
        lock: e.lock.filter(|l| !l.is_empty()),
        size: ListedSize {
            cores: e.maxcpu.map(|c| c as u32),
            memory_bytes: e.maxmem,
            disk_bytes: e.maxdisk,
        },
        ownership,
    }
}

fn tagged(vmid: u32, name: &str, tags: &std::collections::BTreeSet<String>) -> Ownership {
    let clusters: Vec<&str> = tags
        .iter()
        .filter_map(|t| t.strip_prefix(TAG_CLUSTER_PREFIX))
        .collect();
    let roles: Vec<&str> = tags
        .iter()
        .filter_map(|t| t.strip_prefix(TAG_ROLE_PREFIX))
        .collect();
    let mismatched = |reason: String| Ownership::Mismatched { reason };
    if !tags.contains(TAG_KILN) || clusters.len() != 1 || roles.len() != 1 {
        return mismatched(format!("incomplete or ambiguous kiln tags {tags:?}"));
    }
    let Some((cluster, role, number)) = parse_vm_name(name) else {
        return mismatched(format!("kiln-tagged, but `{name}` is not a kiln node name"));
    };
    if cluster != clusters[0] {
        return mismatched(format!(
            "name says cluster `{cluster}`, tags say `{}`",
            clusters[0]
        ));
    }
    if role.as_str() != roles[0] {
        return mismatched(format!("name says {role}, tags say {}", roles[0]));
    }
    if !vmid_matches_number(vmid, number) {
        return mismatched(format!(
            "VMID {vmid} does not end with node number {number}"
        ));
    }
    Ownership::Kiln(KilnNodeRef {
        cluster: cluster.to_owned(),
        number,
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind() {
        let body = br#"{"data":[
          {"type":"qemu","vmid":401,"node":"pve1","name":"prod-cp-1","status":"running","template":0,
           "tags":"kiln;kiln-cluster-prod;kiln-role-controlplane","maxcpu":4,"maxmem":8589934592,"maxdisk":1},
          {"type":"qemu","vmid":402,"node":"pve1","name":"prod-cp-2","status":"stopped","template":0},
          {"type":"qemu","vmid":403,"node":"pve1","name":"prod-cp-3","status":"running","template":0},
          {"type":"qemu","vmid":406,"node":"pve1","name":"prod-wk-6","status":"stopped","template":0,
           "tags":"hand-made;mine"},
          {"type":"qemu","vmid":404,"node":"pve2","name":"prod-wk-4","status":"unknown","template":0,
           "tags":"kiln;kiln-cluster-other;kiln-role-worker"},
          {"type":"qemu","vmid":9000,"node":"pve1","name":"talos","status":"stopped","template":1},
          {"type":"lxc","vmid":500,"node":"pve1","name":"ct","status":"running"},
          {"type":"qemu","vmid":405,"node":"pve2","name":"prod-wk-5","template":0,
           "tags":"kiln;kiln-cluster-prod;kiln-role-worker"}
        ]}"#;
        let inv = Inventory::from_listing_json(body).unwrap();
        assert_eq!(inv.len(), 7, "the container is not kiln's business");
        assert!(matches!(inv.get(401).unwrap().ownership, Ownership::Kiln(ref r) if r.number == 1));
        assert_eq!(inv.get(401).unwrap().size.cores, Some(4));
        assert!(matches!(
            inv.get(402).unwrap().ownership,
            Ownership::HalfMade(_)
        ));
        assert!(matches!(
            inv.get(403).unwrap().ownership,
            Ownership::Foreign { .. }
        ));
        assert!(
            matches!(inv.get(406).unwrap().ownership, Ownership::Foreign { .. }),
            "a stopped VM whose tags a person replaced is not a half-made clone"
        );
        assert!(matches!(
            inv.get(404).unwrap().ownership,
            Ownership::Mismatched { .. }
        ));
        assert_eq!(inv.get(404).unwrap().status, PowerState::Unknown);
        assert_eq!(
            inv.get(405).unwrap().status,
            PowerState::Unknown,
            "missing status is unknown"
        );
        assert_eq!(inv.template_node(9000), Some("pve1"));
        assert_eq!(inv.cluster("prod").len(), 2);
        assert_eq!(inv.mismatched().count(), 1);
    }

    /// The per-cluster index gives what a scan of the whole listing gives, in the same order.
    #[test]
    fn cluster_candidates_are_the_scan_of_the_listing() {
        let body = br#"{"data":[
          {"type":"qemu","vmid":1011,"node":"pve1","name":"a-cp-1","status":"running",
           "tags":"kiln;kiln-cluster-a;kiln-role-controlplane"},
          {"type":"qemu","vmid":1005,"node":"pve1","name":"a-x-cp-5","status":"running",
           "tags":"kiln;kiln-cluster-a-x;kiln-role-controlplane"},
          {"type":"qemu","vmid":1012,"node":"pve1","name":"a-cp-2","status":"stopped"},
          {"type":"qemu","vmid":1003,"node":"pve1","name":"a-cp-3","status":"running",
           "tags":"kiln;kiln-cluster-b;kiln-role-controlplane"},
          {"type":"qemu","vmid":1021,"node":"pve1","name":"b-wk-1","status":"running",
           "tags":"kiln;kiln-cluster-b;kiln-role-worker"},
          {"type":"qemu","vmid":1099,"node":"pve1","name":"web","status":"running"}
        ]}"#;
        let inv = Inventory::from_listing_json(body).unwrap();
        for name in ["a", "a-x", "b", "c"] {
            let scan: Vec<u32> = inv
                .iter()
                .filter(|vm| match &vm.ownership {
                    Ownership::Kiln(r) | Ownership::HalfMade(r) => r.cluster == name,
                    Ownership::Mismatched { .. } => true,
                    Ownership::Foreign { .. } => false,
                })
                .map(|vm| vm.vmid)
                .collect();
            let indexed: Vec<u32> = inv.cluster_candidates(name).map(|vm| vm.vmid).collect();
            assert_eq!(indexed, scan, "cluster {name}");
        }
        assert_eq!(
            inv.cluster_candidates("a")
                .map(|vm| vm.vmid)
                .collect::<Vec<_>>(),
            [1003, 1011, 1012],
            "the mismatched VM 1003 comes first, in VMID order"
        );
    }
}
