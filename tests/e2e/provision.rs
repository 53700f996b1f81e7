//! Issue 19, acceptance 1 and 2: a new cluster file becomes a running cluster in one `kiln run --once`,
//! and a second run — or a daemon's cycle — costs one Proxmox listing and writes nothing anywhere.

use std::process::Command;
use std::time::Duration;

use crate::checks::{assert_bootstraps, assert_converged, assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::support::World;

/// The status table's columns (`StatusBook::table`; widths follow the content).
const HEADER: [&str; 5] = ["CLUSTER", "PHASE", "NODES", "REVISION", "MESSAGE"];

#[tokio::test]
async fn a_new_cluster_file_converges_and_a_second_run_is_a_no_op() {
    let c = ClusterFixture::new("fresh", 3, 2);
    let world = World::start(vec![c.clone()]).await;
    let seeded_tip = world.repos.remote_tip();

    let run = world.run_once();
    assert!(run.success(), "first run --once:\n{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(HEADER.iter().copied())),
        "no status table:\n{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&c.name) && l.contains("Ready") && l.contains("5/5")),
        "the table does not show {} Ready with 5/5 nodes:\n{run}",
        c.name
    );

    // Proxmox: the pattern's VMs, nothing else; every node configured; one bootstrap; Vault's paths.
    assert_exact_vms(&world, &[&c], &[]);
    assert_converged(&world, &c).await;
    assert_bootstraps(&world, 1);

    // Git: exactly one kiln commit, on top of the seeded tip, touching only gitops/.
    let commits = world.kiln_commits();
    assert_eq!(commits.len(), 1, "kiln commits: {commits:?}");
    assert_eq!(
        crate::gitrepo::git(
            &world.repos.bare,
            &["rev-parse", &format!("{}^", commits[0])]
        ),
        seeded_tip,
        "kiln's commit is not a fast-forward of the seeded tip"
    );
    let touched = world.commit_files(&commits[0]);
    assert!(!touched.is_empty());
    assert!(
        touched.iter().all(|f| f.starts_with("gitops/")),
        "kiln committed outside gitops/: {touched:?}"
    );
    let files = world.gitops_files();
    for dir in [
        format!("gitops/bootstrap/{}/", c.name),
        format!("gitops/core/clusters/{}/", c.name),
    ] {
        assert!(
            files.iter().any(|f| f.starts_with(&dir)),
            "nothing under {dir}: {files:?}"
        );
    }

    // `kiln status` reads what the run left.
    let (out, json) = world.status_json(Some(&c.name));
    assert!(out.success(), "kiln status:\n{out}");
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &c.name).unwrap_or_else(|| panic!("no {} in {json}", c.name));
    assert_eq!(record["phase"], "Ready", "{record}");

    // Second run: a no-op. No write of any kind; at most the preflight and the one listing.
    let vault_before = world.vault_snapshot().await;
    let mark = world.request_mark();
    let run = world.run_once();
    assert!(run.success(), "second run --once:\n{run}");
    let requests = world.requests_since(mark);
    assert!(
        requests.iter().all(|(m, _)| m == "GET"),
        "the no-op run wrote to Proxmox: {requests:?}"
    );
    assert!(
        requests.len() <= 2,
        "a no-op run costs at most the permission preflight and one listing, not {}: {requests:?}",
        requests.len()
    );
    assert!(
        requests
            .iter()
            .filter(|(_, p)| p.ends_with("/cluster/resources"))
            .count()
            <= 1,
        "{requests:?}"
    );
    assert_eq!(world.kiln_commits(), commits, "the no-op run committed");
    assert_eq!(
        world.vault_snapshot().await,
        vault_before,
        "the no-op run wrote to Vault"
    );
    assert_bootstraps(&world, 1);

    // The daemon: its cycles after the first are the listing alone; SIGTERM ends it cleanly.
    let mark = world.request_mark();
    let mut daemon = world.spawn_daemon(None);
    // Three cycles of its own (each one listing), however fast or slow the machine is.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while world
        .requests_since(mark)
        .iter()
        .filter(|(m, p)| m == "GET" && p.ends_with("/cluster/resources"))
        .count()
        < 3
    {
        daemon.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon (poll_interval 1s) did not list 3 times in 30 s:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.assert_running();
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM: {}", daemon.stderr_text());
    let requests = world.requests_since(mark);
    let listings = requests
        .iter()
        .filter(|(m, p)| m == "GET" && p.ends_with("/cluster/resources"))
        .count();
    let others: Vec<_> = requests
        .iter()
        .filter(|(m, p)| {
            !(m == "GET"
                && (p.ends_with("/cluster/resources") || p.ends_with("/access/permissions")))
        })
        .collect();
    assert!(
        listings >= 3,
        "the daemon listed {listings} times: {requests:?}"
    );
    assert!(
        others.is_empty(),
        "a no-op daemon cycle is the listing alone: {others:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|(_, p)| p.ends_with("/access/permissions"))
            .count()
            <= 1,
        "the preflight runs once at start-up: {requests:?}"
    );
    assert_eq!(world.kiln_commits(), commits, "the daemon committed");
    assert_eq!(
        world.vault_snapshot().await,
        vault_before,
        "the daemon wrote to Vault"
    );
}
