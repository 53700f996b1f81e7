//! High availability (DESIGN §8 `[ha]`, issue 29): several kiln instances, one leader, chosen through
//! a `coordination.k8s.io/v1` Lease in the management (Argo CD) cluster, as client-go's
//! `tools/leaderelection` does it. kiln builds no consensus of its own: the API server's
//! `resourceVersion` check decides every race.
//!
//! - [`lease`]: the elector (acquire, renew, judge expiry on this process's monotonic clock).
//! - [`gate`]: the [`LeaderGate`] every write asks first, and the port wrappers that ask it.
//!
//! Invariant: no write to Proxmox, the secret store or Git leaves an instance whose gate does not
//! say, by its own monotonic clock, that it renewed the Lease within the renew deadline.

pub mod gate;
pub mod lease;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use gate::{GatedProxmox, GatedSecrets, LeaderGate, NotLeader};
pub use lease::{Elector, LeaseError};

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e}); e.g. 15s")))
}

/// `[ha]` of kiln.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// The management (Argo CD) cluster the Lease lives in.
    pub kubeconfig_file: PathBuf,
    #[serde(default = "d_namespace")]
    pub namespace: String,
    #[serde(default = "d_lease_name")]
    pub lease_name: String,
    #[serde(default = "d_lease_duration", deserialize_with = "duration")]
    pub lease_duration: Duration,
}

fn d_namespace() -> String {
    "argocd".into()
}
fn d_lease_name() -> String {
    "kiln".into()
}
fn d_lease_duration() -> Duration {
    Duration::from_secs(15)
}

/// The election's three durations. Only `lease_duration` is configured; the other two keep
/// client-go's defaults' proportions (15s / 10s / 2s): the renew deadline at 2/3 of the lease, so
/// a leader stops acting a third of a lease before any follower may take over (room for clock rate
/// differences and a write already on the wire), and the retry period at 1/5, so a leader gets
/// three tries to renew within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Timing {
    pub fn from_lease(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration / 5,
        }
    }
}

impl HaConfig {
    pub fn timing(&self) -> Timing {
        Timing::from_lease(self.lease_duration)
    }
}

/// What `[ha]` needs of the rest of kiln.toml, as plain facts (the `config` module hands them over,
/// so this check needs no knowledge of its types).
#[derive(Debug, Clone, Copy)]
pub struct SharedState<'a> {
    pub secrets_backend_is_file: bool,
    pub proxmox_backend_is_simulated: bool,
    pub git_url: &'a str,
}

/// The refusals of DESIGN §8: with `[ha]`, every instance must see the same state, so nothing may
/// live on one host only. Each message names the key. A local backup destination is in a cluster
/// file, not here: [`check_backup_destination`] refuses it per file.
pub fn check_config(ha: &HaConfig, shared: SharedState<'_>) -> Result<(), String> {
    if ha.lease_duration < Duration::from_secs(1) {
        return Err(format!(
            "ha.lease_duration = {} is too short: at least 1s (default 15s)",
            humantime::format_duration(ha.lease_duration)
        ));
    }
    if ha.namespace.is_empty() || ha.lease_name.is_empty() {
        return Err("ha.namespace and ha.lease_name must not be empty".into());
    }
    if shared.secrets_backend_is_file {
        return Err(
            "[ha] with secrets.backend = \"file\": the file store lives on one host, so another \
             instance taking over would not see the secrets bundles; use secrets.backend = \"vault\""
                .into(),
        );
    }
    if shared.proxmox_backend_is_simulated {
        return Err(
            "[ha] with proxmox.backend = \"simulated\": the simulated Proxmox lives inside one \
             process, so another instance would see other VMs; use proxmox.backend = \"api\""
                .into(),
        );
    }
    if is_local_git_url(shared.git_url) {
        return Err(format!(
            "[ha] with a local git.url (`{}`): a repository on one host is not shared with the \
             other instances; use the remote every instance can reach (ssh:// or https://)",
            shared.git_url
        ));
    }
    Ok(())
}

/// DESIGN §8: `[ha]` refuses a local (folder) backup destination — the snapshots another instance
/// takes after a takeover would land on another host, and `kiln backup list` on one host would not
/// see the other's. It is in a cluster file, which changes after start and may be unreadable then,
/// so the refusal is per file, as an invalid file (its cluster left alone, `Blocked`), at every
/// cycle (`reconcile::backup::refuse_local_destinations`).
pub fn check_backup_destination(destination: &str) -> Result<(), String> {
    if destination.starts_with("s3://") {
        return Ok(());
    }
    Err(format!(
        "spec.backup.destination `{destination}` is a folder, which [ha] refuses: another instance \
         taking over would write its snapshots to another host; use s3://bucket/prefix"
    ))
}

/// A path or `file://` URL: what git reads from this machine's disk. Everything with a scheme
/// other than `file`, and scp-like `host:path`, is a remote.
fn is_local_git_url(url: &str) -> bool {
    if url.starts_with("file://") {
        return true;
    }
    if url.contains("://") {
        return false;
    }
    // `host:path` as git reads it: a colon before any slash.
    match (url.find(':'), url.find('/')) {
        (Some(c), Some(s)) => c >= s,
        (Some(_), None) => false,
        _ => true,
    }
}

/// `ports` with every Proxmox, Talos, secret-store and workload-cluster Kubernetes write asking
/// `gate` first.
pub fn gate_ports(ports: crate::reconcile::Ports, gate: &LeaderGate) -> crate::reconcile::Ports {
    crate::reconcile::Ports {
        proxmox: std::sync::Arc::new(GatedProxmox::new(ports.proxmox, gate.clone())),
        talos: std::sync::Arc::new(gate::GatedTalos::new(ports.talos, gate.clone())),
        secrets: std::sync::Arc::new(GatedSecrets::new(ports.secrets, gate.clone())),
        kube: std::sync::Arc::new(gate::GatedKube::new(ports.kube, gate.clone())),
    }
}

/// The hook `GitSource::with_push_gate` takes: a push leaves only while `gate` is open.
pub fn push_gate(
    gate: &LeaderGate,
) -> std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync> {
    let gate = gate.clone();
    std::sync::Arc::new(move || gate.allow("a push").map_err(|e| e.to_string()))
}

/// This instance's name in the Lease: host name and process id, so two instances on one host (a
/// test, a restart overlapping the old process) are told apart.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha() -> HaConfig {
        toml::from_str("kubeconfig_file = \"/etc/kiln/ha-kubeconfig\"").unwrap()
    }

    fn shared(url: &str) -> SharedState<'_> {
        SharedState {
            secrets_backend_is_file: false,
            proxmox_backend_is_simulated: false,
            git_url: url,
        }
    }

    #[test]
    fn defaults_and_derived_timing() {
        let ha = ha();
        assert_eq!(ha.namespace, "argocd");
        assert_eq!(ha.lease_name, "kiln");
        let t = ha.timing();
        assert_eq!(t.lease_duration, Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(3));
        assert!(t.retry_period < t.renew_deadline && t.renew_deadline < t.lease_duration);
    }

    #[test]
    fn state_one_host_holds_is_refused_naming_the_key() {
        let ha = ha();
        assert!(check_config(&ha, shared("ssh://git@forge.lan/infra.git")).is_ok());
        assert!(check_config(&ha, shared("https://forge.lan/infra.git")).is_ok());
        assert!(check_config(&ha, shared("git://127.0.0.1:9418/infra.git")).is_ok());
        assert!(check_config(&ha, shared("git@forge.lan:infra.git")).is_ok());
        for local in [
            "/srv/git/infra.git",
            "file:///srv/git/infra.git",
            "infra",
            "./infra",
        ] {
            let e = check_config(&ha, shared(local)).unwrap_err();
            assert!(e.contains("git.url"), "{local}: {e}");
        }
        let mut file = shared("ssh://forge.lan/infra.git");
        file.secrets_backend_is_file = true;
        let e = check_config(&ha, file).unwrap_err();
        assert!(e.contains("secrets.backend"), "{e}");
        let mut sim = shared("ssh://forge.lan/infra.git");
        sim.proxmox_backend_is_simulated = true;
        let e = check_config(&ha, sim).unwrap_err();
        assert!(e.contains("proxmox.backend"), "{e}");
    }

    #[test]
    fn kiln_toml_refuses_ha_with_a_local_repository_or_the_file_store() {
        let text = |url: &str, backend: &str| {
            format!(
                "state_dir = \"/var/lib/kiln\"\n[git]\nurl = \"{url}\"\n[proxmox]\n\
                 url = \"https://pve1.lan:8006\"\ntoken_id = \"kiln@pve!a\"\n\
                 token_secret_file = \"/run/t\"\n[secrets]\nbackend = \"{backend}\"\n\
                 addr = \"https://vault.lan:8200\"\ntoken_file = \"/run/v\"\n[ha]\n\
                 kubeconfig_file = \"/etc/kiln/ha-kubeconfig\"\nlease_duration = \"3s\"\n"
            )
        };
        let path = std::path::Path::new("kiln.toml");
        let ok = crate::config::Config::parse(path, &text("ssh://forge.lan/infra.git", "vault"))
            .unwrap();
        let ha = ok.ha.unwrap();
        assert_eq!(ha.timing().renew_deadline, Duration::from_secs(2));
        assert_eq!(ha.timing().retry_period, Duration::from_millis(600));
        let e = crate::config::Config::parse(path, &text("file:///srv/infra.git", "vault"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("git.url"), "{e}");
        let e = crate::config::Config::parse(path, &text("ssh://forge.lan/infra.git", "file"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("secrets.backend"), "{e}");
    }

    #[test]
    fn identity_names_host_and_process() {
        let id = identity();
        assert!(id.ends_with(&format!("_{}", std::process::id())), "{id}");
    }
}
