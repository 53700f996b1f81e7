//! Errors at the secret-store boundary. Each says which path or mount and whether retrying helps;
//! none carries a secret value (Vault's error strings do not echo request bodies).

use std::path::PathBuf;

use super::layout::SecretPath;
use super::types::Version;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// 403 even after a fresh login / re-read of the token file.
    #[error("secret store denied access to `{path}` (403): {message}")]
    Auth { path: String, message: String },
    #[error("cannot log in to the secret store: {message}")]
    Login { message: String },
    #[error(
        "secret store {addr} is sealed; unseal it (`bao operator unseal`), kiln retries on its own"
    )]
    Sealed { addr: String },
    #[error(
        "secret store {addr} is unavailable after {attempts} attempt(s): {reason}; kiln retries on its own"
    )]
    Unavailable {
        addr: String,
        attempts: u32,
        reason: String,
    },
    #[error(
        "secret store mount `{mount}` {problem} (set secrets.mount, or enable it: `bao secrets enable -path={mount} -version=2 kv`)"
    )]
    WrongMount { mount: String, problem: String },
    #[error(
        "check-and-set conflict at `{path}`: expected version {expected}, the store has {current:?}"
    )]
    CasConflict {
        path: SecretPath,
        expected: Version,
        current: Option<Version>,
    },
    #[error("no readable current version at `{path}` to overwrite")]
    NotFound { path: SecretPath },
    /// The server's certificate was refused: retrying cannot help, the CA or the address is wrong.
    #[error(
        "TLS to the secret store {addr} failed: {message} (check secrets.ca_file and secrets.addr)"
    )]
    Tls { addr: String, message: String },
    #[error("unexpected answer from the secret store for `{path}`: {message}")]
    Protocol { path: String, message: String },
    #[error("file secret store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("file secret store {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("secret store configuration: {0}")]
    Config(String),
    /// `[ha]`: this instance does not hold the Lease, so nothing was sent (`crate::ha::gate`).
    #[error("{0}")]
    NotLeader(String),
}

impl SecretsError {
    /// Whether the reconciler should retry this later with backoff (as opposed to asking a human).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Sealed { .. } | Self::Unavailable { .. })
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
