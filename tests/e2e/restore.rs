//! Issue 30: `kiln restore` through the binary, exactly as RESTORE.md tells an operator: the
//! snapshot is taken by `kiln backup now`, the cluster carries on, and the restore brings etcd back
//! at the snapshot's revision on the simulated nodes (`kiln sim talos`, a real bbolt file per
//! snapshot); without `--yes` it only checks the snapshot and prints the plan.

use serde_json::Value;

use crate::fixture::ClusterFixture;
use crate::support::{World, kiln};

fn backup_now(world: &World, cluster: &str) {
    let mut cmd = kiln();
    cmd.args(["backup", "now", cluster, "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert!(out.success(), "kiln backup now {cluster}:\n{out}");
}

/// (id, revision) of every snapshot, oldest first.
fn snapshots(world: &World, cluster: &str) -> Vec<(String, i64)> {
    let mut cmd = kiln();
    cmd.args(["backup", "list", cluster, "--format", "json", "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert!(out.success(), "kiln backup list {cluster}:\n{out}");
    let entries: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let mut list: Vec<(String, i64)> = entries
        .iter()
        .map(|e| {
            (
                e["manifest"]["id"].as_str().unwrap().to_owned(),
                e["manifest"]["revision"].as_i64().unwrap(),
            )
        })
        .collect();
    list.sort();
    list
}

/// A world where `c` is converged with `spec.backup` to a folder, encrypted to a new operator
/// identity; the identity's file.
async fn backed_up(c: &ClusterFixture) -> (World, std::path::PathBuf) {
    let world = World::start(vec![c.clone()]).await;
    let identity = age::x25519::Identity::generate();
    let id_file = world.dir.path().join("operator.agekey");
    std::fs::write(
        &id_file,
        format!("{}\n", kiln::backup::crypt::identity_to_string(&identity)),
    )
    .unwrap();
    let folder = world.dir.path().join("backups");
    world.push_file(
        &c.path(),
        &format!(
            "{}  backup:\n    schedule: 6h\n    keep: 5\n    destination: {}\n    ageRecipients: [\"{}\"]\n",
            c.yaml(),
            folder.display(),
            identity.to_public()
        ),
        &format!("back {} up", c.name),
    );
    let out = world.run_once();
    assert!(out.success(), "kiln run --once:\n{out}");
    (world, id_file)
}

#[tokio::test]
async fn kiln_restore_brings_etcd_back_at_the_snapshots_revision() {
    let c = ClusterFixture::new("rst", 1, 1);
    let (world, id_file) = backed_up(&c).await;

    // RESTORE.md, step 1: the snapshot to restore, then the cluster goes on changing.
    backup_now(&world, &c.name);
    let (id, revision) = snapshots(&world, &c.name)[0].clone();
    let out = world.run_once();
    assert!(out.success(), "kiln run --once:\n{out}");
    backup_now(&world, &c.name);

    // Step 2: without --yes, the snapshot is decrypted and checked and the plan printed; nothing
    // happens to the nodes.
    let restore = |yes: bool| {
        let mut cmd = kiln();
        cmd.args(["restore", &c.name, "--snapshot", &id, "--identity"])
            .arg(&id_file)
            .arg("--config")
            .arg(&world.config);
        if yes {
            cmd.arg("--yes");
        }
        world.run_command(cmd)
    };
    let out = restore(false);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stdout.contains("checked against its manifest"), "{out}");
    assert!(
        out.stdout
            .contains("EPHEMERAL is wiped on EVERY control plane (1)"),
        "{out}"
    );
    assert!(
        out.stdout.contains(&format!("revision {revision}")),
        "{out}"
    );
    assert!(out.stdout.contains("Workers untouched: rst-wk-2"), "{out}");
    assert!(!world.sim.log_text().contains("etcd recovered"));

    // A wrong identity decrypts nothing and touches nothing.
    let stranger = world.dir.path().join("stranger.agekey");
    std::fs::write(
        &stranger,
        format!(
            "{}\n",
            kiln::backup::crypt::identity_to_string(&age::x25519::Identity::generate())
        ),
    )
    .unwrap();
    let mut cmd = kiln();
    cmd.args(["restore", &c.name, "--snapshot", &id, "--yes", "--identity"])
        .arg(&stranger)
        .arg("--config")
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert_eq!(out.code, Some(1), "{out}");

    // Step 3: with --yes.
    let out = restore(true);
    assert!(out.success(), "kiln restore --yes:\n{out}");
    assert!(
        out.stdout
            .contains(&format!("restored from {id} at revision {revision}")),
        "{out}"
    );
    let recovered: Vec<String> = world
        .sim
        .log_text()
        .lines()
        .map(crate::support::plain)
        .filter(|l| l.contains("etcd recovered from the snapshot"))
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(
        recovered[0].contains(&format!("revision={revision}")),
        "{recovered:?}"
    );
    assert!(
        world.sim.violations().is_empty(),
        "{:?}",
        world.sim.violations()
    );

    // Step 4: kiln takes the cluster back as it is, and a new snapshot is of the restored etcd.
    let out = world.run_once();
    assert!(out.success(), "kiln run --once after the restore:\n{out}");
    backup_now(&world, &c.name);
    let last = snapshots(&world, &c.name).last().unwrap().1;
    assert!(last >= revision, "{last} < {revision}");
}

/// DESIGN §7: with the daemon running (it holds the `state_dir` lock), `kiln restore --yes` asks it
/// to hold the cluster and waits for its acknowledgement; while the restore runs the daemon's
/// status says `Held` by the restore, and once it ends the daemon takes the cluster back.
#[tokio::test]
async fn a_restore_while_the_daemon_runs_goes_through_its_hold() {
    let c = ClusterFixture::new("rsthold", 1, 0);
    let (world, id_file) = backed_up(&c).await;
    backup_now(&world, &c.name);
    let (id, revision) = snapshots(&world, &c.name)[0].clone();

    let daemon = world.spawn_daemon(None);
    let mut restore = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["restore", &c.name, "--snapshot", &id, "--yes", "--identity"])
        .arg(&id_file)
        .arg("--config")
        .arg(&world.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let held = |world: &World| {
        let (_, json) = world.status_json(Some(&c.name));
        crate::checks::status_of(&json?, &c.name)?["conditions"]
            .as_array()?
            .iter()
            .find(|k| k["type"] == "Held" && k["status"] == true)
            .and_then(|k| k["message"].as_str().map(str::to_owned))
    };
    let started = std::time::Instant::now();
    let message = loop {
        if let Some(m) = held(&world) {
            break m;
        }
        assert!(
            restore.try_wait().unwrap().is_none(),
            "the restore ended before the daemon was seen holding {}",
            c.name
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the daemon never held {}:\n{}",
            c.name,
            daemon.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(message.contains("kiln restore (pid"), "{message}");
    let out = restore.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kiln restore --yes:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("the running kiln holds rsthold"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("restored from {id} at revision {revision}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("the running kiln reconciles rsthold again"),
        "{stdout}"
    );
    assert!(
        world.sim.violations().is_empty(),
        "{:?}",
        world.sim.violations()
    );
    // The hold is gone: the daemon's next cycles drop the condition.
    let started = std::time::Instant::now();
    while held(&world).is_some() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the Held condition outlived the restore"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(daemon);
}
