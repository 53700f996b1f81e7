//! Reading intent files from disk for `kiln validate` (the reconciler reads them from Git).

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadPathsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The intent files named by `paths`: a file as given (any name), a folder's `*.yaml` files
/// (not recursive, hidden files skipped, sorted). Returns `(path, text)` pairs for `load`.
/// A file that is not UTF-8 is returned lossily decoded, so it fails validation with its name
/// rather than aborting the whole run.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, LoadPathsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadPathsError::Read { path, source }
    };
    let mut out = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(read_err(path))?;
        let mut files = if meta.is_dir() {
            let mut v = Vec::new();
            for entry in fs::read_dir(path).map_err(read_err(path))? {
                let p = entry.map_err(read_err(path))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".yaml") && !name.starts_with('.') && p.is_file() {
                    v.push(p);
                }
            }
            v.sort();
            v
        } else {
            vec![path.clone()]
        };
        for f in files.drain(..) {
            let bytes = fs::read(&f).map_err(read_err(&f))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            out.push((f, text));
        }
    }
    Ok(out)
}
