//! The world each end-to-end test builds for itself (nothing is shared between tests): fakepve with node
//! `pve1` and template 9000 (with its cloud-init drive), an OpenBao dev server with KV v2 at `admin`, a
//! bare Git remote with a work clone seeded with validated `clusters/<name>.yaml` files, one
//! `kiln sim talos` serving every node of every cluster at its own loopback IP, and a `kiln.toml`
//! pointing the real `kiln` binary at all of it. Then helpers to run kiln and to look at each part.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bao::Bao;
use crate::fixture::ClusterFixture;
use crate::gitrepo::{Repos, git};
use crate::pve::{FakePve, Options, TOKEN_ID, TOKEN_SECRET, least_privilege};
use crate::talos_sim::TalosSim;

pub const KILN_EMAIL: &str = "kiln@localhost";

/// The e2e token's ACL: DESIGN.md §3's list for clones of template 9000 (NIC on `vmbr0`) into `/vms`
/// over `local-lvm`, as every fixture asks (`bridge: vmbr0`, no VLAN).
pub fn least_privilege_acl() -> Vec<(String, Vec<&'static str>)> {
    least_privilege(
        9000,
        "/vms",
        "local-lvm",
        &["/sdn/zones/localnetwork/vmbr0"],
    )
}
pub const VAULT_MOUNT: &str = "admin";

pub fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    // The pause hook is for the daemon a test spawns on purpose, never for anything else.
    cmd.env_remove("KILN_TEST_PAUSE_AT");
    cmd
}

/// What one `kiln` invocation did.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Outcome {
    /// Exit code, stdout, and the tail of stderr: what a failed assertion should show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr (last 60 lines) ---\n{tail}",
            self.code, self.stdout
        )
    }
}

/// The daemon (`kiln run`) spawned with `KILN_TEST_PAUSE_AT`; SIGKILLed on drop.
pub struct Daemon {
    child: Child,
    pub stderr: PathBuf,
}

impl Daemon {
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for `KILN PAUSED AT <point>` on stderr; panics with the log if it never comes or the
    /// daemon exits first.
    pub fn wait_paused(&mut self, point: &str, limit: Duration) {
        let line = format!("KILN PAUSED AT {point}");
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr_text().lines().any(|l| l.trim() == line) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before pausing at {point}:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not pause at {point} within {limit:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({status}):\n{}", self.stderr_text());
        }
    }

    /// Waits for the daemon to exit by itself; panics with its log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {limit:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: `Child::kill` sends SIGKILL on Unix, so no destructor or signal handler runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub pve: FakePve,
    pub bao: Bao,
    pub repos: Repos,
    pub sim: TalosSim,
    pub clusters: Vec<ClusterFixture>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    runs: std::sync::atomic::AtomicUsize,
}

/// With `KILN_E2E_KEEP=1` the world's folders (kiln.toml, state, logs, the simulator's dumps, the Git
/// remote and work clone) outlive the test, and their paths are printed: for looking at a failure.
impl Drop for World {
    fn drop(&mut self) {
        if std::env::var_os("KILN_E2E_KEEP").is_none_or(|v| v.is_empty() || v == "0") {
            return;
        }
        let keep = |dir: &mut tempfile::TempDir| {
            std::mem::replace(dir, tempfile::tempdir().unwrap()).keep()
        };
        eprintln!(
            "KILN_E2E_KEEP: world kept at {} (git at {})",
            keep(&mut self.dir).display(),
            keep(&mut self.repos.tmp).display()
        );
    }
}

impl World {
    /// Brings every part up, writes and validates the cluster files, commits them to the remote and
    /// writes kiln.toml. Nothing of kiln's runs yet.
    pub async fn start(clusters: Vec<ClusterFixture>) -> Self {
        Self::start_with_nodes(clusters, |ip| format!("{ip}:50000")).await
    }

    /// As [`World::start`], each node served as `listen(ip)` says (`kiln sim talos --listen`).
    pub async fn start_with_nodes(
        clusters: Vec<ClusterFixture>,
        listen: impl Fn(std::net::Ipv4Addr) -> String,
    ) -> Self {
        Self::start_with_sim_args(clusters, listen, &[]).await
    }

    /// As [`World::start_with_nodes`], `kiln sim talos` started with `sim_args` too.
    pub async fn start_with_sim_args(
        clusters: Vec<ClusterFixture>,
        listen: impl Fn(std::net::Ipv4Addr) -> String,
        sim_args: &[String],
    ) -> Self {
        Self::start_with_bao(clusters, listen, sim_args, Bao::start().await).await
    }

    /// As [`World::start`], OpenBao with a file audit device ([`Bao::start_audited`]), so a test can
    /// tell which token wrote each secret.
    pub async fn start_audited(clusters: Vec<ClusterFixture>) -> Self {
        let bao = Bao::start_audited().await;
        Self::start_with_bao(clusters, |ip| format!("{ip}:50000"), &[], bao).await
    }

    async fn start_with_bao(
        clusters: Vec<ClusterFixture>,
        listen: impl Fn(std::net::Ipv4Addr) -> String,
        sim_args: &[String],
        bao: Bao,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pve = FakePve::start_with(Options {
            nodes: vec![],
            templates: vec!["9000@pve1"],
        });
        // kiln's token holds exactly DESIGN.md §3's list, so every call kiln makes is checked
        // against PVE's schema permissions as on a least-privilege datacenter.
        pve.set_acl(&least_privilege_acl());
        bao.enable_kv2(VAULT_MOUNT).await;
        let ips: Vec<_> = clusters
            .iter()
            .flat_map(|c| c.wanted().into_iter().map(|v| v.ip))
            .collect();
        let listen: Vec<String> = ips.iter().map(|ip| listen(*ip)).collect();
        let sim = TalosSim::start_with_args(&listen, dir.path(), sim_args);
        let repos = Repos::empty();
        let world = Self {
            config: dir.path().join("kiln.toml"),
            state_dir: dir.path().join("state"),
            dir,
            pve,
            bao,
            repos,
            sim,
            clusters,
            runs: Default::default(),
        };
        for c in &world.clusters {
            world.repos.write(&c.path(), &c.yaml());
        }
        world.repos.write("README.md", "e2e fleet\n");
        world.validate_work_tree();
        world.repos.commit_and_push("add the test clusters");
        world.write_config(false);
        world
    }

    /// kiln.toml as DESIGN.md §8 names the keys; secrets only through `*_file`.
    pub fn write_config(&self, allow_empty: bool) {
        let d = self.dir.path();
        let pve_token = d.join("pve-token");
        let pve_ca = d.join("pve-ca.pem");
        std::fs::write(&pve_token, format!("{TOKEN_SECRET}\n")).unwrap();
        std::fs::write(&pve_ca, &self.pve.pki.ca_pem).unwrap();
        let toml = format!(
            r#"# kiln.toml of an end-to-end test world
state_dir = "{state}"

[git]
url = "file://{bare}"
branch = "main"
poll_interval = "1s"
author = "kiln <{KILN_EMAIL}>"

[proxmox]
backend = "api"
url = "{pve_url}"
token_id = "{TOKEN_ID}"
token_secret_file = "{pve_token}"
ca_file = "{pve_ca}"
task_timeout = "60s"
shutdown_timeout = "5s"

[talos]
backend = "grpc"

[secrets]
backend = "vault"
addr = "{vault}"
token_file = "{vault_token}"
mount = "{VAULT_MOUNT}"

[reconcile]
concurrency = 4
decommission_grace = "0s"
allow_empty = {allow_empty}
# The fakes answer in milliseconds: retries need not wait as long as on real Proxmox.
retry_initial = "200ms"
retry_max = "2s"
"#,
            state = self.state_dir.display(),
            bare = self.repos.bare.display(),
            pve_url = self.pve.url(),
            pve_token = pve_token.display(),
            pve_ca = pve_ca.display(),
            vault = self.bao.addr,
            vault_token = self.bao.root_token_file().display(),
        );
        std::fs::write(&self.config, toml).unwrap();
        // The file must mean what the test thinks: kiln's own loader reads it back.
        let parsed = kiln::config::Config::load(&self.config)
            .unwrap_or_else(|e| panic!("the test's kiln.toml does not load: {e}"));
        assert_eq!(parsed.reconcile.allow_empty, allow_empty);
    }

    /// `kiln validate` on the work tree's clusters folder, all files together; fails the test on a bad
    /// fixture (an empty folder has nothing to validate).
    pub fn validate_work_tree(&self) {
        let clusters = self.repos.work.join("clusters");
        let any = std::fs::read_dir(&clusters)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if !any {
            return;
        }
        let out = kiln().arg("validate").arg(&clusters).output().unwrap();
        assert!(
            out.status.success(),
            "a test fixture is invalid:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a file in the work clone, commits and pushes it (no validation: some tests break files).
    pub fn push_file(&self, path: &str, text: &str, message: &str) -> String {
        self.pull();
        self.repos.write(path, text);
        self.repos.commit_and_push(message)
    }

    /// Deletes cluster files and pushes the removal, as a person decommissions clusters.
    pub fn delete_clusters(&self, names: &[&str]) -> String {
        self.pull();
        for n in names {
            git(
                &self.repos.work,
                &["rm", "-q", &format!("clusters/{n}.yaml")],
            );
        }
        self.validate_work_tree();
        self.repos
            .commit_and_push(&format!("decommission {}", names.join(", ")))
    }

    /// Brings the work clone up to the remote (kiln pushes to the same branch), so the human's next
    /// push is a fast-forward.
    pub fn pull(&self) {
        git(
            &self.repos.work,
            &["pull", "-q", "--rebase", "origin", "main"],
        );
    }

    // ------------------------------------------------------------------ running kiln

    /// `kiln run --once --timeout 2m`.
    pub fn run_once(&self) -> Outcome {
        self.run_once_for(Duration::from_secs(120))
    }

    /// `kiln run --once --timeout <limit>`, with a hard stop 30 s later so a hung binary fails the test
    /// instead of the suite.
    pub fn run_once_for(&self, limit: Duration) -> Outcome {
        let mut cmd = kiln();
        cmd.args(["run", "--once", "--config"])
            .arg(&self.config)
            .arg("--timeout")
            .arg(humantime::format_duration(limit).to_string());
        self.run(cmd, limit + Duration::from_secs(30))
    }

    /// `kiln status [NAME] --format json --config …`, parsed.
    pub fn status_json(&self, name: Option<&str>) -> (Outcome, Option<Value>) {
        let mut cmd = kiln();
        cmd.arg("status");
        if let Some(n) = name {
            cmd.arg(n);
        }
        cmd.args(["--format", "json", "--config"]).arg(&self.config);
        let out = self.run(cmd, Duration::from_secs(30));
        let json = serde_json::from_str(&out.stdout).ok();
        (out, json)
    }

    /// Any kiln command, output captured, stopped after 2 minutes.
    pub fn run_command(&self, cmd: Command) -> Outcome {
        self.run(cmd, Duration::from_secs(120))
    }

    fn run(&self, mut cmd: Command, hard_limit: Duration) -> Outcome {
        let k = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out_path = self.dir.path().join(format!("kiln-{k}.stdout"));
        let err_path = self.dir.path().join(format!("kiln-{k}.stderr"));
        // Files, not pipes: a chatty child can never block on a full pipe while the test waits.
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("running the kiln binary");
        let deadline = Instant::now() + hard_limit;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let outcome = Outcome {
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "kiln did not finish within {hard_limit:?} (killed):\n{outcome}"
        );
        outcome
    }

    /// The daemon (`kiln run`), with the crash hook armed at `pause_at` if given.
    pub fn spawn_daemon(&self, pause_at: Option<&str>) -> Daemon {
        let k = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr = self.dir.path().join(format!("daemon-{k}.stderr"));
        let mut cmd = kiln();
        cmd.args(["run", "--config"]).arg(&self.config);
        if let Some(point) = pause_at {
            cmd.env("KILN_TEST_PAUSE_AT", point);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning the kiln daemon");
        Daemon { child, stderr }
    }

    // ------------------------------------------------------------------ Proxmox

    /// Every VM fakepve holds (template included), by VMID, read through the launcher's control
    /// channel so looking does not add to the request log.
    pub fn vms(&self) -> BTreeMap<u32, Value> {
        self.pve
            .ctl(json!({"cmd": "vmids"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let id = id.as_u64().unwrap() as u32;
                (id, self.pve.vm(id))
            })
            .collect()
    }

    /// A mark in fakepve's request log, for [`World::requests_since`].
    pub fn request_mark(&self) -> usize {
        self.pve.requests().len()
    }

    pub fn requests_since(&self, mark: usize) -> Vec<(String, String)> {
        self.pve.requests().split_off(mark)
    }

    /// Requests since the mark that write (anything but GET), on any path.
    pub fn writes_since(&self, mark: usize) -> Vec<(String, String)> {
        self.requests_since(mark)
            .into_iter()
            .filter(|(m, _)| m != "GET")
            .collect()
    }

    /// A VM no tool of kiln's made: what a person created by hand.
    pub fn add_foreign_vm(&self, vmid: u32, name: &str) {
        self.pve.ctl(json!({
            "cmd": "add_vm", "vmid": vmid, "name": name, "status": "running",
            "config": {"cores": 1, "memory": 1024, "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=8G")},
        }));
    }

    // ------------------------------------------------------------------ Vault

    /// `admin/metadata/kubernetes/<cluster>/<leaf>`, or None when the path does not exist.
    pub async fn vault_metadata(&self, cluster: &str, leaf: &str) -> Option<Value> {
        let (code, body) = self
            .bao
            .api_status(
                "GET",
                &format!("{VAULT_MOUNT}/metadata/kubernetes/{cluster}/{leaf}"),
                None,
            )
            .await;
        match code {
            200 => Some(body.unwrap()["data"].clone()),
            404 => None,
            other => panic!("reading Vault metadata of {cluster}/{leaf}: HTTP {other} {body:?}"),
        }
    }

    /// The current data of a path (keys only are compared by tests; values are secrets).
    pub async fn vault_keys(&self, cluster: &str, leaf: &str) -> Vec<String> {
        let body = self
            .bao
            .api(
                "GET",
                &format!("{VAULT_MOUNT}/data/kubernetes/{cluster}/{leaf}"),
                None,
            )
            .await
            .unwrap();
        let mut keys: Vec<String> = body["data"]["data"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Metadata of the three paths of every cluster: equal before and after means nothing was written.
    pub async fn vault_snapshot(&self) -> BTreeMap<String, Option<Value>> {
        let mut out = BTreeMap::new();
        for c in &self.clusters {
            for leaf in ["secrets", "kubeconfig", "talos"] {
                out.insert(
                    format!("{}/{leaf}", c.name),
                    self.vault_metadata(&c.name, leaf).await,
                );
            }
        }
        out
    }

    // ------------------------------------------------------------------ Git

    /// Commits on the remote's main whose author is kiln (its `git.author`), newest first.
    pub fn kiln_commits(&self) -> Vec<String> {
        git(&self.repos.bare, &["log", "--format=%H %ae", "main"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, email)| *email == KILN_EMAIL)
            .map(|(sha, _)| sha.to_owned())
            .collect()
    }

    /// Files under `gitops/` at the remote's tip.
    pub fn gitops_files(&self) -> Vec<String> {
        git(
            &self.repos.bare,
            &["ls-tree", "-r", "--name-only", "main", "--", "gitops/"],
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Files a commit touched.
    pub fn commit_files(&self, sha: &str) -> Vec<String> {
        git(&self.repos.bare, &["show", "--name-only", "--format=", sha])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Makes the remote refuse every push (a pre-receive hook), or accept them again.
    pub fn refuse_pushes(&self, refuse: bool) {
        let hook = self.repos.bare.join("hooks/pre-receive");
        if refuse {
            std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
            std::fs::write(&hook, "#!/bin/sh\necho 'e2e: pushes refused' >&2\nexit 1\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            let _ = std::fs::remove_file(&hook);
        }
    }
}

/// A log line without the terminal colours tracing puts in it.
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
