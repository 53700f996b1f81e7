//! What the Vault backend needs from `kiln.toml` `[secrets]`.

use std::path::PathBuf;
use std::time::Duration;

use super::auth::VaultAuth;
use super::call::RetryPolicy;
use crate::config::{SecretsBackend, SecretsConfig};
use crate::secrets::error::SecretsError;

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
            retry: super::call::DEFAULT_RETRY,
            timeout: Duration::from_secs(30),
        })
    }
}

impl VaultSettings {
    pub(super) fn auth_kind(&self) -> &'static str {
        match self.auth {
            VaultAuth::TokenFile(_) => "token",
            VaultAuth::AppRole { .. } => "AppRole",
        }
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
}
