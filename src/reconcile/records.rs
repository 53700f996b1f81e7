//! What kiln remembers between cycles and restarts, per cluster it manages (`state_dir/records.json`).
//! Everything here can be rebuilt from observation except two things observation cannot give: which
//! clusters kiln made (so a deleted file is told from a never-known one) and the spec last applied
//! (so a file that turns invalid, or is deleted, still renders and still names its VMs). A record is
//! dropped only once Proxmox confirms the cluster's VMs are gone (DESIGN.md §7).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secrets::{
    CreateOutcome, Prefix, ReadOutcome, SecretPath, SecretStore, SecretsError, Version,
};
use crate::spec::ClusterName;
pub use crate::talos::ClusterUid;

/// Timestamps are RFC 3339 text in the file, as the previous versions wrote them. A value that does
/// not parse fails the whole load, naming the file, line and column: read as "absent" instead, a
/// corrupt `missing_since` would restart a cluster's grace at every cycle and keep it forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The text of the intent file last applied successfully (or, before the first success, the
    /// first valid text seen: kiln may have made VMs for it).
    pub spec_text: String,
    /// Its repository path, for messages.
    pub path: String,
    /// The intent revision whose apply last succeeded.
    pub applied_revision: Option<String>,
    /// kiln's identity of this cluster incarnation (the bundle's `cluster-uid`), once known.
    pub cluster_uid: Option<ClusterUid>,
    /// `deletionProtection` of the last valid text.
    pub protected: bool,
    /// When the file was first seen missing; cleared when it comes back.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub missing_since: Option<OffsetDateTime>,
    /// When the last full observation (secrets, Talos, Kubernetes) ran.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deep_checked_at: Option<OffsetDateTime>,
    /// Node number → when kiln started its VM, until the node first answers: what
    /// `[talos] boot_timeout` is measured from (no listing says when a VM started).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "rfc3339_map"
    )]
    pub started_at: BTreeMap<u32, OffsetDateTime>,
    /// A node that did not come back healthy from a Talos upgrade: the rollout stays stopped (the
    /// plan is `Blocked` naming it) until the node is seen healthy on that version or the intent
    /// changes, so a restart does not upgrade it again blindly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_upgrade: Option<crate::plan::upgrade::FailedUpgrade>,
}

/// `started_at`'s values in the same RFC 3339 text as the other timestamps.
mod rfc3339_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::OffsetDateTime;

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Stamp(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<u32, OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let stamps: BTreeMap<u32, Stamp> = map.iter().map(|(k, v)| (*k, Stamp(*v))).collect();
        stamps.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, OffsetDateTime>, D::Error> {
        let stamps = BTreeMap::<u32, Stamp>::deserialize(d)?;
        Ok(stamps.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub clusters: BTreeMap<ClusterName, ClusterRecord>,
    /// Hash of what was last published (intent texts, templates, kiln's version, render settings):
    /// equal means the generated files are already at the tip, so no fetch or commit is needed.
    pub published_key: Option<String>,
}

impl Records {
    pub const FILE: &'static str = "records.json";

    pub fn load(state_dir: &Path) -> io::Result<Self> {
        super::state_file::load(state_dir, Self::FILE)
    }

    /// Synced and renamed into place: a crash leaves the old or the new file.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        super::state_file::save(state_dir, Self::FILE, self)
    }
}

/// `[ha]`: the records in the secret store every instance shares (`{prefix}/_kiln/records`, one KV
/// entry holding `records.json`'s text), so the instance that takes the Lease carries on what
/// another started — a decommission of a file removed while the other led, a half-made cluster's
/// record — instead of knowing only the clusters it recorded itself (docs/ha.md).
///
/// Every write is a check-and-set on the version this instance last read or wrote: a leader that
/// lost the Lease without noticing cannot overwrite what its successor wrote since (the successor's
/// write moved the version on; Vault answers the stale one with a conflict). Writes also pass the
/// leader gate of the store they go through.
pub struct SharedRecords {
    store: std::sync::Arc<dyn SecretStore>,
    path: SecretPath,
    /// The KV version last read or written: the next write's check-and-set.
    version: Option<Version>,
    /// The text last read or written: an unchanged one is not written again, so a cycle that
    /// changed nothing sends Vault nothing.
    text: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SharedRecordsError {
    #[error("shared records at `{path}`: {source}")]
    Store {
        path: SecretPath,
        #[source]
        source: SecretsError,
    },
    /// Another instance wrote since this one read: this one no longer leads (or never did).
    #[error(
        "shared records at `{path}` changed since this instance read them: another instance leads now"
    )]
    Conflict { path: SecretPath },
    #[error(
        "shared records at `{path}` were deleted or destroyed in the secret store; kiln will not start them afresh (it would forget which clusters it made): undelete them or restore them from a local records.json"
    )]
    Deleted { path: SecretPath },
    #[error("shared records at `{path}` do not parse: {message}")]
    Corrupt { path: SecretPath, message: String },
}

impl SharedRecords {
    /// The KV key holding the JSON text.
    pub const KEY: &'static str = "records.json";

    pub fn new(store: std::sync::Arc<dyn SecretStore>, prefix: &Prefix) -> Self {
        Self {
            store,
            path: crate::secrets::shared_records(prefix),
            version: None,
            text: None,
        }
    }

    pub fn path(&self) -> &SecretPath {
        &self.path
    }

    /// The records as stored now, `None` when no instance ever wrote them.
    pub async fn load(&mut self) -> Result<Option<Records>, SharedRecordsError> {
        let read =
            self.store
                .read(&self.path)
                .await
                .map_err(|source| SharedRecordsError::Store {
                    path: self.path.clone(),
                    source,
                })?;
        let stored = match read {
            ReadOutcome::Absent => {
                self.version = None;
                self.text = None;
                return Ok(None);
            }
            ReadOutcome::DeletedOrDestroyed { .. } => {
                return Err(SharedRecordsError::Deleted {
                    path: self.path.clone(),
                });
            }
            ReadOutcome::Present(stored) => stored,
        };
        let corrupt = |message: String| SharedRecordsError::Corrupt {
            path: self.path.clone(),
            message,
        };
        let text = stored
            .data
            .get(Self::KEY)
            .ok_or_else(|| corrupt(format!("no `{}` key", Self::KEY)))?
            .expose()
            .to_owned();
        let records: Records = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        self.version = Some(stored.version);
        self.text = Some(text);
        Ok(Some(records))
    }

    /// Writes `records` unless they are what was last read or written. The first write creates
    /// the entry (create-only: two instances seeding at once cannot both win).
    pub async fn save(&mut self, records: &Records) -> Result<(), SharedRecordsError> {
        let text =
            serde_json::to_string_pretty(records).map_err(|e| SharedRecordsError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        if self.text.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let data = crate::secrets::secret_data([(Self::KEY, text.clone())]);
        let store_error = |source| SharedRecordsError::Store {
            path: self.path.clone(),
            source,
        };
        let version = match self.version {
            None => match self
                .store
                .create(&self.path, &data, &Default::default())
                .await
                .map_err(store_error)?
            {
                CreateOutcome::Created { version } => version,
                CreateOutcome::AlreadyExists(_) => {
                    return Err(SharedRecordsError::Conflict {
                        path: self.path.clone(),
                    });
                }
            },
            Some(expected) => match self.store.overwrite(&self.path, expected, &data).await {
                Ok(v) => v,
                Err(SecretsError::CasConflict { .. }) => {
                    return Err(SharedRecordsError::Conflict {
                        path: self.path.clone(),
                    });
                }
                Err(e) => return Err(store_error(e)),
            },
        };
        self.version = Some(version);
        self.text = Some(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    fn shared(store: &std::sync::Arc<crate::secrets::FileStore>) -> SharedRecords {
        SharedRecords::new(store.clone(), &Prefix::parse("kubernetes").unwrap())
    }

    /// Two instances' handles on one store: what one wrote, the other reads; a write from a handle
    /// that has not seen the latest version is refused, so a former leader cannot undo its
    /// successor's records.
    #[tokio::test]
    async fn shared_records_are_read_by_the_next_leader_and_a_stale_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::secrets::FileStore::open(dir.path()).unwrap());
        let (mut a, mut b) = (shared(&store), shared(&store));
        assert_eq!(a.path().as_str(), "kubernetes/_kiln/records");
        assert_eq!(a.load().await.unwrap(), None);

        let mut records = Records::default();
        records.clusters.insert(
            name("prod"),
            ClusterRecord {
                spec_text: "name: prod\n".into(),
                missing_since: Some(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()),
                ..Default::default()
            },
        );
        a.save(&records).await.unwrap();
        assert_eq!(b.load().await.unwrap().as_ref(), Some(&records));

        // b leads now and writes; a, which did not read since, is refused.
        records.clusters.remove("prod");
        b.save(&records).await.unwrap();
        let mut stale = records.clone();
        stale.published_key = Some("a's".into());
        assert!(matches!(
            a.save(&stale).await,
            Err(SharedRecordsError::Conflict { .. })
        ));
        assert_eq!(shared(&store).load().await.unwrap(), Some(records.clone()));

        // Two first writers: only one creates the entry.
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::secrets::FileStore::open(dir.path()).unwrap());
        let (mut a, mut b) = (shared(&store), shared(&store));
        a.save(&records).await.unwrap();
        assert!(matches!(
            b.save(&stale).await,
            Err(SharedRecordsError::Conflict { .. })
        ));
    }

    /// A cycle that changed nothing writes nothing: the version stays.
    #[tokio::test]
    async fn unchanged_shared_records_are_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::secrets::FileStore::open(dir.path()).unwrap());
        let mut a = shared(&store);
        let records = Records {
            published_key: Some("k".into()),
            ..Default::default()
        };
        a.save(&records).await.unwrap();
        let version = |s: &std::sync::Arc<crate::secrets::FileStore>| {
            let s = s.clone();
            async move {
                match s
                    .read(&crate::secrets::shared_records(
                        &Prefix::parse("kubernetes").unwrap(),
                    ))
                    .await
                    .unwrap()
                {
                    ReadOutcome::Present(p) => p.version,
                    other => panic!("{other:?}"),
                }
            }
        };
        let v1 = version(&store).await;
        a.save(&records).await.unwrap();
        a.load().await.unwrap();
        a.save(&records).await.unwrap();
        assert_eq!(version(&store).await, v1);
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Records::load(dir.path()).unwrap(), Records::default());
        let mut r = Records::default();
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        r.clusters.insert(
            name("prod"),
            ClusterRecord {
                spec_text: "x".into(),
                cluster_uid: Some(ClusterUid::generate()),
                missing_since: Some(t),
                started_at: BTreeMap::from([(2, t)]),
                ..Default::default()
            },
        );
        r.save(dir.path()).unwrap();
        assert_eq!(Records::load(dir.path()).unwrap(), r);
    }

    /// What the previous version (timestamps as strings from `state_file::rfc3339`) wrote.
    const PREVIOUS_VERSION: &str = r#"{
  "clusters": {
    "production": {
      "spec_text": "name: production\n",
      "path": "clusters/production.yaml",
      "applied_revision": "abc",
      "cluster_uid": "0b7c3a52-5d0e-4a8e-9f3b-2a1c4d5e6f70",
      "protected": false,
      "missing_since": "2026-12-01T10:00:00.123456789Z",
      "deep_checked_at": "2026-12-01T09:59:00Z",
      "started_at": {
        "1": "2026-12-01T09:58:00.5+01:00"
      }
    },
    "staging": {
      "spec_text": "",
      "path": "",
      "applied_revision": null,
      "cluster_uid": null,
      "protected": true,
      "missing_since": null,
      "deep_checked_at": null
    }
  },
  "published_key": "k"
}"#;

    #[test]
    fn reads_what_the_previous_version_wrote_and_writes_the_same_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(Records::FILE), PREVIOUS_VERSION).unwrap();
        let r = Records::load(dir.path()).unwrap();
        let prod = &r.clusters["production"];
        assert_eq!(
            prod.cluster_uid.as_ref().unwrap().as_str(),
            "0b7c3a52-5d0e-4a8e-9f3b-2a1c4d5e6f70"
        );
        assert_eq!(
            prod.missing_since.unwrap(),
            time::macros::datetime!(2026-12-01 10:00:00.123456789 UTC)
        );
        assert_eq!(
            prod.started_at[&1],
            time::macros::datetime!(2026-12-01 08:58:00.5 UTC)
        );
        assert!(r.clusters["staging"].missing_since.is_none());

        // Written back: the same JSON shape (field names, RFC 3339 text, keys by name).
        r.save(dir.path()).unwrap();
        let old: serde_json::Value = serde_json::from_str(PREVIOUS_VERSION).unwrap();
        let new: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(Records::FILE)).unwrap())
                .unwrap();
        let fields = |v: &serde_json::Value, c: &str| -> Vec<String> {
            v["clusters"][c]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(fields(&new, "production"), fields(&old, "production"));
        assert_eq!(fields(&new, "staging"), fields(&old, "staging"));
        assert_eq!(
            new["clusters"]["production"]["missing_since"],
            "2026-12-01T10:00:00.123456789Z"
        );
        assert_eq!(
            new["clusters"]["production"]["cluster_uid"],
            "0b7c3a52-5d0e-4a8e-9f3b-2a1c4d5e6f70"
        );
    }

    #[test]
    fn a_corrupt_timestamp_is_a_load_error_naming_the_file_not_an_endless_grace() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = PREVIOUS_VERSION.replace("2026-12-01T10:00:00.123456789Z", "yesterday");
        std::fs::write(dir.path().join(Records::FILE), corrupt).unwrap();
        let e = Records::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let message = e.to_string();
        assert!(message.contains(Records::FILE), "{message}");
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn a_record_under_a_name_that_is_not_a_cluster_name_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = PREVIOUS_VERSION.replace("\"staging\"", "\"Not A Name\"");
        std::fs::write(dir.path().join(Records::FILE), corrupt).unwrap();
        assert!(Records::load(dir.path()).is_err());
    }
}
