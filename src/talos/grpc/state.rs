//! Node-state detection (DESIGN §4) and the SMBIOS identity check, from COSI resources.

use std::net::SocketAddr;

use serde::Deserialize;

use super::client::{ClientOptions, TalosClient};
use super::error::TalosError;
use super::tls::ClientIdentity;

pub const MACHINE_STATUS: (&str, &str, &str) =
    ("runtime", "MachineStatuses.runtime.talos.dev", "machine");
pub const SYSTEM_INFORMATION: (&str, &str, &str) = (
    "hardware",
    "SystemInformations.hardware.talos.dev",
    "systeminformation",
);

/// siderolabs/talos v1.13.9 `pkg/machinery/resources/runtime/platform_metadata.go`: namespace `runtime`
/// (`v1alpha1.NamespaceName`), type `PlatformMetadatas.talos.dev`, id `platformmetadata`.
pub const PLATFORM_METADATA: (&str, &str, &str) =
    ("runtime", "PlatformMetadatas.talos.dev", "platformmetadata");

/// siderolabs/talos v1.11.6–v1.13.9 `pkg/machinery/resources/runtime/version.go`: the running Talos
/// tag, written by `VersionController` (which runs in maintenance too), readable with COSI Get where
/// the ≤1.12 maintenance API serves no `Version` call.
pub const TALOS_VERSION: (&str, &str, &str) = ("runtime", "Versions.runtime.talos.dev", "version");

/// The only platform whose image reads the Proxmox cloud-init drive (addresses, hostname).
pub const NOCLOUD: &str = "nocloud";

/// `MachineStatus.stage` as Talos names it in the resource's YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineStage {
    Unknown,
    Booting,
    Installing,
    Maintenance,
    Running,
    Rebooting,
    ShuttingDown,
    Resetting,
    Upgrading,
}

impl MachineStage {
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().replace('_', " ").as_str() {
            "booting" => Self::Booting,
            "installing" => Self::Installing,
            "maintenance" => Self::Maintenance,
            "running" => Self::Running,
            "rebooting" => Self::Rebooting,
            "shutting down" => Self::ShuttingDown,
            "resetting" => Self::Resetting,
            "upgrading" => Self::Upgrading,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Booting => "booting",
            Self::Installing => "installing",
            Self::Maintenance => "maintenance",
            Self::Running => "running",
            Self::Rebooting => "rebooting",
            Self::ShuttingDown => "shutting down",
            Self::Resetting => "resetting",
            Self::Upgrading => "upgrading",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineStatus {
    pub stage: MachineStage,
    pub ready: bool,
}

#[derive(Deserialize)]
struct MachineStatusYaml {
    #[serde(default)]
    stage: String,
    #[serde(default)]
    status: MachineStatusInner,
}

#[derive(Deserialize, Default)]
struct MachineStatusInner {
    #[serde(default)]
    ready: bool,
}

#[derive(Deserialize)]
struct VersionYaml {
    #[serde(default)]
    version: String,
}

#[derive(Deserialize)]
struct PlatformMetadataYaml {
    #[serde(default)]
    platform: String,
}

#[derive(Deserialize)]
struct SystemInformationYaml {
    #[serde(default)]
    uuid: String,
}

/// What a node is, seen from kiln with its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// mTLS with kiln's certificate works: the node runs a config from this cluster's OS CA.
    Configured(MachineStatus),
    /// No config yet: an insecure connection works and COSI says `maintenance`.
    Maintenance,
    /// Something answers on :50000 but is neither of the above (still booting, or configured by a CA that
    /// is not this cluster's). Never applied to.
    Booting { reason: String },
    /// Nothing answers.
    Unreachable { reason: String },
}

pub async fn machine_status(client: &TalosClient) -> Result<MachineStatus, TalosError> {
    let (ns, ty, id) = MACHINE_STATUS;
    let res = client.cosi_get(ns, ty, id).await?;
    let yaml = res.spec.map(|s| s.yaml_spec).unwrap_or_default();
    let parsed: MachineStatusYaml =
        serde_yaml::from_str(&yaml).map_err(|e| TalosError::Malformed {
            addr: client.addr(),
            method: super::proto::paths::COSI_GET,
            message: format!("MachineStatus spec: {e}"),
        })?;
    Ok(MachineStatus {
        stage: MachineStage::parse(&parsed.stage),
        ready: parsed.status.ready,
    })
}

/// The SMBIOS system uuid the node reports (empty when the hypervisor sets none).
pub async fn system_uuid(client: &TalosClient) -> Result<String, TalosError> {
    let (ns, ty, id) = SYSTEM_INFORMATION;
    let res = client.cosi_get(ns, ty, id).await?;
    let yaml = res.spec.map(|s| s.yaml_spec).unwrap_or_default();
    let parsed: SystemInformationYaml =
        serde_yaml::from_str(&yaml).map_err(|e| TalosError::Malformed {
            addr: client.addr(),
            method: super::proto::paths::COSI_GET,
            message: format!("SystemInformation spec: {e}"),
        })?;
    Ok(parsed.uuid)
}

/// The Talos version the node runs, from COSI (`VersionSpec.version`, e.g. `v1.11.6`).
pub async fn talos_version(client: &TalosClient) -> Result<String, TalosError> {
    let (ns, ty, id) = TALOS_VERSION;
    let res = client.cosi_get(ns, ty, id).await?;
    let yaml = res.spec.map(|s| s.yaml_spec).unwrap_or_default();
    let parsed: VersionYaml = serde_yaml::from_str(&yaml).map_err(|e| TalosError::Malformed {
        addr: client.addr(),
        method: super::proto::paths::COSI_GET,
        message: format!("Version spec: {e}"),
    })?;
    Ok(parsed.version)
}

/// The platform the node's boot image was built for (`PlatformMetadataSpec.platform`, yaml key
/// `platform`).
pub async fn platform(client: &TalosClient) -> Result<String, TalosError> {
    let (ns, ty, id) = PLATFORM_METADATA;
    let res = client.cosi_get(ns, ty, id).await?;
    let yaml = res.spec.map(|s| s.yaml_spec).unwrap_or_default();
    let parsed: PlatformMetadataYaml =
        serde_yaml::from_str(&yaml).map_err(|e| TalosError::Malformed {
            addr: client.addr(),
            method: super::proto::paths::COSI_GET,
            message: format!("PlatformMetadata spec: {e}"),
        })?;
    Ok(parsed.platform)
}

/// DESIGN §4: mTLS works → configured (stage from MachineStatus); else insecure + COSI `maintenance` →
/// maintenance; else booting or unreachable. With TLS 1.3 a refused client certificate only shows on the
/// first read, so "mTLS works" means a COSI read over it succeeded, not just the handshake.
pub async fn detect(
    addr: SocketAddr,
    identity: &ClientIdentity,
    options: &ClientOptions,
) -> NodeState {
    let mtls_error = match TalosClient::connect_mtls(addr, identity, options.clone()).await {
        Ok(client) => match machine_status(&client).await {
            Ok(status) => return NodeState::Configured(status),
            Err(e) => e,
        },
        Err(e @ TalosError::Unreachable { .. }) => {
            return NodeState::Unreachable {
                reason: e.to_string(),
            };
        }
        Err(e) => e,
    };
    match TalosClient::connect_insecure(addr, options.clone()).await {
        Ok(client) => match machine_status(&client).await {
            Ok(s) if s.stage == MachineStage::Maintenance => NodeState::Maintenance,
            Ok(s) => NodeState::Booting {
                reason: format!("insecure API answers with stage {}", s.stage.as_str()),
            },
            Err(e) => NodeState::Booting {
                reason: format!("mTLS: {mtls_error}; insecure: {e}"),
            },
        },
        Err(e @ TalosError::Unreachable { .. }) => NodeState::Unreachable {
            reason: e.to_string(),
        },
        Err(e) => NodeState::Booting {
            reason: format!("mTLS: {mtls_error}; insecure: {e}"),
        },
    }
}

/// Outcome of comparing the node's SMBIOS uuid with the VM's `smbios1` uuid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UuidCheck {
    Matches,
    /// The node reports no uuid (the simulator unless told one): allowed, with a warning.
    Unreported,
}

/// A control-plane config carries every CA key: it goes only to the VM kiln created, never to whatever
/// else answers at that IP.
pub fn compare_uuid(
    addr: SocketAddr,
    expected: &str,
    found: &str,
) -> Result<UuidCheck, TalosError> {
    if found.trim().is_empty() {
        return Ok(UuidCheck::Unreported);
    }
    if found.trim().eq_ignore_ascii_case(expected.trim()) {
        Ok(UuidCheck::Matches)
    } else {
        Err(TalosError::UuidMismatch {
            addr,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_as_talos_prints_them() {
        assert_eq!(
            MachineStage::parse("maintenance"),
            MachineStage::Maintenance
        );
        assert_eq!(
            MachineStage::parse("shutting down"),
            MachineStage::ShuttingDown
        );
        assert_eq!(MachineStage::parse("RUNNING"), MachineStage::Running);
        assert_eq!(MachineStage::parse("nonsense"), MachineStage::Unknown);
    }

    #[test]
    fn uuid_check_refuses_a_different_machine() {
        let a: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert_eq!(
            compare_uuid(a, "AbC-1", "abc-1").unwrap(),
            UuidCheck::Matches
        );
        assert_eq!(compare_uuid(a, "abc-1", "").unwrap(), UuidCheck::Unreported);
        assert!(matches!(
            compare_uuid(a, "abc-1", "abc-2"),
            Err(TalosError::UuidMismatch { .. })
        ));
    }
}
