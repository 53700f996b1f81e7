//! Node numbers are identities (DESIGN.md §2): a change that would give an existing node another
//! number — more control planes without pins, a middle worker removed — is refused, with the YAML
//! that does what the user meant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::spec::{Cluster, Role};

use super::observed::ObservedVm;

/// A refusal message with the suggested `number:` pins, or `None` when no node moves.
pub fn check(
    desired: &Cluster,
    previous: Option<&Cluster>,
    vms: &BTreeMap<u32, ObservedVm>,
) -> Option<String> {
    let mut moves: Vec<String> = Vec::new();
    // Same IP, other number: the node at that address would be renumbered.
    let previous_by_ip: BTreeMap<Ipv4Addr, u32> = previous
        .map(|p| p.nodes.iter().map(|n| (n.ip, n.number)).collect())
        .unwrap_or_default();
    for node in &desired.nodes {
        if let Some(&was) = previous_by_ip.get(&node.ip)
            && was != node.number
        {
            moves.push(format!(
                "{} would move from number {was} to {}",
                node.ip, node.number
            ));
        }
    }
    // An existing VM whose number now names a node of the other role.
    for node in &desired.nodes {
        if let Some(vm) = vms.get(&node.number)
            && vm.role != node.role
        {
            moves.push(format!(
                "VM {} ({}) is a {} but number {} is now a {}",
                vm.vmid, vm.name, vm.role, node.number, node.role
            ));
        }
    }
    if moves.is_empty() {
        return None;
    }
    Some(format!(
        "the change renumbers existing nodes ({}); numbers are identities (VM name, VMID, MAC). Pin them:\n{}",
        moves.join("; "),
        suggestion(desired, &previous_by_ip, vms)
    ))
}

/// The node lists with every known node pinned to its number and new nodes on free numbers.
fn suggestion(
    desired: &Cluster,
    previous_by_ip: &BTreeMap<Ipv4Addr, u32>,
    vms: &BTreeMap<u32, ObservedVm>,
) -> String {
    let mut used: BTreeSet<u32> = previous_by_ip.values().copied().collect();
    used.extend(vms.keys().copied());
    let mut next_free = used.iter().next_back().copied().unwrap_or(0) + 1;
    let mut out = String::new();
    for (role, key) in [
        (Role::ControlPlane, "controlPlane"),
        (Role::Worker, "workers"),
    ] {
        let nodes: Vec<_> = desired.nodes.iter().filter(|n| n.role == role).collect();
        if nodes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {key}:\n    nodes:");
        for n in nodes {
            let number = match previous_by_ip.get(&n.ip) {
                Some(&was) => was,
                None => {
                    let fresh = next_free;
                    next_free += 1;
                    fresh
                }
            };
            let _ = writeln!(out, "      - {{ip: {}, number: {number}}}", n.ip);
        }
    }
    out.push_str("  (keep each entry's other fields, such as mac)");
    out
}
