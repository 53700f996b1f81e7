//! `GitSource`: the port the reconciler uses. Every gix or `git` call runs in `spawn_blocking`.
//! One async mutex serialises what moves refs in the cache clone (fetch, commit, push), so a poll
//! and a publish never race; reads of the object database (append-only) need no lock, and the
//! served revision sits behind its own short lock, so status readers never wait on the network.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::ObjectId;

use super::GitError;
use super::commit::{Author, Generated, IntentEdit, build_commit, build_intent_commit, message};
use super::error::CommitError;
use super::remote::{FetchReport, Remote};
use super::snapshot::{Snapshot, intent_key, read_snapshot};
use crate::config::GitConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// The remote branch is where it was: nothing was transferred, nothing to do.
    Unchanged { tip: ObjectId },
    /// The branch moved (fast-forward, or force-pushed: `old` need not be an ancestor).
    Moved {
        old: Option<ObjectId>,
        new: ObjectId,
        /// False when only files outside `clusters_dir` and `templates/` changed, e.g. kiln's
        /// own commits of `output_dir`: such a move starts no work (DESIGN.md §7).
        intent_changed: bool,
    },
}

impl PollOutcome {
    /// Whether this poll should start a reconcile cycle.
    pub fn starts_work(&self) -> bool {
        matches!(
            self,
            PollOutcome::Moved {
                intent_changed: true,
                ..
            }
        )
    }
}

/// What the caller renders for one tip: the full set of files under `output_dir`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub files: Generated,
    /// Named in the commit message.
    pub clusters_changed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The generated tree equals the tip's: no commit was made.
    NoChange { tip: ObjectId },
    /// `commit` (whose only parent is `parent`, the tip just fetched) was pushed.
    Pushed { commit: ObjectId, parent: ObjectId },
}

/// Bounds for rebuilding after a rejected push (`crate::retry`: capped, jittered, and cut short by
/// the reconciler's step budget).
pub type RetryPolicy = crate::retry::Policy;

/// Five tries: someone pushing five times within a few seconds is more than a race.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    initial: Duration::from_millis(500),
    max: Duration::from_secs(8),
    jitter: 0.1,
};

struct State {
    /// The newest revision successfully fetched and handed out by `poll`: served (through
    /// `current`/`snapshot`) for as long as the remote cannot be reached.
    last_good: Option<ObjectId>,
    last_fetch: Option<FetchReport>,
}

#[derive(Clone)]
pub struct GitSource {
    remote: Arc<Remote>,
    clusters_dir: Arc<str>,
    output_dir: Arc<str>,
    author: Arc<Author>,
    retry: RetryPolicy,
    /// Held across every operation that fetches or pushes.
    ops: Arc<tokio::sync::Mutex<()>>,
    state: Arc<Mutex<State>>,
    /// `[ha]`: asked right before each push; `Err` withholds it (`crate::ha` sets it).
    push_gate: Option<PushGate>,
}

/// Says whether this instance may push now, or why not.
pub type PushGate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `blocking`, abandoned after `remote.timeout` (gix has no timeout of its own for a server that
/// accepts and then says nothing). The abandoned thread ends when its connection does.
async fn networked<T: Send + 'static>(
    remote: &Remote,
    action: &'static str,
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    match tokio::time::timeout(remote.timeout, blocking(f)).await {
        Ok(r) => r,
        Err(_) => Err(GitError::Timeout {
            url: remote.shown_url(),
            action,
            after: remote.timeout,
        }),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GitError::Join(e.to_string()))?
}

impl GitSource {
    /// Opens (creating if needed) the cache clone under `state_dir/repo`. Does not contact the
    /// remote: a revision fetched before a restart is served at once, even if the remote is down.
    pub async fn open(git: &GitConfig, state_dir: &Path) -> Result<Self, GitError> {
        let author = Author::parse(&git.author).map_err(|m| GitError::gix("git.author", m))?;
        let remote = Arc::new(Remote::new(git, state_dir));
        let last_good = {
            let remote = remote.clone();
            let git = git.clone();
            blocking(move || {
                remote.prepare(&git)?;
                remote.tracked_tip(&remote.open()?)
            })
            .await?
        };
        Ok(Self {
            remote,
            clusters_dir: git.clusters_dir.trim_matches('/').into(),
            output_dir: git.output_dir.trim_matches('/').into(),
            author: Arc::new(author),
            retry: DEFAULT_RETRY,
            ops: Arc::new(tokio::sync::Mutex::new(())),
            state: Arc::new(Mutex::new(State {
                last_good,
                last_fetch: None,
            })),
            push_gate: None,
        })
    }

    /// How long one fetch or push may take (default two minutes).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.remote).timeout = timeout;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The revision to serve: the last one fetched successfully.
    pub async fn current(&self) -> Option<ObjectId> {
        self.state().last_good
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain values: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the last successful fetch saw (whether it received a pack).
    pub async fn last_fetch(&self) -> Option<FetchReport> {
        self.state().last_fetch
    }

    /// Lists the remote's refs; fetches objects only when the branch moved. On error the last good
    /// revision stays current.
    #[tracing::instrument(skip(self), fields(url = %self.remote.shown_url(), branch = %self.remote.branch))]
    pub async fn poll(&self) -> Result<PollOutcome, GitError> {
        let _ops = self.ops.lock().await;
        let old = self.current().await;
        let remote = self.remote.clone();
        let clusters_dir = self.clusters_dir.clone();
        let result = networked(&self.remote, "fetch", move || {
            let report = remote.fetch()?;
            let intent_changed = match old {
                Some(old) if old == report.tip => false,
                Some(old) => {
                    let repo = remote.open()?;
                    // The old tip of a force-pushed branch is normally still in the cache (nothing
                    // prunes it), but if it cannot be read, count the move as an intent change.
                    match intent_key(&repo, old, &clusters_dir) {
                        Ok(k) => k != intent_key(&repo, report.tip, &clusters_dir)?,
                        Err(_) => true,
                    }
                }
                None => true,
            };
            Ok((report, intent_changed))
        })
        .await;
        let (report, intent_changed) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, serving = ?old.map(|o| o.to_string()), "git poll failed; serving the last good revision");
                return Err(e);
            }
        };
        {
            let mut state = self.state();
            state.last_fetch = Some(report);
            state.last_good = Some(report.tip);
        }
        if old == Some(report.tip) {
            tracing::debug!(tip = %report.tip, "remote unchanged");
            return Ok(PollOutcome::Unchanged { tip: report.tip });
        }
        tracing::info!(old = ?old.map(|o| o.to_string()), new = %report.tip, intent_changed, "remote moved");
        Ok(PollOutcome::Moved {
            old,
            new: report.tip,
            intent_changed,
        })
    }

    /// The intent at `rev`, read from the cache clone's object database.
    pub async fn snapshot(&self, rev: ObjectId) -> Result<Snapshot, GitError> {
        let remote = self.remote.clone();
        let clusters_dir = self.clusters_dir.clone();
        blocking(move || read_snapshot(&remote.open()?, rev, &clusters_dir)).await
    }

    /// Asks `gate` right before every push from now on.
    pub fn with_push_gate(mut self, gate: PushGate) -> Self {
        self.push_gate = Some(gate);
        self
    }

    /// The snapshot of the last good revision.
    pub async fn current_snapshot(&self) -> Result<Snapshot, GitError> {
        let rev = self.current().await.ok_or(GitError::NothingFetched)?;
        self.snapshot(rev).await
    }

    /// Commits what `render` produces for the remote's tip and pushes it fast-forward. On a
    /// rejected push (someone pushed meanwhile) it fetches, calls `render` again on the new tip's
    /// snapshot — so nothing of theirs is overwritten and the output matches their intent — and
    /// retries with capped backoff, `retry.attempts` times in all.
    ///
    /// It does not move the revision `poll` compares against: a human commit absorbed here is
    /// still reported by the next poll (as intent-changed if it touched intent).
    #[tracing::instrument(skip_all, fields(url = %self.remote.shown_url(), branch = %self.remote.branch))]
    pub async fn publish<F, E>(&self, mut render: F) -> Result<PublishOutcome, CommitError<E>>
    where
        F: FnMut(&Snapshot) -> Result<Rendered, E> + Send,
    {
        self.commit_loop(&self.remote.branch, |snapshot| {
            let rendered = render(snapshot).map_err(CommitError::Caller)?;
            let msg = message(&rendered.clusters_changed, snapshot.source_commit);
            Ok(Change::Output(rendered.files, msg))
        })
        .await
    }

    /// Commits edits of intent files (the HTTP API's writes) and pushes them to the branch, or,
    /// with `to_branch`, to that new branch for review (`api.write_mode = "branch"`). `edit` sees
    /// the tip it builds on, so it can refuse (e.g. `deletionProtection`, an existing file) with
    /// its own error, and is called again if the push has to be rebuilt on a newer tip.
    #[tracing::instrument(skip_all, fields(url = %self.remote.shown_url()))]
    pub async fn write_intent<F, E>(
        &self,
        to_branch: Option<&str>,
        message: &str,
        mut edit: F,
    ) -> Result<PublishOutcome, CommitError<E>>
    where
        F: FnMut(&Snapshot) -> Result<Vec<IntentEdit>, E> + Send,
    {
        let branch = to_branch.unwrap_or(&self.remote.branch).to_string();
        self.commit_loop(&branch, |snapshot| {
            let edits = edit(snapshot).map_err(CommitError::Caller)?;
            Ok(Change::Intent(edits, message.to_string()))
        })
        .await
    }

    async fn commit_loop<F, E>(
        &self,
        branch: &str,
        mut plan: F,
    ) -> Result<PublishOutcome, CommitError<E>>
    where
        F: FnMut(&Snapshot) -> Result<Change, CommitError<E>> + Send,
    {
        let to_tracked = branch == self.remote.branch;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let guard = self.ops.lock().await;
            let remote = self.remote.clone();
            let clusters_dir = self.clusters_dir.clone();
            let snapshot = networked(&self.remote, "fetch", move || {
                let report = remote.fetch()?;
                read_snapshot(&remote.open()?, report.tip, &clusters_dir)
            })
            .await?;
            let change = plan(&snapshot)?;
            let remote = self.remote.clone();
            let output_dir = self.output_dir.clone();
            let clusters_dir = self.clusters_dir.clone();
            let author = self.author.clone();
            let parent = snapshot.rev;
            let branch = branch.to_string();
            let gate = self.push_gate.clone();
            let pushed = blocking(move || {
                let repo = remote.open()?;
                let commit = match &change {
                    Change::Output(files, msg) => {
                        build_commit(&repo, parent, &output_dir, files, &author, msg)?
                    }
                    Change::Intent(edits, msg) => {
                        build_intent_commit(&repo, parent, &clusters_dir, edits, &author, msg)?
                    }
                };
                let Some(commit) = commit else {
                    return Ok(None);
                };
                // Last thing before the push leaves: rendering and committing took time.
                if let Some(gate) = &gate {
                    gate().map_err(GitError::NotLeader)?;
                }
                match remote.push(commit, &branch) {
                    Ok(()) => {
                        if to_tracked {
                            remote.set_tracked_tip(&repo, commit)?;
                        }
                        remote.maintain();
                        Ok(Some(Ok(commit)))
                    }
                    Err(e @ GitError::PushRejected { .. }) => Ok(Some(Err(e))),
                    Err(e) => Err(e),
                }
            })
            .await?;
            drop(guard);
            match pushed {
                None => return Ok(PublishOutcome::NoChange { tip: parent }),
                Some(Ok(commit)) => {
                    tracing::info!(%commit, %parent, attempt, "pushed");
                    return Ok(PublishOutcome::Pushed { commit, parent });
                }
                Some(Err(e)) => match self.retry.next_delay(attempt) {
                    Some(wait) => {
                        tracing::warn!(error = %e, attempt, ?wait, "push rejected; rebuilding on the new tip");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        tracing::warn!(error = %e, attempt, "push rejected; giving up for this cycle");
                        return Err(GitError::PushRetriesExhausted {
                            url: self.remote.shown_url(),
                            attempts: attempt,
                        }
                        .into());
                    }
                },
            }
        }
    }
}

/// What one attempt commits.
enum Change {
    Output(Generated, String),
    Intent(Vec<IntentEdit>, String),
}
