//! Issue 24, points 1, 2, 3 and 11 through the binary (DESIGN.md §2, §7, §8), on fakepve, OpenBao and
//! real Git with `decommission_grace = "0s"` and `allow_empty = true`, so that nothing but the rule
//! under test stands between a careless push and the cluster's VMs.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::checks::{assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::gitrepo::git;
use crate::support::{World, kiln};

/// Writes to Proxmox since `mark` (anything but GET): a cluster left alone sees none.
fn assert_no_writes(world: &World, mark: usize, why: &str) {
    let writes = world.writes_since(mark);
    assert!(writes.is_empty(), "{why}: {writes:?}");
}

#[tokio::test]
async fn a_cluster_file_turned_into_a_symlink_leaves_its_vms_running_and_is_named() {
    let c = ClusterFixture::new("linked", 1, 1);
    let world = World::start(vec![c.clone()]).await;
    world.write_config(true);
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    let vms_before = world.vms();
    let commits = world.kiln_commits();

    // The file becomes a link to another file of the repository (a pull request can do that).
    world.pull();
    let file = world.repos.work.join(c.path());
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("../README.md", &file).unwrap();
    world
        .repos
        .commit_and_push("clusters: link instead of a file");
    let mode = git(&world.repos.bare, &["ls-tree", "main", &c.path()]);
    assert!(mode.starts_with("120000 "), "not a symlink in Git: {mode}");

    let mark = world.request_mark();
    let run = world.run_once_for(Duration::from_secs(20));
    assert_no_writes(
        &world,
        mark,
        "kiln wrote to Proxmox for a linked cluster file",
    );
    assert_eq!(world.vms(), vms_before, "the cluster's VMs changed");
    assert_exact_vms(&world, &[&c], &[]);
    assert_eq!(world.kiln_commits(), commits, "kiln committed a removal");
    for leaf in ["secrets", "kubeconfig", "talos"] {
        let meta = world.vault_metadata(&c.name, leaf).await.unwrap();
        assert!(
            meta["custom_metadata"]["kiln-decommissioned-at"].is_null(),
            "{leaf} was marked decommissioned: {meta}"
        );
    }
    assert!(
        !run.success(),
        "an unknown cluster is not converged:\n{run}"
    );
    assert!(
        run.stdout.contains(&c.path()) && run.stdout.contains("symbolic link"),
        "run --once should name {} and say it is a symbolic link:\n{run}",
        c.path()
    );
    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &c.name).unwrap_or_else(|| panic!("{json}"));
    assert_eq!(record["phase"], "Blocked", "{record}");
}

#[tokio::test]
async fn output_dir_over_the_clusters_folder_is_refused_at_start_and_nothing_is_committed() {
    let c = ClusterFixture::new("outdir", 1, 0);
    let world = World::start(vec![c.clone()]).await;
    world.write_config(true);
    let text = std::fs::read_to_string(&world.config).unwrap();
    let text = text.replace("[git]\n", "[git]\noutput_dir = \"clusters\"\n");
    std::fs::write(&world.config, text).unwrap();

    let tip = world.repos.remote_tip();
    let mark = world.request_mark();
    let started = Instant::now();
    let run = world.run_once_for(Duration::from_secs(60));
    assert!(
        !run.success(),
        "kiln ran with output_dir = clusters:\n{run}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal should come at start, not after a cycle:\n{run}"
    );
    assert!(
        run.stderr.contains("git.output_dir") && run.stderr.contains("delete the intent files"),
        "the error should name git.output_dir and why:\n{run}"
    );
    assert_eq!(world.repos.remote_tip(), tip, "kiln pushed");
    assert!(world.kiln_commits().is_empty());
    assert_no_writes(&world, mark, "kiln wrote to Proxmox");
    assert!(
        !world.state_dir.join("repo").exists(),
        "kiln opened its cache clone before refusing"
    );
}

/// Someone pushes the deleted file back while kiln's push of its removal is on its way: the remote's
/// pre-receive hook moves `main` to `restore` (the commit that brings the file back) and turns kiln's
/// push away, once. Runs with git's quarantine variables unset, as ref updates are refused inside it.
fn push_back_during_kilns_push(
    world: &World,
    restore: &str,
    deleted_at: &str,
) -> std::path::PathBuf {
    let marker = world.repos.tmp.path().join("pushed-back");
    let hook = world.repos.bare.join("hooks/pre-receive");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n\
             [ -e '{marker}' ] && exit 0\n\
             : > '{marker}'\n\
             unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES\n\
             git update-ref refs/heads/main {restore} {deleted_at} || exit 2\n\
             echo 'e2e: the file was pushed back meanwhile' >&2\n\
             exit 1\n",
            marker = marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    marker
}

#[tokio::test]
async fn a_file_pushed_back_while_the_removal_push_is_rejected_keeps_its_vms() {
    let c = ClusterFixture::new("comeback", 1, 1);
    let world = World::start(vec![c.clone()]).await;
    world.write_config(true);
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    let vms_before = world.vms();

    // The file is deleted on main; the commit that restores it waits on a side branch.
    let deleted_at = world.delete_clusters(&[&c.name]);
    git(&world.repos.work, &["revert", "--no-edit", "HEAD"]);
    git(
        &world.repos.work,
        &["push", "-q", "origin", "HEAD:refs/heads/restore"],
    );
    let restore = git(&world.repos.work, &["rev-parse", "HEAD"]);
    git(&world.repos.work, &["reset", "-q", "--hard", &deleted_at]);
    let marker = push_back_during_kilns_push(&world, &restore, &deleted_at);

    let mark = world.request_mark();
    let run = world.run_once();
    assert!(
        marker.exists(),
        "kiln never pushed, so the race never happened:\n{run}"
    );
    assert_no_writes(
        &world,
        mark,
        "kiln acted on VMs whose file was back at the tip it pushed to",
    );
    assert_eq!(world.vms(), vms_before, "the cluster's VMs changed");
    assert_exact_vms(&world, &[&c], &[]);
    assert!(run.success(), "the cluster should be Ready again:\n{run}");
    let files = git(&world.repos.bare, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.lines().any(|f| f == c.path()), "{files}");
    assert!(
        world
            .gitops_files()
            .iter()
            .any(|f| f.starts_with(&format!("gitops/core/clusters/{}/", c.name))),
        "the cluster's registration left the remote"
    );
    let meta = world.vault_metadata(&c.name, "secrets").await.unwrap();
    assert!(
        meta["custom_metadata"]["kiln-decommissioned-at"].is_null(),
        "the secrets were marked decommissioned: {meta}"
    );
}

/// The lock file's `pid` line, once written.
fn lock_holder(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join("kiln.lock"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("pid ").map(str::to_owned))
}

#[tokio::test]
async fn a_second_kiln_on_the_same_state_dir_is_refused_naming_the_first() {
    let world = World::start(vec![]).await;
    let mut daemon = world.spawn_daemon(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock_holder(&world.state_dir) != Some(daemon.pid().to_string()) {
        daemon.assert_running();
        assert!(
            Instant::now() < deadline,
            "the daemon never wrote its pid into the lock file:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let started = Instant::now();
    let second = world.run_once_for(Duration::from_secs(60));
    assert!(
        !second.success(),
        "a second kiln ran beside the daemon:\n{second}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second kiln should fail at once:\n{second}"
    );
    assert!(
        second.stderr.contains(&format!("pid {}", daemon.pid()))
            && second.stderr.contains("kiln run")
            && second.stderr.contains("kiln.lock"),
        "the refusal should name the lock file and the daemon's pid and command:\n{second}"
    );
    daemon.assert_running();

    // kill -9 leaves no lock behind: the kernel drops it with the process.
    daemon.kill9();
    let mut cmd = kiln();
    cmd.args(["run", "--once", "--timeout", "30s", "--config"])
        .arg(&world.config);
    let after = world.run_command(cmd);
    assert!(after.success(), "after the daemon died:\n{after}");
}

#[test]
fn an_offline_plan_takes_a_linked_cluster_file_for_invalid_not_for_a_decommission() {
    let c = ClusterFixture::new("planlink", 1, 0);
    let repos = crate::gitrepo::Repos::empty();
    repos.write("README.md", "token: s3cret-value-never-shown\n");
    repos.write(&c.path(), &c.yaml());
    repos.commit_and_push("add the cluster");
    let file = repos.work.join(c.path());
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("../README.md", &file).unwrap();

    let out = kiln()
        .args(["plan", "--offline", "--repo"])
        .arg(&repos.work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("0 to destroy"), "{stdout}");
    assert!(
        stderr.contains(&c.path()) && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret") && !stdout.contains("s3cret"));
}

#[test]
fn kiln_demo_leaves_the_folder_of_a_demo_still_running_alone() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("kiln-demo");
    std::fs::create_dir_all(demo.join("state")).unwrap();
    std::fs::write(demo.join(".kiln-demo"), "a demo folder\n").unwrap();
    // This test process stands for the demo that is still running there.
    let held =
        kiln::reconcile::state_lock::StateLock::acquire(&demo.join("state"), "kiln demo (first)")
            .unwrap();

    let out = kiln()
        .args(["demo", "--state-dir"])
        .arg(&demo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second demo ran: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id()))
            && stderr.contains("kiln demo (first)"),
        "the refusal should name the running demo: {stderr}"
    );
    assert!(
        demo.join(".kiln-demo").exists() && held.path().exists(),
        "the running demo's folder was wiped"
    );
}
