//! Errors at the Talos API boundary, typed so the reconciler can tell "try again" from "done" from "stop".

use std::net::SocketAddr;

use super::tls::TlsSetupError;

/// The ways a node leaves a call unanswered that mean "nothing there yet" rather than a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// gRPC `Unknown`.
    Unknown,
    /// The caller's deadline passed (kiln's own timer or `DeadlineExceeded`).
    Deadline,
    /// gRPC `Unavailable`.
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum TalosError {
    /// Nothing accepted a TCP connection: the VM is off, still booting, or there is no route.
    #[error("{addr}: unreachable: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    /// TCP worked but the TLS handshake did not (wrong mode, wrong CA, certificate refused).
    #[error("{addr}: TLS handshake failed: {message}")]
    Handshake { addr: SocketAddr, message: String },
    /// The peer did not agree to HTTP/2 via ALPN; it is not a Talos API.
    #[error("{addr}: peer did not negotiate ALPN h2; not a Talos API")]
    NoAlpnH2 { addr: SocketAddr },
    #[error("{addr}: {method}: timed out after {after:?}")]
    Timeout {
        addr: SocketAddr,
        method: &'static str,
        after: std::time::Duration,
    },
    /// What an upload read from failed: the upload was cancelled, not completed, so the node never
    /// holds a partial file as a whole one.
    #[error("{addr}: {method}: the upload's source failed: {message}")]
    Source {
        addr: SocketAddr,
        method: &'static str,
        message: String,
    },
    #[error("client TLS set-up: {0}")]
    Setup(#[from] TlsSetupError),
    /// The node answered with a gRPC status.
    #[error("{addr}: {method}: {code:?}: {message}")]
    Status {
        addr: SocketAddr,
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// A reply envelope carried `metadata.error` (one-to-many style): an error even though the call returned.
    #[error("{addr}: {method}: node reported: {message}")]
    NodeReported {
        addr: SocketAddr,
        method: &'static str,
        message: String,
    },
    #[error("{addr}: {method}: reply had no message for this node")]
    EmptyReply {
        addr: SocketAddr,
        method: &'static str,
    },
    #[error("{addr}: {method}: malformed reply: {message}")]
    Malformed {
        addr: SocketAddr,
        method: &'static str,
        message: String,
    },
    /// The template's image is not Talos's nocloud image: it ignores the cloud-init drive (no static
    /// address, no hostname), so kiln refuses to configure it.
    #[error(
        "{addr}: the node booted a Talos image for platform {platform:?}, not \"nocloud\": it ignores the \
         Proxmox cloud-init drive; make the template from Talos's nocloud image (factory.talos.dev \
         nocloud-amd64.raw.xz)"
    )]
    WrongPlatform { addr: SocketAddr, platform: String },
    /// `LifecycleService.Upgrade` streamed a non-zero exit code: the install failed on the node.
    #[error("{addr}: the upgrade's install failed with exit code {exit_code}: {messages}")]
    InstallFailed {
        addr: SocketAddr,
        exit_code: i32,
        messages: String,
    },
    #[error(
        "{addr}: SMBIOS uuid {found:?} does not match the VM's {expected:?}: refusing to send a config"
    )]
    UuidMismatch {
        addr: SocketAddr,
        expected: String,
        found: String,
    },
    /// `[ha]`: this instance does not hold the Lease, so nothing was sent (`crate::ha::gate`).
    #[error("{0}")]
    NotLeader(String),
}

impl TalosError {
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Worth another try later (node busy, rebooting, not ready yet), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Handshake { .. } | Self::Timeout { .. } => true,
            Self::Status { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        }
    }

    /// The node's Talos refused a machine config for good: its validation (`InvalidArgument`, e.g.
    /// RuntimeValidate's Kubernetes range), or its decoder — an older one that does not know a newer
    /// config contract answers a plain error (`Unknown`, "failed to parse config"). The same config
    /// is refused again, so retrying cannot help.
    pub fn is_config_refusal(&self) -> bool {
        match self {
            Self::Status { code, message, .. } => {
                *code == tonic::Code::InvalidArgument
                    || (*code == tonic::Code::Unknown && message.contains("failed to parse config"))
            }
            _ => false,
        }
    }

    /// The node's own words, without the address and method kiln adds (for a status line).
    pub fn node_message(&self) -> String {
        match self {
            Self::Status { message, .. } | Self::NodeReported { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// `FailedPrecondition`: Bootstrap's "not available yet" / "time is not in sync yet" (DESIGN §4).
    pub fn is_failed_precondition(&self) -> bool {
        self.code() == Some(tonic::Code::FailedPrecondition)
    }

    /// How a call that should list etcd members went unanswered, for the bootstrap decision: before
    /// bootstrap a real node fails with `Unknown` or holds the call until the caller's deadline.
    pub fn no_answer(&self) -> Option<NoAnswer> {
        match self {
            Self::Timeout { .. } => Some(NoAnswer::Deadline),
            Self::Status { code, .. } => match code {
                tonic::Code::Unknown => Some(NoAnswer::Unknown),
                tonic::Code::DeadlineExceeded => Some(NoAnswer::Deadline),
                tonic::Code::Unavailable => Some(NoAnswer::Unavailable),
                _ => None,
            },
            _ => None,
        }
    }

    /// Replies as a node gives them, for tests of code that must not see gRPC's types.
    #[cfg(test)]
    pub(crate) fn test_reply(kind: &str, message: &str) -> Self {
        let code = match kind {
            "InvalidArgument" => tonic::Code::InvalidArgument,
            "FailedPrecondition" => tonic::Code::FailedPrecondition,
            "Unavailable" => tonic::Code::Unavailable,
            "Unknown" => tonic::Code::Unknown,
            other => panic!("no test reply {other}"),
        };
        Self::Status {
            addr: SocketAddr::from(([10, 0, 0, 11], 50000)),
            method: "test",
            code,
            message: message.to_owned(),
        }
    }

    pub(crate) fn status(addr: SocketAddr, method: &'static str, s: tonic::Status) -> Self {
        Self::Status {
            addr,
            method,
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> TalosError {
        TalosError::Status {
            addr: "10.0.0.1:50000".parse().unwrap(),
            method: "ApplyConfiguration",
            code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn config_refusals_are_validation_or_an_older_decoder() {
        assert!(status(tonic::Code::InvalidArgument, "k8s 1.35 unsupported").is_config_refusal());
        assert!(status(tonic::Code::Unknown, "failed to parse config: x").is_config_refusal());
        assert!(!status(tonic::Code::Unknown, "something else").is_config_refusal());
        assert!(!status(tonic::Code::Unavailable, "failed to parse config").is_config_refusal());
    }

    #[test]
    fn unanswered_etcd_probes_are_told_apart() {
        assert_eq!(
            status(tonic::Code::Unknown, "").no_answer(),
            Some(NoAnswer::Unknown)
        );
        assert_eq!(
            status(tonic::Code::DeadlineExceeded, "").no_answer(),
            Some(NoAnswer::Deadline)
        );
        assert_eq!(
            status(tonic::Code::Unavailable, "").no_answer(),
            Some(NoAnswer::Unavailable)
        );
        assert_eq!(status(tonic::Code::PermissionDenied, "").no_answer(), None);
        let timeout = TalosError::Timeout {
            addr: "10.0.0.1:50000".parse().unwrap(),
            method: "EtcdMemberList",
            after: std::time::Duration::from_secs(5),
        };
        assert_eq!(timeout.no_answer(), Some(NoAnswer::Deadline));
    }
}
