//! `kiln demo` (DESIGN.md §8) around the engine: the demo folder, its seeded Git remote, its
//! `kiln.toml`, the simulated machine room, and the closing report. The engine itself runs the demo
//! exactly as it runs a real site; this module only builds the site. See docs/demo.md.
//!
//! The folder (default `./kiln-demo`):
//! - `.kiln-demo`: the marker that lets `kiln demo` wipe the folder; a non-empty folder without it is
//!   refused, so a mistyped `--state-dir` never deletes anything else.
//! - `remote.git`: the bare Git remote (branch `main`), seeded with `clusters/<name>.yaml` per example
//!   and a README; kiln pushes its `gitops/` commits here.
//! - `kiln.toml`: the configuration the run uses (simulated Proxmox and Talos, file secrets).
//! - `state/`: kiln's `state_dir` (cache clone, file secret store, status).

pub mod examples;
pub mod repo;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError};
use crate::reconcile::status::StatusBook;
use crate::sim::lab::Lab;
use crate::spec::{Cluster, ClusterDocument};

pub use examples::{EXAMPLES, LoopbackError, demo_clusters, loopback_document};
pub use repo::{KilnCommit, RepoError};

/// The marker file of a demo folder.
pub const MARKER: &str = ".kiln-demo";
/// The default folder, relative to where `kiln demo` runs.
pub const DEFAULT_DIR: &str = "kiln-demo";
/// kiln's commit identity in the demo (the documented default of `git.author`).
pub const KILN_AUTHOR: &str = "kiln <kiln@localhost>";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{0} is not empty and is not a kiln demo folder (it has no {MARKER} file): refusing to touch \
         it; pass another --state-dir, or empty it first"
    )]
    NotADemoFolder(PathBuf),
    #[error("{0} exists and is not a folder (a symbolic link is not followed)")]
    NotAFolder(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: the demo folder's path must be UTF-8 (it is written into kiln.toml)")]
    NonUtf8(PathBuf),
    #[error("example cluster {name}: {source}")]
    Example {
        name: &'static str,
        source: LoopbackError,
    },
    #[error("example cluster {name}: {message}")]
    Expand { name: String, message: String },
    #[error("seeding the demo repository: {0}")]
    Repo(#[from] RepoError),
    #[error("the demo's kiln.toml: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "{addr} is in use: is another `kiln demo` still running? Its simulated machines listen on \
         the same loopback addresses; stop it first"
    )]
    AddressInUse { addr: SocketAddr },
    #[error("cluster {cluster}: cannot read the kubeconfig kiln stored: {message}")]
    Kubeconfig { cluster: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A prepared demo: the folder, the configuration kiln runs with, and the simulated machine room.
pub struct Demo {
    /// The demo folder, absolute.
    pub dir: PathBuf,
    pub config: Config,
    pub lab: Lab,
    /// The bare Git remote (`dir/remote.git`).
    pub remote: PathBuf,
    /// The demo clusters' names, as seeded.
    pub clusters: Vec<String>,
    /// The seed commit on `main`.
    pub seed_commit: String,
    /// Where the simulated machines will listen: each node's Talos API, each VIP's Kubernetes API.
    pub listen_addresses: Vec<SocketAddr>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("dir", &self.dir)
            .field("clusters", &self.clusters)
            .field("seed_commit", &self.seed_commit)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Makes `state_dir` a fresh demo folder: refuses a non-empty folder without the marker, wipes and
    /// recreates a demo folder (running twice starts fresh), seeds `remote.git`, writes `kiln.toml` and
    /// builds the lab with the templates the clusters clone from.
    pub fn prepare(state_dir: &Path) -> Result<Demo, DemoError> {
        let dir = std::path::absolute(state_dir).map_err(io(state_dir))?;
        clear(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let marker = dir.join(MARKER);
        std::fs::write(
            &marker,
            "This folder belongs to `kiln demo`, which deletes and recreates it on every run.\n",
        )
        .map_err(io(&marker))?;
        let dir_str = dir
            .to_str()
            .ok_or_else(|| DemoError::NonUtf8(dir.clone()))?
            .to_owned();

        let clusters =
            demo_clusters().map_err(|(name, source)| DemoError::Example { name, source })?;
        let (templates, listen_addresses) = machines_of(&clusters)?;
        let mut files: BTreeMap<String, String> = clusters
            .iter()
            .map(|(name, text)| (format!("clusters/{name}.yaml"), text.clone()))
            .collect();
        files.insert("README.md".into(), readme(&clusters));
        let remote = dir.join("remote.git");
        let seed_commit = repo::seed(
            &remote,
            "main",
            &files,
            "Seed the kiln demo with the example clusters\n\nclusters/*.yaml are kiln's examples with \
             their host addresses on loopback.\n",
        )?;

        let config_path = dir.join("kiln.toml");
        let text = config_text(&dir_str, remote.to_str().unwrap_or(&dir_str));
        std::fs::write(&config_path, &text).map_err(io(&config_path))?;
        let config = Config::parse(&config_path, &text)?;

        let template_refs: Vec<(u32, &str)> =
            templates.iter().map(|(v, n)| (*v, n.as_str())).collect();
        Ok(Demo {
            lab: Lab::new(&template_refs),
            remote,
            clusters: clusters.iter().map(|(n, _)| (*n).to_owned()).collect(),
            seed_commit,
            listen_addresses,
            config,
            dir,
        })
    }

    /// Refuses to run when another process holds an address the demo's machines need — most likely
    /// an earlier `kiln demo` still running, whose nodes would answer in place of this run's.
    pub fn check_addresses_free(&self) -> Result<(), DemoError> {
        match first_busy(&self.listen_addresses) {
            Some(addr) => Err(DemoError::AddressInUse { addr }),
            None => Ok(()),
        }
    }

    /// The path of the demo's `kiln.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("kiln.toml")
    }

    /// The closing text: the status table, kiln's commits on the remote with the files they touched
    /// under the output folder, and where to look.
    pub fn report(&self, book: &StatusBook) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Cluster status:\n");
        for line in book.table().lines() {
            let _ = writeln!(out, "  {line}");
        }
        let output_dir = self.config.git.output_dir.trim_end_matches('/');
        let email = crate::git::Author::parse(&self.config.git.author)
            .map(|a| a.email)
            .unwrap_or_default();
        let _ = writeln!(out);
        match repo::kiln_commits(&self.remote, &self.config.git.branch, &email, output_dir) {
            Ok(commits) if commits.is_empty() => {
                let _ = writeln!(
                    out,
                    "kiln has pushed no commit to {} yet.",
                    self.remote.display()
                );
            }
            Ok(commits) => {
                let _ = writeln!(
                    out,
                    "kiln pushed {} commit(s) to {} (branch {}):",
                    commits.len(),
                    self.remote.display(),
                    self.config.git.branch
                );
                for c in &commits {
                    write_commit(&mut out, c, &self.remote);
                }
            }
            Err(e) => {
                let _ = writeln!(out, "Cannot read kiln's commits: {e}");
            }
        }
        let _ = writeln!(
            out,
            "\nEverything is in {dir}:\n  remote.git  the Git remote: clusters/ as seeded, {output_dir}/ as kiln \
             committed it\n  kiln.toml   the configuration this run used\n  state/      kiln's state \
             (cache clone, file secret store, status.json)\nLook inside: git -C {remote} log --stat\n\
             The simulated VMs and Talos nodes lived only in this process; the repository and the \
             state stay for reading until the next `kiln demo`.",
            dir = self.dir.display(),
            remote = self.remote.display(),
        );
        out
    }
}

/// Beyond this many files a commit's list is summarised per folder.
const LIST_FILES: usize = 20;

fn write_commit(out: &mut String, c: &KilnCommit, remote: &Path) {
    let _ = writeln!(out, "\n  {} {}  ({})", c.short, c.subject, c.date);
    if c.files.len() <= LIST_FILES {
        for (status, path) in &c.files {
            let _ = writeln!(out, "      {status} {path}");
        }
        return;
    }
    let mut folders: BTreeMap<&str, (usize, BTreeSet<char>)> = BTreeMap::new();
    for (status, path) in &c.files {
        let folder = path.rsplit_once('/').map_or("", |(f, _)| f);
        let e = folders.entry(folder).or_default();
        e.0 += 1;
        e.1.insert(*status);
    }
    let _ = writeln!(
        out,
        "      {} files in {} folders (all of them: git -C {} show --stat {}):",
        c.files.len(),
        folders.len(),
        remote.display(),
        c.short
    );
    for (folder, (n, statuses)) in folders {
        let s: String = statuses.into_iter().collect();
        let _ = writeln!(out, "      {s:<2} {folder}/  ({n})");
    }
}

/// Removes a demo folder; refuses anything else that is not empty.
fn clear(dir: &Path) -> Result<(), DemoError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    if !meta.is_dir() {
        return Err(DemoError::NotAFolder(dir.to_owned()));
    }
    let empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
    if empty {
        return Ok(());
    }
    let marked = std::fs::symlink_metadata(dir.join(MARKER)).is_ok_and(|m| m.is_file());
    if !marked {
        return Err(DemoError::NotADemoFolder(dir.to_owned()));
    }
    std::fs::remove_dir_all(dir).map_err(io(dir))
}

/// The first of `addrs` something already listens on (binding is the only reliable question).
pub fn first_busy(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.iter().copied().find(|addr| {
        matches!(
            std::net::TcpListener::bind(addr),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
        )
    })
}

type Templates = BTreeSet<(u32, String)>;

/// The `(template VMID, Proxmox node)` pairs the clusters clone from, each once, and the addresses
/// their machines listen on.
fn machines_of(clusters: &[(&str, String)]) -> Result<(Templates, Vec<SocketAddr>), DemoError> {
    let mut out = BTreeSet::new();
    let mut addrs = Vec::new();
    for (name, text) in clusters {
        let expand_error = |message: String| DemoError::Expand {
            name: (*name).to_owned(),
            message,
        };
        let doc: ClusterDocument =
            serde_yaml::from_str(text).map_err(|e| expand_error(e.to_string()))?;
        let cluster = Cluster::expand(&doc).map_err(|e| expand_error(e.join("; ")))?;
        for node in &cluster.nodes {
            out.insert((node.template.get(), node.pve_node.clone()));
            addrs.push(SocketAddr::new(
                IpAddr::V4(node.ip),
                crate::talos::grpc::client::APID_PORT,
            ));
        }
        addrs.push(SocketAddr::new(
            IpAddr::V4(cluster.spec.network.vip),
            crate::sim::talos::kube::API_PORT,
        ));
    }
    Ok((out, addrs))
}

/// A TOML basic string (quoted and escaped), for paths written into kiln.toml.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn config_text(dir: &str, remote: &str) -> String {
    format!(
        "# Written by `kiln demo`; the folder is wiped and this file rewritten on every run.\n\
         # Everything is simulated except Git: see docs/demo.md.\n\
         state_dir = {state}\n\
         \n\
         [git]\n\
         # The bare repository next to this file (a local path serves a single machine).\n\
         url = {remote}\n\
         branch = \"main\"\n\
         poll_interval = \"1s\"\n\
         author = \"{KILN_AUTHOR}\"\n\
         \n\
         [proxmox]\n\
         # In process: VMs whose Talos nodes boot at their cloud-init address on loopback.\n\
         backend = \"simulated\"\n\
         \n\
         [talos]\n\
         # The machines inside the simulated VMs, over real gRPC and TLS (needs the simulated Proxmox).\n\
         backend = \"simulated\"\n\
         \n\
         [secrets]\n\
         # Files under state_dir/secrets, mode 0600, instead of Vault.\n\
         backend = \"file\"\n\
         \n\
         [reconcile]\n\
         # Long enough to see a deleted cluster file wait, short enough to watch the decommission.\n\
         decommission_grace = \"1m\"\n\
         drift_interval = \"1m\"\n\
         \n\
         [argocd.vault]\n\
         # Where Argo CD's External Secrets would read kubeconfigs. The demo keeps its secrets in files,\n\
         # so this only shows the shape of the rendered ClusterSecretStore.\n\
         server = \"https://vault.example:8200\"\n",
        state = toml_string(&format!("{dir}/state")),
        remote = toml_string(remote),
    )
}

fn readme(clusters: &[(&str, String)]) -> String {
    let names: Vec<String> = clusters
        .iter()
        .map(|(n, _)| format!("`clusters/{n}.yaml`"))
        .collect();
    format!(
        "# kiln demo repository\n\n\
         Made by `kiln demo`. {} are kiln's example clusters with their addresses moved onto\n\
         loopback (192.168.c.d → 127.0.c.d), where the simulated Talos nodes answer.\n\n\
         kiln reconciles each file into simulated Proxmox VMs running simulated Talos, then commits the\n\
         Argo CD manifests for each cluster under `gitops/` — that commit is kiln's, authored\n\
         `{KILN_AUTHOR}`.\n\n\
         Edit a cluster file (scale the workers, change a mirror), commit and push to this repository,\n\
         and kiln applies the difference; delete a file and, after the decommission grace, kiln removes\n\
         that cluster.\n",
        names.join(" and ")
    )
}

/// One progress line of `kiln demo` on stderr: elapsed time, cluster, what happens. Plain text, one
/// line however the message is shaped, so it reads well in a terminal and in a log.
pub fn progress_line(elapsed: Duration, cluster: &str, message: &str) -> String {
    let message: Vec<&str> = message.split_whitespace().collect();
    format!(
        "[{:>6.1}s] {cluster:<12} {}",
        elapsed.as_secs_f64(),
        message.join(" ")
    )
}

/// Progress lines timed from the start of the demo.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    pub fn line(&self, cluster: &str, message: &str) -> String {
        progress_line(self.started.elapsed(), cluster, message)
    }

    /// Writes the line to stderr.
    pub fn step(&self, cluster: &str, message: &str) {
        eprintln!("{}", self.line(cluster, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_one_aligned_line() {
        assert_eq!(
            progress_line(
                Duration::from_millis(3250),
                "staging",
                "creating VM 411\n  (clone)"
            ),
            "[   3.2s] staging      creating VM 411 (clone)"
        );
    }

    #[test]
    fn a_large_commit_is_summarised_per_folder() {
        let files: Vec<(char, String)> = (0..30)
            .map(|i| {
                (
                    'A',
                    format!("gitops/manifests/app{}/prod/values.yaml", i % 3),
                )
            })
            .chain([('D', "gitops/root.yaml".to_owned())])
            .collect();
        let c = KilnCommit {
            id: "0".repeat(40),
            short: "0000000".into(),
            date: "2026-11-25T00:00:00Z".into(),
            subject: "kiln: render prod".into(),
            files,
        };
        let mut out = String::new();
        write_commit(&mut out, &c, Path::new("/d/remote.git"));
        assert!(
            out.contains(
                "31 files in 4 folders (all of them: git -C /d/remote.git show --stat 0000000)"
            ),
            "{out}"
        );
        assert!(
            out.contains("A  gitops/manifests/app0/prod/  (10)"),
            "{out}"
        );
        assert!(out.contains("D  gitops/  (1)"), "{out}");
    }

    #[test]
    fn a_held_address_is_found() {
        let held = std::net::TcpListener::bind("127.0.44.200:0").unwrap();
        let busy = held.local_addr().unwrap();
        let free: SocketAddr = "127.0.44.201:50000".parse().unwrap();
        assert_eq!(first_busy(&[free]), None);
        assert_eq!(first_busy(&[free, busy]), Some(busy));
    }

    #[test]
    fn paths_are_quoted_for_toml() {
        for path in ["/tmp/kiln-demo", "/tmp/a \"b\"\\c", "/tmp/it's"] {
            let doc: toml::Table = toml::from_str(&format!("k = {}", toml_string(path))).unwrap();
            assert_eq!(doc["k"].as_str(), Some(path));
        }
    }
}
