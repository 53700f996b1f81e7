//! fakepve through `scripts/fakepve_launcher.py` (the same launcher the tests use), with a throw-away
//! CA, task durations (`--time-scale`, `--task-secs`) and the control channel's `add_vms`,
//! `request_log` and `clear_requests`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

pub const TOKEN_ID: &str = "kiln@pve!bench";
pub const TOKEN_SECRET: &str = "5c1e0b7a-kiln-bench-token";

pub fn venv() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    assert!(
        dir.join("bin/python").exists(),
        "no virtualenv at {}: run scripts/setup-test-env, then `.venv/bin/pip install -r benches/requirements.txt`",
        dir.display()
    );
    dir
}

pub struct FakePve {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
    pub ca_pem: Vec<u8>,
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakePve {
    /// `task_secs`: (task type, PVE seconds), e.g. `("qmclone", 40.0)`.
    pub fn start(dir: &Path, time_scale: f64, task_secs: &[(&str, f64)]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // rcgen's default subject is the same for both certificates: OpenSSL (the Python baseline)
        // would then take the leaf for self-signed. PVE's are "pve-root-ca" and the node's name.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln bench CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pve1");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let cert = dir.join("pve.crt");
        let key = dir.join("pve.key");
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fakepve_launcher.py"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--token")
            .arg(format!("{TOKEN_ID}={TOKEN_SECRET}"))
            .arg("--time-scale")
            .arg(time_scale.to_string());
        for (t, s) in task_secs {
            cmd.arg("--task-secs").arg(format!("{t}={s}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the fakepve launcher");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the fakepve launcher did not start: {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            stdin,
            stdout,
            port,
            ca_pem: ca_cert.pem().into_bytes(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ctl(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if let Some(e) = v.get("error") {
            panic!("launcher command failed: {e}");
        }
        v["ok"].clone()
    }

    pub fn add_vms(&mut self, vms: Vec<Value>) {
        for chunk in vms.chunks(1000) {
            self.ctl(json!({"cmd": "add_vms", "vms": chunk}));
        }
    }

    /// (method, path, unix time) of every request since the last clear, in arrival order.
    pub fn requests(&mut self) -> Vec<(String, String, f64)> {
        self.ctl(json!({"cmd": "request_log"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_f64().unwrap(),
                )
            })
            .collect()
    }

    pub fn clear_requests(&mut self) {
        self.ctl(json!({"cmd": "clear_requests"}));
    }

    /// The token secret and CA as files, for kiln.toml's `*_file` keys.
    pub fn write_credentials(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let token = dir.join("pve-token");
        let ca = dir.join("pve-ca.pem");
        std::fs::write(&token, format!("{TOKEN_SECRET}\n")).unwrap();
        std::fs::write(&ca, &self.ca_pem).unwrap();
        (token, ca)
    }
}
