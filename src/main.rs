use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "GitOps reconciler for Talos Kubernetes clusters on Proxmox VE"
)]
struct Cli {
    /// Log lines on stderr as human text or JSON (one object per line, with the cluster and action
    /// spans). Level: KILN_LOG or RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = cli::logging::LogFormat::Text)]
    log_format: cli::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile: watch the repository and make Proxmox, Talos and the secret store match it.
    /// SIGTERM finishes the current step and exits.
    Run(cli::run::Args),
    /// Try kiln with no infrastructure: a local Git repository seeded with the example clusters,
    /// simulated Proxmox and Talos in process, a file secret store, all in one folder (wiped and
    /// recreated on every run). Reconciles the examples to Ready and shows what kiln committed.
    Demo(cli::demo::Args),
    /// Show what the daemon last reported: every cluster, or one in detail.
    Status(cli::status::Args),
    /// Validate cluster intent files (files or folders of *.yaml), together: the cross-file rules
    /// (no shared VMID, IP or MAC) apply across all of them. Exit 0 when valid, 1 when not.
    Validate(cli::validate::Args),
    /// Print the JSON Schema of the cluster intent file.
    Schema,
    /// Write the Argo CD manifests kiln would commit for one cluster (or all) into a folder.
    Render(cli::render::Args),
    /// Show what a change to the intent files would create, change and destroy, and why.
    /// `--offline` decides from Git alone (the base revision stands for what is applied), as a pull
    /// request's CI check runs it. Writes nothing. Exit 0: no changes; 2: changes; 1: errors.
    Plan(cli::plan::Args),
    /// Renew the stored kubeconfig and talosconfig of a cluster now (through the running daemon
    /// when one holds the state folder). Exit 0 when served, 1 otherwise.
    Rotate(cli::rotate::Args),
    /// etcd snapshots of a cluster: take one now, or list them with their verification state.
    #[command(subcommand)]
    Backup(cli::backup::Command),
    /// Restore a cluster's etcd from a snapshot (RESTORE.md): decrypts it with your age identity,
    /// checks it against its manifest, prints the plan; with --yes wipes EPHEMERAL on every control
    /// plane and recovers etcd at the snapshot's revision. Exit 0 restored, 2 plan only, 1 error.
    Restore(cli::restore::Args),
    /// Run a simulator of an external system.
    #[command(subcommand)]
    Sim(cli::sim::Command),
    /// Write shell completions (bash, zsh, fish) and man pages into a folder (for packaging).
    #[command(hide = true)]
    GenerateAssets(cli::assets::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(_) | Command::GenerateAssets(_) => {}
        // The demo talks in progress lines; logs only for what goes wrong, unless asked.
        Command::Demo { .. } if std::env::var_os("KILN_LOG").is_none() => {
            cli::logging::init_logging_at(cli.log_format, "warn")
        }
        _ => cli::logging::init_logging(cli.log_format),
    }
    match cli.command {
        Command::Run(args) => cli::run::exec(&args),
        Command::Demo(args) => cli::demo::exec(&args),
        Command::Status(args) => cli::status::exec(&args),
        Command::Validate(args) => cli::validate::exec(&args),
        Command::Schema => cli::schema::exec(),
        Command::Render(args) => cli::render::exec(&args),
        Command::Plan(args) => cli::plan::exec(&args),
        Command::Rotate(args) => cli::rotate::exec(&args),
        Command::Backup(command) => cli::backup::exec(&command),
        Command::Restore(args) => cli::restore::exec(&args),
        Command::Sim(command) => cli::sim::exec(command),
        Command::GenerateAssets(args) => cli::assets::exec(&args, Cli::command()),
    }
}
