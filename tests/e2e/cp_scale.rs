//! Issue 27, control planes 1 → 3 → 5 and a leave that fails (DESIGN.md §2 pinned numbers, §4 the
//! leave rule): through the binary on fakepve + `kiln sim talos` + OpenBao + Git.
//!
//! Joins are read from outside. The simulator keeps a joining control plane an etcd learner for
//! `--learner-delay` and holds one learner at a time, as Talos and etcd do (`sim::talos::join`), and
//! logs each add and promotion with its wall-clock time; the launcher stamps each fakepve request
//! with its arrival time on the same clock. So "cp-3's clone came only after cp-2 was promoted" is
//! a comparison of two timestamps of two processes on one machine. The simulator makes a
//! control plane's Node Ready as its learner is added (`sim::talos::kube::sync`), so the promotion
//! is the later of "Ready" and "a voting member".

use std::time::SystemTime;

use kiln::talos::grpc::{ClientOptions, TalosClient};
use serde_json::{Value, json};

use crate::checks::status_of;
use crate::credentials::{stored, talos_identity};
use crate::fixture::{ClusterFixture, Role, WantedVm};
use crate::support::{World, plain};

/// How long the simulator keeps a joining control plane a learner.
const LEARNER_DELAY: &str = "1s";

/// The fixture's file with control planes 1..=`cps` and its workers pinned to the numbers they have
/// with all of the fixture's control planes (numbers are identities: DESIGN.md §2).
fn with_control_planes(c: &ClusterFixture, cps: u32) -> String {
    let node = |n: u32| format!("      - {{ip: {}}}\n", c.ip(n as u8));
    let all: String = (1..=c.control_planes).map(node).collect();
    let kept: String = (1..=cps).map(node).collect();
    let mut yaml = c.yaml();
    assert!(yaml.contains(&all), "no control-plane list in:\n{yaml}");
    yaml = yaml.replacen(&all, &kept, 1);
    for w in c.wanted().iter().filter(|w| w.role == Role::Worker) {
        yaml = yaml.replace(
            &node(w.number),
            &format!("      - {{ip: {}, number: {}}}\n", w.ip, w.number),
        );
    }
    yaml
}

/// Every request fakepve saw since `mark`: (method, path, body, arrival time).
fn requests_since(world: &World, mark: usize) -> Vec<(String, String, String, SystemTime)> {
    let all = world.pve.ctl(json!({"cmd": "requests"}));
    let times = world.pve.ctl(json!({"cmd": "request_times"}));
    let (all, times) = (all.as_array().unwrap(), times.as_array().unwrap());
    assert_eq!(all.len(), times.len(), "one arrival time per request");
    all.iter()
        .zip(times)
        .skip(mark)
        .map(|(r, t)| {
            let secs = t.as_f64().unwrap();
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap_or_default().to_owned(),
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs),
            )
        })
        .collect()
}

/// When fakepve received the full clone that made `vm`.
fn clone_time(log: &[(String, String, String, SystemTime)], vm: &WantedVm) -> SystemTime {
    let newid = format!("newid={}", vm.vmid);
    log.iter()
        .find(|(m, p, b, _)| {
            m == "POST" && p.ends_with("/clone") && b.split('&').any(|kv| kv == newid)
        })
        .unwrap_or_else(|| {
            panic!(
                "no clone of {} in fakepve's log: {:?}",
                vm.name,
                log.iter()
                    .map(|(m, p, ..)| format!("{m} {p}"))
                    .collect::<Vec<_>>()
            )
        })
        .3
}

/// When the simulator logged `event` for the member named `hostname` (its first such line).
fn sim_event(world: &World, event: &str, hostname: &str) -> Option<SystemTime> {
    let needle = format!("hostname={hostname} ");
    world.sim.log_text().lines().map(plain).find_map(|l| {
        let l = format!("{l} ");
        if !l.contains(event) || !l.contains(&needle) {
            return None;
        }
        let stamp = l.split_whitespace().next()?;
        humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
            .or_else(|_| humantime::parse_rfc3339(stamp))
            .ok()
    })
}

const ADDED: &str = "etcd member added as a learner";
const PROMOTED: &str = "etcd learner promoted to a voting member";

/// etcd's members as `kept` lists them, asked with the stored talosconfig as a person would:
/// (hostname, learner).
async fn members(world: &World, c: &ClusterFixture, kept: &WantedVm) -> Vec<(String, bool)> {
    let talosconfig = stored(world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, c);
    let client =
        TalosClient::connect_mtls((kept.ip, 50000).into(), &identity, ClientOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: the stored talosconfig is refused: {e}", kept.name));
    let mut list: Vec<(String, bool)> = client
        .etcd_member_list()
        .await
        .unwrap_or_else(|e| panic!("{}: etcd member list: {e}", kept.name))
        .into_iter()
        .map(|m| (m.hostname, m.is_learner))
        .collect();
    list.sort();
    list
}

/// `kiln plan` (online) of the work tree as it is.
fn kiln_plan(world: &World) -> crate::support::Outcome {
    let mut cmd = crate::support::kiln();
    cmd.args(["plan", "--config"])
        .arg(&world.config)
        .arg("--repo")
        .arg(&world.repos.work);
    world.run_command(cmd)
}

fn status_record(world: &World, name: &str) -> Value {
    let (out, json) = world.status_json(Some(name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    status_of(&json, name)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        .clone()
}

/// Scales the control planes to `to`, runs once, and checks from the two logs that each new
/// control plane's clone came only after the one before it was promoted, each as a learner first.
async fn scale_up_and_check(world: &World, c: &ClusterFixture, from: u32, to: u32) {
    world.push_file(
        &c.path(),
        &with_control_planes(c, to),
        &format!("control planes {from} -> {to}"),
    );
    world.validate_work_tree();
    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "control planes {from} -> {to}:\n{run}");
    let log = requests_since(world, mark);
    let all = c.wanted();
    let cps: Vec<&WantedVm> = all
        .iter()
        .filter(|w| w.role == Role::ControlPlane)
        .collect();
    for pair in cps[from as usize - 1..to as usize].windows(2) {
        let (before, next) = (pair[0], pair[1]);
        let added = sim_event(world, ADDED, &next.name).unwrap_or_else(|| {
            panic!(
                "{} never joined as a learner:\n{}",
                next.name,
                world.sim.log_text()
            )
        });
        let promoted = sim_event(world, PROMOTED, &next.name).unwrap_or_else(|| {
            panic!(
                "{} was never promoted:\n{}",
                next.name,
                world.sim.log_text()
            )
        });
        assert!(
            added < promoted,
            "{}: promoted before it was added",
            next.name
        );
        let cloned = clone_time(&log, next);
        // The control plane before it: the first one (etcd's bootstrap node) was never a learner.
        if let Some(ready) = sim_event(world, PROMOTED, &before.name) {
            assert!(
                ready < cloned,
                "{} was cloned at {:?}, before {} was promoted at {:?}",
                next.name,
                cloned,
                before.name,
                ready
            );
        } else {
            assert_eq!(before.number, 1, "{} never joined", before.name);
        }
        assert!(
            cloned < added,
            "{}: a learner before its VM was cloned",
            next.name
        );
    }
    // All voting members now, listed by the first control plane.
    let want: Vec<(String, bool)> = cps[..to as usize]
        .iter()
        .map(|w| (w.name.clone(), false))
        .collect();
    assert_eq!(
        members(world, c, cps[0]).await,
        want,
        "etcd members after {from} -> {to}"
    );
    let status = status_record(world, &c.name);
    assert_eq!(status["phase"], "Ready", "{status}");
}

#[tokio::test]
async fn control_planes_scale_1_to_3_to_5_joining_one_at_a_time() {
    let c = ClusterFixture::new("cpjoin", 5, 1);
    let sim_args = ["--learner-delay".to_owned(), LEARNER_DELAY.to_owned()];
    let world =
        World::start_with_sim_args(vec![c.clone()], |ip| format!("{ip}:50000"), &sim_args).await;
    // First provisioning with one control plane (no etcd yet: today's side-by-side path).
    world.push_file(&c.path(), &with_control_planes(&c, 1), "one control plane");
    world.validate_work_tree();
    let run = world.run_once();
    assert!(run.success(), "provisioning one control plane:\n{run}");
    let cp1 = c.wanted()[0].clone();
    assert_eq!(members(&world, &c, &cp1).await, [(cp1.name.clone(), false)]);

    // The plan says how they join before anything happens.
    world.pull();
    world.repos.write(&c.path(), &with_control_planes(&c, 3));
    let plan = kiln_plan(&world);
    world.repos.write(&c.path(), &with_control_planes(&c, 1));
    let name = |n: u32| format!("{}-cp-{n}", c.name);
    for line in [
        format!(
            "adds control plane {} to etcd (joins after cp-1 is Ready)",
            name(2)
        ),
        format!(
            "adds control plane {} to etcd (joins after cp-2 is Ready)",
            name(3)
        ),
    ] {
        assert!(
            plan.stdout.contains(&line),
            "kiln plan does not say {line:?}:\n{plan}"
        );
    }

    scale_up_and_check(&world, &c, 1, 3).await;
    scale_up_and_check(&world, &c, 3, 5).await;
    assert!(
        world.sim.violations().is_empty(),
        "{:?}",
        world.sim.violations()
    );
}

/// Control planes 3 → 2 while cp-3's leave fails as `sim_arg` makes it fail: the run does not
/// converge within `limit`, cp-3's VM is still in fakepve with no write to it, and etcd still lists
/// it. Returns the cluster's status record.
async fn a_failed_leave(name: &str, sim_arg: &str, limit: std::time::Duration) -> (String, Value) {
    let c = ClusterFixture::new(name, 3, 0);
    let leaving = c.wanted()[2].clone();
    let sim_args = [
        sim_arg.to_owned(),
        sim_arg_value(sim_arg, &format!("{}:50000", leaving.ip)),
    ];
    let world =
        World::start_with_sim_args(vec![c.clone()], |ip| format!("{ip}:50000"), &sim_args).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");

    world.push_file(
        &c.path(),
        &with_control_planes(&c, 2),
        "control planes 3 -> 2",
    );
    world.validate_work_tree();
    let plan = kiln_plan(&world);
    let line = format!("removes {} from etcd", leaving.name);
    assert!(
        plan.stdout.contains(&line),
        "kiln plan does not say {line:?}:\n{plan}"
    );
    let mark = world.request_mark();
    let run = world.run_once_for(limit);
    assert!(!run.success(), "a failed leave cannot converge:\n{run}");

    assert!(
        world.vms().contains_key(&leaving.vmid),
        "{} was destroyed although it never left etcd",
        leaving.name
    );
    let writes: Vec<(String, String)> = world
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| p.contains(&format!("/qemu/{}", leaving.vmid)))
        .collect();
    assert_eq!(writes, vec![], "writes to the VM that failed to leave");
    let listed = members(&world, &c, &c.wanted()[0]).await;
    assert!(
        listed.iter().any(|(h, _)| *h == leaving.name),
        "{} is no longer an etcd member: {listed:?}",
        leaving.name
    );
    (leaving.name, status_record(&world, &c.name))
}

/// `--refuse` names the method too.
fn sim_arg_value(arg: &str, addr: &str) -> String {
    match arg {
        "--refuse" => format!("Reset={addr}"),
        _ => addr.to_owned(),
    }
}

#[tokio::test]
async fn a_control_plane_whose_reset_is_refused_keeps_its_vm_and_the_status_says_why() {
    let (leaving, status) =
        a_failed_leave("cprefuse", "--refuse", std::time::Duration::from_secs(60)).await;
    // Failed after its retries, naming the node, the kept VM and Talos's answer.
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{leaving} did not leave etcd, so its VM stays"))
            && error.contains("Reset refused"),
        "status: {status}"
    );
}

#[tokio::test]
async fn a_control_plane_still_listed_after_its_reset_keeps_its_vm_and_the_status_says_why() {
    // Talos answered the Reset, then its leave failed: the member is still listed by cp-1.
    let (leaving, status) = a_failed_leave(
        "cpstays",
        "--fail-leave",
        std::time::Duration::from_secs(15),
    )
    .await;
    let waiting = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .unwrap_or_else(|| panic!("no Progressing condition: {status}"));
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "{leaving} is still an etcd member; its VM stays until the leave is confirmed"
        )),
        "status: {status}"
    );
}
