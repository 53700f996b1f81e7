//! The file store for `kiln demo` and single-host set-ups: one JSON file per path under
//! `state_dir/secrets/`, mode 0600 in 0700 folders, with KV v2's versions, check-and-set and custom
//! metadata. Every operation holds an exclusive `flock` on `secrets/.lock`, so two writers in one process
//! (each `flock` is per open file) or in two processes serialise; a write goes to a temporary file that
//! is fsynced, renamed over the old one and followed by an fsync of the folder, so a crash leaves the old
//! or the new file, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::SecretsError;
use super::layout::SecretPath;
use super::port::{MetadataPatch, SecretStore};
use super::types::{CreateOutcome, CustomMetadata, Gone, ReadOutcome, SecretData, Stored, Version};
use crate::redact::Secret;

const LOCK_FILE: &str = ".lock";
const SUFFIX: &str = ".json";
/// KV v2's default `max_versions`.
const MAX_VERSIONS: usize = 10;

#[derive(Debug, Clone)]
pub struct FileStore {
    root: Arc<PathBuf>,
}

/// On-disk form of one path: KV v2's metadata and versions.
#[derive(Serialize, Deserialize, Default)]
struct Record {
    current_version: Version,
    #[serde(default)]
    custom_metadata: CustomMetadata,
    #[serde(default)]
    versions: BTreeMap<Version, VersionRecord>,
}

#[derive(Serialize, Deserialize)]
struct VersionRecord {
    created_time: String,
    #[serde(default)]
    deletion_time: Option<String>,
    #[serde(default)]
    destroyed: bool,
    /// `None` once destroyed.
    data: Option<BTreeMap<String, String>>,
}

impl FileStore {
    /// `root` is `state_dir/secrets`; it is created 0700 if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, SecretsError> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| SecretsError::io(&root, e))?;
        Ok(Self {
            root: Arc::new(root),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file_of(&self, path: &SecretPath) -> PathBuf {
        let mut p = (*self.root).clone();
        let segs: Vec<&str> = path.segments().collect();
        let (leaf, dirs) = segs.split_last().expect("a SecretPath has a segment");
        for d in dirs {
            p.push(d);
        }
        p.push(format!("{leaf}{SUFFIX}"));
        p
    }

    /// Runs `f` on a blocking thread while holding the store-wide lock.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, SecretsError> + Send + 'static,
    ) -> Result<T, SecretsError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let lock_path = root.join(LOCK_FILE);
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(|e| SecretsError::io(&lock_path, e))?;
            lock.lock().map_err(|e| SecretsError::io(&lock_path, e))?;
            // Dropping `lock` closes the descriptor, which releases the flock.
            f(&root)
        })
        .await
        .map_err(|e| SecretsError::Io {
            path: (*self.root).clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn load(file: &Path) -> Result<Option<Record>, SecretsError> {
    match fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SecretsError::Corrupt {
                path: file.to_owned(),
                // The store holds key material; serde would quote it.
                message: crate::spec::diagnostic::parse_error_without_values(
                    &e.to_string(),
                    Some(e.line()),
                    Some(e.column()),
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecretsError::io(file, e)),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), SecretsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SecretsError::io(dir, e))
}

fn save(file: &Path, record: &Record) -> Result<(), SecretsError> {
    let dir = file.parent().expect("a store file has a folder");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SecretsError::io(dir, e))?;
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| SecretsError::Corrupt {
        path: file.to_owned(),
        message: e.to_string(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:x}",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id(),
        rand::random::<u64>()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(SecretsError::io(file, e));
    }
    fsync_dir(dir)
}

fn to_outcome(record: Record) -> ReadOutcome {
    let Record {
        current_version,
        custom_metadata,
        mut versions,
    } = record;
    let Some(v) = versions.remove(&current_version) else {
        return ReadOutcome::DeletedOrDestroyed {
            current_version,
            state: Gone::NoVersion,
            custom_metadata,
        };
    };
    let state = if v.destroyed {
        Gone::Destroyed
    } else if let Some(at) = v.deletion_time {
        Gone::SoftDeleted { deleted_at: at }
    } else if let Some(data) = v.data {
        return ReadOutcome::Present(Stored {
            version: current_version,
            data: data.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            custom_metadata,
        });
    } else {
        Gone::Destroyed
    };
    ReadOutcome::DeletedOrDestroyed {
        current_version,
        state,
        custom_metadata,
    }
}

fn plain(data: &SecretData) -> BTreeMap<String, String> {
    data.iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect()
}

/// Appends a version the way KV v2 does, dropping the oldest beyond `MAX_VERSIONS`.
fn push_version(record: &mut Record, data: &SecretData) -> Version {
    let version = record.current_version + 1;
    record.versions.insert(
        version,
        VersionRecord {
            created_time: now(),
            deletion_time: None,
            destroyed: false,
            data: Some(plain(data)),
        },
    );
    record.current_version = version;
    while record.versions.len() > MAX_VERSIONS {
        let oldest = *record.versions.keys().next().expect("non-empty");
        record.versions.remove(&oldest);
    }
    version
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), SecretsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SecretsError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SecretsError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| SecretsError::io(dir, e))?;
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        if kind.is_dir() {
            walk(&entry.path(), &child, out)?;
        } else if let Some(leaf) = child.strip_suffix(SUFFIX) {
            out.push(leaf.to_owned());
        }
    }
    Ok(())
}

#[async_trait]
impl SecretStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn check(&self) -> Result<(), SecretsError> {
        // Taking the lock proves the folder exists and is writable by kiln.
        self.locked(|_| Ok(())).await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "file", path = %path))]
    async fn read(&self, path: &SecretPath) -> Result<ReadOutcome, SecretsError> {
        let file = self.file_of(path);
        self.locked(move |_| Ok(load(&file)?.map_or(ReadOutcome::Absent, to_outcome)))
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, data, custom_metadata), fields(store = "file", path = %path))]
    async fn create(
        &self,
        path: &SecretPath,
        data: &SecretData,
        custom_metadata: &CustomMetadata,
    ) -> Result<CreateOutcome, SecretsError> {
        let file = self.file_of(path);
        let data = data.clone();
        let custom_metadata = custom_metadata.clone();
        self.locked(move |_| {
            let mut record = match load(&file)? {
                // cas 0 succeeds only while no version exists: on a metadata-only record too, as
                // in KV v2; then the record's own metadata is kept and ours merged over it.
                Some(r) if r.current_version != 0 => {
                    return Ok(CreateOutcome::AlreadyExists(to_outcome(r)));
                }
                Some(r) => r,
                None => Record::default(),
            };
            let version = push_version(&mut record, &data);
            record.custom_metadata.extend(custom_metadata);
            save(&file, &record)?;
            Ok(CreateOutcome::Created { version })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self, data), fields(store = "file", path = %path))]
    async fn overwrite(
        &self,
        path: &SecretPath,
        expected: Version,
        data: &SecretData,
    ) -> Result<Version, SecretsError> {
        let file = self.file_of(path);
        let data = data.clone();
        let path = path.clone();
        self.locked(move |_| {
            let mut record = load(&file)?.unwrap_or_default();
            if record.current_version != expected {
                return Err(SecretsError::CasConflict {
                    path,
                    expected,
                    current: Some(record.current_version).filter(|v| *v != 0),
                });
            }
            let version = push_version(&mut record, &data);
            save(&file, &record)?;
            Ok(version)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(store = "file", path = %path))]
    async fn patch_metadata(
        &self,
        path: &SecretPath,
        patch: &MetadataPatch,
    ) -> Result<(), SecretsError> {
        let file = self.file_of(path);
        let patch = patch.clone();
        let path = path.clone();
        self.locked(move |_| {
            let Some(mut record) = load(&file)? else {
                return Err(SecretsError::NotFound { path });
            };
            for (k, v) in patch {
                match v {
                    Some(v) => record.custom_metadata.insert(k, v),
                    None => record.custom_metadata.remove(&k),
                };
            }
            save(&file, &record)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "file", path = %path))]
    async fn delete(&self, path: &SecretPath) -> Result<(), SecretsError> {
        let file = self.file_of(path);
        self.locked(move |_| {
            let Some(mut record) = load(&file)? else {
                return Ok(());
            };
            let current = record.current_version;
            if let Some(v) = record.versions.get_mut(&current) {
                if v.deletion_time.is_some() || v.destroyed {
                    return Ok(());
                }
                v.deletion_time = Some(now());
                save(&file, &record)?;
            }
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "file", path = %path))]
    async fn destroy(&self, path: &SecretPath) -> Result<(), SecretsError> {
        let file = self.file_of(path);
        self.locked(move |_| match fs::remove_file(&file) {
            Ok(()) => fsync_dir(file.parent().expect("a store file has a folder")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SecretsError::io(&file, e)),
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "file", dir = %dir))]
    async fn list(&self, dir: &SecretPath) -> Result<Vec<SecretPath>, SecretsError> {
        let mut folder = (*self.root).clone();
        folder.extend(dir.segments());
        let dir = dir.clone();
        self.locked(move |_| {
            let mut leaves = Vec::new();
            walk(&folder, "", &mut leaves)?;
            let mut paths: Vec<SecretPath> = leaves.iter().filter_map(|l| dir.join(l)).collect();
            paths.sort();
            Ok(paths)
        })
        .await
    }
}
