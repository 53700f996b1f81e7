//! Errors at the Proxmox boundary, and which of them are worth trying again (DESIGN.md §3).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProxmoxError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(
        "authentication failed ({status}): {message} — check proxmox.token_id and token_secret_file"
    )]
    Auth { status: u16, message: String },
    #[error("permission denied: {message} (missing privilege {privilege} on {path})")]
    Permission {
        path: String,
        privilege: String,
        message: String,
    },
    #[error("missing Proxmox privileges: {}", .0.join(", "))]
    MissingPrivileges(Vec<String>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("VMID {vmid} holds a VM that is not this kiln node's: {reason}")]
    Foreign { vmid: u32, reason: String },
    #[error("VM {vmid} carries kiln's tags or marker but is not this node's VM: {reason}")]
    Mismatched { vmid: u32, reason: String },
    #[error("VM {vmid}: disks only grow ({disk} is {have} bytes, the intent asks for {want})")]
    ShrinkRefused {
        vmid: u32,
        disk: String,
        have: u64,
        want: u64,
    },
    #[error("VM {vmid} is locked ({lock})")]
    Locked { vmid: u32, lock: String },
    #[error("Proxmox cluster has no quorum or the node is offline: {0}")]
    NoQuorum(String),
    #[error("task {upid} failed: {status}; log tail: {}", .log_tail.join(" | "))]
    TaskFailed {
        upid: String,
        status: String,
        log_tail: Vec<String>,
    },
    #[error("task {upid} did not end within {seconds}s")]
    TaskTimeout { upid: String, seconds: u64 },
    #[error("the VM changed concurrently (digest mismatch): {0}")]
    Conflict(String),
    #[error("Proxmox refused: HTTP {status}: {message}")]
    Api { status: u16, message: String },
    #[error("transport: {0}")]
    Transport(String),
    #[error("no answer to a {method} {path}: it may or may not have run")]
    NoAnswer { method: String, path: String },
    #[error("unexpected answer from Proxmox: {0}")]
    Protocol(String),
    /// `[ha]`: this instance does not hold the Lease, so nothing was sent (`crate::ha::gate`).
    #[error("{0}")]
    NotLeader(String),
}

impl ProxmoxError {
    /// Worth trying the same request again after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            ProxmoxError::Transport(_)
            | ProxmoxError::NoAnswer { .. }
            | ProxmoxError::NoQuorum(_) => true,
            ProxmoxError::Api { status, message } => transient_status(*status, message),
            ProxmoxError::TaskFailed { status, .. } => is_lock_timeout(status),
            _ => false,
        }
    }
}

/// Proxmox answers 500 for permanent and passing troubles alike, so a 500 is judged by its message.
pub(crate) fn transient_status(status: u16, message: &str) -> bool {
    match status {
        595 | 596 | 502 | 503 | 504 => true,
        500 => {
            let m = message.to_ascii_lowercase();
            is_lock_timeout(&m)
                || m.contains("no quorum")
                || m.contains("connection refused")
                || m.contains("connection timed out")
                || m.contains("temporarily unavailable")
        }
        _ => false,
    }
}

pub(crate) fn is_lock_timeout(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("can't lock file") && m.contains("got timeout")
}

/// Turns a PVE error answer into the typed error it stands for.
pub(crate) fn classify(status: u16, message: String, vmid: Option<u32>) -> ProxmoxError {
    let lower = message.to_ascii_lowercase();
    if status == 401 {
        return ProxmoxError::Auth { status, message };
    }
    if status == 403 {
        let (path, privilege) = parse_permission(&message);
        return ProxmoxError::Permission {
            path,
            privilege,
            message,
        };
    }
    if status == 595 || lower.contains("no quorum") {
        return ProxmoxError::NoQuorum(message);
    }
    // qemu-server's config and resize calls say "checksum mismatch (file change by other user?)"
    // (src/PVE/API2/Qemu.pm, update_vm_api and resize_vm); pve-common's assert_if_modified, used by
    // qemu-server's move_vm_disk, pve-container and the storage and firewall configs, says "detected
    // modified configuration - file changed by other user? Try again." Both mean the digest moved.
    if lower.contains("checksum mismatch") || lower.contains("detected modified configuration") {
        return ProxmoxError::Conflict(message);
    }
    if let Some(lock) = lower
        .strip_prefix("vm is locked (")
        .and_then(|rest| rest.split(')').next())
    {
        return ProxmoxError::Locked {
            vmid: vmid.unwrap_or(0),
            lock: lock.to_owned(),
        };
    }
    if lower.contains("does not exist") && lower.contains("configuration file") {
        return ProxmoxError::NotFound(message);
    }
    ProxmoxError::Api { status, message }
}

/// "Permission check failed (/vms/401, VM.PowerMgmt)" → ("/vms/401", "VM.PowerMgmt").
fn parse_permission(message: &str) -> (String, String) {
    let inner = message
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inner, _)| inner);
    match inner.and_then(|i| i.split_once(',')) {
        Some((path, privilege)) => (path.trim().to_owned(), privilege.trim().to_owned()),
        None => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_hundreds_are_judged_by_message() {
        assert!(transient_status(
            500,
            "can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout"
        ));
        assert!(transient_status(500, "cluster not ready - no quorum?"));
        assert!(!transient_status(
            500,
            "unable to create VM 401: config file already exists"
        ));
        assert!(!transient_status(500, "shrinking disks is not supported"));
        assert!(transient_status(596, "Broken pipe"));
        assert!(!transient_status(400, "Parameter verification failed."));
    }

    #[test]
    fn permission_errors_name_the_privilege() {
        match classify(
            403,
            "Permission check failed (/vms/401, VM.PowerMgmt)".into(),
            None,
        ) {
            ProxmoxError::Permission {
                path, privilege, ..
            } => {
                assert_eq!(path, "/vms/401");
                assert_eq!(privilege, "VM.PowerMgmt");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(
                500,
                "detected modified configuration - file changed by other user? Try again.".into(),
                Some(401)
            ),
            ProxmoxError::Conflict(_)
        ));
        assert!(matches!(
            classify(
                500,
                "checksum mismatch (file change by other user?)".into(),
                Some(401)
            ),
            ProxmoxError::Conflict(_)
        ));
        assert!(matches!(
            classify(500, "VM is locked (backup)".into(), Some(401)),
            ProxmoxError::Locked { vmid: 401, ref lock } if lock == "backup"
        ));
    }
}
