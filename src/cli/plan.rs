//! `kiln plan`: what a change to the intent files would do, offline (Git alone) or online
//! (against what the systems show now). Read-only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use kiln::config::Config;
use kiln::reconcile::Intent;

use super::Format;
use super::ports::open_ports;

#[derive(clap::Args)]
pub struct Args {
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

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    use kiln::git::{read_revision, read_work_tree};
    if !args.offline {
        let config = args.config.clone().unwrap_or_else(default_config);
        return plan_online(
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

/// Online `kiln plan`: the intent at `repo`/`rev` against what the systems show now. Read-only.
fn plan_online(
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

fn default_config() -> PathBuf {
    PathBuf::from(kiln::config::DEFAULT_CONFIG_PATH)
}
