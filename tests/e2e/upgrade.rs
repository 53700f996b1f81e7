//! Issue 26, Talos rolling upgrades (DESIGN.md §4 "Scale-down and upgrades"), seen from outside: a
//! 3+1 cluster whose simulated machines boot Talos v1.12.11 is converged at v1.12.11, then the file
//! asks for v1.13.9. While `kiln run --once` rolls it out, the test polls every node's `Version` over
//! mTLS with the talosconfig kiln stored in Vault, as a person with talosctl would; the simulator's
//! log says which node was upgraded and rebooted when.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiln::sim::talos::validate::{ConfigValidator, SchemaValidator};
use kiln::talos::grpc::{ClientIdentity, ClientOptions, TalosClient};

use crate::checks::{assert_converged, status_of};
use crate::credentials::{stored, talos_identity};
use crate::fixture::{ClusterFixture, Role};
use crate::support::{Outcome, World, kiln, plain};
use crate::talos_sim::reference_schemas;

const OLD: &str = "v1.12.11";
const NEW: &str = "v1.13.9";

/// The fixture's file at another Talos version.
fn at_version(c: &ClusterFixture, version: &str) -> String {
    let yaml = c.yaml();
    assert!(yaml.contains(&format!("version: {NEW}\n")));
    yaml.replace(
        &format!("version: {NEW}\n"),
        &format!("version: {version}\n"),
    )
}

/// A world whose machines boot `OLD` (their template's Talos), converged at `OLD`; `fail` names
/// the node whose upgrade never comes back.
async fn converged_at_old(c: &ClusterFixture, fail: Option<u32>) -> World {
    converged_at(c, OLD, fail).await
}

async fn converged_at(c: &ClusterFixture, old: &'static str, fail: Option<u32>) -> World {
    let failing = fail.map(|n| c.ip(n as u8));
    let world = World::start_with_nodes(vec![c.clone()], move |ip| {
        let flag = if Some(ip) == failing {
            ",fail-upgrade"
        } else {
            ""
        };
        format!("{ip}:50000,version={old}{flag}")
    })
    .await;
    let text = std::fs::read_to_string(&world.config).unwrap();
    let text = text.replace(
        "[talos]\nbackend = \"grpc\"\n",
        "[talos]\nbackend = \"grpc\"\nupgrade_timeout = \"6s\"\n",
    );
    assert!(text.contains("upgrade_timeout"));
    std::fs::write(&world.config, text).unwrap();
    world.push_file(&c.path(), &at_version(c, old), "the template's Talos");
    let run = world.run_once();
    assert!(run.success(), "provisioning {} at {old}:\n{run}", c.name);
    assert_converged(&world, c).await;
    world
}

/// Each node's running Talos tag over mTLS, `None` for a node that does not answer.
async fn versions(identity: &ClientIdentity, ips: &[Ipv4Addr]) -> Vec<Option<String>> {
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(2),
    };
    let asks = ips.iter().map(|ip| {
        let options = options.clone();
        async move {
            let client = TalosClient::connect_mtls((*ip, 50000).into(), identity, options)
                .await
                .ok()?;
            client.version().await.ok().map(|v| v.tag)
        }
    });
    futures::future::join_all(asks).await
}

/// The cluster's phase and its nodes' versions in kiln's status file, as the running kiln last
/// saved it.
fn status_now(world: &World, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(world.state_dir.join("status.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let record = status_of(&json, name)?;
    let versions: Vec<&str> = record["nodes"]
        .as_array()?
        .iter()
        .map(|n| n["talos_version"].as_str().unwrap_or("-"))
        .collect();
    Some(format!(
        "{} {}",
        record["phase"].as_str()?,
        versions.join(" ")
    ))
}

/// Runs `kiln run --once` in the background and samples every node's version (and the cluster's
/// status as kiln saves it: `status_now`) until it exits.
async fn run_while_polling(
    world: &Arc<World>,
    identity: &ClientIdentity,
    ips: &[Ipv4Addr],
) -> (Outcome, Vec<Vec<Option<String>>>, Vec<String>) {
    let w = world.clone();
    let run = tokio::task::spawn_blocking(move || w.run_once_for(Duration::from_secs(90)));
    let name = world.clusters[0].name.clone();
    let mut samples = Vec::new();
    let mut phases: Vec<String> = Vec::new();
    while !run.is_finished() {
        samples.push(versions(identity, ips).await);
        if let Some(p) = status_now(world, &name)
            && phases.last() != Some(&p)
        {
            phases.push(p);
        }
        // Sampling, not synchronisation: a reboot keeps a node silent for a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples.push(versions(identity, ips).await);
    (run.await.unwrap(), samples, phases)
}

/// The simulator's upgrade reboots in order, as (node IP, to) from its log lines
/// (`sim::talos::upgrade::reboot_into`).
fn upgrade_reboots(world: &World) -> Vec<(String, String)> {
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
        .filter(|l| {
            l.contains("reboot: upgrading") || l.contains("does not come back from its upgrade")
        })
        .filter_map(|l| {
            let node = field(&l, "node=")?;
            let ip = node.split(':').next()?.to_owned();
            Some((ip, field(&l, "to=")?))
        })
        .collect()
}

fn show(samples: &[Vec<Option<String>>]) -> String {
    samples
        .iter()
        .map(|s| {
            s.iter()
                .map(|v| v.as_deref().unwrap_or("-").to_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn plan_text(world: &World) -> Outcome {
    let mut cmd = kiln();
    cmd.args(["plan", "--config"])
        .arg(&world.config)
        .arg("--repo")
        .arg(&world.repos.work);
    world.run_command(cmd)
}

/// Dumped configs written after `since`, by node IP.
fn configs_since(world: &World, since: SystemTime) -> BTreeMap<String, String> {
    let Ok(dir) = std::fs::read_dir(&world.sim.dump_dir) else {
        return BTreeMap::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since)
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn talos_v1_12_to_v1_13_rolls_control_planes_first_one_node_at_a_time() {
    let c = ClusterFixture::new("upg", 3, 1);
    let world = Arc::new(converged_at_old(&c, None).await);
    let wanted = c.wanted();
    let ips: Vec<Ipv4Addr> = wanted.iter().map(|w| w.ip).collect();
    let talosconfig = stored(&world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, &c);
    assert_eq!(
        versions(&identity, &ips).await,
        vec![Some(OLD.to_owned()); ips.len()],
        "every node runs {OLD} before the change"
    );

    let changed_at = SystemTime::now();
    world.push_file(&c.path(), &c.yaml(), "Talos v1.13.9");

    // `kiln plan` names each hop of each node with its disruption, control planes first.
    let plan = plan_text(&world);
    assert_eq!(plan.code, Some(2), "the plan has changes:\n{plan}");
    let lines: Vec<usize> = wanted
        .iter()
        .map(|w| {
            let line = format!("upgrades {} {OLD} → {NEW} (reboot)", w.name);
            plan.stdout
                .find(&line)
                .unwrap_or_else(|| panic!("no {line:?} in the plan:\n{plan}"))
        })
        .collect();
    assert!(
        lines.windows(2).all(|p| p[0] < p[1]),
        "control planes first, then the worker:\n{plan}"
    );

    let (run, samples, phases) = run_while_polling(&world, &identity, &ips).await;
    assert!(run.success(), "the upgrade run:\n{run}");
    // While nodes were behind, the status kiln saved said Updating, and showed the rollout node by
    // node: the first control plane on the new version while the others were not yet.
    let midway = format!("Updating {NEW} {OLD} {OLD} {OLD}");
    assert!(
        phases.contains(&midway),
        "the status never said {midway:?} during the rollout: {phases:?}"
    );

    // Never two nodes silent at once.
    for s in &samples {
        assert!(
            s.iter().filter(|v| v.is_none()).count() <= 1,
            "two nodes down at once:\n{}",
            show(&samples)
        );
    }
    // Each node first seen on the new version after the one before it: cp-1, cp-2, cp-3, then wk-4.
    let first_new: Vec<usize> = (0..ips.len())
        .map(|i| {
            samples
                .iter()
                .position(|s| s[i].as_deref() == Some(NEW))
                .unwrap_or_else(|| {
                    panic!(
                        "{} never seen on {NEW}:\n{}",
                        wanted[i].name,
                        show(&samples)
                    )
                })
        })
        .collect();
    assert!(
        first_new.windows(2).all(|p| p[0] < p[1]),
        "nodes reached {NEW} out of order ({first_new:?}):\n{}",
        show(&samples)
    );
    assert_eq!(
        samples.last().unwrap(),
        &vec![Some(NEW.to_owned()); ips.len()],
        "every node on {NEW} at the end"
    );

    // The simulator rebooted each node into the new version exactly once, in that order.
    let reboots = upgrade_reboots(&world);
    let expected: Vec<(String, String)> = wanted
        .iter()
        .map(|w| (w.ip.to_string(), NEW.to_owned()))
        .collect();
    assert_eq!(reboots, expected, "{}", world.sim.log_text());
    assert!(wanted.iter().any(|w| w.role == Role::Worker));

    // A config sent after the change is of the new contract and installs the new version.
    let validator = SchemaValidator::new(reference_schemas());
    for (file, text) in configs_since(&world, changed_at) {
        let docs = kiln::sim::talos::config::documents(text.as_bytes()).unwrap();
        validator
            .validate(13, &text, &docs)
            .unwrap_or_else(|e| panic!("{file}: not a v1.13 config: {e}"));
        assert!(
            text.contains(&format!(
                "installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:{NEW}"
            )),
            "{file}: does not install {NEW}"
        );
    }

    // The status shows each node's version, and the cluster Ready.
    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("no JSON from kiln status:\n{out}"));
    let record = status_of(&json, &c.name).unwrap();
    assert_eq!(record["phase"], "Ready", "{record}");
    for w in &wanted {
        let row = record["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == w.name.as_str())
            .unwrap_or_else(|| panic!("no row for {} in {record}", w.name));
        assert_eq!(row["talos_version"], NEW, "{}: {row}", w.name);
    }
    assert_converged(&world, &c).await;

    // A second run upgrades nothing.
    let again = world.run_once();
    assert!(again.success(), "{again}");
    assert_eq!(upgrade_reboots(&world).len(), ips.len());
}

#[tokio::test]
async fn a_node_that_does_not_come_back_stops_the_rollout_there() {
    let c = ClusterFixture::new("upgfail", 3, 1);
    // cp-2 never comes back from its upgrade.
    let world = Arc::new(converged_at_old(&c, Some(2)).await);
    let wanted = c.wanted();
    let ips: Vec<Ipv4Addr> = wanted.iter().map(|w| w.ip).collect();
    let talosconfig = stored(&world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, &c);
    world.push_file(&c.path(), &c.yaml(), "Talos v1.13.9");

    let (run, samples, _) = run_while_polling(&world, &identity, &ips).await;
    assert!(
        !run.success(),
        "a rollout stopped by a failed node exits non-zero:\n{run}"
    );
    let cp2 = &wanted[1].name;
    assert!(
        run.stdout.contains(cp2.as_str()),
        "the run names the node that did not come back:\n{run}"
    );

    // cp-1 upgraded, cp-2 down, cp-3 and the worker untouched.
    let last = samples.last().unwrap();
    assert_eq!(
        last,
        &vec![
            Some(NEW.to_owned()),
            None,
            Some(OLD.to_owned()),
            Some(OLD.to_owned())
        ],
        "{}",
        show(&samples)
    );
    for s in &samples {
        assert_ne!(s[2].as_deref(), Some(NEW), "cp-3 was upgraded");
        assert_ne!(s[3].as_deref(), Some(NEW), "the worker was upgraded");
    }
    let reboots = upgrade_reboots(&world);
    assert_eq!(
        reboots,
        vec![
            (wanted[0].ip.to_string(), NEW.to_owned()),
            (wanted[1].ip.to_string(), NEW.to_owned())
        ],
        "{}",
        world.sim.log_text()
    );

    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("no JSON from kiln status:\n{out}"));
    let record = status_of(&json, &c.name).unwrap();
    assert_eq!(record["phase"], "Blocked", "{record}");
    let error = record["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{cp2} did not come back healthy")),
        "{record}"
    );

    // `kiln plan` says the same before anything would move (exit 1: a blocker).
    let plan = plan_text(&world);
    assert_eq!(plan.code, Some(1), "{plan}");
    assert!(
        plan.stdout
            .contains(&format!("{cp2} did not come back healthy")),
        "{plan}"
    );

    // The next run does not try it again: still Blocked, naming it, no new upgrade.
    let again = world.run_once_for(Duration::from_secs(30));
    assert!(!again.success(), "{again}");
    assert!(again.stdout.contains(cp2.as_str()), "{again}");
    assert_eq!(upgrade_reboots(&world).len(), 2, "{}", world.sim.log_text());
    assert_eq!(
        versions(&identity, &ips[2..]).await,
        vec![Some(OLD.to_owned()); 2],
        "the nodes after it are untouched"
    );
}

/// A patch hop on nodes that serve the new API (v1.13.0 → v1.13.9): pull, install, kiln's own cordon,
/// Reboot, uncordon, one node at a time; the legacy Upgrade is never used.
#[tokio::test]
async fn a_node_on_v1_13_is_upgraded_through_the_lifecycle_api_with_kiln_s_own_drain() {
    let c = ClusterFixture::new("upgnew", 1, 1);
    let world = converged_at(&c, "v1.13.0", None).await;
    world.push_file(&c.path(), &c.yaml(), "Talos v1.13.9");
    let run = world.run_once();
    assert!(run.success(), "the upgrade run:\n{run}");

    let log: Vec<String> = world.sim.log_text().lines().map(plain).collect();
    let of = |ip: Ipv4Addr| format!("node={ip}:50000");
    assert!(
        !log.iter().any(|l| l.contains("legacy upgrade")),
        "the legacy API was used on v1.13.0 nodes:\n{}",
        log.join("\n")
    );
    let mut previous_end = 0;
    for w in c.wanted() {
        let at = |what: &str| {
            log.iter()
                .position(|l| l.contains(what) && l.contains(&of(w.ip)))
                .unwrap_or_else(|| panic!("{}: no {what:?} in\n{}", w.name, log.join("\n")))
        };
        let pulled = at("image pulled");
        let installed = at("upgrade installed");
        let rebooted = at("reboot: upgrading");
        // The simulated Kubernetes API logs `node=<name>` for a cordon.
        let cordon = log
            .iter()
            .position(|l| {
                l.contains("node cordon set")
                    && l.contains(&format!("node={}", w.name))
                    && l.contains("unschedulable=true")
            })
            .unwrap_or_else(|| panic!("{} never cordoned:\n{}", w.name, log.join("\n")));
        let uncordon = log
            .iter()
            .rposition(|l| {
                l.contains("node cordon set")
                    && l.contains(&format!("node={}", w.name))
                    && l.contains("unschedulable=false")
            })
            .unwrap_or_else(|| panic!("{} never uncordoned:\n{}", w.name, log.join("\n")));
        assert!(
            previous_end < pulled
                && pulled < installed
                && installed < cordon
                && cordon < rebooted
                && rebooted < uncordon,
            "{}: pull {pulled}, install {installed}, cordon {cordon}, reboot {rebooted}, uncordon {uncordon} \
             (previous node done at {previous_end}):\n{}",
            w.name,
            log.join("\n")
        );
        previous_end = uncordon;
    }
    let talosconfig = stored(&world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, &c);
    let ips: Vec<Ipv4Addr> = c.wanted().iter().map(|w| w.ip).collect();
    assert_eq!(
        versions(&identity, &ips).await,
        vec![Some(NEW.to_owned()); ips.len()]
    );
}

/// DESIGN §4: a node whose template is older than the spec (a disk image with Talos installed keeps
/// the version it booted through its first config) is upgraded before the cluster counts as Ready.
#[tokio::test]
async fn nodes_booting_an_older_template_are_upgraded_before_the_cluster_is_ready() {
    let c = ClusterFixture::new("upgboot", 1, 1);
    let world = Arc::new(
        World::start_with_nodes(vec![c.clone()], |ip| {
            format!("{ip}:50000,version={OLD},installed")
        })
        .await,
    );
    let ips: Vec<Ipv4Addr> = c.wanted().iter().map(|w| w.ip).collect();
    let w = world.clone();
    let run = tokio::task::spawn_blocking(move || w.run_once_for(Duration::from_secs(90)));
    let mut seen: Vec<String> = Vec::new();
    while !run.is_finished() {
        if let Some(s) = status_now(&world, &c.name)
            && seen.last() != Some(&s)
        {
            seen.push(s);
        }
        // Sampling the status file kiln saves after each cycle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = run.await.unwrap();
    assert!(run.success(), "provisioning from an older template:\n{run}");
    assert!(
        seen.iter()
            .all(|s| !(s.starts_with("Ready") && s.contains(OLD))),
        "Ready while a node ran {OLD}: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains(OLD)),
        "the nodes were never seen on the template's {OLD}: {seen:?}"
    );
    let reboots = upgrade_reboots(&world);
    let expected: Vec<(String, String)> = ips
        .iter()
        .map(|ip| (ip.to_string(), NEW.to_owned()))
        .collect();
    assert_eq!(reboots, expected, "{}", world.sim.log_text());
    let talosconfig = stored(&world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, &c);
    assert_eq!(
        versions(&identity, &ips).await,
        vec![Some(NEW.to_owned()); ips.len()]
    );
    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("no JSON from kiln status:\n{out}"));
    assert_eq!(status_of(&json, &c.name).unwrap()["phase"], "Ready");
}
