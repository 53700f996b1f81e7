//! `POST /nodes/{node}/qemu/{vmid}/clone`, as qemu-server `src/PVE/API2/Qemu.pm` `clone_vm` does it:
//! the permission clauses, `$load_and_check` before the fork (so its refusals are HTTP errors), then
//! the copy in the task.

use std::collections::BTreeMap;

use serde_json::Value;

use super::qemu::{Answer, Params, check_lock, is_drive, sdn_path_of};
use super::state::{Refusal, SimVm, State, drive_bytes, with_size};

/// `clone_vm`: permissions, then `$load_and_check` before the fork (a missing or locked source, a
/// non-shared storage for another node, an existing `newid`), then the copy in the task.
pub fn clone(st: &mut State, node: &str, vmid: u32, params: &Params) -> Result<Answer, Refusal> {
    let newid: u32 = params
        .get("newid")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Refusal::param("newid", "property is missing and it is not optional"))?;
    let pool = params.get("pool").cloned();
    let storage = params.get("storage").cloned();
    let target = params.get("target").filter(|t| *t != node).cloned();
    st.check(&format!("/vms/{vmid}"), "VM.Clone")?;
    match &pool {
        Some(p) if st.held(&format!("/pool/{p}")).contains("VM.Allocate") => {}
        _ => st.check(&format!("/vms/{newid}"), "VM.Allocate")?,
    }
    if let Some(p) = &pool
        && !st.pools.contains(p)
    {
        return Err(Refusal::die(format!("pool '{p}' does not exist")));
    }
    if let Some(t) = &target
        && !st.nodes.contains(t)
    {
        return Err(Refusal::die(format!("no such cluster node '{t}'")));
    }
    if let Some(s) = &storage {
        let scfg = st
            .storages
            .get(s)
            .ok_or_else(|| Refusal::die(format!("storage '{s}' does not exist")))?;
        if !scfg.images {
            return Err(Refusal::param(
                "storage",
                format!("storage '{s}' does not support vm images"),
            ));
        }
        if target.is_some() && !scfg.shared {
            return Err(Refusal::die(format!(
                "can't clone to non-shared storage '{s}'"
            )));
        }
    }
    let source = st.vm_on(node, vmid)?.clone();
    check_lock(&source)?;
    let full = params
        .get("full")
        .map(|f| f == "1")
        .unwrap_or(!source.is_template());
    if storage.is_some() && !full {
        return Err(Refusal::die(
            "parameter 'storage' not allowed for linked clones",
        ));
    }
    // `$check_storage_access_clone`: every volume's storage decides whether the VM is shared; disks
    // need Datastore.AllocateSpace where the copy goes.
    let mut shared_vm = true;
    for value in source
        .config
        .iter()
        .filter(|(k, _)| is_drive(k))
        .map(|(_, v)| v)
    {
        let volume = value.split(',').next().unwrap_or_default();
        if volume.is_empty() || volume == "none" || volume == "cdrom" {
            continue;
        }
        let sid = volume.split_once(':').map(|(s, _)| s).unwrap_or_default();
        if !st.storages.get(sid).is_some_and(|s| s.shared) {
            shared_vm = false;
        }
        if !value.contains("media=cdrom") {
            let to = storage.as_deref().unwrap_or(sid);
            st.check(&format!("/storage/{to}"), "Datastore.AllocateSpace")?;
        }
    }
    for net in source
        .config
        .iter()
        .filter(|(k, _)| k.starts_with("net"))
        .filter_map(|(_, v)| sdn_path_of(v))
    {
        st.check(&net, "SDN.Use")?;
    }
    if let Some(t) = &target
        && !shared_vm
    {
        return Err(Refusal::die(format!(
            "can't clone VM to node '{t}' (VM uses local storage)"
        )));
    }
    if st.vms.contains_key(&newid) {
        return Err(Refusal::die(format!(
            "unable to create VM {newid}: config file already exists"
        )));
    }
    let name = params.get("name").cloned();
    let description = params.get("description").cloned();
    let upid = st.task(node, "qmclone", &vmid.to_string(), |st| {
        let mut config = BTreeMap::new();
        let mut disk_no = 0;
        for (key, value) in &source.config {
            if key.starts_with("unused") || matches!(key.as_str(), "template" | "lock") {
                continue;
            }
            let copied = if key.starts_with("net") {
                // "always change MAC! address"
                with_new_mac(value)
            } else if is_drive(key) && value.contains("cloudinit") {
                let sid = storage.clone().unwrap_or_else(|| storage_of(value));
                format!("{sid}:vm-{newid}-cloudinit,media=cdrom")
            } else if is_drive(key) && !value.contains("media=cdrom") {
                let sid = storage.clone().unwrap_or_else(|| storage_of(value));
                let size = drive_bytes(value).unwrap_or(0);
                let disk = format!("{sid}:vm-{newid}-disk-{disk_no}");
                disk_no += 1;
                with_size(&disk, size)
            } else {
                value.clone()
            };
            config.insert(key.clone(), copied);
        }
        // "auto generate a new uuid" for smbios1.
        config.insert(
            "smbios1".into(),
            format!("uuid={}", crate::talos::ClusterUid::generate()),
        );
        config.insert(
            "name".into(),
            name.unwrap_or_else(|| {
                format!(
                    "Copy-of-VM-{}",
                    source
                        .config
                        .get("name")
                        .cloned()
                        .unwrap_or(vmid.to_string())
                )
            }),
        );
        if let Some(d) = description {
            config.insert("description".into(), d);
        }
        let mut vm = SimVm::new(target.as_deref().unwrap_or(node), config, false);
        vm.pool = pool;
        st.vms.insert(newid, vm);
        Ok(vec![format!("create full clone of drive(s) of VM {vmid}")])
    });
    Ok(Answer {
        data: Value::String(upid),
        events: Vec::new(),
    })
}

fn storage_of(volume: &str) -> String {
    volume
        .split(',')
        .next()
        .and_then(|v| v.split_once(':'))
        .map(|(s, _)| s.to_owned())
        .unwrap_or_default()
}

/// A NIC with a new random locally administered MAC, as `random_ether_addr` (pve-common
/// `src/PVE/Tools.pm`) with PVE's default prefix `BC:24:11`.
fn with_new_mac(net: &str) -> String {
    let mac = format!(
        "BC:24:11:{:02X}:{:02X}:{:02X}",
        rand::random::<u8>(),
        rand::random::<u8>(),
        rand::random::<u8>()
    );
    net.split(',')
        .map(|part| match part.split_once('=') {
            Some((model, old))
                if old.len() == 17 && old.bytes().filter(|b| *b == b':').count() == 5 =>
            {
                format!("{model}={mac}")
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
