//! Where snapshots go (`spec.backup.destination`): an absolute folder (local or a mounted share) or
//! `s3://bucket/prefix` on any S3-compatible store, through `object_store`'s S3 client with the
//! `[backup]` keys of kiln.toml. Both are addressed by the same relative keys (`<cluster>/<file>`),
//! so the pipeline, `kiln backup list` and `kiln restore` never ask which one they have.
//!
//! A folder is written as a careful local writer does it: a temporary name in the same folder,
//! `fsync` of the file, `rename`, `fsync` of the folder (so the new name survives a power cut), files
//! 0600 and folders 0700 (a snapshot is encrypted, but who took it and when is nobody else's).
//! S3 has no rename: `object_store` copies and deletes, which is why the pipeline names its temporary
//! objects so that a listing never takes one for a snapshot.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::BackupConfig;

/// A stream of bytes read from a destination.
pub type ByteStream = BoxStream<'static, Result<Bytes, DestError>>;

/// S3 parts: object_store's default (10 MiB) would hold 10 MiB of each upload in memory; S3's
/// minimum part is 5 MiB (every part but the last), so that is what an upload holds at most.
const PART_SIZE: usize = 5 * 1024 * 1024;
/// How much a folder read hands over at once.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("`{0}` is neither an absolute folder nor s3://bucket/prefix")]
    Unsupported(String),
    #[error("`{0}` is not a key inside the destination")]
    BadKey(String),
    #[error("{key}: not found at the destination")]
    NotFound { key: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {key} ({path}): {source}")]
    KeyFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup.s3_ca_file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("S3 {op} {key}: {source}")]
    S3 {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl DestError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// An object at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key, `<dir>/<name>`.
    pub key: String,
    pub size: u64,
}

/// A folder or an S3 prefix.
#[derive(Clone)]
pub enum Destination {
    Folder(PathBuf),
    S3 {
        store: Arc<AmazonS3>,
        bucket: String,
        prefix: String,
    },
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Destination {
    /// Opens `spec.backup.destination`. For S3 the key files of `[backup]` are read now: each
    /// use opens the destination afresh, so a rotated key is picked up without a restart.
    pub fn open(destination: &str, config: &BackupConfig) -> Result<Self, DestError> {
        if let Some(rest) = destination.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(DestError::Unsupported(destination.to_owned()));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            let store = s3_store(bucket, config)?;
            return Ok(Self::S3 {
                store: Arc::new(store),
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        let path = Path::new(destination);
        if !path.is_absolute() {
            return Err(DestError::Unsupported(destination.to_owned()));
        }
        Ok(Self::Folder(path.to_owned()))
    }

    /// Whether only this host sees it (refused under `[ha]`).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Folder(_))
    }

    /// As a person would write it.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(p) => p.display().to_string(),
            Self::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    fn file(root: &Path, key: &str) -> Result<PathBuf, DestError> {
        Ok(root.join(checked_key(key)?))
    }

    fn object(prefix: &str, key: &str) -> Result<ObjPath, DestError> {
        let key = checked_key(key)?;
        let full = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}/{key}")
        };
        ObjPath::parse(&full).map_err(|_| DestError::BadKey(key.to_owned()))
    }

    /// Starts writing `key`; nothing is visible under it until [`Upload::finish`] (S3: the
    /// multipart upload completes; folder: the file exists, unsynced, until then).
    pub async fn put_stream(&self, key: &str) -> Result<Upload, DestError> {
        match self {
            Self::Folder(root) => {
                let path = Self::file(root, key)?;
                if let Some(parent) = path.parent() {
                    create_private_dir(parent).await?;
                }
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .await
                    .map_err(|e| DestError::io("creating", &path, e))?;
                Ok(Upload::Folder { file, path })
            }
            Self::S3 { store, prefix, .. } => {
                let location = Self::object(prefix, key)?;
                let upload =
                    store
                        .put_multipart(&location)
                        .await
                        .map_err(|source| DestError::S3 {
                            op: "starting the upload of",
                            key: key.to_owned(),
                            source,
                        })?;
                Ok(Upload::S3 {
                    writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
                    key: key.to_owned(),
                })
            }
        }
    }

    /// Writes a small object whole (a manifest): a folder gets it through a temporary name and a
    /// rename, so a reader sees the old content or the new, never half.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), DestError> {
        match self {
            Self::Folder(root) => {
                let path = Self::file(root, key)?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp_key = match key.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{}{name}", super::TEMP_PREFIX),
                    None => format!("{}{name}", super::TEMP_PREFIX),
                };
                let mut upload = self.put_stream(&tmp_key).await?;
                upload.write(bytes).await?;
                upload.finish().await?;
                self.rename(&tmp_key, key).await
            }
            Self::S3 { store, prefix, .. } => {
                let location = Self::object(prefix, key)?;
                store
                    .put(&location, bytes.into())
                    .await
                    .map_err(|source| DestError::S3 {
                        op: "writing",
                        key: key.to_owned(),
                        source,
                    })?;
                Ok(())
            }
        }
    }

    /// Reads `key` as a stream of chunks.
    pub async fn get_stream(&self, key: &str) -> Result<ByteStream, DestError> {
        match self {
            Self::Folder(root) => {
                let path = Self::file(root, key)?;
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        DestError::NotFound {
                            key: key.to_owned(),
                        }
                    } else {
                        DestError::io("opening", &path, e)
                    }
                })?;
                let stream = futures::stream::try_unfold((file, path), |(mut file, path)| async {
                    let mut buf = vec![0u8; READ_CHUNK];
                    let n = file
                        .read(&mut buf)
                        .await
                        .map_err(|e| DestError::io("reading", &path, e))?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.truncate(n);
                    Ok(Some((Bytes::from(buf), (file, path))))
                });
                Ok(stream.boxed())
            }
            Self::S3 { store, prefix, .. } => {
                let location = Self::object(prefix, key)?;
                let got = store.get(&location).await.map_err(|source| match source {
                    object_store::Error::NotFound { .. } => DestError::NotFound {
                        key: key.to_owned(),
                    },
                    source => DestError::S3 {
                        op: "reading",
                        key: key.to_owned(),
                        source,
                    },
                })?;
                let key = key.to_owned();
                Ok(got
                    .into_stream()
                    .map(move |r| {
                        r.map_err(|source| DestError::S3 {
                            op: "reading",
                            key: key.clone(),
                            source,
                        })
                    })
                    .boxed())
            }
        }
    }

    /// Reads a small object whole (a manifest).
    pub async fn get(&self, key: &str) -> Result<Bytes, DestError> {
        let mut stream = self.get_stream(key).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.into())
    }

    /// The objects directly inside `dir` (a cluster's folder), by key; an absent folder is empty.
    pub async fn list(&self, dir: &str) -> Result<Vec<Object>, DestError> {
        let dir = checked_key(dir)?;
        let mut out = Vec::new();
        match self {
            Self::Folder(root) => {
                let folder = root.join(dir);
                let mut entries = match tokio::fs::read_dir(&folder).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(DestError::io("listing", &folder, e)),
                };
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| DestError::io("listing", &folder, e))?
                {
                    let meta = entry
                        .metadata()
                        .await
                        .map_err(|e| DestError::io("reading", &entry.path(), e))?;
                    if !meta.is_file() {
                        continue;
                    }
                    out.push(Object {
                        key: format!("{dir}/{}", entry.file_name().to_string_lossy()),
                        size: meta.len(),
                    });
                }
            }
            Self::S3 { store, prefix, .. } => {
                let location = Self::object(prefix, dir)?;
                let listed =
                    store
                        .list_with_delimiter(Some(&location))
                        .await
                        .map_err(|source| DestError::S3 {
                            op: "listing",
                            key: dir.to_owned(),
                            source,
                        })?;
                for meta in listed.objects {
                    let Some(name) = meta.location.filename() else {
                        continue;
                    };
                    out.push(Object {
                        key: format!("{dir}/{name}"),
                        size: meta.size,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Gives `from` the name `to`, replacing what `to` held. A folder syncs itself afterwards, so
    /// the new name is durable before this returns.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), DestError> {
        match self {
            Self::Folder(root) => {
                let (a, b) = (Self::file(root, from)?, Self::file(root, to)?);
                tokio::fs::rename(&a, &b)
                    .await
                    .map_err(|e| DestError::io("renaming", &a, e))?;
                if let Some(parent) = b.parent() {
                    sync_dir(parent).await?;
                }
                Ok(())
            }
            Self::S3 { store, prefix, .. } => {
                let (a, b) = (Self::object(prefix, from)?, Self::object(prefix, to)?);
                store.rename(&a, &b).await.map_err(|source| DestError::S3 {
                    op: "renaming",
                    key: from.to_owned(),
                    source,
                })
            }
        }
    }

    /// Removes `key`; one already gone is not an error (a prune interrupted and run again).
    pub async fn delete(&self, key: &str) -> Result<(), DestError> {
        match self {
            Self::Folder(root) => {
                let path = Self::file(root, key)?;
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(DestError::io("deleting", &path, e)),
                }
            }
            Self::S3 { store, prefix, .. } => {
                let location = Self::object(prefix, key)?;
                match store.delete(&location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(DestError::S3 {
                        op: "deleting",
                        key: key.to_owned(),
                        source,
                    }),
                }
            }
        }
    }
}

/// An object being written.
pub enum Upload {
    Folder {
        file: tokio::fs::File,
        path: PathBuf,
    },
    S3 {
        writer: WriteMultipart,
        key: String,
    },
}

impl Upload {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), DestError> {
        match self {
            Self::Folder { file, path } => file
                .write_all(&bytes)
                .await
                .map_err(|e| DestError::io("writing", path, e)),
            Self::S3 { writer, key } => {
                // Back-pressure: at most two parts in flight, so memory stays a few parts.
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|source| DestError::S3 {
                        op: "uploading",
                        key: key.clone(),
                        source,
                    })?;
                writer.put(bytes);
                Ok(())
            }
        }
    }

    /// Completes the object: a file is flushed and synced to disk, an S3 upload completed.
    pub async fn finish(self) -> Result<(), DestError> {
        match self {
            Self::Folder { mut file, path } => {
                file.flush()
                    .await
                    .map_err(|e| DestError::io("writing", &path, e))?;
                file.sync_all()
                    .await
                    .map_err(|e| DestError::io("syncing", &path, e))
            }
            Self::S3 { writer, key } => {
                writer.finish().await.map_err(|source| DestError::S3 {
                    op: "completing the upload of",
                    key,
                    source,
                })?;
                Ok(())
            }
        }
    }

    /// Gives up: the partial file is removed, the multipart upload aborted (S3 would otherwise
    /// keep, and bill, its parts).
    pub async fn abort(self) {
        match self {
            Self::Folder { file, path } => {
                drop(file);
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!("removing the partial {}: {e}", path.display());
                }
            }
            Self::S3 { writer, key } => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!("aborting the upload of {key}: {e}");
                }
            }
        }
    }
}

/// A relative key of plain names: no `..`, no absolute path, no empty part.
fn checked_key(key: &str) -> Result<&str, DestError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key.split('/').all(|p| !p.is_empty())
        && Path::new(key)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(key)
    } else {
        Err(DestError::BadKey(key.to_owned()))
    }
}

async fn create_private_dir(dir: &Path) -> Result<(), DestError> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(dir)
        .await
        .map_err(|e| DestError::io("creating the folder", dir, e))
}

async fn sync_dir(dir: &Path) -> Result<(), DestError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| DestError::io("opening the folder", dir, e))?;
    d.sync_all()
        .await
        .map_err(|e| DestError::io("syncing the folder", dir, e))
}

fn read_key(key: &'static str, path: &Path) -> Result<String, DestError> {
    let raw = std::fs::read_to_string(path).map_err(|source| DestError::KeyFile {
        key,
        path: path.to_owned(),
        source,
    })?;
    Ok(raw.trim_end_matches(['\r', '\n']).to_owned())
}

fn s3_store(bucket: &str, config: &BackupConfig) -> Result<AmazonS3, DestError> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&config.s3_region);
    let mut options = ClientOptions::new().with_allow_http(config.s3_allow_http);
    if let Some(endpoint) = &config.s3_endpoint {
        // Path-style requests: an endpoint such as MinIO's or a lab's has no wildcard DNS for
        // bucket host names.
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let Some(path) = &config.s3_access_key_id_file {
        builder = builder.with_access_key_id(read_key("backup.s3_access_key_id_file", path)?);
    }
    if let Some(path) = &config.s3_secret_access_key_file {
        builder =
            builder.with_secret_access_key(read_key("backup.s3_secret_access_key_file", path)?);
    }
    if let Some(path) = &config.s3_ca_file {
        let pem = std::fs::read(path).map_err(|e| DestError::Ca {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let certs =
            object_store::Certificate::from_pem_bundle(&pem).map_err(|e| DestError::Ca {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(DestError::Ca {
                path: path.clone(),
                message: "no certificate in the file".into(),
            });
        }
        for c in certs {
            options = options.with_root_certificate(c);
        }
    }
    builder
        .with_client_options(options)
        .build()
        .map_err(|source| DestError::S3 {
            op: "configuring",
            key: bucket.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_destination() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", "./a"] {
            assert!(checked_key(bad).is_err(), "{bad}");
        }
        assert!(checked_key("prod/20261205T050000Z-7.db.age").is_ok());
    }

    #[tokio::test]
    async fn a_folder_writes_private_files_renames_lists_and_deletes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest =
            Destination::open(dir.path().to_str().unwrap(), &BackupConfig::default()).unwrap();
        let mut up = dest.put_stream("c/.partial-x").await.unwrap();
        up.write(Bytes::from_static(b"hello ")).await.unwrap();
        up.write(Bytes::from_static(b"world")).await.unwrap();
        up.finish().await.unwrap();
        dest.rename("c/.partial-x", "c/a.db.age").await.unwrap();
        let mode = std::fs::metadata(dir.path().join("c/a.db.age"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(dir.path().join("c"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(
            dest.list("c").await.unwrap(),
            vec![Object {
                key: "c/a.db.age".into(),
                size: 11
            }]
        );
        assert_eq!(&dest.get("c/a.db.age").await.unwrap()[..], b"hello world");
        dest.put("c/a.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(dest.list("c").await.unwrap().len(), 2);
        dest.delete("c/a.db.age").await.unwrap();
        dest.delete("c/a.db.age").await.unwrap();
        assert!(matches!(
            dest.get("c/a.db.age").await,
            Err(DestError::NotFound { .. })
        ));
        assert!(dest.list("absent").await.unwrap().is_empty());
    }
}
