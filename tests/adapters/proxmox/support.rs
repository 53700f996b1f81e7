//! Starts the pinned fakepve through `scripts/fakepve_launcher.py` on a free loopback port, with a
//! certificate signed by a throw-away CA made here, and drives its control channel (stdin/stdout JSON
//! lines). The process dies with the test (kill on drop; closing stdin also stops it).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use kiln::proxmox::tls::Trust;
use kiln::proxmox::{Api, PveAdapter, RetryPolicy};
use kiln::redact::Secret;
use serde_json::{Value, json};

pub const TOKEN_ID: &str = "kiln@pve!ci";
pub const TOKEN_SECRET: &str = "0b7c1f5e-kiln-test-token";

fn venv() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = dir.join("bin/python");
    assert!(
        python.exists(),
        "no test virtualenv at {}: run scripts/setup-test-env (it installs the pinned fakepve)",
        dir.display()
    );
    dir
}

pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca_pem: Vec<u8>,
    pub leaf_der: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1, as PVE's pve-root-ca and node certificate.
pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let cert = dir.path().join("pve.crt");
    let key = dir.path().join("pve.key");
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem().into_bytes(),
        leaf_der: leaf.der().to_vec(),
        cert,
        key,
        _dir: dir,
    }
}

struct Pipes {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

pub struct FakePve {
    child: Child,
    pipes: Mutex<Pipes>,
    pub port: u16,
    pub pki: Pki,
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
pub struct Options {
    pub nodes: Vec<&'static str>,
    pub templates: Vec<&'static str>,
}

impl FakePve {
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        let venv = venv();
        let pki = pki();
        let launcher =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fakepve_launcher.py");
        let mut cmd = Command::new(venv.join("bin/python"));
        cmd.arg(&launcher)
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .arg("--token")
            .arg(format!("{TOKEN_ID}={TOKEN_SECRET}"));
        for n in &opts.nodes {
            cmd.arg("--node").arg(n);
        }
        for t in &opts.templates {
            cmd.arg("--template").arg(t);
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
            .unwrap_or_else(|| panic!("launcher did not start: {line:?}"))
            .parse()
            .unwrap();
        let pve = Self {
            child,
            pipes: Mutex::new(Pipes { stdin, stdout }),
            port,
            pki,
        };
        // Every test meets a least-privilege token, as kiln's operators are told to make one: the
        // list for the templates started with, on a datacenter with no user-tag-access.
        let templates: Vec<u32> = if opts.templates.is_empty() {
            vec![9000]
        } else {
            opts.templates
                .iter()
                .map(|t| t.split('@').next().unwrap().parse().unwrap())
                .collect()
        };
        let mut acl = least_privilege(
            templates[0],
            "/vms",
            "local-lvm",
            &["/sdn/zones/localnetwork/vmbr0"],
        );
        acl.extend(
            templates[1..]
                .iter()
                .map(|t| (format!("/vms/{t}"), vec!["VM.Clone", "VM.Audit"])),
        );
        pve.set_acl(&acl);
        pve
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Sends one control command; panics with the launcher's message on error.
    pub fn ctl(&self, cmd: Value) -> Value {
        let mut p = self.pipes.lock().unwrap();
        writeln!(p.stdin, "{cmd}").unwrap();
        p.stdin.flush().unwrap();
        let mut line = String::new();
        p.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if let Some(e) = v.get("error") {
            panic!("launcher command {cmd} failed: {e}");
        }
        v["ok"].clone()
    }

    pub fn vm(&self, vmid: u32) -> Value {
        self.ctl(json!({"cmd": "vm", "vmid": vmid}))
    }

    /// (method, path) of every request the fake saw.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.ctl(json!({"cmd": "requests"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Requests other than GET whose path names this VMID.
    pub fn writes_to(&self, vmid: u32) -> Vec<(String, String)> {
        let needle = format!("/qemu/{vmid}");
        self.requests()
            .into_iter()
            .filter(|(m, p)| {
                m != "GET" && (p.contains(&format!("{needle}/")) || p.ends_with(&needle))
            })
            .collect()
    }

    /// Replaces the token's ACL with these entries (fakepve's `grant()` per path): from then on every
    /// call is checked against PVE's schema permissions.
    pub fn set_acl(&self, entries: &[(String, Vec<&str>)]) {
        self.ctl(json!({"cmd": "acl", "user": TOKEN_ID, "entries": entries}));
    }

    pub fn api(&self) -> Api {
        Api::new(
            &self.url(),
            TOKEN_ID,
            Secret::new(TOKEN_SECRET),
            &Trust::CaPem(self.pki.ca_pem.clone()),
        )
        .unwrap()
        .with_retry(fast_retry())
    }

    pub fn adapter(&self) -> PveAdapter {
        PveAdapter::new(
            self.api(),
            Duration::from_secs(60),
            Duration::from_secs(5),
            0,
        )
    }
}

/// Short pauses: the fake answers in microseconds, and a test must not wait real backoff.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 8,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        jitter: 0.0,
    }
}

/// DESIGN.md §3's list, one ACL entry per path: clones of `template`, the VM privileges on `vms`
/// (`/vms`, a pool, or one `/vms/<vmid>`), space on `storage`, `SDN.Use` on each of `sdn`, and
/// `Sys.Audit` on `/`. No `Sys.Modify`: a default datacenter's tag policy is `free`.
pub fn least_privilege(
    template: u32,
    vms: &str,
    storage: &str,
    sdn: &[&str],
) -> Vec<(String, Vec<&'static str>)> {
    let mut acl = vec![
        ("/".to_owned(), vec!["Sys.Audit"]),
        (format!("/vms/{template}"), vec!["VM.Clone", "VM.Audit"]),
        (
            vms.to_owned(),
            kiln::proxmox::preflight::VM_PRIVILEGES.to_vec(),
        ),
        (
            format!("/storage/{storage}"),
            vec!["Datastore.AllocateSpace"],
        ),
    ];
    acl.extend(sdn.iter().map(|p| ((*p).to_owned(), vec!["SDN.Use"])));
    acl
}
