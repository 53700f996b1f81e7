//! The Proxmox adapter against the pinned fakepve (DESIGN.md §3, §9; issue 14's acceptance).

#[path = "proxmox/support.rs"]
mod support;

#[path = "proxmox/conflicts.rs"]
mod conflicts;
#[path = "proxmox/least_privilege.rs"]
mod least_privilege;
#[path = "proxmox/shared_storage.rs"]
mod shared_storage;

use std::time::{Duration, Instant};

use kiln::proxmox::tls::Trust;
use kiln::proxmox::{
    Api, Ownership, PowerState, ProxmoxError, ProxmoxPort, PveAdapter, RetryPolicy, TaskOutcome,
    VmIdentity, VmSpec,
};
use kiln::redact::Secret;
use kiln::spec::document::Resources;
use kiln::spec::{MacAddr, Role, Vmid};
use serde_json::json;
use support::{FakePve, Options, fast_retry};

const GIB: u64 = 1 << 30;

fn spec(number: u32, role: Role) -> VmSpec {
    let short = if role == Role::ControlPlane {
        "cp"
    } else {
        "wk"
    };
    VmSpec {
        id: VmIdentity {
            cluster: "prod".into(),
            cluster_uid: "c0ffee".into(),
            number,
            role,
            name: format!("prod-{short}-{number}"),
            vmid: Vmid::new(u64::from(400 + number)).unwrap(),
            pve_node: "pve1".into(),
        },
        template: Vmid::new(9000).unwrap(),
        storage: "local-lvm".into(),
        bridge: "vmbr0".into(),
        vlan: Some(20),
        mac: MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, number as u8]),
        ip: format!("192.168.2.{}", 160 + number).parse().unwrap(),
        prefix_length: 24,
        gateway: "192.168.2.1".parse().unwrap(),
        nameservers: vec!["192.168.2.1".parse().unwrap(), "1.1.1.1".parse().unwrap()],
        resources: Resources {
            cores: 2,
            memory_gib: 4,
            disk_gib: 20,
        },
        guest_agent: true,
        pool: None,
    }
}

/// Polls `done` every 20 ms under a 30 s deadline (the fakes answer in milliseconds).
async fn until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(pve: &FakePve, method: &str, suffix: &str) -> usize {
    pve.requests()
        .iter()
        .filter(|(m, p)| m == method && p.ends_with(suffix))
        .count()
}

#[tokio::test]
async fn create_configure_resize_start_read_back_then_resize_and_destroy() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let created = px.create(&s, "pve1").await.expect("create");
    assert!(!created.adopted);
    assert!(created.vm.running());

    let vm = pve.vm(401);
    let cfg = &vm["config"];
    assert_eq!(vm["status"], "running");
    assert_eq!(cfg["tags"], "kiln;kiln-cluster-prod;kiln-role-controlplane");
    assert!(
        cfg["description"]
            .as_str()
            .unwrap()
            .starts_with("kiln-owner: prod/1/c0ffee\n")
    );
    assert_eq!(cfg["name"], "prod-cp-1");
    assert_eq!(cfg["net0"], "virtio=02:11:22:33:44:01,bridge=vmbr0,tag=20");
    assert_eq!(cfg["ipconfig0"], "ip=192.168.2.161/24,gw=192.168.2.1");
    assert_eq!(cfg["nameserver"], "192.168.2.1 1.1.1.1");
    assert_eq!(cfg["cores"].to_string().trim_matches('"'), "2");
    assert_eq!(cfg["memory"].to_string().trim_matches('"'), "4096");
    assert_eq!(cfg["cpu"], "host");
    assert_eq!(cfg["scsihw"], "virtio-scsi-pci");
    assert_eq!(cfg["balloon"].to_string().trim_matches('"'), "0");
    assert_eq!(cfg["onboot"].to_string().trim_matches('"'), "1");
    assert_eq!(cfg["agent"].to_string().trim_matches('"'), "1");
    assert_eq!(cfg["boot"], "order=scsi0");
    assert!(
        cfg["scsi0"].as_str().unwrap().contains("size=20G"),
        "{}",
        cfg["scsi0"]
    );
    assert!(cfg["ide2"].as_str().unwrap().contains("cloudinit"));

    // Observation sees it as kiln's.
    let inv = px.observe().await.unwrap();
    let seen = inv.get(401).unwrap();
    assert!(
        matches!(seen.ownership, Ownership::Kiln(ref r) if r.number == 1 && r.cluster == "prod")
    );
    assert_eq!(seen.status, PowerState::Running);
    assert_eq!(seen.size.disk_bytes, Some(20 * GIB));

    // Resize a running VM: cores/memory pending until Proxmox's reboot; the disk grows at once.
    let mut bigger = s.clone();
    bigger.resources = Resources {
        cores: 4,
        memory_gib: 8,
        disk_gib: 30,
    };
    let owned = px.claim(&s.id).await.unwrap();
    let r = px.resize(&owned, &bigger).await.unwrap();
    assert!(r.needs_reboot && r.disk_grown);
    let pending = px.pending(&r.vm).await.unwrap();
    assert_eq!(pending.keys.get("cores"), Some(&Some("4".into())));
    assert_eq!(pending.keys.get("memory"), Some(&Some("8192".into())));
    assert_eq!(
        pve.vm(401)["config"]["cores"].to_string().trim_matches('"'),
        "2"
    );
    assert!(
        pve.vm(401)["config"]["scsi0"]
            .as_str()
            .unwrap()
            .contains("size=30G")
    );
    let rebooted = px.reboot(&r.vm).await.unwrap();
    assert!(px.pending(&rebooted).await.unwrap().is_empty());
    assert_eq!(
        pve.vm(401)["config"]["cores"].to_string().trim_matches('"'),
        "4"
    );
    assert_eq!(
        pve.vm(401)["config"]["memory"]
            .to_string()
            .trim_matches('"'),
        "8192"
    );
    assert_eq!(count(&pve, "POST", "/qemu/401/status/reboot"), 1);

    // Disks only grow.
    let mut smaller = bigger.clone();
    smaller.resources.disk_gib = 10;
    let err = px.resize(&rebooted, &smaller).await.unwrap_err();
    assert!(matches!(err, ProxmoxError::ShrinkRefused { .. }), "{err}");

    // Destroy: shutdown, then purge; gone.
    px.destroy(rebooted).await.unwrap();
    assert!(pve.vm(401).is_null());
    assert!(
        pve.requests()
            .iter()
            .any(|(m, p)| m == "DELETE" && p.ends_with("/qemu/401"))
    );
}

#[tokio::test]
async fn clone_failing_twice_with_500_then_succeeding() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "fail", "method": "POST", "suffix": "/qemu/9000/clone", "status": 500,
                   "message": "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout",
                   "times": 2}));
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    assert!(!created.adopted);
    assert_eq!(count(&pve, "POST", "/qemu/9000/clone"), 3);
    assert_eq!(pve.ctl(json!({"cmd": "vmids"})), json!([401, 9000]));
}

#[tokio::test]
async fn lost_clone_reply_adopts_the_half_made_vm_without_a_second_clone() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "lost_reply", "method": "POST", "suffix": "/qemu/9000/clone"}));
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    assert!(
        created.adopted,
        "the unanswered clone's VM is finished, not cloned again"
    );
    assert_eq!(count(&pve, "POST", "/qemu/9000/clone"), 1);
    assert_eq!(
        pve.vm(401)["config"]["tags"],
        "kiln;kiln-cluster-prod;kiln-role-controlplane"
    );
    assert_eq!(pve.vm(401)["status"], "running");
}

#[tokio::test]
async fn a_half_made_vm_left_by_a_crash_is_adopted_but_a_running_one_is_not() {
    let pve = FakePve::start();
    let s = spec(2, Role::ControlPlane);
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 402, "name": "prod-cp-2", "status": "stopped",
                   "config": {"description": s.description(),
                              "scsi0": "local-lvm:vm-402-disk-0,size=10G",
                              "ide2": "local-lvm:vm-402-cloudinit,media=cdrom"}}),
    );
    let created = pve.adapter().create(&s, "pve1").await.unwrap();
    assert!(created.adopted);
    assert_eq!(count(&pve, "POST", "/clone"), 0);

    let s3 = spec(3, Role::ControlPlane);
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 403, "name": "prod-cp-3", "status": "running",
                   "config": {"description": s3.description(),
                              "scsi0": "local-lvm:vm-403-disk-0,size=10G"}}),
    );
    let err = pve.adapter().create(&s3, "pve1").await.unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Foreign { vmid: 403, .. }),
        "{err}"
    );
    assert!(pve.writes_to(403).is_empty());
}

#[tokio::test]
async fn a_config_write_whose_reply_is_lost_converges() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "lost_reply", "method": "PUT", "suffix": "/qemu/401/config"}));
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    assert!(created.vm.running());
    assert_eq!(
        pve.vm(401)["config"]["tags"],
        "kiln;kiln-cluster-prod;kiln-role-controlplane"
    );
    // The lost write had run; the read-back found nothing left to write.
    assert_eq!(count(&pve, "PUT", "/qemu/401/config"), 1);
}

#[tokio::test]
async fn a_vm_locked_by_a_backup_is_not_changed_until_unlocked() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let created = px.create(&s, "pve1").await.unwrap();
    pve.ctl(json!({"cmd": "lock", "vmid": 401, "lock": "backup"}));
    let mut bigger = s.clone();
    bigger.resources.cores = 6;
    let err = px.resize(&created.vm, &bigger).await.unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Locked { vmid: 401, ref lock } if lock == "backup"),
        "{err}"
    );
    assert_eq!(
        pve.vm(401)["config"]["cores"].to_string().trim_matches('"'),
        "2"
    );
    pve.ctl(json!({"cmd": "unlock", "vmid": 401}));
    let r = px.resize(&created.vm, &bigger).await.unwrap();
    assert!(r.needs_reboot);
}

#[tokio::test]
async fn a_storage_lock_timeout_is_retried() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "fail", "method": "PUT", "suffix": "/qemu/401/resize", "status": 500,
                   "message": "can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout",
                   "times": 2}));
    pve.adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    assert_eq!(count(&pve, "PUT", "/qemu/401/resize"), 3);
    assert!(
        pve.vm(401)["config"]["scsi0"]
            .as_str()
            .unwrap()
            .contains("size=20G")
    );
}

#[tokio::test]
async fn task_error_carries_the_log_tail() {
    let pve = FakePve::start();
    pve.ctl(
        json!({"cmd": "fail", "method": "POST", "suffix": "/qemu/401/status/start",
                   "error": "qemu_exited_code", "times": 1}),
    );
    let err = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap_err();
    match err {
        ProxmoxError::TaskFailed {
            status,
            log_tail,
            upid,
        } => {
            assert!(status.contains("QEMU exited with code 1"), "{status}");
            assert!(upid.starts_with("UPID:pve1:"));
            assert!(
                log_tail.iter().any(|l| l.starts_with("TASK ERROR")),
                "{log_tail:?}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        count(&pve, "POST", "/qemu/401/status/start"),
        1,
        "a task error is not retried"
    );
}

#[tokio::test]
async fn warnings_are_success_and_kept() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "task_warnings", "method": "POST", "suffix": "/qemu/9000/clone"}));
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    assert!(matches!(
        created.warnings.as_slice(),
        [TaskOutcome::Warnings { count: 1, log_tail }] if log_tail.iter().any(|l| l.starts_with("WARN"))
    ));
    assert!(created.vm.running());
}

#[tokio::test]
async fn lost_quorum_is_waited_out_and_reported_when_it_lasts() {
    let pve = std::sync::Arc::new(FakePve::start());
    pve.ctl(json!({"cmd": "lose_quorum"}));
    let healer = {
        let pve = pve.clone();
        tokio::spawn(async move {
            // Quorum comes back once kiln has met its loss (a refused clone), not after a guess.
            until(|| count(&pve, "POST", "/qemu/9000/clone") >= 1).await;
            pve.ctl(json!({"cmd": "regain_quorum"}));
        })
    };
    let created = pve
        .adapter()
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap();
    healer.await.unwrap();
    assert!(created.vm.running());
    assert!(
        count(&pve, "POST", "/qemu/9000/clone") >= 2,
        "the clone was refused, then repeated"
    );

    pve.ctl(json!({"cmd": "lose_quorum"}));
    let err = pve
        .adapter()
        .create(&spec(2, Role::ControlPlane), "pve1")
        .await
        .unwrap_err();
    assert!(matches!(err, ProxmoxError::NoQuorum(_)), "{err}");
    assert!(pve.vm(402).is_null());
}

#[tokio::test]
async fn five_percent_lossy_network_still_converges_without_duplicates() {
    let pve = FakePve::start();
    pve.ctl(json!({"cmd": "flaky_network", "drop_rate": 0.05, "seed": 14}));
    let api = pve.api().with_retry(RetryPolicy {
        attempts: 12,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        jitter: 0.0,
    });
    let px = PveAdapter::new(api, Duration::from_secs(60), Duration::from_secs(5), 0);
    for n in 1..=4 {
        let role = if n <= 3 {
            Role::ControlPlane
        } else {
            Role::Worker
        };
        px.create(&spec(n, role), "pve1")
            .await
            .unwrap_or_else(|e| panic!("node {n}: {e}"));
    }
    pve.ctl(json!({"cmd": "flaky_network", "drop_rate": 0.0}));
    assert_eq!(
        pve.ctl(json!({"cmd": "vmids"})),
        json!([401, 402, 403, 404, 9000])
    );
    let inv = px.observe().await.unwrap();
    assert_eq!(inv.cluster("prod").len(), 4);
    for n in 1..=4 {
        assert_eq!(pve.vm(400 + n)["status"], "running");
    }
}

#[tokio::test]
async fn an_invalid_token_is_a_clear_auth_error_without_retries() {
    let pve = FakePve::start();
    let api = Api::new(
        &pve.url(),
        support::TOKEN_ID,
        Secret::new("wrong"),
        &Trust::CaPem(pve.pki.ca_pem.clone()),
    )
    .unwrap()
    .with_retry(fast_retry());
    let px = PveAdapter::new(api, Duration::from_secs(60), Duration::from_secs(5), 0);
    let err = px.observe().await.unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Auth { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("token"));
    assert!(
        !err.to_string().contains("wrong"),
        "the secret is never printed"
    );
    assert_eq!(pve.requests().len(), 1);
}

#[tokio::test]
async fn a_foreign_vm_at_a_wanted_vmid_is_refused_and_untouched() {
    let pve = FakePve::start();
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 401, "name": "database", "status": "running",
                   "config": {"cores": 8, "scsi0": "local-lvm:vm-401-disk-0,size=100G"}}),
    );
    let before = pve.vm(401)["digest"].clone();
    let px = pve.adapter();
    let err = px
        .create(&spec(1, Role::ControlPlane), "pve1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Foreign { vmid: 401, .. }),
        "{err}"
    );
    assert!(matches!(
        px.observe().await.unwrap().get(401).unwrap().ownership,
        Ownership::Foreign { .. }
    ));
    assert_eq!(pve.vm(401)["digest"], before);
    assert!(pve.writes_to(401).is_empty());
    assert_eq!(count(&pve, "POST", "/clone"), 0);
}

#[tokio::test]
async fn a_kiln_tagged_vm_of_another_cluster_or_number_is_reported_untouched() {
    let pve = FakePve::start();
    // Another cluster's marker and tags at our VMID (a human's clone copies tags).
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 402, "name": "prod-cp-2", "status": "stopped",
                   "config": {"tags": "kiln;kiln-cluster-other;kiln-role-controlplane",
                              "description": "kiln-owner: other/2/beef"}}),
    );
    // Right cluster, wrong number in the marker.
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 403, "name": "prod-cp-3", "status": "running",
                   "config": {"tags": "kiln;kiln-cluster-prod;kiln-role-controlplane",
                              "description": "kiln-owner: prod/7/c0ffee"}}),
    );
    let px = pve.adapter();
    let inv = px.observe().await.unwrap();
    assert!(matches!(
        inv.get(402).unwrap().ownership,
        Ownership::Mismatched { .. }
    ));
    for n in [2, 3] {
        let err = px
            .create(&spec(n, Role::ControlPlane), "pve1")
            .await
            .unwrap_err();
        assert!(matches!(err, ProxmoxError::Mismatched { .. }), "{err}");
        let err = px.claim(&spec(n, Role::ControlPlane).id).await.unwrap_err();
        assert!(matches!(err, ProxmoxError::Mismatched { .. }), "{err}");
        assert!(pve.writes_to(400 + n).is_empty());
    }
}

#[tokio::test]
async fn no_write_reaches_a_vm_that_stopped_being_kilns() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    let owned = px.create(&s, "pve1").await.unwrap().vm;
    // Proxmox hands the VMID to someone else (or a person re-tags it) after kiln's proof was made.
    for change in [
        json!({"tags": "kiln;kiln-cluster-other;kiln-role-controlplane"}),
        json!({"tags": null}),
        json!({"tags": "kiln;kiln-cluster-prod;kiln-role-controlplane", "description": "someone else's"}),
        json!({"description": "kiln-owner: prod/1/c0ffee", "name": "renamed"}),
    ] {
        pve.ctl(json!({"cmd": "set_config", "vmid": 401, "config": change}));
        pve.ctl(json!({"cmd": "clear_requests"}));
        let mut bigger = s.clone();
        bigger.resources.cores = 8;
        bigger.resources.disk_gib = 40;
        assert!(px.resize(&owned, &bigger).await.is_err());
        assert!(px.shutdown(&owned).await.is_err());
        assert!(px.reboot(&owned).await.is_err());
        assert!(px.start(&owned).await.is_err());
        assert!(px.destroy(owned.clone()).await.is_err());
        assert!(px.create(&s, "pve1").await.is_err());
        assert!(px.claim(&s.id).await.is_err());
        assert_eq!(pve.writes_to(401), vec![], "after {change}");
        // Restore for the next case.
        pve.ctl(json!({"cmd": "set_config", "vmid": 401, "config": {
            "tags": "kiln;kiln-cluster-prod;kiln-role-controlplane",
            "description": s.description(), "name": "prod-cp-1"}}));
    }
    // A concurrent change between kiln's read and its write fails on the digest instead of being
    // overwritten: kiln's write carries the digest it read.
    let fresh = px.claim(&s.id).await.unwrap();
    assert!(!fresh.digest().is_empty());
}

#[tokio::test]
async fn observing_many_vms_costs_one_request() {
    let pve = FakePve::start();
    let vms: Vec<_> = (0..5000u32)
        .map(|i| {
            let number = i + 1;
            let vmid = 100_000 + number;
            match i % 4 {
                0 => json!({"vmid": vmid, "name": format!("c{}-wk-{number}", i % 50),
                            "status": "running",
                            "tags": format!("kiln;kiln-cluster-c{};kiln-role-worker", i % 50)}),
                1 => json!({"vmid": vmid, "name": format!("web-{i}"), "status": "running"}),
                2 => json!({"vmid": vmid, "name": format!("c1-cp-{i}"), "status": "stopped"}),
                _ => json!({"vmid": vmid, "name": format!("x-{i}"), "status": "stopped",
                            "tags": "kiln;kiln-cluster-x;kiln-role-worker"}),
            }
        })
        .collect();
    pve.ctl(json!({"cmd": "add_vms", "vms": vms}));
    pve.ctl(json!({"cmd": "clear_requests"}));
    let t = Instant::now();
    let inv = pve.adapter().observe().await.unwrap();
    let took = t.elapsed();
    assert_eq!(
        pve.requests(),
        vec![("GET".to_owned(), "/api2/json/cluster/resources".to_owned())]
    );
    assert_eq!(inv.len(), 5001);
    let kiln = inv
        .iter()
        .filter(|v| matches!(v.ownership, Ownership::Kiln(_)))
        .count();
    let mismatched = inv.mismatched().count();
    assert_eq!((kiln, mismatched), (1250, 1250));
    eprintln!("observed 5001 VMs over HTTPS from fakepve in {took:?} with one request");
}

#[tokio::test]
async fn tls_pins_a_fingerprint_and_refuses_others() {
    use sha2::{Digest, Sha256};
    let pve = FakePve::start();
    let fp: [u8; 32] = Sha256::digest(&pve.pki.leaf_der).into();
    let pinned = Api::new(
        &pve.url(),
        support::TOKEN_ID,
        Secret::new(support::TOKEN_SECRET),
        &Trust::Fingerprint(fp),
    )
    .unwrap()
    .with_retry(fast_retry());
    let px = PveAdapter::new(pinned, Duration::from_secs(60), Duration::from_secs(5), 0);
    assert_eq!(px.observe().await.unwrap().len(), 1);
    let wrong = Api::new(
        &pve.url(),
        support::TOKEN_ID,
        Secret::new(support::TOKEN_SECRET),
        &Trust::Fingerprint([7; 32]),
    )
    .unwrap()
    .with_retry(RetryPolicy {
        attempts: 1,
        ..fast_retry()
    });
    let px = PveAdapter::new(wrong, Duration::from_secs(60), Duration::from_secs(5), 0);
    assert!(matches!(
        px.observe().await.unwrap_err(),
        ProxmoxError::Transport(_)
    ));
    // A CA that did not sign the certificate is refused too.
    let other = support::pki();
    let stranger = Api::new(
        &pve.url(),
        support::TOKEN_ID,
        Secret::new(support::TOKEN_SECRET),
        &Trust::CaPem(other.ca_pem.clone()),
    )
    .unwrap()
    .with_retry(RetryPolicy {
        attempts: 1,
        ..fast_retry()
    });
    let px = PveAdapter::new(stranger, Duration::from_secs(60), Duration::from_secs(5), 0);
    assert!(px.observe().await.is_err());
}

#[tokio::test]
async fn several_nodes_need_shared_storage_or_a_template_per_node() {
    let pve = FakePve::start_with(Options {
        nodes: vec!["pve2"],
        templates: vec!["9000@pve1", "9001@pve2"],
    });
    let px = pve.adapter();
    let mut on2 = spec(2, Role::ControlPlane);
    on2.id.pve_node = "pve2".into();
    // The pve1 template onto pve2 over local storage: refused at planning, nothing cloned.
    let err = px.check_template(&on2, "pve1").await.unwrap_err();
    assert!(err.to_string().contains("not shared"), "{err}");
    // A template per node: cloned on its own node, no target.
    let mut per_node = on2.clone();
    per_node.template = Vmid::new(9001).unwrap();
    px.create(&per_node, "pve2").await.unwrap();
    assert_eq!(pve.vm(402)["node"], "pve2");
    // Shared storage: cloned from pve1 with target=pve2.
    pve.ctl(json!({"cmd": "storage", "storage": "local-lvm", "options": {"shared": 1}}));
    let mut on2b = spec(3, Role::ControlPlane);
    on2b.id.pve_node = "pve2".into();
    px.create(&on2b, "pve1").await.unwrap();
    assert_eq!(pve.vm(403)["node"], "pve2");
    assert_eq!(pve.vm(403)["status"], "running");
}

#[tokio::test]
async fn a_clone_still_running_is_waited_for_never_repeated() {
    let pve = std::sync::Arc::new(FakePve::start());
    let s = spec(1, Role::ControlPlane);
    pve.ctl(
        json!({"cmd": "add_vm", "vmid": 401, "name": "prod-cp-1", "status": "stopped",
                   "config": {"description": s.description(),
                              "scsi0": "local-lvm:vm-401-disk-0,size=10G",
                              "ide2": "local-lvm:vm-401-cloudinit,media=cdrom"}}),
    );
    pve.ctl(json!({"cmd": "lock", "vmid": 401, "lock": "clone"}));
    let finisher = {
        let pve = pve.clone();
        tokio::spawn(async move {
            // The clone ends once kiln is seen waiting on it (it read the locked VM twice).
            until(|| count(&pve, "GET", "/qemu/401/config") >= 2).await;
            pve.ctl(json!({"cmd": "unlock", "vmid": 401}));
        })
    };
    let created = pve.adapter().create(&s, "pve1").await.unwrap();
    finisher.await.unwrap();
    assert!(created.adopted);
    assert_eq!(count(&pve, "POST", "/clone"), 0);
    assert_eq!(pve.vm(401)["status"], "running");
}

#[tokio::test]
async fn adapter_from_kiln_toml_reads_the_secret_file_and_demands_trust() {
    let pve = FakePve::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, format!("{}\n", support::TOKEN_SECRET)).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pve.pki.ca_pem).unwrap();
    let mut cfg = kiln::config::ProxmoxConfig {
        url: Some(pve.url()),
        token_id: Some(support::TOKEN_ID.into()),
        token_secret_file: Some(secret),
        ca_file: Some(ca),
        ..Default::default()
    };
    let px = PveAdapter::from_config(&cfg).unwrap();
    assert_eq!(px.observe().await.unwrap().len(), 1);
    cfg.ca_file = None;
    let err = PveAdapter::from_config(&cfg)
        .err()
        .expect("no trust configured");
    assert!(err.to_string().contains("ca_file"), "{err}");
    cfg.insecure = true;
    assert_eq!(
        PveAdapter::from_config(&cfg)
            .unwrap()
            .observe()
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn an_offline_node_leaves_its_vms_unknown_not_stopped() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = spec(1, Role::ControlPlane);
    px.create(&s, "pve1").await.unwrap();
    pve.ctl(json!({"cmd": "node_offline", "node": "pve1"}));
    let inv = px.observe().await.unwrap();
    let vm = inv.get(401).unwrap();
    assert_eq!(vm.status, PowerState::Unknown);
    assert!(
        matches!(vm.ownership, Ownership::Kiln(_)),
        "still kiln's, state unknown"
    );
    let err = px.claim(&s.id).await.unwrap_err();
    assert!(matches!(err, ProxmoxError::NoQuorum(_)), "{err}");
    assert!(pve.writes_to(401).iter().all(|(m, _)| m != "DELETE"));
}
