//! `kiln render CLUSTER|--all --out DIR`: the generated files kiln would commit, written to a folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    render(
        args.cluster.as_deref(),
        &args.out,
        &args.clusters,
        args.templates.clone(),
        args.config.clone(),
    )
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
