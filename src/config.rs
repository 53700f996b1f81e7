//! The daemon configuration, `kiln.toml` (DESIGN.md §8). Key names are a contract: add, never rename.
//! Secrets are never in this file, only paths to files holding them (`*_file`), read at use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::redact::Secret;
use crate::spec::{Version, Vmid};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/kiln/kiln.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read secret file {path} (key `{key}`): {source}")]
    SecretFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("`{s}` is not a duration ({e}); e.g. 30s, 10m"))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cache clone, file secret store, status.
    pub state_dir: PathBuf,
    pub git: GitConfig,
    #[serde(default)]
    pub proxmox: ProxmoxConfig,
    #[serde(default)]
    pub talos: TalosConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub defaults: DefaultsConfig,
    #[serde(default)]
    pub argocd: ArgocdConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// ssh://…, https://…, file:///…, or a local path.
    pub url: String,
    #[serde(default = "d_branch")]
    pub branch: String,
    #[serde(default = "d_clusters_dir")]
    pub clusters_dir: String,
    #[serde(default = "d_output_dir")]
    pub output_dir: String,
    #[serde(default = "d_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(default = "d_author")]
    pub author: String,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    /// HTTPS token, handed to git through a credential helper that reads this file.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxmoxBackend {
    #[default]
    Api,
    Simulated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    #[serde(default)]
    pub backend: ProxmoxBackend,
    pub url: Option<String>,
    /// `user@realm!tokenid`
    pub token_id: Option<String>,
    pub token_secret_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server certificate, `AB:CD:…`.
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    /// 0: no limit.
    #[serde(default)]
    pub max_parallel_clones: u32,
    /// How long one Proxmox task may run (a full clone on slow storage takes minutes).
    #[serde(default = "d_task_timeout", deserialize_with = "duration")]
    pub task_timeout: Duration,
    /// Graceful shutdown before a hard stop.
    #[serde(default = "d_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for ProxmoxConfig {
    fn default() -> Self {
        Self {
            backend: ProxmoxBackend::Api,
            url: None,
            token_id: None,
            token_secret_file: None,
            ca_file: None,
            fingerprint: None,
            insecure: false,
            max_parallel_clones: 0,
            task_timeout: d_task_timeout(),
            shutdown_timeout: d_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TalosBackend {
    #[default]
    Grpc,
    Simulated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TalosConfig {
    #[serde(default)]
    pub backend: TalosBackend,
    /// A started VM whose node never answers at its IP within this long gets a condition naming the
    /// likely causes (template image not nocloud, boot order, no route to the IP).
    #[serde(default = "d_boot_timeout", deserialize_with = "duration")]
    pub boot_timeout: Duration,
}

impl Default for TalosConfig {
    fn default() -> Self {
        Self {
            backend: TalosBackend::default(),
            boot_timeout: d_boot_timeout(),
        }
    }
}

fn d_boot_timeout() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecretsBackend {
    #[default]
    Vault,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDecommission {
    #[default]
    Retain,
    Destroy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default)]
    pub backend: SecretsBackend,
    pub addr: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d_mount")]
    pub mount: String,
    #[serde(default = "d_prefix")]
    pub prefix: String,
    pub token_file: Option<PathBuf>,
    pub role_id_file: Option<PathBuf>,
    pub secret_id_file: Option<PathBuf>,
    /// Where AppRole is mounted (`auth/<approle_mount>`).
    #[serde(default = "d_approle_mount")]
    pub approle_mount: String,
    #[serde(default)]
    pub on_decommission: OnDecommission,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            backend: SecretsBackend::Vault,
            addr: None,
            ca_file: None,
            mount: d_mount(),
            prefix: d_prefix(),
            token_file: None,
            role_id_file: None,
            secret_id_file: None,
            approle_mount: d_approle_mount(),
            on_decommission: OnDecommission::Retain,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    #[default]
    Repair,
    Report,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    #[serde(default = "d_grace", deserialize_with = "duration")]
    pub decommission_grace: Duration,
    #[serde(default = "d_drift", deserialize_with = "duration")]
    pub drift_interval: Duration,
    #[serde(default)]
    pub drift_policy: DriftPolicy,
    #[serde(default)]
    pub allow_empty: bool,
    /// First pause after a failed action; doubles per failure up to `retry_max`.
    #[serde(default = "d_retry_initial", deserialize_with = "duration")]
    pub retry_initial: Duration,
    #[serde(default = "d_retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
    /// Failures of one action in a row (same intent revision) before the cluster is `Failed`.
    #[serde(default = "d_max_failures")]
    pub max_failures: u32,
}

fn d_retry_initial() -> Duration {
    Duration::from_secs(5)
}
fn d_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn d_max_failures() -> u32 {
    8
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            concurrency: d_concurrency(),
            decommission_grace: d_grace(),
            drift_interval: d_drift(),
            drift_policy: DriftPolicy::Repair,
            allow_empty: false,
            retry_initial: d_retry_initial(),
            retry_max: d_retry_max(),
            max_failures: d_max_failures(),
        }
    }
}

/// What an API request or a file leaves out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    #[serde(default = "d_pve_node")]
    pub proxmox_node: String,
    #[serde(default = "d_template")]
    pub template: Vmid,
    #[serde(default = "d_storage")]
    pub storage: String,
    #[serde(default = "d_bridge")]
    pub bridge: String,
    #[serde(default = "d_talos_version")]
    pub talos_version: Version,
    #[serde(default = "d_k8s_version")]
    pub kubernetes_version: Version,
    #[serde(default = "d_install_disk")]
    pub install_disk: String,
    #[serde(default = "d_gateway")]
    pub gateway: IpAddr,
    #[serde(default = "d_prefix_length")]
    pub prefix_length: u8,
    #[serde(default = "d_nameservers")]
    pub nameservers: Vec<IpAddr>,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            proxmox_node: d_pve_node(),
            template: d_template(),
            storage: d_storage(),
            bridge: d_bridge(),
            talos_version: d_talos_version(),
            kubernetes_version: d_k8s_version(),
            install_disk: d_install_disk(),
            gateway: d_gateway(),
            prefix_length: d_prefix_length(),
            nameservers: d_nameservers(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgocdVaultConfig {
    /// Default: `secrets.addr`.
    pub server: Option<String>,
    /// Default: `secrets.mount`.
    pub mount: Option<String>,
    #[serde(default = "d_auth_path")]
    pub auth_path: String,
    #[serde(default = "d_role")]
    pub role: String,
    #[serde(default = "d_store_name")]
    pub store_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgocdConfig {
    /// As Argo CD reaches this repository. Default: `git.url`.
    pub repo_url: Option<String>,
    #[serde(default = "d_branch")]
    pub target_revision: String,
    #[serde(default = "d_argocd_ns")]
    pub namespace: String,
    #[serde(default = "d_project")]
    pub project: String,
    #[serde(default)]
    pub vault: ArgocdVaultConfig,
}

/// Written out, not derived: an `[argocd]` table without `[argocd.vault]` must get the documented
/// defaults, not empty strings.
impl Default for ArgocdVaultConfig {
    fn default() -> Self {
        Self {
            server: None,
            mount: None,
            auth_path: d_auth_path(),
            role: d_role(),
            store_name: d_store_name(),
        }
    }
}

impl Default for ArgocdConfig {
    fn default() -> Self {
        Self {
            repo_url: None,
            target_revision: d_branch(),
            namespace: d_argocd_ns(),
            project: d_project(),
            vault: ArgocdVaultConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    #[default]
    Direct,
    Branch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "d_listen")]
    pub listen: SocketAddr,
    /// The API is served only when this is set.
    pub token_file: Option<PathBuf>,
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub write_mode: WriteMode,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: d_listen(),
            token_file: None,
            webhook_secret_file: None,
            write_mode: WriteMode::Direct,
        }
    }
}

fn d_branch() -> String {
    "main".into()
}
fn d_clusters_dir() -> String {
    "clusters".into()
}
fn d_output_dir() -> String {
    "gitops".into()
}
fn d_poll() -> Duration {
    Duration::from_secs(30)
}
fn d_author() -> String {
    "kiln <kiln@localhost>".into()
}
fn d_task_timeout() -> Duration {
    Duration::from_secs(900)
}
fn d_shutdown_timeout() -> Duration {
    Duration::from_secs(120)
}
fn d_mount() -> String {
    "admin".into()
}
fn d_prefix() -> String {
    "kubernetes".into()
}
fn d_approle_mount() -> String {
    "approle".into()
}
fn d_concurrency() -> usize {
    4
}
fn d_grace() -> Duration {
    Duration::from_secs(600)
}
fn d_drift() -> Duration {
    Duration::from_secs(600)
}
fn d_pve_node() -> String {
    "pve1".into()
}
fn d_template() -> Vmid {
    Vmid::new(9000).expect("constant VMID")
}
fn d_storage() -> String {
    "local-lvm".into()
}
fn d_bridge() -> String {
    "vmbr0".into()
}
fn d_talos_version() -> Version {
    Version::new(1, 13, 9)
}
fn d_k8s_version() -> Version {
    Version::new(1, 34, 1)
}
fn d_install_disk() -> String {
    "/dev/sda".into()
}
fn d_gateway() -> IpAddr {
    IpAddr::from([192, 168, 2, 1])
}
fn d_prefix_length() -> u8 {
    24
}
fn d_nameservers() -> Vec<IpAddr> {
    vec![IpAddr::from([192, 168, 2, 1])]
}
fn d_auth_path() -> String {
    "kubernetes".into()
}
fn d_role() -> String {
    "argocd-kiln".into()
}
fn d_store_name() -> String {
    "kiln-vault".into()
}
fn d_argocd_ns() -> String {
    "argocd".into()
}
fn d_project() -> String {
    "default".into()
}
fn d_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Reads a secret from a `*_file` key, trimming the trailing newline editors and `echo` add.
pub fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key,
        path: path.to_owned(),
        source,
    })?;
    Ok(Secret::new(raw.trim_end_matches(['\r', '\n']).to_owned()))
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks the required keys of the chosen backends.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut missing: Vec<&str> = Vec::new();
        if self.proxmox.backend == ProxmoxBackend::Api {
            if self.proxmox.url.is_none() {
                missing.push("proxmox.url");
            }
            if self.proxmox.token_id.is_none() {
                missing.push("proxmox.token_id");
            }
            if self.proxmox.token_secret_file.is_none() {
                missing.push("proxmox.token_secret_file");
            }
        }
        if self.secrets.backend == SecretsBackend::Vault {
            if self.secrets.addr.is_none() {
                missing.push("secrets.addr");
            }
            let approle =
                self.secrets.role_id_file.is_some() && self.secrets.secret_id_file.is_some();
            if self.secrets.token_file.is_none() && !approle {
                missing
                    .push("secrets.token_file (or secrets.role_id_file + secrets.secret_id_file)");
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "missing required key(s) for the chosen backends: {}",
                missing.join(", ")
            ));
        }
        if let Some(token) = &self.proxmox.token_id
            && !token.contains('!')
        {
            return Err(format!(
                "proxmox.token_id `{token}` is not an API token id; write it as user@realm!tokenid"
            ));
        }
        // Simulated Talos nodes are the machines inside simulated VMs (`sim::lab`): they boot when the
        // simulated Proxmox starts a VM, so they cannot stand behind a real Proxmox.
        if self.talos.backend == TalosBackend::Simulated
            && self.proxmox.backend != ProxmoxBackend::Simulated
        {
            return Err(
                "talos.backend = \"simulated\" needs proxmox.backend = \"simulated\": simulated Talos \
                 nodes boot inside simulated VMs (for Talos nodes served by `kiln sim talos`, keep \
                 talos.backend = \"grpc\")"
                    .into(),
            );
        }
        if self.reconcile.concurrency == 0 {
            return Err("reconcile.concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// `argocd.repo_url`, defaulting to `git.url`.
    pub fn argocd_repo_url(&self) -> &str {
        self.argocd.repo_url.as_deref().unwrap_or(&self.git.url)
    }
    /// `argocd.vault.server`, defaulting to `secrets.addr`.
    pub fn argocd_vault_server(&self) -> &str {
        self.argocd
            .vault
            .server
            .as_deref()
            .or(self.secrets.addr.as_deref())
            .unwrap_or("")
    }
    /// `argocd.vault.mount`, defaulting to `secrets.mount`.
    pub fn argocd_vault_mount(&self) -> &str {
        self.argocd
            .vault
            .mount
            .as_deref()
            .unwrap_or(&self.secrets.mount)
    }
}

/// Labels in `metadata.labels` are copied verbatim; kept here so config-driven defaults can add some.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "/var/lib/kiln"
[git]
url = "file:///srv/gitops.git"
[proxmox]
url = "https://pve1.lan:8006"
token_id = "kiln@pve!reconciler"
token_secret_file = "/run/credentials/kiln.service/proxmox-token"
[secrets]
addr = "https://vault.lan:8200"
token_file = "/run/credentials/kiln.service/vault-token"
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(Path::new("kiln.toml"), MINIMAL).unwrap();
        assert_eq!(c.git.branch, "main");
        assert_eq!(c.git.poll_interval, Duration::from_secs(30));
        assert_eq!(c.secrets.mount, "admin");
        assert_eq!(c.reconcile.concurrency, 4);
        assert_eq!(c.argocd_repo_url(), "file:///srv/gitops.git");
        assert_eq!(c.argocd_vault_server(), "https://vault.lan:8200");
        assert_eq!(c.argocd_vault_mount(), "admin");
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn argocd_table_without_vault_table_keeps_vault_defaults() {
        let text = format!("{MINIMAL}\n[argocd]\nproject = \"kiln\"\n");
        let c = Config::parse(Path::new("kiln.toml"), &text).unwrap();
        assert_eq!(c.argocd.vault.store_name, "kiln-vault");
        assert_eq!(c.argocd.vault.role, "argocd-kiln");
        assert_eq!(c.argocd.vault.auth_path, "kubernetes");
    }

    /// `examples/kiln.toml` is the reference operators read: it must parse, and it must mention
    /// every key the config types accept (set, or commented out with its default).
    #[test]
    fn example_config_parses_and_documents_every_key() {
        let example = include_str!("../examples/kiln.toml");
        Config::parse(Path::new("examples/kiln.toml"), example).expect("the example parses");
        let source = include_str!("config.rs");
        let keys: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        assert!(keys.len() > 40, "found only {keys:?}");
        let missing: Vec<&&str> = keys
            .iter()
            .filter(|k| {
                ![
                    format!("\n{k} = "),
                    format!("\n# {k} = "),
                    format!("[{k}]"),
                    format!(".{k}]"),
                ]
                .iter()
                .any(|pattern| example.contains(pattern.as_str()))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "examples/kiln.toml does not document {missing:?}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MINIMAL}\n[reconcile]\nconcurency = 3\n");
        let err = Config::parse(Path::new("kiln.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn simulated_backends_need_no_server_keys_and_go_together() {
        let demo = "state_dir = \"/x\"\n[git]\nurl = \"/r\"\n[proxmox]\nbackend = \"simulated\"\n\
                    [talos]\nbackend = \"simulated\"\n[secrets]\nbackend = \"file\"\n";
        let c = Config::parse(Path::new("kiln.toml"), demo).unwrap();
        assert_eq!(c.proxmox.backend, ProxmoxBackend::Simulated);
        assert_eq!(c.talos.backend, TalosBackend::Simulated);
        let text = format!("{MINIMAL}\n[talos]\nbackend = \"simulated\"\n");
        let err = Config::parse(Path::new("kiln.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxmox.backend = \"simulated\""), "{err}");
    }

    #[test]
    fn missing_backend_keys_are_listed() {
        let err = Config::parse(
            Path::new("kiln.toml"),
            "state_dir = \"/x\"\n[git]\nurl = \"/r\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("proxmox.url") && err.contains("secrets.addr"),
            "{err}"
        );
    }
}
