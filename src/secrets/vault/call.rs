//! One request to Vault: classify what came back, retry what is worth retrying. vaultrs covers the
//! KV v2 and auth calls; the few it lacks (PATCH of metadata, the mount lookup) go through the same
//! `reqwest::Client` vaultrs built, so TLS verification is configured once.

use std::time::Duration;

use serde_json::Value;
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;

/// The outcome of one HTTP exchange, before kiln decides what it means.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Vault answered with an error status. `errors` are Vault's messages (never request bodies).
    Api { code: u16, errors: Vec<String> },
    /// No answer: refused, reset, timed out.
    Transport(String),
    /// The TLS handshake refused the server's certificate.
    Tls(String),
    /// An answer kiln could not decode.
    Decode(String),
}

impl CallError {
    pub(crate) fn is_api(&self, code: u16) -> bool {
        matches!(self, Self::Api { code: c, .. } if *c == code)
    }
    pub(crate) fn mentions(&self, needle: &str) -> bool {
        matches!(self, Self::Api { errors, .. } if errors.iter().any(|e| e.contains(needle)))
    }
    pub(crate) fn is_sealed(&self) -> bool {
        self.is_api(503) && self.mentions("sealed")
    }
    /// Sealed, a standby or overloaded server, or no answer at all: worth another try later.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { code, .. } => {
                matches!(code, 429 | 500 | 502 | 503 | 504)
                    // A KV v2 mount just enabled (or upgraded from v1) answers 400 with this
                    // until its background upgrade finishes, which takes moments.
                    || self.mentions("Upgrading from non-versioned to versioned data")
            }
            Self::Tls(_) | Self::Decode(_) => false,
        }
    }
    pub(crate) fn summary(&self) -> String {
        match self {
            Self::Api { code, errors } if errors.is_empty() => format!("HTTP {code}"),
            Self::Api { code, errors } => format!("HTTP {code}: {}", errors.join("; ")),
            Self::Transport(m) | Self::Tls(m) | Self::Decode(m) => m.clone(),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::APIError { code, errors } => Self::Api { code, errors },
            // vaultrs already turned error statuses into `APIError`; what is left is the exchange itself.
            ClientError::RestClientError { source } => transport(chain(&source)),
            ClientError::JsonParseError { source } => Self::Decode(source.to_string()),
            ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
                Self::Decode(e.to_string())
            }
            other => Self::Transport(other.to_string()),
        }
    }
}

/// rustls reports a refused certificate only in its message ("invalid peer certificate: …"); telling
/// it apart matters because retrying a wrong CA only delays the real error.
fn transport(message: String) -> CallError {
    if message.contains("certificate") {
        CallError::Tls(message)
    } else {
        CallError::Transport(message)
    }
}

/// An error with its sources, so "connection refused" is not hidden behind "request failed".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A request vaultrs has no call for. `path` is below `/v1/`. Returns the JSON body, if any.
pub(crate) async fn raw(
    client: &VaultClient,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    content_type: &str,
) -> Result<Option<Value>, CallError> {
    let url = client
        .settings
        .address
        .join(&format!("v1/{path}"))
        .map_err(|e| CallError::Decode(format!("bad URL for {path}: {e}")))?;
    let mut req = client
        .http
        .http
        .request(method, url)
        .header("X-Vault-Token", client.settings.token.as_str())
        .header("X-Vault-Request", "true");
    if let Some(body) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string());
    }
    let resp = req.send().await.map_err(|e| transport(chain(&e)))?;
    let code = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| transport(chain(&e)))?;
    let json: Option<Value> = if bytes.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))?)
    };
    if (200..300).contains(&code) {
        return Ok(json);
    }
    let errors = json
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    Err(CallError::Api { code, errors })
}

/// How often and how patiently a transient failure (sealed, down, 5xx) is retried inside one call
/// before it is reported to the reconciler, which then backs off on its own schedule (and whose
/// step budget cuts these retries short: `crate::retry`).
pub type RetryPolicy = crate::retry::Policy;

/// Four tries over about a second: enough for a leader election or a brief restart.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 4,
    initial: Duration::from_millis(250),
    max: Duration::from_secs(2),
    jitter: 0.1,
};
