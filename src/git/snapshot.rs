//! The intent at one revision, read straight from the object database (no checkout): the cluster
//! files, the `templates/` overrides, their intent revisions (DESIGN.md §7) and the commit named by
//! the `Kiln-Source` trailer.

use std::collections::BTreeMap;

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use super::GitError;

/// The folder of template overrides, fixed by DESIGN.md §6.
pub const TEMPLATES_DIR: &str = "templates";

/// What a cluster's generated output and its "last applied" key on: the cluster file's blob id plus
/// the tree id of `templates/` (absent when the repository has no overrides). A commit that changes
/// only `output_dir` leaves both untouched, so kiln's own commits never look like new intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntentRevision {
    pub blob: ObjectId,
    pub templates: Option<ObjectId>,
}

impl std::fmt::Display for IntentRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.templates {
            Some(t) => write!(f, "{}+{}", self.blob, t),
            None => write!(f, "{}", self.blob),
        }
    }
}

/// One cluster file as found under `clusters_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    /// Repository-relative path, e.g. `clusters/prod.yaml`.
    pub path: String,
    /// The file stem: the cluster's name as the file declares it by convention.
    pub name: String,
    pub blob: ObjectId,
    /// The file's text; a non-UTF-8 file is kept as `Err` so the reconciler treats its cluster as
    /// *unknown* (never deleted, §7) instead of the whole snapshot failing.
    pub text: Result<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The commit read.
    pub rev: ObjectId,
    /// `clusters_dir/*.yaml`, sorted by path.
    pub files: Vec<ClusterFile>,
    /// Every file under `templates/`, keyed by its path relative to `templates/`.
    pub templates: BTreeMap<String, String>,
    pub templates_tree: Option<ObjectId>,
    /// The newest commit (first-parent history) that changed `clusters_dir` or `templates/`: the
    /// `Kiln-Source` trailer of anything rendered from this snapshot.
    pub source_commit: ObjectId,
}

impl Snapshot {
    /// The intent revision of cluster `name`, or `None` when it has no file at this revision.
    pub fn intent_revision(&self, name: &str) -> Option<IntentRevision> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| IntentRevision {
                blob: f.blob,
                templates: self.templates_tree,
            })
    }

    /// `(path, text)` of every cluster file that is valid UTF-8.
    pub fn texts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files
            .iter()
            .filter_map(|f| f.text.as_deref().ok().map(|t| (f.path.as_str(), t)))
    }
}

/// The pair whose change means "the intent moved" between two commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntentKey {
    clusters: Option<ObjectId>,
    templates: Option<ObjectId>,
}

pub(crate) fn intent_key(
    repo: &gix::Repository,
    commit: ObjectId,
    clusters_dir: &str,
) -> Result<IntentKey, GitError> {
    let tree = commit_tree(repo, commit)?;
    Ok(IntentKey {
        // Whatever stands at the path, folder or not: a folder turned into a link is a change of
        // intent too (the next snapshot then reports it as unreadable).
        clusters: entry_at(repo, tree.id, clusters_dir)?.map(|(_, id, _)| id),
        templates: subtree_id(&tree, TEMPLATES_DIR)?,
    })
}

/// Reads the snapshot of commit `rev`.
pub(crate) fn read_snapshot(
    repo: &gix::Repository,
    rev: ObjectId,
    clusters_dir: &str,
) -> Result<Snapshot, GitError> {
    let tree = commit_tree(repo, rev)?;
    let mut files = Vec::new();
    if let Some(dir) = clusters_folder(repo, tree.id, clusters_dir, &rev.to_string())? {
        let dir_tree = repo
            .find_tree(dir)
            .map_err(|e| GitError::gix(format!("reading {clusters_dir}/ at {rev}"), e))?;
        for entry in dir_tree.iter() {
            let entry =
                entry.map_err(|e| GitError::gix(format!("listing {clusters_dir}/ at {rev}"), e))?;
            let file_name = entry.filename().to_string();
            let path = format!("{}/{}", clusters_dir.trim_end_matches('/'), file_name);
            let blob = entry.object_id();
            let (name, text) = match classify(&file_name, Shape::of(entry.mode().kind())) {
                Entry::Ignored => continue,
                Entry::Invalid { stem, why } => (stem, Err(why)),
                Entry::Intent { stem } => {
                    let data = read_blob(repo, blob, &path)?;
                    let text = String::from_utf8(data).map_err(|_| {
                        GitError::NotText {
                            path: path.clone(),
                            rev: rev.to_string(),
                        }
                        .to_string()
                    });
                    (stem, text)
                }
            };
            files.push(ClusterFile {
                path,
                name,
                blob,
                text,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));

    let templates_tree = subtree_id(&tree, TEMPLATES_DIR)?;
    let mut templates = BTreeMap::new();
    if let Some(t) = templates_tree {
        for (path, blob) in list_blobs(repo, t, "")? {
            let data = read_blob(repo, blob, &path)?;
            let text = String::from_utf8(data).map_err(|_| GitError::NotText {
                path: format!("{TEMPLATES_DIR}/{path}"),
                rev: rev.to_string(),
            })?;
            templates.insert(path, text);
        }
    }

    Ok(Snapshot {
        rev,
        files,
        templates,
        templates_tree,
        source_commit: source_commit(repo, rev, clusters_dir)?,
    })
}

/// The shape of an entry, as far as the intent rules of DESIGN.md §2 care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A blob of mode 100644 or 100755.
    Regular,
    Link,
    Submodule,
    Folder,
    /// Anything else a work tree can hold (a fifo, a socket, a device).
    Special,
}

impl Shape {
    pub(crate) fn of(kind: EntryKind) -> Self {
        match kind {
            EntryKind::Blob | EntryKind::BlobExecutable => Shape::Regular,
            EntryKind::Link => Shape::Link,
            EntryKind::Commit => Shape::Submodule,
            EntryKind::Tree => Shape::Folder,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Shape::Regular => "a regular file",
            Shape::Link => "a symbolic link (mode 120000)",
            Shape::Submodule => "a submodule (mode 160000)",
            Shape::Folder => "a folder",
            Shape::Special => "a special file",
        }
    }
}

/// What an entry directly under the clusters folder is to kiln.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A regular `*.yaml` file: an intent file to read.
    Intent { stem: String },
    /// Unknown, never absent: its cluster is left alone and the reason is reported (DESIGN.md §2).
    Invalid { stem: String, why: String },
    /// A regular file that is not intent (a README, `.gitkeep`).
    Ignored,
}

/// Classifies one entry of the clusters folder. A link or a submodule where an intent file was must
/// never read as a deleted cluster (its VMs would be destroyed after the grace), and a `*.yml` file
/// is a person's slip, not a removal; so both are invalid files, as is anything else that is not a
/// regular file, whatever its name.
pub(crate) fn classify(file_name: &str, shape: Shape) -> Entry {
    let yaml = file_name.strip_suffix(".yaml");
    let yml = file_name.strip_suffix(".yml");
    let stem = yaml.or(yml).unwrap_or(file_name).to_owned();
    if shape != Shape::Regular {
        let why = format!(
            "is {}, not a regular file (mode 100644 or 100755); kiln reads intent only from \
             regular files and never follows links, so the cluster `{stem}` is left as it is",
            shape.describe()
        );
        return Entry::Invalid { stem, why };
    }
    match (yaml, yml) {
        (Some(_), _) => Entry::Intent { stem },
        (None, Some(_)) => Entry::Invalid {
            why: format!(
                "ends in .yml; kiln reads only *.yaml, so the cluster `{stem}` is left as it is: \
                 rename the file to {stem}.yaml"
            ),
            stem,
        },
        (None, None) => Entry::Ignored,
    }
}

/// The tree id of the clusters folder at `rev`: `None` when the path does not exist (no cluster),
/// an error when something other than a folder stands there or on the way to it. A folder replaced
/// by a link or a submodule must read as unreadable Git, never as an empty folder.
fn clusters_folder(
    repo: &gix::Repository,
    root: ObjectId,
    clusters_dir: &str,
    rev: &str,
) -> Result<Option<ObjectId>, GitError> {
    match entry_at(repo, root, clusters_dir)? {
        None => Ok(None),
        Some((EntryKind::Tree, id, _)) => Ok(Some(id)),
        Some((kind, _, path)) => Err(GitError::NotAFolder {
            path,
            rev: rev.to_owned(),
            what: Shape::of(kind).describe(),
        }),
    }
}

/// The entry at `path` below tree `root`, walking one component at a time: `(kind, id, path
/// walked)`. The walk stops early at an entry that is not a folder, which is then the answer.
fn entry_at(
    repo: &gix::Repository,
    root: ObjectId,
    path: &str,
) -> Result<Option<(EntryKind, ObjectId, String)>, GitError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut current = root;
    let mut walked = String::new();
    for (i, part) in parts.iter().enumerate() {
        let tree = repo
            .find_tree(current)
            .map_err(|e| GitError::gix(format!("reading {walked}/"), e))?;
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
        let mut found = None;
        for entry in tree.iter() {
            let entry = entry.map_err(|e| GitError::gix(format!("looking up {walked}"), e))?;
            if entry.filename() == part.as_bytes() {
                found = Some((entry.mode().kind(), entry.object_id()));
                break;
            }
        }
        let Some((kind, id)) = found else {
            return Ok(None);
        };
        if kind != EntryKind::Tree || i + 1 == parts.len() {
            return Ok(Some((kind, id, walked)));
        }
        current = id;
    }
    Ok(Some((EntryKind::Tree, root, walked)))
}

/// Walks first-parent history from `rev` to the newest commit whose intent key differs from its
/// parent's. First-parent keeps a merge of a pull request attributed to the merge commit, which is
/// the commit that made the change real on the branch.
pub(crate) fn source_commit(
    repo: &gix::Repository,
    rev: ObjectId,
    clusters_dir: &str,
) -> Result<ObjectId, GitError> {
    let mut current = rev;
    let mut key = intent_key(repo, current, clusters_dir)?;
    loop {
        let commit = repo
            .find_commit(current)
            .map_err(|e| GitError::gix(format!("reading commit {current}"), e))?;
        let Some(parent) = commit.parent_ids().next().map(|p| p.detach()) else {
            return Ok(current);
        };
        // A shallow cache has parents it does not hold: the boundary commit is the best answer.
        if !repo.has_object(parent) {
            return Ok(current);
        }
        let parent_key = intent_key(repo, parent, clusters_dir)?;
        if parent_key != key {
            return Ok(current);
        }
        current = parent;
        key = parent_key;
    }
}

pub(crate) fn commit_tree(
    repo: &gix::Repository,
    commit: ObjectId,
) -> Result<gix::Tree<'_>, GitError> {
    repo.find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| GitError::gix(format!("reading the tree of {commit}"), e))
}

/// The id of the tree at `path` (slash-separated) inside `tree`, `None` if absent or not a tree.
pub(crate) fn subtree_id(tree: &gix::Tree<'_>, path: &str) -> Result<Option<ObjectId>, GitError> {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Ok(Some(tree.id));
    }
    let entry = tree
        .lookup_entry(path.split('/'))
        .map_err(|e| GitError::gix(format!("looking up {path}/"), e))?;
    Ok(entry.filter(|e| e.mode().is_tree()).map(|e| e.object_id()))
}

/// Every blob below tree `id`, as `(path relative to that tree, blob id)`, sorted.
pub(crate) fn list_blobs(
    repo: &gix::Repository,
    id: ObjectId,
    prefix: &str,
) -> Result<Vec<(String, ObjectId)>, GitError> {
    let tree = repo
        .find_tree(id)
        .map_err(|e| GitError::gix(format!("reading tree {prefix}"), e))?;
    let mut out = Vec::new();
    for entry in tree.iter() {
        let entry = entry.map_err(|e| GitError::gix(format!("listing tree {prefix}"), e))?;
        let path = if prefix.is_empty() {
            entry.filename().to_string()
        } else {
            format!("{prefix}/{}", entry.filename())
        };
        match entry.mode().kind() {
            EntryKind::Tree => out.extend(list_blobs(repo, entry.object_id(), &path)?),
            EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                out.push((path, entry.object_id()))
            }
            EntryKind::Commit => {}
        }
    }
    out.sort();
    Ok(out)
}

fn read_blob(repo: &gix::Repository, id: ObjectId, path: &str) -> Result<Vec<u8>, GitError> {
    repo.find_blob(id)
        .map(|mut b| b.take_data())
        .map_err(|e| GitError::gix(format!("reading {path}"), e))
}
