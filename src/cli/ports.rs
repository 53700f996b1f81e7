//! The systems `kiln.toml` asks for, opened for a command, and the daemon's process-level hooks.

use std::sync::Arc;

use anyhow::Context;

use kiln::config::{Config, ProxmoxBackend};
use kiln::proxmox::{ProxmoxPort, PveAdapter};
use kiln::reconcile::{KubeRs, Ports, Progress};
use kiln::secrets::OpenedStore;

/// The open systems and what keeps them alive (the Vault token keeper, the simulated lab).
pub struct Opened {
    pub ports: Ports,
    pub adapter: Option<Arc<PveAdapter>>,
    _store: OpenedStore,
    _lab: Option<Box<dyn std::any::Any + Send>>,
}

pub async fn open_ports(config: &Config) -> anyhow::Result<Opened> {
    open_gated_ports(config, None).await
}

/// As [`open_ports`]; with `[ha]`'s gate, every Proxmox request that writes and every Proxmox and
/// secret-store write asks it first (`kiln::ha`).
pub async fn open_gated_ports(
    config: &Config,
    gate: Option<&kiln::ha::LeaderGate>,
) -> anyhow::Result<Opened> {
    let store = kiln::secrets::open_gated(
        &config.secrets,
        &config.state_dir,
        gate.map(kiln::ha::gate::secrets_write_gate),
    )
    .context("opening the secret store")?;
    // Only a warning, so it need not hold anything back: a Vault that does not answer at boot
    // would otherwise keep systemd's READY waiting for the client's timeout (DESIGN §8).
    let probe = store.store.clone();
    tokio::spawn(async move {
        if let Err(e) = probe.check().await {
            tracing::warn!(store = %probe.describe(), error = %e, "the secret store is not ready; kiln retries each cycle");
        }
    });
    let (proxmox, adapter, lab): (
        Arc<dyn ProxmoxPort>,
        _,
        Option<Box<dyn std::any::Any + Send>>,
    ) = match config.proxmox.backend {
        ProxmoxBackend::Api => {
            let a = Arc::new(
                PveAdapter::from_config_wrapped(&config.proxmox, |t| match gate {
                    Some(g) => Arc::new(kiln::ha::gate::GatedTransport::new(t, g.clone())),
                    None => t,
                })
                .context("the Proxmox API client")?,
            );
            (a.clone(), Some(a), None)
        }
        ProxmoxBackend::Simulated => {
            // VMs in process, driven by the real adapter over the simulated PVE API (so the
            // permission preflight runs too); with talos.backend = "simulated" their machines boot
            // on loopback (loading the config refuses simulated Talos behind a real Proxmox).
            let lab = kiln::sim::lab::Lab::new(&[(
                config.defaults.template.get(),
                config.defaults.proxmox_node.as_str(),
            )]);
            (lab.proxmox(), Some(lab.adapter()), Some(Box::new(lab)))
        }
    };
    let ports = Ports {
        proxmox,
        talos: Arc::new(kiln::talos::grpc::GrpcTalos::default()),
        secrets: store.store.clone(),
        kube: Arc::new(KubeRs),
    };
    Ok(Opened {
        ports: match gate {
            Some(g) => kiln::ha::gate_ports(ports, g),
            None => ports,
        },
        adapter,
        _store: store,
        _lab: lab,
    })
}

pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Registered here, not in the task: once this returns, SIGTERM no longer kills at once (the
    // daemon tells systemd it is ready right after).
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: finishing the current step");
        let _ = tx.send(true);
    });
    rx
}

pub fn progress_logger() -> tokio::sync::mpsc::UnboundedSender<Progress> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tx
}

/// `[ha]`: who holds the Lease now, in words (read from the management cluster, not the daemon, so
/// it is right on a follower's host too).
pub fn lease_holder(ha: &kiln::ha::HaConfig) -> String {
    let read = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(kiln::ha::Elector::holder(ha))
                .map_err(|e| e.to_string())
        });
    match read {
        Ok(Some(holder)) => format!("{holder} (Lease {}/{})", ha.namespace, ha.lease_name),
        Ok(None) => format!("nobody holds Lease {}/{}", ha.namespace, ha.lease_name),
        Err(e) => format!("unknown ({e})"),
    }
}
