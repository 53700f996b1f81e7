//! What each simulated Talos method does, on the fleet state. Messages and codes copy Talos's where kiln
//! (or an operator) reacts to them.

use std::net::SocketAddr;

use tonic::Status;

use super::config::{self, MachineType, NodeConfig};
use super::fleet::{
    ADMIN, Configured, ETCD_BACKUP, Fleet, Node, OPERATOR, Peer, Phase, READER, minor_of,
};
use super::validate::ConfigValidator;
use crate::backup::bbolt::EtcdDbBuilder;
use crate::talos::grpc::proto::common::Data;
use crate::talos::grpc::proto::{cosi, machine};

const READ_ROLES: &[&str] = &[ADMIN, OPERATOR, READER];

fn configured(fleet: &mut Fleet, addr: SocketAddr) -> Result<&mut Configured, Status> {
    match &mut fleet.node(addr)?.phase {
        Phase::Configured(c) => Ok(c),
        _ => Err(Status::failed_precondition("node is not configured")),
    }
}

fn control_plane(fleet: &mut Fleet, addr: SocketAddr, what: &str) -> Result<(), Status> {
    if configured(fleet, addr)?.cfg.machine_type != MachineType::ControlPlane {
        return Err(Status::failed_precondition(format!(
            "{what} is only available on control plane nodes"
        )));
    }
    Ok(())
}

fn actor_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The Talos that judges a config: a configured node's own; in maintenance the boot image's — `version=`
/// when the simulator was told one, else (standing in for a template that matches the spec) the tag of
/// the install image the config names.
fn running_version(node: &Node, cfg: &NodeConfig) -> String {
    let maintenance = matches!(node.phase, Phase::Maintenance { .. });
    if !maintenance || node.version_pinned {
        return node.version.clone();
    }
    cfg.install_image
        .as_deref()
        .and_then(config::image_tag)
        .filter(|t| minor_of(t).is_some())
        .map(str::to_owned)
        .unwrap_or_else(|| node.version.clone())
}

/// Every ApplyConfiguration is recorded and logged (one line each), whatever it answered.
pub fn apply_configuration(
    fleet: &mut Fleet,
    validator: &dyn ConfigValidator,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::ApplyConfigurationRequest,
) -> Result<machine::ApplyConfigurationResponse, Status> {
    let result = apply_configuration_inner(fleet, validator, addr, peer, req);
    super::live::record(fleet, addr, req, &result);
    result
}

fn apply_configuration_inner(
    fleet: &mut Fleet,
    validator: &dyn ConfigValidator,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::ApplyConfigurationRequest,
) -> Result<machine::ApplyConfigurationResponse, Status> {
    fleet.authorize(addr, peer, "ApplyConfiguration", &[ADMIN])?;
    let mode = machine::ApplyMode::try_from(req.mode)
        .map_err(|_| Status::invalid_argument("unknown apply mode"))?;
    let in_maintenance = matches!(fleet.node(addr)?.phase, Phase::Maintenance { .. });
    let node_minor = fleet.node(addr)?.minor();
    if in_maintenance {
        let allowed = if node_minor <= 12 {
            matches!(
                mode,
                machine::ApplyMode::Auto | machine::ApplyMode::Reboot | machine::ApplyMode::Try
            )
        } else {
            !matches!(mode, machine::ApplyMode::Staged)
        };
        if !allowed {
            return Err(Status::unimplemented(format!(
                "apply configuration --mode='{}' is not supported in maintenance mode",
                format!("{mode:?}").to_ascii_lowercase()
            )));
        }
    }
    let docs = config::documents(&req.data).map_err(Status::unknown)?;
    let cfg = NodeConfig::from_documents(&docs).map_err(Status::invalid_argument)?;
    let running = running_version(fleet.node(addr)?, &cfg);
    let minor = minor_of(&running).unwrap_or(13);
    let text = String::from_utf8_lossy(&req.data);
    // Talos decodes strictly before it validates: unknown fields, kinds and types are refused by
    // `configloader.NewFromBytes`, whose error ApplyConfiguration returns as it is — gRPC `Unknown`,
    // "failed to parse config: …" (v1.11 `internal/app/maintenance/server.go`; 1.13 machined
    // `v1alpha1_server.go` likewise). The validator stands in for that decoder.
    validator
        .validate(minor, &text, &docs)
        .map_err(|e| Status::unknown(format!("failed to parse config: {e}")))?;
    super::runtime::validate(&running, &docs).map_err(|e| {
        // The ≤1.12 maintenance server wraps it (`internal/app/maintenance/server.go`); machined does not.
        if in_maintenance && node_minor <= 12 {
            Status::invalid_argument(format!("runtime configuration validation failed: {e}"))
        } else {
            Status::invalid_argument(e)
        }
    })?;

    let reply = |mode: i32, details: &str| machine::ApplyConfigurationResponse {
        messages: vec![machine::ApplyConfiguration {
            metadata: None,
            warnings: Vec::new(),
            mode,
            mode_details: details.to_owned(),
        }],
    };

    if in_maintenance {
        if req.dry_run {
            return Ok(reply(
                0,
                "Node is running in maintenance mode and does not have a config yet.",
            ));
        }
        accept(fleet, addr, req.data.clone(), cfg)?;
        // v1.13+ reports NO_REBOOT; the ≤1.12 maintenance server leaves the mode unset.
        return Ok(if node_minor >= 13 {
            reply(
                machine::ApplyMode::NoReboot as i32,
                "Applied configuration without a reboot",
            )
        } else {
            reply(0, "")
        });
    }

    // siderolabs/talos v1.13.9 `internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go`
    // `ApplyConfiguration` on a configured node: NO_REBOOT and TRY refuse what cannot apply live
    // (InvalidArgument), AUTO picks REBOOT for it, REBOOT persists the config and reboots.
    let current = configured(fleet, addr)?;
    let current_docs = config::documents(&current.raw).map_err(Status::internal)?;
    let immediate = super::live::can_apply_immediate(&current_docs, &docs);
    let (chosen, details) = match mode {
        machine::ApplyMode::Staged => (
            mode,
            "Staged configuration to be applied after the next reboot".to_owned(),
        ),
        machine::ApplyMode::NoReboot | machine::ApplyMode::Try => match &immediate {
            Err(e) => return Err(Status::invalid_argument(e.clone())),
            Ok(()) => (mode, "Applied configuration without a reboot".to_owned()),
        },
        machine::ApplyMode::Auto => match &immediate {
            Err(e) => (
                machine::ApplyMode::Reboot,
                format!("Applied configuration with a reboot: {e}"),
            ),
            Ok(()) => (
                machine::ApplyMode::NoReboot,
                "Applied configuration without a reboot".to_owned(),
            ),
        },
        machine::ApplyMode::Reboot => (mode, "Applied configuration with a reboot".to_owned()),
    };
    if req.dry_run {
        let summary = details.split(':').next().unwrap_or_default();
        return Ok(reply(
            chosen as i32,
            &format!(
                "Dry run summary:\n{summary} (skipped in dry-run).\n{}",
                super::live::diff_summary(&current.raw, &req.data)
            ),
        ));
    }
    match chosen {
        machine::ApplyMode::Staged => {}
        machine::ApplyMode::Reboot => {
            accept(fleet, addr, req.data.clone(), cfg)?;
            // The node reboots into the config it persisted: nothing answers meanwhile.
            let delay = fleet.reboot_delay;
            let node = fleet.node(addr)?;
            node.down_until = Some(std::time::Instant::now() + delay);
            tracing::info!(node = %addr, ?delay, "rebooting to apply the machine config");
            fleet.reboots.push((addr, delay));
        }
        _ => accept(fleet, addr, req.data.clone(), cfg)?,
    }
    Ok(reply(chosen as i32, &details))
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file; one left by an earlier run is tightened too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(data)
}

/// The node now runs `cfg`: from maintenance it installs the image's version (a configured node's version
/// changes only through an upgrade), serves mTLS from its OS CA, and a control plane of a running etcd
/// cluster joins it.
fn accept(
    fleet: &mut Fleet,
    addr: SocketAddr,
    raw: Vec<u8>,
    cfg: NodeConfig,
) -> Result<(), Status> {
    if let Some(dir) = fleet.dump_dir.clone() {
        let path = dir.join(format!("{}.yaml", addr.ip()));
        // A machine config holds the cluster's CA keys and tokens: readable by its owner only.
        write_private(&path, &raw).map_err(|e| {
            Status::internal(format!("simulator: cannot write {}: {e}", path.display()))
        })?;
    }
    // One line per accepted config: tests time the bootstrap against the last of them.
    tracing::info!(node = %addr, "machine config accepted");
    let key = cfg.cluster_key.clone();
    let is_cp = cfg.machine_type == MachineType::ControlPlane;
    if is_cp && let Some(ca_key) = &cfg.os_ca_key_pem {
        fleet
            .cluster(&key)
            .os_ca_key
            .get_or_insert_with(|| ca_key.clone());
    }
    let node = fleet.node(addr)?;
    if matches!(node.phase, Phase::Maintenance { .. })
        && !node.installed
        && let Some(tag) = cfg
            .install_image
            .as_deref()
            .and_then(config::image_tag)
            .filter(|t| minor_of(t).is_some())
    {
        node.version = tag.to_owned();
        node.version_pinned = false;
    }
    // A running node given a new config keeps its Kubernetes Node (and its cordon), as on Talos.
    let (etcd_data, recover_snapshot, etcd_failed, applied_at) = match &node.phase {
        Phase::Configured(c) if c.cfg.cluster_key == key => (
            c.etcd_data,
            c.recover_snapshot.clone(),
            c.etcd_failed.clone(),
            c.applied_at,
        ),
        _ => (false, None, None, std::time::Instant::now()),
    };
    node.phase = Phase::Configured(Box::new(Configured {
        raw,
        cfg,
        tls: None,
        etcd_data,
        recover_snapshot,
        etcd_failed,
        applied_at,
    }));
    if is_cp && fleet.cluster_bootstrapped(&key) {
        fleet.join_waiting_control_planes(&key);
    }
    Ok(())
}

pub fn bootstrap(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::BootstrapRequest,
) -> Result<machine::BootstrapResponse, Status> {
    fleet.authorize(addr, peer, "Bootstrap", &[ADMIN])?;
    control_plane(fleet, addr, "bootstrap")?;
    let c = configured(fleet, addr)?;
    if !c.cfg.has_etcd_ca {
        return Err(Status::invalid_argument("etcd is not configured"));
    }
    if c.etcd_data {
        return Err(Status::already_exists("etcd data directory is not empty"));
    }
    let key = c.cfg.cluster_key.clone();
    let cluster_name = c.cfg.cluster_name.clone();
    if fleet.cluster_bootstrapped(&key) {
        let holders: Vec<String> = fleet.clusters[&key]
            .members
            .values()
            .map(|m| format!("{} ({})", m.hostname, m.addr.ip()))
            .collect();
        let message = format!(
            "Bootstrap on {addr} would start a second etcd cluster for cluster {cluster_name:?}, \
             which already runs etcd on {}",
            holders.join(", ")
        );
        fleet.violation(message.clone());
        return Err(Status::internal(format!("simulator refuses: {message}")));
    }
    if req.recover_etcd {
        // Talos answers the Bootstrap once the etcd service is started in bootstrap mode
        // (`BootstrapEtcd`, services/etcd.go v1.13.9); the restore runs in the service's start, so
        // a bad snapshot fails the service, not the call.
        let c = configured(fleet, addr)?;
        let recovered = recover_from(c.recover_snapshot.as_deref(), req.recover_skip_hash_check);
        match recovered {
            Err(message) => {
                c.etcd_failed = Some(message);
                tracing::info!(node = %addr, cluster = %cluster_name, "etcd recovery failed");
                return Ok(machine::BootstrapResponse {
                    messages: vec![machine::MetadataOnly { metadata: None }],
                });
            }
            Ok(revision) => {
                // Recovery starts a new one-member cluster from the snapshot (`etcdutl snapshot
                // restore` writes a fresh membership): the old members are gone.
                c.recover_snapshot = None;
                c.etcd_failed = None;
                fleet.cluster(&key).members.clear();
                fleet.set_etcd_revision(&key, revision);
                fleet.recoveries.push((addr, revision));
                tracing::info!(node = %addr, cluster = %cluster_name, revision, "etcd recovered from the snapshot");
            }
        }
    }
    fleet.add_member(&key, addr);
    fleet.join_waiting_control_planes(&key);
    fleet.kube_to_start.push(key);
    // One line per accepted bootstrap: the end-to-end tests count them in the simulator's log to prove
    // that kiln bootstrapped each cluster exactly once, across crashes and restarts.
    tracing::info!(node = %addr, cluster = %cluster_name, recover = req.recover_etcd, "etcd bootstrapped");
    Ok(machine::BootstrapResponse {
        messages: vec![machine::MetadataOnly { metadata: None }],
    })
}

/// The gzip tar Kubeconfig streams, cut into chunks so clients must join them as talosctl does.
pub fn kubeconfig(fleet: &mut Fleet, addr: SocketAddr, peer: &Peer) -> Result<Vec<Data>, Status> {
    fleet.authorize(addr, peer, "Kubeconfig", &[ADMIN])?;
    control_plane(fleet, addr, "kubeconfig")?;
    let archive = super::pki::kubeconfig_archive(&configured(fleet, addr)?.cfg)
        .map_err(Status::failed_precondition)?;
    Ok(chunks(&archive, 512))
}

fn chunks(bytes: &[u8], size: usize) -> Vec<Data> {
    bytes
        .chunks(size)
        .map(|c| Data {
            metadata: None,
            bytes: c.to_vec(),
        })
        .collect()
}

pub fn version(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
) -> Result<machine::VersionResponse, Status> {
    fleet.authorize(addr, peer, "Version", READ_ROLES)?;
    let node = fleet.node(addr)?;
    let features = node
        .configured()
        .map(|_| machine::FeaturesInfo { rbac: true });
    Ok(machine::VersionResponse {
        messages: vec![machine::Version {
            metadata: None,
            version: Some(machine::VersionInfo {
                tag: node.version.clone(),
                sha: "kiln-sim".into(),
                built: String::new(),
                go_version: String::new(),
                os: "linux".into(),
                arch: "amd64".into(),
            }),
            platform: Some(machine::PlatformInfo {
                name: node.platform.clone(),
                mode: platform_mode(&node.platform).into(),
            }),
            features,
        }],
    })
}

/// `pkg/machinery/resources/runtime` platform modes: the image's platform decides (metal is `metal`,
/// a container `container`, every cloud/hypervisor platform `cloud`).
fn platform_mode(platform: &str) -> &'static str {
    match platform {
        "metal" => "metal",
        "container" => "container",
        _ => "cloud",
    }
}

pub fn upgrade(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::UpgradeRequest,
) -> Result<machine::UpgradeResponse, Status> {
    fleet.authorize(addr, peer, "Upgrade", &[ADMIN])?;
    configured(fleet, addr)?;
    let tag = config::image_tag(&req.image)
        .ok_or_else(|| {
            Status::invalid_argument(format!("image reference {:?} has no tag", req.image))
        })?
        .to_owned();
    // The legacy upgrade installs, replies, then reboots into the new image
    // (`internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go` `Upgrade` runs the upgrade
    // sequence, which ends in a reboot): nothing answers meanwhile.
    tracing::info!(node = %addr, image = %req.image, preserve = req.preserve, "legacy upgrade");
    super::upgrade::reboot_into(fleet, addr, Some(tag))?;
    Ok(machine::UpgradeResponse {
        messages: vec![machine::Upgrade {
            metadata: None,
            ack: "Upgrade request received".into(),
            actor_id: actor_id(),
        }],
    })
}

pub fn reset(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::ResetRequest,
) -> Result<machine::ResetResponse, Status> {
    fleet.authorize(addr, peer, "Reset", &[ADMIN])?;
    let c = configured(fleet, addr)?;
    let key = c.cfg.cluster_key.clone();
    let is_member = c.etcd_data && c.cfg.machine_type == MachineType::ControlPlane;
    if req.graceful && is_member && fleet.leave_fails.contains(&addr) {
        return Ok(super::join::failed_leave(addr));
    }
    if req.graceful && is_member {
        let cluster = fleet.cluster(&key);
        let own: Vec<u64> = cluster
            .members
            .values()
            .filter(|m| m.addr == addr)
            .map(|m| m.id)
            .collect();
        if !own.is_empty() && cluster.members.len() == 1 {
            return Err(Status::failed_precondition(
                "etcd: cannot leave the cluster as its last member; reset without graceful",
            ));
        }
        for id in own {
            cluster.members.remove(&id);
        }
    }
    // A non-graceful reset wipes the data but leaves the member registered, as on real Talos.
    if !req.system_partitions_to_wipe.is_empty() {
        return reset_partitions(fleet, addr, req);
    }
    let node = fleet.node(addr)?;
    node.phase = if req.reboot {
        Phase::Maintenance {
            tls: super::pki::maintenance_server_config(addr.ip()).map_err(Status::internal)?,
        }
    } else {
        Phase::Off { installed: None }
    };
    Ok(machine::ResetResponse {
        messages: vec![machine::ActorReply {
            metadata: None,
            actor_id: actor_id(),
        }],
    })
}

/// A Reset naming system partitions wipes only those (v1alpha1_server.go v1.13.9 `Reset`: each label
/// must be a located volume, else "failed to get volume status with label"). Wiping EPHEMERAL loses
/// the node's etcd data and an uploaded snapshot (both live under `/var/lib`); STATE, with the
/// config, stays unless named, so the node reboots configured, its etcd waiting in Preparing.
fn reset_partitions(
    fleet: &mut Fleet,
    addr: SocketAddr,
    req: &machine::ResetRequest,
) -> Result<machine::ResetResponse, Status> {
    let mut ephemeral = false;
    let mut state = false;
    for spec in &req.system_partitions_to_wipe {
        match spec.label.as_str() {
            "EPHEMERAL" => ephemeral |= spec.wipe,
            "STATE" => state |= spec.wipe,
            "META" => {}
            other => {
                return Err(Status::unknown(format!(
                    "failed to get volume status with label {other:?}: resource VolumeStatuses.block.talos.dev({other}) doesn't exist"
                )));
            }
        }
    }
    let delay = fleet.reboot_delay;
    let reboot = req.reboot;
    let node = fleet.node(addr)?;
    let Phase::Configured(c) = &mut node.phase else {
        return Err(Status::failed_precondition("node is not configured"));
    };
    if ephemeral {
        c.etcd_data = false;
        c.recover_snapshot = None;
        c.etcd_failed = None;
    }
    if state {
        node.phase = if reboot {
            Phase::Maintenance {
                tls: super::pki::maintenance_server_config(addr.ip()).map_err(Status::internal)?,
            }
        } else {
            Phase::Off { installed: None }
        };
    } else if reboot {
        fleet.reboots.push((addr, delay));
    } else {
        let phase = std::mem::replace(&mut node.phase, Phase::Off { installed: None });
        if let Phase::Configured(c) = phase {
            node.phase = Phase::Off { installed: Some(c) };
        }
    }
    Ok(machine::ResetResponse {
        messages: vec![machine::ActorReply {
            metadata: None,
            actor_id: actor_id(),
        }],
    })
}

fn running_etcd(fleet: &mut Fleet, addr: SocketAddr) -> Result<String, Status> {
    let c = configured(fleet, addr)?;
    if c.cfg.machine_type != MachineType::ControlPlane {
        return Err(Status::failed_precondition(
            "etcd is not running on worker nodes",
        ));
    }
    if !c.etcd_data {
        return Err(Status::unavailable(
            "etcd is not running on this node: the cluster is not bootstrapped",
        ));
    }
    Ok(c.cfg.cluster_key.clone())
}

/// What an EtcdMemberList call does on this node.
pub enum MemberListAnswer {
    Members(machine::EtcdMemberListResponse),
    /// The node's etcd client waits for a member that never comes: the call ends at the caller's
    /// deadline, or never without one.
    WaitForDeadline,
}

/// siderolabs/talos v1.13.9 `v1alpha1_server.go` `EtcdMemberList` → `etcd.NewClientFromControlPlaneIPs`
/// → `GetEndpoints` (`internal/pkg/etcd/endpoints.go`): with no control-plane endpoint known it fails
/// `Unknown` ("no controlplane endpoints discovered yet"); with one (every config kiln writes names
/// `cluster.controlPlane.endpoint`) clientv3 dials without blocking and `MemberList` waits for a ready
/// connection until the request's context ends. Once any member runs, the list comes from the cluster.
pub fn etcd_member_list(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
) -> Result<MemberListAnswer, Status> {
    fleet.authorize(
        addr,
        peer,
        "EtcdMemberList",
        &[ADMIN, OPERATOR, READER, ETCD_BACKUP],
    )?;
    let c = configured(fleet, addr)?;
    if c.cfg.machine_type != MachineType::ControlPlane {
        return Err(Status::failed_precondition(
            "etcd is not running on worker nodes",
        ));
    }
    let key = c.cfg.cluster_key.clone();
    let names_endpoint = !c.cfg.endpoint.trim().is_empty();
    if !fleet.cluster_bootstrapped(&key) {
        return if names_endpoint {
            Ok(MemberListAnswer::WaitForDeadline)
        } else {
            Err(Status::unknown("no controlplane endpoints discovered yet"))
        };
    }
    let members = fleet
        .cluster(&key)
        .members
        .values()
        .map(|m| machine::EtcdMember {
            id: m.id,
            hostname: m.hostname.clone(),
            peer_urls: vec![format!("https://{}:2380", m.addr.ip())],
            client_urls: vec![format!("https://{}:2379", m.addr.ip())],
            is_learner: m.learner_until.is_some(),
        })
        .collect();
    Ok(MemberListAnswer::Members(machine::EtcdMemberListResponse {
        messages: vec![machine::EtcdMembers {
            metadata: None,
            legacy_members: Vec::new(),
            members,
        }],
    }))
}

pub fn etcd_remove_member_by_id(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &machine::EtcdRemoveMemberByIdRequest,
) -> Result<machine::EtcdRemoveMemberByIdResponse, Status> {
    fleet.authorize(addr, peer, "EtcdRemoveMemberByID", &[ADMIN])?;
    let key = running_etcd(fleet, addr)?;
    if fleet.cluster(&key).members.remove(&req.member_id).is_none() {
        return Err(Status::not_found(format!(
            "etcd member {:x} not found",
            req.member_id
        )));
    }
    Ok(machine::EtcdRemoveMemberByIdResponse {
        messages: vec![machine::MetadataOnly { metadata: None }],
    })
}

/// Talos's stream chunk (`pkg/chunker/stream/stream.go` v1.13.9, default `Size: 1024`).
pub const SNAPSHOT_CHUNK: usize = 1024;

/// The etcd database at the cluster's revision, a real bbolt file with etcd's trailer, streamed as
/// Talos streams it: `EtcdSnapshot` (v1alpha1_server.go v1.13.9) checks the node is a control plane,
/// opens a client to the local etcd (an error while it does not run) and relays `Snapshot`.
pub fn etcd_snapshot(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
) -> Result<Vec<Data>, Status> {
    fleet.authorize(addr, peer, "EtcdSnapshot", &[ADMIN, OPERATOR, ETCD_BACKUP])?;
    let key = running_etcd(fleet, addr)?;
    let revision = fleet.etcd_revision(&key);
    let mut db = EtcdDbBuilder::new(revision).keys((revision as u64).min(64));
    if let Some(m) = fleet.cluster(&key).members.values().next() {
        db = db.member(m.id, &m.hostname, &format!("https://{}:2380", m.addr.ip()));
    }
    Ok(chunks(&db.build(), SNAPSHOT_CHUNK))
}

/// `EtcdRecover` (v1alpha1_server.go v1.13.9): `FailedPrecondition` "etcd service is not ready for
/// recovery yet" while `/var/lib` (EPHEMERAL) is not mounted, control planes only, and the upload
/// written to `/var/lib/etcd.snapshot` as it comes, unread: the check is the recovery's, at
/// `Bootstrap { recover_etcd }`.
pub fn etcd_recover(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    snapshot: Vec<u8>,
) -> Result<machine::EtcdRecoverResponse, Status> {
    fleet.authorize(addr, peer, "EtcdRecover", &[ADMIN])?;
    control_plane(fleet, addr, "etcd recover")?;
    configured(fleet, addr)?.recover_snapshot = Some(snapshot);
    Ok(machine::EtcdRecoverResponse {
        messages: vec![machine::MetadataOnly { metadata: None }],
    })
}

/// What the etcd service's `recoverFromSnapshot` (services/etcd.go v1.13.9) makes of the upload:
/// `etcdutl`'s `Status` (the database read) and `Restore` with `SkipHashCheck`, whose hash rules are
/// etcd's (`etcdutl/snapshot/v3_snapshot.go` v3.5.17: a trailer is there when `size % 512 == 32`,
/// checked unless skipped; none without the skip is refused). The revision it comes back at.
fn recover_from(snapshot: Option<&[u8]>, skip_hash_check: bool) -> Result<i64, String> {
    let Some(snapshot) = snapshot else {
        return Err(
            "failed to recover from the snapshot: open /var/lib/etcd.snapshot: no such file or directory"
                .into(),
        );
    };
    let facts = crate::backup::bbolt::check(snapshot).or_else(|e| match e {
        crate::backup::bbolt::BboltError::HashMismatch { .. } if skip_hash_check => {
            let db = &snapshot[..snapshot.len() - crate::backup::bbolt::HASH_TRAILER_LEN];
            crate::backup::bbolt::check(db)
        }
        e => Err(e),
    });
    match facts {
        Err(e) => Err(format!("error recovering from the snapshot: {e}")),
        Ok(f) if !f.has_hash_trailer && !skip_hash_check => Err(
            "error recovering from the snapshot: snapshot missing hash but --skip-hash-check=false"
                .into(),
        ),
        Ok(f) => Ok(f.revision),
    }
}

/// Stage and readiness as `MachineStatuses.runtime.talos.dev/machine` reports them.
pub fn stage(fleet: &Fleet, node: &Node) -> (&'static str, bool) {
    if node.is_down() {
        return ("rebooting", false);
    }
    match &node.phase {
        Phase::Off { .. } => ("shutting down", false),
        Phase::Maintenance { .. } => ("maintenance", false),
        Phase::Configured(c) => {
            let running = match c.cfg.machine_type {
                MachineType::ControlPlane => {
                    c.etcd_data && fleet.cluster_bootstrapped(&c.cfg.cluster_key)
                }
                MachineType::Worker => fleet.cluster_bootstrapped(&c.cfg.cluster_key),
            };
            if running {
                ("running", true)
            } else {
                ("booting", false)
            }
        }
    }
}

pub fn service_list(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
) -> Result<machine::ServiceListResponse, Status> {
    fleet.authorize(addr, peer, "ServiceList", READ_ROLES)?;
    let node = &fleet.nodes[&addr];
    let (_, ready) = stage(fleet, node);
    let with_message = |id: &str, state: &str, healthy: bool, message: &str| machine::ServiceInfo {
        id: id.into(),
        state: state.into(),
        events: None,
        health: Some(machine::ServiceHealth {
            unknown: false,
            healthy,
            last_message: message.into(),
            last_change: None,
        }),
    };
    let svc = |id: &str, state: &str, healthy: bool| with_message(id, state, healthy, "");
    let mut services = vec![
        svc("apid", "Running", true),
        svc("machined", "Running", true),
    ];
    if let Some(c) = node.configured() {
        services.push(svc("containerd", "Running", true));
        if c.cfg.machine_type == MachineType::ControlPlane {
            services.push(if let Some(message) = &c.etcd_failed {
                with_message("etcd", "Failed", false, message)
            } else if c.etcd_data {
                svc("etcd", "Running", true)
            } else {
                svc("etcd", "Preparing", false)
            });
            services.push(svc("trustd", "Running", true));
        }
        services.push(if ready {
            svc("kubelet", "Running", true)
        } else {
            svc("kubelet", "Waiting", false)
        });
    }
    services.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(machine::ServiceListResponse {
        messages: vec![machine::ServiceList {
            metadata: None,
            services,
        }],
    })
}

pub(super) fn resource(namespace: &str, r#type: &str, id: &str, yaml: String) -> cosi::Resource {
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: namespace.into(),
            r#type: r#type.into(),
            id: id.into(),
            version: "1".into(),
            owner: String::new(),
            phase: "running".into(),
            ..Default::default()
        }),
        spec: Some(cosi::Spec {
            proto_spec: Vec::new(),
            yaml_spec: yaml,
        }),
    }
}

/// The COSI resources the simulator models. Talos fills `proto_spec` too; kiln reads `yaml_spec` only,
/// and the per-type protobuf specs are not modelled here.
fn resources(fleet: &Fleet, node: &Node) -> Vec<cosi::Resource> {
    let (stage, ready) = stage(fleet, node);
    let unmet = if ready {
        "[]".to_owned()
    } else {
        "\n        - name: nodeReady\n          reason: node is not ready".into()
    };
    let hostname = node
        .configured()
        .and_then(|c| c.cfg.hostname.clone())
        .unwrap_or_else(|| {
            format!(
                "talos-{}",
                node.addr.ip().to_string().replace(['.', ':'], "-")
            )
        });
    let mut out = vec![
        resource(
            "runtime",
            "MachineStatuses.runtime.talos.dev",
            "machine",
            format!("stage: {stage}\nstatus:\n    ready: {ready}\n    unmetConditions: {unmet}\n"),
        ),
        resource(
            "hardware",
            "SystemInformations.hardware.talos.dev",
            "systeminformation",
            format!(
                "manufacturer: QEMU\nproductName: Standard PC (Q35 + ICH9, 2009)\nversion: pc-q35-9.2\n\
                 serialnumber: \"\"\nuuid: \"{}\"\nwakeUpType: Power Switch\nskuNumber: \"\"\n",
                node.uuid
            ),
        ),
        // `pkg/machinery/resources/runtime/version.go`, kept by `VersionController` in every mode.
        resource(
            "runtime",
            "Versions.runtime.talos.dev",
            "version",
            format!("version: {}\n", node.version),
        ),
        // `pkg/machinery/resources/runtime/platform_metadata.go`: namespace `runtime`, id
        // `platformmetadata`, yaml keys as its `PlatformMetadataSpec` tags (empty ones omitted).
        resource(
            "runtime",
            "PlatformMetadatas.talos.dev",
            "platformmetadata",
            format!("platform: {}\nhostname: {hostname}\n", node.platform),
        ),
        resource(
            "network",
            "HostnameStatuses.net.talos.dev",
            "hostname",
            format!("hostname: {hostname}\ndomainname: \"\"\n"),
        ),
    ];
    out.extend(super::live::machine_config_resource(node));
    // A control plane renders the bootstrap manifests from the config it runs (none elsewhere).
    out.extend(super::manifests::manifest_resources(node));
    out
}

pub fn cosi_get(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &cosi::GetRequest,
) -> Result<cosi::GetResponse, Status> {
    fleet.authorize(addr, peer, "Get", super::live::read_roles(&req.r#type))?;
    let node = &fleet.nodes[&addr];
    resources(fleet, node)
        .into_iter()
        .find(|r| {
            let m = r.metadata.as_ref().expect("set above");
            m.namespace == req.namespace && m.r#type == req.r#type && m.id == req.id
        })
        .map(|r| cosi::GetResponse { resource: Some(r) })
        .ok_or_else(|| {
            Status::not_found(format!(
                "resource {}/{}/{} doesn't exist",
                req.namespace, req.r#type, req.id
            ))
        })
}

pub fn cosi_list(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &cosi::ListRequest,
) -> Result<Vec<cosi::ListResponse>, Status> {
    fleet.authorize(addr, peer, "List", super::live::read_roles(&req.r#type))?;
    let node = &fleet.nodes[&addr];
    Ok(resources(fleet, node)
        .into_iter()
        .filter(|r| {
            let m = r.metadata.as_ref().expect("set above");
            m.namespace == req.namespace && m.r#type == req.r#type
        })
        .map(|r| cosi::ListResponse { resource: Some(r) })
        .collect())
}
