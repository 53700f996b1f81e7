use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
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
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
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
    let mut clusters = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(clusters_dir)
        .with_context(|| format!("cannot read the clusters folder {}", clusters_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if only.is_some_and(|name| name != stem) {
            continue;
        }
        clusters.push(load_cluster(&path, stem)?);
    }
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
    let files = kiln::render::render(&clusters, &settings, &overrides)?;
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
        clusters.len(),
        files.len(),
        out.join(&settings.output_dir).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load_cluster(path: &Path, stem: &str) -> anyhow::Result<kiln::spec::Cluster> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: kiln::spec::ClusterDocument =
        serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if doc.metadata.name.as_str() != stem {
        anyhow::bail!(
            "{}: metadata.name `{}` differs from the file name",
            path.display(),
            doc.metadata.name
        );
    }
    kiln::spec::Cluster::expand(&doc)
        .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("; ")))
}

/// The repository's template overrides: every file directly in `dir`, by file name.
fn read_overrides(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut overrides = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(overrides);
    };
    for entry in entries {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        overrides.insert(name.to_owned(), text);
    }
    Ok(overrides)
}
