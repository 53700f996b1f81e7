//! What "converged" means for one cluster, checked part by part against the contract (DESIGN.md §2–§6)
//! and read from the parts themselves: fakepve's VMs, the simulator's accepted configs, Vault, Git.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::fixture::{ClusterFixture, WantedVm};
use crate::support::World;

/// A config value as text (fakepve keeps what the form sent, numbers included).
fn cfg(vm: &Value, key: &str) -> String {
    match &vm["config"][key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `size=` of a drive, in GiB.
fn disk_gib(drive: &str) -> Option<f64> {
    let size = drive.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (num, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "T" => n * 1024.0,
        "G" => n,
        "M" => n / 1024.0,
        "K" => n / (1024.0 * 1024.0),
        _ => return None,
    })
}

/// Every wanted VM of the cluster exists as the file says: named, running, tagged, marked, sized and
/// addressed; its owner marker carries the cluster uid stored with the secrets bundle.
pub fn assert_vms(world: &World, c: &ClusterFixture, cluster_uid: &str) {
    let vms = world.vms();
    for w in c.wanted() {
        let vm = vms.get(&w.vmid).unwrap_or_else(|| {
            panic!(
                "{}: no VM {} ({}); VMs: {:?}",
                c.name,
                w.vmid,
                w.name,
                vms.keys()
            )
        });
        assert_vm(vm, c, &w, cluster_uid);
    }
}

fn assert_vm(vm: &Value, c: &ClusterFixture, w: &WantedVm, uid: &str) {
    let who = format!("{} (VMID {})", w.name, w.vmid);
    assert_eq!(vm["name"], w.name.as_str(), "{who}: name");
    assert_eq!(vm["status"], "running", "{who}: power state");
    assert!(
        vm["template"] == Value::Bool(false) || vm["template"] == 0,
        "{who}: a VM, not a template: {}",
        vm["template"]
    );
    let tags: BTreeSet<String> = cfg(vm, "tags")
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect();
    let want: BTreeSet<String> = [
        "kiln".to_owned(),
        format!("kiln-cluster-{}", c.name),
        w.role.tag().to_owned(),
    ]
    .into();
    assert_eq!(tags, want, "{who}: tags");
    let marker = format!("kiln-owner: {}/{}/{uid}", c.name, w.number);
    let description = cfg(vm, "description");
    assert!(
        description.lines().next() == Some(marker.as_str()),
        "{who}: description must start with the line {marker:?}: {description:?}"
    );
    assert_eq!(cfg(vm, "cores"), w.cores.to_string(), "{who}: cores");
    assert_eq!(
        cfg(vm, "memory"),
        w.memory_mib.to_string(),
        "{who}: memory (MiB)"
    );
    let disk = cfg(vm, "scsi0");
    assert_eq!(
        disk_gib(&disk),
        Some(w.disk_gib as f64),
        "{who}: boot disk size: {disk:?}"
    );
    let ipconfig = cfg(vm, "ipconfig0");
    let parts: BTreeSet<&str> = ipconfig.split(',').collect();
    assert!(
        parts.contains(format!("ip={}/24", w.ip).as_str())
            && parts.contains(format!("gw={}", c.gateway()).as_str()),
        "{who}: ipconfig0 {ipconfig:?}"
    );
    assert!(
        cfg(vm, "nameserver").contains(&c.gateway().to_string()),
        "{who}: nameserver {:?}",
        cfg(vm, "nameserver")
    );
    let net0 = cfg(vm, "net0");
    assert!(
        net0.to_uppercase().contains(&format!("VIRTIO={}", w.mac)) && net0.contains("bridge=vmbr0"),
        "{who}: net0 {net0:?} (want virtio={} on vmbr0)",
        w.mac
    );
}

/// Proxmox holds exactly the template, `extra` (foreign VMs) and the wanted VMs of `clusters`.
pub fn assert_exact_vms(world: &World, clusters: &[&ClusterFixture], extra: &[u32]) {
    let have: BTreeSet<u32> = world.vms().keys().copied().collect();
    let mut want: BTreeSet<u32> = clusters.iter().flat_map(|c| c.vmids()).collect();
    want.insert(9000);
    want.extend(extra);
    assert_eq!(have, want, "the VMs in Proxmox");
}

/// Every node accepted a config of its role and hostname (the simulator validated each against the
/// official Talos schema of its version before accepting it).
pub fn assert_configs_applied(world: &World, c: &ClusterFixture) {
    for w in c.wanted() {
        let text = world
            .sim
            .dumped_config(w.ip)
            .unwrap_or_else(|| panic!("{}: no machine config accepted at {}", w.name, w.ip));
        assert!(
            text.contains(&format!("type: {}", w.role.machine_type())),
            "{}: config of the wrong machine type",
            w.name
        );
        assert!(
            text.contains(&w.name),
            "{}: config does not set its hostname",
            w.name
        );
    }
}

/// The three Vault paths of §5 exist, the bundle once (version 1) and marked bootstrapped; returns the
/// cluster uid the bundle carries.
pub async fn assert_vault(world: &World, c: &ClusterFixture) -> String {
    let secrets = world
        .vault_metadata(&c.name, "secrets")
        .await
        .unwrap_or_else(|| panic!("{}: no secrets bundle in Vault", c.name));
    assert_eq!(
        secrets["current_version"], 1,
        "{}: the secrets bundle was written more than once: {secrets}",
        c.name
    );
    let custom = &secrets["custom_metadata"];
    assert!(
        custom["bootstrapped-at"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{}: no bootstrapped-at marker: {custom}",
        c.name
    );
    let uid = custom["cluster-uid"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{}: no cluster-uid in the bundle's metadata: {custom}",
                c.name
            )
        })
        .to_owned();
    for (leaf, keys) in [
        (
            "kubeconfig",
            &["ca.crt", "client.crt", "client.key", "kubeconfig", "server"][..],
        ),
        ("talos", &["talosconfig"][..]),
    ] {
        assert!(
            world.vault_metadata(&c.name, leaf).await.is_some(),
            "{}: nothing at kubernetes/{}/{leaf}",
            c.name,
            c.name
        );
        let have = world.vault_keys(&c.name, leaf).await;
        for k in keys {
            assert!(
                have.iter().any(|h| h == k),
                "{}: kubernetes/{}/{leaf} lacks {k}: {have:?}",
                c.name,
                c.name
            );
        }
    }
    uid
}

/// Everything of one converged cluster, its stored credentials used as a human would; returns its uid.
pub async fn assert_converged(world: &World, c: &ClusterFixture) -> String {
    let uid = assert_vault(world, c).await;
    assert_vms(world, c, &uid);
    assert_configs_applied(world, c);
    crate::credentials::assert_credentials_work(world, c).await;
    uid
}

/// The simulator saw `n` bootstraps in all and nothing cluster-breaking.
pub fn assert_bootstraps(world: &World, n: usize) {
    assert_eq!(
        world.sim.violations(),
        Vec::<String>::new(),
        "the simulator refused something cluster-breaking"
    );
    assert_eq!(
        world.sim.bootstraps(),
        n,
        "bootstraps the simulator accepted:\n{}",
        world.sim.log_text()
    );
}

/// The cluster's record in `kiln status --format json` output, whichever of a book
/// (`{"clusters": {name: …}}`), a list or a single record it printed.
pub fn status_of<'a>(json: &'a Value, name: &str) -> Option<&'a Value> {
    if json["name"] == name {
        return Some(json);
    }
    if let Some(v) = json["clusters"].get(name) {
        return Some(v);
    }
    let list = json.as_array().or_else(|| json["clusters"].as_array())?;
    list.iter().find(|v| v["name"] == name)
}
