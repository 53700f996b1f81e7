//! Issue 28: `kiln run`'s `/metrics`, `/readyz` and Git webhook through the binary, judged from
//! outside: `promtool` checks the exposition and the shipped rules, a real `prometheus` scrapes kiln
//! with the bearer token and fires the reconcile-failing alert, `git daemon` plays the forge.
//!
//! Each test is a site of its own: a bare remote, a one-node cluster on a loopback block of the
//! e2e allocator (`fixture::next_block`), simulated Proxmox and Talos in kiln's process, file
//! secrets, the API on `.200` of the same block. `promtool` and `prometheus` come from Debian's
//! `prometheus` package (`scripts/setup-test-env` installs it).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use serde_json::Value;

use crate::fixture::next_block;
use crate::gitrepo::{Repos, git};
use crate::support::kiln;

const TOKEN: &str = "metrics-test-token";
const HOOK_SECRET: &str = "metrics-test-hook-secret";
const CLUSTER: &str = "gauge";

/// A child process killed (and reaped) on drop, its stderr kept in a file for failure messages.
struct Proc {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf, what: &'static str) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Self { child, log, what }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last 40 lines) ---\n{}",
            self.what,
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on `ip`, read back from a bind to port 0.
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git daemon` serving `base` on `port` (chosen by the caller, so kiln can be pointed at a forge
/// that is not up yet), pushes on (kiln commits the generated files).
fn git_daemon(base: &Path, port: u16, log: PathBuf) -> Proc {
    let exec_path = git(base, &["--exec-path"]);
    let mut cmd = Command::new(Path::new(&exec_path).join("git-daemon"));
    cmd.arg("--reuseaddr")
        .arg("--export-all")
        .arg("--enable=receive-pack")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base);
    let d = Proc::spawn(cmd, log, "git daemon");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "git daemon did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn cluster_file(block: u8) -> String {
    format!(
        "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  proxmox:\n    \
         node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: {block}\n  \
         talos:\n    version: v1.13.9\n  kubernetes:\n    version: v1.34.1\n  network:\n    vip: 127.0.{block}.100\n    \
         gateway: 127.0.{block}.254\n    prefixLength: 24\n    nameservers: [127.0.{block}.254]\n  controlPlane:\n    \
         resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n      - {{ip: 127.0.{block}.1}}\n"
    )
}

/// One site: its remote, kiln.toml and the daemon's API address.
struct Site {
    repos: Repos,
    block: u8,
    api: SocketAddr,
    config: PathBuf,
    http: reqwest::Client,
}

impl Site {
    /// A remote holding one cluster file (or none), and kiln.toml pointing at `url` (the bare
    /// remote's path when `None`).
    fn new(with_cluster: bool) -> Self {
        let repos = Repos::empty();
        let block = next_block();
        repos.write("README.md", "fleet\n");
        if with_cluster {
            repos.write(&format!("clusters/{CLUSTER}.yaml"), &cluster_file(block));
        }
        repos.commit_and_push("a fleet");
        let ip = Ipv4Addr::new(127, 0, block, 200);
        let api = SocketAddr::from((ip, free_port(ip)));
        let config = repos.tmp.path().join("kiln.toml");
        Self {
            repos,
            block,
            api,
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn write_config(&self, url: &str, poll_interval: &str) {
        let dir = self.repos.tmp.path();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.join("hook-secret"), HOOK_SECRET).unwrap();
        let text = format!(
            "state_dir = {state:?}\n\
             [git]\nurl = {url:?}\npoll_interval = {poll_interval:?}\n\
             [proxmox]\nbackend = \"simulated\"\n\
             [talos]\nbackend = \"simulated\"\n\
             [secrets]\nbackend = \"file\"\n\
             [reconcile]\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n\
             [api]\nlisten = \"{api}\"\ntoken_file = {token:?}\nwebhook_secret_file = {secret:?}\n",
            state = dir.join("state").display().to_string(),
            api = self.api,
            token = dir.join("token").display().to_string(),
            secret = dir.join("hook-secret").display().to_string(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn spawn_kiln(&self) -> Proc {
        let mut cmd = kiln();
        cmd.args(["run", "--config"]).arg(&self.config);
        cmd.env("RUST_LOG", "info");
        Proc::spawn(cmd, self.repos.tmp.path().join("kiln.stderr"), "kiln run")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?))
    }

    async fn metrics(&self) -> String {
        let (code, body) = self
            .get("/metrics", Some(TOKEN))
            .await
            .expect("/metrics answers");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Polls `probe` every 50 ms until it returns `Some`, or panics with `what` and kiln's log.
    async fn wait_for<T, F, Fut>(
        &self,
        kiln: &mut Proc,
        limit: Duration,
        what: &str,
        mut probe: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            kiln.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}\n{}",
                kiln.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_ready_cluster(&self, kiln: &mut Proc, limit: Duration) {
        let ready = format!(r#"kiln_cluster_phase{{cluster="{CLUSTER}",phase="Ready"}} 1"#);
        self.wait_for(kiln, limit, "the cluster Ready in /metrics", || async {
            let (code, body) = self.get("/metrics", Some(TOKEN)).await?;
            (code == 200 && body.contains(&ready)).then_some(())
        })
        .await;
    }
}

/// The value of the one sample `series` (name and labels exactly as kiln writes them), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The sum of every sample of `name` whose labels contain all of `labels` (`key="value"` each).
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|want| labelset.split(',').any(|l| l == *want))
                .then(|| value.split(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian's `prometheus` package; scripts/setup-test-env installs it)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every `kiln_…` name the shipped rules and dashboard use, without the histogram suffixes.
fn names_used_by_examples() -> BTreeSet<String> {
    let re = regex::Regex::new(r"kiln_[a-z_]+").unwrap();
    let mut names = BTreeSet::new();
    for file in ["alerts.yml", "alerts.test.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(examples().join(file)).unwrap();
        for m in re.find_iter(&text) {
            let n = m.as_str();
            let n = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            names.insert(n.to_owned());
        }
    }
    names
}

fn hub_signature(body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    hex::encode(hmac::sign(&key, body).as_ref())
}

/// Reads `/metrics`, checks it with `promtool`, counts what a converged one-node cluster did, and
/// holds the shipped rules and dashboard to the names it serves; then a real Prometheus scrapes
/// kiln with the bearer token and fires KilnReconcileFailing once the cluster's file turns invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_kiln_and_fires_reconcile_failing_when_a_cluster_fails() {
    let site = Site::new(true);
    site.write_config(&site.repos.bare.display().to_string(), "1s");
    let mut kiln = site.spawn_kiln();
    site.wait_ready_cluster(&mut kiln, Duration::from_secs(90))
        .await;

    // The bearer token guards /metrics; /healthz and /readyz are open.
    let (code, _) = site.get("/metrics", None).await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = site.get("/metrics", Some("wrong")).await.unwrap();
    assert_eq!(code, 401);
    let (code, body) = site.get("/readyz", None).await.unwrap();
    assert_eq!(code, 200, "{body}");

    // Classic text format by default (what promtool reads); OpenMetrics to a scraper asking for it.
    let text = site.metrics().await;
    let om = site
        .http
        .get(site.url("/metrics"))
        .bearer_auth(TOKEN)
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok,
        "promtool check metrics:\n{out}\n--- /metrics ---\n{text}"
    );

    // What converging one node took, counted.
    assert!(
        sample(&text, r#"kiln_reconcile_cycles_total{result="ok"}"#) >= 1.0,
        "{text}"
    );
    for (kind, at_least) in [
        ("generate-secrets", 1.0),
        ("create-vm", 1.0),
        ("apply-config", 1.0),
        ("bootstrap", 1.0),
        ("store-credentials", 1.0),
    ] {
        let n = sample(
            &text,
            &format!(r#"kiln_actions_total{{kind="{kind}",result="ok"}}"#),
        );
        assert!(n >= at_least, "{kind}: {n}\n{text}");
    }
    assert_eq!(
        sample(&text, r#"kiln_actions_total{kind="bootstrap",result="ok"}"#),
        1.0,
        "one bootstrap"
    );
    for (system, op) in [
        ("proxmox", "GET"),
        ("proxmox", "POST"),
        ("git", "fetch"),
        ("git", "push"),
    ] {
        let n = sum(
            &text,
            "kiln_requests_total",
            &[&format!(r#"system="{system}""#), &format!(r#"op="{op}""#)],
        );
        assert!(n >= 1.0, "{system} {op}: {n}\n{text}");
    }
    assert!(
        sum(&text, "kiln_requests_total", &[r#"system="talos""#]) >= 2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "kiln_git_reachable"), 1.0);
    assert_eq!(sample(&text, r#"kiln_clusters{phase="Ready"}"#), 1.0);
    // The daemon keeps polling: a cycle may be running at the moment of the scrape.
    let running = sample(&text, "kiln_reconcile_cycle_running");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kiln_reconcile_cycle_running "))
            && (running == 0.0 || running == 1.0),
        "{running}\n{text}"
    );
    let tip = site.repos.remote_tip();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            r#"kiln_cluster_applied_revision{{cluster="{CLUSTER}",revision=""#
        ))),
        "no applied revision (tip {tip}):\n{text}"
    );
    for cred in ["kubeconfig", "talosconfig"] {
        let left = sample(
            &text,
            &format!(
                r#"kiln_credential_expires_in_seconds{{cluster="{CLUSTER}",credential="{cred}"}}"#
            ),
        );
        assert!(left > 300.0 * 86400.0, "{cred}: {left} s left\n{text}");
    }
    // Nothing secret or free-form in a label: the token and the secret never appear.
    assert!(!text.contains(TOKEN) && !text.contains(HOOK_SECRET));

    // The shipped rules pass promtool, and every metric they or the dashboard name is served.
    let rules = examples().join("alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules:\n{out}");
    let tests = examples().join("alerts.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "promtool test rules:\n{out}");
    let names = names_used_by_examples();
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            text.lines().any(|l| !l.starts_with('#')
                && [" ", "{", "_count "]
                    .iter()
                    .any(|s| l.starts_with(&format!("{n}{s}")))),
            "{n} (named in examples/monitoring) has no sample in /metrics:\n{text}"
        );
    }

    // A real Prometheus: scrape and evaluation every second, the shipped rules with every `for:`
    // cut to 1 s (KilnReconcileFailing waits 10 minutes as shipped), the token from a file.
    let dir = site.repos.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(&rules).unwrap();
    let for_re = regex::Regex::new(r"(?m)^(\s+)for: \S+$").unwrap();
    std::fs::write(
        dir.join("alerts.yml"),
        for_re.replace_all(&shipped, "${1}for: 1s").as_ref(),
    )
    .unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: kiln\n    authorization:\n      credentials_file: {token}\n    \
             static_configs:\n      - targets: [\"{api}\"]\n",
            token = dir.join("token").display(),
            api = site.api,
        ),
    )
    .unwrap();
    let prom_ip = Ipv4Addr::new(127, 0, site.block, 201);
    let prom_addr = SocketAddr::from((prom_ip, free_port(prom_ip)));
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={prom_addr}"))
    .current_dir(&dir);
    let mut prom = Proc::spawn(cmd, dir.join("prometheus.log"), "prometheus");
    let http = site.http.clone();
    let api = |path: &str| format!("http://{prom_addr}{path}");

    // The scrape works with the token (the target is up), and nothing fires while all is well.
    site.wait_for(
        &mut prom,
        Duration::from_secs(60),
        "prometheus scraping kiln (target up)",
        || {
            let http = http.clone();
            let url = api("/api/v1/query?query=up%7Bjob%3D%22kiln%22%7D");
            async move {
                let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                (v["data"]["result"][0]["value"][1] == "1").then_some(())
            }
        },
    )
    .await;
    let alerts = |http: reqwest::Client| async move {
        let v: Value = http
            .get(api("/api/v1/alerts"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["alerts"].as_array().cloned()
    };
    // Rules evaluated twice after the scrape that saw kiln up (Prometheus's own `lastEvaluation`,
    // same machine clock), so a rule that would fire on a healthy kiln has at least gone pending.
    let up_at = time::OffsetDateTime::now_utc();
    site.wait_for(
        &mut prom,
        Duration::from_secs(30),
        "two rule evaluations",
        || {
            let http = http.clone();
            async move {
                let v: Value = http
                    .get(api("/api/v1/rules"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let last = v["data"]["groups"][0]["lastEvaluation"].as_str()?;
                let last = time::OffsetDateTime::parse(
                    last,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                (last > up_at + Duration::from_secs(1)).then_some(())
            }
        },
    )
    .await;
    // Every rule evaluated without an error, and every dashboard query runs on this Prometheus
    // (with the dashboard's variables at what a single kiln gives them).
    let v: Value = http
        .get(api("/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for rule in v["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for target in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
    {
        let expr = target["expr"]
            .as_str()
            .unwrap()
            .replace("$job", "kiln")
            .replace("$instance", ".*");
        let v: Value = http
            .get(api("/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
    let before = alerts(http.clone()).await.expect("prometheus alerts");
    assert!(
        !before
            .iter()
            .any(|a| a["labels"]["alertname"] == "KilnReconcileFailing"
                || a["labels"]["alertname"] == "KilnClusterUnhealthy"
                || a["labels"]["alertname"] == "KilnNoRecentCycle"),
        "an alert on a healthy kiln: {before:?}"
    );

    // The cluster's file turns invalid: the cluster is Blocked with an error, and the alert fires.
    git(
        &site.repos.work,
        &["pull", "-q", "--rebase", "origin", "main"],
    );
    site.repos.write(
        &format!("clusters/{CLUSTER}.yaml"),
        &cluster_file(site.block).replace("version: v1.34.1", "version: not-a-version"),
    );
    site.repos.commit_and_push("break the cluster file");
    let firing = site
        .wait_for(
            &mut prom,
            Duration::from_secs(60),
            "KilnReconcileFailing firing",
            || {
                let http = http.clone();
                async move {
                    alerts(http).await?.into_iter().find(|a| {
                        a["labels"]["alertname"] == "KilnReconcileFailing" && a["state"] == "firing"
                    })
                }
            },
        )
        .await;
    assert_eq!(firing["labels"]["cluster"], CLUSTER, "{firing}");
    let text = site.metrics().await;
    assert_eq!(
        sample(
            &text,
            &format!(r#"kiln_cluster_reconcile_failing{{cluster="{CLUSTER}"}}"#)
        ),
        1.0
    );
    assert_eq!(sample(&text, r#"kiln_clusters{phase="Blocked"}"#), 1.0);
    kiln.assert_running();
}

/// The webhook: a bad signature is 401 and polls nothing; a good one (GitHub's header, then
/// Gitea's) is 202 and a poll follows within a second; a ping is answered without a poll; a body
/// over 1 MiB is 413; the eleventh poll in a minute is 429 with Retry-After. The remote is
/// `git daemon` and the poll interval an hour, so every fetch here is the webhook's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_git_webhook_polls_on_a_good_signature_only() {
    let site = Site::new(false);
    let port = free_port(Ipv4Addr::LOCALHOST);
    let _forge = git_daemon(
        site.repos.tmp.path(),
        port,
        site.repos.tmp.path().join("git-daemon.log"),
    );
    site.write_config(&format!("git://127.0.0.1:{port}/remote.git"), "1h");
    let mut kiln = site.spawn_kiln();
    site.wait_for(
        &mut kiln,
        Duration::from_secs(60),
        "/readyz 200",
        || async {
            let (code, _) = site.get("/readyz", None).await?;
            (code == 200).then_some(())
        },
    )
    .await;
    let fetches = || async {
        sum(
            &site.metrics().await,
            "kiln_requests_total",
            &[r#"system="git""#, r#"op="fetch""#],
        )
    };
    let hook = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let mut req = site.http.post(site.url("/api/v1/webhooks/git")).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let resp = req.send().await.expect("webhook answers");
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (code, retry_after, resp.text().await.unwrap())
        }
    };
    let push = br#"{"ref":"refs/heads/main"}"#.to_vec();

    // A wrong signature, and none at all: 401, and no poll in the second a good one gets one in.
    let before = fetches().await;
    let wrong = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"not-the-secret"), &push);
    let (code, _, body) = hook(
        push.clone(),
        vec![
            ("x-github-event", "push".into()),
            (
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(wrong.as_ref())),
            ),
        ],
    )
    .await;
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = hook(push.clone(), vec![("x-github-event", "push".into())]).await;
    assert_eq!(code, 401);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            fetches().await,
            before,
            "a refused delivery polled\n{}",
            kiln.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Good signatures: 202, then a fetch within a second of the answer.
    for headers in [
        vec![
            ("x-github-event", "push".to_owned()),
            (
                "x-hub-signature-256",
                format!("sha256={}", hub_signature(&push)),
            ),
        ],
        vec![
            ("x-gitea-event", "push".to_owned()),
            ("x-gitea-signature", hub_signature(&push)),
        ],
    ] {
        let before = fetches().await;
        let (code, _, body) = hook(push.clone(), headers).await;
        assert_eq!(code, 202, "{body}");
        let answered = Instant::now();
        site.wait_for(
            &mut kiln,
            Duration::from_secs(1),
            "a poll after a good delivery",
            || async { (fetches().await > before).then_some(()) },
        )
        .await;
        assert!(answered.elapsed() <= Duration::from_secs(1));
    }

    // A ping is answered and polls nothing; it uses no poll of the minute either.
    let ping = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let (code, _, body) = hook(
        ping.clone(),
        vec![
            ("x-github-event", "ping".into()),
            (
                "x-hub-signature-256",
                format!("sha256={}", hub_signature(&ping)),
            ),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pong"), "{body}");

    // Over 1 MiB declared: 413 at once, with the body still unsent (a raw socket sends the head
    // only and reads the answer), so nothing past the cap is ever read.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(site.api).await.unwrap();
        let head = format!(
            "POST /api/v1/webhooks/git HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             X-Hub-Signature-256: sha256={}\r\nContent-Length: {}\r\n\r\n",
            site.api,
            hub_signature(b""),
            1024 * 1024 + 1
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut answer))
            .await
            .expect("an answer before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    // Ten polls a minute: eight more pass, the eleventh is 429 with a Retry-After in seconds.
    for i in 0..8 {
        let (code, _, body) = hook(
            push.clone(),
            vec![("x-forgejo-signature", hub_signature(&push))],
        )
        .await;
        assert_eq!(code, 202, "delivery {}: {body}", i + 3);
    }
    let (code, retry_after, body) = hook(
        push.clone(),
        vec![("x-forgejo-signature", hub_signature(&push))],
    )
    .await;
    assert_eq!(code, 429, "{body}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=6).contains(&secs), "Retry-After {secs}");

    let text = site.metrics().await;
    for (result, n) in [
        ("accepted", 10.0),
        ("bad_signature", 2.0),
        ("ignored", 1.0),
        ("too_large", 1.0),
        ("rate_limited", 1.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"kiln_webhook_deliveries_total{{result="{result}"}}"#)
            ),
            n,
            "{result}\n{text}"
        );
    }
    kiln.assert_running();
}

/// A forge that is down when kiln starts: `/readyz` is 503 naming Git while `/healthz` is 200 and
/// `/metrics` serves; once `git daemon` comes up on the port, kiln fetches, reconciles the cluster
/// and turns ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_down_at_start_shows_in_readyz_and_kiln_catches_up_when_it_comes_back() {
    let site = Site::new(true);
    let port = free_port(Ipv4Addr::LOCALHOST);
    site.write_config(&format!("git://127.0.0.1:{port}/remote.git"), "1s");
    let mut kiln = site.spawn_kiln();

    let body: Value = site
        .wait_for(
            &mut kiln,
            Duration::from_secs(30),
            "/readyz 503 naming Git",
            || async {
                let (code, body) = site.get("/readyz", None).await?;
                let v: Value = serde_json::from_str(&body).ok()?;
                let names_git = v["problems"].as_array()?.iter().any(|p| {
                    p.as_str()
                        .is_some_and(|p| p.starts_with("git is unreachable"))
                });
                (code == 503 && names_git).then_some(v)
            },
        )
        .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["git"], "unreachable");
    let (code, _) = site.get("/healthz", None).await.unwrap();
    assert_eq!(code, 200);
    let text = site.metrics().await;
    assert_eq!(sample(&text, "kiln_git_reachable"), 0.0, "{text}");
    assert!(
        sample(
            &text,
            r#"kiln_request_errors_total{system="git",op="fetch"}"#
        ) >= 1.0
    );
    assert!(sample(&text, r#"kiln_reconcile_cycles_total{result="error"}"#) >= 1.0);
    assert_eq!(
        sum(&text, "kiln_actions_total", &[]),
        0.0,
        "nothing ran without Git"
    );

    let _forge = git_daemon(
        site.repos.tmp.path(),
        port,
        site.repos.tmp.path().join("git-daemon.log"),
    );
    site.wait_ready_cluster(&mut kiln, Duration::from_secs(90))
        .await;
    site.wait_for(
        &mut kiln,
        Duration::from_secs(15),
        "/readyz 200",
        || async {
            let (code, _) = site.get("/readyz", None).await?;
            (code == 200).then_some(())
        },
    )
    .await;
    let text = site.metrics().await;
    assert_eq!(sample(&text, "kiln_git_reachable"), 1.0);
}
