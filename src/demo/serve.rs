//! `kiln demo --serve`: after the demo converges, the simulated lab (Proxmox, the Talos nodes, each
//! cluster's Kubernetes API at its VIP) stays up until Ctrl-C, and each cluster's kubeconfig — the one
//! kiln stored, read back from the demo's file secret store — is written beside the demo's files so
//! a newcomer can point the `kubectl` they already use at the cluster kiln made.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::redact::Secret;
use crate::secrets::{Prefix, ReadOutcome, SecretPaths, SecretStore, kubeconfig_keys};
use crate::spec::ClusterName;

use super::DemoError;

/// Where `kiln demo --serve` writes a cluster's kubeconfig: `<demo folder>/<cluster>.kubeconfig`.
pub fn kubeconfig_path(demo_dir: &Path, cluster: &str) -> PathBuf {
    demo_dir.join(format!("{cluster}.kubeconfig"))
}

/// The line printed for a person to try.
pub fn kubectl_line(kubeconfig: &Path) -> String {
    format!("kubectl --kubeconfig {} get nodes", kubeconfig.display())
}

/// The kubeconfig kiln stored for `cluster` (`{prefix}/{cluster}/kubeconfig`, key `kubeconfig`).
pub async fn stored_kubeconfig(
    store: &dyn SecretStore,
    prefix: &str,
    cluster: &str,
) -> Result<Secret, DemoError> {
    let missing = |why: String| DemoError::Kubeconfig {
        cluster: cluster.to_owned(),
        message: why,
    };
    let prefix = Prefix::parse(prefix).map_err(&missing)?;
    let name: ClusterName = cluster.parse().map_err(&missing)?;
    let paths = SecretPaths::for_cluster(&prefix, &name);
    match store.read(&paths.kubeconfig).await {
        Ok(ReadOutcome::Present(stored)) => stored
            .data
            .get(kubeconfig_keys::KUBECONFIG)
            .cloned()
            .ok_or_else(|| {
                missing(format!(
                    "{} has no kubeconfig key",
                    paths.kubeconfig.as_str()
                ))
            }),
        Ok(_) => Err(missing(format!(
            "nothing readable at {}",
            paths.kubeconfig.as_str()
        ))),
        Err(e) => Err(missing(e.to_string())),
    }
}

/// Writes the kubeconfig to `path`, readable by its owner only (it holds an admin client key); an
/// existing file is replaced with the same mode.
pub fn write_kubeconfig(path: &Path, kubeconfig: &Secret) -> Result<(), DemoError> {
    let io = |source| DemoError::Io {
        path: path.to_owned(),
        source,
    };
    // A file left by an earlier run may carry a wider mode, which `mode()` would not narrow.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(kubeconfig.expose().as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_kubeconfig_is_written_for_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig_path(dir.path(), "production");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_kubeconfig(&path, &Secret::new("apiVersion: v1\n")).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "apiVersion: v1\n");
        assert_eq!(
            kubectl_line(&path),
            format!("kubectl --kubeconfig {} get nodes", path.display())
        );
    }
}
