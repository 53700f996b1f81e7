//! `kiln sim talos`: the Talos simulator over real gRPC and TLS.

use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Serve simulated Talos nodes over real gRPC and TLS, one address per node (e.g. 127.0.10.1:50000).
    /// Each node starts in maintenance mode. Validates configs against the official schemas when
    /// KILN_REFERENCE_SCHEMAS names the schemas folder, else with kiln's built-in check.
    Talos {
        /// ADDR[,uuid=UUID][,version=vX.Y.Z][,platform=NAME][,installed][,fail-upgrade]; repeat for
        /// more nodes. `version=` is the Talos the machine boots (its template's; default: the tag of
        /// the install image its first config names), `platform=` what its image was built for
        /// (default nocloud; e.g. metal), `installed` that its disk already holds Talos (a disk-image
        /// template: the first config keeps the booted version), `fail-upgrade` that it never comes
        /// back from a reboot into another version.
        #[arg(long, required = true, num_args = 1..)]
        listen: Vec<kiln::sim::talos::Listen>,
        /// Write every accepted machine config to DIR/<node-ip>.yaml.
        #[arg(long, value_name = "DIR")]
        dump_dir: Option<std::path::PathBuf>,
        /// How long an upgraded node answers nothing while it reboots into the new image.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        reboot_delay: std::time::Duration,
    },
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Talos {
            listen,
            dump_dir,
            reboot_delay,
        } => sim_talos(listen, dump_dir, reboot_delay),
    }
}

fn sim_talos(
    listen: Vec<kiln::sim::talos::Listen>,
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
        let nodes: Vec<kiln::sim::talos::NodeSpec> =
            listen.iter().map(|l| l.node.clone()).collect();
        let sim = kiln::sim::talos::SimTalos::start(&nodes, options).await?;
        for l in &listen {
            if l.fail_upgrade {
                sim.fail_upgrades(l.node.addr);
            }
            if l.installed {
                sim.boot_installed(l.node.addr);
            }
        }
        for addr in sim.addrs() {
            let version = sim.version(*addr).unwrap_or_default();
            println!("talos node (maintenance, {version}) listening on {addr}");
        }
        tokio::select! {
            _ = sim.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
