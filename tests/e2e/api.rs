//! The HTTP API of issue 28 over real HTTP (DESIGN §8): the `kiln run` daemon on the simulated lab
//! (`proxmox.backend = "simulated"`, `talos.backend = "simulated"`, `secrets.backend = "file"`) and
//! a real bare remote. Each write is judged by what the remote holds afterwards (`git` on the bare
//! repository, `kiln validate` on the committed file), never by what kiln answers alone.
//!
//! Addresses: `127.28.0.0/16` (issue 28), nothing else in the suites uses it; the daemon's own port
//! is picked free on `127.28.0.1`/`127.28.0.2`.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::gitrepo::{Repos, git};
use crate::support::kiln;

const TOKEN: &str = "e2e-api-token-0123456789";
const SECRET_MARKER: &str = "hunter2-do-not-echo-this-value";

/// The README's example body with its addresses moved onto loopback, where the simulated nodes
/// boot (as `kiln demo` moves the example clusters: 192.168.c.d → 127.28.c.d here).
fn example_body() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("examples/api/create-cluster.json"))
        .unwrap()
        .replace("192.168.2.", "127.28.2.")
}

/// A cluster of one control plane, as a full intent document, protected from deletion.
const PROTECTED_YAML: &str = "\
# sent as application/yaml
apiVersion: kiln.dev/v1alpha1
kind: Cluster
metadata:
  name: keep
spec:
  deletionProtection: true
  proxmox: {node: pve1, template: 9000, storage: local-lvm, bridge: vmbr0, vmidPrefix: 29}
  talos: {version: v1.13.9}
  kubernetes: {version: v1.34.1}
  network:
    vip: 127.28.3.100
    gateway: 127.28.3.254
    prefixLength: 24
    nameservers: [127.28.3.254]
  controlPlane:
    resources: {cores: 2, memoryGiB: 4, diskGiB: 20}
    nodes:
      - {ip: 127.28.3.1}
";

struct Site {
    dir: tempfile::TempDir,
    repos: Repos,
    config: PathBuf,
    state_dir: PathBuf,
    base: String,
}

/// `kiln run`, killed on drop.
struct ApiDaemon {
    child: Child,
    stderr: PathBuf,
}

impl ApiDaemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for ApiDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    /// An empty fleet (a README only) and kiln.toml for the lab, the API on `listen_ip`.
    fn new(listen_ip: Ipv4Addr, write_mode: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::empty();
        repos.write("README.md", "api e2e fleet\n");
        repos.commit_and_push("an empty fleet");
        let port = TcpListener::bind(SocketAddrV4::new(listen_ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token_file = dir.path().join("api-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let webhook_file = dir.path().join("webhook-secret");
        std::fs::write(&webhook_file, "e2e-webhook-secret\n").unwrap();
        let state_dir = dir.path().join("state");
        let config = dir.path().join("kiln.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
[git]
url = "file://{bare}"
branch = "main"
poll_interval = "2s"
author = "kiln <kiln@localhost>"
[proxmox]
backend = "simulated"
[talos]
backend = "simulated"
[secrets]
backend = "file"
[reconcile]
decommission_grace = "1h"
[defaults]
gateway = "127.28.2.254"
prefix_length = 24
nameservers = ["127.28.2.254"]
[argocd.vault]
server = "https://vault.example:8200"
[api]
listen = "{listen_ip}:{port}"
token_file = "{token}"
webhook_secret_file = "{webhook}"
write_mode = "{write_mode}"
"#,
                state = state_dir.display(),
                bare = repos.bare.display(),
                token = token_file.display(),
                webhook = webhook_file.display(),
            ),
        )
        .unwrap();
        kiln::config::Config::load(&config)
            .unwrap_or_else(|e| panic!("the test's kiln.toml does not load: {e}"));
        Self {
            dir,
            repos,
            config,
            state_dir,
            base: format!("http://{listen_ip}:{port}"),
        }
    }

    fn spawn(&self, k: usize) -> ApiDaemon {
        let stderr = self.dir.path().join(format!("daemon-{k}.stderr"));
        let child = kiln()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kiln run");
        ApiDaemon { child, stderr }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The file at `rev` in the remote, if there.
    fn file_at(&self, rev: &str, path: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.repos.bare)
            .args(["show", &format!("{rev}:{path}")])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }

    /// Waits for kiln's first commit (its Argo CD bootstrap files, pushed even for an empty
    /// fleet), after which the daemon moves the tracked branch only when intent changes.
    async fn wait_first_publish(&self, daemon: &ApiDaemon) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while git(&self.repos.bare, &["log", "-1", "--format=%ae", "main"]) != "kiln@localhost" {
            assert!(
                Instant::now() < deadline,
                "kiln never published:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn is_on_main(&self, commit: &str) -> bool {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&self.repos.bare)
            .args(["merge-base", "--is-ancestor", commit, "main"])
            .status()
            .unwrap()
            .success()
    }

    /// `kiln status` with this site's config: (exit code, stdout, stderr).
    fn status_cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = kiln()
            .arg("status")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Polls `GET /readyz` until the daemon's first cycle is done (so its own first commit, if any,
/// is pushed before the test looks at the remote); fails with its log if it dies or never is.
async fn wait_up(site: &Site, daemon: &mut ApiDaemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client().get(site.url("/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("kiln run exited ({status}):\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "the API never answered:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
    text: String,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("the API answers");
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text }
}

async fn post(site: &Site, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    send(
        client()
            .post(site.url("/api/v1/clusters"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn get(site: &Site, path: &str) -> Answer {
    send(client().get(site.url(path)).bearer_auth(TOKEN)).await
}

/// The `details[].path` of a 422, in order.
fn detail_paths(a: &Answer) -> Vec<String> {
    a.body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details in {}", a.text))
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_phase(site: &Site, name: &str, want: &str, daemon: &ApiDaemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let a = get(site, &format!("/api/v1/clusters/{name}/status")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let phase = a.body["phase"].as_str().unwrap().to_owned();
        if seen.last() != Some(&phase) {
            seen.push(phase.clone());
        }
        if phase == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {want} within {limit:?} (phases seen: {seen:?}); last status {}\n{}",
            a.text,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Create (seed body, YAML document), read, refuse, delete, all through one daemon; the created
/// cluster is then reconciled by the same daemon to Ready; `kiln status` asks the daemon, and
/// falls back to status.json once it is gone.
#[tokio::test]
async fn api_writes_are_validated_commits_the_daemon_reconciles() {
    let site = Site::new(Ipv4Addr::new(127, 28, 0, 1), "direct");
    let mut daemon = site.spawn(0);
    wait_up(&site, &mut daemon).await;
    site.wait_first_publish(&daemon).await;
    let before = site.repos.remote_tip();

    // The seed's example body: 202 with the commit, which holds a valid, readable cluster file.
    let created = post(&site, "application/json", example_body()).await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
    let commit = created.body["commit"].as_str().unwrap().to_owned();
    assert_eq!(created.body["path"], "clusters/analytics.yaml");
    assert_eq!(created.body["branch"], "main");
    assert_eq!(
        created.body["status_url"],
        "/api/v1/clusters/analytics/status"
    );
    // kiln's own commit of the new cluster's output may follow it at once.
    assert!(site.is_on_main(&commit));
    assert_eq!(
        git(&site.repos.bare, &["rev-parse", &format!("{commit}^")]),
        before,
        "one commit on the tip it fetched"
    );
    assert_eq!(
        git(
            &site.repos.bare,
            &[
                "diff-tree",
                "--no-commit-id",
                "--name-status",
                "-r",
                &commit
            ]
        ),
        "A\tclusters/analytics.yaml"
    );
    assert_eq!(
        git(
            &site.repos.bare,
            &["log", "-1", "--format=%an <%ae>%n%s", &commit]
        ),
        "kiln <kiln@localhost>\napi: create cluster analytics"
    );
    let file = site.file_at(&commit, "clusters/analytics.yaml").unwrap();
    assert!(
        file.starts_with("# Created through kiln's HTTP API"),
        "{file}"
    );
    for ip in [".181", ".182", ".183", ".184", ".185", ".186"] {
        assert!(file.contains(&format!("127.28.2{ip}")), "{ip} in\n{file}");
    }
    let check = site.dir.path().join("check");
    std::fs::create_dir_all(&check).unwrap();
    std::fs::write(check.join("analytics.yaml"), &file).unwrap();
    let validated = kiln().arg("validate").arg(&check).output().unwrap();
    assert!(
        validated.status.success(),
        "kiln validate refuses what the API committed:\n{}\n{file}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // At once (the daemon may not have fetched it yet) the cluster is known, and Pending until a
    // cycle reports on it; then the daemon, poked by the write, reconciles it.
    let first = get(&site, "/api/v1/clusters/analytics/status").await;
    let listed = get(&site, "/api/v1/clusters").await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}\nlist: {}\nremote: {}\n{}",
        first.text,
        listed.text,
        git(&site.repos.bare, &["log", "--format=%h %ae %s", "main"]),
        daemon.log()
    );
    assert!(
        listed.body["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "analytics"),
        "{}",
        listed.text
    );

    // Everything wrong with a body, at once, by field path; a wrong value never echoed.
    let bad = post(
        &site,
        "application/json",
        json!({
            "cluster_name": "Bad_Name", "vmid_prefix": 43, "control_plane_nodes": 0,
            "network_config": {"vip": SECRET_MARKER, "node_ips": ["127.28.2.50"]},
            "resource_config": {"cpu_cores": 1, "memory_gb": 1}
        })
        .to_string(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(bad.body["error"]["code"], "invalid");
    let mut paths = detail_paths(&bad);
    paths.sort();
    assert_eq!(
        paths,
        [
            "control_plane_nodes",
            "network_config.vip",
            "resource_config.storage_gb"
        ],
        "{}",
        bad.text
    );
    assert!(!bad.text.contains(SECRET_MARKER), "{}", bad.text);

    // Addresses another cluster holds: the given one and the one derived after it.
    let clash = post(
        &site,
        "application/json",
        json!({
            "cluster_name": "clash", "vmid_prefix": 44, "control_plane_nodes": 1, "worker_nodes": 1,
            "network_config": {"vip": "127.28.2.60", "node_ips": ["127.28.2.185"]},
            "resource_config": {"cpu_cores": 1, "memory_gb": 1, "storage_gb": 10}
        })
        .to_string(),
    )
    .await;
    assert_eq!(
        clash.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        clash.text
    );
    let paths = detail_paths(&clash);
    assert_eq!(paths[0], "network_config.node_ips[0]", "{}", clash.text);
    assert!(paths[1].starts_with("worker_nodes"), "{}", clash.text);
    assert!(
        clash.text.contains("used by cluster analytics"),
        "{}",
        clash.text
    );

    // A YAML document is checked with kiln validate's rules; errors carry the body's own lines, and
    // an unknown field's value is not echoed.
    let broken = PROTECTED_YAML
        .replace("name: keep", "name: broken")
        .replace("vmidPrefix: 29", "vmidPrefix: 31")
        .replace("127.28.3.100", "127.28.5.100")
        .replace("      - {ip: 127.28.3.1}", "      - {ip: 10.9.9.9}")
        .replace(
            "  deletionProtection: true\n",
            &format!("  deletionProtection: true\n  password: {SECRET_MARKER}\n"),
        );
    let refused = post(&site, "application/yaml", broken.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(!refused.text.contains(SECRET_MARKER), "{}", refused.text);
    let details = refused.body["error"]["details"].as_array().unwrap();
    let unknown = details
        .iter()
        .find(|d| d.to_string().contains("password"))
        .unwrap_or_else(|| panic!("{}", refused.text));
    let password_line = broken.lines().position(|l| l.contains("password")).unwrap() + 1;
    assert_eq!(unknown["line"], password_line, "{}", refused.text);

    // The same document, valid and protected, as YAML: committed with its comment kept.
    let keep = post(&site, "application/yaml", PROTECTED_YAML).await;
    assert_eq!(keep.status, StatusCode::ACCEPTED, "{}", keep.text);
    let keep_file = site
        .file_at(keep.body["commit"].as_str().unwrap(), "clusters/keep.yaml")
        .unwrap();
    assert!(
        keep_file.contains("# sent as application/yaml"),
        "{keep_file}"
    );

    // A name taken → 409; an unknown type → 415; more than 1 MiB → 413; nothing committed.
    let clusters_tree = || git(&site.repos.bare, &["rev-parse", "main:clusters"]);
    let tree = clusters_tree();
    // A different body of the same name: it would validate (it replaces the file it clashes
    // with), so only the existence check stands between it and an overwrite.
    let again = post(
        &site,
        "application/json",
        example_body().replace("\"vmid_prefix\": 42", "\"vmid_prefix\": 45"),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.body["error"]["code"], "conflict");
    let plain = post(&site, "text/plain", "hello").await;
    assert_eq!(
        plain.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        plain.text
    );
    let huge = post(&site, "application/json", vec![b' '; 1024 * 1024 + 1]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", huge.text);
    assert_eq!(huge.body["error"]["code"], "too_large");
    assert_eq!(clusters_tree(), tree, "a refused write commits nothing");

    // No token, a wrong one: 401, in the one error shape.
    for auth in [None, Some("wrong-token")] {
        let mut r = client().get(site.url("/api/v1/clusters"));
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        let a = send(r).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
        assert_eq!(a.body["error"]["code"], "unauthorized");
    }

    wait_phase(
        &site,
        "analytics",
        "Ready",
        &daemon,
        Duration::from_secs(240),
    )
    .await;

    // `kiln status` asks the daemon (no fallback note) and prints the usual table.
    let (code, out, err) = site.status_cli(&[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!err.contains("did not answer"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("analytics") && l.contains("Ready")),
        "{out}"
    );
    let (code, out, _) = site.status_cli(&["analytics"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("phase:    Ready"), "{out}");
    let (code, _, err) = site.status_cli(&["nosuch"]);
    assert_eq!(code, Some(1), "{err}");

    // DELETE: protected → 423, unknown → 404, otherwise the removal is committed.
    let del = |name: &str| {
        let req = client()
            .delete(site.url(&format!("/api/v1/clusters/{name}")))
            .bearer_auth(TOKEN);
        send(req)
    };
    let locked = del("keep").await;
    assert_eq!(locked.status, StatusCode::LOCKED, "{}", locked.text);
    assert_eq!(locked.body["error"]["code"], "protected");
    let missing = del("nosuch").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    let removed = del("analytics").await;
    assert_eq!(removed.status, StatusCode::ACCEPTED, "{}", removed.text);
    let commit = removed.body["commit"].as_str().unwrap();
    assert!(site.is_on_main(commit));
    assert_eq!(
        git(
            &site.repos.bare,
            &["diff-tree", "--no-commit-id", "--name-status", "-r", commit]
        ),
        "D\tclusters/analytics.yaml"
    );
    assert!(site.file_at(commit, "clusters/keep.yaml").is_some());
    wait_phase(
        &site,
        "analytics",
        "Deleting",
        &daemon,
        Duration::from_secs(60),
    )
    .await;

    // The access log has a line per request, and never a token or a body (issue 28).
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("kiln::server::access") && l.contains("/api/v1/clusters")),
        "no access log line:\n{log}"
    );
    for leaked in [TOKEN, "wrong-token", SECRET_MARKER] {
        assert!(!log.contains(leaked), "the log holds {leaked:?}:\n{log}");
    }

    // The daemon gone: `kiln status` says so and shows the status it saved.
    drop(daemon);
    let (code, out, err) = site.status_cli(&[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert!(err.contains("status.json"), "{err}");
    assert!(out.lines().any(|l| l.starts_with("analytics")), "{out}");
    assert!(site.state_dir.join("status.json").exists());
}

/// `api.write_mode = "branch"`: the file goes to `kiln/add-<name>` for review and the tracked
/// branch does not move. Then the OpenAPI document: valid by the OpenAPI specification's own
/// validator, and its paths and methods exactly the routes the daemon answers.
#[tokio::test]
async fn branch_mode_and_the_openapi_document_match_what_is_served() {
    let site = Site::new(Ipv4Addr::new(127, 28, 0, 2), "branch");
    let mut daemon = site.spawn(0);
    wait_up(&site, &mut daemon).await;
    site.wait_first_publish(&daemon).await;
    let main_before = site.repos.remote_tip();

    let body = example_body().replace("analytics", "review");
    let created = post(&site, "application/json", body).await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
    assert_eq!(created.body["branch"], "kiln/add-review");
    let commit = created.body["commit"].as_str().unwrap();
    assert_eq!(
        git(
            &site.repos.bare,
            &["rev-parse", "refs/heads/kiln/add-review"]
        ),
        commit
    );
    assert_eq!(
        git(&site.repos.bare, &["rev-parse", &format!("{commit}^")]),
        main_before
    );
    assert_eq!(site.repos.remote_tip(), main_before, "main did not move");
    assert!(site.file_at(commit, "clusters/review.yaml").is_some());
    assert!(site.file_at("main", "clusters/review.yaml").is_none());

    // An intent document sent as JSON is committed as YAML in the document's own field order,
    // and is a file `kiln validate` accepts.
    let doc: Value = serde_yaml::from_str(PROTECTED_YAML).unwrap();
    let created = post(&site, "application/json", doc.to_string()).await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
    assert_eq!(created.body["branch"], "kiln/add-keep");
    let file = site
        .file_at(
            created.body["commit"].as_str().unwrap(),
            "clusters/keep.yaml",
        )
        .unwrap();
    let keys: Vec<&str> = file
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
        .collect();
    assert_eq!(
        keys,
        [
            "apiVersion: kiln.dev/v1alpha1",
            "kind: Cluster",
            "metadata:",
            "spec:"
        ],
        "{file}"
    );
    let check = site.dir.path().join("check");
    std::fs::create_dir_all(&check).unwrap();
    std::fs::write(check.join("keep.yaml"), &file).unwrap();
    let validated = kiln().arg("validate").arg(&check).output().unwrap();
    assert!(
        validated.status.success(),
        "{}\n{file}",
        String::from_utf8_lossy(&validated.stderr)
    );
    assert_eq!(site.repos.remote_tip(), main_before, "main did not move");

    // The document, judged by openapi-spec-validator from the test venv.
    let doc = get(&site, "/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let file = site.dir.path().join("openapi.json");
    std::fs::write(&file, &doc.text).unwrap();
    let validator = crate::bao::venv().join("bin/openapi-spec-validator");
    assert!(
        validator.is_file(),
        "{} not found: run scripts/setup-test-env (or set KILN_TEST_VENV)",
        validator.display()
    );
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the OpenAPI document does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation is served (the router's fallback answers "no such route"; a
    // handler's own 404 names what it did not find), every other method of a documented path is
    // not, and an unknown path is the fallback's 404.
    let fallback =
        |a: &Answer| a.status == StatusCode::NOT_FOUND && a.text.contains("no such route");
    let paths = doc.body["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        let concrete = path.replace("{name}", "absent");
        for method in ["get", "post", "put", "patch", "delete"] {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let a = send(
                client()
                    .request(m, site.url(&concrete))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
            if item.get(method).is_some() {
                operations.push(format!("{method} {path}"));
                assert!(
                    !fallback(&a) && a.status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not served: {} {}",
                    a.status,
                    a.text
                );
            } else {
                assert!(
                    fallback(&a) || a.status == StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {} {}",
                    a.status,
                    a.text
                );
            }
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "delete /api/v1/clusters/{name}",
            "get /api/v1/clusters",
            "get /api/v1/clusters/{name}/backups",
            "get /api/v1/clusters/{name}/status",
            "get /api/v1/openapi.json",
            "get /healthz",
            "get /metrics",
            "get /readyz",
            "post /api/v1/clusters",
            "post /api/v1/clusters/{name}/backups",
            "post /api/v1/webhooks/git",
        ]
    );
    let unknown = get(&site, "/api/v1/nothing-here").await;
    assert!(fallback(&unknown), "{} {}", unknown.status, unknown.text);
    drop(daemon);
}
