//! Issue 27, live config changes and config drift (DESIGN.md §4 "Apply", §7 drift), seen from outside:
//! `kiln sim talos` logs one line per ApplyConfiguration (node, requested mode, dry run, the mode the
//! node chose), one per node back from a reboot, and one per cordon of its Kubernetes API, all in one
//! file in the order they happened. A person changes a node's config as `talosctl edit mc` does: reads
//! the MachineConfig resource with the stored talosconfig and applies the edited config.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kiln::talos::grpc::machine_config::running_config;
use kiln::talos::grpc::proto::machine::ApplyMode;
use kiln::talos::grpc::{ClientOptions, TalosClient};
use serde_yaml::Value;

use crate::checks::{assert_converged, assert_exact_vms, status_of};
use crate::credentials::{stored, talos_identity};
use crate::fixture::ClusterFixture;
use crate::support::{World, plain};

/// What the simulator's log shows, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Apply {
        ip: Ipv4Addr,
        mode: String,
        dry_run: bool,
        chosen: String,
    },
    Back(Ipv4Addr),
    Cordon(String),
    Uncordon(String),
}

fn field(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(|v| v.trim_matches('"').to_owned())
}

fn ip_of(addr: &str) -> Option<Ipv4Addr> {
    addr.split(':').next()?.parse().ok()
}

fn events(world: &World) -> Vec<Event> {
    world
        .sim
        .log_text()
        .lines()
        .map(plain)
        .filter_map(|l| {
            if let Some((_, rest)) = l.split_once("apply config ") {
                return Some(Event::Apply {
                    ip: ip_of(&field(rest, "node=")?)?,
                    mode: field(rest, "mode=")?,
                    dry_run: field(rest, "dry_run=")? == "true",
                    chosen: field(rest, "chosen=")?,
                });
            }
            if l.contains("back from reboot") {
                return Some(Event::Back(ip_of(&field(&l, "node=")?)?));
            }
            if l.contains("node cordon set") {
                let node = field(&l, "node=")?;
                return Some(match field(&l, "unschedulable=").as_deref() {
                    Some("true") => Event::Cordon(node),
                    _ => Event::Uncordon(node),
                });
            }
            None
        })
        .collect()
}

fn show(events: &[Event]) -> String {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i:3} {e:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn applies_to(events: &[Event], ip: Ipv4Addr) -> Vec<(usize, String, bool, String)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Apply {
                ip: at,
                mode,
                dry_run,
                chosen,
            } if *at == ip => Some((i, mode.clone(), *dry_run, chosen.clone())),
            _ => None,
        })
        .collect()
}

/// Each real (not dry-run) apply of kiln's came after a dry run with mode AUTO on the same node, and
/// each was made with `mode`; returns the real applies' positions, one per node expected.
fn assert_dry_run_first(events: &[Event], c: &ClusterFixture, mode: &str) -> Vec<usize> {
    let mut real = Vec::new();
    for w in c.wanted() {
        let applies = applies_to(events, w.ip);
        let done: Vec<_> = applies.iter().filter(|a| !a.2).collect();
        assert_eq!(
            done.len(),
            1,
            "{}: one apply expected:\n{}",
            w.name,
            show(events)
        );
        let (at, requested, _, chosen) = done[0];
        assert_eq!(requested, mode, "{}:\n{}", w.name, show(events));
        assert_eq!(chosen, mode, "{}:\n{}", w.name, show(events));
        assert!(
            applies
                .iter()
                .any(|(i, m, dry, _)| *dry && i < at && m == "Auto"),
            "{}: no dry run with mode AUTO before the apply:\n{}",
            w.name,
            show(events)
        );
        real.push(*at);
    }
    real
}

/// kiln.toml with `lines` added at the top of its `[reconcile]` table; kiln's loader reads it back.
fn reconcile_settings(world: &World, lines: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    let header = "\n[reconcile]\n";
    assert!(text.contains(header), "no [reconcile] table in:\n{text}");
    let text = text.replacen(header, &format!("{header}{lines}\n"), 1);
    std::fs::write(&world.config, text).unwrap();
    kiln::config::Config::load(&world.config)
        .unwrap_or_else(|e| panic!("the test's kiln.toml does not load: {e}"));
}

/// A new intent revision that means the same (a comment added), so the next run looks deep at
/// every node instead of trusting the listing.
fn touch_file(world: &World, c: &ClusterFixture, yaml: &str) {
    let text = format!("{yaml}# touched\n");
    world.push_file(&c.path(), &text, "a comment only");
}

/// `kiln plan` against the live world, the work clone as the pull request.
fn plan(world: &World) -> crate::support::Outcome {
    let mut cmd = crate::support::kiln();
    cmd.args(["plan", "--config"])
        .arg(&world.config)
        .arg("--repo")
        .arg(&world.repos.work);
    world.run_command(cmd)
}

/// A world with `c` converged by one run.
async fn converged(c: &ClusterFixture, settings: &str) -> World {
    let world = World::start(vec![c.clone()]).await;
    reconcile_settings(&world, settings);
    let run = world.run_once();
    assert!(run.success(), "provisioning {}:\n{run}", c.name);
    assert_exact_vms(&world, &[c], &[]);
    assert_converged(&world, c).await;
    world
}

async fn admin_client(world: &World, c: &ClusterFixture, ip: Ipv4Addr) -> TalosClient {
    let talosconfig = stored(world, &c.name, "talos", "talosconfig").await;
    let (identity, _) = talos_identity(&talosconfig, c);
    TalosClient::connect_mtls((ip, 50000).into(), &identity, ClientOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{ip}: the stored talosconfig is refused: {e}"))
}

/// The documents of the config `ip` runs, read as a person reads them (`talosctl get mc`).
async fn running_documents(world: &World, c: &ClusterFixture, ip: Ipv4Addr) -> Vec<Value> {
    let text = running_config(&admin_client(world, c, ip).await)
        .await
        .unwrap_or_else(|e| panic!("{ip}: reading MachineConfig: {e}"));
    documents(&text)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn v1alpha1(docs: &mut [Value]) -> &mut Value {
    docs.iter_mut()
        .find(|d| d.get("kind").is_none())
        .expect("a v1alpha1 document")
}

/// `talosctl edit mc` on `ip`: `machine.features.diskQuotaSupport` turned off (kiln renders it on; a
/// field Talos 1.13 applies only with a reboot), applied with mode AUTO, which reboots the node;
/// returns once it answers again running the edit.
async fn edit_by_hand(world: &World, c: &ClusterFixture, ip: Ipv4Addr) {
    let mut docs = running_documents(world, c, ip).await;
    v1alpha1(&mut docs)["machine"]["features"]["diskQuotaSupport"] = Value::Bool(false);
    let text: String = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let outcome = admin_client(world, c, ip)
        .await
        .apply_configuration(text.as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap_or_else(|e| panic!("{ip}: applying the edit: {e}"));
    assert_eq!(outcome.mode, ApplyMode::Reboot, "{ip}: {outcome:?}");
    // Back when it answers over mTLS running the edit (the reboot takes the simulator's 1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let talosconfig = stored(world, &c.name, "talos", "talosconfig").await;
        let (identity, _) = talos_identity(&talosconfig, c);
        let back = match TalosClient::connect_mtls(
            (ip, 50000).into(),
            &identity,
            ClientOptions::default(),
        )
        .await
        {
            Ok(client) => running_config(&client)
                .await
                .is_ok_and(|t| edited(&mut documents(&t))),
            Err(_) => false,
        };
        if back {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} did not come back from its reboot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn edited(docs: &mut [Value]) -> bool {
    v1alpha1(docs)["machine"]["features"]["diskQuotaSupport"] == Value::Bool(false)
}

fn status_record(world: &World, name: &str) -> serde_json::Value {
    let (out, json) = world.status_json(Some(name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    status_of(&json, name)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_mirror_change_reaches_every_node_without_a_reboot_and_a_second_run_applies_nothing()
 {
    let c = ClusterFixture::new("mirrors", 1, 2);
    let world = converged(&c, "").await;

    let mirror = "https://registry.lan/v2/docker.io";
    let yaml = c.yaml().replace(
        "  controlPlane:\n",
        &format!("  registries:\n    mirrors: {{docker.io: [\"{mirror}\"]}}\n  controlPlane:\n"),
    );
    world.push_file(&c.path(), &yaml, "mirror docker.io");

    // `kiln plan` names each node's re-apply and says it needs no reboot, before anything happens.
    let planned = plan(&world);
    for w in c.wanted() {
        let sentence = format!("re-applies the config of {} without a reboot", w.name);
        assert!(planned.stdout.contains(&sentence), "{sentence}:\n{planned}");
    }
    let before = events(&world).len();

    let run = world.run_once();
    assert!(run.success(), "{run}");
    let all = events(&world);
    let seen = &all[before..];
    assert_dry_run_first(seen, &c, "NoReboot");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Back(_) | Event::Cordon(_))),
        "nothing rebooted nor cordoned:\n{}",
        show(seen)
    );
    for w in c.wanted() {
        let config = world.sim.dumped_config(w.ip).unwrap();
        assert!(config.contains(mirror), "{}: {config}", w.name);
        let mut docs = running_documents(&world, &c, w.ip).await;
        assert!(
            docs.iter()
                .any(|d| d.get("kind").and_then(Value::as_str) == Some("RegistryMirrorConfig")),
            "{}",
            w.name
        );
        assert!(!edited(&mut docs));
    }
    assert_converged(&world, &c).await;

    // Converged: the next run applies nothing, not even a dry run — though it looks at every node,
    // the file having changed (a comment only).
    touch_file(&world, &c, &yaml);
    let mark = events(&world).len();
    let again = world.run_once();
    assert!(again.success(), "{again}");
    let after = events(&world);
    assert!(
        !after[mark..]
            .iter()
            .any(|e| matches!(e, Event::Apply { .. })),
        "{}",
        show(&after[mark..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_changed_by_hand_that_needs_a_reboot_is_put_back_one_node_at_a_time() {
    let c = ClusterFixture::new("handedit", 1, 2);
    // The drift timer: every run looks deep once a second has passed since the last look.
    let world = converged(&c, "drift_interval = \"1s\"").await;
    for w in c.wanted() {
        edit_by_hand(&world, &c, w.ip).await;
    }
    // `kiln plan` sees the drift and says what putting it back costs.
    let planned = plan(&world);
    for w in c.wanted() {
        let sentence = format!("reboots {} to apply its config", w.name);
        assert!(planned.stdout.contains(&sentence), "{sentence}:\n{planned}");
    }
    let before = events(&world).len();

    let run = world.run_once();
    assert!(run.success(), "{run}");
    let all = events(&world);
    let seen = &all[before..];
    let mut applies = assert_dry_run_first(seen, &c, "Reboot");
    applies.sort();
    // Never two nodes down at once: each node is back before the next one's rebooting apply, and
    // each is cordoned before its apply and uncordoned after it is back, one at a time.
    let wanted = c.wanted();
    for (k, at) in applies.iter().enumerate() {
        let Event::Apply { ip, .. } = &seen[*at] else {
            unreachable!()
        };
        let w = wanted.iter().find(|w| w.ip == *ip).unwrap();
        let back = seen[*at..]
            .iter()
            .position(|e| *e == Event::Back(*ip))
            .map(|p| p + at)
            .unwrap_or_else(|| panic!("{} never came back:\n{}", w.name, show(seen)));
        if let Some(next) = applies.get(k + 1) {
            assert!(back < *next, "{} still down:\n{}", w.name, show(seen));
        }
        let cordon = seen
            .iter()
            .position(|e| *e == Event::Cordon(w.name.clone()))
            .unwrap_or_else(|| panic!("{} never cordoned:\n{}", w.name, show(seen)));
        let uncordon = seen
            .iter()
            .position(|e| *e == Event::Uncordon(w.name.clone()))
            .unwrap_or_else(|| panic!("{} never uncordoned:\n{}", w.name, show(seen)));
        assert!(
            cordon < *at && back < uncordon,
            "{}:\n{}",
            w.name,
            show(seen)
        );
        let others_cordoned = seen[cordon..uncordon]
            .iter()
            .any(|e| matches!(e, Event::Cordon(n) if *n != w.name));
        assert!(!others_cordoned, "{}:\n{}", w.name, show(seen));
    }
    for w in &wanted {
        let mut docs = running_documents(&world, &c, w.ip).await;
        assert!(!edited(&mut docs), "{} still runs the edit", w.name);
    }
    assert_converged(&world, &c).await;

    // Put back: the next run, looking at every node again, re-applies nothing.
    touch_file(&world, &c, &c.yaml());
    let mark = events(&world).len();
    let again = world.run_once();
    assert!(again.success(), "{again}");
    let after = events(&world);
    assert!(
        !after[mark..]
            .iter()
            .any(|e| matches!(e, Event::Apply { dry_run: false, .. })),
        "{}",
        show(&after[mark..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_changed_by_hand_is_only_reported_under_report() {
    let c = ClusterFixture::new("handreport", 1, 1);
    let world = converged(&c, "drift_interval = \"1s\"\ndrift_policy = \"report\"").await;
    let loaded = kiln::config::Config::load(&world.config).unwrap();
    assert_eq!(
        loaded.reconcile.drift_policy,
        kiln::plan::DriftPolicy::Report
    );
    assert_eq!(loaded.reconcile.drift_interval, Duration::from_secs(1));
    let worker = c.wanted().pop().unwrap();
    edit_by_hand(&world, &c, worker.ip).await;
    let before = events(&world).len();

    let run = world.run_once();
    assert!(run.success(), "{run}");
    let all = events(&world);
    let kiln_applied = all[before..]
        .iter()
        .any(|e| matches!(e, Event::Apply { dry_run: false, .. } | Event::Cordon(_)));
    assert!(!kiln_applied, "{}", show(&all[before..]));
    let mut docs = running_documents(&world, &c, worker.ip).await;
    assert!(edited(&mut docs), "the edit is left in place");

    let record = status_record(&world, &c.name);
    assert_eq!(record["phase"], "Degraded", "{record}");
    let text = record.to_string();
    assert!(
        text.contains(&worker.name) && text.contains("machine config"),
        "the status names the drifted node: {record}"
    );
}
