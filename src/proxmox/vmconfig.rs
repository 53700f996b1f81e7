//! What one node's VM should look like, as the parameters PVE's API takes (DESIGN.md §3). Pure.

use std::net::{IpAddr, Ipv4Addr};

use super::ownership::VmIdentity;
use crate::spec::document::Resources;
use crate::spec::{Cluster, MacAddr, Node, Vmid};

/// The disk kiln grows (the Talos nocloud template's boot disk).
pub const BOOT_DISK: &str = "scsi0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub id: VmIdentity,
    pub template: Vmid,
    pub storage: String,
    pub bridge: String,
    pub vlan: Option<u16>,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_length: u8,
    pub gateway: Ipv4Addr,
    pub nameservers: Vec<IpAddr>,
    pub resources: Resources,
    pub guest_agent: bool,
    pub pool: Option<String>,
}

impl VmSpec {
    pub fn for_node(cluster: &Cluster, node: &Node, cluster_uid: &str) -> Self {
        let s = &cluster.spec;
        Self {
            id: VmIdentity::for_node(cluster, node, cluster_uid),
            template: node.template,
            storage: s.proxmox.storage.clone(),
            bridge: s.proxmox.bridge.clone(),
            vlan: s.proxmox.vlan,
            mac: node.mac,
            ip: node.ip,
            prefix_length: s.network.prefix_length,
            gateway: s.network.gateway,
            nameservers: s.network.nameservers.clone(),
            resources: node.resources,
            guest_agent: cluster.spec.has_guest_agent(),
            pool: s.proxmox.pool.clone(),
        }
    }

    /// The description: the ownership marker first, then a line for the person who finds the VM.
    pub fn description(&self) -> String {
        format!(
            "{}\nManaged by kiln from clusters/{}.yaml: change that file, not this VM.",
            self.id.marker(),
            self.id.cluster
        )
    }

    pub fn net0(&self) -> String {
        let mut v = format!("virtio={},bridge={}", self.mac, self.bridge);
        if let Some(tag) = self.vlan {
            v.push_str(&format!(",tag={tag}"));
        }
        v
    }

    pub fn ipconfig0(&self) -> String {
        format!("ip={}/{},gw={}", self.ip, self.prefix_length, self.gateway)
    }

    /// Always set: left unset, Proxmox's cloud-init hands the guest the host's resolvers.
    pub fn nameserver(&self) -> String {
        self.nameservers
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn memory_mib(&self) -> u64 {
        u64::from(self.resources.memory_gib) * 1024
    }

    /// Everything set after the clone, in one config write.
    pub fn config_params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cores", self.resources.cores.to_string()),
            ("memory", self.memory_mib().to_string()),
            ("cpu", "host".into()),
            ("scsihw", "virtio-scsi-pci".into()),
            ("balloon", "0".into()),
            ("net0", self.net0()),
            ("ipconfig0", self.ipconfig0()),
            ("nameserver", self.nameserver()),
            ("onboot", "1".into()),
            ("boot", format!("order={BOOT_DISK}")),
            ("agent", if self.guest_agent { "1" } else { "0" }.into()),
            ("tags", self.id.tags()),
        ]
    }

    pub fn disk_size(&self) -> String {
        format!("{}G", self.resources.disk_gib)
    }
}

/// Bytes of a drive's `size=` (`32G`, `10240M`, plain number = GiB as Proxmox writes none).
pub fn drive_size_bytes(drive: &str) -> Option<u64> {
    let size = drive.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (num, unit) = match size.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&size[..i], Some(c)),
        _ => (size, None),
    };
    let mult: u64 = match unit {
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') | None => 1 << 30,
        Some('T') => 1 << 40,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mult as f64) as u64)
}

/// Where one volume of a VM config lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The config key (`scsi0`, `ide2`, `efidisk0`, …).
    pub key: String,
    /// The volume as written (`local-lvm:vm-9000-disk-0`, `/dev/sdb`).
    pub volume: String,
    /// Its storage; `None` for a path outside any storage.
    pub storage: Option<String>,
}

/// Every volume a clone copies or refers to: disks, the cloud-init drive, `efidisk0`/`tpmstate0`
/// and ISO CD-ROMs — each drive key qemu-server's `foreach_volume` visits (`ideN`, `sataN`, `scsiN`,
/// `virtioN`, `efidisk0`, `tpmstate0`). An empty CD-ROM (`none`) and the host's drive (`cdrom`)
/// hold no volume. `unusedN` is not cloned.
pub fn volumes_of(config: &serde_json::Map<String, serde_json::Value>) -> Vec<Volume> {
    let is_drive = |key: &str| {
        key == "efidisk0"
            || key == "tpmstate0"
            || ["ide", "sata", "scsi", "virtio"].iter().any(|bus| {
                key.strip_prefix(bus)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    config
        .iter()
        .filter(|(k, _)| is_drive(k))
        .filter_map(|(k, v)| {
            let volume = v.as_str()?.split(',').next()?.trim().to_owned();
            if volume.is_empty() || volume == "none" || volume == "cdrom" {
                return None;
            }
            let storage = (!volume.starts_with('/'))
                .then(|| volume.split_once(':').map(|(s, _)| s.to_owned()))
                .flatten();
            Some(Volume {
                key: k.clone(),
                volume,
                storage,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_volume_is_found() {
        let cfg = serde_json::json!({
            "scsi0": "local-lvm:base-9000-disk-0,size=10G",
            "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
            "ide0": "iso:iso/talos.iso,media=cdrom",
            "ide1": "none,media=cdrom",
            "sata0": "cdrom,media=cdrom",
            "efidisk0": "nfs:9000/base-9000-disk-1.qcow2,efitype=4m,size=528K",
            "tpmstate0": "local-lvm:vm-9000-disk-2,size=4M,version=v2.0",
            "virtio1": "/dev/disk/by-id/ata-x",
            "unused0": "local-lvm:vm-9000-disk-9",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0",
        });
        let vols = volumes_of(cfg.as_object().unwrap());
        let seen: Vec<(&str, Option<&str>)> = vols
            .iter()
            .map(|v| (v.key.as_str(), v.storage.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("efidisk0", Some("nfs")),
                ("ide0", Some("iso")),
                ("ide2", Some("local-lvm")),
                ("scsi0", Some("local-lvm")),
                ("tpmstate0", Some("local-lvm")),
                ("virtio1", None),
            ]
        );
    }

    #[test]
    fn drive_sizes() {
        assert_eq!(
            drive_size_bytes("local-lvm:vm-401-disk-0,size=32G"),
            Some(32 << 30)
        );
        assert_eq!(
            drive_size_bytes("x:y,iothread=1,size=512M"),
            Some(512 << 20)
        );
        assert_eq!(drive_size_bytes("x:y"), None);
    }
}
