//! Requests to the process that holds the `state_dir` lock (DESIGN §7: `kiln rotate` asks the running
//! daemon rather than taking the lock). Until the HTTP API exists, a request is a file:
//! `state_dir/requests/rotate-<cluster>.json`, written atomically; the lock holder serves every
//! pending request at the start of each cycle (a file watcher pokes its trigger so that is at once),
//! writes `rotate-<cluster>.reply.json` and removes the request. Without a lock holder, `kiln rotate`
//! takes the lock and serves its own request in process through the same function, so the two ways
//! cannot drift apart. docs/reconcile.md says why a file and what replaces it.
//!
//! A request carries the time it was made, and serving it renews only what was issued before then
//! (`renewal::Condition::IssuedBefore`): a request served twice (the daemon killed between the write
//! and the reply) or two requests at once renew once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::observe;
use super::policy::recorded_cluster;
use super::records::Records;
use super::renewal::{Condition, Credential, Renewal, RenewalError, Renewer};
use super::state_file::rfc3339;
use super::status::{CredentialStatus, StatusBook};
use crate::secrets::{Prefix, SecretPaths, SecretStore};
use crate::spec::ClusterName;

/// The folder inside `state_dir`.
pub const DIR: &str = "requests";
const PREFIX: &str = "rotate-";
const REQUEST_SUFFIX: &str = ".json";
const REPLY_SUFFIX: &str = ".reply.json";

/// `kiln rotate CLUSTER`: renew both stored credentials now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateRequest {
    pub cluster: String,
    /// RFC 3339, to the nanosecond: what was issued before it is renewed.
    pub requested_at: String,
    /// Who asked (pid), for a person reading the folder.
    pub requested_by: String,
}

/// One credential's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialReply {
    pub credential: Credential,
    /// `Renewal`'s sentence.
    pub result: String,
    pub renewed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What serving a request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateReply {
    pub cluster: String,
    /// The request's `requested_at`: a waiter takes a reply to its request or to a later one (which
    /// renewed everything issued before the later time, so also before its own).
    pub requested_at: String,
    pub served_at: String,
    pub credentials: Vec<CredentialReply>,
    /// Why the request could not be served (no such cluster, the store down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RotateReply {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Puts what a reply renewed into the cluster's status, so `kiln status` shows the new expiry before
/// the next deep look.
pub fn record_in(book: &mut StatusBook, reply: &RotateReply) -> bool {
    let Some(status) = book.clusters.get_mut(&reply.cluster) else {
        return false;
    };
    let mut changed = false;
    for c in reply.credentials.iter().filter(|c| c.renewed) {
        if let Some(expires_at) = &c.expires_at {
            status.credentials.insert(
                c.credential,
                CredentialStatus {
                    expires_at: expires_at.clone(),
                    issued_at: c.issued_at.clone(),
                    version: c.version,
                    expires_in_seconds: None,
                },
            );
            changed = true;
        }
    }
    changed
}

/// One line for a log or a terminal.
pub fn summary(reply: &RotateReply) -> String {
    match &reply.error {
        Some(e) => format!("kiln rotate {}: {e}", reply.cluster),
        None => format!(
            "kiln rotate {}: {}",
            reply.cluster,
            reply
                .credentials
                .iter()
                .map(|c| format!("{} {}", c.credential, c.result))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RequestError + '_ {
    move |source| RequestError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

pub fn request_path(state_dir: &Path, cluster: &ClusterName) -> PathBuf {
    dir(state_dir).join(format!("{PREFIX}{cluster}{REQUEST_SUFFIX}"))
}

pub fn reply_path(state_dir: &Path, cluster: &ClusterName) -> PathBuf {
    dir(state_dir).join(format!("{PREFIX}{cluster}{REPLY_SUFFIX}"))
}

/// Whether a file name in the folder is a pending request (not a reply, not a temporary file).
fn is_request(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(REQUEST_SUFFIX) && !name.ends_with(REPLY_SUFFIX)
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RequestError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(value).map_err(|source| RequestError::Json {
        path: path.to_owned(),
        source,
    })?;
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, RequestError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RequestError::Json {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Queues a rotation of `cluster` for whoever holds the lock.
pub fn submit(state_dir: &Path, cluster: &ClusterName) -> Result<RotateRequest, RequestError> {
    let request = RotateRequest {
        cluster: cluster.to_string(),
        requested_at: rfc3339(OffsetDateTime::now_utc()),
        requested_by: format!("pid {}", std::process::id()),
    };
    write_json(&request_path(state_dir, cluster), &request)?;
    Ok(request)
}

/// The reply to `request` (or to a later request for the same cluster), once there is one.
pub fn reply_for(
    state_dir: &Path,
    request: &RotateRequest,
) -> Result<Option<RotateReply>, RequestError> {
    let Ok(cluster) = request.cluster.parse::<ClusterName>() else {
        return Ok(None);
    };
    let reply: Option<RotateReply> = read_json(&reply_path(state_dir, &cluster))?;
    let mine = parse(&request.requested_at);
    Ok(reply.filter(|r| parse(&r.requested_at) >= mine))
}

/// Whether `request` is still waiting in the queue (nobody took it yet, nor a later one replaced it).
pub fn still_queued(state_dir: &Path, request: &RotateRequest) -> bool {
    let Ok(cluster) = request.cluster.parse::<ClusterName>() else {
        return false;
    };
    read_json::<RotateRequest>(&request_path(state_dir, &cluster))
        .ok()
        .flatten()
        .is_some()
}

fn parse(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &Rfc3339).ok()
}

/// Pending requests, oldest first. An unreadable file is answered with its error, never left to be
/// read again each cycle.
pub fn pending(state_dir: &Path) -> Vec<Result<RotateRequest, (PathBuf, RequestError)>> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_request)
        })
        .collect();
    paths.sort();
    let mut out: Vec<_> = paths
        .into_iter()
        .filter_map(|p| match read_json::<RotateRequest>(&p) {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => Some(Err((p, e))),
        })
        .collect();
    out.sort_by_key(|r| r.as_ref().ok().map(|r| r.requested_at.clone()));
    out
}

/// What serving needs from the lock holder.
pub struct Server<'a> {
    pub state_dir: &'a Path,
    pub store: &'a dyn SecretStore,
    pub prefix: &'a Prefix,
    pub records: &'a Records,
    pub lifetime: Duration,
}

impl Server<'_> {
    /// Serves every pending request: renews, writes the reply, removes the request. Returns the
    /// replies (for the log).
    pub async fn serve_pending(&self) -> Vec<RotateReply> {
        let mut replies = Vec::new();
        for item in pending(self.state_dir) {
            match item {
                Ok(request) => {
                    let reply = self.rotate(&request).await;
                    if let Err(e) = self.answer(&request, &reply) {
                        tracing::warn!(error = %e, "cannot answer a rotate request");
                    }
                    replies.push(reply);
                }
                Err((path, e)) => {
                    tracing::warn!(error = %e, "removing an unreadable request");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        replies
    }

    /// Renews both credentials of the request's cluster, each if issued before the request.
    pub async fn rotate(&self, request: &RotateRequest) -> RotateReply {
        let mut reply = RotateReply {
            cluster: request.cluster.clone(),
            requested_at: request.requested_at.clone(),
            served_at: String::new(),
            credentials: Vec::new(),
            error: None,
        };
        if let Err(e) = self.rotate_into(request, &mut reply).await {
            reply.error = Some(e);
        }
        reply.served_at = rfc3339(OffsetDateTime::now_utc());
        reply
    }

    async fn rotate_into(
        &self,
        request: &RotateRequest,
        reply: &mut RotateReply,
    ) -> Result<(), String> {
        let name: ClusterName = request
            .cluster
            .parse()
            .map_err(|e| format!("`{}` is not a cluster name: {e}", request.cluster))?;
        let asked = parse(&request.requested_at)
            .ok_or_else(|| format!("requested_at `{}` is not a time", request.requested_at))?;
        let cluster = self
            .records
            .clusters
            .get(&name)
            .and_then(recorded_cluster)
            .ok_or_else(|| {
                format!(
                    "kiln has no record of cluster {name}: it renews only credentials it stored"
                )
            })?;
        let paths = SecretPaths::for_cluster(self.prefix, &name);
        let view = observe::secrets(self.store, &paths)
            .await
            .map_err(|e| format!("secret store: {e}"))?;
        if view.observed.decommissioned {
            return Err(format!(
                "{name}'s secrets are retained from a decommission: they are not renewed"
            ));
        }
        let bundle = view.bundle.ok_or_else(|| {
            format!("the secrets bundle of {name} is not readable: nothing to mint from")
        })?;
        let renewer = Renewer {
            store: self.store,
            paths: &paths,
            cluster: &cluster,
            bundle: &bundle.bundle,
            lifetime: self.lifetime,
        };
        for which in Credential::BOTH {
            let outcome = renewer
                .renew(which, Condition::IssuedBefore(asked))
                .await
                .map_err(|e: RenewalError| format!("{which}: {e}"))?;
            tracing::info!(cluster = %name, "kiln rotate: {which}: {outcome}");
            let (renewed, version, issued_at, expires_at) = match &outcome {
                Renewal::Renewed {
                    to,
                    issued_at,
                    expires_at,
                    ..
                } => (
                    true,
                    Some(*to),
                    Some(issued_at.clone()),
                    Some(expires_at.clone()),
                ),
                Renewal::NotNeeded { version } => (false, Some(*version), None, None),
                Renewal::NotStored | Renewal::LostRace { .. } => (false, None, None, None),
            };
            reply.credentials.push(CredentialReply {
                credential: which,
                result: outcome.to_string(),
                renewed,
                version,
                issued_at,
                expires_at,
            });
        }
        Ok(())
    }

    /// The reply first, then the request goes: a waiter never sees neither.
    fn answer(&self, request: &RotateRequest, reply: &RotateReply) -> Result<(), RequestError> {
        let Ok(name) = request.cluster.parse::<ClusterName>() else {
            return Ok(());
        };
        write_json(&reply_path(self.state_dir, &name), reply)?;
        let path = request_path(self.state_dir, &name);
        // A newer request that replaced this one while it was served stays for the next cycle.
        if read_json::<RotateRequest>(&path).ok().flatten().as_ref() == Some(request) {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// Pokes `trigger` when a request is written into `state_dir/requests` (created if missing), so the
/// daemon serves it at once instead of at its next poll. Keep the watcher alive.
pub fn watch(
    state_dir: &Path,
    trigger: crate::git::Trigger,
) -> Result<notify::RecommendedWatcher, RequestError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let folder = dir(state_dir);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(e) = event else { return };
        // A request arrives by a rename onto its name; replies and removals are kiln's own.
        let arrived = matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_))
            && e.paths.iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_request)
            });
        if arrived {
            trigger.poke();
        }
    })
    .map_err(|e| io(&folder)(std::io::Error::other(e)))?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(|e| io(&folder)(std::io::Error::other(e)))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_request_files_are_requests() {
        assert!(is_request("rotate-production.json"));
        assert!(!is_request("rotate-production.reply.json"));
        assert!(!is_request("rotate-production.tmp.42"));
        assert!(!is_request("other.json"));
    }

    #[test]
    fn a_reply_answers_its_request_and_earlier_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let name: ClusterName = "production".parse().unwrap();
        let first = submit(dir.path(), &name).unwrap();
        assert_eq!(pending(dir.path()).len(), 1);
        assert!(reply_for(dir.path(), &first).unwrap().is_none());
        let second = submit(dir.path(), &name).unwrap();
        let reply = RotateReply {
            cluster: "production".into(),
            requested_at: second.requested_at.clone(),
            served_at: second.requested_at.clone(),
            credentials: vec![],
            error: None,
        };
        write_json(&reply_path(dir.path(), &name), &reply).unwrap();
        assert_eq!(reply_for(dir.path(), &first).unwrap(), Some(reply.clone()));
        assert_eq!(reply_for(dir.path(), &second).unwrap(), Some(reply));
        // A reply to an older request does not answer a newer one.
        let third = RotateRequest {
            requested_at: rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(5)),
            ..second
        };
        assert!(reply_for(dir.path(), &third).unwrap().is_none());
    }
}
