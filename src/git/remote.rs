//! The cache clone and the two conversations with the remote: fetch (gix; the `git` CLI only for
//! `http(s)://`, which kiln's gix build has no transport for) and the fast-forward push (`git` CLI,
//! as gix cannot push). Credentials come from files named in the config and reach git through the
//! cache repository's own config (`core.sshCommand`, `credential.helper`, which hold file paths,
//! never the secrets), so no secret is on a command line, in the environment, a log line or a URL.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use gix::ObjectId;
use gix::remote::Direction;

use super::GitError;
use super::error::{chain, redact_url};
use crate::config::GitConfig;

/// What a fetch saw, for logs and for the "no pack on an unchanged poll" guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchReport {
    /// The remote branch tip after the fetch.
    pub tip: ObjectId,
    /// Whether a pack was received (false: only the ref listing was exchanged).
    pub pack_received: bool,
}

/// Where the cache clone lives and how to reach the remote.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    pub branch: String,
    pub cache_dir: PathBuf,
    /// How long one fetch or push may take before it is abandoned (a hung forge must not stall
    /// the loop). The `git` CLI is killed at this point; a gix fetch is abandoned by the caller.
    pub timeout: Duration,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl Remote {
    pub fn new(git: &GitConfig, state_dir: &Path) -> Self {
        Self {
            url: git.url.clone(),
            branch: git.branch.clone(),
            cache_dir: state_dir.join("repo"),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    fn refspec(&self) -> String {
        // `+`: a force-pushed remote is followed, never an error (DESIGN.md §7 trusts the remote).
        format!("+refs/heads/{}:{}", self.branch, self.tracking_ref())
    }

    fn is_http(&self) -> bool {
        let u = self.url.to_ascii_lowercase();
        u.starts_with("http://") || u.starts_with("https://")
    }

    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Creates the bare cache clone if missing and (re)writes its credential settings.
    pub fn prepare(&self, git: &GitConfig) -> Result<(), GitError> {
        if self.cache_dir.join("HEAD").exists() {
            self.remove_stale_locks()?;
            if let Err(e) = self.open() {
                // The cache holds nothing the remote lacks (kiln's commits count only once
                // pushed), so an unreadable one is set aside for inspection and cloned anew.
                let aside = self.cache_dir.with_extension(format!(
                    "corrupt-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default()
                ));
                tracing::warn!(error = %e, aside = %aside.display(), "cache clone unreadable; starting a fresh one");
                std::fs::rename(&self.cache_dir, &aside).map_err(|source| GitError::Io {
                    path: self.cache_dir.clone(),
                    source,
                })?;
            }
        }
        if !self.cache_dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.cache_dir).map_err(|source| GitError::Io {
                path: self.cache_dir.clone(),
                source,
            })?;
            gix::init_bare(&self.cache_dir).map_err(|e| {
                GitError::gix(
                    format!("creating cache clone {}", self.cache_dir.display()),
                    e,
                )
            })?;
        }
        // Settings are rewritten on every start, so a credential removed from kiln.toml is gone
        // from the cache clone too.
        match &git.ssh_key_file {
            Some(key) => {
                // Host keys are always checked; without `known_hosts_file`, against ssh's default
                // file, so an unknown host is refused, never trusted on first use.
                let mut cmd = format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
                     -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
                    shell_quote(&key.to_string_lossy())
                );
                if let Some(kh) = &git.known_hosts_file {
                    cmd.push_str(&format!(
                        " -o UserKnownHostsFile={}",
                        shell_quote(&kh.to_string_lossy())
                    ));
                }
                self.set_config("core.sshCommand", Some(&cmd))?;
            }
            None => self.set_config("core.sshCommand", None)?,
        }
        match &git.token_file {
            Some(token) => self.set_config("credential.helper", Some(&credential_helper(token)))?,
            None => self.set_config("credential.helper", None)?,
        }
        Ok(())
    }

    /// Lock files in the cache clone at start-up were left by a kiln that died mid-update (only
    /// one kiln owns a state folder: systemd runs one instance, and `GitSource` serialises its own
    /// ref updates). Left in place they would fail every later update: crash safety (DESIGN.md §7)
    /// means removing them. The objects a dead process half-wrote are temp files git ignores.
    fn remove_stale_locks(&self) -> Result<(), GitError> {
        let mut dirs = vec![self.cache_dir.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| GitError::Io {
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let at_top = dir == self.cache_dir;
                if kind.is_dir()
                    && (path.starts_with(self.cache_dir.join("refs"))
                        || (at_top && entry.file_name() == "refs"))
                {
                    dirs.push(path);
                } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                    tracing::warn!(path = %path.display(), "removing a lock file left by an earlier kiln");
                    std::fs::remove_file(&path).map_err(|source| GitError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn set_config(&self, key: &str, value: Option<&str>) -> Result<(), GitError> {
        let mut cmd = self.git();
        match value {
            Some(v) => cmd.args(["config", key, v]),
            None => cmd.args(["config", "--unset-all", key]),
        };
        let out = cmd.output().map_err(|source| GitError::Spawn {
            action: "config",
            source,
        })?;
        // `--unset-all` of a key that is not set exits 5: nothing to remove.
        let nothing_to_unset = value.is_none() && out.status.code() == Some(5);
        if !out.status.success() && !nothing_to_unset {
            return Err(GitError::gix(
                format!("setting {key} in the cache clone"),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(())
    }

    pub fn open(&self) -> Result<gix::Repository, GitError> {
        gix::open(&self.cache_dir).map_err(|e| {
            GitError::gix(
                format!("opening cache clone {}", self.cache_dir.display()),
                e,
            )
        })
    }

    /// The tip last fetched, if any.
    pub fn tracked_tip(&self, repo: &gix::Repository) -> Result<Option<ObjectId>, GitError> {
        let name = self.tracking_ref();
        let r = repo
            .try_find_reference(name.as_str())
            .map_err(|e| GitError::gix(format!("reading {name}"), e))?;
        match r {
            None => Ok(None),
            Some(mut r) => r
                .peel_to_id()
                .map(|id| Some(id.detach()))
                .map_err(|e| GitError::gix(format!("resolving {name}"), e)),
        }
    }

    /// Records a tip as tracked (after kiln's own accepted push, so the next poll is a no-op).
    pub fn set_tracked_tip(&self, repo: &gix::Repository, id: ObjectId) -> Result<(), GitError> {
        use gix::refs::transaction::PreviousValue;
        repo.reference(self.tracking_ref(), id, PreviousValue::Any, "kiln: pushed")
            .map_err(|e| GitError::gix(format!("updating {}", self.tracking_ref()), e))?;
        Ok(())
    }

    /// Lists the remote's refs and fetches only if the branch moved. Blocking.
    pub fn fetch(&self) -> Result<FetchReport, GitError> {
        let result = self.fetch_uncounted();
        crate::metrics::request(crate::metrics::System::Git, "fetch", result.is_ok());
        result
    }

    fn fetch_uncounted(&self) -> Result<FetchReport, GitError> {
        if self.is_http() {
            return self.fetch_cli();
        }
        let repo = self.open()?;
        let failed = |e: gix::Error| GitError::Remote {
            url: self.shown_url(),
            action: "fetch",
            message: redact_url(&chain(&e)),
        };
        let remote = repo
            .remote_at(self.url.as_str())
            .and_then(|r| r.with_refspecs([self.refspec().as_str()], Direction::Fetch))
            .map_err(|e| GitError::gix(format!("remote {}", self.shown_url()), e))?;
        let connection = remote.connect(Direction::Fetch).map_err(failed)?;
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(failed)?;
        if prepare.ref_map().mappings.is_empty() {
            return Err(GitError::NoBranch {
                url: self.shown_url(),
                branch: self.branch.clone(),
            });
        }
        let outcome = prepare
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(failed)?;
        let pack_received = matches!(outcome.status, gix::remote::fetch::Status::Change { .. });
        let tip = self.tracked_tip(&repo)?.ok_or_else(|| GitError::NoBranch {
            url: self.shown_url(),
            branch: self.branch.clone(),
        })?;
        Ok(FetchReport { tip, pack_received })
    }

    fn fetch_cli(&self) -> Result<FetchReport, GitError> {
        let before = self.tracked_tip(&self.open()?)?;
        let out = self
            .git()
            .args([
                "fetch",
                "--no-tags",
                "--quiet",
                "--",
                &self.url,
                &self.refspec(),
            ])
            .output()
            .map_err(|source| GitError::Spawn {
                action: "fetch",
                source,
            })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if message.contains("couldn't find remote ref") {
                return Err(GitError::NoBranch {
                    url: self.shown_url(),
                    branch: self.branch.clone(),
                });
            }
            return Err(GitError::Remote {
                url: self.shown_url(),
                action: "fetch",
                message: redact_url(&message),
            });
        }
        let tip = self
            .tracked_tip(&self.open()?)?
            .ok_or_else(|| GitError::NoBranch {
                url: self.shown_url(),
                branch: self.branch.clone(),
            })?;
        Ok(FetchReport {
            tip,
            pack_received: before != Some(tip),
        })
    }

    /// Pushes `commit` to `branch`, fast-forward only (never `+`, never `--force`). Blocking.
    pub fn push(&self, commit: ObjectId, branch: &str) -> Result<(), GitError> {
        let result = self.push_uncounted(commit, branch);
        crate::metrics::request(crate::metrics::System::Git, "push", result.is_ok());
        result
    }

    fn push_uncounted(&self, commit: ObjectId, branch: &str) -> Result<(), GitError> {
        let refspec = format!("{commit}:refs/heads/{branch}");
        let mut cmd = self.git();
        cmd.args(["push", "--porcelain", "--", &self.url, &refspec]);
        let out = self.run(cmd, "push")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Porcelain: one `<flag>\t<from>:<to>\t<summary>` line per ref; `!` means rejected.
        let rejected = stdout.lines().find(|l| l.starts_with("!\t"));
        if let Some(line) = rejected {
            return Err(GitError::PushRejected {
                url: self.shown_url(),
                commit: commit.to_string(),
                message: redact_url(line.rsplit('\t').next().unwrap_or(line)),
            });
        }
        if !out.status.success() {
            return Err(GitError::Remote {
                url: self.shown_url(),
                action: "push",
                message: redact_url(stderr.trim()),
            });
        }
        Ok(())
    }

    /// Every publish leaves loose objects and every fetch a small pack; let git repack when its own
    /// thresholds say so. Best effort: a failed gc costs disk, never correctness.
    pub fn maintain(&self) {
        match self.git().args(["gc", "--auto", "--quiet"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "git gc --auto on the cache clone failed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot run git gc on the cache clone"),
        }
    }

    /// Runs a network `git` command, killing it after `timeout`.
    fn run(&self, mut cmd: Command, action: &'static str) -> Result<Output, GitError> {
        let spawn_err = |source| GitError::Spawn { action, source };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // Drain both pipes on threads so a chatty git never blocks on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(spawn_err)? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitError::Timeout {
                    url: self.shown_url(),
                    action,
                    after: self.timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// `git` on the cache clone, never prompting: a missing credential is an error, not a hang.
    fn git(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.cache_dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            // A stalled HTTP transfer is abandoned well before the overall timeout.
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
            .env("GIT_HTTP_LOW_SPEED_TIME", "60")
            .env("GCM_INTERACTIVE", "never")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }
}

/// A credential helper that hands git the token read from `path` at the moment it is needed; the
/// token is on no command line and in no config. A user name in the URL is kept (git passes it in);
/// otherwise `x-access-token`, which GitHub, Gitea and Forgejo accept with a token as password.
fn credential_helper(path: &Path) -> String {
    format!(
        "!f() {{ test \"$1\" = get || exit 0; u=; while read -r l; do case \"$l\" in username=*) u=1;; esac; done; \
         test -n \"$u\" || echo username=x-access-token; printf 'password=%s\\n' \"$(cat {})\"; }}; f",
        shell_quote(&path.to_string_lossy())
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
