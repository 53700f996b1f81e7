//! The pipeline of one snapshot, and the catalogue it leaves:
//!
//! Talos's chunk stream → the database check + SHA-256 of the plaintext → age encryption → the
//! destination under a temporary name, counting size and SHA-256 of the ciphertext → once the
//! stream is complete and the revision read, the final name `<cluster>/<id>.db.age` and its
//! manifest `<cluster>/<id>.json` → the `.age` read back from the destination and checked against
//! the manifest. Only then may older snapshots be pruned, and only down to `keep` *verified* ones.
//!
//! Nothing holds the whole snapshot: each chunk is hashed, checked, encrypted and written before
//! the next is read.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::crypt::{self, Encrypting};
use super::dest::{DestError, Destination, Object};
use super::manifest::{self, Digest, FORMAT, MANIFEST_SUFFIX, Manifest, SNAPSHOT_SUFFIX};
use super::{BackupError, TEMP_PREFIX};

/// What checks the plaintext as it streams: the etcd database's format (`backup::bbolt`). A
/// failure stops the stream; the revision is read once it is complete.
pub trait PlaintextCheck: Send {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), String>;
    /// The etcd revision of the complete database.
    fn finish(self: Box<Self>) -> Result<u64, String>;
}

/// What the manifest records besides the hashes.
#[derive(Debug, Clone)]
pub struct TakeInput {
    pub cluster: String,
    /// The node the snapshot streams from (its name).
    pub node: String,
    pub talos_version: String,
    pub kubernetes_version: String,
    pub recipients: Vec<String>,
    /// When the stream started: the snapshot's time.
    pub started_at: OffsetDateTime,
}

/// Streams `snapshot` into an encrypted, named, manifested and verified snapshot at `dest`.
/// On any failure the temporary object is removed (or the upload aborted) and nothing else is
/// touched.
pub async fn take<S, E>(
    dest: &Destination,
    input: &TakeInput,
    snapshot: S,
    check: Box<dyn PlaintextCheck>,
) -> Result<Manifest, BackupError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let recipients = crypt::parse_recipients(&input.recipients)?;
    let enc = Encrypting::new(&recipients)?;
    let stamp = manifest::snapshot_id(input.started_at, 0);
    let tmp = format!(
        "{}/{TEMP_PREFIX}{stamp}-{:08x}{SNAPSHOT_SUFFIX}",
        input.cluster,
        rand::random::<u32>()
    );
    let mut upload = dest.put_stream(&tmp).await?;
    let streamed = stream_into(&mut upload, snapshot, check, enc).await;
    let (plaintext, encrypted, revision) = match streamed {
        Ok(v) => v,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    // On a failed finish a folder's temporary file may stay: the next good run removes it.
    upload.finish().await?;
    let id = manifest::snapshot_id(input.started_at, revision);
    let m = Manifest {
        format: FORMAT,
        cluster: input.cluster.clone(),
        id,
        created_at: manifest::rfc3339(input.started_at),
        revision,
        plaintext,
        encrypted,
        talos_version: input.talos_version.clone(),
        kubernetes_version: input.kubernetes_version.clone(),
        node: input.node.clone(),
        recipients: input.recipients.clone(),
    };
    if let Err(e) = dest.rename(&tmp, &m.snapshot_key()).await {
        let _ = dest.delete(&tmp).await;
        return Err(e.into());
    }
    dest.put(&m.manifest_key(), Bytes::from(m.to_json()))
        .await?;
    match verify(dest, &m).await? {
        State::Verified => Ok(m),
        state => Err(BackupError::Verify {
            id: m.id.clone(),
            reason: state.to_string(),
        }),
    }
}

async fn stream_into<S, E>(
    upload: &mut super::dest::Upload,
    mut snapshot: S,
    mut check: Box<dyn PlaintextCheck>,
    mut enc: Encrypting,
) -> Result<(Digest, Digest, u64), BackupError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let (mut plain_sha, mut plain_size) = (Sha256::new(), 0u64);
    let (mut enc_sha, mut enc_size) = (Sha256::new(), 0u64);
    while let Some(chunk) = snapshot.next().await {
        let chunk = chunk.map_err(|e| BackupError::Snapshot(e.to_string()))?;
        check.feed(&chunk).map_err(BackupError::Check)?;
        plain_sha.update(&chunk);
        plain_size += chunk.len() as u64;
        let out = enc.update(&chunk)?;
        if !out.is_empty() {
            enc_sha.update(&out);
            enc_size += out.len() as u64;
            upload.write(out).await?;
        }
    }
    let revision = check.finish().map_err(BackupError::Check)?;
    let out = enc.finish()?;
    enc_sha.update(&out);
    enc_size += out.len() as u64;
    upload.write(out).await?;
    Ok((
        Digest {
            size: plain_size,
            sha256: hex::encode(plain_sha.finalize()),
        },
        Digest {
            size: enc_size,
            sha256: hex::encode(enc_sha.finalize()),
        },
        revision,
    ))
}

/// A snapshot's verification state: its `.age` read back from the destination and compared with
/// its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Size and SHA-256 as the manifest says.
    Verified,
    /// Shorter than the manifest says.
    Truncated { size: u64, expected: u64 },
    /// Not the bytes the manifest names (altered, or longer).
    Corrupt { reason: String },
    /// A `.db.age` without a manifest (a run that stopped between the two, or a stranger's file).
    NoManifest,
    /// A manifest that does not parse.
    BadManifest { reason: String },
    /// A manifest whose `.db.age` is gone.
    Missing,
    /// Not read back (`list --no-verify`).
    Unchecked,
}

impl State {
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verified => f.write_str("verified"),
            Self::Truncated { size, expected } => {
                write!(f, "truncated ({size} of {expected} bytes)")
            }
            Self::Corrupt { reason } => write!(f, "corrupt ({reason})"),
            Self::NoManifest => f.write_str("no manifest"),
            Self::BadManifest { reason } => write!(f, "unreadable manifest ({reason})"),
            Self::Missing => f.write_str("snapshot file missing"),
            Self::Unchecked => f.write_str("not checked"),
        }
    }
}

/// Reads `m`'s `.age` back and compares its size and SHA-256 with the manifest. A destination that
/// cannot be read is an error, not a state: the snapshot may be fine.
pub async fn verify(dest: &Destination, m: &Manifest) -> Result<State, BackupError> {
    let mut stream = match dest.get_stream(&m.snapshot_key()).await {
        Ok(s) => s,
        Err(DestError::NotFound { .. }) => return Ok(State::Missing),
        Err(e) => return Err(e.into()),
    };
    let (mut sha, mut size) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        sha.update(&chunk);
        size += chunk.len() as u64;
    }
    if size < m.encrypted.size {
        return Ok(State::Truncated {
            size,
            expected: m.encrypted.size,
        });
    }
    if size > m.encrypted.size {
        return Ok(State::Corrupt {
            reason: format!("{size} bytes where the manifest says {}", m.encrypted.size),
        });
    }
    let got = hex::encode(sha.finalize());
    if got != m.encrypted.sha256 {
        return Ok(State::Corrupt {
            reason: "SHA-256 differs from the manifest".into(),
        });
    }
    Ok(State::Verified)
}

/// One snapshot of a cluster at the destination.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub manifest: Option<Manifest>,
    /// The `.db.age`'s size as listed.
    pub stored_size: Option<u64>,
    pub state: State,
}

impl Entry {
    /// The snapshot's time and revision from its manifest, or its id.
    pub fn created_at(&self) -> Option<&str> {
        self.manifest.as_ref().map(|m| m.created_at.as_str())
    }
}

/// Every snapshot of `cluster` at `dest`, oldest first, each read back and checked when `check`
/// (otherwise `Unchecked` unless a file is missing). Temporary objects are not snapshots and are
/// left out.
pub async fn catalogue(
    dest: &Destination,
    cluster: &str,
    check: bool,
) -> Result<Vec<Entry>, BackupError> {
    let objects = dest.list(cluster).await?;
    let mut ids: std::collections::BTreeMap<String, (Option<&Object>, Option<&Object>)> =
        Default::default();
    for o in &objects {
        let name = o.key.rsplit('/').next().unwrap_or(&o.key);
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        if let Some(id) = name.strip_suffix(SNAPSHOT_SUFFIX) {
            ids.entry(id.to_owned()).or_default().0 = Some(o);
        } else if let Some(id) = name.strip_suffix(MANIFEST_SUFFIX) {
            ids.entry(id.to_owned()).or_default().1 = Some(o);
        }
    }
    let mut out = Vec::new();
    for (id, (snap, man)) in ids {
        let stored_size = snap.map(|o| o.size);
        let manifest = match man {
            None => None,
            Some(o) => match dest.get(&o.key).await {
                Ok(bytes) => match Manifest::from_json(&bytes) {
                    Ok(m) => Some(m),
                    Err(reason) => {
                        out.push(Entry {
                            id,
                            manifest: None,
                            stored_size,
                            state: State::BadManifest { reason },
                        });
                        continue;
                    }
                },
                Err(DestError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let state = match (&manifest, stored_size) {
            (None, _) => State::NoManifest,
            (Some(_), None) => State::Missing,
            (Some(m), Some(_)) if check => verify(dest, m).await?,
            (Some(m), Some(size)) if size < m.encrypted.size => State::Truncated {
                size,
                expected: m.encrypted.size,
            },
            (Some(_), Some(_)) => State::Unchecked,
        };
        out.push(Entry {
            id,
            manifest,
            stored_size,
            state,
        });
    }
    Ok(out)
}

/// The ids to delete so that `keep` verified snapshots remain: walking from the newest, once
/// `keep` verified ones are counted, every older snapshot goes (verified or not). A snapshot that
/// failed its check but is newer than the `keep`-th verified one stays, so the failure stays
/// visible; it never counts towards `keep`.
pub fn prune_plan(entries: &[Entry], keep: u32) -> Vec<String> {
    let mut verified = 0u32;
    let mut out = Vec::new();
    for e in entries.iter().rev() {
        if verified >= keep {
            out.push(e.id.clone());
        } else if e.state.is_verified() {
            verified += 1;
        }
    }
    out.reverse();
    out
}

/// What one scheduled (or `kiln backup now`) run did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub snapshot: Manifest,
    /// The catalogue after pruning, each entry read back.
    pub snapshots: Vec<Entry>,
    pub pruned: Vec<String>,
    /// Temporary objects of interrupted runs that were removed.
    pub leftovers_removed: Vec<String>,
}

/// A snapshot, then (only once it verified) every other snapshot read back, the prune to `keep`,
/// and the removal of temporary leftovers of interrupted runs.
pub async fn run<S, E>(
    dest: &Destination,
    input: &TakeInput,
    snapshot: S,
    check: Box<dyn PlaintextCheck>,
    keep: u32,
) -> Result<Outcome, BackupError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let m = take(dest, input, snapshot, check).await?;
    let entries = catalogue(dest, &input.cluster, true).await?;
    let doomed = prune_plan(&entries, keep.max(1));
    for id in &doomed {
        // The snapshot first: a manifest alone lists as "snapshot file missing" if this stops
        // half-way, and is removed by the next prune.
        dest.delete(&manifest::snapshot_key(&input.cluster, id))
            .await?;
        dest.delete(&manifest::manifest_key(&input.cluster, id))
            .await?;
    }
    // One run per cluster at a time (the lock holder's), so every temporary object but this
    // run's own (already renamed) is an interrupted run's.
    let mut leftovers_removed = Vec::new();
    for o in dest.list(&input.cluster).await? {
        let name = o.key.rsplit('/').next().unwrap_or(&o.key);
        if name.starts_with(TEMP_PREFIX) {
            dest.delete(&o.key).await?;
            leftovers_removed.push(o.key);
        }
    }
    let snapshots = entries
        .into_iter()
        .filter(|e| !doomed.contains(&e.id))
        .collect();
    Ok(Outcome {
        snapshot: m,
        snapshots,
        pruned: doomed,
        leftovers_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackupConfig;

    /// A stand-in database: "REV <n>\n" then filler, checked for its first bytes.
    struct Toy {
        head: Vec<u8>,
    }
    impl PlaintextCheck for Toy {
        fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
            if self.head.len() < 4 {
                self.head.extend_from_slice(chunk);
                if self.head.len() >= 4 && !self.head.starts_with(b"REV ") {
                    return Err("not a database".into());
                }
            } else if self.head.len() < 32 {
                self.head.extend_from_slice(chunk);
            }
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<u64, String> {
            let text = String::from_utf8_lossy(&self.head);
            text.trim_start_matches("REV ")
                .split('\n')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| "no revision".into())
        }
    }

    fn db(rev: u64) -> Vec<Result<Bytes, String>> {
        let mut v = format!("REV {rev}\n").into_bytes();
        v.extend(std::iter::repeat_n(b'x', 5000));
        v.chunks(1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn input(at: i64, recipient: &str) -> TakeInput {
        TakeInput {
            cluster: "toy".into(),
            node: "toy-cp-1".into(),
            talos_version: "v1.13.9".into(),
            kubernetes_version: "v1.34.1".into(),
            recipients: vec![recipient.to_owned()],
            started_at: OffsetDateTime::from_unix_timestamp(1_800_000_000 + at).unwrap(),
        }
    }

    #[tokio::test]
    async fn snapshots_are_named_verified_and_pruned_to_keep_verified_ones() {
        let dir = tempfile::tempdir().unwrap();
        let dest =
            Destination::open(dir.path().to_str().unwrap(), &BackupConfig::default()).unwrap();
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        // A leftover of a crashed run, and a refused stream that leaves nothing behind.
        std::fs::create_dir_all(dir.path().join("toy")).unwrap();
        std::fs::write(dir.path().join("toy/.partial-old.db.age"), b"junk").unwrap();
        let bad: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from_static(b"NOPE and more"))];
        let err = run(
            &dest,
            &input(0, &r),
            futures::stream::iter(bad),
            Box::new(Toy { head: vec![] }),
            2,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BackupError::Check(_)), "{err}");
        assert_eq!(
            dest.list("toy").await.unwrap().len(),
            1,
            "only the old leftover"
        );

        let mut ids = Vec::new();
        for (i, rev) in [10u64, 20, 30].into_iter().enumerate() {
            let out = run(
                &dest,
                &input(i as i64 * 60, &r),
                futures::stream::iter(db(rev)),
                Box::new(Toy { head: vec![] }),
                2,
            )
            .await
            .unwrap();
            assert_eq!(out.snapshot.revision, rev);
            ids.push(out.snapshot.id.clone());
        }
        let now = catalogue(&dest, "toy", true).await.unwrap();
        let kept: Vec<_> = now.iter().map(|e| e.id.clone()).collect();
        assert_eq!(kept, ids[1..].to_vec());
        assert!(now.iter().all(|e| e.state.is_verified()));
        assert_eq!(dest.list("toy").await.unwrap().len(), 4, "leftover removed");

        // Truncated and altered copies are told apart, and never counted towards keep.
        let p = dir.path().join(format!("toy/{}.db.age", ids[1]));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let p2 = dir.path().join(format!("toy/{}.db.age", ids[2]));
        let mut b2 = std::fs::read(&p2).unwrap();
        let at = b2.len() - 3;
        b2[at] ^= 0xff;
        std::fs::write(&p2, &b2).unwrap();
        let now = catalogue(&dest, "toy", true).await.unwrap();
        assert!(
            matches!(now[0].state, State::Truncated { .. }),
            "{:?}",
            now[0].state
        );
        assert!(
            matches!(now[1].state, State::Corrupt { .. }),
            "{:?}",
            now[1].state
        );
        assert!(
            prune_plan(&now, 2).is_empty(),
            "nothing verified: nothing pruned"
        );
    }

    #[test]
    fn the_prune_plan_keeps_keep_verified_and_newer_failures() {
        let e = |id: &str, ok: bool| Entry {
            id: id.into(),
            manifest: None,
            stored_size: None,
            state: if ok {
                State::Verified
            } else {
                State::NoManifest
            },
        };
        let entries = vec![
            e("1", true),
            e("2", false),
            e("3", true),
            e("4", false),
            e("5", true),
        ];
        assert_eq!(prune_plan(&entries, 2), vec!["1", "2"]);
        assert_eq!(prune_plan(&entries, 1), vec!["1", "2", "3", "4"]);
        assert!(prune_plan(&entries, 3).is_empty());
    }
}
