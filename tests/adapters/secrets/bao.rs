//! A real OpenBao dev server per test, on a free loopback port, killed on drop. Its root token is
//! random so the redaction test can search logs for it.

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
    http: reqwest::Client,
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
            http: reqwest::Client::new(),
        };
        bao.wait_ready().await;
        bao
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
