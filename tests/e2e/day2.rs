//! Issue 27, last acceptance point (DESIGN.md §3 resize and ownership, §4 scale-down, §7 drift): the
//! day-2 behaviours that already hold, each proven from fakepve's request log — the order in which
//! Proxmox saw kiln's calls — rather than from kiln's report. Each world is one control plane and the
//! workers the rule needs, converged by a first `kiln run --once`, then changed in Git or by hand.

use kiln::talos::grpc::{ClientOptions, TalosClient};
use serde_json::{Value, json};

use crate::checks::{assert_converged, assert_exact_vms, status_of};
use crate::credentials::{stored, talos_identity};
use crate::fixture::{CP_RESOURCES, ClusterFixture, Role, WK_RESOURCES, WantedVm};
use crate::support::{World, plain};

/// Whether a request path acts on this VMID (`…/qemu/<id>` or below it).
fn names_vm(path: &str, vmid: u32) -> bool {
    let needle = format!("/qemu/{vmid}");
    path.ends_with(&needle) || path.contains(&format!("{needle}/"))
}

/// Position in `log` of every request that writes to `vmid`, with its method and path.
fn writes_of(log: &[(String, String)], vmid: u32) -> Vec<(usize, &str, &str)> {
    log.iter()
        .enumerate()
        .filter(|(_, (m, p))| m != "GET" && names_vm(p, vmid))
        .map(|(i, (m, p))| (i, m.as_str(), p.as_str()))
        .collect()
}

/// The log, numbered, for a failed assertion to show.
fn show(log: &[(String, String)]) -> String {
    log.iter()
        .enumerate()
        .map(|(i, (m, p))| format!("{i:4} {m} {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file with one section's `resources:` line replaced (`controlPlane` or `workers`).
/// Per leaving VM, from the log: (its first write, its DELETE, its node number), in the order the
/// removals began. A VM never deleted fails the test.
fn removal_spans<'a>(
    log: &[(String, String)],
    leaving: impl Iterator<Item = &'a WantedVm>,
) -> Vec<(usize, usize, u32)> {
    let mut spans: Vec<(usize, usize, u32)> = leaving
        .map(|w| {
            let writes = writes_of(log, w.vmid);
            let delete = writes
                .iter()
                .find(|(_, m, p)| *m == "DELETE" && p.ends_with(&format!("/qemu/{}", w.vmid)))
                .unwrap_or_else(|| panic!("{}: never deleted:\n{}", w.name, show(log)))
                .0;
            (writes[0].0, delete, w.number)
        })
        .collect();
    spans.sort();
    spans
}

fn with_resources(yaml: &str, role: Role, (cores, mem, disk): (u32, u64, u64)) -> String {
    let (section, (oc, om, od)) = match role {
        Role::ControlPlane => ("controlPlane", CP_RESOURCES),
        Role::Worker => ("workers", WK_RESOURCES),
    };
    let old =
        format!("  {section}:\n    resources: {{cores: {oc}, memoryGiB: {om}, diskGiB: {od}}}\n");
    let new = format!(
        "  {section}:\n    resources: {{cores: {cores}, memoryGiB: {mem}, diskGiB: {disk}}}\n"
    );
    assert!(
        yaml.contains(&old),
        "no {section} resources line in:\n{yaml}"
    );
    yaml.replace(&old, &new)
}

/// A world with `c` converged by one run.
async fn converged(c: &ClusterFixture) -> World {
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning {}:\n{run}", c.name);
    assert_exact_vms(&world, &[c], &[]);
    assert_converged(&world, c).await;
    world
}

/// `kiln status NAME --format json`, the cluster's record.
fn status_record(world: &World, name: &str) -> Value {
    let (out, json) = world.status_json(Some(name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    status_of(&json, name)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        .clone()
}

/// What the simulated Kubernetes API saw, in its order (`kiln sim talos`'s log, one line per cordon,
/// uncordon and Node deletion): how kiln's drains are seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KubeEvent {
    Cordon(String),
    Uncordon(String),
    Deleted(String),
}

fn kube_events(world: &World) -> Vec<KubeEvent> {
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_owned())
    };
    world
        .sim
        .log_text()
        .lines()
        .map(plain)
        .filter_map(|l| {
            let l = l.as_str();
            let node = field(l, "node=")?;
            if l.contains("node cordon set") {
                Some(match field(l, "unschedulable=").as_deref() {
                    Some("true") => KubeEvent::Cordon(node),
                    _ => KubeEvent::Uncordon(node),
                })
            } else if l.contains("node deleted") {
                Some(KubeEvent::Deleted(node))
            } else {
                None
            }
        })
        .collect()
}

/// Position of the first event equal to `e`.
fn at(events: &[KubeEvent], e: &KubeEvent) -> usize {
    events
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("no {e:?} in the simulated API's log: {events:?}"))
}

#[tokio::test]
async fn a_worker_resize_reboots_one_worker_at_a_time_through_proxmox_and_leaves_control_planes_alone()
 {
    let c = ClusterFixture::new("d2resize", 1, 2);
    let world = converged(&c).await;
    let (_, _, disk) = WK_RESOURCES;
    world.push_file(
        &c.path(),
        &with_resources(&c.yaml(), Role::Worker, (4, 6, disk)),
        "workers: 4 cores, 6 GiB",
    );

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "the resize run:\n{run}");
    let log = world.requests_since(mark);
    let wanted = c.wanted();

    // Control planes: not one write.
    for cp in wanted.iter().filter(|w| w.role == Role::ControlPlane) {
        assert_eq!(
            writes_of(&log, cp.vmid),
            vec![],
            "{} was written to by a worker resize:\n{}",
            cp.name,
            show(&log)
        );
    }

    // Workers: each got its new size and a Proxmox reboot (what applies pending cores/memory), and
    // the next worker's first write comes only after the previous one's reboot and a read that saw
    // it back (the adapter waits for running with nothing pending): never two workers down at once.
    let workers: Vec<_> = wanted.iter().filter(|w| w.role == Role::Worker).collect();
    let mut windows = Vec::new();
    for w in &workers {
        let writes = writes_of(&log, w.vmid);
        let reboots: Vec<usize> = writes
            .iter()
            .filter(|(_, m, p)| *m == "POST" && p.ends_with("/status/reboot"))
            .map(|(i, _, _)| *i)
            .collect();
        assert_eq!(
            reboots.len(),
            1,
            "{}: one Proxmox reboot:\n{}",
            w.name,
            show(&log)
        );
        assert!(
            writes.iter().all(|(_, m, p)| {
                (*m == "PUT" && p.ends_with("/config"))
                    || (*m == "POST" && p.ends_with("/status/reboot"))
            }),
            "{}: a resize writes the config and reboots, nothing else: {writes:?}",
            w.name
        );
        let first = writes[0].0;
        assert!(
            writes[0].1 == "PUT" && first < reboots[0],
            "{}: the size is written before the reboot:\n{}",
            w.name,
            show(&log)
        );
        let back = log[reboots[0] + 1..]
            .iter()
            .position(|(m, p)| m == "GET" && names_vm(p, w.vmid))
            .map(|i| i + reboots[0] + 1)
            .unwrap_or_else(|| {
                panic!(
                    "{}: kiln never looked at the VM after its reboot:\n{}",
                    w.name,
                    show(&log)
                )
            });
        windows.push((first, back, w.name.clone()));
    }
    windows.sort();
    for pair in windows.windows(2) {
        let ((_, end, a), (start, _, b)) = (&pair[0], &pair[1]);
        assert!(
            end < start,
            "{b} was touched (request {start}) before {a} was seen back after its reboot \
             (request {end}): two workers down at once\n{}",
            show(&log)
        );
    }

    // Kubernetes saw the same: each worker cordoned (drained) and uncordoned before the next one
    // was cordoned; no control plane cordoned.
    let events = kube_events(&world);
    let mut drains: Vec<(usize, usize, &str)> = workers
        .iter()
        .map(|w| {
            let on = at(&events, &KubeEvent::Cordon(w.name.clone()));
            let off = at(&events, &KubeEvent::Uncordon(w.name.clone()));
            assert!(
                on < off,
                "{}: uncordoned before cordoned: {events:?}",
                w.name
            );
            (on, off, w.name.as_str())
        })
        .collect();
    drains.sort();
    for pair in drains.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "{} was cordoned while {} still was: {events:?}",
            pair[1].2,
            pair[0].2
        );
    }
    for cp in wanted.iter().filter(|w| w.role == Role::ControlPlane) {
        assert!(
            !events.contains(&KubeEvent::Cordon(cp.name.clone())),
            "{} was cordoned by a worker resize: {events:?}",
            cp.name
        );
    }

    let vms = world.vms();
    for w in &workers {
        let cfg = &vms[&w.vmid]["config"];
        assert_eq!(
            cfg["cores"].to_string().trim_matches('"'),
            "4",
            "{}",
            w.name
        );
        assert_eq!(
            cfg["memory"].to_string().trim_matches('"'),
            "6144",
            "{}",
            w.name
        );
        assert_eq!(
            vms[&w.vmid]["pending"],
            json!({}),
            "{}: still pending",
            w.name
        );
        assert_eq!(vms[&w.vmid]["status"], "running", "{}", w.name);
    }
}

#[tokio::test]
async fn disks_grow_with_a_resize_task_on_each_vm_and_a_shrink_is_refused_without_a_call() {
    let c = ClusterFixture::new("d2disk", 1, 1);
    let world = converged(&c).await;
    let (cc, cm, cd) = CP_RESOURCES;
    let (wc, wm, wd) = WK_RESOURCES;
    let grown = with_resources(
        &with_resources(&c.yaml(), Role::ControlPlane, (cc, cm, cd + 2)),
        Role::Worker,
        (wc, wm, wd + 4),
    );
    world.push_file(&c.path(), &grown, "bigger disks");

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "the disk growth run:\n{run}");
    let log = world.requests_since(mark);
    for (w, want) in c.wanted().iter().map(|w| {
        let want = if w.role == Role::ControlPlane {
            cd + 2
        } else {
            wd + 4
        };
        (w, want)
    }) {
        let resizes: Vec<_> = writes_of(&log, w.vmid)
            .into_iter()
            .filter(|(_, m, p)| *m == "PUT" && p.ends_with("/resize"))
            .collect();
        assert_eq!(
            resizes.len(),
            1,
            "{}: one resize task:\n{}",
            w.name,
            show(&log)
        );
        let disk = world.pve.vm(w.vmid)["config"]["scsi0"].clone();
        assert!(
            disk.as_str()
                .is_some_and(|d| d.contains(&format!("size={want}G"))),
            "{}: the disk is {disk}, not {want} GiB",
            w.name
        );
    }

    // Now a shrink of the workers' disk below what they have: refused before Proxmox is asked.
    let shrunk = with_resources(
        &with_resources(&c.yaml(), Role::ControlPlane, (cc, cm, cd + 2)),
        Role::Worker,
        (wc, wm, wd),
    );
    world.push_file(&c.path(), &shrunk, "smaller worker disks");
    let mark = world.request_mark();
    let run = world.run_once_for(std::time::Duration::from_secs(30));
    assert!(!run.success(), "a refused shrink converged:\n{run}");
    let log = world.requests_since(mark);
    for w in c.wanted() {
        assert_eq!(
            writes_of(&log, w.vmid),
            vec![],
            "{}: written to while its cluster asks for a shrink:\n{}",
            w.name,
            show(&log)
        );
    }
    let worker = &c.wanted()[1];
    let disk = world.pve.vm(worker.vmid)["config"]["scsi0"].clone();
    assert!(
        disk.as_str()
            .is_some_and(|d| d.contains(&format!("size={}G", wd + 4))),
        "{}: the disk is {disk}",
        worker.name
    );
    let record = status_record(&world, &c.name);
    assert_eq!(record["phase"], "Blocked", "{record}");
    // The planner names the node and `diskGiB`; the adapter's own guard names the VMID and drive.
    let text = record.to_string();
    assert!(
        (text.contains(&worker.name) || text.contains(&worker.vmid.to_string()))
            && text.contains("disk")
            && text.contains("grow"),
        "the status does not name the refused disk of {}: {record}",
        worker.name
    );
}

#[tokio::test]
async fn workers_scale_down_highest_number_first_one_at_a_time() {
    let c = ClusterFixture::new("d2scale", 1, 3);
    let world = converged(&c).await;
    let mut smaller = c.clone();
    smaller.workers = 1;
    world.push_file(&smaller.path(), &smaller.yaml(), "workers 3 -> 1");

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "the scale-down run:\n{run}");
    let log = world.requests_since(mark);
    assert_exact_vms(&world, &[&smaller], &[]);
    // The stored kubeconfig lists exactly the kept nodes Ready: the leaving workers' Nodes are gone.
    assert_converged(&world, &smaller).await;

    let all = c.wanted();
    let (cp, kept, gone) = (&all[0], &all[1], &all[2..]);
    for w in [cp, kept] {
        assert_eq!(
            writes_of(&log, w.vmid),
            vec![],
            "{} was written to by a scale-down:\n{}",
            w.name,
            show(&log)
        );
    }
    // Per leaving worker: its first write and its DELETE. Highest number first, and the next one's
    // first write only after the previous one is deleted.
    let spans = removal_spans(&log, gone.iter());
    let order: Vec<u32> = spans.iter().map(|s| s.2).collect();
    let mut highest_first: Vec<u32> = gone.iter().map(|w| w.number).collect();
    highest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, highest_first, "destroy order:\n{}", show(&log));
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "worker {} was touched before worker {} was deleted:\n{}",
            pair[1].2,
            pair[0].2,
            show(&log)
        );
    }
    // Kubernetes: each leaving worker cordoned (its drain) before its Node was deleted, and the next
    // one cordoned only after that; the kept nodes never cordoned.
    let events = kube_events(&world);
    let mut last_deleted = None;
    for w in gone.iter().rev() {
        let cordon = at(&events, &KubeEvent::Cordon(w.name.clone()));
        let deleted = at(&events, &KubeEvent::Deleted(w.name.clone()));
        assert!(
            cordon < deleted,
            "{}: deleted before its drain: {events:?}",
            w.name
        );
        if let Some(prev) = last_deleted {
            assert!(
                prev < cordon,
                "{} was cordoned before the previous worker's Node was deleted: {events:?}",
                w.name
            );
        }
        last_deleted = Some(deleted);
    }
    for w in [cp, kept] {
        assert!(
            !events.contains(&KubeEvent::Cordon(w.name.clone())),
            "{} was cordoned by a scale-down: {events:?}",
            w.name
        );
    }
}

#[tokio::test]
async fn a_vm_stopped_by_hand_is_started_again_on_the_next_run() {
    let c = ClusterFixture::new("d2stopped", 1, 1);
    let world = converged(&c).await;
    let worker = c.wanted()[1].clone();
    world
        .pve
        .ctl(json!({"cmd": "set_status", "vmid": worker.vmid, "status": "stopped"}));

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "the run after a hand stop:\n{run}");
    let log = world.requests_since(mark);
    let writes = writes_of(&log, worker.vmid);
    assert!(
        writes.len() == 1
            && writes[0].1 == "POST"
            && writes[0]
                .2
                .ends_with(&format!("/qemu/{}/status/start", worker.vmid)),
        "{}: one start and nothing else:\n{}",
        worker.name,
        show(&log)
    );
    assert_eq!(
        writes_of(&log, c.wanted()[0].vmid),
        vec![],
        "the control plane was written to"
    );
    assert_eq!(world.pve.vm(worker.vmid)["status"], "running");
}

#[tokio::test]
async fn a_vm_whose_tags_were_replaced_by_hand_is_left_alone_and_reported() {
    let c = ClusterFixture::new("d2tags", 1, 1);
    let world = converged(&c).await;
    let worker = c.wanted()[1].clone();
    // A person takes the VM over: new tags, and stopped. Were it still kiln's, the next run would start
    // it (the test above); it is not, so nothing may touch it.
    world
        .pve
        .ctl(json!({"cmd": "set_config", "vmid": worker.vmid,
                         "config": {"tags": "hand-made;mine"}}));
    world
        .pve
        .ctl(json!({"cmd": "set_status", "vmid": worker.vmid, "status": "stopped"}));

    let mark = world.request_mark();
    let run = world.run_once_for(std::time::Duration::from_secs(30));
    let log = world.requests_since(mark);
    assert_eq!(
        writes_of(&log, worker.vmid),
        vec![],
        "{}: written to after its tags were replaced:\n{run}\n{}",
        worker.name,
        show(&log)
    );
    let vm = world.pve.vm(worker.vmid);
    assert_eq!(vm["status"], "stopped", "{}", worker.name);
    assert_eq!(vm["config"]["tags"], "hand-made;mine", "{}", worker.name);

    let record = status_record(&world, &c.name);
    let text = record.to_string();
    assert!(
        text.contains(&worker.vmid.to_string()),
        "kiln status does not report VM {} ({}): {record}",
        worker.vmid,
        worker.name
    );
    assert_ne!(record["phase"], "Ready", "{record}");
}

#[tokio::test]
async fn control_planes_scale_down_highest_number_first_one_at_a_time_with_the_worker_pinned() {
    let c = ClusterFixture::new("d2cps", 3, 1);
    let world = converged(&c).await;
    let all = c.wanted();
    let (kept_cp, leaving, worker) = (&all[0], &all[1..3], &all[3]);
    // One control plane left; the worker keeps number 4 by pinning it (DESIGN.md §2: numbers are
    // identities, so a smaller control-plane count must not renumber it).
    let node = |n: u8| format!("      - {{ip: {}}}\n", c.ip(n));
    let yaml = c
        .yaml()
        .replace(&format!("{}{}", node(2), node(3)), "")
        .replace(
            &node(4),
            &format!("      - {{ip: {}, number: 4}}\n", c.ip(4)),
        );
    assert!(
        !yaml.contains(&node(2)) && !yaml.contains(&node(3)) && yaml.contains("number: 4"),
        "the fixture edit did not take:\n{yaml}"
    );
    world.push_file(
        &c.path(),
        &yaml,
        "control planes 3 -> 1, worker pinned at 4",
    );
    world.validate_work_tree();

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "the control-plane scale-down run:\n{run}");
    let log = world.requests_since(mark);
    let have: Vec<u32> = world.vms().keys().copied().collect();
    assert_eq!(
        have,
        vec![kept_cp.vmid, worker.vmid, 9000],
        "the VMs left in Proxmox"
    );
    for w in [kept_cp, worker] {
        assert_eq!(
            writes_of(&log, w.vmid),
            vec![],
            "{} was written to by a control-plane scale-down:\n{}",
            w.name,
            show(&log)
        );
    }
    let spans = removal_spans(&log, leaving.iter());
    assert_eq!(
        spans.iter().map(|s| s.2).collect::<Vec<_>>(),
        vec![3, 2],
        "destroy order:\n{}",
        show(&log)
    );
    assert!(
        spans[0].1 < spans[1].0,
        "control plane 2 was touched before control plane 3 was deleted:\n{}",
        show(&log)
    );

    // Their Node objects went too, highest first (a leaving control plane is not drained: §4).
    let events = kube_events(&world);
    assert!(
        at(&events, &KubeEvent::Deleted(leaving[1].name.clone()))
            < at(&events, &KubeEvent::Deleted(leaving[0].name.clone())),
        "Node deletions not highest first: {events:?}"
    );

    // The leavers left etcd: the kept control plane, asked with the stored talosconfig as a person
    // would, lists itself alone.
    let talosconfig = stored(&world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, &c);
    let client = TalosClient::connect_mtls(
        (kept_cp.ip, 50000).into(),
        &identity,
        ClientOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: the stored talosconfig is refused: {e}", kept_cp.name));
    let members: Vec<String> = client
        .etcd_member_list()
        .await
        .unwrap_or_else(|e| panic!("{}: etcd member list: {e}", kept_cp.name))
        .into_iter()
        .map(|m| m.hostname)
        .collect();
    assert_eq!(members, vec![kept_cp.name.clone()], "etcd members");
}

/// DESIGN §7 (crash safety): kiln killed after a resized worker came back from its Proxmox reboot,
/// before its uncordon. The VM has its new size, so no resize is planned again; the cordon is
/// kiln's (its mark on the Node), so the restart lifts it. Without that, the worker would stay
/// unschedulable for good.
#[tokio::test]
async fn a_cordon_left_by_a_crash_after_a_resize_reboot_is_lifted_on_restart() {
    let c = ClusterFixture::new("d2cordon", 1, 1);
    let world = converged(&c).await;
    let (_, _, disk) = WK_RESOURCES;
    world.push_file(
        &c.path(),
        &with_resources(&c.yaml(), Role::Worker, (4, 6, disk)),
        "workers: 4 cores, 6 GiB",
    );
    let worker = c
        .wanted()
        .into_iter()
        .find(|w| w.role == Role::Worker)
        .unwrap()
        .name;

    let mut daemon = world.spawn_daemon(Some("vm-rebooted"));
    daemon.wait_paused("vm-rebooted", std::time::Duration::from_secs(120));
    daemon.kill9();
    let events = kube_events(&world);
    assert_eq!(
        events.last(),
        Some(&KubeEvent::Cordon(worker.clone())),
        "the killed daemon left the worker cordoned: {events:?}"
    );

    let run = world.run_once();
    assert!(run.success(), "the restart:\n{run}");
    let events = kube_events(&world);
    assert_eq!(
        events.last(),
        Some(&KubeEvent::Uncordon(worker.clone())),
        "the worker is still cordoned after the restart: {events:?}"
    );
    // Lifted, not resized again: one Proxmox reboot of the worker in all.
    let reboots = world
        .requests_since(0)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/status/reboot"))
        .count();
    assert_eq!(reboots, 1);
}
