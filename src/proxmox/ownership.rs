//! Who owns a VM (DESIGN.md §3): kiln's tags, the `kiln-owner:` marker in the description, a name and
//! VMID that agree with the node number. Pure: the checks take what Proxmox said and decide.

use std::collections::BTreeSet;

use crate::spec::{Cluster, Node, Role, Vmid};

pub const TAG_KILN: &str = "kiln";
pub const TAG_CLUSTER_PREFIX: &str = "kiln-cluster-";
pub const TAG_ROLE_PREFIX: &str = "kiln-role-";
pub const MARKER_PREFIX: &str = "kiln-owner: ";

/// Everything that names one node's VM; what the ownership rules compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    pub cluster: String,
    /// A key of the cluster's secrets bundle: a VM made for an earlier cluster of the same name is
    /// not this one's.
    pub cluster_uid: String,
    pub number: u32,
    pub role: Role,
    pub name: String,
    pub vmid: Vmid,
    pub pve_node: String,
}

impl VmIdentity {
    pub fn for_node(cluster: &Cluster, node: &Node, cluster_uid: &str) -> Self {
        Self {
            cluster: cluster.name.as_str().to_owned(),
            cluster_uid: cluster_uid.to_owned(),
            number: node.number,
            role: node.role,
            name: node.name.clone(),
            vmid: node.vmid,
            pve_node: node.pve_node.clone(),
        }
    }

    /// The first line of the VM's description.
    pub fn marker(&self) -> String {
        format!(
            "{MARKER_PREFIX}{}/{}/{}",
            self.cluster, self.number, self.cluster_uid
        )
    }

    pub fn tag_set(&self) -> BTreeSet<String> {
        [
            TAG_KILN.to_owned(),
            format!("{TAG_CLUSTER_PREFIX}{}", self.cluster),
            format!("{TAG_ROLE_PREFIX}{}", self.role.as_str()),
        ]
        .into_iter()
        .collect()
    }

    /// As Proxmox stores tags: lowercase, sorted, `;`-separated — so a read-back compares equal.
    pub fn tags(&self) -> String {
        self.tag_set().into_iter().collect::<Vec<_>>().join(";")
    }
}

/// Proxmox accepts `;`, `,` and spaces between tags and lowercases them.
pub fn parse_tags(text: &str) -> BTreeSet<String> {
    text.split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .collect()
}

pub fn has_kiln_tags(tags: &BTreeSet<String>) -> bool {
    tags.iter().any(|t| {
        t == TAG_KILN || t.starts_with(TAG_CLUSTER_PREFIX) || t.starts_with(TAG_ROLE_PREFIX)
    })
}

/// `{cluster}-cp-{n}` / `{cluster}-wk-{n}` → (cluster, role, n).
pub fn parse_vm_name(name: &str) -> Option<(&str, Role, u32)> {
    let (rest, number) = name.rsplit_once('-')?;
    let (cluster, short) = rest.rsplit_once('-')?;
    let role = match short {
        "cp" => Role::ControlPlane,
        "wk" => Role::Worker,
        _ => return None,
    };
    if cluster.is_empty() || number.starts_with('0') {
        return None;
    }
    Some((cluster, role, number.parse().ok()?))
}

/// The VMID is the prefix followed by the node number, so its decimal form ends with the number.
pub fn vmid_matches_number(vmid: u32, number: u32) -> bool {
    let v = vmid.to_string();
    let n = number.to_string();
    v.len() > n.len() && v.ends_with(&n)
}

/// What a VM's configuration says about this identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Tags, marker, name and template flag all agree.
    Owned,
    /// Name and marker agree, no tags yet: kiln's clone whose configuration never happened. Only
    /// adoptable while stopped (the caller checks the power state).
    HalfMade,
    /// No kiln tags and no marker of this node: someone else's VM.
    Foreign(String),
    /// kiln's tags (or marker) but something disagrees: a person's clone of a kiln VM, or a VM of
    /// another cluster or number. Reported, never touched.
    Mismatched(String),
}

/// The ownership rules on a VM's configuration (`GET …/config`).
pub fn judge(id: &VmIdentity, config: &serde_json::Map<String, serde_json::Value>) -> Verdict {
    let text = |k: &str| config.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let tags = parse_tags(text("tags"));
    let first_line = text("description").lines().next().unwrap_or("").trim();
    let is_template = config
        .get("template")
        .map(|v| v.as_u64() == Some(1) || v.as_str() == Some("1"))
        .unwrap_or(false);
    let marker_ok = first_line == id.marker();
    let name_ok = text("name") == id.name;
    let kiln_tagged = has_kiln_tags(&tags);
    if !kiln_tagged && !first_line.starts_with(MARKER_PREFIX) {
        return Verdict::Foreign(format!(
            "VM `{}` carries no kiln tags and no kiln-owner marker",
            text("name")
        ));
    }
    let mut problems = Vec::new();
    if is_template {
        problems.push("it is a template".to_owned());
    }
    if !name_ok {
        problems.push(format!("its name is `{}`, not `{}`", text("name"), id.name));
    }
    if !marker_ok {
        problems.push(format!(
            "its marker is `{first_line}`, not `{}`",
            id.marker()
        ));
    }
    if kiln_tagged {
        let want = id.tag_set();
        let kiln_tags: BTreeSet<String> = tags
            .iter()
            .filter(|t| {
                *t == TAG_KILN
                    || t.starts_with(TAG_CLUSTER_PREFIX)
                    || t.starts_with(TAG_ROLE_PREFIX)
            })
            .cloned()
            .collect();
        if kiln_tags != want {
            problems.push(format!("its kiln tags are {:?}, not {:?}", kiln_tags, want));
        }
    }
    if !vmid_matches_number(id.vmid.get(), id.number) {
        problems.push(format!(
            "VMID {} does not end with node number {}",
            id.vmid.get(),
            id.number
        ));
    }
    match (problems.is_empty(), kiln_tagged) {
        (true, true) => Verdict::Owned,
        // Tags that are not kiln's were put there by a person: only a VM with none is a clone
        // whose tag write never happened (DESIGN.md §3).
        (true, false) if tags.is_empty() => Verdict::HalfMade,
        (true, false) => Verdict::Mismatched(format!(
            "its tags {tags:?} are not kiln's: replaced by a person"
        )),
        (false, _) => Verdict::Mismatched(problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id() -> VmIdentity {
        VmIdentity {
            cluster: "prod".into(),
            cluster_uid: "u1".into(),
            number: 1,
            role: Role::ControlPlane,
            name: "prod-cp-1".into(),
            vmid: Vmid::new(401).unwrap(),
            pve_node: "pve1".into(),
        }
    }

    fn cfg(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn tags_are_sorted_lowercase_semicolons() {
        assert_eq!(id().tags(), "kiln;kiln-cluster-prod;kiln-role-controlplane");
        assert_eq!(
            parse_tags("KILN,kiln-role-worker b"),
            parse_tags("b;kiln;kiln-role-worker")
        );
    }

    /// A decommission may destroy kiln's stopped half-made VM, never a running or still-cloning one,
    /// and never a VM whose marker names another incarnation of the cluster.
    #[test]
    fn a_stopped_half_made_vm_is_proof_enough_for_a_destroy_only() {
        use crate::proxmox::OwnedVm;
        let half = cfg(json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1"}));
        assert!(OwnedVm::verify(&id(), "pve1", &half, false).is_err());
        assert!(OwnedVm::verify_for_destroy(&id(), "pve1", &half, false).is_ok());
        assert!(OwnedVm::verify_for_destroy(&id(), "pve1", &half, true).is_err());
        let cloning = cfg(
            json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1",
                                 "lock": "clone"}),
        );
        assert!(OwnedVm::verify_for_destroy(&id(), "pve1", &cloning, false).is_err());
        let older = cfg(json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u0"}));
        assert!(OwnedVm::verify_for_destroy(&id(), "pve1", &older, false).is_err());
    }

    #[test]
    fn verdicts() {
        let good = json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1\nmanaged by kiln",
                          "tags": "kiln-role-controlplane;kiln;kiln-cluster-prod;extra"});
        assert_eq!(judge(&id(), &cfg(good)), Verdict::Owned);
        let half = json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1"});
        assert_eq!(judge(&id(), &cfg(half)), Verdict::HalfMade);
        let retagged = json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1",
                              "tags": "hand-made;mine"});
        assert!(matches!(
            judge(&id(), &cfg(retagged)),
            Verdict::Mismatched(_)
        ));
        let foreign = json!({"name": "db"});
        assert!(matches!(judge(&id(), &cfg(foreign)), Verdict::Foreign(_)));
        let other_cluster = json!({"name": "prod-cp-1", "description": "kiln-owner: other/1/u9",
                                   "tags": "kiln;kiln-cluster-other;kiln-role-controlplane"});
        assert!(matches!(
            judge(&id(), &cfg(other_cluster)),
            Verdict::Mismatched(_)
        ));
        let clone_of_kiln = json!({"name": "copy", "description": "kiln-owner: prod/1/u1",
                                   "tags": "kiln;kiln-cluster-prod;kiln-role-controlplane"});
        assert!(matches!(
            judge(&id(), &cfg(clone_of_kiln)),
            Verdict::Mismatched(_)
        ));
        let template = json!({"name": "prod-cp-1", "description": "kiln-owner: prod/1/u1",
                              "tags": "kiln;kiln-cluster-prod;kiln-role-controlplane", "template": 1});
        assert!(matches!(
            judge(&id(), &cfg(template)),
            Verdict::Mismatched(_)
        ));
    }

    #[test]
    fn names_and_vmids() {
        assert_eq!(parse_vm_name("a-b-wk-12"), Some(("a-b", Role::Worker, 12)));
        assert_eq!(parse_vm_name("prod-xx-1"), None);
        assert!(vmid_matches_number(4012, 12));
        assert!(!vmid_matches_number(12, 12));
        assert!(!vmid_matches_number(4013, 12));
    }
}
