//! A real OpenBao dev server per test, on a free loopback port, killed on drop. Its root token is
//! random so the redaction test can search logs for it. [`Bao::start_audited`] adds a file audit
//! device, for tests that must tell which client wrote what.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn venv() -> PathBuf {
    std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"))
}

pub fn bao_binary() -> PathBuf {
    let bin = venv().join("bin/bao");
    assert!(
        bin.is_file(),
        "OpenBao `bao` binary not found at {}: run scripts/setup-test-env (or set KILN_TEST_VENV)",
        bin.display()
    );
    bin
}

/// A port whose neighbour (the dev server's cluster port) is free too, and that no other test in
/// this process was given (as a port or a neighbour), so parallel dev servers never collide.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        let clash = given.iter().any(|g| g.abs_diff(port) <= 1);
        if port < 65535 && !clash && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

pub struct Bao {
    child: Option<Child>,
    pub addr: String,
    pub root_token: String,
    pub dir: tempfile::TempDir,
    /// Present with `-dev-tls`: the CA that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// Present from [`Bao::start_audited`]: the file audit device's log, one JSON object a line.
    pub audit_log: Option<PathBuf>,
    http: reqwest::Client,
}

/// One write the audit device saw: who sent it (the token's display name), when (wall clock,
/// seconds since the epoch), the operation and the path. Values never appear here: the device
/// HMACs them, and this keeps only what names the request.
#[derive(Debug, Clone)]
pub struct AuditedWrite {
    pub display_name: String,
    pub at: f64,
    pub operation: String,
    pub path: String,
}

impl Bao {
    pub async fn start() -> Self {
        Self::start_on(free_port(), false).await
    }

    pub async fn start_tls() -> Self {
        Self::start_on(free_port(), true).await
    }

    pub async fn start_on(port: u16, tls: bool) -> Self {
        let root_token = format!("kiln-test-root-{:016x}", rand::random::<u64>());
        Self::start_with(port, tls, root_token).await
    }

    pub async fn start_with(port: u16, tls: bool, root_token: String) -> Self {
        Self::launch(port, tls, root_token, false).await
    }

    /// A plain dev server with a file audit device: every request, with the token's display name
    /// and metadata, lands in [`Bao::audit_log`]. OpenBao 2.x refuses to enable audit devices
    /// through its API, so the device is declared in a `-config` file beside the dev flags.
    pub async fn start_audited() -> Self {
        let root_token = format!("kiln-test-root-{:016x}", rand::random::<u64>());
        Self::launch(free_port(), false, root_token, true).await
    }

    async fn launch(port: u16, tls: bool, root_token: String, audited: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let mut cmd = Command::new(bao_binary());
        cmd.arg("server")
            .arg(if tls { "-dev-tls" } else { "-dev" })
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut audit_log = None;
        if audited {
            let file = dir.path().join("audit.log");
            let config = dir.path().join("audit.hcl");
            std::fs::write(
                &config,
                format!(
                    "audit \"file\" \"kiln-test\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
                    file.display().to_string()
                ),
            )
            .unwrap();
            cmd.arg(format!("-config={}", config.display()));
            audit_log = Some(file);
        }
        let mut ca_file = None;
        if tls {
            let certs = dir.path().join("tls");
            std::fs::create_dir_all(&certs).unwrap();
            cmd.arg(format!("-dev-tls-cert-dir={}", certs.display()));
            ca_file = Some(certs.join("vault-ca.pem"));
        }
        let child = cmd.spawn().expect("start bao server -dev");
        let scheme = if tls { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{port}");
        let mut bao = Self {
            child: Some(child),

            addr,
            root_token,
            dir,
            ca_file,
            audit_log,
            http: reqwest::Client::new(),
        };
        bao.wait_ready().await;
        if let Some(file) = &bao.audit_log {
            // The device is declared, not merely accepted: the health probe above was audited.
            assert!(
                file.is_file(),
                "the audit device wrote nothing: {}",
                bao.log()
            );
        }
        bao
    }

    /// Every write (`create`, `update`, `patch`, `delete`) on `mount` the audit device logged, in
    /// the order it logged them; panics without an audit device. Request entries only: each
    /// request also has a response entry, and a write counts once.
    pub fn audited_writes(&self, mount: &str) -> Vec<AuditedWrite> {
        let file = self
            .audit_log
            .as_ref()
            .expect("audited_writes needs Bao::start_audited");
        let mount_point = format!("{}/", mount.trim_end_matches('/'));
        let text = std::fs::read_to_string(file).unwrap();
        text.lines()
            // The device may be mid-line while the test reads: an unparsable line is that one.
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "request")
            .filter(|e| e["request"]["mount_point"] == mount_point.as_str())
            .filter(|e| {
                matches!(
                    e["request"]["operation"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
            })
            .map(|e| {
                let time = e["time"].as_str().expect("an audit entry has a time");
                let at = time::OffsetDateTime::parse(
                    time,
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap_or_else(|err| panic!("audit time {time:?}: {err}"));
                AuditedWrite {
                    display_name: e["auth"]["display_name"].as_str().unwrap_or("").to_owned(),
                    at: at.unix_timestamp_nanos() as f64 / 1e9,
                    operation: e["request"]["operation"].as_str().unwrap().to_owned(),
                    path: e["request"]["path"].as_str().unwrap_or("").to_owned(),
                }
            })
            .collect()
    }

    /// A token of the root policy (the dev server's only one with every right kiln uses) whose
    /// display name tells the audit log who it is: OpenBao logs it as `token-<display_name>`.
    pub async fn create_named_token(&self, display_name: &str) -> String {
        let created = self
            .api(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({
                    "display_name": display_name,
                    "policies": ["root"],
                })),
            )
            .await
            .expect("token create answers a body");
        created["auth"]["client_token"]
            .as_str()
            .expect("a client token")
            .to_owned()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ca) = &self.ca_file
                && ca.is_file()
            {
                let pem = std::fs::read(ca).unwrap();
                let cert = reqwest::Certificate::from_pem(&pem).unwrap();
                self.http = reqwest::Client::builder()
                    .tls_certs_merge([cert])
                    .build()
                    .unwrap();
            }
            let ok = self
                .http
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bao server exited early ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "bao server did not become ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn unseal_key(&self) -> String {
        self.log()
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: ").map(str::to_owned))
            .expect("dev server prints its unseal key")
    }

    /// A file holding `content`, for the `*_file` settings.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{content}\n")).unwrap();
        p
    }

    pub fn root_token_file(&self) -> PathBuf {
        self.write_file("root-token", &self.root_token.clone())
    }

    /// A request as the operator (root token); panics on an error status.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let (code, json) = self.api_status(method, path, body).await;
        assert!(
            (200..300).contains(&code),
            "{method} {path}: HTTP {code} {json:?}"
        );
        json
    }

    pub async fn api_status(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Option<Value>) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("reach bao");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (code, serde_json::from_str(&text).ok())
    }

    /// Mounts KV v2 and waits out its brief post-mount upgrade, so tests start on a ready mount.
    pub async fn enable_kv2(&self, mount: &str) {
        self.api(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(serde_json::json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = self
                .api_status("GET", &format!("{mount}/metadata/kiln-ready-probe"), None)
                .await;
            if code == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mount {mount} not ready: HTTP {code} {body:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn seal(&self) {
        self.api("PUT", "sys/seal", None).await;
    }

    pub async fn unseal(&self) {
        let key = self.unseal_key();
        self.api("PUT", "sys/unseal", Some(serde_json::json!({ "key": key })))
            .await;
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}
