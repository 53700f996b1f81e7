//! Builds kiln's commit of generated files on a given parent: the parent's tree with everything
//! under `output_dir` replaced by exactly the generated set, and nothing else touched.

use std::collections::BTreeMap;

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use super::GitError;
use super::snapshot::{commit_tree, list_blobs, subtree_id};

/// The files kiln generates, keyed by path relative to `output_dir`.
pub type Generated = BTreeMap<String, Vec<u8>>;

/// `name <email>` from `git.author`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Author {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, rest) = s
            .split_once('<')
            .ok_or_else(|| format!("git.author `{s}` is not `Name <email>`"))?;
        let email = rest
            .strip_suffix('>')
            .ok_or_else(|| format!("git.author `{s}` is not `Name <email>`"))?;
        let name = name.trim();
        if name.is_empty() || email.is_empty() || email.contains(['<', '>']) {
            return Err(format!("git.author `{s}` is not `Name <email>`"));
        }
        Ok(Self {
            name: name.to_string(),
            email: email.to_string(),
        })
    }
}

/// The commit message: a subject naming the clusters and the `Kiln-Source` trailer.
pub fn message(clusters_changed: &[String], source: ObjectId) -> String {
    let subject = if clusters_changed.is_empty() {
        "kiln: update generated files".to_string()
    } else {
        format!("kiln: render {}", clusters_changed.join(", "))
    };
    let mut body = String::new();
    for c in clusters_changed {
        body.push_str(&format!("- {c}\n"));
    }
    if body.is_empty() {
        format!("{subject}\n\nKiln-Source: {source}\n")
    } else {
        format!("{subject}\n\nClusters:\n{body}\nKiln-Source: {source}\n")
    }
}

/// Rejects anything that could escape `output_dir` or make an odd tree entry.
pub(crate) fn check_path(path: &str) -> Result<(), GitError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c == ".git" || c.contains('\0'));
    if bad {
        Err(GitError::BadOutputPath(path.to_string()))
    } else {
        Ok(())
    }
}

/// Writes the tree and, if it differs from `parent`'s, a commit; returns `None` when nothing changed.
pub(crate) fn build_commit(
    repo: &gix::Repository,
    parent: ObjectId,
    output_dir: &str,
    generated: &Generated,
    author: &Author,
    message: &str,
) -> Result<Option<ObjectId>, GitError> {
    let output_dir = output_dir.trim_matches('/');
    check_path(output_dir)?;
    for p in generated.keys() {
        check_path(p)?;
    }
    let base = commit_tree(repo, parent)?;
    let base_id = base.id;
    let existing: BTreeMap<String, ObjectId> = match subtree_id(&base, output_dir)? {
        Some(t) => list_blobs(repo, t, "")?.into_iter().collect(),
        None => BTreeMap::new(),
    };

    let mut editor = base
        .edit()
        .map_err(|e| GitError::gix("editing the tree", e))?;
    for path in existing.keys().filter(|p| !generated.contains_key(*p)) {
        editor
            .remove(format!("{output_dir}/{path}").as_str())
            .map_err(|e| GitError::gix(format!("removing {output_dir}/{path}"), e))?;
    }
    for (path, bytes) in generated {
        let blob = repo
            .write_blob(bytes)
            .map_err(|e| GitError::gix(format!("writing {output_dir}/{path}"), e))?
            .detach();
        if existing.get(path) != Some(&blob) {
            editor
                .upsert(
                    format!("{output_dir}/{path}").as_str(),
                    EntryKind::Blob,
                    blob,
                )
                .map_err(|e| GitError::gix(format!("adding {output_dir}/{path}"), e))?;
        }
    }
    let tree = editor
        .write()
        .map_err(|e| GitError::gix("writing the tree", e))?
        .detach();
    if tree == base_id {
        return Ok(None);
    }

    write_commit(repo, parent, tree, author, message).map(Some)
}

/// A change to one intent file, as the HTTP API makes it (DESIGN.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentEdit {
    /// Create or replace `clusters_dir/<name>.yaml`.
    Put { name: String, text: String },
    /// Delete `clusters_dir/<name>.yaml` (decommission, after the grace period).
    Remove { name: String },
}

impl IntentEdit {
    pub fn name(&self) -> &str {
        match self {
            IntentEdit::Put { name, .. } | IntentEdit::Remove { name } => name,
        }
    }
}

/// Applies intent edits on `parent`; touches `clusters_dir/<name>.yaml` files only. `None` when the
/// tree does not change (e.g. the same file written twice).
pub(crate) fn build_intent_commit(
    repo: &gix::Repository,
    parent: ObjectId,
    clusters_dir: &str,
    edits: &[IntentEdit],
    author: &Author,
    message: &str,
) -> Result<Option<ObjectId>, GitError> {
    let clusters_dir = clusters_dir.trim_matches('/');
    check_path(clusters_dir)?;
    let base = commit_tree(repo, parent)?;
    let base_id = base.id;
    let mut editor = base
        .edit()
        .map_err(|e| GitError::gix("editing the tree", e))?;
    for edit in edits {
        let file = format!("{}.yaml", edit.name());
        if file.contains('/') {
            return Err(GitError::BadOutputPath(file));
        }
        check_path(&file)?;
        let path = format!("{clusters_dir}/{file}");
        match edit {
            IntentEdit::Put { text, .. } => {
                let blob = repo
                    .write_blob(text.as_bytes())
                    .map_err(|e| GitError::gix(format!("writing {path}"), e))?
                    .detach();
                editor
                    .upsert(path.as_str(), EntryKind::Blob, blob)
                    .map_err(|e| GitError::gix(format!("adding {path}"), e))?;
            }
            IntentEdit::Remove { .. } => {
                editor
                    .remove(path.as_str())
                    .map_err(|e| GitError::gix(format!("removing {path}"), e))?;
            }
        }
    }
    let tree = editor
        .write()
        .map_err(|e| GitError::gix("writing the tree", e))?
        .detach();
    if tree == base_id {
        return Ok(None);
    }
    write_commit(repo, parent, tree, author, message).map(Some)
}

fn write_commit(
    repo: &gix::Repository,
    parent: ObjectId,
    tree: ObjectId,
    author: &Author,
    message: &str,
) -> Result<ObjectId, GitError> {
    let sig = gix::actor::Signature {
        name: author.name.as_str().into(),
        email: author.email.as_str().into(),
        time: gix::date::Time::now_utc(),
    };
    let commit = gix::objs::Commit {
        tree,
        parents: [parent].into_iter().collect(),
        author: sig.clone(),
        committer: sig,
        encoding: None,
        message: message.into(),
        extra_headers: Vec::new(),
    };
    // Written as a bare object: no local branch moves until the push has been accepted.
    Ok(repo
        .write_object(&commit)
        .map_err(|e| GitError::gix("writing the commit", e))?
        .detach())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn author_parses_name_and_email() {
        assert_eq!(
            Author::parse("kiln <kiln@localhost>").unwrap(),
            Author {
                name: "kiln".into(),
                email: "kiln@localhost".into()
            }
        );
        assert!(Author::parse("kiln").is_err());
        assert!(Author::parse("<a@b>").is_err());
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in ["", "/abs", "a/../b", "a//b", "./a", ".git/config", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        check_path("bootstrap/prod/app.yaml").unwrap();
    }

    #[test]
    fn message_lists_clusters_and_trailer() {
        let id = ObjectId::null(gix::hash::Kind::Sha1);
        let m = message(&["a".into(), "b".into()], id);
        assert!(m.starts_with("kiln: render a, b\n\n"));
        assert!(m.ends_with(&format!("\nKiln-Source: {id}\n")));
    }
}
