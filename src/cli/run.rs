//! `kiln run` and `kiln run --once`: the daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use kiln::config::Config;
use kiln::git::{GitSource, Trigger};
use kiln::proxmox::{PreflightScope, PveAdapter};
use kiln::reconcile::state_lock::{StateLock, this_command};
use kiln::reconcile::status::StatusBook;
use kiln::reconcile::{Engine, Intent};
use kiln::server::{self, DaemonView, SecretBytes};
use kiln::systemd::{Liveness, Notifier};

use super::ports::{open_gated_ports, progress_logger, shutdown_signal};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Run cycles until every cluster converged or is stuck, print the status table and exit:
    /// 0 when all converged, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// With --once: give up after this long (humantime, e.g. 10m).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    tune_malloc();
    run(&args.config, args.once, args.timeout)
}

/// glibc's allocator, set for a daemon that keeps a fleet's worth of small values and, every cycle,
/// briefly holds a few large ones (the Proxmox listing, 2 MB for 5,000 VMs):
///
/// - **two arenas.** glibc gives every thread that allocates an arena of its own (up to eight per
///   core), and what one arena frees no other reuses: the runtime's workers and blocking threads
///   (Git reads, file loads) held 17 MiB of them for 1,000 clusters. Two keep the parallel file
///   load uncontended.
/// - **large blocks mapped, always.** glibc raises its mmap threshold to the size of each large block
///   freed, so from the second cycle on the listing's buffers came from the heap and left it
///   fragmented. A fixed 128 KiB threshold gives them back to the system when freed.
///
/// Together they cut the daemon's peak RSS by 8 MiB (benches/scale.rs, BENCHMARKS.md). An
/// operator's own settings (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`, read by
/// glibc at start-up) stand.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let own = |var: &str| std::env::var_os(var).is_some();
        if own("GLIBC_TUNABLES") {
            return;
        }
        // SAFETY: each call sets one allocator parameter, before the runtime starts any thread.
        unsafe {
            if !own("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if !own("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}

/// How long the daemon's start-up preflight retries a Proxmox that does not answer.
const DAEMON_PREFLIGHT_BUDGET: Duration = Duration::from_secs(10);

/// The permission preflight of DESIGN.md §3, for the clusters the tip declares. The daemon only
/// warns when Proxmox does not answer (its cycles report and retry that, and systemd must not
/// restart kiln in a loop over it); a refused permission stops kiln either way.
async fn preflight(adapter: &PveAdapter, git: &GitSource, once: bool) -> anyhow::Result<()> {
    let clusters = match git.current().await {
        Some(rev) => Intent::read(&git.snapshot(rev).await?)
            .valid
            .into_values()
            .map(|v| v.cluster)
            .collect(),
        None => Vec::new(),
    };
    match adapter
        .preflight(&PreflightScope::for_clusters(&clusters))
        .await
    {
        Err(e) if !once && e.is_transient() => {
            tracing::warn!(error = %e, "Proxmox permission preflight: Proxmox does not answer; each cycle reports it until it does");
            Ok(())
        }
        other => other.context("Proxmox permission preflight"),
    }
}

/// A secret from a `*_file` key: its bytes without the trailing newline an editor leaves.
fn read_secret(key: &str, path: &Path) -> anyhow::Result<SecretBytes> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {key} ({})", path.display()))?;
    let trimmed = bytes.trim_ascii_end();
    anyhow::ensure!(!trimmed.is_empty(), "{key} ({}) is empty", path.display());
    Ok(SecretBytes::new(trimmed))
}

pub fn run(config_path: &Path, once: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    // SAFETY: no other thread yet (the async runtime starts below), as removing the variables
    // from the environment requires.
    let (notifier, problems) = unsafe { Notifier::from_env() };
    for e in problems {
        tracing::warn!(error = %e, "systemd's notify variables ignored");
    }
    // `--once` is a command, not a service: it never tells systemd it is ready.
    let notifier = Arc::new(if once { Notifier::disabled() } else { notifier });
    let config = Config::load(config_path)?;
    // Before anything opens the cache clone (which clears lock files it takes for stale) or
    // reads the records: a second kiln on this folder stops here.
    let _lock = StateLock::acquire(&config.state_dir, &this_command())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating {}", config.state_dir.display()))?;
        // [ha]: every write asks the gate; the elector runs beside the engine (docs/ha.md).
        let elector = match &config.ha {
            Some(ha) => Some(
                kiln::ha::Elector::connect(ha, kiln::ha::identity())
                    .await
                    .context("[ha]")?,
            ),
            None => None,
        };
        let gate = elector.as_ref().map(|(_, gate)| gate.clone());
        // Without [ha] this instance is the only one, so it always acts.
        kiln::metrics::global().set_ha_leader(gate.is_none());
        let opened = open_gated_ports(&config, gate.as_ref()).await?;
        // Before READY: from then on systemd may stop kiln, and a SIGTERM must find the handler
        // that finishes the current step (not the default action, which kills at once).
        let shutdown = shutdown_signal();
        if notifier.enabled() {
            let notifier = notifier.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                if stop.wait_for(|&s| s).await.is_ok() {
                    notifier.stopping("finishing the current step");
                }
            });
        }
        let liveness = Liveness::new();
        liveness.touch();
        let mut git = GitSource::open(&config.git, &config.state_dir)
            .await
            .context("opening the Git cache clone")?;
        let mut elector_task = None;
        if let (Some((elector, gate)), Some(ha)) = (elector, &config.ha) {
            tracing::info!(identity = gate.identity(), lease = %ha.lease_name, namespace = %ha.namespace, "high availability: competing for the Lease");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            elector_task = Some((stop, tokio::spawn(elector.run(stopped))));
            git = git.with_push_gate(kiln::ha::push_gate(&gate));
        }
        let trigger = Trigger::new();
        // The HTTP surface comes up before anything that waits on another system, so a forge or a
        // Proxmox that is down at boot shows in /readyz instead of keeping kiln from starting.
        let view = Arc::new(DaemonView::new(
            StatusBook::load(&config.state_dir).unwrap_or_default(),
        ));
        if let Some(gate) = gate.clone() {
            view.set_leadership(Box::new(move || server::HaRole {
                role: gate.role(),
                leader: gate.holder(),
            }));
        }
        if !once && let Some(token_file) = &config.api.token_file {
            let state = server::AppState {
                config: Arc::new(config.clone()),
                git: git.clone(),
                trigger: trigger.clone(),
                view: view.clone(),
                token: read_secret("api.token_file", token_file)?,
                webhook_secret: config
                    .api
                    .webhook_secret_file
                    .as_deref()
                    .map(|f| read_secret("api.webhook_secret_file", f))
                    .transpose()?,
            };
            let listener = server::bind(config.api.listen)
                .await
                .with_context(|| format!("listening on {} (api.listen)", config.api.listen))?;
            tracing::info!(addr = %config.api.listen, "HTTP API listening");
            tokio::spawn(server::serve(listener, server::router(state), shutdown.clone()));
        }
        // READY: config loaded, lock held, listeners up (DESIGN §8).
        // Before the first fetch and the Proxmox preflight: a forge or a Proxmox that is down at
        // boot must not hold READY back (systemd would kill kiln at TimeoutStartSec, in a loop).
        if !once {
            notifier.ready(&format!("reconciling {} ({})", config.git.url, config.git.branch));
            tokio::spawn(kiln::systemd::relay_watchdog(
                notifier.clone(),
                liveness.clone(),
            ));
        }
        if let Err(e) = git.poll().await {
            tracing::warn!(error = %e, "first fetch failed; working from the last revision fetched, if any");
        }
        if let Some(adapter) = &opened.adapter {
            if once {
                preflight(adapter, &git, once).await?;
            } else {
                // The daemon's cycles retry an unreachable Proxmox on their own schedule: the
                // adapter's retries here need not hold the first cycle back for long.
                kiln::retry::with_budget(DAEMON_PREFLIGHT_BUDGET, preflight(adapter, &git, once))
                    .await?;
            }
        }
        if !once && *shutdown.borrow() {
            tracing::info!("shutting down before the first cycle");
            notifier.stopping("stopped before the first cycle");
            return Ok(ExitCode::SUCCESS);
        }
        let _watcher = if once {
            None
        } else {
            kiln::git::watch_if_local(&config.git.url, &trigger).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot watch the local repository; polling only");
                None
            })
        };
        // `kiln rotate` queues a request here; the watcher wakes the daemon to serve it at once.
        let _requests = if once {
            None
        } else {
            kiln::reconcile::requests::watch(&config.state_dir, trigger.clone())
                .map_err(|e| tracing::warn!(error = %e, "cannot watch the request folder; serving requests at each poll"))
                .ok()
        };
        let state_dir = config.state_dir.clone();
        // [ha]: the records live in the secret store every instance shares (docs/ha.md).
        let shared_records = match &config.ha {
            Some(_) => Some(kiln::reconcile::records::SharedRecords::new(
                opened.ports.secrets.clone(),
                &kiln::secrets::Prefix::parse(&config.secrets.prefix)
                    .map_err(anyhow::Error::msg)
                    .context("secrets.prefix")?,
            )),
            None => None,
        };
        let mut engine = Engine::new(config, git, opened.ports.clone(), shutdown, Some(progress_logger()))
            .context("loading kiln's state")?
            .with_observer(view)
            .with_liveness(liveness);
        if let Some(shared) = shared_records {
            engine = engine.with_shared_records(shared);
        }
        if let Some(gate) = gate {
            engine = engine.with_leadership(Arc::new(gate.clone()));
            if once {
                // `--once` acts only as the leader too; it waits for the Lease within its timeout.
                tokio::time::timeout(timeout, gate.until_leading())
                    .await
                    .context("run --once: this instance did not get the Lease in time")?;
            }
        }
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
            // The engine finished its last step: now the Lease may go to another instance.
            if let Some((stop, task)) = elector_task {
                let _ = stop.send(true);
                if let Ok(elector) = task.await {
                    elector.release().await;
                }
            }
            notifier.stopping("the current step finished");
            Ok(ExitCode::SUCCESS)
        }
    })
}
