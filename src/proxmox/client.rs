//! The HTTP edge: one `reqwest` client with API-token auth and kiln's TLS trust, PVE's JSON envelope,
//! and errors typed at the boundary. Retrying is the caller's decision (see `retry`): a POST that got
//! no answer may have run, so only the lifecycle code, which can look first, may repeat it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::error::{ProxmoxError, classify};
use super::tls::{Trust, client_config, parse_fingerprint};
use crate::config::ProxmoxConfig;
use crate::redact::Secret;

/// Proxmox's retry rule is kiln's one rule (`crate::retry`): capped exponential backoff with jitter,
/// ending with the reconciler step's budget so it never nests a long wait inside the step's own backoff.
pub type RetryPolicy = crate::retry::Policy;

/// Eight tries from 250 ms up to 15 s: enough to ride out a storage lock held by another task.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 8,
    initial: Duration::from_millis(250),
    max: Duration::from_secs(15),
    jitter: 0.5,
};

/// Runs `op` until it succeeds, fails permanently, or the policy's tries or the step's budget are spent.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, ProxmoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxmoxError>>,
{
    let (result, _) = policy
        .run(
            |_| op(),
            |e: &ProxmoxError| {
                let transient = e.is_transient();
                if transient {
                    tracing::warn!(%what, error = %e, "transient Proxmox failure");
                }
                transient
            },
        )
        .await;
    result
}

/// One HTTP exchange with the PVE API, below everything that is kiln's own reading of it (the
/// `{"data": …}` envelope, error classification, retries, task waits). `path` is relative to
/// `/api2/json`. The real server is reached with [`ReqwestTransport`]; `sim::pve` answers in memory,
/// so the demo and the engine tests run this module and the adapter unchanged.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Reply, TransportError>;

    /// Names the far end in logs (`Api`'s `Debug`).
    fn describe(&self) -> String;
}

/// What came back: any HTTP status, PVE's message in the reason phrase, the body as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub reason: Option<String>,
    pub body: bytes::Bytes,
}

/// Why no reply came. The difference decides whether a POST may be repeated blindly.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing reached the server (no connection): safe to say so, whatever the method.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the server and run; the answer was lost.
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// Not sent because this instance may not write (`[ha]`): not retried.
    #[error("{0}")]
    Withheld(String),
}

/// The PVE API over HTTPS, with API-token auth and kiln's TLS trust.
pub struct ReqwestTransport {
    http: reqwest::Client,
    base: String,
    auth: Secret,
}

impl ReqwestTransport {
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
        })
    }
}

#[async_trait]
impl Transport for ReqwestTransport {
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Reply, TransportError> {
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
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                TransportError::NotSent(e.to_string())
            } else {
                TransportError::NoAnswer(e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        // Chunk by chunk into one buffer sized by Content-Length: `Response::bytes` keeps every chunk
        // while it copies them into one, so the 2 MB listing of 5,000 VMs briefly took 4 MB (the
        // daemon's peak RSS; benches/scale.rs, heaptrack).
        let mut resp = resp;
        let expected = resp.content_length().unwrap_or(0).min(MAX_PRESIZE) as usize;
        let mut body = Vec::with_capacity(expected);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| TransportError::NoAnswer(e.to_string()))?
        {
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            reason,
            body: body.into(),
        })
    }

    fn describe(&self) -> String {
        self.base.clone()
    }
}

/// The most a reply's announced length reserves before its bytes arrive (a listing of 50,000 VMs is
/// about 20 MB).
const MAX_PRESIZE: u64 = 32 << 20;

pub struct Api {
    transport: Arc<dyn Transport>,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.transport.describe())
            .finish()
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

    /// The real server at `url` (`https://host:8006`).
    pub fn new(
        url: &str,
        token_id: &str,
        secret: Secret,
        trust: &Trust,
    ) -> Result<Self, ProxmoxError> {
        Ok(Self::over(Arc::new(ReqwestTransport::new(
            url, token_id, secret, trust,
        )?)))
    }

    /// Any transport: the simulated PVE (`sim::pve`), or a test's.
    pub fn over(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            retry: DEFAULT_RETRY,
        }
    }

    /// The same client with `wrap` in front of its transport (`[ha]`'s leader gate).
    pub fn wrap_transport(
        mut self,
        wrap: impl FnOnce(Arc<dyn Transport>) -> Arc<dyn Transport>,
    ) -> Self {
        self.transport = wrap(self.transport);
        self
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
        let reply = self.transport.exchange(&method, path, params).await;
        crate::metrics::request(
            crate::metrics::System::Proxmox,
            method_name(&method),
            matches!(&reply, Ok(r) if r.status == StatusCode::OK.as_u16()),
        );
        let reply = reply.map_err(|e| match e {
            TransportError::NotSent(m) => ProxmoxError::Transport(format!("{method} {path}: {m}")),
            // A lost GET is only a lost read; anything else may have run.
            TransportError::NoAnswer(m) if method == Method::GET => {
                ProxmoxError::Transport(format!("{method} {path}: {m}"))
            }
            TransportError::Withheld(m) => ProxmoxError::NotLeader(m),
            TransportError::NoAnswer(_) => ProxmoxError::NoAnswer {
                method: method.to_string(),
                path: path.to_owned(),
            },
        })?;
        if reply.status == StatusCode::OK.as_u16() {
            return Ok(reply.body);
        }
        Err(classify(
            reply.status,
            error_message(&reply.body, reply.reason),
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

/// The method as a fixed label value (the path carries VMIDs and node names, unbounded over time).
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every request with one canned outcome.
    struct Canned(fn() -> Result<Reply, TransportError>);

    #[async_trait]
    impl Transport for Canned {
        async fn exchange(
            &self,
            _method: &Method,
            _path: &str,
            _params: &[(&str, String)],
        ) -> Result<Reply, TransportError> {
            (self.0)()
        }
        fn describe(&self) -> String {
            "canned".into()
        }
    }

    async fn call(
        method: Method,
        answer: fn() -> Result<Reply, TransportError>,
    ) -> Result<Value, ProxmoxError> {
        Api::over(Arc::new(Canned(answer)))
            .call(method, "/nodes/pve1/qemu/401/status/start", &[], Some(401))
            .await
    }

    /// The seam keeps what the HTTP edge decided before: a lost answer to a write may have run (never
    /// called a plain transport error), nothing sent is safe, and PVE's message comes from the reason
    /// phrase into `classify`.
    #[tokio::test]
    async fn lost_answers_sent_nothing_and_refusals_keep_their_meaning() {
        let lost = || Err(TransportError::NoAnswer("reset".into()));
        assert!(matches!(
            call(Method::POST, lost).await,
            Err(ProxmoxError::NoAnswer { .. })
        ));
        assert!(matches!(
            call(Method::GET, lost).await,
            Err(ProxmoxError::Transport(_))
        ));
        let unsent = || Err(TransportError::NotSent("refused".into()));
        assert!(matches!(
            call(Method::POST, unsent).await,
            Err(ProxmoxError::Transport(_))
        ));
        let locked = || {
            Ok(Reply {
                status: 500,
                reason: Some("VM is locked (backup)".into()),
                body: bytes::Bytes::from_static(br#"{"data":null}"#),
            })
        };
        assert!(matches!(
            call(Method::POST, locked).await,
            Err(ProxmoxError::Locked { vmid: 401, ref lock }) if lock == "backup"
        ));
        let ok = || {
            Ok(Reply {
                status: 200,
                reason: Some("OK".into()),
                body: bytes::Bytes::from_static(
                    br#"{"data":"UPID:pve1:1:2:3:qmstart:401:k@pve:"}"#,
                ),
            })
        };
        assert_eq!(
            call(Method::POST, ok).await.unwrap(),
            Value::String("UPID:pve1:1:2:3:qmstart:401:k@pve:".into())
        );
    }
}
