//! The HTTP edge: one `reqwest` client with API-token auth and kiln's TLS trust, PVE's JSON envelope,
//! and errors typed at the boundary. Retrying is the caller's decision (see `retry`): a POST that got
//! no answer may have run, so only the lifecycle code, which can look first, may repeat it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::error::{ProxmoxError, classify};
use super::tls::{Trust, client_config, parse_fingerprint};
use crate::config::ProxmoxConfig;
use crate::redact::Secret;

/// Capped exponential backoff with jitter for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The pause before try `n + 1`: `base · 2ⁿ`, capped, with full jitter on its upper half so
    /// several kiln tasks hitting one locked storage spread out.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.min(16));
        let d = exp.min(self.cap);
        let half = d / 2;
        let jitter = rand::random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

/// Runs `op` until it succeeds, fails permanently, or the policy's tries are spent.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, ProxmoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxmoxError>>,
{
    let mut n = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && n + 1 < policy.attempts => {
                let pause = policy.delay(n);
                tracing::warn!(%what, error = %e, attempt = n + 1, ?pause, "transient Proxmox failure; retrying");
                tokio::time::sleep(pause).await;
                n += 1;
            }
            other => return other,
        }
    }
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: Secret,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

impl Api {
    /// Builds the client from `[proxmox]` of kiln.toml, reading the token secret from its file.
    pub fn from_config(cfg: &ProxmoxConfig) -> Result<Self, ProxmoxError> {
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| ProxmoxError::Config("proxmox.url is required".into()))?;
        let token_id = cfg
            .token_id
            .as_deref()
            .ok_or_else(|| ProxmoxError::Config("proxmox.token_id is required".into()))?;
        if !token_id.contains('!') {
            return Err(ProxmoxError::Config(
                "proxmox.token_id must be `user@realm!tokenid`".into(),
            ));
        }
        let path = cfg
            .token_secret_file
            .as_ref()
            .ok_or_else(|| ProxmoxError::Config("proxmox.token_secret_file is required".into()))?;
        let secret = std::fs::read_to_string(path).map_err(|e| {
            ProxmoxError::Config(format!("proxmox.token_secret_file {}: {e}", path.display()))
        })?;
        let secret = Secret::new(secret.trim());
        let trust = if let Some(ca) = &cfg.ca_file {
            Trust::CaPem(std::fs::read(ca).map_err(|e| {
                ProxmoxError::Config(format!("proxmox.ca_file {}: {e}", ca.display()))
            })?)
        } else if let Some(fp) = &cfg.fingerprint {
            Trust::Fingerprint(parse_fingerprint(fp)?)
        } else if cfg.insecure {
            tracing::warn!(
                url,
                "proxmox.insecure = true: the PVE certificate is NOT verified; anyone on the path \
                 can read the API token and change your VMs. Set proxmox.ca_file or proxmox.fingerprint."
            );
            Trust::Insecure
        } else {
            return Err(ProxmoxError::Config(
                "set proxmox.ca_file (e.g. /etc/pve/pve-root-ca.pem) or proxmox.fingerprint; \
                 proxmox.insecure only for a throw-away lab"
                    .into(),
            ));
        };
        Self::new(url, token_id, secret, &trust)
    }

    pub fn new(
        url: &str,
        token_id: &str,
        secret: Secret,
        trust: &Trust,
    ) -> Result<Self, ProxmoxError> {
        let tls = client_config(trust)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ProxmoxError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api2/json", url.trim_end_matches('/')),
            auth: Secret::new(format!("PVEAPIToken={token_id}={}", secret.expose())),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// One request, no retry. `vmid` only sharpens error messages.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        vmid: Option<u32>,
    ) -> Result<Value, ProxmoxError> {
        let body = self.call_raw(method, path, params, vmid).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ProxmoxError::Protocol(format!("{path}: {e}")))?;
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        vmid: Option<u32>,
    ) -> Result<bytes::Bytes, ProxmoxError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", self.auth.expose());
        req = if method == Method::GET || method == Method::DELETE {
            req.query(params)
        } else {
            req.form(params)
        };
        let idempotent = method == Method::GET;
        let lost = |e: reqwest::Error| {
            if idempotent {
                ProxmoxError::Transport(format!("{method} {path}: {e}"))
            } else {
                ProxmoxError::NoAnswer {
                    method: method.to_string(),
                    path: path.to_owned(),
                }
            }
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                // Nothing was sent: safe to say so, whatever the method.
                ProxmoxError::Transport(format!("{method} {path}: {e}"))
            } else {
                lost(e)
            }
        })?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = resp.bytes().await.map_err(lost)?;
        if status == StatusCode::OK {
            return Ok(body);
        }
        Err(classify(
            status.as_u16(),
            error_message(&body, reason),
            vmid,
        ))
    }

    pub async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ProxmoxError> {
        retry(self.retry, path, || {
            self.call(Method::GET, path, params, None)
        })
        .await
    }
}

/// PVE puts the message in the HTTP reason phrase; per-parameter problems come in `errors`.
fn error_message(body: &[u8], reason: Option<String>) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut msg = v
        .get("message")
        .and_then(|m| m.as_str())
        .map(|m| m.trim().to_owned())
        .or(reason)
        .unwrap_or_else(|| "no message".into());
    if let Some(errs) = v.get("errors").and_then(|e| e.as_object()) {
        let parts: Vec<String> = errs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        msg.push_str(&format!(" ({})", parts.join("; ")));
    }
    msg
}
