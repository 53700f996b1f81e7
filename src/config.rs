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

/// Where systemd hands a unit its credentials (`LoadCredential=`, `SetCredential=`): a relative
/// `*_file` path names a file there, so `kiln.toml` need not repeat the unit's name in every path.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

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
    #[error(
        "{path}: `{key}` = \"{file}\" is relative, so it names a systemd credential, but \
         $CREDENTIALS_DIRECTORY is not set (kiln runs outside a unit with LoadCredential=); \
         give an absolute path"
    )]
    NoCredentialsDirectory {
        path: PathBuf,
        key: &'static str,
        file: PathBuf,
    },
    #[error(
        "{path}: `{key}` = \"{file}\" leaves the credentials directory; a relative *_file names \
         a credential inside it (plain names, no `..`)"
    )]
    CredentialOutside {
        path: PathBuf,
        key: &'static str,
        file: PathBuf,
    },
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
    /// Credentials and endpoint of `s3://` backup destinations (`spec.backup`, issue 30).
    #[serde(default)]
    pub backup: BackupConfig,
    /// Several instances, one leader (`crate::ha` owns the keys and their refusals).
    pub ha: Option<crate::ha::HaConfig>,
}

/// `[backup]`: how kiln reaches the S3-compatible store of `s3://` destinations. A folder
/// destination needs none of it. The key files are read at each use, so a rotated key needs no
/// restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The store's URL, e.g. `https://minio.lan:9000`; empty (the default): AWS itself.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default = "d_s3_region")]
    pub s3_region: String,
    pub s3_access_key_id_file: Option<PathBuf>,
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// A plain-http endpoint (a lab, a test server): refused unless set, since the snapshot's
    /// ciphertext and the keys' signatures would cross the network in the clear.
    #[serde(default)]
    pub s3_allow_http: bool,
    /// A private CA for the endpoint (PEM); empty: the system's roots.
    #[serde(default, deserialize_with = "empty_path_is_none")]
    pub s3_ca_file: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: d_s3_region(),
            s3_access_key_id_file: None,
            s3_secret_access_key_file: None,
            s3_allow_http: false,
            s3_ca_file: None,
        }
    }
}

fn d_s3_region() -> String {
    "us-east-1".into()
}

/// DESIGN §8 writes "not set" as `""` for `s3_endpoint` and `s3_ca_file`.
fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.trim().is_empty()))
}

fn empty_path_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(empty_is_none(d)?.map(PathBuf::from))
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
    /// Life of the talosconfig and admin-kubeconfig certificates kiln mints and stores; they are
    /// renewed once a third of it remains (DESIGN §5). Short values are for tests.
    #[serde(default = "d_credential_lifetime", deserialize_with = "duration")]
    pub credential_lifetime: Duration,
    /// How long a node gets to come back healthy (answering over mTLS with the new version, its
    /// Kubernetes Node Ready) after a Talos upgrade; past it the rollout stops at that node.
    #[serde(default = "d_upgrade_timeout", deserialize_with = "duration")]
    pub upgrade_timeout: Duration,
}

impl Default for TalosConfig {
    fn default() -> Self {
        Self {
            backend: TalosBackend::default(),
            boot_timeout: d_boot_timeout(),
            credential_lifetime: d_credential_lifetime(),
            upgrade_timeout: d_upgrade_timeout(),
        }
    }
}

fn d_boot_timeout() -> Duration {
    Duration::from_secs(600)
}

/// What Talos gives the credentials it mints: 8760 h.
fn d_credential_lifetime() -> Duration {
    Duration::from_secs(8760 * 3600)
}

fn d_upgrade_timeout() -> Duration {
    Duration::from_secs(15 * 60)
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

/// `reconcile.drift_policy`: the planner's own parameter type, read from `kiln.toml` here.
pub use crate::plan::DriftPolicy;

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

    /// Parses and checks the required keys of the chosen backends; relative `*_file` paths are
    /// read from `$CREDENTIALS_DIRECTORY`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_DIRECTORY)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Self::parse_with_credentials(path, text, credentials.as_deref())
    }

    /// [`Config::parse`] with the credentials directory given rather than read from the environment.
    pub fn parse_with_credentials(
        path: &Path,
        text: &str,
        credentials: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config.resolve_credentials(path, credentials)?;
        Ok(config)
    }

    /// Every `*_file` key, by its name in `kiln.toml`.
    fn file_keys(&mut self) -> [(&'static str, &mut Option<PathBuf>); 14] {
        [
            ("git.ssh_key_file", &mut self.git.ssh_key_file),
            ("git.known_hosts_file", &mut self.git.known_hosts_file),
            ("git.token_file", &mut self.git.token_file),
            (
                "proxmox.token_secret_file",
                &mut self.proxmox.token_secret_file,
            ),
            ("proxmox.ca_file", &mut self.proxmox.ca_file),
            ("secrets.ca_file", &mut self.secrets.ca_file),
            ("secrets.token_file", &mut self.secrets.token_file),
            ("secrets.role_id_file", &mut self.secrets.role_id_file),
            ("secrets.secret_id_file", &mut self.secrets.secret_id_file),
            ("api.token_file", &mut self.api.token_file),
            ("api.webhook_secret_file", &mut self.api.webhook_secret_file),
            (
                "backup.s3_access_key_id_file",
                &mut self.backup.s3_access_key_id_file,
            ),
            (
                "backup.s3_secret_access_key_file",
                &mut self.backup.s3_secret_access_key_file,
            ),
            ("backup.s3_ca_file", &mut self.backup.s3_ca_file),
        ]
    }

    /// Makes every relative `*_file` path absolute under the credentials directory; absolute ones
    /// are kept as written. Done once at load, so every reader gets a path it can open as is.
    fn resolve_credentials(
        &mut self,
        config_path: &Path,
        credentials: Option<&Path>,
    ) -> Result<(), ConfigError> {
        for (key, value) in self.file_keys() {
            let Some(file) = value.as_mut() else { continue };
            if file.is_absolute() {
                continue;
            }
            // A credential is a plain name: `..` (or an empty path) would name something else.
            let plain = !file.as_os_str().is_empty()
                && file
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(ConfigError::CredentialOutside {
                    path: config_path.to_owned(),
                    key,
                    file: file.clone(),
                });
            }
            let Some(dir) = credentials else {
                return Err(ConfigError::NoCredentialsDirectory {
                    path: config_path.to_owned(),
                    key,
                    file: file.clone(),
                });
            };
            *file = dir.join(&*file);
        }
        Ok(())
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
        // Below this a credential would be due again before kiln's cycles could store and use it.
        if self.talos.credential_lifetime < Duration::from_secs(30) {
            return Err(format!(
                "talos.credential_lifetime = {} is too short: at least 30s (default 8760h)",
                humantime::format_duration(self.talos.credential_lifetime)
            ));
        }
        check_output_dir(&self.git.output_dir, &self.git.clusters_dir)?;
        if let Some(endpoint) = &self.backup.s3_endpoint {
            if endpoint.starts_with("http://") && !self.backup.s3_allow_http {
                return Err(format!(
                    "backup.s3_endpoint `{endpoint}` is plain http: set backup.s3_allow_http = true \
                     to allow it (a lab or test store), or use https://"
                ));
            }
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!(
                    "backup.s3_endpoint `{endpoint}` is not an http(s) URL, e.g. https://minio.lan:9000"
                ));
            }
        }
        if let Some(ha) = &self.ha {
            crate::ha::check_config(
                ha,
                crate::ha::SharedState {
                    secrets_backend_is_file: self.secrets.backend == SecretsBackend::File,
                    proxmox_backend_is_simulated: self.proxmox.backend == ProxmoxBackend::Simulated,
                    git_url: &self.git.url,
                },
            )?;
        }
        check_no_credentials("git.url", &self.git.url)?;
        if let Some(url) = &self.argocd.repo_url {
            check_no_credentials("argocd.repo_url", url)?;
        }
        Ok(())
    }

    /// `argocd.repo_url`, defaulting to `git.url` without the user-info of an `http(s)://` URL (it
    /// is committed; Argo CD takes https credentials from its repository secret). An ssh login
    /// name is kept: Argo CD needs it to log in, and it is no secret.
    pub fn argocd_repo_url(&self) -> String {
        match &self.argocd.repo_url {
            Some(url) => url.clone(),
            None => match url_userinfo(&self.git.url) {
                Some(u) if u.http => format!("{}{}", u.before, u.after),
                _ => self.git.url.clone(),
            },
        }
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

/// The folder kiln renders into is replaced wholesale by each commit, so it must not be, hold or lie
/// inside a folder of intent: the first commit would delete the cluster files (and, with
/// `allow_empty`, decommission every cluster).
fn check_output_dir(output_dir: &str, clusters_dir: &str) -> Result<(), String> {
    let output = folder_parts("git.output_dir", output_dir)?;
    let clusters = folder_parts("git.clusters_dir", clusters_dir)?;
    let why = "kiln replaces everything under git.output_dir with what it renders, so its first \
               commit would delete the intent files (and with reconcile.allow_empty = true \
               decommission every cluster); give it a folder of its own, e.g. output_dir = \"gitops\"";
    if output.is_empty() {
        return Err(format!(
            "git.output_dir = \"{output_dir}\" is the repository's root, which holds \
             git.clusters_dir and templates/: {why}"
        ));
    }
    let intent: [(String, Vec<&str>); 2] = [
        (format!("git.clusters_dir = \"{clusters_dir}\""), clusters),
        (
            "templates/ (the template overrides)".to_owned(),
            vec!["templates"],
        ),
    ];
    for (what, folder) in intent {
        let relation = if output == folder {
            "is the same folder as"
        } else if output.starts_with(&folder) {
            "is inside"
        } else if folder.starts_with(&output) {
            "holds"
        } else {
            continue;
        };
        return Err(format!(
            "git.output_dir = \"{output_dir}\" {relation} {what}: {why}"
        ));
    }
    Ok(())
}

/// A repository-relative folder as its components; `.` and empty components mean nothing, `..`
/// would leave the repository.
fn folder_parts<'a>(key: &str, folder: &'a str) -> Result<Vec<&'a str>, String> {
    let parts: Vec<&str> = folder
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "{key} = \"{folder}\" leaves the repository (`..`): it is a folder inside it"
        ));
    }
    Ok(parts)
}

/// The user-info of a Git remote (`user[:password]@` of a URL or of scp-like `user@host:path`),
/// split out so that it can be checked and removed. `None` for a local path or no user-info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Userinfo<'a> {
    /// Everything before the user-info (`https://`, or nothing for scp-like).
    pub(crate) before: &'a str,
    pub(crate) user: &'a str,
    pub(crate) password: Option<&'a str>,
    /// Everything after the `@`.
    pub(crate) after: &'a str,
    /// `http://` or `https://`: a user name there may itself be a token.
    pub(crate) http: bool,
}

pub(crate) fn url_userinfo(url: &str) -> Option<Userinfo<'_>> {
    let (before, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        // A local path never carries credentials; scp-like syntax has a `:` before any `/`.
        None if url.starts_with(['/', '.', '~']) => return None,
        None => {
            let colon = url.find(':')?;
            if url[..colon].contains('/') {
                return None;
            }
            ("", url)
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // A URL's host cannot hold `@`, so the last one ends the user-info; scp-like paths can, so
    // there the first one does.
    let at = if before.is_empty() {
        authority.find('@')?
    } else {
        authority.rfind('@')?
    };
    let info = &rest[..at];
    let (user, password) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    let scheme = before.to_ascii_lowercase();
    Some(Userinfo {
        before,
        user,
        password,
        after: &rest[at + 1..],
        http: scheme == "http://" || scheme == "https://",
    })
}

/// Forges' token formats, recognisable in a user name (GitHub accepts a token as the user name).
fn looks_like_token(user: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "gldt-",
        "glrt-",
    ];
    PREFIXES.iter().any(|p| user.starts_with(p))
        || (user.len() == 40 && user.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A password or token in a remote URL would be logged, shown by `ps`, and committed as Argo CD's
/// `repo_url`; credentials belong in `git.token_file` or `git.ssh_key_file`. The value is never
/// echoed.
fn check_no_credentials(key: &str, url: &str) -> Result<(), String> {
    let Some(info) = url_userinfo(url) else {
        return Ok(());
    };
    let what = if info.password.is_some() {
        "a password"
    } else if looks_like_token(info.user) {
        "what looks like an access token"
    } else {
        return Ok(());
    };
    Err(format!(
        "{key} carries {what} in its user-info ({}[redacted]@{}): it would be logged, shown by \
         `ps` and committed as Argo CD's repo_url; put the token in git.token_file (https) or the \
         key in git.ssh_key_file (ssh), and keep at most a user name in the URL",
        info.before, info.after
    ))
}

/// Labels in `metadata.labels` are copied verbatim; kept here so config-driven defaults can add some.
pub type Labels = BTreeMap<String, String>;

// Here rather than in `render`, which reads no configuration: how `kiln.toml` maps onto the
// settings that show in the generated files is the configuration's knowledge.
impl crate::render::RenderSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            output_dir: config.git.output_dir.trim_end_matches('/').to_owned(),
            clusters_dir: config.git.clusters_dir.trim_end_matches('/').to_owned(),
            repo_url: config.argocd_repo_url().to_owned(),
            target_revision: config.argocd.target_revision.clone(),
            namespace: config.argocd.namespace.clone(),
            project: config.argocd.project.clone(),
            vault: crate::render::VaultSettings {
                server: config.argocd_vault_server().to_owned(),
                mount: config.argocd_vault_mount().to_owned(),
                auth_path: config.argocd.vault.auth_path.clone(),
                role: config.argocd.vault.role.clone(),
                store_name: config.argocd.vault.store_name.clone(),
            },
            secrets_prefix: config.secrets.prefix.clone(),
        }
    }
}

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

    const RELATIVE: &str = r#"
state_dir = "/var/lib/kiln"
[git]
url = "ssh://git@forge.lan/infra/gitops.git"
ssh_key_file = "git-ssh-key"
known_hosts_file = "/etc/kiln/known_hosts"
[proxmox]
url = "https://pve1.lan:8006"
token_id = "kiln@pve!reconciler"
token_secret_file = "proxmox-token"
[secrets]
addr = "https://vault.lan:8200"
role_id_file = "vault-role-id"
secret_id_file = "vault-secret-id"
[api]
token_file = "api-token"
webhook_secret_file = "/srv/hook"
"#;

    #[test]
    fn relative_file_keys_are_read_from_the_credentials_directory() {
        let creds = Path::new("/run/credentials/kiln.service");
        let c =
            Config::parse_with_credentials(Path::new("kiln.toml"), RELATIVE, Some(creds)).unwrap();
        assert_eq!(c.git.ssh_key_file, Some(creds.join("git-ssh-key")));
        assert_eq!(
            c.proxmox.token_secret_file,
            Some(creds.join("proxmox-token"))
        );
        assert_eq!(c.secrets.role_id_file, Some(creds.join("vault-role-id")));
        assert_eq!(
            c.secrets.secret_id_file,
            Some(creds.join("vault-secret-id"))
        );
        assert_eq!(c.api.token_file, Some(creds.join("api-token")));
        // Absolute paths are kept as written, credentials directory or not.
        assert_eq!(
            c.git.known_hosts_file,
            Some(PathBuf::from("/etc/kiln/known_hosts"))
        );
        assert_eq!(c.api.webhook_secret_file, Some(PathBuf::from("/srv/hook")));
        assert_eq!(c.proxmox.ca_file, None);
    }

    #[test]
    fn a_relative_file_key_outside_systemd_is_an_error_naming_the_key() {
        let err = Config::parse_with_credentials(Path::new("kiln.toml"), RELATIVE, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`git.ssh_key_file` = \"git-ssh-key\""),
            "{err}"
        );
        assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");
        // Only absolute paths: no credentials directory needed.
        Config::parse_with_credentials(Path::new("kiln.toml"), MINIMAL, None).unwrap();
    }

    #[test]
    fn a_credential_name_never_climbs_out_of_the_directory() {
        let creds = Path::new("/run/credentials/kiln.service");
        for bad in ["../../etc/shadow", "./x/../../y", ""] {
            let text = MINIMAL.replace(
                "token_file = \"/run/credentials/kiln.service/vault-token\"",
                &format!("token_file = \"{bad}\""),
            );
            let err = Config::parse_with_credentials(Path::new("kiln.toml"), &text, Some(creds))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`secrets.token_file`") && err.contains("leaves the credentials"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn backup_keys_default_resolve_credentials_and_refuse_plain_http_unless_allowed() {
        let c = Config::parse(Path::new("k.toml"), MINIMAL).unwrap();
        assert_eq!(c.backup.s3_region, "us-east-1");
        assert!(c.backup.s3_endpoint.is_none() && !c.backup.s3_allow_http);
        let text = format!(
            "{MINIMAL}[backup]\ns3_endpoint = \"\"\ns3_ca_file = \"\"\n\
             s3_access_key_id_file = \"s3-id\"\ns3_secret_access_key_file = \"/srv/s3-secret\"\n"
        );
        let c =
            Config::parse_with_credentials(Path::new("k.toml"), &text, Some(Path::new("/cred")))
                .unwrap();
        assert!(c.backup.s3_endpoint.is_none() && c.backup.s3_ca_file.is_none());
        assert_eq!(
            c.backup.s3_access_key_id_file.as_deref(),
            Some(Path::new("/cred/s3-id"))
        );
        assert_eq!(
            c.backup.s3_secret_access_key_file.as_deref(),
            Some(Path::new("/srv/s3-secret"))
        );
        let http = format!("{MINIMAL}[backup]\ns3_endpoint = \"http://127.0.0.1:9000\"\n");
        let err = Config::parse(Path::new("k.toml"), &http)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3_allow_http"), "{err}");
        let allowed = format!("{http}s3_allow_http = true\n");
        assert!(Config::parse(Path::new("k.toml"), &allowed).is_ok());
    }

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
    fn credential_lifetime_defaults_to_a_year_and_refuses_a_uselessly_short_one() {
        let c = Config::parse(Path::new("kiln.toml"), MINIMAL).unwrap();
        assert_eq!(
            c.talos.credential_lifetime,
            Duration::from_secs(8760 * 3600)
        );
        let with = |v: &str| format!("{MINIMAL}[talos]\ncredential_lifetime = \"{v}\"\n");
        let c = Config::parse(Path::new("kiln.toml"), &with("90s")).unwrap();
        assert_eq!(c.talos.credential_lifetime, Duration::from_secs(90));
        let e = Config::parse(Path::new("kiln.toml"), &with("10s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("credential_lifetime"), "{e}");
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
        // Its secrets are credential names, as the packaged unit loads them.
        let creds = Path::new("/run/credentials/kiln.service");
        let c =
            Config::parse_with_credentials(Path::new("examples/kiln.toml"), example, Some(creds))
                .expect("the example parses");
        assert_eq!(
            c.proxmox.token_secret_file,
            Some(creds.join("proxmox-token")),
            "the example names credentials, not paths"
        );
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

    fn with_git(extra: &str) -> Result<Config, String> {
        let text = MINIMAL.replace(
            "[git]\nurl = \"file:///srv/gitops.git\"\n",
            &format!("[git]\n{extra}\n"),
        );
        assert_ne!(text, MINIMAL);
        Config::parse(Path::new("kiln.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_output_dir_over_intent_is_refused_with_the_reason() {
        let url = "url = \"file:///srv/gitops.git\"";
        for (output_dir, clusters_dir, relation) in [
            (
                "clusters",
                "clusters",
                "is the same folder as git.clusters_dir",
            ),
            (
                "./clusters/",
                "clusters",
                "is the same folder as git.clusters_dir",
            ),
            ("clusters/gitops", "clusters", "is inside git.clusters_dir"),
            ("infra", "infra/clusters", "holds git.clusters_dir"),
            ("templates", "clusters", "is the same folder as templates/"),
            ("templates/out", "clusters", "is inside templates/"),
            ("", "clusters", "is the repository's root"),
            (".", "clusters", "is the repository's root"),
        ] {
            let err = with_git(&format!(
                "{url}\noutput_dir = \"{output_dir}\"\nclusters_dir = \"{clusters_dir}\""
            ))
            .expect_err(output_dir);
            assert!(
                err.starts_with("kiln.toml: git.output_dir")
                    && err.contains(relation)
                    && err.contains("delete the intent files"),
                "{output_dir} over {clusters_dir}: {err}"
            );
        }
        let err = with_git(&format!("{url}\noutput_dir = \"../elsewhere\"")).unwrap_err();
        assert!(err.contains("leaves the repository"), "{err}");
        // Neighbours that merely share a prefix are fine.
        for (output_dir, clusters_dir) in [
            ("gitops", "clusters"),
            ("clusters-out", "clusters"),
            ("infra/gitops", "infra/clusters"),
            ("templates-generated", "clusters"),
        ] {
            with_git(&format!(
                "{url}\noutput_dir = \"{output_dir}\"\nclusters_dir = \"{clusters_dir}\""
            ))
            .unwrap_or_else(|e| panic!("{output_dir} beside {clusters_dir}: {e}"));
        }
    }

    #[test]
    fn credentials_in_git_url_are_refused_without_echoing_them() {
        for url in [
            "https://kiln:s3cret-Pa55@forge.lan/infra/gitops.git",
            "http://kiln:s3cret-Pa55@127.0.0.1:3000/infra/gitops.git",
            "ssh://git:s3cret-Pa55@forge.lan/infra/gitops.git",
            "git:s3cret-Pa55@forge.lan:infra/gitops.git",
            "https://ghp_s3cretPa55s3cretPa55s3cretPa55ab@github.com/o/r.git",
            "https://0123456789abcdef0123456789abcdefdeadbeef@gitea.lan/o/r.git",
        ] {
            let err = with_git(&format!("url = \"{url}\"")).expect_err(url);
            assert!(err.contains("git.url carries"), "{url}: {err}");
            assert!(err.contains("git.token_file"), "{url}: {err}");
            assert!(!err.contains("s3cret"), "the secret was echoed: {err}");
            assert!(!err.contains("deadbeef"), "the token was echoed: {err}");
        }
        for url in [
            "ssh://git@forge.lan/infra/gitops.git",
            "git@forge.lan:infra/gitops.git",
            "https://kiln@forge.lan/infra/gitops.git",
            "https://forge.lan/infra/gitops.git",
            "file:///srv/git/gitops.git",
            "/srv/git/repo@2.git",
            "./relative@dir/repo.git",
        ] {
            with_git(&format!("url = \"{url}\"")).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let err = with_git(
            "url = \"/srv/gitops.git\"\n[argocd]\nrepo_url = \"https://a:s3cret@forge.lan/x.git\"",
        )
        .unwrap_err();
        assert!(err.contains("argocd.repo_url carries a password"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn argo_cds_default_repo_url_drops_an_https_user_and_keeps_an_ssh_login() {
        let c = with_git("url = \"https://kiln@forge.lan/infra/gitops.git\"").unwrap();
        assert_eq!(c.argocd_repo_url(), "https://forge.lan/infra/gitops.git");
        let c = with_git("url = \"ssh://git@forge.lan/infra/gitops.git\"").unwrap();
        assert_eq!(c.argocd_repo_url(), "ssh://git@forge.lan/infra/gitops.git");
        let c = with_git("url = \"git@forge.lan:infra/gitops.git\"").unwrap();
        assert_eq!(c.argocd_repo_url(), "git@forge.lan:infra/gitops.git");
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
