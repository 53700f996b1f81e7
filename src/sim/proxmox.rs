//! Simulated Proxmox VE implementing [`ProxmoxPort`] in-process, for `kiln demo` and engine tests.
//!
//! It keeps VMs as Proxmox does (a config map with a digest, pending changes applied at the next
//! start) and goes through the same ownership rules as the API adapter: its listing is rendered as
//! PVE's JSON and classified by [`Inventory::from_listing_json`], and its proofs come from
//! [`OwnedVm::verify`]. Tests can change VMs behind kiln's back (`edit`, `stop_by_hand`) to act as the
//! person at the Proxmox web UI.
//!
//! What runs *inside* a VM is not this module's business: every power change is reported to an
//! optional [`PowerHook`], and whoever installed it (`sim::lab` boots and stops Talos nodes) reacts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::proxmox::ownership::{self, Verdict, VmIdentity};
use crate::proxmox::vmconfig::{BOOT_DISK, VmSpec, drive_size_bytes};
use crate::proxmox::{
    Created, Inventory, OwnedVm, PendingChanges, ProxmoxError, ProxmoxPort, Resized, TaskOutcome,
};

/// Settled immediately by a reboot or start, as on PVE: the keys a running VM cannot take live.
const COLD_KEYS: [&str; 2] = ["cores", "memory"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVm {
    pub node: String,
    pub config: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
    pub running: bool,
    pub template: bool,
    generation: u64,
}

impl SimVm {
    fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (k, v) in &self.config {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        h.update(self.generation.to_le_bytes());
        hex::encode(&h.finalize()[..20])
    }

    fn config_json(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        m.insert("digest".into(), Value::String(self.digest()));
        m
    }

    fn apply_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.config.extend(pending);
        self.generation += 1;
    }
}

/// A change of a VM's power, as the guest inside it would feel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerChange {
    /// Powered on from off (the first boot after a clone, or a start).
    Started,
    /// Restarted while running (a reboot: off, then on, pending changes applied).
    Rebooted,
    /// Powered off (a shutdown, a stop, or a person at the web UI).
    Stopped,
    /// Gone for good (destroyed with its disks; it was stopped first).
    Destroyed,
}

/// One power change and the VM's configuration at that moment (after the change; for `Destroyed`, the
/// last one it had), so a hook needs no second look at the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerEvent {
    pub vmid: u32,
    pub node: String,
    pub change: PowerChange,
    pub config: BTreeMap<String, String>,
}

/// Called after each power change, outside the simulator's lock, before the port call returns: when
/// `create` or `start` returns, whatever the hook started is up.
pub type PowerHook = Arc<dyn Fn(&PowerEvent) + Send + Sync>;

#[derive(Default)]
struct HookSlot(RwLock<Option<PowerHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|h| h.is_some()).unwrap_or(false);
        f.write_str(if set { "Some(PowerHook)" } else { "None" })
    }
}

#[derive(Debug, Default)]
struct State {
    vms: BTreeMap<u32, SimVm>,
    /// Listings served, so tests can check the cost of an observation.
    listings: u64,
    writes: u64,
}

/// The simulator. Cheap to create; all state in memory.
#[derive(Debug, Default)]
pub struct SimProxmox {
    state: Mutex<State>,
    hook: HookSlot,
}

impl SimProxmox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the hook told of every power change from now on (replacing any earlier one).
    pub fn set_power_hook(&self, hook: PowerHook) {
        *self.hook.0.write().expect("hook lock") = Some(hook);
    }

    /// Tells the hook, if any, with the VM's configuration as it is now (`last` when it is gone).
    fn emit(&self, vmid: u32, change: PowerChange, last: Option<SimVm>) {
        let Some(hook) = self.hook.0.read().expect("hook lock").clone() else {
            return;
        };
        let Some(vm) = last.or_else(|| self.vm(vmid)) else {
            return;
        };
        hook(&PowerEvent {
            vmid,
            node: vm.node,
            change,
            config: vm.config,
        });
    }

    /// A Talos nocloud template, as an operator prepares one.
    pub fn add_template(&self, vmid: u32, node: &str) {
        let config = [
            ("name", format!("talos-template-{vmid}")),
            ("template", "1".into()),
            ("cores", "2".into()),
            ("memory", "2048".into()),
            (BOOT_DISK, format!("local-lvm:base-{vmid}-disk-0,size=10G")),
            ("ide2", format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom")),
        ];
        self.put(
            vmid,
            node,
            config.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            false,
            true,
        );
    }

    /// A VM kiln did not make (or a half-made one a crash left behind).
    pub fn add_vm(&self, vmid: u32, node: &str, config: BTreeMap<String, String>, running: bool) {
        self.put(vmid, node, config, running, false);
        if running {
            self.emit(vmid, PowerChange::Started, None);
        }
    }

    fn put(
        &self,
        vmid: u32,
        node: &str,
        config: BTreeMap<String, String>,
        running: bool,
        template: bool,
    ) {
        self.state.lock().unwrap().vms.insert(
            vmid,
            SimVm {
                node: node.to_owned(),
                config,
                pending: BTreeMap::new(),
                running,
                template,
                generation: 0,
            },
        );
    }

    pub fn vm(&self, vmid: u32) -> Option<SimVm> {
        self.state.lock().unwrap().vms.get(&vmid).cloned()
    }

    /// A person edits the VM in the web UI (`None` deletes a key).
    pub fn edit(&self, vmid: u32, changes: &[(&str, Option<&str>)]) {
        let mut st = self.state.lock().unwrap();
        if let Some(vm) = st.vms.get_mut(&vmid) {
            for (k, v) in changes {
                match v {
                    Some(v) => vm.config.insert((*k).to_owned(), (*v).to_owned()),
                    None => vm.config.remove(*k),
                };
            }
            vm.generation += 1;
        }
    }

    pub fn stop_by_hand(&self, vmid: u32) {
        let was_running = match self.state.lock().unwrap().vms.get_mut(&vmid) {
            Some(vm) => std::mem::replace(&mut vm.running, false),
            None => false,
        };
        if was_running {
            self.emit(vmid, PowerChange::Stopped, None);
        }
    }

    pub fn listings(&self) -> u64 {
        self.state.lock().unwrap().listings
    }

    /// Modifying calls served (clone, config, resize, power, destroy).
    pub fn writes(&self) -> u64 {
        self.state.lock().unwrap().writes
    }

    /// The PVE `/cluster/resources?type=vm` body for the current state.
    pub fn listing_json(&self) -> Vec<u8> {
        let st = self.state.lock().unwrap();
        let data: Vec<Value> = st
            .vms
            .iter()
            .map(|(vmid, vm)| {
                let c = |k: &str| vm.config.get(k).cloned();
                let mut e = json!({
                    "id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": vm.node,
                    "name": c("name").unwrap_or_default(),
                    "status": if vm.running { "running" } else { "stopped" },
                    "template": u8::from(vm.template),
                    "maxcpu": c("cores").and_then(|v| v.parse::<u64>().ok()).unwrap_or(1),
                    "maxmem": c("memory").and_then(|v| v.parse::<u64>().ok()).unwrap_or(512) << 20,
                    "maxdisk": c(BOOT_DISK).and_then(|d| drive_size_bytes(&d)).unwrap_or(0),
                });
                if let Some(tags) = c("tags") {
                    e["tags"] = Value::String(tags);
                }
                e
            })
            .collect();
        serde_json::to_vec(&json!({ "data": data })).unwrap_or_default()
    }

    /// Re-reads and proves ownership, as the adapter does before every write.
    fn verify(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        let st = self.state.lock().unwrap();
        let vm = st
            .vms
            .get(&id.vmid.get())
            .ok_or_else(|| ProxmoxError::NotFound(format!("VM {}", id.vmid.get())))?;
        OwnedVm::verify(id, &vm.node, &vm.config_json(), vm.running)
    }

    /// Applies a write to a VM proven owned, refusing a stale digest like PVE.
    fn write(
        &self,
        vm: &OwnedVm,
        f: impl FnOnce(&mut SimVm) -> Result<(), ProxmoxError>,
    ) -> Result<(), ProxmoxError> {
        let fresh = self.verify(vm.identity())?;
        let mut st = self.state.lock().unwrap();
        st.writes += 1;
        let sim = st
            .vms
            .get_mut(&vm.vmid())
            .ok_or_else(|| ProxmoxError::NotFound(format!("VM {}", vm.vmid())))?;
        if sim.digest() != fresh.digest() {
            return Err(ProxmoxError::Conflict("checksum mismatch".into()));
        }
        f(sim)?;
        sim.generation += 1;
        Ok(())
    }

    fn pending_of(&self, vmid: u32) -> PendingChanges {
        let st = self.state.lock().unwrap();
        PendingChanges {
            keys: st
                .vms
                .get(&vmid)
                .map(|vm| {
                    vm.pending
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn set(vm: &mut SimVm, key: &str, value: String) {
    if vm.running && COLD_KEYS.contains(&key) && vm.config.get(key) != Some(&value) {
        vm.pending.insert(key.to_owned(), value);
    } else {
        vm.pending.remove(key);
        vm.config.insert(key.to_owned(), value);
    }
}

fn grow(vm: &mut SimVm, vmid: u32, want_gib: u32) -> Result<bool, ProxmoxError> {
    let drive = vm.config.get(BOOT_DISK).cloned().unwrap_or_default();
    let have = drive_size_bytes(&drive).unwrap_or(0);
    let want = u64::from(want_gib) << 30;
    if have > want {
        return Err(ProxmoxError::ShrinkRefused {
            vmid,
            disk: BOOT_DISK.into(),
            have,
            want,
        });
    }
    if have == want {
        return Ok(false);
    }
    let rest: Vec<&str> = drive
        .split(',')
        .filter(|p| !p.starts_with("size="))
        .collect();
    vm.config.insert(
        BOOT_DISK.into(),
        format!("{},size={want_gib}G", rest.join(",")),
    );
    Ok(true)
}

#[async_trait]
impl ProxmoxPort for SimProxmox {
    async fn observe(&self) -> Result<Inventory, ProxmoxError> {
        let body = self.listing_json();
        self.state.lock().unwrap().listings += 1;
        Inventory::from_listing_json(&body)
    }

    async fn check_template(&self, spec: &VmSpec, template_node: &str) -> Result<(), ProxmoxError> {
        let t = spec.template.get();
        let st = self.state.lock().unwrap();
        let vm = st
            .vms
            .get(&t)
            .filter(|vm| vm.template && vm.node == template_node)
            .ok_or_else(|| ProxmoxError::Config(format!("no template {t} on {template_node}")))?;
        if !vm.config.values().any(|v| v.contains("cloudinit")) {
            return Err(ProxmoxError::Config(format!(
                "template {t} has no cloud-init drive"
            )));
        }
        if template_node != spec.id.pve_node {
            // The simulator's storage is local to each node, as `local-lvm` is.
            return Err(ProxmoxError::Config(format!(
                "template {t} is on {template_node}, VM {} goes to {}, and storage {} is not shared",
                spec.id.name, spec.id.pve_node, spec.storage
            )));
        }
        Ok(())
    }

    async fn claim(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        self.verify(id)
    }

    async fn claim_for_destroy(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        let st = self.state.lock().unwrap();
        let vm = st
            .vms
            .get(&id.vmid.get())
            .ok_or_else(|| ProxmoxError::NotFound(format!("VM {}", id.vmid.get())))?;
        OwnedVm::verify_for_destroy(id, &vm.node, &vm.config_json(), vm.running)
    }

    async fn pending(&self, vm: &OwnedVm) -> Result<PendingChanges, ProxmoxError> {
        self.verify(vm.identity())?;
        Ok(self.pending_of(vm.vmid()))
    }

    async fn create(&self, spec: &VmSpec, template_node: &str) -> Result<Created, ProxmoxError> {
        let id = &spec.id;
        let vmid = id.vmid.get();
        let existing = self.vm(vmid);
        let adopted = match existing {
            None => {
                self.check_template(spec, template_node).await?;
                let st = &mut self.state.lock().unwrap();
                let template = st.vms[&spec.template.get()].config.clone();
                let mut config: BTreeMap<String, String> = template
                    .into_iter()
                    .filter(|(k, _)| k != "template")
                    .map(|(k, v)| {
                        (
                            k,
                            v.replace(
                                &format!("base-{}", spec.template.get()),
                                &format!("vm-{vmid}"),
                            ),
                        )
                    })
                    .collect();
                config.insert("name".into(), id.name.clone());
                config.insert("description".into(), spec.description());
                // PVE gives every clone its own SMBIOS uuid; the guest reports it, and kiln checks it
                // before sending a machine config.
                config.insert(
                    "smbios1".into(),
                    format!("uuid={}", crate::talos::ClusterUid::generate()),
                );
                st.writes += 1;
                st.vms.insert(
                    vmid,
                    SimVm {
                        node: id.pve_node.clone(),
                        config,
                        pending: BTreeMap::new(),
                        running: false,
                        template: false,
                        generation: 0,
                    },
                );
                false
            }
            Some(vm) => match ownership::judge(id, &vm.config_json()) {
                Verdict::Owned => false,
                Verdict::HalfMade if !vm.running => true,
                Verdict::HalfMade => {
                    return Err(ProxmoxError::Foreign {
                        vmid,
                        reason: "running without kiln's tags: changed by a person".into(),
                    });
                }
                Verdict::Foreign(reason) => return Err(ProxmoxError::Foreign { vmid, reason }),
                Verdict::Mismatched(reason) => {
                    return Err(ProxmoxError::Mismatched { vmid, reason });
                }
            },
        };
        // Configure: the half-made VM proves itself by name and marker; tags come with this write.
        {
            let st = &mut self.state.lock().unwrap();
            st.writes += 1;
            let vm = st.vms.get_mut(&vmid).expect("just checked");
            for (k, v) in spec.config_params() {
                set(vm, k, v);
            }
            grow(vm, vmid, spec.resources.disk_gib)?;
            vm.generation += 1;
        }
        let owned = self.verify(id)?;
        let mut was_running = false;
        self.write(&owned, |vm| {
            vm.apply_pending();
            was_running = std::mem::replace(&mut vm.running, true);
            Ok(())
        })?;
        if !was_running {
            self.emit(vmid, PowerChange::Started, None);
        }
        Ok(Created {
            vm: self.verify(id)?,
            adopted,
            warnings: Vec::<TaskOutcome>::new(),
        })
    }

    async fn resize(&self, vm: &OwnedVm, spec: &VmSpec) -> Result<Resized, ProxmoxError> {
        let vmid = vm.vmid();
        let mut disk_grown = false;
        self.write(vm, |sim| {
            set(sim, "cores", spec.resources.cores.to_string());
            set(sim, "memory", spec.memory_mib().to_string());
            disk_grown = grow(sim, vmid, spec.resources.disk_gib)?;
            Ok(())
        })?;
        let vm = self.verify(vm.identity())?;
        let needs_reboot = vm.running() && !self.pending_of(vmid).is_empty();
        Ok(Resized {
            vm,
            needs_reboot,
            disk_grown,
        })
    }

    async fn reboot(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let mut was_running = false;
        self.write(vm, |sim| {
            sim.apply_pending();
            was_running = std::mem::replace(&mut sim.running, true);
            Ok(())
        })?;
        let change = if was_running {
            PowerChange::Rebooted
        } else {
            PowerChange::Started
        };
        self.emit(vm.vmid(), change, None);
        self.verify(vm.identity())
    }

    async fn start(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let mut was_running = true;
        self.write(vm, |sim| {
            was_running = sim.running;
            if !sim.running {
                sim.apply_pending();
                sim.running = true;
            }
            Ok(())
        })?;
        if !was_running {
            self.emit(vm.vmid(), PowerChange::Started, None);
        }
        self.verify(vm.identity())
    }

    async fn shutdown(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let mut was_running = false;
        self.write(vm, |sim| {
            was_running = std::mem::replace(&mut sim.running, false);
            Ok(())
        })?;
        if was_running {
            self.emit(vm.vmid(), PowerChange::Stopped, None);
        }
        self.verify(vm.identity())
    }

    async fn destroy(&self, vm: OwnedVm) -> Result<(), ProxmoxError> {
        let vm = if vm.running() {
            self.shutdown(&vm).await?
        } else {
            vm
        };
        let fresh = self.claim_for_destroy(vm.identity()).await?;
        // qemu-server `src/PVE/API2/Qemu.pm` `destroy_vm` refuses a running VM ("VM … is running -
        // destroy failed"); a stopped one goes whether its tags were ever set or not.
        if fresh.running() {
            return Err(ProxmoxError::Protocol(format!(
                "VM {} runs again; not destroyed",
                vm.vmid()
            )));
        }
        let gone = {
            let mut st = self.state.lock().unwrap();
            st.writes += 1;
            st.vms.remove(&vm.vmid())
        };
        if gone.is_some() {
            self.emit(vm.vmid(), PowerChange::Destroyed, gone);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::Ownership;
    use crate::spec::document::Resources;
    use crate::spec::{MacAddr, Role, Vmid};

    fn spec(n: u32) -> VmSpec {
        VmSpec {
            id: VmIdentity {
                cluster: "demo".into(),
                cluster_uid: "u".into(),
                number: n,
                role: Role::ControlPlane,
                name: format!("demo-cp-{n}"),
                vmid: Vmid::new(u64::from(700 + n)).unwrap(),
                pve_node: "pve1".into(),
            },
            template: Vmid::new(9000).unwrap(),
            storage: "local-lvm".into(),
            bridge: "vmbr0".into(),
            vlan: None,
            mac: MacAddr([2, 0, 0, 0, 0, n as u8]),
            ip: "10.0.0.10".parse().unwrap(),
            prefix_length: 24,
            gateway: "10.0.0.1".parse().unwrap(),
            nameservers: vec!["10.0.0.1".parse().unwrap()],
            resources: Resources {
                cores: 2,
                memory_gib: 2,
                disk_gib: 20,
            },
            guest_agent: false,
            pool: None,
        }
    }

    #[tokio::test]
    async fn lifecycle_with_the_same_rules_as_pve() {
        let sim = SimProxmox::new();
        sim.add_template(9000, "pve1");
        let s = spec(1);
        let created = sim.create(&s, "pve1").await.unwrap();
        assert!(created.vm.running());
        let inv = sim.observe().await.unwrap();
        assert!(matches!(
            inv.get(701).unwrap().ownership,
            Ownership::Kiln(_)
        ));
        assert_eq!(sim.listings(), 1);

        let mut big = s.clone();
        big.resources.cores = 4;
        big.resources.disk_gib = 30;
        let r = sim.resize(&created.vm, &big).await.unwrap();
        assert!(r.needs_reboot && r.disk_grown);
        assert_eq!(sim.vm(701).unwrap().config["cores"], "2");
        let vm = sim.reboot(&r.vm).await.unwrap();
        assert_eq!(sim.vm(701).unwrap().config["cores"], "4");
        assert!(sim.pending(&vm).await.unwrap().is_empty());

        // A person re-tags it: the old proof no longer writes anything.
        sim.edit(
            701,
            &[(
                "tags",
                Some("kiln;kiln-cluster-other;kiln-role-controlplane"),
            )],
        );
        let writes = sim.writes();
        assert!(sim.shutdown(&vm).await.is_err());
        assert!(sim.destroy(vm.clone()).await.is_err());
        assert_eq!(sim.writes(), writes);
        sim.edit(
            701,
            &[(
                "tags",
                Some("kiln;kiln-cluster-demo;kiln-role-controlplane"),
            )],
        );
        let vm = sim.claim(&s.id).await.unwrap();
        sim.destroy(vm).await.unwrap();
        assert!(sim.vm(701).is_none());
    }

    #[tokio::test]
    async fn foreign_refused_half_made_adopted() {
        let sim = SimProxmox::new();
        sim.add_template(9000, "pve1");
        sim.add_vm(
            701,
            "pve1",
            [("name".to_owned(), "db".to_owned())].into(),
            true,
        );
        assert!(matches!(
            sim.create(&spec(1), "pve1").await,
            Err(ProxmoxError::Foreign { vmid: 701, .. })
        ));
        let s = spec(2);
        sim.add_vm(
            702,
            "pve1",
            [
                ("name".to_owned(), s.id.name.clone()),
                ("description".to_owned(), s.description()),
            ]
            .into(),
            false,
        );
        assert!(sim.create(&s, "pve1").await.unwrap().adopted);
    }

    #[tokio::test]
    async fn power_hook_hears_every_change_once_with_the_config() {
        let sim = SimProxmox::new();
        sim.add_template(9000, "pve1");
        type Heard = Vec<(u32, PowerChange, Option<String>)>;
        let heard: Arc<Mutex<Heard>> = Arc::default();
        let log = heard.clone();
        sim.set_power_hook(Arc::new(move |e: &PowerEvent| {
            log.lock()
                .unwrap()
                .push((e.vmid, e.change, e.config.get("ipconfig0").cloned()))
        }));
        let s = spec(1);
        let vm = sim.create(&s, "pve1").await.unwrap().vm;
        // Idempotent calls that change no power are not events.
        let vm = sim.start(&vm).await.unwrap();
        let vm = sim.reboot(&vm).await.unwrap();
        let vm = sim.shutdown(&vm).await.unwrap();
        let vm = sim.shutdown(&vm).await.unwrap();
        let vm = sim.start(&vm).await.unwrap();
        sim.stop_by_hand(701);
        let vm = sim.claim(vm.identity()).await.unwrap();
        sim.destroy(vm).await.unwrap();
        let ip = Some("ip=10.0.0.10/24,gw=10.0.0.1".to_owned());
        let want: Heard = [
            PowerChange::Started,
            PowerChange::Rebooted,
            PowerChange::Stopped,
            PowerChange::Started,
            PowerChange::Stopped,
            PowerChange::Destroyed,
        ]
        .into_iter()
        .map(|c| (701, c, ip.clone()))
        .collect();
        assert_eq!(*heard.lock().unwrap(), want);
    }
}
