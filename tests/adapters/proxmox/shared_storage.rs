//! Issue 23, point 8: a clone onto another node (`target=`) needs every volume of the template and the
//! target storage on shared storage; the flag comes from `GET /storage`, never `GET /storage/{id}`,
//! and the plan error names each volume that is not shared.

use kiln::proxmox::ProxmoxPort;
use kiln::spec::Role;
use serde_json::json;

use super::spec;
use super::support::{FakePve, Options, least_privilege};

fn storage(pve: &FakePve, name: &str, options: serde_json::Value) {
    pve.ctl(json!({"cmd": "storage", "storage": name, "options": options}));
}

#[tokio::test]
async fn a_clone_to_another_node_names_every_volume_not_on_shared_storage() {
    let pve = FakePve::start_with(Options {
        nodes: vec!["pve2"],
        templates: vec!["9000@pve1"],
    });
    storage(
        &pve,
        "nfs",
        json!({"type": "nfs", "content": "images", "shared": 1}),
    );
    storage(&pve, "iso", json!({"type": "dir", "content": "iso"}));
    // An operator's UEFI template: EFI vars and TPM state beside the disk, and a Talos ISO left in.
    pve.ctl(json!({"cmd": "set_config", "vmid": 9000, "config": {
        "efidisk0": "local-lvm:base-9000-disk-1,efitype=4m,size=4M",
        "tpmstate0": "nfs:9000/base-9000-disk-2.raw,size=4M,version=v2.0",
        "ide0": "iso:iso/nocloud-amd64.iso,media=cdrom",
    }}));
    // The least-privilege token, with Datastore.Audit on the storages that hold template volumes.
    let mut acl = least_privilege(9000, "/vms", "nfs", &["/sdn/zones/localnetwork/vmbr0"]);
    acl.push(("/storage/local-lvm".into(), vec!["Datastore.Audit"]));
    pve.set_acl(&acl);
    let px = pve.adapter();
    let mut s = spec(2, Role::ControlPlane);
    s.id.pve_node = "pve2".into();
    s.storage = "nfs".into();

    // `iso` is not listed to the token: kiln says so rather than guess.
    let err = px.check_template(&s, "pve1").await.unwrap_err().to_string();
    for volume in [
        "volume scsi0 (local-lvm:base-9000-disk-0): storage local-lvm is not shared",
        "volume ide2 (local-lvm:vm-9000-cloudinit): storage local-lvm is not shared",
        "volume efidisk0 (local-lvm:base-9000-disk-1): storage local-lvm is not shared",
        "volume ide0 (iso:iso/nocloud-amd64.iso): storage iso is not listed to kiln's token",
    ] {
        assert!(err.contains(volume), "{volume:?} not in: {err}");
    }
    assert!(
        !err.contains("tpmstate0"),
        "tpmstate0 is on shared nfs: {err}"
    );
    assert!(
        !err.contains("target"),
        "the target storage is shared: {err}"
    );

    let mut acl = acl.clone();
    acl.push(("/storage/iso".into(), vec!["Datastore.Audit"]));
    pve.set_acl(&acl);
    storage(&pve, "local-lvm", json!({"shared": 1}));
    let err = px.check_template(&s, "pve1").await.unwrap_err().to_string();
    assert!(
        err.contains("volume ide0 (iso:iso/nocloud-amd64.iso): storage iso is not shared"),
        "{err}"
    );
    assert!(!err.contains("local-lvm"), "{err}");

    // The ISO ejected: every volume shared, the clone goes to pve2 with target=.
    pve.ctl(json!({"cmd": "set_config", "vmid": 9000, "config": {"ide0": "none,media=cdrom"}}));
    px.check_template(&s, "pve1").await.expect("all shared");
    px.create(&s, "pve1").await.expect("clone to pve2");
    assert_eq!(pve.vm(402)["node"], "pve2");

    // A local target storage is named too.
    let mut local = spec(3, Role::ControlPlane);
    local.id.pve_node = "pve2".into();
    local.storage = "iso".into();
    let err = px
        .check_template(&local, "pve1")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("target storage iso is not shared"), "{err}");

    let by_id: Vec<_> = pve
        .requests()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/api2/json/storage/"))
        .collect();
    assert!(
        by_id.is_empty(),
        "GET /storage/{{id}} needs Datastore.Allocate: {by_id:?}"
    );
}
