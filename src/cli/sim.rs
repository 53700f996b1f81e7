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
        /// How long a rebooting node answers nothing (an upgrade, or a config applied with a reboot).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        reboot_delay: std::time::Duration,
        /// How long a control plane joining a running etcd stays a learner before it is promoted
        /// (0: promoted as it joins). etcd holds one learner at a time, so joins queue behind it.
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        learner_delay: std::time::Duration,
        /// METHOD=ADDR: every call of METHOD (e.g. Reset) on the node at ADDR fails with
        /// FailedPrecondition; repeat for more.
        #[arg(long, value_name = "METHOD=ADDR", value_parser = parse_refusal)]
        refuse: Vec<(String, std::net::SocketAddr)>,
        /// ADDR: a graceful Reset of this control plane is accepted, but its etcd leave then fails
        /// (the member stays listed, the node keeps running); repeat for more.
        #[arg(long, value_name = "ADDR")]
        fail_leave: Vec<std::net::SocketAddr>,
    },
    /// Serve a management (Argo CD) cluster's Kubernetes API over TLS with client certificates, for
    /// `[ha]`'s Lease; writes a kubeconfig for it.
    Kubernetes {
        /// IP:port (port 0: any; the address is printed and written in the kubeconfig).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long, value_name = "FILE")]
        kubeconfig_out: std::path::PathBuf,
        /// Namespaces to create besides the API server's own; repeat for more.
        #[arg(long, default_value = "argocd")]
        namespace: Vec<String>,
    },
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Kubernetes {
            listen,
            kubeconfig_out,
            namespace,
        } => sim_kubernetes(listen, &kubeconfig_out, &namespace),
        Command::Talos {
            listen,
            dump_dir,
            reboot_delay,
            learner_delay,
            refuse,
            fail_leave,
        } => sim_talos(
            listen,
            dump_dir,
            reboot_delay,
            learner_delay,
            &refuse,
            &fail_leave,
        ),
    }
}

fn parse_refusal(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (method, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected METHOD=ADDR"))?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("{method:?}: not a Talos method name"));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?}: not an IP:port address: {e}"))?;
    Ok((method.to_owned(), addr))
}

fn sim_talos(
    listen: Vec<kiln::sim::talos::Listen>,
    dump_dir: Option<std::path::PathBuf>,
    reboot_delay: std::time::Duration,
    learner_delay: std::time::Duration,
    refuse: &[(String, std::net::SocketAddr)],
    fail_leave: &[std::net::SocketAddr],
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
        sim.set_learner_delay(learner_delay);
        for (method, addr) in refuse {
            sim.refuse(*addr, method);
        }
        for addr in fail_leave {
            sim.fail_leave(*addr);
        }
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

fn sim_kubernetes(
    listen: std::net::SocketAddr,
    kubeconfig_out: &std::path::Path,
    namespaces: &[String],
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        let m = kiln::sim::kubernetes::management::start(listen, &names).await?;
        // Written whole under another name, then renamed: a reader never sees half a kubeconfig.
        let partial = kubeconfig_out.with_extension("partial");
        std::fs::write(&partial, &m.kubeconfig)
            .and_then(|()| std::fs::rename(&partial, kubeconfig_out))
            .with_context(|| format!("writing {}", kubeconfig_out.display()))?;
        println!("kubernetes API listening on {}", m.server.addr);
        tokio::signal::ctrl_c().await.ok();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
