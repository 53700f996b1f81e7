//! Real repositories for the git tests: a bare remote on disk, a human's work clone, and the same
//! remote served by `git daemon` on loopback with its packet trace recorded on the serving side.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::config::GitConfig;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Human",
            "-c",
            "user.email=human@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap_or_else(|e| panic!("git is needed for these tests (apt-get install git): {e}"));
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

pub struct Repos {
    pub tmp: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
    pub state: PathBuf,
}

impl Repos {
    /// A remote with one cluster file, a template override and an unrelated file.
    pub fn new() -> Self {
        let r = Self::empty();
        r.write("clusters/alpha.yaml", "name: alpha\n");
        r.write("clusters/README.md", "not a cluster\n");
        r.write("templates/app.yaml.j2", "kind: {{ kind }}\n");
        r.write("README.md", "fleet\n");
        r.commit_and_push("add alpha");
        r
    }

    /// A bare remote on branch `main` with no commit yet, and a work clone pointing at it.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("remote.git");
        let work = tmp.path().join("work");
        let state = tmp.path().join("state");
        git(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "remote.git"],
        );
        git(tmp.path(), &["init", "-q", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self {
            tmp,
            bare,
            work,
            state,
        }
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Commits everything in the work tree and pushes; returns the new commit.
    pub fn commit_and_push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        self.remote_tip()
    }

    pub fn remote_tip(&self) -> String {
        git(&self.bare, &["rev-parse", "refs/heads/main"])
    }

    pub fn config(&self, url: &str) -> GitConfig {
        GitConfig {
            url: url.to_string(),
            branch: "main".into(),
            clusters_dir: "clusters".into(),
            output_dir: "gitops".into(),
            poll_interval: Duration::from_secs(30),
            author: "kiln <kiln@localhost>".into(),
            ssh_key_file: None,
            known_hosts_file: None,
            token_file: None,
        }
    }

    pub fn local_config(&self) -> GitConfig {
        self.config(self.bare.to_str().unwrap())
    }
}

/// `git daemon` serving the folder holding `remote.git`, pushes enabled, killed on drop. Its
/// `GIT_TRACE_PACKET` (inherited by the `upload-pack` it runs) shows what each fetch asked for.
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub trace: PathBuf,
}

impl Daemon {
    pub fn start(repos: &Repos) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let trace = repos.tmp.path().join("daemon-packets.trace");
        // `git daemon` would run `git-daemon` as a child and outlive a kill: start it directly.
        let exec_path = git(repos.tmp.path(), &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", repos.tmp.path().display()))
            .arg(repos.tmp.path())
            .env("GIT_TRACE_PACKET", &trace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("`git daemon` is needed for these tests (it ships with git)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "git daemon did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, trace }
    }

    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }

    /// How many times the serving side received each v2 command so far.
    pub fn commands(&self, command: &str) -> usize {
        let needle = format!("< command={command}");
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("upload-pack") && l.contains(&needle))
            .count()
    }

    /// Lines of the serving side's trace that carry pack data to the client.
    pub fn pack_lines(&self) -> usize {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("upload-pack> packfile") || l.contains("upload-pack> PACK"))
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git http-backend` behind HTTP Basic auth (tests/adapters/git/smart_http.py), killed on drop.
pub struct SmartHttp {
    child: Child,
    pub port: u16,
    pub auth_log: PathBuf,
}

impl SmartHttp {
    pub fn start(repos: &Repos, password: &str) -> Self {
        let port_file = repos.tmp.path().join("http.port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adapters/git/smart_http.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(repos.tmp.path())
            .arg(&port_file)
            .env("KILN_TEST_HTTP_PASSWORD", password)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 is needed for the smart-HTTP git test");
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "smart_http.py did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            port,
            auth_log: repos.tmp.path().join("auth.log"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/remote.git", self.port)
    }
}

impl Drop for SmartHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
