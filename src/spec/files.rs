//! Reading intent files from disk for `kiln validate` and `kiln render` (the reconciler reads them
//! from Git). Links are never followed: a pull request could otherwise point `clusters/x.yaml` at a
//! token file and have its content echoed by a schema error into the CI log.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::load::{InvalidFile, LoadOutcome, MAX_FILE_BYTES, load};

#[derive(Debug, thiserror::Error)]
pub enum LoadPathsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; kiln does not follow links (name the folder it points to)")]
    LinkedFolder { path: PathBuf },
}

/// A file's path and its text, or why it was not read.
pub type LocalFile = (PathBuf, Result<String, String>);

/// A local file's text, or why it is not read: `Ok(Err(why))` for an entry that is not a regular
/// file (a symlink, a folder, a device) or that changed into one while it was opened. At most
/// [`MAX_FILE_BYTES`] + 1 bytes are read, so an oversized file costs no more than that and still
/// fails the size limit. A file that is not UTF-8 is decoded lossily, so it fails validation with
/// its name rather than aborting the whole run.
pub fn read_regular_file(path: &Path) -> std::io::Result<Result<String, String>> {
    let before = fs::symlink_metadata(path)?;
    if before.file_type().is_symlink() {
        return Ok(Err(
            "is a symbolic link; kiln does not follow links: commit the file itself".into(),
        ));
    }
    if !before.is_file() {
        return Ok(Err("is not a regular file".into()));
    }
    let file = fs::File::open(path)?;
    // The path may have been swapped for a link between the check and the open: compare the
    // inode actually opened with the one checked.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) || !opened.is_file() {
            return Ok(Err("changed while it was read; not a regular file".into()));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(Ok(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The intent files named by `paths`: a file as given (any name), a folder's `*.yaml` files
/// (not recursive, hidden files skipped, sorted). Returns `(path, text or why not)` pairs. In a
/// folder, a `*.yml` entry and a `*.yaml` entry that is not a regular file are kept as refused
/// (DESIGN.md §2: invalid files, never absent ones).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<LocalFile>, LoadPathsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadPathsError::Read { path, source }
    };
    let mut out = Vec::new();
    for path in paths {
        let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
        if meta.file_type().is_symlink() && fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(LoadPathsError::LinkedFolder { path: path.clone() });
        }
        if !meta.is_dir() {
            let text = read_regular_file(path).map_err(read_err(path))?;
            out.push((path.clone(), text));
            continue;
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(read_err(path))? {
            let p = entry.map_err(read_err(path))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if name.ends_with(".yaml") {
                files.push((p, None));
            } else if name.ends_with(".yml") {
                let why = "ends in `.yml`; kiln reads only `*.yaml` intent files: rename it";
                files.push((p, Some(why)));
            }
        }
        files.sort();
        for (f, refused) in files {
            let text = match refused {
                Some(why) => Err(why.to_owned()),
                None => read_regular_file(&f).map_err(read_err(&f))?,
            };
            out.push((f, text));
        }
    }
    Ok(out)
}

/// `load` over the files `paths` names, refused entries included as invalid files.
pub fn load_local(paths: &[PathBuf]) -> Result<(usize, LoadOutcome), LoadPathsError> {
    let files = load_paths(paths)?;
    let mut outcome = load(
        files
            .iter()
            .filter_map(|(p, t)| t.as_deref().ok().map(|t| (p.as_path(), t))),
    );
    for (p, t) in &files {
        if let Err(why) = t {
            outcome.invalid.push(InvalidFile::refused(p, why));
        }
    }
    Ok((files.len(), outcome))
}
