//! The kubeconfig and talosconfig kiln stores for people (DESIGN §5): minting them with
//! `[talos] credential_lifetime`, reading what is left of their lives from the store's custom
//! metadata, and replacing one with check-and-set on the version just read. One path for the
//! planned renewal (`Action::RenewCredentials`), `kiln rotate` in process and the daemon's request
//! queue (`requests`).
//!
//! A renewal writes the value, then the metadata (KV v2 takes them in two requests). A crash between
//! the two leaves the new certificate under the old `issued-at`/`expires-at`: the next look judges it
//! by the old dates and renews once more. That costs one extra version, never a missing or stale
//! credential; the opposite order could leave an old certificate marked as fresh.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::state_file::rfc3339;
use super::status::CredentialStatus;
use crate::plan::{Expiry, StoredCredentials};
use crate::redact::Secret;
use crate::secrets::{
    CustomMetadata, MetadataPatch, ReadOutcome, SecretData, SecretPath, SecretPaths, SecretStore,
    SecretsError, Version, kubeconfig_keys, meta_keys, talos_keys,
};
use crate::spec::Cluster;
use crate::talos::{PkiError, SecretsBundle, credentials};

/// The two credentials kiln stores for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Credential {
    Kubeconfig,
    Talosconfig,
}

impl Credential {
    pub const BOTH: [Credential; 2] = [Credential::Kubeconfig, Credential::Talosconfig];

    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Kubeconfig => "kubeconfig",
            Credential::Talosconfig => "talosconfig",
        }
    }

    /// Its path in the store (`{prefix}/{cluster}/kubeconfig`, `…/talos`).
    pub fn path(self, paths: &SecretPaths) -> &SecretPath {
        match self {
            Credential::Kubeconfig => &paths.kubeconfig,
            Credential::Talosconfig => &paths.talos,
        }
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error(transparent)]
    Store(#[from] SecretsError),
    #[error("minting the {what}: {source}")]
    Mint {
        what: Credential,
        #[source]
        source: PkiError,
    },
}

/// Each stored credential's dates, as the status shows them.
pub type CredentialTimes = BTreeMap<Credential, CredentialStatus>;

/// A freshly minted credential: its value and the custom metadata that dates it.
pub struct Minted {
    pub data: SecretData,
    pub metadata: CustomMetadata,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl Minted {
    /// What the status shows for it once stored as `version`.
    pub fn status(&self, version: Version) -> CredentialStatus {
        CredentialStatus {
            expires_at: rfc3339(self.expires_at),
            issued_at: Some(rfc3339(self.issued_at)),
            version: Some(version),
            expires_in_seconds: None,
        }
    }
}

/// Mints `which` for `cluster` from the bundle's CAs, issued `now` for `lifetime`.
pub fn mint(
    which: Credential,
    cluster: &Cluster,
    bundle: &SecretsBundle,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Minted, RenewalError> {
    let name = cluster.name.as_str();
    let err = |source| RenewalError::Mint {
        what: which,
        source,
    };
    let (data, client) = match which {
        Credential::Kubeconfig => {
            let endpoint = cluster.endpoint();
            let kc = credentials::admin_kubeconfig_for(name, &endpoint, bundle, now, lifetime)
                .map_err(err)?;
            let data = BTreeMap::from([
                (
                    kubeconfig_keys::KUBECONFIG.to_owned(),
                    Secret::new(kc.yaml.expose()),
                ),
                (kubeconfig_keys::SERVER.to_owned(), Secret::new(&endpoint)),
                (
                    kubeconfig_keys::CA_CRT.to_owned(),
                    Secret::new(bundle.k8s_ca.cert_pem()),
                ),
                (
                    kubeconfig_keys::CLIENT_CRT.to_owned(),
                    Secret::new(&kc.client.cert.cert_pem),
                ),
                (
                    kubeconfig_keys::CLIENT_KEY.to_owned(),
                    Secret::new(kc.client.cert.key_pem.expose()),
                ),
            ]);
            (data, kc.client)
        }
        Credential::Talosconfig => {
            let ips: Vec<IpAddr> = cluster.control_planes().map(|n| IpAddr::V4(n.ip)).collect();
            let tc =
                credentials::talosconfig_for(name, &ips, bundle, now, lifetime).map_err(err)?;
            let data = BTreeMap::from([(
                talos_keys::TALOSCONFIG.to_owned(),
                Secret::new(tc.yaml.expose()),
            )]);
            (data, tc.client)
        }
    };
    // `issued-at` is the certificate's notBefore (the kubeconfig's is back-dated 10 s, as Talos
    // does), so `expires-at` − `issued-at` is exactly the lifetime it was issued with.
    let issued_at = client.not_after - lifetime;
    let metadata = CustomMetadata::from([
        (meta_keys::ISSUED_AT.to_owned(), rfc3339(issued_at)),
        (meta_keys::EXPIRES_AT.to_owned(), rfc3339(client.not_after)),
    ]);
    Ok(Minted {
        data,
        metadata,
        issued_at,
        expires_at: client.not_after,
    })
}

fn parse_time(meta: &CustomMetadata, key: &str) -> Option<OffsetDateTime> {
    meta.get(key)
        .and_then(|raw| OffsetDateTime::parse(raw, &Rfc3339).ok())
}

/// What is left of a stored credential's life at `now`, from its metadata. A credential stored before
/// kiln wrote `issued-at` was issued for Talos's year (`credentials::HUMAN_CERT_TTL`), whatever the
/// setting says today.
pub fn expiry(meta: &CustomMetadata, now: OffsetDateTime) -> Expiry {
    let Some(expires) = parse_time(meta, meta_keys::EXPIRES_AT) else {
        return Expiry::Unknown;
    };
    let lifetime = match parse_time(meta, meta_keys::ISSUED_AT) {
        Some(issued) => match Duration::try_from(expires - issued) {
            Ok(d) if !d.is_zero() => d,
            _ => return Expiry::Unknown,
        },
        None => credentials::HUMAN_CERT_TTL,
    };
    Expiry::Known {
        lifetime,
        remaining: Duration::try_from(expires - now).unwrap_or(Duration::ZERO),
    }
}

/// The stored credentials as the planner and the status see them, from the two paths' reads.
pub fn observe(
    kubeconfig: &ReadOutcome,
    talosconfig: &ReadOutcome,
    now: OffsetDateTime,
) -> (StoredCredentials, CredentialTimes) {
    let mut stored = StoredCredentials::default();
    let mut times = BTreeMap::new();
    for (which, read) in [
        (Credential::Kubeconfig, kubeconfig),
        (Credential::Talosconfig, talosconfig),
    ] {
        let ReadOutcome::Present(s) = read else {
            continue;
        };
        let e = expiry(&s.custom_metadata, now);
        match which {
            Credential::Kubeconfig => stored.kubeconfig = Some(e),
            Credential::Talosconfig => stored.talosconfig = Some(e),
        }
        if let Some(expires_at) = s.custom_metadata.get(meta_keys::EXPIRES_AT) {
            times.insert(
                which,
                CredentialStatus {
                    expires_at: expires_at.clone(),
                    issued_at: s.custom_metadata.get(meta_keys::ISSUED_AT).cloned(),
                    version: Some(s.version),
                    expires_in_seconds: None,
                },
            );
        }
    }
    (stored, times)
}

/// When a renewal goes ahead, judged again on the version it reads (a step re-checks before it acts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The planner's rule: a third of its life or less remains (`plan::credentials`).
    Due,
    /// `kiln rotate` asked at this time: renew what was issued before it. A request that is served
    /// twice (a daemon killed before it answered) still renews once — unless the first serve came
    /// within the kubeconfig's 10 s back-dating of the request, when the second renews it again:
    /// one extra version, never a lost one.
    IssuedBefore(OffsetDateTime),
}

/// How one renewal ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Renewal {
    Renewed {
        from: Version,
        to: Version,
        issued_at: String,
        expires_at: String,
    },
    /// The version read does not meet the condition (renewed meanwhile, or not due).
    NotNeeded { version: Version },
    /// Nothing readable at the path: storing it first is `StoreCredentials`'s job, and a deleted
    /// version is a person's to undelete.
    NotStored,
    /// Another writer replaced the version read before this write: nothing written; the next look
    /// judges the new version.
    LostRace {
        expected: Version,
        current: Option<Version>,
    },
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Renewal::Renewed {
                from,
                to,
                expires_at,
                ..
            } => write!(f, "renewed (version {from} → {to}, expires {expires_at})"),
            Renewal::NotNeeded { version } => {
                write!(f, "not renewed: version {version} is recent enough")
            }
            Renewal::NotStored => f.write_str("not renewed: nothing readable is stored"),
            Renewal::LostRace { expected, current } => write!(
                f,
                "not renewed: another writer replaced version {expected} (now {}) first",
                current.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            ),
        }
    }
}

/// What a renewal needs to know of the cluster.
pub struct Renewer<'a> {
    pub store: &'a dyn SecretStore,
    pub paths: &'a SecretPaths,
    pub cluster: &'a Cluster,
    pub bundle: &'a SecretsBundle,
    pub lifetime: Duration,
}

impl Renewer<'_> {
    /// Reads `which`, and when `condition` holds for the version read, replaces it with a new
    /// credential, check-and-set on that version, then dates it in the metadata.
    pub async fn renew(
        &self,
        which: Credential,
        condition: Condition,
    ) -> Result<Renewal, RenewalError> {
        let path = which.path(self.paths);
        let ReadOutcome::Present(stored) = self.store.read(path).await? else {
            return Ok(Renewal::NotStored);
        };
        let now = OffsetDateTime::now_utc();
        let wanted = match condition {
            Condition::Due => expiry(&stored.custom_metadata, now).due(),
            Condition::IssuedBefore(asked) => {
                parse_time(&stored.custom_metadata, meta_keys::ISSUED_AT)
                    .is_none_or(|issued| issued < asked)
            }
        };
        if !wanted {
            return Ok(Renewal::NotNeeded {
                version: stored.version,
            });
        }
        let minted = mint(which, self.cluster, self.bundle, now, self.lifetime)?;
        let to = match self
            .store
            .overwrite(path, stored.version, &minted.data)
            .await
        {
            Ok(v) => v,
            Err(SecretsError::CasConflict {
                expected, current, ..
            }) => return Ok(Renewal::LostRace { expected, current }),
            Err(e) => return Err(e.into()),
        };
        crate::testhook::reached("credential-renewed");
        let patch: MetadataPatch = minted
            .metadata
            .clone()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        self.store.patch_metadata(path, &patch).await?;
        Ok(Renewal::Renewed {
            from: stored.version,
            to,
            issued_at: rfc3339(minted.issued_at),
            expires_at: rfc3339(minted.expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use time::macros::datetime;

    use super::*;
    use crate::secrets::{CreateOutcome, FileStore, Prefix, secret_data};
    use crate::spec::ClusterDocument;

    fn production() -> Cluster {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/clusters/production.yaml"
        ))
        .expect("example file");
        let doc: ClusterDocument = serde_yaml::from_str(&text).expect("valid example");
        Cluster::expand(&doc).expect("expands")
    }

    /// A store where another writer replaces the value between kiln's read and its write, once.
    struct Racing {
        inner: FileStore,
        raced: AtomicBool,
    }

    #[async_trait]
    impl SecretStore for Racing {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn check(&self) -> Result<(), SecretsError> {
            self.inner.check().await
        }
        async fn read(&self, path: &SecretPath) -> Result<ReadOutcome, SecretsError> {
            self.inner.read(path).await
        }
        async fn create(
            &self,
            path: &SecretPath,
            data: &SecretData,
            meta: &CustomMetadata,
        ) -> Result<CreateOutcome, SecretsError> {
            self.inner.create(path, data, meta).await
        }
        async fn overwrite(
            &self,
            path: &SecretPath,
            expected: Version,
            data: &SecretData,
        ) -> Result<Version, SecretsError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                let theirs = secret_data([("kubeconfig", "the other writer's")]);
                self.inner.overwrite(path, expected, &theirs).await?;
            }
            self.inner.overwrite(path, expected, data).await
        }
        async fn patch_metadata(
            &self,
            path: &SecretPath,
            patch: &MetadataPatch,
        ) -> Result<(), SecretsError> {
            self.inner.patch_metadata(path, patch).await
        }
        async fn delete(&self, path: &SecretPath) -> Result<(), SecretsError> {
            self.inner.delete(path).await
        }
        async fn destroy(&self, path: &SecretPath) -> Result<(), SecretsError> {
            self.inner.destroy(path).await
        }
        async fn list(&self, dir: &SecretPath) -> Result<Vec<SecretPath>, SecretsError> {
            self.inner.list(dir).await
        }
    }

    fn current(read: ReadOutcome) -> crate::secrets::Stored {
        match read {
            ReadOutcome::Present(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn renewal_is_check_and_set_on_the_version_read_and_a_lost_race_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Racing {
            inner: FileStore::open(dir.path()).unwrap(),
            raced: AtomicBool::new(true),
        };
        let cluster = production();
        let bundle = SecretsBundle::generate().unwrap();
        let paths = SecretPaths::for_cluster(&Prefix::parse("kubernetes").unwrap(), &cluster.name);
        let lifetime = Duration::from_secs(90);
        // Stored 70 s ago for 90 s: 20 s left, inside the last third.
        let old = OffsetDateTime::now_utc() - time::Duration::seconds(70);
        let minted = mint(Credential::Kubeconfig, &cluster, &bundle, old, lifetime).unwrap();
        store
            .create(&paths.kubeconfig, &minted.data, &minted.metadata)
            .await
            .unwrap();
        let renewer = Renewer {
            store: &store,
            paths: &paths,
            cluster: &cluster,
            bundle: &bundle,
            lifetime,
        };

        let renewed = renewer
            .renew(Credential::Kubeconfig, Condition::Due)
            .await
            .unwrap();
        assert!(
            matches!(renewed, Renewal::Renewed { from: 1, to: 2, .. }),
            "{renewed:?}"
        );
        let now = current(store.read(&paths.kubeconfig).await.unwrap());
        assert_eq!(now.version, 2);
        assert!(!expiry(&now.custom_metadata, OffsetDateTime::now_utc()).due());
        // Fresh: not due, nothing written.
        assert_eq!(
            renewer
                .renew(Credential::Kubeconfig, Condition::Due)
                .await
                .unwrap(),
            Renewal::NotNeeded { version: 2 }
        );
        // Issued after the request: a rotate request served again renews nothing.
        let before = OffsetDateTime::now_utc() - time::Duration::seconds(60);
        assert_eq!(
            renewer
                .renew(Credential::Kubeconfig, Condition::IssuedBefore(before))
                .await
                .unwrap(),
            Renewal::NotNeeded { version: 2 }
        );

        // Another writer replaces version 2 after kiln read it: kiln's write is refused and it
        // does not try again.
        store.raced.store(false, Ordering::SeqCst);
        let later = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let lost = renewer
            .renew(Credential::Kubeconfig, Condition::IssuedBefore(later))
            .await
            .unwrap();
        assert_eq!(
            lost,
            Renewal::LostRace {
                expected: 2,
                current: Some(3)
            }
        );
        let after = current(store.read(&paths.kubeconfig).await.unwrap());
        assert_eq!(after.version, 3, "only the other writer's version");
        assert_eq!(
            after.data["kubeconfig"].expose(),
            "the other writer's",
            "kiln wrote nothing over it"
        );

        // Nothing stored: not kiln's to renew.
        assert_eq!(
            renewer
                .renew(Credential::Talosconfig, Condition::Due)
                .await
                .unwrap(),
            Renewal::NotStored
        );
    }

    fn meta(pairs: &[(&str, &str)]) -> CustomMetadata {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_lifetime_is_the_one_issued_with() {
        let now = datetime!(2026-12-01 00:01:00 UTC);
        let m = meta(&[
            ("issued-at", "2026-12-01T00:00:00Z"),
            ("expires-at", "2026-12-01T00:01:30Z"),
        ]);
        assert_eq!(
            expiry(&m, now),
            Expiry::Known {
                lifetime: Duration::from_secs(90),
                remaining: Duration::from_secs(30),
            }
        );
        assert!(expiry(&m, now).due());
        assert!(!expiry(&m, now - time::Duration::seconds(1)).due());
    }

    #[test]
    fn old_records_count_as_a_year_and_bad_ones_as_unknown() {
        let now = datetime!(2026-12-01 00:00 UTC);
        let m = meta(&[("expires-at", "2027-12-01T00:00:00Z")]);
        assert_eq!(
            expiry(&m, now),
            Expiry::Known {
                lifetime: credentials::HUMAN_CERT_TTL,
                remaining: credentials::HUMAN_CERT_TTL,
            }
        );
        assert_eq!(expiry(&meta(&[]), now), Expiry::Unknown);
        assert_eq!(
            expiry(&meta(&[("expires-at", "soon")]), now),
            Expiry::Unknown
        );
        // Expiring before it was issued: nothing to judge a lifetime by.
        let m = meta(&[
            ("issued-at", "2026-12-02T00:00:00Z"),
            ("expires-at", "2026-12-01T00:00:00Z"),
        ]);
        assert_eq!(expiry(&m, now), Expiry::Unknown);
        // Expired: nothing remains.
        let m = meta(&[
            ("issued-at", "2026-11-01T00:00:00Z"),
            ("expires-at", "2026-11-02T00:00:00Z"),
        ]);
        assert!(matches!(
            expiry(&m, now),
            Expiry::Known { remaining, .. } if remaining.is_zero()
        ));
    }
}
