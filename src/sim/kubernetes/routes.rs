//! Request routing, as the API server lays out its paths
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/installer.go`): `/api/v1/…` for the core group,
//! `/apis/GROUP/VERSION/…` for the others; under either, `RESOURCE[/NAME[/SUBRESOURCE]]` for
//! cluster-scoped resources and all-namespace lists, `namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]`
//! for namespaced ones. Anything else is a 404 `Status`, a verb the resource does not serve a 405.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::discovery::{self, Resource};
use super::store::{self, ApiError, ObjectKey, Selector};
use super::{KubeSimState, SharedKubeSim, lock, nodes, table, workloads};

pub fn router(state: SharedKubeSim) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, e.status())
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource (path {path})"),
    )
}

fn method_not_allowed(method: &Method, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "the server does not allow this method on the requested resource ({method} {what})"
        ),
    )
}

struct Request {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn wants_table(&self) -> bool {
        table::wants_table(self.header(header::ACCEPT))
    }

    /// The body as JSON; YAML too for apply patches (`application/apply-patch+yaml`), since JSON is
    /// YAML and kubectl sends either.
    fn body_value(&self) -> Result<Value, ApiError> {
        let yaml = self.header(header::CONTENT_TYPE).contains("yaml");
        let parsed = if yaml {
            serde_yaml::from_slice::<Value>(&self.body).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice::<Value>(&self.body).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be decoded: {e}"))
        })
    }
}

async fn handle(
    State(state): State<SharedKubeSim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let req = Request {
        method,
        path: uri.path().trim_end_matches('/').to_owned(),
        query,
        headers,
        body,
    };
    tracing::debug!(method = %req.method, path = %req.path, "simulated Kubernetes API request");
    match dispatch(&state, &req) {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

fn dispatch(state: &SharedKubeSim, req: &Request) -> Result<Response, ApiError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only = |body: Value| {
        if req.method == Method::GET {
            Ok(json_response(StatusCode::OK, body))
        } else {
            Err(method_not_allowed(&req.method, &req.path))
        }
    };
    match segments.as_slice() {
        ["version"] => get_only(version(&lock(state).git_version)),
        ["api"] => discovery_root(req, true),
        ["apis"] => discovery_root(req, false),
        ["api", v] => {
            get_only(discovery::api_resource_list("", v).ok_or_else(|| not_found_path(&req.path))?)
        }
        ["apis", g] => {
            let list = discovery::api_group_list();
            let group = list["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == *g)
                .cloned()
                .ok_or_else(|| not_found_path(&req.path))?;
            let mut group = group;
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            get_only(group)
        }
        ["apis", g, v] => {
            get_only(discovery::api_resource_list(g, v).ok_or_else(|| not_found_path(&req.path))?)
        }
        ["openapi", "v3"] => get_only(discovery::openapi_v3_index()),
        ["openapi", "v3", rest @ ..] => get_only(
            discovery::openapi_v3_document(&rest.join("/"))
                .ok_or_else(|| not_found_path(&req.path))?,
        ),
        ["api", v, rest @ ..] => resource_request(state, req, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_request(state, req, g, v, rest),
        _ => Err(not_found_path(&req.path)),
    }
}

fn version(git_version: &str) -> Value {
    let (major, minor) = git_version
        .trim_start_matches('v')
        .split_once('.')
        .map(|(a, b)| (a.to_owned(), b.split('.').next().unwrap_or("0").to_owned()))
        .unwrap_or_default();
    json!({
        "major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
        "gitVersion": git_version, "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64",
    })
}

fn discovery_root(req: &Request, core: bool) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(method_not_allowed(&req.method, &req.path));
    }
    if discovery::wants_aggregated(req.header(header::ACCEPT)) {
        let mut response = json_response(StatusCode::OK, discovery::aggregated(core));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(discovery::AGGREGATED_V2),
        );
        return Ok(response);
    }
    let host = req.header(header::HOST).to_owned();
    Ok(json_response(
        StatusCode::OK,
        if core {
            discovery::api_versions(&host)
        } else {
            discovery::api_group_list()
        },
    ))
}

/// Where a resource path points.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str], path: &str) -> Result<Target, ApiError> {
    let found =
        |plural: &str| discovery::find(group, version, plural).ok_or_else(|| not_found_path(path));
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && discovery::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (resource, namespace, tail) = if namespaced_path {
        (found(rest[2])?, Some(rest[1].to_owned()), &rest[3..])
    } else if let Some((plural, tail)) = rest.split_first() {
        (found(plural)?, None, tail)
    } else {
        return Err(not_found_path(path));
    };
    if tail.len() > 2 {
        return Err(not_found_path(path));
    }
    Ok(Target {
        resource,
        namespace,
        name: tail.first().map(|s| (*s).to_owned()),
        subresource: tail.get(1).map(|s| (*s).to_owned()),
    })
}

fn resource_request(
    state: &SharedKubeSim,
    req: &Request,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    if !discovery::group_version_served(group, version) {
        return Err(not_found_path(&req.path));
    }
    let t = parse_target(group, version, rest, &req.path)?;
    if req
        .query
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1")
    {
        return Err(method_not_allowed(
            &Method::GET,
            "watch is not served by this simulator",
        ));
    }
    let mut s = lock(state);
    let ns = t.namespace.clone().unwrap_or_default();
    match (&t.name, &t.subresource) {
        (None, _) => collection(&mut s, req, &t, &ns),
        (Some(name), None) => item(&mut s, req, &t, &ns, name),
        (Some(name), Some(sub)) => {
            if t.resource.plural == "pods" && sub == "eviction" && req.method == Method::POST {
                workloads::evict(&mut s, &ns, name)?;
                Ok(json_response(
                    StatusCode::CREATED,
                    json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "code": 201,
                    }),
                ))
            } else {
                Err(not_found_path(&req.path))
            }
        }
    }
}

fn collection(
    s: &mut KubeSimState,
    req: &Request,
    t: &Target,
    ns: &str,
) -> Result<Response, ApiError> {
    let r = t.resource;
    if !r.namespaced && t.namespace.is_some() {
        return Err(not_found_path(&req.path));
    }
    match req.method {
        Method::GET => {
            let labels =
                Selector::parse(req.query.get("labelSelector").map_or("", String::as_str))?;
            let fields =
                store::field_matcher(r, req.query.get("fieldSelector").map_or("", String::as_str))?;
            let mut items: Vec<Value> = if r.plural == "nodes" && r.group.is_empty() {
                nodes::list(s)
            } else {
                s.objects
                    .iter()
                    .filter(|(k, _)| {
                        k.group == r.group
                            && k.plural == r.plural
                            && (t.namespace.is_none() || k.namespace == ns)
                    })
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            items.retain(|doc| labels.matches(doc.pointer("/metadata/labels")) && fields(doc));
            if req.wants_table() {
                return Ok(json_response(
                    StatusCode::OK,
                    table::table(r.plural, &items, s.revision),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                json!({
                    "kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
                    "metadata": { "resourceVersion": s.revision.to_string() },
                    "items": items,
                }),
            ))
        }
        Method::POST if r.plural != "nodes" => {
            if r.namespaced && t.namespace.is_none() {
                return Err(method_not_allowed(&req.method, &req.path));
            }
            let doc = req.body_value()?;
            let mut created = store::create(s, r, ns, doc)?;
            workloads::reconcile(s);
            refresh(s, r, ns, &mut created);
            Ok(json_response(StatusCode::CREATED, created))
        }
        _ => Err(method_not_allowed(&req.method, &req.path)),
    }
}

/// The stored object after the controllers ran (a created pod bound, a budget's status filled in).
fn refresh(s: &KubeSimState, r: &Resource, ns: &str, doc: &mut Value) {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(now) = s.objects.get(&ObjectKey::new(r, ns, &name)) {
        *doc = now.clone();
    }
}

fn item(
    s: &mut KubeSimState,
    req: &Request,
    t: &Target,
    ns: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let r = t.resource;
    if r.namespaced != t.namespace.is_some() {
        return Err(not_found_path(&req.path));
    }
    let is_node = r.plural == "nodes" && r.group.is_empty();
    let one = |doc: Value| {
        if req.wants_table() {
            let rv = s.revision;
            json_response(StatusCode::OK, table::table(r.plural, &[doc], rv))
        } else {
            json_response(StatusCode::OK, doc)
        }
    };
    match req.method {
        Method::GET => {
            let doc = if is_node {
                nodes::get(s, name)?
            } else {
                s.objects
                    .get(&ObjectKey::new(r, ns, name))
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(r, name))?
            };
            Ok(one(doc))
        }
        Method::PUT => {
            let doc = req.body_value()?;
            let mut out = if is_node {
                nodes::update(s, name, &doc)?
            } else {
                store::update(s, r, ns, name, doc)?
            };
            workloads::reconcile(s);
            if !is_node {
                refresh(s, r, ns, &mut out);
            }
            Ok(json_response(StatusCode::OK, out))
        }
        Method::PATCH => {
            let content_type = req.header(header::CONTENT_TYPE).to_owned();
            let media = content_type.split(';').next().unwrap_or("").trim();
            let (mut out, created) = match media {
                "application/apply-patch+yaml" | "application/apply-patch+cbor" if is_node => {
                    return Err(method_not_allowed(
                        &req.method,
                        "server-side apply of a Node",
                    ));
                }
                "application/apply-patch+yaml" => {
                    let applied = req.body_value()?;
                    let manager = req.query.get("fieldManager").map(String::as_str);
                    store::apply(s, r, ns, name, applied, manager)?
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let patch = req.body_value()?;
                    if is_node {
                        (nodes::patch(s, name, &patch)?, false)
                    } else {
                        (store::patch(s, r, ns, name, &patch)?, false)
                    }
                }
                other => {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types \
                             include: application/merge-patch+json, \
                             application/strategic-merge-patch+json, application/apply-patch+yaml \
                             (got {other:?})"
                        ),
                    ));
                }
            };
            workloads::reconcile(s);
            if !is_node {
                refresh(s, r, ns, &mut out);
            }
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, out))
        }
        Method::DELETE => {
            let out = if is_node {
                nodes::delete(s, name)?
            } else {
                let out = store::delete(s, r, ns, name)?;
                workloads::reconcile(s);
                out
            };
            Ok(json_response(StatusCode::OK, out))
        }
        _ => Err(method_not_allowed(&req.method, &req.path)),
    }
}
