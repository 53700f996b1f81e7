//! One-shot reads of a repository on disk, for `kiln plan --repo PATH --rev REV` and `kiln
//! validate`: no cache clone, no remote, no checkout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gix::ObjectId;

use super::GitError;
use super::snapshot::{
    ClusterFile, Entry, Shape, Snapshot, TEMPLATES_DIR, classify, read_snapshot,
};

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

/// The intent as it is on disk in the work tree at `work_tree` (uncommitted edits included), for
/// `kiln plan --repo PATH` without `--rev`. Blob and tree ids are computed as git would for the
/// same content (regular files and the executable bit; `.gitignore` is not consulted), so an
/// unedited file has the intent revision of its committed self. `rev` and `source_commit` are
/// those of `HEAD`, the commit the edits are based on.
pub fn read_work_tree(work_tree: &Path, clusters_dir: &str) -> Result<Snapshot, GitError> {
    let clusters_dir = clusters_dir.trim_matches('/');
    let mut snap = read_revision(work_tree, "HEAD", clusters_dir)?;
    let hash = |kind, data: &[u8]| {
        gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, data)
            .map_err(|e| GitError::gix("hashing", e))
    };

    let dir = work_tree.join(clusters_dir);
    let mut files = Vec::new();
    let listing = if work_tree_folder(work_tree, clusters_dir)? {
        read_dir_sorted(&dir)?
    } else {
        Vec::new()
    };
    for (name, path) in listing {
        let meta = std::fs::symlink_metadata(&path).map_err(|source| GitError::Io {
            path: path.clone(),
            source,
        })?;
        let rel = format!("{clusters_dir}/{name}");
        let (stem, data) = match classify(&name, shape_on_disk(&meta)) {
            Entry::Ignored => continue,
            // Never read through a link: it may point at anything on the machine running the plan.
            Entry::Invalid { stem, why } => {
                files.push(ClusterFile {
                    // Nothing was read, so there is no content to hash; the id only has to be stable.
                    blob: hash(gix::objs::Kind::Blob, rel.as_bytes())?,
                    text: Err(why),
                    path: rel,
                    name: stem,
                });
                continue;
            }
            Entry::Intent { stem } => (
                stem,
                read_nofollow(&path).map_err(|source| GitError::Io {
                    path: path.clone(),
                    source,
                })?,
            ),
        };
        files.push(ClusterFile {
            blob: hash(gix::objs::Kind::Blob, &data)?,
            text: String::from_utf8(data).map_err(|_| {
                GitError::NotText {
                    path: rel.clone(),
                    rev: "work tree".into(),
                }
                .to_string()
            }),
            path: rel,
            name: stem,
        });
    }
    snap.files = files;

    let templates_dir = work_tree.join(TEMPLATES_DIR);
    let mut templates = BTreeMap::new();
    snap.templates_tree = if templates_dir.is_dir() {
        hash_dir(&templates_dir, "", &mut templates)?
    } else {
        None
    };
    snap.templates = templates;
    Ok(snap)
}

/// Whether the clusters folder exists in the work tree, refusing one that is (or lies behind) a link
/// or anything else that is not a folder, as [`read_revision`] refuses it in a commit.
fn work_tree_folder(work_tree: &Path, clusters_dir: &str) -> Result<bool, GitError> {
    let mut path = work_tree.to_path_buf();
    let mut walked = String::new();
    for part in clusters_dir.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(GitError::Io { path, source }),
        };
        if !meta.is_dir() {
            return Err(GitError::NotAFolder {
                path: walked,
                rev: "the work tree".into(),
                what: shape_on_disk(&meta).describe(),
            });
        }
    }
    Ok(true)
}

fn shape_on_disk(meta: &std::fs::Metadata) -> Shape {
    let kind = meta.file_type();
    if kind.is_symlink() {
        Shape::Link
    } else if kind.is_dir() {
        Shape::Folder
    } else if kind.is_file() {
        Shape::Regular
    } else {
        Shape::Special
    }
}

/// The bytes of a file checked to be regular: refused if the path became something else (a link)
/// between the check and the open.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let before = std::fs::symlink_metadata(path)?;
    let mut file = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) || !opened.is_file() {
            return Err(std::io::Error::other(
                "changed into something other than a regular file while it was read",
            ));
        }
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(data)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, PathBuf)>, GitError> {
    let io = |source| GitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(io)?;
                out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    out.sort();
    Ok(out)
}

/// The git tree id of `dir` (`None` when it holds no file, as git keeps no empty trees), collecting
/// each file's text under its path relative to the templates folder.
fn hash_dir(
    dir: &Path,
    prefix: &str,
    texts: &mut BTreeMap<String, String>,
) -> Result<Option<ObjectId>, GitError> {
    use gix::objs::tree::{Entry, EntryKind};
    let mut tree = gix::objs::Tree::empty();
    for (name, path) in read_dir_sorted(dir)? {
        if name == ".git" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|source| GitError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(GitError::Io {
                path: path.clone(),
                source: std::io::Error::other(
                    "a symbolic link in templates/; kiln does not follow links",
                ),
            });
        }
        let (kind, oid) = if meta.is_dir() {
            match hash_dir(&path, &rel, texts)? {
                Some(id) => (EntryKind::Tree, id),
                None => continue,
            }
        } else {
            let data = read_nofollow(&path).map_err(|source| GitError::Io {
                path: path.clone(),
                source,
            })?;
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, &data)
                .map_err(|e| GitError::gix("hashing", e))?;
            let text = String::from_utf8(data).map_err(|_| GitError::NotText {
                path: format!("{TEMPLATES_DIR}/{rel}"),
                rev: "work tree".into(),
            })?;
            texts.insert(rel, text);
            (file_kind(&meta), id)
        };
        tree.entries.push(Entry {
            mode: kind.into(),
            filename: name.into(),
            oid,
        });
    }
    if tree.entries.is_empty() {
        return Ok(None);
    }
    // Git orders a tree's entries with directories compared as if they ended in `/`.
    tree.entries.sort();
    let mut buf = Vec::new();
    gix::objs::WriteTo::write_to(&tree, &mut buf)
        .map_err(|e| GitError::gix("encoding a tree", e))?;
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Tree, &buf)
        .map(Some)
        .map_err(|e| GitError::gix("hashing", e))
}

#[cfg(unix)]
fn file_kind(meta: &std::fs::Metadata) -> gix::objs::tree::EntryKind {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        gix::objs::tree::EntryKind::BlobExecutable
    } else {
        gix::objs::tree::EntryKind::Blob
    }
}

#[cfg(not(unix))]
fn file_kind(_: &std::fs::Metadata) -> gix::objs::tree::EntryKind {
    gix::objs::tree::EntryKind::Blob
}
