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

#[tokio::test]
async fn kiln_restore_brings_etcd_back_at_the_snapshots_revision() {
    let c = ClusterFixture::new("rst", 1, 1);
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
        "back rst up",
    );
    let out = world.run_once();
    assert!(out.success(), "kiln run --once:\n{out}");

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
