//! The demo's Git remote, through the `git` CLI as kiln's push uses it: a bare repository seeded with one
//! commit (plumbing only, so no work tree, hook or user configuration is involved), and the log of what
//! kiln committed to it since.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Who the seed commit is from: deliberately not kiln's author, so kiln's own commits stand apart.
pub const SEED_AUTHOR: (&str, &str) = ("kiln demo", "demo@localhost");

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("cannot run `git {args}`: {source} (kiln demo needs the git CLI on PATH)")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Variables a calling environment (a Git hook, a shell inside a repository) may set that would point
/// git at another repository or index than the one named.
const INHERITED: [&str; 5] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
];

fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for var in INHERITED {
        cmd.env_remove(var);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

fn git(
    git_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<String, RepoError> {
    let shown = args.join(" ");
    let mut cmd = git_command();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["-c", "core.quotePath=false"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let spawn = |source| RepoError::Spawn {
        args: shown.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(RepoError::Failed {
            args: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Creates the bare repository `remote` with `branch` holding one commit of `files` (path → content).
/// Returns the commit id.
pub fn seed(
    remote: &Path,
    branch: &str,
    files: &BTreeMap<String, String>,
    message: &str,
) -> Result<String, RepoError> {
    let init = git_command()
        .args(["init", "--quiet", "--bare"])
        .arg(format!("--initial-branch={branch}"))
        .arg(remote)
        .output()
        .map_err(|source| RepoError::Spawn {
            args: "init --bare".into(),
            source,
        })?;
    if !init.status.success() {
        return Err(RepoError::Failed {
            args: "init --bare".into(),
            stderr: String::from_utf8_lossy(&init.stderr).trim().to_owned(),
        });
    }
    // A private index just for building the tree; the bare repository keeps none.
    let index = remote.join("kiln-demo-seed.index");
    let index_env = index.to_string_lossy().into_owned();
    let env = [("GIT_INDEX_FILE", index_env.as_str())];
    for (path, content) in files {
        let blob = git(
            remote,
            &["hash-object", "-w", "--stdin"],
            &[],
            Some(content.as_bytes()),
        )?;
        let entry = format!("100644,{blob},{path}");
        git(
            remote,
            &["update-index", "--add", "--cacheinfo", &entry],
            &env,
            None,
        )?;
    }
    let tree = git(remote, &["write-tree"], &env, None)?;
    std::fs::remove_file(&index).map_err(|source| RepoError::Io {
        path: index.clone(),
        source,
    })?;
    let (name, email) = SEED_AUTHOR;
    let identity = [
        ("GIT_AUTHOR_NAME", name),
        ("GIT_AUTHOR_EMAIL", email),
        ("GIT_COMMITTER_NAME", name),
        ("GIT_COMMITTER_EMAIL", email),
    ];
    let commit = git(
        remote,
        &["commit-tree", "--no-gpg-sign", &tree, "-m", message],
        &identity,
        None,
    )?;
    git(
        remote,
        &["update-ref", &format!("refs/heads/{branch}"), &commit, ""],
        &[],
        None,
    )?;
    Ok(commit)
}

/// One of kiln's commits and the files it touched under the output folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilnCommit {
    pub id: String,
    pub short: String,
    pub date: String,
    pub subject: String,
    /// `(status letter, path)`: A added, M modified, D deleted.
    pub files: Vec<(char, String)>,
}

/// Commits on `branch` authored by `email` that touched `output_dir`, newest first.
pub fn kiln_commits(
    remote: &Path,
    branch: &str,
    email: &str,
    output_dir: &str,
) -> Result<Vec<KilnCommit>, RepoError> {
    const RECORD: char = '\u{1e}';
    const FIELD: char = '\u{1f}';
    let format = format!("--format={RECORD}%H{FIELD}%h{FIELD}%ae{FIELD}%aI{FIELD}%s");
    let log = git(
        remote,
        &[
            "log",
            &format,
            "--name-status",
            "--no-renames",
            branch,
            "--",
            output_dir,
        ],
        &[],
        None,
    )?;
    Ok(log
        .split(RECORD)
        .filter(|r| !r.trim().is_empty())
        .filter_map(|record| {
            let (header, rest) = record.split_once('\n').unwrap_or((record, ""));
            let f: Vec<&str> = header.split(FIELD).collect();
            let [id, short, author, date, subject] = f[..] else {
                return None;
            };
            // Exact, not git's regex match of --author: only kiln's own commits.
            if !author.eq_ignore_ascii_case(email) {
                return None;
            }
            let files = rest
                .lines()
                .filter_map(|l| {
                    let (status, path) = l.split_once('\t')?;
                    Some((status.chars().next()?, path.to_owned()))
                })
                .collect();
            Some(KilnCommit {
                id: id.to_owned(),
                short: short.to_owned(),
                date: date.to_owned(),
                subject: subject.to_owned(),
                files,
            })
        })
        .collect())
}
