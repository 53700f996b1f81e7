//! Steps that drive Proxmox: create (or finish a half-made VM), start, resize (with the drain a
//! power cycle owes), and destroy — a leaving control plane only after it left etcd (§4).

use std::net::IpAddr;

use crate::proxmox::{Ownership, ProxmoxError, VmSpec};
use crate::reconcile::error::{Missing, TurnError};
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::turn::Turn;
use crate::spec::{Role, Vmid};
use time::OffsetDateTime;

impl Turn<'_> {
    pub(super) async fn create_vm(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let spec = VmSpec::for_node(cluster, node, &self.uid()?);
        let template_node = self
            .inventory
            .template_node(node.template.get())
            .unwrap_or(&node.pve_node)
            .to_owned();
        self.say(format!("creating VM {} {}", node.vmid, node.name));
        let created = self.ctx.ports.proxmox.create(&spec, &template_node).await?;
        for w in &created.warnings {
            tracing::warn!(vm = %node.name, "Proxmox task ended with warnings: {w:?}");
        }
        self.started.insert(number, OffsetDateTime::now_utc());
        self.say(format!(
            "VM {} {} {} and started",
            node.vmid,
            node.name,
            if created.adopted {
                "adopted (half-made)"
            } else {
                "created"
            }
        ));
        Ok(Flow::Done)
    }

    pub(super) async fn start_vm(&mut self, number: u32) -> StepResult {
        let node = self.node(number)?;
        let vm = self
            .ctx
            .ports
            .proxmox
            .claim(&self.identity_of(node)?)
            .await?;
        self.ctx.ports.proxmox.start(&vm).await?;
        self.started.insert(number, OffsetDateTime::now_utc());
        self.say(format!("started VM {} {}", node.vmid, node.name));
        Ok(Flow::Done)
    }

    pub(super) async fn resize_vm(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        let px = &self.ctx.ports.proxmox;
        let vm = px.claim(&self.identity_of(node)?).await?;
        let spec = VmSpec::for_node(cluster, node, &self.uid()?);
        let resized = px.resize(&vm, &spec).await?;
        if resized.needs_reboot {
            // cores/memory only apply after a Proxmox power cycle: move the work off first.
            let kube = match self.kube().await {
                Some(k) => Some(k),
                None if self.api_expected().await? => {
                    return Ok(Flow::Wait(format!(
                        "{} waits for its drain: the Kubernetes API does not answer, and kiln \
                         never reboots a node without the drain it owes it",
                        node.name
                    )));
                }
                None => None,
            };
            if let Some(k) = &kube {
                k.set_unschedulable(&node.name, true).await?;
                k.drain(&node.name, self.ctx.settings.drain_timeout).await?;
            }
            self.say(format!(
                "rebooting VM {} {} through Proxmox to apply its new size",
                node.vmid, node.name
            ));
            px.reboot(&resized.vm).await?;
            crate::testhook::reached("vm-rebooted");
            if let Some(k) = &kube {
                k.set_unschedulable(&node.name, false).await?;
            }
        }
        self.say(format!("resized VM {} {}", node.vmid, node.name));
        Ok(Flow::Done)
    }

    pub(super) async fn remove_node(
        &mut self,
        number: u32,
        role: Role,
        vmid: Vmid,
        name: &str,
    ) -> StepResult {
        let identity = self.identity_of_listed(number, role, vmid, name)?;
        let px = self.ctx.ports.proxmox.clone();
        let vm = px.claim(&identity).await?;
        let kube = self.kube().await;
        if kube.is_none() && self.api_expected().await? {
            return Ok(Flow::Wait(format!(
                "{name} waits for its drain: the Kubernetes API does not answer, and kiln never \
                 destroys a node without the drain it owes it"
            )));
        }
        if role == Role::ControlPlane {
            // Leave etcd gracefully and see it confirmed by another member before the VM goes (§4).
            let ip = self
                .previous
                .and_then(|p| p.node(number))
                .map(|n| IpAddr::V4(n.ip))
                .ok_or_else(|| TurnError::LeavingAddressUnknown {
                    name: name.to_owned(),
                })?;
            let other = self
                .cluster()?
                .control_planes()
                .next()
                .map(|n| IpAddr::V4(n.ip))
                .ok_or(Missing::ControlPlane)?;
            let witness = self.talos_node(other).await?;
            let listed = |members: &[crate::talos::grpc::proto::machine::EtcdMember]| {
                members.iter().any(|m| m.hostname == name)
            };
            if listed(&witness.etcd_members().await?) {
                self.say(format!("{name} leaves etcd"));
                let leave = async {
                    self.talos_node(ip).await?.reset_graceful(false).await?;
                    Ok::<_, TurnError>(())
                };
                leave.await.map_err(|e| TurnError::LeaveFailed {
                    name: name.to_owned(),
                    source: Box::new(e),
                })?;
                if listed(&witness.etcd_members().await?) {
                    return Ok(Flow::Wait(format!(
                        "{name} is still an etcd member; its VM stays until the leave is confirmed"
                    )));
                }
            }
        } else if let Some(k) = &kube {
            k.set_unschedulable(name, true).await?;
            k.drain(name, self.ctx.settings.drain_timeout).await?;
        }
        if let Some(k) = &kube {
            k.delete_node(name).await?;
        }
        self.say(format!("destroying VM {vmid} {name}"));
        px.destroy(vm).await?;
        Ok(Flow::Done)
    }

    pub(super) async fn destroy_vm(&mut self, number: u32, vmid: Vmid, name: &str) -> StepResult {
        let role = self
            .inventory
            .cluster(&self.name)
            .get(&number)
            .and_then(|vm| match &vm.ownership {
                Ownership::Kiln(r) => Some(r.role),
                _ => None,
            })
            .unwrap_or(Role::Worker);
        let identity = self.identity_of_listed(number, role, vmid, name)?;
        let px = self.ctx.ports.proxmox.clone();
        // A half-made VM (a crash between clone and tags) goes too: its marker proves it (§3).
        match px.claim_for_destroy(&identity).await {
            Ok(vm) => {
                self.say(format!("stopping and destroying VM {vmid} {name}"));
                px.destroy(vm).await?;
                Ok(Flow::Done)
            }
            Err(ProxmoxError::NotFound(_)) => Ok(Flow::Done),
            Err(e) => Err(e.into()),
        }
    }
}
