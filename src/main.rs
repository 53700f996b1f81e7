use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod daemon;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "GitOps reconciler for Talos Kubernetes clusters on Proxmox VE"
)]
struct Cli {
    /// Log lines on stderr as human text or JSON (one object per line, with the cluster and action
    /// spans). Level: KILN_LOG or RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = daemon::LogFormat::Text)]
    log_format: daemon::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile: watch the repository and make Proxmox, Talos and the secret store match it.
    /// SIGTERM finishes the current step and exits.
    Run {
        #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Run cycles until every cluster converged or is stuck, print the status table and exit:
        /// 0 when all converged, 1 otherwise.
        #[arg(long)]
        once: bool,
        /// With --once: give up after this long (humantime, e.g. 10m).
        #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Try kiln with no infrastructure: a local Git repository seeded with the example clusters,
    /// simulated Proxmox and Talos in process, a file secret store, all in one folder (wiped and
    /// recreated on every run). Reconciles the examples to Ready and shows what kiln committed.
    Demo {
        #[arg(long, value_name = "DIR", default_value = kiln::demo::DEFAULT_DIR)]
        state_dir: PathBuf,
    },
    /// Show what the daemon last reported: every cluster, or one in detail.
    Status {
        name: Option<String>,
        #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Validate cluster intent files (files or folders of *.yaml), together: the cross-file rules
    /// (no shared VMID, IP or MAC) apply across all of them. Exit 0 when valid, 1 when not.
    Validate {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the cluster intent file.
    Schema,
    /// Write the Argo CD manifests kiln would commit for one cluster (or all) into a folder.
    Render {
        /// The cluster to render: the file CLUSTERS/<CLUSTER>.yaml.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        cluster: Option<String>,
        /// Render every cluster file in the clusters folder.
        #[arg(long)]
        all: bool,
        /// Where to write; files land under OUT/<output_dir>/… as in the repository.
        #[arg(long)]
        out: PathBuf,
        /// The folder of intent files.
        #[arg(long, default_value = "clusters")]
        clusters: PathBuf,
        /// Template overrides (default: a `templates` folder next to the clusters folder, if any).
        #[arg(long)]
        templates: Option<PathBuf>,
        /// kiln.toml for the Argo CD settings; without it, the documented example values are used.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show what a change to the intent files would create, change and destroy, and why.
    /// `--offline` decides from Git alone (the base revision stands for what is applied), as a pull
    /// request's CI check runs it. Writes nothing. Exit 0: no changes; 2: changes; 1: errors.
    Plan(PlanArgs),
    /// Run a simulator of an external system.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(clap::Args)]
struct PlanArgs {
    /// kiln.toml (for git.clusters_dir, git.branch and reconcile.allow_empty); defaults apply when
    /// the default path does not exist.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The repository (a work tree or a bare repository).
    #[arg(long, value_name = "PATH", default_value = ".")]
    repo: PathBuf,
    /// The revision to plan; default: the work tree as it is, uncommitted edits included.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,
    /// What the plan is measured against; default: origin/<git.branch>, else <git.branch>.
    #[arg(long, value_name = "REV")]
    base: Option<String>,
    /// Plan from Git alone, with no Proxmox or Vault access. Without it, the plan is judged against
    /// what Proxmox, the secret store and the Talos nodes show now (read-only).
    #[arg(long)]
    offline: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Serve simulated Talos nodes over real gRPC and TLS, one address per node (e.g. 127.0.10.1:50000).
    /// Each node starts in maintenance mode. Validates configs against the official schemas when
    /// KILN_REFERENCE_SCHEMAS names the schemas folder, else with kiln's built-in check.
    Talos {
        /// ADDR[,uuid=UUID][,version=vX.Y.Z][,platform=NAME]; repeat for more nodes. `version=` is the
        /// Talos the machine boots (its template's; default: the tag of the install image its first
        /// config names), `platform=` what its image was built for (default nocloud; e.g. metal).
        #[arg(long, required = true, num_args = 1..)]
        listen: Vec<kiln::sim::talos::NodeSpec>,
        /// Write every accepted machine config to DIR/<node-ip>.yaml.
        #[arg(long, value_name = "DIR")]
        dump_dir: Option<std::path::PathBuf>,
        /// How long an upgraded node answers nothing while it reboots into the new image.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        reboot_delay: std::time::Duration,
    },
}

fn sim_talos(
    listen: Vec<kiln::sim::talos::NodeSpec>,
    dump_dir: Option<std::path::PathBuf>,
    reboot_delay: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(dir) = &dump_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let options = kiln::sim::talos::SimOptions {
            dump_dir,
            validator: None,
            reboot_delay: Some(reboot_delay),
        };
        let sim = kiln::sim::talos::SimTalos::start(&listen, options).await?;
        for addr in sim.addrs() {
            println!("talos node (maintenance) listening on {addr}");
        }
        tokio::select! {
            _ = sim.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(_) => {}
        // The demo talks in progress lines; logs only for what goes wrong, unless asked.
        Command::Demo { .. } if std::env::var_os("KILN_LOG").is_none() => {
            daemon::init_logging_at(cli.log_format, "warn")
        }
        _ => daemon::init_logging(cli.log_format),
    }
    match cli.command {
        Command::Run {
            config,
            once,
            timeout,
        } => daemon::run(&config, once, timeout),
        Command::Demo { state_dir } => daemon::demo(&state_dir),
        Command::Status {
            name,
            config,
            format,
        } => daemon::status(&config, name.as_deref(), matches!(format, Format::Json)),
        Command::Validate { paths } => validate(&paths),
        Command::Schema => {
            let schema = kiln::spec::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            cluster,
            all: _,
            out,
            clusters,
            templates,
            config,
        } => render(cluster.as_deref(), &out, &clusters, templates, config),
        Command::Plan(args) => plan(&args),
        Command::Sim(SimCommand::Talos {
            listen,
            dump_dir,
            reboot_delay,
        }) => sim_talos(listen, dump_dir, reboot_delay),
    }
}

/// The configuration `plan` reads: the file given, else the default path if it exists, else the
/// documented defaults (plan needs only git.* and reconcile.allow_empty).
fn plan_settings(path: Option<&Path>) -> anyhow::Result<(String, String, bool)> {
    let default = Path::new(kiln::config::DEFAULT_CONFIG_PATH);
    let chosen = match path {
        Some(p) => Some(p),
        None if default.exists() => Some(default),
        None => None,
    };
    Ok(match chosen {
        Some(p) => {
            let c = kiln::config::Config::load(p)?;
            (c.git.clusters_dir, c.git.branch, c.reconcile.allow_empty)
        }
        None => ("clusters".into(), "main".into(), false),
    })
}

fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    use kiln::git::{read_revision, read_work_tree};
    if !args.offline {
        let config = args.config.clone().unwrap_or_else(daemon::default_config);
        return daemon::plan_online(
            &config,
            &args.repo,
            args.rev.as_deref(),
            matches!(args.format, Format::Json),
        );
    }
    let (clusters_dir, branch, allow_empty) = plan_settings(args.config.as_deref())?;
    let head = match &args.rev {
        Some(rev) => read_revision(&args.repo, rev, &clusters_dir)?,
        None => read_work_tree(&args.repo, &clusters_dir)?,
    };
    let base = match &args.base {
        Some(rev) => read_revision(&args.repo, rev, &clusters_dir)?,
        None => read_revision(&args.repo, &format!("origin/{branch}"), &clusters_dir)
            .or_else(|_| read_revision(&args.repo, &branch, &clusters_dir))?,
    };
    let report = kiln::reconcile::offline::plan_change(
        &load_snapshot(&base),
        &load_snapshot(&head),
        allow_empty,
    );
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            for d in report.warnings.iter().chain(&report.errors) {
                eprintln!("{d}");
            }
            for n in &report.notes {
                eprintln!("note: {n}");
            }
            for c in &report.plan.clusters {
                print!("{c}");
            }
            println!("{}", report.plan.summary());
        }
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// A snapshot's intent as the daemon reads it: what the Git layer kept as invalid (a link, a
/// submodule, a `*.yml`, a file that is not UTF-8) is an invalid file, never an absent cluster, and
/// a valid file sharing its stem is unknown with it.
fn load_snapshot(snapshot: &kiln::git::Snapshot) -> kiln::spec::LoadOutcome {
    let mut outcome = kiln::spec::load(snapshot.texts().map(|(p, t)| (Path::new(p), t)));
    for f in &snapshot.files {
        if let Err(why) = &f.text {
            outcome.invalid.push(kiln::spec::InvalidFile {
                stem: f.name.clone(),
                path: PathBuf::from(&f.path),
                diagnostics: vec![kiln::spec::Diagnostic {
                    severity: kiln::spec::Severity::Error,
                    file: PathBuf::from(&f.path),
                    line: None,
                    column: None,
                    path: String::new(),
                    message: why.clone(),
                    hint: None,
                }],
            });
        }
    }
    let unknown: std::collections::BTreeSet<String> =
        outcome.invalid.iter().map(|f| f.stem.clone()).collect();
    outcome
        .clusters
        .retain(|c| !unknown.contains(c.name.as_str()));
    outcome
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (found, outcome) = kiln::spec::load_local(paths)?;
    if found == 0 {
        eprintln!("no intent files (*.yaml) found in {paths:?}");
        return Ok(ExitCode::FAILURE);
    }
    for w in &outcome.warnings {
        eprintln!("{w}");
    }
    for e in outcome.errors() {
        eprintln!("{e}");
    }
    let bad = outcome.invalid.len();
    if bad == 0 {
        println!("{} cluster file(s) valid", outcome.clusters.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{bad} of {} cluster file(s) invalid",
            outcome.clusters.len() + bad
        );
        Ok(ExitCode::FAILURE)
    }
}

fn render(
    only: Option<&str>,
    out: &Path,
    clusters_dir: &Path,
    templates: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let settings = match config {
        Some(path) => {
            kiln::render::RenderSettings::from_config(&kiln::config::Config::load(&path)?)
        }
        None => kiln::render::RenderSettings::default(),
    };
    // Validated together, as the daemon would: an invalid file is reported, never rendered.
    let (_, outcome) = kiln::spec::load_local(&[clusters_dir.to_path_buf()])?;
    for d in outcome.warnings.iter().chain(outcome.errors()) {
        eprintln!("{d}");
    }
    if !outcome.is_valid() {
        eprintln!(
            "{} invalid cluster file(s): nothing rendered",
            outcome.invalid.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let clusters: Vec<kiln::spec::Cluster> = outcome
        .clusters
        .into_iter()
        .filter(|c| only.is_none_or(|name| c.name.as_str() == name))
        .collect();
    if let Some(name) = only
        && clusters.is_empty()
    {
        anyhow::bail!("no cluster file {}/{name}.yaml", clusters_dir.display());
    }
    let templates_dir = templates.unwrap_or_else(|| {
        clusters_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("templates")
    });
    let overrides = read_overrides(&templates_dir)?;
    let count = clusters.len();
    let files =
        kiln::render::render_bounded(clusters, &settings, &overrides, kiln::render::DEADLINE)?;
    for (path, bytes) in &files {
        let target = out.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, bytes)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!(
        "rendered {} cluster(s): {} files under {}",
        count,
        files.len(),
        out.join(&settings.output_dir).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The repository's template overrides: every file directly in `dir`, by file name.
fn read_overrides(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut overrides = BTreeMap::new();
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        anyhow::bail!(
            "{} is a symbolic link; kiln does not follow links",
            dir.display()
        );
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(overrides);
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // A folder in templates/ is not an override; a link is refused, never followed.
        if entry.file_type()?.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let text = kiln::spec::read_regular_file(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .map_err(|why| anyhow::anyhow!("template override {} {why}", path.display()))?;
        if text.len() > kiln::spec::load::MAX_FILE_BYTES {
            anyhow::bail!(
                "template override {} is larger than {} KiB",
                path.display(),
                kiln::spec::load::MAX_FILE_BYTES / 1024
            );
        }
        overrides.insert(name.to_owned(), text);
    }
    Ok(overrides)
}
