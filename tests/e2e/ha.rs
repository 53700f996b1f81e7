//! Issue 29 (DESIGN §8 `[ha]`): several `kiln run` processes, one leader through a Lease in a
//! simulated management cluster (`kiln sim kubernetes`), on one fakepve, one OpenBao and one Git
//! remote served by `git daemon`. Each instance has its own Proxmox API token, its own Vault token
//! (named `ha-<instance>`) and its own commit author, so who acted is read from fakepve's request
//! log (the token of each request), from OpenBao's audit log (the display name of each write's
//! token) and from the commits' author lines. Lease: 3s, so renew deadline 2s and retry period 600ms.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::checks::{assert_bootstraps, assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::gitrepo::{Daemon as GitDaemon, git};
use crate::pve::TOKEN_SECRET;
use crate::support::{VAULT_MOUNT, World, kiln, least_privilege_acl};

const LEASE: Duration = Duration::from_secs(3);
/// `lease_duration / 5` (`kiln::ha::Timing`).
const RETRY: Duration = Duration::from_millis(600);
/// What the test's own looking adds to a takeover it measures: a read of the Lease every 50 ms
/// over a fresh TLS connection, on a machine shared with other builds.
const MEASURE_SLACK: Duration = Duration::from_millis(1000);

/// `kiln sim kubernetes`, killed on drop.
struct Management {
    child: Child,
    ha: kiln::ha::HaConfig,
}

impl Management {
    async fn start(dir: &Path) -> Self {
        let kubeconfig = dir.join("management.kubeconfig");
        let child = kiln()
            .args([
                "sim",
                "kubernetes",
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig-out",
            ])
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kiln sim kubernetes");
        let mut m = Self {
            child,
            ha: kiln::ha::HaConfig {
                kubeconfig_file: kubeconfig.clone(),
                namespace: "argocd".into(),
                lease_name: "kiln".into(),
                lease_duration: LEASE,
            },
        };
        let started = Instant::now();
        while !kubeconfig.exists() {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("kiln sim kubernetes exited: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no kubeconfig written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    async fn holder(&self) -> Option<String> {
        kiln::ha::Elector::holder(&self.ha).await.ok().flatten()
    }
}

impl Drop for Management {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `kiln run` with its own state, token and author; SIGKILLed on drop.
struct Instance {
    /// Its HTTP API (`/readyz`).
    api: String,
    token_id: String,
    /// How OpenBao's audit log names this instance's Vault token (`token-<display name>`).
    vault_name: String,
    email: String,
    config: PathBuf,
    stderr: PathBuf,
    child: Child,
}

impl Instance {
    /// `pause_at`: the crash point (`kiln::testhook`) where the process stops itself (SIGSTOP).
    async fn spawn(
        world: &World,
        name: &'static str,
        git_url: &str,
        m: &Management,
        pause_at: Option<&str>,
    ) -> Self {
        Self::spawn_with(world, name, git_url, &m.ha.kubeconfig_file, pause_at).await
    }

    /// As [`Instance::spawn`], reaching the management API through `kubeconfig`.
    async fn spawn_with(
        world: &World,
        name: &'static str,
        git_url: &str,
        kubeconfig: &Path,
        pause_at: Option<&str>,
    ) -> Self {
        let token_id = format!("kiln@pve!ha-{name}");
        let email = format!("kiln-{name}@ha.e2e");
        world
            .pve
            .ctl(json!({"cmd": "add_token", "tokenid": token_id, "secret": TOKEN_SECRET}));
        world
            .pve
            .ctl(json!({"cmd": "acl", "user": token_id, "entries": least_privilege_acl()}));
        let vault_token = world.bao.create_named_token(&format!("ha-{name}")).await;
        let vault_token_file = world
            .bao
            .write_file(&format!("vault-token-{name}"), &vault_token);
        let base = std::fs::read_to_string(&world.config).unwrap();
        let state = world.dir.path().join(format!("state-{name}"));
        let bare = format!("file://{}", world.repos.bare.display());
        let mut text = base
            .replace(
                &format!("state_dir = \"{}\"", world.state_dir.display()),
                &format!("state_dir = \"{}\"", state.display()),
            )
            .replace(
                &format!("url = \"{bare}\""),
                &format!("url = \"{git_url}\""),
            )
            .replace(
                "author = \"kiln <kiln@localhost>\"",
                &format!("author = \"kiln-{name} <{email}>\""),
            )
            .replace(
                "token_id = \"kiln@pve!ci\"",
                &format!("token_id = \"{token_id}\""),
            )
            .replace(
                &format!(
                    "token_file = \"{}\"",
                    world.bao.dir.path().join("root-token").display()
                ),
                &format!("token_file = \"{}\"", vault_token_file.display()),
            );
        // The HTTP surface, for /readyz: a port free a moment ago (kiln.toml takes no port 0 back).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api_token = world.dir.path().join(format!("api-token-{name}"));
        std::fs::write(&api_token, "ha-e2e-api-token\n").unwrap();
        text.push_str(&format!(
            "\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            api_token.display()
        ));
        text.push_str(&format!(
            "\n[ha]\nkubeconfig_file = \"{}\"\nnamespace = \"argocd\"\nlease_name = \"kiln\"\nlease_duration = \"3s\"\n",
            kubeconfig.display()
        ));
        let config = world.dir.path().join(format!("kiln-{name}.toml"));
        std::fs::write(&config, &text).unwrap();
        let parsed = kiln::config::Config::load(&config)
            .unwrap_or_else(|e| panic!("instance {name}'s kiln.toml does not load: {e}"));
        assert_eq!(parsed.proxmox.token_id.as_deref(), Some(token_id.as_str()));
        assert_eq!(parsed.git.url, git_url);
        assert_eq!(
            parsed.secrets.token_file.as_deref(),
            Some(vault_token_file.as_path()),
            "instance {name} would write to Vault as root"
        );
        let stderr = world.dir.path().join(format!("ha-{name}.stderr"));
        let mut cmd = kiln();
        if let Some(point) = pause_at {
            cmd.env("KILN_TEST_PAUSE_AT", point);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kiln run");
        Self {
            api: format!("http://127.0.0.1:{port}"),
            token_id,
            vault_name: format!("token-ha-{name}"),
            email,
            config,
            stderr,
            child,
        }
    }

    /// Its name in the Lease (`host_pid`).
    fn owns(&self, holder: Option<&str>) -> bool {
        holder.is_some_and(|h| h.ends_with(&format!("_{}", self.child.id())))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.child.id());
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `kiln_ha_leader`'s value on its `/metrics`.
    async fn ha_leader_metric(&self) -> String {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.api))
            .bearer_auth("ha-e2e-api-token")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("kiln_ha_leader "))
            .unwrap_or_else(|| panic!("no kiln_ha_leader in /metrics:\n{text}"))
            .to_owned()
    }

    /// The phase of `cluster` in this instance's status file (`kiln status --format json`).
    fn phase(&self, cluster: &str) -> Option<String> {
        let out = kiln()
            .args(["status", "--format", "json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        status_of(&json, cluster)?["phase"]
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // A test may leave it stopped: a stopped process ignores nothing but SIGKILL.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every request fakepve saw that writes (not GET): (token id, wall time, method, path).
fn writes(world: &World) -> Vec<(String, f64, String, String)> {
    world
        .pve
        .ctl(json!({"cmd": "request_log"}))
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[0] != "GET")
        .map(|r| {
            (
                r[3].as_str().unwrap().to_owned(),
                r[2].as_f64().unwrap(),
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every write OpenBao's audit device saw on kiln's KV mount: (token display name, wall time,
/// operation, path). The world's Vault is audited ([`World::start_audited`]).
fn vault_writes(world: &World) -> Vec<(String, f64, String, String)> {
    world
        .bao
        .audited_writes(VAULT_MOUNT)
        .into_iter()
        .map(|w| (w.display_name, w.at, w.operation, w.path))
        .collect()
}

/// The author e-mail of every commit on the remote's `main`, oldest first.
fn authors(world: &World) -> Vec<String> {
    let mut a: Vec<String> = git(&world.repos.bare, &["log", "--format=%ae", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    a.reverse();
    a
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn until<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `new` holds the Lease, reading it every 50 ms. Returns the window the handover lies
/// in: the wall time before the last read that still showed `old` holding it (or `old_seen`, when
/// no read did), and the wall time after the first read that showed `new`. `old` held the Lease up
/// to the first, `new` from the second on: whoever wrote between them is judged by its own window.
async fn takeover(m: &Management, old: &Instance, new: &Instance, old_seen: f64) -> (f64, f64) {
    let mut old_seen = old_seen;
    let new_seen = until(
        LEASE + RETRY + MEASURE_SLACK,
        "the new instance takes the Lease",
        async || {
            let before = wall_now();
            let h = m.holder().await;
            let after = wall_now();
            if old.owns(h.as_deref()) {
                old_seen = before;
            }
            new.owns(h.as_deref()).then_some(after)
        },
    )
    .await;
    (old_seen, new_seen)
}

/// The world (its Vault audited), the Git remote behind `git daemon`, the management API, and
/// instance `a` leading; `a` stops itself (SIGSTOP) at crash point `pause_at` (`vm-cloned`: right
/// after its first clone, before it configures that VM). Last: a wall time at which `a` was seen
/// holding the Lease.
async fn two_instances(
    cluster: &ClusterFixture,
    pause_at: &'static str,
) -> (World, GitDaemon, Management, Instance, Instance, f64) {
    let world = World::start_audited(vec![cluster.clone()]).await;
    let daemon = GitDaemon::start(&world.repos);
    let m = Management::start(world.dir.path()).await;
    let a = Instance::spawn(&world, "a", &daemon.url(), &m, Some(pause_at)).await;
    let a_led = until(
        Duration::from_secs(30),
        "instance a holds the Lease",
        async || {
            let before = wall_now();
            let h = m.holder().await;
            a.owns(h.as_deref()).then_some(before)
        },
    )
    .await;
    let b = Instance::spawn(&world, "b", &daemon.url(), &m, None).await;
    let paused = format!("KILN PAUSED AT {pause_at}");
    until(
        Duration::from_secs(120),
        "a pauses at its crash point",
        async || a.log().contains(&paused).then_some(()),
    )
    .await;
    assert!(
        writes(&world).iter().any(|(t, ..)| *t == a.token_id)
            || vault_writes(&world).iter().any(|w| w.0 == a.vault_name),
        "a paused without writing"
    );
    (world, daemon, m, a, b, a_led)
}

#[tokio::test]
async fn one_instance_acts_and_another_takes_over_within_a_lease_after_sigkill() {
    let c = ClusterFixture::new("haover", 1, 1);
    let (world, _daemon, m, mut a, b, _) = two_instances(&c, "vm-cloned").await;

    // a cloned a VM and stopped before configuring it; b, a follower, waits. Kill a: half made.
    assert!(
        b.log().contains("competing for the Lease"),
        "b did not start as a candidate:\n{}",
        b.log()
    );
    // The follower says so on /readyz (200) and names the leader; `kiln status` too.
    let body: Value = until(
        Duration::from_secs(10),
        "b's /readyz answers 200",
        async || {
            let r = reqwest::get(format!("{}/readyz", b.api)).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json().await.ok()
        },
    )
    .await;
    assert_eq!(body["role"], "follower", "{body}");
    assert!(a.owns(body["leader"].as_str()), "{body}");
    assert_eq!(b.ha_leader_metric().await, "0");
    let status = kiln()
        .args(["status", "--config"])
        .arg(&b.config)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let leader_line = status
        .lines()
        .find(|l| l.starts_with("leader:"))
        .unwrap_or("");
    assert!(a.owns(leader_line.split_whitespace().nth(1)), "{status}");
    // A follower is read-only through its API too: a removal sent to b is refused (503, naming
    // why), and the remote does not move.
    let tip = git(&world.repos.bare, &["rev-parse", "main"]);
    let refused = reqwest::Client::new()
        .delete(format!("{}/api/v1/clusters/haover", b.api))
        .bearer_auth("ha-e2e-api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "not_leader", "{refused}");
    assert_eq!(git(&world.repos.bare, &["rev-parse", "main"]), tip);
    // An observation window, not a wait for anything: a is frozen but its Lease is still valid
    // (b counts 3s from when it saw a's last renewal), so for this half second b must write nothing,
    // however much a left half-done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = wall_now();
    let killed = Instant::now();
    a.kill9();
    until(
        LEASE + RETRY + MEASURE_SLACK,
        "b takes the Lease",
        async || {
            let h = m.holder().await;
            b.owns(h.as_deref()).then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL: {took:?} (lease 3s + retry 600ms)");
    until(
        Duration::from_secs(5),
        "b's kiln_ha_leader turns 1",
        async || (b.ha_leader_metric().await == "1").then_some(()),
    )
    .await;

    // b converges what a left half-done.
    until(
        Duration::from_secs(180),
        "b converges the cluster",
        async || (b.phase(&c.name).as_deref() == Some("Ready")).then_some(()),
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);

    // Exactly one acted at any moment: a before its death, b after it, nobody else.
    let all = writes(&world);
    let by = |i: &Instance| all.iter().filter(|w| w.0 == i.token_id).count();
    assert!(by(&a) > 0 && by(&b) > 0, "a: {}, b: {}", by(&a), by(&b));
    for (token, at, method, path) in &all {
        match token {
            t if *t == a.token_id => {
                assert!(*at < killed_at, "a wrote after its death: {method} {path}")
            }
            t if *t == b.token_id => {
                assert!(*at > killed_at, "b wrote while a led: {method} {path}")
            }
            other => panic!("a write from {other:?}: {method} {path}"),
        }
    }
    // The same for Vault, from its audit log: a wrote the cluster's secrets before it died, b
    // what the cluster's convergence added after it.
    let vault = vault_writes(&world);
    let by = |i: &Instance| vault.iter().filter(|w| w.0 == i.vault_name).count();
    eprintln!("Vault writes audited: a {}, b {}", by(&a), by(&b));
    assert!(
        by(&a) > 0 && by(&b) > 0,
        "Vault writes by a: {}, by b: {}",
        by(&a),
        by(&b)
    );
    for (name, at, op, path) in &vault {
        match name {
            n if *n == a.vault_name => {
                assert!(
                    *at < killed_at,
                    "a wrote to Vault after its death: {op} {path}"
                )
            }
            n if *n == b.vault_name => {
                assert!(*at > killed_at, "b wrote to Vault while a led: {op} {path}")
            }
            other => panic!("a Vault write from {other:?}: {op} {path}"),
        }
    }
    let authors = authors(&world);
    assert!(authors.contains(&a.email), "a pushed nothing: {authors:?}");
    for e in authors.iter().filter(|e| e.starts_with("kiln")) {
        assert!(e == &a.email || e == &b.email, "a commit by {e}");
    }
    assert!(
        b.log().contains("acquired the Lease"),
        "b never said it leads:\n{}",
        b.log()
    );

    // A clean stop (SIGTERM) gives the Lease up once the engine is done, so a successor need not
    // wait out a whole lease.
    b.signal("-TERM");
    until(
        Duration::from_secs(20),
        "b releases the Lease",
        async || m.holder().await.is_none().then_some(()),
    )
    .await;
    assert!(b.log().contains("released the Lease"), "{}", b.log());
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_writes_nothing_after_it_resumes() {
    let c = ClusterFixture::new("hapause", 1, 1);
    let (world, _daemon, m, a, b, a_led) = two_instances(&c, "vm-cloned").await;

    // a is frozen between a clone and that VM's configuration: on resume, its very next request
    // would configure the VM.
    let (a_last_seen, b_first_seen) = takeover(&m, &a, &b, a_led).await;
    let a_commits = authors(&world).iter().filter(|e| **e == a.email).count();
    let resumed_at = wall_now();
    a.signal("-CONT");

    until(
        Duration::from_secs(30),
        "a notices it lost the Lease",
        async || a.log().contains("no longer holds the Lease").then_some(()),
    )
    .await;
    until(
        Duration::from_secs(180),
        "b converges the cluster",
        async || (b.phase(&c.name).as_deref() == Some("Ready")).then_some(()),
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);

    let late: Vec<_> = writes(&world)
        .into_iter()
        .filter(|(t, at, ..)| *t == a.token_id && *at >= resumed_at)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote to Proxmox after SIGCONT: {late:?}\n{}",
        a.log()
    );
    assert_eq!(
        authors(&world).iter().filter(|e| **e == a.email).count(),
        a_commits,
        "the old leader pushed after SIGCONT"
    );
    // Vault, from its audit log: a's writes all fall before b was seen leading (so before a
    // resumed), b's all after a was last seen leading; no other token wrote.
    let vault = vault_writes(&world);
    eprintln!("Vault writes audited: {vault:?}");
    assert!(
        vault.iter().any(|w| w.0 == a.vault_name) && vault.iter().any(|w| w.0 == b.vault_name),
        "a Vault write by each instance expected: {:?}",
        vault.iter().map(|w| &w.0).collect::<Vec<_>>()
    );
    for (name, at, op, path) in &vault {
        match name {
            n if *n == a.vault_name => assert!(
                *at < b_first_seen && *at < resumed_at,
                "the old leader wrote to Vault {:.3}s after b was seen leading: {op} {path}\n{}",
                at - b_first_seen,
                a.log()
            ),
            n if *n == b.vault_name => assert!(
                *at > a_last_seen,
                "b wrote to Vault while a led: {op} {path}"
            ),
            other => panic!("a Vault write from {other:?}: {op} {path}"),
        }
    }
    // The refusal is what a did on resuming: the test proves something only if a had a write to make.
    until(
        Duration::from_secs(60),
        "a's write refused by its gate",
        async || a.log().contains("withheld").then_some(()),
    )
    .await;
}

/// The paused-leader case where what the old leader would do next is a Vault write: `a` is frozen
/// at `point`, on resume its next request would write `next` to Vault. That write must be
/// withheld (the gate's refusal names `withheld`), and the audit log must show every write of a's
/// token before b led, every write of b's after a last did; b finishes what a left.
async fn a_leader_paused_before_a_vault_write(name: &str, point: &'static str, withheld: &str) {
    let c = ClusterFixture::new(name, 1, 1);
    let (world, _daemon, m, a, b, a_led) = two_instances(&c, point).await;
    let (a_last_seen, b_first_seen) = takeover(&m, &a, &b, a_led).await;
    let resumed_at = wall_now();
    a.signal("-CONT");
    until(
        Duration::from_secs(30),
        "a notices it lost the Lease",
        async || a.log().contains("no longer holds the Lease").then_some(()),
    )
    .await;
    until(
        Duration::from_secs(180),
        "b converges the cluster",
        async || (b.phase(&c.name).as_deref() == Some("Ready")).then_some(()),
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);

    let vault = vault_writes(&world);
    eprintln!("Vault writes audited: {vault:?}");
    for (name, at, op, path) in &vault {
        match name {
            n if *n == a.vault_name => assert!(
                *at < b_first_seen && *at < resumed_at,
                "the old leader wrote to Vault {:.3}s after b was seen leading: {op} {path}\n{}",
                at - b_first_seen,
                a.log()
            ),
            n if *n == b.vault_name => assert!(
                *at > a_last_seen,
                "b wrote to Vault while a led: {op} {path}"
            ),
            other => panic!("a Vault write from {other:?}: {op} {path}"),
        }
    }
    // b, not a, finished a's half-done step: the bundle's metadata (its cluster-uid mirror or its
    // bootstrapped-at marker) is b's write.
    let bundle = format!("{VAULT_MOUNT}/metadata/kubernetes/{}/secrets", c.name);
    assert!(
        vault
            .iter()
            .any(|w| w.0 == b.vault_name && w.2 == "patch" && w.3 == bundle),
        "b never wrote the bundle's metadata: {vault:?}"
    );
    // The refusal is what a did on resuming: the test proves something only if a had a Vault
    // write to make.
    until(
        Duration::from_secs(30),
        "a's Vault write refused by its gate",
        async || a.log().contains(withheld).then_some(()),
    )
    .await;
}

/// Frozen after etcd's Bootstrap answered, before the `bootstrapped-at` marker (a metadata patch
/// through the gated store, which refuses it as an operation).
#[tokio::test]
async fn a_leader_paused_before_a_vault_write_writes_nothing_to_vault_after_it_resumes() {
    a_leader_paused_before_a_vault_write(
        "havault",
        "etcd-bootstrapped",
        "a secret store write withheld",
    )
    .await;
}

/// Frozen inside one store operation, between the bundle's value and its custom metadata: the
/// operation passed the gate as the leader, so only the gate on each Vault request (the metadata
/// PATCH) stops it. Without that one, a wrote the metadata 7 ms after resuming.
#[tokio::test]
async fn a_leader_paused_inside_a_vault_write_sends_no_more_of_it_after_it_resumes() {
    a_leader_paused_before_a_vault_write(
        "havaultmid",
        "secret-written",
        "a Vault metadata write withheld",
    )
    .await;
}

/// A TCP relay in front of the management API for one instance; `cut` drops every connection and
/// refuses new ones, as a network partition between that host and the management cluster would.
struct Relay {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The management API's address, from the kubeconfig `kiln sim kubernetes` wrote.
fn server_addr(kubeconfig: &Path) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("a server line");
    line.parse().unwrap()
}

#[tokio::test]
async fn a_leader_cut_from_the_management_api_stops_within_its_renew_deadline() {
    let c = ClusterFixture::new("hacut", 1, 1);
    let world = World::start_audited(vec![c.clone()]).await;
    let daemon = GitDaemon::start(&world.repos);
    let m = Management::start(world.dir.path()).await;
    // a reaches the management API through a relay the test can cut; b directly.
    let direct = server_addr(&m.ha.kubeconfig_file);
    let relay = Relay::start(direct).await;
    let relayed = world.dir.path().join("relayed.kubeconfig");
    std::fs::write(
        &relayed,
        std::fs::read_to_string(&m.ha.kubeconfig_file)
            .unwrap()
            .replace(&direct.to_string(), &relay.addr.to_string()),
    )
    .unwrap();
    let a = Instance::spawn_with(&world, "a", &daemon.url(), &relayed, Some("vm-cloned")).await;
    until(Duration::from_secs(30), "a holds the Lease", async || {
        let h = m.holder().await;
        a.owns(h.as_deref()).then_some(())
    })
    .await;
    let b = Instance::spawn(&world, "b", &daemon.url(), &m, None).await;
    until(
        Duration::from_secs(120),
        "a pauses after its first clone",
        async || a.log().contains("KILN PAUSED AT vm-cloned").then_some(()),
    )
    .await;

    // Cut while a is in the middle of making a VM, then let it run on: it may finish what its
    // renew deadline still covers, and nothing after.
    let cut_at = wall_now();
    let cut = Instant::now();
    relay.cut();
    a.signal("-CONT");
    until(
        Duration::from_secs(2) + MEASURE_SLACK,
        "a stops acting within its renew deadline (2s)",
        async || a.log().contains("no longer holds the Lease").then_some(()),
    )
    .await;
    eprintln!("a stopped acting {:?} after the cut", cut.elapsed());
    until(
        LEASE + RETRY + MEASURE_SLACK,
        "b takes the Lease",
        async || {
            let h = m.holder().await;
            b.owns(h.as_deref()).then_some(())
        },
    )
    .await;
    eprintln!("b took the Lease {:?} after the cut", cut.elapsed());
    until(
        Duration::from_secs(180),
        "b converges the cluster",
        async || (b.phase(&c.name).as_deref() == Some("Ready")).then_some(()),
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);

    let all = writes(&world);
    let last_a = all
        .iter()
        .filter(|w| w.0 == a.token_id)
        .map(|w| w.1)
        .fold(f64::MIN, f64::max);
    let first_b = all
        .iter()
        .filter(|w| w.0 == b.token_id)
        .map(|w| w.1)
        .fold(f64::MAX, f64::min);
    assert!(
        last_a < cut_at + 2.0,
        "a wrote {:.3}s after the cut, past its renew deadline",
        last_a - cut_at
    );
    // Not in the same second: a's window closed a third of a lease (1s) before b could take over.
    assert!(
        first_b - last_a >= 1.0,
        "a's last write and b's first are {:.3}s apart",
        first_b - last_a
    );
    for (token, _, method, path) in &all {
        assert!(
            *token == a.token_id || *token == b.token_id,
            "a write from {token:?}: {method} {path}"
        );
    }
    // Vault by the same measure, Proxmox and Vault writes taken together: a's last within its
    // renew deadline of the cut, b's first a second after it.
    let vault = vault_writes(&world);
    eprintln!("Vault writes audited: {vault:?}");
    for (name, _, op, path) in &vault {
        assert!(
            *name == a.vault_name || *name == b.vault_name,
            "a Vault write from {name:?}: {op} {path}"
        );
    }
    let last_a_any = vault
        .iter()
        .filter(|w| w.0 == a.vault_name)
        .map(|w| w.1)
        .fold(last_a, f64::max);
    let first_b_any = vault
        .iter()
        .filter(|w| w.0 == b.vault_name)
        .map(|w| w.1)
        .fold(first_b, f64::min);
    assert!(
        last_a_any < cut_at + 2.0,
        "a wrote (Proxmox or Vault) {:.3}s after the cut, past its renew deadline",
        last_a_any - cut_at
    );
    assert!(
        first_b_any - last_a_any >= 1.0,
        "a's last write and b's first (Proxmox or Vault) are {:.3}s apart",
        first_b_any - last_a_any
    );
    // A bootstrap step waits for its node before it calls Bootstrap: a starts it as the leader and
    // reaches the call seconds after losing the Lease. The gate on the Talos call refuses it there.
    let log = a.log();
    let after_loss: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("no longer holds the Lease"))
        .filter(|l| l.contains("etcd bootstrapped") || l.contains("applied the machine config"))
        .collect();
    assert!(
        after_loss.is_empty(),
        "a changed a node after losing the Lease: {after_loss:?}"
    );
    assert_bootstraps(&world, 1);
}

/// The records are shared (`{prefix}/_kiln/records` in Vault, docs/ha.md): a file removed while `a`
/// led, whose decommission `a` began — the removal commit pushed, nothing destroyed yet — is
/// finished by `b` after `a` dies, though `b` never led before and so never recorded the cluster
/// itself. With records in each instance's own `state_dir` only, `b` would not know the cluster's
/// VMs are kiln's to destroy and would leave them running for ever.
#[tokio::test]
async fn a_decommission_the_old_leader_began_is_finished_by_the_new_one() {
    let c = ClusterFixture::new("hadecom", 1, 0);
    let world = World::start_audited(vec![c.clone()]).await;
    // The only cluster's file goes: allowed to decommission it (DESIGN §7, `allow_empty`).
    world.write_config(true);
    let daemon = GitDaemon::start(&world.repos);
    let m = Management::start(world.dir.path()).await;
    let mut a = Instance::spawn(&world, "a", &daemon.url(), &m, Some("decommission-started")).await;
    until(
        Duration::from_secs(30),
        "instance a holds the Lease",
        async || a.owns(m.holder().await.as_deref()).then_some(()),
    )
    .await;
    let b = Instance::spawn(&world, "b", &daemon.url(), &m, None).await;
    until(
        Duration::from_secs(180),
        "a converges the cluster",
        async || (a.phase(&c.name).as_deref() == Some("Ready")).then_some(()),
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);
    // b, a follower, never ran a cycle: what it knows of the cluster can only come from a.
    let b_records = world.dir.path().join("state-b").join("records.json");
    assert!(
        !std::fs::read_to_string(&b_records)
            .unwrap_or_default()
            .contains("\"hadecom\""),
        "b recorded the cluster itself"
    );

    world.delete_clusters(&[&c.name]);
    until(
        Duration::from_secs(60),
        "a begins the decommission",
        async || {
            a.log()
                .contains("KILN PAUSED AT decommission-started")
                .then_some(())
        },
    )
    .await;
    assert_exact_vms(&world, &[&c], &[]);
    let killed_at = wall_now();
    a.kill9();

    until(
        Duration::from_secs(120),
        "b destroys the removed cluster's VMs",
        async || world.vms().keys().all(|id| *id == 9000).then_some(()),
    )
    .await;
    until(
        Duration::from_secs(30),
        "b drops the cluster from the shared records",
        async || {
            let (code, body) = world
                .bao
                .api_status(
                    "GET",
                    &format!("{VAULT_MOUNT}/data/kubernetes/_kiln/records"),
                    None,
                )
                .await;
            assert_eq!(code, 200, "no shared records: {body:?}");
            let text = body?["data"]["data"]["records.json"].as_str()?.to_owned();
            (!text.contains("\"hadecom\"")).then_some(())
        },
    )
    .await;
    // b did it, after a's death; a wrote nothing to Proxmox after it.
    let all = writes(&world);
    let destroys: Vec<_> = all
        .iter()
        .filter(|(_, _, method, path)| method == "DELETE" && path.contains("/qemu/"))
        .collect();
    assert!(!destroys.is_empty(), "no VM was destroyed: {all:?}");
    for (token, at, method, path) in &destroys {
        assert_eq!(token, &b.token_id, "{method} {path}");
        assert!(*at > killed_at, "{method} {path} before a's death");
    }
    // Retained (the default): the secrets are marked, not destroyed.
    let marked = world
        .vault_metadata("hadecom", "secrets")
        .await
        .expect("the bundle's metadata");
    assert!(
        marked["custom_metadata"]["kiln-decommissioned-at"].is_string(),
        "{marked}"
    );
}
