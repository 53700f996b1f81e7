//! `kiln demo`: the example clusters reconciled on simulated Proxmox and Talos.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use kiln::git::GitSource;
use kiln::reconcile::state_lock::{LOCK_FILE, StateLock, this_command};
use kiln::reconcile::{Engine, KubeRs, Ports, Progress};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "DIR", default_value = kiln::demo::DEFAULT_DIR)]
    state_dir: PathBuf,
    /// Once the demo converges, keep the simulated lab (Proxmox, Talos, each cluster's Kubernetes
    /// API) running until Ctrl-C, and print the kubectl command to look at it.
    #[arg(long)]
    serve: bool,
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    demo(&args.state_dir, args.serve)
}

/// Writes each cluster's stored kubeconfig into the demo folder, prints the kubectl line for each,
/// and waits for Ctrl-C (or SIGTERM) while the lab, owned by the caller, keeps answering.
async fn serve(
    demo: &kiln::demo::Demo,
    store: &dyn kiln::secrets::SecretStore,
) -> anyhow::Result<()> {
    use kiln::demo::serve::{kubeconfig_path, kubectl_line, stored_kubeconfig, write_kubeconfig};
    let mut lines = Vec::new();
    for cluster in &demo.clusters {
        let kubeconfig = stored_kubeconfig(store, &demo.config.secrets.prefix, cluster).await?;
        let path = kubeconfig_path(&demo.dir, cluster);
        write_kubeconfig(&path, &kubeconfig)?;
        lines.push(kubectl_line(&path));
    }
    println!(
        "\nThe simulated lab keeps running until Ctrl-C. Look at the clusters kiln made with the \
         kubectl you already use:"
    );
    for line in &lines {
        println!("  {line}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C")?,
        _ = term.recv() => {}
    }
    eprintln!("kiln demo: stopped; the lab is gone, the demo folder stays.");
    Ok(())
}

/// The demo wipes its folder before its engine's state_dir exists to be locked, so the lock of a
/// demo still running there is looked at first: taking it and letting it go at once proves nobody
/// holds it. (A second demo starting in the same instant can still slip between; it is a demo.)
fn refuse_a_running_demo(demo_dir: &Path) -> anyhow::Result<()> {
    let state_dir = demo_dir.join("state");
    if state_dir.join(LOCK_FILE).exists() {
        drop(StateLock::acquire(&state_dir, &this_command())?);
    }
    Ok(())
}

/// `kiln demo`: a fresh demo folder, the example clusters reconciled in the simulated machine room,
/// then one more cycle to show that a converged site costs nothing, then the report; with `--serve`,
/// the lab stays up until Ctrl-C.
pub fn demo(state_dir: &Path, serve_lab: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        refuse_a_running_demo(state_dir)?;
        let demo = kiln::demo::Demo::prepare(state_dir)?;
        let _lock = StateLock::acquire(&demo.config.state_dir, &this_command())?;
        demo.check_addresses_free()?;
        let progress = kiln::demo::Progress::start();
        progress.step(
            "demo",
            &format!(
                "seeded {} with {}; reconciling on simulated Proxmox and Talos",
                demo.remote.display(),
                demo.clusters.join(", ")
            ),
        );
        let config = demo.config.clone();
        std::fs::create_dir_all(&config.state_dir)?;
        let store = kiln::secrets::open(&config.secrets, &config.state_dir)?;
        let git = GitSource::open(&config.git, &config.state_dir).await?;
        git.poll().await.context("reading the demo repository")?;
        let ports = Ports {
            proxmox: demo.lab.proxmox(),
            talos: Arc::new(kiln::talos::grpc::GrpcTalos::default()),
            secrets: store.store.clone(),
            kube: Arc::new(KubeRs),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let printer = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                progress.step(&p.cluster, &p.message);
            }
        });
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let mut engine = Engine::new(config, git, ports, shutdown, Some(tx))?;
        let first = engine.run_once(Duration::from_secs(120)).await;
        let second = engine.cycle().await;
        drop(engine);
        let _ = printer.await;
        if second.converged && second.pushed.is_none() {
            progress.step(
                "demo",
                "second cycle: nothing to do (one Proxmox listing; no Talos, secret or Git write)",
            );
        }
        let book = kiln::reconcile::status::StatusBook::load(&demo.config.state_dir)?;
        println!("{}", demo.report(&book));
        if let Some(e) = first.error.as_ref().or(second.error.as_ref()) {
            eprintln!("kiln demo: {e}");
        }
        let converged = first.converged && second.converged;
        if converged && serve_lab {
            serve(&demo, store.store.as_ref()).await?;
        } else if serve_lab {
            eprintln!("kiln demo: not serving the lab: the demo did not converge");
        }
        Ok(if converged {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
