//! Issue 19, acceptance 5 (DESIGN.md §7, crash safety): `kill -9` of the daemon at each point tied to
//! progress, then a restart with `run --once`, converges to exactly the wanted VMs, one secrets bundle
//! (Vault version 1), one bootstrap and one kiln commit. One test per point, so they run in parallel.
//! A half-made VM left by a kill -9 goes with its cluster when the file is deleted (issue 24 point 5).

use std::time::Duration;

use crate::checks::{assert_bootstraps, assert_converged, assert_exact_vms};
use crate::fixture::ClusterFixture;
use crate::support::World;

async fn killed_at_then_restarted(point: &str) {
    let c = ClusterFixture::new(&format!("crash-{point}"), 1, 2);
    let world = World::start(vec![c.clone()]).await;

    let mut daemon = world.spawn_daemon(Some(point));
    daemon.wait_paused(point, Duration::from_secs(120));
    let log = daemon.stderr_text();
    daemon.kill9();

    let run = world.run_once();
    assert!(
        run.success(),
        "restart after kill -9 at {point}:\n{run}\n--- the killed daemon's log ---\n{log}"
    );
    assert_exact_vms(&world, &[&c], &[]);
    assert_converged(&world, &c).await;
    assert_bootstraps(&world, 1);
    let commits = world.kiln_commits();
    assert_eq!(
        commits.len(),
        1,
        "kiln commits after the restart: {commits:?}"
    );
}

#[tokio::test]
async fn kill_9_after_the_bundle_is_stored() {
    killed_at_then_restarted("bundle-stored").await;
}

#[tokio::test]
async fn kill_9_after_the_first_clone() {
    killed_at_then_restarted("vm-cloned").await;
}

#[tokio::test]
async fn kill_9_while_vms_start() {
    killed_at_then_restarted("vm-started").await;
}

#[tokio::test]
async fn kill_9_after_the_first_config_is_applied() {
    killed_at_then_restarted("config-applied").await;
}

#[tokio::test]
async fn kill_9_after_the_kubeconfig_is_stored() {
    killed_at_then_restarted("kubeconfig-stored").await;
}

/// Issue 24: the bundle's value is in Vault, its custom metadata (the cluster-uid mirror) not yet.
#[tokio::test]
async fn kill_9_between_the_bundle_value_and_its_metadata() {
    killed_at_then_restarted("secret-written").await;
}

/// Issue 24: Bootstrap answered, the `bootstrapped-at` marker not yet written. The restart must see
/// etcd on the control plane and write the marker — never bootstrap again (one bootstrap, checked).
#[tokio::test]
async fn kill_9_after_bootstrap_before_the_marker() {
    killed_at_then_restarted("etcd-bootstrapped").await;
}

/// A kill -9 right after the first clone leaves a half-made VM: cloned with its name and marker, no
/// tags, stopped. Deleting the cluster's file must take it too (its marker proves it is kiln's), and
/// the restart must still know the cluster at all (its record is on disk before the first clone).
#[tokio::test]
async fn a_half_made_vm_goes_with_its_decommissioned_cluster() {
    let c = ClusterFixture::new("crash-halfmade", 1, 0);
    let world = World::start(vec![c.clone()]).await;
    let mut daemon = world.spawn_daemon(Some("vm-cloned"));
    daemon.wait_paused("vm-cloned", Duration::from_secs(120));
    daemon.kill9();
    let vmid = c.vmids()[0];
    let vm = world.vms().get(&vmid).cloned().expect("the clone exists");
    let tags = vm["config"]["tags"].as_str().unwrap_or("");
    assert!(
        tags.is_empty(),
        "the clone is half-made (no tags yet): {vm}"
    );

    world.delete_clusters(&[&c.name]);
    world.write_config(true); // the last file: only allow_empty lets it go
    let run = world.run_once();
    assert!(run.success(), "decommission of a half-made cluster:\n{run}");
    assert_exact_vms(&world, &[], &[]);
}
