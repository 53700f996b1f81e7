//! Issue 23, point 9: a write whose digest no longer matches is a conflict — read again, write what
//! still differs — and every re-PUT loop ends. The launcher's `meddle` edits the VM as another user
//! would, right between kiln's read and its write (or after each write).

use std::time::Duration;

use kiln::proxmox::{ProxmoxError, ProxmoxPort};
use kiln::spec::Role;
use serde_json::json;

use super::support::{FakePve, fast_retry};
use super::{count, spec};

/// A test that would otherwise loop for ever fails at this deadline instead.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_edit_between_read_and_write_is_read_again_and_kept() {
    let pve = FakePve::start();
    // The first successful read of VM 401's config is the one configure makes right after the clone.
    pve.ctl(json!({"cmd": "meddle", "vmid": 401, "after": "read", "set": {"startup": "order=9"}}));
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .expect("the conflict is retried");
    assert!(created.vm.running());
    assert_eq!(
        pve.ctl(json!({"cmd": "meddling"})),
        json!([]),
        "the edit happened"
    );
    assert_eq!(
        count(&pve, "PUT", "/qemu/401/config"),
        2,
        "refused on the digest once, then written"
    );
    let cfg = &pve.vm(401)["config"];
    assert_eq!(cfg["startup"], "order=9", "the other user's edit survives");
    assert_eq!(cfg["tags"], "kiln;kiln-cluster-prod;kiln-role-controlplane");
}

#[tokio::test]
async fn a_vm_changed_after_every_write_ends_after_a_bounded_number_of_writes() {
    let pve = FakePve::start();
    pve.ctl(
        json!({"cmd": "meddle", "vmid": 401, "after": "write", "times": 1000,
                   "set": {"onboot": 0}}),
    );
    let err = tokio::time::timeout(
        DEADLINE,
        pve.adapter().create(&spec(1, Role::ControlPlane), "pve1"),
    )
    .await
    .expect("the config loop ended")
    .unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Conflict(ref m) if m.contains("onboot")),
        "{err}"
    );
    assert_eq!(
        count(&pve, "PUT", "/qemu/401/config"),
        fast_retry().attempts as usize
    );
    assert_eq!(pve.vm(401)["status"], "stopped", "never started half-done");
}

#[tokio::test]
async fn a_resize_raced_by_another_edit_is_read_again_and_written() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let vm = px.create(&s, "pve1").await.unwrap().vm;
    let before = count(&pve, "PUT", "/qemu/401/config");
    pve.ctl(json!({"cmd": "meddle", "vmid": 401, "after": "read", "set": {"startup": "order=3"}}));
    let mut bigger = s.clone();
    bigger.resources.cores = 6;
    let r = tokio::time::timeout(DEADLINE, px.resize(&vm, &bigger))
        .await
        .expect("the resize ended")
        .expect("the conflict is retried");
    assert!(r.needs_reboot);
    assert_eq!(count(&pve, "PUT", "/qemu/401/config") - before, 2);
    assert_eq!(
        px.pending(&r.vm).await.unwrap().keys.get("cores"),
        Some(&Some("6".into()))
    );
}

#[tokio::test]
async fn a_resize_raced_on_every_read_gives_up_after_a_bounded_number_of_writes() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let vm = px.create(&s, "pve1").await.unwrap().vm;
    let before = count(&pve, "PUT", "/qemu/401/config");
    // `{n}` counts the edits, so each one moves the digest again.
    pve.ctl(
        json!({"cmd": "meddle", "vmid": 401, "after": "read", "times": 1000,
                   "set": {"startup": "order={n}"}}),
    );
    let mut bigger = s.clone();
    bigger.resources.cores = 6;
    let err = tokio::time::timeout(DEADLINE, px.resize(&vm, &bigger))
        .await
        .expect("the resize ended")
        .unwrap_err();
    assert!(matches!(err, ProxmoxError::Conflict(_)), "{err}");
    assert_eq!(
        count(&pve, "PUT", "/qemu/401/config") - before,
        fast_retry().attempts as usize
    );
}
