//! Issue 23: kiln against a simulator that behaves as real Talos does where kiln used to get it wrong —
//! `EtcdMemberList` before bootstrap waits until the caller's deadline, and a node in maintenance judges
//! a config with the Talos its template boots (RuntimeValidate's Kubernetes range).

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::checks::{assert_bootstraps, assert_converged, status_of};
use crate::fixture::ClusterFixture;
use crate::support::World;

/// The simulator's log without terminal colours.
fn plain_log(world: &World) -> Vec<String> {
    world
        .sim
        .log_text()
        .lines()
        .map(|l| {
            let mut out = String::new();
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    // CSI: ESC [ … final byte in @..~
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) && c != '[' {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

/// The time stamps of the simulator's log lines that contain `what`.
fn times_of(lines: &[String], what: &str) -> Vec<OffsetDateTime> {
    lines
        .iter()
        .filter(|l| l.contains(what))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap_or_default();
            OffsetDateTime::parse(stamp, &Rfc3339)
                .unwrap_or_else(|e| panic!("no time stamp in {l:?}: {e}"))
        })
        .collect()
}

#[tokio::test]
async fn bootstrap_follows_the_last_apply_although_etcd_member_list_blocks() {
    let c = ClusterFixture::new("blocking", 3, 1);
    let world = World::start(vec![c.clone()]).await;

    let run = world.run_once();
    assert!(run.success(), "run --once:\n{run}");
    assert_converged(&world, &c).await;
    assert_bootstraps(&world, 1);

    let log = plain_log(&world);
    // The faithful pre-bootstrap answer was met, and the caller's deadline reached the node.
    let waits: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("EtcdMemberList waits for etcd until the caller's deadline"))
        .collect();
    assert!(
        !waits.is_empty(),
        "kiln never met a blocking EtcdMemberList:\n{}",
        log.join("\n")
    );
    assert!(
        waits.iter().all(|l| l.contains("grpc_timeout=Some(")),
        "an EtcdMemberList arrived without grpc-timeout: {waits:?}"
    );
    let applies = times_of(&log, "machine config accepted");
    assert_eq!(applies.len(), 4, "one config per node:\n{}", log.join("\n"));
    let last_apply = *applies.iter().max().unwrap();
    let bootstrap = times_of(&log, "etcd bootstrapped")[0];
    let gap = bootstrap - last_apply;
    assert!(
        gap >= time::Duration::ZERO && gap < time::Duration::seconds(10),
        "Bootstrap came {gap} after the last config apply (at most 10 s)"
    );
}

#[tokio::test]
async fn an_old_template_that_refuses_the_kubernetes_version_is_blocked_at_once() {
    let c = ClusterFixture::new("oldtmpl", 1, 0);
    let world =
        World::start_with_nodes(vec![c.clone()], |ip| format!("{ip}:50000,version=v1.11.6")).await;
    // Talos v1.13.9 runs Kubernetes 1.35 (so `kiln validate` passes), the v1.11.6 template does not.
    let text = c.yaml().replace("version: v1.34.1", "version: v1.35.0");
    assert_ne!(text, c.yaml());
    world.push_file(&c.path(), &text, "Kubernetes 1.35");
    world.validate_work_tree();

    let started = Instant::now();
    let run = world.run_once_for(Duration::from_secs(90));
    let took = started.elapsed();
    assert!(!run.success(), "a refused config must not converge:\n{run}");
    assert!(
        took < Duration::from_secs(45),
        "run --once took {took:?}: a Blocked cluster ends the run, it is not retried until the timeout"
    );
    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &c.name).unwrap_or_else(|| panic!("no {} in {json}", c.name));
    assert_eq!(record["phase"], "Blocked", "{record}");
    let message = record["lastError"]
        .as_str()
        .or_else(|| record["last_error"].as_str())
        .unwrap_or_default()
        .to_owned();
    // The v1.11.6 node refuses the v1.13 config in its own decoder before RuntimeValidate runs
    // (`talos_grpc` `real::the_running_talos_judges_the_kubernetes_version` shows the range refusal).
    assert!(
        message.contains("runs Talos v1.11.6")
            && message.contains("refused the machine config: ")
            && message.contains("template of Talos v1.13.9"),
        "the message names the running Talos, Talos's reason and the fix: {record}"
    );
    let refusals = plain_log(&world)
        .iter()
        .filter(|l| l.contains("ApplyConfiguration refused"))
        .count();
    assert_eq!(
        refusals, 1,
        "the refused config was sent again (a retry loop)"
    );
    assert_bootstraps(&world, 0);
}

/// `kiln status` of one cluster, as JSON.
fn status_record(world: &World, name: &str) -> serde_json::Value {
    let (out, json) = world.status_json(Some(name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    status_of(&json, name)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        .clone()
}

#[tokio::test]
async fn a_template_that_is_not_nocloud_gets_no_config_and_is_blocked() {
    let c = ClusterFixture::new("metaltmpl", 1, 0);
    let world =
        World::start_with_nodes(vec![c.clone()], |ip| format!("{ip}:50000,platform=metal")).await;
    let run = world.run_once_for(Duration::from_secs(60));
    assert!(!run.success(), "{run}");
    let record = status_record(&world, &c.name);
    assert_eq!(record["phase"], "Blocked", "{record}");
    let message = record["last_error"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"metal\"") && message.contains("nocloud"),
        "the message says what the template is and what it must be: {record}"
    );
    assert!(
        world.sim.dumped_config(c.ip(1)).is_none(),
        "a config was sent"
    );
}

#[tokio::test]
async fn a_started_vm_whose_node_never_answers_gets_a_condition_naming_causes() {
    let c = ClusterFixture::new("silent", 1, 0);
    // Nothing answers on :50000 at the node's address (the simulated machine listens elsewhere), as
    // with a template that boots another image or no route to the IP.
    let world = World::start_with_nodes(vec![c.clone()], |ip| format!("{ip}:50001")).await;
    let text = std::fs::read_to_string(&world.config).unwrap();
    let text = text.replace(
        "[talos]\nbackend = \"grpc\"\n",
        "[talos]\nbackend = \"grpc\"\nboot_timeout = \"2s\"\n",
    );
    assert!(text.contains("boot_timeout"));
    std::fs::write(&world.config, text).unwrap();

    let run = world.run_once_for(Duration::from_secs(12));
    assert!(
        !run.success(),
        "a node that never answers cannot converge:\n{run}"
    );
    let record = status_record(&world, &c.name);
    let conditions = record["conditions"].as_array().cloned().unwrap_or_default();
    let boot = conditions
        .iter()
        .find(|k| k["type"] == "NodeNotAnswering")
        .unwrap_or_else(|| panic!("no NodeNotAnswering condition: {record}"));
    let message = boot["message"].as_str().unwrap_or_default();
    for cause in ["nocloud", "boot order", "route"] {
        assert!(message.contains(cause), "{cause:?} missing: {message}");
    }
    assert!(message.contains("silent-cp-1"), "{message}");
}

#[tokio::test]
async fn another_machine_at_the_node_ip_gets_no_config_and_is_blocked() {
    let c = ClusterFixture::new("strangr", 1, 0);
    // The machine answering at the IP reports an SMBIOS uuid that is not the VM's.
    let world = World::start_with_nodes(vec![c.clone()], |ip| {
        format!("{ip}:50000,uuid=00000000-0000-0000-0000-00000000dead")
    })
    .await;
    let started = Instant::now();
    let run = world.run_once_for(Duration::from_secs(60));
    assert!(!run.success(), "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "not blocked at once"
    );
    let record = status_record(&world, &c.name);
    assert_eq!(record["phase"], "Blocked", "{record}");
    let message = record["last_error"].as_str().unwrap_or_default();
    assert!(message.contains("SMBIOS uuid"), "{record}");
    assert!(
        world.sim.dumped_config(c.ip(1)).is_none(),
        "a config was sent"
    );
}
