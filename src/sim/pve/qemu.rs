//! `/nodes/{node}/qemu/{vmid}/…`: the VM endpoints, as qemu-server `src/PVE/API2/Qemu.pm` (9.2.6)
//! answers them. Checks PVE makes before forking a worker come back as HTTP errors; checks inside the
//! worker fail the task instead, so the adapter meets each refusal where the real server puts it.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{Value, json};

use super::state::{Refusal, SimVm, State, drive_bytes, parse_size, with_size};
use super::{PowerChange, PowerEvent};

pub type Params = BTreeMap<String, String>;

/// What a handler answers: the `data`, and the power changes to tell the hook once the lock is free.
pub struct Answer {
    pub data: Value,
    pub events: Vec<PowerEvent>,
}

impl Answer {
    fn data(data: Value) -> Self {
        Self {
            data,
            events: Vec::new(),
        }
    }
}

pub fn route(
    st: &mut State,
    method: &Method,
    node: &str,
    vmid: u32,
    rest: &[&str],
    params: &Params,
) -> Result<Answer, Refusal> {
    let vm_path = format!("/vms/{vmid}");
    match (method.as_str(), rest) {
        // `vm_config`: VM.Audit; pending values applied unless `current=1`.
        ("GET", ["config"]) => {
            st.check(&vm_path, "VM.Audit")?;
            let current = params.get("current").map(String::as_str) == Some("1");
            Ok(Answer::data(Value::Object(
                st.vm_on(node, vmid)?.config_json(current),
            )))
        }
        ("GET", ["pending"]) => {
            st.check(&vm_path, "VM.Audit")?;
            Ok(Answer::data(st.vm_on(node, vmid)?.pending_json()))
        }
        ("GET", ["status", "current"]) => {
            st.check(&vm_path, "VM.Audit")?;
            Ok(Answer::data(status_of(vmid, st.vm_on(node, vmid)?)))
        }
        // `update_vm` is synchronous (returns null); `update_vm_async` runs the same in a task.
        ("PUT", ["config"]) => {
            update_config(st, node, vmid, params)?;
            Ok(Answer::data(Value::Null))
        }
        ("POST", ["config"]) => {
            update_config(st, node, vmid, params)?;
            let upid = st.task(node, "qmconfig", &vmid.to_string(), |_| Ok(Vec::new()));
            Ok(Answer::data(Value::String(upid)))
        }
        ("PUT", ["resize"]) => resize(st, node, vmid, params),
        ("POST", ["clone"]) => super::clone::clone(st, node, vmid, params),
        ("POST", ["status", action]) => power(st, node, vmid, action),
        ("DELETE", []) => destroy(st, node, vmid),
        _ => Err(not_implemented(method, node, vmid, rest)),
    }
}

fn not_implemented(method: &Method, node: &str, vmid: u32, rest: &[&str]) -> Refusal {
    Refusal {
        status: 501,
        message: format!(
            "Method '{method} /nodes/{node}/qemu/{vmid}/{}' not implemented",
            rest.join("/")
        ),
        errors: BTreeMap::new(),
    }
}

/// `vm_status`: PVE's `vmstatus` fields kiln and a person would look at.
fn status_of(vmid: u32, vm: &SimVm) -> Value {
    let c = |k: &str| vm.config.get(k).cloned();
    let mut v = json!({
        "vmid": vmid,
        "status": if vm.running { "running" } else { "stopped" },
        "qmpstatus": if vm.running { "running" } else { "stopped" },
        "name": c("name").unwrap_or_else(|| format!("VM {vmid}")),
        "cpus": c("cores").and_then(|v| v.parse::<u64>().ok()).unwrap_or(1),
        "maxmem": c("memory").and_then(|v| v.parse::<u64>().ok()).unwrap_or(512) << 20,
        "maxdisk": c("scsi0").and_then(|d| drive_bytes(&d)).unwrap_or(0),
    });
    if vm.is_template() {
        v["template"] = Value::from(1);
    }
    for k in ["lock", "tags"] {
        if let Some(val) = c(k) {
            v[k] = Value::String(val);
        }
    }
    v
}

/// The options `update_vm` accepts that the simulator knows; anything else is refused as PVE's
/// schema refuses an unknown property (`additionalProperties => 0`).
fn known_option(key: &str) -> bool {
    const PLAIN: [&str; 33] = [
        "acpi",
        "agent",
        "balloon",
        "bios",
        "boot",
        "cicustom",
        "cipassword",
        "citype",
        "ciupgrade",
        "ciuser",
        "cores",
        "cpu",
        "description",
        "efidisk0",
        "hotplug",
        "machine",
        "memory",
        "name",
        "nameserver",
        "numa",
        "onboot",
        "ostype",
        "protection",
        "scsihw",
        "searchdomain",
        "smbios1",
        "sockets",
        "sshkeys",
        "startup",
        "tags",
        "tpmstate0",
        "vcpus",
        "vga",
    ];
    PLAIN.contains(&key)
        || [
            "net", "ipconfig", "ide", "sata", "scsi", "virtio", "serial", "unused",
        ]
        .iter()
        .any(|p| {
            key.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

pub(super) fn is_drive(key: &str) -> bool {
    key == "efidisk0"
        || key == "tpmstate0"
        || ["ide", "sata", "scsi", "virtio"].iter().any(|p| {
            key.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The privilege each option needs (qemu-server `src/PVE/API2/Qemu.pm`
/// `$check_vm_modify_config_perm` and its option groups).
fn privileges_for(key: &str) -> &'static [&'static str] {
    match key {
        "cores" | "cpu" | "sockets" | "vcpus" | "numa" => &["VM.Config.CPU"],
        "memory" | "balloon" => &["VM.Config.Memory"],
        "acpi" | "hotplug" | "machine" | "scsihw" | "smbios1" | "vga" => &["VM.Config.HWType"],
        "boot" => &["VM.Config.Disk"],
        "agent" | "bios" | "description" | "name" | "onboot" | "ostype" | "protection"
        | "startup" | "tags" => &["VM.Config.Options"],
        k if k.starts_with("net") => &["VM.Config.Network"],
        k if k.starts_with("ipconfig")
            || matches!(
                k,
                "cicustom"
                    | "cipassword"
                    | "citype"
                    | "ciuser"
                    | "ciupgrade"
                    | "nameserver"
                    | "searchdomain"
                    | "sshkeys"
            ) =>
        {
            &["VM.Config.Cloudinit", "VM.Config.Network"]
        }
        k if is_drive(k) => &["VM.Config.Disk"],
        _ => &["VM.Config.Options"],
    }
}

/// The ACL path `SDN.Use` is checked on for a NIC (pve-guest-common `src/PVE/GuestHelpers.pm`
/// `check_vnet_access`; qemu-server `check_bridge_access` calls it for each `netN`).
pub(super) fn sdn_path_of(net: &str) -> Option<String> {
    let prop = |key: &str| {
        net.split(',')
            .find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='))
    };
    let bridge = prop("bridge")?;
    Some(match prop("tag") {
        Some(tag) => format!("/sdn/zones/localnetwork/{bridge}/{tag}"),
        None => format!("/sdn/zones/localnetwork/{bridge}"),
    })
}

/// `update_vm_api`: permissions per option, digest, lock, write into `[PENDING]`, drop what did not
/// change, then apply at once on a stopped VM or hotplug what a running one takes.
fn update_config(st: &mut State, node: &str, vmid: u32, params: &Params) -> Result<(), Refusal> {
    let vm_path = format!("/vms/{vmid}");
    let deletes: Vec<String> = params
        .get("delete")
        .map(|d| {
            d.split([',', ';', ' '])
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let sets: Vec<(&String, &String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "digest" | "delete" | "skiplock"))
        .collect();
    for (k, _) in &sets {
        if !known_option(k) {
            return Err(Refusal::param(
                k,
                "property is not defined in schema and the schema does not allow additional properties",
            ));
        }
    }
    st.check_any(
        &vm_path,
        &[
            "VM.Config.Disk",
            "VM.Config.CDROM",
            "VM.Config.CPU",
            "VM.Config.Memory",
            "VM.Config.Network",
            "VM.Config.HWType",
            "VM.Config.Options",
            "VM.Config.Cloudinit",
        ],
    )?;
    for k in sets
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(deletes.iter().map(String::as_str))
    {
        st.check_any(&vm_path, privileges_for(k))?;
    }
    for (k, v) in &sets {
        if k.starts_with("net")
            && let Some(path) = sdn_path_of(v)
        {
            st.check(&path, "SDN.Use")?;
        }
    }
    let vm = st.vm_on(node, vmid)?;
    if let Some(digest) = params.get("digest")
        && !digest.is_empty()
        && *digest != vm.digest()
    {
        return Err(Refusal::die(
            "checksum mismatch (file change by other user?)",
        ));
    }
    check_lock(vm)?;
    let vm = st.vm_on_mut(node, vmid)?;
    for k in &deletes {
        if k == "tags" {
            // Tags are deleted at once, not through pending.
            vm.config.remove("tags");
            vm.pending.remove("tags");
        } else {
            vm.stage_delete(k);
        }
    }
    for (k, v) in sets {
        let v = if k == "tags" {
            unique_tags(v)
        } else {
            v.clone()
        };
        vm.stage(k, v);
    }
    vm.cleanup_pending();
    if vm.running {
        vm.hotplug_pending();
    } else {
        vm.apply_pending();
    }
    Ok(())
}

/// pve-guest-common `src/PVE/GuestHelpers.pm` `get_unique_tags` with the default tag style:
/// lowercased, sorted, duplicates dropped, joined with `;`.
fn unique_tags(text: &str) -> String {
    let mut tags: Vec<String> = text
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    tags.sort();
    tags.dedup();
    tags.join(";")
}

/// pve-guest-common `src/PVE/AbstractConfig.pm` `check_lock`.
pub(super) fn check_lock(vm: &SimVm) -> Result<(), Refusal> {
    match vm.config.get("lock") {
        Some(lock) => Err(Refusal::die(format!("VM is locked ({lock})"))),
        None => Ok(()),
    }
}

/// qemu-server `src/PVE/API2/Qemu.pm` `resize_vm` (9.2.6): only the schema (`disk`, `size`), the
/// permission clause (`VM.Config.Disk`) and `skiplock` are checked before `fork_worker`; `$updatefn`
/// runs in the worker under `lock_config`, so loading the config (a missing VM), a stale digest
/// ("checksum mismatch (file change by other user?)"), a lock, the disk, the storage privilege and a
/// shrink all fail the *task*, whose exit status is the message, while the PUT itself answers a UPID.
fn resize(st: &mut State, node: &str, vmid: u32, params: &Params) -> Result<Answer, Refusal> {
    st.check(&format!("/vms/{vmid}"), "VM.Config.Disk")?;
    let disk = params
        .get("disk")
        .cloned()
        .ok_or_else(|| Refusal::param("disk", "property is missing and it is not optional"))?;
    let size = params
        .get("size")
        .cloned()
        .ok_or_else(|| Refusal::param("size", "property is missing and it is not optional"))?;
    let digest = params.get("digest").cloned().unwrap_or_default();
    let upid = st.task(node, "resize", &vmid.to_string(), |st| {
        let vm = st.vm_on(node, vmid).map_err(|r| r.message)?;
        if !digest.is_empty() && digest != vm.digest() {
            return Err("checksum mismatch (file change by other user?)".into());
        }
        check_lock(vm).map_err(|r| r.message)?;
        let drive = vm
            .config
            .get(&disk)
            .cloned()
            .ok_or_else(|| format!("disk '{disk}' does not exist"))?;
        if drive.contains("media=cdrom") {
            return Err("you can't resize a cdrom".into());
        }
        if let Some((storage, _)) = drive.split(',').next().and_then(|v| v.split_once(':')) {
            st.check(&format!("/storage/{storage}"), "Datastore.AllocateSpace")
                .map_err(|r| r.message)?;
        }
        let have = drive_bytes(&drive).unwrap_or(0);
        let (grow, amount) = match size.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, size.as_str()),
        };
        let amount = parse_size(amount).ok_or_else(|| "internal error".to_owned())?;
        let want = if grow { have + amount } else { amount };
        if want < have {
            return Err("shrinking disks is not supported".into());
        }
        if want == have {
            return Ok(Vec::new());
        }
        let vm = st.vm_on_mut(node, vmid).map_err(|r| r.message)?;
        vm.config.insert(disk.clone(), with_size(&drive, want));
        Ok(vec![format!(
            "update VM {vmid}: resize --disk {disk} --size {size}"
        )])
    });
    Ok(Answer::data(Value::String(upid)))
}

/// `vm_start`, `vm_stop`, `vm_shutdown`, `vm_reboot`: all need VM.PowerMgmt; their work (and its
/// refusals: a lock, "already running") runs in the task. A reboot refuses a stopped VM up front.
/// Every stop applies pending changes (qemu-server `src/PVE/QemuServer.pm` `vm_stop_cleanup`), and
/// so does every start (`vm_start_nolock`). The guest always honours an ACPI shutdown here.
fn power(st: &mut State, node: &str, vmid: u32, action: &str) -> Result<Answer, Refusal> {
    let kind = match action {
        "start" => "qmstart",
        "stop" => "qmstop",
        "shutdown" => "qmshutdown",
        "reboot" => "qmreboot",
        _ => {
            return Err(not_implemented(
                &Method::POST,
                node,
                vmid,
                &["status", action],
            ));
        }
    };
    st.check(&format!("/vms/{vmid}"), "VM.PowerMgmt")?;
    let running = st.vm_on(node, vmid)?.running;
    if action == "reboot" && !running {
        return Err(Refusal::die(format!("VM {vmid} not running")));
    }
    let mut change = None;
    let upid = st.task(node, kind, &vmid.to_string(), |st| {
        let vm = st.vm_on_mut(node, vmid).map_err(|r| r.message)?;
        match action {
            "start" => {
                if vm.is_template() {
                    return Err("you can't start a vm if it's a template".into());
                }
                check_lock(vm).map_err(|r| r.message)?;
                if vm.running {
                    return Err(format!("VM {vmid} already running"));
                }
                vm.apply_pending();
                vm.running = true;
                change = Some(PowerChange::Started);
            }
            "stop" | "shutdown" => {
                if !vm.running {
                    return Ok(Vec::new());
                }
                check_lock(vm).map_err(|r| r.message)?;
                vm.running = false;
                vm.apply_pending();
                change = Some(PowerChange::Stopped);
            }
            _ => {
                check_lock(vm).map_err(|r| r.message)?;
                // A reboot request: the shutdown applies pending changes, qmeventd starts it again.
                vm.apply_pending();
                change = Some(PowerChange::Rebooted);
            }
        }
        Ok(Vec::new())
    });
    let events = change
        .and_then(|c| {
            let vm = st.vms.get(&vmid)?;
            Some(PowerEvent {
                vmid,
                node: vm.node.clone(),
                change: c,
                config: vm.config.clone(),
            })
        })
        .into_iter()
        .collect();
    Ok(Answer {
        data: Value::String(upid),
        events,
    })
}

/// `destroy_vm`: VM.Allocate; a protected or running VM is refused before the task, a locked one
/// inside it (`destroy_vm` in `src/PVE/QemuServer.pm` checks the lock).
fn destroy(st: &mut State, node: &str, vmid: u32) -> Result<Answer, Refusal> {
    st.check(&format!("/vms/{vmid}"), "VM.Allocate")?;
    let vm = st.vm_on(node, vmid)?;
    if vm.config.get("protection").map(String::as_str) == Some("1") {
        return Err(Refusal::die(format!(
            "can't remove VM {vmid} - protection mode enabled"
        )));
    }
    if vm.running {
        return Err(Refusal::die(format!(
            "VM {vmid} is running - destroy failed"
        )));
    }
    let mut gone = None;
    let upid = st.task(node, "qmdestroy", &vmid.to_string(), |st| {
        check_lock(st.vm_on(node, vmid).map_err(|r| r.message)?).map_err(|r| r.message)?;
        gone = st.vms.remove(&vmid);
        Ok(vec![format!("destroy VM {vmid}")])
    });
    let events = gone
        .map(|vm| PowerEvent {
            vmid,
            node: vm.node,
            change: PowerChange::Destroyed,
            config: vm.config,
        })
        .into_iter()
        .collect();
    Ok(Answer {
        data: Value::String(upid),
        events,
    })
}
