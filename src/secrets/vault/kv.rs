//! The KV v2 operations of the Vault backend: the `SecretStore` port over vaultrs (and a raw PATCH
//! for merged custom metadata).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Map, Value};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;

use super::VaultStore;
use super::call::{CallError, raw};
use crate::redact::Secret;
use crate::secrets::error::SecretsError;
use crate::secrets::layout::SecretPath;
use crate::secrets::port::{MetadataPatch, SecretStore};
use crate::secrets::types::{
    CreateOutcome, CustomMetadata, Gone, ReadOutcome, SecretData, Stored, Version,
};

/// Whether a 404 means "this path does not exist" rather than "this mount does not exist".
fn not_found(e: &CallError) -> bool {
    e.is_api(404) && !e.mentions("no handler for route")
}

fn cas_mismatch(e: &CallError) -> bool {
    e.is_api(400) && e.mentions("check-and-set")
}

/// A deletion time in the past (KV v2 also sets future ones for `delete_version_after`).
fn is_past(deletion_time: &str) -> bool {
    if deletion_time.is_empty() {
        return false;
    }
    match time::OffsetDateTime::parse(
        deletion_time,
        &time::format_description::well_known::Rfc3339,
    ) {
        Ok(t) => t <= time::OffsetDateTime::now_utc(),
        Err(_) => true,
    }
}

fn to_secret_data(map: Map<String, Value>) -> SecretData {
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, Secret::new(text))
        })
        .collect()
}

impl VaultStore {
    async fn metadata(
        &self,
        path: &SecretPath,
    ) -> Result<Option<ReadSecretMetadataResponse>, SecretsError> {
        let (mount, p) = (self.settings.mount.clone(), path.as_str().to_owned());
        self.call(path.as_str(), |c| {
            let (mount, p) = (mount.clone(), p.clone());
            Box::pin(async move {
                match vaultrs::kv2::read_metadata(c, &mount, &p).await {
                    Ok(m) => Ok(Some(m)),
                    Err(e) => {
                        let e = CallError::from(e);
                        if not_found(&e) { Ok(None) } else { Err(e) }
                    }
                }
            })
        })
        .await
    }

    async fn write(
        &self,
        path: &SecretPath,
        cas: Version,
        data: &SecretData,
    ) -> Result<Result<Version, ()>, SecretsError> {
        let cas = u32::try_from(cas).map_err(|_| SecretsError::Protocol {
            path: path.to_string(),
            message: format!("version {cas} is beyond what check-and-set can name"),
        })?;
        let (mount, p) = (self.settings.mount.clone(), path.as_str().to_owned());
        // The one place values leave kiln for Vault; the JSON lives only for the request.
        let body: Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose().to_owned())))
            .collect();
        let body = Value::Object(body);
        self.call_write(path.as_str(), "a Vault write", |c| {
            let (mount, p, body) = (mount.clone(), p.clone(), body.clone());
            Box::pin(async move {
                let opts = SetSecretRequestOptions { cas };
                match vaultrs::kv2::set_with_options(c, &mount, &p, &body, opts).await {
                    Ok(meta) => Ok(Ok(meta.version)),
                    Err(e) => {
                        let e = CallError::from(e);
                        if cas_mismatch(&e) {
                            Ok(Err(()))
                        } else {
                            Err(e)
                        }
                    }
                }
            })
        })
        .await
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        format!(
            "{}/v1/{}",
            self.settings.addr.trim_end_matches('/'),
            self.settings.mount
        )
    }

    async fn check(&self) -> Result<(), SecretsError> {
        self.check_mount().await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn read(&self, path: &SecretPath) -> Result<ReadOutcome, SecretsError> {
        // A version deleted between the two requests sends us round again; three rounds is plenty.
        for _ in 0..3 {
            let Some(meta) = self.metadata(path).await? else {
                return Ok(ReadOutcome::Absent);
            };
            let custom_metadata: CustomMetadata = meta
                .custom_metadata
                .unwrap_or_default()
                .into_iter()
                .collect();
            let current = meta.current_version;
            let gone = match meta.versions.get(&current.to_string()) {
                None => Some(Gone::NoVersion),
                Some(v) if v.destroyed => Some(Gone::Destroyed),
                Some(v) if is_past(&v.deletion_time) => Some(Gone::SoftDeleted {
                    deleted_at: v.deletion_time.clone(),
                }),
                Some(_) => None,
            };
            if let Some(state) = gone {
                return Ok(ReadOutcome::DeletedOrDestroyed {
                    current_version: current,
                    state,
                    custom_metadata,
                });
            }
            let (mount, p) = (self.settings.mount.clone(), path.as_str().to_owned());
            let data = self
                .call(path.as_str(), |c| {
                    let (mount, p) = (mount.clone(), p.clone());
                    Box::pin(async move {
                        match vaultrs::kv2::read_version::<Map<String, Value>>(
                            c, &mount, &p, current,
                        )
                        .await
                        {
                            Ok(d) => Ok(Some(d)),
                            Err(e) => {
                                let e = CallError::from(e);
                                if not_found(&e) { Ok(None) } else { Err(e) }
                            }
                        }
                    })
                })
                .await?;
            if let Some(data) = data {
                return Ok(ReadOutcome::Present(Stored {
                    version: current,
                    data: to_secret_data(data),
                    custom_metadata,
                }));
            }
        }
        Err(SecretsError::Protocol {
            path: path.to_string(),
            message: "the current version kept disappearing between reads".into(),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, data, custom_metadata), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn create(
        &self,
        path: &SecretPath,
        data: &SecretData,
        custom_metadata: &CustomMetadata,
    ) -> Result<CreateOutcome, SecretsError> {
        for _ in 0..3 {
            match self.write(path, 0, data).await? {
                Ok(version) => {
                    // Only the winner writes metadata, so a loser can never overwrite the winner's
                    // mirror of its cluster-uid. A crash right here leaves the value without its
                    // metadata; the value itself still carries every key.
                    if !custom_metadata.is_empty() {
                        // Only where metadata follows: the point is "value without metadata".
                        crate::testhook::reached("secret-written");
                        let patch: MetadataPatch = custom_metadata
                            .iter()
                            .map(|(k, v)| (k.clone(), Some(v.clone())))
                            .collect();
                        self.patch_metadata(path, &patch).await?;
                    }
                    tracing::info!(version, "created secret");
                    return Ok(CreateOutcome::Created { version });
                }
                Err(()) => {
                    let now = self.read(path).await?;
                    // Destroyed between our write and our read: try once more to create.
                    if !now.is_absent() {
                        tracing::info!("secret already exists; using what is there");
                        return Ok(CreateOutcome::AlreadyExists(now));
                    }
                }
            }
        }
        Err(SecretsError::Protocol {
            path: path.to_string(),
            message: "create kept losing to a writer whose value then vanished".into(),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, data), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn overwrite(
        &self,
        path: &SecretPath,
        expected: Version,
        data: &SecretData,
    ) -> Result<Version, SecretsError> {
        match self.write(path, expected, data).await? {
            Ok(v) => Ok(v),
            Err(()) => {
                let current = self
                    .metadata(path)
                    .await?
                    .map(|m| m.current_version)
                    .filter(|v| *v != 0);
                Err(SecretsError::CasConflict {
                    path: path.clone(),
                    expected,
                    current,
                })
            }
        }
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn patch_metadata(
        &self,
        path: &SecretPath,
        patch: &MetadataPatch,
    ) -> Result<(), SecretsError> {
        // vaultrs only has the POST form, which replaces all custom metadata; PATCH merges, so two
        // writers of different keys (expires-at, bootstrapped-at) cannot erase each other's.
        let body: BTreeMap<&String, Value> = patch
            .iter()
            .map(|(k, v)| (k, v.clone().map_or(Value::Null, Value::String)))
            .collect();
        let body = serde_json::json!({ "custom_metadata": body });
        let url = format!("{}/metadata/{}", self.settings.mount, path);
        let found = self
            .call_write(path.as_str(), "a Vault metadata write", |c| {
                let (url, body) = (url.clone(), body.clone());
                Box::pin(async move {
                    match raw(
                        c,
                        reqwest::Method::PATCH,
                        &url,
                        Some(body),
                        "application/merge-patch+json",
                    )
                    .await
                    {
                        Ok(_) => Ok(true),
                        Err(e) if not_found(&e) => Ok(false),
                        Err(e) => Err(e),
                    }
                })
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(SecretsError::NotFound { path: path.clone() })
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn delete(&self, path: &SecretPath) -> Result<(), SecretsError> {
        let (mount, p) = (self.settings.mount.clone(), path.as_str().to_owned());
        self.call_write(path.as_str(), "a Vault delete", |c| {
            let (mount, p) = (mount.clone(), p.clone());
            Box::pin(async move {
                vaultrs::kv2::delete_latest(c, &mount, &p)
                    .await
                    .map_err(CallError::from)
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "vault", mount = %self.settings.mount, path = %path))]
    async fn destroy(&self, path: &SecretPath) -> Result<(), SecretsError> {
        let (mount, p) = (self.settings.mount.clone(), path.as_str().to_owned());
        self.call_write(path.as_str(), "a Vault destroy", |c| {
            let (mount, p) = (mount.clone(), p.clone());
            Box::pin(async move {
                vaultrs::kv2::delete_metadata(c, &mount, &p)
                    .await
                    .map_err(CallError::from)
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(store = "vault", mount = %self.settings.mount, dir = %dir))]
    async fn list(&self, dir: &SecretPath) -> Result<Vec<SecretPath>, SecretsError> {
        let mut out = Vec::new();
        let mut pending = vec![dir.clone()];
        while let Some(folder) = pending.pop() {
            let (mount, p) = (self.settings.mount.clone(), folder.as_str().to_owned());
            let keys = self
                .call(folder.as_str(), |c| {
                    let (mount, p) = (mount.clone(), p.clone());
                    Box::pin(async move {
                        match vaultrs::kv2::list(c, &mount, &p).await {
                            Ok(k) => Ok(k),
                            Err(e) => {
                                let e = CallError::from(e);
                                if not_found(&e) {
                                    Ok(Vec::new())
                                } else {
                                    Err(e)
                                }
                            }
                        }
                    })
                })
                .await?;
            for key in keys {
                let Some(child) = folder.join(&key) else {
                    continue;
                };
                if key.ends_with('/') {
                    pending.push(child);
                } else {
                    out.push(child);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
