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

/// Exit statuses of VM 401's resize tasks, oldest first, from the node's task list (which shows
/// a stopped task's exit status as `status`).
async fn resize_exits(pve: &FakePve) -> Vec<String> {
    let tasks = pve
        .api()
        .get(
            "/nodes/pve1/tasks",
            &[("vmid", "401".to_owned()), ("limit", "500".to_owned())],
        )
        .await
        .unwrap();
    let mut resizes: Vec<(u64, String)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "resize")
        .map(|t| {
            (
                t["pid"].as_u64().unwrap(),
                t["status"].as_str().unwrap_or("running").to_owned(),
            )
        })
        .collect();
    resizes.sort();
    resizes.into_iter().map(|(_, s)| s).collect()
}

/// qemu-server's `resize_vm` compares the digest inside its worker: an edit between kiln's read and
/// its resize fails the resize *task* (the PUT itself answers a UPID). The adapter reads again and
/// grows the disk with the new digest, once, keeping the other user's edit.
#[tokio::test]
async fn a_disk_resize_whose_task_fails_on_another_edit_is_read_again_and_grown_once() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let vm = px.create(&s, "pve1").await.unwrap().vm;
    let before = count(&pve, "PUT", "/qemu/401/resize");
    let exits_before = resize_exits(&pve).await.len();
    // `resize` reads the config twice before it sends the resize: to compare cores and memory (the
    // first edit, harmless: nothing is written with that digest), then right before the resize (the
    // second, which the resize's digest then misses).
    pve.ctl(
        json!({"cmd": "meddle", "vmid": 401, "after": "read", "times": 2,
                   "set": {"startup": "order={n}"}}),
    );
    let mut bigger = s.clone();
    bigger.resources.disk_gib = 30;
    let r = tokio::time::timeout(DEADLINE, px.resize(&vm, &bigger))
        .await
        .expect("the resize ended")
        .expect("the raced resize is read again and sent again");
    assert!(r.disk_grown);
    assert_eq!(
        pve.ctl(json!({"cmd": "meddling"})),
        json!([]),
        "both edits happened"
    );
    assert_eq!(count(&pve, "PUT", "/qemu/401/resize") - before, 2);
    assert_eq!(
        resize_exits(&pve).await[exits_before..],
        [
            "checksum mismatch (file change by other user?)".to_owned(),
            "OK".to_owned()
        ],
        "the first resize failed in its task, the second ran"
    );
    let cfg = &pve.vm(401)["config"];
    assert!(cfg["scsi0"].as_str().unwrap().contains("size=30G"), "{cfg}");
    assert_eq!(cfg["startup"], "order=2", "the other user's edit survives");
}
