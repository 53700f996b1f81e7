//! Upgrades on a simulated node, as Talos v1.13.9 carries them out:
//! - the new flow, only on nodes running v1.13.0 or later: `ImageService.Pull` puts the installer
//!   into the system containerd, `LifecycleService.Upgrade` installs it (a stream of progress ending
//!   in an exit code) and stages the new version without rebooting, and `MachineService.Reboot`
//!   boots into it. Older nodes answer `Unimplemented` ("unknown service …", what grpc-go answers for
//!   a service nobody registered): siderolabs/talos registers both services in
//!   `internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go` `Register` from v1.13.0 on,
//!   and v1.12.11's `Register` has neither (`api/machine/image.proto`, `api/machine/lifecycle.proto`
//!   are new in v1.13). Roles from `internal/app/machined/pkg/system/services/machined.go`: Pull
//!   admin/operator, Upgrade admin, Reboot admin/operator.
//! - the legacy `MachineService.Upgrade` installs and reboots by itself (`handlers::upgrade`).
//!
//! A reboot keeps the node silent for `--reboot-delay`; it then runs the staged (or installed) tag.
//! A node listed with `fail-upgrade` never comes back from a reboot that changes its version, so a
//! test can watch a rollout stop at it. Each upgrade and reboot is one log line naming the versions.

use std::net::SocketAddr;

use tonic::Status;

use super::config;
use super::fleet::{ADMIN, Fleet, OPERATOR, Peer, Phase};
use crate::talos::grpc::proto::upgrade::{
    ImageServicePullResponse, InstallProgress, LifecycleServiceInstallProgress,
    LifecycleServiceUpgradeRequest, LifecycleServiceUpgradeResponse, PullResponse,
};
use crate::talos::grpc::proto::{machine, upgrade::ImageServicePullRequest};

/// The first version that serves `ImageService` and `LifecycleService`.
const NEW_API_SINCE: (u32, u32, u32) = (1, 13, 0);

fn triple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let mut next = || parts.next()?.parse::<u32>().ok();
    Some((next()?, next()?, next()?))
}

/// Whether a node running `version` serves the new upgrade services.
pub fn serves_new_api(version: &str) -> bool {
    triple(version).is_some_and(|v| v >= NEW_API_SINCE)
}

fn new_api_or_unimplemented(
    fleet: &mut Fleet,
    addr: SocketAddr,
    service: &str,
) -> Result<(), Status> {
    let node = fleet.node(addr)?;
    if serves_new_api(&node.version) {
        Ok(())
    } else {
        Err(Status::unimplemented(format!("unknown service {service}")))
    }
}

fn configured(fleet: &mut Fleet, addr: SocketAddr) -> Result<(), Status> {
    match fleet.node(addr)?.phase {
        Phase::Configured(_) => Ok(()),
        _ => Err(Status::failed_precondition("node is not configured")),
    }
}

pub fn image_pull(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &ImageServicePullRequest,
) -> Result<Vec<ImageServicePullResponse>, Status> {
    new_api_or_unimplemented(fleet, addr, "machine.ImageService")?;
    fleet.authorize(addr, peer, "Pull", &[ADMIN, OPERATOR])?;
    if config::image_tag(&req.image_ref).is_none() {
        return Err(Status::invalid_argument(format!(
            "image reference {:?} has no tag",
            req.image_ref
        )));
    }
    let node = fleet.node(addr)?;
    if !node.pulled.contains(&req.image_ref) {
        node.pulled.push(req.image_ref.clone());
    }
    tracing::info!(node = %addr, image = %req.image_ref, "image pulled");
    Ok(vec![
        ImageServicePullResponse {
            response: Some(PullResponse::PullProgress(Default::default())),
        },
        ImageServicePullResponse {
            response: Some(PullResponse::Name(req.image_ref.clone())),
        },
    ])
}

fn progress(response: InstallProgress) -> LifecycleServiceUpgradeResponse {
    LifecycleServiceUpgradeResponse {
        progress: Some(LifecycleServiceInstallProgress {
            response: Some(response),
        }),
    }
}

/// Installs a pulled image and stages its tag for the next reboot; an image that was not pulled
/// fails the install (exit code 1), as the installer finds nothing to run.
pub fn lifecycle_upgrade(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    req: &LifecycleServiceUpgradeRequest,
) -> Result<Vec<LifecycleServiceUpgradeResponse>, Status> {
    new_api_or_unimplemented(fleet, addr, "machine.LifecycleService")?;
    fleet.authorize(addr, peer, "Upgrade", &[ADMIN])?;
    configured(fleet, addr)?;
    let image = req
        .source
        .as_ref()
        .map(|s| s.image_name.clone())
        .unwrap_or_default();
    let node = fleet.node(addr)?;
    let mut out = vec![progress(InstallProgress::Message(format!(
        "installing {image}"
    )))];
    let tag = config::image_tag(&image).filter(|t| triple(t).is_some());
    match tag {
        Some(tag) if node.pulled.contains(&image) => {
            node.staged = Some(tag.to_owned());
            tracing::info!(node = %addr, running = %node.version, staged = %tag, "upgrade installed; runs after the next reboot");
            out.push(progress(InstallProgress::Message(
                "upgrade installed".into(),
            )));
            out.push(progress(InstallProgress::ExitCode(0)));
        }
        _ => {
            out.push(progress(InstallProgress::Message(format!(
                "image {image:?} not found in the system containerd"
            ))));
            out.push(progress(InstallProgress::ExitCode(1)));
        }
    }
    Ok(out)
}

/// The node goes down for the reboot delay and comes back running `version` (a legacy upgrade's
/// image, or what a Lifecycle upgrade staged). A node told to fail upgrades stays down when the
/// reboot would change its version.
pub fn reboot_into(
    fleet: &mut Fleet,
    addr: SocketAddr,
    version: Option<String>,
) -> Result<(), Status> {
    let delay = fleet.reboot_delay;
    let node = fleet.node(addr)?;
    let from = node.version.clone();
    if let Some(v) = version {
        node.version = v;
        node.version_pinned = false;
    }
    node.staged = None;
    let changed = node.version != from;
    node.down_until = Some(std::time::Instant::now() + delay);
    if changed && node.fail_upgrade {
        node.broken = true;
        tracing::warn!(node = %addr, from = %from, to = %node.version, "reboot: the node does not come back from its upgrade (fail-upgrade)");
    } else if changed {
        tracing::info!(node = %addr, from = %from, to = %node.version, ?delay, "reboot: upgrading");
    } else {
        tracing::info!(node = %addr, version = %node.version, ?delay, "reboot");
    }
    fleet.reboots.push((addr, delay));
    Ok(())
}

/// `MachineService.Reboot`: replies, then the machine reboots, into a staged upgrade if there is one.
pub fn reboot(
    fleet: &mut Fleet,
    addr: SocketAddr,
    peer: &Peer,
    _req: &machine::RebootRequest,
) -> Result<machine::RebootResponse, Status> {
    fleet.authorize(addr, peer, "Reboot", &[ADMIN, OPERATOR])?;
    configured(fleet, addr)?;
    let staged = fleet.node(addr)?.staged.clone();
    reboot_into(fleet, addr, staged)?;
    Ok(machine::RebootResponse {
        messages: vec![machine::ActorReply {
            metadata: None,
            actor_id: format!("{:016x}", rand::random::<u64>()),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_api_starts_at_1_13_0() {
        assert!(!serves_new_api("v1.12.11"));
        assert!(!serves_new_api("v1.11.6"));
        assert!(serves_new_api("v1.13.0"));
        assert!(serves_new_api("v1.13.9"));
        assert!(serves_new_api("v1.14.0"));
    }
}
