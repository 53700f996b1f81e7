//! Proxmox names in PVE's own formats (DESIGN.md §2). They go into API paths
//! (`/nodes/{node}/qemu/…`) and property strings (`net0: virtio,bridge={bridge}`), so a name PVE
//! would never have (`vmbr0,firewall=0`, `pve1/../x`) must not reach the adapter.
//!
//! The formats are PVE's, from pve-common `src/PVE/JSONSchema.pm` (`pve_verify_node_name` for
//! `pve-node`, `parse_storage_id` → `parse_id` for `pve-storage-id`, `parse_bridge_id` for
//! `pve-bridge-id`) and pve-access-control `src/PVE/AccessControl.pm` (`verify_poolname` for
//! `pve-poolid`).

use super::diagnostic::Finding;
use super::document::ClusterDocument;

/// `^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$`
fn is_node_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// At least 2 characters, `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$` case-insensitively.
fn is_storage_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `^[-_.\w\d]+$` (Perl's `\w`, taken as ASCII: Linux interface names are).
fn is_bridge_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Up to three `/`-separated levels of `[A-Za-z0-9.\-_]+` (nested pools).
fn is_pool_id(s: &str) -> bool {
    let levels: Vec<&str> = s.split('/').collect();
    levels.len() <= 3
        && levels.iter().all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        })
}

const NODE_HINT: &str = "a Proxmox node name: letters, digits and `-`, starting and ending with a letter or digit (PVE format `pve-node`)";
const STORAGE_HINT: &str = "a Proxmox storage ID: at least 2 characters, a letter first, then letters, digits, `-`, `_`, `.`, ending with a letter or digit (PVE format `pve-storage-id`)";
const BRIDGE_HINT: &str =
    "a bridge name: letters, digits, `-`, `_`, `.` only (PVE format `pve-bridge-id`), e.g. vmbr0";
const POOL_HINT: &str = "a Proxmox pool: letters, digits, `-`, `_`, `.`, at most three levels separated by `/` (PVE format `pve-poolid`)";

pub fn check(doc: &ClusterDocument, out: &mut Vec<Finding>) {
    let p = &doc.spec.proxmox;
    let mut name = |path: String, value: &str, valid: fn(&str) -> bool, what: &str, hint: &str| {
        if !valid(value) {
            out.push(
                Finding::error(path, format!("`{value}` is not a valid Proxmox {what}")).hint(hint),
            );
        }
    };
    if let Some(n) = &p.node {
        name(
            "spec.proxmox.node".into(),
            n,
            is_node_name,
            "node name",
            NODE_HINT,
        );
    }
    for (i, n) in p.nodes.iter().flatten().enumerate() {
        let path = format!("spec.proxmox.nodes[{i}]");
        name(path, n, is_node_name, "node name", NODE_HINT);
    }
    let storage = "spec.proxmox.storage".to_owned();
    name(
        storage,
        &p.storage,
        is_storage_id,
        "storage ID",
        STORAGE_HINT,
    );
    let bridge = "spec.proxmox.bridge".to_owned();
    name(bridge, &p.bridge, is_bridge_id, "bridge", BRIDGE_HINT);
    if let Some(pool) = &p.pool {
        name(
            "spec.proxmox.pool".into(),
            pool,
            is_pool_id,
            "pool",
            POOL_HINT,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_pve_has_them() {
        for ok in ["pve1", "pve-a", "A1", "x"] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in ["", "-pve", "pve-", "pve1/../x", "pve.lan", "pve 1"] {
            assert!(!is_node_name(bad), "{bad}");
        }
        for ok in ["local-lvm", "ceph_pool.1", "Local2"] {
            assert!(is_storage_id(ok), "{ok}");
        }
        for bad in ["l", "1local", "local-", "lo cal", "local,x=1", "a/b"] {
            assert!(!is_storage_id(bad), "{bad}");
        }
        for ok in ["vmbr0", "vmbr0.20", "br-lan_1"] {
            assert!(is_bridge_id(ok), "{ok}");
        }
        for bad in ["", "vmbr0,firewall=0", "vmbr0 ", "vm/br"] {
            assert!(!is_bridge_id(bad), "{bad}");
        }
        for ok in ["kubernetes", "a/b", "a/b/c", "k8s.prod-1_x"] {
            assert!(is_pool_id(ok), "{ok}");
        }
        for bad in ["", "a/b/c/d", "a//b", "/a", "a,b", "a b"] {
            assert!(!is_pool_id(bad), "{bad}");
        }
    }
}
