//! Steps that drive Talos: a node's config in maintenance (after the SMBIOS uuid and platform checks)
//! and the one bootstrap of etcd (DESIGN.md §4).

use std::net::IpAddr;
use std::time::Duration;

use crate::plan::NodeState;
use crate::plan::bootstrap::{
    self as decision, AfterBootstrap, BootstrapDecision, BootstrapReply, ControlPlaneAnswer,
    MemberProbe,
};
use crate::reconcile::error::{ConfigRefused, TurnError};
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::observe;
use crate::reconcile::state_file::now_rfc3339;
use crate::reconcile::turn::Turn;
use crate::secrets::{MetadataPatch, meta_keys};
use crate::spec::Node;
use crate::talos::grpc::{self, BootstrapOutcome, ClientIdentity, NoAnswer, TalosError, TalosPort};

/// How long a bootstrap probe waits for EtcdMemberList: before bootstrap a real node answers only at
/// the caller's deadline (DESIGN §4).
const ETCD_PROBE_DEADLINE: Duration = Duration::from_secs(5);

impl Turn<'_> {
    pub(super) async fn apply_config(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let identity = self.talos_identity()?;
        let ip = IpAddr::V4(node.ip);
        let state = self.ctx.ports.talos.node_state(ip, &identity).await;
        let (_, stage) = observe::classify(&state);
        self.stages.insert(number, stage);
        match state {
            grpc::NodeState::Configured(_) => {
                self.started.remove(&number);
                Ok(Flow::Done)
            }
            grpc::NodeState::Maintenance => {
                self.started.remove(&number);
                let vm = self
                    .ctx
                    .ports
                    .proxmox
                    .claim(&self.identity_of(node)?)
                    .await?;
                let bundle = &self.bundle()?.bundle;
                let config = crate::talos::config::render::render(
                    cluster,
                    node,
                    bundle,
                    cluster.spec.talos.version,
                )?;
                let applied = self
                    .ctx
                    .ports
                    .talos
                    .apply_in_maintenance(ip, vm.smbios_uuid(), config.as_bytes())
                    .await;
                match applied {
                    Ok(_) => {}
                    Err(e) if e.is_config_refusal() => {
                        return Err(self.refused_in_maintenance(node, e).await);
                    }
                    // A uuid mismatch or a wrong platform stays typed: the policy blocks it.
                    Err(e) => return Err(e.into()),
                }
                self.say(format!("applied the machine config to {}", node.name));
                crate::testhook::reached("config-applied");
                Ok(Flow::Done)
            }
            grpc::NodeState::Booting { reason } | grpc::NodeState::Unreachable { reason } => {
                Ok(Flow::Wait(format!(
                    "waiting for {} to reach maintenance mode ({reason})",
                    node.name
                )))
            }
        }
    }

    /// A node in maintenance refused the config: its running Talos is the template's, which judges
    /// the config (RuntimeValidate's Kubernetes range, an older decoder). Names that version and
    /// Talos's reason, and the way out.
    async fn refused_in_maintenance(&self, node: &Node, e: TalosError) -> TurnError {
        let reason = one_line(&e.node_message());
        let running = match self
            .ctx
            .ports
            .talos
            .maintenance_version(IpAddr::V4(node.ip))
            .await
        {
            Ok(v) if !v.is_empty() => v,
            // RuntimeValidate's message names it too.
            _ => talos_version_in(&reason).unwrap_or_else(|| "an unknown version".into()),
        };
        let cluster = self.cluster.map(|c| &c.spec);
        // Only a refusal about Kubernetes has a second way out (another Kubernetes version); an
        // older decoder's refusal of a newer config has one: a template of the spec's Talos.
        let about_kubernetes = reason.contains("Kubernetes");
        let advice = match (cluster, running.parse::<crate::spec::Version>()) {
            (Some(spec), Ok(v)) => match crate::spec::compat::kubernetes_range(v) {
                Some(range) if about_kubernetes => format!(
                    "; use a template of Talos {} (spec.talos.version) or a Kubernetes version Talos {running} supports ({}); then replace the VM or restart kiln",
                    spec.talos.version,
                    range.minors()
                ),
                _ => format!(
                    "; use a template of Talos {} (spec.talos.version), then replace the VM or restart kiln",
                    spec.talos.version
                ),
            },
            _ => String::new(),
        };
        ConfigRefused {
            node: node.name.clone(),
            running,
            reason,
            advice,
            source: e,
        }
        .into()
    }

    pub(super) async fn bootstrap(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let store = &self.ctx.ports.secrets;
        let marked = store
            .read(&self.paths.secrets)
            .await?
            .custom_metadata()
            .is_some_and(|m| m.contains_key(meta_keys::BOOTSTRAPPED_AT));
        let answers = if marked {
            Vec::new()
        } else {
            let identity = self.talos_identity()?;
            let talos = self.ctx.ports.talos.as_ref();
            // Side by side: before bootstrap each probe may take its whole deadline.
            let probes = cluster
                .control_planes()
                .map(|cp| probe_control_plane(talos, &identity, cp));
            let mut answers = Vec::new();
            for (number, stage, answer) in futures::future::join_all(probes).await {
                self.stages.insert(number, stage);
                answers.push(answer);
            }
            answers
        };
        match decision::decide(marked, &answers) {
            BootstrapDecision::AlreadyThere(why) => {
                if !marked {
                    self.say(format!("etcd already exists ({why}); not bootstrapping"));
                }
            }
            BootstrapDecision::Wait(why) => return Ok(Flow::Wait(why)),
            BootstrapDecision::Bootstrap => {
                let first = self.node(number)?;
                self.say(format!("bootstrapping etcd on {}", first.name));
                let node = self.talos_node(IpAddr::V4(first.ip)).await?;
                let mut error = None;
                let reply = match node.bootstrap().await {
                    Ok(BootstrapOutcome::Bootstrapped) => BootstrapReply::Ok,
                    Ok(BootstrapOutcome::AlreadyBootstrapped) => BootstrapReply::AlreadyExists,
                    Err(e) if e.is_failed_precondition() => {
                        BootstrapReply::FailedPrecondition(e.node_message())
                    }
                    Err(e) => {
                        let why = e.node_message();
                        error = Some(e);
                        BootstrapReply::Other(why)
                    }
                };
                match decision::after_bootstrap(reply) {
                    AfterBootstrap::WriteMarker => {
                        self.say("etcd bootstrapped");
                        // A crash here leaves etcd bootstrapped without the marker: the restart
                        // must see etcd and write the marker, never bootstrap a second time.
                        crate::testhook::reached("etcd-bootstrapped");
                    }
                    AfterBootstrap::Wait(why) => return Ok(Flow::Wait(why)),
                    // Kept typed when the node said it: the error policy judges it.
                    AfterBootstrap::Fail(why) => {
                        return Err(error.map_or(TurnError::Bootstrap(why), TurnError::from));
                    }
                }
            }
        }
        if !marked {
            let patch =
                MetadataPatch::from([(meta_keys::BOOTSTRAPPED_AT.to_owned(), Some(now_rfc3339()))]);
            store.patch_metadata(&self.paths.secrets, &patch).await?;
        }
        Ok(Flow::Done)
    }
}

/// One control plane's answers for the bootstrap decision: its stage (for the status), and what it says.
async fn probe_control_plane(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    cp: &Node,
) -> (u32, String, ControlPlaneAnswer) {
    let ip = IpAddr::V4(cp.ip);
    let state = talos.node_state(ip, identity).await;
    let (planned, stage) = observe::classify(&state);
    let mut answer = ControlPlaneAnswer {
        name: cp.name.clone(),
        configured: Ok(()),
        etcd_running: Ok(false),
        members: MemberProbe::Other("not asked".into()),
    };
    if planned != NodeState::Configured {
        answer.configured = Err(format!("it is {stage}"));
        return (cp.number, stage, answer);
    }
    let node = match talos.connect(ip, identity).await {
        Ok(node) => node,
        Err(e) => {
            answer.configured = Err(format!("it does not answer over mTLS: {e}"));
            return (cp.number, stage, answer);
        }
    };
    let (services, members) = tokio::join!(
        node.services(),
        node.etcd_members_within(ETCD_PROBE_DEADLINE)
    );
    answer.etcd_running = services
        .map(|list| list.iter().any(|s| s.id == "etcd" && s.state == "Running"))
        .map_err(|e| e.to_string());
    answer.members = match members {
        Ok(list) => MemberProbe::Listed(list.len()),
        Err(e) => match e.no_answer() {
            Some(NoAnswer::Unknown) => MemberProbe::Unknown,
            Some(NoAnswer::Deadline) => MemberProbe::Deadline,
            Some(NoAnswer::Unavailable) => MemberProbe::Unavailable,
            None => MemberProbe::Other(e.to_string()),
        },
    };
    (cp.number, stage, answer)
}

/// Talos's multi-line error lists (`1 error occurred:\n\t* …`) as one status line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\t'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("* "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `… used with Talos 1.11.6` → `v1.11.6`: the running version as RuntimeValidate names it.
fn talos_version_in(text: &str) -> Option<String> {
    let at = text.find("Talos ")? + "Talos ".len();
    let version: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let version = version.trim_end_matches('.');
    (version.split('.').count() == 3).then(|| format!("v{version}"))
}
