use std::path::PathBuf;
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
    }
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
