//! Issue 27, credentials (DESIGN.md §5, §7): the stored kubeconfig and talosconfig are replaced once a
//! third of their life remains, check-and-set, and never by a run outside that window; `kiln rotate`
//! replaces both now, once, with no daemon (it takes the lock) and through a running daemon (which
//! holds it). Seen from outside: each path's `current_version` in Vault's metadata, the daemon's log,
//! and the renewed credentials used as a person uses them (nodes listed with the kubeconfig, etcd
//! members with the talosconfig).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::checks::{assert_converged, status_of};
use crate::credentials::{assert_credentials_work, stored};
use crate::fixture::ClusterFixture;
use crate::support::{World, kiln};

/// kiln.toml with `credential_lifetime` set and a 1 s drift interval, so every `run --once` looks at
/// the secret store (the renewal check) even when nothing else changed.
fn configure(world: &World, lifetime: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    let text = text
        .replacen(
            "[talos]\n",
            &format!("[talos]\ncredential_lifetime = \"{lifetime}\"\n"),
            1,
        )
        .replacen("[reconcile]\n", "[reconcile]\ndrift_interval = \"1s\"\n", 1);
    std::fs::write(&world.config, text).unwrap();
    let parsed = kiln::config::Config::load(&world.config).expect("the test's kiln.toml loads");
    assert_eq!(
        parsed.talos.credential_lifetime,
        humantime::parse_duration(lifetime).unwrap()
    );
    assert_eq!(parsed.reconcile.drift_interval, Duration::from_secs(1));
}

/// A one-node cluster converged by a first run, with `lifetime`.
async fn converged(name: &str, lifetime: &str) -> (World, ClusterFixture) {
    let c = ClusterFixture::new(name, 1, 0);
    let world = World::start(vec![c.clone()]).await;
    configure(&world, lifetime);
    let run = world.run_once();
    assert!(run.success(), "provisioning {name}:\n{run}");
    assert_converged(&world, &c).await;
    (world, c)
}

/// A stored credential as Vault's metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    version: u64,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

async fn stamp(world: &World, cluster: &str, leaf: &str) -> Stamp {
    let meta = world
        .vault_metadata(cluster, leaf)
        .await
        .unwrap_or_else(|| panic!("no kubernetes/{cluster}/{leaf} in Vault"));
    let time = |key: &str| {
        let raw = meta["custom_metadata"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{leaf}: no custom metadata {key}: {meta}"));
        OffsetDateTime::parse(raw, &Rfc3339).unwrap_or_else(|_| panic!("{leaf}: {key} = {raw}"))
    };
    Stamp {
        version: meta["current_version"].as_u64().expect("current_version"),
        issued_at: time("issued-at"),
        expires_at: time("expires-at"),
    }
}

async fn stamps(world: &World, cluster: &str) -> (Stamp, Stamp) {
    (
        stamp(world, cluster, "kubeconfig").await,
        stamp(world, cluster, "talos").await,
    )
}

/// When kiln last looked at the cluster's secrets, Talos and Kubernetes (records.json): a run that
/// moved it did check renewal, so "not renewed" is not "not looked at".
fn deep_checked_at(state_dir: &Path, cluster: &str) -> String {
    let text = std::fs::read_to_string(state_dir.join("records.json")).unwrap();
    let records: Value = serde_json::from_str(&text).unwrap();
    records["clusters"][cluster]["deep_checked_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no deep_checked_at for {cluster} in {records}"))
        .to_owned()
}

/// `run --once`, which must succeed and must have looked deep. With a 1 s drift interval the deep
/// look is due once the clock is in a later second than the last one (`engine::drift_check_due`),
/// so the run starts there.
fn deep_run(world: &World, cluster: &str, what: &str) {
    let before = deep_checked_at(&world.state_dir, cluster);
    let last = OffsetDateTime::parse(&before, &Rfc3339).unwrap();
    let next_second = OffsetDateTime::from_unix_timestamp(last.unix_timestamp() + 1).unwrap()
        + time::Duration::milliseconds(10);
    let wait = next_second - OffsetDateTime::now_utc();
    if wait.is_positive() {
        std::thread::sleep(wait.unsigned_abs());
    }
    let run = world.run_once();
    assert!(run.success(), "{what}:\n{run}");
    assert_ne!(
        deep_checked_at(&world.state_dir, cluster),
        before,
        "{what}: the run did not look at the secret store\n{run}"
    );
}

fn rotate(world: &World, cluster: &str) -> crate::support::Outcome {
    let mut cmd = kiln();
    cmd.args(["rotate", cluster, "--timeout", "60s", "--config"])
        .arg(&world.config);
    world.run_command(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_in_its_renewal_window_is_replaced_exactly_once_and_never_outside_it() {
    let lifetime = Duration::from_secs(90);
    let (world, c) = converged("renewal", "90s").await;
    let (kc, tc) = stamps(&world, &c.name).await;
    assert_eq!(
        (kc.version, tc.version),
        (1, 1),
        "stored once by provisioning"
    );
    for s in [&kc, &tc] {
        assert_eq!(
            s.expires_at - s.issued_at,
            lifetime,
            "the credential_lifetime is recorded"
        );
    }
    let old_cert = stored(&world, &c.name, "kubeconfig", "client.crt").await;

    // Outside the window (less than two thirds of the life gone): runs that look deep rewrite nothing.
    for i in 0..2 {
        deep_run(&world, &c.name, &format!("run {i} outside the window"));
        let now = OffsetDateTime::now_utc();
        assert!(
            now < kc.expires_at.min(tc.expires_at) - lifetime / 3,
            "the machine is too slow for this test: the window opened during the runs"
        );
        assert_eq!(
            stamps(&world, &c.name).await,
            (kc.clone(), tc.clone()),
            "nothing renewed outside the window"
        );
    }
    let (_, json) = world.status_json(Some(&c.name));
    let json = json.expect("kiln status --format json");
    let left = json["credentials"]["kubeconfig"]["expires_in_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("no kubeconfig expiry in status: {json}"));
    assert!((1..=90).contains(&left), "time to expiry {left}s: {json}");
    assert!(json["credentials"]["talosconfig"]["expires_in_seconds"].is_i64());

    // The clock reaches both windows (a third of the life left, plus a second; the kubeconfig's
    // opens 10 s earlier, its certificate being back-dated as Talos does).
    let window = kc.expires_at.max(tc.expires_at) - lifetime / 3 + time::Duration::seconds(1);
    let wait = window - OffsetDateTime::now_utc();
    if wait.is_positive() {
        std::thread::sleep(wait.unsigned_abs());
    }
    let opened = Instant::now();
    deep_run(&world, &c.name, "the run inside the window");
    deep_run(&world, &c.name, "the run after the renewal");
    assert!(
        opened.elapsed() < lifetime / 3,
        "the runs took longer than the renewed credential's own window: the test cannot judge"
    );
    let (kc2, tc2) = stamps(&world, &c.name).await;
    assert_eq!(kc2.version, 2, "the kubeconfig replaced exactly once");
    assert_eq!(tc2.version, 2, "the talosconfig replaced exactly once");
    assert!(kc2.issued_at > kc.issued_at && kc2.expires_at > kc.expires_at);
    assert_eq!(kc2.expires_at - kc2.issued_at, lifetime);
    let new_cert = stored(&world, &c.name, "kubeconfig", "client.crt").await;
    assert_ne!(
        new_cert.expose(),
        old_cert.expose(),
        "a new client certificate"
    );

    // The renewed credentials work as a person uses them.
    assert_credentials_work(&world, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_rotate_renews_both_now_once_without_and_with_a_daemon() {
    let (world, c) = converged("rotate", "8760h").await;
    let (kc, tc) = stamps(&world, &c.name).await;
    assert_eq!((kc.version, tc.version), (1, 1));

    // No daemon: kiln rotate takes the lock and renews in process.
    let out = rotate(&world, &c.name);
    assert!(out.success(), "kiln rotate without a daemon:\n{out}");
    assert!(
        !out.stderr.contains("asking the running kiln"),
        "no daemon ran:\n{out}"
    );
    let (kc2, tc2) = stamps(&world, &c.name).await;
    assert_eq!(
        (kc2.version, tc2.version),
        (2, 2),
        "each renewed once:\n{out}"
    );
    assert!(kc2.issued_at > kc.issued_at && tc2.issued_at > tc.issued_at);
    // The status shows the new credentials at once, before any run looks again.
    let (_, json) = world.status_json(Some(&c.name));
    let json = json.expect("kiln status --format json");
    for which in ["kubeconfig", "talosconfig"] {
        assert_eq!(json["credentials"][which]["version"], 2, "{which}: {json}");
    }
    // A fresh credential is not due: a run that looks deep leaves it.
    deep_run(&world, &c.name, "the run after kiln rotate");
    assert_eq!(stamps(&world, &c.name).await, (kc2.clone(), tc2.clone()));
    assert_credentials_work(&world, &c).await;

    // A daemon holds the lock: kiln rotate asks it and waits for its answer.
    let mut daemon = world.spawn_daemon(None);
    let lock = world.state_dir.join("kiln.lock");
    let pid_line = format!("pid {}", daemon.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .lines()
        .any(|l| l == pid_line)
    {
        daemon.assert_running();
        assert!(
            Instant::now() < deadline,
            "the daemon did not take the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = rotate(&world, &c.name);
    assert!(out.success(), "kiln rotate with a daemon:\n{out}");
    assert!(
        out.stderr.contains("asking the running kiln"),
        "it asked the daemon:\n{out}"
    );
    daemon.assert_running();
    let (kc3, tc3) = stamps(&world, &c.name).await;
    assert_eq!((kc3.version, tc3.version), (3, 3), "each renewed once more");
    let log = daemon.stderr_text();
    for which in ["kubeconfig", "talosconfig"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("kiln rotate: {which}: renewed"))
                    && l.contains(&format!("cluster={}", c.name))),
            "the daemon renewed the {which}:\n{log}"
        );
    }
    assert!(
        !world.state_dir.join("requests/rotate-rotate.json").exists(),
        "the request is gone once served"
    );
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(stamps(&world, &c.name).await, (kc3, tc3), "nothing more");
    assert_credentials_work(&world, &c).await;

    let (_, json) = world.status_json(None);
    let json = json.expect("kiln status --format json");
    let rec = status_of(&json, &c.name).expect("the cluster's status");
    assert!(
        rec["credentials"]["kubeconfig"]["expires_in_seconds"]
            .as_i64()
            .is_some_and(|s| s > 364 * 24 * 3600),
        "a year left: {rec}"
    );
    let mut cmd = kiln();
    cmd.args(["status", "--config"]).arg(&world.config);
    let text = world.run_command(cmd);
    assert!(text.success(), "{text}");
    let line = format!("{}: kubeconfig expires in 11months", c.name);
    assert!(
        text.stdout.contains("credentials:\n")
            && text.stdout.contains(&line)
            && text.stdout.contains("; talosconfig expires in 11months"),
        "kiln status (text) shows the time to expiry:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_between_the_value_and_its_dates_is_finished_by_the_next_lock_holder() {
    let (world, c) = converged("rotcrash", "8760h").await;
    let (kc, tc) = stamps(&world, &c.name).await;

    // kiln rotate (no daemon: it serves in process) stops right after the kubeconfig's new value,
    // before its metadata; kill -9 there.
    let stderr = world.dir.path().join("rotate-paused.stderr");
    let mut child = kiln()
        .args(["rotate", &c.name, "--config"])
        .arg(&world.config)
        .env("KILN_TEST_PAUSE_AT", "credential-renewed")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.trim() == "KILN PAUSED AT credential-renewed")
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln rotate exited before the pause:\n{text}"
        );
        assert!(
            Instant::now() < deadline,
            "kiln rotate did not pause:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let half = stamp(&world, &c.name, "kubeconfig").await;
    assert_eq!(half.version, 2, "the new value was written");
    assert_eq!(
        (half.issued_at, half.expires_at),
        (kc.issued_at, kc.expires_at),
        "under the old dates"
    );
    assert_eq!(stamp(&world, &c.name, "talos").await, tc, "not reached");
    assert!(
        world
            .state_dir
            .join(format!("requests/rotate-{}.json", c.name))
            .exists(),
        "the request is still queued"
    );

    // The next process to hold the lock serves the queued request: the kubeconfig is renewed once
    // more (its dates said "issued before the request"), the talosconfig once.
    deep_run(&world, &c.name, "the run after the crash");
    let (kc2, tc2) = stamps(&world, &c.name).await;
    assert_eq!(
        (kc2.version, tc2.version),
        (3, 2),
        "finished, nothing twice more"
    );
    assert!(kc2.issued_at > kc.issued_at && tc2.issued_at > tc.issued_at);
    assert!(
        !world
            .state_dir
            .join(format!("requests/rotate-{}.json", c.name))
            .exists(),
        "the request is answered"
    );
    deep_run(&world, &c.name, "a run after that");
    assert_eq!(stamps(&world, &c.name).await, (kc2, tc2), "nothing more");
    assert_credentials_work(&world, &c).await;
}
