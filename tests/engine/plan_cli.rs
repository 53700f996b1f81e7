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

/// Issue 27: a pull request that resizes the workers and scales them down shows, per step, what it
/// disrupts, and a summary per cluster, in text and in JSON.
#[test]
fn a_resize_and_a_scale_down_say_what_they_disrupt() {
    let dir = repo();
    let d = dir.path();
    git(d, &["checkout", "-qb", "resize", "main"]);
    let edited = PRODUCTION
        .replace(
            "resources: {cores: 4, memoryGiB: 16, diskGiB: 200}",
            "resources: {cores: 8, memoryGiB: 16, diskGiB: 250}",
        )
        .replace("      - {ip: 192.168.2.165, number: 5}\n", "");
    assert_ne!(edited, PRODUCTION, "the example changed: fix the edit");
    std::fs::write(d.join("clusters/production.yaml"), edited).unwrap();
    git(d, &["commit", "-qam", "bigger workers, one fewer"]);

    let args = [
        "plan",
        "--offline",
        "--repo",
        ".",
        "--rev",
        "resize",
        "--base",
        "main",
    ];
    let out = kiln(d, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let after = |step: &str| -> &str {
        let i = lines
            .iter()
            .position(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no step {step:?}:\n{stdout}"));
        lines.get(i + 1).copied().unwrap_or_default()
    };
    assert_eq!(
        after("resize VM 404 production-wk-4: cores 4 → 8, disk GiB 200 → 250").trim(),
        "→ reboots production-wk-4 through Proxmox to apply cores/memory (cordoned and drained \
         first); its disk grows to 250 GiB before the reboot",
        "{stdout}"
    );
    assert_eq!(
        after("remove worker production-wk-5").trim(),
        "→ drains production-wk-5, deletes its Node, destroys VM 405 production-wk-5",
        "{stdout}"
    );
    assert!(
        stdout.contains("  disruption: 1 reboot; 1 worker drained and removed\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("reboots production-cp"),
        "a worker resize reboots a control plane:\n{stdout}"
    );

    let mut json_args = args.to_vec();
    json_args.extend(["--format", "json"]);
    let out = kiln(d, &json_args);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let production = &json["plan"]["clusters"][0];
    assert_eq!(production["cluster"], "production", "{json}");
    assert_eq!(
        production["disruption"]["text"], "1 reboot; 1 worker drained and removed",
        "{json}"
    );
    let kinds: Vec<(&str, &str)> = production["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"]["action"].as_str().unwrap(),
                s["disruption"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("resize-vm", "reboot"),
            ("remove-node", "node-leaves"),
            ("wait-healthy", "none")
        ],
        "{json}"
    );
}
