//! `kiln rotate CLUSTER`: replace the stored kubeconfig and talosconfig now (DESIGN §5, §7). When a
//! daemon holds the `state_dir` lock it is asked (a request in `state_dir/requests`, served at its
//! next cycle, which the request triggers) and this waits for its reply; otherwise this process takes
//! the lock and serves the same request itself. Either way `reconcile::requests::Server::rotate` does
//! the work, check-and-set on each credential's current version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use kiln::config::Config;
use kiln::reconcile::records::Records;
use kiln::reconcile::requests::{self, RotateReply, RotateRequest, Server};
use kiln::reconcile::state_lock::{LockError, StateLock, this_command};
use kiln::reconcile::status::StatusBook;
use kiln::secrets::Prefix;
use kiln::spec::ClusterName;

use super::Format;

#[derive(clap::Args)]
pub struct Args {
    /// The cluster whose credentials to renew.
    cluster: String,
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// How long to wait for a running daemon to serve the request (humantime).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let name: ClusterName = args
        .cluster
        .parse()
        .map_err(|e| anyhow::anyhow!("`{}` is not a cluster name: {e}", args.cluster))?;
    // Queued before looking at the lock: a daemon that starts meanwhile serves it, and one that
    // stops meanwhile leaves it to this process.
    let request = requests::submit(&config.state_dir, &name)?;
    let reply = wait_or_serve(&config, &request, args.timeout)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reply)?),
        Format::Text => {
            for c in &reply.credentials {
                println!("{} {}: {}", reply.cluster, c.credential, c.result);
            }
            if let Some(e) = &reply.error {
                eprintln!("kiln rotate {}: {e}", reply.cluster);
            }
        }
    }
    Ok(if reply.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The reply from the daemon, or from this process once no one else holds the lock.
fn wait_or_serve(
    config: &Config,
    request: &RotateRequest,
    timeout: Duration,
) -> anyhow::Result<RotateReply> {
    let deadline = Instant::now() + timeout;
    let mut told = false;
    loop {
        if let Some(reply) = requests::reply_for(&config.state_dir, request)? {
            return Ok(reply);
        }
        match StateLock::acquire(&config.state_dir, &this_command()) {
            Ok(lock) => {
                // The lock holder may have answered just before it let go.
                if let Some(reply) = requests::reply_for(&config.state_dir, request)? {
                    return Ok(reply);
                }
                serve_here(config, lock)?;
                return requests::reply_for(&config.state_dir, request)?
                    .context("the request was served but left no reply");
            }
            Err(LockError::Held { holder, .. }) => {
                if !told {
                    eprintln!("asking the running kiln ({holder}) to rotate; waiting for it");
                    told = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            bail!(
                "the running kiln did not serve the request within {}; it stays queued in {} and \
                 is served at the daemon's next cycle",
                humantime::format_duration(timeout),
                requests::dir(&config.state_dir).display()
            );
        }
        // A CLI waiting on another process: a short, bounded poll of two files.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Serves every queued request (this one included) in this process, holding the lock.
fn serve_here(config: &Config, _lock: StateLock) -> anyhow::Result<()> {
    let records = Records::load(&config.state_dir).context("reading kiln's records")?;
    let prefix = Prefix::parse(&config.secrets.prefix).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let replies = runtime.block_on(async {
        let opened = kiln::secrets::open(&config.secrets, &config.state_dir)
            .context("opening the secret store")?;
        let server = Server {
            state_dir: &config.state_dir,
            store: opened.store.as_ref(),
            prefix: &prefix,
            records: &records,
            lifetime: config.talos.credential_lifetime,
        };
        anyhow::Ok(server.serve_pending().await)
    })?;
    // This process holds the lock: the status is its to update, as the daemon's would be.
    let mut book = StatusBook::load(&config.state_dir).context("reading kiln's status")?;
    let mut changed = false;
    for r in &replies {
        tracing::info!("{}", requests::summary(r));
        changed |= requests::record_in(&mut book, r);
    }
    if changed {
        book.save(&config.state_dir)
            .context("saving kiln's status")?;
    }
    Ok(())
}
