//! Issue 19, acceptance 4: a file that stops parsing is *unknown*, never *deleted* (DESIGN.md §7): its
//! running cluster is left alone, and `kiln status` says which file and line are wrong. Likewise a remote
//! that cannot be read is never taken for an empty one.

use serde_json::json;

use crate::checks::{assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::support::World;

#[tokio::test]
async fn a_file_that_becomes_invalid_yaml_leaves_its_cluster_alone_with_a_clear_status() {
    let c = ClusterFixture::new("broken", 1, 1);
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    let commits = world.kiln_commits();
    let vault = world.vault_snapshot().await;
    let vms_before = world.vms();

    // An unclosed flow sequence: the YAML parser stops at the next line.
    let gw = c.gateway();
    let text = c.yaml().replace(
        &format!("nameservers: [{gw}]"),
        &format!("nameservers: [{gw}"),
    );
    assert_ne!(text, c.yaml());
    world.push_file(&c.path(), &text, "a bad edit");
    let bad = crate::support::kiln()
        .arg("validate")
        .arg(world.repos.work.join("clusters"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "the broken fixture still validates");

    let mark = world.request_mark();
    let run = world.run_once_for(std::time::Duration::from_secs(30));
    let writes = world.writes_since(mark);
    assert!(
        writes.is_empty(),
        "kiln wrote to Proxmox while the file was unreadable: {writes:?}\n{run}"
    );
    assert_eq!(world.vms(), vms_before, "the cluster's VMs changed");
    assert_exact_vms(&world, &[&c], &[]);
    assert_eq!(
        world.kiln_commits(),
        commits,
        "kiln committed for an unreadable file"
    );
    assert_eq!(world.vault_snapshot().await, vault, "kiln wrote to Vault");
    assert!(!run.success(), "a Blocked cluster is not converged:\n{run}");

    let (out, json) = world.status_json(Some(&c.name));
    assert!(out.success(), "kiln status:\n{out}");
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &c.name).unwrap_or_else(|| panic!("no {} in {json}", c.name));
    assert_eq!(record["phase"], "Blocked", "{record}");
    let said = record.to_string();
    let names_place =
        regex::Regex::new(&format!(r"clusters/{}\.yaml(:\d+|[^\n]*line \d+)", c.name)).unwrap();
    assert!(
        names_place.is_match(&said),
        "the status should name clusters/{}.yaml and the line: {record}",
        c.name
    );
}

#[tokio::test]
async fn a_remote_that_cannot_be_read_destroys_nothing() {
    let c = ClusterFixture::new("cutoff", 1, 1);
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    let vms_before = world.vms();

    // allow_empty is on and the grace is 0s, so only the rule under test stands between a misread
    // remote and the last cluster's VMs. Proxmox refuses to shut VMs down meanwhile: kiln sees the
    // deletion and pushes the removal of the generated files, but cannot go on to destroy the VMs.
    // (Not the listing: the start-up preflight reads it, and kiln would stop before seeing Git.)
    world.write_config(true);
    world.pve.ctl(
        json!({"cmd": "fail", "method": "POST", "suffix": "/status/shutdown",
                         "status": 500, "message": "e2e: shutdown refused", "times": 100000}),
    );
    world.delete_clusters(&[&c.name]);
    let commits = world.kiln_commits();
    let run = world.run_once_for(std::time::Duration::from_secs(8));
    assert!(!run.success(), "{run}");
    assert_eq!(
        world.kiln_commits().len(),
        commits.len() + 1,
        "kiln did not see the deletion (no removal commit):\n{run}"
    );
    assert_eq!(world.vms(), vms_before);

    // Now Git cannot be read, and Proxmox answers again. The cache still holds the tip without the
    // file and the removal is already pushed: only "Git unreadable → destroy nothing" (DESIGN.md §7)
    // keeps the decommission from going on.
    let moved = world.repos.bare.with_extension("git.away");
    std::fs::rename(&world.repos.bare, &moved).unwrap();
    world.pve.ctl(json!({"cmd": "clear_failures"}));
    let mark = world.request_mark();
    let run = world.run_once_for(std::time::Duration::from_secs(10));
    let writes = world.writes_since(mark);
    assert!(
        writes.is_empty(),
        "kiln wrote to Proxmox while Git could not be read: {writes:?}\n{run}"
    );
    assert_eq!(
        world.vms(),
        vms_before,
        "VMs changed while Git could not be read"
    );
    assert!(
        !run.success(),
        "a run that cannot read Git has not converged:\n{run}"
    );
    std::fs::rename(&moved, &world.repos.bare).unwrap();
}
