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

impl VaultAuth {
    /// Whether kiln can get itself a new token (AppRole) or only re-read the one it was given.
    pub(crate) fn is_replaceable(&self) -> bool {
        matches!(self, Self::AppRole { .. })
    }
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
    /// `None`: the token never expires (a root or non-expiring token).
    pub expires: Option<Instant>,
    /// The token's full lease (its creation TTL, or what the last renewal granted): renewal starts
    /// when a third of it remains.
    pub period: Duration,
    pub renewable: bool,
    /// A new token can be obtained (AppRole); a token file can only be re-read.
    pub replaceable: bool,
}

/// What to do with the token before the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenAction {
    Keep,
    Renew,
    Login,
}

impl TokenLife {
    /// `remaining_secs == 0` means "never expires", as Vault reports it.
    pub fn new(
        now: Instant,
        remaining_secs: u64,
        period_secs: u64,
        renewable: bool,
        replaceable: bool,
    ) -> Self {
        Self {
            expires: (remaining_secs > 0).then(|| now + Duration::from_secs(remaining_secs)),
            period: Duration::from_secs(period_secs.max(remaining_secs)),
            renewable,
            replaceable,
        }
    }

    /// Renew once a third of the lease remains; log in again once it is (nearly) gone, leaving a
    /// second of slack for the request's own travel time. A non-renewable token from a file is kept
    /// until it expires: re-reading the same file early would only give the same token back.
    pub fn action(&self, now: Instant) -> TokenAction {
        let Some(expires) = self.expires else {
            return TokenAction::Keep;
        };
        let remaining = expires.saturating_duration_since(now);
        if remaining <= Duration::from_secs(1) {
            TokenAction::Login
        } else if remaining <= self.period / 3 {
            if self.renewable {
                TokenAction::Renew
            } else if self.replaceable {
                TokenAction::Login
            } else {
                TokenAction::Keep
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
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let life = TokenLife::new(t0, 30, 30, true, true);
        assert_eq!(life.action(t0 + secs(10)), TokenAction::Keep);
        assert_eq!(life.action(t0 + secs(21)), TokenAction::Renew);
        assert_eq!(life.action(t0 + secs(29)), TokenAction::Login);
        let fixed = TokenLife::new(t0, 30, 30, false, true);
        assert_eq!(fixed.action(t0 + secs(21)), TokenAction::Login);
        let from_file = TokenLife::new(t0, 30, 30, false, false);
        assert_eq!(from_file.action(t0 + secs(21)), TokenAction::Keep);
        assert_eq!(from_file.action(t0 + secs(30)), TokenAction::Login);
        let root = TokenLife::new(t0, 0, 0, false, false);
        assert_eq!(root.action(t0 + secs(1 << 20)), TokenAction::Keep);
    }

    #[test]
    fn a_token_read_late_in_its_life_renews_by_its_creation_ttl() {
        // lookup-self on a token created 50 s ago with a 60 s TTL: 10 s remain of 60.
        let t0 = Instant::now();
        let life = TokenLife::new(t0, 10, 60, true, false);
        assert_eq!(life.action(t0), TokenAction::Renew);
    }
}
