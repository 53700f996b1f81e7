//! The fleet the scale bench measures: `n` distinct, valid 3+2 clusters, and what Proxmox holds once
//! kiln has made them (the VMs' listing entries and their configurations), so a cycle over them truly
//! has nothing to do. Shared with `tests/engine/bench_fixture.rs`, which checks that it stays so
//! without running the bench.

use kiln::proxmox::vmconfig::{BOOT_DISK, VmSpec};
use kiln::spec::Cluster;
use serde_json::{Value, json};

/// The Proxmox node and template every fixture cluster uses (fakepve's launcher starts `9000@pve1`).
pub const PVE_NODE: &str = "pve1";
pub const TEMPLATE: u32 = 9000;

/// Where a cluster's addresses come from.
#[derive(Debug, Clone, Copy)]
pub enum Net {
    /// `10.(i/256).(i%256).0/24`: unique for up to 65,536 clusters; nothing answers there.
    Private,
    /// `127.(base + i).0.0/24`-style blocks on loopback, one `/24` per cluster (`127.<a>.<b>.0`), for
    /// runs where `kiln sim talos` serves every node.
    Loopback { first_block: u16 },
}

impl Net {
    fn prefix(self, i: usize) -> String {
        match self {
            Net::Private => format!("10.{}.{}", i / 256, i % 256),
            Net::Loopback { first_block } => {
                let b = usize::from(first_block) + i;
                format!("127.{}.{}", 200 + b / 256, b % 256)
            }
        }
    }
}

/// The IP of node `n` (1-based) of cluster `i`.
pub fn node_ip(net: Net, i: usize, n: u32) -> String {
    format!("{}.{}", net.prefix(i), 10 + n)
}

pub fn name(i: usize) -> String {
    format!("c{i:05}")
}

/// VMIDs `{prefix}{n}`: prefix 10000 + i keeps them apart for up to 89,999 clusters.
pub fn vmid_prefix(i: usize) -> usize {
    10_000 + i
}

/// Cluster `i`: three control planes and two workers, the shape of `examples/clusters/production.yaml`.
pub fn intent(i: usize, net: Net) -> String {
    let p = net.prefix(i);
    let ip = |n: u32| node_ip(net, i, n);
    format!(
        "# A scale-bench cluster (benches/scale/fixture.rs).
apiVersion: kiln.dev/v1alpha1
kind: Cluster
metadata:
  name: {name}
  labels: {{env: bench}}
spec:
  proxmox:
    node: {PVE_NODE}
    template: {TEMPLATE}
    storage: local-lvm
    bridge: vmbr0
    vmidPrefix: {prefix}
  talos:
    version: v1.13.9
  kubernetes:
    version: v1.34.1
  network:
    vip: {p}.100
    gateway: {p}.254
    prefixLength: 24
    nameservers: [{p}.254]
  controlPlane:
    resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}
    nodes:
      - {{ip: {ip1}}}
      - {{ip: {ip2}}}
      - {{ip: {ip3}}}
  workers:
    resources: {{cores: 4, memoryGiB: 8, diskGiB: 40}}
    nodes:
      - {{ip: {ip4}}}
      - {{ip: {ip5}}}
  apps:
    ingress-nginx: {{enabled: false}}
    longhorn: {{enabled: false}}
",
        name = name(i),
        prefix = vmid_prefix(i),
        ip1 = ip(1),
        ip2 = ip(2),
        ip3 = ip(3),
        ip4 = ip(4),
        ip5 = ip(5),
    )
}

/// `clusters/<name>.yaml` → text, for `n` clusters.
pub fn files(n: usize, net: Net) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("clusters/{}.yaml", name(i)), intent(i, net)))
        .collect()
}

const GIB: u64 = 1 << 30;

/// One VM as kiln leaves it after a successful create: the clone of the template (its drives and
/// `smbios1`), then kiln's one config write (`VmSpec::config_params`, description with the
/// ownership marker), the boot disk grown to the asked size, started.
pub fn vm_config(cluster: &Cluster, node: &kiln::spec::Node, cluster_uid: &str) -> Value {
    let spec = VmSpec::for_node(cluster, node, cluster_uid);
    let mut config = serde_json::Map::new();
    for (k, v) in spec.config_params() {
        config.insert(k.to_owned(), Value::String(v));
    }
    config.insert("name".into(), Value::String(node.name.clone()));
    config.insert("description".into(), Value::String(spec.description()));
    config.insert(
        BOOT_DISK.into(),
        Value::String(format!(
            "{}:vm-{}-disk-0,size={}",
            spec.storage,
            node.vmid.get(),
            spec.disk_size()
        )),
    );
    config.insert(
        "ide2".into(),
        Value::String(format!(
            "{}:vm-{}-cloudinit,media=cdrom",
            spec.storage,
            node.vmid.get()
        )),
    );
    config.insert("ostype".into(), Value::String("l26".into()));
    config.insert(
        "smbios1".into(),
        Value::String(format!("uuid={}", uuid_of(node.vmid.get()))),
    );
    Value::Object(config)
}

/// A stable, distinct SMBIOS uuid per VMID (PVE generates a random one at clone).
fn uuid_of(vmid: u32) -> String {
    format!("00000000-0000-4000-8000-{vmid:012}")
}

/// What `add_vms` of `scripts/fakepve_launcher.py` takes for every VM of `cluster`, running.
pub fn launcher_vms(cluster: &Cluster, cluster_uid: &str) -> Vec<Value> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            json!({
                "vmid": node.vmid.get(),
                "name": node.name,
                "node": node.pve_node,
                "status": "running",
                "config": vm_config(cluster, node, cluster_uid),
            })
        })
        .collect()
}

/// The `GET /cluster/resources?type=vm` entries Proxmox lists for `cluster`'s VMs once made: the
/// fields `pve-manager`'s `PVE/API2/Cluster.pm` `resources` fills from each VM's config (`maxcpu` the
/// cores, `maxmem` the memory, `maxdisk` the boot disk, `tags`).
pub fn listing_entries(cluster: &Cluster, cluster_uid: &str) -> Vec<Value> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let spec = VmSpec::for_node(cluster, node, cluster_uid);
            let vmid = node.vmid.get();
            json!({
                "id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": node.pve_node,
                "name": node.name, "status": "running", "template": 0,
                "tags": spec.id.tags(),
                "maxcpu": node.resources.cores,
                "maxmem": u64::from(node.resources.memory_gib) * GIB,
                "maxdisk": u64::from(node.resources.disk_gib) * GIB,
            })
        })
        .collect()
}

/// The whole listing body for these clusters (one uid each, from `uid`).
pub fn listing_json(clusters: &[Cluster], uid: impl Fn(&Cluster) -> String) -> Vec<u8> {
    let data: Vec<Value> = clusters
        .iter()
        .flat_map(|c| listing_entries(c, &uid(c)))
        .collect();
    serde_json::to_vec(&json!({ "data": data })).expect("JSON")
}
