//! `kiln backup now CLUSTER` and `kiln backup list CLUSTER` (issue 30, docs/backup.md).
//!
//! `now` takes one snapshot at once — the same function the daemon's schedule runs — holding the
//! `state_dir` lock: one kiln acts on a state folder (DESIGN §7). When a daemon holds it, the daemon
//! is asked through its API (`POST /api/v1/clusters/{name}/backups`) and this waits for the result
//! in the cluster's status. `list` only reads the destination, so it needs no lock: it reads every
//! snapshot back and prints its verification state.
//!
//! Both find the cluster's `spec.backup` in the spec kiln last applied (`records`), which is what
//! the daemon backs up, not whatever a pull request proposes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use kiln::backup::{Destination, Entry};
use kiln::config::{Config, TalosBackend};
use kiln::reconcile::policy::recorded_cluster;
use kiln::reconcile::records::Records;
use kiln::reconcile::state_lock::{LockError, StateLock, this_command};
use kiln::secrets::Prefix;
use kiln::spec::{Cluster, ClusterName};

use super::Format;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take a snapshot of a cluster's etcd now: encrypted, written, read back and checked, then
    /// older ones pruned to `keep`. Exit 0 when the new snapshot verified.
    Now(NowArgs),
    /// List a cluster's snapshots with their verification state (each read back and checked
    /// against its manifest). Exit 0 when every snapshot verified, 1 otherwise.
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct NowArgs {
    cluster: String,
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// How long to wait for a running daemon to take the snapshot (humantime).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(clap::Args)]
pub struct ListArgs {
    cluster: String,
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Compare listed sizes with the manifests only; do not read the snapshots back.
    #[arg(long)]
    no_verify: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn exec(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Now(a) => now(a),
        Command::List(a) => list(a),
    }
}

/// The cluster as kiln last applied it.
fn applied_cluster(config: &Config, name: &str) -> anyhow::Result<Cluster> {
    let name: ClusterName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("`{name}` is not a cluster name: {e}"))?;
    let records = Records::load(&config.state_dir).context("reading kiln's records")?;
    let cluster = records
        .clusters
        .get(&name)
        .and_then(recorded_cluster)
        .with_context(|| {
            format!("kiln has not applied cluster {name}: it backs up only clusters it manages")
        })?;
    if cluster.spec.backup.is_none() {
        bail!("cluster {name} has no spec.backup in the spec kiln last applied");
    }
    Ok(cluster)
}

fn now(args: &NowArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let cluster = applied_cluster(&config, &args.cluster)?;
    let _lock = match StateLock::acquire(&config.state_dir, &this_command()) {
        Ok(lock) => lock,
        Err(LockError::Held { holder, .. }) => {
            eprintln!("asking the running kiln ({holder}) for a snapshot; waiting for it");
            return through_daemon(&config, cluster.name.as_str(), args);
        }
        Err(e) => return Err(e.into()),
    };
    if config.ha.is_some()
        && let Some(b) = &cluster.spec.backup
    {
        kiln::ha::check_backup_destination(&b.destination).map_err(anyhow::Error::msg)?;
    }
    if config.talos.backend == TalosBackend::Simulated {
        bail!(
            "talos.backend = \"simulated\": the simulated nodes live inside the daemon's process, \
             so only a running daemon can reach them"
        );
    }
    let prefix = Prefix::parse(&config.secrets.prefix).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let opened = kiln::secrets::open(&config.secrets, &config.state_dir)
            .context("opening the secret store")?;
        let talos = kiln::talos::grpc::GrpcTalos::default();
        let outcome = kiln::reconcile::backup::take_now(
            &talos,
            opened.store.as_ref(),
            &prefix,
            &config.backup,
            &cluster,
            time::OffsetDateTime::now_utc(),
        )
        .await;
        anyhow::Ok(outcome)
    })?;
    match outcome {
        Ok(out) => {
            match args.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => {
                    let m = &out.snapshot;
                    println!(
                        "{} snapshot {} verified: revision {}, {} bytes encrypted, from {} (Talos {})",
                        m.cluster, m.id, m.revision, m.encrypted.size, m.node, m.talos_version
                    );
                    for id in &out.pruned {
                        println!("{} pruned {id}", m.cluster);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("kiln backup now {}: {e}", cluster.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `POST /api/v1/clusters/{name}/backups` to the daemon that holds the lock, then its status until
/// an attempt that started after the request has ended (DESIGN §7: ask the lock holder).
fn through_daemon(config: &Config, name: &str, args: &NowArgs) -> anyhow::Result<ExitCode> {
    let token_file = config.api.token_file.as_ref().context(
        "the daemon serves no API ([api] token_file is not set), so it cannot be asked; its \
         schedule takes the snapshots",
    )?;
    let token = kiln::config::read_secret_file("api.token_file", token_file)?;
    let base = format!("http://{}/api/v1/clusters/{name}", config.api.listen);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let resp = http
            .post(format!("{base}/backups"))
            .bearer_auth(token.expose())
            .send()
            .await
            .with_context(|| format!("asking the daemon at {}", config.api.listen))?;
        let code = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if code != reqwest::StatusCode::ACCEPTED {
            bail!("the daemon answered {code}: {}", body["message"]);
        }
        let asked = parse_time(body["requested_at"].as_str().unwrap_or_default())
            .context("the daemon's answer has no requested_at")?;
        let deadline = std::time::Instant::now() + args.timeout;
        loop {
            let status: serde_json::Value = http
                .get(format!("{base}/status"))
                .bearer_auth(token.expose())
                .send()
                .await?
                .json()
                .await?;
            let b = &status["backup"];
            let after = |key: &str| {
                b[key]
                    .as_str()
                    .and_then(parse_time)
                    .is_some_and(|t| t >= asked)
            };
            if after("last_success_at") {
                match args.format {
                    Format::Json => println!("{}", serde_json::to_string_pretty(b)?),
                    Format::Text => println!(
                        "{name} snapshot {} verified: {} bytes encrypted (taken by the running kiln)",
                        b["last_snapshot"].as_str().unwrap_or("?"),
                        b["last_size_bytes"]
                    ),
                }
                return Ok(ExitCode::SUCCESS);
            }
            if after("last_attempt_at") && let Some(e) = b["last_error"].as_str() {
                eprintln!("kiln backup now {name}: {e}");
                return Ok(ExitCode::FAILURE);
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the running kiln did not finish the snapshot within {}; `kiln status {name}` \
                     shows it when it does",
                    humantime::format_duration(args.timeout)
                );
            }
            // Waiting on another process's cycle: a short, bounded poll of its API.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let cluster = applied_cluster(&config, &args.cluster)?;
    let spec = cluster.spec.backup.as_ref().context("no spec.backup")?;
    let dest = Destination::open(&spec.destination, &config.backup)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let entries = runtime
        .block_on(kiln::backup::take::catalogue(
            &dest,
            cluster.name.as_str(),
            !args.no_verify,
        ))
        .with_context(|| format!("listing {}", dest.describe()))?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Format::Text => print_table(&entries),
    }
    let all_good = entries.iter().all(|e| {
        e.state.is_verified() || (args.no_verify && e.state == kiln::backup::State::Unchecked)
    });
    Ok(if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(entries: &[Entry]) {
    println!(
        "{:<28} {:<21} {:>10} {:>12}  STATE",
        "ID", "TIME", "REVISION", "SIZE"
    );
    for e in entries {
        let (time, revision, size) = match &e.manifest {
            Some(m) => (
                m.created_at.clone(),
                m.revision.to_string(),
                m.encrypted.size.to_string(),
            ),
            None => (
                "-".into(),
                "-".into(),
                e.stored_size.map_or("-".into(), |s| s.to_string()),
            ),
        };
        println!(
            "{:<28} {time:<21} {revision:>10} {size:>12}  {}",
            e.id, e.state
        );
    }
}
