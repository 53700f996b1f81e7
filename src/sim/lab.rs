//! The simulated machine room: a [`SimPve`] whose VMs run Talos, as `proxmox.backend = "simulated"`
//! with `talos.backend = "simulated"` means. The reconciler reaches the simulated PVE through the real
//! `proxmox` adapter ([`Lab::proxmox`]), over the PVE API transport. When a VM starts, a Talos node answers at the address its
//! cloud-init `ipconfig0` gives it (`ip=A.B.C.D/N,gw=…`), on the Talos API port, in maintenance on its
//! first boot; when the VM stops, nothing answers there; a reboot brings back what is on its disk (the
//! installed config, or maintenance if none); a destroyed VM's machine is gone.
//!
//! The coupling goes one way, through SimPve's power hook: the hypervisor knows nothing of Talos.
//! kiln reaches the nodes as it reaches real ones, with `talos::grpc::GrpcTalos` at their IPs, so the lab
//! exposes nothing Talos-specific beyond what tests look at (applied configs, violations, faults).
//!
//! Node addresses must be loopback (Linux routes all of 127.0.0.0/8 to `lo`, so each node can listen on
//! its own IP without root); a VM whose address cannot be bound is recorded in [`Lab::boot_errors`] and
//! simply never answers, as a machine on an unreachable network would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::pve::{self, PowerChange, PowerEvent, SimPve};
use super::talos::{NodeSpec, SimError, SimOptions, SimTalos};
use crate::proxmox::{ProxmoxPort, PveAdapter};
use crate::talos::grpc::client::APID_PORT;

/// What the lab knows of each VM it booted a machine for.
#[derive(Default)]
struct Machines {
    /// VMID → the machine's API address.
    by_vmid: HashMap<u32, SocketAddr>,
    /// Why a started VM has no machine answering (bad `ipconfig0`, an address in use), newest last.
    boot_errors: Vec<String>,
}

/// The lab's side of the coupling, held weakly by the hypervisor's hook so that dropping the [`Lab`]
/// stops every node's server even while someone still holds the Proxmox port.
struct Room {
    talos: Mutex<SimTalos>,
    machines: Mutex<Machines>,
    port: u16,
}

/// Simulated Proxmox and Talos, coupled. Dropping it stops every simulated Talos node.
pub struct Lab {
    proxmox: Arc<SimPve>,
    adapter: Arc<PveAdapter>,
    room: Arc<Room>,
}

impl Lab {
    /// A lab with these Talos nocloud templates (each with a cloud-init drive), given as
    /// `(vmid, pve_node)`, validating configs as `kiln sim talos` does (the official schemas when
    /// `KILN_REFERENCE_SCHEMAS` names them, else kiln's strict decoding).
    pub fn new(templates: &[(u32, &str)]) -> Self {
        Self::with_options(templates, SimOptions::default(), APID_PORT)
    }

    /// As [`Lab::new`], with the simulator's options and the Talos API port nodes listen on.
    pub fn with_options(templates: &[(u32, &str)], options: SimOptions, port: u16) -> Self {
        let proxmox = Arc::new(SimPve::new());
        for (vmid, node) in templates {
            proxmox.add_template(*vmid, node);
        }
        let room = Arc::new(Room {
            talos: Mutex::new(SimTalos::new(options)),
            machines: Mutex::default(),
            port,
        });
        let weak: Weak<Room> = Arc::downgrade(&room);
        proxmox.set_power_hook(Arc::new(move |event: &PowerEvent| {
            if let Some(room) = weak.upgrade() {
                room.on_power(event);
            }
        }));
        let adapter = Arc::new(pve::adapter(proxmox.clone()));
        Self {
            proxmox,
            adapter,
            room,
        }
    }

    /// The hypervisor as the reconciler drives it: kiln's real PVE adapter over the simulated API.
    pub fn proxmox(&self) -> Arc<dyn ProxmoxPort> {
        self.adapter.clone()
    }

    /// The same adapter, for what only the adapter offers (the permission preflight).
    pub fn adapter(&self) -> Arc<PveAdapter> {
        self.adapter.clone()
    }

    /// The simulated PVE itself, for tests acting as the person at the web UI (`edit`,
    /// `stop_by_hand`) and looking at what it was asked (`requests`).
    pub fn sim_proxmox(&self) -> &Arc<SimPve> {
        &self.proxmox
    }

    /// The Talos simulator, for tests (applied configs, violations, injected faults). Hold the guard
    /// briefly: every VM power change waits for it.
    pub fn talos(&self) -> MutexGuard<'_, SimTalos> {
        self.room.talos.lock().expect("talos lock")
    }

    /// Where the machine of a VM answers (or would, when it runs), if the lab booted one.
    pub fn node_addr(&self, vmid: u32) -> Option<SocketAddr> {
        self.room.machines().by_vmid.get(&vmid).copied()
    }

    /// The config the machine at `ip` runs, exactly as kiln sent it.
    pub fn applied_config(&self, ip: IpAddr) -> Option<Vec<u8>> {
        self.talos()
            .applied_config(SocketAddr::new(ip, self.room.port))
    }

    /// What would have broken a real cluster (a second etcd bootstrap), in order.
    pub fn violations(&self) -> Vec<String> {
        self.talos().violations()
    }

    /// Started VMs whose machine could not answer, and why.
    pub fn boot_errors(&self) -> Vec<String> {
        self.room.machines().boot_errors.clone()
    }
}

/// The IP of cloud-init's `ipconfig0` (`ip=A.B.C.D/N,gw=…`); `None` for DHCP or no static address.
pub fn ipconfig_ip(ipconfig0: &str) -> Option<IpAddr> {
    let cidr = ipconfig0.split(',').find_map(|p| p.strip_prefix("ip="))?;
    cidr.split('/').next()?.parse().ok()
}

/// The SMBIOS uuid of a VM's `smbios1` (`uuid=…,…`), which Talos reports as its system uuid.
pub fn smbios_uuid(smbios1: &str) -> Option<String> {
    smbios1
        .split(',')
        .find_map(|p| p.strip_prefix("uuid="))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

impl Room {
    fn machines(&self) -> MutexGuard<'_, Machines> {
        self.machines.lock().expect("machines lock")
    }

    fn on_power(self: &Arc<Self>, event: &PowerEvent) {
        let _span =
            tracing::debug_span!("sim_lab", vmid = event.vmid, change = ?event.change).entered();
        let known = self.machines().by_vmid.get(&event.vmid).copied();
        let wanted = event
            .config
            .get("ipconfig0")
            .and_then(|c| ipconfig_ip(c))
            .map(|ip| SocketAddr::new(ip, self.port));
        match event.change {
            PowerChange::Stopped => {
                if let Some(addr) = known {
                    self.power(addr, false);
                }
            }
            PowerChange::Destroyed => {
                let gone = self.machines().by_vmid.remove(&event.vmid);
                if let Some(addr) = gone {
                    self.talos.lock().expect("talos lock").remove_node(addr);
                }
            }
            PowerChange::Started | PowerChange::Rebooted => match (known, wanted) {
                (Some(addr), Some(want)) if addr == want => {
                    if event.change == PowerChange::Rebooted {
                        self.power(addr, false);
                    }
                    self.power(addr, true);
                }
                (known, want) => {
                    // First boot, or cloud-init now hands the machine another address: the old
                    // address stops answering and the machine comes up at the new one.
                    if let Some(old) = known {
                        self.machines().by_vmid.remove(&event.vmid);
                        self.talos.lock().expect("talos lock").remove_node(old);
                    }
                    match want {
                        Some(addr) => self.first_boot(event, addr),
                        None => self.boot_error(format!(
                            "VM {} started without a static ipconfig0 address: its Talos node cannot \
                             be reached",
                            event.vmid
                        )),
                    }
                }
            },
        }
    }

    fn power(&self, addr: SocketAddr, on: bool) {
        if let Err(e) = self.talos.lock().expect("talos lock").set_powered(addr, on) {
            self.boot_error(format!(
                "power {} {addr}: {e}",
                if on { "on" } else { "off" }
            ));
        }
    }

    fn boot_error(&self, message: String) {
        tracing::warn!(%message, "simulated machine does not answer");
        self.machines().boot_errors.push(message);
    }

    fn first_boot(self: &Arc<Self>, event: &PowerEvent, addr: SocketAddr) {
        // Never hold the machines lock while taking the Talos one or reporting: one order, no deadlock.
        let clash = self
            .machines()
            .by_vmid
            .iter()
            .find(|(vmid, a)| **a == addr && **vmid != event.vmid)
            .map(|(vmid, _)| *vmid);
        if let Some(other) = clash {
            self.boot_error(format!(
                "VM {} boots with address {}, which VM {other} already has: an address conflict",
                event.vmid,
                addr.ip()
            ));
            return;
        }
        let spec = NodeSpec {
            addr,
            uuid: event.config.get("smbios1").and_then(|s| smbios_uuid(s)),
            version: None,
            platform: None,
        };
        self.machines().by_vmid.insert(event.vmid, addr);
        let booted = self.talos.lock().expect("talos lock").boot_node(&spec);
        match booted {
            Ok(_) => {}
            // The socket of a machine destroyed a moment ago at this address may still be closing:
            // the new machine comes up once it has, as a real VM takes a while to boot.
            Err(SimError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                let room = Arc::downgrade(self);
                let vmid = event.vmid;
                tokio::spawn(async move { retry_boot(room, vmid, spec).await });
            }
            Err(e) => {
                self.machines().by_vmid.remove(&event.vmid);
                self.boot_error(format!("VM {}: {e}", event.vmid));
            }
        }
    }
}

async fn retry_boot(room: Weak<Room>, vmid: u32, spec: NodeSpec) {
    let mut last = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(room) = room.upgrade() else { return };
        // Destroyed or re-addressed meanwhile: this boot is moot.
        if room.machines().by_vmid.get(&vmid) != Some(&spec.addr) {
            return;
        }
        match room.talos.lock().expect("talos lock").boot_node(&spec) {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
    }
    if let Some(room) = room.upgrade() {
        room.machines().by_vmid.remove(&vmid);
        room.boot_error(format!("VM {vmid}: {last}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon keeps the lab beside its ports, across tasks.
    #[test]
    fn the_lab_can_live_beside_the_ports() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Lab>();
    }

    #[test]
    fn cloud_init_addresses_and_smbios_uuids_parse_as_proxmox_writes_them() {
        assert_eq!(
            ipconfig_ip("ip=127.0.2.161/24,gw=127.0.2.1"),
            Some("127.0.2.161".parse().unwrap())
        );
        assert_eq!(
            ipconfig_ip("gw=10.0.0.1,ip=10.0.0.5/8"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(ipconfig_ip("ip=dhcp"), None);
        assert_eq!(ipconfig_ip(""), None);
        assert_eq!(
            smbios_uuid("uuid=5b0e4c2a-0000-4000-8000-000000000001,manufacturer=QEMU").as_deref(),
            Some("5b0e4c2a-0000-4000-8000-000000000001")
        );
        assert_eq!(smbios_uuid("manufacturer=QEMU"), None);
    }
}
