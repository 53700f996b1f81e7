//! Issue 24 points 6 and 8 through the binary: limits a pull request cannot take kiln past, and
//! local reads that never follow a link nor echo a long value.

use std::path::Path;
use std::time::Duration;

use super::measure::{alias_bomb, measured_command, read_measured};

const MIB: u64 = 1024;

#[test]
fn an_alias_bomb_is_refused_within_a_second_in_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bomb.yaml");
    let text = alias_bomb("bomb", 100 * 1024);
    assert!(text.len() >= 100 * 1024);
    std::fs::write(&file, &text).unwrap();
    let result = dir.path().join("measured.json");
    let stderr = dir.path().join("stderr");
    // Caps well above the limits under test, so a regression fails here instead of swapping.
    let out = measured_command(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &["validate".into(), file.clone().into()],
        &result,
        1024 * MIB,
        Duration::from_secs(20),
    )
    .stderr(std::fs::File::create(&stderr).unwrap())
    .status()
    .unwrap();
    assert!(out.success(), "the measuring parent failed");
    let m = read_measured(&result);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(m.killed, None, "{m:?}\n{said}");
    assert_eq!(m.code, 1, "{m:?}\n{said}");
    assert!(m.elapsed < Duration::from_secs(1), "took {:?}", m.elapsed);
    assert!(
        m.max_rss_kib < 100 * MIB,
        "peak resident memory {} KiB",
        m.max_rss_kib
    );
    let line = said
        .lines()
        .find(|l| l.starts_with(&*file.to_string_lossy()))
        .unwrap_or_else(|| panic!("no diagnostic names {}:\n{said}", file.display()));
    assert!(line.contains("10000"), "the limit is not named: {line}");
}

#[test]
fn a_file_over_256_kib_is_refused_naming_file_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters/production.yaml"),
    )
    .unwrap()
    .replace("name: production", "name: big");
    while text.len() <= 256 * 1024 {
        text.push_str("# a comment line that makes the file larger than kiln reads\n");
    }
    std::fs::write(&file, &text).unwrap();
    let out = super::kiln(&[file.as_path()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with(&*file.to_string_lossy()) && l.contains("256 KiB")),
        "{said}"
    );
}

/// A token the test plants where a cluster file should be: 200 characters, none of which may
/// reach the output beyond the first 80.
fn token() -> String {
    (0..200).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

#[test]
fn a_cluster_file_that_is_a_symlink_is_refused_without_reading_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("vault-token");
    std::fs::write(&secret, token()).unwrap();
    let clusters = dir.path().join("clusters");
    std::fs::create_dir(&clusters).unwrap();
    std::os::unix::fs::symlink(&secret, clusters.join("x.yaml")).unwrap();
    for arg in [clusters.clone(), clusters.join("x.yaml")] {
        let out = super::kiln(&[arg.as_path()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            !said.contains(&token()[..20]),
            "the target was read: {said}"
        );
        assert!(
            said.lines()
                .any(|l| l.contains("x.yaml") && l.contains("symbolic link")),
            "{said}"
        );
    }
}

#[test]
fn no_error_echoes_more_than_80_characters_of_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters/production.yaml"),
    )
    .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = [
        // The whole file is one long scalar (a pasted token): a schema error about its type.
        write("pasted", token()),
        // A rule that quotes the field's value.
        write(
            "production",
            base.replace(
                "installDisk: /dev/sda",
                &format!("installDisk: {}", token()),
            ),
        ),
        // A rule that quotes a key.
        write(
            "labels",
            base.replace("name: production", "name: labels").replace(
                "    env: prod",
                &format!("    env: prod\n    {}: x", token()),
            ),
        ),
    ];
    for file in &files {
        let out = super::kiln(&[file.as_path()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(&token()[..80]),
            "the value is not shown at all: {said}"
        );
        assert!(
            !said.contains(&token()[..81]),
            "more than 80 characters: {said}"
        );
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
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
}

#[test]
fn plan_on_a_work_tree_refuses_a_cluster_file_that_is_a_symlink_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("clusters")).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters/production.yaml");
    std::fs::copy(&example, repo.join("clusters/production.yaml")).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a cluster"]);
    let secret = dir.path().join("token");
    std::fs::write(&secret, token()).unwrap();
    std::fs::remove_file(repo.join("clusters/production.yaml")).unwrap();
    std::os::unix::fs::symlink(&secret, repo.join("clusters/production.yaml")).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plan", "--offline", "--base", "main", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        !said.contains(&token()[..20]),
        "the link's target was read: {said}"
    );
    assert!(
        said.contains("clusters/production.yaml") && said.contains("symbolic link"),
        "{said}"
    );
    assert!(
        said.contains("0 to destroy"),
        "a link is not a removal: {said}"
    );
}
