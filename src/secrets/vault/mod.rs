//! The Vault/OpenBao KV v2 backend (vaultrs). Reads take two requests (metadata, then the current
//! version by number) so a soft-deleted or destroyed current version is told apart from "never
//! written", and the value returned always belongs to the version reported.

mod auth;
mod call;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

pub use auth::{AuthStats, VaultAuth};
pub use call::RetryPolicy;

use self::auth::{AuthFailure, TokenAction, TokenLife, read_file};
use self::call::{CallError, raw};
use super::error::SecretsError;
use super::layout::SecretPath;
use super::port::{MetadataPatch, SecretStore};
use super::types::{CreateOutcome, CustomMetadata, Gone, ReadOutcome, SecretData, Stored, Version};
use crate::config::{SecretsBackend, SecretsConfig};
use crate::redact::Secret;

/// Everything needed to reach one KV v2 mount.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `http(s)://host:port`.
    pub addr: String,
    /// PEM bundle to verify Vault's TLS certificate; without it the system roots are used.
    pub ca_file: Option<PathBuf>,
    pub mount: String,
    pub auth: VaultAuth,
    pub retry: RetryPolicy,
    /// Per request.
    pub timeout: Duration,
}

impl VaultSettings {
    pub fn from_config(cfg: &SecretsConfig) -> Result<Self, SecretsError> {
        if cfg.backend != SecretsBackend::Vault {
            return Err(SecretsError::Config(
                "secrets.backend is not `vault`".into(),
            ));
        }
        let addr = cfg
            .addr
            .clone()
            .ok_or_else(|| SecretsError::Config("secrets.addr is required for Vault".into()))?;
        let auth = match (&cfg.role_id_file, &cfg.secret_id_file, &cfg.token_file) {
            (Some(r), Some(s), _) => VaultAuth::AppRole {
                mount: cfg.approle_mount.clone(),
                role_id_file: r.clone(),
                secret_id_file: s.clone(),
            },
            (None, None, Some(t)) => VaultAuth::TokenFile(t.clone()),
            _ => {
                return Err(SecretsError::Config(
                    "set secrets.token_file, or both secrets.role_id_file and secrets.secret_id_file"
                        .into(),
                ));
            }
        };
        Ok(Self {
            addr,
            ca_file: cfg.ca_file.clone(),
            mount: cfg.mount.trim_matches('/').to_owned(),
            auth,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        })
    }
}

pub struct VaultStore {
    settings: VaultSettings,
    /// Read-locked for requests, write-locked only to swap the token.
    client: RwLock<VaultClient>,
    /// Serialises logins and renewals so concurrent requests trigger one, not many.
    life: Mutex<Option<TokenLife>>,
    stats: StdMutex<AuthStats>,
}

type Op<'c, T> = BoxFuture<'c, Result<T, CallError>>;

/// Whether a 404 means "this path does not exist" rather than "this mount does not exist".
fn not_found(e: &CallError) -> bool {
    e.is_api(404) && !e.mentions("no handler for route")
}

fn cas_mismatch(e: &CallError) -> bool {
    e.is_api(400) && e.mentions("check-and-set")
}

impl VaultStore {
    /// Builds the client; no request is made until the first operation or `check`.
    pub fn new(settings: VaultSettings) -> Result<Self, SecretsError> {
        let mut b = VaultClientSettingsBuilder::default();
        // Everything explicit: vaultrs would otherwise fill gaps from VAULT_* environment variables.
        b.address(&settings.addr)
            .token("")
            .verify(true)
            .identity(None)
            .namespace(None)
            .timeout(Some(settings.timeout))
            .ca_certs(
                settings
                    .ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            );
        let built = b
            .build()
            .map_err(|e| SecretsError::Config(format!("secrets.addr `{}`: {e}", settings.addr)))?;
        let client = VaultClient::new(built).map_err(|e| {
            SecretsError::Config(format!(
                "Vault client for {} (ca_file {:?}): {e}",
                settings.addr, settings.ca_file
            ))
        })?;
        Ok(Self {
            settings,
            client: RwLock::new(client),
            life: Mutex::new(None),
            stats: StdMutex::new(AuthStats::default()),
        })
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    pub fn auth_stats(&self) -> AuthStats {
        *self.stats.lock().expect("stats lock")
    }

    /// Logs in and checks that the mount exists and is KV version 2, so a typo in `secrets.mount`
    /// surfaces at start-up, naming the mount, instead of as a 404 on the first bundle.
    #[tracing::instrument(level = "debug", skip(self), fields(store = "vault", mount = %self.settings.mount))]
    pub async fn check_mount(&self) -> Result<(), SecretsError> {
        let mount = self.settings.mount.clone();
        let what = format!("sys/internal/ui/mounts/{mount}");
        let found = self
            .call(&what, |c| {
                let what = what.clone();
                Box::pin(async move {
                    match raw(c, reqwest::Method::GET, &what, None, "").await {
                        Ok(v) => Ok(Some(v.unwrap_or(Value::Null))),
                        // Vault answers 403 "preflight capability check" for an unknown mount.
                        Err(e) if e.is_api(404) || e.mentions("preflight capability check") => {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                })
            })
            .await?;
        let Some(body) = found else {
            return Err(SecretsError::WrongMount {
                mount,
                problem: "does not exist (or this token may not use it)".into(),
            });
        };
        let data = &body["data"];
        let kind = data["type"].as_str().unwrap_or("");
        let version = data["options"]["version"].as_str().unwrap_or("1");
        match (kind, version) {
            ("kv", "2") => Ok(()),
            ("kv", v) => Err(SecretsError::WrongMount {
                mount,
                problem: format!("is KV version {v}; kiln needs KV version 2"),
            }),
            (other, _) => Err(SecretsError::WrongMount {
                mount,
                problem: format!("is a `{other}` engine, not KV version 2"),
            }),
        }
    }

    /// Renews or replaces the token if it is due; the daemon calls this on a timer so an idle kiln
    /// keeps a valid token (requests call it too).
    pub async fn maintain_token(&self) -> Result<(), SecretsError> {
        self.call("auth/token/renew-self", |_| Box::pin(async { Ok(()) }))
            .await
    }

    /// Keeps the token alive while kiln is idle: checks six times per TTL (at most every five
    /// minutes), so renewal lands in the last third well before expiry. Abort the handle to stop.
    pub fn keep_token_alive(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = store.upgrade() else { return };
                let ttl = s.life.lock().await.and_then(|l| l.ttl);
                let wait = ttl
                    .map(|t| t / 6)
                    .unwrap_or(Duration::from_secs(300))
                    .clamp(Duration::from_millis(500), Duration::from_secs(300));
                drop(s);
                tokio::time::sleep(wait).await;
                let Some(s) = store.upgrade() else { return };
                if let Err(e) = s.maintain_token().await {
                    tracing::warn!(error = %e, "cannot keep the Vault token alive; retrying");
                }
            }
        })
    }

    /// Brings the token up to date. `force` logs in again whatever the TTL says (after a 403).
    async fn ensure_token(&self, force: bool) -> Result<(), AuthFailure> {
        let mut life = self.life.lock().await;
        let action = match (*life, force) {
            (_, true) | (None, _) => TokenAction::Login,
            (Some(l), false) => l.action(Instant::now()),
        };
        match action {
            TokenAction::Keep => return Ok(()),
            TokenAction::Renew => {
                let renewed = {
                    let c = self.client.read().await;
                    c.renew(None).await
                };
                match renewed {
                    Ok(info) => {
                        *life = Some(TokenLife::new(info.lease_duration, info.renewable));
                        self.stats.lock().expect("stats lock").renewals += 1;
                        tracing::debug!(ttl_s = info.lease_duration, "renewed Vault token");
                        return Ok(());
                    }
                    Err(e) => {
                        let e = CallError::from(e);
                        if e.is_transient() {
                            return Err(e.into());
                        }
                        tracing::info!(reason = %e.summary(), "Vault token renewal refused; logging in again");
                    }
                }
            }
            TokenAction::Login => {}
        }
        *life = Some(self.login().await?);
        self.stats.lock().expect("stats lock").logins += 1;
        Ok(())
    }

    async fn login(&self) -> Result<TokenLife, AuthFailure> {
        match &self.settings.auth {
            VaultAuth::TokenFile(file) => {
                let token = read_file("secrets.token_file", file)?;
                self.client.write().await.set_token(token.expose());
                let c = self.client.read().await;
                let info = c.lookup().await.map_err(CallError::from)?;
                tracing::debug!(ttl_s = info.ttl, "using Vault token from file");
                Ok(TokenLife::new(info.ttl, info.renewable.unwrap_or(false)))
            }
            VaultAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_file("secrets.role_id_file", role_id_file)?;
                let secret_id = read_file("secrets.secret_id_file", secret_id_file)?;
                let info = {
                    let c = self.client.read().await;
                    vaultrs::auth::approle::login(&*c, mount, role_id.expose(), secret_id.expose())
                        .await
                        .map_err(CallError::from)?
                };
                let token = Secret::new(info.client_token);
                self.client.write().await.set_token(token.expose());
                tracing::info!(ttl_s = info.lease_duration, mount = %mount, "logged in to Vault with AppRole");
                Ok(TokenLife::new(info.lease_duration, info.renewable))
            }
        }
    }

    /// Runs one request with a valid token: transient failures are retried per `RetryPolicy`, a 403
    /// once after a fresh login; what remains is classified for the reconciler.
    async fn call<T, F>(&self, what: &str, mut op: F) -> Result<T, SecretsError>
    where
        F: for<'c> FnMut(&'c VaultClient) -> Op<'c, T>,
    {
        let policy = self.settings.retry;
        let mut attempt: u32 = 0;
        let mut relogged = false;
        loop {
            let outcome = match self.ensure_token(false).await {
                Err(AuthFailure::File(e)) => return Err(e),
                Err(AuthFailure::Call(e)) if e.is_transient() => Err(e),
                Err(AuthFailure::Call(e)) => {
                    return Err(SecretsError::Login {
                        message: format!(
                            "{:?} at {}: {}",
                            self.settings.auth_kind(),
                            self.settings.addr,
                            e.summary()
                        ),
                    });
                }
                Ok(()) => {
                    let c = self.client.read().await;
                    op(&c).await
                }
            };
            let e = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.is_api(403) && !relogged {
                relogged = true;
                tracing::info!(path = %what, "Vault said 403; logging in again");
                match self.ensure_token(true).await {
                    Ok(()) => continue,
                    Err(AuthFailure::File(fe)) => return Err(fe),
                    Err(AuthFailure::Call(le)) if !le.is_transient() => {
                        return Err(SecretsError::Login {
                            message: le.summary(),
                        });
                    }
                    Err(AuthFailure::Call(_)) => {}
                }
            }
            if e.is_transient() && attempt + 1 < policy.attempts {
                let delay = policy.delay(attempt);
                attempt += 1;
                tracing::warn!(path = %what, attempt, reason = %e.summary(), retry_in = ?delay, "Vault request failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(self.classify(what, e, attempt + 1));
        }
    }

    fn classify(&self, what: &str, e: CallError, attempts: u32) -> SecretsError {
        let addr = self.settings.addr.clone();
        if e.is_sealed() {
            return SecretsError::Sealed { addr };
        }
        if e.is_transient() {
            return SecretsError::Unavailable {
                addr,
                attempts,
                reason: e.summary(),
            };
        }
        if e.is_api(403) {
            return SecretsError::Auth {
                path: what.to_owned(),
                message: e.summary(),
            };
        }
        if e.is_api(404) && e.mentions("no handler for route") {
            return SecretsError::WrongMount {
                mount: self.settings.mount.clone(),
                problem: "is not mounted".into(),
            };
        }
        SecretsError::Protocol {
            path: what.to_owned(),
            message: e.summary(),
        }
    }

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
        self.call(path.as_str(), |c| {
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

impl VaultSettings {
    fn auth_kind(&self) -> &'static str {
        match self.auth {
            VaultAuth::TokenFile(_) => "token",
            VaultAuth::AppRole { .. } => "AppRole",
        }
    }
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
            .call(path.as_str(), |c| {
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
        self.call(path.as_str(), |c| {
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
        self.call(path.as_str(), |c| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> SecretsConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn settings_choose_approle_over_token_and_require_one() {
        let s = VaultSettings::from_config(&cfg(
            "addr = \"https://vault:8200\"\nmount = \"/admin/\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/s\"\n",
        ))
        .unwrap();
        assert_eq!(s.mount, "admin");
        assert_eq!(
            s.auth,
            VaultAuth::AppRole {
                mount: "approle".into(),
                role_id_file: "/r".into(),
                secret_id_file: "/s".into()
            }
        );
        let t =
            VaultSettings::from_config(&cfg("addr = \"http://v\"\ntoken_file = \"/t\"\n")).unwrap();
        assert_eq!(t.auth, VaultAuth::TokenFile("/t".into()));
        assert!(VaultSettings::from_config(&cfg("addr = \"http://v\"\n")).is_err());
        assert!(VaultSettings::from_config(&cfg("token_file = \"/t\"\n")).is_err());
        assert!(
            VaultSettings::from_config(&cfg(
                "addr = \"http://v\"\nrole_id_file = \"/r\"\ntoken_file = \"/t\"\n"
            ))
            .is_err(),
            "half an AppRole is a mistake, not a fallback to the token"
        );
    }

    #[test]
    fn a_bad_address_is_a_config_error() {
        let mut s =
            VaultSettings::from_config(&cfg("addr = \"ftp://v\"\ntoken_file = \"/t\"\n")).unwrap();
        assert!(matches!(
            VaultStore::new(s.clone()),
            Err(SecretsError::Config(_))
        ));
        s.addr = "http://127.0.0.1:1".into();
        assert!(VaultStore::new(s).is_ok());
    }
}
