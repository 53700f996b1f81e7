//! Disk growth through the real adapter against qemu-server's `resize_vm`, whose checks run inside
//! the worker: a change made between the adapter's read and its resize fails the task, not the PUT.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use http::Method;

use super::*;
use crate::proxmox::ownership::VmIdentity;
use crate::proxmox::vmconfig::VmSpec;
use crate::proxmox::{Api, ProxmoxError, ProxmoxPort, PveAdapter, RetryPolicy};
use crate::spec::document::Resources;
use crate::spec::{MacAddr, Role, Vmid};

const VMID: u32 = 731;

fn spec(disk_gib: u32) -> VmSpec {
    VmSpec {
        id: VmIdentity {
            cluster: "grow".into(),
            cluster_uid: "u".into(),
            number: 1,
            role: Role::Worker,
            name: "grow-wk-1".into(),
            vmid: Vmid::new(u64::from(VMID)).unwrap(),
            pve_node: "pve1".into(),
        },
        template: Vmid::new(9000).unwrap(),
        storage: "local-lvm".into(),
        bridge: "vmbr0".into(),
        vlan: None,
        mac: MacAddr([2, 0, 0, 0, 7, 31]),
        ip: "10.0.0.31".parse().unwrap(),
        prefix_length: 24,
        gateway: "10.0.0.1".parse().unwrap(),
        nameservers: vec!["10.0.0.1".parse().unwrap()],
        resources: Resources {
            cores: 2,
            memory_gib: 2,
            disk_gib,
        },
        guest_agent: false,
        pool: None,
    }
}

const FAST: RetryPolicy = RetryPolicy {
    attempts: 5,
    initial: std::time::Duration::from_millis(1),
    max: std::time::Duration::from_millis(4),
    jitter: 0.0,
};

/// The person at the web UI, who changes the VM (a new `startup` order each time, so the digest
/// moves) right before each of the next `edits` resize requests reaches PVE: after kiln read the
/// config and its digest, before qemu-server's worker compares them.
struct EditsBeforeResize {
    sim: Arc<SimPve>,
    edits: AtomicU32,
    made: AtomicU32,
}

#[async_trait]
impl Transport for EditsBeforeResize {
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Reply, TransportError> {
        let resize = method == Method::PUT && path.ends_with("/resize");
        if resize
            && self
                .edits
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            let n = self.made.fetch_add(1, Ordering::SeqCst) + 1;
            self.sim
                .edit(VMID, &[("startup", Some(format!("order={n}").as_str()))]);
        }
        self.sim.exchange(method, path, params).await
    }

    fn describe(&self) -> String {
        "simulated PVE with a person editing before each resize".into()
    }
}

/// A VM made by the adapter with a 20 GiB disk, and an adapter whose resizes are raced `edits` times.
async fn world(edits: u32) -> (Arc<SimPve>, Arc<EditsBeforeResize>, PveAdapter) {
    let sim = Arc::new(SimPve::new());
    sim.add_template(9000, "pve1");
    adapter_with_retry(sim.clone(), FAST)
        .create(&spec(20), "pve1")
        .await
        .unwrap();
    let racer = Arc::new(EditsBeforeResize {
        sim: sim.clone(),
        edits: AtomicU32::new(edits),
        made: AtomicU32::new(0),
    });
    let px = PveAdapter::new(
        Api::over(racer.clone()).with_retry(FAST),
        std::time::Duration::from_secs(600),
        std::time::Duration::from_secs(60),
        0,
    );
    (sim, racer, px)
}

fn resizes(sim: &SimPve) -> Vec<SeenRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/resize"))
        .collect()
}

/// Every resize task's exit status, oldest first.
fn resize_exits(sim: &SimPve) -> Vec<String> {
    let st = sim.lock();
    let mut tasks: Vec<&SimTask> = st.tasks.values().filter(|t| t.kind == "resize").collect();
    tasks.sort_by_key(|t| t.pid);
    tasks.iter().map(|t| t.exitstatus.clone()).collect()
}

fn disk(sim: &SimPve) -> String {
    sim.vm(VMID).unwrap().config["scsi0"].clone()
}

#[tokio::test]
async fn a_resize_whose_task_fails_on_a_changed_digest_is_read_again_and_grown_once() {
    let (sim, racer, px) = world(1).await;
    let before = resizes(&sim).len();
    let vm = px.claim(&spec(20).id).await.unwrap();
    let r = px.resize(&vm, &spec(30)).await.unwrap();
    assert!(r.disk_grown);
    assert_eq!(
        racer.made.load(Ordering::SeqCst),
        1,
        "the person's edit happened"
    );
    let sent = &resizes(&sim)[before..];
    assert_eq!(sent.len(), 2, "one raced try, one that ran: {sent:?}");
    assert_ne!(
        sent[0].params["digest"], sent[1].params["digest"],
        "the second try carries the digest read after the edit"
    );
    // qemu-server answered the first PUT with a UPID; its worker refused the stale digest.
    let exits = resize_exits(&sim);
    assert_eq!(
        exits[exits.len() - 2..],
        [
            "checksum mismatch (file change by other user?)".to_owned(),
            "OK".to_owned()
        ]
    );
    assert!(disk(&sim).contains("size=30G"), "{}", disk(&sim));
    assert_eq!(
        sim.vm(VMID).unwrap().config["startup"],
        "order=1",
        "the person's edit is kept"
    );

    // Converged: the next resize reads 30 GiB and sends nothing.
    let again = px.resize(&r.vm, &spec(30)).await.unwrap();
    assert!(!again.disk_grown);
    assert_eq!(resizes(&sim).len() - before, 2);
}

#[tokio::test]
async fn a_resize_raced_on_every_try_gives_up_as_a_conflict_within_the_policy() {
    let (sim, racer, px) = world(1000).await;
    let before = resizes(&sim).len();
    let vm = px.claim(&spec(20).id).await.unwrap();
    let err = px.resize(&vm, &spec(30)).await.unwrap_err();
    assert!(matches!(err, ProxmoxError::Conflict(_)), "{err:?}");
    assert_eq!(resizes(&sim).len() - before, FAST.attempts as usize);
    assert_eq!(racer.made.load(Ordering::SeqCst), FAST.attempts);
    assert!(disk(&sim).contains("size=20G"), "{}", disk(&sim));
}

/// The config lock `resize_vm` takes in its worker (`lock_config`, 10 s) held by another task: the
/// task fails with the lock's timeout, and the adapter reads again and tries again.
#[tokio::test]
async fn a_resize_task_that_times_out_on_the_config_lock_is_tried_again() {
    let (sim, _, px) = world(0).await;
    let before = resizes(&sim).len();
    sim.inject(Fault {
        method: Method::PUT,
        path_suffix: "/resize".into(),
        kind: FaultKind::FailTask(format!(
            "can't lock file '/var/lock/qemu-server/lock-{VMID}.conf' - got timeout"
        )),
        times: 2,
    });
    let vm = px.claim(&spec(20).id).await.unwrap();
    let r = px.resize(&vm, &spec(30)).await.unwrap();
    assert!(r.disk_grown);
    assert!(sim.pending_faults().is_empty());
    assert_eq!(resizes(&sim).len() - before, 3);
    assert!(disk(&sim).contains("size=30G"), "{}", disk(&sim));
}

/// A resize that ran but whose answer was lost is seen done on the next read: never sent twice,
/// and reported as grown.
#[tokio::test]
async fn a_resize_whose_answer_was_lost_is_not_sent_again() {
    let (sim, _, px) = world(0).await;
    let before = resizes(&sim).len();
    sim.inject(Fault {
        method: Method::PUT,
        path_suffix: "/resize".into(),
        kind: FaultKind::LoseReply,
        times: 1,
    });
    let vm = px.claim(&spec(20).id).await.unwrap();
    let r = px.resize(&vm, &spec(30)).await.unwrap();
    assert!(r.disk_grown, "the lost try grew the disk");
    assert_eq!(resizes(&sim).len() - before, 1);
    assert!(disk(&sim).contains("size=30G"), "{}", disk(&sim));
}

/// Other refusals inside the task are PVE's verdict, typed as over HTTP, and not repeated: a `lock`
/// is `Locked`, a missing storage privilege `Permission` (a refusal the reconciler blocks on).
#[tokio::test]
async fn other_refusals_inside_the_resize_task_are_typed_and_not_repeated() {
    let (sim, _, px) = world(0).await;
    let before = resizes(&sim).len();
    let vm = px.claim(&spec(20).id).await.unwrap();

    sim.inject(Fault {
        method: Method::PUT,
        path_suffix: "/resize".into(),
        kind: FaultKind::FailTask("VM is locked (backup)".into()),
        times: 1,
    });
    let err = px.resize(&vm, &spec(30)).await.unwrap_err();
    assert!(
        matches!(err, ProxmoxError::Locked { vmid: VMID, ref lock } if lock == "backup"),
        "{err:?}"
    );
    assert_eq!(resizes(&sim).len() - before, 1);

    sim.revoke("/storage/local-lvm", "Datastore.AllocateSpace");
    let err = px.resize(&vm, &spec(30)).await.unwrap_err();
    match &err {
        ProxmoxError::Permission {
            path, privilege, ..
        } => {
            assert_eq!(path, "/storage/local-lvm");
            assert_eq!(privilege, "Datastore.AllocateSpace");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(resizes(&sim).len() - before, 2);
    assert!(disk(&sim).contains("size=20G"), "{}", disk(&sim));
}

/// `resize_vm` loads the config inside its worker: even a VM that is not there gets a UPID, and the
/// task fails with `load_config`'s message, which the adapter's task wait reads as `NotFound`.
#[tokio::test]
async fn a_resize_of_a_missing_vm_is_answered_with_a_task_that_fails() {
    let sim = Arc::new(SimPve::new());
    sim.add_node("pve1");
    let api = Api::over(sim.clone());
    let params = [("disk", "scsi0".to_owned()), ("size", "30G".to_owned())];
    let upid = api
        .call(
            Method::PUT,
            "/nodes/pve1/qemu/799/resize",
            &params,
            Some(799),
        )
        .await
        .expect("the PUT itself is accepted");
    let upid = crate::proxmox::task::upid_of(&upid).unwrap();
    let err = crate::proxmox::task::wait(&api, &upid, std::time::Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProxmoxError::NotFound(m)
            if m == "Configuration file 'nodes/pve1/qemu-server/799.conf' does not exist"),
        "{err:?}"
    );
}
