//! Issue 24, point 1 (DESIGN.md §2): what under the clusters folder is an intent file, an invalid file
//! (unknown, never a deleted cluster) or unreadable Git, read through the daemon's `GitSource`, the
//! plan's `read_revision` and `read_work_tree` alike.

use std::os::unix::fs::symlink;

use kiln::git::{GitError, GitSource, PollOutcome, Snapshot, read_revision, read_work_tree};
use kiln::reconcile::Intent;

use super::support::{Repos, git};

/// A secret the links below point at: it must never reach an error or a snapshot.
const SECRET: &str = "token: s3cret-value-never-shown\n";

/// Replaces the index entry at `path` with a submodule (gitlink, mode 160000) and pushes. Committed
/// without `add -A`, which would stage the missing work-tree folder as a deletion.
fn commit_gitlink(repos: &Repos, path: &str, message: &str) {
    let head = git(&repos.work, &["rev-parse", "HEAD"]);
    git(
        &repos.work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{head},{path}"),
        ],
    );
    git(&repos.work, &["commit", "-q", "-m", message]);
    git(&repos.work, &["push", "-q", "origin", "main"]);
}

fn text_of<'a>(snap: &'a Snapshot, path: &str) -> &'a Result<String, String> {
    &snap
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the snapshot: {:?}", snap.files))
        .text
}

fn assert_invalid(snap: &Snapshot, path: &str, says: &str) {
    match text_of(snap, path) {
        Err(why) => {
            assert!(why.contains(says), "{path}: {why}");
            assert!(
                !why.contains("s3cret"),
                "{path} echoed what it points at: {why}"
            );
        }
        Ok(text) => panic!("{path} was read as intent: {text:?}"),
    }
}

#[tokio::test]
async fn entries_that_are_not_regular_yaml_files_are_invalid_never_missing() {
    let repos = Repos::empty();
    repos.write("secret.txt", SECRET);
    repos.write("clusters/alpha.yaml", "name: alpha\n");
    repos.write("clusters/delta.yml", "name: delta\n");
    repos.write("clusters/old/epsilon.yaml", "name: epsilon\n");
    repos.write("clusters/notes.txt", "not intent\n");
    symlink("../secret.txt", repos.work.join("clusters/beta.yaml")).unwrap();
    repos.commit_and_push("clusters of every shape");
    commit_gitlink(&repos, "clusters/gamma.yaml", "gamma becomes a submodule");
    let mode = git(&repos.bare, &["ls-tree", "main", "clusters/"]);
    assert!(
        mode.contains("120000 blob") && mode.contains("160000 commit"),
        "{mode}"
    );

    let src = GitSource::open(&repos.local_config(), &repos.state)
        .await
        .unwrap();
    src.poll().await.unwrap();
    let daemon = src.current_snapshot().await.unwrap();
    let plan = read_revision(&repos.work, "HEAD", "clusters").unwrap();
    for snap in [&daemon, &plan] {
        assert_eq!(
            text_of(snap, "clusters/alpha.yaml"),
            &Ok("name: alpha\n".into())
        );
        assert_invalid(snap, "clusters/beta.yaml", "symbolic link (mode 120000)");
        assert_invalid(snap, "clusters/gamma.yaml", "submodule (mode 160000)");
        assert_invalid(snap, "clusters/delta.yml", "rename the file to delta.yaml");
        assert_invalid(snap, "clusters/old", "a folder");
        assert!(!snap.files.iter().any(|f| f.path.ends_with("notes.txt")));
        let names: Vec<&str> = snap.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "delta", "gamma", "old"]);

        let intent = Intent::read(snap);
        for name in ["beta", "gamma", "delta", "old"] {
            assert!(
                intent.present(name),
                "{name} would read as a deleted cluster"
            );
            let (path, message) = &intent.invalid[name];
            assert!(message.contains(path.as_str()), "{message}");
        }
    }

    // The work tree as `kiln plan` reads it: the link is not followed (its target holds a secret).
    let disk = read_work_tree(&repos.work, "clusters").unwrap();
    assert_invalid(&disk, "clusters/beta.yaml", "symbolic link");
    assert_invalid(&disk, "clusters/delta.yml", ".yml");
    assert_invalid(&disk, "clusters/old", "a folder");
    assert_eq!(
        text_of(&disk, "clusters/alpha.yaml"),
        &Ok("name: alpha\n".into())
    );
}

fn assert_not_a_folder(result: Result<Snapshot, GitError>, path: &str, what: &str) {
    match result {
        Err(e @ GitError::NotAFolder { .. }) => {
            let said = e.to_string();
            assert!(
                said.contains(&format!("{path} at ")) && said.contains(what),
                "{said}"
            );
            assert!(said.contains("destroys nothing"), "{said}");
        }
        Err(other) => panic!("another error than NotAFolder: {other}"),
        Ok(snap) => panic!("read as a folder of {} files", snap.files.len()),
    }
}

#[tokio::test]
async fn a_clusters_folder_that_is_a_link_or_a_submodule_is_unreadable_never_empty() {
    let repos = Repos::empty();
    repos.write("real/alpha.yaml", "name: alpha\n");
    symlink("real", repos.work.join("clusters")).unwrap();
    repos.commit_and_push("clusters is a link");

    let src = GitSource::open(&repos.local_config(), &repos.state)
        .await
        .unwrap();
    src.poll().await.unwrap();
    assert_not_a_folder(src.current_snapshot().await, "clusters", "symbolic link");
    assert_not_a_folder(
        read_revision(&repos.work, "HEAD", "clusters"),
        "clusters",
        "symbolic link",
    );
    // A folder configured below the link is not read through it either.
    assert_not_a_folder(
        read_revision(&repos.work, "HEAD", "clusters/prod"),
        "clusters",
        "symbolic link",
    );
    assert_not_a_folder(
        read_work_tree(&repos.work, "clusters"),
        "clusters",
        "symbolic link",
    );

    // The link becomes a submodule: a change of intent the poll reports, and still unreadable.
    git(&repos.work, &["rm", "-q", "--cached", "clusters"]);
    std::fs::remove_file(repos.work.join("clusters")).unwrap();
    git(&repos.work, &["commit", "-q", "-m", "no clusters"]);
    commit_gitlink(&repos, "clusters", "clusters is a submodule");
    let moved = src.poll().await.unwrap();
    assert!(
        matches!(
            moved,
            PollOutcome::Moved {
                intent_changed: true,
                ..
            }
        ),
        "{moved:?}"
    );
    assert_not_a_folder(src.current_snapshot().await, "clusters", "submodule");
}
