//! Errors at the Talos API boundary, typed so the reconciler can tell "try again" from "done" from "stop".

use std::net::SocketAddr;

use super::tls::TlsSetupError;

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
    #[error(
        "{addr}: SMBIOS uuid {found:?} does not match the VM's {expected:?}: refusing to send a config"
    )]
    UuidMismatch {
        addr: SocketAddr,
        expected: String,
        found: String,
    },
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

    pub(crate) fn status(addr: SocketAddr, method: &'static str, s: tonic::Status) -> Self {
        Self::Status {
            addr,
            method,
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}
