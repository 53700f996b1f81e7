//! The Vault/OpenBao KV v2 backend (vaultrs). Reads take two requests (metadata, then the current
//! version by number) so a soft-deleted or destroyed current version is told apart from "never
//! written", and the value returned always belongs to the version reported.

mod auth;
mod call;
mod kv;
mod settings;

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

pub use auth::{AuthStats, VaultAuth};
pub use call::RetryPolicy;
pub use settings::VaultSettings;

use self::auth::{AuthFailure, TokenAction, TokenLife, read_file};
use self::call::{CallError, raw};
use super::error::SecretsError;
use crate::redact::Secret;

/// The Vault backend: a vaultrs client whose token it keeps valid, and the KV v2 operations (`kv`).
pub struct VaultStore {
    settings: VaultSettings,
    /// Read-locked for requests, write-locked only to swap the token.
    client: RwLock<VaultClient>,
    /// Serialises logins and renewals so concurrent requests trigger one, not many.
    life: Mutex<Option<TokenLife>>,
    stats: StdMutex<AuthStats>,
    write_gate: Option<super::WriteGate>,
}

type Op<'c, T> = BoxFuture<'c, Result<T, CallError>>;

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
            write_gate: None,
        })
    }

    /// Every write request asks `gate` right before it is sent, each retry again.
    pub fn with_write_gate(mut self, gate: super::WriteGate) -> Self {
        self.write_gate = Some(gate);
        self
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
                let ttl = s
                    .life
                    .lock()
                    .await
                    .and_then(|l| l.expires.map(|_| l.period));
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
                        *life = Some(TokenLife::new(
                            Instant::now(),
                            info.lease_duration,
                            info.lease_duration,
                            info.renewable,
                            self.settings.auth.is_replaceable(),
                        ));
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
                Ok(TokenLife::new(
                    Instant::now(),
                    info.ttl,
                    info.creation_ttl,
                    info.renewable.unwrap_or(false),
                    false,
                ))
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
                Ok(TokenLife::new(
                    Instant::now(),
                    info.lease_duration,
                    info.lease_duration,
                    info.renewable,
                    true,
                ))
            }
        }
    }

    /// Runs one request with a valid token: transient failures are retried per `RetryPolicy`, a 403
    /// once after a fresh login; what remains is classified for the reconciler.
    async fn call<T, F>(&self, what: &str, op: F) -> Result<T, SecretsError>
    where
        F: for<'c> FnMut(&'c VaultClient) -> Op<'c, T>,
    {
        self.send(what, None, op).await
    }

    /// As [`VaultStore::call`] for a request that writes (`kind` names it): the write gate, if
    /// any, is asked before each attempt.
    async fn call_write<T, F>(
        &self,
        what: &str,
        kind: &'static str,
        op: F,
    ) -> Result<T, SecretsError>
    where
        F: for<'c> FnMut(&'c VaultClient) -> Op<'c, T>,
    {
        self.send(what, Some(kind), op).await
    }

    async fn send<T, F>(
        &self,
        what: &str,
        write: Option<&'static str>,
        mut op: F,
    ) -> Result<T, SecretsError>
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
                    return Err(self.login_error(&e));
                }
                Ok(()) => {
                    // Asked after the token wait, as close to the send as it can be.
                    if let (Some(kind), Some(gate)) = (write, &self.write_gate) {
                        gate(kind)?;
                    }
                    let c = self.client.read().await;
                    let outcome = op(&c).await;
                    // An absent key is Vault's answer, not a failure of Vault.
                    let answered = outcome.as_ref().map_or_else(|e| e.is_api(404), |_| true);
                    crate::metrics::request(crate::metrics::System::Vault, "api", answered);
                    outcome
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
                        return Err(self.login_error(&le));
                    }
                    Err(AuthFailure::Call(_)) => {}
                }
            }
            if e.is_transient()
                && let Some(delay) = policy.next_delay(attempt + 1)
            {
                attempt += 1;
                tracing::warn!(path = %what, attempt, reason = %e.summary(), retry_in = ?delay, "Vault request failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(self.classify(what, e, attempt + 1));
        }
    }

    fn login_error(&self, e: &CallError) -> SecretsError {
        if let CallError::Tls(message) = e {
            return SecretsError::Tls {
                addr: self.settings.addr.clone(),
                message: message.clone(),
            };
        }
        SecretsError::Login {
            message: format!(
                "{} login at {}: {}",
                self.settings.auth_kind(),
                self.settings.addr,
                e.summary()
            ),
        }
    }

    fn classify(&self, what: &str, e: CallError, attempts: u32) -> SecretsError {
        let addr = self.settings.addr.clone();
        if e.is_sealed() {
            return SecretsError::Sealed { addr };
        }
        if let CallError::Tls(message) = &e {
            return SecretsError::Tls {
                addr,
                message: message.clone(),
            };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> crate::config::SecretsConfig {
        toml::from_str(toml_text).unwrap()
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
