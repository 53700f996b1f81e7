//! `kiln plan --offline` through the real binary on a real Git repository: a branch that adds a
//! cluster prints the VMs it would create, exits 2, and writes nothing.

use std::path::Path;
use std::process::{Command, Output};

const PRODUCTION: &str = include_str!("../../examples/clusters/production.yaml");
const STAGING: &str = include_str!("../../examples/clusters/staging.yaml");

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

/// A repository whose `main` has production and whose `feature` branch adds staging.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q", "-b", "main"]);
    std::fs::create_dir(d.join("clusters")).unwrap();
    std::fs::write(d.join("clusters/production.yaml"), PRODUCTION).unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "production"]);
    git(d, &["checkout", "-qb", "feature"]);
    std::fs::write(d.join("clusters/staging.yaml"), STAGING).unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "staging"]);
    dir
}

/// Everything a plan could conceivably write to: refs, index, work tree, objects.
fn fingerprint(d: &Path) -> String {
    let refs = git(d, &["for-each-ref"]);
    let status = git(d, &["status", "--porcelain", "--ignored"]);
    let objects = git(d, &["count-objects", "-v"]);
    format!("{refs}\n{status}\n{objects}")
}

#[test]
fn a_branch_that_adds_a_cluster_plans_its_vms_and_exits_2_writing_nothing() {
    let dir = repo();
    let d = dir.path();
    let before = fingerprint(d);
    let out = kiln(
        d,
        &[
            "plan",
            "--offline",
            "--repo",
            ".",
            "--rev",
            "feature",
            "--base",
            "main",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for vm in ["411 staging-cp-1", "412 staging-wk-2", "413 staging-wk-3"] {
        assert!(
            stdout.contains(&format!("create VM {vm}")),
            "{vm} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("cluster production: 0 to create, 0 to change, 0 to destroy"),
        "{stdout}"
    );
    assert!(stdout.contains("Plan: 4 to create"), "{stdout}");
    assert_eq!(fingerprint(d), before, "kiln plan wrote to the repository");

    // The work tree as it is (default --rev) with the default base (main, no origin).
    let out = kiln(d, &["plan", "--offline", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let clusters = json["plan"]["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    assert_eq!(fingerprint(d), before);
}

#[test]
fn nothing_to_do_exits_0_and_an_invalid_file_exits_1_without_destroying() {
    let dir = repo();
    let d = dir.path();
    let out = kiln(d, &["plan", "--offline", "--rev", "main", "--base", "main"]);
    assert_eq!(out.status.code(), Some(0));

    // An uncommitted edit that breaks staging: an error, and staging is not decommissioned.
    std::fs::write(d.join("clusters/staging.yaml"), "kind: [").unwrap();
    let out = kiln(d, &["plan", "--offline", "--base", "feature"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("clusters/staging.yaml:2:1: "), "{stderr}");
    assert!(stdout.contains("0 to destroy."), "{stdout}");
}
