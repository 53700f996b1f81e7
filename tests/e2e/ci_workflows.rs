//! examples/ci (issue 28): the GitHub and Forgejo pull-request workflows, kept from rotting. Each is
//! parsed, its trigger and steps checked, and its `run:` scripts run as the runner runs them
//! (`bash --noprofile --norc -eo pipefail`, the step's `env:` with its expressions filled in, the
//! built `kiln` first on PATH, a `$GITHUB_STEP_SUMMARY` file) in a work tree checked out at a pull
//! request's head, against its base.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const WORKFLOWS: &[&str] = &[
    "examples/ci/github/kiln-plan.yml",
    "examples/ci/forgejo/kiln-plan.yml",
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Step {
    name: String,
    env: BTreeMap<String, String>,
    run: String,
}

/// The plan job's steps that run a script, after checking what the workflow is triggered by.
fn steps_of(file: &str) -> Vec<Step> {
    let text = std::fs::read_to_string(manifest_dir().join(file)).unwrap();
    let doc: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
    let paths = &doc["on"]["pull_request"]["paths"];
    let paths: Vec<&str> = paths
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: no on.pull_request.paths"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(paths.contains(&"clusters/**"), "{file}: {paths:?}");
    let jobs = doc["jobs"].as_mapping().expect("jobs");
    assert_eq!(jobs.len(), 1, "{file}: one job");
    let job = jobs.values().next().unwrap();
    let steps = job["steps"].as_sequence().expect("steps");
    assert!(
        steps.iter().any(|s| s["uses"]
            .as_str()
            .is_some_and(|u| u.starts_with("actions/checkout@"))
            && s["with"]["fetch-depth"].as_u64() == Some(0)),
        "{file}: a full checkout (the base commit must be there)"
    );
    steps
        .iter()
        .filter_map(|s| {
            let run = s["run"].as_str()?.to_owned();
            // An expression inside a script is pasted in before bash reads it (script injection);
            // values go through env: instead.
            assert!(
                !run.contains("${{"),
                "{file}: an expression inside run:\n{run}"
            );
            assert_eq!(s["shell"].as_str(), Some("bash"), "{file}: shell: bash");
            let env = s["env"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().unwrap().to_owned(),
                                v.as_str().unwrap().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Step {
                name: s["name"].as_str().unwrap_or_default().to_owned(),
                env,
                run,
            })
        })
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A GitOps repository whose `main` holds the staging cluster, checked out at a pull request's
/// head that `change` made; returns the base commit.
fn pull_request(dir: &Path, change: impl FnOnce(&Path)) -> String {
    let examples = manifest_dir().join("examples/clusters");
    git(dir, &["init", "-q"]);
    std::fs::create_dir_all(dir.join("clusters")).unwrap();
    std::fs::copy(
        examples.join("staging.yaml"),
        dir.join("clusters/staging.yaml"),
    )
    .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "staging"]);
    let base = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "-qb", "pr"]);
    change(dir);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "the pull request", "--allow-empty"]);
    base
}

struct Ran {
    code: i32,
    summary: String,
    output: String,
}

/// Runs a step's script as the runner does, with `${{ … }}` in its env: filled in.
fn run_step(file: &str, step: &Step, dir: &Path, base: &str, summary: &Path) -> Ran {
    let kiln = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let path = format!(
        "{}:{}",
        kiln.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &step.run])
        .current_dir(dir)
        .env("PATH", path)
        .env("GITHUB_STEP_SUMMARY", summary);
    for (key, value) in &step.env {
        let value = match value.as_str() {
            "${{ github.event.pull_request.base.sha }}" => base.to_owned(),
            v if v.contains("${{") => {
                panic!(
                    "{file}: step `{}` uses {v}, which this test does not know",
                    step.name
                )
            }
            v => v.to_owned(),
        };
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        summary: std::fs::read_to_string(summary).unwrap_or_default(),
        output: String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

/// The workflow's steps after installing kiln (the built binary stands in for the package).
fn checks(file: &str) -> Vec<Step> {
    let steps = steps_of(file);
    let install = steps
        .iter()
        .position(|s| s.name == "Install kiln")
        .unwrap_or_else(|| panic!("{file}: no `Install kiln` step"));
    assert!(
        steps[install].run.contains("apt-get install"),
        "{file}: kiln is installed from its .deb"
    );
    let rest: Vec<Step> = steps.into_iter().skip(install + 1).collect();
    let names: Vec<&str> = rest.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Validate the intent files", "Plan"], "{file}");
    rest
}

#[test]
fn a_pull_request_adding_a_cluster_posts_its_plan_and_passes() {
    for file in WORKFLOWS {
        let dir = tempfile::tempdir().unwrap();
        let base = pull_request(dir.path(), |d| {
            std::fs::copy(
                manifest_dir().join("examples/clusters/production.yaml"),
                d.join("clusters/production.yaml"),
            )
            .unwrap();
        });
        let summary = dir.path().join("summary.md");
        for step in checks(file) {
            let ran = run_step(file, &step, dir.path(), &base, &summary);
            assert_eq!(
                ran.code, 0,
                "{file}: `{}` failed a pull request that adds a cluster:\n{}",
                step.name, ran.output
            );
        }
        let summary = std::fs::read_to_string(&summary).unwrap();
        assert!(summary.starts_with("## kiln plan\n"), "{file}:\n{summary}");
        assert!(
            summary.contains("Merging this changes clusters")
                && summary.contains("cluster production: 6 to create")
                && summary.contains("create VM 401 production-cp-1"),
            "{file}: the summary holds the plan:\n{summary}"
        );
    }
}

#[test]
fn a_pull_request_changing_no_cluster_says_so_and_passes() {
    for file in WORKFLOWS {
        let dir = tempfile::tempdir().unwrap();
        let base = pull_request(dir.path(), |d| {
            std::fs::write(d.join("README.md"), "fleet\n").unwrap();
        });
        let summary = dir.path().join("summary.md");
        for step in checks(file) {
            let ran = run_step(file, &step, dir.path(), &base, &summary);
            assert_eq!(ran.code, 0, "{file}: `{}`:\n{}", step.name, ran.output);
        }
        let summary = std::fs::read_to_string(&summary).unwrap();
        assert!(
            summary.contains("Merging this changes no cluster."),
            "{file}:\n{summary}"
        );
    }
}

#[test]
fn a_pull_request_with_an_invalid_file_fails_both_checks_and_says_why() {
    for file in WORKFLOWS {
        let dir = tempfile::tempdir().unwrap();
        let base = pull_request(dir.path(), |d| {
            std::fs::write(
                d.join("clusters/broken.yaml"),
                "apiVersion: kiln.dev/v1\nkind: Cluster\nmetadata:\n  name: broken\nspec: {}\n",
            )
            .unwrap();
        });
        let summary = dir.path().join("summary.md");
        let steps = checks(file);
        let validate = run_step(file, &steps[0], dir.path(), &base, &summary);
        assert_eq!(validate.code, 1, "{file}: validate:\n{}", validate.output);
        assert!(
            validate.output.contains("broken.yaml"),
            "{}",
            validate.output
        );
        let plan = run_step(file, &steps[1], dir.path(), &base, &summary);
        assert_eq!(plan.code, 1, "{file}: plan:\n{}", plan.output);
        assert!(
            plan.summary.contains("**kiln plan failed** (exit 1)")
                && plan.summary.contains("broken"),
            "{file}:\n{}",
            plan.summary
        );
    }
}
