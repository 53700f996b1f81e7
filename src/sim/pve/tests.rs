//! The simulated PVE driven by kiln's real adapter, and PVE's refusals as the adapter meets them.

use std::sync::{Arc, Mutex};

use http::Method;

use super::*;
use crate::proxmox::ownership::VmIdentity;
use crate::proxmox::vmconfig::VmSpec;
use crate::proxmox::{Api, Ownership, ProxmoxError, ProxmoxPort, PveAdapter};
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

fn pve() -> (Arc<SimPve>, PveAdapter) {
    let sim = Arc::new(SimPve::new());
    sim.add_template(9000, "pve1");
    let px = adapter(sim.clone());
    (sim, px)
}

/// One call straight at the API, past the adapter's own checks, to see PVE's answer itself.
async fn raw(
    sim: &Arc<SimPve>,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
) -> Result<Value, ProxmoxError> {
    let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    Api::over(sim.clone())
        .call(method, path, &params, Some(701))
        .await
}

/// The task's exit status, as the adapter's task wait reads it.
async fn task_exit(sim: &Arc<SimPve>, upid: &Value) -> String {
    let upid = upid.as_str().unwrap();
    let node = crate::proxmox::task::upid_node(upid).unwrap();
    let st = raw(
        sim,
        Method::GET,
        &format!("/nodes/{node}/tasks/{upid}/status"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        st["status"], "stopped",
        "simulated tasks end before their UPID is handed out"
    );
    st["exitstatus"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn lifecycle_through_the_adapter_with_pves_pending_rules() {
    let (sim, px) = pve();
    let s = spec(1);
    let created = px.create(&s, "pve1").await.unwrap();
    assert!(created.vm.running() && !created.adopted);
    let inv = px.observe().await.unwrap();
    assert!(matches!(
        inv.get(701).unwrap().ownership,
        Ownership::Kiln(_)
    ));
    assert_eq!(sim.listings(), 1);
    let vm = sim.vm(701).unwrap();
    assert_eq!(vm.config["scsi0"], "local-lvm:vm-701-disk-0,size=20G");
    assert_eq!(vm.config["ide2"], "local-lvm:vm-701-cloudinit,media=cdrom");
    assert!(!vm.config.contains_key("template"));

    // More cores on a running VM wait in [PENDING] until Proxmox's reboot; the disk grows at once.
    let mut big = s.clone();
    big.resources.cores = 4;
    big.resources.disk_gib = 30;
    let r = px.resize(&created.vm, &big).await.unwrap();
    assert!(r.needs_reboot && r.disk_grown);
    let vm = sim.vm(701).unwrap();
    assert_eq!(vm.config["cores"], "2");
    assert_eq!(vm.pending["cores"], "4");
    assert_eq!(vm.config["scsi0"], "local-lvm:vm-701-disk-0,size=30G");
    let owned = px.reboot(&r.vm).await.unwrap();
    assert_eq!(sim.vm(701).unwrap().config["cores"], "4");
    assert!(px.pending(&owned).await.unwrap().is_empty());

    // A person re-tags it: the old proof no longer writes anything.
    sim.edit(
        701,
        &[(
            "tags",
            Some("kiln;kiln-cluster-other;kiln-role-controlplane"),
        )],
    );
    let writes = sim.writes();
    assert!(px.shutdown(&owned).await.is_err());
    assert!(px.destroy(owned.clone()).await.is_err());
    assert_eq!(sim.writes(), writes);
    sim.edit(
        701,
        &[(
            "tags",
            Some("kiln;kiln-cluster-demo;kiln-role-controlplane"),
        )],
    );
    let owned = px.claim(&s.id).await.unwrap();
    px.destroy(owned).await.unwrap();
    assert!(sim.vm(701).is_none());
}

#[tokio::test]
async fn foreign_refused_half_made_adopted() {
    let (sim, px) = pve();
    sim.add_vm(
        701,
        "pve1",
        [("name".to_owned(), "db".to_owned())].into(),
        true,
    );
    assert!(matches!(
        px.create(&spec(1), "pve1").await,
        Err(ProxmoxError::Foreign { vmid: 701, .. })
    ));
    let s = spec(2);
    sim.add_vm(
        702,
        "pve1",
        [
            ("name".to_owned(), s.id.name.clone()),
            ("description".to_owned(), s.description()),
            (
                "scsi0".to_owned(),
                "local-lvm:vm-702-disk-0,size=10G".to_owned(),
            ),
        ]
        .into(),
        false,
    );
    let writes = sim.writes();
    let created = px.create(&s, "pve1").await.unwrap();
    assert!(created.adopted);
    assert!(
        !sim.requests().iter().any(|r| r.path.ends_with("/clone")
            && r.params.get("newid").map(String::as_str) == Some("702")),
        "an adopted VM is not cloned again"
    );
    assert!(sim.writes() > writes);
}

#[tokio::test]
async fn power_hook_hears_every_change_once_with_the_config() {
    let (sim, px) = pve();
    type Heard = Vec<(u32, PowerChange, Option<String>)>;
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let log = heard.clone();
    sim.set_power_hook(Arc::new(move |e: &PowerEvent| {
        log.lock()
            .unwrap()
            .push((e.vmid, e.change, e.config.get("ipconfig0").cloned()))
    }));
    let s = spec(1);
    let vm = px.create(&s, "pve1").await.unwrap().vm;
    // Idempotent calls that change no power are not events; nor is a reboot with nothing pending.
    let vm = px.start(&vm).await.unwrap();
    let vm = px.reboot(&vm).await.unwrap();
    let mut big = s.clone();
    big.resources.cores = 3;
    let vm = px.resize(&vm, &big).await.unwrap().vm;
    let vm = px.reboot(&vm).await.unwrap();
    let vm = px.shutdown(&vm).await.unwrap();
    let vm = px.shutdown(&vm).await.unwrap();
    let vm = px.start(&vm).await.unwrap();
    sim.stop_by_hand(701);
    let vm = px.claim(vm.identity()).await.unwrap();
    px.destroy(vm).await.unwrap();
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

/// qemu-server's refusals, each where PVE puts it (before the task, or as the task's exit status),
/// and how the adapter classifies it.
#[tokio::test]
async fn pve_refuses_as_its_sources_do() {
    let (sim, px) = pve();
    let s = spec(1);
    let vm = px.create(&s, "pve1").await.unwrap().vm;
    let base = "/nodes/pve1/qemu/701";

    // destroy_vm: a running VM is refused before the task.
    let e = raw(&sim, Method::DELETE, base, &[("purge", "1")])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("VM 701 is running - destroy failed"),
        "{e}"
    );

    // resize_vm: a shrink fails the task.
    let upid = raw(
        &sim,
        Method::PUT,
        &format!("{base}/resize"),
        &[("disk", "scsi0"), ("size", "5G")],
    )
    .await
    .unwrap();
    assert_eq!(
        task_exit(&sim, &upid).await,
        "shrinking disks is not supported"
    );
    // …and the adapter refuses it before asking.
    let mut small = s.clone();
    small.resources.disk_gib = 5;
    assert!(matches!(
        px.resize(&vm, &small).await,
        Err(ProxmoxError::ShrinkRefused { .. })
    ));

    // update_vm_api: a stale digest is a conflict, a lock is a lock.
    let e = raw(
        &sim,
        Method::PUT,
        &format!("{base}/config"),
        &[("onboot", "0"), ("digest", "0000")],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProxmoxError::Conflict(_)), "{e:?}");
    sim.edit(701, &[("lock", Some("backup"))]);
    let mut other = s.clone();
    other.resources.memory_gib = 3;
    assert!(matches!(
        px.create(&other, "pve1").await,
        Err(ProxmoxError::Locked { vmid: 701, ref lock }) if lock == "backup"
    ));
    sim.edit(701, &[("lock", None)]);

    // A VM that is not there: "Configuration file … does not exist", which the adapter reads as absent.
    let e = raw(&sim, Method::GET, "/nodes/pve1/qemu/799/config", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, ProxmoxError::NotFound(_)), "{e:?}");
    // A template that is not there is named before any clone.
    let mut lost = spec(2);
    lost.template = Vmid::new(9100).unwrap();
    let e = px.create(&lost, "pve1").await.unwrap_err();
    assert!(
        e.to_string().contains("template 9100 not found on pve1"),
        "{e}"
    );
    assert!(sim.vm(702).is_none());

    // A clone to another node from local storage.
    sim.add_node("pve2");
    let mut away = spec(3);
    away.id.pve_node = "pve2".into();
    let e = raw(
        &sim,
        Method::POST,
        "/nodes/pve1/qemu/9000/clone",
        &[
            ("newid", "703"),
            ("target", "pve2"),
            ("full", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("can't clone to non-shared storage 'local-lvm'"),
        "{e}"
    );
    assert!(matches!(
        px.create(&away, "pve1").await,
        Err(ProxmoxError::Config(_))
    ));

    // Starting a running VM fails its task with "already running", which the adapter accepts.
    let upid = raw(&sim, Method::POST, &format!("{base}/status/start"), &[])
        .await
        .unwrap();
    assert_eq!(task_exit(&sim, &upid).await, "VM 701 already running");
    // A missing privilege names itself.
    sim.revoke("/vms/701", "VM.PowerMgmt");
    match px.shutdown(&vm).await {
        Err(ProxmoxError::Permission {
            path, privilege, ..
        }) => {
            assert_eq!(
                (path.as_str(), privilege.as_str()),
                ("/vms/701", "VM.PowerMgmt")
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The preflight runs against the simulated permissions: everything held passes; a privilege taken
/// away is named with its path.
#[tokio::test]
async fn the_preflight_reads_the_simulated_acl() {
    use crate::proxmox::preflight::{PreflightScope, WantedVm};
    let (sim, px) = pve();
    let scope = PreflightScope {
        vms: vec![WantedVm {
            vmid: 701,
            template: 9000,
            storage: "local-lvm".into(),
            bridge: "vmbr0".into(),
            vlan: None,
            pool: None,
            tags: ["kiln".to_owned()].into(),
        }],
    };
    px.preflight(&scope).await.unwrap();
    sim.revoke("/storage/local-lvm", "Datastore.AllocateSpace");
    match px.preflight(&scope).await {
        Err(ProxmoxError::MissingPrivileges(m)) => {
            assert_eq!(
                m,
                vec!["Datastore.AllocateSpace on /storage/local-lvm".to_owned()]
            );
        }
        other => panic!("{other:?}"),
    }
}

fn fast() -> crate::proxmox::RetryPolicy {
    crate::proxmox::RetryPolicy {
        attempts: 5,
        initial: std::time::Duration::from_millis(1),
        max: std::time::Duration::from_millis(4),
        jitter: 0.0,
    }
}

/// A clone whose reply is lost has still run: the adapter looks before repeating, finds its
/// half-made VM and adopts it — one clone, never two. A lock timeout on the config write and a
/// refused connection on a read are retried.
#[tokio::test]
async fn lost_replies_and_transient_refusals_go_through_the_adapters_own_recovery() {
    let sim = Arc::new(SimPve::new());
    sim.add_template(9000, "pve1");
    let px = adapter_with_retry(sim.clone(), fast());
    let fault = |method: Method, suffix: &str, kind: FaultKind| Fault {
        method,
        path_suffix: suffix.into(),
        kind,
        times: 1,
    };
    sim.inject(fault(Method::POST, "/clone", FaultKind::LoseReply));
    sim.inject(fault(
        Method::PUT,
        "/config",
        FaultKind::Refuse {
            status: 500,
            message: "can't lock file '/var/lock/qemu-server/lock-701.conf' - got timeout".into(),
        },
    ));
    sim.inject(fault(Method::GET, "/status/current", FaultKind::NotSent));
    let created = px.create(&spec(1), "pve1").await.unwrap();
    assert!(
        created.adopted,
        "the VM the unanswered clone made is adopted"
    );
    assert!(
        sim.pending_faults().is_empty(),
        "{:?}",
        sim.pending_faults()
    );
    let clones = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/clone"))
        .count();
    assert_eq!(clones, 1);
    let vm = sim.vm(701).unwrap();
    assert!(vm.running);
    assert_eq!(vm.config["tags"], spec(1).id.tags());
}
