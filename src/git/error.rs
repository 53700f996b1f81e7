//! Errors of the Git boundary. Every variant names what kiln was doing and where, never a
//! credential: URLs are shown with their user-info replaced (see [`redact_url`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Anything gix reported, with what kiln was doing at the time.
    #[error("git: {context}: {message}")]
    Gix { context: String, message: String },
    #[error("git: {action} of remote {url} failed: {message}")]
    Remote {
        url: String,
        action: &'static str,
        message: String,
    },
    #[error("git: {action} of remote {url} timed out after {after:?}")]
    Timeout {
        url: String,
        action: &'static str,
        after: std::time::Duration,
    },
    #[error("git: remote {url} has no branch `{branch}`")]
    NoBranch { url: String, branch: String },
    #[error("git: push of {commit} to {url} was rejected (not a fast-forward): {message}")]
    PushRejected {
        url: String,
        commit: String,
        message: String,
    },
    #[error(
        "git: push still rejected after {attempts} attempts (someone keeps pushing to {url}); will retry next cycle"
    )]
    PushRetriesExhausted { url: String, attempts: u32 },
    #[error("git: cannot run `git {action}`: {source}")]
    Spawn {
        action: &'static str,
        source: std::io::Error,
    },
    #[error("git: revision `{rev}` not found in {repo}")]
    UnknownRevision { repo: PathBuf, rev: String },
    #[error("git: {path} at {rev} is not valid UTF-8 text")]
    NotText { path: String, rev: String },
    #[error(
        "git: {path} at {rev} is {what}, not a folder: kiln reads no intent through it and destroys \
         nothing until it is a folder again"
    )]
    NotAFolder {
        path: String,
        rev: String,
        what: &'static str,
    },
    #[error("git: generated path `{0}` is not a plain relative path under the output folder")]
    BadOutputPath(String),
    #[error("git: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git: background task failed: {0}")]
    Join(String),
    #[error("git: no revision fetched yet")]
    NothingFetched,
}

/// A commit attempt fails either in Git or in the caller's closure (rendering, or refusing an
/// intent edit); the caller gets its own error back untouched, to map to its own status.
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E> {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Caller(E),
}

impl GitError {
    pub(crate) fn gix(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Gix {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

/// `e` and its causes, `: `-separated, so "connection failed" also says *why* (refused, timed out,
/// host key mismatch…).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// A URL fit for logs and errors: `https://user:token@host/x` becomes `https://[redacted]@host/x`.
/// kiln never puts credentials in the URL itself, but an operator might; this keeps them out of logs.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            // ssh://git@host is a user name, not a secret: keep it so the error stays useful.
            if userinfo.contains(':') {
                return format!("{}[redacted]@{}", &url[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn userinfo_with_password_is_redacted() {
        assert_eq!(
            redact_url("https://kiln:s3cret@forge.lan/infra/gitops.git"),
            "https://[redacted]@forge.lan/infra/gitops.git"
        );
        assert_eq!(
            redact_url("ssh://git@forge.lan/infra/gitops.git"),
            "ssh://git@forge.lan/infra/gitops.git"
        );
        assert_eq!(redact_url("/srv/git/gitops.git"), "/srv/git/gitops.git");
    }
}
