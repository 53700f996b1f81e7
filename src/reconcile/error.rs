//! Why a step of a cluster's turn did not finish, typed per boundary, and the error policy: which
//! errors are a refusal only a person can lift (`Blocked` at once, DESIGN.md §7) and which may pass
//! (capped backoff, `Failed` after `max_failures` in a row). The adapters' errors are kept whole up to
//! the policy, so the status can name the cause with its source chain.

use std::fmt::Write as _;

use crate::kube::KubeError;
use crate::proxmox::ProxmoxError;
use crate::secrets::SecretsError;
use crate::talos::grpc::TalosError;
use crate::talos::{BundleError, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("proxmox: {0}")]
    Proxmox(#[from] ProxmoxError),
    #[error("talos: {0}")]
    Talos(#[from] TalosError),
    #[error("secret store: {0}")]
    Secrets(#[from] SecretsError),
    #[error("kubernetes: {0}")]
    Kube(#[from] KubeError),
    #[error("kiln's client certificate: {0}")]
    Credentials(#[from] PkiError),
    #[error("secrets bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("machine config: {0}")]
    MachineConfig(#[from] crate::talos::config::render::RenderError),
    #[error("machine config: {0}")]
    LiveConfig(#[from] super::steps::live_config::LiveConfigError),
    #[error("a blocking task died: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A node in maintenance refused the config (boxed: it carries the node's whole answer).
    #[error(transparent)]
    ConfigRefused(Box<ConfigRefused>),
    #[error(
        "the secrets path holds a deleted or destroyed bundle; kiln never mints a second one (restore the version, or remove the cluster's VMs and the path by hand)"
    )]
    BundleGone,
    #[error("the secrets bundle is unreadable: {0}")]
    BundleUnreadable(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("the address of {name} is unknown (no applied spec names it); remove it by hand")]
    LeavingAddressUnknown { name: String },
    /// A leaving control plane's graceful Reset failed: its VM stays (DESIGN §4).
    #[error("{name} did not leave etcd, so its VM stays")]
    LeaveFailed {
        name: String,
        #[source]
        source: Box<TurnError>,
    },
    /// An upgraded node did not come back healthy in time: the rollout stops there (DESIGN §4).
    #[error(
        "{node} did not come back healthy within {waited} after upgrading to Talos {to} (last: {last}); \
         the rollout stops here and kiln does not upgrade it again by itself: fix the node (its Talos \
         API must answer running {to} and its Kubernetes Node be Ready; it stays cordoned until then, \
         and kiln lifts its cordon once it is) and kiln resumes, or change spec.talos.version"
    )]
    UpgradeUnhealthy {
        node: String,
        to: String,
        waited: String,
        last: String,
    },
    /// A Kubernetes component did not come up on its new version in time: the hop stops there.
    #[error(
        "{component} on {node} did not run Kubernetes {to} within {waited} (last: {last}); the hop stops \
         here: fix the node (kiln left the config naming {to} on it), then kiln resumes on its next look"
    )]
    KubernetesUnhealthy {
        node: String,
        component: String,
        to: String,
        waited: String,
        last: String,
    },
    /// Talos would reboot the node to apply a Kubernetes image change, which kiln only makes live.
    #[error(
        "{node}: Talos would reboot to apply the new {component} image, which talosctl upgrade-k8s and \
         kiln apply without a reboot; look at what else differs in its machine config"
    )]
    KubernetesNeedsReboot { node: String, component: String },
    /// A node reported a Talos version kiln cannot read.
    #[error("{0}")]
    UnknownVersion(String),
    /// What a step needs but this turn has not got (its inputs change with the next observation).
    #[error("{0}")]
    Missing(Missing),
}

/// A node in maintenance refused the config (`InvalidArgument`, or an older decoder): its running
/// Talos is the template's, which judges the config.
#[derive(Debug, thiserror::Error)]
#[error(
    "{node} runs Talos {running} (its template's boot image) and refused the machine config: {reason}{advice}"
)]
pub struct ConfigRefused {
    pub node: String,
    pub running: String,
    pub reason: String,
    pub advice: String,
    #[source]
    pub source: TalosError,
}

impl From<ConfigRefused> for TurnError {
    fn from(c: ConfigRefused) -> Self {
        TurnError::ConfigRefused(Box::new(c))
    }
}

/// Inputs a step found missing from its turn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("no intent for this cluster")]
    Intent,
    #[error("node {0} is not in the intent")]
    Node(u32),
    #[error("the secrets bundle is not loaded (the store did not return it)")]
    Bundle,
    #[error("the cluster uid is unknown (no readable secrets bundle)")]
    ClusterUid,
    #[error("VM {0} is not in the listing")]
    Listed(u32),
    #[error("no remaining control plane")]
    ControlPlane,
}

/// A refusal only a person can lift; its name is the `Blocked` condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The VMID holds a VM that is not this node's (§3): kiln never touches it.
    ForeignVm,
    /// Disks only grow.
    RefusedShrink,
    /// Another machine answers at the node's IP.
    UuidMismatch,
    /// The template boots a Talos image for another platform.
    WrongPlatform,
    /// Proxmox or the secret store denies what kiln needs.
    MissingPrivilege,
    /// The node's Talos refused the config in maintenance.
    ConfigRefused,
    /// Kiln's own settings or a store's set-up are wrong (TLS, mount, credentials file).
    Configuration,
    /// The bundle is gone or unreadable while the cluster may have VMs.
    Bundle,
    /// A state only a person can judge (a leaving node whose address nobody knows).
    NeedsAPerson,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::ForeignVm,
        Refusal::RefusedShrink,
        Refusal::UuidMismatch,
        Refusal::WrongPlatform,
        Refusal::MissingPrivilege,
        Refusal::ConfigRefused,
        Refusal::Configuration,
        Refusal::Bundle,
        Refusal::NeedsAPerson,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ForeignVm => "ForeignVm",
            Refusal::RefusedShrink => "RefusedShrink",
            Refusal::UuidMismatch => "UuidMismatch",
            Refusal::WrongPlatform => "WrongPlatform",
            Refusal::MissingPrivilege => "MissingPrivilege",
            Refusal::ConfigRefused => "RefusedByNode",
            Refusal::Configuration => "Configuration",
            Refusal::Bundle => "SecretsBundle",
            Refusal::NeedsAPerson => "NeedsAPerson",
        }
    }
}

impl TurnError {
    /// The policy's table: which errors no retry can change. Everything else may pass (a lock, a
    /// timeout, a 5xx, a node still booting) and is retried with backoff.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            TurnError::Proxmox(e) => match e {
                ProxmoxError::Foreign { .. } | ProxmoxError::Mismatched { .. } => {
                    Some(Refusal::ForeignVm)
                }
                ProxmoxError::ShrinkRefused { .. } => Some(Refusal::RefusedShrink),
                ProxmoxError::Permission { .. }
                | ProxmoxError::MissingPrivileges(_)
                | ProxmoxError::Auth { .. } => Some(Refusal::MissingPrivilege),
                ProxmoxError::Config(_) => Some(Refusal::Configuration),
                _ => None,
            },
            TurnError::Talos(e) => match e {
                TalosError::UuidMismatch { .. } => Some(Refusal::UuidMismatch),
                TalosError::WrongPlatform { .. } => Some(Refusal::WrongPlatform),
                e if e.is_config_refusal() => Some(Refusal::ConfigRefused),
                TalosError::Setup(_) => Some(Refusal::Configuration),
                _ => None,
            },
            TurnError::Secrets(e) => match e {
                SecretsError::Auth { .. } => Some(Refusal::MissingPrivilege),
                SecretsError::Tls { .. }
                | SecretsError::WrongMount { .. }
                | SecretsError::Config(_) => Some(Refusal::Configuration),
                _ => None,
            },
            TurnError::ConfigRefused(_) => Some(Refusal::ConfigRefused),
            TurnError::BundleGone | TurnError::BundleUnreadable(_) => Some(Refusal::Bundle),
            TurnError::LeavingAddressUnknown { .. }
            | TurnError::UpgradeUnhealthy { .. }
            | TurnError::KubernetesUnhealthy { .. }
            | TurnError::KubernetesNeedsReboot { .. } => Some(Refusal::NeedsAPerson),
            TurnError::LeaveFailed { source, .. } => source.refusal(),
            // A node that did not come back from its reboot: no other node reboots after it.
            TurnError::LiveConfig(e) => e.is_not_back().then_some(Refusal::NeedsAPerson),
            TurnError::Kube(_)
            | TurnError::Credentials(_)
            | TurnError::Bundle(_)
            | TurnError::MachineConfig(_)
            | TurnError::Task(_)
            | TurnError::Bootstrap(_)
            | TurnError::UnknownVersion(_)
            | TurnError::Missing(_) => None,
        }
    }

    /// Worth another try later.
    pub fn is_transient(&self) -> bool {
        self.refusal().is_none()
    }

    /// The message with every source below it, for the status (which outlives the typed error).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        // `#[from]` wrappers print their source already; only add what is not in the text yet.
        while let Some(s) = source {
            let text = s.to_string();
            if !out.contains(&text) {
                let _ = write!(out, ": {text}");
            }
            source = s.source();
        }
        out
    }
}

impl From<Missing> for TurnError {
    fn from(m: Missing) -> Self {
        TurnError::Missing(m)
    }
}

/// What the executor does with a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A refusal: `Blocked` now, not retried for this intent revision.
    Blocked(Refusal),
    /// Try again after the backoff.
    Retry,
    /// The same action failed `max_failures` times in a row: `Failed` until the intent changes.
    GiveUp,
}

/// The error policy. `failures` counts this failure too.
pub fn verdict(error: &TurnError, failures: u32, max_failures: u32) -> Verdict {
    match error.refusal() {
        Some(r) => Verdict::Blocked(r),
        None if failures >= max_failures => Verdict::GiveUp,
        None => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> std::net::SocketAddr {
        "10.0.0.11:50000".parse().unwrap()
    }

    fn talos_status(kind: &str, message: &str) -> TalosError {
        TalosError::test_reply(kind, message)
    }

    /// DESIGN §4: a leave that failed names the node and why, says the VM stays, and is tried again
    /// (etcd may be unhealthy for a while), unless what failed is itself a refusal.
    #[test]
    fn a_failed_leave_names_the_node_and_the_kept_vm_and_is_retried() {
        let e = TurnError::LeaveFailed {
            name: "p-cp-3".into(),
            source: Box::new(TurnError::Talos(talos_status(
                "FailedPrecondition",
                "etcd is not healthy",
            ))),
        };
        let report = e.report();
        assert!(
            report.starts_with("p-cp-3 did not leave etcd, so its VM stays: talos:"),
            "{report}"
        );
        assert!(report.contains("etcd is not healthy"), "{report}");
        assert_eq!(verdict(&e, 1, 8), Verdict::Retry);
        let refused = TurnError::LeaveFailed {
            name: "p-cp-3".into(),
            source: Box::new(TurnError::LeavingAddressUnknown {
                name: "p-cp-3".into(),
            }),
        };
        assert_eq!(
            verdict(&refused, 1, 8),
            Verdict::Blocked(Refusal::NeedsAPerson)
        );
    }

    /// DESIGN §7: each of these is `Blocked` on its first failure, naming the cause.
    #[test]
    fn refusals_are_blocked_on_the_first_try() {
        let cases: Vec<(TurnError, Refusal)> = vec![
            (
                ProxmoxError::Foreign {
                    vmid: 401,
                    reason: "no kiln tags".into(),
                }
                .into(),
                Refusal::ForeignVm,
            ),
            (
                ProxmoxError::ShrinkRefused {
                    vmid: 401,
                    disk: "scsi0".into(),
                    have: 20,
                    want: 10,
                }
                .into(),
                Refusal::RefusedShrink,
            ),
            (
                TalosError::UuidMismatch {
                    addr: addr(),
                    expected: "a".into(),
                    found: "b".into(),
                }
                .into(),
                Refusal::UuidMismatch,
            ),
            (
                ProxmoxError::Permission {
                    path: "/vms/401".into(),
                    privilege: "VM.Config.Disk".into(),
                    message: "permission check failed".into(),
                }
                .into(),
                Refusal::MissingPrivilege,
            ),
            (
                ProxmoxError::MissingPrivileges(vec!["VM.Clone on /vms/9000".into()]).into(),
                Refusal::MissingPrivilege,
            ),
            (
                SecretsError::Auth {
                    path: "kv/kiln/x".into(),
                    message: "permission denied".into(),
                }
                .into(),
                Refusal::MissingPrivilege,
            ),
            (
                talos_status("InvalidArgument", "k8s version not supported").into(),
                Refusal::ConfigRefused,
            ),
            (
                ConfigRefused {
                    node: "a-cp-1".into(),
                    running: "v1.11.6".into(),
                    reason: "unsupported".into(),
                    advice: String::new(),
                    source: talos_status("InvalidArgument", "unsupported"),
                }
                .into(),
                Refusal::ConfigRefused,
            ),
        ];
        for (error, refusal) in cases {
            assert_eq!(
                verdict(&error, 1, 5),
                Verdict::Blocked(refusal),
                "{}",
                error.report()
            );
            assert!(!error.is_transient());
        }
    }

    /// Timeouts, locks, 5xx, an unreachable node, a store that is down: retried with backoff, and
    /// `Failed` only after `max_failures` in a row.
    #[test]
    fn passing_troubles_back_off_then_fail() {
        let cases: Vec<TurnError> = vec![
            ProxmoxError::Locked {
                vmid: 401,
                lock: "clone".into(),
            }
            .into(),
            ProxmoxError::TaskTimeout {
                upid: "UPID:x".into(),
                seconds: 60,
            }
            .into(),
            ProxmoxError::Api {
                status: 503,
                message: "busy".into(),
            }
            .into(),
            ProxmoxError::Transport("connection reset".into()).into(),
            talos_status("FailedPrecondition", "bootstrap is not available yet").into(),
            talos_status("Unavailable", "").into(),
            TalosError::Timeout {
                addr: addr(),
                method: "Bootstrap",
                after: std::time::Duration::from_secs(10),
            }
            .into(),
            SecretsError::Sealed {
                addr: "https://bao:8200".into(),
            }
            .into(),
            Missing::Bundle.into(),
        ];
        for error in cases {
            assert!(error.is_transient(), "{}", error.report());
            assert_eq!(verdict(&error, 1, 3), Verdict::Retry);
            assert_eq!(verdict(&error, 2, 3), Verdict::Retry);
            assert_eq!(verdict(&error, 3, 3), Verdict::GiveUp);
        }
    }

    #[test]
    fn the_report_keeps_the_source_chain() {
        let e: TurnError = ConfigRefused {
            node: "a-cp-1".into(),
            running: "v1.11.6".into(),
            reason: "the Kubernetes version is out of range".into(),
            advice: String::new(),
            source: talos_status("InvalidArgument", "k8s 1.35 > 1.34"),
        }
        .into();
        let report = e.report();
        assert!(report.contains("runs Talos v1.11.6"), "{report}");
        assert!(
            report.contains("InvalidArgument: k8s 1.35 > 1.34"),
            "{report}"
        );
    }
}
