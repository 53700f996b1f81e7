//! The binary's wiring of the engine: logging, the ports `kiln.toml` asks for, `run`, `run --once`,
//! online `plan` and `status`. Everything here is glue; the behaviour lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use kiln::config::{Config, ProxmoxBackend};
use kiln::git::{GitSource, Trigger};
use kiln::proxmox::{PreflightScope, ProxmoxPort, PveAdapter};
use kiln::reconcile::state_lock::{LOCK_FILE, StateLock, this_command};
use kiln::reconcile::{Engine, Intent, KubeRs, Ports, Progress};
use kiln::secrets::OpenedStore;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs on stderr: human text by default (no timestamps or colours under systemd, whose journal
/// stamps every line), or one JSON object per line with the span path (cluster, action).
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info")
}

pub fn init_logging_at(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            // vaultrs and rustify log every expected 404 ("no bundle yet") as an error; kiln reports
            // what matters through its own errors.
            EnvFilter::new(format!("{default_level},vaultrs=off,rustify=off"))
        });
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text if journald => builder.without_time().with_ansi(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// The open systems and what keeps them alive (the Vault token keeper, the simulated lab).
pub struct Opened {
    pub ports: Ports,
    pub adapter: Option<Arc<PveAdapter>>,
    _store: OpenedStore,
    _lab: Option<Box<dyn std::any::Any + Send>>,
}

pub async fn open_ports(config: &Config) -> anyhow::Result<Opened> {
    let store = kiln::secrets::open(&config.secrets, &config.state_dir)
        .context("opening the secret store")?;
    if let Err(e) = store.store.check().await {
        tracing::warn!(store = %store.store.describe(), error = %e, "the secret store is not ready; kiln retries each cycle");
    }
    let (proxmox, adapter, lab): (
        Arc<dyn ProxmoxPort>,
        _,
        Option<Box<dyn std::any::Any + Send>>,
    ) = match config.proxmox.backend {
        ProxmoxBackend::Api => {
            let a = Arc::new(
                PveAdapter::from_config(&config.proxmox).context("the Proxmox API client")?,
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
    Ok(Opened {
        ports: Ports {
            proxmox,
            talos: Arc::new(kiln::talos::grpc::GrpcTalos::default()),
            secrets: store.store.clone(),
            kube: Arc::new(KubeRs),
        },
        adapter,
        _store: store,
        _lab: lab,
    })
}

/// The permission preflight of DESIGN.md §3, for the clusters the tip declares.
async fn preflight(adapter: &PveAdapter, git: &GitSource) -> anyhow::Result<()> {
    let clusters = match git.current().await {
        Some(rev) => Intent::read(&git.snapshot(rev).await?)
            .valid
            .into_values()
            .map(|v| v.cluster)
            .collect(),
        None => Vec::new(),
    };
    adapter
        .preflight(&PreflightScope::for_clusters(&clusters))
        .await
        .context("Proxmox permission preflight")?;
    Ok(())
}

fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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

fn progress_logger() -> tokio::sync::mpsc::UnboundedSender<Progress> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tx
}

pub fn run(config_path: &Path, once: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    // Before anything opens the cache clone (which clears lock files it takes for stale) or
    // reads the records: a second kiln on this folder stops here.
    let _lock = StateLock::acquire(&config.state_dir, &this_command())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating {}", config.state_dir.display()))?;
        let opened = open_ports(&config).await?;
        let git = GitSource::open(&config.git, &config.state_dir)
            .await
            .context("opening the Git cache clone")?;
        if let Err(e) = git.poll().await {
            tracing::warn!(error = %e, "first fetch failed; working from the last revision fetched, if any");
        }
        if let Some(adapter) = &opened.adapter {
            preflight(adapter, &git).await?;
        }
        let shutdown = shutdown_signal();
        let trigger = Trigger::new();
        let _watcher = if once {
            None
        } else {
            kiln::git::watch_if_local(&config.git.url, &trigger).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot watch the local repository; polling only");
                None
            })
        };
        let state_dir = config.state_dir.clone();
        let mut engine = Engine::new(config, git, opened.ports.clone(), shutdown, Some(progress_logger()))
            .context("loading kiln's state")?;
        if once {
            let report = engine.run_once(timeout).await;
            print!("{}", engine.status().table());
            if let Some(e) = &report.error {
                eprintln!("kiln: {e}");
            }
            eprintln!("state: {}", state_dir.display());
            Ok(if report.converged && report.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        } else {
            engine.run(trigger).await;
            Ok(ExitCode::SUCCESS)
        }
    })
}

pub fn status(config_path: &Path, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let book = kiln::reconcile::status::StatusBook::load(&config.state_dir)
        .with_context(|| format!("reading {}", config.state_dir.join("status.json").display()))?;
    let Some(name) = name else {
        if json {
            println!("{}", serde_json::to_string_pretty(&book)?);
        } else {
            print!("{}", book.table());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(s) = book.clusters.get(name) else {
        eprintln!(
            "no status for cluster {name} (is it in the repository, and has kiln run since?)"
        );
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("cluster:  {}", s.name);
    println!("phase:    {}", s.phase);
    println!(
        "applied:  {}",
        s.last_applied_revision.as_deref().unwrap_or("-")
    );
    if let Some(e) = &s.last_error {
        println!("error:    {e}");
    }
    if let Some(r) = &s.retry_at {
        println!("retry at: {r}");
    }
    for c in &s.conditions {
        println!(
            "condition {} = {} ({}): {}",
            c.kind, c.status, c.reason, c.message
        );
    }
    println!(
        "{:<24} {:>9}  {:<15} {:<13} {:<9} TALOS",
        "NODE", "VMID", "IP", "ROLE", "VM"
    );
    for n in &s.nodes {
        println!(
            "{:<24} {:>9}  {:<15} {:<13} {:<9} {}",
            n.name, n.vmid, n.ip, n.role, n.vm_state, n.talos_stage
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Online `kiln plan`: the intent at `repo`/`rev` against what the systems show now. Read-only.
pub fn plan_online(
    config_path: &Path,
    repo: &Path,
    rev: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let snapshot = match rev {
        Some(rev) => kiln::git::read_revision(repo, rev, &config.git.clusters_dir)?,
        None => kiln::git::read_work_tree(repo, &config.git.clusters_dir)?,
    };
    let intent = Intent::read(&snapshot);
    let records = kiln::reconcile::records::Records::load(&config.state_dir)
        .context("reading kiln's records")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let preview = runtime.block_on(async {
        let opened = open_ports(&config).await?;
        kiln::reconcile::preview::preview(&opened.ports, &config, &intent, &records)
            .await
            .map_err(anyhow::Error::msg)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&preview)?);
    } else {
        for e in &preview.errors {
            eprintln!("{e}");
        }
        for c in &preview.plan.clusters {
            print!("{c}");
        }
        println!("{}", preview.plan.summary());
    }
    Ok(ExitCode::from(preview.exit_code()))
}

pub fn default_config() -> PathBuf {
    PathBuf::from(kiln::config::DEFAULT_CONFIG_PATH)
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
/// then one more cycle to show that a converged site costs nothing, then the report.
pub fn demo(state_dir: &Path) -> anyhow::Result<ExitCode> {
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
        Ok(if first.converged && second.converged {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
