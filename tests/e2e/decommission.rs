//! Issue 19, acceptance 3: deleting a cluster file destroys exactly that cluster's VMs, and only after
//! the removal of its generated files is pushed; foreign VMs, the template, other clusters and a
//! protected cluster are never touched; an empty clusters folder destroys nothing without `allow_empty`.

use crate::checks::{assert_converged, assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::support::World;

const FOREIGN: u32 = 777;

/// Requests since `mark` that touched one of these VMIDs other than by reading.
fn writes_to(world: &World, mark: usize, vmids: &[u32]) -> Vec<(String, String)> {
    world
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| {
            vmids.iter().any(|id| {
                let needle = format!("/qemu/{id}");
                p.ends_with(&needle) || p.contains(&format!("{needle}/"))
            })
        })
        .collect()
}

#[tokio::test]
async fn deleting_a_file_destroys_only_its_cluster_after_the_removal_is_pushed() {
    let gone = ClusterFixture::new("gone", 1, 1);
    let kept = ClusterFixture::new("kept", 1, 0);
    let guarded = ClusterFixture::new("guarded", 1, 0).protected();
    let world = World::start(vec![gone.clone(), kept.clone(), guarded.clone()]).await;
    world.add_foreign_vm(FOREIGN, "hand-made");
    let template_before = world.pve.vm(9000);
    let foreign_before = world.pve.vm(FOREIGN);

    let run = world.run_once();
    assert!(run.success(), "provisioning three clusters:\n{run}");
    for c in [&gone, &kept, &guarded] {
        assert_converged(&world, c).await;
    }
    assert_exact_vms(&world, &[&gone, &kept, &guarded], &[FOREIGN]);
    let untouchable: Vec<u32> = [kept.vmids(), guarded.vmids(), vec![FOREIGN, 9000]].concat();

    // The file goes, but the remote refuses kiln's push: nothing may be destroyed.
    world.delete_clusters(&[&gone.name]);
    world.refuse_pushes(true);
    let mark = world.request_mark();
    let run = world.run_once_for(std::time::Duration::from_secs(30));
    assert!(
        !run.success(),
        "a decommission whose removal commit was refused converged:\n{run}"
    );
    assert_eq!(
        writes_to(&world, mark, &gone.vmids()),
        Vec::<(String, String)>::new(),
        "VMs were touched before the removal commit was pushed"
    );
    assert_exact_vms(&world, &[&gone, &kept, &guarded], &[FOREIGN]);

    // Pushes work again: the removal is committed, then the VMs go.
    world.refuse_pushes(false);
    let commits_before = world.kiln_commits();
    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "decommission of {}:\n{run}", gone.name);
    assert_exact_vms(&world, &[&kept, &guarded], &[FOREIGN]);
    assert_eq!(
        writes_to(&world, mark, &untouchable),
        Vec::<(String, String)>::new()
    );
    let commits = world.kiln_commits();
    assert_eq!(
        commits.len(),
        commits_before.len() + 1,
        "one removal commit: {commits:?}"
    );
    let files = world.gitops_files();
    assert!(
        !files
            .iter()
            .any(|f| f.contains(&format!("/{}/", gone.name))),
        "{}'s generated files are still on the remote: {files:?}",
        gone.name
    );
    for c in [&kept, &guarded] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("gitops/core/clusters/{}/", c.name))),
            "{}'s registration (DESIGN.md §6: gitops/core/clusters/<name>/) is not on the remote: {files:?}",
            c.name
        );
    }
    assert_eq!(world.pve.vm(9000), template_before, "the template changed");
    assert_eq!(
        world.pve.vm(FOREIGN),
        foreign_before,
        "the foreign VM changed"
    );
    // on_decommission = "retain" (the default): the secrets stay, marked, for an operator to destroy.
    for leaf in ["secrets", "kubeconfig", "talos"] {
        let meta = world
            .vault_metadata(&gone.name, leaf)
            .await
            .unwrap_or_else(|| panic!("{}'s {leaf} was deleted, not retained", gone.name));
        assert!(
            meta["custom_metadata"]["kiln-decommissioned-at"].is_string(),
            "{}'s {leaf} is not marked decommissioned: {}",
            gone.name,
            meta["custom_metadata"]
        );
    }

    // Both remaining files go. With allow_empty = false an empty clusters folder is taken for a
    // mistake: nothing is destroyed.
    world.delete_clusters(&[&kept.name, &guarded.name]);
    let mark = world.request_mark();
    let _ = world.run_once_for(std::time::Duration::from_secs(30));
    assert_eq!(
        writes_to(&world, mark, &untouchable),
        Vec::<(String, String)>::new(),
        "an empty clusters folder destroyed something without allow_empty"
    );
    assert_exact_vms(&world, &[&kept, &guarded], &[FOREIGN]);

    // allow_empty = true: the last unprotected cluster is decommissioned; the protected one is not
    // touched at all and says why.
    world.write_config(true);
    let mark = world.request_mark();
    let run = world.run_once();
    assert_exact_vms(&world, &[&guarded], &[FOREIGN]);
    let untouchable: Vec<u32> = [guarded.vmids(), vec![FOREIGN, 9000]].concat();
    assert_eq!(
        writes_to(&world, mark, &untouchable),
        Vec::<(String, String)>::new(),
        "the protected cluster, the foreign VM or the template was touched:\n{run}"
    );
    assert!(
        !run.success(),
        "a protected cluster whose file is gone is Blocked, so the run has not converged:\n{run}"
    );
    let (out, json) = world.status_json(Some(&guarded.name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &guarded.name).unwrap_or_else(|| panic!("{json}"));
    assert_eq!(record["phase"], "Blocked", "{record}");
    assert!(
        record.to_string().contains("deletionProtection"),
        "the status should name deletionProtection: {record}"
    );
    assert_eq!(world.pve.vm(9000), template_before);
    assert_eq!(world.pve.vm(FOREIGN), foreign_before);
}
