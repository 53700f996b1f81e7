//! One-shot reads of a repository on disk, for `kiln plan --repo PATH --rev REV` and `kiln
//! validate`: no cache clone, no remote, no checkout.

use std::path::Path;

use super::GitError;
use super::snapshot::{Snapshot, read_snapshot};

/// The intent at `rev` (any revision spec git understands: a sha, `main`, `HEAD~1`, `origin/main`)
/// of the repository at `repo` (a work tree or a bare repository).
pub fn read_revision(repo: &Path, rev: &str, clusters_dir: &str) -> Result<Snapshot, GitError> {
    let r = gix::discover(repo)
        .map_err(|e| GitError::gix(format!("opening repository {}", repo.display()), e))?;
    let id = r
        .rev_parse_single(rev)
        .and_then(|id| id.object())
        .and_then(|o| o.peel_to_commit())
        .map_err(|_| GitError::UnknownRevision {
            repo: repo.to_path_buf(),
            rev: rev.to_string(),
        })?
        .id;
    read_snapshot(&r, id, clusters_dir.trim_matches('/'))
}
