//! Vault login and token lifetime. The token (from a file, or from an AppRole login whose role and
//! secret ids come from files: systemd credentials) is renewed once two thirds of its TTL have passed,
//! replaced by a fresh login when renewal is refused or the TTL ran out, and after any 403 (a revoked
//! token, a rotated credential file). The token is only ever held by the vaultrs client and never
//! formatted: `VaultClient`'s `Debug` would print it, so no kiln code debug-prints a client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::read_secret_file;

use super::super::error::SecretsError;
use super::call::CallError;

/// How kiln proves itself to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token read from this file at each login (so a rotated systemd credential is picked up).
    TokenFile(PathBuf),
    /// AppRole at `auth/{mount}`, role id and secret id each read from a file.
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

/// Counters a test or `/metrics` can read: how the token was kept alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub logins: u64,
    pub renewals: u64,
}

/// What kiln knows about the token in use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenLife {
    pub obtained: Instant,
    /// `None`: the token never expires (a root or non-expiring token).
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// What to do with the token before the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenAction {
    Keep,
    Renew,
    Login,
}

impl TokenLife {
    pub fn new(ttl_secs: u64, renewable: bool) -> Self {
        Self {
            obtained: Instant::now(),
            ttl: (ttl_secs > 0).then(|| Duration::from_secs(ttl_secs)),
            renewable,
        }
    }

    /// Renew in the last third of the TTL; log in again once it is (nearly) gone, leaving a second
    /// of slack for the request's own travel time.
    pub fn action(&self, now: Instant) -> TokenAction {
        let Some(ttl) = self.ttl else {
            return TokenAction::Keep;
        };
        let age = now.saturating_duration_since(self.obtained);
        if age + Duration::from_secs(1) >= ttl {
            TokenAction::Login
        } else if age >= ttl * 2 / 3 {
            if self.renewable {
                TokenAction::Renew
            } else {
                TokenAction::Login
            }
        } else {
            TokenAction::Keep
        }
    }
}

/// Why obtaining a token failed.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// Vault's answer (retried by the caller when transient).
    Call(CallError),
    /// A credential file could not be read.
    File(SecretsError),
}

impl From<CallError> for AuthFailure {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}

pub(crate) fn read_file(
    key: &'static str,
    path: &std::path::Path,
) -> Result<crate::redact::Secret, AuthFailure> {
    read_secret_file(key, path).map_err(|e| AuthFailure::File(SecretsError::Config(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_in_the_last_third_and_logs_in_when_gone() {
        let life = TokenLife::new(30, true);
        let t0 = life.obtained;
        assert_eq!(life.action(t0 + Duration::from_secs(10)), TokenAction::Keep);
        assert_eq!(
            life.action(t0 + Duration::from_secs(21)),
            TokenAction::Renew
        );
        assert_eq!(
            life.action(t0 + Duration::from_secs(29)),
            TokenAction::Login
        );
        let fixed = TokenLife::new(30, false);
        assert_eq!(
            fixed.action(t0 + Duration::from_secs(21)),
            TokenAction::Login
        );
        let root = TokenLife::new(0, false);
        assert_eq!(
            root.action(t0 + Duration::from_secs(1 << 20)),
            TokenAction::Keep
        );
    }
}
