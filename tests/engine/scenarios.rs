//! The scenario tier: the whole engine in this process on the lab (simulated Proxmox and Talos nodes
//! over real gRPC and TLS, the cluster's Kubernetes API at its VIP), the file secret store and a real
//! Git remote on disk, proving each safety rule of DESIGN.md §7 in seconds. Each rule is checked by
//! what the lab shows (which VMs exist, what the nodes run, whether a second etcd cluster was started)
//! and what the remote holds, never by what kiln says it did.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln::config::Config;
use kiln::git::GitSource;
use kiln::reconcile::status::{ClusterStatus, Phase};
use kiln::reconcile::{CycleReport, Engine, KubeRs, Ports};
use kiln::secrets::{Prefix, ReadOutcome, SecretPaths};
use kiln::sim::lab::Lab;
use kiln::sim::talos::SimOptions;
use kiln::sim::talos::validate::SchemaValidator;
use kiln::spec::types::ClusterName;
use kiln::talos::grpc::GrpcTalos;

use crate::fixture::ClusterFixture;
use crate::gitrepo::{Repos, git};

#[path = "scenarios/crash.rs"]
mod crash;
#[path = "scenarios/safety.rs"]
mod safety;
#[path = "scenarios/watchdog.rs"]
mod watchdog;

/// Long enough for a few 1-node clusters to come up on two loaded cores, short enough to fail a hang.
const CONVERGE: Duration = Duration::from_secs(180);

fn schema_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_REFERENCE_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/schemas"));
    assert!(
        dir.join("talos/config-v1.13.schema.json").is_file(),
        "the official Talos schemas are missing under {}/talos: set KILN_REFERENCE_SCHEMAS to the shared \
         schemas folder (scripts/test does)",
        dir.display()
    );
    dir
}

/// How the daemon is configured for a scenario: only what the safety rules turn on.
#[derive(Clone, Copy)]
pub struct Settings {
    pub grace: Duration,
    pub allow_empty: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grace: Duration::ZERO,
            allow_empty: false,
        }
    }
}

/// One machine room and one repository; engines come and go over the same state folder, as kiln
/// restarts do.
pub struct Site {
    dir: tempfile::TempDir,
    pub repos: Repos,
    pub lab: Lab,
}

impl Site {
    /// A remote holding these clusters' files, and an empty lab with template 9000 on `pve1`.
    pub fn new(clusters: &[&ClusterFixture]) -> Self {
        let repos = Repos::empty();
        for c in clusters {
            repos.write(&c.path(), &c.yaml());
        }
        repos.write("README.md", "fleet\n");
        repos.commit_and_push("the clusters");
        let options = SimOptions {
            dump_dir: None,
            validator: Some(Arc::new(SchemaValidator::new(schema_dir()))),
            ..Default::default()
        };
        Self {
            dir: tempfile::tempdir().unwrap(),
            repos,
            lab: Lab::with_options(&[(9000, "pve1")], options, 50000),
        }
    }

    fn config(&self, settings: Settings) -> Config {
        let state = self.dir.path().join("state");
        let text = format!(
            r#"state_dir = "{state}"
[git]
url = "{bare}"
poll_interval = "1s"
[proxmox]
backend = "simulated"
[talos]
backend = "simulated"
[secrets]
backend = "file"
[reconcile]
decommission_grace = "{grace}"
allow_empty = {allow_empty}
retry_initial = "200ms"
retry_max = "1s"
"#,
            state = state.display(),
            bare = self.repos.bare.display(),
            grace = humantime::format_duration(settings.grace),
            allow_empty = settings.allow_empty,
        );
        let path = self.dir.path().join("kiln.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::parse(&path, &text).expect("kiln.toml");
        std::fs::create_dir_all(&config.state_dir).unwrap();
        config
    }

    /// A new engine over the site's state folder, secret store and lab, as a restarted daemon.
    pub async fn engine(&self, settings: Settings) -> Engine {
        let config = self.config(settings);
        let store = kiln::secrets::open(&config.secrets, &config.state_dir).unwrap();
        let git = GitSource::open(&config.git, &config.state_dir)
            .await
            .unwrap();
        git.poll().await.unwrap();
        let ports = Ports {
            proxmox: self.lab.proxmox(),
            talos: Arc::new(GrpcTalos::default()),
            secrets: store.store.clone(),
            kube: Arc::new(KubeRs),
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        // The engine is stopped by dropping it (or by a crash point), never by a shutdown signal.
        std::mem::forget(stop);
        Engine::new(config, git, ports, shutdown, None).unwrap()
    }

    /// Commits the work tree as a person's merged pull request (after kiln's own pushes).
    pub fn push(&self, message: &str, change: impl FnOnce(&Repos)) {
        git(
            &self.repos.work,
            &["pull", "-q", "--rebase", "origin", "main"],
        );
        change(&self.repos);
        self.repos.commit_and_push(message);
    }

    /// The remote refuses every push (a pre-receive hook), as a protected branch would.
    pub fn refuse_pushes(&self, refuse: bool) {
        let hook = self.repos.bare.join("hooks/pre-receive");
        if refuse {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
            std::fs::write(&hook, "#!/bin/sh\necho 'pushes refused' >&2\nexit 1\n").unwrap();
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            std::fs::remove_file(&hook).unwrap();
        }
    }

    /// The files under `gitops/` at the remote's tip that name `cluster`.
    pub fn generated_files_of(&self, cluster: &str) -> Vec<String> {
        git(
            &self.repos.bare,
            &["ls-tree", "-r", "--name-only", "main", "gitops/"],
        )
        .lines()
        .filter(|f| f.contains(&format!("/{cluster}/")) || f.contains(&format!("/{cluster}.")))
        .map(str::to_owned)
        .collect()
    }

    /// The VMIDs kiln's listing says belong to `cluster`, running or not.
    pub async fn vms_of(&self, cluster: &str) -> BTreeSet<u32> {
        let inventory = self.lab.proxmox().observe().await.expect("listing");
        inventory
            .cluster(cluster)
            .values()
            .map(|vm| vm.vmid)
            .collect()
    }

    /// Of those, the ones the hypervisor runs.
    pub async fn running_vms(&self, cluster: &str) -> BTreeSet<u32> {
        let sim = self.lab.sim_proxmox();
        self.vms_of(cluster)
            .await
            .into_iter()
            .filter(|vmid| sim.vm(*vmid).is_some_and(|v| v.running))
            .collect()
    }

    /// Every VM in the lab but the templates.
    pub async fn all_vms(&self) -> BTreeSet<u32> {
        let inventory = self.lab.proxmox().observe().await.expect("listing");
        inventory
            .iter()
            .filter(|vm| !vm.template)
            .map(|vm| vm.vmid)
            .collect()
    }

    /// The current version of one of a cluster's secrets (`None`: never written).
    pub async fn secret_version(&self, cluster: &str, which: &str) -> Option<u64> {
        let config = self.config(Settings::default());
        let store = kiln::secrets::open(&config.secrets, &config.state_dir).unwrap();
        let paths = SecretPaths::for_cluster(
            &Prefix::parse(&config.secrets.prefix).unwrap(),
            &cluster.parse::<ClusterName>().unwrap(),
        );
        let path = match which {
            "secrets" => &paths.secrets,
            "talos" => &paths.talos,
            "kubeconfig" => &paths.kubeconfig,
            other => panic!("no secret {other}"),
        };
        match store.store.read(path).await.expect("read the file store") {
            ReadOutcome::Absent => None,
            ReadOutcome::Present(s) => Some(s.version),
            other => panic!("{path:?}: {other:?}"),
        }
    }

    /// Asserts the cluster is exactly as its file says: every wanted VM and no other, running.
    pub async fn assert_exactly(&self, c: &ClusterFixture) {
        let wanted: BTreeSet<u32> = c.vmids().into_iter().collect();
        assert_eq!(self.vms_of(&c.name).await, wanted, "{}'s VMs", c.name);
        assert_eq!(
            self.running_vms(&c.name).await,
            wanted,
            "{}'s running VMs",
            c.name
        );
        assert!(
            self.lab.violations().is_empty(),
            "{:?}",
            self.lab.violations()
        );
    }
}

/// Runs the engine until nothing more happens without a change, and asserts that it got there.
pub async fn settle(engine: &mut Engine, what: &str) -> CycleReport {
    let report = engine.run_once(CONVERGE).await;
    assert!(
        report.settled && report.error.is_none(),
        "{what}: not settled: {:?}\n{:#?}",
        report.error,
        engine.status()
    );
    report
}

/// The status kiln keeps for `cluster`, with its phase.
pub fn status_of(engine: &Engine, cluster: &str) -> ClusterStatus {
    engine
        .status()
        .clusters
        .get(cluster)
        .unwrap_or_else(|| panic!("no status for {cluster}: {:#?}", engine.status()))
        .clone()
}

pub fn assert_phase(engine: &Engine, cluster: &str, phase: Phase) -> String {
    let status = status_of(engine, cluster);
    let text = serde_json::to_string(&status).unwrap();
    assert_eq!(status.phase, phase, "{cluster}: {text}");
    text
}
