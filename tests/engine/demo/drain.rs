//! Issue 24 point 4 (DESIGN.md §7 "Safety before any destructive step"): a worker is never destroyed,
//! and no node is rebooted through Proxmox for a resize, without the drain kiln owes it. When the
//! cluster's Kubernetes API should answer (etcd was bootstrapped) but does not, the step waits.
//!
//! The whole engine runs in process on the simulated lab (Proxmox in memory, Talos nodes over real gRPC
//! and TLS, the cluster's Kubernetes API at its VIP) with the file secret store and a real Git remote;
//! only the road to the Kubernetes API can be cut, by a switch in front of kube-rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiln::config::Config;
use kiln::git::GitSource;
use kiln::kube::{KubeAccess, KubeError, KubePort};
use kiln::reconcile::{Engine, KubeConnect, KubeRs, Ports};
use kiln::sim::lab::Lab;
use kiln::talos::grpc::GrpcTalos;

use super::fixture::{ClusterFixture, WK_RESOURCES};
use super::gitrepo::Repos;
use super::sim_options;

/// kube-rs, or — switched off — an API that does not answer (a connection refused at the VIP).
struct Switch {
    up: Arc<AtomicBool>,
}

#[async_trait]
impl KubeConnect for Switch {
    async fn connect(&self, access: &KubeAccess) -> Result<Box<dyn KubePort>, KubeError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(KubeError::Connect {
                server: access.server.clone(),
                message: "connection refused (the test cut the road to the API)".into(),
            });
        }
        KubeRs.connect(access).await
    }
}

struct Site {
    _dir: tempfile::TempDir,
    repos: Repos,
    lab: Lab,
    api_up: Arc<AtomicBool>,
    engine: Engine,
}

async fn site(c: &ClusterFixture) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::empty();
    repos.write(&c.path(), &c.yaml());
    repos.commit_and_push("a cluster to drain");
    let state = dir.path().join("state");
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
decommission_grace = "0s"
retry_initial = "200ms"
retry_max = "1s"
"#,
        state = state.display(),
        bare = repos.bare.display(),
    );
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&path, &text).unwrap();
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let lab = Lab::with_options(&[(9000, "pve1")], sim_options(), 50000);
    let store = kiln::secrets::open(&config.secrets, &config.state_dir).unwrap();
    let git = GitSource::open(&config.git, &config.state_dir)
        .await
        .unwrap();
    git.poll().await.unwrap();
    let api_up = Arc::new(AtomicBool::new(true));
    let ports = Ports {
        proxmox: lab.proxmox(),
        talos: Arc::new(GrpcTalos::default()),
        secrets: store.store.clone(),
        kube: Arc::new(Switch { up: api_up.clone() }),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(stop); // the engine runs until the test ends
    let engine = Engine::new(config, git, ports, shutdown, None).unwrap();
    Site {
        _dir: dir,
        repos,
        lab,
        api_up,
        engine,
    }
}

impl Site {
    /// Commits a new version of the cluster file, as a person's merged pull request.
    fn push(&self, c: &ClusterFixture, text: &str, message: &str) {
        // kiln pushed its generated files meanwhile: the person's push must be a fast-forward.
        super::gitrepo::git(
            &self.repos.work,
            &["pull", "-q", "--rebase", "origin", "main"],
        );
        self.repos.write(&c.path(), text);
        self.repos.commit_and_push(message);
    }

    async fn converge(&mut self, what: &str) {
        let report = self.engine.run_once(Duration::from_secs(120)).await;
        assert!(
            report.converged,
            "{what}: not converged: {:?}\n{:#?}",
            report.error,
            self.engine.status()
        );
    }

    /// A few cycles with the API cut: time enough for kiln to do whatever it would do.
    async fn cycles_without_api(&mut self, n: usize) -> String {
        self.api_up.store(false, Ordering::SeqCst);
        for _ in 0..n {
            self.engine.cycle().await;
        }
        let status = self.engine.status().clusters.values().next().unwrap();
        serde_json::to_string(status).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_only_after_its_drain_even_when_the_api_is_down() {
    let mut c = ClusterFixture::new("drainleave", 1, 2);
    let mut s = site(&c).await;
    s.converge("provisioning").await;
    // The engine drove kiln's real adapter over the simulated PVE API: one full clone per VM.
    let clones: Vec<_> = s
        .lab
        .sim_proxmox()
        .requests()
        .into_iter()
        .filter(|r| r.path == "/nodes/pve1/qemu/9000/clone")
        .collect();
    assert_eq!(clones.len(), c.wanted().len(), "{clones:?}");
    assert!(clones.iter().all(|r| r.params["full"] == "1"));
    let leaving = c.wanted().last().unwrap().clone();
    assert!(s.lab.sim_proxmox().vm(leaving.vmid).is_some());

    // The last worker is removed from the file while the API does not answer.
    c.workers = 1;
    s.push(&c, &c.yaml(), "scale workers 2 → 1");
    let status = s.cycles_without_api(3).await;
    assert!(
        s.lab.sim_proxmox().vm(leaving.vmid).is_some(),
        "{} was destroyed without its drain; status: {status}",
        leaving.name
    );
    assert!(
        status.contains("waits for its drain"),
        "the status says why it waits: {status}"
    );

    // The API answers again: drain, Node deletion, then the VM goes.
    s.api_up.store(true, Ordering::SeqCst);
    s.converge("scale-down with the API back").await;
    assert!(
        s.lab.sim_proxmox().vm(leaving.vmid).is_none(),
        "{} still exists after the drain",
        leaving.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_reboots_only_after_the_drain_even_when_the_api_is_down() {
    let c = ClusterFixture::new("drainsize", 1, 1);
    let mut s = site(&c).await;
    s.converge("provisioning").await;
    let worker = c.wanted().last().unwrap().clone();
    let (cores, _, _) = WK_RESOURCES;

    // More cores for the workers: a pending change that only a Proxmox reboot applies.
    let bigger = c.yaml().replace(
        &format!("resources: {{cores: {cores}, "),
        &format!("resources: {{cores: {}, ", cores + 1),
    );
    assert_ne!(bigger, c.yaml());
    s.push(&c, &bigger, "more cores for the workers");
    let status = s.cycles_without_api(3).await;
    let vm = s.lab.sim_proxmox().vm(worker.vmid).unwrap();
    assert!(
        vm.running,
        "the worker was stopped without its drain; status: {status}"
    );
    assert_eq!(
        vm.config.get("cores").map(String::as_str),
        Some(cores.to_string().as_str()),
        "the worker was rebooted (its new size applied) without its drain; status: {status}"
    );
    assert!(
        status.contains("waits for its drain"),
        "the status says why it waits: {status}"
    );

    s.api_up.store(true, Ordering::SeqCst);
    s.converge("resize with the API back").await;
    let vm = s.lab.sim_proxmox().vm(worker.vmid).unwrap();
    assert_eq!(
        vm.config.get("cores").map(String::as_str),
        Some((cores + 1).to_string().as_str()),
        "rebooted after the drain: {vm:?}"
    );
    assert!(vm.pending.is_empty() && vm.running, "{vm:?}");
}
