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
    /// `[ha]`: this instance does not hold the Lease, so the push was not made.
    #[error("git: push withheld: {0}")]
    NotLeader(String),
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
/// kiln refuses a password or token in `git.url` at start, but git's own messages may quote any
/// URL. Over http(s) the whole user-info goes, as a user name there may itself be a token (GitHub
/// takes one as the user name); an ssh login name alone stays, so the error says which account the
/// forge refused. Every URL inside a longer text (git's stderr) is treated the same way.
pub fn redact_url(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            let tail = &word[trimmed.len()..];
            format!("{}{tail}", redact_one(trimmed))
        })
        .collect()
}

fn redact_one(word: &str) -> String {
    // Quotes and brackets git puts around a URL stay where they are.
    let start = word
        .find(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '~' || c == '.')
        .unwrap_or(word.len());
    let (lead, url) = word.split_at(start);
    match crate::config::url_userinfo(url) {
        Some(u) if u.http || u.password.is_some() => {
            format!("{lead}{}[redacted]@{}", u.before, u.after)
        }
        _ => word.to_owned(),
    }
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
        assert_eq!(
            redact_url("git@forge.lan:infra/gitops.git"),
            "git@forge.lan:infra/gitops.git"
        );
    }

    #[test]
    fn a_user_name_over_https_is_redacted_as_it_may_be_a_token() {
        assert_eq!(
            redact_url("https://ghp_abc@github.com/o/r.git"),
            "https://[redacted]@github.com/o/r.git"
        );
    }

    #[test]
    fn urls_inside_git_messages_are_redacted() {
        let said = "fatal: unable to access 'https://kiln:s3cret@forge.lan/x.git/': 403 \
                    (mirror https://ci:0ther-s3cret@mirror.lan/x.git refused too)";
        let shown = redact_url(said);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("mirror https://[redacted]@mirror.lan/x.git refused"),
            "{shown}"
        );
        assert!(
            shown.contains("https://[redacted]@forge.lan/x.git/"),
            "{shown}"
        );
        assert!(shown.starts_with("fatal: unable to access '"), "{shown}");
    }
}
