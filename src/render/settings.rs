//! The part of `kiln.toml` rendering depends on. Rendering is a pure function of intent, kiln's
//! version and these settings (DESIGN §7), so the reconciler can tell when output must change.
//! `render` reads no configuration: `config` builds these (`RenderSettings::from_config`).

use serde::Serialize;

/// Everything from the daemon configuration that shows in the generated files. None of it is secret:
/// the ClusterSecretStore names a Vault role, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderSettings {
    /// `git.output_dir`: the folder kiln owns in the repository.
    pub output_dir: String,
    /// `git.clusters_dir`: named in the headers.
    pub clusters_dir: String,
    /// `argocd.repo_url` (default `git.url`): this repository as Argo CD reaches it.
    pub repo_url: String,
    pub target_revision: String,
    /// The Argo CD namespace in the management cluster.
    pub namespace: String,
    pub project: String,
    pub vault: VaultSettings,
    /// `secrets.prefix`: kubeconfigs live at `<prefix>/<cluster>/kubeconfig`.
    pub secrets_prefix: String,
}

/// What the ClusterSecretStore reads kubeconfigs with (`[argocd.vault]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultSettings {
    pub server: String,
    /// KV v2 mount.
    pub mount: String,
    /// Where Vault's Kubernetes auth is enabled (`auth/<auth_path>`).
    pub auth_path: String,
    pub role: String,
    pub store_name: String,
}

/// The values of DESIGN §8's example `kiln.toml`, for `kiln render` without `--config`: a preview
/// that shows the shape of the output. Real deployments render with their own configuration.
impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            output_dir: "gitops".into(),
            clusters_dir: "clusters".into(),
            repo_url: "https://forge.lan/infra/gitops.git".into(),
            target_revision: "main".into(),
            namespace: "argocd".into(),
            project: "default".into(),
            vault: VaultSettings {
                server: "https://vault.lan:8200".into(),
                mount: "admin".into(),
                auth_path: "kubernetes".into(),
                role: "argocd-kiln".into(),
                store_name: "kiln-vault".into(),
            },
            secrets_prefix: "kubernetes".into(),
        }
    }
}
