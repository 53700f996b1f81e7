//! What wakes the poll: the timer (with jitter, so many kiln daemons on one forge do not poll in
//! lock-step), a handle the webhook and the HTTP API poke, and a `notify` watcher on a local repo.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use rand::Rng;
use tokio::sync::Notify;

use super::GitError;

/// ±10 % of `d`.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Timer,
    Poked,
}

/// A cloneable handle: `poke` wakes the poll loop now. Pokes arriving while a cycle runs are kept
/// (one pending permit), so a push announced mid-cycle is polled right after; several coalesce.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn poke(&self) {
        self.0.notify_one();
    }

    /// Waits for a poke or for the jittered `interval`, whichever comes first.
    pub async fn wait(&self, interval: Duration) -> Wake {
        tokio::select! {
            _ = self.0.notified() => Wake::Poked,
            _ = tokio::time::sleep(jittered(interval)) => Wake::Timer,
        }
    }
}

/// The git directory behind `git.url` when it names a repository on this machine (a path or a
/// `file://` URL), which is what a `notify` watcher can watch.
pub fn local_repo_path(url: &str) -> Option<PathBuf> {
    let path = if let Some(rest) = url.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if url.contains("://") || is_scp_like(url) {
        return None;
    } else {
        PathBuf::from(url)
    };
    let dot_git = path.join(".git");
    Some(if dot_git.is_dir() { dot_git } else { path })
}

/// `host:path` (scp-like ssh) as git reads it: a colon before any slash.
fn is_scp_like(url: &str) -> bool {
    match (url.find(':'), url.find('/')) {
        (Some(c), Some(s)) => c < s,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Watches a local repository's git directory and pokes `trigger` on any change in it (a commit,
/// push or fetch always writes refs or objects there). Keep the returned watcher alive.
pub fn watch_local(
    git_dir: &Path,
    trigger: Trigger,
) -> Result<notify::RecommendedWatcher, GitError> {
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if !matches!(e.kind, EventKind::Access(_)) => trigger.poke(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching the local repository"),
        })
        .map_err(|e| GitError::gix(format!("watching {}", git_dir.display()), e))?;
    watcher
        .watch(git_dir, RecursiveMode::Recursive)
        .map_err(|e| GitError::gix(format!("watching {}", git_dir.display()), e))?;
    Ok(watcher)
}

/// The watcher for `git.url` when it is a local repository (`None` for a network remote, which
/// only the timer and the webhook can wake).
pub fn watch_if_local(
    url: &str,
    trigger: &Trigger,
) -> Result<Option<notify::RecommendedWatcher>, GitError> {
    match local_repo_path(url) {
        Some(dir) => watch_local(&dir, trigger.clone()).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(30));
            assert!(
                d >= Duration::from_secs(27) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
    }

    #[test]
    fn only_local_urls_are_watchable() {
        assert!(local_repo_path("ssh://git@forge/x.git").is_none());
        assert!(local_repo_path("git@forge:x.git").is_none());
        assert!(local_repo_path("https://forge/x.git").is_none());
        assert_eq!(
            local_repo_path("file:///srv/nonexistent.git"),
            Some(PathBuf::from("/srv/nonexistent.git"))
        );
        assert_eq!(
            local_repo_path("/srv/nonexistent.git"),
            Some(PathBuf::from("/srv/nonexistent.git"))
        );
    }

    #[tokio::test]
    async fn a_poke_wakes_before_the_timer() {
        let t = Trigger::new();
        t.poke();
        assert_eq!(t.wait(Duration::from_secs(60)).await, Wake::Poked);
        assert_eq!(t.wait(Duration::from_millis(10)).await, Wake::Timer);
    }
}
