//! `/api/v1/clusters…`: the seed's API, where every write is a commit of `clusters/<name>.yaml`
//! (docs/api.md). Reads come from what the engine's last cycle left (`DaemonView`) and from the tip
//! the daemon fetched; writes go through `GitSource::write_intent`, which builds on the remote's tip
//! of the moment, so validation and the existence checks run against the very tree the commit
//! changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use gix::ObjectId;
use serde::Serialize;
use serde_json::Value;

use super::error::FieldError;
use super::seed::{self, UsedRange};
use super::{ApiError, AppState};
use crate::config::WriteMode;
use crate::git::{CommitError, GitError, IntentEdit, PublishOutcome, Snapshot};
use crate::reconcile::status::{ClusterStatus, Phase, StatusBook};
use crate::spec::diagnostic::clip_values;
use crate::spec::{ClusterDocument, ClusterName};

/// The largest request body the API reads; more is a 413 before anything is parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The first line of every file the API writes, so a reader of the repository knows where it came
/// from (the commit says so too).
const HEADER: &str = "# Created through kiln's HTTP API (POST /api/v1/clusters).\n";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/clusters", get(list).post(create))
        .route("/api/v1/clusters/{name}/status", get(status))
        .route(
            "/api/v1/clusters/{name}/backups",
            get(backups).post(backup_now),
        )
        .route("/api/v1/clusters/{name}", delete(remove))
        .route("/api/v1/openapi.json", get(openapi))
        .layer(Extension(Arc::new(Written::default())))
}

/// Files this process committed to the tracked branch that the daemon has not fetched yet. Without
/// it a client following `status_url` right after a 202 would get a 404 until the next poll. An
/// entry holds only while the daemon still serves the revision it served at write time: once it
/// fetched anything newer, the tip itself says whether the file is there.
#[derive(Default)]
struct Written(Mutex<BTreeMap<String, Option<ObjectId>>>);

impl Written {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<ObjectId>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names written while the daemon served `current`.
    fn pending(&self, current: Option<ObjectId>) -> Vec<String> {
        let mut map = self.map();
        map.retain(|_, seen| *seen == current);
        map.keys().cloned().collect()
    }
}

/// What a write answers with (202).
#[derive(Debug, Serialize)]
struct Accepted {
    commit: String,
    path: String,
    branch: String,
    status_url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<FieldError>,
}

/// `GET /api/v1/clusters`.
#[derive(Debug, Serialize)]
struct ClusterList {
    /// The revision of the tip the daemon fetched, if any.
    revision: Option<String>,
    clusters: Vec<ClusterStatus>,
}

fn git_unavailable(e: &GitError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "git_unavailable",
        format!("the repository cannot be written now: {e}"),
    )
}

fn commit_failed(e: CommitError<ApiError>, to_review_branch: bool) -> ApiError {
    match e {
        CommitError::Caller(e) => e,
        // On a branch of its own the only other writer is an earlier request for the same name.
        CommitError::Git(GitError::PushRetriesExhausted { .. }) if to_review_branch => {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the review branch exists already with other commits; merge or delete it first",
            )
        }
        // `[ha]`: a follower is read-only (DESIGN §8); the client goes to the leader, which
        // /readyz names.
        CommitError::Git(GitError::NotLeader(why)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            format!(
                "this kiln instance does not lead, so it writes nothing ({why}); send writes to the leader, which /readyz names"
            ),
        ),
        CommitError::Git(e) => git_unavailable(&e),
    }
}

fn status_url(name: &str) -> String {
    format!("/api/v1/clusters/{name}/status")
}

fn pending(name: &str) -> ClusterStatus {
    let mut s = ClusterStatus::continued(name, None);
    s.phase = Phase::Pending;
    s.set_condition(
        "Reconciled",
        false,
        "NotReconciledYet",
        "committed; the daemon has not reconciled this revision yet",
    );
    s
}

/// Which branch a write goes to: the tracked one, or `kiln/<verb>-<name>` for review.
fn target_branch(state: &AppState, verb: &str, name: &str) -> Option<String> {
    match state.config.api.write_mode {
        WriteMode::Direct => None,
        WriteMode::Branch => Some(format!("kiln/{verb}-{name}")),
    }
}

async fn list(
    State(state): State<AppState>,
    Extension(written): Extension<Arc<Written>>,
) -> Result<Json<ClusterList>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let mut book: StatusBook = state.view.status().with_time_left(now);
    let (current, committed) = committed_names(&state, &written).await?;
    for name in committed {
        book.clusters
            .entry(name.clone())
            .or_insert_with(|| pending(&name));
    }
    Ok(Json(ClusterList {
        revision: current.map(|r| r.to_string()),
        clusters: book.clusters.into_values().collect(),
    }))
}

async fn status(
    State(state): State<AppState>,
    Extension(written): Extension<Arc<Written>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let unknown = || ApiError::not_found(format!("no cluster named {}", clip_values(&name)));
    if name.parse::<ClusterName>().is_err() {
        return Err(unknown());
    }
    let now = time::OffsetDateTime::now_utc();
    if let Some(mut s) = state.view.status().clusters.remove(&name) {
        s.fill_time_left(now);
        return Ok(Json(s));
    }
    let (_, committed) = committed_names(&state, &written).await?;
    if committed.contains(&name) {
        return Ok(Json(pending(&name)));
    }
    Err(unknown())
}

#[derive(serde::Deserialize)]
struct BackupsQuery {
    /// `false`: compare listed sizes with the manifests only, without reading snapshots back.
    verify: Option<bool>,
}

/// The cluster `name` as kiln last applied it, and its `spec.backup`: 404 for a name kiln does not
/// manage or a cluster without backups (the backup routes read only what kiln recorded).
fn backed_up(
    state: &AppState,
    name: &str,
) -> Result<(ClusterName, crate::spec::document::BackupSpec), ApiError> {
    let unknown = || ApiError::not_found(format!("no cluster named {}", clip_values(name)));
    let key: ClusterName = name.parse().map_err(|_| unknown())?;
    let records =
        crate::reconcile::records::Records::load(&state.config.state_dir).map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("reading kiln's records: {e}"),
            )
        })?;
    let cluster = records
        .clusters
        .get(&key)
        .and_then(crate::reconcile::policy::recorded_cluster)
        .ok_or_else(unknown)?;
    let spec = cluster.spec.backup.clone().ok_or_else(|| {
        ApiError::not_found(format!(
            "cluster {name} has no spec.backup in the spec kiln last applied"
        ))
    })?;
    Ok((key, spec))
}

/// `GET /api/v1/clusters/{name}/backups`: the cluster's etcd snapshots at its destination with their
/// verification state, as `kiln backup list` prints them (docs/backup.md). Reads the destination of
/// the spec kiln last applied; writes nothing.
async fn backups(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<BackupsQuery>,
) -> Result<Json<Vec<crate::backup::Entry>>, ApiError> {
    let (key, spec) = backed_up(&state, &name)?;
    let unavailable = |e: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e);
    let dest = crate::backup::Destination::open(&spec.destination, &state.config.backup)
        .map_err(|e| unavailable(e.to_string()))?;
    let entries = crate::backup::take::catalogue(&dest, key.as_str(), q.verify.unwrap_or(true))
        .await
        .map_err(|e| unavailable(format!("{}: {e}", dest.describe())))?;
    Ok(Json(entries))
}

/// `POST /api/v1/clusters/{name}/backups`: a snapshot at the daemon's next cycle (started at once:
/// the request pokes the engine), whatever the schedule says; 202. The result shows in the
/// cluster's status (`backup.last_attempt_at`, `last_success_at`, `last_error`), which `kiln
/// backup now` waits on.
async fn backup_now(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (key, _) = backed_up(&state, &name)?;
    let requested_at = crate::backup::manifest::rfc3339(time::OffsetDateTime::now_utc());
    crate::reconcile::backup::request_now(key.as_str());
    state.trigger.poke();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "cluster": name,
            "requested_at": requested_at,
            "status_url": status_url(&name),
        })),
    ))
}

/// The clusters committed but perhaps not reconciled yet: every file at the tip the daemon fetched,
/// and what this API wrote on top of that tip and the daemon has not fetched yet. With that tip.
async fn committed_names(
    state: &AppState,
    written: &Written,
) -> Result<(Option<ObjectId>, std::collections::BTreeSet<String>), ApiError> {
    let current = state.git.current().await;
    let mut names = std::collections::BTreeSet::new();
    if let Some(rev) = current {
        let snapshot = state
            .git
            .snapshot(rev)
            .await
            .map_err(|e| git_unavailable(&e))?;
        names.extend(snapshot.files.into_iter().map(|f| f.name));
    }
    names.extend(written.pending(current));
    Ok((current, names))
}

/// What the body was, once read.
enum Submitted {
    Seed(seed::SeedRequest),
    /// An intent document's text (YAML, or JSON turned into YAML) and its declared name.
    Document {
        name: String,
        text: String,
        yaml_body: bool,
    },
}

fn invalid(message: &str, details: Vec<FieldError>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).with_details(details)
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn read_body(req: Request) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024),
        )
    };
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    Ok((parts.headers, bytes.to_vec()))
}

/// The declared name of a document, which names its file; checked here because everything
/// else (the path, the 409) depends on it.
fn declared_name(value: &Value) -> Result<String, ApiError> {
    let refuse = |m: String| {
        invalid(
            "the document does not name a valid cluster",
            vec![FieldError {
                path: "metadata.name".into(),
                message: m,
                line: None,
            }],
        )
    };
    match value.pointer("/metadata/name") {
        Some(Value::String(s)) => s
            .parse::<ClusterName>()
            .map(|n| n.to_string())
            .map_err(|e| refuse(clip_values(&e))),
        Some(_) => Err(refuse("must be a string".into())),
        None => Err(refuse("is required".into())),
    }
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Submitted, ApiError> {
    let kind = media_type(headers);
    let text = std::str::from_utf8(body).map_err(|_| {
        invalid(
            "the body is not UTF-8 text",
            vec![FieldError {
                path: String::new(),
                message: "the body must be UTF-8".into(),
                line: None,
            }],
        )
    })?;
    match kind.as_str() {
        "application/json" => {
            let value: Value = serde_json::from_str(text).map_err(|e| {
                invalid(
                    "the body is not valid JSON",
                    vec![FieldError {
                        path: String::new(),
                        // serde_json names the position and the kind of error; anything quoted
                        // in it is clipped, as in every message.
                        message: clip_values(&e.to_string()),
                        line: Some(e.line()),
                    }],
                )
            })?;
            if seed::is_intent_document(&value) {
                let name = declared_name(&value)?;
                let text = json_to_yaml(&value);
                Ok(Submitted::Document {
                    name,
                    text,
                    yaml_body: false,
                })
            } else {
                seed::parse(&value)
                    .map(Submitted::Seed)
                    .map_err(|d| invalid("the request body is not valid", d))
            }
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            // Parsed here only for its name; the loader parses it again with every rule and
            // reports any error at its line.
            let name = match crate::spec::yaml_json::from_yaml(text) {
                Ok(value) => declared_name(&value)?,
                Err(e) => {
                    return Err(invalid(
                        "the body is not a valid YAML document",
                        vec![FieldError {
                            path: String::new(),
                            message: clip_values(&e.to_string()),
                            line: e.location().map(|l| l.line()),
                        }],
                    ));
                }
            };
            Ok(Submitted::Document {
                name,
                text: text.to_owned(),
                yaml_body: true,
            })
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json (the seed's body or an intent document) or application/yaml (an intent document)",
        )),
    }
}

/// A JSON document as YAML in the intent file's own field order when it is a well-formed
/// document, and in plain key order otherwise (the validator then reports what is wrong).
fn json_to_yaml(value: &Value) -> String {
    let typed = serde_json::from_value::<ClusterDocument>(value.clone())
        .ok()
        .and_then(|d| serde_yaml::to_string(&d).ok());
    typed
        .or_else(|| serde_yaml::to_string(value).ok())
        .unwrap_or_default()
}

/// Addresses the clusters at the tip hold, for the seed's clash rule.
fn used_ranges(snapshot: &Snapshot, except: &str) -> Vec<UsedRange> {
    let files: Vec<(&Path, &str)> = snapshot.texts().map(|(p, t)| (Path::new(p), t)).collect();
    let outcome = crate::spec::load(files);
    let mut used = Vec::new();
    for c in outcome
        .clusters
        .iter()
        .filter(|c| c.name.as_str() != except)
    {
        let owner = |what: &str| format!("cluster {} ({what})", c.name);
        for n in &c.nodes {
            used.push(UsedRange {
                first: n.ip,
                last: n.ip,
                owner: owner(&format!("node {}", n.name)),
            });
        }
        let net = &c.spec.network;
        used.push(UsedRange {
            first: net.vip,
            last: net.vip,
            owner: owner("VIP"),
        });
        if let Some(r) = net.lb_range {
            used.push(UsedRange {
                first: r.first,
                last: r.last,
                owner: owner("lbRange"),
            });
        }
    }
    used
}

/// The candidate file checked with `kiln validate`'s rules together with every other file at the
/// tip. Errors of the candidate come back; the other files' own problems are theirs (an invalid
/// file there is unknown to the reconciler, and does not stop a new cluster).
fn validate(
    snapshot: &Snapshot,
    path: &str,
    text: &str,
    header_lines: usize,
    seed_cps: Option<usize>,
    keep_lines: bool,
) -> Result<Vec<FieldError>, ApiError> {
    let files: Vec<(&Path, &str)> = snapshot
        .texts()
        .filter(|(p, _)| *p != path)
        .map(|(p, t)| (Path::new(p), t))
        .chain([(Path::new(path), text)])
        .collect();
    let outcome = crate::spec::load(files);
    let field = |d: &crate::spec::Diagnostic| FieldError {
        path: match seed_cps {
            Some(cps) => seed::seed_path(&d.path, cps),
            None => d.path.clone(),
        },
        message: match &d.hint {
            Some(h) => format!("{} ({h})", d.message),
            None => d.message.clone(),
        },
        line: d
            .line
            .filter(|_| keep_lines)
            .map(|l| l.saturating_sub(header_lines)),
    };
    let warnings = outcome
        .warnings
        .iter()
        .filter(|w| w.file == Path::new(path))
        .map(field)
        .collect();
    match outcome.invalid.iter().find(|f| f.path == Path::new(path)) {
        None => Ok(warnings),
        Some(f) => Err(invalid(
            "the cluster does not validate",
            f.diagnostics.iter().map(field).collect(),
        )),
    }
}

/// `POST /api/v1/clusters`.
async fn create(
    State(state): State<AppState>,
    Extension(written): Extension<Arc<Written>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (headers, body) = read_body(req).await?;
    let submitted = parse_body(&headers, &body)?;
    let name = match &submitted {
        Submitted::Seed(s) => s.cluster_name.clone(),
        Submitted::Document { name, .. } => name.clone(),
    };
    let clusters_dir = state.config.git.clusters_dir.trim_matches('/').to_owned();
    let path = format!("{clusters_dir}/{name}.yaml");
    let branch = target_branch(&state, "add", &name);
    let message = format!(
        "api: create cluster {name}\n\nRequested through kiln's HTTP API (POST /api/v1/clusters).\n"
    );
    let defaults = state.config.defaults.clone();
    let header_lines = HEADER.lines().count();
    let mut warnings = Vec::new();
    let edit = |snapshot: &Snapshot| -> Result<Vec<IntentEdit>, ApiError> {
        if snapshot.files.iter().any(|f| f.name == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("cluster {name} exists already ({path})"),
            ));
        }
        // Seed bodies are reported in the seed's own fields (by control-plane count); YAML bodies
        // keep their lines (less the header); JSON documents have no lines worth giving.
        let (text, keep_lines, seed_cps) = match &submitted {
            Submitted::Seed(s) => {
                let doc = seed::to_document(s, &defaults, &used_ranges(snapshot, &name))
                    .map_err(|d| invalid("the request body is not valid", d))?;
                let yaml = serde_yaml::to_string(&doc).map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
                (
                    format!("{HEADER}{yaml}"),
                    false,
                    Some(s.control_plane_nodes as usize),
                )
            }
            Submitted::Document {
                text, yaml_body, ..
            } => (format!("{HEADER}{text}"), *yaml_body, None),
        };
        warnings = validate(snapshot, &path, &text, header_lines, seed_cps, keep_lines)?;
        Ok(vec![IntentEdit::Put {
            name: name.clone(),
            text,
        }])
    };
    let outcome = state
        .git
        .write_intent(branch.as_deref(), &message, edit)
        .await
        .map_err(|e| commit_failed(e, branch.is_some()))?;
    let commit = match outcome {
        PublishOutcome::Pushed { commit, .. } => commit,
        // A new file always changes the tree; were it not so, the file would be there already.
        PublishOutcome::NoChange { .. } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("cluster {name} exists already ({path})"),
            ));
        }
    };
    if branch.is_none() {
        let serving = state.git.current().await;
        written.map().insert(name.clone(), serving);
        state.trigger.poke();
    }
    tracing::info!(cluster = %name, %commit, branch = branch.as_deref().unwrap_or(&state.config.git.branch), "API: cluster file committed");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            commit: commit.to_string(),
            path,
            branch: branch.unwrap_or_else(|| state.config.git.branch.clone()),
            status_url: status_url(&name),
            warnings,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/clusters/{name}`: commits the file's removal; the reconciler then decommissions
/// the cluster after `decommission_grace`, as for any deleted file.
async fn remove(
    State(state): State<AppState>,
    Extension(written): Extension<Arc<Written>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found(format!("no cluster named {}", clip_values(&name)));
    if name.parse::<ClusterName>().is_err() {
        return Err(unknown());
    }
    let branch = target_branch(&state, "delete", &name);
    let message = format!(
        "api: delete cluster {name}\n\nRequested through kiln's HTTP API (DELETE /api/v1/clusters/{name}).\n"
    );
    let mut path = String::new();
    let edit = |snapshot: &Snapshot| -> Result<Vec<IntentEdit>, ApiError> {
        let file = snapshot
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(unknown)?;
        path.clone_from(&file.path);
        let value = file
            .text
            .as_deref()
            .ok()
            .and_then(|t| crate::spec::yaml_json::from_yaml(t).ok());
        let Some(value) = value else {
            // Without a readable file there is no knowing whether it is protected.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unreadable",
                format!(
                    "{} does not parse, so whether it sets deletionProtection cannot be told; fix or remove it in Git",
                    file.path
                ),
            ));
        };
        if value.pointer("/spec/deletionProtection") == Some(&Value::Bool(true)) {
            return Err(ApiError::new(
                StatusCode::LOCKED,
                "protected",
                format!(
                    "cluster {name} has deletionProtection: true; set it to false in {} first",
                    file.path
                ),
            ));
        }
        Ok(vec![IntentEdit::Remove { name: name.clone() }])
    };
    let outcome = state
        .git
        .write_intent(branch.as_deref(), &message, edit)
        .await
        .map_err(|e| commit_failed(e, branch.is_some()))?;
    let PublishOutcome::Pushed { commit, .. } = outcome else {
        return Err(unknown());
    };
    if branch.is_none() {
        written.map().remove(&name);
        state.trigger.poke();
    }
    tracing::info!(cluster = %name, %commit, "API: cluster file removal committed");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            commit: commit.to_string(),
            path,
            branch: branch.unwrap_or_else(|| state.config.git.branch.clone()),
            status_url: status_url(&name),
            warnings: Vec::new(),
        }),
    )
        .into_response())
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn the_content_type_decides_how_the_body_is_read() {
        let seed = br#"{"cluster_name":"a","vmid_prefix":1,"control_plane_nodes":1,
            "network_config":{"vip":"10.0.0.1","node_ips":["10.0.0.2"]},
            "resource_config":{"cpu_cores":1,"memory_gb":1,"storage_gb":1}}"#;
        assert!(matches!(
            parse_body(&headers("application/json; charset=utf-8"), seed),
            Ok(Submitted::Seed(_))
        ));
        let doc = b"apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\n";
        assert!(matches!(
            parse_body(&headers("application/yaml"), doc),
            Ok(Submitted::Document { ref name, yaml_body: true, .. }) if name == "b"
        ));
        let json_doc =
            br#"{"apiVersion":"kiln.dev/v1alpha1","kind":"Cluster","metadata":{"name":"c"}}"#;
        assert!(matches!(
            parse_body(&headers("application/json"), json_doc),
            Ok(Submitted::Document { ref name, yaml_body: false, .. }) if name == "c"
        ));
        let e = parse_body(&headers("text/plain"), doc).err().unwrap();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = parse_body(
            &headers("application/yaml"),
            b"kind: Cluster\nmetadata: {name: Bad_Name}\n",
        )
        .err()
        .unwrap();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.details[0].path, "metadata.name");
    }
}
