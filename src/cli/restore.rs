//! `kiln restore CLUSTER --snapshot ID --identity FILE [--yes]` (issue 30, RESTORE.md,
//! docs/backup-etcd.md): the only command that decrypts a snapshot.
//!
//! It fetches the snapshot's manifest, decrypts the `.age` file as a stream with the operator's
//! age identity and checks the plaintext against the manifest (size, SHA-256, etcd's database at
//! the manifest's revision) before any node is touched; then prints the plan (`backup::restore`)
//! and, with `--yes` only, runs Talos's recovery, streaming the snapshot a second time, checked
//! again as it goes, to the receiving control plane. Nothing is written to disk in plaintext.
//!
//! Nothing reconciles the cluster while its etcd is wiped: without a daemon it takes the
//! `state_dir` lock; when the daemon holds the lock, it asks the daemon to hold the cluster
//! (`reconcile::hold`) and waits for the daemon's acknowledgement before touching a node.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use kiln::backup::manifest::{Manifest, manifest_key, snapshot_key};
use kiln::backup::restore::{self, Expected, PlanNode, RestorePlan, RestoreTiming};
use kiln::backup::{Destination, crypt};
use kiln::config::{Config, TalosBackend};
use kiln::reconcile::policy::recorded_cluster;
use kiln::reconcile::records::Records;
use kiln::reconcile::state_lock::{LockError, StateLock, this_command};
use kiln::reconcile::{hold, observe};
use kiln::secrets::{Prefix, SecretPaths};
use kiln::spec::{ClusterName, Role};

#[derive(clap::Args)]
pub struct Args {
    cluster: String,
    /// The snapshot's id, as `kiln backup list` shows it.
    #[arg(long, value_name = "ID")]
    snapshot: String,
    /// The age identity file (`AGE-SECRET-KEY-1…` lines) matching one of the cluster's
    /// `ageRecipients`.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The control plane that receives the snapshot (default: the first).
    #[arg(long, value_name = "IP")]
    node: Option<IpAddr>,
    /// Run the plan. Without it, kiln checks the snapshot, prints the plan and changes nothing.
    #[arg(long)]
    yes: bool,
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// How long the running daemon may take to acknowledge the hold: its current cycle must end first,
/// and a cycle carrying a rolling upgrade can take that long.
const HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(900);

/// What keeps every other kiln off the cluster for the restore's length, kept for its drop: the
/// state_dir lock, or the running daemon's hold.
struct Guard {
    _lock: Option<StateLock>,
    _hold: Option<HeldCluster>,
}

/// The daemon's hold on a cluster, lifted on drop whatever the restore's outcome (an error, a
/// Ctrl-C unwinding through `main`).
struct HeldCluster {
    state_dir: PathBuf,
    cluster: ClusterName,
}

impl Drop for HeldCluster {
    fn drop(&mut self) {
        hold::release(&self.state_dir, &self.cluster);
        println!("the running kiln reconciles {} again", self.cluster);
    }
}

/// Places the hold and waits until the daemon says no turn of the cluster runs and none will.
async fn hold_through_daemon(
    state_dir: &std::path::Path,
    name: &ClusterName,
    wait: std::time::Duration,
) -> anyhow::Result<Guard> {
    let placed = hold::place(
        state_dir,
        name,
        &format!("kiln restore (pid {})", std::process::id()),
    )
    .context("placing the hold")?;
    let guard = HeldCluster {
        state_dir: state_dir.to_owned(),
        cluster: name.clone(),
    };
    let started = std::time::Instant::now();
    while !hold::acknowledged(state_dir, &placed) {
        if started.elapsed() > wait {
            bail!(
                "the running kiln did not hold {name} within {}: nothing was done",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!("the running kiln holds {name}: it does not act on it until the restore ends");
    Ok(Guard {
        _lock: None,
        _hold: Some(guard),
    })
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let name: ClusterName = args
        .cluster
        .parse()
        .map_err(|e| anyhow::anyhow!("`{}` is not a cluster name: {e}", args.cluster))?;
    let records = Records::load(&config.state_dir).context("reading kiln's records")?;
    let cluster = records
        .clusters
        .get(&name)
        .and_then(recorded_cluster)
        .with_context(|| {
            format!("kiln has not applied cluster {name}: it restores only clusters it manages")
        })?;
    let spec = cluster.spec.backup.as_ref().with_context(|| {
        format!("cluster {name} has no spec.backup in the spec kiln last applied")
    })?;
    if config.talos.backend == TalosBackend::Simulated {
        bail!(
            "talos.backend = \"simulated\": the simulated nodes live inside the daemon's process, \
             so a restore cannot reach them"
        );
    }
    let identity_text = std::fs::read_to_string(&args.identity)
        .with_context(|| format!("reading the age identity {}", args.identity.display()))?;
    let identities = crypt::parse_identities(&identity_text)
        .with_context(|| format!("{} holds no age identity", args.identity.display()))?;
    let dest = Destination::open(&spec.destination, &config.backup)?;

    let nodes = |role: Role| -> Vec<PlanNode> {
        cluster
            .nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| PlanNode {
                name: n.name.clone(),
                ip: IpAddr::V4(n.ip),
            })
            .collect()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let key = manifest_key(name.as_str(), &args.snapshot);
        let manifest = dest
            .get(&key)
            .await
            .with_context(|| format!("reading {key} from {}", dest.describe()))?;
        let manifest = Manifest::from_json(&manifest)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{key} is not a kiln manifest"))?;
        if manifest.cluster != name.as_str() || manifest.id != args.snapshot {
            bail!(
                "{key} describes snapshot {} of cluster {}",
                manifest.id,
                manifest.cluster
            );
        }
        let expected = Expected {
            sha256: manifest.plaintext.sha256.clone(),
            size: manifest.plaintext.size,
            revision: i64::try_from(manifest.revision).context("the manifest's revision")?,
        };
        let object = snapshot_key(name.as_str(), &args.snapshot);
        let plaintext = async {
            let encrypted = dest.get_stream(&object).await?;
            anyhow::Ok(crypt::decrypt_stream(encrypted, &identities).await?)
        };
        let facts = restore::verify_plaintext(plaintext.await?, &expected)
            .await
            .with_context(|| format!("checking {object} against its manifest"))?;
        println!(
            "snapshot {} of {name}: decrypted and checked against its manifest ({} bytes, SHA-256 \
             {}, etcd revision {})",
            args.snapshot, manifest.plaintext.size, manifest.plaintext.sha256, facts.revision
        );
        let plan = RestorePlan::new(
            name.as_str(),
            &args.snapshot,
            facts.revision,
            nodes(Role::ControlPlane),
            nodes(Role::Worker),
            args.node,
        )?;
        print!("{plan}");
        if !args.yes {
            println!("Nothing was done: run again with --yes to restore.");
            return Ok(ExitCode::from(2));
        }

        // Nothing may reconcile the cluster while its etcd is wiped: without a daemon, this
        // command holds the state_dir lock; with one, the daemon holds the cluster (DESIGN §7).
        let _guard = match StateLock::acquire(&config.state_dir, &this_command()) {
            Ok(lock) => Guard {
                _lock: Some(lock),
                _hold: None,
            },
            Err(LockError::Held { holder, .. }) => {
                println!(
                    "the running kiln ({holder}) holds {}: asking it to hold {name} for the \
                     restore (its current cycle ends first)",
                    config.state_dir.display()
                );
                hold_through_daemon(&config.state_dir, &name, HOLD_WAIT).await?
            }
            Err(e) => return Err(e.into()),
        };
        let prefix = Prefix::parse(&config.secrets.prefix).map_err(anyhow::Error::msg)?;
        let opened = kiln::secrets::open(&config.secrets, &config.state_dir)
            .context("opening the secret store")?;
        let view = observe::secrets(
            opened.store.as_ref(),
            &SecretPaths::for_cluster(&prefix, &name),
        )
        .await
        .context("reading the cluster's secrets")?;
        let bundle = view
            .bundle
            .with_context(|| format!("the secrets bundle of {name} is not readable"))?;
        let talos_identity = observe::talos_identity(&bundle.bundle)?;

        let encrypted = dest.get_stream(&object).await?;
        let upload = restore::checked_upload(
            crypt::decrypt_stream(encrypted, &identities).await?,
            expected,
        );
        let talos = kiln::talos::grpc::GrpcTalos::default();
        restore::execute(
            &plan,
            &talos,
            &talos_identity,
            upload,
            RestoreTiming::default(),
            &mut |step| println!("- {step}"),
        )
        .await?;
        println!(
            "etcd of {name} restored from {} at revision {}",
            args.snapshot, facts.revision
        );
        Ok(ExitCode::SUCCESS)
    })
}
