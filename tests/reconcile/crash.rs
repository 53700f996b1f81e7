//! Issue 19, acceptance 5 (DESIGN.md §7, crash safety): `kill -9` of the daemon at each point tied to
//! progress, then a restart with `run --once`, converges to exactly the wanted VMs, one secrets bundle
//! (Vault version 1), one bootstrap and one kiln commit. One test per point, so they run in parallel.

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
