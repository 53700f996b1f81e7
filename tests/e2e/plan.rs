//! `kiln plan` against the live world (issue 19, DESIGN.md §8): judged against what Proxmox, Vault and
//! the Talos nodes show, it names what would change, exits 0 / 2 like `terraform plan
//! -detailed-exitcode`, and writes nothing anywhere — no Proxmox write, no Vault path, no commit.

use crate::fixture::ClusterFixture;
use crate::support::{Outcome, World, kiln};

fn plan(world: &World) -> Outcome {
    let mut cmd = kiln();
    cmd.args(["plan", "--config"])
        .arg(&world.config)
        .arg("--repo")
        .arg(&world.repos.work);
    world.run_command(cmd)
}

#[tokio::test]
async fn plan_names_what_would_change_against_the_live_world_and_writes_nothing() {
    let c = ClusterFixture::new("planned", 1, 1);
    let world = World::start(vec![c.clone()]).await;

    // Nothing exists yet: every VM is to be created.
    let mark = world.request_mark();
    let out = plan(&world);
    assert_eq!(out.code, Some(2), "a plan with changes exits 2:\n{out}");
    for w in c.wanted() {
        assert!(
            out.stdout.contains(&w.name),
            "the plan does not name {}:\n{out}",
            w.name
        );
    }
    assert_eq!(world.writes_since(mark), vec![], "plan wrote to Proxmox");
    assert_eq!(world.vms().len(), 1, "plan created a VM");
    assert!(
        world.vault_snapshot().await.values().all(Option::is_none),
        "plan wrote to Vault"
    );
    assert!(world.kiln_commits().is_empty(), "plan committed");
    assert!(
        world.sim.dumped_config(c.ip(1)).is_none(),
        "plan configured a node"
    );

    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");

    // Converged: nothing to do.
    let vault = world.vault_snapshot().await;
    let commits = world.kiln_commits();
    let mark = world.request_mark();
    let out = plan(&world);
    assert_eq!(
        out.code,
        Some(0),
        "a converged world plans no change:\n{out}"
    );

    // A pull request adds a worker (an uncommitted edit in the work tree): plan names the new VM only.
    let mut grown = c.clone();
    grown.workers += 1;
    world.pull();
    world.repos.write(&grown.path(), &grown.yaml());
    world.validate_work_tree();
    let out = plan(&world);
    assert_eq!(out.code, Some(2), "adding a worker is a change:\n{out}");
    let new = grown.wanted().pop().unwrap();
    assert!(
        out.stdout.contains(&new.name),
        "the plan does not name {}:\n{out}",
        new.name
    );

    assert_eq!(world.writes_since(mark), vec![], "plan wrote to Proxmox");
    assert_eq!(world.vault_snapshot().await, vault, "plan wrote to Vault");
    assert_eq!(world.kiln_commits(), commits, "plan committed");
    assert!(
        !world.vms().contains_key(&new.vmid),
        "plan created {}",
        new.name
    );
}
