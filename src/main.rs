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
    /// Print the JSON Schema of the cluster intent file.
    Schema,
    /// Run a simulator of an external system.
    #[command(subcommand)]
    Sim(SimCommand),
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
        Command::Schema => {
            let schema = kiln::spec::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(SimCommand::Talos { listen, dump_dir }) => sim_talos(listen, dump_dir),
    }
}
