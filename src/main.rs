use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "GitOps reconciler for Talos Kubernetes clusters on Proxmox VE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate cluster intent files (files or folders of *.yaml), together: the cross-file rules
    /// (no shared VMID, IP or MAC) apply across all of them. Exit 0 when valid, 1 when not.
    Validate {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the cluster intent file.
    Schema,
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
    /// Plan from Git alone, with no Proxmox or Vault access (the only mode so far: planning against
    /// what Proxmox shows arrives with the daemon).
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
        /// ADDR[,uuid=UUID][,version=vX.Y.Z]; repeat for more nodes.
        #[arg(long, required = true, num_args = 1..)]
        listen: Vec<kiln::sim::talos::NodeSpec>,
        /// Write every accepted machine config to DIR/<node-ip>.yaml.
        #[arg(long, value_name = "DIR")]
        dump_dir: Option<std::path::PathBuf>,
    },
}

fn sim_talos(
    listen: Vec<kiln::sim::talos::NodeSpec>,
    dump_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
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
        Command::Validate { paths } => validate(&paths),
        Command::Schema => {
            let schema = kiln::spec::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => plan(&args),
        Command::Sim(SimCommand::Talos { listen, dump_dir }) => sim_talos(listen, dump_dir),
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
        eprintln!(
            "kiln plan: only --offline is available so far (planning against what Proxmox and Vault show arrives with the daemon)"
        );
        return Ok(ExitCode::FAILURE);
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
    let load =
        |s: &kiln::git::Snapshot| kiln::spec::load(s.texts().map(|(p, t)| (Path::new(p), t)));
    let report = kiln::reconcile::offline::plan_change(&load(&base), &load(&head), allow_empty);
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
            let count = |e| -> usize { report.plan.clusters.iter().map(|c| c.count(e)).sum() };
            use kiln::plan::Effect;
            println!(
                "Plan: {} to create, {} to change, {} to destroy.",
                count(Effect::Create),
                count(Effect::Change),
                count(Effect::Destroy)
            );
        }
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let files = kiln::spec::load_paths(paths)?;
    if files.is_empty() {
        eprintln!("no intent files (*.yaml) found in {paths:?}");
        return Ok(ExitCode::FAILURE);
    }
    let outcome = kiln::spec::load(files.iter().map(|(p, t)| (p.as_path(), t.as_str())));
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
